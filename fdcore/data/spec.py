"""Data specs: which sources to read, how to weight them, how to hold out validation data, and what was loaded.

A spec comes from a folder, a manifest, a YAML file, or ``--data name=LOCATION:WEIGHT`` strings; ``DataSpec.load()``
returns one ``datasets`` Dataset (or IterableDataset when streaming) and records counts, so that
``DataSpec.to_dict()`` is the JSON a run stores to say exactly which data it saw.
"""

from __future__ import annotations

import dataclasses
import os
import re
import urllib.parse
from typing import Any, Sequence

from fdcore.data.sources import (
    MANIFEST_SUFFIXES,
    MISSING_POLICIES,
    ColumnMapping,
    DataError,
    check_weight,
    column_values,
    is_streaming,
    label_counts,
    listing_to_dataset,
    load_disk_dataset,
    load_hub_dataset,
    normalize_dataset,
    read_manifest,
    scan_folder,
)

SPEC_VERSION = "fdcore-data-spec-v1"
SOURCE_KINDS = ("folder", "manifest", "hub", "disk")
STOPPING_STRATEGIES = ("first_exhausted", "all_exhausted", "all_exhausted_without_replacement")
SPEC_SUFFIXES = (".yaml", ".yml")
STREAM_SHARDS = 16
_SOURCE_KEYS = {"name", "folder", "manifest", "hub", "disk", "path", "weight", "split", "config", "revision", "columns",
                "fake_value", "fake_values", "real_value", "real_values", "generator", "streaming", "missing"}
# Query-string keys of a LOCATION (``hub:org/name?split=train&label=is_fake&fake_value=1``).
_QUERY_COLUMN_KEYS = {"image": "image", "label": "label", "path": "path", "generator_column": "generator",
                      "source_column": "source"}
_QUERY_KEYS = {"split", "config", "revision", "streaming", "missing", "generator", "fake_value", "real_value", "weight"}


@dataclasses.dataclass
class SourceSpec:
    """One data source. ``location`` is an absolute path (folder, manifest, disk) or a Hub dataset id."""

    name: str
    kind: str
    location: str
    weight: float = 1.0
    split: str | None = None
    config: str | None = None
    revision: str | None = None
    columns: ColumnMapping = dataclasses.field(default_factory=ColumnMapping)
    fake_values: tuple[str, ...] = ()
    real_values: tuple[str, ...] = ()
    generator: str | None = None
    streaming: bool | None = None  # None: follow the DataSpec
    missing: str = "error"

    def __post_init__(self):
        if self.kind not in SOURCE_KINDS:
            raise DataError(f"source {self.name!r}: kind must be one of {', '.join(SOURCE_KINDS)}, got {self.kind!r}")
        if not self.name or not re.fullmatch(r"[\w.+-]+", self.name):
            raise DataError(f"source name {self.name!r} must be non-empty letters, digits, '.', '_', '+' or '-'")
        self.weight = check_weight(self.weight, f"source {self.name!r}")
        if self.missing not in MISSING_POLICIES:
            raise DataError(f"source {self.name!r}: missing must be one of {', '.join(MISSING_POLICIES)}, got {self.missing!r}")
        if isinstance(self.columns, dict):
            self.columns = ColumnMapping.from_dict(self.columns)
        self.fake_values = tuple(str(value) for value in self.fake_values)
        self.real_values = tuple(str(value) for value in self.real_values)

    @property
    def uri(self) -> str:
        if self.kind == "hub":
            query = urllib.parse.urlencode({key: value for key, value in
                                            (("config", self.config), ("split", self.split or "train"),
                                             ("revision", self.revision)) if value})
            return f"hub:{self.location}?{query}"
        if self.kind == "disk":
            return f"disk:{self.location}" + (f"?split={self.split}" if self.split else "")
        return self.location

    def load(self, streaming: bool = False, cache_dir: str | None = None):
        """This source as a Dataset (IterableDataset when streaming), plus a JSON-ready record of what was read."""
        stream = self.streaming if self.streaming is not None else streaming
        record: dict[str, Any] = {}
        if self.kind in ("folder", "manifest"):
            if self.kind == "folder":
                listing = scan_folder(self.location, generator=self.generator)
            else:
                listing = read_manifest(self.location, missing=self.missing, generator=self.generator)
            dataset = listing_to_dataset(listing, self.name)
            record.update(skipped=listing.skipped, listing_sha256=listing.listing_sha256())
        elif self.kind == "hub":
            loaded = load_hub_dataset(self.location, split=self.split or "train", config=self.config,
                                      revision=self.revision, streaming=stream, cache_dir=cache_dir)
            dataset = normalize_dataset(loaded, source=self.name, uri=self.uri, columns=self.columns,
                                        fake_values=self.fake_values, real_values=self.real_values,
                                        generator=self.generator)
            record["fingerprint"] = getattr(loaded, "_fingerprint", None)
        else:
            loaded = load_disk_dataset(self.location, split=self.split)
            dataset = normalize_dataset(loaded, source=self.name, uri=self.uri, columns=self.columns,
                                        fake_values=self.fake_values, real_values=self.real_values,
                                        generator=self.generator, base_dir=self.location)
            record["fingerprint"] = getattr(loaded, "_fingerprint", None)
        if stream and not is_streaming(dataset):
            # several shards, so that DataLoader workers can share the stream
            dataset = dataset.to_iterable_dataset(num_shards=max(1, min(STREAM_SHARDS, len(dataset))))
        if not is_streaming(dataset):
            record.update(rows=len(dataset), **label_counts(column_values(dataset, "label")))
        return dataset, record

    def to_dict(self) -> dict[str, Any]:
        data = {"name": self.name, "kind": self.kind, "location": self.location, "uri": self.uri, "weight": self.weight}
        for key in ("split", "config", "revision", "generator", "streaming"):
            if getattr(self, key) is not None:
                data[key] = getattr(self, key)
        if self.kind == "manifest":
            data["missing"] = self.missing
        columns = {key: value for key, value in dataclasses.asdict(self.columns).items() if value is not None}
        if self.kind in ("hub", "disk"):
            data["columns"] = columns
        if self.fake_values:
            data["fake_values"] = list(self.fake_values)
        if self.real_values:
            data["real_values"] = list(self.real_values)
        return data


@dataclasses.dataclass
class ValidationSpec:
    """Validation data: its own sources (``data``: every row once, weights ignored), or a ``fraction`` held out of
    each training source (stratified by label and generator; ``group`` keeps copies on one side, see
    :func:`split_train_validation`)."""

    data: "DataSpec | None" = None
    fraction: float | None = None
    group: str | None = None
    seed: int | None = None

    def __post_init__(self):
        if (self.data is None) == (self.fraction is None):
            raise DataError("validation needs either sources or a fraction (e.g. validation: {fraction: 0.05}), not both")
        if self.fraction is not None and not 0.0 < float(self.fraction) < 1.0:
            raise DataError(f"validation fraction must be between 0 and 1 (exclusive), got {self.fraction!r}")

    def to_dict(self) -> dict[str, Any]:
        if self.data is not None:
            return {"data": self.data.to_dict()}
        return {"fraction": self.fraction, "group": self.group, "seed": self.seed}


@dataclasses.dataclass
class DataSpec:
    """Sources with weights, how they are mixed, and (after :meth:`load`) what was read.

    ``weight`` is relative: with sources A (weight 3) and B (weight 1), each next training example comes from A
    with probability 3/4 and from B with probability 1/4, whatever their sizes (``datasets.interleave_datasets``
    with ``probabilities`` and ``seed``). ``stopping_strategy`` says when an epoch ends: ``first_exhausted`` (the
    default) as soon as one source runs out, so no image repeats within an epoch; ``all_exhausted`` when every source
    has been seen once, repeating the sources that run out earlier (oversampling);
    ``all_exhausted_without_replacement`` when every source has been seen once, dropping exhausted ones.
    """

    sources: list[SourceSpec]
    seed: int = 0
    stopping_strategy: str = "first_exhausted"
    streaming: bool = False
    validation: ValidationSpec | None = None
    origin: str | None = None
    counts: dict[str, Any] = dataclasses.field(default_factory=dict)

    def __post_init__(self):
        if not self.sources:
            raise DataError("a data spec needs at least one source")
        names = [source.name for source in self.sources]
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise DataError(f"source names must be unique; repeated: {', '.join(duplicates)} (name them with name=PATH)")
        if self.stopping_strategy not in STOPPING_STRATEGIES:
            raise DataError(f"stopping_strategy must be one of {', '.join(STOPPING_STRATEGIES)}, got {self.stopping_strategy!r}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise DataError(f"seed must be a non-negative integer, got {self.seed!r}")

    @property
    def streams(self) -> bool:
        """Whether the training data loads as an IterableDataset: some source streams (its own setting, else the
        spec's)."""
        return any(self.streaming if source.streaming is None else source.streaming for source in self.sources)

    @property
    def probabilities(self) -> list[float]:
        total = sum(source.weight for source in self.sources)
        return [source.weight / total for source in self.sources]

    def load_sources(self, cache_dir: str | None = None) -> list:
        """Each source loaded on its own, in spec order (records per-source counts)."""
        loaded = []
        self.counts = {"sources": {}}
        for source in self.sources:
            dataset, record = source.load(streaming=self.streaming, cache_dir=cache_dir)
            self.counts["sources"][source.name] = record
            loaded.append(dataset)
        return loaded

    def mix(self, datasets_: Sequence[Any]):
        """Interleave per-source datasets with this spec's probabilities, seed and stopping strategy.

        Each source is first shuffled (source ``i`` with seed ``seed + i``): interleaving keeps every source's own
        order, and a source listed class by class would otherwise lose one class when an epoch stops early.
        """
        import datasets

        datasets_ = align_schemas(list(datasets_))
        if len(datasets_) == 1:
            return datasets_[0]
        shuffled = []
        for position, dataset in enumerate(datasets_):
            if is_streaming(dataset):
                shuffled.append(dataset.shuffle(seed=self.seed + position))
            else:
                shuffled.append(dataset.shuffle(seed=self.seed + position, keep_in_memory=True))
        return datasets.interleave_datasets(shuffled, probabilities=self.probabilities, seed=self.seed,
                                            stopping_strategy=self.stopping_strategy)

    def load(self, cache_dir: str | None = None):
        """Training data: all sources mixed by weight; a Dataset, or an IterableDataset when any source streams."""
        mixed = self.mix(self.load_sources(cache_dir))
        self._record_mixed(mixed)
        return mixed

    def load_all(self, cache_dir: str | None = None):
        """Every row of every source exactly once, in spec order, weights ignored (evaluation, data check)."""
        import datasets

        parts = align_schemas(self.load_sources(cache_dir))
        combined = parts[0] if len(parts) == 1 else datasets.concatenate_datasets(parts)
        self._record_mixed(combined, key="all")
        return combined

    def with_validation(self, validation: "ValidationSpec | None") -> "DataSpec":
        """This spec with another validation block (a copy; this one is unchanged)."""
        return dataclasses.replace(self, validation=validation, counts={})

    def load_splits(self, cache_dir: str | None = None, shuffle_buffer: int = 0, validation_rows: int = 0):
        """``(train, validation)``: validation from its own sources, or held out of every source *before* mixing
        (so oversampling never puts one image on both sides); ``validation`` is None without a validation block.

        For streamed training data: ``shuffle_buffer`` rows are shuffled with the spec's seed (re-seeded per epoch by
        ``set_epoch``); without a validation block, ``validation_rows`` first rows of the (shuffled) stream are held
        out as validation (:func:`hold_out_first_rows`); a streamed validation source is read once into a list.
        What was loaded is recorded in :attr:`counts`."""
        train, validation = self._load_splits(cache_dir)
        if not is_streaming(train):
            return train, validation
        if validation is not None and not hasattr(validation, "__len__"):
            validation = list(validation)  # a streamed validation source: read once, evaluated every epoch
            self.counts["validation"] = {"rows": len(validation), **label_counts(row["label"] for row in validation)}
        if shuffle_buffer:
            # re-seeded every epoch by set_epoch (datasets shifts the buffer's seed by the epoch)
            train = train.shuffle(seed=self.seed, buffer_size=shuffle_buffer)
        if validation is None and validation_rows:
            train, validation = hold_out_first_rows(train, validation_rows)
            self.counts["validation"] = {"rows": len(validation), "held_out": "first rows of the stream (epoch 0)",
                                         **label_counts(row["label"] for row in validation)}
        return train, validation

    def _load_splits(self, cache_dir: str | None = None):
        if self.validation is None:
            return self.load(cache_dir), None
        if self.validation.data is not None:
            train = self.load(cache_dir)
            validation = self.validation.data.load_all(cache_dir)  # every validation image once, weights ignored
            inner = self.validation.data.counts
            self.counts["validation"] = {**inner["all"], "sources": inner["sources"]}
            return train, validation
        import datasets

        per_source = self.load_sources(cache_dir)
        if any(is_streaming(dataset) for dataset in per_source):
            raise DataError("a validation fraction needs every source loaded in full (not streaming); give the "
                            "validation block its own sources instead")
        from fdcore.data import split

        seed = self.seed if self.validation.seed is None else self.validation.seed
        train_parts, validation_parts = [], []
        for dataset in per_source:
            train_part, validation_part = split.split_train_validation(dataset, self.validation.fraction, seed=seed,
                                                                 group=self.validation.group)
            train_parts.append(train_part)
            validation_parts.append(validation_part)
        train = self.mix(train_parts)
        validation = datasets.concatenate_datasets(align_schemas(validation_parts))
        self._record_mixed(train)
        self.counts["validation"] = {"rows": len(validation), **label_counts(column_values(validation, "label"))}
        return train, validation

    def _record_mixed(self, mixed, key: str = "mixed") -> None:
        if is_streaming(mixed):
            self.counts[key] = {"rows": None, "streaming": True}
        else:
            self.counts[key] = {"rows": len(mixed), **label_counts(column_values(mixed, "label"))}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record for run metadata: sources, weights, probabilities, seed, strategy and counts."""
        sources = []
        for source, probability in zip(self.sources, self.probabilities):
            sources.append({**source.to_dict(), "probability": probability})
        return {"version": SPEC_VERSION, "origin": self.origin, "seed": self.seed,
                "stopping_strategy": self.stopping_strategy, "streaming": self.streaming, "sources": sources,
                "validation": self.validation.to_dict() if self.validation else None, "counts": self.counts}


def hold_out_first_rows(stream, count: int):
    """``(training stream, validation rows)``: the first ``count`` rows the stream yields at epoch 0 (after the
    seeded shuffle buffer, so a stream listed class by class still gives both classes) become the validation set,
    and every row with one of their paths is filtered out of training, so the two stay disjoint whatever order later
    epochs read the stream in."""
    import itertools

    if count < 0:
        raise DataError(f"--validation-rows must be 0 or more, got {count}")
    validation = list(itertools.islice(iter(stream), count))
    if len(validation) < count:
        raise DataError(f"--validation-rows {count}: the training stream has only {len(validation)} rows")
    held_out = frozenset(row["path"] for row in validation)
    return stream.filter(lambda row: row["path"] not in held_out), validation


def align_schemas(datasets_: list) -> list:
    """Give every dataset the same columns (an ``image`` column of None where a source has none; same stream type)."""
    import datasets

    from fdcore.data.sources import schema_features

    with_image = any("image" in (dataset.column_names or []) for dataset in datasets_)
    streaming = any(is_streaming(dataset) for dataset in datasets_)
    target = schema_features(with_image)
    aligned = []
    for dataset in datasets_:
        if with_image and "image" not in (dataset.column_names or []):
            if is_streaming(dataset):
                dataset = dataset.map(lambda example: {**example, "image": None}, features=target)
            else:
                dataset = dataset.add_column("image", [None] * len(dataset), feature=datasets.Image(decode=False))
        dataset = dataset.select_columns(list(target))
        if streaming and not is_streaming(dataset):
            dataset = dataset.to_iterable_dataset(num_shards=max(1, min(STREAM_SHARDS, len(dataset))))
        aligned.append(dataset)
    return aligned


# ----------------------------------------------------------------------------------------------- parsing specs


def _split_query(text: str) -> tuple[str, dict[str, list[str]]]:
    location, _, query = text.partition("?")
    return location, urllib.parse.parse_qs(query, keep_blank_values=True) if query else {}


def _as_bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    if str(value).strip().lower() in ("1", "true", "yes", "on"):
        return True
    if str(value).strip().lower() in ("0", "false", "no", "off"):
        return False
    raise DataError(f"{where}: expected true or false, got {value!r}")


def _listify(value: Any) -> list:
    if value is None:
        return []
    if isinstance(value, (list, tuple)):
        return list(value)
    return [value]


def _detect_kind(path: str) -> str:
    if os.path.isdir(path):
        if os.path.isfile(os.path.join(path, "dataset_info.json")) or os.path.isfile(os.path.join(path, "dataset_dict.json")):
            return "disk"
        return "folder"
    suffix = os.path.splitext(path)[1].lower()
    if suffix in MANIFEST_SUFFIXES:
        return "manifest"
    if suffix in SPEC_SUFFIXES:
        return "spec"
    if not os.path.exists(path):
        raise DataError(f"data path {path} does not exist; pass a folder with real/ and fake/ sub-folders, a CSV/JSONL/Parquet "
                        "manifest, a YAML data spec, hub:ORG/NAME or disk:DIR")
    raise DataError(f"{path}: not a folder, a manifest ({', '.join(sorted(MANIFEST_SUFFIXES))}) or a data spec "
                    "(.yaml, .yml)")


def _default_name(kind: str, location: str) -> str:
    if kind == "hub":
        base = location.rstrip("/").split("/")[-1]
    else:
        base = os.path.splitext(os.path.basename(os.path.normpath(location)))[0]
    return re.sub(r"[^\w.+-]", "_", base) or "data"


def source_from_location(location: str, *, name: str | None = None, weight: Any = None,
                         base_dir: str | None = None, options: dict | None = None) -> SourceSpec:
    """A SourceSpec from ``LOCATION[?key=value&...]`` where LOCATION is ``hub:ID``, ``disk:DIR``, a folder or a manifest.

    Query keys: split, config, revision, streaming, missing, generator (a constant generator name),
    fake_value / real_value (repeatable), weight, and column mappings image, label, path, generator_column,
    source_column.
    """
    location, query = _split_query(location)
    unknown = set(query) - _QUERY_KEYS - set(_QUERY_COLUMN_KEYS)
    if unknown:
        raise DataError(f"{location}: unknown option(s) {', '.join(sorted(unknown))}; known: "
                        f"{', '.join(sorted(_QUERY_KEYS | set(_QUERY_COLUMN_KEYS)))}")
    settings: dict[str, Any] = dict(options or {})
    columns = dict(settings.pop("columns", None) or {})
    for key, values in query.items():
        if key in _QUERY_COLUMN_KEYS:
            columns[_QUERY_COLUMN_KEYS[key]] = values[-1]
        elif key in ("fake_value", "real_value"):
            settings[key + "s"] = [item for value in values for item in value.split(",")]
        else:
            settings[key] = values[-1]
    if location.startswith("hub:"):
        kind, target = "hub", location[len("hub:"):]
        if not target:
            raise DataError("hub: needs a dataset id, e.g. hub:org/name?split=train")
    elif location.startswith("disk:"):
        kind, target = "disk", _absolute(location[len("disk:"):], base_dir)
    else:
        target = _absolute(location, base_dir)
        kind = _detect_kind(target)
        if kind == "spec":
            raise DataError(f"{location} is a data spec; pass it on its own (--data {location}), not as one source")
    if settings.get("weight") is not None and weight is None:
        weight = settings["weight"]
    settings.pop("weight", None)
    streaming = settings.pop("streaming", None)
    return SourceSpec(
        name=name or _default_name(kind, target), kind=kind, location=target,
        weight=1.0 if weight is None else weight, split=settings.pop("split", None),
        config=settings.pop("config", None), revision=settings.pop("revision", None), columns=columns,
        fake_values=tuple(_listify(settings.pop("fake_values", None))),
        real_values=tuple(_listify(settings.pop("real_values", None))), generator=settings.pop("generator", None),
        streaming=None if streaming is None else _as_bool(streaming, f"{location}: streaming"),
        missing=settings.pop("missing", "error"),
    )


def _absolute(path: str, base_dir: str | None) -> str:
    path = os.path.expanduser(path)
    if not os.path.isabs(path) and base_dir is not None:
        path = os.path.join(base_dir, path)
    return os.path.abspath(path)


_WEIGHT_SUFFIX = re.compile(r"^(?P<location>.+):(?P<weight>[0-9]*\.?[0-9]+(?:[eE][-+]?[0-9]+)?)$")
_NAME_PREFIX = re.compile(r"^(?P<name>[\w.+-]+)=(?P<rest>.+)$")


def parse_data_option(text: str, base_dir: str | None = None) -> SourceSpec:
    """One ``--data`` value: ``[NAME=]LOCATION[:WEIGHT]``, e.g. ``challenge=data/train:3`` or
    ``ditfake=hub:org/ditfake?label=is_fake&fake_value=1:1``."""
    text = text.strip()
    if not text:
        raise DataError("empty --data value; use [NAME=]PATH[:WEIGHT]")
    name = None
    match = _NAME_PREFIX.match(text)
    if match and not text.startswith(("hub:", "disk:")):
        name, text = match.group("name"), match.group("rest")
    weight = None
    match = _WEIGHT_SUFFIX.match(text)
    if match:
        text, weight = match.group("location"), match.group("weight")
    return source_from_location(text, name=name, weight=weight, base_dir=base_dir)


def data_spec_from_dict(data: dict, base_dir: str | None = None, origin: str | None = None) -> DataSpec:
    """A DataSpec from the YAML structure ``{seed, stopping_strategy, streaming, sources: [...], validation: {...}}``."""
    if not isinstance(data, dict):
        raise DataError(f"{origin or 'data spec'}: expected a mapping with a 'sources' list, got {type(data).__name__}")
    where = origin or "data spec"
    unknown = set(data) - {"seed", "stopping_strategy", "streaming", "sources", "validation"}
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: seed, stopping_strategy, "
                        "streaming, sources, validation")
    raw_sources = data.get("sources")
    if not isinstance(raw_sources, list) or not raw_sources:
        raise DataError(f"{where}: 'sources' must be a non-empty list of sources")
    sources = [_source_from_dict(item, base_dir, f"{where}, sources[{index}]") for index, item in enumerate(raw_sources)]
    validation = None
    if data.get("validation") is not None:
        raw = data["validation"]
        if not isinstance(raw, dict):
            raise DataError(f"{where}: validation must be a mapping with 'sources' or 'fraction'")
        extra = set(raw) - {"sources", "fraction", "group", "seed"}
        if extra:
            raise DataError(f"{where}: unknown validation key(s) {', '.join(sorted(extra))}")
        if "sources" in raw:
            inner = {"sources": raw["sources"], "seed": raw.get("seed", data.get("seed", 0))}
            validation = ValidationSpec(data=data_spec_from_dict(inner, base_dir, f"{where}, validation"))
        else:
            validation = ValidationSpec(fraction=raw.get("fraction"), group=raw.get("group"), seed=raw.get("seed"))
    return DataSpec(sources=sources, seed=data.get("seed", 0),
                    stopping_strategy=data.get("stopping_strategy", "first_exhausted"),
                    streaming=_as_bool(data.get("streaming", False), f"{where}: streaming"),
                    validation=validation, origin=origin)


def _source_from_dict(item: Any, base_dir: str | None, where: str) -> SourceSpec:
    if isinstance(item, str):
        return parse_data_option(item, base_dir)
    if not isinstance(item, dict):
        raise DataError(f"{where}: a source is a mapping (name, folder|manifest|hub|disk|path, weight, ...)")
    unknown = set(item) - _SOURCE_KEYS
    if unknown:
        raise DataError(f"{where}: unknown key(s) {', '.join(sorted(unknown))}; known: {', '.join(sorted(_SOURCE_KEYS))}")
    given = [key for key in ("folder", "manifest", "hub", "disk", "path") if key in item]
    if len(given) != 1:
        raise DataError(f"{where}: give exactly one of folder, manifest, hub, disk or path")
    key = given[0]
    value = str(item[key])
    location = {"hub": "hub:", "disk": "disk:"}.get(key, "") + value
    options = {name: item[name] for name in ("split", "config", "revision", "generator", "streaming", "missing", "columns")
               if name in item}
    options["fake_values"] = _listify(item.get("fake_values", item.get("fake_value")))
    options["real_values"] = _listify(item.get("real_values", item.get("real_value")))
    if "columns" in options and not isinstance(options["columns"], dict):
        raise DataError(f"{where}: columns must be a mapping such as {{image: img, label: is_fake}}")
    source = source_from_location(location, name=item.get("name"), weight=item.get("weight"), base_dir=base_dir,
                                  options=options)
    if key == "folder" and source.kind != "folder":
        raise DataError(f"{where}: folder {value} is not a folder of images")
    if key == "manifest" and source.kind != "manifest":
        raise DataError(f"{where}: manifest {value} must be a .csv or .jsonl file")
    return source


def read_data_spec_file(path: str) -> DataSpec:
    import yaml

    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as exc:
        raise DataError(f"cannot read data spec {path}: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise DataError(f"data spec {path} is not valid YAML: {exc}") from None
    return data_spec_from_dict(data, base_dir=os.path.dirname(os.path.abspath(path)), origin=os.path.abspath(path))


def resolve_data_spec(values: str | Sequence[str], *, seed: int | None = None, streaming: bool | None = None,
                      stopping_strategy: str | None = None, skip_missing: bool = False) -> DataSpec:
    """The DataSpec for CLI values: one YAML spec file, or one or more ``[NAME=]LOCATION[:WEIGHT]`` sources.

    Explicit ``seed``/``streaming``/``stopping_strategy`` override a YAML file's; ``skip_missing`` makes every
    manifest source skip (and count) files that do not exist.
    """
    values = [values] if isinstance(values, str) else list(values)
    if not values:
        raise DataError("no data given; pass a folder with real/ and fake/, a CSV/JSONL manifest or a YAML data spec")
    if any(os.path.splitext(_split_query(value)[0])[1].lower() in SPEC_SUFFIXES for value in values):
        if len(values) > 1:
            raise DataError(f"a YAML data spec must be the only --data value ({' '.join(values)}); list the other "
                            "sources inside it")
        spec = read_data_spec_file(os.path.expanduser(values[0]))
    else:
        spec = DataSpec(sources=[parse_data_option(value) for value in values], origin=" ".join(values))
    if seed is not None:
        spec.seed = seed
    if streaming is not None:
        spec.streaming = streaming
    if stopping_strategy is not None:
        spec.stopping_strategy = stopping_strategy
    spec.__post_init__()
    if skip_missing:
        for source in spec.sources:
            source.missing = "skip"
    return spec
