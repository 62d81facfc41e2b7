"""Opening untrusted image files safely, and the pixel policy that turns any accepted image into model RGB.

Opening (:func:`open_image_file`) refuses, before decoding a single pixel:

* anything that is not a regular file (FIFOs and devices are detected with ``fstat`` on a non-blocking,
  no-follow descriptor, so nothing ever blocks);
* empty files;
* formats outside :data:`ALLOWED_FORMATS`: the format is sniffed from the content (a PNG named ``.jpg`` is fine),
  and only the allowed Pillow plugins are ever asked to parse it, so Ghostscript (EPS), PSD or FITS code never runs;
* decompression bombs: the pixel count is read from the header and compared with ``max_pixels`` by this module
  (not by Pillow's global ``Image.MAX_IMAGE_PIXELS`` and not by a warning filter, both of which stay untouched);
* extreme aspect ratios, whose short-side resize would need a huge intermediate image.

Truncated files fail to decode (``ImageFile.LOAD_TRUNCATED_IMAGES`` is never set). Every refusal raises
:class:`ImageRejected` with a stable reason code (documented in docs/predict.md).

Pixel policy (:func:`to_model_rgb`), applied identically by ``fdcore predict`` and ``Ensemble.predict_pil``:

* first frame only for animated GIF/WebP/PNG and multi-page TIFF;
* EXIF orientation applied (``ImageOps.exif_transpose``); an unreadable EXIF block or an out-of-range
  orientation leaves the image as stored and adds a note (``exif_unreadable``, ``exif_orientation_invalid``); a
  damaged block that Pillow partly parses adds ``exif_corrupt``; with two EXIF segments, the first one counts
  (Pillow's behaviour, pinned by a test);
* 16-bit greyscale (``I;16*``, ``I``) is scaled to 8 bits with rounding: ``v * 255 / 65535`` (65535 -> 255,
  32768 -> 128); ``I`` values are clipped to [0, 65535] first;
* transparency (``RGBA``, ``LA``, ``PA``, palette or greyscale with a transparent colour) is composited over opaque
  white in integer arithmetic, so the colour stored under fully transparent pixels never reaches the model;
* every other mode (``L``, ``P``, ``1``, ``CMYK``, ``YCbCr``, ``LAB``...) goes through Pillow's ``convert("RGB")``
  (ICC profiles are not applied: the FeatDistill reference does not apply them either);
* floating-point images (mode ``F``) are refused as ``unsupported_mode``.
"""

from __future__ import annotations

import dataclasses
import errno
import io
import os
import stat
import warnings
from typing import Any

import numpy as np

# Bump when any rule below changes what reaches the model: predictions record it and refuse to resume across it.
PIXEL_POLICY_VERSION = "fdcore-pixels-v1"

# Pillow format names that may be parsed (the only plugins Image.open is allowed to try).
ALLOWED_FORMATS = ("BMP", "GIF", "JPEG", "PNG", "TIFF", "WEBP")
# Pillow reports multi-picture JPEGs (many camera files) as MPO; the JPEG plugin opens them.
_ACCEPTED_REPORTED_FORMATS = frozenset(ALLOWED_FORMATS) | {"MPO"}
# File name extensions that make a file a candidate image; the content decides the format.
IMAGE_EXTENSIONS = frozenset({".bmp", ".dib", ".gif", ".jpe", ".jpeg", ".jfif", ".jpg", ".png", ".tif", ".tiff",
                              ".webp"})
# Image formats fdcore recognises but does not decode (no decoder dependency for them). Files with these extensions
# are still listed, so that the content decides, exactly as for any name: a HEIC/AVIF/JPEG XL file is reported
# ``format_not_allowed`` whatever it is called, and a JPEG that happens to be named ``.heic`` is scored.
REFUSED_IMAGE_EXTENSIONS = frozenset({".heic", ".heif", ".hif", ".avif", ".jxl"})
# Pillow's own default MAX_IMAGE_PIXELS (1024 * 1024 * 1024 // 4 // 3): ~268 MB of RGB per decoded image.
DEFAULT_MAX_PIXELS = 89_478_485
# Above this long/short side ratio the short-side resize intermediate (size^2 * ratio pixels) stops being small.
DEFAULT_MAX_ASPECT_RATIO = 50.0
BACKGROUND_RGB = (255, 255, 255)
# Rows converted at a time by the 16-bit and alpha paths: their wide intermediates stay a few MB whatever the image.
STRIP_ROWS = 256

# Content signatures of formats that are recognised but refused (so the error says "not allowed", not "garbage").
_REFUSED_SIGNATURES = (
    (b"%!PS", "EPS/PostScript"),
    (b"\xc5\xd0\xd3\xc6", "EPS (DOS binary)"),
    (b"%PDF", "PDF"),
    (b"8BPS", "PSD"),
    (b"SIMPLE  =", "FITS"),
    (b"gimp xcf", "XCF"),
    (b"\x00\x00\x00\x0cjP  \r\n\x87\n", "JPEG 2000"),
    (b"\xff\x4f\xff\x51", "JPEG 2000 codestream"),
    (b"\x00\x00\x01\x00", "ICO"),
    (b"\x00\x00\x02\x00", "CUR"),
    (b"icns", "ICNS"),
    (b"DDS ", "DDS"),
    (b"qoif", "QOI"),
    (b"\x76\x2f\x31\x01", "OpenEXR"),
    (b"#?RADIANCE", "Radiance HDR"),
    (b"<?xml", "XML/SVG"),
    (b"<svg", "SVG"),
    (b"/* XPM */", "XPM"),
    (b"#define", "XBM"),
)
_FTYP_BRANDS = {b"heic": "HEIC", b"heix": "HEIC", b"mif1": "HEIF", b"msf1": "HEIF", b"avif": "AVIF",
                b"avis": "AVIF", b"jxl ": "JPEG XL"}


class ImageRejected(Exception):
    """A file that is not scored; ``code`` is a stable reason code, ``detail`` a human explanation."""

    def __init__(self, code: str, detail: str):
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


@dataclasses.dataclass
class LoadedImage:
    """An accepted image, converted by the pixel policy, with what was learned about the source."""

    image: Any  # PIL.Image.Image, mode RGB
    format: str
    mode: str
    width: int
    height: int
    n_frames: int | None
    notes: list[str]
    size_bytes: int = 0
    mtime_ns: int = 0


def sniff_refused_format(head: bytes) -> str | None:
    """The name of a recognised-but-refused format whose signature starts ``head``, else None."""
    for signature, name in _REFUSED_SIGNATURES:
        if head.startswith(signature):
            return name
    if head[4:8] == b"ftyp" and head[8:12] in _FTYP_BRANDS:
        return _FTYP_BRANDS[head[8:12]]
    if len(head) >= 3 and head[0:1] == b"P" and head[1:2] in b"1234567" and head[2:3] in b" \t\r\n":
        return "Netpbm"
    return None


def check_geometry(width: int, height: int, max_pixels: int = DEFAULT_MAX_PIXELS,
                   max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> None:
    """Refuse a header-declared size before anything is decoded."""
    if width <= 0 or height <= 0:
        raise ImageRejected("decode_failed", f"the header declares an empty size {width}x{height}")
    if width * height > max_pixels:
        raise ImageRejected("decompression_bomb", f"{width}x{height} = {width * height} pixels exceeds the limit of "
                                                  f"{max_pixels} (--max-pixels)")
    ratio = max(width, height) / min(width, height)
    if ratio > max_aspect_ratio:
        raise ImageRejected("extreme_aspect_ratio", f"{width}x{height} has aspect ratio {ratio:.1f}, above the "
                                                    f"limit of {max_aspect_ratio:g}")


_OPEN_FLAGS = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
_DIRECTORY_FLAGS = os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)


def open_beneath(root: str | os.PathLike, path: str | os.PathLike) -> int:
    """A read-only descriptor for ``path``, reached from ``root`` one component at a time, none of them followed.

    Every folder between the root and the file is opened with ``O_NOFOLLOW | O_DIRECTORY`` relative to its parent's
    descriptor, so a folder swapped for a symbolic link after listing is refused instead of leading outside the root.
    Raises :class:`ImageRejected` (``not_regular_file`` for a swapped component, ``read_failed`` otherwise).
    """
    root, path = os.fspath(root), os.fspath(path)
    relative = os.path.relpath(path, root)
    parts = relative.split(os.sep)
    if relative in (".", "") or parts[0] == ".." or os.path.isabs(relative):
        raise ImageRejected("read_failed", f"{path} is not inside {root}")
    try:
        directory = os.open(root, _DIRECTORY_FLAGS)
    except OSError as exc:
        raise ImageRejected("read_failed", f"cannot open the input folder {root}: {exc.strerror or exc}") from exc
    try:
        for part in parts[:-1]:
            try:
                inner = os.open(part, _DIRECTORY_FLAGS, dir_fd=directory)
            except OSError as exc:
                if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                    raise ImageRejected("not_regular_file", f"the folder {part!r} on the path became a symbolic link "
                                                            "or a file after listing; nothing outside the input "
                                                            "folder is read") from exc
                raise ImageRejected("read_failed", f"cannot open the folder {part!r}: {exc.strerror or exc}") from exc
            os.close(directory)
            directory = inner
        try:
            return os.open(parts[-1], _OPEN_FLAGS, dir_fd=directory)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageRejected("not_regular_file", "the path became a symbolic link after listing") from exc
            raise ImageRejected("read_failed", f"cannot open: {exc.strerror or exc}") from exc
    finally:
        os.close(directory)


def open_image_file(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS,
                    max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO, root: str | os.PathLike | None = None
                    ) -> LoadedImage:
    """Open one untrusted file and return its model RGB image, or raise :class:`ImageRejected`.

    ``path`` should already be resolved (no symlink in its last component): it is opened with ``O_NOFOLLOW``. With
    ``root`` (the listed folder, resolved), every component below it is opened without following links
    (:func:`open_beneath`), so nothing outside the root is read even if folders are swapped after listing.
    """
    if root is not None:
        descriptor = open_beneath(root, path)
    else:
        try:
            descriptor = os.open(path, _OPEN_FLAGS)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise ImageRejected("not_regular_file", "the path became a symbolic link after listing") from exc
            raise ImageRejected("read_failed", f"cannot open: {exc.strerror or exc}") from exc
    # fstat before wrapping: os.fdopen refuses a directory with an error that names the descriptor, not the path
    info = os.fstat(descriptor)
    if not stat.S_ISREG(info.st_mode):
        os.close(descriptor)
        kind = "a directory" if stat.S_ISDIR(info.st_mode) else f"not a regular file (mode {stat.filemode(info.st_mode)})"
        raise ImageRejected("not_regular_file", f"{os.fspath(path)} is {kind}")
    with os.fdopen(descriptor, "rb", closefd=True) as handle:
        if info.st_size == 0:
            raise ImageRejected("empty_file", "the file has zero bytes")
        loaded = load_image(handle, max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
    loaded.size_bytes = info.st_size
    loaded.mtime_ns = info.st_mtime_ns
    return loaded


def load_image(source: Any, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_aspect_ratio: float = DEFAULT_MAX_ASPECT_RATIO) -> LoadedImage:
    """Decode the first frame of an image from a binary file object or bytes, applying every safety check."""
    from PIL import Image, UnidentifiedImageError

    handle = io.BytesIO(source) if isinstance(source, (bytes, bytearray, memoryview)) else source
    try:
        head = handle.read(32)
        handle.seek(0)
    except OSError as exc:
        raise ImageRejected("read_failed", f"cannot read: {exc}") from exc
    if not head:
        raise ImageRejected("empty_file", "the file has zero bytes")
    refused = sniff_refused_format(head)
    if refused:
        raise ImageRejected("format_not_allowed", f"content is {refused}; allowed formats: "
                                                  f"{', '.join(ALLOWED_FORMATS)}")
    # Warnings raised while parsing (damaged EXIF, odd chunks) become per-image notes instead of stderr noise.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        # fdcore enforces its own pixel limit below; Pillow's warning would only duplicate it.
        warnings.simplefilter("ignore", Image.DecompressionBombWarning)
        try:
            image = Image.open(handle, formats=ALLOWED_FORMATS)
        except Image.DecompressionBombError as exc:
            raise ImageRejected("decompression_bomb", f"{exc} (refused from the header, nothing decoded)") from exc
        except UnidentifiedImageError as exc:
            raise ImageRejected("not_an_image", "the content is not a recognised image format (allowed: "
                                                f"{', '.join(ALLOWED_FORMATS)})") from exc
        except Exception as exc:  # a malformed header can raise almost anything inside a Pillow plugin
            raise ImageRejected("decode_failed", f"unreadable header: {type(exc).__name__}: {exc}") from exc
        with image:
            if image.format not in _ACCEPTED_REPORTED_FORMATS:
                raise ImageRejected("format_not_allowed", f"format {image.format} is not allowed")
            width, height = image.size
            check_geometry(width, height, max_pixels, max_aspect_ratio)
            source_format, source_mode = image.format, image.mode
            # Counted before decoding: counting seeks, and seeking after conversion could change the result.
            n_frames = _frame_count(image)
            try:
                image.seek(0)
                image.load()
            except Exception as exc:
                raise ImageRejected("decode_failed", f"{type(exc).__name__}: {exc}") from exc
            rgb, notes = to_model_rgb(image)
    for warning in caught:
        note = "exif_corrupt" if _is_exif_warning(warning) else "decoder_warning"
        if note not in notes:
            notes.append(note)
    if n_frames is not None and n_frames > 1:
        notes.append(f"first_frame_of_{n_frames}")
    return LoadedImage(rgb, source_format, source_mode, width, height, n_frames, notes)


def _is_exif_warning(warning) -> bool:
    return "exif" in str(warning.message).lower() or str(warning.filename).endswith("TiffImagePlugin.py")


def _frame_count(image) -> int | None:
    """Frames in an animated or multi-page file (None when counting fails: frame 0 is still usable)."""
    try:
        count = int(getattr(image, "n_frames", 1))
    except Exception:
        count = None
    try:
        image.seek(0)
    except Exception:
        pass
    return count


def to_model_rgb(image) -> tuple[Any, list[str]]:
    """The pixel policy: a loaded PIL image (any mode) -> (RGB image, notes). See the module docstring."""
    from PIL import Image

    notes: list[str] = []
    image = _apply_exif_orientation(image, notes)
    mode = image.mode
    if mode == "RGB":
        return image, notes
    if mode == "F":
        raise ImageRejected("unsupported_mode", "floating-point images (mode F) have no defined 8-bit scaling")
    if mode.startswith("I;16") or mode == "I":
        values = np.asarray(image)
        rgb = np.empty(values.shape[:2] + (3,), dtype=np.uint8)
        for top in range(0, values.shape[0], STRIP_ROWS):  # strips: the int64 intermediate stays small
            strip = np.clip(values[top:top + STRIP_ROWS].astype(np.int64), 0, 65535)
            rgb[top:top + STRIP_ROWS] = ((strip * 255 + 32767) // 65535).astype(np.uint8)[:, :, None]
        del values
        return Image.fromarray(rgb, "RGB"), notes
    has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info
    try:
        if has_alpha:
            rgba = np.asarray(image.convert("RGBA"), dtype=np.uint8)
            return Image.fromarray(composite_on_background(rgba), "RGB"), notes
        return image.convert("RGB"), notes
    except (ValueError, OSError) as exc:
        raise ImageRejected("unsupported_mode", f"cannot convert mode {mode} to RGB: {exc}") from exc


def composite_on_background(rgba: np.ndarray, background: tuple[int, int, int] = BACKGROUND_RGB) -> np.ndarray:
    """``HxWx4`` uint8 -> ``HxWx3`` uint8 over an opaque background, rounded: alpha 0 gives exactly the background.

    Computed in strips of rows with 16-bit intermediates (``c*a + b*(255-a) + 127`` is at most 65,152), so the
    extra memory is a few strips, not several full-size 32-bit copies of the image."""
    out = np.empty(rgba.shape[:2] + (3,), dtype=np.uint8)
    back = np.asarray(background, dtype=np.uint16).reshape(1, 1, 3)
    for top in range(0, rgba.shape[0], STRIP_ROWS):
        block = rgba[top:top + STRIP_ROWS]
        alpha = block[:, :, 3:4].astype(np.uint16)
        value = block[:, :, :3].astype(np.uint16) * alpha
        value += back * (255 - alpha)
        value += 127
        out[top:top + STRIP_ROWS] = value // 255
    return out


def _apply_exif_orientation(image, notes: list[str]):
    from PIL import ImageOps

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            orientation = image.getexif().get(0x0112)
    except Exception:
        notes.append("exif_unreadable")
        return image
    if caught and "exif_corrupt" not in notes:  # Pillow warns about damaged EXIF and keeps what it could parse
        notes.append("exif_corrupt")
    if orientation is None or orientation == 1:
        return image
    if not isinstance(orientation, int) or not 1 <= orientation <= 8:
        notes.append("exif_orientation_invalid")
        return image
    try:
        return ImageOps.exif_transpose(image)
    except Exception:
        notes.append("exif_transpose_failed")
        return image


def prepare_pil(image) -> tuple[Any, list[str]]:
    """A caller's PIL image (already open) -> (model RGB image, notes), with the same policy as files.

    Animated images use their current frame 0; no size limit applies (the caller already decoded it).
    """
    try:
        if getattr(image, "n_frames", 1) > 1:
            image.seek(0)
        image.load()
    except Exception as exc:
        raise ImageRejected("decode_failed", f"{type(exc).__name__}: {exc}") from exc
    return to_model_rgb(image)
