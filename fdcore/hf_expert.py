"""A base class for experts built on a Hugging Face vision transformer: backbone + FeatDistill's MLP head.

A plugin subclasses :class:`HFVisionExpert` and fills in the model-specific class attributes (which transformers
classes, the default Hub repository and architecture, which output is pooled, the normalisation); everything else —
pretrained loading with a clear offline error, random initialisation from a config dict, dense features, SDPA
attention, gradient checkpointing, parameter counts, and strict import of FeatDistill state dicts — lives here.

Module layout (matches FeatDistill's released checkpoints key for key)::

    vision_encoder   the transformers vision model
    classifier       Linear(d, 256) -> ReLU -> Dropout(0.3) -> Linear(256, 2)   (keys classifier.0.*, classifier.3.*)

transformers is imported when an expert is constructed, never when this module is imported.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path
from typing import Any, ClassVar, Mapping, Sequence

import torch
from torch import nn

from fdcore.errors import FdcoreError
from fdcore.interfaces import Expert
from fdcore.preprocess import Preprocessing

HEAD_HIDDEN = 256
HEAD_DROPOUT = 0.3
FEATURE_LAYER_PREFIX = "block_"


class BackboneUnavailableError(FdcoreError, OSError):
    """Pretrained backbone weights could not be found locally or fetched from the Hugging Face Hub."""


class StateDictMismatchError(FdcoreError, ValueError):
    """A state dict does not fit the expert's architecture (missing, unexpected or wrongly shaped tensors)."""


def default_feature_layers(num_layers: int) -> tuple[str, ...]:
    """The documented default: outputs of the blocks at 1/4, 2/4, 3/4 and 4/4 of the depth (1-based, rounded up).

    Evenly spaced blocks constrain low-, mid- and high-level token maps alike during self-distillation; the last
    one is the map the pooled output is computed from. 24 blocks -> 6, 12, 18, 24; 27 -> 7, 14, 21, 27; 2 -> 1, 2.
    """
    if num_layers < 1:
        raise ValueError(f"a vision transformer needs at least one block, got num_hidden_layers={num_layers}")
    indices = sorted({math.ceil(num_layers * quarter / 4) for quarter in range(1, 5)})
    return tuple(f"{FEATURE_LAYER_PREFIX}{index}" for index in indices)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _import_transformers():
    try:
        import transformers
    except ImportError as exc:  # plugins declare the dependency; a broken environment still gets a clear message
        raise FdcoreError("this expert needs the 'transformers' package: pip install 'transformers>=4.40'") from exc
    return transformers


@functools.lru_cache(maxsize=None)
def _generic_config_keys() -> frozenset[str]:
    """Keys every transformers config has (bookkeeping, label maps, output switches): not part of an architecture."""
    return frozenset(_import_transformers().PretrainedConfig().to_dict()) - {"model_type"}


def architecture_dict(config) -> dict[str, Any]:
    """The architecture part of a transformers config as plain JSON: enough to rebuild the model with no download."""
    generic = _generic_config_keys()
    return {key: value for key, value in sorted(config.to_dict().items())
            if key not in generic and not key.startswith("_")}


class HFVisionExpert(Expert):
    """An :class:`fdcore.Expert` made of a Hugging Face vision transformer and FeatDistill's classification head.

    Construction (exactly one source of backbone weights):

    * ``backbone="org/repo"`` or ``backbone="/path/to/dir"``: pretrained weights through ``from_pretrained``. A
      directory is one made by ``save_pretrained`` or ``hf download REPO --local-dir DIR``.
    * ``backbone_config={...}``: random weights, architecture from this dict merged over the class default
      (``{}`` gives the full-size default). For training from scratch, tiny test models and benchmarks.
    * neither: pretrained weights from :attr:`default_backbone`.

    Args:
        head_hidden: width of the head's hidden layer (FeatDistill: 256).
        dropout: dropout before the head's last layer (FeatDistill: 0.3).
        feature_layers: default layers for :meth:`features` (names ``block_<i>``, 1-based); ``None`` gives
            :func:`default_feature_layers`.
        seed: seeds the random initialisation (head, and backbone when built from a config) without touching the
            global RNG; ``None`` draws from the global torch RNG like any module (a training script's ``set_seed``
            then governs it).
        attn_implementation: transformers attention kernel; ``"sdpa"`` (PyTorch scaled-dot-product attention) where
            the model supports it, else ``"eager"``.

    Subclasses set the class attributes below and nothing else.
    """

    # transformers class names, looked up lazily on the transformers module.
    model_class_name: ClassVar[str] = ""
    config_class_name: ClassVar[str] = ""
    # Hub repository of the pretrained backbone, used when neither backbone nor backbone_config is given.
    default_backbone: ClassVar[str] = ""
    # Vision-config kwargs of the default backbone: the real-size architecture, buildable with no download.
    default_architecture: ClassVar[dict] = {}
    # A tiny architecture (merged over the default) for tests and smoke runs.
    tiny_architecture: ClassVar[dict] = {}
    # Which field of the model output feeds the head, and which config key gives its width.
    pooled_output: ClassVar[str] = "pooler_output"
    pooled_dim_key: ClassVar[str] = "hidden_size"
    # Leading tokens that are not image patches (a class token); dropped from dense features.
    prefix_tokens: ClassVar[int] = 0
    mean: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)
    std: ClassVar[tuple[float, float, float]] = (0.5, 0.5, 0.5)
    # File tag of FeatDistill's release files this class imports (Expert_<n>_<tag>.pth); None: not importable.
    featdistill_tag: ClassVar[str | None] = None
    supports_gradient_checkpointing = True

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if cls.default_architecture.get("num_hidden_layers"):
            cls.default_feature_layers = default_feature_layers(int(cls.default_architecture["num_hidden_layers"]))

    def __init__(self, backbone: str | None = None, backbone_config: Mapping[str, Any] | None = None, *,
                 head_hidden: int = HEAD_HIDDEN, dropout: float = HEAD_DROPOUT,
                 feature_layers: Sequence[str] | None = None, seed: int | None = None,
                 attn_implementation: str = "sdpa", resize: str = "short-side"):
        super().__init__()
        if backbone is not None and backbone_config is not None:
            raise ValueError(f"{self.name}: pass backbone= (pretrained weights) or backbone_config= (random weights), "
                             "not both")
        transformers = _import_transformers()
        model_class = getattr(transformers, self.model_class_name)
        if attn_implementation == "sdpa" and not getattr(model_class, "_supports_sdpa", False):
            attn_implementation = "eager"
        rng_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        try:
            if backbone_config is not None:
                config_class = getattr(transformers, self.config_class_name)
                # transformers configs accept any keyword silently: a misspelt key would leave the default in place.
                unknown = sorted(set(backbone_config) - set(config_class().to_dict()))
                if unknown:
                    raise ValueError(f"{self.name}: unknown backbone_config keys {unknown} for "
                                     f"{self.config_class_name}; known keys include "
                                     f"{sorted(self.default_architecture)}")
                architecture = {**self.default_architecture, **dict(backbone_config)}
                config = config_class(**architecture)
                config._attn_implementation = attn_implementation
                self.vision_encoder = model_class(config)
            else:
                self.vision_encoder = self._load_pretrained(model_class, backbone or self.default_backbone,
                                                            attn_implementation)
            self.architecture = architecture_dict(self.vision_encoder.config)
            pooled_dim = int(self.architecture[self.pooled_dim_key])
            self.classifier = nn.Sequential(nn.Linear(pooled_dim, head_hidden), nn.ReLU(), nn.Dropout(dropout),
                                            nn.Linear(head_hidden, 2))
        finally:
            if seed is not None:
                torch.random.set_rng_state(rng_state)
        self.num_layers = int(self.architecture["num_hidden_layers"])
        self.default_feature_layers = tuple(feature_layers) if feature_layers is not None \
            else default_feature_layers(self.num_layers)
        self._check_layers(self.default_feature_layers)
        # resize="crop" takes a centre crop at native resolution (resizing low-passes the pixel-level traces a
        # generator leaves, which matters most for experts trained from scratch); the default is the reference's.
        self.preprocessing = Preprocessing(size=int(self.architecture["image_size"]), mean=self.mean, std=self.std,
                                           resize=resize, interpolation="bicubic")
        self.config = {"backbone_config": self.architecture, "head_hidden": head_hidden, "dropout": dropout,
                       "feature_layers": list(self.default_feature_layers), "seed": seed}
        if resize != "short-side":
            self.config["resize"] = resize

    # ----------------------------------------------------------------- construction helpers

    def _load_pretrained(self, model_class, source: str, attn_implementation: str):
        try:
            from huggingface_hub.errors import HFValidationError
        except ImportError:  # older huggingface_hub
            from huggingface_hub.utils import HFValidationError
        from transformers.utils import logging as transformers_logging

        # A full repository (text tower included) loads fine, but transformers would print a table of the unused
        # keys; completeness is checked below from the loading info instead.
        verbosity = transformers_logging.get_verbosity()
        transformers_logging.set_verbosity_error()
        try:
            model, info = model_class.from_pretrained(source, attn_implementation=attn_implementation,
                                                      output_loading_info=True)
        except (OSError, HFValidationError) as exc:
            where = (f"the local directory {source!r} does not hold a saved {self.model_class_name} "
                     "(config.json and weights)" if Path(source).expanduser().is_dir() else
                     f"{source!r} is not a local directory and the Hugging Face Hub could not provide it "
                     "(offline, or no such repository)")
            raise BackboneUnavailableError(
                f"cannot load the pretrained backbone of expert {self.name!r}: {where}. ({_first_line(exc)}) "
                f"To get the weights, on a machine with internet access run "
                f"`huggingface-cli download {self.default_backbone} --local-dir DIR` (newer huggingface_hub: "
                f"`hf download {self.default_backbone} --local-dir DIR`), copy DIR here and pass `--backbone DIR` "
                f"(Python: backbone='DIR'). To build the architecture with random weights instead (training from "
                f"scratch, benchmarks): `fdcore train ... --init random` (its size from `--backbone-config FILE.json`, "
                f"see docs/training.md; Python: backbone_config={{}})."
            ) from exc
        except (RuntimeError, ValueError) as exc:  # size mismatches, a config of another model type
            raise StateDictMismatchError(f"the weights at {source!r} do not fit expert {self.name!r} "
                                         f"({self.model_class_name}): {_first_line(exc)}") from exc
        finally:
            transformers_logging.set_verbosity(verbosity)
        missing = sorted(info.get("missing_keys") or ())
        if missing:
            # from_pretrained would silently leave these randomly initialised.
            raise StateDictMismatchError(
                f"the weights at {source!r} lack {len(missing)} tensors of expert {self.name!r} "
                f"({self.model_class_name}), e.g. {missing[:4]}: it is not a {self.model_class_name} checkpoint")
        # Checkpoints may be stored in half precision; experts compute in float32 unless cast explicitly.
        return model.float()

    @classmethod
    def small_architecture(cls, hidden: int, layers: int, heads: int, patch_size: int, image_size: int,
                           mlp_ratio: int = 4) -> dict:
        """A ``backbone_config`` for a small from-scratch model of this class's architecture (the demo, the
        miniature reproduction), keeping the pooled output as wide as the blocks."""
        config = {"hidden_size": hidden, "intermediate_size": mlp_ratio * hidden, "num_hidden_layers": layers,
                  "num_attention_heads": heads, "patch_size": patch_size, "image_size": image_size}
        if cls.pooled_dim_key != "hidden_size":
            config[cls.pooled_dim_key] = hidden
        return config

    # Upper bounds for a saved architecture (ViT-g/14 is 1408 x 40, MLP 6144): far above any real model, far below
    # what would make loading allocate gigabytes or build for minutes before the weights are checked.
    CONFIG_LIMITS: ClassVar[dict[str, int]] = {
        "hidden_size": 8192, "intermediate_size": 32768, "num_hidden_layers": 128, "num_attention_heads": 128,
        "patch_size": 1024, "image_size": 4096, "projection_dim": 8192, "num_channels": 4}

    @classmethod
    def check_config(cls, config: Any) -> None:
        """A saved expert carries its whole architecture: no backbone to fetch, bounded sizes, known kernels only."""
        super().check_config(config)
        if config.get("backbone") is not None:
            raise ValueError(f"backbone: a saved expert never loads a backbone from elsewhere (got "
                             f"{config['backbone']!r}); its architecture is backbone_config and its weights are "
                             "model.safetensors")
        architecture = config.get("backbone_config")
        if not isinstance(architecture, dict):
            raise ValueError(f"backbone_config must be a JSON object (the architecture), got "
                             f"{type(architecture).__name__}")
        for key, limit in cls.CONFIG_LIMITS.items():
            if key in architecture:
                value = architecture[key]
                if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= limit:
                    raise ValueError(f"backbone_config.{key} must be an integer from 1 to {limit}, got {value!r}")
        merged = {**cls.default_architecture, **architecture}
        if merged.get("hidden_size", 1) % merged.get("num_attention_heads", 1):
            raise ValueError(f"backbone_config.num_attention_heads ({merged['num_attention_heads']}) must divide "
                             f"hidden_size ({merged['hidden_size']})")
        if merged.get("patch_size", 1) > merged.get("image_size", 1):
            raise ValueError(f"backbone_config.patch_size ({merged['patch_size']}) exceeds image_size "
                             f"({merged['image_size']})")
        for key, value in architecture.items():
            if key.endswith("_implementation") or key.startswith("_"):
                raise ValueError(f"backbone_config.{key} is not part of an architecture (kernels are chosen by "
                                 "fdcore, never by a saved file)")
            if isinstance(value, float) and not math.isfinite(value):
                raise ValueError(f"backbone_config.{key} must be finite, got {value!r}")
        if config.get("attn_implementation", "sdpa") not in ("sdpa", "eager"):
            raise ValueError(f"attn_implementation must be 'sdpa' or 'eager', got {config['attn_implementation']!r}")
        head = config.get("head_hidden", HEAD_HIDDEN)
        if isinstance(head, bool) or not isinstance(head, int) or not 1 <= head <= 65536:
            raise ValueError(f"head_hidden must be an integer from 1 to 65536, got {head!r}")
        dropout = config.get("dropout", HEAD_DROPOUT)
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout < 1:
            raise ValueError(f"dropout must be a number in [0, 1), got {dropout!r}")
        layers = config.get("feature_layers")
        if layers is not None and (not isinstance(layers, list) or not all(isinstance(n, str) for n in layers)):
            raise ValueError(f"feature_layers must be a list of layer names, got {layers!r}")
        seed = config.get("seed")
        if seed is not None and (isinstance(seed, bool) or not isinstance(seed, int)):
            raise ValueError(f"seed must be an integer or null, got {seed!r}")

    @classmethod
    def tiny_config(cls) -> dict:
        """Constructor kwargs for a tiny random-weight instance (tests, smoke runs): no download."""
        return {"backbone_config": dict(cls.tiny_architecture), "seed": 0}

    @classmethod
    def demo_options(cls, image_size: int) -> dict:
        """A two-block transformer of this architecture (8 px patches) for ``fdcore demo``."""
        hidden = 64 if image_size >= 64 else 32
        return {"backbone_config": cls.small_architecture(hidden, 2, heads=2, patch_size=8, image_size=image_size,
                                                          mlp_ratio=2)}

    @classmethod
    def describe(cls) -> dict:
        return {"input_size": int(cls.default_architecture.get("image_size", 0)),
                "parameters": _parameter_count(cls),
                "backbone": cls.default_backbone,
                "feature_layers": list(cls.default_feature_layers),
                "featdistill_tag": cls.featdistill_tag}

    def enable_gradient_checkpointing(self) -> None:
        """Recompute block activations in the backward pass (training memory ~ one block instead of all)."""
        # Non-reentrant checkpointing keeps the RNG state for recomputation and works with frozen inputs.
        if hasattr(self.vision_encoder, "activation_checkpointing_enable"):  # transformers >= 5 name
            self.vision_encoder.activation_checkpointing_enable({"use_reentrant": False})
        else:
            self.vision_encoder.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})

    @property
    def gradient_checkpointing_enabled(self) -> bool:
        return any(getattr(module, "gradient_checkpointing", False) is True for module in self.vision_encoder.modules())

    def disable_gradient_checkpointing(self) -> None:
        if hasattr(self.vision_encoder, "activation_checkpointing_disable"):
            self.vision_encoder.activation_checkpointing_disable()
        else:
            self.vision_encoder.gradient_checkpointing_disable()

    # ----------------------------------------------------------------- forward and features

    @property
    def feature_grid(self) -> tuple[int, int]:
        """(rows, columns) of the patch tokens in :meth:`features`: token ``r * columns + c`` is patch (r, c)."""
        side = int(self.architecture["image_size"]) // int(self.architecture["patch_size"])
        return side, side

    @property
    def available_feature_layers(self) -> tuple[str, ...]:
        return tuple(f"{FEATURE_LAYER_PREFIX}{index}" for index in range(1, self.num_layers + 1))

    def _check_layers(self, layers: Sequence[str]) -> list[int]:
        valid = self.available_feature_layers
        unknown = [layer for layer in layers if layer not in valid]
        if unknown or not layers:
            raise ValueError(f"expert {self.name!r}: unknown feature layers {unknown or '(none given)'}; valid "
                             f"layers are {valid[0]} .. {valid[-1]} (outputs of the transformer blocks, 1-based)")
        return [int(layer[len(FEATURE_LAYER_PREFIX):]) for layer in layers]

    def _encode(self, pixels: torch.Tensor, hidden_states: bool):
        # The embedding's dtype, not a linear layer's: int8-quantised linear layers have no float weight tensor.
        weight_dtype = next(self.vision_encoder.parameters()).dtype
        # Weights cast to bf16 need bf16 inputs; under autocast (float32 weights) the input stays as it is.
        if pixels.is_floating_point() and pixels.dtype != weight_dtype and not torch.is_autocast_enabled(
                pixels.device.type):
            pixels = pixels.to(weight_dtype)
        return self.vision_encoder(pixel_values=pixels, output_hidden_states=hidden_states, return_dict=True)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return self.classifier(getattr(self._encode(pixels, hidden_states=False), self.pooled_output))

    def forward_with_features(self, pixels: torch.Tensor, layers: Sequence[str] | None = None
                              ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Logits ``[B, 2]`` and dense features from ONE backbone pass (what a distillation student needs)."""
        outputs = self._encode(pixels, hidden_states=True)
        logits = self.classifier(getattr(outputs, self.pooled_output))
        return logits, self._token_maps(outputs.hidden_states, layers)

    def features(self, pixels: torch.Tensor, layers: Sequence[str] | None = None) -> dict[str, torch.Tensor]:
        """Patch-token maps ``{block_<i>: [B, rows * columns, hidden]}`` (class token dropped; see
        :attr:`feature_grid`). Default layers: :attr:`default_feature_layers`."""
        return self._token_maps(self._encode(pixels, hidden_states=True).hidden_states, layers)

    def _token_maps(self, hidden_states, layers: Sequence[str] | None) -> dict[str, torch.Tensor]:
        names = list(layers) if layers is not None else list(self.default_feature_layers)
        indices = self._check_layers(names)
        rows, columns = self.feature_grid
        maps = {}
        for name, index in zip(names, indices):
            # hidden_states[0] is the embedding output; hidden_states[i] is the output of block i.
            tokens = hidden_states[index][:, self.prefix_tokens:, :]
            if tokens.shape[1] != rows * columns:
                raise RuntimeError(f"expert {self.name!r}: layer {name} has {tokens.shape[1]} patch tokens, expected "
                                   f"{rows}x{columns}; is the input {self.preprocessing.size}x"
                                   f"{self.preprocessing.size}?")
            maps[name] = tokens
        return maps

    # ----------------------------------------------------------------- FeatDistill checkpoints

    @classmethod
    def from_featdistill_state_dict(cls, state_dict: Mapping[str, torch.Tensor], **config: Any) -> "HFVisionExpert":
        """An expert holding the weights of a FeatDistill checkpoint (keys ``vision_encoder.*``, ``classifier.*``).

        ``config`` are constructor kwargs; by default the architecture is the class's full-size default (no
        download), built without initialising its parameters (:func:`fdcore.expert_io.build_with_state`): the state
        dict's tensors become the parameters (strict: every tensor must be present and no other may be).
        """
        from fdcore.expert_io import build_with_state

        if "backbone" not in config and "backbone_config" not in config:
            config["backbone_config"] = {}
        if "backbone" in config:  # pretrained weights are loaded by from_pretrained, then overwritten
            expert = cls(**config)
            expert.load_featdistill_state_dict(state_dict)
        else:
            expert, _ = build_with_state(lambda: cls(**config),
                                         lambda module, assign: module.load_featdistill_state_dict(state_dict,
                                                                                                   assign=assign))
        return expert.eval()

    def load_featdistill_state_dict(self, state_dict: Mapping[str, torch.Tensor], assign: bool = False) -> None:
        own = self.state_dict()
        state = self._align_backbone_keys(dict(state_dict), set(own))
        missing = sorted(set(own) - set(state))
        unexpected = sorted(set(state) - set(own))
        wrong_shape = [f"{key} {tuple(state[key].shape)} vs {tuple(own[key].shape)}" for key in sorted(own)
                       if key in state and tuple(state[key].shape) != tuple(own[key].shape)]
        if missing or unexpected or wrong_shape:
            raise StateDictMismatchError(
                f"the checkpoint does not fit expert {self.name!r} ({self.architecture.get('num_hidden_layers')} "
                f"blocks, hidden size {self.architecture.get('hidden_size')}): {len(missing)} missing "
                f"{missing[:4]}, {len(unexpected)} unexpected {unexpected[:4]}, {len(wrong_shape)} wrongly shaped "
                f"{wrong_shape[:3]}. A checkpoint trained with another backbone size needs its vision config "
                "(backbone_config)")
        self.load_state_dict(state, strict=True, assign=assign)

    def load_state_dict(self, state_dict, strict: bool = True, assign: bool = False):
        """``nn.Module.load_state_dict`` that also accepts the backbone key layout of the other transformers major
        version (see :meth:`_align_backbone_keys`), so saved experts load across transformers upgrades."""
        state = self._align_backbone_keys(dict(state_dict), set(self.state_dict()))
        return super().load_state_dict(state, strict=strict, assign=assign)

    def _align_backbone_keys(self, state: dict, own_keys: set[str]) -> dict:
        """Map ``vision_encoder.*`` keys onto this model's layout: exactly two known differences are bridged."""
        prefix = "vision_encoder."
        # transformers < 4.31 saved these non-persistent buffers (position_ids index tensors); they hold no weights
        # and the current model rebuilds them, so they are the only keys dropped.
        non_persistent = set()
        for module_name, module in self.vision_encoder.named_modules():
            for buffer_name in getattr(module, "_non_persistent_buffers_set", ()):
                non_persistent.add(f"{module_name}.{buffer_name}" if module_name else buffer_name)
        base = getattr(self.vision_encoder, "base_model_prefix", "")
        non_persistent |= {f"{base}.{name}" for name in non_persistent} if base else set()
        state = {key: value for key, value in state.items()
                 if not (key.startswith(prefix) and key[len(prefix):] in non_persistent)}
        # Some vision models nest their layers under `base_model_prefix` in one transformers major version and not
        # in another; from_pretrained maps between the two, and so does this (all keys or none, then strict).
        ckpt_backbone = [key[len(prefix):] for key in state if key.startswith(prefix)]
        own_backbone = [key[len(prefix):] for key in own_keys if key.startswith(prefix)]
        if base and ckpt_backbone and set(ckpt_backbone) != set(own_backbone):
            def nested(keys):
                return all(key.startswith(base + ".") for key in keys)

            if nested(ckpt_backbone) and not any(key.startswith(base + ".") for key in own_backbone):
                state = {(prefix + key[len(prefix) + len(base) + 1:] if key.startswith(prefix) else key): value
                         for key, value in state.items()}
            elif nested(own_backbone) and not any(key.startswith(base + ".") for key in ckpt_backbone):
                state = {(f"{prefix}{base}.{key[len(prefix):]}" if key.startswith(prefix) else key): value
                         for key, value in state.items()}
        return state


@functools.lru_cache(maxsize=None)
def _parameter_count(expert_class: type) -> int:
    """Parameters of the class's default architecture, counted on the meta device (no memory, no download)."""
    with torch.device("meta"):
        expert = expert_class(backbone_config={})
    return sum(parameter.numel() for parameter in expert.parameters())
