"""An ensemble in memory: its experts, fusion and calibration, and per-expert scoring of resized batches.

The on-disk format and loading (fdcore ensembles, single experts, FeatDistill releases) live in
:mod:`fdcore.ensemble_io`; the decode -> score -> fuse path every caller uses is :mod:`fdcore.scoring`.

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
from typing import Any, Sequence

import numpy as np

from fdcore.errors import FdcoreError

FORMAT_NAME = "fdcore-ensemble"
PRECISIONS = ("fp32", "bf16", "fp16", "int8")
# Images per expert forward call, always (the last chunk padded): scores independent of --batch-size. Eight keeps the
# cost of padding small and big models as fast as at batch 16 (measured: CLIP ViT-L/14 0.98x, NPR 224 px 0.98x).
SCORING_CHUNK = 8


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


def ensemble_identity(kind: str, members: Sequence[tuple[str, float, str]], calibration: str | None) -> str:
    """The identity of an ensemble: its kind, each member's ``(name, weight, identity)`` in order, and the SHA-256
    of its calibration file (None without one). Nothing else (cards, model cards, the default aggregator) is in it."""
    return _sha256_json({"kind": kind, "members": [[name, weight, identity] for name, weight, identity in members],
                         "calibration": calibration})


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
        self.identity = ensemble_identity(kind, [(m.name, m.weight, m.identity) for m in members], calibration)
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
    def aggregator_for(self, name=None):
        """The registered aggregator instance for ``name`` (``UnknownNameError`` lists the valid names); an
        already resolved instance is returned as it is."""
        from fdcore import registry
        from fdcore.interfaces import Aggregator

        if isinstance(name, Aggregator):
            return name
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

    def fuse(self, probabilities, aggregator=None, weights: Sequence[float] | None = None):
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
                      max_aspect_ratio: float | None = None, fetch=None) -> list[dict]:
        """Score files or URLs with the same safety checks as ``fdcore predict``; one dict per path, in order.

        Each dict has ``path``, ``score`` (None when not scored), ``probabilities`` ({expert name: P}),
        ``error`` (a reason code or None), ``detail`` and ``notes`` (pixel-policy notes such as ``exif_unreadable``).
        A URL (``https://``, ``s3://``...) is fetched under ``fetch`` (a :class:`fdcore.remote.FetchPolicy`;
        default: the limits of ``fdcore predict``, public addresses only unless ``FDCORE_ALLOW_PRIVATE_URLS=1``).
        """
        from fdcore import scoring
        from fdcore.remote import RemoteImage, from_environment, is_remote

        if isinstance(paths, (str, bytes, os.PathLike)):
            raise TypeError(f"predict_paths takes a list of paths, got the single path {paths!r}; pass [path]")
        fusion = scoring.Fusion.resolve(self, aggregator, weights)
        fetch = fetch or from_environment()
        results, accepted = [], []
        for path in paths:
            source = (RemoteImage(path, fetch) if isinstance(path, str) and is_remote(path)
                      else os.path.realpath(path))
            decoded = scoring.decode(source, self.geometries, max_pixels, max_aspect_ratio)
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


