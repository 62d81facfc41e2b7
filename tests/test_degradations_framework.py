"""The degradation framework: NTIRE 2026 operator tables and sampler, policies, seeds, records and replay, the
public API's type handling, worker-count independence, and the batched torch path's agreement with numpy."""

from __future__ import annotations

import collections
import json
import math

import numpy as np
import pytest
import torch
from PIL import Image

import fdcore
from fdcore import registry
from fdcore.degradations import color_spaces, kernels, lut, torch_ops
from fdcore.degradations.api import DegradationInputError
from fdcore.degradations.ntire import NTIRE_GROUPS, OPERATORS as NTIRE_OPERATORS
from fdcore.degradations.policy import (PolicyError, ReplayError, load_policy, operator_rng, sample_key,
                                        sampler_rng)
from test_degraders_conformance import synthetic_image

IMAGE = synthetic_image(48, 64)
NTIRE_LEVEL_PROBABILITIES = [0.293, 0.270, 0.213, 0.143, 0.081]
NTIRE_TABLE = {
    "gaussian_blur": ("blur", (0.1, 0.5, 1, 2, 5)),
    "lens_blur": ("blur", (1, 2, 4, 6, 8)),
    "color_shift": ("color_distortion", (1, 3, 6, 8, 12)),
    "color_saturation": ("color_distortion", (0.4, 0.2, 0.1, 0, -0.4)),
    "jpeg": ("jpeg", (43, 36, 24, 7, 4)),
    "white_noise": ("noise", (0.001, 0.002, 0.003, 0.005, 0.01)),
    "impulse_noise": ("noise", (0.001, 0.005, 0.01, 0.02, 0.03)),
    "brighten": ("brightness_change", (0.1, 0.2, 0.4, 0.7, 1.1)),
    "darken": ("brightness_change", (0.05, 0.1, 0.2, 0.4, 0.8)),
    "jitter": ("spatial_distortion", (0.05, 0.1, 0.2, 0.5, 1)),
    "quantization": ("spatial_distortion", (20, 16, 13, 10, 7)),
    "linear_contrast_change": ("sharpness_contrast", (0, 0.15, -0.4, 0.3, -0.6)),
}


def within(count: int, total: int, probability: float, sigmas: float = 4.5) -> bool:
    """A binomial count within ``sigmas`` standard deviations of its expectation."""
    expected = total * probability
    return abs(count - expected) <= sigmas * math.sqrt(total * probability * (1 - probability)) + 1


# ------------------------------------------------------------------------------------------- NTIRE operators

def test_ntire_operators_have_the_published_levels_and_groups():
    assert {cls.name for cls in NTIRE_OPERATORS} == set(NTIRE_TABLE)
    for cls in NTIRE_OPERATORS:
        group, levels = NTIRE_TABLE[cls.name]
        assert cls.group == group and cls.group in NTIRE_GROUPS
        assert tuple(cls.levels) == levels
        op = cls()
        for level, value in enumerate(levels, start=1):
            assert op.parameter(level / 5) == value  # exact, not interpolated to 3.9999999


def test_gaussian_blur_uses_matlab_kernel_sizes():
    op = fdcore.get_degrader("gaussian_blur")
    assert [op.parameters(level / 5)["kernel_size"] for level in range(1, 6)] == [3, 3, 5, 9, 21]
    taps = kernels.gaussian_kernel1d(2.0)
    assert taps.shape == (9,) and taps.sum() == pytest.approx(1.0) and taps[4] == taps.max()


def test_white_noise_variance_is_on_unit_range_images():
    flat = np.full((128, 128, 3), 128, np.uint8)
    out = fdcore.degrade(flat, "white_noise", level=5, seed=1)
    assert np.var(out.astype(np.float64) / 255) == pytest.approx(0.01, rel=0.05)


def test_jpeg_is_a_real_codec_roundtrip():
    import io

    buffer = io.BytesIO()
    Image.fromarray(IMAGE).save(buffer, format="JPEG", quality=24, subsampling="4:2:0")
    expected = np.asarray(Image.open(buffer).convert("RGB"))
    assert np.array_equal(fdcore.degrade(IMAGE, "jpeg", level=3), expected)


def test_brighten_and_darken_curves_pass_through_their_midpoints():
    for name, sign in (("brighten", 1), ("darken", -1)):
        op = fdcore.get_degrader(name)
        for level in range(1, 6):
            table = op.curve(level / 5)
            assert np.all(np.diff(table) >= 0) and table[0] == 0 and table[-1] == 1
            amount = op.parameter(level / 5)
            assert table[len(table) // 2] == pytest.approx(min(0.5 + sign * amount / 2, 1.0), abs=1e-6)
    # A neutral grey stays grey: the mean of the curve applied to the sRGB value and to its Lab lightness.
    grey = np.full((4, 4, 3), 128, np.uint8)
    out = fdcore.degrade(grey, "darken", level=5)
    curve = lut.monotone_cubic([0, 0.5, 1], [0, 0.5 - 0.8 / 2, 1])
    lightness = color_spaces.srgb_to_lab(grey)[0, 0, 0]
    lab_branch = color_spaces.lab_to_srgb(np.array([[[100 * curve(lightness / 100), 0, 0]]], np.float32))[0, 0, 0]
    expected = 255 * 0.5 * (curve(128 / 255) + lab_branch)
    assert np.all(out == out[0, 0, 0]) and abs(int(out[0, 0, 0]) - expected) <= 1


def test_color_saturation_keeps_hue_and_value_and_greys_at_zero():
    out = fdcore.degrade(IMAGE, "color_saturation", level=4)  # factor 0: every channel becomes the maximum
    assert np.array_equal(out[..., 0], IMAGE.max(axis=2)) and np.array_equal(out[..., 0], out[..., 2])


def test_impulse_noise_density():
    flat = np.full((200, 200, 3), 128, np.uint8)
    out = fdcore.degrade(flat, "impulse_noise", level=5, seed=2)
    hit = np.mean(out != 128)
    assert hit == pytest.approx(1 - math.exp(-0.03), rel=0.05)
    assert set(np.unique(out)) == {0, 128, 255}


def test_lab_conversion_matches_reference_values_and_round_trips():
    colours = np.array([[[255, 255, 255], [0, 0, 0], [255, 0, 0], [0, 0, 255], [128, 128, 128]]], np.uint8)
    lab = color_spaces.srgb_to_lab(colours)
    reference = [(100, 0, 0), (0, 0, 0), (53.24, 80.09, 67.20), (32.30, 79.19, -107.86), (53.59, 0, 0)]
    assert np.allclose(lab[0], reference, atol=0.05)
    back = color_spaces.lab_to_srgb(color_spaces.srgb_to_lab(IMAGE)) * 255
    assert np.abs(back - IMAGE).max() < 0.5


def test_relight_lab_equals_the_lab_round_trip_with_a_curve_on_lightness():
    """The shortcut used by brighten/darken (offset the three Lab companding values) is the same function as
    converting to Lab, replacing L by the curve and converting back."""
    table = lut.tone_curve_table((0.0, 0.5, 1.0), (0.0, 0.2, 1.0), samples=1021).astype(np.float32)
    colours = np.random.default_rng(3).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    lab = color_spaces.srgb_to_lab(colours)
    lab[..., 0] = 100 * lut.lookup(lab[..., 0] / 100, table)
    assert np.abs(color_spaces.relight_lab(colours, table) - color_spaces.lab_to_srgb(lab)).max() < 2e-4
    tiny = np.full((1, 1, 3), 77, np.uint8)
    assert color_spaces.relight_lab(tiny, table).shape == (1, 1, 3)


def test_apply_lut_matches_indexing_for_shared_and_per_channel_tables():
    rng = np.random.default_rng(4)
    shared, per_channel = rng.integers(0, 256, 256).astype(np.uint8), rng.integers(0, 256, (3, 256)).astype(np.uint8)
    for image in (IMAGE, IMAGE[:1, :1], np.ascontiguousarray(IMAGE[::3, ::2])):
        assert np.array_equal(lut.apply_lut(image, shared), shared[image])
        expected = np.stack([per_channel[c][image[..., c]] for c in range(3)], axis=-1)
        assert np.array_equal(lut.apply_lut(image, per_channel), expected)
    assert np.array_equal(lut.apply_lut(IMAGE[..., 0], shared), shared[IMAGE[..., 0]])


def test_monotone_cubic_never_overshoots():
    curve = lut.monotone_cubic([0, 0.3, 0.5, 0.7, 1], [0, 0.4, 0.5, 0.6, 1])
    values = curve(np.linspace(0, 1, 2001))
    assert np.all(np.diff(values) >= -1e-12)
    assert curve(np.array([0.3, 0.5]))[0] == pytest.approx(0.4)


# --------------------------------------------------------------------------------------------------- sampler

def test_seed_streams_are_distinct_and_stable():
    draws = {operator_rng(0, 0, i).integers(1 << 62) for i in range(5)} | {sampler_rng(0, 0).integers(1 << 62)}
    assert len(draws) == 6
    assert sample_key("a/b.png") == sample_key("a/b.png") != sample_key("a/c.png")
    assert sample_key("a/b.png") == 15831808015598417800  # the documented SHA-256 prefix; changing it breaks records
    with pytest.raises(ValueError):
        sampler_rng(-1, 0)


def test_ntire2026_sampler_matches_the_published_distribution():
    policy = load_policy("ntire2026")
    groups = {op: group for op, (group, _) in NTIRE_TABLE.items()}
    n = 4000
    k_counts, level_counts, group_counts, op_counts = (collections.Counter() for _ in range(4))
    orders = collections.Counter()
    for sample in range(n):
        branch, steps = policy.plan(seed=5, sample_id=sample)
        assert branch == "ntire2026" and 1 <= len(steps) <= 3
        chosen_groups = [groups[step.op] for step in steps]
        assert len(set(chosen_groups)) == len(chosen_groups)  # at most one operator per group
        k_counts[len(steps)] += 1
        for step in steps:
            level_counts[step.level] += 1
            group_counts[groups[step.op]] += 1
            op_counts[step.op] += 1
            assert step.severity == step.level / 5
        if len(steps) >= 2:
            orders[chosen_groups[0] < chosen_groups[1]] += 1
    for k in (1, 2, 3):
        assert within(k_counts[k], n, 1 / 3), k_counts
    total_ops = sum(level_counts.values())
    for level, probability in enumerate(NTIRE_LEVEL_PROBABILITIES, start=1):
        assert within(level_counts[level], total_ops, probability), (level_counts, total_ops)
    for group in NTIRE_GROUPS:  # each group appears in E[k]/7 = 2/7 of the images
        assert within(group_counts[group], n, 2 / 7), group_counts
    for a, b in (("gaussian_blur", "lens_blur"), ("white_noise", "impulse_noise"), ("brighten", "darken")):
        assert within(op_counts[a], op_counts[a] + op_counts[b], 0.5)
    assert within(orders[True], sum(orders.values()), 0.5)  # random order, not the listed one


def test_featdistill_policy_shares_and_never_mixes():
    policy = load_policy("featdistill")
    ntire = set(NTIRE_TABLE)
    n = 3000
    branches = collections.Counter()
    extended_levels = collections.Counter()
    for sample in range(n):
        branch, steps = policy.plan(seed=1, sample_id=sample)
        branches[branch] += 1
        names = {step.op for step in steps}
        if branch == "clean":
            assert not steps
        elif branch == "ntire2026":
            assert names <= ntire and 1 <= len(steps) <= 3
        else:
            assert names.isdisjoint(ntire) and 1 <= len(steps) <= 3 and len(names) == len(steps)
            extended_levels.update(step.level for step in steps)
    assert within(branches["clean"], n, 0.2)
    assert within(branches["ntire2026"], n, 0.4) and within(branches["extended"], n, 0.4)
    for level in range(1, 6):
        assert within(extended_levels[level], sum(extended_levels.values()), 0.2)


def test_preserve_alignment_removes_exactly_the_pixel_moving_operators():
    moving = {name for name in fdcore.list_degraders() if registry.get("degraders", name).moves_pixels}
    assert {"jitter", "color_shift"} <= moving
    for name in ("ntire2026", "featdistill", "ntire2026-test-like"):
        full = set(load_policy(name).operators())
        aligned = load_policy(name, preserve_alignment=True)
        assert set(aligned.operators()) == full - moving
        assert aligned.options["preserve_alignment"] is True
    aligned = load_policy("featdistill", preserve_alignment=True)
    for sample in range(300):
        _, steps = aligned.plan(0, sample)
        assert not {step.op for step in steps} & moving


def test_test_like_policy_chains_up_to_five_groups_with_compression_last():
    policy = load_policy("ntire2026-test-like")
    compression = set(policy.branches[0].groups[-1].ops)
    lengths = collections.Counter()
    for sample in range(800):
        _, steps = policy.plan(3, sample)
        lengths[len(steps)] += 1
        names = [step.op for step in steps]
        if any(name in compression for name in names):
            assert names[-1] in compression
    assert set(lengths) == {1, 2, 3, 4, 5}
    for required in ("motion_blur", "glass_blur", "shot_noise", "iso_noise", "speckle_noise", "clahe", "tone_curve",
                     "rgb_shift", "random_crop", "random_aspect_crop", "downscale", "perspective", "pixelate",
                     "double_jpeg", "jpeg2000", "jpeg_jpeg2000_chain"):
        assert required in policy.operators()


def test_policy_errors_are_clear():
    with pytest.raises(PolicyError, match="not_an_operator"):
        load_policy({"branches": [{"ops": ["jpeg", "not_an_operator"]}]})
    with pytest.raises(PolicyError, match="unknown key"):
        load_policy({"branches": [{"ops": ["jpeg"], "kk": 2}]})
    with pytest.raises(PolicyError, match="probabilities"):
        load_policy({"branches": [{"ops": ["jpeg"], "levels": {"probabilities": [1, 2]}}]})
    with pytest.raises(PolicyError, match="unknown option"):
        load_policy("ntire2026", preserve=True)
    with pytest.raises(PolicyError, match="unknown policy"):
        load_policy("no-such-policy")
    with pytest.raises(PolicyError, match="no operator is left"):
        load_policy({"branches": [{"ops": ["jitter"]}]}, preserve_alignment=True)


def test_policy_from_yaml_file_with_ordering_and_weights(tmp_path):
    spec = tmp_path / "mine.yaml"
    spec.write_text("branches:\n  - groups:\n      blur: [gaussian_blur]\n      jpeg: [jpeg]\n"
                    "      noise: [white_noise]\n    k: 3\n    levels: {uniform_strength: [0.3, 0.9]}\n"
                    "    first: [noise]\n    last: [jpeg]\n")
    policy = load_policy(spec)
    assert policy.name == "mine"
    for sample in range(20):
        _, steps = policy.plan(0, sample)
        assert [s.op for s in steps] == ["white_noise", "gaussian_blur", "jpeg"]
        assert all(0.3 <= s.severity <= 0.9 and s.level is None for s in steps)


# ---------------------------------------------------------------------------------------- records and replay

@pytest.mark.parametrize("policy", ["ntire2026", "featdistill", "ntire2026-test-like"])
def test_replay_reproduces_exactly(policy):
    for sample in range(12):
        out, record = fdcore.apply_policy(IMAGE, policy, seed=9, sample_id=sample)
        record = json.loads(json.dumps(record))  # records survive JSON
        assert set(record) == {"format", "policy", "options", "seed", "sample_id", "branch", "ops"}
        assert np.array_equal(fdcore.replay(record, IMAGE), out)
        again, same_record = fdcore.apply_policy(IMAGE, policy, seed=9, sample_id=sample)
        assert np.array_equal(again, out) and same_record == record


def test_replay_refuses_changed_parameters_and_unknown_operators():
    _, record = fdcore.apply_policy(IMAGE, {"branches": [{"ops": ["jpeg"]}]}, seed=0)
    tampered = json.loads(json.dumps(record))
    tampered["ops"][0]["params"]["quality"] = 99
    with pytest.raises(ReplayError, match="changed"):
        fdcore.replay(tampered, IMAGE)
    tampered["ops"][0] = {"op": "nope", "severity": 0.2}
    with pytest.raises(ReplayError, match="nope"):
        fdcore.replay(tampered, IMAGE)


def test_results_depend_only_on_seed_and_sample_id():
    a, _ = fdcore.apply_policy(IMAGE, "ntire2026", seed=4, sample_id="x.png")
    fdcore.apply_policy(IMAGE, "ntire2026", seed=4, sample_id="other.png")  # interleaved work changes nothing
    b, _ = fdcore.apply_policy(IMAGE, "ntire2026", seed=4, sample_id="x.png")
    assert np.array_equal(a, b)


class _DegradedDataset(torch.utils.data.Dataset):
    def __init__(self, images):
        self.images = images

    def __len__(self):
        return len(self.images)

    def __getitem__(self, index):
        out, _ = fdcore.apply_policy(self.images[index], "featdistill", seed=21, sample_id=index)
        return torch.from_numpy(np.ascontiguousarray(out))


def test_worker_count_does_not_change_results():
    images = [synthetic_image(32, 40) for _ in range(8)]
    in_process = [item for item in _DegradedDataset(images)]
    loader = torch.utils.data.DataLoader(_DegradedDataset(images), batch_size=3, num_workers=2,
                                         multiprocessing_context="fork")
    with_workers = [item for batch in loader for item in batch]
    assert len(with_workers) == len(in_process)
    assert all(torch.equal(a, b) for a, b in zip(in_process, with_workers))


# -------------------------------------------------------------------------------------------------- the API

def test_degrade_keeps_the_input_type_and_never_mutates():
    original = IMAGE.copy()
    as_array = fdcore.degrade(IMAGE, "gaussian_blur", level=4, seed=1)
    assert isinstance(as_array, np.ndarray) and np.array_equal(IMAGE, original)
    as_pil = fdcore.degrade(Image.fromarray(IMAGE), "gaussian_blur", level=4, seed=1)
    assert isinstance(as_pil, Image.Image) and np.array_equal(np.asarray(as_pil), as_array)
    tensor = torch.from_numpy(IMAGE).permute(2, 0, 1).to(torch.float64) / 255
    as_tensor = fdcore.degrade(tensor, "gaussian_blur", level=4, seed=1)
    assert as_tensor.dtype == torch.float64 and as_tensor.shape == tensor.shape
    assert torch.allclose(as_tensor, torch.from_numpy(as_array).permute(2, 0, 1).double() / 255)
    as_uint8 = fdcore.degrade(torch.from_numpy(IMAGE).permute(2, 0, 1), "gaussian_blur", level=4, seed=1)
    assert as_uint8.dtype == torch.uint8


def test_level_and_strength_are_the_same_scale():
    assert np.array_equal(fdcore.degrade(IMAGE, "white_noise", level=3, seed=2),
                          fdcore.degrade(IMAGE, "white_noise", strength=0.6, seed=2))
    assert np.array_equal(fdcore.degrade(IMAGE, "jpeg", strength=0.0), IMAGE)
    with pytest.raises(ValueError):
        fdcore.degrade(IMAGE, "jpeg", level=3, strength=0.5)
    with pytest.raises(ValueError):
        fdcore.degrade(IMAGE, "jpeg", level=6)


def test_bad_inputs_fail_loudly():
    with pytest.raises(DegradationInputError, match="uint8"):
        fdcore.degrade(IMAGE.astype(np.float32), "jpeg")
    with pytest.raises(DegradationInputError, match="RGB"):
        fdcore.degrade(Image.fromarray(IMAGE).convert("L"), "jpeg")
    with pytest.raises(DegradationInputError, match=r"\[0, 1\]"):
        fdcore.degrade(torch.full((3, 4, 4), 2.0), "jpeg")
    with pytest.raises(DegradationInputError, match="NaN"):
        fdcore.degrade(torch.full((3, 4, 4), float("nan")), "jpeg")
    with pytest.raises(fdcore.UnknownNameError, match="gaussian_blur"):
        fdcore.degrade(IMAGE, "gausian_blur")


# -------------------------------------------------------------------------------------------- the torch path

def _batch(image, copies):
    return torch.from_numpy(image).permute(2, 0, 1).float().div(255)[None].repeat(copies, 1, 1, 1)


@pytest.mark.parametrize("name", sorted(torch_ops.BATCHED))
def test_torch_path_agrees_with_numpy(name):
    severities = [0.2, 0.6, 1.0, 0.0]
    batch = _batch(IMAGE, len(severities))
    out = torch_ops.degrade_batch(batch, name, severities, seed=3, sample_ids=[0, 1, 2, 3])
    assert out.shape == batch.shape and out.dtype == batch.dtype
    op = fdcore.get_degrader(name)
    for index, severity in enumerate(severities):
        reference = op(IMAGE, severity, operator_rng(3, index, 0)).astype(np.float32) / 255
        mine = out[index].permute(1, 2, 0).numpy()
        if name in ("white_noise", "impulse_noise"):  # same distribution: checked on a flat grey below
            assert severity != 0 or np.array_equal((mine * 255).round(), IMAGE)
        else:
            tolerance = 2.0 if name in ("brighten", "darken") else 1.0
            assert np.abs(mine - reference).max() * 255 <= tolerance + 1e-3, name


@pytest.mark.parametrize("name", ["white_noise", "impulse_noise"])
def test_torch_noise_matches_numpy_in_distribution(name):
    grey = np.full((128, 128, 3), 128, np.uint8)
    severities = [0.6, 1.0]
    out = torch_ops.degrade_batch(_batch(grey, 2), name, severities, seed=5)
    op = fdcore.get_degrader(name)
    for index, severity in enumerate(severities):
        numpy_residual = np.abs(op(grey, severity, operator_rng(5, index, 0)) / 255 - 128 / 255).mean()
        torch_residual = (out[index] - 128 / 255).abs().mean().item()
        assert torch_residual == pytest.approx(numpy_residual, rel=0.15)


def test_torch_samples_do_not_depend_on_the_batch():
    batch = _batch(IMAGE, 3)
    together = torch_ops.degrade_batch(batch, "white_noise", [0.4, 0.8, 1.0], seed=1, sample_ids=[7, 8, 9])
    alone = torch_ops.degrade_batch(batch[1:2], "white_noise", [0.8], seed=1, sample_ids=[8])
    assert torch.allclose(together[1:2], alone, atol=1e-6)


def test_torch_fallback_is_exactly_numpy_and_size_changes_are_refused():
    batch = _batch(IMAGE, 2)
    out = torch_ops.degrade_batch(batch, "jpeg", [0.4, 1.0], seed=0, sample_ids=[0, 1])
    for index, severity in enumerate([0.4, 1.0]):
        expected = fdcore.get_degrader("jpeg")(IMAGE, severity, operator_rng(0, index, 0))
        assert torch.equal((out[index] * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(expected))
    resizing = [n for n in fdcore.list_degraders() if registry.get("degraders", n).changes_size]
    if resizing:
        with pytest.raises(ValueError, match="size"):
            torch_ops.degrade_batch(batch, resizing[0], 1.0)


def test_torch_policy_batch_uses_the_numpy_plans_and_replays():
    batch = _batch(IMAGE, 6)
    out, records = torch_ops.apply_policy_batch(batch, "ntire2026", seed=2, sample_ids=list(range(6)))
    policy = load_policy("ntire2026")
    for index, record in enumerate(records):
        _, steps = policy.plan(2, index)
        assert [(s["op"], s["severity"]) for s in record["ops"]] == [(s.op, s.severity) for s in steps]
    assert torch.equal(torch_ops.replay_batch(records, batch), out)


def test_docs_operator_table_matches_the_registry():
    from pathlib import Path

    from fdcore.builtin.degraders import TABLE_BEGIN, TABLE_END, operator_table_markdown

    document = (Path(__file__).resolve().parent.parent / "docs" / "degradations.md").read_text(encoding="utf-8")
    table = document.split(TABLE_BEGIN)[1].split(TABLE_END)[0].strip()
    assert table == operator_table_markdown(), (
        "docs/degradations.md is out of date; run: python -c \"from fdcore.builtin.degraders import "
        "sync_operator_table; sync_operator_table()\"")


@pytest.mark.parametrize("shape", [(2, 10000), (10000, 2), (1, 1)], ids=["2x10000", "10000x2", "1x1"])
def test_ntire_operators_handle_extreme_shapes(shape):
    image = synthetic_image(*shape)
    for cls in NTIRE_OPERATORS:
        out = fdcore.degrade(image, cls.name, level=5, seed=0)
        assert out.shape == image.shape and out.dtype == np.uint8


def test_remap_tiles_beyond_opencvs_size_limit_with_identical_pixels(monkeypatch):
    import cv2

    from fdcore.degradations import resampling

    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (90, 130, 3), dtype=np.uint8)
    rows, cols = np.mgrid[0:90, 0:130].astype(np.float32)
    map_x = cols + rng.normal(0, 4, cols.shape).astype(np.float32) - 3  # some samples fall outside the image
    map_y = rows + rng.normal(0, 4, rows.shape).astype(np.float32)
    for interpolation in (cv2.INTER_LINEAR, cv2.INTER_NEAREST):
        whole = resampling.remap_any_size(image, map_x, map_y, interpolation)
        monkeypatch.setattr(resampling, "_REMAP_MAX_SIDE", 64)  # pretend OpenCV's limit is 64 px: tiles of 32
        tiled = resampling.remap_any_size(image, map_x, map_y, interpolation, tile=32)
        monkeypatch.undo()
        assert np.array_equal(whole, tiled)


def test_images_beyond_a_codecs_size_limit_are_refused_by_name():
    from fdcore.degradations.base import ImageTooLargeError

    wide = np.zeros((2, 16400, 3), dtype=np.uint8)  # WebP stores at most 16383 px a side
    with pytest.raises(ImageTooLargeError, match=r"degrader 'webp': WEBP cannot store a 16400x2 image"):
        fdcore.degrade(wide, "webp", level=3)
    assert fdcore.degrade(wide, "jpeg", level=3).shape == wide.shape  # JPEG goes to 65500
