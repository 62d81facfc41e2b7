"""Extended blur operators: motion, defocus, zoom, glass and atmospheric blur (category ``blur``).

The NTIRE blurs (gaussian_blur, lens_blur) live in ``ntire.py``.
"""

from __future__ import annotations

import math

import numpy as np

from fdcore.degradations.base import LeveledDegrader, level_value
from fdcore.degradations.kernels import gaussian_blur, line_offsets, mean_of_shifts
from fdcore.degradations.pixels import rint_uint8
from fdcore.degradations.resampling import remap


class MotionBlur(LeveledDegrader):
    """Linear camera/object motion: the image is averaged along a rasterised line of ``length`` pixels at a
    uniformly random angle. The line is centred on each pixel, so the blur smears without displacing content."""

    name = "motion_blur"
    description = "motion blur, line kernel 5/9/15/21/31 px at a random angle, centred, replicate borders"
    category = "blur"
    levels = (5, 9, 15, 21, 31)
    identity = 1
    integer_parameter = True

    def parameters(self, severity):
        return {"length_px": self.parameter(severity)}

    def apply(self, image, severity, rng):
        angle = rng.uniform(0.0, math.pi)
        length = int(self.parameter(severity))
        if length <= 1:
            return image.copy()
        return mean_of_shifts(image, line_offsets(length, angle))


def _binary_disk_mean(image: np.ndarray, radius: float) -> np.ndarray:
    """Mean of ``image`` over a binary disk around each pixel (replicate borders), uint8. Each disk row is a
    horizontal box sum (one OpenCV box filter per distinct run length); rows are stacked by uint16 slice adds, in
    groups small enough not to overflow, and the groups summed in float."""
    import cv2

    half = int(math.floor(radius))
    height = image.shape[0]
    runs = [int(math.floor(math.sqrt(max(radius * radius - dy * dy, 0.0)))) for dy in range(-half, half + 1)]
    padded = cv2.copyMakeBorder(np.ascontiguousarray(image), half, half, 0, 0, cv2.BORDER_REPLICATE)
    row_sums = {run: cv2.boxFilter(padded, cv2.CV_16U, (2 * run + 1, 1), normalize=False,
                                   borderType=cv2.BORDER_REPLICATE).reshape(padded.shape)
                for run in set(runs)}
    groups, group, group_count = [], np.zeros(image.shape, dtype=np.uint16), 0
    for offset, run in enumerate(runs):
        if (group_count + 2 * run + 1) * 255 >= 2 ** 16:
            groups.append(group)
            group, group_count = np.zeros(image.shape, dtype=np.uint16), 0
        group += row_sums[run][offset:offset + height]
        group_count += 2 * run + 1
    count = sum(2 * run + 1 for run in runs)
    if not groups:  # divide by the disk area, round and saturate in one pass
        return cv2.convertScaleAbs(group, alpha=1.0 / count).reshape(image.shape)
    total = group.astype(np.float32)
    for partial in groups:
        total += partial
    return cv2.convertScaleAbs(total, alpha=1.0 / count).reshape(image.shape)


class DefocusBlur(LeveledDegrader):
    """Out-of-focus blur in the ImageNet-C formulation: a binary (hard-edged) circular aperture of the given
    radius, then a small Gaussian (sigma 0.5 px) that anti-aliases the disk edge. Radii follow ImageNet-C's
    3, 4, 6, 8, 10 px, larger than lens_blur's anti-aliased disk levels."""

    name = "defocus_blur"
    description = "defocus blur, hard disk of radius 3/4/6/8/10 px + 0.5 px Gaussian anti-aliasing"
    category = "blur"
    levels = (3.0, 4.0, 6.0, 8.0, 10.0)
    identity = 0.0
    alias_sigma = 0.5

    def parameters(self, severity):
        return {"radius": self.parameter(severity), "alias_sigma": self.alias_sigma}

    def apply(self, image, severity, rng):
        radius = self.parameter(severity)
        if radius < 1.0:
            # below one pixel the disk is a single tap: blend towards the 1-px disk instead (continuous strength)
            disk = _binary_disk_mean(image, 1.0).astype(np.float32)
            disk = image.astype(np.float32) + np.float32(radius) * (disk - image.astype(np.float32))
            return rint_uint8(gaussian_blur(disk, self.alias_sigma * radius))
        return gaussian_blur(_binary_disk_mean(image, radius), self.alias_sigma)


class ZoomBlur(LeveledDegrader):
    """Radial (zoom) blur: the average of 2^k copies of the image scaled about its centre by factors spread
    geometrically over [1/sqrt(z), sqrt(z)] (steps of at most 2 %, as ImageNet-C's 1-3 %). Symmetric in
    log-scale, so content is smeared radially but not displaced on average.

    Built by doubling: averaging a set of copies with itself scaled by t^-1/2 and t^1/2 (t the set's span) doubles
    the set, so 2^k copies cost 2k warps instead of 2^k."""

    name = "zoom_blur"
    description = "zoom blur, average of copies scaled about the centre over a total zoom range 1.04-1.26"
    category = "blur"
    levels = (1.04, 1.08, 1.12, 1.18, 1.26)
    identity = 1.0
    step = 1.02
    max_copies = 16

    def parameters(self, severity):
        zoom = self.parameter(severity)
        return {"zoom_range": zoom, "copies": self._copies(zoom)}

    def _copies(self, zoom: float) -> int:
        needed = math.log(zoom) / math.log(self.step) + 1
        return int(min(self.max_copies, 2 ** max(1, math.ceil(math.log2(needed)))))

    def apply(self, image, severity, rng):
        import cv2

        zoom = self.parameter(severity)
        height, width = image.shape[:2]
        copies = self._copies(zoom)
        spacing = math.log(zoom) / (copies - 1)  # log-scale distance between neighbouring copies
        centre_x, centre_y = (width - 1) / 2.0, (height - 1) / 2.0

        def scaled(picture: np.ndarray, scale: float) -> np.ndarray:
            # output pixel p samples the input at c + (p - c) / scale (replicated borders when scale < 1)
            inverse = np.array([[1.0 / scale, 0.0, centre_x * (1.0 - 1.0 / scale)],
                                [0.0, 1.0 / scale, centre_y * (1.0 - 1.0 / scale)]])
            return cv2.warpAffine(picture, inverse, (width, height), flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                                  borderMode=cv2.BORDER_REPLICATE).reshape(image.shape)

        current = np.ascontiguousarray(image)
        span = 1  # copies represented by ``current``, centred on scale 1
        while span < copies:
            half_shift = math.exp(spacing * span / 2.0)
            current = cv2.addWeighted(scaled(current, 1.0 / half_shift), 0.5, scaled(current, half_shift), 0.5,
                                      0.0).reshape(image.shape)
            span *= 2
        return current


class GlassBlur(LeveledDegrader):
    """Frosted-glass blur (ImageNet-C's description): Gaussian blur, then every pixel takes the value of a random
    neighbour up to ``delta`` pixels away (two rounds), then Gaussian blur again. Vectorised: each round is one
    gather with a random integer offset per pixel instead of sequential pixel swaps."""

    name = "glass_blur"
    description = "glass blur: blur (sigma 0.7-1.5), 2 rounds of random local pixel displacement up to 1-4 px, blur"
    category = "blur"
    moves_pixels = True
    levels = (1.0, 1.5, 2.0, 3.0, 4.0)
    identity = 0.0
    sigmas = (0.7, 0.9, 1.0, 1.1, 1.5)
    rounds = 2

    def parameters(self, severity):
        return {"max_displacement_px": self.parameter(severity), "sigma": self._sigma(severity),
                "rounds": self.rounds}

    def _sigma(self, severity):
        return level_value(severity, 0.0, self.sigmas)

    def apply(self, image, severity, rng):
        delta = self.parameter(severity)
        sigma = self._sigma(severity)
        height, width = image.shape[:2]
        blurred = gaussian_blur(image, sigma)
        # Each round moves every pixel by round(u * delta), u uniform in [-1, 1] per axis, drawn as bytes and
        # mapped through a 256-entry table. The rounds compose into one source map, applied by one nearest remap.
        offsets = np.rint((np.arange(256, dtype=np.float32) * np.float32(2.0 / 255.0) - 1.0) * np.float32(delta))
        source_y = np.broadcast_to(np.arange(height, dtype=np.float32)[:, None], (height, width))
        source_x = np.broadcast_to(np.arange(width, dtype=np.float32)[None, :], (height, width))
        for _ in range(self.rounds):
            draws = rng.integers(0, 256, size=(2, height, width), dtype=np.uint8)
            # this round reads the previous result at (y + dy, x + dx), clamped: compose through the map so far
            step_y = np.clip(np.arange(height, dtype=np.float32)[:, None] + offsets[draws[0]], 0, height - 1)
            step_x = np.clip(np.arange(width, dtype=np.float32)[None, :] + offsets[draws[1]], 0, width - 1)
            flat = (step_y.astype(np.int32) * width + step_x.astype(np.int32)).ravel()
            source_y = source_y.reshape(-1)[flat].reshape(height, width)
            source_x = source_x.reshape(-1)[flat].reshape(height, width)
        scattered = remap(blurred, source_y, source_x, nearest=True)
        return gaussian_blur(scattered, sigma)


class AtmosphericBlur(LeveledDegrader):
    """Long-exposure atmospheric blur (turbulence and aerosol scattering): a point-spread function with a sharp
    core and a wide scattering halo, modelled as a mixture of three Gaussians (widths 1x, 3x, 8x the core sigma,
    weights 0.6 / 0.3 / 0.1). The halo adds the veiling loss of contrast that a single Gaussian lacks."""

    name = "atmospheric_blur"
    description = "atmospheric blur, core sigma 0.5/0.8/1.2/1.8/2.5 px with a 3x and 8x scattering halo"
    category = "blur"
    levels = (0.5, 0.8, 1.2, 1.8, 2.5)
    identity = 0.0
    halo = ((1.0, 0.6), (3.0, 0.3), (8.0, 0.1))

    def parameters(self, severity):
        return {"core_sigma": self.parameter(severity)}

    def apply(self, image, severity, rng):
        import cv2

        sigma = self.parameter(severity)
        height, width = image.shape[:2]
        image = np.ascontiguousarray(image)
        out, total_weight = None, 0.0
        for scale, weight in self.halo:
            width_px = sigma * scale
            factor = int(width_px // 2)
            if factor >= 2 and min(height, width) >= 4 * factor:
                # a wide lobe is smooth: blur a copy reduced so the lobe spans ~2 px, then upsample it
                small = cv2.resize(image, (width // factor, height // factor), interpolation=cv2.INTER_AREA)
                small = gaussian_blur(small, width_px / factor)
                lobe = cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).reshape(image.shape)
            else:
                lobe = gaussian_blur(image, width_px)
            # running weighted mean of the lobes, in bytes
            total_weight += weight
            out = lobe if out is None else cv2.addWeighted(out, 1.0 - weight / total_weight, lobe,
                                                           weight / total_weight, 0.0).reshape(image.shape)
        return out


OPERATORS = (MotionBlur, DefocusBlur, ZoomBlur, GlassBlur, AtmosphericBlur)
