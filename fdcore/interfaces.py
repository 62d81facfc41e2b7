"""The four plugin interfaces. Each is an ABC with class-level metadata and one or two abstract methods;
the concrete methods around them are the shared helpers every implementation gets for free."""

from __future__ import annotations

import abc
import math
from typing import Any, Callable, ClassVar, Sequence

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

    What :func:`fdcore.testing.check_expert` holds every expert to (built from :meth:`tiny_config`):

    * :meth:`preprocess` gives float32 ``[B * crops, 3, S, S]``; :meth:`forward` gives floating logits ``[B, 2]``;
      :meth:`probabilities` gives float32 ``[B]`` in [0, 1], identical on a repeated call in eval mode and
      independent of the batch it is computed in.
    * :meth:`describe` holds ``input_size`` and ``parameters`` (positive ints).
    * With :attr:`default_feature_layers` declared, :meth:`features` returns exactly those layers as ``[B, N, C]``
      token maps (``N = rows * columns`` when :attr:`feature_grid` is set) and :meth:`forward_with_features`
      agrees with :meth:`forward` and :meth:`features` (without, the expert cannot be distilled).
    * :meth:`get_config` is JSON-ready and :meth:`from_config` rebuilds the same parameter shapes; a
      ``save_expert`` / ``load_expert`` round trip is bit-identical; bf16 weights and CPU autocast stay within
      0.03 of fp32, int8 dynamic quantisation (at least one ``nn.Linear``) within 0.02.
    * With :attr:`supports_gradient_checkpointing`, checkpointing changes no gradient; without it,
      :meth:`enable_gradient_checkpointing` is not overridden.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # Layers whose token maps :meth:`features` returns when none are asked for.
    default_feature_layers: ClassVar[tuple[str, ...]] = ()
    # Recipe options (keys of fdcore.recipes.two_stage.DEFAULTS) this expert trains best with, e.g. a from-scratch
    # CNN's learning rate; the training recipe uses them wherever the user set nothing else.
    training_defaults: ClassVar[dict[str, Any]] = {}
    # True when enable_gradient_checkpointing() works (`fdcore train --gradient-checkpointing` refuses the expert
    # otherwise). A subclass that overrides enable_gradient_checkpointing without setting it gets True.
    supports_gradient_checkpointing: ClassVar[bool] = False
    # (rows, columns) of the patch tokens in features(): token ``r * columns + c`` is patch (r, c); None when the
    # tokens are not a grid the caller may rely on. A subclass may override it with a property.
    feature_grid: tuple[int, int] | None = None
    # Whether checkpointing is on now; experts that support it override this (a property is fine).
    gradient_checkpointing_enabled: bool = False

    preprocessing: Preprocessing
    config: dict

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        # Experts written before the flag existed declared support by implementing the method; they keep training.
        if "enable_gradient_checkpointing" in cls.__dict__ and "supports_gradient_checkpointing" not in cls.__dict__:
            cls.supports_gradient_checkpointing = True

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

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations during the backward pass instead of storing them (training memory); must not change
        any gradient. Implement it together with ``supports_gradient_checkpointing = True``."""
        raise NotImplementedError(f"expert {self.name!r} does not support gradient checkpointing")

    def disable_gradient_checkpointing(self) -> None:
        raise NotImplementedError(f"expert {self.name!r} does not support gradient checkpointing")

    @classmethod
    def describe(cls) -> dict:
        """JSON-ready metadata for ``fdcore list experts``, computed without downloading or allocating weights.

        Every expert returns at least ``input_size`` (int: the side of the preprocessed input) and ``parameters``
        (int: the parameter count of the default construction); extra keys become extra columns. The base
        returns ``{}``, so a subclass must override it.
        """
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

    The training recipe uses a distiller in this order: it reads :attr:`views` (how many degraded views of each
    image the batches carry) and :attr:`needs_alignment`; adds :meth:`trainable_modules` to the optimizer; when
    :attr:`gathers`, passes the cross-process gather function to :meth:`set_gather`; then, every training step,
    calls :meth:`student_step` (never :meth:`loss` directly) and, after every optimizer step,
    :meth:`after_optimizer_step`. Checkpoints store :meth:`state_dict` and resume with :meth:`load_state_dict`.
    :func:`fdcore.testing.check_distiller` checks each of these.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    # True when the loss compares features position by position, so pixel-moving degradations must be off.
    needs_alignment: ClassVar[bool] = False
    # Independently degraded views of each image per batch: 1 gives batch["pixels"]; 2 adds batch["pixels_view2"].
    views: ClassVar[int] = 1
    # The former name of `views`, kept equal to it: a subclass may set either, and old code may read either.
    needs_views: ClassVar[int] = 1
    # True when the distiller pools tensors from every process (CRD enqueues every process's teacher keys as
    # negatives): a distributed trainer then calls set_gather, and the distiller calls self.gather(tensor).
    gathers: ClassVar[bool] = False
    _gather_function: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __init_subclass__(cls, **kwargs: Any):
        super().__init_subclass__(**kwargs)
        if "needs_views" in cls.__dict__ and "views" not in cls.__dict__:
            cls.views = cls.needs_views
        cls.needs_views = cls.views

    def __init__(self, teacher: Expert | None = None, **options: Any):
        self.teacher = teacher
        self.options = options
        if teacher is not None:
            teacher.eval()
            teacher.requires_grad_(False)

    @abc.abstractmethod
    def loss(self, student_out: Any, teacher_out: Any, batch: Any) -> torch.Tensor:
        """The distillation term (a scalar tensor) for one batch, from what :meth:`student_step` passes.

        The recipe never calls this itself. The base :meth:`student_step` passes the student's and the teacher's
        token maps ``{layer: [B, N, C]}`` of the same pixels; a distiller that overrides :meth:`student_step`
        decides what arrives here (CRD passes the student's and the momentum teacher's embeddings ``[B, D]``).
        """

    @torch.no_grad()
    def teacher_outputs(self, pixels: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        if self.teacher is None:
            raise RuntimeError(f"distiller {self.name!r} has no teacher")
        self.teacher.eval()
        return self.teacher.features(pixels, layers)

    def student_step(self, student, batch: dict, layers: Sequence[str] | None = None
                     ) -> tuple[torch.Tensor, torch.Tensor]:
        """One training step's student logits ``[B, 2]`` and distillation term (a scalar tensor): the one method the
        recipe calls per batch. Override when the loss needs other inputs (several views, projections).

        ``student(pixels, layers)`` returns ``(logits, {layer: tokens})`` in one forward pass (the training wrapper
        :class:`fdcore.training.StudentWithFeatures`, possibly inside DDP); ``batch["pixels"]`` is its input,
        ``batch["label"]`` the labels, and with :attr:`views` = 2 ``batch["pixels_view2"]`` the second view.
        ``layers`` is the recipe's ``feature_layers`` option (None: the expert's defaults).
        """
        logits, student_features = student(batch["pixels"], layers)
        teacher_features = self.teacher_outputs(batch["pixels"], layers)
        return logits, self.loss(student_features, teacher_features, batch)

    def set_gather(self, gather: Callable[[torch.Tensor], torch.Tensor] | None) -> None:
        """Receive the distributed trainer's gather (``accelerate.Accelerator.gather``: a tensor from every process,
        concatenated along dim 0), or None to gather nothing. The recipe calls this only when :attr:`gathers`."""
        self._gather_function = gather

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` from every process, concatenated along dim 0; this process's own when nothing was set."""
        return tensor if self._gather_function is None else self._gather_function(tensor)

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
