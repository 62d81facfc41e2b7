"""Peak memory of decoding one image through fdcore's pixel policy, per pixel mode.

Each mode's file is written once, then opened in a fresh subprocess with ``fdcore.images.open_image_file`` (what
``fdcore predict`` does per image): the figure is the growth of the process's peak resident set over its level after
imports, divided by ``width x height x 3`` bytes (the RGB image that must exist anyway). Constant-colour images are
used on purpose: they compress to almost nothing, so the file size says nothing about the decoded size (the
"memory amplification" an attacker would use).

    nice -n 10 .venv/bin/python bench/bench_image_memory.py --size 9400 --out bench/results/image-memory.json
    .venv/bin/python bench/bench_image_memory.py --size 256        # a smoke run (seconds)
"""

from __future__ import annotations

import argparse
import datetime
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchlib import command_line, finish, machine

MODES = ("RGB", "RGBA", "LA", "L", "P+transparency", "I;16", "I", "CMYK")


def make_file(mode: str, size: int, folder: Path) -> Path:
    import numpy as np
    from PIL import Image

    path = folder / f"{mode.replace(';', '').replace('+', '_')}.{'tif' if mode in ('CMYK', 'I') else 'png'}"
    if mode == "P+transparency":
        image = Image.new("P", (size, size), 3)
        image.putpalette([value for index in range(256) for value in (index, 255 - index, 7)])
        image.info["transparency"] = 3
        image.save(path, transparency=3)
    elif mode in ("I;16", "I"):
        image = Image.fromarray(np.full((size, size), 40000 if mode == "I;16" else 70000,
                                        dtype=np.uint16 if mode == "I;16" else np.int32))
        image.save(path)
    else:
        Image.new(mode, (size, size), (200, 20, 20, 128)[:len(mode)] if len(mode) > 1 else 90).save(path)
    return path


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def child(path: str) -> dict:
    import fdcore.images as images

    # The kernel's peak counter (VmHWM), reset here: ru_maxrss would carry the parent's peak across fork + exec.
    Path("/proc/self/clear_refs").write_text("5")
    baseline = _status_kib("VmRSS")
    started = time.perf_counter()
    loaded = images.open_image_file(path, max_pixels=10**9, max_aspect_ratio=50)
    seconds = time.perf_counter() - started
    peak = _status_kib("VmHWM")
    rgb_bytes = loaded.width * loaded.height * 3
    return {"source_mode": loaded.mode, "width": loaded.width, "height": loaded.height,
            "peak_growth_mib": round((peak - baseline) / 1024, 1), "rgb_mib": round(rgb_bytes / 2**20, 1),
            "peak_over_rgb": round((peak - baseline) * 1024 / rgb_bytes, 2), "seconds": round(seconds, 3)}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=9400, help="side of the square test images, in pixels")
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {', '.join(MODES)}")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child)))
        return 0
    rows = []
    with tempfile.TemporaryDirectory() as scratch:
        for mode in [m for m in args.modes.split(",") if m]:
            path = make_file(mode, args.size, Path(scratch))
            done = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--child", str(path)],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode != 0:
                rows.append({"mode": mode, "error": (done.stderr.strip().splitlines() or ["failed"])[-1]})
                continue
            rows.append({"mode": mode, "file_kib": round(path.stat().st_size / 1024, 1),
                         **json.loads(done.stdout.strip().splitlines()[-1])})
    lines = ["| mode | file KiB | decoded RGB MiB | peak growth MiB | peak / (w x h x 3) | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in rows:
        if "error" in row:
            lines.append(f"| {row['mode']} | error: {row['error']} | | | | |")
        else:
            lines.append(f"| {row['mode']} | {row['file_kib']} | {row['rgb_mib']} | {row['peak_growth_mib']} | "
                         f"{row['peak_over_rgb']} | {row['seconds']} |")
    environment = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
                   "command": command_line(), **machine(), "size": args.size}
    return finish(args.out, environment, rows, "\n".join(lines),
                  f"{environment['cpu']}: peak memory of open_image_file per pixel mode, {args.size}x{args.size}")


if __name__ == "__main__":
    sys.exit(main())
