"""Convolution kernels and the filters that apply them, with replicate borders so no blur darkens the image frame.

What goes here: kernel shapes (Gaussian, disk, line taps) and dense or sparse convolutions. Two Gaussian blurs live
here on purpose: :func:`gaussian_kernel1d` with :func:`blur_separable` uses the MATLAB kernel sizes the NTIRE
operators are defined with, :func:`gaussian_blur` lets OpenCV pick the size (the extended operators); their outputs
differ, and each operator's pixels depend on its own.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fdcore.degradations.pixels import rint_uint8


def gaussian_kernel1d(sigma: float, size: int | None = None) -> np.ndarray:
    """Normalised 1-D Gaussian taps; ``size`` defaults to the MATLAB-style ``2 * ceil(2 sigma) + 1``."""
    if sigma <= 0:
        raise ValueError(f"Gaussian sigma must be positive, got {sigma}")
    if size is None:
        size = 2 * int(np.ceil(2.0 * sigma)) + 1
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(offsets ** 2) / (2.0 * sigma * sigma))
    return (taps / taps.sum()).astype(np.float32)


def disk_kernel(radius: float, supersample: int = 8) -> np.ndarray:
    """Anti-aliased disk: each tap is the fraction of its pixel square inside the circle (estimated on a
    ``supersample``² grid per pixel), normalised to sum 1. Odd size ``2 * ceil(radius) + 1``."""
    if radius <= 0:
        raise ValueError(f"disk radius must be positive, got {radius}")
    half = int(np.ceil(radius))
    sub = (np.arange(supersample) + 0.5) / supersample - 0.5
    coords = (np.arange(-half, half + 1)[:, None] + sub[None, :]).ravel()
    inside = (coords[:, None] ** 2 + coords[None, :] ** 2) <= radius * radius
    size = 2 * half + 1
    coverage = inside.reshape(size, supersample, size, supersample).mean(axis=(1, 3))
    if coverage.sum() == 0:  # a disk smaller than the sub-pixel grid lies inside the centre pixel
        coverage[half, half] = 1.0
    return (coverage / coverage.sum()).astype(np.float32)


def line_offsets(length: int, angle: float) -> list[tuple[int, int]]:
    """Integer (dy, dx) taps of a rasterised line of ``length`` samples through the origin, symmetric about it."""
    steps = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, max(1, int(length)))
    dy = np.rint(steps * math.sin(angle)).astype(int)
    dx = np.rint(steps * math.cos(angle)).astype(int)
    return list(zip(dy.tolist(), dx.tolist()))


def blur_separable(image: np.ndarray, taps: np.ndarray, axes: tuple[int, ...] = (0, 1),
                   rounded: bool = False) -> np.ndarray:
    """Correlate an HxW or HxWx3 image (uint8 or float) with the same 1-D taps along each of ``axes`` (0 = rows,
    1 = columns), replicate borders; returns float32 on the input's scale, or with ``rounded=True`` a uint8 image
    rounded and saturated by OpenCV (for uint8 input; saves a float buffer and three passes)."""
    import cv2

    taps = np.asarray(taps, dtype=np.float32)
    unit = np.ones(1, dtype=np.float32)
    source = image if image.dtype in (np.uint8, np.float32) else image.astype(np.float32)
    depth = cv2.CV_8U if rounded else cv2.CV_32F
    return cv2.sepFilter2D(source, depth, taps if 1 in axes else unit, taps if 0 in axes else unit,
                           borderType=cv2.BORDER_REPLICATE)


def convolve2d(image: np.ndarray, kernel: np.ndarray, rounded: bool = False) -> np.ndarray:
    """Convolve an HxW or HxWx3 image (uint8 or float) with an odd-sized 2-D kernel, replicate borders; returns
    float32 on the input's scale (``rounded=True``: uint8, as in :func:`blur_separable`). OpenCV switches to a DFT
    for large kernels, so big disks and motion lines stay cheap."""
    import cv2

    kernel = np.asarray(kernel, dtype=np.float32)
    if kernel.ndim != 2 or kernel.shape[0] % 2 == 0 or kernel.shape[1] % 2 == 0:
        raise ValueError(f"convolve2d needs an odd-sized 2-D kernel, got shape {kernel.shape}")
    source = image if image.dtype in (np.uint8, np.float32) else image.astype(np.float32)
    # filter2D correlates; flipping the kernel makes it a convolution (matters for asymmetric kernels).
    return cv2.filter2D(source, cv2.CV_8U if rounded else cv2.CV_32F, np.ascontiguousarray(kernel[::-1, ::-1]),
                        borderType=cv2.BORDER_REPLICATE)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (OpenCV, kernel from sigma, replicate borders) of an HxW or HxWx3 uint8 or float32 array;
    keeps the dtype (other float dtypes become float32)."""
    import cv2

    source = image if image.dtype in (np.uint8, np.float32) else image.astype(np.float32)
    if sigma <= 0:
        return source.copy()
    return cv2.GaussianBlur(np.ascontiguousarray(source), (0, 0), sigmaX=float(sigma), sigmaY=float(sigma),
                            borderType=cv2.BORDER_REPLICATE)


def mean_of_shifts(image: np.ndarray, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Average of copies of ``image`` displaced by integer ``offsets`` (replicate borders): a convolution with an
    equal-weight sparse kernel (motion lines, rain streaks) at integer-add cost. Returns the same dtype for uint8
    input (rounded) and float32 otherwise.

    Works in horizontal strips of ~256 KiB so that the repeated reads of overlapping rows stay in cache; on a
    1024x1024 image a 31-tap line is then ~2x faster than adding whole shifted images."""
    import cv2

    if not offsets:
        raise ValueError("mean_of_shifts needs at least one offset")
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    height, width = image.shape[:2]
    is_uint8 = image.dtype == np.uint8
    accumulate = np.uint16 if is_uint8 and len(offsets) <= 257 else np.float32
    padded = cv2.copyMakeBorder(np.ascontiguousarray(image), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    padded = padded.reshape(height + 2 * pad, width + 2 * pad, *image.shape[2:]).astype(accumulate)
    total = np.empty(image.shape, dtype=accumulate)
    row_bytes = width * int(np.prod(image.shape[2:], dtype=int)) * np.dtype(accumulate).itemsize
    strip = max(8, (1 << 18) // max(row_bytes, 1))
    for top in range(0, height, strip):
        bottom = min(height, top + strip)
        block = total[top:bottom]
        block[...] = 0
        for dy, dx in offsets:
            block += padded[pad + dy + top:pad + dy + bottom, pad + dx:pad + dx + width]
    if accumulate == np.uint16:  # divide, round and saturate to uint8 in one OpenCV pass
        return cv2.convertScaleAbs(total, alpha=1.0 / len(offsets)).reshape(image.shape)
    mean = total.astype(np.float32)
    mean *= np.float32(1.0 / len(offsets))
    return rint_uint8(mean) if is_uint8 else mean
