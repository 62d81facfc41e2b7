"""Building blocks of the training recipe (recipes/two_stage.py): each one small, testable and reused.

The recipe itself stays a flat, readable loop; what lives here is the machinery it should not have to spell out:
the student wrapper that returns logits and features in one DDP-visible forward, a deterministic epoch sampler,
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
