"""fdcore degradations against imagecorruptions 1.1.2 (the ImageNet-C corruptions most robustness papers use), one
core, at 512x512 and 1024x1024, uint8 in and out: median CPU ms per call, the two libraries timed in alternation
on the same image (the timer and image are those of bench_vs_albumentations.py).

imagecorruptions has its own severity tables, so the rows compare the same level number (3 by default) of the
corruption each library names alike, not matched strength: a speed reference, not a target. It is never a project
dependency and needs two shims to import on current Python packages, both confined to the benchmark's environment:

    python3 -m venv bench/.venv-bench
    bench/.venv-bench/bin/pip install -e . albumentations==2.0.8 imagecorruptions==1.1.2 "setuptools<70"
    bench/.venv-bench/bin/python bench/bench_vs_imagecorruptions.py \
        --json bench/results/degradations-vs-imagecorruptions.json

(``setuptools<70`` brings back ``pkg_resources``, which imagecorruptions imports; pip then warns that torch asks for
a newer setuptools, which torch does not need at run time.) Three corruptions fail inside imagecorruptions on
current scikit-image and NumPy (``glass_blur`` and ``gaussian_blur`` pass a removed ``multichannel`` argument,
``fog`` uses ``np.float_``); they are reported, not timed.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_degradations import single_thread, test_image  # noqa: E402  (sets the thread variables first)
from bench_vs_albumentations import alternate, comparison_table  # noqa: E402

import numpy as np  # noqa: E402

# (fdcore operator, imagecorruptions corruption): the same kind of degradation under the same name or close to it.
PAIRS = (
    ("white_noise", "gaussian_noise"), ("shot_noise", "shot_noise"), ("impulse_noise", "impulse_noise"),
    ("speckle_noise", "speckle_noise"), ("gaussian_blur", "gaussian_blur"), ("glass_blur", "glass_blur"),
    ("defocus_blur", "defocus_blur"), ("motion_blur", "motion_blur"), ("zoom_blur", "zoom_blur"),
    ("snow", "snow"), ("frost", "frost"), ("fog", "fog"), ("brighten", "brightness"),
    ("linear_contrast_change", "contrast"), ("color_saturation", "saturate"), ("elastic", "elastic_transform"),
    ("pixelate", "pixelate"), ("jpeg", "jpeg_compression"),
)


def run(sizes, repeats, level, only, image_path):
    import warnings

    from imagecorruptions import corrupt

    import fdcore
    from fdcore.degradations.policy import operator_rng

    warnings.simplefilter("ignore")  # imagecorruptions' deprecation warnings from scikit-image and SciPy
    results = []
    for name, corruption in PAIRS:
        if only and name not in only:
            continue
        op = fdcore.get_degrader(name)
        row = {"operator": name, "imagecorruptions": corruption, "level": level, "ms": {}, "error": None}
        for size in sizes:
            image = test_image(size, image_path)

            def theirs():
                np.random.seed(0)  # imagecorruptions draws from numpy's global generator
                return corrupt(image, corruption_name=corruption, severity=level)

            try:
                theirs()
            except Exception as exc:  # a corruption broken on current libraries: report it, time the rest
                row["error"] = f"{type(exc).__name__}: {exc}"
                break
            fd_ms, ic_ms = alternate(lambda index: operator_rng(0, index, 0),
                                     lambda generator: op(image, level / 5, generator), theirs, repeats)
            row["ms"][size] = {"fdcore": fd_ms, "imagecorruptions": ic_ms}
        results.append(row)
    return results


def markdown(results, sizes) -> str:
    return comparison_table(results, sizes, "imagecorruptions", {
        "fdcore operator": lambda row: row["operator"], "imagecorruptions": lambda row: row["imagecorruptions"]},
        digits=1)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="512,1024", help="comma-separated square sizes")
    parser.add_argument("--repeats", type=int, default=9, help="minimum timed calls per library, operator and size")
    parser.add_argument("--level", type=int, default=3, choices=range(1, 6), help="level (severity) 1..5 on both sides")
    parser.add_argument("--ops", default="", help="comma-separated fdcore operator names (default: all pairs)")
    parser.add_argument("--image", default=None, help="benchmark on this image (resized) instead of a synthetic one")
    parser.add_argument("--json", dest="json_path", default=None, help="also write the raw numbers here")
    args = parser.parse_args(argv)
    try:
        import imagecorruptions  # noqa: F401
    except ImportError as exc:
        print(f"imagecorruptions does not import here ({exc}). It is benchmark-only: install it in bench/.venv-bench "
              "as this script's docstring says and run the script with bench/.venv-bench/bin/python.", file=sys.stderr)
        return 2
    single_thread()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    only = {name.strip() for name in args.ops.split(",") if name.strip()}
    results = run(sizes, args.repeats, args.level, only, args.image)
    print(f"<!-- {platform.processor() or platform.machine()}, python {platform.python_version()}, imagecorruptions "
          f"1.1.2, level {args.level} on both sides, median CPU time of >= {args.repeats} alternating calls, "
          "1 thread -->")
    print(markdown(results, sizes))
    if args.json_path:
        with open(args.json_path, "w") as handle:
            json.dump(results, handle, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
