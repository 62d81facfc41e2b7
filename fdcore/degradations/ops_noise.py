"""Extended noise operators: shot (Poisson), ISO sensor, speckle (multiplicative) and film grain (``noise``).

The NTIRE noises (white_noise, impulse_noise) live in ``ntire.py``.
"""

from __future__ import annotations

import functools
import math

import numpy as np

from fdcore.degradations.base import LeveledDegrader
from fdcore.degradations.color_spaces import luma
from fdcore.degradations.pixels import rint_uint8, to_float
from fdcore.degradations.randomness import smooth_field, standard_normal

# Quantile resolution of the shot-noise sampling tables: each 8-bit input value owns a table of this many
# equally likely outputs (the exact Poisson quantiles at the cell midpoints), so a draw is one uint16 integer
# and one gather instead of a Poisson sample (~40 ms at 512x512 in numpy).
_POISSON_CELLS = 2048
# Above this mean the Poisson quantile is taken from the normal approximation (error far below one grey level).
_POISSON_EXACT_MAX_MEAN = 64.0


@functools.lru_cache(maxsize=1)
def _normal_quantiles() -> np.ndarray:
    from statistics import NormalDist

    unit = NormalDist()
    return np.array([unit.inv_cdf((i + 0.5) / _POISSON_CELLS) for i in range(_POISSON_CELLS)], dtype=np.float64)


@functools.lru_cache(maxsize=32)
def poisson_table(photons: float) -> np.ndarray:
    """``table[v, q]``: the uint8 output for input value ``v`` at quantile cell ``q`` when a full-white pixel
    collects ``photons`` photons, i.e. ``255 * Poisson(photons * v / 255) / photons`` at quantile
    ``(q + 0.5) / cells``."""
    means = photons * np.arange(256, dtype=np.float64) / 255.0
    counts = np.empty((256, _POISSON_CELLS), dtype=np.float64)
    exact = np.flatnonzero(means <= _POISSON_EXACT_MAX_MEAN)
    if len(exact):
        k = np.arange(int(_POISSON_EXACT_MAX_MEAN + 12 * math.sqrt(_POISSON_EXACT_MAX_MEAN) + 20), dtype=np.float64)
        log_factorial = np.concatenate([[0.0], np.cumsum(np.log(k[1:]))])
        mean = np.maximum(means[exact], 1e-300)[:, None]
        cdf = np.cumsum(np.exp(k[None, :] * np.log(mean) - mean - log_factorial[None, :]), axis=1)
        cdf[means[exact] == 0.0] = 1.0  # a zero mean gives zero photons with certainty
        # Cell q (quantile (q + 0.5) / cells) gets the first k with cdf[k] >= quantile; equivalently, count for
        # each k how many cells lie at or below cdf[k] and turn those counts into the per-cell k by a cumsum.
        cells_up_to = np.clip(np.floor(cdf * _POISSON_CELLS - 0.5) + 1, 0, _POISSON_CELLS).astype(np.int64)
        cells_up_to[:, -1] = _POISSON_CELLS  # truncated tail: the last k takes every remaining cell
        rows = np.repeat(np.arange(len(exact)), len(k))
        steps = np.bincount(rows * (_POISSON_CELLS + 1) + cells_up_to.ravel(),
                            minlength=len(exact) * (_POISSON_CELLS + 1)).reshape(len(exact), _POISSON_CELLS + 1)
        counts[exact] = np.cumsum(steps, axis=1)[:, :_POISSON_CELLS]
    large = np.flatnonzero(means > _POISSON_EXACT_MAX_MEAN)
    if len(large):
        m = means[large][:, None]
        counts[large] = np.maximum(np.rint(m + np.sqrt(m) * _normal_quantiles()[None, :]), 0.0)
    return np.clip(np.rint(counts * (255.0 / photons)), 0, 255).astype(np.uint8)


class ShotNoise(LeveledDegrader):
    """Photon (shot) noise: each value becomes ``Poisson(lambda * x) / lambda`` per channel, where ``lambda`` is
    the photon count of a full-white pixel (60, 30, 15, 8, 4; the level parameter is its reciprocal, the
    "scale" of albumentations' ShotNoise). Noise grows with brightness as sqrt(x). Sampled exactly by inverse CDF
    from per-value tables at 1/2048 quantile resolution."""

    name = "shot_noise"
    description = "Poisson shot noise, photons at full white 60/30/15/8/4 (scale 1/lambda), per channel"
    category = "noise"
    levels = (1 / 60, 1 / 30, 1 / 15, 1 / 8, 1 / 4)
    identity = 0.0

    def parameters(self, severity):
        scale = self.parameter(severity)
        return {"scale": scale, "photons_at_white": 1.0 / scale}

    def apply(self, image, severity, rng):
        photons = 1.0 / self.parameter(severity)
        table = poisson_table(round(photons, 6))
        cells = rng.integers(0, _POISSON_CELLS, size=image.shape, dtype=np.uint16)
        index = (image.astype(np.uint32) << np.uint32(int(math.log2(_POISSON_CELLS)))) | cells
        return table.reshape(-1)[index]


class IsoNoise(LeveledDegrader):
    """High-ISO camera noise with chroma structure: signal-dependent luminance noise (shot + read noise,
    std ``sigma * sqrt(0.2 + 1.6 y)``, sigma at mid-grey 0.01..0.065) plus colour noise in the YCbCr chroma
    planes that is spatially correlated over ~2 px (as demosaicing and denoising leave it), at 0.7x the
    luminance strength."""

    name = "iso_noise"
    description = "ISO sensor noise: signal-dependent luma noise sigma 0.01-0.065 + correlated chroma blotches"
    category = "noise"
    levels = (0.01, 0.02, 0.03, 0.045, 0.065)
    identity = 0.0
    chroma_ratio = 0.7
    chroma_cell = 2.0

    def parameters(self, severity):
        return {"luma_sigma": self.parameter(severity), "chroma_sigma": self.chroma_ratio * self.parameter(severity)}

    def apply(self, image, severity, rng):
        sigma = np.float32(self.parameter(severity))
        height, width = image.shape[:2]
        pixels = to_float(image)
        luminance = luma(pixels)
        luma_noise = standard_normal(rng, (height, width)) * (sigma * np.sqrt(0.2 + 1.6 * luminance))
        chroma = smooth_field(rng, height, width, self.chroma_cell, channels=2) * (sigma * self.chroma_ratio)
        cb, cr = chroma[..., 0], chroma[..., 1]
        out = pixels
        out[..., 0] += luma_noise + np.float32(1.402) * cr
        out[..., 1] += luma_noise - np.float32(0.344136) * cb - np.float32(0.714136) * cr
        out[..., 2] += luma_noise + np.float32(1.772) * cb
        out *= np.float32(255.0)
        return rint_uint8(out)


class SpeckleNoise(LeveledDegrader):
    """Multiplicative (speckle) noise: ``x * (1 + sigma * n)`` with ``n`` standard normal per pixel and channel,
    so the noise is proportional to brightness (albumentations' MultiplicativeNoise, ImageNet-C speckle)."""

    name = "speckle_noise"
    description = "multiplicative speckle noise x*(1+sigma*n), sigma 0.05/0.1/0.15/0.25/0.4, per channel"
    category = "noise"
    levels = (0.05, 0.1, 0.15, 0.25, 0.4)
    identity = 0.0

    def parameters(self, severity):
        return {"sigma": self.parameter(severity)}

    def apply(self, image, severity, rng):
        factor = standard_normal(rng, image.shape)
        factor *= np.float32(self.parameter(severity))
        factor += np.float32(1.0)
        factor *= image
        return rint_uint8(factor)


class FilmGrain(LeveledDegrader):
    """Photographic (monochrome) film grain: a grain field correlated over ~1.5 px (grain clumps larger than a
    pixel), strongest in the mid-tones (weight ``max(0.15, 1 - (2y - 1)^2)``), added equally to all channels."""

    name = "film_grain"
    description = "film grain: 1.5 px monochrome grain, mid-tone weighted, intensity 0.015/0.025/0.035/0.05/0.07"
    category = "noise"
    levels = (0.015, 0.025, 0.035, 0.05, 0.07)
    identity = 0.0
    grain_px = 1.5

    def parameters(self, severity):
        return {"intensity": self.parameter(severity), "grain_px": self.grain_px}

    def apply(self, image, severity, rng):
        intensity = np.float32(self.parameter(severity) * 255.0)
        height, width = image.shape[:2]
        pixels = image.astype(np.float32)
        luminance = luma(pixels) * np.float32(1.0 / 255.0)
        weight = np.maximum(np.float32(0.15), 1.0 - (2.0 * luminance - 1.0) ** 2)
        grain = smooth_field(rng, height, width, self.grain_px, channels=1)
        pixels += (grain * weight * intensity)[..., None]
        return rint_uint8(pixels)


OPERATORS = (ShotNoise, IsoNoise, SpeckleNoise, FilmGrain)
