"""Resume and durability of fdcore predict: kill -9, torn tails, the lock, bindings, --overwrite, input identity,
atomic writes and distributed sharding."""

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

import predict_corpus as corpus
from conftest import fdcore_command
from fdcore.predict import EXIT_COMPLETE, PredictError, PredictOptions, run_predict
from fdcore.predict import outputs, runner, state, worklog
from fdcore.predict.distributed import shard

FINALS = ("predictions.csv", "errors.csv", "image_info.csv")


@pytest.fixture(scope="module")
def toy_ensemble(tmp_path_factory):
    return corpus.make_toy_ensemble(tmp_path_factory.mktemp("ensemble") / "toy")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("folder") / "images"
    root.mkdir()
    for index in range(40):
        (root / f"img_{index:02d}.jpg").write_bytes(corpus.jpeg_bytes(corpus.photo(300 + index, 36, 44)))
    return root


def run(images, ensemble, out, **options):
    options.setdefault("quiet", True)
    options.setdefault("workers", 0)
    options.setdefault("batch_size", 2)
    return run_predict(PredictOptions(images=str(images), ensemble=str(ensemble), out=str(out), **options))


def finals(out):
    return {name: (Path(out) / name).read_bytes() for name in FINALS}


def logged_rows(out, work=state.WORK_DIR):
    return worklog.read_logs(Path(out) / work).rows


@pytest.fixture(scope="module")
def baseline(folder, toy_ensemble, tmp_path_factory):
    out = tmp_path_factory.mktemp("baseline") / "out"
    assert run(folder, toy_ensemble, out).exit_code == EXIT_COMPLETE
    return finals(out)


def _start(images, ensemble, out, *extra, throttle="0.1"):
    env = {key: value for key, value in os.environ.items() if not key.startswith("FDCORE_")}
    env[runner.THROTTLE_ENV] = throttle
    return subprocess.Popen([sys.executable, "-m", "fdcore", "predict", str(images), "--ensemble", str(ensemble),
                             "--out", str(out), "--batch-size", "2", "--workers", "0", "--quiet", *extra],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def _kill_when_logged(process, log_dir, at_least, timeout=90):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        logs = list(Path(log_dir).glob("rows-*.jsonl")) if Path(log_dir).is_dir() else []
        if sum(path.read_bytes().count(b"\n") for path in logs) >= at_least:
            process.send_signal(signal.SIGKILL)
            process.wait(timeout=10)
            return
        if process.poll() is not None:
            raise AssertionError(f"the run ended before it could be killed: {process.stderr.read().decode()}")
        time.sleep(0.01)
    process.kill()
    raise AssertionError("the run never logged enough rows")


def test_kill_9_mid_run_then_resume_equals_an_uninterrupted_run(folder, toy_ensemble, baseline, tmp_path):
    out = tmp_path / "out"
    for at_least in (6, 22):
        process = _start(folder, toy_ensemble, out)
        _kill_when_logged(process, out / state.WORK_DIR, at_least)
        assert process.returncode == -signal.SIGKILL
        assert not (out / "predictions.csv").exists()  # finals appear only on completion
    before_resume = len(logged_rows(out))
    assert 22 <= before_resume < 40
    summary = run(folder, toy_ensemble, out)  # the killed holder's lock is gone: starts at once
    assert summary.exit_code == EXIT_COMPLETE
    assert summary.reused == before_resume and summary.processed_this_run == 40 - before_resume
    names = [row["name"] for row in logged_rows(out)]
    assert sorted(names) == sorted(set(names)) and len(names) == 40  # nothing committed was scored twice
    assert finals(out) == baseline


class SimulatedKill(BaseException):
    """Stands for SIGKILL inside the process: nothing after it runs (no cleanup in the log writer)."""


def test_twenty_interruptions_at_random_bytes_of_appends(folder, toy_ensemble, baseline, tmp_path, monkeypatch):
    # In-process stand-in for kill -9 at 20 random moments: a random batch's append stops after a random number
    # of bytes (possibly mid-record, possibly before the first byte), and the run dies there.
    import random

    generator = random.Random(20)
    real_write = worklog.LogWriter.write
    out = tmp_path / "out"
    for _ in range(20):
        state_before = len(logged_rows(out)) if (out / state.WORK_DIR).exists() else 0
        remaining_batches = (40 - state_before + 1) // 2
        if remaining_batches == 0:
            break
        kill_at = generator.randrange(remaining_batches)
        calls = {"count": 0}

        def dying_write(self, records, kill_at=kill_at, calls=calls):
            if calls["count"] == kill_at:
                payload = b"".join(json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in records)
                self._handle.write(payload[: generator.randrange(len(payload) + 1)])
                raise SimulatedKill()
            calls["count"] += 1
            real_write(self, records)

        monkeypatch.setattr(worklog.LogWriter, "write", dying_write)
        with pytest.raises(SimulatedKill):
            run(folder, toy_ensemble, out)
        monkeypatch.setattr(worklog.LogWriter, "write", real_write)
        assert not (out / "predictions.csv").exists()
    summary = run(folder, toy_ensemble, out)
    assert summary.exit_code == EXIT_COMPLETE
    names = [row["name"] for row in logged_rows(out)]
    assert sorted(names) == sorted(set(names)) and len(names) == 40
    assert finals(out) == baseline


def test_torn_tail_is_dropped_and_that_image_rescored(folder, toy_ensemble, baseline, tmp_path):
    out = tmp_path / "out"
    run(folder, toy_ensemble, out)
    log = out / state.WORK_DIR / worklog.log_name(0, 1)
    lines = log.read_bytes().splitlines(keepends=True)
    victim = json.loads(lines[-1])["name"]
    torn = lines[-1][: len(lines[-1]) // 2]  # the record cut mid-way, as a kill during write() leaves it
    log.write_bytes(b"".join(lines[:-1]) + torn)
    with open(out / "predictions.csv", "ab") as handle:
        handle.write(b"img_40.jpg,0")  # a torn final CSV is never read back: finals are rebuilt from the log
    summary = run(folder, toy_ensemble, out)
    assert summary.torn_tails_dropped == 1 and summary.processed_this_run == 1
    assert log.read_bytes().endswith(b"\n")
    assert [row["name"] for row in logged_rows(out)].count(victim) == 1
    assert finals(out) == baseline


def test_worklog_rejects_garbage_lines(tmp_path):
    log = tmp_path / worklog.log_name(0, 1)
    good = {"name": "a.jpg", "size": 1, "mtime_ns": 2, "status": "ok", "p": [0.5]}
    log.write_bytes(json.dumps(good).encode() + b"\n" + b"\x00\x00\x00\n"
                    + json.dumps({**good, "p": [0.0, None]}).encode() + b"\n" + b'{"name": "b.j')
    result = worklog.read_log(log)
    assert result.rows == [good] and result.corrupt_lines == 2 and result.torn_tails == 1


def test_second_concurrent_run_is_refused_and_writes_nothing(folder, toy_ensemble, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    holder = state.OutputLock(out)
    holder.acquire()
    try:
        listing = sorted(p.name for p in out.iterdir())
        result = fdcore_command("predict", str(folder), "--ensemble", str(toy_ensemble), "--out", str(out))
        assert result.returncode == 2 and "Traceback" not in result.stderr
        assert f"locked by pid {os.getpid()}" in result.stderr
        assert sorted(p.name for p in out.iterdir()) == listing
        assert (out / ".lock").read_text().strip() == str(os.getpid())
    finally:
        holder.release()
    assert run(folder, toy_ensemble, out).exit_code == EXIT_COMPLETE  # released lock: next run proceeds


def test_changed_settings_refuse_to_resume(folder, toy_ensemble, tmp_path, monkeypatch):
    out = tmp_path / "out"
    run(folder, toy_ensemble, out)
    with pytest.raises(PredictError, match=r'(?s)aggregator: was "mean", now "max".*--overwrite'):
        run(folder, toy_ensemble, out, aggregator="max")
    with pytest.raises(PredictError, match="precision"):
        run(folder, toy_ensemble, out, precision="bf16")
    changed = corpus.make_toy_ensemble(tmp_path / "changed", seeds=(1, 3))
    with pytest.raises(PredictError, match="ensemble.identity"):
        run(folder, changed, out)
    with pytest.raises(PredictError, match="limits.max_pixels"):
        run(folder, toy_ensemble, out, max_pixels=1000)
    binding = json.loads((out / "predictions.meta.json").read_text())
    assert binding["plugins"] == ["fdcore-toy==0.1.0"]  # the toy expert's provider only: not clip, siglip, npr
    monkeypatch.setattr(runner, "plugin_set", lambda used=None: ["fdcore-toy==9.9"])
    with pytest.raises(PredictError, match="plugins"):
        run(folder, toy_ensemble, out)
    monkeypatch.undo()
    monkeypatch.setattr("fdcore.preprocess.PREPROCESS_VERSION", "fdcore-preprocess-v999")
    with pytest.raises(PredictError, match="preprocess_version"):
        run(folder, toy_ensemble, out)
    monkeypatch.undo()
    summary = run(folder, toy_ensemble, out, aggregator="max", overwrite=True)
    assert summary.exit_code == EXIT_COMPLETE and summary.processed_this_run == 40
    assert json.loads((out / "predictions.meta.json").read_text())["aggregator"] == "max"


def test_foreign_outputs_are_not_silently_adopted(folder, toy_ensemble, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "predictions.csv").write_text("image_name,score\nx.jpg,0.5\n")
    with pytest.raises(PredictError, match="--overwrite"):
        run(folder, toy_ensemble, out)
    assert (out / "predictions.csv").read_text() == "image_name,score\nx.jpg,0.5\n"


def test_replaced_input_file_is_rescored(folder, toy_ensemble, tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(folder.iterdir())[:6]:
        (images / path.name).write_bytes(path.read_bytes())
    out = tmp_path / "out"
    run(images, toy_ensemble, out)
    before = (out / "predictions.csv").read_text()
    target = images / "img_02.jpg"
    stat = target.stat()
    target.write_bytes(corpus.jpeg_bytes(corpus.photo(999, 36, 44)))
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000_000))
    summary = run(images, toy_ensemble, out)
    assert summary.processed_this_run == 1
    after = (out / "predictions.csv").read_text()
    changed = [a for a, b in zip(before.splitlines(), after.splitlines()) if a != b]
    assert len(changed) == 1 and changed[0].startswith("img_02.jpg,")


def test_killed_overwrite_leaves_old_results_readable(folder, toy_ensemble, baseline, tmp_path):
    out = tmp_path / "out"
    run(folder, toy_ensemble, out)
    process = _start(folder, toy_ensemble, out, "--overwrite", "--aggregator", "max")
    _kill_when_logged(process, out / state.STAGING_DIR, 4)
    assert finals(out) == baseline
    assert (out / state.STAGING_DIR).is_dir()
    resumed = run(folder, toy_ensemble, out)  # the old, complete run is still the one on record
    assert resumed.processed_this_run == 0 and finals(out) == baseline
    replaced = run(folder, toy_ensemble, out, overwrite=True, aggregator="max")
    assert replaced.processed_this_run == 40 and finals(out) != baseline
    assert not (out / state.STAGING_DIR).exists() and not (out / state.RETIRED_DIR).exists()


def test_interrupted_promotion_is_completed(folder, toy_ensemble, tmp_path):
    out = tmp_path / "out"
    run(folder, toy_ensemble, out)
    os.replace(out / state.WORK_DIR, out / state.RETIRED_DIR)  # as if killed inside promote()
    assert run(folder, toy_ensemble, out).processed_this_run == 0
    assert (out / state.WORK_DIR).is_dir() and not (out / state.RETIRED_DIR).exists()


def test_atomic_writes_keep_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "predictions.meta.json"
    outputs.write_meta(target, {"version": 1})
    previous = target.read_bytes()

    def failing_replace(source, destination):
        raise OSError("simulated crash between write and rename")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError):
        outputs.write_meta(target, {"version": 2})
    monkeypatch.undo()
    assert target.read_bytes() == previous
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.meta.json"]


def test_shards_partition_the_sorted_list():
    items = [f"img_{i}" for i in range(11)]
    parts = [shard(items, rank, 3) for rank in range(3)]
    assert sorted(sum(parts, [])) == sorted(items)
    assert max(map(len, parts)) - min(map(len, parts)) <= 1
    with pytest.raises(ValueError):
        shard(items, 3, 3)


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_two_process_run_merges_into_the_same_csv(folder, toy_ensemble, baseline, tmp_path):
    out = tmp_path / "out"
    env = {key: value for key, value in os.environ.items() if not key.startswith("FDCORE_")}
    env["OMP_NUM_THREADS"] = "1"
    result = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                             "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "fdcore",
                             "predict", str(folder), "--ensemble", str(toy_ensemble), "--out", str(out),
                             "--batch-size", "2", "--workers", "0", "--quiet", "--device", "cpu"],
                            capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
    logs = sorted(p.name for p in (out / state.WORK_DIR).glob("rows-*.jsonl"))
    assert logs == [worklog.log_name(0, 2), worklog.log_name(1, 2)]
    assert finals(out) == baseline
    meta = json.loads((out / "predictions.meta.json").read_text())
    assert meta["run"]["world_size"] == 2 and meta["counts"]["scored"] == 40
    assert run(folder, toy_ensemble, out).processed_this_run == 0  # shards resume under any world size


@pytest.mark.parametrize("signum, code", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_a_signal_stops_cleanly_saves_and_says_so(folder, toy_ensemble, baseline, tmp_path, signum, code):
    import psutil

    out = tmp_path / "out"
    process = _start(folder, toy_ensemble, out, "--workers", "2", throttle="0.2")
    deadline = time.monotonic() + 90
    while not ((out / state.WORK_DIR).is_dir() and len(logged_rows(out)) >= 6):
        assert process.poll() is None and time.monotonic() < deadline, process.stderr.read().decode()
        time.sleep(0.02)
    workers = psutil.Process(process.pid).children(recursive=True)
    assert len(workers) == 2  # the DataLoader workers
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == code, stderr.decode()
    message = stderr.decode()
    assert "rerun the same command to continue" in message and "Traceback" not in message
    assert "Aborted!" not in message
    saved = len(logged_rows(out))
    assert f"{saved} of 40 images have saved results" in message
    assert not any(worker.is_running() and worker.status() != psutil.STATUS_ZOMBIE for worker in workers)
    assert run(folder, toy_ensemble, out).exit_code == EXIT_COMPLETE  # the lock was released; resume finishes
    assert finals(out) == baseline


def test_refused_runs_leave_no_lock_and_no_empty_folder_and_dangling_out_is_clear(folder, toy_ensemble, tmp_path):
    out = tmp_path / "new-out"
    with pytest.raises(Exception, match="unknown aggregator"):
        run(folder, toy_ensemble, out, aggregator="nosuch")
    assert not out.exists()
    kept = tmp_path / "kept"
    run(folder, toy_ensemble, kept)
    with pytest.raises(PredictError):
        run(folder, toy_ensemble, kept, aggregator="max")  # a settings mismatch, after loading
    assert not (kept / ".lock").exists() and (kept / "predictions.csv").is_file()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")
    result = fdcore_command("predict", str(folder), "--ensemble", str(toy_ensemble), "--out", str(dangling))
    assert result.returncode == 2 and "does not exist" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("size", ["12k", "24k"])  # full while logging results / while writing the final files
def test_a_full_disk_is_a_clear_error_and_the_rerun_finishes(folder, toy_ensemble, baseline, tmp_path, size):
    mount = tmp_path / "tiny"
    mount.mkdir()
    made = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)], capture_output=True)
    if made.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here: {made.stderr.decode().strip()}")
    try:
        out = mount / "out"
        result = fdcore_command("predict", str(folder), "--ensemble", str(toy_ensemble), "--out", str(out),
                                "--batch-size", "2", "--workers", "0", "--quiet")
        assert result.returncode == 2, result.stderr
        assert "no space left" in result.stderr and "rerun the same command" in result.stderr
        assert "Traceback" not in result.stderr
        saved = len(logged_rows(out))
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)
        summary = run(folder, toy_ensemble, out)
        assert summary.exit_code == EXIT_COMPLETE and summary.reused >= saved - 1
        assert finals(out) == baseline
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


@pytest.fixture(scope="module")
def real_architectures(tmp_path_factory):
    """The real CLIP, SigLIP and NPR classes (their kernels, not a toy's); SigLIP at So400M's width with two blocks,
    a size whose scores differed by 6e-8 between batch sizes before scoring ran in fixed chunks."""
    import torch

    import fdcore
    from fdcore.ensemble_io import write_ensemble

    root = tmp_path_factory.mktemp("real") / "ensemble"
    wide = {"hidden_size": 1152, "intermediate_size": 4304, "num_hidden_layers": 2, "num_attention_heads": 16,
            "patch_size": 14, "image_size": 224}
    members = []
    for name, options in (("clip", fdcore.get_expert_class("clip").tiny_config()), ("siglip", {"backbone_config": wide}),
                          ("npr", {"crop_size": 96, "crops": 4})):
        torch.manual_seed(0)
        fdcore.save_expert(fdcore.get_expert(name, **options), root / name)
        members.append({"name": name, "path": name, "weight": 1.0})
    write_ensemble(root, members)
    images = tmp_path_factory.mktemp("real-images") / "images"
    images.mkdir()
    for index in range(10):
        (images / f"img_{index:02d}.jpg").write_bytes(corpus.jpeg_bytes(corpus.photo(700 + index, 100 + index, 120)))
    return root, images


def test_real_architectures_give_the_same_bytes_whatever_the_batch_size_and_resume(real_architectures, tmp_path):
    ensemble, images = real_architectures
    outputs = {}
    for batch_size in (1, 3, 16):
        out = tmp_path / f"b{batch_size}"
        assert run(images, ensemble, out, batch_size=batch_size, per_expert=True).exit_code == EXIT_COMPLETE
        outputs[batch_size] = finals(out)
        rows = worklog.read_logs(out / state.WORK_DIR).rows
        outputs[f"probabilities {batch_size}"] = sorted((row["name"], row["p"]) for row in rows)
    assert outputs[1] == outputs[3] == outputs[16]
    assert outputs["probabilities 1"] == outputs["probabilities 3"] == outputs["probabilities 16"]  # to the last bit
    # killed mid-run at batch size 2, resumed at batch size 7: the remaining images fall into other batches
    out = tmp_path / "resumed"
    process = _start(images, ensemble, out, "--per-expert", throttle="0.3")
    _kill_when_logged(process, out / state.WORK_DIR, 4)
    assert run(images, ensemble, out, batch_size=7, per_expert=True).exit_code == EXIT_COMPLETE
    assert finals(out) == outputs[16]


def test_a_file_rewritten_between_listing_and_reading_is_scored_as_read(folder, toy_ensemble, tmp_path, monkeypatch):
    """Issue 15 item 12: the score of the bytes actually read is reported (it was reported not_scored, exit 3)."""
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(folder.iterdir())[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    target = images / "img_01.jpg"
    listed_walk = runner.list_input

    def walk_then_rewrite(*args, **kwargs):
        walked = listed_walk(*args, **kwargs)
        info = target.stat()
        target.write_bytes(corpus.jpeg_bytes(corpus.photo(999, 36, 44)))
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))
        return walked

    monkeypatch.setattr(runner, "list_input", walk_then_rewrite)
    summary = run(images, toy_ensemble, tmp_path / "out")
    assert summary.exit_code == EXIT_COMPLETE and summary.scored == 4, summary
    monkeypatch.undo()
    fresh = tmp_path / "fresh"
    assert run(images, toy_ensemble, fresh).exit_code == EXIT_COMPLETE
    assert finals(tmp_path / "out")["predictions.csv"] == finals(fresh)["predictions.csv"]
    rerun = run(images, toy_ensemble, tmp_path / "out")
    assert rerun.processed_this_run == 0 and rerun.reused == 4


def test_a_file_rewritten_after_listing_and_again_after_reading_is_file_changed(folder, toy_ensemble, tmp_path,
                                                                                monkeypatch):
    images = tmp_path / "images"
    images.mkdir()
    for path in sorted(folder.iterdir())[:4]:
        (images / path.name).write_bytes(path.read_bytes())
    target = images / "img_02.jpg"

    def rewrite(seed):
        info = target.stat()
        target.write_bytes(corpus.jpeg_bytes(corpus.photo(seed, 36, 44)))
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns + 1_000_000_000))

    listed_walk, original_finalise = runner.list_input, runner.finalise
    monkeypatch.setattr(runner, "list_input", lambda *a, **k: (listed_walk(*a, **k), rewrite(997))[0])
    monkeypatch.setattr(runner, "finalise", lambda *a, **k: (rewrite(998), original_finalise(*a, **k))[1])
    summary = run(images, toy_ensemble, tmp_path / "out")
    assert summary.reasons == {"file_changed": 1} and summary.scored == 3 and summary.exit_code == 3
    monkeypatch.undo()
    rerun = run(images, toy_ensemble, tmp_path / "out")
    assert rerun.exit_code == EXIT_COMPLETE and rerun.processed_this_run == 1
