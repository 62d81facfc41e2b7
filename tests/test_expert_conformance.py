"""Every registered expert (built-in, the CLIP/SigLIP plugins, the third-party toy) honours the Expert contract.

The checks live in ``fdcore.testing.check_expert`` (the same ones plugin authors run); each is built small from its
``tiny_config()`` (random weights, no download). Checked: preprocessing output, logits and probability shapes and
dtypes, probabilities in [0, 1], determinism in eval mode, batch-size independence, dense feature shapes, a JSON
config that rebuilds the architecture, a bit-identical save/load round trip, bf16 loading and CPU autocast, int8
dynamic quantisation (`--precision int8`), gradient checkpointing that changes no gradient. Also: importing the
expert plugins loads neither torch nor transformers.
"""

import json
import subprocess
import sys
import textwrap

import pytest

import fdcore
from fdcore.testing import EXPERT_CHECKS, check_expert

EXPERTS = fdcore.list_experts()


def test_the_shipped_expert_plugins_are_registered():
    assert {"clip", "siglip", "npr", "toy"} <= set(EXPERTS)


@pytest.mark.parametrize("check", EXPERT_CHECKS)
@pytest.mark.parametrize("name", EXPERTS)
def test_expert_conformance(name, check):
    check_expert(name, checks=check)


@pytest.mark.parametrize("name", EXPERTS)
def test_every_shipped_expert_exposes_dense_features(name):
    assert fdcore.get_expert_class(name).default_feature_layers  # the features check needs them to run at all


def test_a_failed_check_names_the_expert_the_check_and_the_fault():
    assert fdcore.get_expert_class("clip").supports_gradient_checkpointing
    assert not fdcore.get_expert_class("toy").supports_gradient_checkpointing
    toy = fdcore.get_expert_class("toy")

    class UndeclaredFeatureGrid(toy):
        feature_grid = (3, 3)  # conv2 of a 32 px input is 8 x 8

    with pytest.raises(AssertionError, match=r"expert 'toy' fails the 'features' check: .*feature_grid \(3, 3\)"):
        check_expert(UndeclaredFeatureGrid, checks="features", width=4)
    with pytest.raises(ValueError, match="unknown check"):
        check_expert("toy", checks="speed")


def test_implementing_gradient_checkpointing_declares_it():
    toy = fdcore.get_expert_class("toy")

    class Checkpointed(toy):
        def enable_gradient_checkpointing(self):
            pass

    assert Checkpointed.supports_gradient_checkpointing
    with pytest.raises(AssertionError, match="left gradient_checkpointing_enabled False"):
        check_expert(Checkpointed, checks="gradient_checkpointing", width=4)


def test_importing_expert_plugins_loads_neither_torch_nor_transformers():
    code = textwrap.dedent("""
        import sys
        import fdcore_clip, fdcore_siglip, fdcore_npr, fdcore.cli
        heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
        print(",".join(heavy))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_fdcore_list_experts_shows_parameter_counts_and_input_sizes():
    from conftest import fdcore_command

    listed = {item["name"]: item for item in json.loads(fdcore_command("list", "experts", "--json", check=True).stdout)}
    assert (listed["clip"]["input_size"], listed["clip"]["parameters"]) == (224, 304_163_586)
    assert (listed["siglip"]["input_size"], listed["siglip"]["parameters"]) == (384, 428_521_282)
    assert listed["clip"]["provider"] == "fdcore-clip" and listed["siglip"]["provider"] == "fdcore-siglip"
    assert (listed["npr"]["input_size"], listed["npr"]["parameters"], listed["npr"]["provider"]) == \
        (224, 1_438_274, "fdcore-npr")
    from click.testing import CliRunner

    from fdcore.cli import cli

    table = CliRunner().invoke(cli, ["list", "experts"])
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line.split() for line in table.output.splitlines()[1:]}
    assert rows["clip"][1:3] == ["224", "304163586"] and rows["siglip"][1:3] == ["384", "428521282"]
