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
    assert guide.count("<!-- file: ") == 4


def test_readme_setup_block_is_what_ci_runs():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("<!-- setup:begin -->")[1].split("<!-- setup:end -->")[0]
    lines = [line for line in block.strip().splitlines() if not line.startswith("```")]
    assert len(lines) == 2, lines
    install, test = lines
    assert install.startswith("python3 -m venv .venv && ") and install.endswith("&& .venv/bin/fdcore demo")
    for package in ('".[dev,serve,ray]"', "./experts/clip", "./experts/siglip", "./experts/npr"):
        assert package in install
    assert "tests/plugins" not in install  # test-only plugins stay out of a user's installation
    assert "pytest" in test
    assert "README.md" in (ROOT / ".ci" / "run").read_text()
