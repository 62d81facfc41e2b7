"""Benchmark ``fdcore predict`` against a plain loop that does what FeatDistill's reference CLI does.

Both sides score the same folder with the same four-expert FeatDistill-layout release (two CLIP ViT-L/14 + two
SigLIP So400M, random weights built from config: no download), each in a fresh process, timed from process start to
exit (imports and model loading included). Peak memory is the largest sum of PSS over the process tree (main process
plus DataLoader workers; RSS sampled every 0.2 s and PSS read at each new RSS high and every 5 s, as a PSS
reading costs ~50 ms per 4 GB; PSS splits copy-on-write pages fairly between forked workers), plus the
main process's own ru_maxrss.

    plain loop:    PIL decode + transforms in the main process, batch 1, fp32, all experts resident, mean of P(fake)
    fdcore:        fdcore predict (DataLoader workers, batching, --precision), same release, same images

Usage (the real-size run is heavy: ~6 GB of random weights written once, minutes per configuration on 2 cores):

    nice -n 10 .venv/bin/python bench/bench_predict.py --images 32 --configs int8:8:1,fp32:8:1,bf16:8:1 --json-out bench.json
    .venv/bin/python bench/bench_predict.py --tiny          # smoke run with tiny experts (seconds)

Each --configs item is precision:batch_size:workers for one fdcore run. The weight files are read once (untimed)
before the first run, so every run finds them in the page cache; both sides load the release with the same fdcore
loader (fdcore.featdistill), so loading improvements speed up the plain loop too. The script also reports the largest
difference between each fdcore run's scores and the plain loop's (fp32 must stay within 1e-4, reduced precision
within 0.02).
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
EXPERT_TAGS = ("clip", "clip", "siglip", "siglip")


# -- fixtures ---------------------------------------------------------------------------------------------------------

def make_images(folder: Path, count: int, size: int, seed: int) -> None:
    """Seeded photo-like JPEGs (smooth blocks + noise), sizes varying around ``size``."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        height, width = size + int(rng.integers(-size // 4, size // 4)), size + int(rng.integers(-size // 4, size // 4))
        blocks = rng.integers(0, 256, (height // 16 + 1, width // 16 + 1, 3)).astype(np.float32)
        image = np.kron(blocks, np.ones((16, 16, 1), dtype=np.float32))[:height, :width]
        image = np.clip(image + rng.normal(0, 10, image.shape), 0, 255).astype(np.uint8)
        Image.fromarray(image).save(folder / f"image_{index:04d}.jpg", quality=90)


def make_release(folder: Path, tiny: bool, seed: int) -> dict:
    """A FeatDistill-layout release (Expert_<n>_<tag>.pth + manifest.json) with random weights; returns the
    per-tag constructor kwargs the loader needs (empty for the real-size default architectures)."""
    import torch

    import fdcore

    folder.mkdir(parents=True, exist_ok=True)
    configs = {}
    files = {}
    for index, tag in enumerate(EXPERT_TAGS, start=1):
        expert_class = fdcore.get_expert_class(tag)
        configs[tag] = expert_class.tiny_config() if tiny else {"backbone_config": {}}
        torch.manual_seed(seed + index)
        expert = expert_class(**configs[tag]).eval()
        path = folder / f"Expert_{index}_{tag}.pth"
        torch.save(expert.state_dict(), path)
        del expert
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 24):
                digest.update(chunk)
        files[path.name] = {"size_bytes": path.stat().st_size, "sha256": digest.hexdigest()}
    (folder / "manifest.json").write_text(json.dumps({"schema_version": 1, "files": files}, indent=2))
    return configs if tiny else {}


# -- the two contenders (each runs in its own process) --------------------------------------------------------------

def child_plain(images: Path, release: Path, configs: dict, out_csv: Path) -> float:
    """The reference CLI's way: every expert resident in fp32, one image at a time, transforms in this process."""
    import torch

    from fdcore.featdistill import load_featdistill_release
    from PIL import Image

    started = time.perf_counter()
    experts = [expert for _, expert in load_featdistill_release(release, device="cpu", expert_config=configs)]
    load_seconds = time.perf_counter() - started
    names = sorted(path.relative_to(images).as_posix() for path in images.rglob("*.jpg"))
    rows = []
    with torch.inference_mode():
        for name in names:
            image = Image.open(images / name).convert("RGB")
            probabilities = [float(expert.probabilities(expert.preprocess([image]))[0]) for expert in experts]
            rows.append((name, sum(probabilities) / len(probabilities)))
    with open(out_csv, "w", newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["image_name", "score"])
        writer.writerows((name, f"{score:.8f}") for name, score in rows)
    return load_seconds


def child_fdcore(images: Path, release: Path, configs: dict, out_dir: Path, precision: str, batch_size: int,
                 workers: int) -> float:
    """``fdcore predict`` (the CLI is a thin wrapper over run_predict; this adds the tiny-architecture config)."""
    from fdcore.ensemble_io import load_ensemble
    from fdcore.predict import PredictOptions, run_predict

    started = time.perf_counter()
    ensemble = load_ensemble(release, device="cpu", precision=precision, expert_config=configs or None)
    load_seconds = time.perf_counter() - started
    run_predict(PredictOptions(images=str(images), ensemble=str(release), out=str(out_dir), batch_size=batch_size,
                               workers=workers, precision=precision, device="cpu", quiet=True), ensemble=ensemble)
    return load_seconds


# -- measurement ------------------------------------------------------------------------------------------------------

def read_into_page_cache(paths) -> None:
    """Read files once (untimed), so that every timed run finds them in the page cache."""
    for path in paths:
        with open(path, "rb") as handle:
            while handle.read(1 << 24):
                pass


def measure(command: list[str]) -> dict:
    """Wall time and peak memory of a child process tree."""
    import psutil

    started = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    root = psutil.Process(process.pid)
    peak_pss = peak_rss = 0
    last_pss = 0.0

    def tree_sum(reading) -> int:
        total = 0
        try:
            for member in [root, *root.children(recursive=True)]:
                try:
                    total += reading(member)
                except (psutil.NoSuchProcess, psutil.AccessDenied):
                    pass
        except psutil.NoSuchProcess:
            pass
        return total

    while process.poll() is None:
        rss = tree_sum(lambda member: member.memory_info().rss)
        # A PSS reading walks every page of the process (~50 ms for 4 GB: at 5 Hz, 40 % of a core taken from the
        # run being measured). RSS is O(1); PSS is read only when the tree's RSS reaches a new high, and every 5 s.
        if rss > peak_rss * 1.05 or time.perf_counter() - last_pss > 5.0:
            peak_pss = max(peak_pss, tree_sum(lambda member: member.memory_full_info().pss))
            last_pss = time.perf_counter()
        peak_rss = max(peak_rss, rss)
        time.sleep(0.2)
    stdout, stderr = process.communicate()
    wall = time.perf_counter() - started
    if process.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} failed ({process.returncode}):\n{stderr[-3000:]}")
    report = json.loads(stdout.strip().splitlines()[-1])
    return {"wall_s": round(wall, 2), "peak_tree_pss_mb": round(peak_pss / 2**20, 1),
            "main_maxrss_mb": round(report["maxrss_kb"] / 1024, 1), "model_load_s": report["load_s"]}


def read_scores(path: Path) -> dict[str, float]:
    with open(path, newline="") as handle:
        return {row["image_name"]: float(row["score"]) for row in csv.DictReader(handle)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tiny", action="store_true", help="tiny experts and images: a smoke run")
    parser.add_argument("--images", type=int, default=None, help="number of images (default 32, tiny 8)")
    parser.add_argument("--image-size", type=int, default=None, help="typical side in pixels (default 512, tiny 96)")
    parser.add_argument("--configs", default="int8:8:1,fp32:8:1,bf16:8:1", help="fdcore runs, precision:batch:workers,...")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", default=None, help="keep images and release here (default: a temp dir)")
    parser.add_argument("--json-out", default=None, help="also write the results as JSON to this file")
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child-args", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        spec = json.loads(args.child_args)
        if args.child == "plain":
            load_seconds = child_plain(Path(spec["images"]), Path(spec["release"]), spec["configs"], Path(spec["out"]))
        else:
            load_seconds = child_fdcore(Path(spec["images"]), Path(spec["release"]), spec["configs"], Path(spec["out"]),
                         spec["precision"], spec["batch_size"], spec["workers"])
        print(json.dumps({"maxrss_kb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss,
                          "load_s": round(load_seconds, 2)}))
        return

    count = args.images or (8 if args.tiny else 32)
    size = args.image_size or (96 if args.tiny else 512)
    work = Path(args.work_dir) if args.work_dir else Path(tempfile.mkdtemp(prefix="bench-predict-"))
    images, release = work / "images", work / ("release-tiny" if args.tiny else "release")
    if not images.is_dir():
        make_images(images, count, size, args.seed)
    configs_path = release / "bench-configs.json"
    if configs_path.is_file():
        configs = json.loads(configs_path.read_text())
    else:
        print(f"building the release in {release} ...", file=sys.stderr)
        configs = make_release(release, args.tiny, args.seed)
        configs_path.write_text(json.dumps(configs))

    # Read every weight file once, untimed: otherwise the first run (the plain loop) alone would pay the disk reads
    # and the later ones would find the files in the page cache.
    read_into_page_cache(sorted(release.iterdir()))

    def child(kind: str, **spec) -> list[str]:
        spec.update(images=str(images), release=str(release), configs=configs)
        return [sys.executable, __file__, "--child", kind, "--child-args", json.dumps(spec)]

    results = []
    plain_csv = work / "plain.csv"
    plain = measure(child("plain", out=str(plain_csv)))
    plain_scores = read_scores(plain_csv)
    results.append({"run": "plain loop (reference CLI style)", "precision": "fp32", "batch_size": 1, "workers": 0,
                    **plain, "max_abs_diff_vs_plain": 0.0})
    for item in args.configs.split(","):
        precision, batch_size, workers = item.split(":")
        out_dir = work / f"fdcore-{precision}-{batch_size}-{workers}"
        shutil.rmtree(out_dir, ignore_errors=True)  # every configuration scores from scratch (no resume)
        measured = measure(child("fdcore", out=str(out_dir), precision=precision, batch_size=int(batch_size),
                                 workers=int(workers)))
        scores = read_scores(out_dir / "predictions.csv")
        if set(scores) != set(plain_scores):
            raise RuntimeError(f"{out_dir}: scored {len(scores)} images, the plain loop {len(plain_scores)}")
        difference = max(abs(scores[name] - plain_scores[name]) for name in scores)
        results.append({"run": "fdcore predict", "precision": precision, "batch_size": int(batch_size),
                        "workers": int(workers), **measured, "max_abs_diff_vs_plain": difference,
                        "speedup_vs_plain": round(plain["wall_s"] / measured["wall_s"], 2)})

    print(f"\n{count} images (~{size} px), {'tiny' if args.tiny else 'real-size'} experts "
          f"{'/'.join(EXPERT_TAGS)}, CPU threads {os.cpu_count()}\n")
    header = ["run", "precision", "batch_size", "workers", "wall_s", "model_load_s", "speedup_vs_plain",
              "peak_tree_pss_mb",
              "main_maxrss_mb", "max_abs_diff_vs_plain"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in results:
        print("| " + " | ".join(str(row.get(column, "")) for column in header) + " |")
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"images": count, "image_size": size, "tiny": args.tiny,
                                                   "results": results}, indent=2))


if __name__ == "__main__":
    main()
