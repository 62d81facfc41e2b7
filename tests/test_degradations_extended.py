"""Behaviour of each extended degradation operator (ops_*.py): what it does, not only that it keeps the generic
contract (tests/test_degraders_conformance.py covers that for every registered degrader)."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

import fdcore
from fdcore.degradations import (
    ops_blur,
    ops_color,
    ops_compression,
    ops_environmental,
    ops_geometric,
    ops_noise,
    ops_occlusion,
    ops_sensor,
)
from fdcore.degradations.codecs import CodecUnavailableError

MODULES = {
    "blur": (ops_blur, ("motion_blur", "defocus_blur", "zoom_blur", "glass_blur", "atmospheric_blur")),
    "noise": (ops_noise, ("shot_noise", "iso_noise", "speckle_noise", "film_grain")),
    "compression": (ops_compression, ("jpeg_subsampling", "double_jpeg", "jpeg2000", "webp", "color_banding",
                                      "gif_palette", "social_media_chain", "jpeg_jpeg2000_chain")),
    "color": (ops_color, ("tone_curve", "clahe", "gamma", "color_cast", "rgb_shift", "color_bleed", "fading")),
    "geometric": (ops_geometric, ("downscale", "random_crop", "random_aspect_crop", "perspective", "rotate_scale",
                                  "shear", "elastic", "barrel_distortion", "pixelate", "pixel_shuffle")),
    "environmental": (ops_environmental, ("fog", "rain", "snow", "frost", "light_leak", "lens_flare",
                                          "vignetting")),
    "sensor": (ops_sensor, ("blooming", "dead_pixels", "fixed_pattern_noise", "chromatic_aberration")),
    "occlusion": (ops_occlusion, ("random_patches", "text_overlay", "cutout")),
}
EXTENDED = [name for _, names in MODULES.values() for name in names]
MOVING = {"glass_blur", "color_bleed", "random_crop", "random_aspect_crop", "perspective", "rotate_scale", "shear",
          "elastic", "barrel_distortion", "pixel_shuffle", "chromatic_aberration"}


def scene(height: int = 64, width: int = 64, seed: int = 0) -> np.ndarray:
    """Gradients, a disc, a bright square and mild texture: something for every operator to act on."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([40 + 160 * xx / width, 50 + 140 * yy / height, 150 - 60 * xx * yy / (height * width)], -1)
    image[(yy - 0.6 * height) ** 2 + (xx - 0.35 * width) ** 2 < (0.2 * height) ** 2] = (210, 60, 50)
    image[(np.abs(yy - 0.25 * height) < 6) & (np.abs(xx - 0.72 * width) < 6)] = (250, 248, 235)
    image += np.random.default_rng(seed).normal(0, 4, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def run(name: str, image: np.ndarray, level: float = 3, seed: int = 0, **options) -> np.ndarray:
    degrader = fdcore.get_degrader(name) if not options else type(fdcore.get_degrader(name))(**options)
    return degrader(image, level / 5, np.random.default_rng(seed))


def flat(value, height: int = 64, width: int = 64) -> np.ndarray:
    return np.full((height, width, 3), value, dtype=np.uint8)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


# ------------------------------------------------------------------------------------------------- registration


def test_every_extended_operator_is_registered_with_its_category():
    for category, (module, names) in MODULES.items():
        assert tuple(cls.name for cls in module.OPERATORS) == names
        for cls in module.OPERATORS:
            assert cls.category == category
            assert len(cls.levels) == 5
            registered = type(fdcore.get_degrader(cls.name))
            assert registered is cls
    assert len(EXTENDED) == len(set(EXTENDED)) == 48


def test_pixel_moving_flags():
    for name in EXTENDED:
        assert fdcore.get_degrader(name).moves_pixels == (name in MOVING), name
    assert {name for name in EXTENDED if fdcore.get_degrader(name).changes_size} == {"random_crop",
                                                                                  "random_aspect_crop"}


@pytest.mark.parametrize("name", EXTENDED)
def test_records_are_json_and_thin_images_work(name):
    degrader = fdcore.get_degrader(name)
    json.dumps(degrader.parameters(0.6))
    for shape in ((2, 10000, 3), (10000, 2, 3)):
        image = np.random.default_rng(1).integers(0, 256, shape, dtype=np.uint8)
        out = degrader(image, 1.0, np.random.default_rng(0))
        assert out.dtype == np.uint8 and out.shape[2] == 3
        if not degrader.changes_size:
            assert out.shape == image.shape


# ------------------------------------------------------------------------------------------------------- blur


def point_image(y: int = 32, x: int = 32, size: int = 64) -> np.ndarray:
    image = flat(0, size, size)
    image[y, x] = 255
    return image


def test_motion_blur_spreads_a_point_along_one_centred_line():
    out = run("motion_blur", point_image(), level=3)[..., 0].astype(np.float64)  # 15-tap line
    ys, xs = np.nonzero(out)
    assert 12 <= len(ys) <= 16
    assert abs(np.average(ys, weights=out[ys, xs]) - 32) < 0.6 and abs(np.average(xs, weights=out[ys, xs]) - 32) < 0.6
    # collinear: the second singular value of the centred coordinates is ~0
    coords = np.stack([ys - ys.mean(), xs - xs.mean()], 1)
    singular = np.linalg.svd(coords, compute_uv=False)
    assert singular[1] < 0.2 * singular[0]


def test_defocus_blur_spreads_a_point_over_a_disk_of_the_level_radius():
    out = run("defocus_blur", point_image(), level=3)[..., 0]  # radius 6: 255 spread over ~113 px
    ys, xs = np.nonzero(out > 0)
    radii = np.hypot(ys - 32, xs - 32)
    assert 5.5 <= radii.max() <= 7.5
    assert np.pi * 5 ** 2 <= len(ys) <= np.pi * 8 ** 2


def test_zoom_blur_smears_radially_and_keeps_the_centre():
    image = flat(0)
    image[28:37, 28:37] = 255  # at the centre: stays centred
    image[10, 54] = 255  # upper-right point: smeared along the ray from the centre
    out = run("zoom_blur", image, level=5)[..., 0].astype(np.float64)
    centre = out[20:44, 20:44]
    yy, xx = np.mgrid[20:44, 20:44]
    assert abs(np.average(yy, weights=centre) - 32) < 0.7 and abs(np.average(xx, weights=centre) - 32) < 0.7
    region = out[0:22, 42:64]
    ys, xs = np.nonzero(region > 0)
    coords = np.stack([ys - ys.mean(), xs - xs.mean()], 1).astype(float)
    direction = np.linalg.svd(coords, full_matrices=False)[2][0]
    ray = np.array([10 - 31.5, 54 - 31.5]) / np.hypot(10 - 31.5, 54 - 31.5)
    assert abs(float(direction @ ray)) > 0.9


def test_glass_blur_scatters_locally_and_keeps_brightness():
    image = scene()
    out = run("glass_blur", image, level=5)
    assert abs(float(out.mean()) - float(image.mean())) < 2.0
    point = run("glass_blur", point_image(), level=5)[..., 0]
    ys, xs = np.nonzero(point)
    assert np.hypot(ys - 32, xs - 32).max() <= 4 * 2 + 2 * 3 * 1.5  # 2 rounds of <= 4 px plus two blurs


def test_atmospheric_blur_has_a_wider_halo_than_its_core():
    image = flat(0, 64, 96)
    image[:, :48] = 255
    out = run("atmospheric_blur", image, level=5).astype(np.float64)[32, :, 0]
    # core sigma 2.5 px: a single Gaussian leaves nothing 15 px past the edge; the 3x and 8x halo lobes do
    assert out[48 + 15] >= 3 and out[48 + 30] >= 1
    assert out[40] > out[48 + 15]


# ------------------------------------------------------------------------------------------------------ noise


def test_shot_noise_is_poisson():
    for value in (40, 100):
        out = run("shot_noise", flat(value, 128, 128), level=2).astype(np.float64)
        photons = 30.0  # level 2: scale 1/30
        expected_var = (255.0 / photons) ** 2 * photons * value / 255.0
        assert abs(out.mean() - value) < 2.0
        assert 0.85 < out.var() / expected_var < 1.15
    assert not run("shot_noise", flat(0), level=5).any()  # no light, no photons


def test_iso_noise_has_correlated_chroma_and_white_luma():
    out = run("iso_noise", flat(128, 128, 128), level=5).astype(np.float64) - 128.0
    y = 0.299 * out[..., 0] + 0.587 * out[..., 1] + 0.114 * out[..., 2]
    cr = out[..., 0] - y

    def lag1(plane):
        return np.corrcoef(plane[:, :-1].ravel(), plane[:, 1:].ravel())[0, 1]

    assert abs(lag1(y)) < 0.15
    assert lag1(cr) > 0.3


def test_speckle_noise_scales_with_brightness():
    dark = run("speckle_noise", flat(50, 128, 128), level=3).astype(np.float64).std()
    bright = run("speckle_noise", flat(200, 128, 128), level=3).astype(np.float64).std()
    assert 3.3 < bright / dark < 4.7


def test_film_grain_is_monochrome_and_strongest_in_midtones():
    mid = run("film_grain", flat(128), level=5).astype(np.int16)
    assert np.array_equal(mid[..., 0], mid[..., 1]) and np.array_equal(mid[..., 1], mid[..., 2])
    dark = run("film_grain", flat(10), level=5).astype(np.float64)
    assert mid.std() > 2 * dark.std() > 0


# ------------------------------------------------------------------------------------------------ compression


def test_jpeg_subsampling_modes_decode_and_420_loses_more_chroma():
    image = scene()
    full = run("jpeg_subsampling", image, level=2, subsampling="4:4:4")
    sub = run("jpeg_subsampling", image, level=2, subsampling="4:2:0")
    assert not np.array_equal(full, image) and not np.array_equal(sub, image)
    assert psnr(full, image) > psnr(sub, image)
    with pytest.raises(ValueError, match="jpeg_subsampling"):
        type(fdcore.get_degrader("jpeg_subsampling"))(subsampling="4:1:1")


def test_double_jpeg_differs_from_one_compression():
    from fdcore.degradations.codecs import jpeg_roundtrip

    image = scene()
    out = run("double_jpeg", image, level=3)
    assert not np.array_equal(out, image)
    assert not np.array_equal(out, jpeg_roundtrip(image, 55))
    assert np.array_equal(out, run("double_jpeg", image, level=3))


@pytest.mark.parametrize("subsampling", ["4:4:4", "4:2:2", "4:2:0"])
def test_jpeg_roundtrip_is_pixel_identical_to_pillows_libjpeg(subsampling):
    """The OpenCV path must be the same codec as Pillow's: standard IJG tables scaled by quality, the same chroma
    subsampling, ISLOW DCT, fancy upsampling. Odd sizes exercise partial MCUs."""
    import io

    from PIL import Image

    from fdcore.degradations.codecs import jpeg_roundtrip

    codes = {"4:4:4": 0, "4:2:2": 1, "4:2:0": 2}
    for image in (scene(), scene(37, 21, seed=1), np.random.default_rng(2).integers(0, 256, (9, 30, 3), np.uint8)):
        for quality in (4, 24, 43, 75, 100):
            buffer = io.BytesIO()
            Image.fromarray(image).save(buffer, format="JPEG", quality=quality, subsampling=codes[subsampling])
            expected = np.asarray(Image.open(buffer).convert("RGB"))
            assert np.array_equal(jpeg_roundtrip(image, quality, subsampling), expected), (image.shape, quality)
    with pytest.raises(ValueError, match="4:1:1"):
        jpeg_roundtrip(scene(), 50, "4:1:1")


def test_jpeg2000_records_its_codec_settings_and_refuses_older_records():
    """The colour transform changed the codec's output (ICT since this version): a record made without the codec
    settings must not replay silently into a different image."""
    from fdcore.degradations.policy import ReplayError

    image = scene()
    out, record = fdcore.apply_policy(image, {"branches": [{"ops": ["jpeg2000"]}]}, seed=0)
    params = record["ops"][0]["params"]
    assert params["color_transform"] == "ICT" and params["wavelet"] == "9/7 irreversible"
    assert params["ratio_excludes_headers"] is True
    assert np.array_equal(fdcore.replay(record, image), out)
    for kept in ({"compression_ratio"}, {"compression_ratio", "color_transform", "wavelet"}):  # earlier versions
        older = json.loads(json.dumps(record))
        older["ops"][0]["params"] = {key: params[key] for key in kept}
        with pytest.raises(ReplayError, match="changed"):
            fdcore.replay(older, image)


@pytest.mark.parametrize("name", ["jpeg2000", "jpeg_jpeg2000_chain"])
def test_jpeg2000_keeps_small_images_coded(name):
    """The ratio counts image data, not the ~150-byte headers: at level 5 a 96x96 image (raw 27,648 bytes, 92 at
    ratio 300) still keeps its colours and about the distortion a large image gets, instead of decoding to a flat
    grey or tinted square."""
    large = scene(384, 384)
    small = np.asarray(Image.fromarray(large).resize((96, 96), Image.Resampling.BOX))
    for image in (small, large):
        out = run(name, image, level=5)
        assert np.abs(out.reshape(-1, 3).mean(0) - image.reshape(-1, 3).mean(0)).max() < 3.0
        assert psnr(out, image) > 24.0


def test_jpeg2000_and_webp_are_real_codecs():
    from PIL import features

    image = scene()
    for name in ("jpeg2000", "webp", "jpeg_jpeg2000_chain"):
        if not features.check("jpg_2000" if "2000" in name else "webp"):
            pytest.skip(f"Pillow lacks the codec for {name}")
        mild, strong = run(name, image, level=1), run(name, image, level=5)
        assert not np.array_equal(mild, image)
        assert psnr(mild, image) > 25.0
        assert psnr(strong, image) < psnr(mild, image)
    chain = run("jpeg_jpeg2000_chain", image, level=3)
    assert not np.array_equal(chain, run("jpeg2000", image, level=3))


def test_missing_codec_gives_a_clear_error(monkeypatch):
    from PIL import features

    monkeypatch.setattr(features, "check", lambda name: False)
    for name in ("jpeg2000", "webp"):
        with pytest.raises(CodecUnavailableError, match=name):
            run(name, scene())


def test_color_banding_and_gif_palette_limit_the_colours():
    image = scene()
    banded = run("color_banding", image, level=4)  # 8 levels per channel
    for channel in range(3):
        assert len(np.unique(banded[..., channel])) <= 8
    palette = run("gif_palette", image, level=4)  # 16 colours
    assert len(np.unique(palette.reshape(-1, 3), axis=0)) <= 16


def test_social_media_chain_keeps_the_size_and_loses_detail():
    image = scene()
    out = run("social_media_chain", image, level=5)
    assert out.shape == image.shape and psnr(out, image) < 40


# ----------------------------------------------------------------------------------------------------- colour


def ramp() -> np.ndarray:
    return np.repeat(np.repeat(np.arange(256, dtype=np.uint8)[None, :, None], 4, axis=0), 3, axis=2)


def test_tone_curve_and_gamma_are_monotone_maps():
    for name in ("tone_curve", "gamma"):
        for seed in range(4):
            out = run(name, ramp(), level=5, seed=seed).astype(int)
            assert (np.diff(out[0], axis=0) >= 0).all(), name
            assert not np.array_equal(out, ramp())


def test_gamma_brightens_or_darkens_everywhere():
    for seed in range(6):
        out = run("gamma", ramp(), level=3, seed=seed).astype(int)[0, 1:255, 0] - np.arange(1, 255)
        assert (out >= 0).all() or (out <= 0).all()


def test_clahe_raises_local_contrast_and_keeps_hue():
    rng = np.random.default_rng(0)
    base = np.clip(100 + rng.normal(0, 5, (64, 64, 1)), 0, 255)
    image = np.clip(base + np.array([20.0, 0.0, -20.0]), 0, 255).astype(np.uint8)
    out = run("clahe", image, level=5).astype(np.float64)
    assert out.mean(axis=2).std() > 1.5 * image.astype(np.float64).mean(axis=2).std()
    assert np.abs((out[..., 0] - out[..., 2]) - 40.0).mean() < 1.5


def test_color_cast_is_a_per_channel_gain():
    image = flat(100)
    image[:, 32:] = 50
    out = run("color_cast", image, level=5).astype(np.float64)
    gains_left, gains_right = out[0, 0] / 100.0, out[0, 40] / 50.0
    assert np.allclose(gains_left, gains_right, atol=0.03)
    assert np.ptp(gains_left) > 0.1


def test_rgb_shift_adds_a_constant_per_channel():
    image = scene()
    image = np.clip(image, 70, 185).astype(np.uint8)  # away from clipping
    out = run("rgb_shift", image, level=3).astype(int)
    shift = out - image.astype(int)
    for channel in range(3):
        assert len(np.unique(shift[..., channel])) == 1
        assert 13 <= abs(int(shift[0, 0, channel])) <= 26


def test_color_bleed_delays_chroma_but_not_luma():
    image = flat(128)
    image[:, 32:] = (200, 60, 60)
    out = run("color_bleed", image, level=5).astype(np.float64)
    luma_in = image.astype(np.float64) @ [0.299, 0.587, 0.114]
    luma_out = out @ [0.299, 0.587, 0.114]
    assert np.abs(luma_out - luma_in).max() < 2.0
    redness = out[0, :, 0] - out[0, :, 1]
    half_way = int(np.argmax(redness >= redness.max() / 2))
    assert half_way >= 34 and redness[36] < redness[60]  # the colour edge arrives late (4 px) and soft


def test_fading_lowers_saturation_and_contrast():
    image = scene()
    out = run("fading", image, level=5).astype(np.float64)
    original = image.astype(np.float64)
    assert np.ptp(out, axis=2).mean() < 0.6 * np.ptp(original, axis=2).mean()
    assert out.mean(axis=2).std() < original.mean(axis=2).std()


# -------------------------------------------------------------------------------------------------- geometric


def find(sub: np.ndarray, image: np.ndarray) -> bool:
    height, width = sub.shape[:2]
    return any(np.array_equal(image[top:top + height, left:left + width], sub)
               for top in range(image.shape[0] - height + 1) for left in range(image.shape[1] - width + 1))


def test_random_crop_is_an_unresampled_window_of_the_level_size():
    image = scene(64, 80)
    for level, keep in ((1, 0.9), (5, 0.5)):
        out = run("random_crop", image, level=level, seed=level)
        assert out.shape == (round(64 * keep), round(80 * keep), 3)
        assert find(out, image)


def test_random_aspect_crop_cuts_one_side_only():
    image = scene(64, 80)
    shapes = set()
    for seed in range(8):
        out = run("random_aspect_crop", image, level=5, seed=seed)  # ratio 2
        assert out.shape in ((32, 80, 3), (64, 40, 3))
        assert find(out, image)
        shapes.add(out.shape)
    assert len(shapes) == 2


def test_downscale_keeps_the_size_and_removes_fine_detail():
    checker = ((np.indices((64, 64)).sum(axis=0) % 2) * 255).astype(np.uint8)[..., None].repeat(3, axis=2)
    out = run("downscale", checker, level=5)
    assert out.shape == checker.shape
    assert out.astype(np.float64).std() < 0.3 * checker.astype(np.float64).std()


def test_warps_move_pixels_and_fill_the_frame():
    image = flat(0)
    image[2:-2, 2:-2] = scene()[2:-2, 2:-2]  # a black frame: a warp that invented borders would show it less
    interior_black = (image[2:-2, 2:-2].max(axis=2) == 0).mean()
    for name in ("perspective", "rotate_scale", "shear", "barrel_distortion"):
        for seed in range(3):
            out = run(name, image, level=5, seed=seed)
            assert out.shape == image.shape
            assert not np.array_equal(out, image)
            # zooming in to fill the frame never brings in more black than the frame had
            assert (out.max(axis=2) < 8).mean() <= (image.max(axis=2) < 8).mean() + interior_black + 0.01, name


def test_barrel_distortion_fixes_the_centre():
    image = scene(65, 65)
    out = run("barrel_distortion", image, level=5)
    assert np.abs(out[32, 32].astype(int) - image[32, 32].astype(int)).max() <= 1


def test_elastic_moves_pixels_but_keeps_the_histogram():
    image = scene(128, 128)
    out = run("elastic", image, level=5)
    assert psnr(out, image) < 30
    hist_in = np.histogram(image, bins=32, range=(0, 256))[0]
    hist_out = np.histogram(out, bins=32, range=(0, 256))[0]
    assert np.abs(hist_in - hist_out).sum() / hist_in.sum() < 0.1


def test_pixelate_produces_constant_blocks():
    image = scene(64, 70)
    out = run("pixelate", image, level=4)  # 6 px blocks
    for top in range(0, 64, 6):
        for left in range(0, 70, 6):
            block = out[top:top + 6, left:left + 6].reshape(-1, 3)
            assert (block == block[0]).all()
            mean = image[top:top + 6, left:left + 6].reshape(-1, 3).mean(axis=0)
            assert np.abs(block[0] - mean).max() <= 1.0


def test_pixel_shuffle_permutes_within_2x2_blocks():
    image = np.random.default_rng(3).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = run("pixel_shuffle", image, level=5)  # probability 0.4
    blocks_in = image.reshape(32, 2, 32, 2, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 4, 3)
    blocks_out = out.reshape(32, 2, 32, 2, 3).transpose(0, 2, 1, 3, 4).reshape(-1, 4, 3)
    key = [0, 1, 2]
    for a, b in zip(blocks_in, blocks_out):
        assert sorted(map(tuple, a[:, key])) == sorted(map(tuple, b[:, key]))
    changed = np.mean([not np.array_equal(a, b) for a, b in zip(blocks_in, blocks_out)])
    assert 0.3 < changed < 0.5


# ---------------------------------------------------------------------------------------------- environmental


def test_fog_pulls_towards_a_bright_airlight_and_lowers_contrast():
    image = scene()
    out = run("fog", image, level=5).astype(np.float64)
    assert out.mean() > image.mean() + 20
    assert out.std() < 0.7 * image.astype(np.float64).std()


@pytest.mark.parametrize("name", ["light_leak", "lens_flare", "snow"])
def test_screen_blended_light_never_darkens(name):
    image = scene()
    out = run(name, image, level=4).astype(int)
    assert (out >= image.astype(int) - 1).all()
    assert out.mean() > image.mean() + 1


def test_rain_draws_bright_slanted_streaks():
    image = flat(60, 128, 128)
    out = run("rain", image, level=5).astype(np.float64)[..., 2]
    streaks = out > 90
    assert 0.01 < streaks.mean() < 0.5
    # streaks are elongated vertically (within +-20 degrees): vertical neighbours agree more than horizontal
    vertical = (streaks[1:, :] & streaks[:-1, :]).sum()
    horizontal = (streaks[:, 1:] & streaks[:, :-1]).sum()
    assert vertical > 2 * horizontal


def test_frost_is_denser_at_the_edges():
    image = flat(60, 128, 128)
    change = np.abs(run("frost", image, level=5).astype(np.float64) - 60).mean(axis=2)
    assert change[:16].mean() > 1.5 * change[48:80, 48:80].mean()


def test_vignetting_darkens_the_corners_only():
    image = flat(200)
    out = run("vignetting", image, level=5).astype(int)
    assert (out <= 200).all()
    assert out[0, 0, 0] < 120 and out[32, 32, 0] > 190


# ----------------------------------------------------------------------------------------------------- sensor


def test_blooming_smears_highlights_down_the_columns():
    image = flat(30, 128, 128)
    image[56:72, 56:72] = 255
    out = run("blooming", image, level=5).astype(int)
    assert (out >= image.astype(int)).all()
    below, beside = out[76, 64, 0] - 30, out[64, 76, 0] - 30  # 4 px from the square, below and beside
    assert below > beside >= 0


def test_dead_pixels_are_black_white_or_primary():
    image = flat(128, 100, 100)
    out = run("dead_pixels", image, level=5)  # 0.8 % of 10000 = 80 pixels
    changed = out[(out != image).any(axis=2)]
    assert len(changed) == 80
    allowed = {(0, 0, 0), (255, 255, 255), (255, 0, 0), (0, 255, 0), (0, 0, 255)}
    assert {tuple(int(v) for v in pixel) for pixel in changed} <= allowed


def test_fixed_pattern_noise_is_column_structured():
    out = run("fixed_pattern_noise", flat(128, 128, 128), level=5).astype(np.float64)
    column_means, row_means = out.mean(axis=(0, 2)), out.mean(axis=(1, 2))
    assert column_means.std() > 1.5 * row_means.std() > 0


def test_chromatic_aberration_misregisters_red_and_blue_only():
    image = scene(96, 96)
    out = run("chromatic_aberration", image, level=5)
    assert np.array_equal(out[..., 1], image[..., 1])
    assert not np.array_equal(out[..., 0], image[..., 0]) and not np.array_equal(out[..., 2], image[..., 2])
    # no displacement at the optical centre, growing towards the corners
    centre_error = np.abs(out[44:52, 44:52, 0].astype(int) - image[44:52, 44:52, 0]).mean()
    corner_error = np.abs(out[:12, :12, 0].astype(int) - image[:12, :12, 0]).mean()
    assert centre_error <= 1.0 < corner_error


# -------------------------------------------------------------------------------------------------- occlusion


def test_cutout_sets_regions_to_constants():
    image = scene()
    out = run("cutout", image, level=5)  # 22 % of the area
    changed = (out != image).any(axis=2)
    assert 0.1 < changed.mean() <= 0.23
    colours = {tuple(int(v) for v in pixel) for pixel in out[changed]}
    assert len(colours) <= 3


def test_random_patches_cover_about_the_level_area():
    image = scene(100, 100)
    changed = (run("random_patches", image, level=5) != image).any(axis=2).mean()  # 15 %
    assert 0.05 < changed <= 0.16


def test_text_overlay_uses_the_builtin_font_and_opacity_grows():
    image = scene(96, 128)
    outs = [run("text_overlay", image, level=level, seed=seed) for seed in (0, 1) for level in (1, 5)]
    for weak, strong in ((outs[0], outs[1]), (outs[2], outs[3])):
        changed = (strong != image).any(axis=2)
        assert 0.005 < changed.mean() < 0.9
        assert np.abs(strong.astype(int) - image).sum() > np.abs(weak.astype(int) - image).sum()
