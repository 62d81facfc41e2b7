"""The four plugin interfaces. Each is an ABC with class-level metadata and one or two abstract methods;
the concrete methods around them are the shared helpers every implementation gets for free."""

from __future__ import annotations

import abc
import math
from typing import Any, ClassVar, Sequence

import numpy as np
import torch

from fdcore.errors import FdcoreError
from fdcore.preprocess import Preprocessing


class Expert(torch.nn.Module, metaclass=abc.ABCMeta):
    """One detector: a backbone plus a head, mapping preprocessed pixels to logits ``[B, 2]`` (index 1 = AI-generated).

    Subclasses set ``name`` and ``description``, set ``self.preprocessing`` (a :class:`fdcore.Preprocessing`) and
    ``self.config`` (JSON-ready constructor arguments that rebuild the same architecture without downloading
    anything) in ``__init__``, and implement :meth:`forward`. Heavy imports such as transformers belong in
    ``__init__``, never at module level.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Layers whose token maps :meth:`features` returns when none are asked for.
    default_feature_layers: ClassVar[tuple[str, ...]] = ()
    # Recipe options (keys of fdcore.recipes.two_stage.DEFAULTS) this expert trains best with, e.g. a from-scratch
    # CNN's learning rate; the training recipe uses them wherever the user set nothing else.
    training_defaults: ClassVar[dict[str, Any]] = {}

    preprocessing: Preprocessing
    config: dict

    @abc.abstractmethod
    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, 2]`` for preprocessed pixels ``[B, 3, S, S]``."""

    def preprocess(self, images: Sequence[Any]) -> torch.Tensor:
        """PIL images (RGB) -> the normalised batch ``[B * K, 3, S, S]`` this expert expects (K =
        ``preprocessing.crops`` windows per image, consecutive; 1 for most experts)."""
        return self.preprocessing.batch(images)

    def probabilities(self, pixels: torch.Tensor, crops_per_image: int = 1) -> torch.Tensor:
        """P(AI-generated) per image, ``[B]`` float32.

        With ``crops_per_image`` K > 1, ``pixels`` holds K consecutive windows of each image (``[B * K, 3, S, S]``,
        a ``crops`` grid of :class:`fdcore.Preprocessing`) and the logits are averaged over each image's windows
        before the softmax.
        """
        logits = self.forward(pixels).float()
        if crops_per_image > 1:
            logits = logits.view(-1, crops_per_image, logits.shape[-1]).mean(dim=1)
        return torch.softmax(logits, dim=-1)[:, 1]

    def features(self, pixels: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Token feature maps ``{layer: [B, N, C]}`` of the named layers (default :attr:`default_feature_layers`)."""
        raise NotImplementedError(f"expert {self.name!r} does not expose intermediate features")

    def forward_with_features(self, pixels: torch.Tensor, layers: Sequence[str] | None = None
                              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits and token maps together; override to compute both in one pass (training calls this)."""
        return self.forward(pixels), self.features(pixels, layers)

    def get_config(self) -> dict:
        return dict(getattr(self, "config", {}))

    @classmethod
    def from_config(cls, config: dict) -> "Expert":
        """Rebuild the architecture (random weights) from :meth:`get_config`'s output."""
        return cls(**config)

    @classmethod
    def check_config(cls, config: Any) -> None:
        """Refuse a saved config before anything is built from it: it comes from a file anyone may have edited.

        Raise ``ValueError`` naming the field. The base check: a JSON object whose keys the constructor accepts.
        Override to bound sizes (a config must not make loading allocate gigabytes or spin for minutes before
        the weights are checked against it) and to forbid options that reach outside the expert's folder (a Hub id,
        a path), then call ``super().check_config(config)``.
        """
        import inspect

        if not isinstance(config, dict):
            raise ValueError(f"config must be a JSON object of constructor arguments, got {type(config).__name__}")
        parameters = inspect.signature(cls.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
            unknown = sorted(set(config) - set(parameters) - {"self"})
            if unknown:
                raise ValueError(f"config has unknown field(s) {unknown}; {cls.__name__} accepts "
                                 f"{sorted(set(parameters) - {'self'})}")

    @classmethod
    def describe(cls) -> dict:
        return {}

    @classmethod
    def tiny_config(cls) -> dict:
        """Constructor kwargs for a small, fast instance with random weights and no download (conformance tests,
        smoke runs); ``{}`` means the default construction is already small."""
        return {}

    @classmethod
    def demo_options(cls, image_size: int) -> dict | None:
        """Constructor kwargs of a small instance that ``fdcore demo`` trains from scratch on ``image_size`` px
        images in a minute or two on a CPU, or None (the default) to leave this expert out of the demo."""
        return None


class Degrader(metaclass=abc.ABCMeta):
    """One image degradation with a severity in [0, 1]: 0 is the identity, levels 1..5 are ``level / 5``.

    Implement :meth:`apply`; every random choice must come from ``rng``. :meth:`__call__` checks the input and
    output so that a broken operator fails loudly instead of passing a clean or corrupt image on.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    category: ClassVar[str] = ""
    moves_pixels: ClassVar[bool] = False
    changes_size: ClassVar[bool] = False

    @abc.abstractmethod
    def apply(self, image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
        """Degrade an ``H x W x 3`` uint8 image at ``0 < severity <= 1``; must not modify ``image``."""

    def __call__(self, image: np.ndarray, severity: float, rng: np.random.Generator) -> np.ndarray:
        if not isinstance(image, np.ndarray) or image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise TypeError(f"degrader {self.name!r} expects an HxWx3 uint8 array, got "
                            f"{getattr(image, 'dtype', type(image).__name__)} {getattr(image, 'shape', '')}")
        if not (isinstance(severity, (int, float, np.floating)) and 0.0 <= float(severity) <= 1.0):
            raise ValueError(f"degrader {self.name!r}: severity must be in [0, 1], got {severity!r}")
        if float(severity) == 0.0:
            return image.copy()
        try:
            out = self.apply(image, float(severity), rng)
        except FdcoreError as exc:  # a user-facing refusal (e.g. an image too large for a codec): say whose
            if self.name not in str(exc):
                exc.args = (f"degrader {self.name!r}: {exc}",)
            raise
        if not isinstance(out, np.ndarray) or out.dtype != np.uint8 or out.ndim != 3 or out.shape[2] != 3:
            raise RuntimeError(f"degrader {self.name!r} returned {getattr(out, 'dtype', type(out).__name__)} "
                               f"{getattr(out, 'shape', '')}, not an HxWx3 uint8 image")
        if not self.changes_size and out.shape != image.shape:
            raise RuntimeError(f"degrader {self.name!r} changed the size {image.shape} -> {out.shape} but does not "
                               "declare changes_size")
        return out

    def parameters(self, severity: float) -> dict:
        """Scalar parameters this severity means (recorded with each application; replay needs only the seed)."""
        return {}

    @classmethod
    def describe(cls) -> dict:
        return {"category": cls.category, "moves_pixels": cls.moves_pixels, "changes_size": cls.changes_size}


class Distiller(metaclass=abc.ABCMeta):
    """A distillation loss against a frozen teacher expert.

    The teacher is put in eval mode with gradients off at construction, and :meth:`teacher_outputs` keeps it
    that way (no grad, eval mode even if someone called ``train()`` on it since).
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # True when the loss compares features position by position, so pixel-moving degradations must be off.
    needs_alignment: ClassVar[bool] = False

    def __init__(self, teacher: Expert | None = None, **options: Any):
        self.teacher = teacher
        self.options = options
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    @abc.abstractmethod
    def loss(self, student_out: Any, teacher_out: Any, batch: Any) -> torch.Tensor:
        """The distillation term (a scalar tensor) for one batch."""

    @torch.no_grad()
    def teacher_outputs(self, pixels: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            raise RuntimeError(f"distiller {self.name!r} has no teacher")
        self.teacher.eval()
        return self.teacher.features(pixels, layers)

    def student_step(self, student, batch: dict, layers: Sequence[str] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step's student logits and distillation term; override when the loss needs other inputs
        (several views, projections).

        ``student(pixels, layers)`` returns ``(logits, {layer: tokens})`` in one forward pass (the training wrapper
        :class:`fdcore.training.StudentWithFeatures`, possibly inside DDP); ``batch["pixels"]`` is its input.
        """
        logits, student_features = student(batch["pixels"], layers)
        teacher_features = self.teacher_outputs(batch["pixels"], layers)
        return logits, self.loss(student_features, teacher_features, batch)

    def trainable_modules(self) -> list[torch.nn.Module]:
        """Modules the distiller trains alongside the student (projection heads); the optimizer includes them."""
        return []

    def after_optimizer_step(self, student: Expert, step: int, total_steps: int) -> None:
        """Called after each optimizer step (momentum teachers update here)."""

    def state_dict(self) -> dict:
        """State beyond the student that a checkpoint must keep (queues, momentum teachers)."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        pass

    @classmethod
    def describe(cls) -> dict:
        return {"needs_alignment": cls.needs_alignment}


class Aggregator(metaclass=abc.ABCMeta):
    """Fuses per-expert P(AI-generated) ``[n_experts, B]`` into one probability per image ``[B]``.

    Implement :meth:`fuse`; :meth:`__call__` rejects NaN, infinite or out-of-range inputs and bad weights.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    uses_weights: ClassVar[bool] = False  # accepts per-expert weights
    requires_weights: ClassVar[bool] = False
    # True when an image's result depends on the other images fused with it (ranks): fuse the whole set at once.
    set_level: ClassVar[bool] = False

    @abc.abstractmethod
    def fuse(self, probs: torch.Tensor, weights: torch.Tensor | None) -> torch.Tensor:
        """Fused probabilities ``[B]`` from validated ``probs`` (float64) and normalised ``weights`` or None."""

    def __call__(self, probs: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
        probs = torch.as_tensor(probs)
        if probs.ndim != 2 or probs.shape[0] == 0:
            raise ValueError(f"aggregator {self.name!r} expects probabilities [n_experts, B], got shape "
                             f"{tuple(probs.shape)}")
        values = probs.detach().to(torch.float64)
        if not torch.isfinite(values).all():
            raise ValueError(f"aggregator {self.name!r}: probabilities contain NaN or infinity")
        if (values < 0).any() or (values > 1).any():
            raise ValueError(f"aggregator {self.name!r}: probabilities must lie in [0, 1], got range "
                             f"[{values.min().item():.6g}, {values.max().item():.6g}]")
        if weights is None and self.requires_weights:
            raise ValueError(f"aggregator {self.name!r} needs one weight per expert (--weights or ensemble.json)")
        if weights is not None and not self.uses_weights:
            raise ValueError(f"aggregator {self.name!r} does not take weights; use 'weighted' or 'logit-mean'")
        if weights is not None:
            weights = torch.as_tensor(weights, dtype=torch.float64)
            if weights.shape != (values.shape[0],):
                raise ValueError(f"aggregator {self.name!r}: {values.shape[0]} experts but {weights.numel()} weights")
            if not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
                raise ValueError(f"aggregator {self.name!r}: weights must be finite, non-negative and not all zero, "
                                 f"got {weights.tolist()}")
            weights = weights / weights.sum()
        fused = self.fuse(values, weights)
        if fused.shape != (values.shape[1],) or not torch.isfinite(fused).all():
            raise RuntimeError(f"aggregator {self.name!r} returned an invalid result of shape {tuple(fused.shape)}")
        return fused.clamp(0.0, 1.0).to(probs.dtype if probs.is_floating_point() else torch.float32)

    @classmethod
    def describe(cls) -> dict:
        return {"uses_weights": cls.uses_weights, "requires_weights": cls.requires_weights,
                "set_level": cls.set_level}


def level_to_severity(level: int) -> float:
    """Integer level 1..5 -> severity in (0, 1] (0 stays the identity)."""
    if isinstance(level, bool) or not isinstance(level, (int, np.integer)) or not 0 <= level <= 5:
        raise ValueError(f"level must be an integer from 0 to 5, got {level!r}")
    return int(level) / 5.0


def severity_to_level(severity: float) -> int:
    """The nearest integer level for a severity (0 for the identity)."""
    return int(math.floor(float(severity) * 5 + 0.5))
