"""Sensor operators (category ``sensor``): blooming, dead/hot/stuck pixels, fixed-pattern noise and lateral
chromatic aberration."""

from __future__ import annotations


import numpy as np

from fdcore.degradations.base import LeveledDegrader
from fdcore.degradations.color_spaces import luma
from fdcore.degradations.kernels import gaussian_blur
from fdcore.degradations.pixels import rint_uint8
from fdcore.degradations.randomness import standard_normal
from fdcore.degradations.resampling import pixel_grid, remap


class Blooming(LeveledDegrader):
    """Sensor blooming: light above the highlight threshold (0.85, or the image's 97th luma percentile when that
    is lower) spills into neighbours, as a vertical smear along the readout columns (CCD-style, 10 % of the
    height) plus an isotropic glow (sigma 1 % of the size), added to all channels with gain
    0.3/0.6/1/1.5/2.2."""

    name = "blooming"
    description = "highlight blooming: vertical column smear + glow of the over-threshold light, gain 0.3-2.2"
    category = "sensor"
    levels = (0.3, 0.6, 1.0, 1.5, 2.2)
    identity = 0.0
    threshold = 0.85
    percentile = 97.0

    def parameters(self, severity):
        return {"gain": self.parameter(severity), "threshold": self.threshold}

    def apply(self, image, severity, rng):
        import cv2

        height, width = image.shape[:2]
        pixels = image.astype(np.float32)
        luminance = luma(pixels) * np.float32(1.0 / 255.0)
        counts = np.cumsum(np.bincount(np.clip(np.rint(luminance * 255.0), 0, 255).astype(np.int64).ravel(),
                                       minlength=256))
        percentile_value = np.searchsorted(counts, counts[-1] * self.percentile / 100.0) / 255.0
        threshold = np.float32(min(self.threshold, percentile_value))
        excess = np.maximum(luminance - threshold, 0.0) / np.float32(max(1.0 - threshold, 1e-3))
        smear = cv2.blur(excess, (1, max(1, int(round(0.1 * height))) | 1), borderType=cv2.BORDER_CONSTANT)
        glow = gaussian_blur(excess, max(0.5, 0.01 * max(height, width)))
        bloom = (np.float32(0.6) * smear + np.float32(0.4) * glow) * np.float32(255.0 * self.parameter(severity))
        pixels += bloom[..., None]
        return rint_uint8(pixels)


class DeadPixels(LeveledDegrader):
    """Defective pixels at a random 0.05/0.1/0.2/0.4/0.8 % of positions (at least one), each dead (black), hot
    (white) or a stuck colour sub-pixel (pure red, green or blue), chosen uniformly."""

    name = "dead_pixels"
    description = "dead/hot/stuck pixels at 0.05/0.1/0.2/0.4/0.8 % of positions"
    category = "sensor"
    levels = (0.0005, 0.001, 0.002, 0.004, 0.008)
    identity = 0.0
    values = np.array([[0, 0, 0], [255, 255, 255], [255, 0, 0], [0, 255, 0], [0, 0, 255]], dtype=np.uint8)

    def parameters(self, severity):
        return {"fraction": self.parameter(severity)}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        # The defects are the pixels with the smallest random keys: nested across levels, never zero.
        keys = rng.random(height * width, dtype=np.float32)
        kinds = rng.integers(0, len(self.values), size=height * width, dtype=np.uint8)
        count = int(min(height * width, max(1, round(self.parameter(severity) * height * width))))
        defective = np.argpartition(keys, count - 1)[:count] if count < height * width else np.arange(count)
        out = image.copy().reshape(-1, 3)
        out[defective] = self.values[kinds[defective]]
        return out.reshape(image.shape)


class FixedPatternNoise(LeveledDegrader):
    """Fixed-pattern noise of a CMOS sensor: per-column offsets (std sigma, plus 0.3 sigma per colour channel),
    per-row offsets (0.5 sigma) and per-pixel gain non-uniformity (PRNU, 0.5 sigma, relative); sigma =
    0.006/0.012/0.02/0.03/0.045 of full scale."""

    name = "fixed_pattern_noise"
    description = "column/row offset stripes + per-pixel gain noise, sigma 0.006/0.012/0.02/0.03/0.045"
    category = "sensor"
    levels = (0.006, 0.012, 0.02, 0.03, 0.045)
    identity = 0.0

    def parameters(self, severity):
        return {"column_sigma": self.parameter(severity)}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        sigma = np.float32(self.parameter(severity))
        columns = standard_normal(rng, (width,)) * sigma
        column_colour = standard_normal(rng, (width, 3)) * (sigma * np.float32(0.3))
        rows = standard_normal(rng, (height,)) * (sigma * np.float32(0.5))
        gain = standard_normal(rng, (height, width))
        gain *= sigma * np.float32(0.5)
        gain += np.float32(1.0)
        offset = (columns * np.float32(255.0))[None, :] + (rows * np.float32(255.0))[:, None]
        pixels = image.astype(np.float32)
        pixels *= gain[..., None]
        pixels += offset[..., None]
        pixels += (column_colour * np.float32(255.0))[None, :, :]
        return rint_uint8(pixels)


class ChromaticAberration(LeveledDegrader):
    """Lateral chromatic aberration: the red and blue planes are magnified about the optical centre by
    ``1 + k`` and ``1 - k`` relative to green (which plane grows is random), k = 0.002/0.004/0.007/0.01/0.015,
    so colour fringes grow towards the corners (up to k times the half-diagonal, 5 px at 512^2 level 5)."""

    name = "chromatic_aberration"
    description = "lateral chromatic aberration, R/B magnified by 1 +- k, k 0.002-0.015, random sign"
    category = "sensor"
    moves_pixels = True
    levels = (0.002, 0.004, 0.007, 0.01, 0.015)
    identity = 0.0

    def parameters(self, severity):
        return {"magnification": self.parameter(severity)}

    def apply(self, image, severity, rng):
        k = self.parameter(severity) * (1.0 if rng.random() < 0.5 else -1.0)
        height, width = image.shape[:2]
        ys, xs = pixel_grid(height, width)
        centre_y, centre_x = np.float32((height - 1) / 2.0), np.float32((width - 1) / 2.0)
        out = image.copy()
        for channel, magnification in ((0, 1.0 + k), (2, 1.0 - k)):
            factor = np.float32(1.0 / magnification)
            source_y = np.broadcast_to(ys * factor + centre_y, (height, width))
            source_x = np.broadcast_to(xs * factor + centre_x, (height, width))
            out[..., channel] = remap(image[..., channel:channel + 1], source_y, source_x)[..., 0]
        return out


OPERATORS = (Blooming, DeadPixels, FixedPatternNoise, ChromaticAberration)
