"""Extended geometric operators (category ``geometric``): resampling, crops, warps and pixel-level scrambles.

Warps fill the whole frame: the operator zooms in just enough that no output pixel comes from outside the input
(no invented black or mirrored borders), so PSNR and alignment checks see only the warp itself. Crops change the
output size (``changes_size``); everything else keeps it.

The NTIRE ``jitter`` lives in ``ntire.py``.
"""

from __future__ import annotations

import itertools
import math

import numpy as np

from fdcore.degradations.base import LeveledDegrader, level_value
from fdcore.degradations.randomness import smooth_field
from fdcore.degradations.resampling import cover_zoom, pixel_grid, remap, resize, warp_linear


class Downscale(LeveledDegrader):
    """Resolution loss: downscale by 0.75/0.6/0.45/0.33/0.25 with a random antialiasing filter (box, bilinear,
    bicubic or Lanczos), then upscale back to the input size (bilinear or bicubic, random), like albumentations'
    Downscale. The output keeps the input size, so it chains with any operator."""

    name = "downscale"
    description = "downscale x0.75/0.6/0.45/0.33/0.25 (random filter) and upscale back to the input size"
    category = "geometric"
    levels = (0.75, 0.6, 0.45, 0.33, 0.25)
    identity = 1.0
    down_filters = ("box", "bilinear", "bicubic", "lanczos")
    up_filters = ("bilinear", "bicubic")

    def parameters(self, severity):
        return {"scale": self.parameter(severity)}

    def apply(self, image, severity, rng):
        down = self.down_filters[int(rng.integers(0, len(self.down_filters)))]
        up = self.up_filters[int(rng.integers(0, len(self.up_filters)))]
        scale = self.parameter(severity)
        height, width = image.shape[:2]
        small = resize(image, max(1, round(height * scale)), max(1, round(width * scale)), down)
        return resize(small, height, width, up)


class RandomCrop(LeveledDegrader):
    """Random crop keeping 0.9/0.8/0.7/0.6/0.5 of each side (81 % to 25 % of the area) at a uniformly random
    position, without resampling: the output is smaller than the input."""

    name = "random_crop"
    description = "random crop keeping 0.9/0.8/0.7/0.6/0.5 of each side, no resampling (output is smaller)"
    category = "geometric"
    moves_pixels = True
    changes_size = True
    severity_measure = "output_area"
    levels = (0.9, 0.8, 0.7, 0.6, 0.5)
    identity = 1.0

    def parameters(self, severity):
        return {"side_fraction": self.parameter(severity)}

    def apply(self, image, severity, rng):
        keep = self.parameter(severity)
        height, width = image.shape[:2]
        crop_h, crop_w = max(1, round(height * keep)), max(1, round(width * keep))
        top = int(rng.random() * (height - crop_h + 1))
        left = int(rng.random() * (width - crop_w + 1))
        return image[top:top + crop_h, left:left + crop_w].copy()


class RandomAspectCrop(LeveledDegrader):
    """Random crop that changes the aspect ratio by 1.15/1.3/1.5/1.75/2: one side (height or width, random) is
    cut to 1/ratio of its length at a random offset, the other is kept. Output is smaller than the input."""

    name = "random_aspect_crop"
    description = "crop one side (random) to 1/1.15 .. 1/2 of its length: aspect ratio changes, no resampling"
    category = "geometric"
    moves_pixels = True
    changes_size = True
    severity_measure = "output_area"
    levels = (1.15, 1.3, 1.5, 1.75, 2.0)
    identity = 1.0

    def parameters(self, severity):
        return {"aspect_change": self.parameter(severity)}

    def apply(self, image, severity, rng):
        ratio = self.parameter(severity)
        cut_height = rng.random() < 0.5
        position = rng.random()
        height, width = image.shape[:2]
        if cut_height:
            size = max(1, round(height / ratio))
            top = int(position * (height - size + 1))
            return image[top:top + size].copy()
        size = max(1, round(width / ratio))
        left = int(position * (width - size + 1))
        return image[:, left:left + size].copy()


def homography(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """3x3 projective matrix mapping the 4 ``source`` points (x, y) onto the 4 ``target`` points."""
    rows, rhs = [], []
    for (x, y), (u, v) in zip(source, target):
        rows.append([x, y, 1, 0, 0, 0, -u * x, -u * y])
        rows.append([0, 0, 0, x, y, 1, -v * x, -v * y])
        rhs.extend([u, v])
    solution = np.linalg.solve(np.array(rows, dtype=np.float64), np.array(rhs, dtype=np.float64))
    return np.append(solution, 1.0).reshape(3, 3)


class Perspective(LeveledDegrader):
    """Perspective (keystone) distortion: each corner of the frame is moved inwards by a random fraction
    (uniform in [0, 1]) of 2/4/6/9/12 % of the image size, and the resulting quadrilateral is warped onto the
    full frame (bilinear). Moving corners inwards keeps every output pixel inside the input."""

    name = "perspective"
    description = "perspective warp, corners moved inwards by up to 2/4/6/9/12 % of the size, fills the frame"
    category = "geometric"
    moves_pixels = True
    levels = (0.02, 0.04, 0.06, 0.09, 0.12)
    identity = 0.0

    def parameters(self, severity):
        return {"max_corner_shift": self.parameter(severity)}

    def apply(self, image, severity, rng):
        amount = self.parameter(severity)
        unit = rng.random((4, 2))
        height, width = image.shape[:2]
        half_w, half_h = (width - 1) / 2.0, (height - 1) / 2.0
        corners = np.array([[-half_w, -half_h], [half_w, -half_h], [half_w, half_h], [-half_w, half_h]])
        inward = -np.sign(corners) * unit * amount * np.array([width, height])
        if half_w == 0 or half_h == 0:  # a single row or column has no quadrilateral: shrink along the other axis
            return warp_linear(image, np.diag([1.0 - amount * unit[0, 0], 1.0 - amount * unit[0, 1], 1.0]))
        return warp_linear(image, homography(corners, corners + inward))


class RotateScale(LeveledDegrader):
    """Rotation by a random angle within +-2/4/7/11/16 degrees and a random scale change within +-2/4/6/9/12 %,
    about the centre, zoomed in just enough to fill the frame (bilinear)."""

    name = "rotate_scale"
    description = "rotate up to +-2/4/7/11/16 deg, scale +-2..12 %, zoomed to fill the frame"
    category = "geometric"
    moves_pixels = True
    levels = (2.0, 4.0, 7.0, 11.0, 16.0)
    identity = 0.0
    scale_levels = (0.02, 0.04, 0.06, 0.09, 0.12)

    def parameters(self, severity):
        return {"max_angle_deg": self.parameter(severity),
                "max_scale_change": level_value(severity, 0.0, self.scale_levels)}

    def apply(self, image, severity, rng):
        unit_angle, unit_scale = rng.uniform(-1.0, 1.0, size=2)
        angle = math.radians(self.parameter(severity) * unit_angle)
        scale = 1.0 + level_value(severity, 0.0, self.scale_levels) * unit_scale
        cos, sin = math.cos(angle), math.sin(angle)
        matrix = np.array([[cos, -sin, 0.0], [sin, cos, 0.0], [0.0, 0.0, scale]])
        height, width = image.shape[:2]
        zoom = cover_zoom(matrix, height, width)
        return warp_linear(image, matrix @ np.diag([1.0 / zoom, 1.0 / zoom, 1.0]))


class Shear(LeveledDegrader):
    """Horizontal or vertical shear (random axis and sign), factor 0.04/0.08/0.12/0.18/0.25, about the centre,
    zoomed in just enough to fill the frame."""

    name = "shear"
    description = "shear factor 0.04/0.08/0.12/0.18/0.25, random axis and sign, zoomed to fill the frame"
    category = "geometric"
    moves_pixels = True
    levels = (0.04, 0.08, 0.12, 0.18, 0.25)
    identity = 0.0

    def parameters(self, severity):
        return {"shear": self.parameter(severity)}

    def apply(self, image, severity, rng):
        horizontal = rng.random() < 0.5
        sign = 1.0 if rng.random() < 0.5 else -1.0
        factor = sign * self.parameter(severity)
        matrix = np.eye(3)
        matrix[0 if horizontal else 1, 1 if horizontal else 0] = factor
        height, width = image.shape[:2]
        zoom = cover_zoom(matrix, height, width)
        return warp_linear(image, matrix @ np.diag([1.0 / zoom, 1.0 / zoom, 1.0]))


class Elastic(LeveledDegrader):
    """Elastic deformation: smooth random displacement fields (correlation length 8 px; normals on a coarse
    grid, bilinearly interpolated) with an RMS displacement per axis of 0.5/1/1.8/2.8/4 px, bilinear resampling
    with replicated borders. Pixels move; the colour histogram barely changes."""

    name = "elastic"
    description = "elastic warp, smooth random field (8 px correlation), RMS displacement per axis 0.5/1/1.8/2.8/4 px"
    category = "geometric"
    moves_pixels = True
    levels = (0.5, 1.0, 1.8, 2.8, 4.0)
    identity = 0.0
    cell_px = 8.0

    def parameters(self, severity):
        return {"rms_displacement_px": self.parameter(severity), "cell_px": self.cell_px}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        field = smooth_field(rng, height, width, self.cell_px, channels=2)
        field *= np.float32(self.parameter(severity))
        rows = np.arange(height, dtype=np.float32)[:, None]
        cols = np.arange(width, dtype=np.float32)[None, :]
        return remap(image, rows + field[..., 0], cols + field[..., 1])


class BarrelDistortion(LeveledDegrader):
    """Radial lens distortion ``r -> r (1 + k r^2)`` (r = 1 at the corners), barrel or pincushion at random,
    |k| = 0.03/0.06/0.1/0.15/0.22, normalised so the corners map inside the frame (no empty borders)."""

    name = "barrel_distortion"
    description = "radial lens distortion r(1+k r^2), |k| 0.03-0.22, barrel or pincushion at random"
    category = "geometric"
    moves_pixels = True
    levels = (0.03, 0.06, 0.1, 0.15, 0.22)
    identity = 0.0

    def parameters(self, severity):
        return {"abs_k": self.parameter(severity)}

    def apply(self, image, severity, rng):
        k = self.parameter(severity) * (1.0 if rng.random() < 0.5 else -1.0)
        height, width = image.shape[:2]
        ys, xs = pixel_grid(height, width)
        half_diagonal = max(math.hypot((width - 1) / 2.0, (height - 1) / 2.0), 1e-6)
        radius2 = (ys * ys + xs * xs) / np.float32(half_diagonal ** 2)
        factor = (1.0 + np.float32(k) * radius2) / np.float32(max(1.0, 1.0 + k))
        return remap(image, ys * factor + np.float32((height - 1) / 2.0), xs * factor + np.float32((width - 1) / 2.0))


class Pixelate(LeveledDegrader):
    """Pixelation: the image is averaged over b x b blocks (b = 2/3/4/6/8 px, aligned to the top-left corner;
    edge blocks average what they cover) and every block is filled with its mean."""

    name = "pixelate"
    description = "pixelation into constant 2/3/4/6/8 px blocks (block means)"
    category = "geometric"
    levels = (2, 3, 4, 6, 8)
    identity = 1
    integer_parameter = True

    def parameters(self, severity):
        return {"block_px": self.parameter(severity)}

    def apply(self, image, severity, rng):
        import cv2
        from PIL import Image

        block = int(self.parameter(severity))
        if block <= 1:
            return image.copy()
        height, width = image.shape[:2]
        # Block means: OpenCV's area resize is exactly that for a whole number of blocks; Pillow's reduce also
        # averages partial edge blocks. An integer nearest upscale (output x reads input floor(x / block)) then
        # fills each block with its mean.
        if height % block == 0 and width % block == 0:
            reduced = cv2.resize(np.ascontiguousarray(image), (width // block, height // block),
                                 interpolation=cv2.INTER_AREA).reshape(height // block, width // block, 3)
        else:
            reduced = np.asarray(Image.fromarray(np.ascontiguousarray(image), "RGB").reduce(block))
        expanded = cv2.resize(reduced, (reduced.shape[1] * block, reduced.shape[0] * block),
                              interpolation=cv2.INTER_NEAREST).reshape(reduced.shape[0] * block, -1, 3)
        return np.ascontiguousarray(expanded[:height, :width])


# The 23 non-identity orders of a 2x2 block's four pixels.
_BLOCK_PERMUTATIONS = np.array([p for p in itertools.permutations(range(4)) if p != (0, 1, 2, 3)], dtype=np.intp)


class PixelShuffle(LeveledDegrader):
    """Local pixel scramble: each 2x2 block is, with probability 0.03/0.08/0.15/0.25/0.4, re-ordered by a random
    non-identity permutation of its four pixels (blocks on a 2-px grid; an odd last row/column is kept)."""

    name = "pixel_shuffle"
    description = "2x2 blocks permuted with probability 0.03/0.08/0.15/0.25/0.4"
    category = "geometric"
    moves_pixels = True
    levels = (0.03, 0.08, 0.15, 0.25, 0.4)
    identity = 0.0

    def parameters(self, severity):
        return {"block_probability": self.parameter(severity), "block_px": 2}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        rows, cols = height // 2, width // 2
        out = image.copy()
        if rows == 0 or cols == 0:
            return out
        chosen = rng.random((rows, cols)) < self.parameter(severity)
        permutation = rng.integers(0, len(_BLOCK_PERMUTATIONS), size=(rows, cols))
        blocks = image[:rows * 2, :cols * 2].reshape(rows, 2, cols, 2, 3).transpose(0, 2, 1, 3, 4)
        blocks = blocks.reshape(rows, cols, 4, 3)
        selected = blocks[chosen]
        order = _BLOCK_PERMUTATIONS[permutation[chosen]]
        shuffled = np.take_along_axis(selected, order[:, :, None], axis=1)
        new_blocks = blocks.copy()
        new_blocks[chosen] = shuffled
        out[:rows * 2, :cols * 2] = new_blocks.reshape(rows, cols, 2, 2, 3).transpose(0, 2, 1, 3, 4).reshape(
            rows * 2, cols * 2, 3)
        return out


OPERATORS = (Downscale, RandomCrop, RandomAspectCrop, Perspective, RotateScale, Shear, Elastic, BarrelDistortion,
             Pixelate, PixelShuffle)
