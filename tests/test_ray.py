"""Ray Data scoring on a local Ray instance (2 CPUs): ``fdcore predict --engine ray`` writes the same files as
single-process predict, for a folder and for a manifest of local paths and loopback URLs, and resumes;
``EnsembleScorer`` in a user's own ``map_batches`` gives the same scores, row for row, and never fails on a bad row."""

import csv
import json
import math
import os

import pytest

import predict_corpus as corpus
from conftest import fdcore_command
from fdcore.predict import EXIT_PARTIAL, run_predict
from loopback_http import closed_port, serve_folder

ray = pytest.importorskip("ray")

from fdcore.integrations.ray import EnsembleScorer, RayEngine, RayEngineError  # noqa: E402


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, object_store_memory=100 * 1024 * 1024,
             logging_level="ERROR")
    ray.data.DataContext.get_current().enable_progress_bars = False
    yield ray
    ray.shutdown()


@pytest.fixture(scope="module")
def toy_ensemble(tmp_path_factory):
    return corpus.make_toy_ensemble(tmp_path_factory.mktemp("ensemble") / "toy")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("ray-images") / "images"
    corpus.build_valid(root, count=6)
    (root / "truncated.png").write_bytes(corpus.png_header_only(64, 64))
    (root / "not_an_image.jpg").write_bytes(b"plain text")
    return root


read_csv = corpus.read_csv


def options(images, ensemble, out, **extra):
    return corpus.scoring_options(images, ensemble, out, batch_size=4, **extra)


OUTPUTS = ("predictions.csv", "errors.csv", "image_info.csv")


def test_the_ray_engine_writes_what_single_process_predict_writes(local_ray, images, toy_ensemble, tmp_path):
    single = run_predict(options(images, toy_ensemble, tmp_path / "single"))
    on_ray = run_predict(options(images, toy_ensemble, tmp_path / "ray"), engine=RayEngine(num_actors=2))
    assert single.exit_code == on_ray.exit_code == EXIT_PARTIAL  # two bad files: reported, not fatal
    assert on_ray.scored == single.scored > 10 and on_ray.reasons == single.reasons
    for name in OUTPUTS:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name
    rerun = run_predict(options(images, toy_ensemble, tmp_path / "ray"), engine=RayEngine(num_actors=1))
    assert rerun.processed_this_run == 0 and rerun.reused == single.images


def test_a_manifest_of_paths_and_urls_on_ray_equals_single_process_and_resumes(local_ray, images, toy_ensemble,
                                                                                tmp_path):
    names = sorted(path.name for path in images.iterdir() if path.is_file() and not path.is_symlink())[:10]
    with serve_folder(images) as server:
        rows = [(f"item-{index:02d}", f"{server.url}/img/{name}" if index % 2 else str(images / name))
                for index, name in enumerate(names)]
        rows.append(("item-missing", f"{server.url}/status/404"))
        manifest = tmp_path / "list.csv"

        def write(selected):
            with open(manifest, "w", newline="", encoding="utf-8") as handle:
                writer = csv.writer(handle)
                writer.writerow(["id", "path"])
                writer.writerows(selected)

        write(rows)
        single = run_predict(options(manifest, toy_ensemble, tmp_path / "single", allow_private_urls=True))
        write(rows[:5])
        first = run_predict(options(manifest, toy_ensemble, tmp_path / "ray", allow_private_urls=True),
                            engine=RayEngine(num_actors=2))
        write(rows)
        second = run_predict(options(manifest, toy_ensemble, tmp_path / "ray", allow_private_urls=True),
                             engine=RayEngine(num_actors=2))
    assert first.processed_this_run == 5 and second.reused == 5 and second.processed_this_run == len(rows) - 5
    assert second.reasons == single.reasons and "not_found" in second.reasons
    for name in OUTPUTS:
        assert (tmp_path / "ray" / name).read_bytes() == (tmp_path / "single" / name).read_bytes(), name


def test_ensemble_scorer_in_map_batches_gives_predicts_scores_and_survives_bad_rows(local_ray, images, toy_ensemble,
                                                                                     tmp_path):
    run_predict(options(images, toy_ensemble, tmp_path / "single"))
    expected = {row["image_name"]: row for row in read_csv(tmp_path / "single" / "predictions.csv")}
    rows = [{"path": str(images / name), "key": name} for name in sorted(expected)]
    rows += [{"path": str(images / "not_an_image.jpg"), "key": "bad"}, {"path": "", "key": "empty"},
             {"path": str(tmp_path / "absent.png"), "key": "absent"}, {"path": "ftp://x/y.png", "key": "ftp"}]
    scored = ray.data.from_items(rows).map_batches(
        EnsembleScorer, fn_constructor_kwargs={"ensemble": str(toy_ensemble)}, batch_size=3,
        compute=ray.data.ActorPoolStrategy(size=1), batch_format="numpy").take_all()
    by_key = {row["key"]: row for row in scored}
    assert len(by_key) == len(rows)
    for name, row in expected.items():
        got = by_key[name]
        assert got["status"] == "ok" and got["code"] == ""
        assert f"{got['score']:.8f}" == row["score"]
        assert f"{got['p_toy_1']:.8f}" == row["p_toy_1"] and f"{got['p_toy_2']:.8f}" == row["p_toy_2"]
    assert {key: by_key[key]["code"] for key in ("bad", "empty", "absent", "ftp")} == {
        "bad": "not_an_image", "empty": "not_found", "absent": "not_found", "ftp": "unsupported_url"}
    assert all(math.isnan(by_key[key]["score"]) for key in ("bad", "empty", "absent", "ftp"))
    # encoded bytes, as ray.data.read_binary_files gives them
    binary = ray.data.read_binary_files([str(images / name) for name in ("valid_png.png", "gray8.png")],
                                        include_paths=True)
    from_bytes = {os.path.basename(row["path"]): row for row in binary.map_batches(
        EnsembleScorer, fn_constructor_kwargs={"ensemble": str(toy_ensemble)}, batch_size=2,
        compute=ray.data.ActorPoolStrategy(size=1), batch_format="numpy").take_all()}
    assert f"{from_bytes['gray8.png']['score']:.8f}" == expected["gray8.png"]["score"]


def test_set_level_rules_are_refused_per_batch_and_a_wrong_ensemble_stops_the_job(local_ray, toy_ensemble, images,
                                                                                   tmp_path):
    with pytest.raises(Exception, match="needs every score at once"):
        ray.data.from_items([{"path": str(images / "gray8.png")}]).map_batches(
            EnsembleScorer, fn_constructor_kwargs={"ensemble": str(toy_ensemble), "aggregator": "rank-mean"},
            compute=ray.data.ActorPoolStrategy(size=1)).take_all()
    # rank-mean through the engine is fine: the driver fuses over the whole set
    summary = run_predict(options(images, toy_ensemble, tmp_path / "rank", aggregator="rank-mean"),
                          engine=RayEngine(num_actors=1))
    single = run_predict(options(images, toy_ensemble, tmp_path / "rank-single", aggregator="rank-mean"))
    assert summary.scored == single.scored
    assert (tmp_path / "rank" / "predictions.csv").read_bytes() == (tmp_path / "rank-single" / "predictions.csv").read_bytes()
    binding = json.loads((tmp_path / "rank" / "predictions.meta.json").read_text())
    assert binding["device_type"] == "cpu" and binding["precision"] == "fp32"
    with pytest.raises(RayEngineError, match="needs --gpus-per-actor"):
        run_predict(options(images, toy_ensemble, tmp_path / "gpu", device="cuda"), engine=RayEngine())
    assert RayEngine(gpus_per_actor=0.5).device_type() == "cuda"
    # an actor that finds other ensemble files than the driver verified stops the job with a clear error
    from fdcore.ensemble_io import load_ensemble

    driver_side = load_ensemble(str(toy_ensemble))
    driver_side.source = str(corpus.make_toy_ensemble(tmp_path / "other", seeds=(3, 4)))
    with pytest.raises(RayEngineError, match="loaded a different ensemble"):
        run_predict(options(images, toy_ensemble, tmp_path / "mismatch"), ensemble=driver_side,
                    engine=RayEngine(num_actors=1))


def test_the_cli_engine_flag_runs_ray_and_refuses_ray_options_without_it(images, toy_ensemble, tmp_path):
    out = tmp_path / "cli"
    result = fdcore_command("predict", str(images), "--ensemble", str(toy_ensemble), "--out", str(out),
                            "--engine", "ray", "--num-actors", "1", "--json", "--quiet", timeout=240,
                            env={"RAY_ADDRESS": "", "RAY_ENABLE_UV_RUN_RUNTIME_ENV": "0"})
    assert result.returncode == EXIT_PARTIAL, result.stderr[-2000:]
    summary = json.loads(result.stdout)
    assert summary["scored"] > 10 and summary["reasons"] == {"decode_failed": 1, "not_an_image": 1}
    refused = fdcore_command("predict", str(images), "--ensemble", str(toy_ensemble), "--out", str(tmp_path / "x"),
                             "--num-actors", "2")
    assert refused.returncode == 2 and "--engine ray" in refused.stderr and "Traceback" not in refused.stderr
    port = closed_port()
    unreachable = fdcore_command("predict", str(images), "--ensemble", str(toy_ensemble), "--out", str(tmp_path / "y"),
                                 "--engine", "ray", "--ray-address", f"127.0.0.1:{port}", timeout=60)
    assert unreachable.returncode == 2 and "Traceback" not in unreachable.stderr
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in unreachable.stderr
    assert not (tmp_path / "y").exists()
