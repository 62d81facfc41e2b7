"""GPU figures in one command: prediction, training and serving measurements for a lent GPU, in under 8 minutes.

    python bench/gpu_check.py OUT_DIR                       # on a CUDA machine: real-size models, random weights
    python bench/gpu_check.py OUT_DIR --tiny --device cpu   # the smoke mode the test suite runs (seconds)

Writes ``OUT_DIR/gpu_check.json`` after every measurement (a run cut short still leaves what it measured) and
``OUT_DIR/summary.txt`` at the end, and prints each figure as it is measured. Nothing is downloaded: every model is
built from its architecture config with random weights (speed and memory do not depend on the weight values).

1. **Prediction**: the FeatDistill-layout ensemble (two CLIP ViT-L/14, two SigLIP So400M) scores a folder of
   generated JPEGs through ``fdcore predict``'s engine (``run_predict``: DataLoader decoding, batching, fusion) in
   fp16 and bf16 at batch 16 and 64 (images/s, peak allocated and reserved GPU memory), and a plain loop like
   FeatDistill's reference CLI (batch 1, fp32, transforms in the main process) scores the first images for the speed
   ratio; scores must agree within 0.02.
2. **Training**: one optimizer step of CLIP ViT-L/14 and SigLIP So400M at 64 images in fp16 autocast, stage 1 (BCE)
   and stage 2 (BCE + dense-l2 against a frozen teacher), with and without gradient checkpointing: step time and
   peak memory; and NPR training images/s.
3. **Serving**: ``fdcore serve`` at 32 concurrent loopback clients, once the service exists (reported as skipped
   before).

Each part has its own time budget (``--budget-scale`` stretches them); a measurement that would start after its
part's budget is recorded as skipped, so the whole run stays bounded. Targets it checks on one H100 (recorded as
``target_met``): ensemble fp16 peak allocated < 4 GB at batch 16, >= 200 images/s at batch 64; SigLIP So400M
training at 64 images per GPU < 30 GB with gradient checkpointing.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "bench"))

BUDGETS_S = {"prediction": 270.0, "training": 150.0, "npr": 30.0, "serving": 30.0}
TARGETS = {"ensemble_fp16_peak_allocated_gb_b16": 4.0, "ensemble_fp16_images_per_s_b64": 200.0,
           "siglip_train_b64_checkpointing_peak_gb": 30.0}


class Recorder:
    """Accumulates results, rewrites the JSON after each one, prints each figure as it comes."""

    def __init__(self, out_dir: Path, environment: dict):
        self.path = out_dir / "gpu_check.json"
        self.data = {"environment": environment, "prediction": [], "training": [], "npr": [], "serving": [],
                     "targets": {}, "notes": []}
        self.flush()

    def add(self, part: str, row: dict) -> None:
        self.data[part].append(row)
        print(f"[{part}] " + ", ".join(f"{key}={value}" for key, value in row.items()), flush=True)
        self.flush()

    def flush(self) -> None:
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.data, indent=2, default=str) + "\n")
        os.replace(temporary, self.path)


class Budget:
    def __init__(self, seconds: float):
        self.deadline = time.monotonic() + seconds

    def left(self) -> float:
        return self.deadline - time.monotonic()


def environment(device: str) -> dict:
    import torch

    info = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "command": " ".join([Path(sys.executable).name, *sys.argv]), "python": platform.python_version(),
            "torch": torch.__version__, "device": device, "cpu_count": os.cpu_count()}
    if device.startswith("cuda") and torch.cuda.is_available():
        properties = torch.cuda.get_device_properties(0)
        info.update(gpu=properties.name, gpu_memory_gb=round(properties.total_memory / 1e9, 1),
                    cuda=torch.version.cuda)
    return info


def _gb(value: int) -> float:
    return round(value / 1e9, 3)


def _reset_peak(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()


def _peaks(device: str) -> dict:
    import torch

    if not device.startswith("cuda"):
        return {"peak_allocated_gb": None, "peak_reserved_gb": None}
    torch.cuda.synchronize()
    return {"peak_allocated_gb": _gb(torch.cuda.max_memory_allocated()),
            "peak_reserved_gb": _gb(torch.cuda.max_memory_reserved())}


def build_expert(name: str, tiny: bool, device: str, dtype):
    import torch

    import fdcore

    expert_class = fdcore.get_expert_class(name)
    config = expert_class.tiny_config() if tiny else ({"backbone_config": {}} if name != "npr" else {})
    with torch.device(device):  # random initialisation straight on the device: seconds, not minutes
        expert = expert_class(**config)
    return expert.to(dtype=dtype).eval()


# -- 1. prediction -----------------------------------------------------------------------------------------------

def part_prediction(recorder: Recorder, args, budget: Budget, work: Path) -> None:
    import numpy as np
    import torch

    from bench_predict import make_images
    from fdcore.ensemble import Ensemble, Member, torch_dtype
    from fdcore.predict import PredictOptions, run_predict

    images = work / "images"
    make_images(images, args.images, 96 if args.tiny else 512, seed=0)
    names = sorted(path.name for path in images.iterdir())
    tags = ("clip", "clip", "siglip", "siglip")

    def ensemble_in(precision: str):
        dtype = torch_dtype(precision)
        members = [Member(f"expert_{i}_{tag}", build_expert(tag, args.tiny, args.device, dtype), 1.0,
                          f"random:{i}", "random weights") for i, tag in enumerate(tags, start=1)]
        return Ensemble(members, device=args.device, precision=precision, kind="featdistill-layout")

    fdcore_scores = {}
    for precision in ("fp16", "bf16"):
        if precision == "fp16" and args.device == "cpu":
            recorder.data["notes"].append("fp16 skipped on CPU")
            continue
        if budget.left() < 20:
            recorder.add("prediction", {"precision": precision, "skipped": "time budget used up"})
            continue
        torch.manual_seed(0)
        ensemble = ensemble_in(precision)
        for batch in (16, 64):
            if budget.left() < 10:
                recorder.add("prediction", {"precision": precision, "batch": batch, "skipped": "time budget"})
                continue
            _reset_peak(args.device)
            out = work / f"pred-{precision}-{batch}"
            summary = run_predict(PredictOptions(images=str(images), ensemble="(in memory)", out=str(out),
                                                 batch_size=batch, workers=args.workers, precision=precision,
                                                 device=args.device, quiet=True), ensemble=ensemble)
            row = {"precision": precision, "batch": batch, "images": summary.scored,
                   "images_per_s": round(summary.images_per_s, 2), "seconds": summary.elapsed_s,
                   **_peaks(args.device)}
            if precision == "fp16" and not args.tiny:
                key = {16: "ensemble_fp16_peak_allocated_gb_b16", 64: "ensemble_fp16_images_per_s_b64"}[batch]
                value = row["peak_allocated_gb"] if batch == 16 else row["images_per_s"]
                met = value < TARGETS[key] if batch == 16 else value >= TARGETS[key]
                recorder.data["targets"][key] = {"value": value, "target": TARGETS[key], "target_met": met}
            recorder.add("prediction", row)
            with open(out / "predictions.csv") as handle:
                fdcore_scores[(precision, batch)] = {line.split(",")[0]: float(line.split(",")[1])
                                                     for line in handle.read().splitlines()[1:]}
        del ensemble
        _reset_peak(args.device)

    if budget.left() < 20:
        recorder.add("prediction", {"plain_loop": True, "skipped": "time budget used up"})
        return
    from PIL import Image

    torch.manual_seed(0)
    experts = [build_expert(tag, args.tiny, args.device, torch.float32) for tag in tags]
    _reset_peak(args.device)
    plain, started = {}, time.perf_counter()
    with torch.inference_mode():
        for name in names[:args.plain_images]:
            image = Image.open(images / name).convert("RGB")
            values = [float(expert.probabilities(expert.preprocess([image]).to(args.device))[0]) for expert in experts]
            plain[name] = sum(values) / len(values)
            if budget.left() < 5:
                break
    seconds = time.perf_counter() - started
    row = {"plain_loop": "batch 1, fp32", "images": len(plain), "images_per_s": round(len(plain) / seconds, 2),
           **_peaks(args.device)}
    reference = [key for key in fdcore_scores if key[1] == 64] or list(fdcore_scores)
    if reference:
        best = max(reference, key=lambda key: next(r["images_per_s"] for r in recorder.data["prediction"]
                                                   if r.get("precision") == key[0] and r.get("batch") == key[1]))
        fast = next(r for r in recorder.data["prediction"] if r.get("precision") == best[0] and r.get("batch") == best[1])
        differences = [abs(fdcore_scores[best][name] - score) for name, score in plain.items()]
        row.update(speedup_of_fdcore=round(fast["images_per_s"] / row["images_per_s"], 2),
                   compared_with=f"fdcore {best[0]} batch {best[1]}",
                   max_score_difference=round(float(np.max(differences)), 6) if differences else None,
                   scores_agree_within_0_02=bool(differences) and max(differences) <= 0.02)
    recorder.add("prediction", row)


# -- 2. training -------------------------------------------------------------------------------------------------

def _train_step_row(name: str, stage: int, checkpointing: bool, batch: int, args) -> dict:
    import copy

    import torch

    import fdcore
    from fdcore.training import StudentWithFeatures

    torch.manual_seed(0)
    expert = build_expert(name, args.tiny, args.device, torch.float32).train()
    if checkpointing:
        expert.enable_gradient_checkpointing()
    distiller = None
    if stage == 2:
        distiller = fdcore.get_distiller("dense-l2", copy.deepcopy(expert))
    student = StudentWithFeatures(expert)
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    use_cuda = args.device.startswith("cuda")
    scaler = torch.amp.GradScaler("cuda", enabled=use_cuda)
    size = expert.preprocessing.size
    batch_data = {"pixels": torch.randn(batch, 3, size, size, device=args.device),
                  "label": torch.randint(0, 2, (batch,), device=args.device)}
    times = []
    _reset_peak(args.device)
    for step in range(args.train_steps + 1):
        started = time.perf_counter()
        with torch.autocast(args.device.split(":")[0], dtype=torch.float16 if use_cuda else torch.bfloat16):
            if distiller is None:
                logits, _ = student(batch_data["pixels"], with_features=False)
                distill = torch.zeros((), device=args.device)
            else:
                logits, distill = distiller.student_step(student, batch_data)
            loss = torch.nn.functional.cross_entropy(logits.float(), batch_data["label"]) + distill
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        if use_cuda:
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - started)
    times.sort()
    return {"expert": name, "stage": stage, "gradient_checkpointing": checkpointing, "batch": batch,
            "precision": "fp16 autocast" if use_cuda else "bf16 autocast (cpu)",
            "seconds_per_step": round(times[len(times) // 2], 4), "images_per_s": round(batch / times[len(times) // 2], 2),
            **_peaks(args.device)}


def part_training(recorder: Recorder, args, budget: Budget) -> None:
    import torch

    for name in ("clip", "siglip"):
        for checkpointing in (True, False):
            for stage in (1, 2):
                if budget.left() < 15:
                    recorder.add("training", {"expert": name, "stage": stage,
                                              "gradient_checkpointing": checkpointing, "skipped": "time budget"})
                    continue
                try:
                    row = _train_step_row(name, stage, checkpointing, args.train_batch, args)
                except torch.OutOfMemoryError as exc:
                    row = {"expert": name, "stage": stage, "gradient_checkpointing": checkpointing,
                           "batch": args.train_batch, "error": f"out of memory: {str(exc).splitlines()[0]}"}
                _reset_peak(args.device)
                if (name, checkpointing, stage) == ("siglip", True, 2) and not args.tiny and "error" not in row:
                    key = "siglip_train_b64_checkpointing_peak_gb"
                    recorder.data["targets"][key] = {"value": row["peak_allocated_gb"], "target": TARGETS[key],
                                                     "target_met": row["peak_allocated_gb"] < TARGETS[key]}
                recorder.add("training", row)


def part_npr(recorder: Recorder, args, budget: Budget) -> None:
    import fdcore

    if "npr" not in fdcore.list_experts():
        recorder.add("npr", {"skipped": "the fdcore-npr plugin is not installed"})
        return
    for batch in (32, 64):
        if budget.left() < 5:
            recorder.add("npr", {"batch": batch, "skipped": "time budget"})
            continue
        recorder.add("npr", _train_step_row("npr", 1, False, batch, args))


def part_serving(recorder: Recorder, args, budget: Budget) -> None:
    try:
        import fdcore.serve  # noqa: F401
    except ImportError:
        recorder.add("serving", {"skipped": "fdcore serve is not part of this fdcore yet"})
        return
    recorder.add("serving", {"skipped": "the serving measurement is not implemented in this script yet"})


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("out_dir", type=Path, help="where gpu_check.json and summary.txt are written")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cpu (with --tiny: the smoke mode)")
    parser.add_argument("--tiny", action="store_true", help="tiny architectures and few images: checks the script")
    parser.add_argument("--images", type=int, default=None, help="images scored per prediction run (default 384)")
    parser.add_argument("--plain-images", type=int, default=None, help="images of the plain loop (default 48)")
    parser.add_argument("--workers", type=int, default=None, help="DataLoader workers (default: CPUs - 2, at most 8)")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (default 64)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed training steps (default 3)")
    parser.add_argument("--budget-scale", type=float, default=1.0, help="multiply every part's time budget")
    args = parser.parse_args(argv)
    args.images = args.images or (8 if args.tiny else 384)
    args.plain_images = args.plain_images or (4 if args.tiny else 48)
    args.workers = args.workers if args.workers is not None else (0 if args.tiny else min(8, max((os.cpu_count() or 2) - 2, 1)))
    args.train_batch = args.train_batch or (4 if args.tiny else 64)
    args.train_steps = args.train_steps or (1 if args.tiny else 3)

    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error("no CUDA device is visible; run with --tiny --device cpu for the smoke mode")
    if args.device == "cpu" and not args.tiny:
        parser.error("real-size models on the CPU would take hours: use --tiny with --device cpu")
    args.out_dir.mkdir(parents=True, exist_ok=True)
    recorder = Recorder(args.out_dir, environment(args.device))
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="gpu-check-") as work:
        for part, function in (("prediction", lambda b: part_prediction(recorder, args, b, Path(work))),
                               ("training", lambda b: part_training(recorder, args, b)),
                               ("npr", lambda b: part_npr(recorder, args, b)),
                               ("serving", lambda b: part_serving(recorder, args, b))):
            budget = Budget(BUDGETS_S[part] * args.budget_scale)
            try:
                function(budget)
            except Exception as exc:  # one part failing must not lose the others' figures
                recorder.add(part, {"error": f"{type(exc).__name__}: {exc}",
                                    "traceback": traceback.format_exc()[-2000:]})
    recorder.data["seconds"] = round(time.monotonic() - started, 1)
    recorder.flush()
    lines = [f"fdcore GPU check on {recorder.data['environment'].get('gpu', args.device)} "
             f"({recorder.data['seconds']} s){' - TINY smoke mode, figures mean nothing' if args.tiny else ''}"]
    for part in ("prediction", "training", "npr", "serving"):
        for row in recorder.data[part]:
            lines.append(f"{part}: " + ", ".join(f"{k}={v}" for k, v in row.items() if k != "traceback"))
    for key, target in recorder.data["targets"].items():
        lines.append(f"target {key}: {target['value']} vs {target['target']}: "
                     f"{'met' if target['target_met'] else 'NOT met'}")
    (args.out_dir / "summary.txt").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    failed = [row for part in ("prediction", "training", "npr") for row in recorder.data[part] if "error" in row]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
