"""The entry-point loader: fault tolerance, strict mode, selection, duplicates, misspelled hooks."""

import sys
import types

import pytest

import fdcore
from fdcore import plugins, registry
from fdcore.testing import plugin_registered


class FakeEntryPoint:
    group = "fdcore"

    def __init__(self, name, loader):
        self.name, self._loader = name, loader
        self.value = f"{name}_module"

    def load(self):
        return self._loader()


class FakeDistribution:
    def __init__(self, name, version, entry_points):
        self.metadata = {"Name": name}
        self.version = version
        self.entry_points = entry_points


def aggregator_plugin(aggregator_name, module_name):
    module = types.ModuleType(module_name)

    class Rule(fdcore.Aggregator):
        name = aggregator_name
        description = f"test rule {aggregator_name}"

        def fuse(self, probs, weights):
            return probs.min(dim=0).values

    @fdcore.hookimpl
    def register_aggregators(register):
        register(Rule)

    module.register_aggregators = register_aggregators
    return module


def broken_loader():
    raise ImportError("No module named 'missing_dependency'")


@pytest.fixture
def fake_distributions(monkeypatch):
    """Replace the installed distributions with fakes built by each test."""
    installed = []
    monkeypatch.setattr(plugins, "_distributions", lambda: list(installed))
    return installed


def test_broken_plugin_is_reported_and_skipped(fake_distributions, capsys):
    fake_distributions.append(FakeDistribution("fdcore-broken", "1.2", [FakeEntryPoint("broken", broken_loader)]))
    good = aggregator_plugin("lowest", "fdcore_good")
    fake_distributions.append(FakeDistribution("fdcore-good", "0.3", [FakeEntryPoint("good", lambda: good)]))

    assert "lowest" in fdcore.list_aggregators()
    assert "mean" in fdcore.list_aggregators()
    [failure] = plugins.failures()
    assert failure.distribution == "fdcore-broken" and failure.version == "1.2"
    assert "missing_dependency" in failure.error
    warning = capsys.readouterr().err
    assert "fdcore-broken" in warning and "missing_dependency" in warning and "FDCORE_STRICT_PLUGINS" in warning

    info = {item["name"]: item for item in registry.plugins_info()}
    assert info["fdcore-good"]["hooks"] == ["register_aggregators"]
    assert info["fdcore-good"]["registered"] == {"aggregators": ["lowest"]}
    assert info["fdcore-broken"]["errors"] and "missing_dependency" in info["fdcore-broken"]["errors"][0]


def test_strict_mode_raises(fake_distributions, monkeypatch):
    monkeypatch.setenv("FDCORE_STRICT_PLUGINS", "1")
    fake_distributions.append(FakeDistribution("fdcore-broken", "1.2", [FakeEntryPoint("broken", broken_loader)]))
    with pytest.raises(plugins.PluginError, match="fdcore-broken.*missing_dependency"):
        fdcore.list_aggregators()


def test_load_plugins_selection(fake_distributions, monkeypatch):
    first = aggregator_plugin("first-rule", "fdcore_first")
    second = aggregator_plugin("second-rule", "fdcore_second")
    fake_distributions.append(FakeDistribution("fdcore-first", "1", [FakeEntryPoint("first", lambda: first)]))
    fake_distributions.append(FakeDistribution("fdcore-second", "1", [FakeEntryPoint("second", lambda: second)]))

    monkeypatch.setenv("FDCORE_LOAD_PLUGINS", "fdcore-second")  # distribution name
    assert "second-rule" in fdcore.list_aggregators() and "first-rule" not in fdcore.list_aggregators()

    registry.reset()
    monkeypatch.setenv("FDCORE_LOAD_PLUGINS", "first, second")  # entry-point names, spaces tolerated
    assert {"first-rule", "second-rule"} <= set(fdcore.list_aggregators())

    registry.reset()
    monkeypatch.setenv("FDCORE_LOAD_PLUGINS", "")
    names = fdcore.list_aggregators()
    assert "first-rule" not in names and "second-rule" not in names
    assert "mean" in names  # built-ins always load


def test_selected_plugin_that_is_not_installed_loads_nothing_else_and_is_reported(fake_distributions, monkeypatch):
    fake_distributions.append(FakeDistribution("fdcore-broken", "1", [FakeEntryPoint("broken", broken_loader)]))
    monkeypatch.setenv("FDCORE_LOAD_PLUGINS", "nothing-by-that-name")
    fdcore.list_aggregators()
    [failure] = plugins.failures()  # the typo is reported; the broken plugin was never imported
    assert failure.stage == "selection" and "nothing-by-that-name" in failure.error and "broken" in failure.error
    listed = {item["name"]: item for item in registry.plugins_info()}
    assert listed["fdcore-broken"]["status"].startswith("not loaded")  # still shown: it is installed


def test_an_entry_point_cannot_displace_the_builtins(fake_distributions):
    impostor = aggregator_plugin("mean", "fdcore_impostor_builtin")
    fake_distributions.append(FakeDistribution("evil", "1", [
        FakeEntryPoint("fdcore.builtin.aggregators", lambda: impostor)]))
    assert registry.entry("aggregators", "mean").provider == "fdcore"
    assert float(fdcore.get_aggregator("mean")(torch_tensor([[0.2], [0.8]]))[0]) == pytest.approx(0.5)
    [failure] = plugins.failures()
    assert failure.distribution == "evil" and "reserved" in failure.error


def test_two_distributions_with_one_entry_point_name_are_both_refused(fake_distributions):
    first = aggregator_plugin("rule-a", "fdcore_first_clip")
    second = aggregator_plugin("rule-b", "fdcore_second_clip")
    for order in ((first, second), (second, first)):  # whatever the discovery order
        registry.reset()
        fake_distributions.clear()
        fake_distributions.append(FakeDistribution("fdcore-clip", "1", [FakeEntryPoint("clip", lambda: order[0])]))
        fake_distributions.append(FakeDistribution("clip-fork", "2", [FakeEntryPoint("clip", lambda: order[1])]))
        names = fdcore.list_aggregators()
        assert "rule-a" not in names and "rule-b" not in names
        failures = plugins.failures()
        assert sorted(f.distribution for f in failures) == ["clip-fork", "fdcore-clip"]
        assert all("several distributions" in f.error and "FDCORE_LOAD_PLUGINS" in f.error for f in failures)
        listed = {item["name"] for item in registry.plugins_info()}
        assert {"fdcore-clip", "clip-fork"} <= listed


def torch_tensor(values):
    import torch

    return torch.tensor(values, dtype=torch.float64)


def test_duplicate_names_are_refused_naming_both_providers(fake_distributions, capsys):
    one = aggregator_plugin("shared-name", "fdcore_one")
    two = aggregator_plugin("shared-name", "fdcore_two")
    fake_distributions.append(FakeDistribution("fdcore-one", "1", [FakeEntryPoint("one", lambda: one)]))
    fake_distributions.append(FakeDistribution("fdcore-two", "1", [FakeEntryPoint("two", lambda: two)]))

    assert "shared-name" in fdcore.list_aggregators()
    [failure] = plugins.failures()
    assert "fdcore-one" in failure.error and "fdcore-two" in failure.error
    assert "shared-name" in failure.error


def test_plugin_reusing_a_builtin_name_is_the_one_refused(fake_distributions):
    impostor = aggregator_plugin("mean", "fdcore_impostor")
    fake_distributions.append(FakeDistribution("fdcore-impostor", "1", [FakeEntryPoint("impostor", lambda: impostor)]))
    assert registry.entry("aggregators", "mean").provider == "fdcore"
    [failure] = plugins.failures()
    assert "fdcore-impostor" in failure.error and "already registered by fdcore" in failure.error


def test_duplicate_names_fatal_in_strict_mode(fake_distributions, monkeypatch):
    monkeypatch.setenv("FDCORE_STRICT_PLUGINS", "1")
    one = aggregator_plugin("shared-name", "fdcore_one")
    two = aggregator_plugin("shared-name", "fdcore_two")
    fake_distributions.append(FakeDistribution("fdcore-one", "1", [FakeEntryPoint("one", lambda: one)]))
    fake_distributions.append(FakeDistribution("fdcore-two", "1", [FakeEntryPoint("two", lambda: two)]))
    with pytest.raises(plugins.PluginError, match="already registered"):
        fdcore.list_aggregators()


def test_misspelled_hook_name_is_caught(fake_distributions):
    module = types.ModuleType("fdcore_typo")

    @fdcore.hookimpl
    def register_aggregator(register):  # missing the final "s"
        raise AssertionError("must never be called")

    module.register_aggregator = register_aggregator
    fake_distributions.append(FakeDistribution("fdcore-typo", "1", [FakeEntryPoint("typo", lambda: module)]))
    fdcore.list_aggregators()
    [failure] = plugins.failures()
    assert failure.stage == "validation" and "register_aggregator" in failure.error
    assert "register_aggregators" in failure.error  # the message lists the valid hooks
    assert plugins.get_plugin_manager().get_plugin("typo") is None


def test_plugin_raising_in_its_hook_registers_nothing(fake_distributions):
    module = types.ModuleType("fdcore_halfway")

    class Good(fdcore.Aggregator):
        name = "halfway-good"

        def fuse(self, probs, weights):
            return probs.mean(0)

    @fdcore.hookimpl
    def register_aggregators(register):
        register(Good)
        raise RuntimeError("boom while registering")

    module.register_aggregators = register_aggregators
    fake_distributions.append(FakeDistribution("fdcore-halfway", "1", [FakeEntryPoint("halfway", lambda: module)]))
    assert "halfway-good" not in fdcore.list_aggregators()
    [failure] = plugins.failures()
    assert failure.stage == "register_aggregators" and "boom while registering" in failure.error


def test_plugin_calling_sys_exit_on_import_is_contained(fake_distributions):
    def exits():
        sys.exit(3)

    fake_distributions.append(FakeDistribution("fdcore-exits", "1", [FakeEntryPoint("exits", exits)]))
    assert "mean" in fdcore.list_aggregators()
    assert plugins.failures()[0].plugin == "exits"


def test_registering_an_instance_or_a_foreign_class_is_refused():
    class Rule(fdcore.Aggregator):
        name = "instance-rule"

        def fuse(self, probs, weights):
            return probs.mean(0)

    class InstancePlugin:
        @fdcore.hookimpl
        def register_aggregators(self, register):
            register(Rule())

    with plugin_registered(InstancePlugin(), name="instance-plugin"):
        assert "instance-rule" not in fdcore.list_aggregators()
    assert "register the class itself" in plugins.failures()[-1].error

    class NotAnAggregator:
        name = "foreign"

    class ForeignPlugin:
        @fdcore.hookimpl
        def register_aggregators(self, register):
            register(NotAnAggregator)

    with plugin_registered(ForeignPlugin(), name="foreign-plugin"):
        assert "foreign" not in fdcore.list_aggregators()
    assert "not a subclass of fdcore.Aggregator" in plugins.failures()[-1].error


def test_invalid_names_are_refused():
    class Rule(fdcore.Aggregator):
        name = "Bad Name"

        def fuse(self, probs, weights):
            return probs.mean(0)

    class Plugin:
        @fdcore.hookimpl
        def register_aggregators(self, register):
            register(Rule)

    with plugin_registered(Plugin(), name="bad-name-plugin"):
        fdcore.list_aggregators()
    assert "'Bad Name'" in plugins.failures()[-1].error


def test_plugin_registered_helper_adds_and_removes():
    class Rule(fdcore.Aggregator):
        name = "temporary-rule"

        def fuse(self, probs, weights):
            return probs.mean(0)

    class Plugin:
        @fdcore.hookimpl
        def register_aggregators(self, register):
            register(Rule)

    with plugin_registered(Plugin(), name="temporary"):
        assert registry.entry("aggregators", "temporary-rule").provider == "temporary"
    assert "temporary-rule" not in fdcore.list_aggregators()


def test_policies_hook_registers_data():
    class Plugin:
        @fdcore.hookimpl
        def register_policies(self, register):
            register("test-policy", {"operators": ["jpeg"]}, description="a test policy")

    with plugin_registered(Plugin(), name="policy-plugin"):
        assert registry.get("policies", "test-policy") == {"operators": ["jpeg"]}
        assert registry.describe("policies", "test-policy")["description"] == "a test policy"


def test_unknown_name_lists_the_valid_ones():
    with pytest.raises(registry.UnknownNameError) as caught:
        fdcore.get_aggregator("avg")
    message = str(caught.value)
    assert "unknown aggregator 'avg'" in message
    for name in ("mean", "weighted", "logit-mean", "median", "max", "soft-or", "rank-mean"):
        assert name in message


def test_every_hookspec_is_documented():
    from pathlib import Path

    from fdcore import hookspecs

    guide = (Path(__file__).resolve().parent.parent / "docs" / "plugins.md").read_text()
    for name in dir(hookspecs):
        if name.startswith("register_"):
            assert f"`{name}(register)`" in guide, f"docs/plugins.md does not document the {name} hook"
