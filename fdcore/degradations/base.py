"""Shared machinery for degradation operators: level tables, severity interpolation, float/uint8 conversion.

Convention for every operator: the class lists its parameter at levels 1..5 in ``levels`` and the parameter value
that means "no change" in ``identity``; :meth:`LeveledDegrader.parameter` maps a continuous severity in [0, 1] onto
them piecewise-linearly (severity ``k/5`` is exactly level ``k``), so integer levels and continuous strengths are the
same scale.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from fdcore.errors import FdcoreError
from fdcore.interfaces import Degrader


class LeveledDegrader(Degrader):
    """A Degrader whose strength is one scalar parameter tabulated at levels 1..5."""

    levels: ClassVar[tuple[float, ...]] = ()
    identity: ClassVar[float] = 0.0
    # Round the interpolated parameter to an integer (kernel sizes, JPEG quality, palette sizes).
    integer_parameter: ClassVar[bool] = False
    # How the conformance suite checks that severity grows; one of SEVERITY_MEASURES (see below).
    severity_measure: ClassVar[str] = "psnr"

    def parameter(self, severity: float) -> float:
        if len(self.levels) != 5:
            raise TypeError(f"degrader {self.name!r} must list exactly 5 level values, has {len(self.levels)}")
        table = (self.identity, *self.levels)
        position = float(severity) * 5.0
        if abs(position - round(position)) < 1e-9:  # an exact level gives its tabulated value, bit for bit
            value = float(table[int(round(position))])
        else:
            value = float(np.interp(position, np.arange(6.0), np.array(table, dtype=np.float64)))
        return float(round(value)) if self.integer_parameter else value

    def parameters(self, severity: float) -> dict[str, Any]:
        """Scalar parameters used at this severity, for the application record."""
        return {"value": self.parameter(severity)}

    @classmethod
    def describe(cls) -> dict:
        return {**super().describe(), "levels": list(cls.levels)}


def to_float(image: np.ndarray) -> np.ndarray:
    """uint8 HxWx3 -> float32 in [0, 1]."""
    return image.astype(np.float32) * np.float32(1.0 / 255.0)


def to_uint8(image: np.ndarray) -> np.ndarray:
    """float in [0, 1] -> uint8 with rounding and clipping."""
    return np.clip(np.rint(image * 255.0), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------------
# Shared helpers for operator authors. Everything below takes and returns numpy arrays, never mutates its input,
# and uses replicate ("edge") borders so that no operator darkens or brightens the image frame.
# ---------------------------------------------------------------------------------------------------------------

# How conformance tests check that severity grows: "psnr" (PSNR against the original falls over levels 1..5),
# "output_area" (the output's pixel count shrinks: crops, downscales), or "none" for an operator whose level table
# is not ordered by distortion on purpose (the NTIRE linear_contrast_change table). Set on the class as
# ``severity_measure``; LeveledDegrader defaults to "psnr".
SEVERITY_MEASURES = ("psnr", "output_area", "none")


# BT.601 luma weights of R, G, B.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of a float HxWx3 image (same scale as the input), HxW float32."""
    red, green, blue = LUMA_WEIGHTS.astype(np.float32)
    return (image[..., 0] * red + image[..., 1] * green + image[..., 2] * blue).astype(np.float32, copy=False)


def gaussian_kernel1d(sigma: float, size: int | None = None) -> np.ndarray:
    """Normalised 1-D Gaussian taps; ``size`` defaults to the MATLAB-style ``2 * ceil(2 sigma) + 1``."""
    if sigma <= 0:
        raise ValueError(f"Gaussian sigma must be positive, got {sigma}")
    if size is None:
        size = 2 * int(np.ceil(2.0 * sigma)) + 1
    offsets = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    taps = np.exp(-(offsets ** 2) / (2.0 * sigma * sigma))
    return (taps / taps.sum()).astype(np.float32)


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


def normal_sampler(rng: np.random.Generator):
    """A function ``shape -> float32 N(0, 1) samples`` drawing from one stream seeded by ``rng``: a torch CPU
    generator, whose vectorised sampler is about 2.5x faster than numpy's for image-sized draws. Successive calls
    continue the stream, so drawing strip by strip is deterministic too."""
    import torch

    generator = torch.Generator().manual_seed(int(rng.integers(0, 2**63 - 1)))
    return lambda shape: torch.randn(tuple(shape), generator=generator, dtype=torch.float32).numpy()


def standard_normal(rng: np.random.Generator, shape: tuple[int, ...]) -> np.ndarray:
    """Float32 N(0, 1) samples of ``shape`` from a stream seeded by ``rng`` (see :func:`normal_sampler`)."""
    return normal_sampler(rng)(shape)


def rint_uint8(values: np.ndarray) -> np.ndarray:
    """Float32 on the 0..255 scale -> uint8 with rounding and clipping.

    Works in place on a float32 argument (pass a temporary, not an array you still need): every fresh image-sized
    buffer costs page faults, which on a VM dominate cheap per-pixel operators.
    """
    if values.dtype != np.float32:
        values = values.astype(np.float32)
    np.clip(values, np.float32(0.0), np.float32(255.0), out=values)
    np.rint(values, out=values)
    return values.astype(np.uint8)


def in_strips(image: np.ndarray, function, rows: int = 32, *aligned: np.ndarray) -> np.ndarray:
    """Apply a per-pixel ``function`` (uint8 HxWx3 strip -> uint8 strip) to horizontal strips of ``rows`` rows;
    ``aligned`` arrays (other HxW... inputs of the same pixels) are cut into the same strips and passed after it.

    For pipelines of many float passes (colour-space round trips, blends) this is 2-4x faster than one whole-image
    pass: the temporaries stay in cache and are recycled instead of being fresh image-sized buffers. Only for
    functions where each output pixel depends on its own input pixel alone.
    """
    out = np.empty(image.shape, dtype=np.uint8)
    for start in range(0, image.shape[0], rows):
        band = slice(start, start + rows)
        out[band] = function(image[band], *(array[band] for array in aligned))
    return out


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


def apply_lut(image: np.ndarray, lut: np.ndarray) -> np.ndarray:
    """Map a uint8 image through a 256-entry lookup table (shared by all channels, or one row per channel).

    OpenCV's ``LUT`` does it in one vectorised pass, ~10x faster than numpy's fancy indexing; same bytes."""
    import cv2

    lut = np.asarray(lut)
    if lut.dtype != np.uint8:
        lut = np.clip(np.rint(lut), 0, 255).astype(np.uint8)
    image = np.ascontiguousarray(image)
    if lut.shape == (256,):
        if image.ndim == 3 and image.shape[2] > 4:  # beyond OpenCV's channel limit for LUT
            return lut[image]
        return cv2.LUT(image, lut).reshape(image.shape)
    if lut.shape == (3, 256):
        if image.ndim != 3 or image.shape[2] != 3:
            raise ValueError(f"a per-channel lookup table needs an HxWx3 image, got shape {image.shape}")
        return cv2.LUT(image, np.ascontiguousarray(lut.T).reshape(256, 1, 3)).reshape(image.shape)
    raise ValueError(f"a lookup table must have shape (256,) or (3, 256), got {lut.shape}")


def monotone_cubic(xs, ys):
    """Shape-preserving piecewise-cubic interpolant (Fritsch-Carlson) through the points ``(xs, ys)``.

    Between two points it never overshoots them, so data that rise give a curve that rises. Returns a vectorised
    function of float arrays; outside ``[xs[0], xs[-1]]`` it continues linearly with the end slopes.
    """
    x = np.asarray(xs, dtype=np.float64)
    y = np.asarray(ys, dtype=np.float64)
    if x.ndim != 1 or x.shape != y.shape or len(x) < 2 or np.any(np.diff(x) <= 0):
        raise ValueError(f"monotone_cubic needs increasing xs and matching ys, got {xs!r}, {ys!r}")
    h = np.diff(x)
    delta = np.diff(y) / h
    slopes = np.zeros_like(x)
    if len(x) == 2:
        slopes[:] = delta[0]
    else:
        for i in range(1, len(x) - 1):
            if delta[i - 1] * delta[i] > 0:  # weighted harmonic mean keeps the interpolant monotone
                w1, w2 = 2 * h[i] + h[i - 1], h[i] + 2 * h[i - 1]
                slopes[i] = (w1 + w2) / (w1 / delta[i - 1] + w2 / delta[i])
        for end, d0, d1, h0, h1 in ((0, delta[0], delta[1], h[0], h[1]), (-1, delta[-1], delta[-2], h[-1], h[-2])):
            slope = ((2 * h0 + h1) * d0 - h0 * d1) / (h0 + h1)
            if np.sign(slope) != np.sign(d0):
                slope = 0.0
            elif np.sign(d0) != np.sign(d1) and abs(slope) > abs(3 * d0):
                slope = 3 * d0
            slopes[end] = slope

    def curve(values):
        t_in = np.asarray(values, dtype=np.float64)
        index = np.clip(np.searchsorted(x, t_in, side="right") - 1, 0, len(x) - 2)
        x0, hh = x[index], h[index]
        t = (t_in - x0) / hh
        t2, t3 = t * t, t * t * t
        result = ((2 * t3 - 3 * t2 + 1) * y[index] + (t3 - 2 * t2 + t) * hh * slopes[index]
                  + (-2 * t3 + 3 * t2) * y[index + 1] + (t3 - t2) * hh * slopes[index + 1])
        below, above = t_in < x[0], t_in > x[-1]
        result = np.where(below, y[0] + (t_in - x[0]) * slopes[0], result)
        return np.where(above, y[-1] + (t_in - x[-1]) * slopes[-1], result)

    return curve


def tone_curve_table(xs, ys, samples: int = 256) -> np.ndarray:
    """A monotone tone curve through control points on [0, 1], tabulated at ``samples`` evenly spaced inputs.

    The result is clipped to [0, 1] and made non-decreasing (a control point above 1 saturates instead of
    bending the curve back down). With the default 256 samples it is a float lookup table for uint8 images.
    """
    grid = np.linspace(0.0, 1.0, samples)
    values = np.clip(monotone_cubic(xs, ys)(grid), 0.0, 1.0)
    return np.maximum.accumulate(values)


# sRGB (D65) <-> CIE Lab, written from the IEC 61966-2-1 and CIE 1976 definitions. Linear RGB -> XYZ matrix of
# IEC 61966-2-1, white point D65. The per-pixel work goes through OpenCV's vectorised primitives (LUT, 3x3
# transform, pow): numpy's cbrt/power cost ~15 ns per value on one core, OpenCV's ~1.5 ns.
_RGB_TO_XYZ = np.array([[0.4124564, 0.3575761, 0.1804375],
                        [0.2126729, 0.7151522, 0.0721750],
                        [0.0193339, 0.1191920, 0.9503041]], dtype=np.float64)
_WHITE_D65 = np.array([0.95047, 1.0, 1.08883], dtype=np.float64)
_LAB_DELTA = 6.0 / 29.0
_XYZN_FROM_LINEAR = (_RGB_TO_XYZ / _WHITE_D65[:, None]).astype(np.float32)
_LINEAR_FROM_XYZN = np.linalg.inv(_RGB_TO_XYZ / _WHITE_D65[:, None]).astype(np.float32)
_SRGB_THRESHOLD, _LINEAR_THRESHOLD = 0.04045, 0.0031308


def _exact_srgb_to_linear(v: np.ndarray) -> np.ndarray:
    return np.where(v <= _SRGB_THRESHOLD, v / 12.92, ((np.maximum(v, _SRGB_THRESHOLD) + 0.055) / 1.055) ** 2.4)


_LINEAR_OF_CODE = _exact_srgb_to_linear(np.arange(256) / 255.0).astype(np.float32)


def _float32(values: np.ndarray) -> np.ndarray:
    return np.ascontiguousarray(values, dtype=np.float32)


def _single_channel(values: np.ndarray) -> np.ndarray:
    """A contiguous float32 1xN row, on which OpenCV applies a Python scalar to every value (on an HxWx3 array it
    would read the scalar as a per-channel (s, 0, 0) triple). A single value is doubled: OpenCV could mistake a
    1x1 array for a scalar. :func:`_same_shape` undoes both."""
    row = np.ascontiguousarray(values, dtype=np.float32).reshape(1, -1)
    return np.repeat(row, 2, axis=1) if row.size == 1 else row


def _same_shape(row: np.ndarray, values: np.ndarray) -> np.ndarray:
    return row.reshape(-1)[:np.size(values)].reshape(np.shape(values))


def _power_with_linear_toe(values: np.ndarray, knee: float, exponent: float, scale: float, offset: float,
                           toe_slope: float) -> np.ndarray:
    """``scale * max(v, knee)^exponent - offset`` above the knee, continued by a line of slope ``toe_slope``
    below it: the shape of the sRGB and Lab transfer curves, computed branch-free in a few vectorised passes.

    The power is ``exp(exponent * log(v) + log(scale))`` with OpenCV's vectorised exp and log (float32 relative
    error ~1e-6, far below the 1/255 output step); ``cv2.pow`` with a fractional exponent is ~1.5x slower."""
    import cv2

    flat = _single_channel(values)
    toe = cv2.min(flat, float(knee))
    power = cv2.log(cv2.max(flat, float(knee)))
    power = cv2.exp(cv2.addWeighted(power, float(exponent), power, 0.0, math.log(scale)))
    # scale * v^p - offset + toe_slope * (min(v, knee) - knee)
    out = cv2.scaleAdd(toe, float(toe_slope), power)
    out -= np.float32(offset + toe_slope * knee)
    return _same_shape(out, values)


def srgb_to_linear(values: np.ndarray) -> np.ndarray:
    """sRGB (uint8 codes, or float in [0, 1]) -> linear light, float32."""
    import cv2

    values = np.asarray(values)
    if values.dtype == np.uint8:
        return cv2.LUT(values, _LINEAR_OF_CODE) if values.ndim == 3 and values.shape[2] in (1, 3, 4) \
            else _LINEAR_OF_CODE[values]
    return _srgb_decode(_float32(values))


def _srgb_decode(values: np.ndarray) -> np.ndarray:
    import cv2

    knee = np.float32(_SRGB_THRESHOLD)
    base = (np.maximum(values, knee) + np.float32(0.055)) * np.float32(1 / 1.055)
    out = cv2.pow(base, 2.4)
    out += np.float32(1 / 12.92) * (np.minimum(values, knee) - knee)
    return out


def linear_to_srgb(values: np.ndarray) -> np.ndarray:
    """Linear light -> sRGB in [0, 1] (clipped), float32."""
    import cv2

    # The transfer curve rises from 0 at 0 to 1 at 1, so clipping its output equals clipping its input.
    out = _power_with_linear_toe(_single_channel(values), _LINEAR_THRESHOLD, 1 / 2.4, 1.055, 0.055, 12.92)
    return _same_shape(cv2.max(cv2.min(out, 1.0), 0.0), values)


def srgb_to_lab(image: np.ndarray) -> np.ndarray:
    """sRGB HxWx3 (uint8, or float in [0, 1]) -> CIE Lab float32 (L in [0, 100], D65)."""
    f = _lab_f(image)
    lab = np.empty_like(f)
    lab[..., 0] = f[..., 1] * np.float32(116.0) - np.float32(16.0)
    lab[..., 1] = (f[..., 0] - f[..., 1]) * np.float32(500.0)
    lab[..., 2] = (f[..., 1] - f[..., 2]) * np.float32(200.0)
    return lab


def _lab_f(image: np.ndarray) -> np.ndarray:
    """sRGB HxWx3 -> the Lab companding values (f(X/Xn), f(Y), f(Z/Zn)), float32."""
    import cv2

    xyz = cv2.transform(srgb_to_linear(image), _XYZN_FROM_LINEAR)
    # f(t) = t^(1/3) above delta^3 and its tangent line 2 delta / 3 + t / (3 delta^2) below.
    return _power_with_linear_toe(xyz, _LAB_DELTA ** 3, 1 / 3, 1.0, 0.0, 1 / (3 * _LAB_DELTA ** 2))


def lab_to_srgb(lab: np.ndarray) -> np.ndarray:
    """CIE Lab -> float sRGB HxWx3 in [0, 1] (out-of-gamut colours clipped), float32."""
    lab = _float32(lab)
    f = np.empty_like(lab)
    f[..., 1] = (lab[..., 0] + np.float32(16.0)) * np.float32(1 / 116)
    f[..., 0] = f[..., 1] + lab[..., 1] * np.float32(1 / 500)
    f[..., 2] = f[..., 1] - lab[..., 2] * np.float32(1 / 200)
    return _srgb_from_lab_f(f)


def _srgb_from_lab_f(f: np.ndarray) -> np.ndarray:
    """The Lab companding values (f(X/Xn), f(Y), f(Z/Zn)) HxWx3 -> float sRGB in [0, 1]."""
    import cv2

    # The inverse of f: cube above delta, the tangent line 3 delta^2 (f - 4/29) below (continuous at delta).
    delta, slope = _LAB_DELTA, 3 * _LAB_DELTA ** 2
    flat = _single_channel(f)
    xyz = cv2.scaleAdd(cv2.min(flat, delta), slope, cv2.pow(cv2.max(flat, delta), 3))
    xyz -= np.float32(slope * delta)
    return linear_to_srgb(cv2.transform(xyz.reshape(f.shape), _LINEAR_FROM_XYZN))


def relight_lab(pixels: np.ndarray, lightness_table: np.ndarray) -> np.ndarray:
    """sRGB uint8 HxWx3 -> float sRGB in [0, 1] with CIE Lab lightness replaced by ``100 * table(L / 100)`` (a
    function tabulated on [0, 1], nearest entry) and a, b kept: :func:`srgb_to_lab`, the curve on L,
    :func:`lab_to_srgb`, without the detour through a and b.

    Keeping a = 500 (fx - fy) and b = 200 (fy - fz) while fy becomes (L' + 16) / 116 adds the same offset to all
    three companding values fx, fy, fz; only fy (that is L) selects the table entry."""
    import cv2

    f = _lab_f(pixels)
    last = len(lightness_table) - 1
    new_fy = ((np.asarray(lightness_table, dtype=np.float64) * 100.0 + 16.0) / 116.0).astype(np.float32)
    fy = cv2.extractChannel(f, 1)
    # Table index of L / 100 = (116 fy - 16) / 100, rounded to the nearest entry (as lookup()).
    position = np.multiply(fy, np.float32(1.16 * last), dtype=np.float32)
    position += np.float32(0.5 - 0.16 * last)
    np.clip(position, np.float32(0.0), np.float32(last), out=position)
    shift = new_fy[position.astype(np.int32)]
    shift -= fy
    f += cv2.merge([shift, shift, shift]).reshape(f.shape)  # f is this call's own temporary
    return _srgb_from_lab_f(f)


def lookup(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Evaluate a function tabulated at evenly spaced points of [0, 1] (nearest entry; inputs clipped to [0, 1])."""
    scale = np.float32(len(table) - 1)
    position = np.multiply(values, scale, dtype=np.float32)
    position += np.float32(0.5)
    np.clip(position, np.float32(0.0), scale, out=position)
    return table[position.astype(np.int32)]


def shift_bilinear(plane: np.ndarray, dy: float, dx: float) -> np.ndarray:
    """Translate an HxW (or HxWx3) image by (dy, dx) pixels (content moves down/right), bilinear, replicate
    borders; float32 output on the input's scale."""
    import cv2

    height, width = plane.shape[:2]
    matrix = np.array([[1.0, 0.0, dx], [0.0, 1.0, dy]], dtype=np.float64)
    source = plane if plane.dtype == np.float32 else plane.astype(np.float32)
    return cv2.warpAffine(source, matrix, (width, height), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REPLICATE)


class ImageTooLargeError(FdcoreError, ValueError):
    """An image beyond what a file format (JPEG: 65,500 px a side; WebP: 16,383 px) or a resampling window (32,766
    px) can hold."""


# OpenCV's remap asserts that the source and the maps are under SHRT_MAX pixels on each side.
_REMAP_MAX_SIDE = 32766


def remap_any_size(source: np.ndarray, map_x: np.ndarray, map_y: np.ndarray, interpolation: int,
                   dst: np.ndarray | None = None, tile: int = 8192) -> np.ndarray:
    """``cv2.remap`` with replicate borders for images of any size: output pixel (i, j) takes ``source`` at
    (``map_y[i, j]``, ``map_x[i, j]``). OpenCV refuses sources or maps of 32767 px or more on a side (a 2x70000
    strip, a panorama), so those are resampled tile by tile from the source window each output tile reads, with
    identical pixels (the window keeps every sample the tile touches; shifting float32 coordinates by an integer
    is exact). Writes into ``dst`` when given."""
    import cv2

    if max(source.shape[:2]) <= _REMAP_MAX_SIDE and max(map_x.shape[:2]) <= _REMAP_MAX_SIDE:
        return cv2.remap(source, map_x, map_y, interpolation, dst=dst, borderMode=cv2.BORDER_REPLICATE)
    height, width = source.shape[:2]
    out_height, out_width = map_x.shape[:2]
    out = np.empty((out_height, out_width, *source.shape[2:]), dtype=source.dtype) if dst is None else dst
    for top in range(0, out_height, tile):
        for left in range(0, out_width, tile):
            tile_x = map_x[top:top + tile, left:left + tile]
            tile_y = map_y[top:top + tile, left:left + tile]
            # The window of source pixels the tile can read: bilinear needs floor and floor + 1; borders clamp.
            x0 = int(np.clip(np.floor(np.nanmin(tile_x)) - 1, 0, width - 1))
            x1 = int(np.clip(np.floor(np.nanmax(tile_x)) + 3, 1, width))
            y0 = int(np.clip(np.floor(np.nanmin(tile_y)) - 1, 0, height - 1))
            y1 = int(np.clip(np.floor(np.nanmax(tile_y)) + 3, 1, height))
            if max(x1 - x0, y1 - y0) > _REMAP_MAX_SIDE:
                raise ImageTooLargeError(f"a resampling tile reads a {y1 - y0}x{x1 - x0} px window of a "
                                         f"{height}x{width} image, over OpenCV's {_REMAP_MAX_SIDE} px limit; use "
                                         f"an image under {_REMAP_MAX_SIDE} px a side")
            window = np.ascontiguousarray(source[y0:y1, x0:x1])
            target = out[top:top + tile, left:left + tile]
            target[...] = cv2.remap(window, tile_x - np.float32(x0), tile_y - np.float32(y0), interpolation,
                                    borderMode=cv2.BORDER_REPLICATE).reshape(target.shape)
    return out


def random_count(rng: np.random.Generator, expected: float) -> int:
    """An integer with the given expectation (floor plus a Bernoulli remainder), so small images and weak
    severities still get the right average number of events instead of always rounding to zero."""
    whole = int(np.floor(expected))
    return whole + int(rng.random() < expected - whole)


# Largest side each codec's format can store.
CODEC_MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}


def check_codec_size(image: np.ndarray, format: str) -> None:
    """Refuse, with :class:`ImageTooLargeError`, an image the format cannot store, before encoding it: a codec
    would fail with a library message (or, in OpenCV, print an error and return nothing)."""
    limit = CODEC_MAX_SIDE.get(format)
    if limit is not None and max(image.shape[:2]) > limit:
        height, width = image.shape[:2]
        raise ImageTooLargeError(f"{format} cannot store a {width}x{height} image (at most {limit} px a side); "
                                 f"crop or downscale the image first, or use an operator without this codec")


def codec_roundtrip(image: np.ndarray, format: str, **save_options: Any) -> np.ndarray:
    """Encode a uint8 RGB image with a real Pillow codec (JPEG, JPEG2000, WEBP, ...) and decode it again."""
    import io

    from PIL import Image

    check_codec_size(image, format)

    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format=format, **save_options)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.array(decoded.convert("RGB"))
    if out.shape != image.shape:
        raise RuntimeError(f"{format} round trip changed the size {image.shape} -> {out.shape}")
    return out


# JPEG chroma subsampling modes, as OpenCV's IMWRITE_JPEG_SAMPLING_FACTOR_* codes (luma H and V factors, then 1x1
# chroma: 0x111111, 0x211111, 0x221111).
JPEG_SUBSAMPLING = {"4:4:4": 0x111111, "4:2:2": 0x211111, "4:2:0": 0x221111}


def jpeg_roundtrip(image: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """A real baseline JPEG encode/decode (libjpeg-turbo through OpenCV): standard IJG quantisation tables scaled
    by ``quality`` (clipped to 1..100), the given chroma subsampling, integer (ISLOW) DCT and fancy upsampling.

    Pixel for pixel the same as Pillow's ``save(format="JPEG", quality=q, subsampling=...)`` and decode (both
    drive libjpeg-turbo with the same settings; the test suite checks it), at ~2/3 of the cost: no PIL image or
    stream objects in between."""
    import cv2

    if subsampling not in JPEG_SUBSAMPLING:
        raise ValueError(f"JPEG subsampling must be one of {sorted(JPEG_SUBSAMPLING)}, got {subsampling!r}")
    check_codec_size(image, "JPEG")
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, min(100, max(1, int(quality))),
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, JPEG_SUBSAMPLING[subsampling]]
    ok, encoded = cv2.imencode(".jpg", bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV failed to JPEG-encode an image of shape {image.shape}")
    if hasattr(cv2, "IMREAD_COLOR_RGB"):  # OpenCV >= 4.10 decodes straight to RGB
        out = cv2.imdecode(encoded, cv2.IMREAD_COLOR_RGB)
    else:
        out = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if out is None or out.shape != image.shape:
        raise RuntimeError(f"JPEG round trip changed the size {image.shape} -> {getattr(out, 'shape', None)}")
    return out
