"""NPR on CPU: scoring throughput and peak memory through fdcore's own scoring path, and training step time.

Inference: a real-size NPR expert (random weights: speed and memory do not depend on them) is saved, loaded as an
ensemble and scores generated PNG files with ``Ensemble.predict_paths`` (decode, the crop grid, the expert, fusion:
what ``fdcore predict`` does per image) at 512x512 and 2048x1536, for each crop count. Every configuration runs in a
fresh subprocess so its peak RSS is its own. Training: median seconds per optimizer step (forward, backward, AdamW)
at batch 32 for several window sizes, fp32, and bf16 autocast where the CPU has AVX-512 BF16 or AMX.

    nice -n 10 .venv/bin/python bench/bench_npr.py --out bench/results/npr.json
    .venv/bin/python bench/bench_npr.py --tiny        # a smoke test of the script (seconds; numbers mean nothing)
"""

from __future__ import annotations

import argparse
import datetime
import json
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import command_line, finish, machine


def _peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def inference(width: int, height: int, crops: int, crop_size: int, images: int, batch: int, tiny: bool) -> dict:
    import numpy as np
    from PIL import Image

    import fdcore

    options = {"crop_size": crop_size, "crops": crops, **({"width": 8, "blocks": [1, 1]} if tiny else {})}
    with tempfile.TemporaryDirectory() as scratch:
        scratch = Path(scratch)
        fdcore.save_expert(fdcore.get_expert("npr", **options), scratch / "npr")
        rng = np.random.default_rng(0)
        paths = []
        for index in range(images):
            path = scratch / f"{index}.png"
            Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path, compress_level=1)
            paths.append(path)
        ensemble = fdcore.load_ensemble(scratch / "npr", device="cpu")
        ensemble.predict_paths(paths[:1], batch_size=batch)  # warm-up: kernel selection, first allocations
        before = _peak_mib()
        started = time.perf_counter()
        results = ensemble.predict_paths(paths, batch_size=batch)
        seconds = time.perf_counter() - started
    if any(result["error"] for result in results):
        raise RuntimeError(f"scoring failed: {[r['error'] for r in results if r['error']][:3]}")
    return {"kind": "inference", "width": width, "height": height, "crops": crops, "crop_size": crop_size,
            "images": images, "batch": batch, "seconds": round(seconds, 3), "images_per_s": images / seconds,
            "windows_per_s": images * crops / seconds, "peak_rss_mib": round(_peak_mib(), 1),
            "peak_rss_before_scoring_mib": round(before, 1),
            "decoded_image_mib": round(width * height * 3 / 2**20, 1)}


def training(crop_size: int, batch: int, precision: str, steps: int, tiny: bool) -> dict:
    import torch

    import fdcore

    torch.manual_seed(0)
    expert = fdcore.get_expert("npr", crop_size=crop_size, **({"width": 8, "blocks": [1, 1]} if tiny else {}))
    optimizer = torch.optim.AdamW(expert.parameters(), lr=2e-4, weight_decay=0.0)
    pixels = torch.randn(batch, 3, crop_size, crop_size)
    labels = torch.randint(0, 2, (batch,))
    times = []
    for step in range(steps + 1):
        started = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            logits = expert(pixels)
        loss = torch.nn.functional.cross_entropy(logits.float(), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step:  # the first step selects kernels and allocates
            times.append(time.perf_counter() - started)
    median = statistics.median(times)
    return {"kind": "training", "crop_size": crop_size, "batch": batch, "precision": precision, "steps": steps,
            "seconds_per_step": round(median, 4), "images_per_s": batch / median, "peak_rss_mib": round(_peak_mib(), 1)}


def _run(arguments: list[str], timeout: float) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(arguments)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timed out after {timeout:.0f} s", "arguments": arguments}
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1], "arguments": arguments}
    return json.loads(done.stdout.strip().splitlines()[-1])


def _table(rows: list[dict]) -> str:
    lines = ["| measurement | images/s | detail | peak RSS MiB |", "|---|---:|---|---:|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['arguments']} | error: {row['error']} | | |")
        elif row["kind"] == "inference":
            lines.append(f"| score {row['width']}x{row['height']}, {row['crops']} windows of {row['crop_size']} px | "
                         f"{row['images_per_s']:.2f} | {row['windows_per_s']:.1f} windows/s, batch {row['batch']} | "
                         f"{row['peak_rss_mib']:.0f} |")
        else:
            lines.append(f"| train step, {row['crop_size']} px windows, batch {row['batch']}, {row['precision']} | "
                         f"{row['images_per_s']:.1f} | {row['seconds_per_step']:.3f} s/step | "
                         f"{row['peak_rss_mib']:.0f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="512x512,2048x1536", help="comma list of WIDTHxHEIGHT images to score")
    parser.add_argument("--crops", default="1,4,9", help="comma list of windows per image")
    parser.add_argument("--crop-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=16, help="images scored per configuration")
    parser.add_argument("--batch", type=int, default=8, help="scoring batch size")
    parser.add_argument("--train-crops", default="96,128,224", help="comma list of training window sizes")
    parser.add_argument("--train-batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed training steps per configuration")
    parser.add_argument("--tiny", action="store_true", help="a narrow NPR on small inputs: checks the script only")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per configuration")
    parser.add_argument("--out", type=Path, default=None, help="write results and environment as JSON here")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        kind, *rest = json.loads(args.worker)
        result = inference(*rest) if kind == "inference" else training(*rest)
        print(json.dumps(result))
        return 0

    import torch

    cpu = machine()
    precisions = ["fp32"] + (["bf16"] if cpu["avx512_bf16"] or cpu["amx_bf16"] else [])
    sizes = ["96x64", "200x120"] if args.tiny else [s for s in args.sizes.split(",") if s]
    crop_size = 32 if args.tiny else args.crop_size
    images = 2 if args.tiny else args.images
    rows = []
    for size in sizes:
        width, height = (int(v) for v in size.lower().split("x"))
        for crops in (int(c) for c in args.crops.split(",") if c):
            print(f"[{time.strftime('%H:%M:%S')}] scoring {width}x{height}, {crops} windows", file=sys.stderr)
            rows.append(_run(["inference", width, height, crops, crop_size, images, args.batch, args.tiny],
                             args.timeout))
    train_crops = [32] if args.tiny else [int(c) for c in args.train_crops.split(",") if c]
    for window in train_crops:
        for precision in precisions:
            print(f"[{time.strftime('%H:%M:%S')}] training {window} px, {precision}", file=sys.stderr)
            rows.append(_run(["training", window, 4 if args.tiny else args.train_batch, precision,
                              1 if args.tiny else args.steps, args.tiny], args.timeout))
    environment = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "command": command_line(), **cpu, "torch": torch.__version__,
                   "torch_threads": torch.get_num_threads(), "python": platform.python_version(), "tiny": args.tiny}
    headline = (f"{cpu['cpu']} ({cpu['cpu_count']} CPUs; {', '.join(cpu['flags'])}), torch {torch.__version__}"
                f"{', TINY (smoke test)' if args.tiny else ''}")
    return finish(args.out, environment, rows, _table(rows), headline)


if __name__ == "__main__":
    sys.exit(main())
