"""Two-stage training of one fdcore expert (FeatDistill, arXiv 2603.21939), on Hugging Face Accelerate.

Stage 1: binary cross-entropy on the head's logits, backbone and head trained (2 epochs in the paper).
Stage 2: the stage-1 model is frozen as teacher; the student continues from it with
         BCE + lambda * Distiller.loss (dense-l2: paper Eq. 2 on dense token maps; crd: contrastive distillation
         with a MoCo queue and a cosine-momentum teacher). Position-wise distillers train without pixel-moving
         degradations.

Launch (the script is also `fdcore train ...` and `python -m fdcore.recipes.two_stage ...`):

    # one CPU process, a tiny randomly initialised backbone (what the tests and the demo do)
    accelerate launch --config_file recipes/configs/cpu.yaml recipes/two_stage.py --expert clip \\
        --init random --backbone-config tiny_clip.json --data real_fake_folder --output-dir runs/clip-tiny

    # the paper's set-up: two GPUs, DDP, fp16, global batch 128, pretrained SigLIP So400M
    accelerate launch --config_file recipes/configs/two_gpu_fp16.yaml recipes/two_stage.py --expert siglip \\
        --backbone google/siglip-so400m-patch14-384 --data ntire=/data/ntire:3 --data ditfake=/data/ditfake:1 \\
        --batch-size 128 --output-dir runs/siglip-1

    # a streamed corpus (a YAML spec with `streaming: true`, or hub:ID?streaming=1): epochs are counted in steps
    accelerate launch ... recipes/two_stage.py --expert clip --data big.yaml --steps-per-epoch 5000 \\
        --validation val_folder --output-dir runs/clip-stream      # or --validation-rows 2000

    # resume after an interruption (continues mid-epoch, same results as an uninterrupted run)
    accelerate launch ... recipes/two_stage.py --output-dir runs/siglip-1 --resume

    # single GPU with bf16 and gradient checkpointing
    accelerate launch --config_file recipes/configs/single_gpu.yaml recipes/two_stage.py --expert clip \\
        --backbone openai/clip-vit-large-patch14 --data DATA --mixed-precision bf16 --gradient-checkpointing

Every hyper-parameter is a command-line option or a key of a YAML file given with --config; the resolved
configuration is written to OUTPUT_DIR/run.json with package and plugin versions, and the final expert directory
(OUTPUT_DIR/expert) carries a model card with data, hyper-parameters and metrics.
"""

from __future__ import annotations

import argparse
import copy
import math
import sys
import time
from pathlib import Path

DEFAULTS = {
    # model
    "expert": None,                 # registered expert name (clip, siglip, or a plugin's)
    "backbone": None,               # Hub id or local directory of pretrained weights
    "init": "pretrained",           # "pretrained" or "random" (with backbone_config)
    "backbone_config": None,        # JSON file with a backbone config, for --init random
    "expert_options": None,         # JSON object of extra constructor arguments
    "gradient_checkpointing": False,
    # data
    "data": [],                     # sources: PATH, name=PATH:WEIGHT, hub:..., or one YAML data spec
    "validation": None,             # a separate validation source; default: hold out validation_fraction
    "validation_fraction": 0.1,     # (sources loaded in full only)
    "validation_rows": None,        # streamed training data: hold out the stream's first K rows (0: no validation)
    "shuffle_buffer": 1000,         # streamed training data: rows in the seeded shuffle buffer (0: stream order)
    "policy": "featdistill",        # degradation policy for training ("none" to train clean)
    "validation_policy": "ntire2026-test-like",
    "workers": 2,
    # optimisation
    "epochs": 2,                    # stage 1 (the paper: 2)
    "steps_per_epoch": None,        # optimizer steps per epoch: required for streamed data, else shortens epochs
    "stage2_epochs": 1,
    "stage": "both",                # "1", "2" or "both"
    "batch_size": 32,               # global batch (split across processes)
    "gradient_accumulation": 1,
    "lr": 1e-5,
    "stage2_lr": None,              # stage 2's peak learning rate; default: a tenth of lr (see docs/training.md)
    "weight_decay": 0.05,
    "warmup_fraction": 0.05,
    "max_grad_norm": 1.0,
    "max_steps": None,              # optimizer steps per stage; stops the stage early
    "mixed_precision": None,        # "no", "fp16", "bf16"; default: accelerate's configuration
    # distillation (stage 2)
    "distiller": "dense-l2",
    "distill_weight": 1.0,          # lambda
    "feature_layers": None,         # comma list; default: the expert's default_feature_layers
    # bookkeeping
    "seed": 0,
    "output_dir": None,
    "checkpoint_every": 0,          # optimizer steps between checkpoints (0: stage ends and epoch ends only)
    "keep_checkpoints": 2,
    "resume": False,
    "log_every": 10,
    "stop_after": None,             # leave after this many optimizer steps in this invocation (time-limited jobs)
    "record_samples": False,        # write what every batch trained on (crop windows, degradations) to samples/
    "progress": True,               # a step progress bar on the main process (stderr)
}


def parse_args(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="YAML file of hyper-parameters (command-line options override it)")
    parser.add_argument("--expert", help="registered expert name")
    parser.add_argument("--backbone", help="Hub id or local directory of pretrained backbone weights")
    parser.add_argument("--init", choices=["pretrained", "random"])
    parser.add_argument("--backbone-config", help="backbone config JSON for --init random")
    parser.add_argument("--expert-options", help="JSON object of extra expert constructor arguments")
    parser.add_argument("--gradient-checkpointing", action="store_true", default=None)
    parser.add_argument("--data", action="append", help="training source (repeatable): PATH, name=PATH:WEIGHT, "
                        "hub:ID, disk:PATH, or a YAML data spec")
    parser.add_argument("--validation", help="validation source (default: hold out --validation-fraction)")
    parser.add_argument("--validation-fraction", type=float)
    parser.add_argument("--validation-rows", type=int, help="streamed training data: hold out its first K rows as "
                        "the validation set (0: none)")
    parser.add_argument("--shuffle-buffer", type=int, help="streamed training data: seeded shuffle buffer size "
                        "(0: stream order)")
    parser.add_argument("--policy", help="training degradation policy (registered name, YAML file, or 'none')")
    parser.add_argument("--validation-policy", help="policy for the degraded validation pass ('none' to skip)")
    parser.add_argument("--workers", type=int)
    parser.add_argument("--epochs", type=int, help="stage-1 epochs")
    parser.add_argument("--steps-per-epoch", type=int, help="optimizer steps per epoch (required for streamed data)")
    parser.add_argument("--stage2-epochs", type=int)
    parser.add_argument("--stage", choices=["1", "2", "both"])
    parser.add_argument("--batch-size", type=int, help="global batch size")
    parser.add_argument("--gradient-accumulation", type=int)
    parser.add_argument("--lr", type=float, help="stage 1's peak learning rate")
    parser.add_argument("--stage2-lr", type=float, help="stage 2's peak learning rate (default: a tenth of --lr)")
    parser.add_argument("--weight-decay", type=float)
    parser.add_argument("--warmup-fraction", type=float)
    parser.add_argument("--max-grad-norm", type=float)
    parser.add_argument("--max-steps", type=int, help="optimizer steps per stage")
    parser.add_argument("--mixed-precision", choices=["no", "fp16", "bf16"])
    parser.add_argument("--distiller", help="registered distiller for stage 2 (dense-l2, crd, ...)")
    parser.add_argument("--distill-weight", type=float, help="lambda in BCE + lambda * distillation")
    parser.add_argument("--feature-layers", help="comma list of feature layers to distil")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--output-dir")
    parser.add_argument("--checkpoint-every", type=int)
    parser.add_argument("--keep-checkpoints", type=int)
    parser.add_argument("--resume", action="store_true", default=None,
                        help="continue the run in --output-dir from its latest checkpoint")
    parser.add_argument("--log-every", type=int)
    parser.add_argument("--stop-after", type=int, help="checkpoint and exit after this many optimizer steps in this "
                        "invocation (for time-limited jobs; continue with --resume)")
    parser.add_argument("--record-samples", action="store_true", default=None,
                        help="write every trained sample's crop window and degradation record to "
                        "OUTPUT_DIR/samples/ (one JSON line per sample and process)")
    parser.add_argument("--no-progress", dest="progress", action="store_false", default=None,
                        help="no step progress bar (log.jsonl and the per-epoch lines are still written)")
    # The real defaults live in DEFAULTS (a --config file may override them), so --help shows those, not None.
    for action in parser._actions:
        if action.dest in DEFAULTS and DEFAULTS[action.dest] not in (None, False, [], ""):
            shown = DEFAULTS[action.dest]
            action.help = f"{action.help or ''} [default: {shown}]".strip()
    args = parser.parse_args(argv)

    config = dict(DEFAULTS)
    explicit: set[str] = set()
    if args.config:
        import yaml

        try:
            loaded = yaml.safe_load(Path(args.config).read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            parser.error(f"cannot read --config {args.config}: {exc}")
        unknown = sorted(set(loaded) - set(DEFAULTS))
        if unknown:
            parser.error(f"{args.config}: unknown keys {unknown}; valid keys: {sorted(DEFAULTS)}")
        config.update(loaded)
        explicit |= set(loaded)
    for key, value in vars(args).items():
        if key != "config" and value is not None:
            config[key] = value
            explicit.add(key)
    if isinstance(config["data"], str):
        config["data"] = [config["data"]]
    if not config["output_dir"]:
        parser.error("--output-dir is required")
    for key, least in (("steps_per_epoch", 1), ("validation_rows", 0), ("shuffle_buffer", 0)):
        if config[key] is not None and (not isinstance(config[key], int) or config[key] < least):
            parser.error(f"--{key.replace('_', '-')} must be an integer of at least {least}, got {config[key]!r}")
    if not config["resume"]:
        if not config["expert"]:
            parser.error("--expert is required (see `fdcore list experts`)")
        if not config["data"]:
            parser.error("--data is required")
        config.update(expert_training_defaults(config["expert"], explicit, parser.error))
    return config


def expert_training_defaults(expert_name: str, explicit: set[str], fail) -> dict:
    """The expert class's ``training_defaults`` for every option the user did not set (command line or --config)."""
    from fdcore import registry
    from fdcore.errors import FdcoreError

    try:
        expert_class = registry.get("experts", expert_name)
    except FdcoreError as exc:
        fail(str(exc))
    defaults = dict(getattr(expert_class, "training_defaults", {}) or {})
    unknown = sorted(set(defaults) - set(DEFAULTS))
    if unknown:
        fail(f"expert {expert_name!r} declares training defaults for unknown options {unknown}; valid keys: "
             f"{sorted(DEFAULTS)} (a bug in the plugin that provides it)")
    return {key: value for key, value in defaults.items() if key not in explicit}


class StopRequested(Exception):
    """--stop-after was reached: the state is checkpointed and the run can be resumed."""


def main(argv=None) -> None:
    from fdcore.errors import FdcoreError

    config = parse_args(argv)
    try:
        training_function(config)
    except StopRequested:
        return
    except FdcoreError as exc:
        print(f"Error: {exc}", file=sys.stderr)
        sys.exit(2)


def training_function(config: dict) -> Path:
    import torch
    from accelerate import Accelerator
    from accelerate.utils import DataLoaderConfiguration, set_seed

    import fdcore
    from fdcore import training
    from fdcore.recipes import pipeline

    output_dir = Path(config["output_dir"])
    config = pipeline.resolve_resume(config, output_dir)
    # Accelerate only treats a torchrun/accelerate-launch world as multi-process CPU (gloo) when told it runs on CPU;
    # left alone on a machine without GPUs, every rank would train alone and race on the same checkpoint files.
    accelerator = Accelerator(
        cpu=not torch.accelerator.is_available(),
        mixed_precision=config["mixed_precision"],
        gradient_accumulation_steps=config["gradient_accumulation"],
        project_dir=str(output_dir),
        dataloader_config=DataLoaderConfiguration(split_batches=True),
    )
    log = pipeline.RunLog(output_dir / "log.jsonl", accelerator)

    # Data: sources resolved once (main process first, so a cache is built once), then split deterministically.
    with accelerator.main_process_first():
        data = pipeline.load_data(config)
    accelerator.print(f"data: {data.summary()}")

    set_seed(config["seed"])
    expert = pipeline.build_expert(config)
    if config["gradient_checkpointing"]:
        if not expert.supports_gradient_checkpointing:
            raise training.TrainingError(f"expert {expert.name!r} does not support gradient checkpointing")
        expert.enable_gradient_checkpointing()
    if accelerator.is_main_process:  # only now: a run that could not even start leaves nothing to resume
        output_dir.mkdir(parents=True, exist_ok=True)
        training.write_json_atomic(output_dir / "run.json", {"config": config, "data": data.to_dict(),
                                                             "processes": accelerator.num_processes,
                                                             "distributed_type": str(accelerator.distributed_type),
                                                             **training.environment_record()})

    stage1_dir, stage2_dir = output_dir / "stage1", output_dir / "stage2"
    metrics = {}
    if config["stage"] in ("1", "both"):
        if pipeline.stage_finished(stage1_dir):
            accelerator.print("stage 1: already finished, loading its result")
            expert = fdcore.load_expert(stage1_dir / "expert")
        else:
            metrics["stage1"] = run_stage(1, expert, None, data, config, accelerator, stage1_dir, log)
            expert = fdcore.load_expert(stage1_dir / "expert")
    elif config["stage"] == "2" and not pipeline.stage_finished(stage1_dir):
        raise training.TrainingError(f"--stage 2 needs a finished stage 1 in {stage1_dir}")
    else:
        expert = fdcore.load_expert(stage1_dir / "expert")

    if config["stage"] in ("2", "both"):
        teacher = copy.deepcopy(expert)  # the frozen stage-1 checkpoint (the Distiller freezes it)
        distiller = fdcore.get_distiller(config["distiller"], teacher, seed=config["seed"])
        metrics["stage2"] = run_stage(2, expert, distiller, data, config, accelerator, stage2_dir, log)
        final_dir = stage2_dir
    else:
        final_dir = stage1_dir

    result = output_dir / "expert"
    if accelerator.is_main_process:
        final = fdcore.load_expert(final_dir / "expert")
        fdcore.save_expert(final, result, overwrite=True, card=pipeline.model_card(config, data, metrics))
        accelerator.print(f"expert written to {result}")
    accelerator.wait_for_everyone()
    accelerator.end_training()
    return result


def run_stage(stage, expert, distiller, data, config, accelerator, stage_dir, log) -> dict:
    """Train one stage and write ``stage_dir/expert``; resumes from ``stage_dir/checkpoints`` when present."""
    import torch
    from accelerate.utils import send_to_device, set_seed

    import fdcore
    from fdcore import training
    from fdcore.recipes import pipeline

    # Forget the previous stage's prepared objects: save_state writes every prepared model, so stage 2's checkpoints
    # would otherwise lead with stage 1's model, and a resumed stage 2 would load it into its student.
    accelerator.free_memory()
    set_seed(config["seed"] + stage)
    epochs = config["epochs"] if stage == 1 else config["stage2_epochs"]
    views = distiller.views if distiller else 1
    aligned = bool(distiller and distiller.needs_alignment)
    train_set = pipeline.training_dataset(data, expert, config, stage, aligned=aligned, views=views)
    if data.streaming:
        stream_set, train_loader = pipeline.streaming_loader(train_set, data, config, accelerator)
    else:
        sampler = training.EpochShuffleSampler(len(train_set), seed=config["seed"])
        train_loader = pipeline.loader(train_set, config, sampler=sampler)
    validation_loaders = pipeline.validation_loaders(data, expert, config)

    student = training.StudentWithFeatures(expert)
    extra_modules = distiller.trainable_modules() if distiller else []
    parameters = [p for module in (student, *extra_modules) for p in module.parameters() if p.requires_grad]
    peak_lr = pipeline.stage_learning_rate(config, stage)
    optimizer = torch.optim.AdamW(parameters, lr=peak_lr, weight_decay=config["weight_decay"])
    if data.streaming:
        steps_per_epoch = config["steps_per_epoch"]
    else:
        steps_per_epoch = math.ceil(len(train_loader) / config["gradient_accumulation"])
        if config["steps_per_epoch"]:
            steps_per_epoch = min(steps_per_epoch, config["steps_per_epoch"])
    batches_per_epoch = steps_per_epoch * config["gradient_accumulation"]
    total_steps = steps_per_epoch * epochs
    if config["max_steps"]:
        total_steps = min(total_steps, config["max_steps"])
    warmup = int(round(config["warmup_fraction"] * total_steps))
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: training.warmup_cosine(step, warmup, total_steps))

    student, optimizer, scheduler, *extra_modules = accelerator.prepare(student, optimizer, scheduler, *extra_modules)
    if not data.streaming:
        train_loader = accelerator.prepare(train_loader)
    validation_loaders = {name: accelerator.prepare(dl) for name, dl in validation_loaders.items()}
    if distiller is not None:
        if distiller.gathers:
            distiller.set_gather(accelerator.gather)
        distiller.teacher.to(accelerator.device)
    layers = config["feature_layers"].split(",") if isinstance(config["feature_layers"], str) else None

    checkpoints = training.CheckpointDirectory(stage_dir / "checkpoints", keep=config["keep_checkpoints"])
    global_step, start_epoch, skip_batches = 0, 0, 0
    latest = checkpoints.latest()
    if latest is not None:
        path, progress = latest
        checkpoints.load(accelerator, path, distiller)
        global_step, start_epoch, skip_batches = progress["global_step"], progress["epoch"], progress["batch_in_epoch"]
        accelerator.print(f"stage {stage}: resuming at epoch {start_epoch}, batch {skip_batches}, step {global_step}")
    samples = pipeline.SampleRecorder.for_run(config, stage, accelerator, resumed_at_step=global_step)

    metrics = {}
    started = time.time()
    steps_this_invocation = 0
    for epoch in range(start_epoch, epochs):
        if global_step >= total_steps:
            break
        student.train()
        batches = train_loader
        first_batch = skip_batches if epoch == start_epoch else 0
        # The epoch reaches the data through methods accelerate does not know: its loaders call `set_epoch` with
        # their own pass counter, which would overwrite these (see DetectionDataset).
        if data.streaming:
            stream_set.start_epoch(epoch, skip_batches=first_batch)  # skips without decoding the skipped rows
            batches = (send_to_device(batch, accelerator.device) for batch in train_loader)
        else:
            sampler.use_epoch(epoch)
            train_set.use_epoch(epoch)
            if first_batch:
                batches = accelerator.skip_first_batches(train_loader, first_batch)
        epoch_steps = first_batch // config["gradient_accumulation"]
        meter = pipeline.EpochMeter(accelerator, stage=stage, epoch=epoch, epochs=epochs,
                                    steps=min(steps_per_epoch, total_steps - global_step + epoch_steps),
                                    done=epoch_steps, enabled=config["progress"])
        for batch_index, batch in enumerate(batches, start=first_batch):
            samples.write(batch, epoch=epoch, batch_in_epoch=batch_index, step=global_step + 1)
            with accelerator.accumulate(student):
                if distiller is None:
                    logits, _ = student(batch["pixels"], with_features=False)
                    distill_loss = torch.zeros((), device=logits.device)
                else:
                    logits, distill_loss = distiller.student_step(student, batch, layers)
                bce = torch.nn.functional.cross_entropy(logits.float(), batch["label"])
                loss = bce + config["distill_weight"] * distill_loss
                accelerator.backward(loss)
                if accelerator.sync_gradients and config["max_grad_norm"]:
                    accelerator.clip_grad_norm_(parameters, config["max_grad_norm"])
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad()
            meter.add_batch(len(batch["label"]), loss=loss, bce=bce, distill=distill_loss)
            if not accelerator.sync_gradients:
                continue
            global_step += 1
            epoch_steps += 1
            meter.step_done()
            if distiller is not None:
                distiller.after_optimizer_step(accelerator.unwrap_model(student).expert, global_step, total_steps)
            if global_step % config["log_every"] == 0 or global_step == total_steps:
                log.write(stage=stage, epoch=epoch, step=global_step, loss=loss.item(), bce=bce.item(),
                          distill=distill_loss.item(), lr=scheduler.get_last_lr()[0],
                          seconds=round(time.time() - started, 2), **meter.running())
            progress = {"stage": stage, "epoch": epoch, "batch_in_epoch": batch_index + 1, "global_step": global_step}
            if config["checkpoint_every"] and global_step % config["checkpoint_every"] == 0:
                checkpoints.save(accelerator, progress, distiller)
            steps_this_invocation += 1
            if config["stop_after"] and steps_this_invocation >= config["stop_after"]:
                meter.close()
                samples.close()
                checkpoints.save(accelerator, progress, distiller)
                accelerator.print(f"stage {stage}: stopping after {steps_this_invocation} steps as asked; "
                                  "continue with --resume")
                raise StopRequested()
            if global_step >= total_steps or batch_index + 1 >= batches_per_epoch:
                break
        meter.close()
        if data.streaming and epoch_steps < steps_per_epoch and global_step < total_steps:
            accelerator.print(f"stage {stage} epoch {epoch}: the stream ran out after {epoch_steps} of "
                              f"{steps_per_epoch} steps; the epoch ends early (lower --steps-per-epoch to match)")
            log.write(stage=stage, epoch=epoch, step=global_step, short_epoch_steps=epoch_steps)
        metrics = pipeline.evaluate(student, validation_loaders, accelerator)
        log.write(stage=stage, epoch=epoch, step=global_step, **metrics)
        accelerator.print(pipeline.epoch_line(stage, epoch, epochs, meter.running(), metrics))
        checkpoints.save(accelerator, {"stage": stage, "epoch": epoch + 1, "batch_in_epoch": 0,
                                       "global_step": global_step}, distiller)
    samples.close()

    if accelerator.is_main_process:
        trained = accelerator.unwrap_model(student).expert
        fdcore.save_expert(trained, stage_dir / "expert", overwrite=True,
                           card={"stage": stage, "metrics": metrics, "steps": global_step})
        training.write_json_atomic(stage_dir / "done.json", {"global_step": global_step, "metrics": metrics})
    accelerator.wait_for_everyone()
    return metrics


if __name__ == "__main__":
    main()
