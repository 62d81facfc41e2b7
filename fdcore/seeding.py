"""Where every per-sample random choice comes from: one module owns the keys and the generators.

Two layers, each a pure function of integers, so a sample is the same whichever process, worker or batch builds it:

* the data layer (training, evaluation variants): :func:`sample_rng` ``(seed, epoch, index, view)`` draws a
  sample's crop window and the seed it hands to a degradation policy;
* the degradation layer: a policy's own choices come from :func:`sampler_rng` ``(seed, sample_id)`` and operator
  ``i``'s draws from :func:`operator_rng` ``(seed, sample_id, i)``.

A sample id is an integer (a row number) or a string (a path, a dataset key): :func:`sample_key` maps it to the
integer used in seed material, the same in every process and run.
"""

from __future__ import annotations

import hashlib
from typing import Any

import numpy as np

SAMPLER_STREAM = 0
OPERATOR_STREAM = 1


def check_seed(value: Any, name: str = "seed") -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
    return int(value)


def sample_key(sample_id: int | str) -> int:
    """The integer that stands for a sample id in seed material: an int as itself, a string (a relative path, a
    dataset key) as the first 8 bytes of its SHA-256, so ids stay stable when files are added or reordered."""
    if isinstance(sample_id, bool):
        raise ValueError(f"sample_id must be a non-negative integer or a string, got {sample_id!r}")
    if isinstance(sample_id, (int, np.integer)):
        if sample_id < 0:
            raise ValueError(f"sample_id must be non-negative, got {sample_id}")
        return int(sample_id)
    if isinstance(sample_id, str):
        return int.from_bytes(hashlib.sha256(sample_id.encode("utf-8", "surrogateescape")).digest()[:8], "little")
    raise ValueError(f"sample_id must be a non-negative integer or a string, got {type(sample_id).__name__}")


def row_index(path: str) -> int:
    """A streamed row's index: :func:`sample_key` of its path/URI, kept below 2**63 so it fits an int64 tensor."""
    return sample_key(path) % 2**63


def sample_seed_sequence(seed: int, epoch: int, index: int, view: int = 0) -> np.random.SeedSequence:
    """The seed of one sample's randomness: independent streams for every (seed, epoch, index, view)."""
    values = [check_seed(value, name) for name, value in (("seed", seed), ("epoch", epoch), ("index", index),
                                                          ("view", view))]
    return np.random.SeedSequence(values)


def sample_rng(seed: int, epoch: int, index: int, view: int = 0) -> np.random.Generator:
    """The data layer's generator for one sample in one epoch (its crop window, its policy seed)."""
    return np.random.default_rng(sample_seed_sequence(seed, epoch, index, view))


def sampler_rng(seed: int, sample_id: int | str) -> np.random.Generator:
    """A degradation policy's own choices for one sample (clean or not, branch, k, operators, levels)."""
    return np.random.default_rng(np.random.SeedSequence([check_seed(seed), sample_key(sample_id), SAMPLER_STREAM, 0]))


def operator_rng(seed: int, sample_id: int | str, op_index: int) -> np.random.Generator:
    """The ``op_index``-th degradation operator's draws for one sample."""
    return np.random.default_rng(
        np.random.SeedSequence([check_seed(seed), sample_key(sample_id), OPERATOR_STREAM, int(op_index)]))
