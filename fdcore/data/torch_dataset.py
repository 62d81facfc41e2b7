"""The torch side of the data layer: decode, degrade, preprocess per expert, collate.

Every random choice for a sample comes from ``(run seed, epoch, sample index, view)`` alone, so a sample is the same
whichever worker builds it and however many workers there are; a run can be replayed from its seed.
"""

from __future__ import annotations

import inspect
import json
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch

from fdcore.data.sources import DataError, open_image_rgb
from fdcore.seeding import row_index, sample_rng, sample_seed_sequence  # noqa: F401 - re-used names
from fdcore.preprocess import Preprocessing

# degrade(image uint8 HxWx3, sample_index, epoch[, view=k]) -> (degraded uint8 HxWx3, JSON-ready record)
DegradeFn = Callable[..., tuple[np.ndarray, Any]]


def random_crop_window(seed: int, epoch: int, index: int, height: int, width: int, size: int
                       ) -> tuple[int, int, int, int]:
    """``(top, left, height, width)`` of sample ``index``'s random training window in ``epoch``.

    The documented derivation: ``rng = sample_rng(seed, epoch, index)``, then ``top = rng.integers(0, height - size
    + 1)`` and ``left = rng.integers(0, width - size + 1)``, in that order. A side not longer than ``size`` is kept
    whole (offset 0; no draw is made when neither side is longer): the expert's preprocessing decides how a short
    side is completed, never this crop.
    """
    if height <= size and width <= size:
        return 0, 0, height, width
    rng = sample_rng(seed, epoch, index)
    top = int(rng.integers(0, height - size + 1)) if height > size else 0
    left = int(rng.integers(0, width - size + 1)) if width > size else 0
    return top, left, min(height, size), min(width, size)


def seeded_degrade(function: Callable[[np.ndarray, np.random.Generator], tuple[np.ndarray, Any]], seed: int) -> DegradeFn:
    """Adapt ``function(image, rng) -> (image, record)`` to the dataset's ``degrade(image, index, epoch, view=0)``,
    drawing ``rng`` from :func:`sample_rng` so the result depends on the run seed, epoch, index and view only."""

    def degrade(image: np.ndarray, sample_index: int, epoch: int, view: int = 0):
        degraded, record = function(image, sample_rng(seed, epoch, sample_index, view))
        return degraded, {"seed": seed, "epoch": epoch, "index": sample_index, "view": view, "record": record}

    degrade.seed = seed
    return degrade


def _accepts_view(function: Callable) -> bool:
    try:
        parameters = inspect.signature(function).parameters.values()
    except (TypeError, ValueError):
        return False
    return any(parameter.name == "view" or parameter.kind is inspect.Parameter.VAR_KEYWORD for parameter in parameters)


def _as_preprocessing(item: Any, key: str) -> Preprocessing:
    preprocessing = item if isinstance(item, Preprocessing) else getattr(item, "preprocessing", None)
    if not isinstance(preprocessing, Preprocessing):
        raise TypeError(f"{key}: expected a fdcore.Preprocessing or an expert with .preprocessing, got {type(item).__name__}")
    return preprocessing


def load_row_image(row: Mapping[str, Any]):
    """The RGB PIL image of a source row: embedded bytes when the row has them, else the file at its path, or the
    object at its URL (fetched by :mod:`fdcore.remote` with the default limits; ``FDCORE_ALLOW_PRIVATE_URLS=1``
    admits private addresses)."""
    from fdcore.images import ImageRejected
    from fdcore.remote import fetch_bytes, from_environment as remote_policy, is_remote

    path = row.get("path")
    image = row.get("image")
    if isinstance(image, Mapping):
        if image.get("bytes"):
            return open_image_rgb(data=image["bytes"], name=path)
        if image.get("path") and os.path.isfile(image["path"]):
            return open_image_rgb(path=image["path"])
    if isinstance(path, str) and is_remote(path):
        try:
            data = fetch_bytes(path, remote_policy())
        except ImageRejected as exc:
            raise DataError(f"image {path} refused: {exc}") from None
        return open_image_rgb(data=data, name=path)
    if not isinstance(path, str) or not os.path.isfile(path):
        raise DataError(f"{path!r}: the row has no image bytes and no such file exists")
    return open_image_rgb(path=path)


class DetectionDataset(torch.utils.data.Dataset):
    """A map-style torch Dataset over a labelled source (a ``datasets.Dataset`` or any sequence of row dicts).

    Each item is ``{"pixels", "label", "index", "degradation", "path", "generator", "source"}``: ``pixels`` is one
    tensor ``[3, S, S]`` when ``preprocessing`` is a single :class:`fdcore.Preprocessing` (or expert), or
    ``{key: tensor}`` for a mapping of them (experts sharing a resize geometry share one resize); ``degradation``
    is the degrade record as a JSON string (``"null"`` without ``degrade``). With ``views=2`` the item also holds
    ``pixels_view2`` and ``degradation_view2``, a second, independently degraded view of the same image, for which
    ``degrade`` is called with ``view=1`` and must accept that keyword.

    With ``random_crop_seed``, experts whose preprocessing is at native resolution (``resize="crop"`` or
    ``"native"``) train on a random window of their input size, drawn per (seed, epoch, index), instead of the centre
    one.

    Call :meth:`use_epoch` before each epoch (with non-persistent DataLoader workers, so that they see it). The method
    is deliberately not called ``set_epoch``: accelerate's prepared data loaders call ``dataset.set_epoch`` with their
    own pass counter at every iteration, which stays 0 when a loop leaves the loader before it is exhausted (and
    restarts at 0 on a resumed loader), and would silently give every epoch epoch 0's crops and degradations.

    Each item also carries ``crop``: ``[top, left, height, width]`` of the window of the decoded image it was built
    from (the whole image unless a random native crop was taken).
    """

    def __init__(self, source: Sequence[Mapping[str, Any]], preprocessing: Any, *, degrade: DegradeFn | None = None,
                 views: int = 1, epoch: int = 0, random_crop_seed: int | None = None):
        if views not in (1, 2):
            raise ValueError(f"views must be 1 or 2, got {views!r}")
        if views == 2 and degrade is not None and not _accepts_view(degrade):
            raise TypeError("views=2 needs a degrade callable that accepts a view= keyword (use seeded_degrade) so "
                            "the two views are degraded independently")
        self.source = source
        self.single = not isinstance(preprocessing, Mapping)
        items = {"pixels": preprocessing} if self.single else dict(preprocessing)
        if not items:
            raise ValueError("preprocessing mapping is empty")
        self.preprocessing = {key: _as_preprocessing(item, key) for key, item in items.items()}
        self.degrade = degrade
        self.views = views
        self.epoch = epoch
        self.random_crop_seed = random_crop_seed
        native = [p.size for p in self.preprocessing.values() if p.native]
        self._crop_size = max(native) if native and random_crop_seed is not None else None

    def use_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.source)

    def _pixels(self, image: np.ndarray):
        from PIL import Image

        resized: dict[tuple, Any] = {}
        picture = Image.fromarray(image, mode="RGB")
        out = {}
        for key, preprocessing in self.preprocessing.items():
            geometry = preprocessing.geometry_key
            if geometry not in resized:
                resized[geometry] = preprocessing.resize_image(picture)
            # a writable copy: torch warns on (and must not alias) the read-only array PIL hands out
            out[key] = preprocessing.normalize(np.array(resized[geometry], dtype=np.uint8))
        return out["pixels"] if self.single else out

    def _view(self, image: np.ndarray, index: int, view: int):
        if self.degrade is None:
            return self._pixels(image), "null"
        degraded, record = self.degrade(image, index, self.epoch, view=view) if view else self.degrade(image, index, self.epoch)
        if not isinstance(degraded, np.ndarray) or degraded.dtype != np.uint8 or degraded.ndim != 3 or degraded.shape[2] != 3:
            raise RuntimeError(f"degrade returned {getattr(degraded, 'dtype', type(degraded).__name__)} "
                               f"{getattr(degraded, 'shape', '')} for sample {index}, not an HxWx3 uint8 image")
        return self._pixels(degraded), json.dumps(record, sort_keys=True, default=str)

    def _random_native_crop(self, image: np.ndarray, index: int) -> tuple[np.ndarray, list[int]]:
        # Training counterpart of the "crop" preprocessing (a centre crop at native resolution): a seeded random
        # window of the same size, taken before degradation so the policy works on the pixels the expert sees.
        height, width = image.shape[:2]
        top, left, crop_height, crop_width = random_crop_window(self.random_crop_seed, self.epoch, index, height,
                                                                width, self._crop_size)
        if (crop_height, crop_width) == (height, width):
            return image, [0, 0, height, width]
        window = np.ascontiguousarray(image[top:top + crop_height, left:left + crop_width])
        return window, [top, left, crop_height, crop_width]

    def __getitem__(self, index: int) -> dict[str, Any]:
        index = int(index)
        if not 0 <= index < len(self):
            raise IndexError(f"sample index {index} out of range for {len(self)} samples")
        return self.build(self.source[index], index)

    def build(self, row: Mapping[str, Any], index: int) -> dict[str, Any]:
        """The item for one source row whose randomness is keyed by ``index``."""
        try:
            image = np.asarray(load_row_image(row), dtype=np.uint8)
        except DataError as exc:
            raise DataError(f"sample {index}: {exc}") from None
        crop = [0, 0, int(image.shape[0]), int(image.shape[1])]
        if self._crop_size is not None:
            image, crop = self._random_native_crop(image, index)
        pixels, record = self._view(image, index, 0)
        item = {"pixels": pixels, "label": int(row["label"]), "index": index, "crop": crop, "degradation": record,
                "path": row["path"], "generator": row.get("generator") or "", "source": row.get("source") or ""}
        if self.views == 2:
            item["pixels_view2"], item["degradation_view2"] = self._view(image, index, 1)
        return item


class StreamingTrainingSet(torch.utils.data.IterableDataset):
    """One epoch of training samples from a row stream (a ``datasets.IterableDataset``), for one process.

    A stream has no length and no random access, so the epoch is defined by ``steps_per_epoch`` optimizer steps: the
    stream is read from its start (after ``set_epoch``, which re-seeds its shuffle buffers from the run seed and the
    epoch) in groups of ``batch_size * accumulation`` rows, one group per optimizer step; an incomplete last group is
    dropped, and a stream that runs out earlier ends the epoch early.

    Every process and every DataLoader worker reads the whole row stream (rows are paths or encoded bytes: cheap next
    to decoding, degrading and the forward pass) and builds only its own samples: process ``r`` of ``P`` takes rows
    ``[r*B/P, (r+1)*B/P)`` of each global batch of ``B`` rows (accelerate's ``split_batches`` layout, so ``P``
    processes compute what one process computes), and worker ``w`` of ``W`` builds the batches ``w, w+W, ...``, which
    the DataLoader's round-robin returns in order. The result therefore depends neither on the number of processes
    nor on the number of workers. ``start_epoch(epoch, skip_batches)`` skips the batches a resumed run already
    trained on without decoding them.

    ``items`` is the :class:`fdcore.data.DetectionDataset` that builds a sample from a row (decode, seeded
    degradation, preprocessing); a sample's randomness is keyed by a hash of its path
    (:func:`fdcore.seeding.row_index`), so it is the same whichever process or worker builds it.
    """

    def __init__(self, stream, items, *, batch_size: int, steps_per_epoch: int, accumulation: int = 1,
                 process_index: int = 0, num_processes: int = 1):
        if batch_size % num_processes:
            raise DataError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                                f"{num_processes} processes")
        if steps_per_epoch < 1:
            raise DataError(f"--steps-per-epoch must be a positive integer, got {steps_per_epoch}")
        self.stream, self.items = stream, items
        self.batch_size, self.accumulation = batch_size, accumulation
        self.steps_per_epoch = steps_per_epoch
        self.process_index, self.num_processes = process_index, num_processes
        self.epoch, self.skip_batches = 0, 0

    @property
    def process_batch_size(self) -> int:
        return self.batch_size // self.num_processes

    def start_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        self.epoch, self.skip_batches = int(epoch), int(skip_batches)
        self.items.use_epoch(self.epoch)
        if hasattr(self.stream, "set_epoch"):
            self.stream.set_epoch(self.epoch)

    def batch_rows(self):
        """``(batch_number, rows of this process)`` for every global batch of the epoch, skipped ones included."""
        group_size = self.batch_size * self.accumulation
        share = self.process_batch_size
        # .iter() rather than iter(): a datasets stream iterated inside a DataLoader worker would otherwise hand
        # each worker a subset of its shards, and which rows form a batch would depend on the worker count.
        groups = self.stream.iter(batch_size=group_size, drop_last_batch=True)
        for step, columns in enumerate(groups):
            if step >= self.steps_per_epoch:
                return
            rows = [dict(zip(columns, values)) for values in zip(*columns.values())]
            for micro in range(self.accumulation):
                start = micro * self.batch_size + self.process_index * share
                yield step * self.accumulation + micro, rows[start:start + share]

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for batch_number, rows in self.batch_rows():
            position = batch_number - self.skip_batches
            if position < 0 or position % workers != worker_id:
                continue
            for row in rows:
                yield self.items.build(row, row_index(row["path"]))


def collate_samples(samples: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """Stack a list of :class:`DetectionDataset` items: tensors (and dicts of tensors) stacked, ints to a
    LongTensor, strings kept as lists."""
    if not samples:
        raise ValueError("cannot collate an empty batch")
    batch: dict[str, Any] = {}
    for key in samples[0]:
        values = [sample[key] for sample in samples]
        first = values[0]
        if isinstance(first, torch.Tensor):
            batch[key] = torch.stack(values)
        elif isinstance(first, Mapping):
            batch[key] = {name: torch.stack([value[name] for value in values]) for name in first}
        elif isinstance(first, (int, np.integer)) and not isinstance(first, bool):
            batch[key] = torch.tensor([int(value) for value in values], dtype=torch.long)
        else:
            batch[key] = list(values)
    return batch
