"""Extended compression operators: JPEG variants and chains, JPEG 2000, WebP, banding and palettes
(category ``compression``). Every codec is a real encoder/decoder (libjpeg-turbo through OpenCV; OpenJPEG and
libwebp through Pillow).

The NTIRE ``jpeg`` and ``quantization`` live in ``ntire.py``.
"""

from __future__ import annotations

import numpy as np

from fdcore.degradations.base import LeveledDegrader, level_value
from fdcore.degradations.codecs import (
    JPEG2000_SETTINGS,
    JPEG_SUBSAMPLING,
    codec_roundtrip,
    jpeg2000_roundtrip,
    jpeg_roundtrip,
    require_codec,
)
from fdcore.degradations.lut import apply_lut
from fdcore.degradations.resampling import resize


class JpegSubsampling(LeveledDegrader):
    """JPEG with a chroma subsampling mode: 4:4:4, 4:2:2 or 4:2:0, drawn uniformly per image unless fixed at
    construction (``JpegSubsampling(subsampling="4:2:2")``); quality 75/55/40/25/12."""

    name = "jpeg_subsampling"
    description = "JPEG quality 75/55/40/25/12 with chroma subsampling 4:4:4, 4:2:2 or 4:2:0 (random)"
    category = "compression"
    levels = (75, 55, 40, 25, 12)
    identity = 100
    integer_parameter = True

    def __init__(self, subsampling: str | None = None):
        if subsampling is not None and subsampling not in JPEG_SUBSAMPLING:
            raise ValueError(f"degrader 'jpeg_subsampling': subsampling must be one of {sorted(JPEG_SUBSAMPLING)}, "
                             f"got {subsampling!r}")
        self.subsampling = subsampling

    def parameters(self, severity):
        return {"quality": self.parameter(severity)}

    def apply(self, image, severity, rng):
        drawn = list(JPEG_SUBSAMPLING)[int(rng.integers(0, len(JPEG_SUBSAMPLING)))]
        return jpeg_roundtrip(image, int(self.parameter(severity)), self.subsampling or drawn)


class DoubleJpeg(LeveledDegrader):
    """Repeated JPEG compression (2 or 3 rounds, random) with the 8x8 block grid shifted between rounds, as when
    an image is re-saved after a crop. Each round's quality is the level's base quality (85/70/55/40/25) plus a
    random offset in [-10, 10]; each round after the first shifts the grid by a random (dy, dx) in 0..7 pixels
    (replicate-padding the top-left, cropping back), so the content itself never moves."""

    name = "double_jpeg"
    description = "2-3 JPEG rounds, base quality 85/70/55/40/25 +-10, block grid shifted 0-7 px between rounds"
    category = "compression"
    levels = (85, 70, 55, 40, 25)
    identity = 100
    integer_parameter = True
    quality_spread = 10

    def parameters(self, severity):
        return {"base_quality": self.parameter(severity)}

    def apply(self, image, severity, rng):
        base = int(self.parameter(severity))
        rounds = 2 + int(rng.integers(0, 2))
        offsets = rng.integers(-self.quality_spread, self.quality_spread + 1, size=3)
        shifts = rng.integers(0, 8, size=(3, 2))
        height, width = image.shape[:2]
        out = image
        for index in range(rounds):
            quality = int(np.clip(base + offsets[index], 1, 100))
            dy, dx = (0, 0) if index == 0 else (int(shifts[index, 0]), int(shifts[index, 1]))
            padded = np.pad(out, ((dy, 0), (dx, 0), (0, 0)), mode="edge") if dy or dx else out
            out = jpeg_roundtrip(padded, quality)[dy:dy + height, dx:dx + width]
        return np.ascontiguousarray(out)


class Jpeg2000(LeveledDegrader):
    """JPEG 2000 (OpenJPEG through Pillow, irreversible 9/7 wavelet, ICT colour transform) at compression ratio
    20/40/80/160/300 over raw 24-bit RGB (counting the coded data, not the codestream headers): blur and ringing
    instead of blocks."""

    name = "jpeg2000"
    description = "JPEG 2000 (OpenJPEG), compression ratio 20/40/80/160/300, irreversible 9/7 wavelet, YCbCr (ICT)"
    category = "compression"
    levels = (20.0, 40.0, 80.0, 160.0, 300.0)
    identity = 1.0

    def parameters(self, severity):
        return {"compression_ratio": self.parameter(severity), **JPEG2000_SETTINGS}

    def apply(self, image, severity, rng):
        return jpeg2000_roundtrip(self.name, image, self.parameter(severity))


class WebP(LeveledDegrader):
    """Lossy WebP (libwebp through Pillow, default effort ``method=4``) at quality 70/50/30/15/5."""

    name = "webp"
    description = "lossy WebP (libwebp), quality 70/50/30/15/5"
    category = "compression"
    levels = (70, 50, 30, 15, 5)
    identity = 100
    integer_parameter = True

    def parameters(self, severity):
        return {"quality": self.parameter(severity)}

    def apply(self, image, severity, rng):
        require_codec(self.name, "webp", "WebP")
        return codec_roundtrip(image, "WEBP", quality=int(self.parameter(severity)), method=4)


class ColorBanding(LeveledDegrader):
    """Colour banding from a reduced bit depth: each channel quantised to 64/32/16/8/4 evenly spaced levels
    (6 to 2 bits) without dithering, so smooth gradients break into visible bands."""

    name = "color_banding"
    description = "per-channel bit-depth reduction to 64/32/16/8/4 levels, no dithering (banding)"
    category = "compression"
    levels = (64, 32, 16, 8, 4)
    identity = 256
    integer_parameter = True

    def parameters(self, severity):
        return {"levels_per_channel": self.parameter(severity)}

    def apply(self, image, severity, rng):
        steps = int(self.parameter(severity)) - 1
        values = np.arange(256, dtype=np.float64)
        lut = np.rint(np.rint(values * steps / 255.0) * 255.0 / steps)
        return apply_lut(image, lut)


class GifPalette(LeveledDegrader):
    """GIF-style adaptive palette: the image is reduced to 128/64/32/16/8 colours (Pillow's fast octree
    quantiser), with Floyd-Steinberg dithering in half of the images (random) as GIF encoders often do."""

    name = "gif_palette"
    description = "adaptive palette of 128/64/32/16/8 colours (octree), Floyd-Steinberg dithering at random"
    category = "compression"
    levels = (128, 64, 32, 16, 8)
    identity = 256
    integer_parameter = True

    def parameters(self, severity):
        return {"colors": self.parameter(severity)}

    def apply(self, image, severity, rng):
        from PIL import Image

        dither = Image.Dither.FLOYDSTEINBERG if rng.random() < 0.5 else Image.Dither.NONE
        pil = Image.fromarray(np.ascontiguousarray(image), "RGB")
        colors = int(np.clip(self.parameter(severity), 2, 256))
        quantised = pil.quantize(colors=colors, method=Image.Quantize.FASTOCTREE, dither=dither)
        return np.array(quantised.convert("RGB"))


class SocialMediaChain(LeveledDegrader):
    """The social-media re-encode chain: downscale (Pillow bicubic, antialiased) by 0.9/0.75/0.6/0.5/0.4, JPEG
    4:2:0 at quality 85/75/65/55/45, then upscale back (bicubic) so the output keeps the input size."""

    name = "social_media_chain"
    description = "resize x0.9/0.75/0.6/0.5/0.4 -> JPEG q85/75/65/55/45 (4:2:0) -> resize back"
    category = "compression"
    levels = (0.9, 0.75, 0.6, 0.5, 0.4)
    identity = 1.0
    qualities = (85, 75, 65, 55, 45)

    def parameters(self, severity):
        return {"scale": self.parameter(severity), "quality": self._quality(severity)}

    def _quality(self, severity):
        return int(level_value(severity, 100, self.qualities, integer=True))

    def apply(self, image, severity, rng):
        scale = self.parameter(severity)
        height, width = image.shape[:2]
        small = resize(image, max(1, round(height * scale)), max(1, round(width * scale)), "bicubic")
        small = jpeg_roundtrip(small, self._quality(severity), "4:2:0")
        return resize(small, height, width, "bicubic")


class JpegJpeg2000Chain(LeveledDegrader):
    """Stacked codecs: JPEG (4:2:0, quality 80/65/50/35/20) then JPEG 2000 (compression ratio
    10/20/40/80/150): block artefacts smoothed and ringed by the wavelet codec."""

    name = "jpeg_jpeg2000_chain"
    description = "JPEG q80/65/50/35/20 then JPEG 2000 ratio 10/20/40/80/150"
    category = "compression"
    levels = (80, 65, 50, 35, 20)
    identity = 100
    integer_parameter = True
    ratios = (10.0, 20.0, 40.0, 80.0, 150.0)

    def parameters(self, severity):
        return {"jpeg_quality": self.parameter(severity), "jpeg2000_ratio": self._ratio(severity), **JPEG2000_SETTINGS}

    def _ratio(self, severity):
        return level_value(severity, 1.0, self.ratios)

    def apply(self, image, severity, rng):
        compressed = jpeg_roundtrip(image, int(self.parameter(severity)), "4:2:0")
        return jpeg2000_roundtrip(self.name, compressed, self._ratio(severity))


OPERATORS = (JpegSubsampling, DoubleJpeg, Jpeg2000, WebP, ColorBanding, GifPalette, SocialMediaChain,
             JpegJpeg2000Chain)
