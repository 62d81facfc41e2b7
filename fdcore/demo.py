"""`fdcore demo`: the whole pipeline on procedurally generated data, nothing downloaded.

This is a demonstration that the pipeline runs end to end, on synthetic data; it is NOT a real-world detector.

- "Real" images follow the dead-leaves model: opaque discs with power-law radii dropped on top of each other
  (occlusion, edges at every scale, a roughly 1/f spectrum), lightly blurred and noised like a camera would.
- "Generated" images are dead-leaves scenes that went through a small, randomly initialised upsampling decoder:
  downsample by 2, then bilinear upsampling plus a transposed-convolution branch. The transposed convolution leaves
  the periodic (checkerboard) trace that real generators' upsamplers leave — the AutoGAN idea of simulating
  generator artefacts without a generator.
- A tiny CLIP-architecture and a tiny SigLIP-architecture expert are trained through the two-stage recipe (stage 1
  BCE, stage 2 dense self-distillation, the featdistill degradation policy on), assembled into an ensemble, used by
  `fdcore predict --aggregator mean` on a held-out folder, and measured by `fdcore evaluate` (clean and robust AUC).
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

from fdcore.errors import FdcoreError

# Everything a demo run writes; a folder holding only these may be replaced by the next run.
DEMO_OUTPUTS = {"data", "runs", "ensemble", "predictions", "report", "demo.json"}

DEMO_NOTICE = ("fdcore demo: a pipeline demonstration on synthetic data (dead-leaves 'real' images vs images from a "
               "random upsampling decoder). It is not a real-world detector and its numbers say nothing about one.")


@dataclasses.dataclass(frozen=True)
class DemoSize:
    train_per_class: int
    test_per_class: int
    image_size: int
    stage1_epochs: int
    stage2_epochs: int
    hidden: int
    layers: int
    bootstrap: int


SIZES = {
    "full": DemoSize(train_per_class=240, test_per_class=80, image_size=64, stage1_epochs=4, stage2_epochs=1,
                     hidden=64, layers=2, bootstrap=500),
    "small": DemoSize(train_per_class=48, test_per_class=24, image_size=32, stage1_epochs=2, stage2_epochs=1,
                      hidden=32, layers=2, bootstrap=50),
}


def dead_leaves(rng: np.random.Generator, size: int, leaves: int | None = None) -> np.ndarray:
    """One dead-leaves image, ``size x size x 3`` uint8.

    Leaves (discs) fall one after another; a pixel shows the first leaf that covers it (front to back). Radii follow
    a power law (density ~ r^-3) between 1 px and half the image: scale invariance, hence a roughly 1/f spectrum.
    """
    count = leaves or 6 * size
    r_min, r_max = 1.0, size / 2.0
    u = rng.uniform(size=count)
    radii = 1.0 / np.sqrt(u / r_min**2 + (1 - u) / r_max**2)
    centres = rng.uniform(-radii[:, None], size + radii[:, None], (count, 2))
    colours = rng.uniform(0, 255, (count + 1, 3)).astype(np.float32)  # the last one is the background
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    covers = ((yy[None] - centres[:, 0, None, None]) ** 2 + (xx[None] - centres[:, 1, None, None]) ** 2
              <= (radii[:, None, None] ** 2))
    first = np.where(covers.any(axis=0), covers.argmax(axis=0), count)
    image = _box_blur(colours[first], rng.uniform(0.3, 0.8))
    image += rng.normal(0, 2.0, image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def _box_blur(image: np.ndarray, weight: float) -> np.ndarray:
    """A light 3x3 blur mixed in with ``weight`` (optics are never perfectly sharp)."""
    padded = np.pad(image, ((1, 1), (1, 1), (0, 0)), mode="edge")
    blurred = sum(padded[dy:dy + image.shape[0], dx:dx + image.shape[1]] for dy in range(3) for dx in range(3)) / 9
    return (1 - weight) * image + weight * blurred


class UpsamplingDecoder:
    """A randomly initialised generator upsampler: bilinear x2 plus a transposed-convolution branch."""

    def __init__(self, seed: int, strength: float = 16.0):
        import torch

        generator = torch.Generator().manual_seed(seed)
        self.transposed = torch.nn.ConvTranspose2d(3, 8, kernel_size=4, stride=2, padding=1)
        self.mix = torch.nn.Conv2d(8, 3, kernel_size=3, padding=1)
        with torch.no_grad():
            for parameter in (*self.transposed.parameters(), *self.mix.parameters()):
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.5)
        self.strength = strength

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import torch

        with torch.no_grad():
            pixels = torch.from_numpy(image.astype(np.float32) / 255.0).permute(2, 0, 1)[None]
            low = torch.nn.functional.avg_pool2d(pixels, 2)
            smooth = torch.nn.functional.interpolate(low, scale_factor=2, mode="bilinear", align_corners=False)
            trace = self.mix(torch.tanh(self.transposed(low * 2 - 1)))
            # Zero-mean per channel: the trace is texture, not a colour cast a detector could key on instead.
            trace = trace - trace.mean(dim=(2, 3), keepdim=True)
            trace = trace / (trace.std() + 1e-6) * (self.strength / 255.0)
            out = (smooth + trace).clamp(0, 1)[0].permute(1, 2, 0).numpy()
        return np.rint(out * 255).astype(np.uint8)


def make_dataset(root: Path, per_class: int, size: int, seed: int, generator_seed: int = 0) -> Path:
    """``root/real`` and ``root/fake`` PNGs; the same seeds give the same bytes. ``generator_seed`` picks the
    decoder (the "generator"): train and test share it, as a detector is first judged on a generator it knows."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    decoder = UpsamplingDecoder(generator_seed)
    for label in ("real", "fake"):
        (root / label).mkdir(parents=True, exist_ok=True)
    for index in range(per_class):
        Image.fromarray(dead_leaves(rng, size)).save(root / "real" / f"leaves_{index:04d}.png")
        Image.fromarray(decoder(dead_leaves(rng, size))).save(root / "fake" / f"decoded_{index:04d}.png")
    return root


def demo_experts() -> list[tuple[str, type]]:
    """Every installed expert built on a Hugging Face vision transformer (the core names no plugin: with the
    standard plugins installed these are the CLIP- and SigLIP-architecture experts)."""
    from fdcore import registry
    from fdcore.hf_expert import HFVisionExpert

    found = [(name, registry.get("experts", name)) for name in registry.names("experts")]
    return [(name, cls) for name, cls in found if issubclass(cls, HFVisionExpert)]


def trained_in_demo(image_size: int) -> list[tuple[str, type, dict]]:
    """``(name, class, constructor kwargs)`` of every installed expert that takes part in the demo (its class
    returns :meth:`fdcore.Expert.demo_options`): the transformer experts and, with fdcore-npr, NPR."""
    from fdcore import registry

    chosen = []
    for name in registry.names("experts"):
        expert_class = registry.get("experts", name)
        options = expert_class.demo_options(image_size)
        if options is not None:
            chosen.append((name, expert_class, options))
    return chosen


def run_demo(out: Path, size_name: str = "full", seed: int = 0, echo=print) -> dict:
    """Build data, train two experts, assemble, predict and evaluate; returns the headline numbers and paths."""
    from fdcore.ensemble_io import write_ensemble
    from fdcore.evaluation import VariantPlan, run_evaluation
    from fdcore.hf_expert import HFVisionExpert
    from fdcore.recipes.two_stage import DEFAULTS, training_function

    size = SIZES[size_name]
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        foreign = sorted(p.name for p in out.iterdir() if p.name not in DEMO_OUTPUTS)
        if foreign:
            raise FdcoreError(f"{out} is not empty and not an earlier demo output (it holds {', '.join(foreign[:5])}); "
                              "pass another --out")
        echo(f"replacing the earlier demo run in {out}")
        import shutil

        shutil.rmtree(out)
    experts = trained_in_demo(size.image_size)
    if not any(issubclass(expert_class, HFVisionExpert) for _, expert_class, _ in experts):
        raise FdcoreError("the demo trains transformer experts, and none is installed: "
                          "pip install -e experts/clip -e experts/siglip (see the README)")
    steps = len(experts) + 3
    started = time.time()
    echo(DEMO_NOTICE)
    echo(f"[1/{steps}] generating {size.train_per_class}+{size.train_per_class} training and "
         f"{size.test_per_class}+{size.test_per_class} held-out images ({size.image_size} px) in {out / 'data'}")
    train_dir = make_dataset(out / "data" / "train", size.train_per_class, size.image_size, seed, generator_seed=seed)
    test_dir = make_dataset(out / "data" / "test", size.test_per_class, size.image_size, seed + 1,
                            generator_seed=seed)

    members = []
    for step, (kind, expert_class, options) in enumerate(experts, start=2):
        # the demo's schedule, under the expert's own training defaults (NPR: Adam at 2e-4, no degradations)
        config = {**DEFAULTS, "lr": 1e-3, "warmup_fraction": 0.1, **expert_class.training_defaults,
                  "expert": kind, "expert_options": options, "data": [str(train_dir)],
                  "output_dir": str(out / "runs" / kind), "epochs": size.stage1_epochs,
                  "stage2_epochs": size.stage2_epochs, "batch_size": 16, "seed": seed + step, "workers": 2,
                  "log_every": 20, "validation_fraction": 0.1, "mixed_precision": "no", "progress": False}
        policy = config["policy"] if config["policy"] != "none" else "no degradations"
        echo(f"[{step}/{steps}] training a small {kind} expert: stage 1 BCE ({size.stage1_epochs} epochs), stage 2 "
             f"dense self-distillation ({size.stage2_epochs} epoch), {policy}")
        expert_dir = training_function(config)
        members.append({"name": f"{kind}_1", "path": f"{kind}_1", "weight": 1.0, "source": expert_dir})

    echo(f"[{steps - 1}/{steps}] assembling the ensemble and scoring the held-out folder: "
         "fdcore predict --aggregator mean")
    import shutil

    ensemble_dir = out / "ensemble"
    for member in members:
        shutil.copytree(member.pop("source"), ensemble_dir / member["path"])
    write_ensemble(ensemble_dir, members, aggregator="mean",
                   card={"made_by": "fdcore demo", "seed": seed, "size": size_name, "synthetic_data": True})
    predictions_dir = out / "predictions"
    command = [sys.executable, "-m", "fdcore", "predict", str(test_dir), "--ensemble", str(ensemble_dir),
               "--aggregator", "mean", "--out", str(predictions_dir), "--per-expert", "--quiet"]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise FdcoreError(f"fdcore predict failed ({result.returncode}): {result.stderr.strip()[-2000:]}")

    echo(f"[{steps}/{steps}] fdcore evaluate: clean ROC AUC and robust ROC AUC under the ntire2026-test-like suite")
    report_dir = out / "report"
    metrics = run_evaluation(ensemble_dir, [str(test_dir)], report_dir,
                             VariantPlan(suite="ntire2026-test-like", copies=1, seed=seed),
                             bootstrap=size.bootstrap, workers=2, title="fdcore demo (synthetic data)")
    summary = {
        "clean_roc_auc": metrics["clean_roc_auc"],
        "robust_roc_auc": metrics["robust_roc_auc"],
        "experts": {name: {"clean_roc_auc": values.get("clean_roc_auc"),
                           "robust_roc_auc": values.get("robust_roc_auc")}
                    for name, values in metrics["experts"].items()},
        "ensemble": str(ensemble_dir),
        "predictions": str(predictions_dir / "predictions.csv"),
        "report": str(report_dir / "report.html"),
        "metrics": str(report_dir / "metrics.json"),
        "seconds": round(time.time() - started, 1),
        "synthetic": True,
    }
    (out / "demo.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    return summary
