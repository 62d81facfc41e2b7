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
