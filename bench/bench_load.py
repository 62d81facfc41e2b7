"""Time loading one real-size expert (model construction and weight loading) in a fresh process, per file format.

Four cases, each in its own process, timed inside the process from just before the load call to just after it
(imports are timed separately), with the page cache warm (every file is read once, untimed, before the first case):

    pth/clip      a FeatDistill release holding only Expert_1_clip.pth     (fdcore.featdistill, torch checkpoint)
    pth/siglip    a FeatDistill release holding only Expert_3_siglip.pth
    fdcore/clip   the same CLIP expert in fdcore's format                  (fdcore.load_expert, safetensors)
    fdcore/siglip the same SigLIP expert in fdcore's format

The weights are the random real-size release that bench/bench_predict.py builds (reused from --work-dir when
present). Each case also scores two seeded random inputs and records their probabilities (as float.hex strings), so
two runs of this script (before/after a loader change) can be checked for bit-identical outputs.

    flock /tmp/fdcore-heavy.lock nice -n 10 .venv/bin/python bench/bench_load.py --work-dir /tmp/bench-predict \
        --json-out bench/results/load.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CASES = (("pth", "clip", "Expert_1_clip.pth"), ("pth", "siglip", "Expert_3_siglip.pth"),
         ("fdcore", "clip", "Expert_1_clip.pth"), ("fdcore", "siglip", "Expert_3_siglip.pth"))


def single_file_release(release: Path, file_name: str, target: Path) -> Path:
    """A release folder holding one expert file (hard-linked, no copy) and a manifest listing only it."""
    target.mkdir(parents=True, exist_ok=True)
    link = target / file_name
    if not link.exists():
        os.link(release / file_name, link)
    manifest = json.loads((release / "manifest.json").read_text())
    (target / "manifest.json").write_text(json.dumps({"schema_version": 1,
                                                      "files": {file_name: manifest["files"][file_name]}}))
    return target


def fdcore_expert_dir(single_release: Path, target: Path) -> Path:
    """The release's expert converted once into fdcore's format (safetensors + expert.json + manifest.json)."""
    if not (target / "manifest.json").is_file():
        from fdcore.expert_io import save_expert
        from fdcore.featdistill import load_featdistill_release

        (_, expert), = load_featdistill_release(single_release)
        save_expert(expert, target, overwrite=True)
    return target


def peak_rss_mb() -> float:
    """This process's peak resident set (VmHWM). Not ru_maxrss: Linux carries that over from the parent through
    fork and exec, so a child of a big parent would report the parent's peak."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return round(int(line.split()[1]) / 1024, 1)
    return float("nan")


def child(kind: str, source: str) -> None:
    started = time.perf_counter()
    import torch

    import fdcore  # noqa: F401  (plugins register lazily; importing the API is part of the import cost)
    from fdcore.expert_io import load_expert
    from fdcore.featdistill import load_featdistill_release

    imported = time.perf_counter()
    if kind == "pth":
        (_, expert), = load_featdistill_release(source)
    else:
        expert = load_expert(source)
    loaded = time.perf_counter()
    generator = torch.Generator().manual_seed(0)
    size = expert.preprocessing.size
    pixels = torch.randn(2, 3, size, size, generator=generator)
    with torch.inference_mode():
        probabilities = expert.probabilities(pixels)
    print(json.dumps({"fdcore": os.path.dirname(fdcore.__file__), "import_s": round(imported - started, 2), "load_s": round(loaded - imported, 2),
                      "peak_rss_mb": peak_rss_mb(),
                      "probabilities": [float(value).hex() for value in probabilities.double().tolist()]}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="/tmp/bench-predict", help="bench_predict.py's work dir (release)")
    parser.add_argument("--label", default="", help="recorded with the results (e.g. the loader version)")
    parser.add_argument("--json-out", default=None)
    parser.add_argument("--child", nargs=2, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return

    work = Path(args.work_dir)
    release = work / "release"
    sys.path.insert(0, str(REPO / "bench"))
    from bench_predict import make_release, read_into_page_cache

    if not (release / "manifest.json").is_file():
        print(f"building the real-size release in {release} ...", file=sys.stderr)
        make_release(release, tiny=False, seed=0)
        (release / "bench-configs.json").write_text("{}")
    sources = {}
    for kind, tag, file_name in CASES:
        single = single_file_release(release, file_name, work / "load" / f"release-{tag}")
        sources[kind, tag] = single if kind == "pth" else fdcore_expert_dir(single, work / "load" / f"fdcore-{tag}")
    read_into_page_cache([path for source in sources.values() for path in source.iterdir() if path.is_file()])

    results = []
    for kind, tag, _ in CASES:
        process = subprocess.run([sys.executable, __file__, "--child", kind, str(sources[kind, tag])],
                                 capture_output=True, text=True)
        if process.returncode != 0:
            raise RuntimeError(f"{kind}/{tag} failed:\n{process.stderr[-3000:]}")
        measured = json.loads(process.stdout.strip().splitlines()[-1])
        results.append({"format": kind, "expert": tag, **measured})
        print(f"{kind:6s} {tag:6s} import {measured['import_s']:6.2f} s  load {measured['load_s']:6.2f} s  "
              f"peak RSS {measured['peak_rss_mb']:8.1f} MB", flush=True)
    if args.json_out:
        Path(args.json_out).write_text(json.dumps({"label": args.label, "cpu_count": os.cpu_count(),
                                                   "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
