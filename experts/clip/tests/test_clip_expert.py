"""The CLIP expert plugin: FeatDistill's architecture and preprocessing, pretrained loading through the real
``from_pretrained`` path (tiny model saved in the test), clear offline errors, dense features, checkpointing."""

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

# A tiny CLIP vision tower, written out here rather than taken from the plugin so the test is independent of it.
TINY = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2,
        "patch_size": 14, "image_size": 56, "projection_dim": 16, "hidden_act": "quick_gelu"}
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@pytest.fixture
def clip_class():
    return fdcore.get_expert_class("clip")


@pytest.fixture
def saved_backbone(tmp_path):
    torch.manual_seed(3)
    model = transformers.CLIPVisionModelWithProjection(transformers.CLIPVisionConfig(**TINY)).eval()
    directory = tmp_path / "clip-backbone"
    model.save_pretrained(directory)
    return model, directory


@pytest.mark.parametrize("check", EXPERT_CHECKS)
def test_fdcore_conformance(check):
    check_expert("clip", checks=check)


def test_registered_through_its_entry_point_with_featdistill_metadata(clip_class):
    described = fdcore.registry.describe("experts", "clip")
    assert described["provider"] == "fdcore-clip"
    assert described["input_size"] == 224
    # CLIP ViT-L/14 vision tower + projection (303,966,208) + head 768*256+256 + 256*2+2.
    assert described["parameters"] == 303_966_208 + 197_378
    assert described["backbone"] == "openai/clip-vit-large-patch14"
    assert clip_class.featdistill_tag == "clip"
    assert clip_class.default_feature_layers == ("block_6", "block_12", "block_18", "block_24")


def test_default_architecture_is_vit_l14_and_costs_nothing_to_describe(clip_class):
    with torch.device("meta"):
        expert = clip_class(backbone_config={})
    arch = expert.architecture
    assert (arch["hidden_size"], arch["num_hidden_layers"], arch["num_attention_heads"], arch["intermediate_size"],
            arch["patch_size"], arch["image_size"], arch["projection_dim"], arch["hidden_act"]) == \
        (1024, 24, 16, 4096, 14, 224, 768, "quick_gelu")
    assert [tuple(layer.weight.shape) for layer in (expert.classifier[0], expert.classifier[3])] == \
        [(256, 768), (2, 256)]
    assert isinstance(expert.classifier[1], torch.nn.ReLU) and expert.classifier[2].p == 0.3
    assert expert.feature_grid == (16, 16)
    assert expert.vision_encoder.config._attn_implementation == "sdpa"


def test_preprocessing_is_featdistill_clip_spec(clip_class):
    with torch.device("meta"):
        expert = clip_class(backbone_config={})
    pre = expert.preprocessing
    assert (pre.size, pre.resize, pre.interpolation) == (224, "short-side", "bicubic")
    assert pre.mean == CLIP_MEAN and pre.std == CLIP_STD
    # 500x300: short side 300 -> 224, long side int(224 * 500 / 300) = 373 (truncated), centre crop at round(74.5) = 74.
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (300, 500, 3), dtype=np.uint8))
    by_hand = image.resize((373, 224), Image.BICUBIC).crop((74, 0, 298, 224))
    assert np.array_equal(np.asarray(pre.resize_image(image)), np.asarray(by_hand))
    expected = (np.asarray(by_hand, dtype=np.float32) / 255.0 - np.array(CLIP_MEAN, np.float32)) / np.array(CLIP_STD,
                                                                                                          np.float32)
    tensor = expert.preprocess([image])
    assert tensor.shape == (1, 3, 224, 224) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor[0].permute(1, 2, 0).numpy(), expected, atol=1e-5)


def test_pretrained_backbone_loads_through_from_pretrained(clip_class, saved_backbone):
    model, directory = saved_backbone
    expert = fdcore.get_expert("clip", backbone=str(directory)).eval()
    saved = model.state_dict()
    loaded = expert.vision_encoder.state_dict()
    assert saved.keys() == loaded.keys() and all(torch.equal(saved[key], loaded[key]) for key in saved)
    assert expert.preprocessing.size == 56 and expert.feature_grid == (4, 4)
    pixels = torch.randn(3, 3, 56, 56, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = torch.softmax(expert.classifier(model(pixel_values=pixels).image_embeds), dim=-1)[:, 1]
        assert torch.equal(expert.probabilities(pixels), expected)
    # The recorded config rebuilds the architecture without the backbone directory.
    config = expert.get_config()
    for name in os.listdir(directory):
        os.remove(directory / name)
    rebuilt = clip_class.from_config(config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in expert.state_dict().items()}


def test_empty_backbone_directory_gives_a_clear_error(clip_class, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneUnavailableError) as caught:
        clip_class(backbone=str(tmp_path / "empty"))
    message = str(caught.value)
    assert str(tmp_path / "empty") in message
    assert "huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR" in message
    assert "--backbone DIR" in message


def test_offline_hub_gives_a_clear_error_not_a_traceback(tmp_path):
    code = textwrap.dedent("""
        import fdcore
        from fdcore.errors import FdcoreError
        for kwargs in ({"backbone": "fdcore-tests/no-such-repository"}, {}):
            try:
                fdcore.get_expert("clip", **kwargs)
            except FdcoreError as exc:
                print("ERROR:", exc)
    """)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf-home")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr
    errors = [line for line in result.stdout.splitlines() if line.startswith("ERROR:")]
    assert len(errors) == 2, result.stdout + result.stderr
    assert "'fdcore-tests/no-such-repository'" in errors[0]
    assert "'openai/clip-vit-large-patch14'" in errors[1]
    for line in errors:
        assert "huggingface-cli download openai/clip-vit-large-patch14 --local-dir DIR" in line
        assert "--backbone DIR" in line and "backbone_config" in line
    assert "Traceback" not in result.stderr


def test_features_are_block_outputs_without_the_class_token(clip_class):
    expert = clip_class(**clip_class.tiny_config()).eval()
    captured = {}
    for index, layer in enumerate(expert.vision_encoder.vision_model.encoder.layers, start=1):
        layer.register_forward_hook(
            lambda module, args, output, index=index: captured.__setitem__(
                index, output[0] if isinstance(output, tuple) else output))
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        features = expert.features(pixels, ["block_1", "block_2"])
        logits, together = expert.forward_with_features(pixels)
        assert torch.equal(logits, expert(pixels))
    rows, columns = expert.feature_grid
    for index in (1, 2):
        assert captured[index].shape[1] == 1 + rows * columns  # class token + patches
        assert torch.equal(features[f"block_{index}"], captured[index][:, 1:, :])
        assert torch.equal(together[f"block_{index}"], features[f"block_{index}"])
    with pytest.raises(ValueError, match="block_1 .. block_2"):
        expert.features(pixels, ["block_3"])


def test_gradient_checkpointing_gives_the_same_gradients(clip_class):
    def gradients(checkpointing):
        expert = clip_class(**clip_class.tiny_config())
        if checkpointing:
            expert.enable_gradient_checkpointing()
        assert expert.gradient_checkpointing_enabled == checkpointing
        calls = []
        # An early module inside the block: the block checkpoints its forward (hooks on inner modules see the replay,
        # which stops once the last saved tensor is recomputed).
        first_block = expert.vision_encoder.vision_model.encoder.layers[0]
        first_block.layer_norm1.register_forward_hook(lambda *args: calls.append(1))
        expert.train()
        torch.manual_seed(5)  # same dropout masks in both runs
        pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(4))
        logits, features = expert.forward_with_features(pixels)
        (logits.sum() + features["block_1"].pow(2).mean()).backward()
        assert len(calls) == (2 if checkpointing else 1)  # checkpointed blocks run again during backward
        return {name: p.grad.clone() for name, p in expert.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    assert plain.keys() == checkpointed.keys() and len(plain) > 10
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6)


def test_initialisation_follows_the_seed(clip_class):
    def weights(expert):
        return torch.cat([p.detach().flatten() for p in expert.parameters()])

    tiny = {"backbone_config": TINY}
    state = torch.random.get_rng_state()
    first, second = clip_class(**tiny, seed=1), clip_class(**tiny, seed=1)
    assert torch.equal(torch.random.get_rng_state(), state)  # an explicit seed leaves the global RNG alone
    assert torch.equal(weights(first), weights(second))
    assert not torch.equal(weights(first), weights(clip_class(**tiny, seed=2)))
    torch.manual_seed(9)
    from_global = clip_class(**tiny)  # seed=None: the global RNG (a training script's set_seed) decides
    torch.manual_seed(9)
    assert torch.equal(weights(from_global), weights(clip_class(**tiny)))
    assert from_global.get_config()["seed"] is None


def test_a_full_clip_repository_loads_only_its_vision_tower(tmp_path):
    # The layout of openai/clip-vit-large-patch14: a CLIPModel whose vision_config carries projection_dim.
    text = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2,
            "vocab_size": 99, "max_position_embeddings": 16, "bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 1}
    torch.manual_seed(6)
    full = transformers.CLIPModel(transformers.CLIPConfig(text_config=text, vision_config=TINY, projection_dim=16))
    full.save_pretrained(tmp_path / "full")
    expert = fdcore.get_expert("clip", backbone=str(tmp_path / "full")).eval()
    pixels = torch.randn(2, 3, 56, 56, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = full.visual_projection(full.vision_model(pixel_values=pixels).pooler_output)
        assert torch.equal(expert.vision_encoder(pixel_values=pixels).image_embeds, reference)


def test_weights_of_another_model_are_refused(clip_class, tmp_path):
    other = transformers.SiglipVisionModel(transformers.SiglipVisionConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, image_size=56, patch_size=14))
    other.save_pretrained(tmp_path / "other")
    with pytest.raises(fdcore.hf_expert.StateDictMismatchError, match="do not fit|lack"):
        clip_class(backbone=str(tmp_path / "other"))
