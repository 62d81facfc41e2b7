"""Public entry points: ``fdcore.degrade``, ``fdcore.apply_policy``, ``fdcore.replay``, ``fdcore.load_policy``.

Each accepts an HxWx3 uint8 numpy array, an RGB PIL image, or a tensor ``[3, H, W]`` (float in [0, 1] or uint8)
and returns the same type (and, for tensors, the same dtype and device). Operators work on uint8 pixels, so a float
tensor is rounded to 8 bits on the way in; use :mod:`fdcore.degradations.torch_ops` for a float batch on the device.
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from fdcore.degradations import policy as policy_module
from fdcore.degradations.policy import Policy, Step, apply_steps, load_policy
from fdcore.errors import FdcoreError
from fdcore.interfaces import level_to_severity


class DegradationInputError(FdcoreError, TypeError):
    """An image of a type, shape, dtype or range the degradation functions do not accept."""


def to_array(image: Any) -> tuple[np.ndarray, Callable[[np.ndarray], Any]]:
    """The uint8 HxWx3 pixels of ``image`` and a function turning a result back into ``image``'s type."""
    if isinstance(image, np.ndarray):
        if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
            raise DegradationInputError(f"expected an HxWx3 uint8 array, got {image.dtype} array of shape "
                                        f"{image.shape}; convert with np.clip(x * 255, 0, 255).astype(np.uint8) "
                                        "for float images or np.stack([x] * 3, -1) for grey ones")
        if image.shape[0] == 0 or image.shape[1] == 0:
            raise DegradationInputError(f"the image is empty (shape {image.shape})")
        return image, lambda out: out
    try:
        from PIL import Image
    except ImportError:  # pragma: no cover - Pillow is a core dependency
        Image = None
    if Image is not None and isinstance(image, Image.Image):
        if image.mode != "RGB":
            raise DegradationInputError(f"expected an RGB PIL image, got mode {image.mode!r}; use image.convert('RGB')")
        return np.asarray(image), lambda out: Image.fromarray(out, "RGB")
    import torch

    if isinstance(image, torch.Tensor):
        if image.ndim != 3 or image.shape[0] != 3 or image.shape[1] == 0 or image.shape[2] == 0:
            raise DegradationInputError(f"expected a tensor [3, H, W], got shape {tuple(image.shape)}; for a batch "
                                        "[B, 3, H, W] use fdcore.degradations.torch_ops.degrade_batch")
        dtype, device = image.dtype, image.device
        if dtype == torch.uint8:
            pixels = image.detach().permute(1, 2, 0).cpu().numpy()
            return np.ascontiguousarray(pixels), lambda out: torch.from_numpy(out).permute(2, 0, 1).contiguous().to(device)
        if not dtype.is_floating_point:
            raise DegradationInputError(f"expected a float tensor in [0, 1] or a uint8 tensor, got {dtype}")
        values = image.detach().float()
        if not torch.isfinite(values).all():
            raise DegradationInputError("the image tensor contains NaN or infinite values")
        low, high = values.min().item(), values.max().item()
        if low < -1e-3 or high > 1 + 1e-3:
            raise DegradationInputError(f"a float image tensor must lie in [0, 1] (before normalisation), got "
                                        f"values in [{low:.4g}, {high:.4g}]")
        pixels = (values.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()

        def restore(out: np.ndarray):
            tensor = torch.from_numpy(out).permute(2, 0, 1).to(torch.float32) / 255.0
            return tensor.to(device=device, dtype=dtype)

        return np.ascontiguousarray(pixels), restore
    raise DegradationInputError(f"expected an HxWx3 uint8 numpy array, an RGB PIL image or a tensor [3, H, W], "
                                f"got {type(image).__name__}")


def _severity(level: Any, strength: Any) -> tuple[float, int | None]:
    if level is not None and strength is not None:
        raise ValueError("give either level (0..5) or strength (0..1), not both")
    if strength is not None:
        if isinstance(strength, bool) or not isinstance(strength, (int, float, np.floating)) \
                or not 0.0 <= float(strength) <= 1.0:
            raise ValueError(f"strength must be a number in [0, 1], got {strength!r}")
        return float(strength), None
    level = 3 if level is None else level
    return level_to_severity(level), int(level)


def degrade(image: Any, op: str, level: int | None = None, seed: int = 0, *, strength: float | None = None,
            sample_id: int | str = 0) -> Any:
    """Apply one operator: ``degrade(image, "jpeg", level=3, seed=0)`` or ``strength=0.45`` (0 is the identity).

    The operator's random draws come from ``operator_rng(seed, sample_id, 0)``, the same generator a policy gives
    its first operator, so the result is reproducible from ``(op, severity, seed, sample_id)`` alone.
    """
    severity, level_value = _severity(level, strength)
    pixels, restore = to_array(image)
    out, _ = apply_steps(pixels, [Step(op, severity, level_value)], seed, sample_id)
    return restore(out)


def apply_policy(image: Any, policy: str | dict | Policy, seed: int = 0, sample_id: int | str = 0,
                 **options: Any) -> tuple[Any, dict]:
    """Degrade ``image`` with a policy (registered name, YAML/JSON path, spec dict or :class:`Policy`).

    Returns ``(image, record)``; the record is JSON-ready and :func:`replay` reproduces the image from it.
    ``options`` (e.g. ``preserve_alignment=True``) override the policy's own.
    """
    pixels, restore = to_array(image)
    out, record = load_policy(policy, **options).apply(pixels, seed, sample_id)
    return restore(out), record


def replay(record: dict, image: Any) -> Any:
    """Re-apply the operators of a record from :func:`apply_policy` (or the CLI's degradations.csv) exactly."""
    pixels, restore = to_array(image)
    return restore(policy_module.replay(record, pixels))


__all__ = ["DegradationInputError", "apply_policy", "degrade", "load_policy", "replay", "to_array"]
