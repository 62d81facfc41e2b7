"""bench/gpu_check.py in its smoke mode (tiny models, CPU): the script a lent GPU runs cannot rot in between."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "gpu_check.py"


def test_the_gpu_check_runs_every_part_in_smoke_mode(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--tiny", "--device", "cpu"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads((tmp_path / "out" / "gpu_check.json").read_text())
    assert result["environment"]["device"] == "cpu" and result["seconds"] > 0
    scored = [row for row in result["prediction"] if "batch" in row and "skipped" not in row]
    assert {row["batch"] for row in scored} == {16, 64} and all(row["images"] == 8 for row in scored)
    plain = next(row for row in result["prediction"] if "plain_loop" in row)
    assert plain["scores_agree_within_0_02"] is True and plain["speedup_of_fdcore"] > 0
    trained = {(row["expert"], row["stage"], row["gradient_checkpointing"]) for row in result["training"]}
    assert trained == {(e, s, c) for e in ("clip", "siglip") for s in (1, 2) for c in (True, False)}
    assert all(row["seconds_per_step"] > 0 for row in result["training"] + result["npr"])
    assert result["serving"] and "skipped" in result["serving"][0]
    summary = (tmp_path / "out" / "summary.txt").read_text()
    assert "TINY smoke mode" in summary and summary.count("training:") == 8


def test_the_gpu_check_refuses_real_sizes_on_a_cpu(tmp_path):
    done = subprocess.run([sys.executable, str(SCRIPT), str(tmp_path / "out"), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "--tiny" in done.stderr
