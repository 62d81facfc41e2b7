"""NPR: neighbouring pixel relationships (Tan et al., "Rethinking the Up-Sampling Operations in CNN-based Generative
Network for Generalizable Deepfake Detection", CVPR 2024), as an fdcore expert.

Generators build images by up-sampling; up-sampling ties each pixel to its neighbours inside small blocks. NPR
exposes those ties: after ImageNet normalisation, every pixel minus the top-left pixel of its 2x2 block,

    r = x - up_nearest(down_nearest(x, 1/2), 2)        (zero at every block's top-left pixel)

and a small CNN reads ``r * 2/3``: the stem and first two stages of a ResNet-50 (3x3 convolution with stride 2,
3 -> 64 channels, batch norm, ReLU, 3x3 max-pool with stride 2; layer1: 3 bottlenecks, 256 channels; layer2: 4
bottlenecks, 512 channels, the first with stride 2), global average pooling and a linear head to the two logits.
About 1.44 M parameters, Kaiming-normal initialisation, trained from scratch: it needs no download.

The traces live in individual pixels, so the expert never resamples: its preprocessing is ``resize="native"``
(windows of the decoded pixels; a short side is completed by tiling). Training takes one seeded random window per
sample and epoch; inference averages the logits over a grid of ``crops`` windows spread over the image, so a
4000x3000 photograph is judged from its own pixels with memory bounded by the window size.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

import fdcore

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
NPR_SCALE = 2.0 / 3.0  # the reference implementation feeds the residual at two thirds of its size
EXPANSION = 4  # ResNet bottleneck


def npr_residual(pixels: torch.Tensor) -> torch.Tensor:
    """``x - up_nearest(down_nearest(x, 1/2), 2)``: each pixel minus the top-left pixel of its 2x2 block.

    For even sizes this is exactly the reference's ``x - interpolate(interpolate(x, 0.5, 'nearest'), 2, 'nearest')``
    (nearest down-sampling by 2 keeps pixel (2i, 2j)); an odd last row or column is compared with the block above or
    to its left.
    """
    height, width = pixels.shape[-2:]
    anchors = pixels[..., ::2, ::2]
    upsampled = anchors.repeat_interleave(2, dim=-2).repeat_interleave(2, dim=-1)[..., :height, :width]
    return pixels - upsampled


class Bottleneck(nn.Module):
    """The ResNet-50 bottleneck: 1x1 reduce, 3x3 (carrying the stride), 1x1 expand, with a projected shortcut when
    the shape changes."""

    def __init__(self, in_channels: int, width: int, stride: int = 1):
        super().__init__()
        out_channels = width * EXPANSION
        self.conv1 = nn.Conv2d(in_channels, width, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(width)
        self.conv3 = nn.Conv2d(width, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = None
        if stride != 1 or in_channels != out_channels:
            self.downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                                            nn.BatchNorm2d(out_channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stage(in_channels: int, width: int, blocks: int, stride: int) -> nn.Sequential:
    layers = [Bottleneck(in_channels, width, stride)]
    layers += [Bottleneck(width * EXPANSION, width) for _ in range(blocks - 1)]
    return nn.Sequential(*layers)


def _positive_int(name: str, value, least: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < least:
        raise ValueError(f"npr expert: {name} must be an integer of at least {least}, got {value!r}")
    return value


class NPRExpert(fdcore.Expert):
    """NPR residual -> ResNet-50 stem + layer1 + layer2 -> average pool -> Linear(512, 2); native-resolution windows.

    Args:
        crop_size: the window side in pixels (even; default 224, the paper's).
        crops: windows per image at inference (a grid spread over the image, logits averaged); 1 = the centre window.
        width: stem channels (64 in the paper); stages have ``width`` and ``2 * width`` bottleneck widths.
        blocks: bottlenecks in layer1 and layer2 (``[3, 4]``, as ResNet-50).
    """

    name = "npr"
    description = ("NPR pixel-relationship CNN (CVPR 2024), trained from scratch; native-resolution windows, "
                   "never resampled")
    default_feature_layers: ClassVar[tuple[str, ...]] = ("layer1", "layer2")
    # The NPR paper's optimisation (Adam, lr 2e-4, batch 32, BCE) and no resampling degradations: `fdcore train
    # --expert npr` starts from these unless the command line says otherwise (docs/training.md, "NPR").
    training_defaults: ClassVar[dict] = {"lr": 2e-4, "weight_decay": 0.0, "batch_size": 32, "policy": "none",
                                         "epochs": 30, "stage2_epochs": 3, "warmup_fraction": 0.02}

    def __init__(self, crop_size: int = 224, crops: int = 4, width: int = 64, blocks: Sequence[int] = (3, 4)):
        super().__init__()
        crop_size = _positive_int("crop_size", crop_size, least=2)
        if crop_size % 2:
            raise ValueError(f"npr expert: crop_size must be even (the residual works on 2x2 blocks), got {crop_size}")
        crops = _positive_int("crops", crops)
        width = _positive_int("width", width)
        if not isinstance(blocks, (list, tuple)) or len(blocks) != 2:
            raise ValueError(f"npr expert: blocks must be two integers (layer1, layer2), got {blocks!r}")
        blocks = [_positive_int("blocks", value) for value in blocks]
        self.config = {"crop_size": crop_size, "crops": crops, "width": width, "blocks": blocks}
        self.preprocessing = fdcore.Preprocessing(size=crop_size, mean=IMAGENET_MEAN, std=IMAGENET_STD,
                                                  resize="native", crops=crops)
        self.conv1 = nn.Conv2d(3, width, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = _stage(width, width, blocks[0], stride=1)
        self.layer2 = _stage(width * EXPANSION, width * 2, blocks[1], stride=2)
        self.fc = nn.Linear(width * 2 * EXPANSION, 2)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)

    def _maps(self, pixels: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(npr_residual(pixels) * NPR_SCALE))))
        first = self.layer1(x)
        return {"layer1": first, "layer2": self.layer2(first)}

    def _logits(self, last: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(last, 1), 1))

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self._logits(self._maps(pixels)["layer2"])

    def features(self, pixels: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        return self.forward_with_features(pixels, layers)[1]

    def forward_with_features(self, pixels: torch.Tensor, layers: Sequence[str] | None = None):
        chosen = list(layers) if layers is not None else list(self.default_feature_layers)
        unknown = sorted(set(chosen) - {"layer1", "layer2"})
        if unknown:
            raise ValueError(f"npr expert has feature layers layer1 and layer2, not {unknown}")
        maps = self._maps(pixels)
        # [B, C, H, W] -> tokens [B, H*W, C], as the transformer experts' token maps
        return self._logits(maps["layer2"]), {name: maps[name].flatten(2).transpose(1, 2) for name in chosen}

    @classmethod
    def describe(cls) -> dict:
        with torch.device("meta"):
            parameters = sum(p.numel() for p in cls().parameters())
        return {"input_size": 224, "parameters": parameters}

    @classmethod
    def check_config(cls, config) -> None:
        """Sizes a saved NPR may have (anything larger is a tampered file, not a model)."""
        super().check_config(config)
        limits = {"crop_size": 4096, "crops": 64, "width": 1024}
        for key, limit in limits.items():
            value = config.get(key, 1)
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                raise ValueError(f"{key} must be an integer from 1 to {limit}, got {value!r}")
        blocks = config.get("blocks", [3, 4])
        if not isinstance(blocks, list) or len(blocks) != 2 or not all(
                isinstance(b, int) and not isinstance(b, bool) and 1 <= b <= 64 for b in blocks):
            raise ValueError(f"blocks must be two integers from 1 to 64, got {blocks!r}")

    @classmethod
    def tiny_config(cls) -> dict:
        return {"crop_size": 32, "crops": 1, "width": 8, "blocks": [1, 1]}

    @classmethod
    def demo_options(cls, image_size: int) -> dict:
        """A narrow NPR (16 stem channels, one bottleneck per stage) on 32 px windows, four per image."""
        return {"crop_size": min(32, image_size - image_size % 2), "crops": 4, "width": 16, "blocks": [1, 1]}
