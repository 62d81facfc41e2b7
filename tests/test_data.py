"""fdcore.data: sources (folder, manifest, Hub, disk), specs and mixing, splits, and the torch Dataset."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from fdcore.data.sources import DataError, parse_label, read_manifest, scan_folder
from fdcore.data.spec import data_spec_from_dict, parse_data_option, resolve_data_spec
from fdcore.data.split import near_duplicate_groups, normalized_stem, split_indices, split_train_validation
from fdcore.errors import FdcoreError

AIGC = Path(__file__).resolve().parent.parent.parent / "shared" / "data" / "aigc-sd1x"


def write_image(path: Path, value: int = 0, size=(24, 16), fmt=None, **save) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(value)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(pixels).save(path, format=fmt, **save)
    return path


def touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x")
    return path


# ------------------------------------------------------------------------------------------------------- labels


def test_parse_label_spellings_and_errors():
    for value in (0, "0", "real", " Real ", "authentic", 0.0, "0.0"):
        assert parse_label(value, "here") == 0
    for value in (1, "1", "fake", "AI", "generated", "ai-generated", "synthetic", "1.0"):
        assert parse_label(value, "here") == 1
    for value in (2, "maybe", True, None, ""):
        with pytest.raises(DataError, match="here: .*label"):
            parse_label(value, "here")


# ------------------------------------------------------------------------------------------------------ folders


def test_folder_labels_generators_order_and_skips(tmp_path):
    root = tmp_path / "data"
    touch(root / "Real" / "b.jpg")
    touch(root / "Real" / "sub" / "deep" / "a.PNG")
    touch(root / "FAKE" / "sdxl" / "x.webp")
    touch(root / "FAKE" / "top.gif")
    touch(root / "FAKE" / ".hidden.jpg")
    touch(root / "FAKE" / "._top.gif")
    touch(root / "FAKE" / "notes.txt")
    touch(root / "FAKE" / ".cache" / "y.jpg")
    touch(root / "loose.jpg")
    outside = touch(tmp_path / "secret_outside_root.jpg")
    os.symlink(outside, root / "Real" / "escape.jpg")
    os.symlink(root / "Real" / "b.jpg", root / "Real" / "inside_link.jpg")
    os.symlink(tmp_path, root / "Real" / "loop_dir")
    os.mkfifo(root / "FAKE" / "pipe.jpg")
    with open(os.path.join(os.fsencode(root / "FAKE"), b"bad\xffname.png"), "wb") as handle:
        handle.write(b"x")
    touch(root / "Real" / "emoji 🙂, \"quoted\".jpg")

    listing = scan_folder(str(root))
    rows = [(os.path.relpath(r["path"], root), r["label"], r["generator"]) for r in listing.records]
    assert rows == [
        ("FAKE/sdxl/x.webp", 1, "sdxl"),
        ("FAKE/top.gif", 1, ""),
        ("Real/b.jpg", 0, ""),
        ('Real/emoji 🙂, "quoted".jpg', 0, ""),
        ("Real/inside_link.jpg", 0, ""),
        ("Real/sub/deep/a.PNG", 0, ""),
    ]
    assert all(os.path.isabs(r["path"]) for r in listing.records)
    # the reason codes of fdcore.walk, the one lister (docs/predict.md), plus the two labelling rules
    assert listing.skipped == {"hidden": 2, "appledouble_companion": 1, "ignored_extension": 1,
                               "outside_class_folder": 1, "symlink_outside_root": 2, "not_regular_file": 1,
                               "undecodable_filename": 1}
    assert len(resolve_data_spec(str(root)).load()) == 6
    assert "secret_outside_root" not in json.dumps(listing.records)


def test_cnndetection_layout_and_generator_override(tmp_path):
    for category in ("car", "airplane"):
        touch(tmp_path / category / "0_real" / f"{category}_r.png")
        touch(tmp_path / category / "1_fake" / f"{category}_f.png")
    listing = scan_folder(str(tmp_path), generator="progan")
    rows = [(os.path.relpath(r["path"], tmp_path), r["label"], r["generator"]) for r in listing.records]
    assert rows == [("airplane/0_real/airplane_r.png", 0, "progan"), ("airplane/1_fake/airplane_f.png", 1, "progan"),
                    ("car/0_real/car_r.png", 0, "progan"), ("car/1_fake/car_f.png", 1, "progan")]


def test_folder_errors_name_the_path_and_the_fix(tmp_path):
    with pytest.raises(FdcoreError, match=f"{tmp_path / 'nope'} does not exist"):
        scan_folder(str(tmp_path / "nope"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no real/ and fake/ sub-folders.*found: nothing"):
        scan_folder(str(tmp_path / "empty"))
    touch(tmp_path / "flat" / "cat.jpg")
    with pytest.raises(DataError, match=r"no real/ and fake/ sub-folders \(found: cat.jpg\).*flat/real"):
        scan_folder(str(tmp_path / "flat"))
    (tmp_path / "hollow" / "real").mkdir(parents=True)
    touch(tmp_path / "hollow" / "fake" / "readme.md")
    with pytest.raises(DataError, match="class folders but no image files"):
        scan_folder(str(tmp_path / "hollow"))
    touch(tmp_path / "both" / "fake" / "real" / "x.jpg")
    with pytest.raises(DataError, match="both a real and a fake class folder"):
        scan_folder(str(tmp_path / "both"))


def test_imagefolder_numbering_is_remapped_to_fake_equals_one(tmp_path):
    """datasets' imagefolder numbers classes alphabetically (fake=0, real=1); fdcore reads them by name."""
    import datasets

    write_image(tmp_path / "imf" / "fake" / "f0.png", 1)
    write_image(tmp_path / "imf" / "real" / "r0.png", 2)
    write_image(tmp_path / "imf" / "real" / "r1.png", 3)
    loaded = datasets.load_dataset("imagefolder", data_dir=str(tmp_path / "imf"), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    assert loaded.features["label"].names == ["fake", "real"]
    loaded.save_to_disk(str(tmp_path / "saved"))
    dataset = resolve_data_spec(f"disk:{tmp_path / 'saved'}").load()
    assert sorted(zip([image["path"] for image in dataset["image"]], dataset["label"])) == [
        ("f0.png", 1), ("r0.png", 0), ("r1.png", 0)]
    # and the folder source itself, without imagefolder
    assert sorted((Path(r["path"]).name, r["label"]) for r in scan_folder(str(tmp_path / "imf")).records) == [
        ("f0.png", 1), ("r0.png", 0), ("r1.png", 0)]


# ---------------------------------------------------------------------------------------------------- manifests


def test_csv_manifest_paths_labels_generator_source(tmp_path):
    touch(tmp_path / "imgs" / "a.jpg")
    touch(tmp_path / "imgs" / "b.png")
    touch(tmp_path / "elsewhere.png")
    manifest = tmp_path / "imgs" / "list.csv"
    manifest.write_text("path,label,generator,source,extra\n"
                        "a.jpg,fake,sdxl,,whatever\n"
                        "b.png,0,,coco,1\n"
                        f"{tmp_path / 'elsewhere.png'},AI,mj,,\n", encoding="utf-8")
    listing = read_manifest(str(manifest))
    assert [(Path(r["path"]).name, r["label"], r["generator"], r.get("source")) for r in listing.records] == [
        ("a.jpg", 1, "sdxl", None), ("b.png", 0, "", "coco"), ("elsewhere.png", 1, "mj", None)]
    dataset = resolve_data_spec(f"mine={manifest}").load()
    assert dataset["source"] == ["mine", "coco", "mine"]
    assert dataset["path"][0] == str(tmp_path / "imgs" / "a.jpg")


def test_manifest_errors_name_file_line_and_value(tmp_path):
    touch(tmp_path / "a.jpg")
    bad = tmp_path / "bad.csv"
    bad.write_text("path,label\na.jpg,1\na.jpg,maybe\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{bad}, line 3: bad label 'maybe'"):
        read_manifest(str(bad))
    header = tmp_path / "header.csv"
    header.write_text("file,label\na.jpg,1\n", encoding="utf-8")
    with pytest.raises(DataError, match=rf"{header}: no path column \(have: file, label\)"):
        read_manifest(str(header))
    empty_path = tmp_path / "empty_path.csv"
    empty_path.write_text("path,label\n,1\n", encoding="utf-8")
    with pytest.raises(DataError, match="line 2: empty or missing path"):
        read_manifest(str(empty_path))
    jsonl = tmp_path / "list.jsonl"
    jsonl.write_text('{"path": "a.jpg", "label": 1}\n\n{"path": "a.jpg", "label": \n', encoding="utf-8")
    with pytest.raises(DataError, match=rf"{jsonl}, line 3: not valid JSON"):
        read_manifest(str(jsonl))
    jsonl.write_text('{"path": "a.jpg", "label": true}\n', encoding="utf-8")
    with pytest.raises(DataError, match="line 1: label True is a boolean"):
        read_manifest(str(jsonl))


def test_manifest_missing_files_error_or_skip(tmp_path):
    touch(tmp_path / "there.jpg")
    manifest = tmp_path / "list.jsonl"
    lines = [{"path": "there.jpg", "label": "real"}] + [{"path": f"gone_{i}.jpg", "label": 1} for i in range(7)]
    manifest.write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as error:
        read_manifest(str(manifest))
    message = str(error.value)
    assert "7 listed file(s) do not exist" in message and "line 2: gone_0.jpg" in message
    assert "and 2 more" in message and "--skip-missing" in message and "gone_6" not in message
    listing = read_manifest(str(manifest), missing="skip")
    assert len(listing.records) == 1 and listing.skipped == {"missing_file": 7}
    spec = resolve_data_spec([str(manifest)], skip_missing=True)
    spec.load()
    assert spec.counts["sources"]["list"]["skipped"] == {"missing_file": 7}


# -------------------------------------------------------------------------------------------- Hub and disk sources


def test_hub_offline_error_says_how_to_get_the_data(tmp_path):
    code = ("from fdcore.data.spec import resolve_data_spec\n"
            "from fdcore.errors import FdcoreError\n"
            "try:\n    resolve_data_spec('hub:fdcore-test-org/no-such-data?split=train').load()\n"
            "except FdcoreError as exc:\n    print('ERROR', exc)\n")
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf")}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert result.stdout.startswith("ERROR cannot load Hub dataset 'fdcore-test-org/no-such-data': offline mode"), result
    assert "save_to_disk" in result.stdout and "disk:DIR" in result.stdout


def _embedded_dataset(tmp_path: Path):
    import datasets

    images, flags, makers = [], [], []
    for index in range(6):
        buffer = write_image(tmp_path / "src" / f"{index}.png", index)
        images.append({"bytes": buffer.read_bytes(), "path": None})
        flags.append("yes" if index % 2 else "no")
        makers.append(f"gen{index % 3}")
    features = datasets.Features({"img": datasets.Image(), "is_fake": datasets.Value("string"),
                                  "maker": datasets.Value("string")})
    return datasets.Dataset.from_dict({"img": images, "is_fake": flags, "maker": makers}, features=features)


def test_disk_source_column_mapping_keeps_image_bytes(tmp_path):
    saved = tmp_path / "saved"
    original = _embedded_dataset(tmp_path)
    original.save_to_disk(str(saved))
    before = sorted(os.listdir(saved))
    spec = resolve_data_spec(f"ext=disk:{saved}?image=img&label=is_fake&fake_value=yes&generator_column=maker:2")
    dataset = spec.load()
    assert dataset.column_names == ["path", "image", "label", "generator", "source"]
    assert dataset["label"] == [0, 1, 0, 1, 0, 1]
    assert dataset["generator"] == ["gen0", "gen1", "gen2", "gen0", "gen1", "gen2"]
    assert dataset["source"] == ["ext"] * 6
    assert dataset["path"][4] == f"disk:{saved}#4"
    assert dataset[3]["image"]["bytes"] == (tmp_path / "src" / "3.png").read_bytes()
    assert sorted(os.listdir(saved)) == before, "loading must not write cache files into the user's dataset"
    assert spec.sources[0].weight == 2.0
    with pytest.raises(DataError, match=r"no column 'nope' for label.*columns: img, is_fake, maker"):
        resolve_data_spec(f"disk:{saved}?image=img&label=nope").load()
    with pytest.raises(DataError, match=r"row 0: bad label 'no'"):
        resolve_data_spec(f"disk:{saved}?image=img&label=is_fake").load()
    with pytest.raises(DataError, match="neither fake_value"):
        resolve_data_spec(f"disk:{saved}?image=img&label=is_fake&fake_value=yes&real_value=nah").load()
    with pytest.raises(DataError, match="does not exist"):
        resolve_data_spec(f"disk:{tmp_path / 'absent'}").load()


def test_hub_source_through_load_dataset_on_a_local_dataset_dir(tmp_path):
    """The hub: path runs the real datasets.load_dataset (here on a local folder, since nothing can be downloaded)."""
    for index in range(3):
        write_image(tmp_path / "hubdir" / "fake" / f"f{index}.png", index)
        write_image(tmp_path / "hubdir" / "real" / f"r{index}.png", 10 + index)
    spec = resolve_data_spec(f"hub:{tmp_path / 'hubdir'}?split=train")
    dataset = spec.load(cache_dir=str(tmp_path / "cache"))
    assert sorted(dataset["label"]) == [0, 0, 0, 1, 1, 1]
    labels_by_file = {Path(image["path"]).name: label for image, label in zip(dataset["image"], dataset["label"])}
    assert labels_by_file["f0.png"] == 1 and labels_by_file["r2.png"] == 0
    assert dataset["path"][0].startswith(f"hub:{tmp_path / 'hubdir'}?split=train#")
    streamed = resolve_data_spec(f"hub:{tmp_path / 'hubdir'}?split=train&streaming=1").load(cache_dir=str(tmp_path / "cache"))
    import datasets

    assert isinstance(streamed, datasets.IterableDataset)
    assert sorted(row["label"] for row in streamed) == [0, 0, 0, 1, 1, 1]


# ------------------------------------------------------------------------------------------------ specs and mixing


def test_parse_data_option_forms(tmp_path):
    touch(tmp_path / "d" / "real" / "a.jpg")
    plain = parse_data_option(str(tmp_path / "d"))
    assert (plain.name, plain.kind, plain.weight) == ("d", "folder", 1.0)
    named = parse_data_option(f"train={tmp_path / 'd'}:2.5")
    assert (named.name, named.weight) == ("train", 2.5)
    hub = parse_data_option("ext=hub:org/name?split=test&image=img&label=is_fake&fake_value=1,true:0.5")
    assert (hub.name, hub.kind, hub.location, hub.split, hub.weight) == ("ext", "hub", "org/name", "test", 0.5)
    assert hub.columns.image == "img" and hub.fake_values == ("1", "true")
    assert parse_data_option("hub:org/name").name == "name"
    with pytest.raises(DataError, match="weight must be a finite number > 0"):
        parse_data_option(f"x={tmp_path / 'd'}:0")
    with pytest.raises(DataError, match="unknown option"):
        parse_data_option(f"{tmp_path / 'd'}?colour=red")
    with pytest.raises(DataError, match="does not exist"):
        parse_data_option(str(tmp_path / "missing"))
    with pytest.raises(DataError, match="repeated: d"):
        resolve_data_spec([str(tmp_path / "d"), str(tmp_path / "d")])


def _two_sources(tmp_path: Path, size_a=300, size_b=300):
    for index in range(size_a):
        touch(tmp_path / "a" / ("fake" if index % 2 else "real") / f"a{index:04d}.png")
    for index in range(size_b):
        touch(tmp_path / "b" / ("fake" if index % 2 else "real") / f"b{index:04d}.png")


def test_weighted_mixing_follows_weights_and_seed(tmp_path):
    _two_sources(tmp_path)
    spec = resolve_data_spec([f"a={tmp_path / 'a'}:3", f"b={tmp_path / 'b'}:1"], seed=7)
    assert spec.probabilities == [0.75, 0.25]
    mixed = spec.load()
    first = mixed["source"][:200]
    assert 0.65 < first.count("a") / 200 < 0.85
    # first_exhausted: stops when source a (drawn 3x as often) runs out; no row repeats
    assert mixed["source"].count("a") == 300 and len(set(mixed["path"])) == len(mixed)
    # both classes survive the early stop because each source is shuffled before interleaving
    assert 0.4 < sum(mixed["label"]) / len(mixed) < 0.6
    again = resolve_data_spec([f"a={tmp_path / 'a'}:3", f"b={tmp_path / 'b'}:1"], seed=7).load()
    assert again["path"] == mixed["path"]
    other = resolve_data_spec([f"a={tmp_path / 'a'}:3", f"b={tmp_path / 'b'}:1"], seed=8).load()
    assert other["path"] != mixed["path"]
    record = spec.to_dict()
    json.dumps(record)
    assert record["seed"] == 7 and record["stopping_strategy"] == "first_exhausted"
    assert [source["probability"] for source in record["sources"]] == [0.75, 0.25]
    assert record["counts"]["sources"]["a"]["rows"] == 300 and record["counts"]["mixed"]["rows"] == len(mixed)
    everything = spec.load_all()
    assert len(everything) == 600 and spec.counts["all"] == {"rows": 600, "real": 300, "fake": 300}


def test_yaml_spec_relative_paths_validation_fraction_and_streaming(tmp_path):
    _two_sources(tmp_path, 40, 24)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text("seed: 3\nstopping_strategy: all_exhausted\nsources:\n"
                         "  - {name: first, folder: a, weight: 2}\n"
                         "  - {name: second, path: b, generator: sdxl}\n"
                         "validation: {fraction: 0.25}\n", encoding="utf-8")
    spec = resolve_data_spec([str(spec_file)])
    assert spec.origin == str(spec_file) and spec.sources[0].location == str(tmp_path / "a")
    train, validation = spec.load_splits()
    assert len(validation) == 10 + 6  # a quarter of every (source, label, generator) stratum
    assert not set(train["path"]) & set(validation["path"])
    assert sum(validation["label"]) == 8
    record = spec.to_dict()
    json.dumps(record)
    assert record["validation"] == {"fraction": 0.25, "group": None, "seed": None}
    assert record["counts"]["validation"]["rows"] == 16
    import datasets

    streamed = resolve_data_spec([str(spec_file)], streaming=True).load()
    assert isinstance(streamed, datasets.IterableDataset)
    rows = list(streamed)
    assert {row["source"] for row in rows} == {"first", "second"}
    assert {row["generator"] for row in rows if row["source"] == "second"} == {"sdxl"}
    with pytest.raises(DataError, match="unknown key"):
        data_spec_from_dict({"sources": [{"folder": "a", "wieght": 2}]}, str(tmp_path))
    with pytest.raises(DataError, match="exactly one of folder, manifest, hub, disk or path"):
        data_spec_from_dict({"sources": [{"name": "x"}]}, str(tmp_path))
    with pytest.raises(DataError, match="must be the only --data value"):
        resolve_data_spec([str(spec_file), str(tmp_path / "a")])


def test_validation_block_with_its_own_sources(tmp_path):
    _two_sources(tmp_path, 10, 6)
    touch(tmp_path / "c" / "fake" / "c0.png")
    spec = data_spec_from_dict({"sources": [{"folder": "a"}],
                                "validation": {"sources": [{"folder": "b", "weight": 5}, {"folder": "c"}]}},
                               base_dir=str(tmp_path))
    train, validation = spec.load_splits()
    assert len(train) == 10 and len(validation) == 7  # every validation image once, whatever the weights
    assert spec.to_dict()["validation"]["data"]["sources"][0]["name"] == "b"
    assert spec.counts["validation"]["rows"] == 7 and spec.counts["validation"]["fake"] == 4
    assert spec.counts["mixed"] == {"rows": 10, "real": 5, "fake": 5}


# --------------------------------------------------------------------------------------------------------- splits


def test_split_indices_stratified_deterministic_and_grouped():
    strata = [(label, generator) for label, generator in
              [(0, "")] * 40 + [(1, "a")] * 30 + [(1, "b")] * 10]
    train, validation = split_indices(strata, 0.2, seed=1)
    assert split_indices(strata, 0.2, seed=1) == (train, validation)
    assert split_indices(strata, 0.2, seed=2) != (train, validation)
    assert sorted(train + validation) == list(range(80))
    counts = {key: sum(strata[i] == key for i in validation) for key in set(strata)}
    assert counts == {(0, ""): 8, (1, "a"): 6, (1, "b"): 2}
    groups = [index // 4 for index in range(80)]  # 20 groups of 4
    train, validation = split_indices(strata, 0.25, seed=0, groups=groups)
    assert not {groups[i] for i in train} & {groups[i] for i in validation}
    assert abs(len(validation) - 20) <= 4  # whole groups of 4: within one group of the target


def test_split_by_filename_keeps_copies_together(tmp_path):
    for index in range(12):
        touch(tmp_path / "d" / "real" / f"photo{index}.jpg")
        touch(tmp_path / "d" / "real" / f"photo{index} (1).jpg")
        touch(tmp_path / "d" / "fake" / f"img{index}_copy.png")
        touch(tmp_path / "d" / "fake" / f"IMG{index}.png")
    assert normalized_stem("/x/IMG_1 (2).JPG") == "img_1" and normalized_stem("a_copy 2.png") == "a"
    assert normalized_stem("diffusion_000011.jpg") == "diffusion_000011"
    dataset = resolve_data_spec(str(tmp_path / "d")).load()
    train, validation = split_train_validation(dataset, 0.25, seed=5, group="filename")
    stems = lambda part: {normalized_stem(path) for path in part["path"]}  # noqa: E731
    assert not stems(train) & stems(validation)
    assert len(validation) == 12 and sum(validation["label"]) == 6


def test_near_duplicate_groups_are_transitive():
    hashes = [0b0000, 0b0011, 0b1111_0000_0000, 0b0111, 2**63 + 2**62 + 2**61]
    assert near_duplicate_groups(hashes, max_bits=1) == [0, 1, 2, 1, 4]
    assert near_duplicate_groups(hashes, max_bits=2) == [0, 0, 2, 0, 4]


@pytest.mark.skipif(not AIGC.is_dir(), reason="../shared/data/aigc-sd1x is not present")
def test_aigc_near_duplicate_pair_never_straddles_the_split():
    from fdcore.data.split import group_keys

    dataset = resolve_data_spec(str(AIGC / "manifest.csv")).load()
    pair = [str(AIGC / "fake" / "diffusion_000011.jpg"), str(AIGC / "fake" / "diffusion_000261.jpg")]
    keys = group_keys(dataset, "dhash")
    where = {path: key for path, key in zip(dataset["path"], keys)}
    assert where[pair[0]] == where[pair[1]]
    assert len(set(keys)) > 900, "near-duplicate grouping must not merge unrelated images"
    train, validation = split_train_validation(dataset, 0.5, seed=0, group="dhash")
    assert set(pair) <= set(train["path"]) or set(pair) <= set(validation["path"])
    with_groups = dataset.add_column("dup", keys)
    for seed in range(1, 6):
        train, validation = split_train_validation(with_groups, 0.5, seed=seed, group="dup")
        assert set(pair) <= set(train["path"]) or set(pair) <= set(validation["path"])
        assert len(validation) == pytest.approx(480, abs=2)
        assert sum(validation["label"]) == pytest.approx(240, abs=2)


# --------------------------------------------------------------------------------------------- torch Dataset


def _noise_degrade(image, rng):
    amount = float(rng.uniform(0, 40))
    noisy = np.clip(image.astype(np.float32) + rng.normal(0, amount, image.shape), 0, 255).astype(np.uint8)
    return noisy, {"op": "noise", "sigma": round(amount, 6)}


def _image_rows(tmp_path: Path, count: int = 8):
    for index in range(count):
        kind = "fake" if index % 2 else "real"
        write_image(tmp_path / "d" / kind / f"{index}.png", index, size=(40 + index, 30), fmt="PNG")
    return resolve_data_spec(str(tmp_path / "d")).load()


def test_detection_dataset_items_and_collate(tmp_path):
    import torch

    from fdcore import Preprocessing
    from fdcore.data.torch_dataset import DetectionDataset, collate_samples, seeded_degrade

    source = _image_rows(tmp_path)
    small = Preprocessing(size=16, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    other = Preprocessing(size=16, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    big = Preprocessing(size=24, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5), resize="squash")
    single = DetectionDataset(source, small)
    item = single[3]
    assert item["pixels"].shape == (3, 16, 16) and item["label"] == source[3]["label"] and item["index"] == 3
    assert item["degradation"] == "null" and item["path"] == source[3]["path"]
    image = Image.open(source[3]["path"]).convert("RGB")
    assert torch.equal(item["pixels"], small.normalize(np.array(small.resize_image(image))))

    degrade = seeded_degrade(_noise_degrade, seed=11)
    multi = DetectionDataset(source, {"a": small, "b": other, "c": big}, degrade=degrade, views=2, epoch=2)
    item = multi[5]
    assert set(item["pixels"]) == {"a", "b", "c"} and item["pixels"]["c"].shape == (3, 24, 24)
    # experts sharing a geometry share one resize: a and b differ only by normalisation
    assert torch.allclose(item["pixels"]["a"] * 0.25 + 0.5, item["pixels"]["b"], atol=1e-6)
    record, record2 = json.loads(item["degradation"]), json.loads(item["degradation_view2"])
    assert (record["seed"], record["epoch"], record["index"], record["view"]) == (11, 2, 5, 0) and record2["view"] == 1
    assert record["record"] != record2["record"] and not torch.equal(item["pixels"]["a"], item["pixels_view2"]["a"])
    again = DetectionDataset(source, {"a": small, "b": other, "c": big}, degrade=degrade, views=2, epoch=2)[5]
    assert torch.equal(again["pixels_view2"]["c"], item["pixels_view2"]["c"])
    multi.use_epoch(3)
    assert json.loads(multi[5]["degradation"])["record"] != record["record"]

    batch = collate_samples([multi[0], multi[1], multi[2]])
    assert batch["pixels"]["a"].shape == (3, 3, 16, 16) and batch["pixels_view2"]["c"].shape == (3, 3, 24, 24)
    assert batch["label"].dtype == torch.long and batch["index"].tolist() == [0, 1, 2]
    assert isinstance(batch["degradation"], list) and len(batch["path"]) == 3

    with pytest.raises(TypeError, match="view= keyword"):
        DetectionDataset(source, small, degrade=lambda image, index, epoch: (image, {}), views=2)


def test_native_resolution_crop_preprocessing():
    from fdcore.preprocess import Preprocessing

    array = np.random.default_rng(0).integers(0, 256, (48, 40, 3), dtype=np.uint8)
    crop = Preprocessing(size=16, mean=(0.0,) * 3, std=(1.0,) * 3, resize="crop")
    assert np.array_equal(np.asarray(crop.resize_image(Image.fromarray(array))), array[16:32, 12:28])  # no resampling
    assert crop.resize_image(Image.fromarray(array[:10, :12])).size == (16, 16)  # too small: enlarged first
    with pytest.raises(ValueError, match="resize must be one of"):
        Preprocessing(size=16, mean=(0.0,) * 3, std=(1.0,) * 3, resize="zoom")


def test_random_native_crops_are_seeded_windows_of_the_original(tmp_path):
    from fdcore.data import DetectionDataset
    from fdcore.preprocess import Preprocessing

    path = write_image(tmp_path / "d" / "fake" / "a.png", 3, size=(40, 30))
    write_image(tmp_path / "d" / "real" / "b.png", 4, size=(12, 10))  # smaller than the crop: enlarged instead
    rows = resolve_data_spec(str(tmp_path / "d")).load()
    original = np.asarray(Image.open(path))
    crop = Preprocessing(size=16, mean=(0.0,) * 3, std=(1.0,) * 3, resize="crop")
    dataset = DetectionDataset(rows, crop, random_crop_seed=7)
    index = [p.endswith("a.png") for p in rows["path"]].index(True)

    def window(epoch):
        dataset.use_epoch(epoch)
        pixels = np.rint(dataset[index]["pixels"].permute(1, 2, 0).numpy() * 255).astype(np.uint8)
        found = [(top, left) for top in range(30 - 15) for left in range(40 - 15)
                 if np.array_equal(original[top:top + 16, left:left + 16], pixels)]
        assert len(found) == 1
        return found[0]

    first = window(0)
    assert window(0) == first
    assert len({window(epoch) for epoch in range(6)}) > 1  # a new window each epoch
    assert dataset[1 - index]["pixels"].shape == (3, 16, 16)
    centred = DetectionDataset(rows, crop)  # without a seed: the evaluation's centre crop
    assert np.allclose(centred[index]["pixels"].permute(1, 2, 0).numpy() * 255, original[7:23, 12:28], atol=1e-3)


def test_dataloader_workers_do_not_change_samples(tmp_path):
    import torch

    from fdcore import Preprocessing
    from fdcore.data.torch_dataset import DetectionDataset, collate_samples, seeded_degrade

    source = _image_rows(tmp_path, 8)
    dataset = DetectionDataset(source, Preprocessing(size=16, mean=(0.5,) * 3, std=(0.25,) * 3),
                               degrade=seeded_degrade(_noise_degrade, seed=3), views=2, epoch=1)

    def run(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=3, num_workers=workers, collate_fn=collate_samples)
        return list(loader)

    serial, parallel = run(0), run(2)
    assert len(serial) == len(parallel) == 3
    for one, two in zip(serial, parallel):
        assert torch.equal(one["pixels"], two["pixels"]) and torch.equal(one["pixels_view2"], two["pixels_view2"])
        assert one["degradation"] == two["degradation"] and torch.equal(one["label"], two["label"])


def test_exif_orientation_applied_and_bad_files_named(tmp_path):
    from fdcore import Preprocessing
    from fdcore.data.sources import open_image_rgb
    from fdcore.data.torch_dataset import DetectionDataset

    pixels = np.zeros((30, 40, 3), dtype=np.uint8)
    pixels[:5] = (255, 0, 0)  # red band on top as stored
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "d" / "real" / "rotated.jpg"
    path.parent.mkdir(parents=True)
    Image.fromarray(pixels).save(path, exif=exif, quality=95)
    image = open_image_rgb(str(path))
    assert image.size == (30, 40)
    array = np.asarray(image)
    assert array[:, -3:, 0].mean() > 200 and array[:, :3, 0].mean() < 60  # rotated 90 degrees clockwise
    (tmp_path / "d" / "fake").mkdir()
    (tmp_path / "d" / "fake" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    dataset = DetectionDataset(resolve_data_spec(str(tmp_path / "d")).load(), Preprocessing(16, (0, 0, 0), (1, 1, 1)))
    with pytest.raises(DataError, match=r"sample 0: .*broken.png"):
        dataset[0]
    assert dataset[1]["pixels"].shape == (3, 16, 16)


def test_streaming_dataset_is_worker_independent(tmp_path):
    import torch

    from fdcore import Preprocessing
    from fdcore.data.torch_dataset import DetectionDataset, StreamingTrainingSet, collate_samples, seeded_degrade
    from fdcore.seeding import row_index

    _image_rows(tmp_path, 8)
    stream = resolve_data_spec(str(tmp_path / "d"), streaming=True).load()
    items = DetectionDataset([], Preprocessing(size=16, mean=(0.5,) * 3, std=(0.25,) * 3),
                             degrade=seeded_degrade(_noise_degrade, seed=5), epoch=0)
    dataset = StreamingTrainingSet(stream, items, batch_size=2, steps_per_epoch=4)
    dataset.start_epoch(0)

    def run(workers):
        loader = torch.utils.data.DataLoader(dataset, batch_size=2, num_workers=workers, collate_fn=collate_samples)
        items = {}
        for batch in loader:
            for position, path in enumerate(batch["path"]):
                items[path] = (batch["pixels"][position], batch["degradation"][position], int(batch["index"][position]))
        return items

    serial, parallel = run(0), run(2)
    assert len(serial) == 8 and serial.keys() == parallel.keys()
    for path, (pixels, record, key) in serial.items():
        assert torch.equal(pixels, parallel[path][0]) and record == parallel[path][1]
        assert key == row_index(path) == json.loads(record)["index"]


def test_importing_the_data_package_is_cheap():
    code = ("import sys, fdcore.data, fdcore.data.spec, fdcore.data.check\n"
            "print(sorted(name for name in ('datasets', 'torch', 'PIL.Image') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True)
    assert result.stdout.strip() == "[]"


def test_sha256_groups_for_embedded_and_file_images(tmp_path):
    from fdcore.data.split import group_keys

    saved = tmp_path / "saved"
    _embedded_dataset(tmp_path).save_to_disk(str(saved))
    embedded = resolve_data_spec(f"disk:{saved}?image=img&label=is_fake&fake_value=yes").load()
    keys = group_keys(embedded, "sha256")
    import hashlib

    assert keys[2] == hashlib.sha256((tmp_path / "src" / "2.png").read_bytes()).hexdigest() and len(set(keys)) == 6
    write_image(tmp_path / "d" / "real" / "a.png", 1)
    write_image(tmp_path / "d" / "fake" / "same_as_a.png", 1)
    write_image(tmp_path / "d" / "fake" / "b.png", 2)
    files = resolve_data_spec(str(tmp_path / "d")).load()
    keys = group_keys(files, "sha256")
    assert keys[files["path"].index(str(tmp_path / "d" / "real" / "a.png"))] == keys[
        files["path"].index(str(tmp_path / "d" / "fake" / "same_as_a.png"))]
    with pytest.raises(DataError, match="neither a column"):
        group_keys(files, "colour")


def test_data_split_writes_disjoint_stratified_manifests_with_duplicates_on_one_side(tmp_path):
    import csv as _csv

    from conftest import fdcore_command, make_learnable_folder

    root = make_learnable_folder(tmp_path / "data", per_class=30, size=32)
    (root / "fake" / "copy_of_000.png").write_bytes((root / "fake" / "000.png").read_bytes())
    result = fdcore_command("data", "split", str(root), "--out", str(tmp_path / "split"), "--seed", "4", check=True)
    assert "train.csv" in result.stdout and "test.csv" in result.stdout
    parts = {}
    for name in ("train", "validation", "test"):
        with open(tmp_path / "split" / f"{name}.csv", newline="") as handle:
            parts[name] = list(_csv.DictReader(handle))
    paths = {name: {row["path"] for row in rows} for name, rows in parts.items()}
    assert sum(len(p) for p in paths.values()) == 61 and not (paths["train"] & paths["test"])
    assert not (paths["train"] & paths["validation"]) and not (paths["validation"] & paths["test"])
    assert 10 <= len(paths["test"]) <= 14 and 4 <= len(paths["validation"]) <= 8
    assert {row["label"] for row in parts["test"]} == {"0", "1"}
    original, copy = str((root / "fake" / "000.png").resolve()), str((root / "fake" / "copy_of_000.png").resolve())
    assert [original in p for p in paths.values()] == [copy in p for p in paths.values()]
    again = fdcore_command("data", "split", str(root), "--out", str(tmp_path / "again"), "--seed", "4", check=True)
    assert again.returncode == 0
    assert (tmp_path / "again" / "test.csv").read_bytes() == (tmp_path / "split" / "test.csv").read_bytes()
    assert len(resolve_data_spec(str(tmp_path / "split" / "train.csv")).load()) == len(paths["train"])
    refused = fdcore_command("data", "split", str(root), "--out", str(tmp_path / "split"))
    assert refused.returncode == 2 and "not empty" in refused.stderr
