"""Loading experts without random initialisation and without a second copy of the weights: meta-built experts must
score bit-identically to eagerly built ones, non-persistent buffers must hold real values, anything the fast path
cannot handle must fall back to the eager path, and bad weights must still give clear errors."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import fdcore
from fdcore.expert_io import (ExpertFormatError, build_with_state, load_expert, parameters_on_meta, save_expert,
                              sha256_file, snapshot_file)
from fdcore.featdistill import load_featdistill_release

pytest.importorskip("transformers")


def _pixels(expert, count=3, seed=0):
    size = expert.preprocessing.size
    return torch.randn(count, 3, size, size, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("tag", ["clip", "siglip"])
def test_meta_built_expert_scores_exactly_like_the_eager_one(tag, tmp_path, monkeypatch):
    expert_class = fdcore.get_expert_class(tag)
    eager = expert_class(**expert_class.tiny_config()).eval()
    directory = save_expert(eager, tmp_path / tag)
    built = []
    original_init = expert_class.__init__

    def counting_init(self, *args, **kwargs):
        # records whether each construction ran with parameters on the meta device (the fast path)
        original_init(self, *args, **kwargs)
        built.append(next(self.parameters()).is_meta)

    monkeypatch.setattr(expert_class, "__init__", counting_init)
    loaded = load_expert(directory)
    assert built == [True], "load_expert built the expert eagerly (random init) instead of on the meta device"
    assert not loaded.training
    assert not [name for name, tensor in [*loaded.named_parameters(), *loaded.named_buffers()] if tensor.is_meta]
    # position_ids is a non-persistent buffer: not in the file, so it must come from the constructor, exactly.
    eager_buffers = dict(eager.named_buffers())
    assert any(name.endswith("position_ids") for name in eager_buffers)
    for name, buffer in loaded.named_buffers():
        assert torch.equal(buffer, eager_buffers[name]), name
    pixels = _pixels(eager)
    with torch.inference_mode():
        assert torch.equal(loaded.probabilities(pixels), eager.probabilities(pixels))
        assert torch.equal(loaded(pixels), eager(pixels))
    for (name, parameter), (_, reference) in zip(loaded.named_parameters(), eager.named_parameters()):
        assert parameter.dtype == reference.dtype and parameter.requires_grad and torch.equal(parameter, reference)


def test_featdistill_release_loads_on_meta_and_matches_the_eager_expert(tmp_path, monkeypatch):
    expert_class = fdcore.get_expert_class("siglip")
    eager = expert_class(**expert_class.tiny_config()).eval()
    release = tmp_path / "release"
    release.mkdir()
    # transformers < 4.31 also saved position_ids: it must be dropped, the constructor's buffer kept.
    state = {key: value.clone() for key, value in eager.state_dict().items()}
    state["vision_encoder.embeddings.position_ids"] = torch.full((1, 9), 7)
    torch.save({"model_state_dict": state}, release / "Expert_1_siglip.pth")
    (name, loaded), = load_featdistill_release(release, skip_hash_check=True,
                                               expert_config={"siglip": expert_class.tiny_config()})
    assert name == "expert_1" and not loaded.training
    assert torch.equal(loaded.vision_encoder.embeddings.position_ids, torch.arange(9).unsqueeze(0))
    pixels = _pixels(eager)
    with torch.inference_mode():
        assert torch.equal(loaded.probabilities(pixels), eager.probabilities(pixels))


def test_loaded_parameters_are_the_state_dict_tensors_not_copies():
    source = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    state = {key: value.clone() for key, value in source.state_dict().items()}
    calls = []

    def factory():
        calls.append(1)
        return nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))

    module, result = build_with_state(factory, lambda m, assign: m.load_state_dict(state, assign=assign))
    assert calls == [1] and not result.missing_keys and not result.unexpected_keys
    assert module[0].weight.data_ptr() == state["0.weight"].data_ptr()
    assert isinstance(module[0].weight, nn.Parameter) and module[0].weight.requires_grad


def test_half_precision_weights_are_cast_to_the_architecture_dtype_as_before():
    source = nn.Linear(4, 2)
    state = {key: value.half() for key, value in source.state_dict().items()}
    module, _ = build_with_state(lambda: nn.Linear(4, 2), lambda m, assign: m.load_state_dict(state, assign=assign))
    eager = nn.Linear(4, 2)
    eager.load_state_dict(state)
    assert module.weight.dtype == torch.float32 and isinstance(module.weight, nn.Parameter)
    assert torch.equal(module.weight, eager.weight) and torch.equal(module.bias, eager.bias)


class _Tied(nn.Module):
    def __init__(self):
        super().__init__()
        self.encoder = nn.Linear(3, 3, bias=False)
        self.decoder = nn.Linear(3, 3, bias=False)
        self.decoder.weight = self.encoder.weight


class _ValueDependent(nn.Module):
    """A constructor that reads its parameters' values: it cannot run on the meta device."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.initial_norm = float(self.linear.weight.detach().norm())


class _DerivedBuffer(nn.Module):
    """A non-persistent buffer computed from a parameter: on meta it would hold no values after loading."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(3, 3)
        self.register_buffer("scale", self.linear.weight.detach().abs().sum(), persistent=False)


@pytest.mark.parametrize("module_class", [_Tied, _ValueDependent, _DerivedBuffer])
def test_modules_the_fast_path_cannot_handle_fall_back_to_the_eager_path(module_class):
    source = module_class()
    state = {key: value.clone() for key, value in source.state_dict().items()}
    calls = []

    def factory():
        calls.append(1)
        return module_class()

    module, _ = build_with_state(factory, lambda m, assign: m.load_state_dict(state, assign=assign))
    assert len(calls) == 2, "expected the eager fallback"
    assert not [name for name, tensor in [*module.named_parameters(), *module.named_buffers()] if tensor.is_meta]
    for key, value in state.items():
        assert torch.equal(module.state_dict()[key], value)
    if module_class is _Tied:
        assert module.decoder.weight is module.encoder.weight


def test_parameters_on_meta_keeps_buffers_real_and_restores_the_patch():
    original = nn.Module.register_parameter
    with parameters_on_meta():
        norm = nn.BatchNorm1d(4)
    assert nn.Module.register_parameter is original
    assert norm.weight.is_meta and not norm.running_mean.is_meta and torch.equal(norm.running_var, torch.ones(4))
    assert not nn.Linear(2, 2).weight.is_meta


def _rewrite_weights(directory, state):
    """Replace model.safetensors and its manifest entry consistently (a well-formed but wrong expert)."""
    weights = directory / "model.safetensors"
    save_file(state, weights)
    manifest = json.loads((directory / "manifest.json").read_text())
    manifest["files"]["model.safetensors"] = {"size_bytes": weights.stat().st_size, "sha256": sha256_file(weights)}
    (directory / "manifest.json").write_text(json.dumps(manifest))


def test_missing_unexpected_and_misshapen_weights_are_clear_errors(tmp_path):
    expert = fdcore.get_expert("toy", width=4, seed=1)
    directory = save_expert(expert, tmp_path / "toy")
    state = load_file(directory / "model.safetensors")
    _rewrite_weights(directory, {key: value for key, value in state.items() if key != "head.bias"})
    with pytest.raises(ExpertFormatError, match=r"does not match the 'toy' architecture.*missing \['head.bias'\]"):
        load_expert(directory)
    _rewrite_weights(directory, {**state, "extra.weight": torch.zeros(2)})
    with pytest.raises(ExpertFormatError, match=r"unexpected \['extra.weight'\]"):
        load_expert(directory)
    _rewrite_weights(directory, {**state, "head.bias": torch.zeros(3)})
    with pytest.raises(ExpertFormatError, match=r"does not match the 'toy' architecture.*head.bias"):
        load_expert(directory)


def test_snapshot_is_sealed_and_does_not_follow_later_changes_to_the_file(tmp_path):
    path = tmp_path / "weights.bin"
    path.write_bytes(b"A" * 100_000)
    with snapshot_file(path) as snapshot:
        assert snapshot.size == 100_000 and snapshot.sha256 == sha256_file(path)
        path.write_bytes(b"B" * 100_000)
        assert snapshot.data == b"A" * 100_000
        if snapshot.path is not None:  # Linux: a sealed memfd
            with pytest.raises(OSError):
                with open(snapshot.path, "r+b") as handle:
                    handle.write(b"C")
            assert snapshot.data == b"A" * 100_000


@pytest.fixture
def toy_dir(tmp_path):
    expert = fdcore.get_expert("toy", width=4, seed=3).eval()
    return expert, save_expert(expert, tmp_path / "toy")


def test_platforms_without_memfd_load_from_bytes(toy_dir, monkeypatch):
    expert, directory = toy_dir
    monkeypatch.setattr("fdcore.expert_io._sealable_memfd", lambda: None)
    with snapshot_file(directory / "model.safetensors") as snapshot:
        assert snapshot.path is None and len(snapshot.data) == os.path.getsize(directory / "model.safetensors")
    pixels = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    assert torch.equal(load_expert(directory)(pixels), expert(pixels))
