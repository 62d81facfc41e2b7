"""fdcore's data layer: labelled image sources, mixing specs, the bias check and the torch Dataset for training.

Names resolve lazily so that ``import fdcore.data`` stays cheap (``datasets`` and torch load on first use).
"""

from fdcore.lazy import lazy_exports

_LAZY = {
    "DataError": "fdcore.data.sources",
    "IMAGE_EXTENSIONS": "fdcore.images",
    "parse_label": "fdcore.data.sources",
    "scan_folder": "fdcore.data.sources",
    "read_manifest": "fdcore.data.sources",
    "normalize_dataset": "fdcore.data.sources",
    "ColumnMapping": "fdcore.data.sources",
    "open_image_rgb": "fdcore.data.sources",
    "DataSpec": "fdcore.data.spec",
    "SourceSpec": "fdcore.data.spec",
    "ValidationSpec": "fdcore.data.spec",
    "parse_data_option": "fdcore.data.spec",
    "resolve_data_spec": "fdcore.data.spec",
    "read_data_spec_file": "fdcore.data.spec",
    "data_spec_from_dict": "fdcore.data.spec",
    "split_train_validation": "fdcore.data.split",
    "split_indices": "fdcore.data.split",
    "check_data": "fdcore.data.check",
    "estimate_jpeg_quality": "fdcore.data.check",
    "DetectionDataset": "fdcore.data.torch_dataset",
    "StreamingTrainingSet": "fdcore.data.torch_dataset",
    "collate_samples": "fdcore.data.torch_dataset",
    "sample_rng": "fdcore.data.torch_dataset",
    "seeded_degrade": "fdcore.data.torch_dataset",
}

__all__ = list(_LAZY)


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
