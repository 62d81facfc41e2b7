"""Real image codecs as encode/decode round trips: JPEG (libjpeg-turbo through OpenCV), and JPEG 2000, WebP and any
other Pillow format.

What goes here: codec round trips, their settings, and the checks that a codec exists and can store the image.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from fdcore.degradations.base import ImageTooLargeError
from fdcore.errors import FdcoreError


class CodecUnavailableError(FdcoreError):
    """Pillow on this machine was built without a codec an operator needs."""


def require_codec(operator: str, feature: str, codec: str) -> None:
    """Raise :class:`CodecUnavailableError` when Pillow lacks ``feature`` (e.g. ``"jpg_2000"``, ``"webp"``)."""
    from PIL import features

    if not features.check(feature):
        raise CodecUnavailableError(
            f"degrader {operator!r} needs Pillow's {codec} codec, which this Pillow build lacks "
            f"(PIL.features.check({feature!r}) is False); install a Pillow wheel built with {codec} support")


# Largest side each codec's format can store.
CODEC_MAX_SIDE = {"JPEG": 65500, "WEBP": 16383}


def check_codec_size(image: np.ndarray, format: str) -> None:
    """Refuse, with :class:`ImageTooLargeError`, an image the format cannot store, before encoding it: a codec
    would fail with a library message (or, in OpenCV, print an error and return nothing)."""
    limit = CODEC_MAX_SIDE.get(format)
    if limit is not None and max(image.shape[:2]) > limit:
        height, width = image.shape[:2]
        raise ImageTooLargeError(f"{format} cannot store a {width}x{height} image (at most {limit} px a side); "
                                 f"crop or downscale the image first, or use an operator without this codec")


def codec_roundtrip(image: np.ndarray, format: str, **save_options: Any) -> np.ndarray:
    """Encode a uint8 RGB image with a real Pillow codec (JPEG, JPEG2000, WEBP, ...) and decode it again."""
    import io

    from PIL import Image

    check_codec_size(image, format)

    buffer = io.BytesIO()
    Image.fromarray(image, "RGB").save(buffer, format=format, **save_options)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        out = np.array(decoded.convert("RGB"))
    if out.shape != image.shape:
        raise RuntimeError(f"{format} round trip changed the size {image.shape} -> {out.shape}")
    return out


# JPEG chroma subsampling modes, as OpenCV's IMWRITE_JPEG_SAMPLING_FACTOR_* codes (luma H and V factors, then 1x1
# chroma: 0x111111, 0x211111, 0x221111).
JPEG_SUBSAMPLING = {"4:4:4": 0x111111, "4:2:2": 0x211111, "4:2:0": 0x221111}


def jpeg_roundtrip(image: np.ndarray, quality: int, subsampling: str = "4:2:0") -> np.ndarray:
    """A real baseline JPEG encode/decode (libjpeg-turbo through OpenCV): standard IJG quantisation tables scaled
    by ``quality`` (clipped to 1..100), the given chroma subsampling, integer (ISLOW) DCT and fancy upsampling.

    Pixel for pixel the same as Pillow's ``save(format="JPEG", quality=q, subsampling=...)`` and decode (both
    drive libjpeg-turbo with the same settings; the test suite checks it), at ~2/3 of the cost: no PIL image or
    stream objects in between."""
    import cv2

    if subsampling not in JPEG_SUBSAMPLING:
        raise ValueError(f"JPEG subsampling must be one of {sorted(JPEG_SUBSAMPLING)}, got {subsampling!r}")
    check_codec_size(image, "JPEG")
    bgr = cv2.cvtColor(np.ascontiguousarray(image), cv2.COLOR_RGB2BGR)
    params = [cv2.IMWRITE_JPEG_QUALITY, min(100, max(1, int(quality))),
              cv2.IMWRITE_JPEG_SAMPLING_FACTOR, JPEG_SUBSAMPLING[subsampling]]
    ok, encoded = cv2.imencode(".jpg", bgr, params)
    if not ok:
        raise RuntimeError(f"OpenCV failed to JPEG-encode an image of shape {image.shape}")
    if hasattr(cv2, "IMREAD_COLOR_RGB"):  # OpenCV >= 4.10 decodes straight to RGB
        out = cv2.imdecode(encoded, cv2.IMREAD_COLOR_RGB)
    else:
        out = cv2.cvtColor(cv2.imdecode(encoded, cv2.IMREAD_COLOR), cv2.COLOR_BGR2RGB)
    if out is None or out.shape != image.shape:
        raise RuntimeError(f"JPEG round trip changed the size {image.shape} -> {getattr(out, 'shape', None)}")
    return out


# JPEG 2000 codec settings recorded with every application (a change here changes outputs, so replay refuses old
# records instead of silently reproducing something else).
JPEG2000_SETTINGS = {"wavelet": "9/7 irreversible", "color_transform": "ICT", "ratio_excludes_headers": True}


def jpeg2000_roundtrip(operator: str, image: np.ndarray, compression_ratio: float) -> np.ndarray:
    """JPEG 2000 (OpenJPEG through Pillow) at a compression ratio over raw 24-bit RGB: irreversible 9/7 wavelet
    with the irreversible colour transform (ICT, RGB -> YCbCr), the Part-1 path that OpenJPEG's own encoder and
    JPEG 2000 cameras and tools take for RGB images. (Coding R, G and B separately is ~15 % slower and spends the
    bits less like a real encoder: the same share on chroma as on luma.)

    The ratio counts the coded image data, not the codestream's fixed headers (~130-160 bytes): OpenJPEG's own
    target includes them, which leaves a 128x128 image at ratio 300 (164 bytes) no room for any data at all (a flat
    grey or tinted square) while a 512x512 one keeps 2.4 KB. Adding the header size to the target keeps the
    degradation's bits per pixel, and so its look, the same at every image size.
    Tiny images are padded (replicate) to the codec's minimum and cropped back."""
    require_codec(operator, "jpg_2000", "JPEG 2000 (OpenJPEG)")
    height, width = image.shape[:2]
    # OpenJPEG needs every resolution level to be at least one pixel: choose the level count from the size.
    padded = image
    if height < 8 or width < 8:
        padded = np.pad(image, ((0, max(0, 8 - height)), (0, max(0, 8 - width)), (0, 0)), mode="edge")
    levels = int(max(1, min(5, math.floor(math.log2(min(padded.shape[:2]))) - 2)))
    raw_bytes = float(padded.size)
    target_bytes = raw_bytes / max(1.0, compression_ratio) + _jpeg2000_header_bytes(levels)
    ratio = max(1.0, raw_bytes / target_bytes)
    out = codec_roundtrip(padded, "JPEG2000", quality_mode="rates", quality_layers=[ratio], irreversible=True, mct=1,
                          num_resolutions=levels + 1, no_jp2=True)
    return np.ascontiguousarray(out[:height, :width])


_HEADER_BYTES: dict[int, int] = {}


def _jpeg2000_header_bytes(levels: int) -> int:
    """Bytes of a codestream that carry no image data with these settings: the main header, the tile-part header
    up to its SOD marker, and EOC. They do not depend on the image size (fixed-length SIZ fields, one tile), so they
    are measured once per level count on a small grey image and cached."""
    if levels not in _HEADER_BYTES:
        import io

        from PIL import Image

        side = 2 ** (levels + 2)
        buffer = io.BytesIO()
        Image.new("RGB", (side, side), (128, 128, 128)).save(
            buffer, format="JPEG2000", quality_mode="rates", quality_layers=[1.0], irreversible=True, mct=1,
            num_resolutions=levels + 1, no_jp2=True)
        _HEADER_BYTES[levels] = _bytes_before_data(buffer.getvalue()) + 2  # + EOC
    return _HEADER_BYTES[levels]


def _bytes_before_data(codestream: bytes) -> int:
    """Offset just past the first SOD marker of a JPEG 2000 codestream, walking the marker segments (SOC, then
    segments with 2-byte lengths; SOT's tile-part header ends at SOD)."""
    position = 2  # SOC
    while position + 4 <= len(codestream):
        marker = codestream[position:position + 2]
        if marker == b"\xff\x93":  # SOD
            return position + 2
        position += 2 + int.from_bytes(codestream[position + 2:position + 4], "big")
    raise RuntimeError("JPEG 2000 codestream without a start-of-data marker")
