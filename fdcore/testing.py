"""Helpers for plugin authors' tests (and fdcore's own): registering a plugin for the duration of a block, and the
conformance checks fdcore runs on every registered expert, degrader, distiller and aggregator.

Each ``check_*`` function takes a registered name or the class itself, runs the checks of that interface, and raises
``AssertionError`` naming the implementation, the check and what failed; it returns None when everything holds.
``checks=`` runs a subset, by the names in ``EXPERT_CHECKS``, ``DEGRADER_CHECKS``, ``DISTILLER_CHECKS`` and
``AGGREGATOR_CHECKS``, so that a test suite can report each aspect as its own test. See docs/plugins.md, "Testing
your plugin".

torch and numpy are imported inside the functions: importing this module stays as cheap as importing fdcore.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import json
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from fdcore import plugins, registry

EXPERT_CHECKS = ("outputs", "features", "round_trip", "int8", "gradient_checkpointing")
DEGRADER_CHECKS = ("metadata", "identity", "output_contract", "deterministic", "full_strength", "monotone",
                   "weak_strength", "tiny_and_thin")
DISTILLER_CHECKS = ("metadata", "training_step", "state")
AGGREGATOR_CHECKS = ("metadata", "fusion", "invalid_input")

# The categories fdcore's own degraders use; a plugin may declare any non-empty category.
BUILTIN_DEGRADER_CATEGORIES = ("blur", "noise", "compression", "color", "geometric", "environmental", "sensor",
                               "occlusion")


@contextlib.contextmanager
def plugin_registered(plugin: Any, name: str | None = None) -> Iterator[Any]:
    """Register ``plugin`` (a module or object with ``@fdcore.hookimpl`` functions) for the duration of a block.

    Example::

        class MyPlugin:
            @fdcore.hookimpl
            def register_aggregators(self, register):
                register(MyAggregator)

        with plugin_registered(MyPlugin()):
            assert "my-rule" in fdcore.list_aggregators()
    """
    manager = plugins.load_plugins()
    name = name or f"test-plugin-{id(plugin)}"
    unknown = plugins.unknown_hooks(plugin)
    if unknown:
        raise plugins.PluginError(f"{name}: unknown hook(s) {', '.join(unknown)}")
    manager.register(plugin, name=name)
    registry.clear()
    try:
        yield plugin
    finally:
        manager.unregister(name=name)
        registry.clear()


# ----------------------------------------------------------------------------------------------------- shared

def _require(condition: Any, message: str) -> None:
    # A function rather than `assert`: the checks must hold under `python -O` and outside pytest's assertion rewriting.
    if not condition:
        raise AssertionError(message)


def _resolve(kind: str, implementation: Any) -> tuple[type, str]:
    """(class, label for messages) from a registered name or a class of the kind's interface."""
    singular = registry.KINDS[kind].singular
    if isinstance(implementation, str):
        return registry.get(kind, implementation), f"{singular} {implementation!r}"
    base = registry._base_class(registry.KINDS[kind])
    if not (isinstance(implementation, type) and issubclass(implementation, base)):
        raise TypeError(f"expected a registered {singular} name or a subclass of fdcore.{base.__name__}, got "
                        f"{implementation!r}")
    return implementation, f"{singular} {implementation.name or implementation.__qualname__!r}"


def _registered_as_itself(kind: str, cls: type) -> bool:
    try:
        return registry.get(kind, cls.name) is cls
    except registry.UnknownNameError:
        return False


def _run_checks(label: str, selected: Iterable[str] | None, available: dict[str, Callable[[], None]]) -> None:
    names = list(available) if selected is None else [selected] if isinstance(selected, str) else list(selected)
    unknown = [name for name in names if name not in available]
    if unknown:
        raise ValueError(f"unknown check(s) {unknown}; valid: {list(available)}")
    for name in names:
        try:
            available[name]()
        except AssertionError as exc:
            raise AssertionError(f"{label} fails the {name!r} check: {exc}") from exc


def _check_name_and_description(cls: type) -> None:
    import re

    _require(isinstance(cls.name, str) and re.fullmatch(r"[a-z0-9][a-z0-9_.-]*", cls.name),
             f"name {cls.name!r} must be lower case letters, digits, '-', '_' or '.'")
    _require(isinstance(cls.description, str) and cls.description.strip(), "has no description")


def _json_ready(value: Any, what: str) -> None:
    try:
        json.dumps(value)
    except (TypeError, ValueError) as exc:
        raise AssertionError(f"{what} is not JSON-ready: {exc}") from None


# ----------------------------------------------------------------------------------------------------- experts

def check_expert(expert: str | type, *, checks: Iterable[str] | str | None = None, **options: Any) -> None:
    """Check an :class:`fdcore.Expert` built with ``options`` as constructor arguments (default: the class's
    ``tiny_config()``: random weights, no download).

    * ``outputs``: ``preprocess`` gives float32 ``[B * crops, 3, S, S]`` for RGB and greyscale images of any size;
      logits ``[B, 2]``; probabilities float32 ``[B]`` in [0, 1], identical when repeated in eval mode and
      independent of the batch; ``describe()`` holds positive int ``input_size`` and ``parameters``.
    * ``features``: with ``default_feature_layers`` declared, ``features`` returns exactly those layers as
      ``[B, N, C]`` (``N = rows * columns`` of ``feature_grid`` when set), and ``forward_with_features`` agrees with
      ``forward`` and ``features``.
    * ``round_trip``: ``get_config()`` is JSON-ready and ``from_config`` rebuilds the same parameter shapes; a
      ``save_expert`` / ``load_expert`` round trip gives bit-identical logits and features; bf16 weights and CPU
      autocast stay within 0.03 of fp32. The class must be registered (an installed plugin, or inside
      :func:`plugin_registered`), since a saved expert names its class.
    * ``int8``: dynamic int8 quantisation (``--precision int8``) replaces every ``nn.Linear``, is deterministic and
      stays within 0.02 of fp32.
    * ``gradient_checkpointing``: with ``supports_gradient_checkpointing``, enabling it is reported by
      ``gradient_checkpointing_enabled`` and changes no gradient (dropout included), and disabling it is reported
      too; without, ``enable_gradient_checkpointing`` is not implemented.
    """
    expert_class, label = _resolve("experts", expert)
    options = options or expert_class.tiny_config()
    _run_checks(label, checks, {
        "outputs": lambda: _expert_outputs(expert_class, options),
        "features": lambda: _expert_features(expert_class, options),
        "round_trip": lambda: _expert_round_trip(expert_class, options),
        "int8": lambda: _expert_int8(expert_class, options),
        "gradient_checkpointing": lambda: _expert_gradient_checkpointing(expert_class, options),
    })


def _tiny_expert(expert_class: type, options: dict):
    import torch

    expert = expert_class(**options).eval()
    size = expert.preprocessing.size
    pixels = torch.randn(5, 3, size, size, generator=torch.Generator().manual_seed(11))
    return expert, pixels


def _expert_outputs(expert_class: type, options: dict) -> None:
    import numpy as np
    import torch
    from PIL import Image

    from fdcore.preprocess import Preprocessing

    expert, pixels = _tiny_expert(expert_class, options)
    _require(isinstance(expert.preprocessing, Preprocessing),
             f"self.preprocessing is a {type(expert.preprocessing).__name__}, not an fdcore.Preprocessing")
    images = [Image.fromarray(np.full((37, 61, 3), 90, np.uint8)), Image.new("L", (20, 50), 200)]
    batch = expert.preprocess(images)
    size, crops = expert.preprocessing.size, expert.preprocessing.crops
    _require(batch.shape == (2 * crops, 3, size, size) and batch.dtype == torch.float32,
             f"preprocess gave {batch.dtype} {tuple(batch.shape)} for 2 images, expected float32 "
             f"{(2 * crops, 3, size, size)}")
    with torch.no_grad():
        logits = expert(pixels)
        probabilities = expert.probabilities(pixels)
        again = expert.probabilities(pixels)
        one_by_one = torch.cat([expert.probabilities(pixels[i:i + 1]) for i in range(len(pixels))])
    _require(logits.shape == (5, 2) and logits.is_floating_point(),
             f"forward gave {logits.dtype} {tuple(logits.shape)} for 5 inputs, expected floating logits (5, 2)")
    _require(probabilities.shape == (5,) and probabilities.dtype == torch.float32,
             f"probabilities gave {probabilities.dtype} {tuple(probabilities.shape)}, expected float32 (5,)")
    _require(torch.isfinite(probabilities).all() and (probabilities >= 0).all() and (probabilities <= 1).all(),
             f"probabilities outside [0, 1]: {probabilities.tolist()}")
    _require(torch.equal(probabilities, again), "two eval-mode calls on the same pixels gave different probabilities")
    torch.testing.assert_close(one_by_one, probabilities, atol=1e-5, rtol=0,
                               msg=lambda text: f"probabilities depend on the batch they are computed in: {text}")
    described = expert_class.describe()
    for key in ("input_size", "parameters"):
        _require(isinstance(described.get(key), int) and described[key] > 0,
                 f"describe() must hold a positive int {key!r}, got {described.get(key)!r}")


def _expert_features(expert_class: type, options: dict) -> None:
    import torch

    expert, pixels = _tiny_expert(expert_class, options)
    if not expert.default_feature_layers:
        return  # features are optional: such an expert cannot be distilled, and nothing else relies on them
    with torch.no_grad():
        features = expert.features(pixels)
        logits, together = expert.forward_with_features(pixels)
        _require(torch.equal(logits, expert(pixels)), "forward_with_features gave other logits than forward")
    _require(features and list(features) == list(expert.default_feature_layers),
             f"features() returned layers {list(features)}, expected default_feature_layers "
             f"{list(expert.default_feature_layers)}")
    grid = expert.feature_grid
    for layer, tokens in features.items():
        _require(tokens.ndim == 3 and tokens.shape[0] == 5,
                 f"layer {layer!r} has shape {tuple(tokens.shape)}, expected [5, N, C]")
        _require(torch.equal(together[layer], tokens), f"forward_with_features gave other tokens for {layer!r}")
        if grid is not None:
            rows, columns = grid
            _require(tokens.shape[1] == rows * columns,
                     f"layer {layer!r} has {tokens.shape[1]} tokens, feature_grid {grid} says {rows * columns}")


def _require_registered(expert_class: type) -> None:
    _require(_registered_as_itself("experts", expert_class),
             f"{expert_class.__qualname__} is not registered as {expert_class.name!r}; save_expert and load_expert "
             "find experts by name (install the plugin, or run the check inside fdcore.testing.plugin_registered)")


def _expert_round_trip(expert_class: type, options: dict) -> None:
    import torch

    import fdcore

    _require_registered(expert_class)
    expert, pixels = _tiny_expert(expert_class, options)
    config = expert.get_config()
    _json_ready(config, "get_config()")
    _require(json.loads(json.dumps(config)) == config, f"get_config() changes in a JSON round trip: {config!r}")
    rebuilt = expert_class.from_config(config)
    shapes = {k: v.shape for k, v in expert.state_dict().items()}
    _require({k: v.shape for k, v in rebuilt.state_dict().items()} == shapes,
             "from_config(get_config()) builds other parameter shapes")
    with tempfile.TemporaryDirectory(prefix="fdcore-check-") as folder:
        directory = Path(folder) / expert_class.name
        fdcore.save_expert(expert, directory)
        loaded = fdcore.load_expert(directory)
        _require(loaded.preprocessing == expert.preprocessing, "the loaded expert has other preprocessing")
        _require(not loaded.training, "load_expert returned an expert in training mode")
        with torch.no_grad():
            _require(torch.equal(loaded(pixels), expert(pixels)), "the loaded expert gives other logits")
            if expert.default_feature_layers:
                original, reloaded = expert.features(pixels), loaded.features(pixels)
                _require(all(torch.equal(original[layer], reloaded[layer]) for layer in original),
                         "the loaded expert gives other features")
            reference = expert.probabilities(pixels)
            bf16 = fdcore.load_expert(directory, dtype=torch.bfloat16)
            _require(next(bf16.parameters()).dtype == torch.bfloat16, "load_expert(dtype=bfloat16) kept other weights")
            from_bf16 = bf16.probabilities(pixels.to(torch.bfloat16))  # callers pass pixels in the weights' dtype
            with torch.autocast("cpu", dtype=torch.bfloat16):
                autocast = loaded.probabilities(pixels)
    for what, probabilities in (("bf16 weights", from_bf16), ("CPU bf16 autocast", autocast)):
        _require(probabilities.dtype == torch.float32, f"{what}: probabilities are {probabilities.dtype}, not float32")
        torch.testing.assert_close(probabilities, reference, atol=0.03, rtol=0,
                                   msg=lambda text, what=what: f"{what} drift from fp32: {text}")


def _expert_int8(expert_class: type, options: dict) -> None:
    import torch

    import fdcore
    from fdcore.int8 import quantize_int8

    _require_registered(expert_class)
    expert, pixels = _tiny_expert(expert_class, options)
    with tempfile.TemporaryDirectory(prefix="fdcore-check-") as folder:
        fdcore.save_expert(expert, Path(folder) / expert_class.name)
        quantised = quantize_int8(fdcore.load_expert(Path(folder) / expert_class.name))
    _require(not any(type(module) is torch.nn.Linear for module in quantised.modules()),
             "an nn.Linear survived int8 quantisation")
    _require(any(type(module).__name__ == "Int8Linear" for module in quantised.modules()),
             "int8 quantisation found no nn.Linear to quantise")
    with torch.no_grad():
        reference = expert.probabilities(pixels)
        probabilities = quantised.probabilities(pixels)
        _require(torch.equal(probabilities, quantised.probabilities(pixels)), "the int8 expert is not deterministic")
    _require(probabilities.dtype == torch.float32 and probabilities.shape == reference.shape,
             f"the int8 expert gives {probabilities.dtype} {tuple(probabilities.shape)}")
    torch.testing.assert_close(probabilities, reference, atol=0.02, rtol=0,
                               msg=lambda text: f"int8 drift from fp32: {text}")


def _expert_gradient_checkpointing(expert_class: type, options: dict) -> None:
    import torch

    from fdcore.interfaces import Expert

    implemented = expert_class.enable_gradient_checkpointing is not Expert.enable_gradient_checkpointing
    if not expert_class.supports_gradient_checkpointing:
        _require(not implemented, "implements enable_gradient_checkpointing but declares "
                                  "supports_gradient_checkpointing = False")
        _require(not expert_class(**options).gradient_checkpointing_enabled,
                 "reports gradient_checkpointing_enabled without supporting it")
        return
    _require(implemented, "declares supports_gradient_checkpointing but does not implement "
                          "enable_gradient_checkpointing")
    weights = expert_class(**options).state_dict()
    size = expert_class(**options).preprocessing.size
    pixels = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(4))

    def gradients(checkpointing: bool) -> dict:
        expert = expert_class(**options)
        expert.load_state_dict(weights)
        _require(not expert.gradient_checkpointing_enabled, "a new expert reports gradient checkpointing on")
        if checkpointing:
            expert.enable_gradient_checkpointing()
            _require(expert.gradient_checkpointing_enabled,
                     "enable_gradient_checkpointing() left gradient_checkpointing_enabled False")
        expert.train()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(5)  # the same dropout masks in both runs, without disturbing the caller's RNG
            if expert.default_feature_layers:
                logits, features = expert.forward_with_features(pixels)
            else:
                logits, features = expert(pixels), {}
            loss = logits.float().sum() + sum(tokens.float().pow(2).mean() for tokens in features.values())
            loss.backward()
        if checkpointing:
            expert.disable_gradient_checkpointing()
            _require(not expert.gradient_checkpointing_enabled,
                     "disable_gradient_checkpointing() left gradient_checkpointing_enabled True")
        return {name: p.grad.clone() for name, p in expert.named_parameters() if p.grad is not None}

    plain, checkpointed = gradients(False), gradients(True)
    _require(plain and plain.keys() == checkpointed.keys(),
             f"checkpointing changes which parameters get gradients: {sorted(set(plain) ^ set(checkpointed))}")
    for name in plain:
        torch.testing.assert_close(checkpointed[name], plain[name], rtol=1e-5, atol=1e-6,
                                   msg=lambda text, name=name: f"checkpointing changes the gradient of {name}: {text}")


# ----------------------------------------------------------------------------------------------------- degraders

def synthetic_image(height: int = 64, width: int = 64):
    """A deterministic natural-looking test image (``H x W x 3`` uint8): colour gradients, a disc, a bright square,
    chirped stripes and mild texture, with edges, flat areas, highlights and shadows (every operator has something
    to act on)."""
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    y, x = yy / max(height - 1, 1), xx / max(width - 1, 1)
    image = np.stack([0.15 + 0.7 * x, 0.2 + 0.6 * y, 0.55 - 0.3 * x * y], axis=-1)
    disc = (yy - 0.6 * height) ** 2 + (xx - 0.35 * width) ** 2 < (0.22 * min(height, width)) ** 2
    image[disc] = (0.85, 0.25, 0.2)
    square = (np.abs(yy - 0.25 * height) < 0.12 * height) & (np.abs(xx - 0.72 * width) < 0.12 * width)
    image[square] = (0.97, 0.96, 0.9)
    stripes = np.sin(0.02 * xx ** 1.6) > 0  # a chirp: no shift maps the pattern onto itself
    band = yy > 0.85 * height
    image[band & stripes] *= 0.35
    texture = np.random.default_rng(1234).normal(0.0, 0.02, image.shape)
    return np.clip(np.rint((image + texture) * 255), 0, 255).astype(np.uint8)


def _readonly(image):
    frozen = image.copy()
    frozen.flags.writeable = False  # an operator writing into its input fails right here
    return frozen


def _psnr(a, b) -> float:
    import numpy as np

    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return 100.0 if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def _degrade(degrader, image, severity: float, seed: int = 7):
    from fdcore.degradations.policy import operator_rng

    return degrader(image, severity, operator_rng(seed, 0, 0))


def check_degrader(degrader: str | type, *, checks: Iterable[str] | str | None = None) -> None:
    """Check an :class:`fdcore.Degrader` on :func:`synthetic_image` (64 x 64).

    * ``metadata``: ``name``, ``description``, a ``category`` (one of ``BUILTIN_DEGRADER_CATEGORIES`` for fdcore's
      own), bool ``moves_pixels`` / ``changes_size``, a known ``severity_measure``, ``describe()`` with those keys,
      JSON-ready ``parameters(severity)``.
    * ``identity``: severity 0 returns an equal copy.
    * ``output_contract``: at several severities, an ``H x W x 3`` uint8 image of the input's size (unless
      ``changes_size``) sharing no memory with the input, which stays unmodified (it is read-only).
    * ``deterministic``: the same seed gives the same image.
    * ``full_strength``: severity 1 changes the image.
    * ``monotone``: distortion grows with the level 1..5 by the declared ``severity_measure`` (PSNR, output area,
      or, for ``"none"``, levels that all differ).
    * ``weak_strength``: severity 0.002 stays within 30 dB PSNR of the original (25 dB for compression).
    * ``tiny_and_thin``: 1x1, 2x1000, 3x5 and 2x40000 images (and transposes) give a valid image, or a ``ValueError``
      / ``FdcoreError`` that names the degrader.
    """
    degrader_class, label = _resolve("degraders", degrader)
    _run_checks(label, checks, {
        "metadata": lambda: _degrader_metadata(degrader_class),
        "identity": lambda: _degrader_identity(degrader_class()),
        "output_contract": lambda: _degrader_output_contract(degrader_class()),
        "deterministic": lambda: _degrader_deterministic(degrader_class()),
        "full_strength": lambda: _degrader_full_strength(degrader_class()),
        "monotone": lambda: _degrader_monotone(degrader_class()),
        "weak_strength": lambda: _degrader_weak_strength(degrader_class()),
        "tiny_and_thin": lambda: _degrader_tiny_and_thin(degrader_class()),
    })


def _degrader_metadata(cls: type) -> None:
    from fdcore.degradations.base import SEVERITY_MEASURES

    _check_name_and_description(cls)
    registered = _registered_as_itself("degraders", cls)
    if registered and registry.entry("degraders", cls.name).provider == "fdcore":
        _require(cls.category in BUILTIN_DEGRADER_CATEGORIES,
                 f"category {cls.category!r} is not one of {BUILTIN_DEGRADER_CATEGORIES}")
    else:
        _require(isinstance(cls.category, str) and cls.category, "declares no category")
    _require(isinstance(cls.moves_pixels, bool) and isinstance(cls.changes_size, bool),
             "moves_pixels and changes_size must be bools")
    measure = getattr(cls, "severity_measure", "psnr")
    _require(measure in SEVERITY_MEASURES, f"severity_measure {measure!r} is not one of {SEVERITY_MEASURES}")
    described = registry.describe("degraders", cls.name) if registered else cls.describe()
    _require({"category", "moves_pixels", "changes_size"} <= set(described),
             f"describe() lacks {sorted({'category', 'moves_pixels', 'changes_size'} - set(described))}")
    operator = cls()
    for severity in (0.1, 0.2, 0.55, 1.0):
        _json_ready(operator.parameters(severity), f"parameters({severity})")  # recorded with each application


def _degrader_identity(operator) -> None:
    import numpy as np

    original = synthetic_image()
    image = _readonly(original)
    out = _degrade(operator, image, 0.0)
    _require(out is not image and np.array_equal(out, original), "severity 0 must return an equal copy")


def _degrader_output_contract(operator) -> None:
    import numpy as np

    original = synthetic_image()
    image = _readonly(original)
    for severity in (0.2, 0.4, 0.6, 0.8, 1.0, 0.37, 0.03):
        out = _degrade(operator, image, severity)
        _require(isinstance(out, np.ndarray) and out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3,
                 f"severity {severity} gave {getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}")
        if not operator.changes_size:
            _require(out.shape == original.shape,
                     f"severity {severity} changed the size {original.shape} -> {out.shape}")
        _require(out.size > 0, f"severity {severity} gave an empty image")
        _require(np.array_equal(image, original), f"severity {severity} modified its input")
        _require(not np.shares_memory(out, image), f"severity {severity} returned memory shared with its input")


def _degrader_deterministic(operator) -> None:
    import numpy as np

    for severity in (0.4, 1.0):
        first = _degrade(operator, _readonly(synthetic_image()), severity, seed=11)
        second = _degrade(operator, _readonly(synthetic_image()), severity, seed=11)
        _require(np.array_equal(first, second), f"severity {severity}: the same seed gave different images")


def _degrader_full_strength(operator) -> None:
    import numpy as np

    original = synthetic_image()
    out = _degrade(operator, _readonly(original), 1.0)
    _require(out.shape != original.shape or not np.array_equal(out, original), "level 5 left the image as is")


def _degrader_monotone(operator) -> None:
    original = synthetic_image()
    levels = (1, 2, 3, 4, 5)
    measure = getattr(operator, "severity_measure", "psnr")
    outputs = [_degrade(operator, _readonly(original), level / 5) for level in levels]
    if measure == "none":  # a level table not ordered by distortion: the levels must still all be distinct
        distinct = {out.tobytes() for out in outputs} | {original.tobytes()}
        _require(len(distinct) == len(levels) + 1, "two levels (or a level and the original) coincide")
        return
    if measure == "output_area":
        areas = [out.shape[0] * out.shape[1] for out in outputs]
        _require(all(b <= a for a, b in zip(areas, areas[1:])), f"output area {areas} grows with level")
        _require(areas[-1] < original.shape[0] * original.shape[1], f"level 5 keeps the whole area ({areas})")
        return
    _require(not operator.changes_size, "changes the size, so PSNR cannot measure it: declare "
                                        "severity_measure = 'output_area'")
    scores = [_psnr(out, original) for out in outputs]
    # 0.5 dB slack absorbs 8-bit rounding and random layouts at neighbouring levels; the ends must differ clearly.
    _require(all(b <= a + 0.5 for a, b in zip(scores, scores[1:])), f"PSNR by level {scores} is not decreasing")
    _require(scores[-1] < scores[0] - 0.5, f"PSNR by level {scores}: level 5 is not clearly worse than level 1")


def _degrader_weak_strength(operator) -> None:
    # Continuity at 0: a strength of 0.002 is nearly the identity (s = 0 is exactly it). Codecs keep a floor (JPEG at
    # quality ~100 still subsamples chroma), hence their lower bound; anything below means the operator jumps or
    # breaks at weak strengths (a disk kernel with no taps once turned images white).
    if operator.changes_size:
        return
    original = synthetic_image()
    floor = 25.0 if operator.category == "compression" else 30.0
    for seed in (0, 1, 2):
        score = _psnr(_degrade(operator, original, 0.002, seed=seed), original)
        _require(score >= floor, f"strength 0.002, seed {seed}: PSNR {score:.2f} dB < {floor} dB")


def _degrader_tiny_and_thin(operator) -> None:
    import numpy as np

    from fdcore.errors import FdcoreError

    # 40000 px is beyond OpenCV's remap limit (32767) and WebP's (16383), within JPEG's (65500).
    for shape in ((1, 1), (2, 1000), (1000, 2), (3, 5), (2, 40000), (40000, 2)):
        image = _readonly(synthetic_image(*shape))
        for severity in (0.2, 1.0):
            try:
                out = _degrade(operator, image, severity)
            except (ValueError, FdcoreError) as exc:  # allowed, if it says which operator and why
                _require(operator.name in str(exc), f"failed on {shape} without naming itself: {exc}")
                continue
            _require(out.dtype == np.uint8 and out.ndim == 3 and out.shape[2] == 3 and out.size > 0,
                     f"{shape} at {severity}: gave {out.dtype} {out.shape}")
            if not operator.changes_size:
                _require(out.shape == image.shape, f"{shape} at {severity}: changed the size to {out.shape}")


# ----------------------------------------------------------------------------------------------------- distillers

@functools.lru_cache(maxsize=None)
def _small_cnn_class() -> type:
    """A tiny two-layer CNN expert, the default student and teacher of :func:`check_distiller` (built here so that the
    check needs no other plugin)."""
    import torch

    from fdcore.interfaces import Expert
    from fdcore.preprocess import Preprocessing

    class SmallCNN(Expert):
        name = "fdcore-testing-small-cnn"
        description = "a tiny CNN for fdcore.testing.check_distiller"
        default_feature_layers = ("conv1", "conv2")

        def __init__(self, width: int = 8, seed: int = 0):
            super().__init__()
            self.config = {"width": width, "seed": seed}
            self.preprocessing = Preprocessing(size=32, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
            generator_state = torch.random.get_rng_state()
            torch.manual_seed(seed)
            self.conv1 = torch.nn.Conv2d(3, width, 3, stride=2, padding=1)
            self.conv2 = torch.nn.Conv2d(width, width, 3, stride=2, padding=1)
            self.head = torch.nn.Linear(width, 2)
            torch.random.set_rng_state(generator_state)

        def _maps(self, pixels):
            first = torch.relu(self.conv1(pixels))
            return {"conv1": first, "conv2": torch.relu(self.conv2(first))}

        def forward(self, pixels):
            return self.head(self._maps(pixels)["conv2"].mean(dim=(2, 3)))

        def features(self, pixels, layers=None):
            maps = self._maps(pixels)
            chosen = list(layers) if layers is not None else list(self.default_feature_layers)
            return {name: maps[name].flatten(2).transpose(1, 2) for name in chosen}

    return SmallCNN


def check_distiller(distiller: str | type, *, expert: str | type | None = None,
                    checks: Iterable[str] | str | None = None, **options: Any) -> None:
    """Check an :class:`fdcore.Distiller` built with ``options`` (keyword arguments after the teacher), the way the
    training recipe drives it: the student is ``expert`` built from its ``tiny_config()`` (default: a small CNN
    defined here), the teacher a deep copy of it.

    * ``metadata``: ``name``, ``description``, bool ``needs_alignment`` and ``gathers``, ``views`` 1 or 2 (equal to
      its old name ``needs_views``), ``describe()`` JSON-ready with ``needs_alignment``.
    * ``training_step``: the constructor freezes the teacher (eval mode, no gradients); ``student_step`` on a batch
      with ``pixels``, ``label`` (and ``pixels_view2`` when ``views`` is 2, nothing more) gives logits ``[B, 2]``
      and a finite scalar term that reaches the student and every ``trainable_modules()`` module but not the
      teacher, leaves the teacher unchanged and in eval mode (even after ``teacher.train()``), and calls the
      function given to ``set_gather`` exactly when it declares ``gathers``; ``after_optimizer_step`` runs and a
      second step still gives a finite term.
    * ``state``: after a step, ``state_dict()`` survives the checkpoint format (tensors, numbers, strings and dicts
      of them) and ``load_state_dict`` on a fresh distiller restores it exactly.
    """
    distiller_class, label = _resolve("distillers", distiller)
    if expert is None:
        expert_class, expert_options = _small_cnn_class(), {}
    else:
        expert_class, _ = _resolve("experts", expert)
        expert_options = expert_class.tiny_config()
    _run_checks(label, checks, {
        "metadata": lambda: _distiller_metadata(distiller_class),
        "training_step": lambda: _distiller_training_step(distiller_class, options, expert_class, expert_options),
        "state": lambda: _distiller_state(distiller_class, options, expert_class, expert_options),
    })


def _distiller_metadata(cls: type) -> None:
    _check_name_and_description(cls)
    _require(isinstance(cls.needs_alignment, bool), "needs_alignment must be a bool")
    _require(isinstance(cls.gathers, bool), "gathers must be a bool")
    _require(type(cls.views) is int and cls.views in (1, 2), f"views must be 1 or 2, got {cls.views!r}")
    _require(cls.needs_views == cls.views, f"needs_views {cls.needs_views!r} disagrees with views {cls.views!r}")
    described = registry.describe("distillers", cls.name) if _registered_as_itself("distillers", cls) \
        else cls.describe()
    _json_ready(described, "describe()")
    _require(described.get("needs_alignment") == cls.needs_alignment,
             f"describe() gives needs_alignment {described.get('needs_alignment')!r}")


def _distillation_setup(cls: type, options: dict, expert_class: type, expert_options: dict):
    import torch

    from fdcore import training

    expert = expert_class(**expert_options)
    teacher = copy.deepcopy(expert)
    distiller = cls(teacher, **options)
    size = expert.preprocessing.size
    generator = torch.Generator().manual_seed(3)
    batch = {"pixels": torch.randn(4, 3, size, size, generator=generator), "label": torch.tensor([0, 1, 0, 1])}
    if cls.views == 2:
        batch["pixels_view2"] = torch.randn(4, 3, size, size, generator=generator)
    return expert, teacher, distiller, training.StudentWithFeatures(expert).train(), batch


def _distillation_step(distiller, student, batch):
    import torch

    try:
        logits, term = distiller.student_step(student, batch, None)
    except KeyError as exc:
        raise AssertionError(f"student_step read batch[{exc}], but a batch for views = {distiller.views} holds only "
                             f"{sorted(batch)}") from exc
    _require(isinstance(logits, torch.Tensor) and logits.shape == (len(batch["label"]), 2),
             f"student_step gave logits of shape {tuple(getattr(logits, 'shape', ()))}, expected "
             f"{(len(batch['label']), 2)}")
    _require(isinstance(term, torch.Tensor) and term.ndim == 0 and term.is_floating_point(),
             f"student_step gave a distillation term {term!r}, expected a scalar float tensor")
    _require(torch.isfinite(term), f"the distillation term is {term.item()}")
    return logits, term


def _distiller_training_step(cls: type, options: dict, expert_class: type, expert_options: dict) -> None:
    import torch

    expert, teacher, distiller, student, batch = _distillation_setup(cls, options, expert_class, expert_options)
    _require(not teacher.training and not any(p.requires_grad for p in teacher.parameters()),
             "the constructor must freeze the teacher (eval mode, requires_grad off): call super().__init__(teacher)")
    modules = distiller.trainable_modules()
    _require(isinstance(modules, list) and all(isinstance(m, torch.nn.Module) for m in modules),
             f"trainable_modules() must return a list of torch.nn.Module, got {modules!r}")
    gathered = []

    def recording_gather(tensor):
        gathered.append(tuple(tensor.shape))
        return tensor

    distiller.set_gather(recording_gather)
    teacher_before = {key: value.clone() for key, value in teacher.state_dict().items()}
    teacher.train()  # someone flips it back: the distiller must still evaluate it in eval mode
    logits, term = _distillation_step(distiller, student, batch)
    _require(not teacher.training, "student_step left the teacher in training mode (use teacher_outputs, or call "
                                   "self.teacher.eval() before using it)")
    teacher_after = teacher.state_dict()
    _require(all(torch.equal(value, teacher_after[key]) for key, value in teacher_before.items()),
             "student_step changed the teacher (momentum updates belong in after_optimizer_step)")
    _require(bool(gathered) == cls.gathers,
             "declares gathers = True but never called self.gather()" if cls.gathers else
             "called self.gather() without declaring gathers = True (the recipe would not give it the gather)")
    _require(term.requires_grad, "the distillation term does not depend on the student")
    parameters = [p for module in (student, *modules) for p in module.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(parameters, lr=0.1)
    (torch.nn.functional.cross_entropy(logits.float(), batch["label"]) + term).backward()
    _require(any(p.grad is not None and p.grad.abs().sum() > 0 for p in student.parameters()),
             "no student parameter received a gradient")
    for index, module in enumerate(modules):
        _require(any(p.grad is not None for p in module.parameters()),
                 f"trainable_modules()[{index}] ({type(module).__name__}) received no gradient")
    _require(all(p.grad is None for p in teacher.parameters()), "the teacher received gradients")
    optimizer.step()
    optimizer.zero_grad()
    distiller.after_optimizer_step(expert, 1, 10)
    _distillation_step(distiller, student, batch)


def _same_state(first: Any, second: Any) -> bool:
    import torch

    if isinstance(first, dict) and isinstance(second, dict):
        return first.keys() == second.keys() and all(_same_state(first[key], second[key]) for key in first)
    if isinstance(first, torch.Tensor) or isinstance(second, torch.Tensor):
        return (isinstance(first, torch.Tensor) and isinstance(second, torch.Tensor)
                and first.shape == second.shape and torch.equal(first.cpu(), second.cpu()))
    return first == second


def _distiller_state(cls: type, options: dict, expert_class: type, expert_options: dict) -> None:
    from fdcore import training

    expert, _, distiller, student, batch = _distillation_setup(cls, options, expert_class, expert_options)
    _, term = _distillation_step(distiller, student, batch)
    term.backward()
    distiller.after_optimizer_step(expert, 1, 10)
    state = distiller.state_dict()
    _require(isinstance(state, dict), f"state_dict() returned a {type(state).__name__}, not a dict")
    with tempfile.TemporaryDirectory(prefix="fdcore-check-") as folder:
        tensors, values = Path(folder) / "distiller.safetensors", Path(folder) / "distiller.json"
        try:
            training.save_state_tree(state, tensors, values)
        except training.TrainingError as exc:
            raise AssertionError(f"state_dict() cannot be stored in a checkpoint: {exc}") from None
        restored = training.load_state_tree(tensors, values)
    _, _, fresh, _, _ = _distillation_setup(cls, options, expert_class, expert_options)
    fresh.load_state_dict(restored)
    _require(_same_state(fresh.state_dict(), state),
             "load_state_dict(state) on a fresh distiller does not restore state_dict()")


# ----------------------------------------------------------------------------------------------------- aggregators

def check_aggregator(aggregator: str | type, *, checks: Iterable[str] | str | None = None) -> None:
    """Check an :class:`fdcore.Aggregator` on random probabilities of 4 experts for 16 images.

    * ``metadata``: ``name``, ``description``, bool ``uses_weights`` / ``requires_weights`` / ``set_level``
      (``requires_weights`` implies ``uses_weights``), ``describe()`` with those keys.
    * ``fusion``: float ``[B]`` results in [0, 1] of the input's dtype, invariant to the order of the experts (and
      their weights), and never lower for an image when one expert grows more confident about it.
    * ``invalid_input``: NaN, infinite and out-of-range probabilities raise ``ValueError``; so do weights given to a
      rule without ``uses_weights`` and missing weights for one with ``requires_weights``.
    """
    aggregator_class, label = _resolve("aggregators", aggregator)
    _run_checks(label, checks, {
        "metadata": lambda: _aggregator_metadata(aggregator_class),
        "fusion": lambda: _aggregator_fusion(aggregator_class()),
        "invalid_input": lambda: _aggregator_invalid_input(aggregator_class()),
    })


def _aggregator_metadata(cls: type) -> None:
    _check_name_and_description(cls)
    flags = ("uses_weights", "requires_weights", "set_level")
    _require(all(isinstance(getattr(cls, flag), bool) for flag in flags), f"{', '.join(flags)} must be bools")
    _require(cls.uses_weights or not cls.requires_weights, "requires_weights without uses_weights")
    described = registry.describe("aggregators", cls.name) if _registered_as_itself("aggregators", cls) \
        else cls.describe()
    _json_ready(described, "describe()")
    _require(all(described.get(flag) == getattr(cls, flag) for flag in flags),
             f"describe() disagrees with the class on {flags}: {described}")


def _aggregator_fusion(rule) -> None:
    import torch

    generator = torch.Generator().manual_seed(0)
    probs = torch.rand(4, 16, generator=generator)
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0]) if rule.requires_weights else None
    fused = rule(probs, weights)
    _require(fused.shape == (16,), f"fusing [4, 16] gave shape {tuple(fused.shape)}, expected (16,)")
    _require(fused.dtype == probs.dtype, f"fusing {probs.dtype} gave {fused.dtype}")
    _require(((fused >= 0) & (fused <= 1)).all(), f"results outside [0, 1]: {fused.tolist()}")

    permutation = torch.tensor([2, 0, 3, 1])
    permuted = rule(probs[permutation], weights[permutation] if weights is not None else None)
    _require(torch.allclose(fused, permuted, atol=1e-6), "the result depends on the order of the experts")

    raised = probs.clone()
    raised[1, 5] = (raised[1, 5] + 0.3).clamp(max=1.0)  # one expert more confident about one image
    _require(rule(raised, weights)[5] >= fused[5] - 1e-6, "one expert's higher probability lowered the result")


def _aggregator_invalid_input(rule) -> None:
    import torch

    probs = torch.tensor([[0.1, 0.8, 0.5, 0.0], [0.3, 0.6, 0.5, 1.0], [0.2, 0.9, 0.2, 0.5]])
    weights = torch.ones(3) if rule.requires_weights else None

    def refused(what: str, *arguments) -> None:
        try:
            rule(*arguments)
        except ValueError:
            return
        raise AssertionError(f"accepted {what} instead of raising ValueError")

    for bad in (float("nan"), float("inf"), -0.1, 1.5):
        corrupt = probs.clone()
        corrupt[1, 2] = bad
        refused(f"a probability of {bad}", corrupt, weights)
    if not rule.uses_weights:
        refused("weights, without declaring uses_weights", probs, torch.ones(3))
    if rule.requires_weights:
        refused("no weights, although it declares requires_weights", probs, None)
