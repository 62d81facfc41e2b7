"""bench/bench_training.py runs end to end in its tiny mode and writes the JSON the docs quote (no timing checks)."""

import json
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "bench_training.py"


def test_tiny_mode_writes_measurements_checks_and_the_gpu_estimate(tmp_path):
    out = tmp_path / "training.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--tiny", "--experts", "siglip", "--stages", "2",
                           "--checkpointing", "yes", "--tiny-batches", "2,6", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    assert {"environment", "architectures", "measured", "activation_check", "gpu_estimate"} <= set(result)
    measured = result["measured"]
    assert [row["batch"] for row in measured] == [2, 6]
    for row in measured:
        assert row["size"] == "tiny" and row["stage"] == 2 and row["checkpointing_active"] is True
        assert row["images_per_s"] > 0 and row["step_peak_rss_mib"] > row["rss_start_mib"] > 0
        assert row["trainable"] == row["parameters"] > 0  # the whole expert trains; the teacher is extra
    (check,) = result["activation_check"]
    assert check["batches"] == [2, 6] and check["analytic_mib_per_image"] > 0
    # autograd's saved tensors, counted by hooks, against the analytic model (exact bookkeeping, so a loose band)
    assert 0.5 < check["saved_over_analytic"] < 2.0, check
    estimate = result["gpu_estimate"]
    assert estimate["paper"]["reported_peak_gb_per_gpu"] == 60
    rows = [row for row in estimate["rows"] if row["expert"] == "siglip"]
    assert {row["setup"] for row in rows} == {"fp16-amp", "bf16-amp", "bf16-pure"}
    by_key = {(r["stage"], r["setup"], r["checkpointing"], r["attention"]): r["total_gib"] for r in rows}
    # checkpointing must save memory, and stage 2 (frozen teacher) must cost more than stage 1
    assert by_key[(1, "fp16-amp", True, "sdpa")] < by_key[(1, "fp16-amp", False, "sdpa")]
    assert by_key[(2, "fp16-amp", False, "sdpa")] > by_key[(1, "fp16-amp", False, "sdpa")]
    assert set(estimate["verdict"]["siglip"]) >= {"half_met_with_bf16_amp_and_checkpointing", "half_of_paper_gib"}


def test_the_npr_benchmark_runs_in_its_tiny_mode(tmp_path):
    out = tmp_path / "npr.json"
    script = SCRIPT.with_name("bench_npr.py")
    done = subprocess.run([sys.executable, str(script), "--tiny", "--crops", "1,4", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(out.read_text())
    kinds = [row["kind"] for row in result["results"]]
    assert kinds.count("inference") == 4 and "training" in kinds
    for row in result["results"]:
        assert row["images_per_s"] > 0 and row["peak_rss_mib"] > 0
    assert "flags" in result["environment"] and result["environment"]["tiny"] is True


def test_the_image_memory_benchmark_measures_every_pixel_mode(tmp_path):
    out = tmp_path / "memory.json"
    script = SCRIPT.with_name("bench_image_memory.py")
    done = subprocess.run([sys.executable, str(script), "--size", "300", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads(out.read_text())["results"]
    assert [row["mode"] for row in rows] == ["RGB", "RGBA", "LA", "L", "P+transparency", "I;16", "I", "CMYK"]
    assert all(row["width"] == row["height"] == 300 and row["peak_growth_mib"] >= 0 for row in rows)
