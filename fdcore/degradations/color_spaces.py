"""Colour spaces: BT.601 luma and sRGB (D65) <-> linear light <-> CIE Lab, plus a tone curve on Lab lightness.

What goes here: conversions between colour representations of a pixel, exact to the standards they cite.
"""

from __future__ import annotations

import math

import numpy as np

# BT.601 luma weights of R, G, B.
LUMA_WEIGHTS = np.array([0.299, 0.587, 0.114])


def luma(image: np.ndarray) -> np.ndarray:
    """BT.601 luma of a float HxWx3 image (same scale as the input), HxW float32."""
    red, green, blue = LUMA_WEIGHTS.astype(np.float32)
    return (image[..., 0] * red + image[..., 1] * green + image[..., 2] * blue).astype(np.float32, copy=False)


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
