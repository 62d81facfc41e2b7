"""Expert throughput and memory on CPU: images/s and peak RSS per (expert, precision, batch size).

Real-size architectures (CLIP ViT-L/14 at 224 px, SigLIP So400M/14 at 384 px) are built from their configs with
random weights, so nothing is downloaded; speed and memory do not depend on the weight values. Every configuration
runs in a fresh subprocess, so each peak RSS belongs to that configuration alone. bf16 means the weights are cast
with ``expert.to(torch.bfloat16)`` and the pixels passed in bf16 (CPUs with AVX-512 BF16 / AMX run it natively).

Columns: ``images/s`` = batch / median time of one ``probabilities()`` call (after ``--warmup`` untimed calls);
``peak RSS`` = the process's maximum resident set (model build included, ru_maxrss); ``inference peak`` = the
maximum resident set during the timed calls alone (the kernel's peak counter is reset after the model is built;
blank where /proc/self/clear_refs is not writable).

    # the full grid (long: about an hour on 2 shared cores); run it alone, niced
    nice -n 10 .venv/bin/python bench/bench_experts.py --out bench/results/experts.json
    # a smoke test of the script itself (tiny architectures, seconds)
    .venv/bin/python bench/bench_experts.py --tiny
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
import time
from pathlib import Path

from benchlib import command_line, finish, machine

PRECISIONS = ("fp32", "bf16")


def _status_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak_rss() -> bool:
    """Reset the kernel's peak-RSS counter (VmHWM) so the next reading covers only what follows."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def run_one(expert_name: str, precision: str, batch: int, iters: int, warmup: int, tiny: bool,
            threads: int | None) -> dict:
    """One configuration, in this process (called in a fresh subprocess by the driver)."""
    import torch

    import fdcore

    if threads:
        torch.set_num_threads(threads)
    expert_class = fdcore.get_expert_class(expert_name)
    config = expert_class.tiny_config() if tiny else {"backbone_config": {}}  # {} = the real-size default
    started = time.perf_counter()
    expert = expert_class(**config).eval()
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[precision]
    expert.to(dtype)
    build_seconds = time.perf_counter() - started
    size = expert.preprocessing.size
    pixels = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(dtype)
    rss_model_kib = _status_kib("VmRSS")
    # ru_maxrss reads the same kernel counter that the reset clears: take the build-time peak first.
    build_peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    reset = _reset_peak_rss()
    times = []
    with torch.inference_mode():
        for _ in range(warmup):  # one-off allocations and kernel selection stay out of the timings
            probabilities = expert.probabilities(pixels)
        for _ in range(iters):
            started = time.perf_counter()
            probabilities = expert.probabilities(pixels)
            times.append(time.perf_counter() - started)
    if not torch.isfinite(probabilities).all():
        raise RuntimeError("non-finite probabilities")
    inference_peak_kib = _status_kib("VmHWM") if reset else None
    median = statistics.median(times)
    return {
        "expert": expert_name, "precision": precision, "batch": batch, "input_size": size, "iters": iters,
        "warmup": warmup,
        "parameters": sum(p.numel() for p in expert.parameters()),
        "images_per_s": batch / median, "median_s": median, "min_s": min(times), "build_s": build_seconds,
        "rss_model_mib": rss_model_kib / 1024 if rss_model_kib else None,
        "peak_rss_mib": max(build_peak_kib, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                            inference_peak_kib or 0) / 1024,
        "inference_peak_rss_mib": inference_peak_kib / 1024 if inference_peak_kib else None,
        "threads": torch.get_num_threads(),
    }


def _environment(args) -> dict:
    import torch
    import transformers

    return {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": command_line(), **machine(),
            "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
            "torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "tiny": args.tiny, "iters": args.iters, "warmup": args.warmup}


def _table(rows: list[dict]) -> str:
    lines = ["| expert | precision | batch | images/s | median s/batch | peak RSS MiB | inference peak MiB |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['expert']} | {row['precision']} | {row['batch']} | error: {row['error']} | | | |")
            continue
        inference = f"{row['inference_peak_rss_mib']:.0f}" if row.get("inference_peak_rss_mib") else ""
        lines.append(f"| {row['expert']} | {row['precision']} | {row['batch']} | {row['images_per_s']:.2f} | "
                     f"{row['median_s']:.3f} | {row['peak_rss_mib']:.0f} | {inference} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--experts", default="clip,siglip", help="comma list of registered experts")
    parser.add_argument("--batches", default="1,8,32", help="comma list of batch sizes")
    parser.add_argument("--precisions", default="fp32,bf16", help="comma list of fp32, bf16")
    parser.add_argument("--iters", type=int, default=3, help="timed calls per configuration")
    parser.add_argument("--warmup", type=int, default=1, help="untimed calls before the timed ones")
    parser.add_argument("--tiny", action="store_true", help="tiny architectures: checks the script, measures nothing")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--timeout", type=float, default=3600, help="seconds allowed per configuration")
    parser.add_argument("--out", type=Path, default=None, help="write results and environment as JSON here")
    parser.add_argument("--worker", nargs=3, metavar=("EXPERT", "PRECISION", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.iters < 1 or args.warmup < 0:
        parser.error("--iters must be at least 1 and --warmup at least 0")

    if args.worker:
        expert, precision, batch = args.worker
        print(json.dumps(run_one(expert, precision, int(batch), args.iters, args.warmup, args.tiny, args.threads)))
        return 0

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    unknown = sorted(set(precisions) - set(PRECISIONS))
    if unknown:
        parser.error(f"unknown precision(s) {unknown}; choose from {list(PRECISIONS)}")
    batches = [int(b) for b in args.batches.split(",") if b.strip()]
    rows = []
    for expert in [e.strip() for e in args.experts.split(",") if e.strip()]:
        for precision in precisions:
            for batch in batches:
                command = [sys.executable, str(Path(__file__).resolve()), "--worker", expert, precision, str(batch),
                           "--iters", str(args.iters), "--warmup", str(args.warmup), *(["--tiny"] if args.tiny else []),
                           *(["--threads", str(args.threads)] if args.threads else [])]
                print(f"[{time.strftime('%H:%M:%S')}] {expert} {precision} batch {batch} ...", file=sys.stderr,
                      flush=True)
                try:
                    done = subprocess.run(command, capture_output=True, text=True, timeout=args.timeout)
                except subprocess.TimeoutExpired:
                    rows.append({"expert": expert, "precision": precision, "batch": batch,
                                 "error": f"timed out after {args.timeout:.0f} s"})
                    continue
                if done.returncode != 0:
                    reason = (done.stderr.strip().splitlines() or [f"exit {done.returncode}"])[-1]
                    rows.append({"expert": expert, "precision": precision, "batch": batch, "error": reason})
                    continue
                rows.append(json.loads(done.stdout.strip().splitlines()[-1]))
    environment = _environment(args)
    headline = (f"{environment['cpu']} ({environment['cpu_count']} CPUs), torch {environment['torch']}, transformers "
                f"{environment['transformers']}{', TINY architectures (smoke test)' if args.tiny else ''}")
    return finish(args.out, environment, rows, _table(rows), headline)


if __name__ == "__main__":
    sys.exit(main())
