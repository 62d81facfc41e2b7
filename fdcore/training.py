"""Building blocks of the training recipe (recipes/two_stage.py): each one small, testable and reused.

The recipe itself stays a flat, readable loop; what lives here is the machinery it should not have to spell out:
the student wrapper that returns logits and features in one DDP-visible forward, a deterministic epoch sampler,
its streaming counterpart (epochs of a fixed number of steps, split across processes and workers),
the warm-up + cosine schedule, atomic checkpoints with a "latest" pointer, and the run record.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Sequence

import torch

from fdcore.errors import FdcoreError
from fdcore.fileio import write_json_atomic


class TrainingError(FdcoreError):
    """A training run cannot start or resume as asked."""


class StudentWithFeatures(torch.nn.Module):
    """Wraps an expert so one ``forward`` returns logits and, on request, token maps.

    Distributed data parallel only synchronises gradients for computations run through the wrapped module's
    ``forward``, so the distillation features must come out of the same call as the logits.
    """

    def __init__(self, expert):
        super().__init__()
        self.expert = expert

    def forward(self, pixels: torch.Tensor, layers: Sequence[str] | None = None, with_features: bool = True):
        if not with_features:
            return self.expert(pixels), {}
        return self.expert.forward_with_features(pixels, layers)


class EpochShuffleSampler(torch.utils.data.Sampler):
    """A permutation of ``range(length)`` that depends only on (seed, epoch): resumable and worker-independent.

    The method is deliberately not called ``set_epoch``: accelerate's data loaders call ``set_epoch`` with their own
    iteration counter, which restarts at 0 on the loader that ``skip_first_batches`` builds when resuming.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True):
        self.length, self.seed, self.shuffle, self.epoch = length, seed, shuffle, 0

    def use_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __iter__(self):
        if not self.shuffle:
            return iter(range(self.length))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator).tolist())

    def __len__(self) -> int:
        return self.length


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
    (:func:`fdcore.data.torch_dataset.stable_sample_key`), as in :class:`fdcore.data.DetectionIterableDataset`.
    """

    def __init__(self, stream, items, *, batch_size: int, steps_per_epoch: int, accumulation: int = 1,
                 process_index: int = 0, num_processes: int = 1):
        if batch_size % num_processes:
            raise TrainingError(f"--batch-size {batch_size} is the global batch and must be divisible by the "
                                f"{num_processes} processes")
        if steps_per_epoch < 1:
            raise TrainingError(f"--steps-per-epoch must be a positive integer, got {steps_per_epoch}")
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
        from fdcore.data.torch_dataset import stable_sample_key

        worker = torch.utils.data.get_worker_info()
        worker_id, workers = (worker.id, worker.num_workers) if worker is not None else (0, 1)
        for batch_number, rows in self.batch_rows():
            position = batch_number - self.skip_batches
            if position < 0 or position % workers != worker_id:
                continue
            for row in rows:
                yield self.items.build(row, stable_sample_key(row["path"]))


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, final_fraction: float = 0.0) -> float:
    """Learning-rate multiplier: linear warm-up to 1, then cosine decay to ``final_fraction`` at ``total_steps``."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(max((step - warmup_steps) / max(total_steps - warmup_steps, 1), 0.0), 1.0)
    return final_fraction + (1.0 - final_fraction) * 0.5 * (1.0 + math.cos(math.pi * progress))


class CheckpointDirectory:
    """Checkpoints of one training stage: ``step_N/`` directories plus a ``latest.json`` pointer.

    A checkpoint is written under a temporary name and renamed when complete; only then does ``latest.json`` move
    to it. A kill at any moment therefore leaves "latest" pointing at a complete checkpoint (or at none).
    """

    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def latest(self) -> tuple[Path, dict] | None:
        pointer = self.root / "latest.json"
        if not pointer.is_file():
            return None
        try:
            record = json.loads(pointer.read_text(encoding="utf-8"))
        except ValueError as exc:
            raise TrainingError(f"{pointer} is unreadable ({exc}); delete it to start the stage over") from exc
        directory = self.root / record["checkpoint"]
        if not directory.is_dir():
            raise TrainingError(f"{pointer} points to {directory}, which is missing; delete {pointer} to start over")
        return directory, record

    def save(self, accelerator, progress: dict) -> Path:
        """``accelerator.save_state`` into a fresh directory, then publish it as latest (main process writes)."""
        name = f"step_{progress['global_step']:08d}"
        final = self.root / name
        staging = self.root / f".{name}.partial"
        if accelerator.is_main_process:
            self.root.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(staging, ignore_errors=True)
        accelerator.wait_for_everyone()
        accelerator.save_state(str(staging))
        accelerator.wait_for_everyone()
        if accelerator.is_main_process:
            write_json_atomic(staging / "progress.json", progress)
            if final.exists():
                shutil.rmtree(final)
            os.replace(staging, final)
            write_json_atomic(self.root / "latest.json", {"checkpoint": name, **progress})
            self._prune(keep_name=name)
        accelerator.wait_for_everyone()
        return final

    def _prune(self, keep_name: str) -> None:
        steps = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in steps[: max(len(steps) - self.keep, 0)]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)
        for partial in self.root.glob(".step_*.partial"):
            shutil.rmtree(partial, ignore_errors=True)


def environment_record() -> dict:
    """Versions and plugins a run used, recorded with every checkpoint and model card."""
    from fdcore.provenance import package_versions, plugin_set

    return {"versions": package_versions(("fdcore", "torch", "transformers", "accelerate", "datasets", "numpy",
                                          "pillow")),
            "plugins": plugin_set()}
