"""The two-stage recipe on the toy expert: learning, distillation, checkpoints, resume, two processes."""

import copy
import json
from pathlib import Path

import pytest
import torch

import fdcore
from conftest import train_in_one_and_two_processes
from fdcore import training
from fdcore.builtin.distillers import cosine_momentum

BASE_ARGS = ["--expert", "toy", "--batch-size", "8", "--lr", "3e-3", "--workers", "0", "--log-every", "1",
             "--validation-policy", "none", "--seed", "3"]


def run_recipe(*args):
    from fdcore.recipes.two_stage import main

    main([*BASE_ARGS, *args])


def read_log(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


def test_cosine_momentum_schedule():
    assert cosine_momentum(0, 100) == pytest.approx(0.99)
    assert cosine_momentum(50, 100) == pytest.approx((0.99 + 0.9999) / 2)
    assert cosine_momentum(100, 100) == pytest.approx(0.9999)
    assert cosine_momentum(25, 100) < cosine_momentum(75, 100)


def test_warmup_cosine_schedule():
    assert training.warmup_cosine(0, 4, 20) == pytest.approx(0.25)
    assert training.warmup_cosine(3, 4, 20) == pytest.approx(1.0)
    assert training.warmup_cosine(4, 4, 20) == pytest.approx(1.0)
    assert training.warmup_cosine(12, 4, 20) == pytest.approx(0.5)
    assert training.warmup_cosine(20, 4, 20) == pytest.approx(0.0)


def test_epoch_sampler_depends_only_on_seed_and_epoch():
    first = training.EpochShuffleSampler(50, seed=1)
    second = training.EpochShuffleSampler(50, seed=1)
    first.use_epoch(2)
    second.use_epoch(2)
    assert list(first) == list(second) and sorted(first) == list(range(50))
    second.use_epoch(3)
    assert list(first) != list(second)


def test_dense_l2_teacher_stays_frozen_while_the_student_learns():
    expert = fdcore.get_expert("toy", seed=1)
    teacher = copy.deepcopy(expert)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    distiller = fdcore.get_distiller("dense-l2", teacher)
    teacher.train()  # someone flips it back: the distiller must still evaluate it in eval mode
    student = training.StudentWithFeatures(expert)
    optimizer = torch.optim.SGD(student.parameters(), lr=0.5)
    batch = {"pixels": torch.randn(4, 3, 32, 32), "label": torch.tensor([0, 1, 0, 1])}
    for _ in range(3):
        logits, distill = distiller.student_step(student, batch)
        loss = torch.nn.functional.cross_entropy(logits, batch["label"]) + distill
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in teacher.state_dict().items())
    assert not any(p.requires_grad for p in teacher.parameters())
    assert not torch.equal(before["conv1.weight"], expert.conv1.weight)
    _, distill = distiller.student_step(student, batch)
    assert distill.item() > 0  # the student moved away from the teacher and is pulled back


def test_crd_queue_momentum_and_state():
    expert = fdcore.get_expert("toy", seed=1)
    teacher = copy.deepcopy(expert)
    distiller = fdcore.get_distiller("crd", teacher, queue_size=16, projection_dim=8)
    student = training.StudentWithFeatures(expert)
    parameters = list(student.parameters()) + list(distiller.student_projection.parameters())
    optimizer = torch.optim.SGD(parameters, lr=0.1)
    batch = {"pixels": torch.randn(4, 3, 32, 32), "pixels_view2": torch.randn(4, 3, 32, 32),
             "label": torch.tensor([0, 1, 0, 1])}
    teacher_before = teacher.conv1.weight.clone()
    logits, loss = distiller.student_step(student, batch)
    assert logits.shape == (4, 2) and loss.item() > 0
    loss.backward()
    optimizer.step()
    distiller.after_optimizer_step(expert, step=1, total_steps=10)
    momentum = cosine_momentum(1, 10)
    expected = momentum * teacher_before + (1 - momentum) * expert.conv1.weight.detach()
    assert torch.allclose(teacher.conv1.weight, expected, atol=1e-7)
    assert distiller.queue_pointer == 4
    state = distiller.state_dict()
    other = fdcore.get_distiller("crd", copy.deepcopy(fdcore.get_expert("toy", seed=1)), queue_size=16,
                                 projection_dim=8)
    other.load_state_dict(state)
    assert torch.equal(other.queue, distiller.queue) and other.queue_pointer == 4
    assert torch.equal(other.teacher.conv1.weight, teacher.conv1.weight)


def test_checkpoint_pointer_never_names_a_partial_checkpoint(tmp_path):
    checkpoints = training.CheckpointDirectory(tmp_path / "ckpt")
    assert checkpoints.latest() is None
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / ".step_00000004.partial").mkdir()  # a save killed half-way
    assert checkpoints.latest() is None
    training.write_json_atomic(tmp_path / "ckpt" / "latest.json", {"checkpoint": "step_00000002", "global_step": 2})
    with pytest.raises(training.TrainingError, match="missing"):
        checkpoints.latest()


def test_two_stages_learn_and_write_an_expert_with_a_card(learnable_folder, tmp_path):
    output = tmp_path / "run"
    run_recipe("--data", str(learnable_folder), "--output-dir", str(output), "--policy", "none",
               "--epochs", "3", "--stage2-epochs", "1")
    log = read_log(output)
    stage1 = [entry["bce"] for entry in log if entry.get("stage") == 1 and "bce" in entry]
    assert sum(stage1[-5:]) / 5 < sum(stage1[:5]) / 5 - 0.1, stage1
    stage2 = [entry for entry in log if entry.get("stage") == 2 and "distill" in entry]
    assert stage2 and all(entry["distill"] >= 0 for entry in stage2)
    evaluations = [entry for entry in log if "clean_roc_auc" in entry]
    assert evaluations[-1]["clean_roc_auc"] > 0.9
    expert = fdcore.load_expert(output / "expert")
    card = json.loads((output / "expert" / "expert.json").read_text())["card"]
    assert card["hyperparameters"]["distiller"] == "dense-l2" and card["hyperparameters"]["seed"] == 3
    assert card["metrics"]["stage2"]["clean_roc_auc"] == evaluations[-1]["clean_roc_auc"]
    assert card["versions"]["fdcore"] == fdcore.__version__
    assert card["data"]["counts"]["validation"]["rows"] == 10
    assert expert.name == "toy"


def test_existing_run_is_not_overwritten_and_resume_needs_a_run(learnable_folder, tmp_path):
    from fdcore.recipes.two_stage import training_function, parse_args

    output = tmp_path / "run"
    run_recipe("--data", str(learnable_folder), "--output-dir", str(output), "--policy", "none",
               "--epochs", "1", "--stage", "1", "--max-steps", "2")
    with pytest.raises(training.TrainingError, match="--resume"):
        training_function(parse_args([*BASE_ARGS, "--data", str(learnable_folder), "--output-dir", str(output)]))
    with pytest.raises(training.TrainingError, match="nothing to resume"):
        training_function(parse_args(["--output-dir", str(tmp_path / "empty"), "--resume"]))


def test_resume_mid_epoch_equals_an_uninterrupted_run(learnable_folder, tmp_path):
    common = ["--data", str(learnable_folder), "--epochs", "2", "--stage", "1", "--policy", "none"]
    run_recipe(*common, "--output-dir", str(tmp_path / "straight"))
    run_recipe(*common, "--output-dir", str(tmp_path / "interrupted"), "--stop-after", "13")
    assert not (tmp_path / "interrupted" / "expert").exists()
    run_recipe("--output-dir", str(tmp_path / "interrupted"), "--resume")
    straight = fdcore.load_expert(tmp_path / "straight" / "expert").state_dict()
    resumed = fdcore.load_expert(tmp_path / "interrupted" / "expert").state_dict()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    steps = [entry["step"] for entry in read_log(tmp_path / "interrupted") if "bce" in entry]
    assert steps == sorted(set(steps))  # no step trained twice


def test_two_processes_match_one_process(learnable_folder, tmp_path):
    common = ["--expert", "toy", "--batch-size", "8", "--lr", "3e-3", "--workers", "0", "--log-every", "1",
              "--validation-policy", "none", "--seed", "3", "--policy", "none", "--data", str(learnable_folder),
              "--epochs", "1", "--stage", "1"]
    train_in_one_and_two_processes(common, tmp_path, master_port=29517)
    one = [e for e in read_log(tmp_path / "one") if "clean_roc_auc" in e][-1]
    two = [e for e in read_log(tmp_path / "two") if "clean_roc_auc" in e][-1]
    assert one["clean_roc_auc"] == pytest.approx(two["clean_roc_auc"], abs=1e-6)
    assert one["clean_bce"] == pytest.approx(two["clean_bce"], rel=1e-4)
    first = fdcore.load_expert(tmp_path / "one" / "expert").state_dict()
    second = fdcore.load_expert(tmp_path / "two" / "expert").state_dict()
    assert all(torch.allclose(first[key], second[key], atol=1e-5) for key in first)


def test_resuming_a_run_recorded_before_newer_options_existed(tmp_path):
    from fdcore.recipes import pipeline
    from fdcore.recipes.two_stage import DEFAULTS

    saved = {key: value for key, value in DEFAULTS.items() if key not in ("steps_per_epoch", "shuffle_buffer")}
    saved.update(expert="toy", epochs=3)
    (tmp_path / "run.json").write_text(json.dumps({"config": saved}))
    resumed = pipeline.resolve_resume({**DEFAULTS, "resume": True, "workers": 0}, tmp_path)
    assert resumed["epochs"] == 3 and resumed["expert"] == "toy" and resumed["workers"] == 0
    assert resumed["steps_per_epoch"] == DEFAULTS["steps_per_epoch"]
    assert resumed["shuffle_buffer"] == DEFAULTS["shuffle_buffer"]


# -- every epoch draws new crops, degradations and orders (issue: the frozen-epoch bug) -----------------------------

CROP_ARGS = ["--expert-options", '{"resize": "crop"}', "--policy", "featdistill", "--record-samples"]


@pytest.fixture
def croppable_folder(tmp_path):
    """48 px images for a 32 px native-crop expert: every sample has a random window to draw."""
    from conftest import make_learnable_folder

    return make_learnable_folder(tmp_path / "data48", per_class=24, size=48)


def read_samples(output_dir, stage=1, ranks=(0,)):
    rows = []
    for rank in ranks:
        path = Path(output_dir) / "samples" / f"stage{stage}.rank{rank}.jsonl"
        rows += [json.loads(line) for line in path.read_text().splitlines()]
    return rows


def documented_sample(path, seed, stage, epoch, index):
    """What docs/training.md says sample ``index`` of ``epoch`` is: its crop window, then its policy draw."""
    import numpy as np
    from PIL import Image

    from fdcore.data.torch_dataset import sample_rng
    from fdcore.degradations.api import apply_policy, load_policy

    image = np.asarray(Image.open(path).convert("RGB"))
    window_rng = sample_rng(seed + 1000 * stage + 500, epoch, index)
    top, left = int(window_rng.integers(0, image.shape[0] - 32 + 1)), int(window_rng.integers(0, image.shape[1] - 32 + 1))
    crop = np.ascontiguousarray(image[top:top + 32, left:left + 32])
    policy_seed = int(sample_rng(seed + 1000 * stage, epoch, index).integers(0, 2**31 - 1))
    _, record = apply_policy(crop, load_policy("featdistill", preserve_alignment=(stage == 2)), seed=policy_seed)
    return [top, left, 32, 32], json.loads(json.dumps(record, sort_keys=True, default=str))


def test_every_epoch_trains_on_its_own_crops_degradations_and_order(croppable_folder, tmp_path):
    output = tmp_path / "run"
    run_recipe("--data", str(croppable_folder), "--output-dir", str(output), *CROP_ARGS, "--epochs", "3",
               "--stage", "1")
    rows = read_samples(output)
    by_epoch = {epoch: [row for row in rows if row["epoch"] == epoch] for epoch in range(3)}
    assert all(len(by_epoch[epoch]) == 40 for epoch in range(3))  # 43 training images, 5 full batches of 8
    for epoch, epoch_rows in by_epoch.items():
        for row in epoch_rows[::7]:
            crop, record = documented_sample(row["path"], seed=3, stage=1, epoch=epoch, index=row["index"])
            assert row["crop"] == crop, (epoch, row)
            assert row["degradation"]["epoch"] == epoch and row["degradation"]["record"] == record
    windows = [{row["index"]: tuple(row["crop"]) for row in by_epoch[epoch]} for epoch in range(3)]
    shared = set(windows[0]) & set(windows[1]) & set(windows[2])
    assert sum(len({windows[e][i] for e in range(3)}) == 3 for i in shared) >= 0.8 * len(shared)
    orders = [[row["index"] for row in by_epoch[epoch]] for epoch in range(3)]
    assert orders[0] != orders[1] != orders[2]
    draws = [{row["index"]: json.dumps(row["degradation"]["record"]) for row in by_epoch[e]} for e in range(3)]
    assert sum(draws[0][i] != draws[1][i] for i in set(draws[0]) & set(draws[1])) >= 0.8 * len(set(draws[0]) & set(draws[1]))


def test_a_resumed_run_trains_on_exactly_the_samples_of_an_uninterrupted_one(croppable_folder, tmp_path):
    common = ["--data", str(croppable_folder), *CROP_ARGS, "--epochs", "2", "--stage", "1"]
    run_recipe(*common, "--output-dir", str(tmp_path / "straight"))
    run_recipe(*common, "--output-dir", str(tmp_path / "interrupted"), "--stop-after", "7")
    # the interrupted process had already logged a batch past its checkpoint: the resume must drop it
    lines = (tmp_path / "interrupted" / "samples" / "stage1.rank0.jsonl").read_text().splitlines()
    extra = json.loads(lines[-1])
    extra.update(step=8, batch_in_epoch=3, epoch=1)
    with open(tmp_path / "interrupted" / "samples" / "stage1.rank0.jsonl", "a") as handle:
        handle.write(json.dumps(extra) + "\n")
    run_recipe("--output-dir", str(tmp_path / "interrupted"), "--resume")
    assert read_samples(tmp_path / "interrupted") == read_samples(tmp_path / "straight")
    assert {row["epoch"] for row in read_samples(tmp_path / "straight")} == {0, 1}
    straight = fdcore.load_expert(tmp_path / "straight" / "expert").state_dict()
    resumed = fdcore.load_expert(tmp_path / "interrupted" / "expert").state_dict()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


def test_two_processes_train_on_the_samples_of_one_process(croppable_folder, tmp_path):
    common = ["--expert", "toy", "--batch-size", "8", "--lr", "3e-3", "--workers", "0", "--log-every", "1",
              "--validation-policy", "none", "--seed", "3", "--data", str(croppable_folder), *CROP_ARGS,
              "--epochs", "2", "--stage", "1", "--no-progress"]
    train_in_one_and_two_processes(common, tmp_path, master_port=29523)

    def key(row):
        return (row["epoch"], row["batch_in_epoch"], row["index"])

    one = sorted(({**row, "position": None} for row in read_samples(tmp_path / "one")), key=key)
    two = sorted(({**row, "position": None} for row in read_samples(tmp_path / "two", ranks=(0, 1))), key=key)
    assert one == two and {row["epoch"] for row in one} == {0, 1}
    assert len({tuple(row["crop"]) for row in one if row["index"] == one[0]["index"]}) == 2


def test_training_shows_step_progress_and_epoch_metrics(learnable_folder, tmp_path, capsys):
    output = tmp_path / "run"
    run_recipe("--data", str(learnable_folder), "--output-dir", str(output), "--policy", "none", "--epochs", "2",
               "--stage", "1", "--log-every", "2")
    captured = capsys.readouterr()
    assert "stage 1 epoch 1/2" in captured.err and "img_s=" in captured.err and "loss=" in captured.err
    epoch_lines = [line for line in captured.out.splitlines() if line.startswith("stage 1 epoch ")]
    assert len(epoch_lines) == 2 and all("train loss" in line and "clean_roc_auc" in line for line in epoch_lines)
    steps = [entry for entry in read_log(output) if "bce" in entry]
    assert steps and all({"loss_mean", "bce_mean", "images_per_s", "images"} <= set(entry) for entry in steps)
    first_epoch = [entry for entry in steps if entry["epoch"] == 0]
    assert first_epoch[-1]["images"] == 8 * first_epoch[-1]["step"]
    assert first_epoch[-1]["bce_mean"] == pytest.approx(first_epoch[-1]["loss_mean"])


def test_stage2_has_its_own_lower_peak_learning_rate(learnable_folder, tmp_path):
    output = tmp_path / "run"
    run_recipe("--data", str(learnable_folder), "--output-dir", str(output), "--policy", "none", "--epochs", "1",
               "--stage2-epochs", "1", "--warmup-fraction", "0")
    rates = {stage: max(entry["lr"] for entry in read_log(output) if entry.get("stage") == stage and "lr" in entry)
             for stage in (1, 2)}
    assert rates[1] == pytest.approx(3e-3, rel=0.05) and rates[2] == pytest.approx(3e-4, rel=0.05)
    other = tmp_path / "explicit"
    run_recipe("--data", str(learnable_folder), "--output-dir", str(other), "--policy", "none", "--epochs", "1",
               "--stage2-epochs", "1", "--warmup-fraction", "0", "--stage2-lr", "1e-3", "--no-progress")
    assert max(entry["lr"] for entry in read_log(other) if entry.get("stage") == 2 and "lr" in entry) == \
        pytest.approx(1e-3, rel=0.05)


# -- a run folder is untrusted input: resuming executes nothing and reads nothing outside it --------------------------

def _interrupted_stage2_run(folder, output, distiller="crd"):
    run_recipe("--data", str(folder), "--output-dir", str(output), "--policy", "none", "--epochs", "1",
               "--stage2-epochs", "2", "--distiller", distiller, "--stop-after", "14", "--no-progress")
    checkpoints = output / "stage2" / "checkpoints"
    assert (checkpoints / "latest.json").is_file()
    return checkpoints


def _resume(output):
    from fdcore.recipes.two_stage import parse_args, training_function

    return training_function(parse_args(["--output-dir", str(output), "--resume", "--no-progress"]))


class _Payload:
    """Unpickling this runs ``touch <marker>``: what an attacker plants in a run folder."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        import os

        return os.system, (f"touch {self.marker}",)


def test_a_pickle_planted_in_a_run_folder_is_never_unpickled(learnable_folder, tmp_path):
    import pickle

    output = tmp_path / "run"
    checkpoints = _interrupted_stage2_run(learnable_folder, output)
    latest = checkpoints / json.loads((checkpoints / "latest.json").read_text())["checkpoint"]
    marker = tmp_path / "owned"
    (latest / "custom_checkpoint_0.pkl").write_bytes(pickle.dumps(_Payload(marker)))
    with pytest.raises(training.TrainingError, match="custom_checkpoint_0.pkl"):
        _resume(output)
    assert not marker.exists()
    (latest / "custom_checkpoint_0.pkl").unlink()
    optimizer = latest / "optimizer.bin"
    original = optimizer.read_bytes()
    import torch as _torch

    _torch.save({"state": pickle.dumps(_Payload(marker))}, optimizer)  # a replaced file: refused by its hash
    with pytest.raises(training.TrainingError, match="optimizer.bin"):
        _resume(output)
    assert not marker.exists()
    optimizer.write_bytes(original)
    run_recipe("--output-dir", str(output), "--resume")  # the untouched checkpoint still resumes
    assert (output / "expert" / "manifest.json").is_file()


@pytest.mark.parametrize("pointer", ["../../elsewhere", "/tmp", "step_00000001/../../x", "step_1", 7])
def test_latest_json_cannot_point_outside_the_run(learnable_folder, tmp_path, pointer):
    output = tmp_path / "run"
    checkpoints = _interrupted_stage2_run(learnable_folder, output, distiller="dense-l2")
    record = json.loads((checkpoints / "latest.json").read_text())
    record["checkpoint"] = pointer
    (checkpoints / "latest.json").write_text(json.dumps(record))
    with pytest.raises(training.TrainingError, match="tampered"):
        _resume(output)


def test_crd_resumed_mid_stage_equals_an_uninterrupted_run(learnable_folder, tmp_path):
    common = ["--data", str(learnable_folder), "--policy", "none", "--epochs", "1", "--stage2-epochs", "2",
              "--distiller", "crd", "--no-progress"]
    run_recipe(*common, "--output-dir", str(tmp_path / "straight"))
    checkpoints = _interrupted_stage2_run(learnable_folder, tmp_path / "interrupted")
    latest = checkpoints / json.loads((checkpoints / "latest.json").read_text())["checkpoint"]
    assert (latest / "distiller.safetensors").is_file() and not list(latest.glob("*.pkl"))[1:]
    run_recipe("--output-dir", str(tmp_path / "interrupted"), "--resume")
    straight = fdcore.load_expert(tmp_path / "straight" / "expert").state_dict()
    resumed = fdcore.load_expert(tmp_path / "interrupted" / "expert").state_dict()
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)


def test_the_top_level_recipe_is_the_loop_itself_and_runs_under_accelerate_launch(learnable_folder, tmp_path):
    """recipes/two_stage.py is what a user opens first: the launch lines and the loop, the very code `fdcore train`
    runs (a link to the packaged recipe), and `accelerate launch` runs it as a script."""
    import os
    import subprocess
    import sys

    repo = Path(__file__).resolve().parent.parent
    script = repo / "recipes" / "two_stage.py"
    source = script.read_text()
    assert "accelerate launch" in source.split('"""')[1] and "def run_stage(" in source
    assert script.resolve() == (repo / "fdcore" / "recipes" / "two_stage.py").resolve()
    args = ["--data", str(learnable_folder), "--policy", "none", "--epochs", "1", "--stage2-epochs", "1"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # both runs on one thread: thread counts change the last bits
    module = subprocess.run([sys.executable, "-m", "fdcore.recipes.two_stage", *BASE_ARGS, *args, "--output-dir",
                             str(tmp_path / "in-process")], capture_output=True, text=True, timeout=300, env=env)
    assert module.returncode == 0, module.stderr[-3000:]
    launcher = Path(sys.executable).with_name("accelerate")
    launched = subprocess.run([str(launcher), "launch", "--config_file", str(repo / "recipes" / "configs" / "cpu.yaml"),
                               str(script), *BASE_ARGS, *args, "--output-dir", str(tmp_path / "launched")],
                              capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path)
    assert launched.returncode == 0, launched.stderr[-3000:]
    weights = [(tmp_path / run / "expert" / "model.safetensors").read_bytes() for run in ("in-process", "launched")]
    assert weights[0] == weights[1]


@pytest.mark.parametrize("expert_name", ["clip", "siglip"])
def test_the_documented_backbone_config_examples_build_and_score(expert_name):
    """docs/training.md's working examples: `--init random --backbone-config recipes/configs/tiny_<name>.json`."""
    from fdcore.recipes.pipeline import build_expert
    from fdcore.recipes.two_stage import DEFAULTS

    path = Path(__file__).resolve().parent.parent / "recipes" / "configs" / f"tiny_{expert_name}.json"
    assert f"recipes/configs/tiny_{expert_name}.json" in (path.parents[2] / "docs" / "training.md").read_text()
    expert = build_expert({**DEFAULTS, "expert": expert_name, "init": "random", "backbone_config": str(path)})
    stored = expert.get_config()["backbone_config"]
    assert {key: stored[key] for key in json.loads(path.read_text())} == json.loads(path.read_text())
    probabilities = expert.probabilities(torch.randn(2, 3, expert.preprocessing.size, expert.preprocessing.size))
    assert probabilities.shape == (2,) and bool(((probabilities >= 0) & (probabilities <= 1)).all())
