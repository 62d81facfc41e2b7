"""The contract every registered Degrader keeps, checked for each one (built-in or from a plugin)."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

import fdcore
from fdcore import registry
from fdcore.degradations.base import SEVERITY_MEASURES
from fdcore.degradations.policy import operator_rng
from fdcore.errors import FdcoreError

CATEGORIES = ("blur", "noise", "compression", "color", "geometric", "environmental", "sensor", "occlusion")
LEVELS = (1, 2, 3, 4, 5)
NAMES = fdcore.list_degraders()


def synthetic_image(height: int = 64, width: int = 64) -> np.ndarray:
    """A deterministic natural-looking test image: colour gradients, a disc, a bright square, chirped stripes and mild
    texture, with edges, flat areas, highlights and shadows (every operator has something to act on)."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = yy / max(height - 1, 1), xx / max(width - 1, 1)
    image = np.stack([0.15 + 0.7 * x, 0.2 + 0.6 * y, 0.55 - 0.3 * x * y], axis=-1)
    disc = (yy - 0.6 * height) ** 2 + (xx - 0.35 * width) ** 2 < (0.22 * min(height, width)) ** 2
    image[disc] = (0.85, 0.25, 0.2)
    square = (np.abs(yy - 0.25 * height) < 0.12 * height) & (np.abs(xx - 0.72 * width) < 0.12 * width)
    image[square] = (0.97, 0.96, 0.9)
    stripes = np.sin(0.02 * xx ** 1.6) > 0  # a chirp: no shift maps the pattern onto itself
    band = yy > 0.85 * height
    image[band & stripes] *= 0.35
    texture = np.random.default_rng(1234).normal(0.0, 0.02, image.shape)
    return np.clip(np.rint((image + texture) * 255), 0, 255).astype(np.uint8)


IMAGE = synthetic_image()


def readonly(image: np.ndarray) -> np.ndarray:
    frozen = image.copy()
    frozen.flags.writeable = False  # an operator writing into its input fails right here
    return frozen


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


@pytest.fixture(params=NAMES)
def op(request):
    return fdcore.get_degrader(request.param)


def run(degrader, image, severity, seed=7):
    return degrader(image, severity, operator_rng(seed, 0, 0))


def test_registry_has_the_ntire_operators():
    for name in ("gaussian_blur", "lens_blur", "color_shift", "color_saturation", "jpeg", "white_noise",
                 "impulse_noise", "brighten", "darken", "jitter", "quantization", "linear_contrast_change"):
        assert name in NAMES


def test_metadata(op):
    cls = type(op)
    assert re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", cls.name)
    assert cls.description.strip(), f"{cls.name} has no description"
    if registry.entry("degraders", cls.name).provider == "fdcore":
        assert cls.category in CATEGORIES, f"{cls.name}: category {cls.category!r} not one of {CATEGORIES}"
    else:
        assert cls.category, f"{cls.name} declares no category"
    assert isinstance(cls.moves_pixels, bool) and isinstance(cls.changes_size, bool)
    assert getattr(cls, "severity_measure", "psnr") in SEVERITY_MEASURES
    described = registry.describe("degraders", cls.name)
    assert {"category", "moves_pixels", "changes_size"} <= set(described)
    for severity in (0.1, 0.2, 0.55, 1.0):
        json.dumps(op.parameters(severity))  # records must be JSON-ready


def test_identity_at_zero(op):
    image = readonly(IMAGE)
    out = run(op, image, 0.0)
    assert out is not image and np.array_equal(out, IMAGE)


def test_output_contract_and_no_mutation(op):
    image = readonly(IMAGE)  # an operator writing into its input fails on the read-only array
    for severity in (0.2, 0.4, 0.6, 0.8, 1.0, 0.37, 0.03):
        out = run(op, image, severity)
        assert isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3
        if not op.changes_size:
            assert out.shape == IMAGE.shape, f"{op.name} at {severity}"
        assert out.size > 0
        assert np.array_equal(image, IMAGE)
        assert not np.shares_memory(out, image)


def test_deterministic_from_seed(op):
    for severity in (0.4, 1.0):
        first = run(op, readonly(IMAGE), severity, seed=11)
        second = run(op, readonly(IMAGE), severity, seed=11)
        assert np.array_equal(first, second)


def test_full_strength_changes_the_image(op):
    out = run(op, readonly(IMAGE), 1.0)
    assert out.shape != IMAGE.shape or not np.array_equal(out, IMAGE), f"{op.name} at level 5 left the image as is"


def test_severity_is_monotone(op):
    measure = getattr(op, "severity_measure", "psnr")
    outputs = [run(op, readonly(IMAGE), level / 5) for level in LEVELS]
    if measure == "none":  # a level table not ordered by distortion: the levels must still all be distinct
        distinct = {out.tobytes() for out in outputs} | {IMAGE.tobytes()}
        assert len(distinct) == len(LEVELS) + 1, f"{op.name}: two levels (or a level and the original) coincide"
        return
    if measure == "output_area":
        areas = [out.shape[0] * out.shape[1] for out in outputs]
        assert all(b <= a for a, b in zip(areas, areas[1:])), f"{op.name}: output area {areas} grows with level"
        assert areas[-1] < IMAGE.shape[0] * IMAGE.shape[1]
        return
    assert not op.changes_size, f"{op.name} changes the size, so PSNR cannot measure it: declare output_area"
    scores = [psnr(out, IMAGE) for out in outputs]
    # 0.5 dB slack absorbs 8-bit rounding and random layouts at neighbouring levels; the ends must differ clearly.
    assert all(b <= a + 0.5 for a, b in zip(scores, scores[1:])), f"{op.name}: PSNR by level {scores}"
    assert scores[-1] < scores[0] - 0.5, f"{op.name}: PSNR by level {scores}"


def test_weak_strengths_stay_close_to_the_original(op):
    """Continuity at 0: a strength of 0.002 is nearly the identity (s = 0 is exactly it). Codecs keep a floor (JPEG
    at quality ~100 still subsamples chroma), hence their lower bound; anything below means the operator jumps or
    breaks at weak strengths (a disk kernel with no taps once turned images white)."""
    if op.changes_size:
        return
    floor = 25.0 if op.category == "compression" else 30.0
    for seed in (0, 1, 2):
        assert psnr(run(op, IMAGE, 0.002, seed=seed), IMAGE) >= floor, f"{op.name} at strength 0.002, seed {seed}"


# 40000 px is beyond OpenCV's remap limit (32767) and WebP's (16383), within JPEG's (65500).
@pytest.mark.parametrize("shape", [(1, 1), (2, 1000), (1000, 2), (3, 5), (2, 40000), (40000, 2)],
                         ids=["1x1", "2x1000", "1000x2", "3x5", "2x40000", "40000x2"])
def test_tiny_and_thin_images(op, shape):
    image = readonly(synthetic_image(*shape))
    for severity in (0.2, 1.0):
        try:
            out = run(op, image, severity)
        except (ValueError, FdcoreError) as exc:  # allowed, if it says which operator and why
            assert op.name in str(exc), f"{op.name} failed on {shape} without naming itself: {exc}"
            continue
        assert out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.size > 0
        if not op.changes_size:
            assert out.shape == image.shape
