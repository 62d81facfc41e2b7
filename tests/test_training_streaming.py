"""The two-stage recipe on a streamed training source: epoch length, validation, sharding, determinism, resume."""

import json
from pathlib import Path

import pytest
import torch

import fdcore
from conftest import train_in_one_and_two_processes
from fdcore import training
from fdcore import data as data_layer
from fdcore.recipes import pipeline

BASE_ARGS = ["--expert", "toy", "--batch-size", "8", "--lr", "3e-3", "--workers", "0", "--log-every", "1",
             "--validation-policy", "none", "--seed", "3"]


@pytest.fixture
def streamed_spec(tmp_path):
    """A YAML data spec that streams a JSONL manifest of 96 small PNGs (48 real, 48 AI-generated)."""
    from conftest import make_learnable_folder

    folder = make_learnable_folder(tmp_path / "images")
    manifest = tmp_path / "manifest.jsonl"
    with open(manifest, "w", encoding="utf-8") as handle:
        for label in ("real", "fake"):
            for image in sorted((folder / label).glob("*.png")):
                handle.write(json.dumps({"path": str(image), "label": label}) + "\n")
    spec = tmp_path / "stream.yaml"
    spec.write_text(f"streaming: true\nsources:\n  - name: toy\n    manifest: {manifest}\n")
    return spec


def run_recipe(*args):
    from fdcore.recipes.two_stage import main

    main([*BASE_ARGS, *args])


def read_log(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "log.jsonl").read_text().splitlines()]


def stream_config(spec, **overrides):
    from fdcore.recipes.two_stage import DEFAULTS

    return {**DEFAULTS, "data": [str(spec)], "seed": 3, "steps_per_epoch": 3, "validation_rows": 16,
            "batch_size": 8, **overrides}


def stream_set(data, config, process_index=0, num_processes=1, policy="featdistill"):
    """The recipe's StreamingTrainingSet for the toy expert (degraded by ``policy``, seeded per sample)."""
    items = pipeline.training_dataset(data, fdcore.get_expert("toy"), {**config, "policy": policy}, stage=1,
                                      aligned=False, views=1)
    return data_layer.StreamingTrainingSet(data.train, items, batch_size=config["batch_size"],
                                         steps_per_epoch=config["steps_per_epoch"],
                                         accumulation=config["gradient_accumulation"],
                                         process_index=process_index, num_processes=num_processes)


def batches_of(dataset, workers=0):
    loader = torch.utils.data.DataLoader(dataset, batch_size=dataset.process_batch_size, num_workers=workers,
                                         collate_fn=fdcore.data.collate_samples)
    return [batch for batch in loader]


def test_streaming_needs_steps_per_epoch_and_a_validation_choice(streamed_spec, tmp_path):
    from fdcore.recipes.two_stage import parse_args, training_function

    with pytest.raises(training.TrainingError, match="--steps-per-epoch"):
        training_function(parse_args([*BASE_ARGS, "--data", str(streamed_spec), "--output-dir",
                                      str(tmp_path / "a"), "--validation-rows", "8"]))
    with pytest.raises(training.TrainingError, match="--validation-rows K"):
        training_function(parse_args([*BASE_ARGS, "--data", str(streamed_spec), "--output-dir",
                                      str(tmp_path / "b"), "--steps-per-epoch", "2"]))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()  # a run that cannot start leaves nothing


def test_held_out_rows_are_disjoint_from_training(streamed_spec):
    data = pipeline.load_data(stream_config(streamed_spec))
    assert data.streaming and len(data.validation) == 16
    assert data.spec.counts["validation"]["real"] > 0 and data.spec.counts["validation"]["fake"] > 0
    validation = {row["path"] for row in data.validation}
    for epoch in (0, 1):
        data.train.set_epoch(epoch)
        training_paths = [row["path"] for row in data.train]
        assert len(training_paths) == 96 - 16 and not validation & set(training_paths)


def test_stream_is_split_across_processes_without_overlap(streamed_spec):
    config = stream_config(streamed_spec)
    data = pipeline.load_data(config)
    single = stream_set(data, config)
    single.start_epoch(1)
    whole = [batch["index"].tolist() for batch in batches_of(single)]
    assert len(whole) == 3 and all(len(batch) == 8 for batch in whole)
    halves = []
    for rank in (0, 1):
        shard = stream_set(data, config, process_index=rank, num_processes=2)
        shard.start_epoch(1)
        halves.append([batch["index"].tolist() for batch in batches_of(shard)])
    for step, batch in enumerate(whole):
        first, second = halves[0][step], halves[1][step]
        assert len(first) == len(second) == 4 and not set(first) & set(second)
        assert first + second == batch  # the two processes together see exactly the one-process global batch


def test_stream_samples_do_not_depend_on_workers_and_resume_skips_exactly(streamed_spec):
    config = stream_config(streamed_spec, steps_per_epoch=4)
    data = pipeline.load_data(config)
    dataset = stream_set(data, config)
    dataset.start_epoch(2)
    in_process = batches_of(dataset)
    with_workers = batches_of(dataset, workers=2)
    assert len(in_process) == 4
    for one, other in zip(in_process, with_workers, strict=True):
        assert one["index"].tolist() == other["index"].tolist() and torch.equal(one["pixels"], other["pixels"])
        assert one["degradation"] == other["degradation"] and one["degradation"][0] != "null"
    dataset.start_epoch(2, skip_batches=3)
    resumed = batches_of(dataset, workers=2)
    assert len(resumed) == 1 and torch.equal(resumed[0]["pixels"], in_process[3]["pixels"])
    dataset.start_epoch(3)
    next_epoch = [batch["index"].tolist() for batch in batches_of(dataset)]
    assert next_epoch != [batch["index"].tolist() for batch in in_process]  # the buffer is re-seeded per epoch


def test_streaming_run_is_deterministic_and_resume_equals_an_uninterrupted_run(streamed_spec, tmp_path):
    common = ["--data", str(streamed_spec), "--epochs", "2", "--stage", "1", "--steps-per-epoch", "4",
              "--validation-rows", "16"]
    run_recipe(*common, "--output-dir", str(tmp_path / "straight"))
    run_recipe(*common, "--output-dir", str(tmp_path / "again"))
    run_recipe(*common, "--output-dir", str(tmp_path / "interrupted"), "--stop-after", "6")
    assert not (tmp_path / "interrupted" / "expert").exists()
    progress = json.loads((tmp_path / "interrupted" / "stage1" / "checkpoints" / "latest.json").read_text())
    assert progress["epoch"] == 1 and progress["batch_in_epoch"] == 2  # stopped mid-epoch
    run_recipe("--output-dir", str(tmp_path / "interrupted"), "--resume", "--workers", "2")
    straight = fdcore.load_expert(tmp_path / "straight" / "expert").state_dict()
    again = fdcore.load_expert(tmp_path / "again" / "expert").state_dict()
    resumed = fdcore.load_expert(tmp_path / "interrupted" / "expert").state_dict()
    assert all(torch.equal(straight[key], again[key]) for key in straight)
    assert all(torch.equal(straight[key], resumed[key]) for key in straight)
    steps = [entry["step"] for entry in read_log(tmp_path / "interrupted") if "bce" in entry]
    assert steps == list(range(1, 9))  # 2 epochs of 4 steps, no step trained twice or skipped
    record = json.loads((tmp_path / "straight" / "run.json").read_text())
    assert record["config"]["steps_per_epoch"] == 4 and record["data"]["counts"]["validation"]["rows"] == 16


def test_streaming_two_processes_match_one_process(streamed_spec, tmp_path):
    common = [*BASE_ARGS, "--policy", "none", "--data", str(streamed_spec), "--epochs", "1", "--stage", "1",
              "--steps-per-epoch", "5", "--validation-rows", "16"]
    train_in_one_and_two_processes(common, tmp_path, master_port=29523)
    # Each process builds only its half of every global batch; if both built the same half (or each the whole
    # batch) the averaged gradients, hence the weights, would differ from the one-process run.
    first = fdcore.load_expert(tmp_path / "one" / "expert").state_dict()
    second = fdcore.load_expert(tmp_path / "two" / "expert").state_dict()
    assert all(torch.allclose(first[key], second[key], atol=1e-5) for key in first)
    one = [e for e in read_log(tmp_path / "one") if "clean_roc_auc" in e][-1]
    two = [e for e in read_log(tmp_path / "two") if "clean_roc_auc" in e][-1]
    assert one["clean_bce"] == pytest.approx(two["clean_bce"], rel=1e-4)


def test_steps_per_epoch_shortens_epochs_of_data_loaded_in_full(learnable_folder, tmp_path):
    run_recipe("--data", str(learnable_folder), "--output-dir", str(tmp_path / "run"), "--policy", "none",
               "--epochs", "2", "--stage", "1", "--steps-per-epoch", "2")
    trained = [(entry["epoch"], entry["step"]) for entry in read_log(tmp_path / "run") if "bce" in entry]
    assert trained == [(0, 1), (0, 2), (1, 3), (1, 4)]  # 86 training images would make 10 steps of 8 per epoch


def test_a_stream_shorter_than_the_epoch_ends_it_early_and_says_so(streamed_spec, tmp_path, capsys):
    run_recipe("--data", str(streamed_spec), "--output-dir", str(tmp_path / "run"), "--policy", "none",
               "--epochs", "1", "--stage", "1", "--steps-per-epoch", "20", "--validation-rows", "16")
    assert "the stream ran out after 10 of 20 steps" in capsys.readouterr().out  # 80 training rows / batch 8
    log = read_log(tmp_path / "run")
    assert [entry["short_epoch_steps"] for entry in log if "short_epoch_steps" in entry] == [10]
    assert max(entry["step"] for entry in log if "bce" in entry) == 10
