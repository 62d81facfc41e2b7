"""A hostile image corpus built in a temp dir (FIFOs, symlinks and odd names do not belong in git), plus a tiny
toy-expert ensemble. Shared by test_images.py, test_predict.py and test_predict_resume.py.

EXPECTED maps each relative name to ("score", None), ("skip", reason) or ("ignore", reason).
"""

from __future__ import annotations

import csv
import io
import os
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

LONG_NAME = "l" * 251 + ".png"  # 255 bytes, the usual file-name limit
UNDECODABLE_NAME = b"bad_\xff_name.jpg"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose IHDR claims ``width x height`` RGB but whose data is a few bytes: a decompression bomb header."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
            + _png_chunk(b"IEND", b""))


def photo(seed: int, height: int = 48, width: int = 64) -> np.ndarray:
    rng = np.random.default_rng(seed)
    base = rng.integers(0, 256, (height // 8 + 1, width // 8 + 1, 3)).astype(np.float64)
    image = np.kron(base, np.ones((8, 8, 1)))[:height, :width]
    return np.clip(image + rng.normal(0, 12, image.shape), 0, 255).astype(np.uint8)


def jpeg_bytes(array: np.ndarray, **save) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "JPEG", quality=90, **save)
    return buffer.getvalue()


def png_bytes(image: Image.Image, **save) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, "PNG", **save)
    return buffer.getvalue()


def exif_bytes(orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return exif.tobytes()


def insert_app1(jpeg: bytes, payload: bytes) -> bytes:
    """Insert an APP1 segment right after SOI."""
    segment = b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload
    return jpeg[:2] + segment + jpeg[2:]


def orientation6_jpeg() -> bytes:
    """Displayed as 400x300 with a red band on top; stored rotated (300x400) with EXIF orientation 6."""
    displayed = np.full((300, 400, 3), 200, dtype=np.uint8)
    displayed[:60] = (255, 0, 0)
    stored = Image.fromarray(displayed).transpose(Image.Transpose.ROTATE_90)  # undone by orientation 6
    buffer = io.BytesIO()
    stored.save(buffer, "JPEG", quality=95, exif=exif_bytes(6))
    return buffer.getvalue()


def rgba_hiding_green(noise_seed: int | None = None) -> Image.Image:
    """Half transparent (alpha 0) pixels whose RGB is green (or noise), half opaque pixels."""
    rng = np.random.default_rng(noise_seed or 0)
    rgba = np.zeros((40, 40, 4), dtype=np.uint8)
    rgba[:, :, :3] = photo(5, 40, 40)
    rgba[:, :, 3] = 255
    rgba[:, 20:, 3] = 0
    rgba[:, 20:, :3] = (0, 255, 0) if noise_seed is None else rng.integers(0, 256, (40, 20, 3))
    rgba[:5, :5, 3] = 128
    return Image.fromarray(rgba, "RGBA")


def palette_with_transparency(noise_seed: int | None = None) -> Image.Image:
    """A palette image where index 0 is transparent; its palette colour is green (or random)."""
    indices = (np.arange(32 * 32).reshape(32, 32) % 7).astype(np.uint8)
    palette = [0, 255, 0] if noise_seed is None else list(np.random.default_rng(noise_seed).integers(0, 256, 3))
    for index in range(1, 7):
        palette += [index * 30, 255 - index * 30, (index * 77) % 256]
    image = Image.fromarray(indices, "P")
    image.putpalette([int(v) for v in palette] + [0] * (768 - len(palette)))
    image.info["transparency"] = 0
    return image


def gray16_gradient() -> Image.Image:
    """16-bit greyscale, value = 128 * x (x = 256 holds 32768, which must become 128)."""
    values = np.tile((np.arange(512, dtype=np.uint32) * 128).clip(0, 65535).astype(np.uint16), (16, 1))
    return Image.fromarray(values)  # uint16 -> mode I;16


def solid_frames(colours) -> list[Image.Image]:
    return [Image.fromarray(np.full((32, 48, 3), colour, dtype=np.uint8)) for colour in colours]


ANIMATION_COLOURS = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]


def animated(fmt: str) -> bytes:
    frames = solid_frames(ANIMATION_COLOURS)
    buffer = io.BytesIO()
    if fmt == "GIF":
        frames[0].save(buffer, "GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    elif fmt == "WEBP":
        frames[0].save(buffer, "WEBP", save_all=True, append_images=frames[1:], duration=100, lossless=True)
    else:
        frames[0].save(buffer, "TIFF", save_all=True, append_images=frames[1:2])
    return buffer.getvalue()


SCORED = [
    "valid_photo_1.jpg", "valid_photo_2.jpg", "valid_png.png", "valid_webp.webp", "valid_bmp.bmp",
    "valid_tiff.tif", "png_content_named.jpg", "cmyk.jpg", "gray8.png", "gray16_I16.png",
    "palette_P_with_transparency.png", "rgba_transparent_pixels_hide_green.png", "la_gray_alpha.png",
    "exif_orientation6_rotated.jpg", "jpeg_corrupt_exif.jpg", "exif_orientation_invalid_9.jpg",
    "jpeg_exif_duplicated_header_orientation6.jpg", "animated_3frames.gif", "animated_3frames.webp",
    "tiff_multipage_2pages.tiff", "UPPER_EXT.JPG", "one_pixel.png", "unicode_ünïcødé_😀.png", "comma,name.png",
    "new\nline.png", 'quote"name.png', "=1+2+cmd.jpg", LONG_NAME, "nested/deep/inner.png", "symlink_inside.jpg",
]
SKIPPED = {
    "truncated_jpeg_half.jpg": "decode_failed",
    "truncated_png_half.png": "decode_failed",
    "zero_byte.jpg": "empty_file",
    "decompression_bomb_30000x30000.png": "decompression_bomb",
    "bomb_warning_zone_10000x10000.png": "decompression_bomb",
    "thin_2x10000.png": "extreme_aspect_ratio",
    "aspect_ratio_bomb_1x65000.png": "extreme_aspect_ratio",
    "eps_postscript_named.jpg": "format_not_allowed",
    "psd_named.jpg": "format_not_allowed",
    "fits_named.jpg": "format_not_allowed",
    "text_named.png": "not_an_image",
    "fifo_named_pipe.jpg": "not_regular_file",
    "symlink_to_dev_zero.jpg": "not_regular_file",
    "symlink_escape.jpg": "symlink_outside_root",
    "escape_dir_symlink": "symlink_outside_root",
    "nested/loop_to_parent": "directory_symlink",
    "broken_symlink.jpg": "broken_symlink",
    "bad_\\xff_name.jpg": "undecodable_filename",
}
IGNORED = {"notes.txt": "ignored_extension", "._valid_photo_1.jpg": "appledouble_companion"}


def build_valid(root: Path, count: int = 0) -> dict[str, bytes]:
    """The scorable files (plus ``count`` extra plain photos); returns name -> bytes written."""
    root = Path(root)
    files: dict[str, bytes] = {}
    files["valid_photo_1.jpg"] = jpeg_bytes(photo(1))
    files["valid_photo_2.jpg"] = jpeg_bytes(photo(2, 60, 40))
    files["valid_png.png"] = png_bytes(Image.fromarray(photo(3)))
    buffer = io.BytesIO()
    Image.fromarray(photo(4)).save(buffer, "WEBP", quality=80)
    files["valid_webp.webp"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(photo(6)).save(buffer, "BMP")
    files["valid_bmp.bmp"] = buffer.getvalue()
    buffer = io.BytesIO()
    Image.fromarray(photo(7)).save(buffer, "TIFF")
    files["valid_tiff.tif"] = buffer.getvalue()
    files["png_content_named.jpg"] = png_bytes(Image.fromarray(photo(8)))
    buffer = io.BytesIO()
    Image.fromarray(photo(9)).convert("CMYK").save(buffer, "JPEG", quality=90)
    files["cmyk.jpg"] = buffer.getvalue()
    files["gray8.png"] = png_bytes(Image.fromarray(photo(10)[:, :, 0], "L"))
    files["gray16_I16.png"] = png_bytes(gray16_gradient())
    files["palette_P_with_transparency.png"] = png_bytes(palette_with_transparency(), transparency=0)
    files["rgba_transparent_pixels_hide_green.png"] = png_bytes(rgba_hiding_green())
    la = np.stack([photo(11)[:, :, 1], np.tile(np.linspace(0, 255, 64).astype(np.uint8), (48, 1))], axis=2)
    files["la_gray_alpha.png"] = png_bytes(Image.fromarray(la, "LA"))
    files["exif_orientation6_rotated.jpg"] = orientation6_jpeg()
    files["jpeg_corrupt_exif.jpg"] = insert_app1(jpeg_bytes(photo(12)), b"Exif\x00\x00MM\x00*\x00\x00\x00\x08\xff\xff"
                                                 + b"\x01\x12\x00\x03" * 4)
    files["exif_orientation_invalid_9.jpg"] = jpeg_bytes(photo(13), exif=exif_bytes(9))
    duplicated = insert_app1(jpeg_bytes(photo(14)), b"Exif\x00\x00" + exif_bytes(3)[6:])
    files["jpeg_exif_duplicated_header_orientation6.jpg"] = insert_app1(duplicated,
                                                                       b"Exif\x00\x00" + exif_bytes(6)[6:])
    files["animated_3frames.gif"] = animated("GIF")
    files["animated_3frames.webp"] = animated("WEBP")
    files["tiff_multipage_2pages.tiff"] = animated("TIFF")
    files["UPPER_EXT.JPG"] = jpeg_bytes(photo(15))
    files["one_pixel.png"] = png_bytes(Image.fromarray(np.array([[[10, 200, 30]]], dtype=np.uint8)))
    for index, name in enumerate(["unicode_ünïcødé_😀.png", "comma,name.png", "new\nline.png", 'quote"name.png',
                                  LONG_NAME, "nested/deep/inner.png"]):
        files[name] = png_bytes(Image.fromarray(photo(20 + index)))
    files["=1+2+cmd.jpg"] = jpeg_bytes(photo(30))
    for index in range(count):
        files[f"extra/photo_{index:03d}.jpg"] = jpeg_bytes(photo(100 + index, 40 + index % 7, 44))
    for name, data in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    (root / "symlink_inside.jpg").symlink_to("valid_photo_1.jpg")
    return files


def build_hostile(root: Path) -> Path:
    """The full hostile corpus under ``root/images`` (with ``root/outside`` as the world outside the root)."""
    root = Path(root)
    images = root / "images"
    images.mkdir(parents=True)
    outside = root / "outside"
    outside.mkdir()
    (outside / "secret_outside_root.jpg").write_bytes(jpeg_bytes(photo(99)))
    build_valid(images)
    full_jpeg = jpeg_bytes(photo(40, 120, 160))
    (images / "truncated_jpeg_half.jpg").write_bytes(full_jpeg[: len(full_jpeg) // 2])
    full_png = png_bytes(Image.fromarray(photo(41, 120, 160)))
    (images / "truncated_png_half.png").write_bytes(full_png[: len(full_png) // 2])
    (images / "zero_byte.jpg").write_bytes(b"")
    (images / "decompression_bomb_30000x30000.png").write_bytes(png_header_only(30000, 30000))
    (images / "bomb_warning_zone_10000x10000.png").write_bytes(png_header_only(10000, 10000))
    (images / "thin_2x10000.png").write_bytes(png_bytes(Image.new("RGB", (2, 10000), (9, 9, 9))))
    (images / "aspect_ratio_bomb_1x65000.png").write_bytes(png_bytes(Image.new("L", (1, 65000), 7)))
    (images / "eps_postscript_named.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n"
                                                      b"(%pipe%touch marker) (w) file\nshowpage\n")
    (images / "psd_named.jpg").write_bytes(b"8BPS\x00\x01" + b"\x00" * 6 + b"\x00\x03" + b"\x00\x00\x00\x10" * 2
                                           + b"\x00\x08\x00\x03" + b"\x00" * 64)
    (images / "fits_named.jpg").write_bytes(b"SIMPLE  =                    T" + b" " * 50 + b"END" + b" " * 77)
    (images / "text_named.png").write_bytes(b"this is not an image at all\n" * 4)
    os.mkfifo(images / "fifo_named_pipe.jpg")
    (images / "symlink_to_dev_zero.jpg").symlink_to("/dev/zero")
    (images / "symlink_escape.jpg").symlink_to(outside / "secret_outside_root.jpg")
    (images / "escape_dir_symlink").symlink_to(outside)
    (images / "nested" / "loop_to_parent").symlink_to("..")
    (images / "broken_symlink.jpg").symlink_to("does_not_exist.jpg")
    with open(os.path.join(os.fsencode(images), UNDECODABLE_NAME), "wb") as handle:
        handle.write(jpeg_bytes(photo(42)))
    (images / "notes.txt").write_text("not an image")
    (images / "._valid_photo_1.jpg").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)
    return images


def make_toy_ensemble(directory: Path, seeds=(1, 2), weights=None, aggregator: str = "mean") -> Path:
    """An fdcore ensemble of toy experts (one per seed)."""
    import fdcore
    from fdcore.ensemble_io import write_ensemble

    directory = Path(directory)
    members = []
    for index, seed in enumerate(seeds):
        name = f"toy_{index + 1}"
        fdcore.save_expert(fdcore.get_expert("toy", seed=seed), directory / name)
        members.append({"name": name, "path": name, "weight": (weights or [1.0] * len(seeds))[index]})
    write_ensemble(directory, members, aggregator=aggregator)
    return directory


def read_csv(path) -> list[dict]:
    """The rows of one of predict's CSV outputs, as dicts."""
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def scoring_options(images, ensemble, out, **options):
    """PredictOptions as the manifest and Ray tests use them: quiet, in-process decoding, per-expert columns."""
    from fdcore.predict import PredictOptions

    for key, value in (("quiet", True), ("workers", 0), ("per_expert", True)):
        options.setdefault(key, value)
    return PredictOptions(images=str(images), ensemble=str(ensemble), out=str(out), **options)
