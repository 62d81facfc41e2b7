"""fdcore predict on manifests (CSV, JSONL, Parquet, text) of local paths, file:// and http:// URLs served on loopback:
the same scores as the folder, every failure a reason code, bounded retries, size limits, resume by key."""

import csv
import os
import json
import random

import pytest

import predict_corpus as corpus
from conftest import fdcore_command
from fdcore.data.sources import DataError
from fdcore.predict import EXIT_COMPLETE, EXIT_PARTIAL, run_predict
from loopback_http import closed_port, serve_folder

NAMES = ["valid_photo_1.jpg", "valid_photo_2.jpg", "valid_png.png", "valid_webp.webp", "gray8.png", "cmyk.jpg"]


@pytest.fixture(scope="module")
def toy_ensemble(tmp_path_factory):
    return corpus.make_toy_ensemble(tmp_path_factory.mktemp("ensemble") / "toy")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("served") / "images"
    corpus.build_valid(root, count=4)
    for path in list(root.iterdir()):
        if path.name not in NAMES:
            (path.unlink() if path.is_file() or path.is_symlink() else None)
    return root


@pytest.fixture(scope="module")
def folder_scores(images, toy_ensemble, tmp_path_factory):
    out = tmp_path_factory.mktemp("folder") / "out"
    summary = run(images, toy_ensemble, out)
    assert summary.exit_code == EXIT_COMPLETE
    return {row["image_name"]: row for row in read_csv(out / "predictions.csv")}


read_csv = corpus.read_csv


def run(images, ensemble, out, **options):
    return run_predict(corpus.scoring_options(images, ensemble, out, **options))


def write_csv(path, header, rows):
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_every_manifest_format_scores_exactly_like_the_folder(images, toy_ensemble, folder_scores, tmp_path):
    """Local paths, file:// and http:// URLs, in CSV, JSONL, Parquet and text: the same bytes of score per image."""
    import pyarrow
    import pyarrow.parquet

    with serve_folder(images) as server:
        locations = {}
        for index, name in enumerate(NAMES):
            kind = index % 3
            locations[name] = (f"{server.url}/img/{name}" if kind == 0 else
                               f"file://{images / name}" if kind == 1 else f"images/{name}")
        rows = [(f"id-{name}", locations[name]) for name in NAMES]
        manifests = {
            "csv": write_csv(images.parent / "list.csv", ["id", "path"], rows),
            "jsonl": images.parent / "list.jsonl",
            "parquet": images.parent / "list.parquet",
            "txt": images.parent / "list.txt",
        }
        manifests["jsonl"].write_text("".join(json.dumps({"ID": key, "url": location}) + "\n"
                                              for key, location in rows), encoding="utf-8")
        pyarrow.parquet.write_table(pyarrow.table({"id": [key for key, _ in rows],
                                                   "uri": [location for _, location in rows]}),
                                    manifests["parquet"])
        manifests["txt"].write_text("# one location per line\n\n" + "\n".join(locations.values()) + "\n",
                                    encoding="utf-8")
        outputs = {}
        for kind, manifest in manifests.items():
            out = tmp_path / kind
            summary = run(manifest, toy_ensemble, out, allow_private_urls=True)
            assert summary.exit_code == EXIT_COMPLETE and summary.scored == len(NAMES), (kind, summary.reasons)
            outputs[kind] = out
    for kind in ("csv", "jsonl", "parquet"):
        assert (outputs[kind] / "predictions.csv").read_bytes() == (outputs["csv"] / "predictions.csv").read_bytes()
    by_id = {row["image_name"]: row for row in read_csv(outputs["csv"] / "predictions.csv")}
    by_location = {row["image_name"]: row for row in read_csv(outputs["txt"] / "predictions.csv")}
    for name in NAMES:
        expected = {key: value for key, value in folder_scores[name].items() if key != "image_name"}
        assert {k: v for k, v in by_id[f"id-{name}"].items() if k != "image_name"} == expected
        assert {k: v for k, v in by_location[locations[name]].items() if k != "image_name"} == expected
    meta = json.loads((outputs["parquet"] / "predictions.meta.json").read_text())
    assert meta["input"]["kind"] == "manifest" and meta["input"]["format"] == "parquet"
    assert len(meta["input"]["sha256"]) == 64 and meta["columns"]["image_name"].startswith("the manifest's id")
    info = {row["image_name"]: row for row in read_csv(outputs["csv"] / "image_info.csv")}
    assert info["id-cmyk.jpg"]["mode"] == "CMYK"


def test_each_url_failure_is_one_reason_code_and_transient_ones_are_retried(images, toy_ensemble, tmp_path):
    with serve_folder(images, slow_s=2.0) as server:
        rows = [
            ("ok", f"{server.url}/img/valid_png.png"),
            ("redirected", f"{server.url}/redirect/gray8.png"),
            ("flaky", f"{server.url}/flaky/2/valid_photo_1.jpg"),  # two 503s, then the image: scored on try 3
            ("missing", f"{server.url}/status/404"),
            ("forbidden", f"{server.url}/status/403"),
            ("teapot", f"{server.url}/status/418"),
            ("overloaded", f"{server.url}/status/503"),
            ("slow", f"{server.url}/slow/valid_png.png"),
            ("declared-big", f"{server.url}/big"),
            ("endless", f"{server.url}/endless"),
            ("text", f"{server.url}/text"),
            ("down", f"http://127.0.0.1:{closed_port()}/x.png"),
            ("ftp", "ftp://example.com/x.png"),
            ("chained", "simplecache::https://example.com/x.png"),
            ("gone-local", "images/no-such-file.png"),
        ]
        manifest = write_csv(tmp_path / "list.csv", ["id", "path"], rows)
        out = tmp_path / "out"
        summary = run(manifest, toy_ensemble, out, allow_private_urls=True, timeout_s=0.5, retries=2,
                      max_bytes=1024 * 1024)
        requests = dict(server.requests)
    assert summary.exit_code == EXIT_PARTIAL
    assert sorted(row["image_name"] for row in read_csv(out / "predictions.csv")) == ["flaky", "ok", "redirected"]
    reasons = {row["image_name"]: row["reason"] for row in read_csv(out / "errors.csv")}
    assert reasons == {"missing": "not_found", "forbidden": "access_denied", "teapot": "remote_error",
                       "overloaded": "server_error", "slow": "timeout", "declared-big": "too_large",
                       "endless": "too_large", "text": "not_an_image", "down": "unreachable",
                       "ftp": "unsupported_url", "chained": "unsupported_url", "gone-local": "not_found"}
    assert requests.get(("GET", "/big"), 0) == 0  # refused from the declared size: nothing downloaded
    tries = requests[("HEAD", "/status/503")]
    assert tries == 3  # 1 + --retries 2, then given up
    assert requests[("HEAD", "/status/404")] == 1  # a final answer is not retried
    details = {row["image_name"]: row["detail"] for row in read_csv(out / "errors.csv")}
    assert "after 3 attempts" in details["overloaded"] and "--max-bytes" in details["declared-big"]


def test_private_addresses_are_refused_unless_allowed(images, toy_ensemble, tmp_path):
    with serve_folder(images) as server:
        manifest = write_csv(tmp_path / "list.csv", ["path"], [(f"{server.url}/img/valid_png.png",),
                                                               (f"{server.url.replace('127.0.0.1', 'localhost')}"
                                                                "/img/gray8.png",)])
        summary = run(manifest, toy_ensemble, tmp_path / "out")
        assert not server.requests  # not one connection was made
    assert summary.scored == 0 and summary.reasons == {"address_not_allowed": 2}
    assert "--allow-private-urls" in read_csv(tmp_path / "out" / "errors.csv")[0]["detail"]


def test_resume_matches_by_key_retries_transient_failures_and_ignores_order(images, toy_ensemble, tmp_path):
    with serve_folder(images) as server:
        rows = [(f"k{index}", f"{server.url}/img/{name}") for index, name in enumerate(NAMES)]
        rows.append(("later", f"{server.url}/flaky/4/valid_png.png"))  # fails 3 tries in run 1, works in run 2
        manifest = write_csv(tmp_path / "list.csv", ["id", "path"], rows[:4] + rows[-1:])
        out = tmp_path / "out"
        first = run(manifest, toy_ensemble, out, allow_private_urls=True, retries=2, workers=2, batch_size=2)
        assert first.exit_code == EXIT_PARTIAL and first.reasons == {"server_error": 1}
        fetched = {path for (method, path) in server.requests if method == "GET"}
        shuffled = rows[:]
        random.Random(3).shuffle(shuffled)
        write_csv(manifest, ["id", "path"], shuffled)  # grown and reordered
        before = dict(server.requests)
        second = run(manifest, toy_ensemble, out, allow_private_urls=True, retries=2, batch_size=3)
        refetched = {path for (method, path), count in server.requests.items()
                     if method == "GET" and count > before.get((method, path), 0)}
        fresh = run(manifest, toy_ensemble, tmp_path / "fresh", allow_private_urls=True, retries=2, batch_size=5)
    assert second.exit_code == EXIT_COMPLETE and second.reused == 4 and second.processed_this_run == 3
    assert not refetched & (fetched - {"/flaky/4/valid_png.png"})  # what was scored is not downloaded again
    for name in ("predictions.csv", "errors.csv", "image_info.csv"):
        assert (out / name).read_bytes() == (tmp_path / "fresh" / name).read_bytes()
    assert fresh.exit_code == EXIT_COMPLETE


def test_a_bad_manifest_is_a_clear_error_before_any_work(toy_ensemble, tmp_path):
    duplicate = write_csv(tmp_path / "dup.csv", ["id", "path"], [("a", "x.png"), ("b", "y.png"), ("a", "z.png")])
    with pytest.raises(DataError, match=r"line 4: the key 'a' was already used at line 2"):
        run(duplicate, toy_ensemble, tmp_path / "out1")
    no_path = write_csv(tmp_path / "nopath.csv", ["id", "file"], [("a", "x.png")])
    with pytest.raises(DataError, match="no path column"):
        run(no_path, toy_ensemble, tmp_path / "out2")
    with pytest.raises(DataError, match=r"no 'where' column \(have: file, id\)"):
        run(no_path, toy_ensemble, tmp_path / "out2", path_column="Where")
    with pytest.raises(DataError, match=r"no 'key' column"):
        run(no_path, toy_ensemble, tmp_path / "out2", path_column="file", id_column="key")
    latin = tmp_path / "latin.txt"
    latin.write_bytes(b"caf\xe9.png\n")
    with pytest.raises(DataError, match="not UTF-8"):
        run(latin, toy_ensemble, tmp_path / "out3")
    other = tmp_path / "list.xlsx"
    other.write_bytes(b"PK")
    with pytest.raises(DataError, match="neither a folder nor a manifest"):
        run(other, toy_ensemble, tmp_path / "out4")
    s3 = write_csv(tmp_path / "s3.csv", ["path"], [("s3://bucket/a.png",)])
    result = fdcore_command("predict", str(s3), "--ensemble", str(toy_ensemble), "--out", str(tmp_path / "out5"))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "pip install s3fs" in result.stderr
    assert not (tmp_path / "out5").exists()


def test_columns_are_chosen_by_option_and_the_cli_reads_a_manifest(images, toy_ensemble, folder_scores, tmp_path):
    manifest = write_csv(images.parent / "custom.csv", ["name", "where"],
                         [("first", "images/valid_png.png"), ("second", "images/gray8.png")])
    out = tmp_path / "out"
    result = fdcore_command("predict", str(manifest), "--ensemble", str(toy_ensemble), "--out", str(out),
                            "--path-column", "where", "--id-column", "name", "--per-expert", "--workers", "0")
    assert result.returncode == 0, result.stderr
    scores = {row["image_name"]: row["score"] for row in read_csv(out / "predictions.csv")}
    assert scores == {"first": folder_scores["valid_png.png"]["score"], "second": folder_scores["gray8.png"]["score"]}


def test_a_labelled_parquet_manifest_of_urls_evaluates_with_predicts_scores(images, toy_ensemble, folder_scores,
                                                                            tmp_path, monkeypatch):
    import pyarrow
    import pyarrow.parquet

    from fdcore.ensemble_io import load_ensemble
    from fdcore.evaluation import VariantPlan, load_rows, score_dataset

    with serve_folder(images) as server:
        locations = [f"{server.url}/img/{name}" if index % 2 else f"images/{name}" for index, name in enumerate(NAMES)]
        manifest = images.parent / "labelled.parquet"
        pyarrow.parquet.write_table(pyarrow.table({"path": locations, "label": [index % 2 for index in range(len(NAMES))]}),
                                    manifest)
        _, rows = load_rows(str(manifest))
        plan = VariantPlan(clean=True, suite=None, copies=0, sweep_operators=(), seed=0)
        local_only, skipped = score_dataset(load_ensemble(str(toy_ensemble)), rows, plan)
        assert len(local_only) == len(skipped) == len(NAMES) // 2  # URLs to 127.0.0.1 are private: refused
        assert all("address_not_allowed" in item["reason"] and "FDCORE_ALLOW_PRIVATE_URLS=1" in item["reason"]
                   for item in skipped)
        monkeypatch.setenv("FDCORE_ALLOW_PRIVATE_URLS", "1")
        records, skipped = score_dataset(load_ensemble(str(toy_ensemble)), rows, plan)
    assert not skipped and len(records) == len(NAMES)
    for record, name in zip(sorted(records, key=lambda r: NAMES.index(os.path.basename(r["path"]))), NAMES):
        assert f"{record['score']:.8f}" == folder_scores[name]["score"]


def test_the_python_api_scores_urls_like_files(images, toy_ensemble, folder_scores):
    from fdcore.ensemble_io import load_ensemble
    from fdcore.remote import FetchPolicy

    ensemble = load_ensemble(str(toy_ensemble))
    with serve_folder(images) as server:
        url = f"{server.url}/img/valid_png.png"
        allowed, refused = (ensemble.predict_paths([url, str(images / "gray8.png")],
                                                   fetch=FetchPolicy(allow_private_addresses=True)),
                            ensemble.predict_paths([url]))
    assert f"{allowed[0]['score']:.8f}" == folder_scores["valid_png.png"]["score"]
    assert f"{allowed[1]['score']:.8f}" == folder_scores["gray8.png"]["score"]
    assert refused[0]["error"] == "address_not_allowed" and refused[0]["score"] is None


def test_hostile_keys_round_trip_and_cannot_forge_rows(images, toy_ensemble, folder_scores, tmp_path):
    """RELIABILITY 29 for manifest keys: whatever an id holds, each item is one row that reads back exactly."""
    import pandas

    keys = ["a,b", 'q"uote', "new\nline", "cr\rx", "=1+2", "+SUM(A1)", "-3", "@cmd", "\ufeffbom", "tab\tkey",
            "x" * 255, "ok\n" + "forged,0.99999999"]
    manifest = images.parent / "hostile-keys.jsonl"
    manifest.write_text("".join(json.dumps({"id": key, "path": "images/gray8.png"}) + "\n" for key in keys),
                        encoding="utf-8")
    out = tmp_path / "out"
    summary = run(manifest, toy_ensemble, out)
    assert summary.exit_code == EXIT_COMPLETE and summary.scored == len(keys)
    rows = read_csv(out / "predictions.csv")
    assert sorted(row["image_name"] for row in rows) == sorted(keys)
    assert {row["score"] for row in rows} == {folder_scores["gray8.png"]["score"]}
    frame = pandas.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False)
    assert sorted(frame["image_name"]) == sorted(keys) and len(frame) == len(keys)


def test_a_manifest_cannot_block_exhaust_or_crash_the_reader(images, toy_ensemble, tmp_path):
    """RELIABILITY 16/31 for manifests: a FIFO is never opened; a giant field, deep JSON nesting and a manifest
    of nothing scorable are clear errors or reason codes, never a hang or a traceback."""
    fifo = images.parent / "pipe.png"
    if not fifo.exists():
        os.mkfifo(fifo)
    manifest = write_csv(tmp_path / "fifo.csv", ["path"], [(str(fifo),), (str(images / "gray8.png"),)])
    summary = run(manifest, toy_ensemble, tmp_path / "out-fifo")  # would block forever if the FIFO were opened
    assert summary.scored == 1 and summary.reasons == {"not_regular_file": 1}

    giant = tmp_path / "giant.csv"
    giant.write_text("path\n" + "a" * 200_000 + ".png\n", encoding="utf-8")
    deep = tmp_path / "deep.jsonl"
    deep.write_text("[" * 200_000 + "]" * 200_000 + "\n", encoding="utf-8")
    nothing = write_csv(tmp_path / "nothing.csv", ["path"], [("ftp://example.com/a.png",), ("gopher://x/y",)])
    for bad, message in ((giant, "not a readable CSV file"), (deep, "line 1: not valid JSON"),
                         (nothing, "nothing to score")):
        result = fdcore_command("predict", str(bad), "--ensemble", str(toy_ensemble), "--out",
                                str(tmp_path / f"out-{bad.stem}"), timeout=60)
        assert result.returncode == 2, (bad, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr
