"""fdcore predict end to end on a toy-expert ensemble: hostile corpus, exact scores, determinism, fusion rules,
fault isolation, and the Python API."""

import csv
import io
import json
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import fdcore
import predict_corpus as corpus
from conftest import fdcore_command
from fdcore.ensemble import Ensemble, EnsembleError, Member, resolve_precision
from fdcore.ensemble_io import load_ensemble, write_ensemble
from fdcore.errors import FdcoreError
from fdcore.predict import EXIT_COMPLETE, EXIT_PARTIAL, PredictOptions, run_predict


@pytest.fixture(scope="module")
def toy_ensemble(tmp_path_factory):
    return corpus.make_toy_ensemble(tmp_path_factory.mktemp("ensemble") / "toy")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    return corpus.build_hostile(tmp_path_factory.mktemp("hostile"))


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean") / "images"
    corpus.build_valid(root, count=12)
    return root


@pytest.fixture(scope="module")
def hostile_run(hostile, toy_ensemble, tmp_path_factory):
    out = tmp_path_factory.mktemp("hostile-out") / "out"
    result = fdcore_command("predict", str(hostile), "--ensemble", str(toy_ensemble), "--out", str(out),
                            "--per-expert", "--json", "--workers", "2", "--batch-size", "4", timeout=120)
    return result, out


def read_csv(path):
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def run(images, ensemble, out, **options):
    options.setdefault("quiet", True)
    options.setdefault("workers", 0)
    return run_predict(PredictOptions(images=str(images), ensemble=str(ensemble), out=str(out), **options))


def test_hostile_corpus_is_isolated_per_file(hostile, hostile_run):
    result, out = hostile_run
    assert result.returncode == EXIT_PARTIAL, result.stderr
    assert "Traceback" not in result.stderr
    summary = json.loads(result.stdout)
    predictions = read_csv(out / "predictions.csv")
    names = [row["image_name"] for row in predictions]
    assert sorted(names) == sorted(corpus.SCORED) and len(set(names)) == len(names)
    for row in predictions:  # names round-trip byte for byte, and each one is a real file under the root
        assert (hostile / row["image_name"]).exists()
        assert 0.0 <= float(row["score"]) <= 1.0
        assert set(row) == {"image_name", "score", "p_toy_1", "p_toy_2"}
    errors = read_csv(out / "errors.csv")
    reported = [(row["image_name"], row["reason"]) for row in errors]
    assert sorted(reported) == sorted({**corpus.SKIPPED, **corpus.IGNORED}.items())
    assert summary["scored"] == len(corpus.SCORED) and summary["skipped"] == len(corpus.SKIPPED)
    assert summary["ignored"] == len(corpus.IGNORED) and summary["status"] == "partial"
    info = {row["image_name"]: row for row in read_csv(out / "image_info.csv")}
    assert info["cmyk.jpg"]["mode"] == "CMYK"
    assert info["animated_3frames.gif"]["n_frames"] == "3"
    assert "exif_corrupt" in info["jpeg_corrupt_exif.jpg"]["notes"]
    meta = json.loads((out / "predictions.meta.json").read_text())
    assert meta["aggregator"] == "mean" and meta["counts"]["scored"] == len(corpus.SCORED)
    assert meta["ensemble"]["identity"] == load_ensemble(meta["ensemble_source"]).identity
    assert "fdcore-toy==0.1.0" in meta["plugins"]


def test_rerun_rescores_nothing_and_is_byte_identical(hostile, toy_ensemble, hostile_run):
    _, out = hostile_run
    before = {name: (out / name).read_bytes() for name in ("predictions.csv", "errors.csv", "image_info.csv")}
    summary = run(hostile, toy_ensemble, out, per_expert=True, batch_size=4)
    assert summary.processed_this_run == 0 and summary.reused == summary.images == len(corpus.SCORED) + 11
    for name, data in before.items():
        assert (out / name).read_bytes() == data


def _independent_scores(experts, paths):
    """What the toy ensemble should give, computed without fdcore.images / fdcore.ensemble.

    One batch of all images: CPU kernels differ in the last bits for a batch of exactly one, which fdcore avoids
    by padding; any batch of two or more gives the same per-image results.
    """
    images = [Image.open(path).convert("RGB") for path in paths]
    with torch.no_grad():
        probabilities = np.array([expert.probabilities(expert.preprocess(images)).numpy() for expert in experts],
                                 dtype=np.float64)
    return probabilities.mean(axis=0), probabilities


def test_scores_equal_an_independent_forward_pass(hostile, hostile_run):
    _, out = hostile_run
    experts = [fdcore.get_expert("toy", seed=1).eval(), fdcore.get_expert("toy", seed=2).eval()]
    rows = {row["image_name"]: row for row in read_csv(out / "predictions.csv")}
    names = ["valid_photo_1.jpg", "valid_photo_2.jpg", "valid_png.png", "valid_webp.webp", "valid_bmp.bmp",
             "gray8.png", "comma,name.png", "new\nline.png", "one_pixel.png", "symlink_inside.jpg",
             "png_content_named.jpg"]
    expected, per_expert = _independent_scores(experts, [hostile / name for name in names])
    for index, name in enumerate(names):
        assert rows[name]["score"] == "{:.8f}".format(expected[index])
        assert rows[name]["p_toy_1"] == "{:.8f}".format(per_expert[0, index])
        assert rows[name]["p_toy_2"] == "{:.8f}".format(per_expert[1, index])
    assert rows["symlink_inside.jpg"]["score"] == rows["valid_photo_1.jpg"]["score"]


def test_determinism_across_batch_size_workers_and_listing_order(clean, toy_ensemble, tmp_path, hostile_run):
    reordered = tmp_path / "reordered"
    for path in sorted(clean.rglob("*"), reverse=True):  # created in the opposite order, in another folder
        target = reordered / path.relative_to(clean)
        if path.is_symlink():
            target.parent.mkdir(parents=True, exist_ok=True)
            target.symlink_to(os.readlink(path))
        elif path.is_file():
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
    outputs = []
    for images, batch_size, workers in [(clean, 16, 0), (clean, 1, 2), (reordered, 5, 2), (reordered, 3, 0)]:
        out = tmp_path / f"out-{len(outputs)}"
        summary = run(images, toy_ensemble, out, batch_size=batch_size, workers=workers, per_expert=True)
        assert summary.exit_code == EXIT_COMPLETE
        outputs.append({name: (out / name).read_bytes() for name in ("predictions.csv", "errors.csv",
                                                                    "image_info.csv")})
    assert all(output == outputs[0] for output in outputs[1:])
    # Hostile neighbours do not change the scores of valid images.
    clean_scores = {row["image_name"]: row["score"] for row in read_csv(tmp_path / "out-0" / "predictions.csv")}
    hostile_scores = {row["image_name"]: row["score"] for row in read_csv(hostile_run[1] / "predictions.csv")}
    shared = set(clean_scores) & set(hostile_scores)
    assert len(shared) == len(corpus.SCORED)
    assert all(clean_scores[name] == hostile_scores[name] for name in shared)


def test_aggregators_fuse_the_stored_per_expert_probabilities(clean, toy_ensemble, tmp_path):
    run(clean, toy_ensemble, tmp_path / "mean", per_expert=True)
    rows = read_csv(tmp_path / "mean" / "predictions.csv")
    probabilities = np.array([[float(row["p_toy_1"]) for row in rows], [float(row["p_toy_2"]) for row in rows]])
    for name, weights, expected in [
        ("max", None, probabilities.max(axis=0)),
        ("weighted", [1.0, 3.0], 0.25 * probabilities[0] + 0.75 * probabilities[1]),
        ("rank-mean", None, fdcore.get_aggregator("rank-mean")(torch.tensor(probabilities)).numpy()),
    ]:
        out = tmp_path / name
        run(clean, toy_ensemble, out, aggregator=name, weights=weights)
        fused = [float(row["score"]) for row in read_csv(out / "predictions.csv")]
        np.testing.assert_allclose(fused, expected, atol=2e-8)
        meta = json.loads((out / "predictions.meta.json").read_text())
        assert meta["aggregator"] == name and meta["weights"] == weights
    with pytest.raises(FdcoreError, match="valid aggregators: .*logit-mean"):
        run(clean, toy_ensemble, tmp_path / "unknown", aggregator="no-such-rule")
    with pytest.raises(EnsembleError, match="2 experts"):
        run(clean, toy_ensemble, tmp_path / "badweights", aggregator="weighted", weights=[1, 2, 3])
    with pytest.raises(EnsembleError, match="does not take weights"):
        run(clean, toy_ensemble, tmp_path / "meanweights", aggregator="mean", weights=[1, 2])


def test_cli_user_error_exits_2_without_traceback(clean, toy_ensemble, tmp_path, capsys):
    from fdcore.cli import main

    with pytest.raises(SystemExit) as exited:
        main(["predict", str(clean), "--ensemble", str(toy_ensemble), "--out", str(tmp_path / "o"),
              "--aggregator", "no-such-rule", "--quiet"])
    stderr = capsys.readouterr().err
    assert exited.value.code == 2 and "Traceback" not in stderr
    assert "valid aggregators" in stderr and "rank-mean" in stderr


def test_cli_int8_precision_scores_close_to_fp32_and_refuses_gpu(clean, toy_ensemble, tmp_path):
    scores = {}
    for precision in ("fp32", "int8"):
        out = tmp_path / precision
        result = fdcore_command("predict", str(clean), "--ensemble", str(toy_ensemble), "--out", str(out),
                                "--precision", precision, "--quiet", "--workers", "0")
        assert result.returncode == EXIT_COMPLETE, result.stderr
        assert json.loads((out / "predictions.meta.json").read_text())["precision"] == precision
        scores[precision] = {row["image_name"]: float(row["score"]) for row in read_csv(out / "predictions.csv")}
    assert scores["int8"].keys() == scores["fp32"].keys() and scores["fp32"]
    assert max(abs(scores["int8"][name] - scores["fp32"][name]) for name in scores["fp32"]) < 0.02
    refused = fdcore_command("predict", str(clean), "--ensemble", str(toy_ensemble), "--out", str(tmp_path / "gpu"),
                             "--precision", "int8", "--device", "cuda", "--quiet")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr


class NaNOnWhiteToy(fdcore.get_expert_class("toy")):
    """The toy expert, except that a pure white input gives NaN logits (a model going non-finite on one image)."""

    def forward(self, pixels):
        logits = super().forward(pixels)
        white = (pixels.flatten(1).amin(dim=1) >= 2.0)[:, None]
        return torch.where(white, torch.full_like(logits, float("nan")), logits)


def test_non_finite_output_fails_only_that_image(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    for index in range(7):
        (images / f"photo_{index}.jpg").write_bytes(corpus.jpeg_bytes(corpus.photo(200 + index)))
    Image.new("RGB", (40, 40), (255, 255, 255)).save(images / "photo_3_white.png")
    outcomes = []
    for expert in (fdcore.get_expert("toy", seed=5), NaNOnWhiteToy(seed=5)):
        ensemble = Ensemble([Member("toy", expert.eval(), 1.0, "toy-seed-5", "test")])
        out = tmp_path / f"out-{len(outcomes)}"
        summary = run_predict(PredictOptions(images=str(images), ensemble="(in memory)", out=str(out),
                                             batch_size=8, workers=0, quiet=True), ensemble=ensemble)
        outcomes.append((summary, {row["image_name"]: row["score"] for row in read_csv(out / "predictions.csv")},
                         read_csv(out / "errors.csv")))
    (clean_summary, clean_scores, _), (nan_summary, nan_scores, nan_errors) = outcomes
    assert clean_summary.exit_code == EXIT_COMPLETE and nan_summary.exit_code == EXIT_PARTIAL
    assert [(row["image_name"], row["reason"]) for row in nan_errors] == [("photo_3_white.png", "non_finite_score")]
    assert nan_scores == {name: score for name, score in clean_scores.items() if name != "photo_3_white.png"}


def test_python_api_matches_the_cli(hostile, toy_ensemble, hostile_run):
    _, out = hostile_run
    rows = {row["image_name"]: row for row in read_csv(out / "predictions.csv")}
    ensemble = fdcore.load_ensemble(toy_ensemble, device="cpu")
    assert ensemble.names == ["toy_1", "toy_2"] and len(ensemble.geometries) == 1
    names = ["valid_photo_1.jpg", "cmyk.jpg", "exif_orientation6_rotated.jpg", "truncated_png_half.png",
             "gray16_I16.png"]
    results = ensemble.predict_paths([hostile / name for name in names], batch_size=2)
    for name, result in zip(names, results):
        if name == "truncated_png_half.png":
            assert result["score"] is None and result["error"] == "decode_failed"
        else:
            assert "{:.8f}".format(result["score"]) == rows[name]["score"]
            assert "{:.8f}".format(result["probabilities"]["toy_2"]) == rows[name]["p_toy_2"]
    pil_scores = ensemble.predict_pil([Image.open(hostile / name) for name in ("valid_photo_1.jpg", "cmyk.jpg")])
    assert ["{:.8f}".format(s) for s in pil_scores] == [rows["valid_photo_1.jpg"]["score"], rows["cmyk.jpg"]["score"]]


def test_hidden_colour_under_alpha_does_not_change_the_score(toy_ensemble):
    ensemble = fdcore.load_ensemble(toy_ensemble, device="cpu")
    images = [Image.open(io.BytesIO(corpus.png_bytes(corpus.rgba_hiding_green(seed)))) for seed in (None, 1, 2)]
    images += [Image.open(io.BytesIO(corpus.png_bytes(corpus.palette_with_transparency(seed), transparency=0)))
               for seed in (None, 7)]
    scores = ensemble.predict_pil(images)
    assert scores[0] == scores[1] == scores[2] and scores[3] == scores[4]


def test_animation_scores_as_its_first_frame(hostile, toy_ensemble, tmp_path):
    frame_zero = tmp_path / "frame0.png"
    corpus.solid_frames(corpus.ANIMATION_COLOURS)[0].save(frame_zero)
    ensemble = fdcore.load_ensemble(toy_ensemble, device="cpu")
    results = ensemble.predict_paths([frame_zero, hostile / "animated_3frames.gif",
                                      hostile / "animated_3frames.webp", hostile / "tiff_multipage_2pages.tiff"])
    assert len({result["score"] for result in results}) == 1


def test_ensemble_format_validation(toy_ensemble, tmp_path):
    with pytest.raises(EnsembleError, match="appears twice"):
        write_ensemble(tmp_path / "dup", [{"name": "a", "path": "x"}, {"name": "a", "path": "y"}])
    with pytest.raises(EnsembleError, match="relative"):
        write_ensemble(tmp_path / "abs", [{"name": "a", "path": "/etc"}])
    with pytest.raises(EnsembleError, match="not an ensemble"):
        load_ensemble(tmp_path)
    single = load_ensemble(toy_ensemble / "toy_1", device="cpu")
    assert single.kind == "fdcore-expert" and single.names == ["toy"]
    both = load_ensemble(toy_ensemble, device="cpu")
    assert both.identity != load_ensemble(corpus.make_toy_ensemble(tmp_path / "other", seeds=(1, 3))).identity
    bf16 = load_ensemble(toy_ensemble, device="cpu", precision="bf16")
    assert next(bf16.members[0].expert.parameters()).dtype == torch.bfloat16
    image = Image.fromarray(corpus.photo(1))
    assert abs(float(bf16.predict_pil([image])[0]) - float(both.predict_pil([image])[0])) < 0.02
    int8 = load_ensemble(toy_ensemble, device="cpu", precision="int8")
    assert int8.precision == "int8" and not any(type(module) is torch.nn.Linear
                                                 for member in int8.members for module in member.expert.modules())
    assert abs(float(int8.predict_pil([image])[0]) - float(both.predict_pil([image])[0])) < 0.02
    assert int8.identity == both.identity  # the same weights; the precision is recorded beside the identity
    with pytest.raises(EnsembleError, match="CPU only"):
        resolve_precision("int8", "cuda")


def _registered_experts():
    try:
        return set(fdcore.list_experts())
    except Exception:
        return set()


def test_featdistill_layout_scores_equal_an_independent_forward_pass(clean, tmp_path):
    featdistill = pytest.importorskip("fdcore.featdistill", reason="the FeatDistill importer is not installed")
    if not {"clip", "siglip"} <= _registered_experts():
        pytest.skip("the clip and siglip expert plugins are not installed")
    import hashlib

    release = tmp_path / "release"
    release.mkdir()
    experts, tiny = [], {}
    for index, tag in enumerate(["clip", "clip", "siglip", "siglip"], start=1):
        expert_class = fdcore.get_expert_class(tag)
        tiny[tag] = expert_class.tiny_config()
        torch.manual_seed(index)
        expert = expert_class(**tiny[tag]).eval()
        experts.append(expert)
        torch.save(expert.state_dict(), release / f"Expert_{index}_{tag}.pth")
    manifest = {"schema_version": 1, "files": {
        path.name: {"size_bytes": path.stat().st_size, "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
        for path in sorted(release.glob("*.pth"))}}
    (release / "manifest.json").write_text(json.dumps(manifest))
    assert featdistill.is_featdistill_release(release)

    ensemble = load_ensemble(release, device="cpu", expert_config=tiny)
    assert ensemble.kind == "featdistill-release" and ensemble.names == [f"expert_{i}" for i in range(1, 5)]
    assert ensemble.aggregator == "mean" and len(ensemble.geometries) == 2
    out = tmp_path / "out"
    summary = run_predict(PredictOptions(images=str(clean), ensemble=str(release), out=str(out), batch_size=5,
                                         workers=2, quiet=True, per_expert=True), ensemble=ensemble)
    assert summary.exit_code == EXIT_COMPLETE
    rows = read_csv(out / "predictions.csv")
    names = [row["image_name"] for row in rows]
    images = [Image.open(clean / name).convert("RGB") for name in names if name in {
        "valid_photo_1.jpg", "valid_photo_2.jpg", "valid_png.png", "gray8.png", "extra/photo_003.jpg"}]
    chosen = [row for row in rows if row["image_name"] in {
        "valid_photo_1.jpg", "valid_photo_2.jpg", "valid_png.png", "gray8.png", "extra/photo_003.jpg"}]
    with torch.no_grad():
        reference = np.array([expert.probabilities(expert.preprocess(images)).numpy() for expert in experts],
                             dtype=np.float64)
    for column, row in enumerate(chosen):
        assert row["score"] == "{:.8f}".format(reference[:, column].mean())
        for index in range(4):
            assert row[f"p_expert_{index + 1}"] == "{:.8f}".format(reference[index, column])
    assert len({row["score"] for row in chosen}) == len(chosen)
    meta = json.loads((out / "predictions.meta.json").read_text())
    assert meta["ensemble"]["kind"] == "featdistill-release"
    assert meta["ensemble"]["experts"][0]["identity"] == "sha256:" + manifest["files"]["Expert_1_clip.pth"]["sha256"]


HOSTILE_NAMES = ["zz\rvictim.png", "victim.png", "new\nline.png", 'quo"te.png', "com,ma.png", "\ufeffbom.png",
                 "=1+2.png", "+plus.png", "-minus.png", "@at.png", " space .png", "tab\tname.png",
                 "é" * 125 + ".png"]  # the last is 254 bytes: near the file-name limit


def test_every_csv_round_trips_any_file_name_and_rows_cannot_be_forged(toy_ensemble, tmp_path):
    import pandas

    images = tmp_path / "images"
    images.mkdir()
    for index, name in enumerate(HOSTILE_NAMES):
        Image.new("RGB", (40, 40), (index * 20, 30, 60)).save(images / name, format="PNG")
    (images / "=bad\r,name.png").write_bytes(b"not an image")  # an error row with a hostile name
    out = tmp_path / "out"
    summary = run(images, toy_ensemble, out, per_expert=True)
    assert summary.scored == len(HOSTILE_NAMES)
    predictions = read_csv(out / "predictions.csv")
    assert sorted(row["image_name"] for row in predictions) == sorted(HOSTILE_NAMES)
    frame = pandas.read_csv(out / "predictions.csv", keep_default_na=False, dtype=str)
    assert sorted(frame["image_name"]) == sorted(HOSTILE_NAMES)
    scores = {row["image_name"]: row["score"] for row in predictions}
    assert scores["victim.png"] != scores["zz\rvictim.png"]  # the attacker's row did not become the victim's
    errors = read_csv(out / "errors.csv")
    assert [row["image_name"] for row in errors] == ["=bad\r,name.png"]
    assert pandas.read_csv(out / "errors.csv", keep_default_na=False, dtype=str)["image_name"].tolist() == \
        ["=bad\r,name.png"]
    info = pandas.read_csv(out / "image_info.csv", keep_default_na=False, dtype=str)
    assert sorted(info["image_name"]) == sorted(HOSTILE_NAMES)

    safe = tmp_path / "safe"
    run(images, toy_ensemble, safe, excel_safe=True)
    safe_names = sorted(row["image_name"] for row in read_csv(safe / "predictions.csv"))
    assert "'=1+2.png" in safe_names and "'+plus.png" in safe_names and "'-minus.png" in safe_names
    assert "'@at.png" in safe_names and "victim.png" in safe_names and "=1+2.png" not in safe_names
    assert read_csv(safe / "errors.csv")[0]["image_name"] == "'=bad\r,name.png"
    assert json.loads((safe / "predictions.meta.json").read_text())["run"]["excel_safe"] is True


def test_a_run_that_scores_nothing_is_not_a_success(toy_ensemble, tmp_path):
    empty = tmp_path / "empty"
    (empty / "sub").mkdir(parents=True)
    (empty / "notes.txt").write_text("no images here")
    result = fdcore_command("predict", str(empty), "--ensemble", str(toy_ensemble), "--out", str(tmp_path / "o1"))
    assert result.returncode == 2 and "nothing to score" in result.stderr and "Traceback" not in result.stderr
    assert (tmp_path / "o1" / "predictions.csv").read_text() == "image_name,score\n"

    heic = tmp_path / "heic"
    heic.mkdir()
    brand = b"\x00\x00\x00\x18ftypheic\x00\x00\x00\x00mif1heic" + bytes(64)
    (heic / "photo.heic").write_bytes(brand)
    (heic / "clip.avif").write_bytes(brand.replace(b"heic", b"avif"))
    (heic / "renamed.jpg").write_bytes(brand)  # the same bytes, by content
    buffer = io.BytesIO()
    Image.new("RGB", (40, 40), (200, 10, 10)).save(buffer, format="JPEG")
    (heic / "actually_jpeg.heic").write_bytes(buffer.getvalue())  # by content, not by name
    result = fdcore_command("predict", str(heic), "--ensemble", str(toy_ensemble), "--out", str(tmp_path / "o2"))
    assert result.returncode == 3
    errors = {row["image_name"]: row["reason"] for row in read_csv(tmp_path / "o2" / "errors.csv")}
    assert errors == {"photo.heic": "format_not_allowed", "clip.avif": "format_not_allowed",
                      "renamed.jpg": "format_not_allowed"}
    assert [row["image_name"] for row in read_csv(tmp_path / "o2" / "predictions.csv")] == ["actually_jpeg.heic"]
    (heic / "actually_jpeg.heic").unlink()
    result = fdcore_command("predict", str(heic), "--ensemble", str(toy_ensemble), "--out", str(tmp_path / "o3"))
    assert result.returncode == 3 and "nothing was scored" in result.stderr


def test_the_python_api_says_what_it_expects(toy_ensemble, tmp_path):
    ensemble = load_ensemble(toy_ensemble, device="cpu")
    (result,) = ensemble.predict_paths([str(tmp_path)])
    assert result["error"] == "not_regular_file" and str(tmp_path) in result["detail"] and "directory" in result["detail"]
    with pytest.raises(TypeError, match=r"pass \[path\]"):
        ensemble.predict_paths("a.jpg")
    with pytest.raises(TypeError, match=r"pass \[image\]"):
        ensemble.predict_pil(Image.new("RGB", (8, 8)))


def test_a_fusion_rule_returning_nan_is_refused_before_any_image_is_scored(toy_ensemble, clean, tmp_path):
    from fdcore.testing import plugin_registered

    class Broken(fdcore.Aggregator):
        name = "broken-nan"
        description = "returns NaN (test)"

        def fuse(self, probs, weights):
            return probs.mean(dim=0) * float("nan")

    class BrokenPlugin:
        @fdcore.hookimpl
        def register_aggregators(self, register):
            register(Broken)

    with plugin_registered(BrokenPlugin()):
        with pytest.raises(EnsembleError, match="broken-nan"):
            run(clean, toy_ensemble, tmp_path / "out", aggregator="broken-nan")
    assert not (tmp_path / "out" / ".fdcore-predict").exists()  # nothing was scored


def test_a_work_log_line_outside_zero_one_is_dropped_not_fatal(toy_ensemble, clean, tmp_path):
    from fdcore.predict import state, worklog

    out = tmp_path / "out"
    assert run(clean, toy_ensemble, out).exit_code == 0
    expected = (out / "predictions.csv").read_bytes()
    log = next((out / state.WORK_DIR).glob("rows-*.jsonl"))
    lines = log.read_text().splitlines(keepends=True)
    forged = json.loads(lines[0])
    forged["p"] = [1.5, -0.2]
    log.write_text(json.dumps(forged) + "\n" + "".join(lines[1:]))
    assert worklog.read_logs(out / state.WORK_DIR).corrupt_lines == 1
    assert run(clean, toy_ensemble, out).exit_code == 0  # the forged image is simply scored again
    assert (out / "predictions.csv").read_bytes() == expected
