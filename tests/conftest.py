import os
import sys
from pathlib import Path

import pytest

from fdcore import registry

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"
TEST_PLUGINS = REPO_ROOT / "tests" / "plugins"


def _discoverable_test_plugins() -> None:
    """Make the test-only plugins (tests/plugins/*) discoverable to this test session and the processes it starts,
    without installing them into the user's environment: each gets a ``.dist-info`` (its name, version and
    ``fdcore`` entry points, read from its pyproject.toml) in a temporary directory put on ``sys.path`` and
    ``PYTHONPATH``, next to its source folder. fdcore then finds it through the real entry-point path, exactly as
    an installed plugin; a user's ``fdcore plugins`` never lists it."""
    import atexit
    import importlib
    import importlib.metadata
    import shutil
    import tempfile
    import tomllib

    site = Path(tempfile.mkdtemp(prefix="fdcore-test-plugins-"))
    atexit.register(shutil.rmtree, site, True)
    paths = []
    for source in sorted(path for path in TEST_PLUGINS.iterdir() if (path / "pyproject.toml").is_file()):
        project = tomllib.loads((source / "pyproject.toml").read_text())["project"]
        try:
            importlib.metadata.distribution(project["name"])
            continue  # installed by an older set-up: that installation is used
        except importlib.metadata.PackageNotFoundError:
            pass
        info = site / f"{project['name'].replace('-', '_')}-{project['version']}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {project['name']}\n"
                                       f"Version: {project['version']}\n")
        groups = project.get("entry-points", {})
        (info / "entry_points.txt").write_text("".join(
            f"[{group}]\n" + "".join(f"{name} = {target}\n" for name, target in entries.items()) + "\n"
            for group, entries in groups.items()))
        paths.append(str(source))
    if paths:
        paths.append(str(site))
        sys.path[:0] = paths
        os.environ["PYTHONPATH"] = os.pathsep.join(paths + [p for p in [os.environ.get("PYTHONPATH")] if p])
        importlib.invalidate_caches()


_discoverable_test_plugins()


@pytest.fixture(autouse=True)
def fresh_plugin_state(monkeypatch):
    """Each test starts from unloaded plugins, so FDCORE_* variables set by the test take effect."""
    monkeypatch.delenv("FDCORE_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("FDCORE_LOAD_PLUGINS", raising=False)
    registry.reset()
    yield
    registry.reset()


def fdcore_command(*args, env=None, timeout=120, check=False):
    """Run the installed ``fdcore`` console script in a subprocess (the real entry-point and metadata path)."""
    import subprocess

    executable = Path(sys.executable).with_name("fdcore")
    command = [str(executable) if executable.exists() else sys.executable, *([] if executable.exists() else ["-m", "fdcore"])]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FDCORE_")}
    env = dict(env or {})
    if "PYTHONPATH" in env and os.environ.get("PYTHONPATH"):  # added to the suite's own (test plugins), not instead
        env["PYTHONPATH"] = os.pathsep.join([env["PYTHONPATH"], os.environ["PYTHONPATH"]])
    full_env.update(env)
    result = subprocess.run([*command, *args], capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and result.returncode != 0:
        raise AssertionError(f"fdcore {' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


@pytest.fixture
def shared_data():
    root = SHARED_DATA / "aigc-sd1x"
    if not (root / "manifest.csv").is_file():
        pytest.skip(f"shared data not present at {root}")
    return root


def make_learnable_folder(root, per_class=48, size=32, seed=0):
    """real/ and fake/ PNGs a tiny CNN can tell apart: fakes carry a checkerboard (an upsampling-like trace)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    root = Path(root)
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True, exist_ok=True)
        for index in range(per_class):
            base = rng.normal(128, 30, (size // 4, size // 4, 3))
            image = np.kron(base, np.ones((4, 4, 1)))
            if label == "fake":
                image = image + 40 * ((np.indices((size, size)).sum(0) % 2)[..., None] - 0.5)
            Image.fromarray(np.clip(image, 0, 255).astype(np.uint8)).save(root / label / f"{index:03d}.png")
    return root


@pytest.fixture
def toy_ensemble(tmp_path):
    """Two toy experts named one and two, mean fusion (modules that need another ensemble define their own)."""
    import fdcore
    from fdcore.ensemble_io import write_ensemble

    directory = tmp_path / "ensemble"
    fdcore.save_expert(fdcore.get_expert("toy", seed=1), directory / "expert_1")
    fdcore.save_expert(fdcore.get_expert("toy", seed=2), directory / "expert_2")
    write_ensemble(directory, [{"name": "one", "path": "expert_1", "weight": 1.0},
                               {"name": "two", "path": "expert_2", "weight": 1.0}])
    return directory


@pytest.fixture
def learnable_folder(tmp_path):
    return make_learnable_folder(tmp_path / "data")


def train_in_one_and_two_processes(recipe_args, out_root, master_port: int) -> None:
    """Run the two-stage recipe once in one process (``out_root/one``) and once under torchrun with two gloo
    processes (``out_root/two``), and check that the second really ran as two processes."""
    import json
    import os
    import subprocess
    import sys

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    single = subprocess.run([sys.executable, "-m", "fdcore.recipes.two_stage", *recipe_args, "--output-dir",
                             str(out_root / "one")], env=env, capture_output=True, text=True, timeout=300)
    assert single.returncode == 0, single.stderr
    double = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_port", str(master_port), "-m", "fdcore.recipes.two_stage", *recipe_args,
                             "--output-dir", str(out_root / "two")], env=env, capture_output=True, text=True,
                            timeout=300)
    assert double.returncode == 0, double.stderr[-3000:]
    # Without these the "two-process" run could be two independent single-process runs and still match.
    assert json.loads((out_root / "two" / "run.json").read_text())["processes"] == 2
    assert double.stdout.count("expert written to") == 1, double.stdout
