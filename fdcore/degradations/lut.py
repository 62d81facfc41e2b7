"""Lookup tables and the tone curves tabulated into them.

What goes here: building a function of one value as a table (monotone curves) and mapping pixels through tables.
"""

from __future__ import annotations

import numpy as np


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


def lookup(values: np.ndarray, table: np.ndarray) -> np.ndarray:
    """Evaluate a function tabulated at evenly spaced points of [0, 1] (nearest entry; inputs clipped to [0, 1])."""
    scale = np.float32(len(table) - 1)
    position = np.multiply(values, scale, dtype=np.float32)
    position += np.float32(0.5)
    np.clip(position, np.float32(0.0), scale, out=position)
    return table[position.astype(np.int32)]


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
