"""Safe opening, pixel policy and filesystem walk on a hostile corpus (no model involved)."""

import io
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile, ImageOps

import predict_corpus as corpus
from fdcore.images import (DEFAULT_MAX_ASPECT_RATIO, ImageRejected, check_geometry, load_image, open_beneath,
                           open_image_file, prepare_pil)
from fdcore.preprocess import Preprocessing, resized_short_side
from fdcore.walk import walk_images


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return corpus.build_hostile(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def walked(hostile):
    return walk_images(hostile)


def _open(images: Path, name: str):
    return open_image_file(os.path.realpath(images / name))


def test_walk_classifies_every_entry(walked):
    names = [c.name for c in walked.candidates]
    assert names == sorted(names)
    expected_candidates = set(corpus.SCORED) | {name for name, code in corpus.SKIPPED.items()
                                                if code in ("decode_failed", "empty_file", "decompression_bomb",
                                                            "extreme_aspect_ratio", "format_not_allowed",
                                                            "not_an_image")}
    assert set(names) == expected_candidates
    skipped = {s.name: s.code for s in walked.skipped}
    expected_skips = {name: code for name, code in corpus.SKIPPED.items() if name not in expected_candidates}
    assert skipped == {**expected_skips, **corpus.IGNORED}
    assert {s.name for s in walked.skipped if s.ignored} == set(corpus.IGNORED)


def test_walk_is_fast_and_never_leaves_the_root(hostile, walked):
    started = time.monotonic()
    walk_images(hostile)
    assert time.monotonic() - started < 1.0
    everything = [c.name for c in walked.candidates] + [s.name for s in walked.skipped]
    assert not any("secret_outside_root" in name or "loop_to_parent/" in name for name in everything)
    root = os.path.realpath(hostile)
    for candidate in walked.candidates:
        assert candidate.path.startswith(root + os.sep)


@pytest.mark.parametrize("name", [n for n, code in corpus.SKIPPED.items() if code in (
    "decode_failed", "empty_file", "decompression_bomb", "extreme_aspect_ratio", "format_not_allowed",
    "not_an_image")])
def test_refused_files_get_their_reason_code(hostile, name):
    with pytest.raises(ImageRejected) as caught:
        _open(hostile, name)
    assert caught.value.code == corpus.SKIPPED[name]


@pytest.mark.parametrize("name", corpus.SCORED)
def test_scorable_files_open_as_rgb(hostile, name):
    loaded = _open(hostile, name)
    assert loaded.image.mode == "RGB" and loaded.image.size[0] >= 1


def test_special_files_never_block(hostile):
    # Opening a FIFO without O_NONBLOCK would hang forever; the timeout turns a hang into a failure.
    script = textwrap.dedent(f"""
        from fdcore.images import open_image_file, ImageRejected
        for name in ("fifo_named_pipe.jpg", "symlink_to_dev_zero.jpg"):
            path = {str(hostile)!r} + "/" + name
            try:
                open_image_file(path)
            except ImageRejected as exc:
                print(exc.code)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=10)
    assert result.stdout.split() == ["not_regular_file", "not_regular_file"], result.stderr


def test_bombs_are_refused_fast_with_little_memory_even_under_W_ignore(hostile):
    script = textwrap.dedent(f"""
        import resource, time
        from fdcore.images import open_image_file, ImageRejected
        from PIL import Image
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        for name in ("decompression_bomb_30000x30000.png", "bomb_warning_zone_10000x10000.png"):
            started = time.monotonic()
            try:
                open_image_file({str(hostile)!r} + "/" + name)
                print("scored", name)
            except ImageRejected as exc:
                print(exc.code, round(time.monotonic() - started, 3))
        grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print("grown", grown_mb)
    """)
    result = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True,
                            timeout=30)
    lines = [line.split() for line in result.stdout.splitlines()]
    assert [line[0] for line in lines[:2]] == ["decompression_bomb", "decompression_bomb"], result.stderr
    assert all(float(line[1]) < 1.0 for line in lines[:2])
    assert float(lines[2][1]) < 100


def test_geometry_is_memory_bounded_under_rlimit(hostile):
    # 1 GiB of address space is far below what a 2x10000 -> 384x1920000 resize would need.
    script = textwrap.dedent(f"""
        import resource
        resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))
        from fdcore.images import open_image_file, ImageRejected
        for name in ("thin_2x10000.png", "aspect_ratio_bomb_1x65000.png"):
            try:
                open_image_file({str(hostile)!r} + "/" + name)
                print("scored")
            except ImageRejected as exc:
                print(exc.code)
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=30)
    assert result.stdout.split() == ["extreme_aspect_ratio", "extreme_aspect_ratio"], result.stderr


def test_accepted_geometry_bounds_the_resize_intermediate():
    size = 384
    limit = size * size * DEFAULT_MAX_ASPECT_RATIO
    for width, height in [(1, 50), (50, 1), (7, 350), (1000, 20), (8000, 8000)]:
        check_geometry(width, height)
        new_width, new_height = resized_short_side(width, height, size)
        assert new_width * new_height <= limit
    with pytest.raises(ImageRejected):
        check_geometry(1, 51)
    # The real resize path produces exactly that intermediate and then the crop.
    thin = Image.new("RGB", (2, 100), (1, 2, 3))
    assert Preprocessing(size=16, mean=(0, 0, 0), std=(1, 1, 1)).resize_image(thin).size == (16, 16)


def test_no_global_pillow_mutation(hostile):
    before = Image.MAX_IMAGE_PIXELS
    import fdcore  # noqa: F401
    for name in ("truncated_jpeg_half.jpg", "decompression_bomb_30000x30000.png", "valid_photo_1.jpg"):
        try:
            _open(hostile, name)
        except ImageRejected:
            pass
    assert ImageFile.LOAD_TRUNCATED_IMAGES is False
    assert Image.MAX_IMAGE_PIXELS == before


def test_ghostscript_is_never_invoked(hostile, tmp_path, monkeypatch):
    marker = tmp_path / "gs-was-run"
    fake_bin = tmp_path / "bin"
    fake_bin.mkdir()
    for tool in ("gs", "gswin32c", "gswin64c"):
        (fake_bin / tool).write_text(f"#!/bin/sh\ntouch {marker}\n")
        (fake_bin / tool).chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake_bin}{os.pathsep}{os.environ['PATH']}")
    with pytest.raises(ImageRejected) as caught:
        _open(hostile, "eps_postscript_named.jpg")
    assert caught.value.code == "format_not_allowed"
    # Even asking Pillow's generic opener (without the sniffing step) must not reach Ghostscript.
    with pytest.raises(ImageRejected):
        load_image(io.BytesIO((hostile / "eps_postscript_named.jpg").read_bytes()[4:]))
    assert not marker.exists()


def test_exif_orientation_6_matches_exif_transpose(hostile):
    loaded = _open(hostile, "exif_orientation6_rotated.jpg")
    with Image.open(hostile / "exif_orientation6_rotated.jpg") as raw:
        expected = ImageOps.exif_transpose(raw).convert("RGB")
    assert loaded.image.size == (400, 300)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(expected))
    top, bottom = np.asarray(loaded.image)[:30].mean(axis=(0, 1)), np.asarray(loaded.image)[-30:].mean(axis=(0, 1))
    assert top[0] > 200 and top[1] < 60 and abs(bottom[0] - 200) < 20
    preprocessing = Preprocessing(size=32, mean=(0.5,) * 3, std=(0.25,) * 3)
    assert preprocessing(loaded.image).equal(preprocessing(expected))


def test_damaged_exif_is_scored_with_a_note(hostile):
    assert "exif_corrupt" in _open(hostile, "jpeg_corrupt_exif.jpg").notes
    assert "exif_orientation_invalid" in _open(hostile, "exif_orientation_invalid_9.jpg").notes


def test_duplicated_exif_header_pinned_first_segment_wins(hostile):
    # The file holds an orientation-6 segment first and an orientation-3 one second. Pillow applies the first;
    # if an upgrade changes that, this test fails and the pixel policy version must be bumped.
    loaded = _open(hostile, "jpeg_exif_duplicated_header_orientation6.jpg")
    assert loaded.image.size == (48, 64)
    with Image.open(hostile / "jpeg_exif_duplicated_header_orientation6.jpg") as raw:
        raw.load()
        assert np.array_equal(np.asarray(loaded.image), np.asarray(raw.transpose(Image.Transpose.ROTATE_270)))


def test_16_bit_gray_scales_to_8_bit(hostile):
    loaded = _open(hostile, "gray16_I16.png")
    assert loaded.mode.startswith("I")
    pixels = np.asarray(loaded.image)
    assert pixels[0, 256].tolist() == [128, 128, 128]
    assert pixels[0, 0].tolist() == [0, 0, 0]
    full = prepare_pil(Image.fromarray(np.full((4, 4), 65535, dtype=np.uint16)))[0]
    assert np.asarray(full).max() == 255 and np.asarray(full).min() == 255


@pytest.mark.parametrize("make", [corpus.rgba_hiding_green, corpus.palette_with_transparency])
def test_colour_under_transparent_pixels_never_reaches_the_model(make):
    reference = np.asarray(prepare_pil(Image.open(io.BytesIO(corpus.png_bytes(make(), transparency=0)
                                                             if make is corpus.palette_with_transparency
                                                             else corpus.png_bytes(make()))))[0])
    for seed in (1, 2, 3):
        image = make(seed)
        data = corpus.png_bytes(image, transparency=0) if make is corpus.palette_with_transparency \
            else corpus.png_bytes(image)
        assert np.array_equal(np.asarray(prepare_pil(Image.open(io.BytesIO(data)))[0]), reference)
    # Fully transparent pixels become exactly the white background.
    assert (reference[:, 20:] == 255).all() if make is corpus.rgba_hiding_green else True


def test_cmyk_records_its_source_mode(hostile):
    loaded = _open(hostile, "cmyk.jpg")
    assert loaded.mode == "CMYK" and loaded.image.mode == "RGB"


@pytest.mark.parametrize("name,frames", [("animated_3frames.gif", 3), ("animated_3frames.webp", 3),
                                         ("tiff_multipage_2pages.tiff", 2)])
def test_animations_use_the_first_frame(hostile, tmp_path, name, frames):
    loaded = _open(hostile, name)
    assert loaded.n_frames == frames and f"first_frame_of_{frames}" in loaded.notes
    frame_zero = tmp_path / "frame0.png"
    corpus.solid_frames(corpus.ANIMATION_COLOURS)[0].save(frame_zero)
    assert np.array_equal(np.asarray(loaded.image), np.asarray(open_image_file(frame_zero).image))


def test_every_opened_path_is_a_regular_file_under_the_root(hostile, walked, monkeypatch):
    opened = []
    real_open = os.open

    def recording_open(path, flags, *args, **kwargs):
        opened.append(os.fsdecode(path))
        return real_open(path, flags, *args, **kwargs)

    monkeypatch.setattr(os, "open", recording_open)
    for candidate in walked.candidates:
        try:
            open_image_file(candidate.path)
        except ImageRejected:
            pass
    root = os.path.realpath(hostile)
    assert len(opened) == len(walked.candidates)
    for path in opened:
        assert os.path.realpath(path).startswith(root + os.sep)
        assert stat.S_ISREG(os.lstat(path).st_mode)


def test_unsupported_float_mode_is_refused():
    with pytest.raises(ImageRejected) as caught:
        prepare_pil(Image.fromarray(np.zeros((4, 4), dtype=np.float32)))
    assert caught.value.code == "unsupported_mode"


def test_a_folder_swapped_for_a_link_after_listing_leads_nowhere(tmp_path):
    """Issue 15 item 5: every component below the root is opened with O_NOFOLLOW from the root's descriptor."""
    root, outside = tmp_path / "images", tmp_path / "outside"
    (root / "sub" / "deeper").mkdir(parents=True)
    (outside / "deeper").mkdir(parents=True)
    inside_bytes = corpus.jpeg_bytes(corpus.photo(1, 20, 20))
    (root / "sub" / "deeper" / "a.jpg").write_bytes(inside_bytes)
    (outside / "deeper" / "a.jpg").write_bytes(corpus.jpeg_bytes(corpus.photo(2, 30, 30)))
    (root / "top.jpg").write_bytes(inside_bytes)
    listed = walk_images(root).candidates
    assert [c.name for c in listed] == ["sub/deeper/a.jpg", "top.jpg"]
    assert open_image_file(listed[0].path, root=listed[0].root).width == 20
    (root / "sub").rename(tmp_path / "moved")
    (root / "sub").symlink_to(outside)  # the attacker's swap, after listing
    with pytest.raises(ImageRejected) as refused:
        open_image_file(listed[0].path, root=listed[0].root)
    assert refused.value.code == "not_regular_file" and "sub" in refused.value.detail
    assert open_image_file(listed[1].path, root=listed[1].root).width == 20
    with pytest.raises(ImageRejected):  # a path that is not below the root is never opened
        open_beneath(root, outside / "deeper" / "a.jpg")


def test_any_decoder_exception_costs_one_image_never_the_caller(monkeypatch):
    """A Pillow plugin raising TypeError (or anything) on a hostile file is that file's decode_failed; only a caller
    passing something that is not an image source gets the TypeError."""
    import fdcore.images
    from fdcore import scoring

    def broken_decoder(*args, **kwargs):
        raise TypeError("a plugin bug triggered by hostile bytes")

    monkeypatch.setattr(fdcore.images, "load_image", broken_decoder)
    rejected = scoring.decode(b"\x89PNG hostile", [])
    assert isinstance(rejected, scoring.Rejected) and rejected.code == "decode_failed"
    with pytest.raises(TypeError, match="cannot score a int"):
        scoring.decode(42, [])
