import os
import sys
from pathlib import Path

import pytest

from fdcore import plugins

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(autouse=True)
def fresh_plugin_state(monkeypatch):
    """Each test starts from unloaded plugins, so FDCORE_* variables set by the test take effect."""
    monkeypatch.delenv("FDCORE_STRICT_PLUGINS", raising=False)
    monkeypatch.delenv("FDCORE_LOAD_PLUGINS", raising=False)
    plugins.reset()
    yield
    plugins.reset()


def fdcore_command(*args, env=None, timeout=120, check=False):
    """Run the installed ``fdcore`` console script in a subprocess (the real entry-point and metadata path)."""
    import subprocess

    executable = Path(sys.executable).with_name("fdcore")
    command = [str(executable) if executable.exists() else sys.executable, *([] if executable.exists() else ["-m", "fdcore"])]
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FDCORE_")}
    full_env.update(env or {})
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
def learnable_folder(tmp_path):
    return make_learnable_folder(tmp_path / "data")
