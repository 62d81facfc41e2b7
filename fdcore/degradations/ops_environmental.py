"""Environmental operators (category ``environmental``): fog, rain, snow, frost, light leak, lens flare and
vignetting. All procedural (no bundled textures), vectorised, with random layouts drawn independently of the
severity so one seed gives the same scene at every level, only stronger.
"""

from __future__ import annotations

import math

import numpy as np

from fdcore.degradations.base import LeveledDegrader, level_value
from fdcore.degradations.kernels import gaussian_blur, line_offsets, mean_of_shifts
from fdcore.degradations.pixels import in_strips, rint_uint8, screen_uint8
from fdcore.degradations.randomness import fractal_noise
from fdcore.degradations.resampling import pixel_grid


class Fog(LeveledDegrader):
    """Fog by the atmospheric scattering model ``I = J t + A (1 - t)``, transmission ``t = exp(-beta d)``, with a
    patchy depth/density map ``d`` (fractal noise mixed with a top-to-bottom gradient, the top being farther
    away) and a near-white airlight ``A`` with a slight random tint; beta = 0.25/0.5/0.8/1.2/1.7."""

    name = "fog"
    description = "fog, scattering model with patchy fractal density, beta 0.25/0.5/0.8/1.2/1.7"
    category = "environmental"
    levels = (0.25, 0.5, 0.8, 1.2, 1.7)
    identity = 0.0

    def parameters(self, severity):
        return {"beta": self.parameter(severity)}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        density = fractal_noise(rng, height, width, max(height, width) / 2.0, octaves=5)
        gradient = np.linspace(1.0, 0.3, height, dtype=np.float32)[:, None]
        depth = np.float32(0.3) + np.float32(0.45) * density + np.float32(0.45) * gradient
        airlight = (np.float32(0.82) + np.float32(0.1) * rng.random(3).astype(np.float32)) * np.float32(255.0)
        haze = 1.0 - np.exp(-np.float32(self.parameter(severity)) * depth)
        pixels = image.astype(np.float32)
        pixels += haze[..., None] * (airlight - pixels)
        return rint_uint8(pixels)


def _sparse_seeds(rng: np.random.Generator, height: int, width: int, density: float) -> np.ndarray:
    """uint8 HxW plane: a random brightness in [128, 255] at a random ``density`` fraction of the pixels, 0
    elsewhere. The same seed gives nested sets (more seeds at higher density)."""
    draw = rng.random((height, width), dtype=np.float32)
    strength = rng.integers(0, 256, size=(height, width), dtype=np.uint8)
    return np.where(draw < np.float32(density), np.uint8(128) + (strength >> 1), np.uint8(0))


class Rain(LeveledDegrader):
    """Rain: thin bright streaks (drops seeded at a 0.15-1.2 % pixel density, smeared along a common
    near-vertical direction, random within +-20 degrees, length 4 % of the image size), screen-blended, with a
    slight overall dimming and veil as the density grows."""

    name = "rain"
    description = "rain streaks, drop density 0.15/0.3/0.5/0.8/1.2 % of pixels, random slant, dimming"
    category = "environmental"
    levels = (0.0015, 0.003, 0.005, 0.008, 0.012)
    identity = 0.0

    def parameters(self, severity):
        return {"drop_density": self.parameter(severity)}

    def apply(self, image, severity, rng):
        import cv2

        height, width = image.shape[:2]
        density = self.parameter(severity)
        angle = math.pi / 2.0 + math.radians(rng.uniform(-20.0, 20.0))
        length = int(np.clip(round(0.04 * max(height, width)), 3, 41))
        seeds = _sparse_seeds(rng, height, width, density)
        streaks = mean_of_shifts(seeds, line_offsets(length, angle))
        streaks = cv2.convertScaleAbs(streaks, alpha=length * 0.6)  # a streak's pixels get ~0.6x its drop
        strength = severity  # dimming and veil follow the overall severity
        dimmed = cv2.convertScaleAbs(np.ascontiguousarray(image), alpha=1.0 - 0.12 * strength,
                                     beta=255.0 * 0.05 * strength).reshape(image.shape)
        tinted = cv2.merge([cv2.convertScaleAbs(streaks, alpha=tone) for tone in (0.85, 0.88, 0.92)])
        return screen_uint8(dimmed, tinted)


class Snow(LeveledDegrader):
    """Snow: soft flakes of 1-3 px (seeded on a half-resolution grid at a 0.2-1.6 % density, upsampled,
    smeared by a short fall streak) screen-blended over an image whitened as by snow cover (blend towards
    ``max(x, 1.5 luma + 0.5)`` by 0.05-0.35)."""

    name = "snow"
    description = "snow flakes (density 0.2/0.4/0.7/1.1/1.6 % on a half-res grid) + snow-cover whitening"
    category = "environmental"
    levels = (0.002, 0.004, 0.007, 0.011, 0.016)
    identity = 0.0
    cover_levels = (0.05, 0.1, 0.18, 0.26, 0.35)

    def parameters(self, severity):
        return {"flake_density": self.parameter(severity), "cover": level_value(severity, 0.0, self.cover_levels)}

    def apply(self, image, severity, rng):
        import cv2

        height, width = image.shape[:2]
        small_h, small_w = max(1, height // 2), max(1, width // 2)
        angle = math.pi / 2.0 + math.radians(rng.uniform(-30.0, 30.0))
        seeds = _sparse_seeds(rng, small_h, small_w, self.parameter(severity))
        flakes = mean_of_shifts(seeds, line_offsets(3, angle))
        flakes = cv2.resize(cv2.convertScaleAbs(flakes, alpha=2.0), (width, height), interpolation=cv2.INTER_LINEAR)
        # uint8 OpenCV arithmetic throughout: out = x + cover * max(white - x, 0), then screen the flakes.
        image = np.ascontiguousarray(image)
        grey = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
        white = cv2.convertScaleAbs(grey, alpha=1.5, beta=127.5)  # 1.5 luma + 0.5, saturated at 255
        lift = cv2.subtract(cv2.merge([white, white, white]), image)
        covered = cv2.addWeighted(image, 1.0, lift, level_value(severity, 0.0, self.cover_levels), 0.0)
        return screen_uint8(covered.reshape(image.shape), flakes.reshape(height, width))


class Frost(LeveledDegrader):
    """Frost on the lens or window: a procedural ice texture (ridged multi-octave noise giving crystal veins),
    denser towards the frame edges where frost grows first, that both scatters (the image under it is blurred)
    and whitens it with a cold blue-white tint; opacity 0.2/0.3/0.4/0.5/0.6."""

    name = "frost"
    description = "procedural frost (ridged-noise ice veins, denser at the edges), opacity 0.2-0.6"
    category = "environmental"
    levels = (0.2, 0.3, 0.4, 0.5, 0.6)
    identity = 0.0
    tint = (0.86, 0.93, 1.0)

    def parameters(self, severity):
        return {"opacity": self.parameter(severity)}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        opacity = np.float32(self.parameter(severity))
        texture = fractal_noise(rng, height, width, max(4.0, min(height, width) / 4.0), octaves=6, persistence=0.6)
        ys, xs = pixel_grid(height, width)
        blurred = gaussian_blur(image, max(1.0, 0.004 * max(height, width)))
        tint = np.array(self.tint, dtype=np.float32)
        half_height, half_width = max((height - 1) / 2.0, 1.0), max((width - 1) / 2.0, 1.0)

        def strip(pixels, texture, blurred, ys):
            # Ice from the texture, denser towards the frame edges; then, on the 0..255 scale, scatter (towards
            # the blurred image) and screen the ice.
            veins = (1.0 - np.abs(2.0 * texture - 1.0)) ** 4
            edge = np.maximum(np.abs(ys) / half_height, np.abs(xs) / half_width)
            coverage = np.clip(np.float32(0.35) + np.float32(0.65) * edge ** 2, 0.0, 1.0) * opacity
            ice = np.clip(np.float32(0.55) * veins + np.float32(0.45) * texture, 0.0, 1.0) * coverage
            pixels = pixels.astype(np.float32)
            scattered = blurred.astype(np.float32)
            scattered -= pixels
            scattered *= coverage[..., None]
            pixels += scattered
            headroom = np.float32(255.0) - pixels
            headroom *= ice[..., None]
            headroom *= tint
            pixels += headroom
            return rint_uint8(pixels)

        # strips of ~64k values: 1.7x faster at 512² than whole-image float passes
        return in_strips(image, strip, max(1, 65536 // (3 * width)), texture, blurred, ys)


# Warm film light-leak colours (orange, red, magenta, yellow).
_LEAK_COLOURS = np.array([[1.0, 0.45, 0.1], [1.0, 0.2, 0.1], [1.0, 0.3, 0.6], [1.0, 0.8, 0.3]], dtype=np.float32)


def _light_layer(layer: np.ndarray, height: int, width: int, strength: float) -> np.ndarray:
    """A smooth float light layer rendered at low resolution -> uint8 HxWx3 at full size, times ``strength``."""
    import cv2

    small = rint_uint8(np.minimum(layer, 1.0) * np.float32(255.0 * strength))
    if small.shape[:2] == (height, width):
        return small
    return cv2.resize(small, (width, height), interpolation=cv2.INTER_LINEAR).reshape(height, width, 3)


def _low_resolution_grid(height: int, width: int, factor: int = 8):
    """Pixel-centre coordinates (in full-resolution pixels) of a grid ``factor`` times coarser, for smooth
    layers (glows, flares) that are rendered small and upsampled."""
    small_h, small_w = max(1, -(-height // factor)), max(1, -(-width // factor))
    rows = (np.arange(small_h, dtype=np.float32)[:, None] + np.float32(0.5)) * np.float32(height / small_h)
    cols = (np.arange(small_w, dtype=np.float32)[None, :] + np.float32(0.5)) * np.float32(width / small_w)
    return rows, cols


# Warm film light-leak colours (orange, red, magenta, yellow).
_LEAK_COLOURS = np.array([[1.0, 0.45, 0.1], [1.0, 0.2, 0.1], [1.0, 0.3, 0.6], [1.0, 0.8, 0.3]], dtype=np.float32)


class LightLeak(LeveledDegrader):
    """Film light leak: 1-3 large soft warm glows (orange, red, magenta or yellow, random) entering from random
    points on the frame edge, screen-blended at strength 0.15/0.3/0.45/0.6/0.8. The glows are smooth, so they
    are rendered at 1/8 resolution and upsampled."""

    name = "light_leak"
    description = "1-3 warm soft glows from the frame edges, screen blend, strength 0.15-0.8"
    category = "environmental"
    levels = (0.15, 0.3, 0.45, 0.6, 0.8)
    identity = 0.0

    def parameters(self, severity):
        return {"strength": self.parameter(severity)}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        count = 1 + int(rng.integers(0, 3))
        layout = rng.random((3, 5))
        colours = _LEAK_COLOURS[rng.integers(0, len(_LEAK_COLOURS), size=3)]
        rows, cols = _low_resolution_grid(height, width)
        glow = np.zeros((rows.shape[0], cols.shape[1], 3), dtype=np.float32)
        for index in range(count):
            side, along, spread_y, spread_x, _ = layout[index]
            edge_point = [(along * width, -0.1 * height), (along * width, 1.1 * height),
                          (-0.1 * width, along * height), (1.1 * width, along * height)][int(side * 4) % 4]
            sigma_x, sigma_y = (0.2 + 0.4 * spread_x) * width, (0.2 + 0.4 * spread_y) * height
            blob_x = np.exp(-0.5 * ((cols - np.float32(edge_point[0])) / np.float32(sigma_x)) ** 2)
            blob_y = np.exp(-0.5 * ((rows - np.float32(edge_point[1])) / np.float32(sigma_y)) ** 2)
            glow += (blob_y * blob_x)[..., None] * colours[index]
        return screen_uint8(image, _light_layer(glow, height, width, self.parameter(severity)))


class LensFlare(LeveledDegrader):
    """Lens flare: a bright source at a random point with a soft glow and a faint starburst, and a chain of 5
    tinted ghost discs along the line from the source through the image centre (the optical axis), rendered at
    quarter resolution (the flare is smooth), screen-blended at strength 0.15/0.3/0.45/0.65/0.9."""

    name = "lens_flare"
    description = "lens flare: source glow + 5 tinted ghosts along the optical axis, strength 0.15-0.9"
    category = "environmental"
    levels = (0.15, 0.3, 0.45, 0.65, 0.9)
    identity = 0.0
    ghosts = 5

    def parameters(self, severity):
        return {"strength": self.parameter(severity)}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        source = rng.uniform(0.1, 0.9, size=2) * np.array([width, height])
        positions = rng.uniform(-0.6, 1.6, size=self.ghosts)
        radii = rng.uniform(0.02, 0.09, size=self.ghosts)
        tints = rng.uniform(0.3, 1.0, size=(self.ghosts, 3)).astype(np.float32)
        opacities = rng.uniform(0.15, 0.4, size=self.ghosts)
        rays = rng.uniform(0.0, math.pi, size=1)[0]
        rows, cols = _low_resolution_grid(height, width, factor=4)
        diagonal = math.hypot(width, height)
        dy, dx = rows - np.float32(source[1]), cols - np.float32(source[0])
        distance = np.sqrt(dy * dy + dx * dx) / np.float32(diagonal)
        glow = np.exp(-distance / np.float32(0.06)) + np.float32(0.25) * np.exp(-distance / np.float32(0.25))
        angle = np.arctan2(dy, dx)
        star = np.float32(0.3) * np.abs(np.cos(3.0 * (angle - np.float32(rays)))) ** 40 * np.exp(-distance / 0.2)
        layer = np.repeat(((glow + star) * np.float32(0.9))[..., None], 3, axis=2)
        centre = np.array([width / 2.0, height / 2.0])
        for index in range(self.ghosts):
            position = source + positions[index] * (centre - source) * 2.0
            ghost_distance = np.sqrt((rows - np.float32(position[1])) ** 2 + (cols - np.float32(position[0])) ** 2)
            edge = np.clip((radii[index] * diagonal - ghost_distance) / np.float32(0.01 * diagonal + 1.0), 0.0, 1.0)
            layer += (edge * np.float32(opacities[index]))[..., None] * tints[index]
        return screen_uint8(image, _light_layer(layer, height, width, self.parameter(severity)))


class Vignetting(LeveledDegrader):
    """Vignetting: brightness multiplied by ``1 - v r^2`` (r = 1 at the corners), the optical centre offset at
    random by up to 5 % of the size; v = 0.15/0.3/0.45/0.6/0.75."""

    name = "vignetting"
    description = "radial darkening 1 - v*r^2, v 0.15/0.3/0.45/0.6/0.75, centre offset up to 5 %"
    category = "environmental"
    levels = (0.15, 0.3, 0.45, 0.6, 0.75)
    identity = 0.0

    def parameters(self, severity):
        return {"strength": self.parameter(severity)}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        offset = rng.uniform(-0.05, 0.05, size=2) * np.array([height, width])
        ys, xs = pixel_grid(height, width)
        ys = (ys - np.float32(offset[0])) / np.float32(max((height - 1) / 2.0, 0.5) * math.sqrt(2.0))
        xs = (xs - np.float32(offset[1])) / np.float32(max((width - 1) / 2.0, 0.5) * math.sqrt(2.0))
        gain = np.clip(1.0 - np.float32(self.parameter(severity)) * (ys * ys + xs * xs), 0.0, 1.0)
        return rint_uint8(image * gain[..., None])


OPERATORS = (Fog, Rain, Snow, Frost, LightLeak, LensFlare, Vignetting)
