"""Per-expert preprocessing: resize, crop and normalise, described by data so that outputs can record it.

The resize reproduces torchvision's ``Resize(size)`` + ``CenterCrop(size)`` on PIL images (the FeatDistill
reference) without depending on torchvision: the short side goes to ``size``, the long side to
``int(size * long / short)`` (truncated), then a centre crop whose offset uses Python's ``round`` as torchvision does.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import TYPE_CHECKING, Any, Sequence

import numpy as np

if TYPE_CHECKING:
    import torch

# Bump when any resize/crop/normalise arithmetic changes: predictions record it and refuse to resume across it.
PREPROCESS_VERSION = "fdcore-preprocess-v1"

_INTERPOLATIONS = ("bicubic", "bilinear", "lanczos", "nearest")
_RESIZES = ("short-side", "squash", "crop")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How one expert turns an RGB image into its input tensor ``[3, size, size]``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # "short-side" (+ centre crop), "squash" (both sides to size) or "crop" (centre crop at native resolution;
    # an image smaller than size is first enlarged as "short-side" would)
    resize: str = "short-side"
    interpolation: str = "bicubic"

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"preprocessing size must be a positive integer, got {self.size!r}")
        if self.resize not in _RESIZES:
            raise ValueError(f"preprocessing resize must be one of {_RESIZES}, got {self.resize!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"preprocessing interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def geometry_key(self) -> tuple:
        """Experts with equal keys share one resized image (normalisation is applied per expert)."""
        return (self.size, self.resize, self.interpolation)

    def to_dict(self) -> dict[str, Any]:
        return {"version": PREPROCESS_VERSION, **dataclasses.asdict(self)}

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def identity(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def resize_image(self, image):
        """PIL RGB image -> PIL RGB image of ``size x size``."""
        from PIL import Image

        method = {"bicubic": Image.BICUBIC, "bilinear": Image.BILINEAR, "lanczos": Image.LANCZOS,
                  "nearest": Image.NEAREST}[self.interpolation]
        width, height = image.size
        if self.resize == "squash":
            return image.resize((self.size, self.size), method)
        if self.resize == "crop" and min(width, height) >= self.size:
            new_width, new_height = width, height
        else:
            new_width, new_height = resized_short_side(width, height, self.size)
        if (new_width, new_height) != (width, height):
            image = image.resize((new_width, new_height), method)
        top = int(round((new_height - self.size) / 2.0))
        left = int(round((new_width - self.size) / 2.0))
        if (new_width, new_height) == (self.size, self.size):
            return image
        return image.crop((left, top, left + self.size, top + self.size))

    def normalize(self, image) -> "torch.Tensor":
        """A resized PIL RGB image (or HxWx3 uint8 array) -> normalised float32 tensor ``[3, size, size]``."""
        import torch

        array = np.asarray(image, dtype=np.uint8)
        if array.shape != (self.size, self.size, 3):
            raise ValueError(f"expected a {self.size}x{self.size} RGB image after resizing, got {array.shape}")
        if not array.flags.writeable:  # PIL hands out read-only buffers; torch wants to own writable memory
            array = array.copy()
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1).to(torch.float32).div_(255.0)
        mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)
        return tensor.sub_(mean).div_(std)

    def __call__(self, image) -> "torch.Tensor":
        return self.normalize(self.resize_image(image))

    def batch(self, images: Sequence[Any]) -> "torch.Tensor":
        import torch

        if len(images) == 0:
            return torch.empty(0, 3, self.size, self.size)
        return torch.stack([self(to_rgb(image)) for image in images])


def resize_for_geometries(image, geometries: Sequence["Preprocessing"]) -> list[np.ndarray]:
    """One RGB PIL image -> one ``S x S x 3`` uint8 array per geometry: the expensive resize, done once per geometry
    however many experts share it (prediction, evaluation and the ensemble API all go through here)."""
    return [np.asarray(geometry.resize_image(image), dtype=np.uint8) for geometry in geometries]


def resized_short_side(width: int, height: int, size: int) -> tuple[int, int]:
    """Output (width, height) of torchvision's ``Resize(size)``: short side to ``size``, long side truncated."""
    short, long = (width, height) if width <= height else (height, width)
    new_short, new_long = size, int(size * long / short)
    return (new_short, new_long) if width <= height else (new_long, new_short)


def to_rgb(image):
    """Accept a PIL image in RGB mode as is; convert other modes plainly (full policy lives in fdcore.images)."""
    if getattr(image, "mode", None) == "RGB":
        return image
    if hasattr(image, "convert"):
        return image.convert("RGB")
    from PIL import Image

    return Image.fromarray(np.asarray(image, dtype=np.uint8)).convert("RGB")
