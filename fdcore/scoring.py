"""The one scoring path: decode an untrusted image once per geometry, score batches of decoded images, fuse.

Every caller goes through these three steps, so a score cannot depend on who asked for it:

* :func:`decode` — a file (opened with :func:`fdcore.images.open_image_file`, beneath its listed root), a URL
  (fetched by :mod:`fdcore.remote`), encoded bytes (an upload) or a caller's PIL image -> :class:`Decoded` (the resized ``uint8`` arrays, one per geometry) or
  :class:`Rejected` (a reason code from docs/predict.md). Never raises for a bad image.
* :func:`expert_probabilities` — decoded images -> P(AI-generated) per expert ``[n_experts, B]``. Each expert runs on
  fixed chunks (:meth:`fdcore.Ensemble.probabilities_from_resized`), so the result for an image does not depend on
  the other images of its batch.
* :class:`Fusion` — the fusion rule, its validated weights and whether the ensemble's calibration applies, resolved
  once per run (unknown names, bad weights and a plugin rule that fails on a probe are refused before any image is
  scored), then applied to probabilities.

Users: ``fdcore predict`` (DataLoader workers call :func:`decode`), ``fdcore evaluate``, ``Ensemble.predict_paths`` /
``predict_pil``, and ``fdcore serve`` (decoding in a thread pool, the experts in one batching thread).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np

from fdcore.images import DEFAULT_MAX_ASPECT_RATIO, DEFAULT_MAX_PIXELS, ImageRejected

# Columns per fusion call for per-image rules: every call has this shape, whatever the number of images.
FUSION_CHUNK = 64


@dataclasses.dataclass
class Decoded:
    """An accepted image: ``arrays`` holds one resized ``uint8`` array per ensemble geometry."""

    arrays: list[np.ndarray]
    info: dict
    size_bytes: int = 0
    mtime_ns: int = 0


@dataclasses.dataclass
class Rejected:
    """An image that cannot be scored, with its reason code (docs/predict.md) and a human-readable detail."""

    code: str
    detail: str


def decode(source: Any, geometries: Sequence[Any], max_pixels: int | None = None,
           max_aspect_ratio: float | None = None, root: str | os.PathLike | None = None) -> Decoded | Rejected:
    """Decode one untrusted image and resize it for every geometry; never raises for a bad image.

    Args:
        source: a resolved file path (str or PathLike), encoded bytes, a :class:`fdcore.remote.RemoteImage` (fetched
            under its policy; fetch failures are rejections with the codes of :mod:`fdcore.remote`), or an opened PIL
            image.
        geometries: the ensemble's :attr:`fdcore.Ensemble.geometries`.
        max_pixels / max_aspect_ratio: the pixel limits (defaults as ``fdcore predict``); not applied to a PIL
            image, which the caller has already decoded.
        root: for a path, the folder it was listed under: every component below it is opened without following
            links.
    """
    from fdcore.images import load_image, open_image_file, prepare_pil
    from fdcore.preprocess import resize_for_geometries
    from fdcore.remote import RemoteImage, fetch_bytes

    if not isinstance(source, (str, os.PathLike, bytes, bytearray, memoryview, RemoteImage)) and \
            not hasattr(source, "getpixel"):
        raise TypeError(f"cannot score a {type(source).__name__}: pass a file path, encoded bytes, a "
                        "fdcore.remote.RemoteImage or a PIL image")
    max_pixels = max_pixels or DEFAULT_MAX_PIXELS
    max_aspect_ratio = max_aspect_ratio or DEFAULT_MAX_ASPECT_RATIO
    try:
        if isinstance(source, RemoteImage):
            source = fetch_bytes(source.uri, source.policy)
        if isinstance(source, (str, os.PathLike)):
            loaded = open_image_file(source, max_pixels, max_aspect_ratio, root=root)
        elif isinstance(source, (bytes, bytearray, memoryview)):
            if len(source) == 0:
                raise ImageRejected("empty_file", "the upload has zero bytes")
            loaded = load_image(bytes(source), max_pixels=max_pixels, max_aspect_ratio=max_aspect_ratio)
            loaded.size_bytes = len(source)
        else:
            rgb, notes = prepare_pil(source)
            arrays = resize_for_geometries(rgb, geometries)
            return Decoded(arrays, {"format": getattr(source, "format", None) or "", "mode": source.mode,
                                    "width": source.width, "height": source.height, "n_frames": None,
                                    "notes": notes})
        arrays = resize_for_geometries(loaded.image, geometries)
    except ImageRejected as exc:
        return Rejected(exc.code, exc.detail)
    except MemoryError:
        return Rejected("out_of_memory", "ran out of memory decoding")
    except Exception as exc:  # a decoder bug on one hostile file must not stop the others
        return Rejected("decode_failed", f"unexpected {type(exc).__name__}: {exc}")
    info = {"format": loaded.format, "mode": loaded.mode, "width": loaded.width, "height": loaded.height,
            "n_frames": loaded.n_frames, "notes": loaded.notes}
    return Decoded(arrays, info, loaded.size_bytes, loaded.mtime_ns)


def stack(arrays_per_image: Sequence[Sequence[np.ndarray]]) -> list[np.ndarray]:
    """Per-image arrays (one per geometry) -> one ``[B, ...]`` batch per geometry."""
    if not arrays_per_image:
        return []
    return [np.stack([arrays[g] for arrays in arrays_per_image]) for g in range(len(arrays_per_image[0]))]


def expert_probabilities(ensemble, decoded: Sequence[Decoded], batch_size: int = 16) -> np.ndarray:
    """P(AI-generated) per expert ``[n_experts, len(decoded)]`` (float64), in batches of ``batch_size`` images."""
    columns = [ensemble.probabilities_from_resized(stack([item.arrays for item in decoded[start:start + batch_size]]))
               for start in range(0, len(decoded), batch_size)]
    if not columns:
        return np.zeros((len(ensemble.members), 0))
    return np.concatenate(columns, axis=1)


@dataclasses.dataclass(frozen=True)
class Fusion:
    """A fusion rule resolved once for an ensemble: the aggregator, the weights it gets, whether calibration applies.

    Build it with :meth:`resolve`; ``scores`` then fuses (and calibrates) probabilities the same way everywhere.
    """

    aggregator: Any  # the registered fdcore.Aggregator instance
    weights: tuple[float, ...] | None
    calibrated: bool

    @property
    def name(self) -> str:
        return self.aggregator.name

    @property
    def set_level(self) -> bool:
        """True for rules whose score for an image depends on the other images scored with it (``rank-mean``)."""
        return bool(getattr(self.aggregator, "set_level", False))

    @classmethod
    def resolve(cls, ensemble, aggregator: str | None = None, weights: Sequence[float] | None = None,
                use_calibration: bool = True) -> "Fusion":
        """Look the rule up, validate the weights, and fuse a probe so a failing plugin rule is refused now."""
        rule = ensemble.aggregator_for(aggregator)
        chosen = ensemble.fusion_weights(rule, weights)
        ensemble.check_fusion(rule.name, chosen)
        return cls(rule, None if chosen is None else tuple(chosen),
                   bool(use_calibration and ensemble.calibration_applies(rule.name)))

    def raw_scores(self, ensemble, probabilities) -> np.ndarray:
        """Fused, uncalibrated scores ``[B]``; NaN where an expert's probability is not finite (left out of the
        fusion, so one bad image never poisons a set-level rule).

        A per-image rule fuses fixed chunks of :data:`FUSION_CHUNK` columns (the last padded), so an image's score is
        the same bits whether it is fused with a million others (predict) or alone (one upload to the service)."""
        probabilities = np.asarray(probabilities, dtype=np.float64)
        if self.set_level:
            return ensemble.fuse_finite(probabilities, self.name, self.weights, calibrate=False)
        count = probabilities.shape[1]
        out = np.empty(count, dtype=np.float64)
        for start in range(0, count, FUSION_CHUNK):
            piece = probabilities[:, start:start + FUSION_CHUNK]
            taken = piece.shape[1]
            finite = np.isfinite(piece).all(axis=0)
            filled = np.full((piece.shape[0], FUSION_CHUNK), 0.5)
            filled[:, :taken] = np.where(finite, piece, 0.5)
            fused = ensemble.fuse(filled, self.aggregator, self.weights)[:taken]
            out[start:start + taken] = np.where(finite, fused, np.nan)
        return out

    def scores(self, ensemble, probabilities) -> np.ndarray:
        """Fused scores ``[B]``, calibrated when the ensemble's calibration was fitted for this rule."""
        raw = self.raw_scores(ensemble, probabilities)
        if not self.calibrated:
            return raw
        finite = np.isfinite(raw)
        out = raw.copy()
        out[finite] = ensemble.calibrated(raw[finite], self.name)[0]
        return out

    def describe(self) -> dict:
        return {"aggregator": self.name, "weights": None if self.weights is None else list(self.weights),
                "calibrated": self.calibrated}


def decision(score: float, threshold: dict | None) -> str | None:
    """The calibrated operating decision for one fused score: ``ai`` (score >= threshold value), ``real``, or
    ``inconclusive`` inside the threshold's optional ``inconclusive`` band ``[low, high)``; None without a threshold
    or for a score that is not finite."""
    if not threshold or score is None or not np.isfinite(score):
        return None
    band = threshold.get("inconclusive")
    if isinstance(band, (list, tuple)) and len(band) == 2 and band[0] <= score < band[1]:
        return "inconclusive"
    return "ai" if score >= float(threshold["value"]) else "real"


def disagreement(ensemble, fusion: Fusion, probabilities) -> np.ndarray:
    """Per image ``[B]``: True when the members fall on both sides of the threshold, each member's probability put
    through the ensemble's calibration and compared with the threshold as if it were the only expert (the members
    are on the fused score's scale for the averaging rules). All False without a calibrated threshold."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    count = probabilities.shape[1] if probabilities.ndim == 2 else 0
    if not fusion.calibrated or not ensemble.threshold or len(ensemble.members) < 2 or count == 0:
        return np.zeros(count, dtype=bool)
    value = float(ensemble.threshold["value"])
    calls = np.stack([ensemble.calibrated(row, fusion.name)[0] >= value for row in probabilities])
    return calls.any(axis=0) & ~calls.all(axis=0)
