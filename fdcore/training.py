"""Building blocks of the training recipe (recipes/two_stage.py): each one small, testable and reused.

The recipe itself stays a flat, readable loop; what lives here is the machinery it should not have to spell out:
the student wrapper that returns logits and features in one DDP-visible forward, a deterministic epoch sampler,
its streaming counterpart (epochs of a fixed number of steps, split across processes and workers),
the warm-up + cosine schedule, atomic checkpoints with a "latest" pointer, and the run record.
"""

from __future__ import annotations

import json
import math
import re
import shutil
from pathlib import Path
from typing import Sequence

import torch

from fdcore.errors import FdcoreError
from fdcore.expert_io import sha256_file
from fdcore.fileio import swap_in_directory, write_json_atomic


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

    A run folder may come from someone else, so resuming trusts nothing in it: ``latest.json`` may only name a
    ``step_N`` directory directly inside the checkpoint root (no path, no symlink); every file of a checkpoint is
    listed with its size and SHA-256 in its ``checkpoint.json``, and a checkpoint with a changed, missing or extra file
    is refused, naming the file, before anything in it is read. Nothing is unpickled outside ``torch.load``'s
    ``weights_only`` mode: the distiller's state (queues, momentum teachers) is stored as safetensors + JSON here
    rather than through accelerate's ``register_for_checkpointing``, whose loader unpickles arbitrary objects.
    """

    MANIFEST = "checkpoint.json"
    DISTILLER_TENSORS = "distiller.safetensors"
    DISTILLER_VALUES = "distiller.json"
    _NAME = re.compile(r"^step_\d{8}$")

    def __init__(self, root: Path, keep: int = 2):
        self.root = Path(root)
        self.keep = keep

    def latest(self) -> tuple[Path, dict] | None:
        pointer = self.root / "latest.json"
        if not pointer.is_file():
            return None
        try:
            record = json.loads(pointer.read_text(encoding="utf-8"))
            name = record["checkpoint"]
        except (ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"{pointer} is unreadable ({exc}); delete it to start the stage over") from exc
        if not isinstance(name, str) or not self._NAME.match(name):
            raise TrainingError(f"{pointer} names checkpoint {name!r}, which is not a step_NNNNNNNN directory of "
                                f"{self.root}; the run folder was tampered with: delete {pointer} to start the "
                                "stage over")
        directory = self.root / name
        if directory.is_symlink():
            raise TrainingError(f"{directory} is a symbolic link; a checkpoint must be a directory inside "
                                f"{self.root}: delete it and {pointer} to start the stage over")
        if not directory.is_dir():
            raise TrainingError(f"{pointer} points to {directory}, which is missing; delete {pointer} to start over")
        for key in ("global_step", "epoch", "batch_in_epoch"):
            if isinstance(record.get(key), bool) or not isinstance(record.get(key), int) or record[key] < 0:
                raise TrainingError(f"{pointer}: {key} must be a non-negative integer, got {record.get(key)!r}; "
                                    f"delete {pointer} to start the stage over")
        self.verify(directory)
        return directory, record

    def verify(self, directory: Path) -> None:
        """Refuse a checkpoint whose files differ from its ``checkpoint.json`` listing (size, SHA-256, extra files)."""
        manifest_path = directory / self.MANIFEST
        try:
            listed = json.loads(manifest_path.read_text(encoding="utf-8"))["files"]
            if not isinstance(listed, dict):
                raise TypeError("files must be an object")
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise TrainingError(f"{manifest_path} is missing or unreadable ({exc}): {directory} is not a complete "
                                "fdcore checkpoint; delete it (and latest.json) to start the stage over") from exc
        present = {}
        for path in sorted(directory.rglob("*")):
            relative = path.relative_to(directory).as_posix()
            if path.is_symlink():
                raise TrainingError(f"{path} is a symbolic link inside a checkpoint; refusing to resume from "
                                    f"{directory}")
            if path.is_file() and relative != self.MANIFEST:
                present[relative] = path
        extra = sorted(set(present) - set(listed))
        if extra:
            raise TrainingError(f"{directory / extra[0]} is not part of the checkpoint written by fdcore (not in "
                                f"{self.MANIFEST}); the run folder was tampered with: refusing to resume. Delete "
                                "the file if you trust the rest, or start the stage over")
        for relative, entry in sorted(listed.items()):
            path = present.get(relative)
            if path is None:
                raise TrainingError(f"{directory / relative} is listed in {manifest_path} but missing; the checkpoint "
                                    "is incomplete: delete it to start the stage over")
            if path.stat().st_size != entry.get("size_bytes") or sha256_file(path) != entry.get("sha256"):
                raise TrainingError(f"{path} does not match its size and SHA-256 in {manifest_path}: the checkpoint "
                                    "was modified or is corrupt; refusing to resume from it")

    def save(self, accelerator, progress: dict, distiller=None) -> Path:
        """``accelerator.save_state`` (+ the distiller's state) into a fresh directory, listed with hashes, then
        published as latest (main process writes)."""
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
            if distiller is not None:
                save_state_tree(distiller.state_dict(), staging / self.DISTILLER_TENSORS,
                                staging / self.DISTILLER_VALUES)
            write_json_atomic(staging / "progress.json", progress)
            files = {path.relative_to(staging).as_posix(): {"size_bytes": path.stat().st_size,
                                                             "sha256": sha256_file(path)}
                     for path in sorted(staging.rglob("*")) if path.is_file()}
            write_json_atomic(staging / self.MANIFEST, {"format": "fdcore-checkpoint", "files": files})
            swap_in_directory(staging, final)
            write_json_atomic(self.root / "latest.json", {"checkpoint": name, **progress})
            self._prune(keep_name=name)
        accelerator.wait_for_everyone()
        return final

    def load(self, accelerator, directory: Path, distiller=None) -> None:
        """Restore a checkpoint that :meth:`latest` verified."""
        try:
            accelerator.load_state(str(directory))
        except Exception as exc:  # torch.load(weights_only=True) refusing an object, a shape mismatch...
            raise TrainingError(f"cannot resume from {directory}: {type(exc).__name__}: {exc}") from exc
        if distiller is not None:
            distiller.load_state_dict(load_state_tree(directory / self.DISTILLER_TENSORS,
                                                      directory / self.DISTILLER_VALUES))

    def _prune(self, keep_name: str) -> None:
        steps = sorted(p for p in self.root.glob("step_*") if p.is_dir())
        for old in steps[: max(len(steps) - self.keep, 0)]:
            if old.name != keep_name:
                shutil.rmtree(old, ignore_errors=True)
        for partial in self.root.glob(".step_*.partial"):
            shutil.rmtree(partial, ignore_errors=True)


def save_state_tree(state: dict, tensors_path: Path, values_path: Path) -> None:
    """A nested dict of tensors and JSON scalars -> a safetensors file (the tensors, keys joined by ``/``) and a JSON
    file (the structure and the scalars): no pickle."""
    from safetensors.torch import save_file

    tensors, values = {}, {}

    def walk(prefix: str, node) -> None:
        if isinstance(node, dict):
            if not node and prefix:
                values[prefix] = {}
            for key, child in node.items():
                if not isinstance(key, str) or "/" in key:
                    raise TrainingError(f"state key {key!r} at {prefix or 'the root'} cannot be stored (strings "
                                        "without '/' only)")
                walk(f"{prefix}/{key}" if prefix else key, child)
        elif isinstance(node, torch.Tensor):
            tensors[prefix] = node.detach().cpu().contiguous()
        elif node is None or isinstance(node, (bool, int, float, str)):
            values[prefix] = node
        else:
            raise TrainingError(f"state entry {prefix!r} is a {type(node).__name__}; a distiller's state_dict may "
                                "hold tensors, numbers, strings and dicts of them")

    walk("", state)
    save_file(tensors, str(tensors_path))
    write_json_atomic(values_path, {"format": "fdcore-state-tree", "values": values, "tensors": sorted(tensors)})


def load_state_tree(tensors_path: Path, values_path: Path) -> dict:
    """The inverse of :func:`save_state_tree`."""
    from safetensors.torch import load_file

    try:
        record = json.loads(Path(values_path).read_text(encoding="utf-8"))
        values = record["values"]
        tensors = load_file(str(tensors_path))
    except Exception as exc:
        raise TrainingError(f"cannot read the distiller state {values_path} / {tensors_path}: {exc}") from exc
    if sorted(tensors) != sorted(record.get("tensors", [])):
        raise TrainingError(f"{tensors_path} does not hold the tensors {values_path} lists")
    state: dict = {}
    for path, value in [*values.items(), *tensors.items()]:
        node, keys = state, path.split("/")
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value
    return state


def environment_record() -> dict:
    """Versions and plugins a run used, recorded with every checkpoint and model card."""
    from fdcore.provenance import package_versions, plugin_set

    return {"versions": package_versions(("fdcore", "torch", "transformers", "accelerate", "datasets", "numpy",
                                          "pillow")),
            "plugins": plugin_set()}
