"""Extended colour and tone operators (category ``color``): random tone curve, CLAHE, gamma, colour cast,
RGB shift, colour bleed and fading. Tone operators are uint8 lookup tables (a fraction of a millisecond).

The NTIRE colour operators (color_shift, color_saturation, brighten, darken, linear_contrast_change) live in
``ntire.py``.
"""

from __future__ import annotations

import math

import numpy as np

from fdcore.degradations.base import LeveledDegrader
from fdcore.degradations.color_spaces import LUMA_WEIGHTS, luma
from fdcore.degradations.lut import apply_lut, tone_curve_table
from fdcore.degradations.pixels import rint_uint8


class ToneCurve(LeveledDegrader):
    """Random tone curve: a monotone cubic through (0, 0), (0.25, 0.25 + a u1), (0.5, 0.5 + a u2),
    (0.75, 0.75 + a u3), (1, 1) with ``u ~ U(-1, 1)`` and ``a`` = 0.04/0.08/0.12/0.17/0.22. Half of the images
    (random) get an independent curve per channel, which also shifts colour."""

    name = "tone_curve"
    description = "random monotone tone curve, control points moved by up to 0.04-0.22; per channel at random"
    category = "color"
    levels = (0.04, 0.08, 0.12, 0.17, 0.22)
    identity = 0.0
    knots = (0.25, 0.5, 0.75)

    def parameters(self, severity):
        return {"max_offset": self.parameter(severity)}

    def apply(self, image, severity, rng):
        amount = self.parameter(severity)
        per_channel = rng.random() < 0.5
        unit = rng.uniform(-1.0, 1.0, size=(3, len(self.knots)))
        xs = (0.0, *self.knots, 1.0)
        curves = [tone_curve_table(xs, (0.0, *(np.array(self.knots) + amount * unit[c]), 1.0)) * 255.0
                  for c in range(3 if per_channel else 1)]
        return apply_lut(image, np.stack(curves) if per_channel else curves[0])


def clahe_luma(values: np.ndarray, clip_limit: float, grid: tuple[int, int] = (8, 8)) -> np.ndarray:
    """Contrast-limited adaptive histogram equalisation of a uint8 HxW plane (Zuiderveld 1994): per-tile
    histograms clipped at ``clip_limit`` times the mean bin count (excess redistributed uniformly), equalising
    maps per tile, and bilinear interpolation of the maps between tile centres. Returns float32 on 0..255.

    The clipped height has no floor (OpenCV keeps at least one pixel per bin), so a clip limit of 0 flattens every
    histogram and every tile map is the identity, within one level, at any tile size."""
    height, width = values.shape
    tiles_y, tiles_x = min(grid[0], height), min(grid[1], width)
    tile_of_row = (np.arange(height) * tiles_y) // height
    tile_of_col = (np.arange(width) * tiles_x) // width
    tile_index = (tile_of_row[:, None] * tiles_x + tile_of_col[None, :]).astype(np.int32)
    hist = np.bincount((tile_index * 256 + values).ravel(), minlength=tiles_y * tiles_x * 256)
    hist = hist.reshape(tiles_y * tiles_x, 256).astype(np.float64)
    area = hist.sum(axis=1, keepdims=True)
    limit = clip_limit * area / 256.0
    excess = np.maximum(hist - limit, 0.0).sum(axis=1, keepdims=True)
    hist = np.minimum(hist, limit) + excess / 256.0
    maps = (np.cumsum(hist, axis=1) / area * 255.0).astype(np.float32).ravel()

    def neighbours(tile_of: np.ndarray, count: int, size: int):
        edges = np.arange(count + 1) * size / count
        centres = (edges[:-1] + edges[1:] - 1.0) / 2.0
        position = np.arange(size, dtype=np.float64)
        low = np.clip(np.searchsorted(centres, position, side="right") - 1, 0, count - 1)
        high = np.minimum(low + 1, count - 1)
        span = np.where(high > low, centres[high] - centres[low], 1.0)
        weight = np.clip((position - centres[low]) / span, 0.0, 1.0) * (high > low)
        return low, high, weight.astype(np.float32)

    row_low, row_high, wy = neighbours(tile_of_row, tiles_y, height)
    col_low, col_high, wx = neighbours(tile_of_col, tiles_x, width)
    wy, wx = wy[:, None], wx[None, :]

    def lookup(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
        return maps[((rows[:, None] * tiles_x + cols[None, :]) * 256 + values).ravel()].reshape(height, width)

    top = lookup(row_low, col_low) * (1 - wx) + lookup(row_low, col_high) * wx
    bottom = lookup(row_high, col_low) * (1 - wx) + lookup(row_high, col_high) * wx
    return top * (1 - wy) + bottom * wy


class Clahe(LeveledDegrader):
    """CLAHE on the luma (BT.601), 8x8 tiles, clip limit 1.5/2/3/4.5/7 times the mean bin. A clip limit of 0 is
    the identity (every clipped histogram is flat), so weak strengths between 0 and level 1 stay close to the
    original. The luma change is added to R, G and B, so hue is kept."""

    name = "clahe"
    description = "CLAHE on luma, 8x8 tiles, clip limit 1.5/2/3/4.5/7"
    category = "color"
    levels = (1.5, 2.0, 3.0, 4.5, 7.0)
    identity = 0.0
    grid = (8, 8)

    def parameters(self, severity):
        # minimum_clip_count 0: no one-pixel floor on the clip height (records made with the floor are refused)
        return {"clip_limit": self.parameter(severity), "tiles": list(self.grid), "minimum_clip_count": 0}

    def apply(self, image, severity, rng):
        pixels = image.astype(np.float32)
        luminance = luma(pixels)
        values = np.clip(np.rint(luminance), 0, 255).astype(np.uint8)
        equalised = clahe_luma(values, self.parameter(severity), self.grid)
        pixels += (equalised - values)[..., None]
        return rint_uint8(pixels)


class Gamma(LeveledDegrader):
    """Gamma change ``x ** g`` with ``|ln g|`` = 0.12/0.25/0.4/0.6/0.85 (g from 0.43 to 2.34), brightening or
    darkening at random."""

    name = "gamma"
    description = "gamma x**g, |ln g| 0.12/0.25/0.4/0.6/0.85, brighter or darker at random"
    category = "color"
    levels = (0.12, 0.25, 0.4, 0.6, 0.85)
    identity = 0.0

    def parameters(self, severity):
        return {"abs_log_gamma": self.parameter(severity)}

    def apply(self, image, severity, rng):
        sign = 1.0 if rng.random() < 0.5 else -1.0
        gamma = math.exp(sign * self.parameter(severity))
        return apply_lut(image, 255.0 * (np.arange(256) / 255.0) ** gamma)


class ColorCast(LeveledDegrader):
    """White-balance error: per-channel gains ``exp(a d)`` along a random direction of the colour-temperature
    (R up, B down) / tint (G) plane, normalised so the luma of grey is unchanged; ``a`` =
    0.04/0.08/0.13/0.2/0.3."""

    name = "color_cast"
    description = "white-balance cast: channel gains exp(a*d), a 0.04-0.3, random temperature/tint direction"
    category = "color"
    levels = (0.04, 0.08, 0.13, 0.2, 0.3)
    identity = 0.0

    def parameters(self, severity):
        return {"log_gain": self.parameter(severity)}

    def apply(self, image, severity, rng):
        angle = rng.uniform(0.0, 2.0 * math.pi)
        temperature, tint = math.cos(angle), math.sin(angle)
        direction = np.array([temperature, tint, -temperature])
        direction -= np.dot(LUMA_WEIGHTS, direction)
        gains = np.exp(self.parameter(severity) * direction)
        return apply_lut(image, gains[:, None] * np.arange(256)[None, :])


class RgbShift(LeveledDegrader):
    """RGB channel shift (albumentations' RGBShift): a constant added to each channel, magnitude in
    [0.5, 1] x limit with a random sign per channel, limit 8/16/26/40/60 grey levels."""

    name = "rgb_shift"
    description = "per-channel constant offsets up to 8/16/26/40/60 grey levels, random signs"
    category = "color"
    levels = (8.0, 16.0, 26.0, 40.0, 60.0)
    identity = 0.0

    def parameters(self, severity):
        return {"limit": self.parameter(severity)}

    def apply(self, image, severity, rng):
        magnitude = rng.uniform(0.5, 1.0, size=3)
        sign = np.where(rng.random(3) < 0.5, -1.0, 1.0)
        offsets = self.parameter(severity) * magnitude * sign
        return apply_lut(image, np.arange(256)[None, :] + offsets[:, None])


class ColorBleed(LeveledDegrader):
    """Analog (VHS/composite) colour bleeding: the chroma planes (YCbCr) are smeared horizontally by a box of
    2/4/7/11/16 px and delayed to the right by a quarter of that width; luma is untouched."""

    name = "color_bleed"
    description = "chroma smeared horizontally 2/4/7/11/16 px and delayed right by width/4 (VHS-style)"
    category = "color"
    moves_pixels = True
    levels = (2.0, 4.0, 7.0, 11.0, 16.0)
    identity = 0.0

    def parameters(self, severity):
        width = self.parameter(severity)
        return {"bleed_px": width, "delay_px": int(round(width / 4.0))}

    def apply(self, image, severity, rng):
        import cv2

        bleed = self.parameter(severity)
        height, width = image.shape[:2]
        delay = min(int(round(bleed / 4.0)), width)
        size = max(1, int(round(bleed)))
        pixels = image.astype(np.float32)
        # One plane at a time with OpenCV (a 3->1 colour transform is a single vectorised pass; numpy's strided
        # channel arithmetic and a 1-D uniform filter cost ~4x more at 512²).
        y = cv2.transform(pixels, _LUMA_FROM_RGB).reshape(height, width)
        smeared = []
        for row in (_CB_FROM_RGB, _CR_FROM_RGB):
            plane = cv2.transform(pixels, row).reshape(height, width)
            # horizontal box over [x - size//2, x + (size-1)//2], replicated edges
            plane = cv2.blur(plane, (size, 1), borderType=cv2.BORDER_REPLICATE).reshape(height, width)
            if delay >= width:  # narrower than the delay: the first column's chroma everywhere
                plane = np.repeat(plane[:, :1], width, axis=1)
            elif delay:  # delayed right; the first column's chroma fills the start
                plane = cv2.copyMakeBorder(plane[:, :width - delay], 0, 0, delay, 0,
                                           cv2.BORDER_REPLICATE).reshape(height, width)
            smeared.append(plane)
        cb, cr = smeared
        # R = y + 1.403 cr, G = y - 0.344 cb - 0.714 cr, B = y + 1.773 cb, rounded and saturated by OpenCV.
        red = cv2.addWeighted(y, 1.0, cr, 1.403, 0.0, dtype=cv2.CV_8U)
        green = cv2.addWeighted(cv2.scaleAdd(cb, -0.344, y), 1.0, cr, -0.714, 0.0, dtype=cv2.CV_8U)
        blue = cv2.addWeighted(y, 1.0, cb, 1.773, 0.0, dtype=cv2.CV_8U)
        return cv2.merge([red, green, blue]).reshape(image.shape)


# Analog YCbCr (BT.601 luma; Cb = 0.564 (B - Y), Cr = 0.713 (R - Y)) as 1x3 rows, for ColorBleed.
_LUMA_FROM_RGB = LUMA_WEIGHTS.astype(np.float32)[None, :]
_CB_FROM_RGB = (np.float32(0.564) * (np.array([0, 0, 1], np.float32) - _LUMA_FROM_RGB[0]))[None, :]
_CR_FROM_RGB = (np.float32(0.713) * (np.array([1, 0, 0], np.float32) - _LUMA_FROM_RGB[0]))[None, :]


class Fading(LeveledDegrader):
    """Faded print: colours pulled towards grey (saturation x (1 - 0.8 a)), contrast compressed towards mid-grey
    (x (1 - 0.5 a)) with lifted blacks, and a warm yellow cast (R +0.04 a, B -0.08 a); a =
    0.1/0.2/0.3/0.45/0.6."""

    name = "fading"
    description = "faded print: desaturate, compress contrast, lift blacks, warm cast; amount 0.1-0.6"
    category = "color"
    levels = (0.1, 0.2, 0.3, 0.45, 0.6)
    identity = 0.0

    def parameters(self, severity):
        return {"amount": self.parameter(severity)}

    def apply(self, image, severity, rng):
        amount = self.parameter(severity)
        values = np.arange(256, dtype=np.float64) / 255.0
        # Contrast and cast are per-channel tone maps; desaturation mixes channels, so it is applied first.
        pixels = image.astype(np.float32)
        grey = luma(pixels)[..., None]
        pixels += np.float32(0.8 * amount) * (grey - pixels)
        contrast = 1.0 - 0.5 * amount
        cast = np.array([0.04, 0.0, -0.08]) * amount
        tone = 0.5 + (values - 0.5) * contrast + 0.05 * amount
        lut = np.clip((tone[None, :] + cast[:, None]) * 255.0, 0, 255)
        return apply_lut(rint_uint8(pixels), lut)


OPERATORS = (ToneCurve, Clahe, Gamma, ColorCast, RgbShift, ColorBleed, Fading)
