"""Degradation speed on one core: median ms per image for every registered operator at 512x512 and 1024x1024
(uint8 in, uint8 out), and the throughput of a policy (default ``featdistill``) in images/s per core at 512x512.

Targets (issue 5): no operator over 50 ms at 512x512; featdistill >= 100 images/s/core at 512x512.

    nice -n 10 .venv/bin/python bench/bench_degradations.py                      # all operators, markdown table
    .venv/bin/python bench/bench_degradations.py --ops 'jpeg*' --sizes 512 --repeats 5
    .venv/bin/python bench/bench_degradations.py --json results.json
    .venv/bin/python bench/bench_degradations.py --profile-policy --policy featdistill   # cost share per operator

Single thread: OMP/MKL/OpenBLAS threads are set to 1 before numpy is imported, torch.set_num_threads(1), and
OpenCV's pool is disabled. Each operator runs at level 3 (severity 0.6) on a natural-looking test image; the level
changes a few operators' cost (kernel sizes), so ``--level`` can be set. Image source: ``--image PATH`` (resized)
or a synthetic image with gradients, edges and texture.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

for variable in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[variable] = "1"

import numpy as np  # noqa: E402


def single_thread() -> None:
    import torch

    torch.set_num_threads(1)
    try:
        import cv2

        cv2.setNumThreads(0)
    except ImportError:
        pass


def test_image(size: int, path: str | None) -> np.ndarray:
    from PIL import Image

    if path:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB").resize((size, size), Image.Resampling.BICUBIC))
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    rng = np.random.default_rng(0)
    image = np.stack([0.2 + 0.6 * xx, 0.3 + 0.5 * yy, 0.5 - 0.3 * xx * yy], axis=-1)
    image += 0.25 * (np.sin(40 * xx ** 1.5) > 0)[..., None] * (yy > 0.7)[..., None]
    disc = (yy - 0.5) ** 2 + (xx - 0.4) ** 2 < 0.04
    image[disc] = (0.85, 0.25, 0.2)
    image += rng.normal(0, 0.03, image.shape)
    return np.clip(np.rint(image * 255), 0, 255).astype(np.uint8)


# "wall" is what a dedicated core sees; "cpu" (this thread's CPU time) is the better estimate of it on a machine
# shared with other jobs, where wall time includes waiting for a core.
CLOCKS = {"wall": time.perf_counter, "cpu": time.thread_time}
clock = CLOCKS["wall"]


def median_ms(function, repeats: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        function()
    times = []
    for _ in range(repeats):
        start = clock()
        function()
        times.append(clock() - start)
    return 1000.0 * statistics.median(times)


def bench_operators(names, sizes, level, repeats, image_path):
    import fdcore
    from fdcore.degradations.policy import operator_rng

    results = {}
    for size in sizes:
        image = test_image(size, image_path)
        for name in names:
            op = fdcore.get_degrader(name)
            counter = iter(range(10**9))
            # A fresh per-call stream, as in training (each sample has its own generator).
            results.setdefault(name, {})[size] = median_ms(
                lambda: op(image, level / 5, operator_rng(0, next(counter), 0)), repeats)
    return results


def warm_policy(policy_name, size, image_path, **options):
    """``(policy, image)`` after five untimed applications (first-call imports and caches)."""
    from fdcore.degradations.policy import load_policy

    policy = load_policy(policy_name, **options)
    image = test_image(size, image_path)
    for sample in range(5):
        policy.apply(image, 0, sample)
    return policy, image


def bench_policy(policy_name, size, samples, image_path, runs: int = 1, **options) -> list[float]:
    """Images per second of ``runs`` passes over the same ``samples`` draws: the work is identical in every pass, so
    their spread is the machine's noise (on a shared VM, neighbours slow even this thread's CPU time)."""
    policy, image = warm_policy(policy_name, size, image_path, **options)
    rates = []
    for _ in range(runs):
        start = clock()
        for sample in range(samples):
            policy.apply(image, 0, sample)
        rates.append(samples / (clock() - start))
    return rates


def profile_policy(policy_name, size, samples, image_path, top=15):
    """Per-operator share of a policy's cost: every operator call inside ``Policy.apply`` is timed, so each operator
    is weighted by how often the policy picks it and at which levels. Returns markdown rows (ms per image)."""
    import collections

    from fdcore.interfaces import Degrader

    totals, calls = collections.Counter(), collections.Counter()
    original = Degrader.__call__

    def timed(self, *args, **kwargs):
        start = clock()
        try:
            return original(self, *args, **kwargs)
        finally:
            totals[self.name] += clock() - start
            calls[self.name] += 1

    policy, image = warm_policy(policy_name, size, image_path)
    Degrader.__call__ = timed
    try:
        start = clock()
        for sample in range(samples):
            policy.apply(image, 0, sample)
        elapsed = clock() - start
    finally:
        Degrader.__call__ = original
    lines = [f"{policy_name} at {size}²: {samples / elapsed:.1f} images/s, {1000 * elapsed / samples:.2f} ms/image",
             "", "| operator | ms per image | calls | ms per call |", "|---|---|---|---|"]
    for name, seconds in totals.most_common(top):
        per_image, per_call = 1000 * seconds / samples, 1000 * seconds / calls[name]
        lines.append(f"| {name} | {per_image:.3f} | {calls[name]} | {per_call:.2f} |")
    return "\n".join(lines)


def markdown(results, sizes, limit_ms, policy_rows):
    lines = ["| operator | category | " + " | ".join(f"{s}² ms" for s in sizes) + " |",
             "|---|---|" + "---|" * len(sizes)]
    from fdcore import registry

    for name in sorted(results):
        cells = []
        for size in sizes:
            value = results[name].get(size)
            flag = " ⚠" if size == 512 and value is not None and value > limit_ms else ""
            cells.append("–" if value is None else f"{value:.2f}{flag}")
        lines.append(f"| {name} | {registry.get('degraders', name).category} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append("| policy | size | images/s/core (median of runs) | runs |")
    lines.append("|---|---|---|---|")
    for label, size, rates in policy_rows:
        lines.append(f"| {label} | {size}² | {statistics.median(rates):.1f} | "
                     f"{', '.join(f'{rate:.1f}' for rate in rates)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ops", default=None, help="fnmatch pattern of operators (default: all registered)")
    parser.add_argument("--sizes", default="512,1024", help="comma-separated square sizes")
    parser.add_argument("--level", type=int, default=3, help="level 1..5 for the operator table (default 3)")
    parser.add_argument("--repeats", type=int, default=15, help="timed calls per operator and size")
    parser.add_argument("--policy", default="featdistill", help="policy to time ('' to skip)")
    parser.add_argument("--policy-samples", type=int, default=300, help="images for the policy timing")
    parser.add_argument("--policy-runs", type=int, default=3,
                        help="timed passes over the same policy samples (the table gives their median)")
    parser.add_argument("--image", default=None, help="benchmark on this image (resized) instead of a synthetic one")
    parser.add_argument("--limit-ms", type=float, default=50.0, help="flag operators slower than this at 512²")
    parser.add_argument("--clock", choices=sorted(CLOCKS), default="wall",
                        help="wall time (a dedicated core) or this thread's CPU time (a shared machine)")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the raw numbers here")
    parser.add_argument("--profile-policy", action="store_true",
                        help="instead print each operator's share of --policy's cost (ms per image, top 15)")
    # --- albumentations comparison (bench_vs_albumentations.py; needs the benchmark-only bench/.venv-bench) ---
    parser.add_argument("--vs-albumentations", action="store_true",
                        help="instead compare the operators albumentations 2.0.8 also has, at matched strength")
    args = parser.parse_args(argv)
    if args.vs_albumentations:
        from bench_vs_albumentations import main as compare_with_albumentations

        return compare_with_albumentations(["--sizes", args.sizes, "--repeats", str(args.repeats)]
                                           + (["--image", args.image] if args.image else [])
                                           + (["--json", args.json_path] if args.json_path else []))
    # --- end of the albumentations comparison ---
    global clock
    clock = CLOCKS[args.clock]
    single_thread()

    if args.profile_policy:
        print(profile_policy(args.policy, 512, args.policy_samples, args.image))
        return 0

    import fdcore

    names = fdcore.list_degraders(args.ops)
    sizes = [int(s) for s in args.sizes.split(",") if s]
    results = bench_operators(names, sizes, args.level, args.repeats, args.image)
    policy_rows = []
    if args.policy:
        for label, options in ((args.policy, {}), (f"{args.policy} (preserve_alignment)",
                                                    {"preserve_alignment": True})):
            policy_rows.append((label, 512, bench_policy(args.policy, 512, args.policy_samples, args.image,
                                                         runs=args.policy_runs, **options)))
    print(f"<!-- {platform.processor() or platform.machine()}, python {platform.python_version()}, "
          f"level {args.level}, median of {args.repeats} calls, 1 thread, {args.clock} clock -->")
    print(markdown(results, sizes, args.limit_ms, policy_rows))
    slow = sorted(name for name in results if results[name].get(512, 0) > args.limit_ms)
    if slow:
        print(f"\nover {args.limit_ms:g} ms at 512²: {', '.join(slow)}", file=sys.stderr)
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump({"operators": results, "policies": policy_rows, "level": args.level}, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
