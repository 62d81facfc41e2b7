"""Batched torch path: degrade ``[B, 3, H, W]`` float tensors in [0, 1] on their own device, with a severity and a
seed stream per sample, so a GPU data pipeline can degrade after collation.

Operators with a batched implementation (``BATCHED``: blurs, noises, colour and tone curves, quantisation) compute
the same function as their numpy version in float, without the final 8-bit rounding; deterministic ones agree with
the numpy path to within one 8-bit step (brighten/darken within two: numpy tabulates the Lab transfer curves), and
noise operators match it in distribution (the noise comes from a torch generator seeded from the same per-sample
stream, not the same numbers). Every other operator, codecs included, falls back to its numpy version on the CPU,
one sample at a time, and gives exactly the numpy result. Sample ``i`` of a batch depends only on its own image,
severity, seed and sample id, never on the other samples.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as functional

from fdcore.degradations.policy import RECORD_FORMAT, Policy, Step, load_policy, operator_rng, step_record


def sample_generator(seed: int, sample_id: int | str, op_index: int, device: torch.device) -> torch.Generator:
    """A torch generator on ``device`` seeded from the same per-sample stream the numpy operators draw from."""
    generator = torch.Generator(device=device)
    generator.manual_seed(int(operator_rng(seed, sample_id, op_index).integers(0, 2**63 - 1)))
    return generator


def _degrader(name: str):
    from fdcore import registry

    return registry.get("degraders", name)()


def _grouped_conv(images: torch.Tensor, kernels: torch.Tensor) -> torch.Tensor:
    """Convolve sample b (all channels) with ``kernels[b]`` ``[kh, kw]`` (odd sizes), replicate borders."""
    batch, channels, height, width = images.shape
    kh, kw = kernels.shape[-2:]
    flat = images.reshape(1, batch * channels, height, width)
    padded = functional.pad(flat, (kw // 2, kw // 2, kh // 2, kh // 2), mode="replicate")
    weight = kernels.flip(-1, -2).repeat_interleave(channels, dim=0).unsqueeze(1).to(images)
    return functional.conv2d(padded, weight, groups=batch * channels).reshape(batch, channels, height, width)


def _centered(kernels: list[np.ndarray]) -> torch.Tensor:
    """Stack 2-D kernels of different odd sizes, each zero-padded to the largest, centred."""
    kh = max(k.shape[0] for k in kernels)
    kw = max(k.shape[1] for k in kernels)
    out = np.zeros((len(kernels), kh, kw), dtype=np.float32)
    for index, kernel in enumerate(kernels):
        top, left = (kh - kernel.shape[0]) // 2, (kw - kernel.shape[1]) // 2
        out[index, top:top + kernel.shape[0], left:left + kernel.shape[1]] = kernel
    return torch.from_numpy(out)


def _delta() -> np.ndarray:
    return np.ones((1, 1), dtype=np.float32)


def _gaussian_blur(images, severities, generators, op):
    from fdcore.degradations.kernels import gaussian_kernel1d

    rows, columns = [], []
    for severity in severities:
        taps = gaussian_kernel1d(op.parameter(severity)) if severity > 0 else _delta()[0]
        rows.append(taps[None, :])
        columns.append(taps[:, None])
    return _grouped_conv(_grouped_conv(images, _centered(rows)), _centered(columns))


def _lens_blur(images, severities, generators, op):
    from fdcore.degradations.kernels import disk_kernel

    return _grouped_conv(images, _centered([disk_kernel(op.parameter(s)) if s > 0 else _delta() for s in severities]))


def _per_sample(values: Sequence[float], images: torch.Tensor) -> torch.Tensor:
    return torch.tensor(list(values), dtype=images.dtype, device=images.device).view(-1, 1, 1, 1)


def _color_saturation(images, severities, generators, op):
    factor = _per_sample([op.parameter(s) if s > 0 else 1.0 for s in severities], images)
    value = images.amax(dim=1, keepdim=True)
    return value + factor * (images - value)


def _noise(images, generators) -> torch.Tensor:
    return torch.stack([torch.randn(images.shape[1:], generator=g, device=images.device, dtype=images.dtype)
                        for g in generators])


def _white_noise(images, severities, generators, op):
    sigma = _per_sample([math.sqrt(op.parameter(s)) if s > 0 else 0.0 for s in severities], images)
    return images + sigma * _noise(images, generators)


def _impulse_noise(images, severities, generators, op):
    # The numpy operator hits density * N positions drawn with replacement: each value is hit with probability
    # 1 - (1 - 1/N)^(density N) ~= 1 - exp(-density); a Bernoulli mask with that probability matches it.
    probability = _per_sample([1.0 - math.exp(-op.parameter(s)) if s > 0 else 0.0 for s in severities], images)
    uniforms = torch.stack([torch.rand((2, *images.shape[1:]), generator=g, device=images.device,
                                       dtype=images.dtype) for g in generators])
    salt = (uniforms[:, 1] < 0.5).to(images.dtype)
    return torch.where(uniforms[:, 0] < probability, salt, images)


def _lookup(values: torch.Tensor, tables: torch.Tensor) -> torch.Tensor:
    """Per-sample nearest-entry lookup: ``tables[b]`` tabulates a function on evenly spaced points of [0, 1]."""
    batch = values.shape[0]
    size = tables.shape[1]
    index = (values.clamp(0, 1) * (size - 1)).round().long().reshape(batch, -1)
    return torch.gather(tables.to(values), 1, index).reshape(values.shape)


def _srgb_to_lab(images: torch.Tensor) -> torch.Tensor:
    from fdcore.degradations import color_spaces

    linear = torch.where(images <= 0.04045, images / 12.92, ((images.clamp(min=0.04045) + 0.055) / 1.055) ** 2.4)
    matrix = torch.tensor(color_spaces._RGB_TO_XYZ / color_spaces._WHITE_D65[:, None], dtype=images.dtype,
                          device=images.device)
    xyz = torch.einsum("ij,bjhw->bihw", matrix, linear)
    delta = color_spaces._LAB_DELTA
    f = torch.where(xyz > delta ** 3, xyz.clamp(min=delta ** 3) ** (1 / 3), xyz / (3 * delta ** 2) + 4 / 29)
    return torch.stack([116 * f[:, 1] - 16, 500 * (f[:, 0] - f[:, 1]), 200 * (f[:, 1] - f[:, 2])], dim=1)


def _lab_to_srgb(lab: torch.Tensor) -> torch.Tensor:
    from fdcore.degradations import color_spaces

    fy = (lab[:, 0] + 16) / 116
    f = torch.stack([fy + lab[:, 1] / 500, fy, fy - lab[:, 2] / 200], dim=1)
    delta = color_spaces._LAB_DELTA
    xyz = torch.where(f > delta, f ** 3, 3 * delta ** 2 * (f - 4 / 29))
    inverse = np.linalg.inv(color_spaces._RGB_TO_XYZ / color_spaces._WHITE_D65[:, None])
    linear = torch.einsum("ij,bjhw->bihw", torch.tensor(inverse, dtype=lab.dtype, device=lab.device), xyz).clamp(0, 1)
    srgb = torch.where(linear <= 0.0031308, linear * 12.92, 1.055 * linear.clamp(min=0.0031308) ** (1 / 2.4) - 0.055)
    return srgb.clamp(0, 1)


def _tone_change(images, severities, generators, op):
    identity = np.linspace(0.0, 1.0, 1021)
    tables = torch.from_numpy(np.stack([op.curve(s) if s > 0 else identity for s in severities]))
    # The numpy operator evaluates the RGB branch on the 256 8-bit codes; the same index arithmetic here.
    codes = (images.clamp(0, 1) * 255).round() / 255
    rgb_branch = _lookup(codes, tables)
    lab = _srgb_to_lab(images)
    lightness = _lookup(lab[:, :1] / 100, tables) * 100
    lab_branch = _lab_to_srgb(torch.cat([lightness, lab[:, 1:]], dim=1))
    out = 0.5 * (rgb_branch + lab_branch)
    unchanged = _per_sample([s == 0 for s in severities], images).bool()
    return torch.where(unchanged, images, out)


def _lut256(images, tables: np.ndarray) -> torch.Tensor:
    codes = (images.clamp(0, 1) * 255).round().long().reshape(images.shape[0], -1)
    table = torch.from_numpy(np.asarray(tables, dtype=np.float32) / 255.0).to(images)
    return torch.gather(table, 1, codes).reshape(images.shape)


def _quantization(images, severities, generators, op):
    return _lut256(images, np.stack([op.table(int(op.parameter(s))) if s > 0 else np.arange(256)
                                     for s in severities]))


def _linear_contrast_change(images, severities, generators, op):
    # The numpy operator maps codes through np.rint of this table; the same rounding here.
    return _lut256(images, np.stack([np.rint(op.table(s)) if s > 0 else np.arange(256) for s in severities]))


BATCHED: dict[str, Callable[..., torch.Tensor]] = {
    "gaussian_blur": _gaussian_blur,
    "lens_blur": _lens_blur,
    "color_saturation": _color_saturation,
    "white_noise": _white_noise,
    "impulse_noise": _impulse_noise,
    "brighten": _tone_change,
    "darken": _tone_change,
    "quantization": _quantization,
    "linear_contrast_change": _linear_contrast_change,
}


def _check_batch(images: Any) -> torch.Tensor:
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise TypeError(f"expected a float tensor [B, 3, H, W] in [0, 1], got "
                        f"{type(images).__name__} {tuple(getattr(images, 'shape', ()))}")
    if not images.dtype.is_floating_point:
        raise TypeError(f"expected a float tensor in [0, 1], got {images.dtype}")
    return images


def _cpu_fallback(images, name, severities, seed, sample_ids, op_index, degrader):
    outputs = []
    for index, severity in enumerate(severities):
        pixels = (images[index].detach().float().clamp(0, 1) * 255).round().to(torch.uint8)
        array = np.ascontiguousarray(pixels.permute(1, 2, 0).cpu().numpy())
        out = degrader(array, severity, operator_rng(seed, sample_ids[index], op_index))
        if out.shape != array.shape:
            raise ValueError(f"degrader {name!r} changes the image size ({array.shape[:2]} -> {out.shape[:2]}), which "
                             "a batch tensor cannot hold; apply it per image with fdcore.degrade, before collation")
        outputs.append(torch.from_numpy(np.array(out, copy=not out.flags.writeable)).permute(2, 0, 1))
    return torch.stack(outputs).to(device=images.device, dtype=images.dtype) / 255.0


def degrade_batch(images: torch.Tensor, op: str, severities: float | Sequence[float], seed: int = 0,
                  sample_ids: Sequence[int | str] | None = None, op_index: int = 0) -> torch.Tensor:
    """Apply operator ``op`` to every sample of ``images`` ``[B, 3, H, W]`` (float, [0, 1], any device).

    ``severities`` is one value or one per sample (0 leaves that sample unchanged); sample ``i`` draws from the
    stream ``(seed, sample_ids[i], op_index)`` (``sample_ids`` default to 0..B-1). Returns a new tensor of the same
    dtype and device, clipped to [0, 1].
    """
    images = _check_batch(images)
    batch = images.shape[0]
    values = [float(severities)] * batch if isinstance(severities, (int, float)) else [float(s) for s in severities]
    if len(values) != batch or any(not 0.0 <= s <= 1.0 for s in values):
        raise ValueError(f"need {batch} severities in [0, 1], got {severities!r}")
    ids = list(range(batch)) if sample_ids is None else list(sample_ids)
    if len(ids) != batch:
        raise ValueError(f"need {batch} sample ids, got {len(ids)}")
    degrader = _degrader(op)
    if op not in BATCHED:
        return _cpu_fallback(images, op, values, seed, ids, op_index, degrader)
    generators = [sample_generator(seed, sample_id, op_index, images.device) for sample_id in ids]
    with torch.no_grad():
        out = BATCHED[op](images.detach(), values, generators, degrader)
    return out.clamp(0, 1).to(images.dtype)


def _run(images: torch.Tensor, plans: list[list[Step]], seeds: list[int], sample_ids: list) -> tuple[torch.Tensor, list]:
    out = images.detach().clone()
    step_records: list[list[dict]] = [[] for _ in plans]
    degraders: dict[str, Any] = {}
    for position in range(max((len(plan) for plan in plans), default=0)):
        by_key: dict[tuple[str, int], list[int]] = {}
        for index, plan in enumerate(plans):
            if position < len(plan):
                by_key.setdefault((plan[position].op, seeds[index]), []).append(index)
        for (name, seed), members in sorted(by_key.items()):
            degraders.setdefault(name, _degrader(name))
            chosen = torch.tensor(members, device=out.device)
            out[chosen] = degrade_batch(out[chosen], name, [plans[i][position].severity for i in members], seed,
                                        [sample_ids[i] for i in members], op_index=position)
            for i in members:
                step_records[i].append(step_record(plans[i][position], degraders[name]))
    return out, step_records


def apply_policy_batch(images: torch.Tensor, policy: str | dict | Policy, seed: int = 0,
                       sample_ids: Sequence[int | str] | None = None, **options: Any) -> tuple[torch.Tensor, list[dict]]:
    """Degrade a batch with a policy: each sample gets its own plan from ``(seed, sample_id)``, exactly the plan
    :func:`fdcore.apply_policy` would draw; operators run batched per step. Returns the batch and one record per
    sample (``"engine": "torch"``: :func:`replay_batch` reproduces it; the numpy :func:`fdcore.replay` reproduces
    the operators and severities, with noise drawn differently)."""
    images = _check_batch(images)
    loaded = load_policy(policy, **options)
    ids = list(range(images.shape[0])) if sample_ids is None else list(sample_ids)
    if len(ids) != images.shape[0]:
        raise ValueError(f"need {images.shape[0]} sample ids, got {len(ids)}")
    plans = [loaded.plan(seed, sample_id) for sample_id in ids]
    out, step_records = _run(images, [steps for _, steps in plans], [seed] * len(ids), ids)
    records = [{"format": RECORD_FORMAT, "engine": "torch", "policy": loaded.name, "options": dict(loaded.options),
                "seed": int(seed), "sample_id": sample_id, "branch": branch, "ops": ops}
               for sample_id, (branch, _), ops in zip(ids, plans, step_records)]
    return out, records


def replay_batch(records: Sequence[dict], images: torch.Tensor) -> torch.Tensor:
    """Re-run the records of :func:`apply_policy_batch` on the torch path (same device class: same result)."""
    images = _check_batch(images)
    if len(records) != images.shape[0]:
        raise ValueError(f"{len(records)} records for {images.shape[0]} images")
    plans = [[Step(step["op"], float(step["severity"]), step.get("level")) for step in record["ops"]]
             for record in records]
    out, _ = _run(images, plans, [int(r["seed"]) for r in records], [r["sample_id"] for r in records])
    return out


__all__ = ["BATCHED", "apply_policy_batch", "degrade_batch", "replay_batch", "sample_generator"]
