"""``--precision int8``: fdcore.int8 computes exactly what torch.ao's dynamic quantisation computes, and releases
memory-mapped float weights once packed."""

import warnings

import torch

from fdcore.int8 import Int8Linear, quantize_int8


def _model(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.GELU(), torch.nn.LayerNorm(96),
                               torch.nn.Sequential(torch.nn.Linear(96, 7, bias=False))).eval()


def test_outputs_are_bit_identical_to_torch_ao_dynamic_quantisation():
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    inputs = torch.randn(3, 5, 48, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        reference = quantize_dynamic(_model(), {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8)
    ours = quantize_int8(_model())
    assert [type(m).__name__ for m in ours.modules()].count("Int8Linear") == 2
    assert not any(type(m) is torch.nn.Linear for m in ours.modules())
    with torch.inference_mode():
        assert torch.equal(ours(inputs), reference(inputs))
        float_output = _model()(inputs)
    assert (ours(inputs) - float_output).abs().max() < 0.05 * float_output.abs().max()


def test_bias_free_layer_and_non_float32_input():
    layer = Int8Linear(torch.nn.Linear(8, 4, bias=False))
    inputs = torch.randn(2, 8)
    with torch.inference_mode():
        assert torch.equal(layer(inputs.to(torch.float64)), layer(inputs))
    assert "int8" in repr(layer)


def test_memory_mapped_weights_are_released_after_quantising(tmp_path):
    from safetensors.torch import load_file, save_file

    model = _model()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp_path / "w.safetensors")
    mapped = load_file(tmp_path / "w.safetensors")
    fresh = _model(seed=5)
    fresh.load_state_dict(mapped, assign=True)
    pointers = {tensor.untyped_storage().data_ptr() for tensor in mapped.values()}
    quantize_int8(fresh)
    remaining = [*fresh.parameters(), *fresh.buffers()]
    assert remaining and not {t.untyped_storage().data_ptr() for t in remaining} & pointers
