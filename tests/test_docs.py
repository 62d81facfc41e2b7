"""The plugin guide's example is the real, installed, tested toy plugin, verbatim."""

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_plugin_guide_code_matches_the_example_plugin():
    spec = importlib.util.spec_from_file_location("sync_examples", ROOT / "docs" / "sync_examples.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    guide = (ROOT / "docs" / "plugins.md").read_text()
    assert module.sync(guide) == guide, "docs/plugins.md is out of date: run python docs/sync_examples.py"
    assert guide.count("<!-- file: ") == 3
