"""``--precision int8``: CPU inference with int8 linear layers (dynamic quantisation).

Every ``nn.Linear`` of an expert is replaced by an :class:`Int8Linear`: its weight is quantised once, symmetrically
per output channel (int8, scale = max |w| / 127.5, the scheme of ``torch.ao``'s per-channel weight observer), and
each call quantises its input on the fly (per tensor, 7-bit range as fbgemm needs on AVX2) and runs an int8 GEMM
(``torch.ops.quantized.linear_dynamic``). Everything else (embeddings, normalisation, attention, the activations
between layers) stays float32.

Why not ``torch.ao.quantization.quantize_dynamic``: it computes the same thing but packs every weight three times
(twice for placeholder tensors) and quantises through a slow per-channel kernel: 6 s for a CLIP ViT-L/14 against
about 1.5 s here, paid at every load. Outputs are bit-identical (tests/test_int8.py).
"""

from __future__ import annotations

import warnings

import torch

# fbgemm's int8 x int8 products are summed in 16 bits on AVX2 CPUs; a 7-bit activation range avoids saturation.
REDUCE_RANGE = True


class Int8Linear(torch.nn.Module):
    """A frozen ``nn.Linear`` with int8 weights (per output channel) and dynamically quantised inputs."""

    def __init__(self, linear: torch.nn.Linear):
        super().__init__()
        weight = linear.weight.detach().to(torch.float32)
        self.in_features, self.out_features = linear.in_features, linear.out_features
        low, high = torch.aminmax(weight, dim=1)
        scale = (torch.maximum(-low, high) / 127.5).to(torch.float64).clamp_min(torch.finfo(torch.float32).eps)
        # weight x (1 / scale) in float32, rounded half to even: ATen's own quantisation arithmetic, bit for bit
        scaled = weight * torch.reciprocal(scale.to(torch.float32))[:, None]
        integers = scaled.round_().clamp_(-128, 127).to(torch.int8)
        del scaled
        zero_points = torch.zeros(self.out_features, dtype=torch.int64)
        with warnings.catch_warnings():
            # torch announces that quantised tensor types will go in a future release; fdcore pins torch 2.13,
            # where fbgemm's dynamic int8 GEMM is the fastest CPU path without AVX-512 BF16.
            warnings.filterwarnings("ignore", message=".*quantized tensor creation functions.*deprecated")
            quantised = torch._make_per_channel_quantized_tensor(integers, scale, zero_points, 0)
        bias = None if linear.bias is None else linear.bias.detach().to(torch.float32).clone()
        self._packed = torch.ops.quantized.linear_prepack(quantised, bias)

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if inputs.dtype != torch.float32:
            inputs = inputs.to(torch.float32)
        return torch.ops.quantized.linear_dynamic(inputs, self._packed, REDUCE_RANGE)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, int8 per-channel"


def quantize_int8(module: torch.nn.Module) -> torch.nn.Module:
    """Replace every ``nn.Linear`` inside ``module`` (in place) by an :class:`Int8Linear`; returns ``module``.

    The remaining floating-point parameters and buffers are copied into ordinary memory, so that weights which were
    memory-mapped from a checkpoint snapshot (fdcore.expert_io) are released once their linear layers are packed:
    quantising an ensemble holds one float expert at a time, not all of them.
    """
    module.eval()
    for parent in list(module.modules()):
        for name, child in list(parent.named_children()):
            # The exact type: subclasses such as MultiheadAttention's out_proj are read through ``.weight`` by
            # their parent module, so they stay float.
            if type(child) is torch.nn.Linear:
                setattr(parent, name, Int8Linear(child))
    for tensor in (*module.parameters(), *module.buffers()):
        tensor.data = tensor.data.clone()
    return module
