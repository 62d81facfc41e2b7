"""Occlusion operators (category ``occlusion``): random patches, text/watermark overlay and cutout.

Layouts (positions, shapes, counts, colours, text) are drawn before anything size-dependent and do not depend on
the severity, which only grows the occluders (or their opacity) around fixed centres: one seed gives nested,
increasingly strong occlusions.
"""

from __future__ import annotations

import functools

import numpy as np

from fdcore.degradations.base import LeveledDegrader


def _boxes(rng: np.random.Generator, height: int, width: int, count: int, area_fraction: float,
           max_aspect: float) -> list[tuple[int, int, int, int]]:
    """``count`` rectangles (top, bottom, left, right) around uniformly random centres whose areas share
    ``area_fraction`` of the image (random shares, aspect ratios within [1/max_aspect, max_aspect])."""
    centres = rng.random((count, 2))
    shares = rng.uniform(0.5, 1.5, size=count)
    shares /= shares.sum()
    aspects = np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect), size=count))
    boxes = []
    for index in range(count):
        area = area_fraction * height * width * shares[index]
        box_h = max(1.0, min(float(height), np.sqrt(area / aspects[index])))
        box_w = max(1.0, min(float(width), np.sqrt(area * aspects[index])))
        centre_y, centre_x = centres[index, 0] * height, centres[index, 1] * width
        top = int(np.clip(round(centre_y - box_h / 2.0), 0, height - 1))
        left = int(np.clip(round(centre_x - box_w / 2.0), 0, width - 1))
        bottom = int(np.clip(round(centre_y + box_h / 2.0), top + 1, height))
        right = int(np.clip(round(centre_x + box_w / 2.0), left + 1, width))
        boxes.append((top, bottom, left, right))
    return boxes


class RandomPatches(LeveledDegrader):
    """2-5 rectangular patches (random count, positions, aspect ratios) covering 2/4/7/10/15 % of the image in
    total, each filled with one of: a random solid colour, random colour noise, or a copy of another region of
    the same image (copy-move)."""

    name = "random_patches"
    description = "2-5 patches over 2/4/7/10/15 % of the area: solid colour, noise or copied image regions"
    category = "occlusion"
    levels = (0.02, 0.04, 0.07, 0.1, 0.15)
    identity = 0.0

    def parameters(self, severity):
        return {"area_fraction": self.parameter(severity)}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        count = 2 + int(rng.integers(0, 4))
        boxes = _boxes(rng, height, width, count, self.parameter(severity), max_aspect=3.0)
        kinds = rng.integers(0, 3, size=count)
        colours = rng.integers(0, 256, size=(count, 3))
        sources = rng.random((count, 2))
        noise_seeds = rng.integers(0, 2 ** 63, size=count)
        out = image.copy()
        for index, (top, bottom, left, right) in enumerate(boxes):
            box_h, box_w = bottom - top, right - left
            if kinds[index] == 0:
                out[top:bottom, left:right] = colours[index]
            elif kinds[index] == 1:
                noise = np.random.default_rng(int(noise_seeds[index]))
                out[top:bottom, left:right] = noise.integers(0, 256, size=(box_h, box_w, 3), dtype=np.uint8)
            else:
                source_top = int(sources[index, 0] * (height - box_h + 1))
                source_left = int(sources[index, 1] * (width - box_w + 1))
                out[top:bottom, left:right] = image[source_top:source_top + box_h, source_left:source_left + box_w]
        return out


class Cutout(LeveledDegrader):
    """Cutout / erasing: 1-3 roughly square holes (random count and positions, aspect within [0.7, 1.4])
    covering 3/6/10/15/22 % of the image in total, each filled with one constant colour (black, grey, white or
    a random colour)."""

    name = "cutout"
    description = "1-3 constant-colour holes over 3/6/10/15/22 % of the area"
    category = "occlusion"
    levels = (0.03, 0.06, 0.1, 0.15, 0.22)
    identity = 0.0

    def parameters(self, severity):
        return {"area_fraction": self.parameter(severity)}

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        count = 1 + int(rng.integers(0, 3))
        boxes = _boxes(rng, height, width, count, self.parameter(severity), max_aspect=1.4)
        fills = rng.integers(0, 4, size=count)
        colours = rng.integers(0, 256, size=(count, 3))
        out = image.copy()
        for index, (top, bottom, left, right) in enumerate(boxes):
            fill = (0, 0, 0) if fills[index] == 0 else (128, 128, 128) if fills[index] == 1 else \
                (255, 255, 255) if fills[index] == 2 else tuple(int(v) for v in colours[index])
            out[top:bottom, left:right] = fill
        return out


_WORDS = ("SAMPLE", "PREVIEW", "COPYRIGHT", "stock", "photo", "DRAFT", "(c) 2026", "www.example.com",
          "@user", "not for sale", "CONFIDENTIAL", "watermark", "IMG", "shared via", "#viral", "credit:")


@functools.lru_cache(maxsize=32)
def _font(size: int):
    from PIL import ImageFont

    return ImageFont.load_default(size=size)  # Pillow's built-in font: no font file needed


class TextOverlay(LeveledDegrader):
    """Text and watermark overlay with Pillow's built-in font: either a tiled diagonal watermark across the
    whole image or 1-3 caption lines at random positions (random choice), made of random stock-photo/social
    words, in white or black with a contrasting outline; opacity 0.2/0.35/0.5/0.7/0.9."""

    name = "text_overlay"
    description = "tiled watermark or 1-3 caption lines (built-in font), opacity 0.2/0.35/0.5/0.7/0.9"
    category = "occlusion"
    levels = (0.2, 0.35, 0.5, 0.7, 0.9)
    identity = 0.0

    def parameters(self, severity):
        return {"opacity": self.parameter(severity)}

    def _layer(self, rng: np.random.Generator, height: int, width: int) -> np.ndarray:
        """The text as an RGBA uint8 HxWx4 layer (alpha = text coverage)."""
        from PIL import Image, ImageDraw

        tiled = rng.random() < 0.5
        light = rng.random() < 0.5
        words = [" ".join(_WORDS[i] for i in rng.integers(0, len(_WORDS), size=2)) for _ in range(3)]
        lines = 1 + int(rng.integers(0, 3))
        positions = rng.random((3, 2))
        size_factor = rng.uniform(0.05, 0.1)
        size = int(max(6, round(size_factor * min(height, width))))
        fill = (255, 255, 255, 255) if light else (0, 0, 0, 255)
        outline = (0, 0, 0, 255) if light else (255, 255, 255, 255)
        from PIL import ImageFont

        font = _font(size)
        # Pillow without FreeType falls back to a fixed bitmap font, which cannot draw outlines
        stroke = max(1, size // 12) if isinstance(font, ImageFont.FreeTypeFont) else 0
        if tiled:
            # One rotated stamp of the text, pasted on a staggered grid: cost grows with the number of tiles,
            # not with a rotated canvas as large as the image diagonal.
            text_w = int(np.ceil(ImageDraw.Draw(Image.new("RGBA", (1, 1))).textlength(words[0], font=font)))
            stamp = Image.new("RGBA", (text_w + 4 * stroke + 2, int(size * 1.4) + 4 * stroke), (0, 0, 0, 0))
            ImageDraw.Draw(stamp).text((2 * stroke, stroke), words[0], font=font, fill=fill, stroke_width=stroke,
                                       stroke_fill=outline)
            stamp = stamp.rotate(float(positions[0, 0] * 60.0 - 30.0), resample=Image.Resampling.BILINEAR,
                                 expand=True)
            canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
            step_y, step_x = stamp.height + size, stamp.width + size
            offset_y, offset_x = int(positions[0, 1] * step_y), int(positions[1, 0] * step_x)
            for row_index, y in enumerate(range(-offset_y, height, step_y)):
                for x in range(-offset_x - (row_index % 2) * step_x // 2, width, step_x):
                    canvas.paste(stamp, (x, y), stamp)
            return np.asarray(canvas)
        canvas = Image.new("RGBA", (width, height), (0, 0, 0, 0))
        draw = ImageDraw.Draw(canvas)
        for index in range(lines):
            text_w = draw.textlength(words[index], font=font)
            x = positions[index, 1] * max(1.0, width - text_w)
            y = positions[index, 0] * max(1.0, height - size * 1.3)
            draw.text((x, y), words[index], font=font, fill=fill, stroke_width=stroke, stroke_fill=outline)
        return np.asarray(canvas)

    def apply(self, image, severity, rng):
        height, width = image.shape[:2]
        import cv2

        layer = self._layer(rng, height, width)
        alpha = layer[..., 3].astype(np.float32) * np.float32(self.parameter(severity) / 255.0)
        # out = (1 - alpha) x + alpha text, one OpenCV pass with per-pixel weights
        return cv2.blendLinear(np.ascontiguousarray(image), np.ascontiguousarray(layer[..., :3]), 1.0 - alpha,
                               alpha).reshape(image.shape)


OPERATORS = (RandomPatches, TextOverlay, Cutout)
