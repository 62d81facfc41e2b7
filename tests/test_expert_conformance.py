"""Every registered expert (built-in, the CLIP/SigLIP plugins, the third-party toy) honours the Expert contract.

Each is built small from its ``tiny_config()`` (random weights, no download). Checked: preprocessing output,
logits and probability shapes and dtypes, probabilities in [0, 1], determinism in eval mode, batch-size
independence, dense feature shapes, a JSON config that rebuilds the architecture, a bit-identical save/load round
trip, bf16 loading and CPU autocast, int8 dynamic quantisation (`--precision int8`). Also: importing the expert plugins loads neither torch nor transformers.
"""

import json
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from PIL import Image

import fdcore
from fdcore.preprocess import Preprocessing

EXPERTS = fdcore.list_experts()


def test_the_shipped_expert_plugins_are_registered():
    assert {"clip", "siglip", "npr", "toy"} <= set(EXPERTS)


def _tiny(name):
    expert_class = fdcore.get_expert_class(name)
    expert = expert_class(**expert_class.tiny_config()).eval()
    size = expert.preprocessing.size
    pixels = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(11))
    return expert_class, expert, pixels


@pytest.mark.parametrize("name", EXPERTS)
def test_outputs_are_well_formed_deterministic_and_batch_independent(name):
    expert_class, expert, pixels = _tiny(name)
    assert isinstance(expert.preprocessing, Preprocessing)
    images = [Image.fromarray(np.full((37, 61, 3), 90, np.uint8)), Image.new("L", (20, 50), 200)]
    batch = expert.preprocess(images)
    size = expert.preprocessing.size
    assert batch.shape == (2, 3, size, size) and batch.dtype == torch.float32
    with torch.no_grad():
        logits = expert(pixels)
        probabilities = expert.probabilities(pixels)
        again = expert.probabilities(pixels)
        one_by_one = torch.cat([expert.probabilities(pixels[i:i + 1]) for i in range(len(pixels))])
    assert logits.shape == (5, 2) and logits.is_floating_point()
    assert probabilities.shape == (5,) and probabilities.dtype == torch.float32
    assert torch.isfinite(probabilities).all() and (probabilities >= 0).all() and (probabilities <= 1).all()
    assert torch.equal(probabilities, again)
    torch.testing.assert_close(one_by_one, probabilities, atol=1e-5, rtol=0)
    described = expert_class.describe()
    assert isinstance(described.get("input_size"), int) and described["input_size"] > 0
    assert isinstance(described.get("parameters"), int) and described["parameters"] > 0


@pytest.mark.parametrize("name", EXPERTS)
def test_dense_features(name):
    _, expert, pixels = _tiny(name)
    with torch.no_grad():
        features = expert.features(pixels)
        logits, together = expert.forward_with_features(pixels)
        assert torch.equal(logits, expert(pixels))
    assert list(features) == list(expert.default_feature_layers) and features
    for layer, tokens in features.items():
        assert tokens.ndim == 3 and tokens.shape[0] == 5, (layer, tokens.shape)
        assert torch.equal(together[layer], tokens)
        if hasattr(expert, "feature_grid"):
            rows, columns = expert.feature_grid
            assert tokens.shape[1] == rows * columns


@pytest.mark.parametrize("name", EXPERTS)
def test_config_and_save_load_round_trip_is_bit_identical(name, tmp_path):
    expert_class, expert, pixels = _tiny(name)
    config = expert.get_config()
    assert json.loads(json.dumps(config)) == config
    rebuilt = expert_class.from_config(config)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in expert.state_dict().items()}
    fdcore.save_expert(expert, tmp_path / name)
    loaded = fdcore.load_expert(tmp_path / name)
    assert loaded.preprocessing == expert.preprocessing and not loaded.training
    with torch.no_grad():
        assert torch.equal(loaded(pixels), expert(pixels))
        if expert.default_feature_layers:
            original, reloaded = expert.features(pixels), loaded.features(pixels)
            assert all(torch.equal(original[layer], reloaded[layer]) for layer in original)
        reference = expert.probabilities(pixels)
        bf16 = fdcore.load_expert(tmp_path / name, dtype=torch.bfloat16)
        assert next(bf16.parameters()).dtype == torch.bfloat16
        from_bf16 = bf16.probabilities(pixels.to(torch.bfloat16))  # callers pass pixels in the weights' dtype
        with torch.autocast("cpu", dtype=torch.bfloat16):
            autocast = loaded.probabilities(pixels)
    for probabilities in (from_bf16, autocast):
        assert probabilities.dtype == torch.float32
        torch.testing.assert_close(probabilities, reference, atol=0.03, rtol=0)


@pytest.mark.parametrize("name", EXPERTS)
def test_int8_quantised_expert_stays_close_to_fp32(name, tmp_path):
    from fdcore.int8 import quantize_int8

    _, expert, pixels = _tiny(name)
    fdcore.save_expert(expert, tmp_path / name)
    quantised = quantize_int8(fdcore.load_expert(tmp_path / name))
    assert not any(type(module) is torch.nn.Linear for module in quantised.modules())
    assert any(type(module).__name__ == "Int8Linear" for module in quantised.modules())
    with torch.no_grad():
        reference = expert.probabilities(pixels)
        probabilities = quantised.probabilities(pixels)
        assert torch.equal(probabilities, quantised.probabilities(pixels))
    assert probabilities.dtype == torch.float32 and probabilities.shape == reference.shape
    torch.testing.assert_close(probabilities, reference, atol=0.02, rtol=0)


def test_importing_expert_plugins_loads_neither_torch_nor_transformers():
    code = textwrap.dedent("""
        import sys
        import fdcore_clip, fdcore_siglip, fdcore_npr, fdcore.cli
        heavy = sorted(name for name in ("torch", "transformers") if name in sys.modules)
        print(",".join(heavy))
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == ""


def test_fdcore_list_experts_shows_parameter_counts_and_input_sizes():
    from conftest import fdcore_command

    listed = {item["name"]: item for item in json.loads(fdcore_command("list", "experts", "--json", check=True).stdout)}
    assert (listed["clip"]["input_size"], listed["clip"]["parameters"]) == (224, 304_163_586)
    assert (listed["siglip"]["input_size"], listed["siglip"]["parameters"]) == (384, 428_521_282)
    assert listed["clip"]["provider"] == "fdcore-clip" and listed["siglip"]["provider"] == "fdcore-siglip"
    assert (listed["npr"]["input_size"], listed["npr"]["parameters"], listed["npr"]["provider"]) == \
        (224, 1_438_274, "fdcore-npr")
    from click.testing import CliRunner

    from fdcore.cli import cli

    table = CliRunner().invoke(cli, ["list", "experts"])
    assert table.exit_code == 0, table.output
    rows = {line.split()[0]: line.split() for line in table.output.splitlines()[1:]}
    assert rows["clip"][1:3] == ["224", "304163586"] and rows["siglip"][1:3] == ["384", "428521282"]
