"""The recipe's plumbing: data, expert construction, loaders, evaluation, run log, model card, resume rules."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import torch

from fdcore.training import TrainingError, environment_record

# Keys that may differ when resuming a run: they change how fast it goes, not what it computes.
RESUME_MAY_CHANGE = ("workers", "log_every", "resume", "stop_after", "progress")
# Stage 2 starts from a trained model that is also its teacher: re-warming to stage 1's peak rate would first push the
# student away from what it distils towards (BCE jumped from ~0.2 back to ~0.6 in 24+6-epoch runs).
STAGE2_LR_FRACTION = 0.1


def resolve_resume(config: dict, output_dir: Path) -> dict:
    """With --resume, the run's recorded configuration; without it, refuse to overwrite an existing run."""
    record = output_dir / "run.json"
    if config["resume"]:
        if not record.is_file():
            raise TrainingError(f"nothing to resume: {record} does not exist (start a run with --output-dir "
                                f"{output_dir} first)")
        saved = json.loads(record.read_text())["config"]
        # Options added to the recipe after the run started take their defaults (or this invocation's values).
        resumed = {**config, **saved, **{key: config[key] for key in RESUME_MAY_CHANGE}}
        return resumed
    if record.is_file():
        raise TrainingError(f"{output_dir} already holds a training run; pass --resume to continue it, or choose "
                            "another --output-dir")
    return config


def stage_finished(stage_dir: Path) -> bool:
    return (stage_dir / "done.json").is_file() and (stage_dir / "expert" / "manifest.json").is_file()


@dataclasses.dataclass
class TrainingData:
    spec: Any
    train: Any
    validation: Any

    @property
    def streaming(self) -> bool:
        return self.spec.streams

    def summary(self) -> str:
        counts = self.spec.counts
        train = counts.get("mixed", {})
        validation = counts.get("validation", {})
        held_out = (f"validation {validation.get('rows')} images ({validation.get('fake', '?')} AI-generated)"
                    if validation.get("rows") is not None else "no validation split")
        if self.streaming:
            return f"train streamed, {held_out}"
        return f"train {train.get('rows')} images ({train.get('fake', '?')} AI-generated), {held_out}"

    def to_dict(self) -> dict:
        return {"spec": self.spec.to_dict(), "counts": self.spec.counts}


def load_data(config: dict) -> TrainingData:
    from fdcore.data import ValidationSpec, resolve_data_spec

    spec = resolve_data_spec(config["data"], seed=config["seed"])
    streaming = spec.streams
    if streaming:
        check_streaming_options(config, has_validation_source=bool(config["validation"] or spec.validation))
    if config["validation"]:
        spec = spec.with_validation(ValidationSpec(data=resolve_data_spec(config["validation"], seed=config["seed"])))
    elif spec.validation is None and config["validation_fraction"] and not streaming:
        spec = spec.with_validation(ValidationSpec(fraction=config["validation_fraction"]))
    train, validation = spec.load_splits(shuffle_buffer=config["shuffle_buffer"] or 0,
                                         validation_rows=config["validation_rows"] or 0)
    return TrainingData(spec, train, validation)


def check_streaming_options(config: dict, has_validation_source: bool) -> None:
    """A streamed training source has no length: the epoch length and the validation rows must be said."""
    if not config["steps_per_epoch"]:
        raise TrainingError("the training data streams, so its length is unknown: give --steps-per-epoch N (the "
                            "optimizer steps that make one epoch)")
    if config["validation_rows"] is None and not has_validation_source:
        raise TrainingError("the training data streams, so no validation fraction can be held out of it: give "
                            "--validation SOURCE, or --validation-rows K to hold out the stream's first K rows, "
                            "or --validation-rows 0 to train without validation")
    if config["validation_rows"] and has_validation_source:
        raise TrainingError("--validation-rows and a validation source are two validation sets; give only one")


def stage_learning_rate(config: dict, stage: int) -> float:
    """The peak learning rate of a stage: ``lr`` for stage 1; ``stage2_lr`` (default a tenth of ``lr``) for stage 2.

    Each stage has its own warm-up (``warmup_fraction`` of its steps) and cosine decay to zero."""
    if stage == 1 or config.get("stage2_lr") is None:
        return config["lr"] * (1.0 if stage == 1 else STAGE2_LR_FRACTION)
    return config["stage2_lr"]


def build_expert(config: dict):
    import fdcore

    options = config["expert_options"] or {}
    if isinstance(options, str):
        try:
            options = json.loads(options)
        except ValueError as exc:
            raise TrainingError(f"--expert-options is not a JSON object: {exc}") from exc
    options = dict(options)
    if config["init"] == "random":
        if not config["backbone_config"]:
            raise TrainingError("--init random needs --backbone-config FILE.json (a backbone config)")
        path = Path(config["backbone_config"])
        try:
            options["backbone_config"] = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            raise TrainingError(f"cannot read --backbone-config {path}: {exc}") from exc
    elif config["backbone"]:
        options["backbone"] = config["backbone"]
    try:
        return fdcore.get_expert(config["expert"], **options)
    except TypeError as exc:
        raise TrainingError(f"expert {config['expert']!r} does not accept these options {sorted(options)}: {exc}") from exc


def policy_degrader(policy_name: str | None, seed: int, aligned: bool):
    """The dataset's ``degrade(image, index, epoch, view=0)`` for a registered policy, seeded per sample."""
    if not policy_name or policy_name == "none":
        return None
    from fdcore.data import seeded_degrade
    from fdcore.degradations.api import apply_policy, load_policy

    policy = load_policy(policy_name, preserve_alignment=aligned)

    def degrade_with_policy(image, rng):
        # An integer seed drawn from the per-sample stream, recorded so the exact chain can be replayed.
        sample_seed = int(rng.integers(0, 2**31 - 1))
        return apply_policy(image, policy, seed=sample_seed)

    return seeded_degrade(degrade_with_policy, seed)


def training_dataset(data: TrainingData, expert, config: dict, stage: int, aligned: bool, views: int):
    from fdcore.data import DetectionDataset

    degrade = policy_degrader(config["policy"], config["seed"] + 1000 * stage, aligned)
    return DetectionDataset(data.train, expert, degrade=degrade, views=views,
                            random_crop_seed=config["seed"] + 1000 * stage + 500)


def loader(dataset, config: dict, sampler=None, shuffle_training: bool = True):
    from fdcore.data import collate_samples

    if sampler is not None and len(dataset) < config["batch_size"]:
        raise TrainingError(f"the training set has {len(dataset)} images, fewer than one batch of "
                            f"{config['batch_size']}; lower --batch-size or add data")
    return torch.utils.data.DataLoader(
        dataset, batch_size=config["batch_size"], sampler=sampler, num_workers=config["workers"],
        collate_fn=collate_samples, drop_last=sampler is not None, persistent_workers=False)


def streaming_loader(items, data: TrainingData, config: dict, accelerator):
    """``(StreamingTrainingSet, DataLoader)`` for a streamed training source: this process's share of every global
    batch. Not passed through ``accelerator.prepare``, which would shard the stream a second time."""
    from fdcore.data import collate_samples
    from fdcore.data import StreamingTrainingSet

    stream_set = StreamingTrainingSet(data.train, items, batch_size=config["batch_size"],
                                      steps_per_epoch=config["steps_per_epoch"],
                                      accumulation=config["gradient_accumulation"],
                                      process_index=accelerator.process_index,
                                      num_processes=accelerator.num_processes)
    return stream_set, torch.utils.data.DataLoader(
        stream_set, batch_size=stream_set.process_batch_size, num_workers=config["workers"],
        collate_fn=collate_samples, persistent_workers=False)


def validation_loaders(data: TrainingData, expert, config: dict) -> dict:
    from fdcore.data import DetectionDataset

    if data.validation is None or len(data.validation) == 0:
        return {}
    loaders = {"clean": loader(DetectionDataset(data.validation, expert), config)}
    degrade = policy_degrader(config["validation_policy"], config["seed"] + 7919, aligned=False)
    if degrade is not None:
        loaders["degraded"] = loader(DetectionDataset(data.validation, expert, degrade=degrade), config)
    return loaders


@torch.no_grad()
def evaluate(student, loaders: dict, accelerator) -> dict:
    """ROC AUC (the packaged evaluate metric) and BCE on each validation loader, gathered across processes."""
    from fdcore.metrics.scores import MetricError, roc_auc

    results = {}
    was_training = student.training
    student.eval()
    for name, dataloader in loaders.items():
        probabilities, labels, losses = [], [], []
        for batch in dataloader:
            logits, _ = student(batch["pixels"], with_features=False)
            probability = torch.softmax(logits.float(), dim=-1)[:, 1]
            loss = torch.nn.functional.cross_entropy(logits.float(), batch["label"], reduction="none")
            probability, label, loss = accelerator.gather_for_metrics((probability, batch["label"], loss))
            probabilities.append(probability.cpu())
            labels.append(label.cpu())
            losses.append(loss.cpu())
        scores = torch.cat(probabilities).numpy()
        truth = torch.cat(labels).numpy()
        results[f"{name}_bce"] = float(torch.cat(losses).mean())
        try:
            results[f"{name}_roc_auc"] = roc_auc(truth, scores, what=f"{name} validation")
        except MetricError:
            results[f"{name}_roc_auc"] = float("nan")  # one class only: AUC undefined, reported as NaN
    student.train(was_training)
    return results


class RunLog:
    """One JSON object per line (main process only): training steps and evaluations, for people and scripts."""

    def __init__(self, path: Path, accelerator):
        self.path, self.accelerator = Path(path), accelerator

    def write(self, **fields) -> None:
        if not self.accelerator.is_main_process:
            return
        clean = {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in fields.items()}
        with open(self.path, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(clean, sort_keys=True) + "\n")


def model_card(config: dict, data: TrainingData, metrics: dict) -> dict:
    return {
        "recipe": "two_stage",
        "data": data.to_dict(),
        "hyperparameters": config,
        "metrics": metrics,
        **environment_record(),
    }


class SampleRecorder:
    """``--record-samples``: one JSON line per trained sample and process, in ``OUTPUT_DIR/samples/``.

    A line says which optimizer ``step`` the sample fed (the first is 1), its ``epoch`` and ``batch_in_epoch``, the
    dataset ``index`` and ``path``, the ``crop`` window ``[top, left, height, width]`` of the decoded image, and the
    degradation record (``null`` when trained clean): enough to rebuild the exact pixels. On ``--resume`` the lines
    of steps after the checkpoint (trained by the interrupted process, then lost) are dropped first, so the file of a
    resumed run equals an uninterrupted run's.
    """

    def __init__(self, path: Path | None, stage: int):
        self.path, self.stage, self.handle = path, stage, None

    @classmethod
    def for_run(cls, config: dict, stage: int, accelerator, resumed_at_step: int) -> "SampleRecorder":
        if not config.get("record_samples"):
            return cls(None, stage)
        from fdcore.fileio import write_text_atomic

        path = Path(config["output_dir"]) / "samples" / f"stage{stage}.rank{accelerator.process_index}.jsonl"
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists():
            kept = [line for line in path.read_text(encoding="utf-8").splitlines(keepends=True)
                    if line.endswith("\n") and json.loads(line)["step"] <= resumed_at_step]
            write_text_atomic(path, "".join(kept))
        recorder = cls(path, stage)
        recorder.handle = open(path, "a", encoding="utf-8")
        return recorder

    def write(self, batch: dict, epoch: int, batch_in_epoch: int, step: int) -> None:
        if self.handle is None:
            return
        crops = batch.get("crop") or [None] * len(batch["path"])
        for position, (index, path, crop, degradation) in enumerate(
                zip(batch["index"].tolist(), batch["path"], crops, batch["degradation"])):
            record = {"stage": self.stage, "epoch": epoch, "batch_in_epoch": batch_in_epoch, "position": position,
                      "step": step, "index": index, "path": path, "crop": crop,
                      "degradation": json.loads(degradation)}
            self.handle.write(json.dumps(record, sort_keys=True) + "\n")
        self.handle.flush()

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


class EpochMeter:
    """Running means of one epoch's losses over every process, its throughput, and the progress bar.

    Sums travel across processes once per optimizer step (one small all-reduce), so the means are those of the whole
    global batch whatever the number of processes; the bar (tqdm, main process, stderr) shows them with the
    images per second and the time left in the epoch.
    """

    KEYS = ("loss", "bce", "distill")

    def __init__(self, accelerator, stage: int, epoch: int, epochs: int, steps: int, done: int, enabled: bool):
        import time

        self.accelerator = accelerator
        self.local = torch.zeros(len(self.KEYS) + 1, dtype=torch.float64)  # weighted loss sums, then images
        self.totals = torch.zeros_like(self.local)
        self.started = time.time()
        self.bar = None
        if enabled and accelerator.is_main_process:
            from tqdm import tqdm

            self.bar = tqdm(total=max(steps, 0), initial=done, unit="step", dynamic_ncols=True, mininterval=1.0,
                            desc=f"stage {stage} epoch {epoch + 1}/{epochs}", leave=False)

    def add_batch(self, images: int, **losses) -> None:
        for slot, key in enumerate(self.KEYS):
            self.local[slot] += float(losses[key].detach()) * images
        self.local[-1] += images

    def step_done(self) -> None:
        summed = self.local.to(self.accelerator.device)
        if self.accelerator.num_processes > 1:
            summed = self.accelerator.reduce(summed, reduction="sum")
        self.totals += summed.cpu()
        self.local.zero_()
        if self.bar is not None:
            running = self.running()
            self.bar.set_postfix(loss=f"{running['loss_mean']:.4f}", img_s=f"{running['images_per_s']:.1f}",
                                 refresh=False)
            self.bar.update(1)

    def running(self) -> dict:
        import time

        images = float(self.totals[-1])
        means = {f"{key}_mean": (float(self.totals[slot]) / images if images else float("nan"))
                 for slot, key in enumerate(self.KEYS)}
        elapsed = time.time() - self.started
        return {**means, "images": int(images), "images_per_s": round(images / elapsed, 3) if elapsed > 0 else 0.0}

    def close(self) -> None:
        if self.bar is not None:
            self.bar.refresh()  # the final means, even when the epoch was shorter than the refresh interval
            self.bar.close()
            self.bar = None


def epoch_line(stage: int, epoch: int, epochs: int, running: dict, metrics: dict) -> str:
    """The line printed at the end of each epoch: training running means, then validation metrics."""
    train = (f"train loss {running['loss_mean']:.4f} (bce {running['bce_mean']:.4f}, distill "
             f"{running['distill_mean']:.4f}), {running['images_per_s']:.1f} images/s"
             if running["images"] else "no training batch this invocation")
    validation = ", ".join(f"{key} {value:.4f}" for key, value in metrics.items()) or "no validation split"
    return f"stage {stage} epoch {epoch + 1}/{epochs}: {train} | validation: {validation}"
