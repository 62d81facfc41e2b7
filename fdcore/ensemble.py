"""Ensembles of experts: the on-disk format, loading (fdcore ensembles, single experts, FeatDistill releases),
and batched scoring that decodes each image once and resizes it once per distinct expert geometry.

    ENSEMBLE_DIR/ensemble.json
    {
      "format": "fdcore-ensemble", "format_version": 1,
      "experts": [{"name": "expert_1", "path": "expert_1", "weight": 1.0}, ...],   # paths relative to ENSEMBLE_DIR
      "aggregator": "mean",      # default fusion rule (a registered aggregator name)
      "calibration": null,       # or a file name relative to ENSEMBLE_DIR
      "threshold": null,         # or {"value": t, "target_fpr": f, "validation": {...}}
      "card": {}                 # provenance
    }

Example:
    >>> ensemble = fdcore.load_ensemble("my-ensemble", device="cpu", precision="fp32")
    >>> ensemble.predict_pil([Image.open("a.jpg")])          # fused P(AI-generated), one float per image
    >>> ensemble.predict_paths(["a.jpg", "broken.png"])       # dicts with score, per-expert probabilities, error
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fdcore.errors import FdcoreError
from fdcore.fileio import write_json_atomic

FORMAT_NAME = "fdcore-ensemble"
FORMAT_VERSION = 1
ENSEMBLE_FILE = "ensemble.json"
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# Images per expert forward call, always (the last chunk padded): scores independent of --batch-size. Eight keeps the
# cost of padding small and big models as fast as at batch 16 (measured: CLIP ViT-L/14 0.98x, NPR 224 px 0.98x).
SCORING_CHUNK = 8
_MEMBER_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_FEATDISTILL_FILE = re.compile(r"^Expert_(\d+)_([A-Za-z0-9]+)\.pth$")


class EnsembleError(FdcoreError):
    """An ensemble directory or option that cannot be used; the message says what to fix."""


@dataclasses.dataclass
class Member:
    """One expert of an ensemble, with what identifies the weights it was loaded from."""

    name: str
    expert: Any  # fdcore.Expert
    weight: float
    identity: str
    source: str


def resolve_device(device: str | None = "auto") -> str:
    """``auto`` -> ``cuda`` when a GPU is visible, else ``cpu``; explicit values are checked."""
    import torch

    device = device or "auto"
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.split(":")[0] == "cuda" and not torch.cuda.is_available():
        raise EnsembleError(f"--device {device} was asked for but no CUDA GPU is visible; use --device cpu")
    if device.split(":")[0] not in ("cpu", "cuda"):
        raise EnsembleError(f"unknown device {device!r}; use auto, cpu or cuda")
    return device


def resolve_precision(precision: str | None, device: str) -> str:
    """Default fp32 on CPU (exact reference reproduction), fp16 on GPU."""
    if precision is None:
        return "fp16" if device.startswith("cuda") else "fp32"
    if precision not in PRECISIONS:
        raise EnsembleError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    if precision == "int8" and not device.startswith("cpu"):
        raise EnsembleError(f"--precision int8 runs on the CPU only (dynamic int8 linear layers); on {device} use "
                            "fp16 or bf16, or pass --device cpu")
    return precision


def torch_dtype(precision: str):
    """The dtype of the weights that stay floating point and of the pixels fed to the experts."""
    import torch

    return {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16, "int8": torch.float32}[precision]


def ready_for_precision(expert, precision: str):
    """The last loading step every ensemble member goes through (one expert at a time, so that quantising never
    holds more than one fp32 expert)."""
    if precision != "int8":
        return expert
    from fdcore.int8 import quantize_int8

    return quantize_int8(expert)


def _sha256_json(data: Any) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


class Ensemble:
    """Experts plus a default fusion rule; scores PIL images or files.

    Attributes:
        members: the experts, in ensemble order (per-expert outputs use this order and these names).
        aggregator: the default aggregator name.
        kind: ``fdcore-ensemble``, ``fdcore-expert`` or ``featdistill-release``.
        identity: SHA-256 binding scores to the exact weights (and member names/weights) used.
        geometries: the distinct :class:`fdcore.Preprocessing` resize geometries; images are resized once per entry.
    """

    def __init__(self, members: Sequence[Member], aggregator: str = "mean", kind: str = FORMAT_NAME,
                 source: str = "", device: str = "cpu", precision: str = "fp32", card: dict | None = None,
                 calibration: str | None = None, threshold: dict | None = None, calibrator=None,
                 scoring_chunk: int | None = None):
        if not members:
            raise EnsembleError("an ensemble needs at least one expert")
        names = [member.name for member in members]
        if len(set(names)) != len(names):
            raise EnsembleError(f"expert names in an ensemble must be unique, got {names}")
        self.members = list(members)
        self.aggregator = aggregator
        self.kind = kind
        self.source = source
        self.device = device
        self.precision = precision
        self.card = card or {}
        self.calibration = calibration
        self.calibrator = calibrator  # fdcore.calibration.Calibration fitted on this ensemble's fused scores
        self.threshold = threshold
        self.scoring_chunk = int(scoring_chunk or SCORING_CHUNK)
        self.identity = _sha256_json({"kind": kind, "members": [[m.name, m.weight, m.identity] for m in members],
                                      "calibration": calibration})
        self.geometries = []
        self._geometry_of_member = []
        keys = []
        for member in self.members:
            key = member.expert.preprocessing.geometry_key
            if key not in keys:
                keys.append(key)
                self.geometries.append(member.expert.preprocessing)
            self._geometry_of_member.append(keys.index(key))

    # -- description ------------------------------------------------------------------------------------------
    @property
    def names(self) -> list[str]:
        return [member.name for member in self.members]

    @property
    def weights(self) -> list[float]:
        return [member.weight for member in self.members]

    def describe(self) -> dict:
        """JSON-ready identity of the ensemble, recorded in every prediction's metadata."""
        return {
            "kind": self.kind,
            "source": self.source,
            "identity": self.identity,
            "default_aggregator": self.aggregator,
            "experts": [{"name": m.name, "expert": m.expert.name, "weight": m.weight, "identity": m.identity,
                         "preprocessing": m.expert.preprocessing.to_dict()} for m in self.members],
        }

    # -- fusion -----------------------------------------------------------------------------------------------
    def aggregator_for(self, name: str | None = None):
        """The registered aggregator instance (``UnknownNameError`` lists the valid names)."""
        from fdcore import registry

        return registry.get_aggregator(name or self.aggregator)

    def fusion_weights(self, aggregator, weights: Sequence[float] | None = None) -> list[float] | None:
        """The weights an aggregator gets: explicit ``weights``, else ensemble.json's when the rule uses them.

        Ensemble weights are passed only to rules that require weights, or that accept them when they are not all
        equal (so 'logit-mean' over an unweighted ensemble stays the plain mean of logits).
        """
        if weights is not None:
            weights = [float(w) for w in weights]
            if len(weights) != len(self.members):
                raise EnsembleError(f"{len(weights)} weights given for {len(self.members)} experts "
                                    f"({', '.join(self.names)}); give one weight per expert, in this order")
            if not all(math.isfinite(w) and w >= 0 for w in weights) or sum(weights) <= 0:
                raise EnsembleError(f"weights must be finite, non-negative and not all zero, got {weights}")
            if not aggregator.uses_weights:
                raise EnsembleError(f"aggregator {aggregator.name!r} does not take weights; drop --weights or use "
                                    "'weighted' or 'logit-mean'")
            return weights
        if aggregator.requires_weights or (aggregator.uses_weights and len(set(self.weights)) > 1):
            return self.weights
        return None

    def check_fusion(self, aggregator: str | None = None, weights: Sequence[float] | None = None) -> None:
        """Fuse a small fixed probe before any image is scored, so that a fusion rule that fails or returns NaN
        (a plugin's) is reported at once, not after hours of scoring."""
        values = (0.02, 0.5, 0.97, 0.31, 0.74)
        probe = np.array([[values[(row + column) % 5] for column in range(5)] for row in range(len(self.members))])
        name = aggregator or self.aggregator
        try:
            fused = self.fuse(probe, aggregator, weights)
        except EnsembleError:
            raise
        except Exception as exc:
            raise EnsembleError(f"aggregator {name!r} fails on a probe of valid probabilities ({type(exc).__name__}: "
                                f"{exc}); fix or uninstall the plugin that provides it, or choose another "
                                "--aggregator") from None
        if fused.shape != (probe.shape[1],) or not np.isfinite(fused).all():
            raise EnsembleError(f"aggregator {name!r} returns {fused!r} for a probe of valid probabilities; "
                                "choose another --aggregator")

    def calibrated(self, scores, aggregator: str | None = None) -> tuple[np.ndarray, bool]:
        """Apply the stored calibration when it was fitted for this fusion rule; returns (scores, applied).

        A calibration maps one rule's score scale; applied to another rule's scores it would be wrong, so those are
        returned unchanged (and outputs record that they are raw).
        """
        scores = np.asarray(scores, dtype=np.float64)
        if not self.calibration_applies(aggregator):
            return scores, False
        return self.calibrator.apply(scores), True

    def calibration_applies(self, aggregator: str | None = None) -> bool:
        """Whether the stored calibration was fitted for this fusion rule (the default rule when None)."""
        if self.calibrator is None:
            return False
        return (aggregator or self.aggregator) == self.calibrator.fitted_on.get("aggregator", self.aggregator)

    def fuse(self, probabilities, aggregator: str | None = None, weights: Sequence[float] | None = None):
        """Per-expert probabilities ``[n_experts, B]`` -> fused scores ``[B]`` (float64 numpy)."""
        import torch

        rule = self.aggregator_for(aggregator)
        chosen = self.fusion_weights(rule, weights)
        values = torch.as_tensor(np.asarray(probabilities, dtype=np.float64))
        if values.shape[1] == 0:
            return np.zeros(0, dtype=np.float64)
        fused = rule(values, None if chosen is None else torch.tensor(chosen, dtype=torch.float64))
        return fused.numpy().astype(np.float64)

    # -- scoring ----------------------------------------------------------------------------------------------
    def probabilities_from_resized(self, resized: Sequence[Any]):
        """Per-geometry uint8 batches ``[B, S, S, 3]`` (``[B, K, S, S, 3]`` for a grid of K windows) -> P(AI-generated)
        ``[n_experts, B]`` float64 numpy.

        Normalisation runs here, per expert, with the same float32 operations as
        :meth:`fdcore.Preprocessing.normalize`, so results are bitwise those of ``expert.preprocess``; an expert with
        a window grid gets every window and averages its logits per image (:meth:`fdcore.Expert.probabilities`).
        """
        import torch

        dtype = torch_dtype(self.precision)
        batches = [torch.as_tensor(np.asarray(batch) if not torch.is_tensor(batch) else batch) for batch in resized]
        count = batches[0].shape[0] if batches else 0
        out = np.empty((len(self.members), count), dtype=np.float64)
        if count == 0:
            return out
        windows = [batch.shape[1] if batch.ndim == 5 else 1 for batch in batches]
        with torch.inference_mode():
            # uint8 travels to the device (4x less than float32); normalisation runs there. Contiguous NCHW like
            # Preprocessing.normalize: a permuted (channels-last) tensor would make convolutions pick other kernels
            # and change the last bits of the scores.
            floats = [batch.to(self.device, non_blocking=True).reshape(-1, *batch.shape[-3:]).permute(0, 3, 1, 2)
                      .contiguous().to(torch.float32).div_(255.0) for batch in batches]
            for row, member in enumerate(self.members):
                preprocessing = member.expert.preprocessing
                geometry = self._geometry_of_member[row]
                mean = torch.tensor(preprocessing.mean, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
                std = torch.tensor(preprocessing.std, dtype=torch.float32, device=self.device).view(1, 3, 1, 1)
                pixels = floats[geometry].sub(mean).div_(std).to(dtype)
                out[row] = self._chunked_probabilities(member.expert, pixels, count, windows[geometry])
        return out

    def _chunked_probabilities(self, expert, pixels, count: int, windows: int) -> np.ndarray:
        """The expert on fixed chunks of :data:`SCORING_CHUNK` images (``windows`` rows each), the last one padded by
        repeating its last image: every forward call has the same shape whatever the batch, so an image's score
        cannot depend on its batch neighbours or the batch size (CPU kernels pick algorithms by shape: convolutions
        differed by up to 6e-8 between batch sizes)."""
        import torch

        chunk = self.scoring_chunk
        result = np.empty(count, dtype=np.float64)
        for start in range(0, count, chunk):
            taken = min(chunk, count - start)
            piece = pixels[start * windows:(start + taken) * windows]
            if taken < chunk:
                last = piece[-windows:]
                piece = torch.cat([piece, *([last] * (chunk - taken))])
            probabilities = (expert.probabilities(piece) if windows == 1 else
                             expert.probabilities(piece, crops_per_image=windows))
            result[start:start + taken] = probabilities[:taken].float().cpu().numpy()
        return result

    def expert_probabilities(self, images: Sequence[Any], batch_size: int = 16) -> np.ndarray:
        """PIL images (any mode; the file pixel policy is applied) -> ``[n_experts, B]`` float64.

        NaN columns for images that cannot be prepared (a truncated image that fails to load)."""
        from fdcore import scoring

        decoded = [scoring.decode(image, self.geometries) for image in images]
        accepted = [index for index, item in enumerate(decoded) if isinstance(item, scoring.Decoded)]
        out = np.full((len(self.members), len(decoded)), np.nan)
        out[:, accepted] = scoring.expert_probabilities(self, [decoded[i] for i in accepted], batch_size)
        return out

    def predict_pil(self, images: Sequence[Any], aggregator: str | None = None,
                    weights: Sequence[float] | None = None, batch_size: int = 16) -> np.ndarray:
        """Fused P(AI-generated) ``[B]`` for PIL images; NaN where an expert's output is not finite.

        A set-level aggregator (``rank-mean``) ranks within this call's images.
        """
        from fdcore import scoring

        if hasattr(images, "getpixel") or isinstance(images, (str, bytes, os.PathLike)):
            raise TypeError(f"predict_pil takes a list of PIL images, got one {type(images).__name__}; pass [image] "
                            "(and predict_paths for files)")
        fusion = scoring.Fusion.resolve(self, aggregator, weights)
        return fusion.scores(self, self.expert_probabilities(list(images), batch_size=batch_size))

    def fuse_finite(self, probabilities, aggregator: str | None = None, weights: Sequence[float] | None = None,
                    calibrate: bool = True) -> np.ndarray:
        """Fused scores ``[B]`` with NaN for images where any expert's probability is not finite (they are left out
        of the fusion, so one bad image never poisons a set-level rule); calibrated unless ``calibrate=False``."""
        scores = np.full(probabilities.shape[1], np.nan)
        finite = np.isfinite(probabilities).all(axis=0)
        if finite.any():
            fused = self.fuse(probabilities[:, finite], aggregator, weights)
            scores[finite] = self.calibrated(fused, aggregator)[0] if calibrate else fused
        return scores

    def predict_paths(self, paths: Sequence[str | os.PathLike], aggregator: str | None = None,
                      weights: Sequence[float] | None = None, batch_size: int = 16, max_pixels: int | None = None,
                      max_aspect_ratio: float | None = None) -> list[dict]:
        """Score files with the same safety checks as ``fdcore predict``; one dict per path, in order.

        Each dict has ``path``, ``score`` (None when not scored), ``probabilities`` ({expert name: P}),
        ``error`` (a reason code or None), ``detail`` and ``notes`` (pixel-policy notes such as ``exif_unreadable``).
        """
        from fdcore import scoring

        if isinstance(paths, (str, bytes, os.PathLike)):
            raise TypeError(f"predict_paths takes a list of paths, got the single path {paths!r}; pass [path]")
        fusion = scoring.Fusion.resolve(self, aggregator, weights)
        results, accepted = [], []
        for path in paths:
            decoded = scoring.decode(os.path.realpath(path), self.geometries, max_pixels, max_aspect_ratio)
            result = {"path": str(path), "score": None, "probabilities": {}, "error": None, "detail": "",
                      "notes": []}
            results.append(result)
            if isinstance(decoded, scoring.Rejected):
                result["error"], result["detail"] = decoded.code, decoded.detail
            else:
                result["notes"] = decoded.info["notes"]
                accepted.append((result, decoded))
        if not accepted:
            return results
        probabilities = scoring.expert_probabilities(self, [decoded for _, decoded in accepted], batch_size)
        scores = fusion.scores(self, probabilities)
        for index, (result, _) in enumerate(accepted):
            result["probabilities"] = dict(zip(self.names, probabilities[:, index].tolist()))
            if np.isfinite(scores[index]):
                result["score"] = float(scores[index])
            else:
                result["error"], result["detail"] = "non_finite_score", "an expert returned NaN or infinity"
        return results


# -- on-disk format -------------------------------------------------------------------------------------------------

def _validate_members(members: Sequence[dict], where: str) -> list[dict]:
    if not isinstance(members, (list, tuple)) or not members:
        raise EnsembleError(f"{where}: 'experts' must be a non-empty list of {{name, path, weight}}")
    checked, seen = [], set()
    for index, member in enumerate(members):
        if not isinstance(member, dict):
            raise EnsembleError(f"{where}: experts[{index}] must be an object with name, path and weight")
        name, path, weight = member.get("name"), member.get("path"), member.get("weight", 1.0)
        if not isinstance(name, str) or not _MEMBER_NAME.match(name):
            raise EnsembleError(f"{where}: experts[{index}].name {name!r} must be letters, digits, '-', '_' or '.'")
        if name in seen:
            raise EnsembleError(f"{where}: expert name {name!r} appears twice")
        seen.add(name)
        if not isinstance(path, str) or not path or os.path.isabs(path) or ".." in Path(path).parts \
                or "\\" in path:
            raise EnsembleError(f"{where}: experts[{index}].path must be a path inside the ensemble directory "
                                f"(relative, without '..'), got {path!r}")
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                or weight < 0:
            raise EnsembleError(f"{where}: experts[{index}].weight must be a finite number >= 0, got {weight!r}")
        checked.append({"name": name, "path": Path(path).as_posix(), "weight": float(weight)})
    return checked


def write_ensemble(directory, members: Sequence[dict], aggregator: str = "mean", card: dict | None = None,
                   calibration: str | None = None, threshold: dict | None = None) -> Path:
    """Write ``directory/ensemble.json`` atomically (the experts themselves are saved with ``fdcore.save_expert``).

    Args:
        directory: the ensemble directory (created if needed).
        members: ``[{"name": ..., "path": <relative to directory>, "weight": 1.0}, ...]`` in ensemble order.
        aggregator: default fusion rule name.
        card: JSON-ready provenance (source release, training runs...).
    Returns:
        The path of ensemble.json.
    """
    directory = Path(directory)
    checked = _validate_members(members, str(directory / ENSEMBLE_FILE))
    document = {"format": FORMAT_NAME, "format_version": FORMAT_VERSION, "experts": checked,
                "aggregator": aggregator, "calibration": calibration, "threshold": threshold, "card": card or {}}
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / ENSEMBLE_FILE
    write_json_atomic(target, document)
    return target


def create_ensemble(out, experts: Sequence[str | os.PathLike | tuple[str, str | os.PathLike]],
                    weights: Sequence[float] | None = None, aggregator: str = "mean", card: dict | None = None) -> Path:
    """Assemble trained expert directories (any plugins, mixed preprocessing) into a new ensemble directory ``out``.

    Args:
        out: the ensemble directory to create; it must not exist (it appears complete or not at all).
        experts: expert directories (``fdcore.save_expert`` / ``OUTPUT_DIR/expert`` of a training run), each
            optionally as ``(member name, directory)``; a plain directory is named after its registered expert
            (``npr``, ``clip``...), so two experts of one kind need explicit names.
        weights: one non-negative weight per expert (default all 1), used by weighted rules.
        aggregator: the ensemble's default fusion rule (a registered aggregator).
        card: extra JSON-ready provenance, stored under ``card``.

    Every file an expert's manifest lists is copied into ``out`` and its size and SHA-256 are checked on the copy
    itself; each copy is then loaded (its plugin must be installed), so ``out`` holds no reference outside itself
    and ``fdcore predict``, ``evaluate``, ``calibrate`` and :func:`load_ensemble` accept it.
    """
    from fdcore import registry
    from fdcore.expert_io import (CONFIG_FILE, MANIFEST_FILE, copy_verified_expert, load_expert_with_identity,
                                  read_expert_config)
    from fdcore.fileio import new_directory_atomic

    out = Path(out)
    if out.exists() or out.is_symlink():
        raise EnsembleError(f"{out} already exists; choose a new ensemble directory (an ensemble is never "
                            "overwritten)")
    if not experts:
        raise EnsembleError("an ensemble needs at least one expert: give --expert DIR (repeatable)")
    try:
        registry.get_aggregator(aggregator)
    except registry.UnknownNameError as exc:
        raise EnsembleError(f"--aggregator: {exc}") from None
    if weights is not None and len(weights) != len(experts):
        raise EnsembleError(f"{len(weights)} weights for {len(experts)} experts; give one --weight per --expert, "
                            "in the same order")
    named = []
    for item in experts:
        name, directory = (item if isinstance(item, tuple) else (None, item))
        directory = Path(directory)
        if not directory.is_dir():
            raise EnsembleError(f"expert {directory} is not a directory; pass the folder holding expert.json "
                                "(a training run's OUTPUT_DIR/expert)")
        if not (directory / CONFIG_FILE).is_file() or not (directory / MANIFEST_FILE).is_file():
            hint = (" (that is an ensemble: pass its member directories)" if (directory / ENSEMBLE_FILE).is_file()
                    else "")
            raise EnsembleError(f"{directory} is not an fdcore expert directory: it needs {CONFIG_FILE} and "
                                f"{MANIFEST_FILE}{hint}")
        kind = read_expert_config(directory).get("expert")
        named.append((name or str(kind), directory))
    names = [name for name, _ in named]
    duplicates = sorted({name for name in names if names.count(name) > 1})
    if duplicates:
        raise EnsembleError(f"member names must be unique, and {', '.join(map(repr, duplicates))} appears more than "
                            "once; name the members: --expert NAME=DIR (e.g. clip_1=runs/a/expert "
                            "clip_2=runs/b/expert)")
    members = _validate_members([{"name": name, "path": name, "weight": 1.0 if weights is None else weights[i]}
                                 for i, name in enumerate(names)], "ensemble create")
    sources = {}
    with new_directory_atomic(out) as staging:
        for (name, directory), member in zip(named, members):
            copied = copy_verified_expert(directory, staging / name)
            # the copy loads: its plugin is installed, its config is sound and its weights fit its architecture
            _, identity = load_expert_with_identity(copied)
            sources[name] = {"source": str(directory.resolve()), "identity": identity}
        write_ensemble(staging, members, aggregator=aggregator,
                       card={**(card or {}), "members": sources})
    return out


def read_ensemble_json(directory) -> dict:
    path = Path(directory) / ENSEMBLE_FILE
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise EnsembleError(f"cannot read {path}: {exc}") from exc
    if not isinstance(document, dict) or document.get("format") != FORMAT_NAME \
            or document.get("format_version") != FORMAT_VERSION:
        raise EnsembleError(f"{path} is not an {FORMAT_NAME} v{FORMAT_VERSION} file (see docs/predict.md)")
    document["experts"] = _validate_members(document.get("experts"), str(path))
    if not isinstance(document.get("aggregator", "mean"), str):
        raise EnsembleError(f"{path}: 'aggregator' must be a registered aggregator name")
    calibration = document.get("calibration")
    if calibration is not None and (not isinstance(calibration, str) or not _MEMBER_NAME.match(calibration)):
        raise EnsembleError(f"{path}: 'calibration' must be the name of a file inside the ensemble directory, got "
                            f"{calibration!r}")
    return document


def inside(directory: Path, relative: str, what: str) -> Path:
    """``directory / relative`` after checking that it resolves inside ``directory`` (symbolic links included)."""
    root = Path(directory).resolve()
    target = (Path(directory) / relative).resolve()
    if target != root and root not in target.parents:
        raise EnsembleError(f"{what} {relative!r} of {directory} resolves to {target}, outside the ensemble folder "
                            "(a symbolic link?); an ensemble must hold its experts and files itself")
    return Path(directory) / relative


def featdistill_files(directory) -> list[str]:
    """``Expert_<n>_<tag>.pth`` files of a FeatDistill release folder, in expert-number order."""
    directory = Path(directory)
    if not directory.is_dir():
        return []
    found = [(int(match.group(1)), entry.name) for entry in directory.iterdir()
             if (match := _FEATDISTILL_FILE.match(entry.name))]
    return [name for _, name in sorted(found)]


def load_ensemble(path, device: str | None = "auto", precision: str | None = None,
                  skip_hash_check: bool = False, expert_config: dict | None = None,
                  scoring_chunk: int | None = None) -> Ensemble:
    """Load an ensemble directory, a single fdcore expert directory, or a FeatDistill release folder.

    Args:
        path: a directory with ``ensemble.json``, with ``expert.json`` (a one-expert ensemble), or with
            ``Expert_<n>_<tag>.pth`` files (FeatDistill release: mean of the experts' P(fake)).
        device: ``auto`` (GPU when visible), ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` or ``fp16`` (default fp32 on CPU, fp16 on GPU): weights are cast to it;
            ``int8`` (CPU only): linear layers dynamically quantised, see :mod:`fdcore.int8`.
        skip_hash_check: load a FeatDistill release that has no manifest.json (the identity still hashes the
            bytes that were loaded).
        expert_config: FeatDistill releases only: ``{file tag: constructor kwargs}`` for checkpoints whose
            architecture is not the plugin's default (e.g. a smaller backbone); see fdcore.featdistill.
        scoring_chunk: images per expert forward call (default :data:`SCORING_CHUNK`, 8; partial chunks are padded).
            Scores depend on it in their last bits and on nothing else about batching; 1 suits scoring one image at
            a time (no padding), and is then equally reproducible.
    """
    from fdcore.expert_io import CONFIG_FILE, load_expert_with_identity

    directory = Path(path)
    if not directory.is_dir():
        raise EnsembleError(f"ensemble {directory} does not exist or is not a directory; pass a folder holding "
                            f"{ENSEMBLE_FILE}, an fdcore expert (expert.json) or a FeatDistill release (Expert_*.pth)")
    device = resolve_device(device)
    precision = resolve_precision(precision, device)
    dtype = torch_dtype(precision)
    if (directory / ENSEMBLE_FILE).is_file():
        document = read_ensemble_json(directory)
        members = []
        for spec in document["experts"]:
            expert_dir = inside(directory, spec["path"], "expert")
            expert, identity = load_expert_with_identity(expert_dir, device=device, dtype=dtype)
            members.append(Member(spec["name"], ready_for_precision(expert, precision), spec["weight"], identity,
                                  str(expert_dir)))
        calibration = document.get("calibration")
        calibration_identity = None
        if calibration:
            calibration_path = inside(directory, calibration, "calibration")
            if not calibration_path.is_file():
                raise EnsembleError(f"{directory / ENSEMBLE_FILE} names calibration {calibration!r}, which is missing")
            calibration_bytes = calibration_path.read_bytes()  # read once: what is hashed is what is used
            calibration_identity = hashlib.sha256(calibration_bytes).hexdigest()
            from fdcore.calibration import Calibration

            calibrator = Calibration.from_bytes(calibration_bytes, str(calibration_path))
        else:
            calibrator = None
        return Ensemble(members, aggregator=document.get("aggregator") or "mean", kind=FORMAT_NAME,
                        source=str(directory.resolve()), device=device, precision=precision,
                        card=document.get("card"), calibration=calibration_identity, calibrator=calibrator,
                        threshold=document.get("threshold"), scoring_chunk=scoring_chunk)
    if (directory / CONFIG_FILE).is_file():
        expert, identity = load_expert_with_identity(directory, device=device, dtype=dtype)
        expert = ready_for_precision(expert, precision)
        member = Member(expert.name, expert, 1.0, identity, str(directory))
        return Ensemble([member], aggregator="mean", kind="fdcore-expert", source=str(directory.resolve()),
                        device=device, precision=precision, scoring_chunk=scoring_chunk)
    files = featdistill_files(directory)
    if files:
        try:
            from fdcore import featdistill
        except ImportError as exc:
            raise EnsembleError(f"{directory} looks like a FeatDistill release ({', '.join(files)}) but the "
                                f"FeatDistill importer (fdcore.featdistill) is not available: {exc}") from exc
        members = []
        for item in featdistill.iter_featdistill_release(directory, skip_hash_check=skip_hash_check, device=device,
                                                         dtype=dtype, expert_config=expert_config):
            # item.sha256 hashes the very bytes that were deserialised, verified or not.
            expert = ready_for_precision(item.expert.to(device=device, dtype=dtype).eval(), precision)
            members.append(Member(item.name, expert, 1.0,
                                  f"sha256:{item.sha256}", str(item.source.path)))
        return Ensemble(members, aggregator="mean", kind="featdistill-release", source=str(directory.resolve()),
                        device=device, precision=precision,
                        card={"featdistill_release": [m.source for m in members],
                              "hashes_checked": not skip_hash_check}, scoring_chunk=scoring_chunk)
    raise EnsembleError(f"{directory} is not an ensemble: expected {ENSEMBLE_FILE}, an fdcore expert "
                        "(expert.json + model.safetensors + manifest.json) or a FeatDistill release "
                        "(Expert_<n>_<tag>.pth files)")
