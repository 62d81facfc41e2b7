"""Per-expert preprocessing: resize, crop and normalise, described by data so that outputs can record it.

The resize reproduces torchvision's ``Resize(size)`` + ``CenterCrop(size)`` on PIL images (the FeatDistill
reference) without depending on torchvision: the short side goes to ``size``, the long side to
``int(size * long / short)`` (truncated), then a centre crop whose offset uses Python's ``round`` as torchvision does.

Pixel-level forensic experts (NPR and the like) read traces that any resampling destroys: ``resize="native"`` never
resamples. It cuts ``size x size`` windows out of the decoded pixels (``crops`` of them, on a deterministic grid
spread over the image; the expert's logits are averaged over them), and completes a side shorter than ``size`` by
tiling the image, never by enlarging it.
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
_RESIZES = ("short-side", "squash", "crop", "native")


@dataclasses.dataclass(frozen=True)
class Preprocessing:
    """How one expert turns an RGB image into its input tensor ``[3, size, size]``."""

    size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    # "short-side" (+ centre crop), "squash" (both sides to size), "crop" (centre crop at native resolution;
    # an image smaller than size is first enlarged as "short-side" would) or "native" (windows of the decoded
    # pixels, never resampled: a short side is completed by tiling)
    resize: str = "short-side"
    interpolation: str = "bicubic"
    # "native" only: windows per image at inference, on the grid of :func:`crop_grid`; the expert's logits are
    # averaged over them (training takes one seeded random window per sample instead)
    crops: int = 1

    def __post_init__(self):
        if not isinstance(self.size, int) or self.size < 1:
            raise ValueError(f"preprocessing size must be a positive integer, got {self.size!r}")
        if self.resize not in _RESIZES:
            raise ValueError(f"preprocessing resize must be one of {_RESIZES}, got {self.resize!r}")
        if self.interpolation not in _INTERPOLATIONS:
            raise ValueError(f"preprocessing interpolation must be one of {_INTERPOLATIONS}, got {self.interpolation!r}")
        if isinstance(self.crops, bool) or not isinstance(self.crops, int) or not 1 <= self.crops <= MAX_CROPS:
            raise ValueError(f"preprocessing crops must be an integer from 1 to {MAX_CROPS}, got {self.crops!r}")
        if self.crops > 1 and self.resize != "native":
            raise ValueError(f"preprocessing crops={self.crops} needs resize='native' (a grid of windows of the "
                             f"decoded pixels), got resize={self.resize!r}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    @property
    def geometry_key(self) -> tuple:
        """Experts with equal keys share one resized image (normalisation is applied per expert)."""
        if self.resize == "native":
            return (self.size, self.resize, self.crops)
        return (self.size, self.resize, self.interpolation)

    @property
    def native(self) -> bool:
        """True when pixels reach the expert at their decoded resolution (``crop`` and ``native``)."""
        return self.resize in ("crop", "native")

    def to_dict(self) -> dict[str, Any]:
        data = {"version": PREPROCESS_VERSION, **dataclasses.asdict(self)}
        if self.crops == 1:
            del data["crops"]  # the records of one-window experts stay what they were before crop grids existed
        return data

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        fields = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in fields})

    def identity(self) -> str:
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]

    def resize_image(self, image):
        """PIL RGB image -> PIL RGB image of ``size x size`` (for ``native``: the centre window)."""
        from PIL import Image

        if self.resize == "native":
            array = tile_to_size(np.asarray(image, dtype=np.uint8), self.size)
            height, width = array.shape[:2]
            top, left = int(round((height - self.size) / 2.0)), int(round((width - self.size) / 2.0))
            return Image.fromarray(np.ascontiguousarray(array[top:top + self.size, left:left + self.size]), "RGB")
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

    def arrays(self, image) -> np.ndarray:
        """PIL RGB image -> what the expert is fed, as uint8: ``[size, size, 3]``, or ``[crops, size, size, 3]`` for
        a grid of several windows (row by row, see :func:`crop_grid`)."""
        if self.crops == 1:
            return np.asarray(self.resize_image(image), dtype=np.uint8)
        array = tile_to_size(np.asarray(image, dtype=np.uint8), self.size)
        tops, lefts = crop_grid(array.shape[0], array.shape[1], self.size, self.crops)
        return np.stack([array[top:top + self.size, left:left + self.size] for top in tops for left in lefts])

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
        """PIL images -> ``[B * crops, 3, size, size]``: each image's windows are consecutive (an expert's logits
        are averaged over every ``crops`` rows, see :meth:`fdcore.Expert.probabilities`)."""
        import torch

        if len(images) == 0:
            return torch.empty(0, 3, self.size, self.size)
        windows = []
        for image in images:
            arrays = self.arrays(to_rgb(image))
            windows += [arrays] if self.crops == 1 else list(arrays)
        return torch.stack([self.normalize(window) for window in windows])


MAX_CROPS = 64


def tile_to_size(array: np.ndarray, size: int) -> np.ndarray:
    """``array`` (H x W x 3) with each side shorter than ``size`` completed by repeating the image from its start
    (tiling): the pixel grid and its 2x2 phase are kept, nothing is interpolated."""
    height, width = array.shape[:2]
    if height >= size and width >= size:
        return array
    reps = (-(-size // height) if height < size else 1, -(-size // width) if width < size else 1, 1)
    return np.tile(array, reps)[:max(height, size), :max(width, size)]


def grid_shape(crops: int, height: int, width: int) -> tuple[int, int]:
    """``(rows, columns)`` of a grid of ``crops`` windows: the most nearly square factorisation ``r x c``, with the
    longer count along the image's longer side (6 windows: 2 x 3 on a landscape image, 3 x 2 on a portrait)."""
    rows = max(divisor for divisor in range(1, int(crops ** 0.5) + 1) if crops % divisor == 0)
    columns = crops // rows
    return (columns, rows) if height > width else (rows, columns)


def crop_grid(height: int, width: int, size: int, crops: int) -> tuple[list[int], list[int]]:
    """Top and left offsets of the ``crops`` windows of ``size`` on an image at least ``size`` on each side.

    One window per axis sits at the centre (``round((L - size) / 2)``, as the centre crop); ``n > 1`` windows are
    spread evenly from one edge to the other (``round(j * (L - size) / (n - 1))``), so the grid covers the whole image
    whenever ``n * size >= L`` and samples it evenly otherwise. Deterministic: the same image gives the same windows.
    """
    rows, columns = grid_shape(crops, height, width)

    def offsets(length: int, count: int) -> list[int]:
        if count == 1:
            return [int(round((length - size) / 2.0))]
        return [int(round(index * (length - size) / (count - 1))) for index in range(count)]

    return offsets(height, rows), offsets(width, columns)


def resize_for_geometries(image, geometries: Sequence["Preprocessing"]) -> list[np.ndarray]:
    """One RGB PIL image -> one uint8 array per geometry (``S x S x 3``, or ``K x S x S x 3`` for a grid of ``K``
    windows): the expensive part, done once per geometry however many experts share it (prediction, evaluation and
    the ensemble API all go through here)."""
    return [geometry.arrays(image) for geometry in geometries]


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
