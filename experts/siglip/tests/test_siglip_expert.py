"""The SigLIP expert plugin: FeatDistill's architecture and preprocessing, pretrained loading through the real
``from_pretrained`` path (tiny model saved in the test), clear offline errors, dense features, bf16."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import fdcore
from fdcore.hf_expert import BackboneUnavailableError
from fdcore.testing import EXPERT_CHECKS, check_expert

transformers = pytest.importorskip("transformers")

# A tiny SigLIP vision tower, written out here rather than taken from the plugin so the test is independent of it.
# 44 px with 14 px patches: floor(44 / 14) = 3 patches per side, like 384 / 14 -> 27 in the real model.
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "patch_size": 14, "image_size": 44, "hidden_act": "gelu_pytorch_tanh", "layer_norm_eps": 1e-6}


@pytest.fixture
def siglip_class():
    return fdcore.get_expert_class("siglip")


@pytest.fixture
def saved_backbone(tmp_path):
    torch.manual_seed(7)
    model = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(**TINY)).eval()
    directory = tmp_path / "siglip-backbone"
    model.save_pretrained(directory)
    return model, directory


@pytest.mark.parametrize("check", EXPERT_CHECKS)
def test_fdcore_conformance(check):
    check_expert("siglip", checks=check)


def test_registered_through_its_entry_point_with_featdistill_metadata(siglip_class):
    described = fdcore.registry.describe("experts", "siglip")
    assert described["provider"] == "fdcore-siglip"
    assert described["input_size"] == 384
    # SigLIP So400M/14 vision tower with its attention-pooling head (428,225,600) + head 1152*256+256 + 256*2+2.
    assert described["parameters"] == 428_225_600 + 295_682
    assert described["backbone"] == "google/siglip-so400m-patch14-384"
    assert siglip_class.featdistill_tag == "siglip"
    assert siglip_class.default_feature_layers == ("block_7", "block_14", "block_21", "block_27")


def test_default_architecture_is_so400m_384(siglip_class):
    with torch.device("meta"):
        expert = siglip_class(backbone_config={})
    arch = expert.architecture
    assert (arch["hidden_size"], arch["num_hidden_layers"], arch["num_attention_heads"], arch["intermediate_size"],
            arch["patch_size"], arch["image_size"], arch["hidden_act"], arch["layer_norm_eps"]) == \
        (1152, 27, 16, 4304, 14, 384, "gelu_pytorch_tanh", 1e-6)
    assert [tuple(layer.weight.shape) for layer in (expert.classifier[0], expert.classifier[3])] == \
        [(256, 1152), (2, 256)]
    assert expert.feature_grid == (27, 27)
    assert expert.vision_encoder.config._attn_implementation == "sdpa"


@pytest.mark.parametrize("width, height, resized, box", [
    (500, 300, (640, 384), (128, 0, 512, 384)),   # int(384 * 500 / 300) = 640, crop offset round(128.0)
    (300, 700, (384, 896), (0, 256, 384, 640)),   # portrait: int(384 * 700 / 300) = 896, offset round(256.0)
    (1000, 999, (384, 384), (0, 0, 384, 384)),    # int(384 * 1000 / 999) = 384.38 truncated to 384: no crop
])
def test_preprocessing_is_featdistill_siglip_spec(siglip_class, width, height, resized, box):
    with torch.device("meta"):
        expert = siglip_class(backbone_config={})
    pre = expert.preprocessing
    assert (pre.size, pre.resize, pre.interpolation) == (384, "short-side", "bicubic")
    assert pre.mean == (0.5, 0.5, 0.5) and pre.std == (0.5, 0.5, 0.5)
    image = Image.fromarray(np.random.default_rng(width).integers(0, 256, (height, width, 3), dtype=np.uint8))
    by_hand = image.resize(resized, Image.BICUBIC).crop(box)
    assert np.array_equal(np.asarray(pre.resize_image(image)), np.asarray(by_hand))
    tensor = expert.preprocess([image])[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(tensor, np.asarray(by_hand, dtype=np.float32) / 255.0 * 2.0 - 1.0, atol=1e-6)


def test_pretrained_backbone_loads_through_from_pretrained(saved_backbone):
    model, directory = saved_backbone
    expert = fdcore.get_expert("siglip", backbone=str(directory)).eval()
    saved, loaded = model.state_dict(), expert.vision_encoder.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[key], loaded[key]) for key in saved)
    assert expert.preprocessing.size == 44 and expert.feature_grid == (3, 3)
    pixels = torch.randn(3, 3, 44, 44, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.softmax(expert.classifier(model(pixel_values=pixels).pooler_output), dim=-1)[:, 1]
        assert torch.equal(expert.probabilities(pixels), expected)


def test_missing_weights_and_offline_hub_give_clear_errors(siglip_class, saved_backbone, tmp_path):
    _, directory = saved_backbone
    os.remove(directory / "model.safetensors")  # config without weights
    with pytest.raises(BackboneUnavailableError, match="hf download google/siglip-so400m-patch14-384"):
        siglip_class(backbone=str(directory))
    code = textwrap.dedent("""
        import fdcore
        from fdcore.errors import FdcoreError
        try:
            fdcore.get_expert("siglip", backbone="fdcore-tests/no-such-repository")
        except FdcoreError as exc:
            print("ERROR:", exc)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0 and "Traceback" not in result.stderr, result.stderr
    assert "huggingface-cli download google/siglip-so400m-patch14-384 --local-dir DIR" in result.stdout
    assert "--backbone DIR" in result.stdout


def test_features_are_all_tokens_of_the_block_outputs(siglip_class):
    expert = siglip_class(**siglip_class.tiny_config()).eval()
    captured = {}
    for index, layer in enumerate(expert.vision_encoder.encoder.layers, start=1):
        layer.register_forward_hook(
            lambda module, args, output, index=index: captured.__setitem__(
                index, output[0] if isinstance(output, tuple) else output))
    pixels = torch.randn(2, 3, 44, 44, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = expert.features(pixels)
    assert list(features) == ["block_1", "block_2"]
    for index in (1, 2):
        assert captured[index].shape[1] == 9  # no class token: 3 x 3 patches
        assert torch.equal(features[f"block_{index}"], captured[index])


def test_bf16_weights_and_cpu_autocast(siglip_class):
    expert = siglip_class(**siglip_class.tiny_config()).eval()
    pixels = torch.randn(4, 3, 44, 44, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        reference = expert.probabilities(pixels)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = expert.probabilities(pixels)
        expert.to(torch.bfloat16)
        bf16 = expert.probabilities(pixels)
        features = expert.features(pixels)
    for probabilities in (autocast, bf16):
        assert probabilities.dtype == torch.float32
        torch.testing.assert_close(probabilities, reference, atol=0.02, rtol=0)
    assert all(tensor.dtype == torch.bfloat16 for tensor in features.values())


def test_a_full_siglip_repository_loads_only_its_vision_tower(tmp_path):
    # The layout of google/siglip-so400m-patch14-384: a SiglipModel (text tower included).
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 99, "max_position_embeddings": 16}
    torch.manual_seed(6)
    full = transformers.SiglipModel(transformers.SiglipConfig(text_config=text, vision_config=TINY))
    full.save_pretrained(tmp_path / "full")
    expert = fdcore.get_expert("siglip", backbone=str(tmp_path / "full")).eval()
    pixels = torch.randn(2, 3, 44, 44, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = full.vision_model(pixel_values=pixels).pooler_output
        assert torch.equal(expert.vision_encoder(pixel_values=pixels).pooler_output, reference)


def test_misspelt_backbone_config_keys_are_refused(siglip_class):
    with pytest.raises(ValueError, match=r"unknown backbone_config keys \['num_hiden_layers'\]"):
        siglip_class(backbone_config={"num_hiden_layers": 2})


def test_weights_in_the_older_transformers_key_layout_load(siglip_class):
    # transformers 4.x nested SiglipVisionModel's layers under "vision_model."; 5.x does not. Saved experts and
    # FeatDistill checkpoints may use either.
    source = siglip_class(**siglip_class.tiny_config())
    nested = {(key.replace("vision_encoder.", "vision_encoder.vision_model.", 1) if key.startswith("vision_encoder.")
               else key): value for key, value in source.state_dict().items()}
    assert any(key.startswith("vision_encoder.vision_model.") for key in nested)
    target = siglip_class(backbone_config=siglip_class.tiny_config()["backbone_config"], seed=1)
    target.load_state_dict(nested, strict=True)
    assert all(torch.equal(a, b) for a, b in zip(source.state_dict().values(), target.state_dict().values()))
    with pytest.raises(RuntimeError, match="Unexpected key"):
        target.load_state_dict({**nested, "vision_encoder.extra": torch.zeros(1)}, strict=True)
