"""Helpers shared by the extended operators (``ops_*.py``); the NTIRE-level helpers live in ``base.py``.

Conventions, as in ``base.py``: inputs are never modified, borders are replicated, and every random draw comes from
the ``numpy.random.Generator`` passed in. Random quantities are drawn in a severity-independent way (unit draws that
the severity then scales) so that one seed gives the same layout at every level and distortion grows smoothly.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from fdcore.degradations.base import codec_roundtrip, remap_any_size, rint_uint8
from fdcore.errors import FdcoreError


class CodecUnavailableError(FdcoreError):
    """Pillow on this machine was built without a codec an operator needs."""


def level_value(severity: float, identity: float, levels: Sequence[float], integer: bool = False) -> float:
    """Piecewise-linear value of a secondary parameter: ``identity`` at severity 0, ``levels[k-1]`` at ``k/5``.

    The same scale as :meth:`LeveledDegrader.parameter`, for operators with more than one parameter.
    """
    value = float(np.interp(float(severity), np.linspace(0.0, 1.0, 6), np.array((identity, *levels), float)))
    return float(round(value)) if integer else value


def require_codec(operator: str, feature: str, codec: str) -> None:
    """Raise :class:`CodecUnavailableError` when Pillow lacks ``feature`` (e.g. ``"jpg_2000"``, ``"webp"``)."""
    from PIL import features

    if not features.check(feature):
        raise CodecUnavailableError(
            f"degrader {operator!r} needs Pillow's {codec} codec, which this Pillow build lacks "
            f"(PIL.features.check({feature!r}) is False); install a Pillow wheel built with {codec} support")


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


def resize(image: np.ndarray, height: int, width: int, resample: str = "bicubic") -> np.ndarray:
    """Pillow resize of a uint8 RGB array (Pillow antialiases when shrinking)."""
    from PIL import Image

    filters = {"nearest": Image.Resampling.NEAREST, "box": Image.Resampling.BOX,
               "bilinear": Image.Resampling.BILINEAR, "bicubic": Image.Resampling.BICUBIC,
               "lanczos": Image.Resampling.LANCZOS}
    if (height, width) == image.shape[:2]:
        return image.copy()
    pil = Image.fromarray(np.ascontiguousarray(image), "RGB")
    return np.array(pil.resize((max(1, int(width)), max(1, int(height))), filters[resample]))


def resize_plane(plane: np.ndarray, height: int, width: int) -> np.ndarray:
    """Bilinear resize of a float32 HxW plane (used to upsample smooth random fields)."""
    import cv2

    return cv2.resize(np.ascontiguousarray(plane, dtype=np.float32), (int(width), int(height)),
                      interpolation=cv2.INTER_LINEAR)


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """Gaussian blur (OpenCV, kernel from sigma, replicate borders) of an HxW or HxWx3 uint8 or float32 array;
    keeps the dtype (other float dtypes become float32)."""
    import cv2

    source = image if image.dtype in (np.uint8, np.float32) else image.astype(np.float32)
    if sigma <= 0:
        return source.copy()
    return cv2.GaussianBlur(np.ascontiguousarray(source), (0, 0), sigmaX=float(sigma), sigmaY=float(sigma),
                            borderType=cv2.BORDER_REPLICATE)


def line_offsets(length: int, angle: float) -> list[tuple[int, int]]:
    """Integer (dy, dx) taps of a rasterised line of ``length`` samples through the origin, symmetric about it."""
    steps = np.linspace(-(length - 1) / 2.0, (length - 1) / 2.0, max(1, int(length)))
    dy = np.rint(steps * math.sin(angle)).astype(int)
    dx = np.rint(steps * math.cos(angle)).astype(int)
    return list(zip(dy.tolist(), dx.tolist()))


def mean_of_shifts(image: np.ndarray, offsets: Sequence[tuple[int, int]]) -> np.ndarray:
    """Average of copies of ``image`` displaced by integer ``offsets`` (replicate borders): a convolution with an
    equal-weight sparse kernel (motion lines, rain streaks) at integer-add cost. Returns the same dtype for uint8
    input (rounded) and float32 otherwise.

    Works in horizontal strips of ~256 KiB so that the repeated reads of overlapping rows stay in cache; on a
    1024x1024 image a 31-tap line is then ~2x faster than adding whole shifted images."""
    import cv2

    if not offsets:
        raise ValueError("mean_of_shifts needs at least one offset")
    pad = max(max(abs(dy), abs(dx)) for dy, dx in offsets)
    height, width = image.shape[:2]
    is_uint8 = image.dtype == np.uint8
    accumulate = np.uint16 if is_uint8 and len(offsets) <= 257 else np.float32
    padded = cv2.copyMakeBorder(np.ascontiguousarray(image), pad, pad, pad, pad, cv2.BORDER_REPLICATE)
    padded = padded.reshape(height + 2 * pad, width + 2 * pad, *image.shape[2:]).astype(accumulate)
    total = np.empty(image.shape, dtype=accumulate)
    row_bytes = width * int(np.prod(image.shape[2:], dtype=int)) * np.dtype(accumulate).itemsize
    strip = max(8, (1 << 18) // max(row_bytes, 1))
    for top in range(0, height, strip):
        bottom = min(height, top + strip)
        block = total[top:bottom]
        block[...] = 0
        for dy, dx in offsets:
            block += padded[pad + dy + top:pad + dy + bottom, pad + dx:pad + dx + width]
    if accumulate == np.uint16:  # divide, round and saturate to uint8 in one OpenCV pass
        return cv2.convertScaleAbs(total, alpha=1.0 / len(offsets)).reshape(image.shape)
    mean = total.astype(np.float32)
    mean *= np.float32(1.0 / len(offsets))
    return rint_uint8(mean) if is_uint8 else mean


def remap(image: np.ndarray, source_y: np.ndarray, source_x: np.ndarray, nearest: bool = False) -> np.ndarray:
    """Resampling: output pixel (i, j) takes ``image`` at (``source_y[i, j]``, ``source_x[i, j]``) in pixel
    coordinates (bilinear, or nearest), replicate borders. Same dtype and channel layout as ``image``."""
    import cv2

    height, width = np.broadcast_shapes(np.shape(source_y), np.shape(source_x))
    map_x = np.ascontiguousarray(np.broadcast_to(source_x, (height, width)), dtype=np.float32)
    map_y = np.ascontiguousarray(np.broadcast_to(source_y, (height, width)), dtype=np.float32)
    out = remap_any_size(np.ascontiguousarray(image), map_x, map_y, cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR)
    return out.reshape(height, width, *image.shape[2:])


def pixel_grid(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Row and column coordinates (float32, broadcastable HxW) of pixel centres, origin at the image centre."""
    ys = (np.arange(height, dtype=np.float32) - np.float32((height - 1) / 2.0))[:, None]
    xs = (np.arange(width, dtype=np.float32) - np.float32((width - 1) / 2.0))[None, :]
    return ys, xs


def warp_linear(image: np.ndarray, matrix: np.ndarray) -> np.ndarray:
    """Warp by a 3x3 projective ``matrix`` mapping OUTPUT centred coordinates (x, y, 1) to INPUT centred
    coordinates (origin at the image centre, pixel units); bilinear, replicate borders."""
    import cv2

    height, width = image.shape[:2]
    centre = np.array([[1.0, 0.0, (width - 1) / 2.0], [0.0, 1.0, (height - 1) / 2.0], [0.0, 0.0, 1.0]])
    pixel_matrix = centre @ np.asarray(matrix, dtype=np.float64) @ np.linalg.inv(centre)
    return cv2.warpPerspective(np.ascontiguousarray(image), pixel_matrix, (width, height),
                               flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP, borderMode=cv2.BORDER_REPLICATE)


def cover_zoom(matrix: np.ndarray, height: int, width: int) -> float:
    """Smallest zoom z >= 1 such that ``matrix`` composed with a 1/z scaling of the output maps every output
    corner inside the input frame: warps then fill the whole frame without invented borders."""
    half_w, half_h = max(width - 1, 1) / 2.0, max(height - 1, 1) / 2.0
    zoom = 1.0
    for cx, cy in ((-half_w, -half_h), (half_w, -half_h), (half_w, half_h), (-half_w, half_h)):
        x, y, w = np.asarray(matrix, float) @ np.array([cx, cy, 1.0])
        zoom = max(zoom, abs(x / w) / half_w, abs(y / w) / half_h)
    return zoom


def smooth_field(rng: np.random.Generator, height: int, width: int, cell: float, channels: int = 1) -> np.ndarray:
    """A smooth random field with unit average variance and correlation length ``cell`` pixels: normals on a
    coarse grid, bilinearly upsampled. Bilinear weights leave on average (2/3)^2 of the node variance, so the
    nodes get standard deviation 3/2. Shape HxW, or HxWxC for ``channels > 1``."""
    rows = max(2, int(math.ceil(height / cell)) + 1)
    cols = max(2, int(math.ceil(width / cell)) + 1)
    coarse = rng.standard_normal((channels, rows, cols)).astype(np.float32) * np.float32(1.5)
    planes = [resize_plane(coarse[c], height, width) for c in range(channels)]
    return planes[0] if channels == 1 else np.stack(planes, axis=-1)


def fractal_noise(rng: np.random.Generator, height: int, width: int, largest_cell: float,
                  octaves: int = 5, persistence: float = 0.55) -> np.ndarray:
    """Multi-octave value noise (clouds, fog density, frost) normalised to [0, 1]; each octave halves the cell.

    The octaves are summed on a grid coarse enough that the finest cell still spans 2 samples, then upsampled
    once: the field is smooth at that scale, and it saves most of the cost at full resolution."""
    finest = largest_cell / 2 ** (octaves - 1)
    factor = max(1.0, finest / 2.0)
    work_h, work_w = max(1, int(math.ceil(height / factor))), max(1, int(math.ceil(width / factor)))
    total = np.zeros((work_h, work_w), dtype=np.float32)
    amplitude = 1.0
    cell = float(largest_cell) / factor
    for _ in range(octaves):
        total += np.float32(amplitude) * smooth_field(rng, work_h, work_w, max(cell, 1.0))
        amplitude *= persistence
        cell /= 2.0
    if (work_h, work_w) != (height, width):
        total = resize_plane(total, height, width)
    low, high = float(total.min()), float(total.max())
    if high - low < 1e-6:
        return np.full((height, width), 0.5, dtype=np.float32)
    return (total - low) / np.float32(high - low)


def screen_uint8(image: np.ndarray, layer: np.ndarray) -> np.ndarray:
    """Screen blend of a uint8 HxWx3 image with a uint8 light layer (HxW or HxWx3, 255 = full white):
    ``a + l (255 - a) / 255``, in OpenCV's saturating uint8 arithmetic (a few passes over bytes, no floats)."""
    import cv2

    image = np.ascontiguousarray(image)
    if layer.ndim == 2:
        layer = cv2.merge([layer, layer, layer])
    headroom = cv2.multiply(cv2.bitwise_not(image), np.ascontiguousarray(layer), scale=1.0 / 255.0)
    return cv2.add(image, headroom).reshape(image.shape)
