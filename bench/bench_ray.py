"""Throughput of ``fdcore predict --engine ray`` against single-process ``fdcore predict``: same ensemble, images and
machine, in one run.

    .venv/bin/python bench/bench_ray.py --ensemble fdcore-demo/ensemble --images ../shared/data/aigc-sd1x \
        --json-out bench/results/ray.json

Each configuration scores every image into a fresh output folder, end to end (listing, loading the ensemble, decoding,
scoring, writing the final files); the Ray instance is started once beforehand (its start-up time is reported on its
own) with as many CPUs as the machine has. Ray's predictions.csv must equal single-process predict's byte for byte.
The ratio is Ray's images/s over single-process predict's.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from benchlib import command_line, finish, machine  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ensemble", required=True)
    parser.add_argument("--images", required=True, help="a folder of images (scored recursively)")
    parser.add_argument("--actors", default="1,2", help="comma list of Ray actor counts to measure")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers of single-process predict")
    parser.add_argument("--json-out", type=Path)
    args = parser.parse_args()

    import ray

    from fdcore.integrations.ray import RayEngine
    from fdcore.predict import PredictOptions, run_predict

    scratch = Path(tempfile.mkdtemp(prefix="bench-ray-"))
    rows = []
    try:
        def options(name: str) -> PredictOptions:
            return PredictOptions(images=args.images, ensemble=args.ensemble, out=str(scratch / name), quiet=True,
                                  batch_size=args.batch_size, workers=args.workers)

        started = time.perf_counter()
        single = run_predict(options("single"))
        single_s = time.perf_counter() - started
        rows.append({"engine": "single-process", "actors": None, "images": single.images, "seconds": round(single_s, 2),
                     "images_per_s": round(single.images / single_s, 2), "ratio": 1.0, "identical": True})
        started = time.perf_counter()
        ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        ray.data.DataContext.get_current().enable_progress_bars = False
        ray_start_s = time.perf_counter() - started
        for count in [int(value) for value in args.actors.split(",") if value.strip()]:
            name = f"ray-{count}"
            started = time.perf_counter()
            summary = run_predict(options(name), engine=RayEngine(num_actors=count))
            seconds = time.perf_counter() - started
            identical = (scratch / name / "predictions.csv").read_bytes() == \
                (scratch / "single" / "predictions.csv").read_bytes()
            row = {"engine": "ray", "actors": count, "images": summary.images, "seconds": round(seconds, 2),
                   "images_per_s": round(summary.images / seconds, 2),
                   "ratio": round((summary.images / seconds) / (single.images / single_s), 3), "identical": identical}
            if not identical:
                row["error"] = "predictions.csv differs from single-process predict"
            rows.append(row)
        ray.shutdown()
    finally:
        shutdown = getattr(ray, "shutdown", None) if "ray" in locals() else None
        if shutdown:
            shutdown()
        shutil.rmtree(scratch, ignore_errors=True)
    environment = {**machine(), "command": command_line(), "ray_start_s": round(ray_start_s, 2),
                   "ensemble": args.ensemble, "images": args.images}
    table = "\n".join(f"{row['engine']:>15} actors={row['actors']!s:>4} {row['images']} images in {row['seconds']} s: "
                      f"{row['images_per_s']} img/s, ratio {row['ratio']}, identical={row['identical']}" for row in rows)
    best = max((row for row in rows if row["engine"] == "ray"), key=lambda row: row["ratio"], default=None)
    headline = (f"Ray ({best['actors']} actors) / single-process predict: {best['ratio']}x "
                f"(Ray start-up {environment['ray_start_s']} s, not included)" if best else "no Ray configuration ran")
    return finish(args.json_out, environment, rows, table, headline)


if __name__ == "__main__":
    sys.exit(main())
