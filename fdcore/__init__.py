"""fdcore: a plugin framework for robust AI-generated image detection.

Importing fdcore is cheap: torch and the plugin registries load on first use of the names below.
"""

import os

# Intel MKL picks its matrix-product kernels by matrix size on AVX-512 CPUs, so without this a score would change
# in its last bits with the batch size it was computed in (measured: 1.5e-8 for batches under 16 rows). Strict
# conditional numerical reproducibility keeps every row's result independent of the batch, at no measured cost (a
# ViT-L MLP product: 59.3 vs 59.6 ms). MKL reads the variable at its first call, so it is set on import, before
# any product, unless the user chose a value; docs/predict.md says what this means for code that runs torch first.
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from fdcore.hookspecs import hookimpl  # noqa: E402
from fdcore.lazy import lazy_exports  # noqa: E402

__version__ = "0.1.0"

# Public name -> module that defines it; resolved on first access (PEP 562) so `fdcore --help` stays fast.
_LAZY = {
    "Expert": "fdcore.interfaces",
    "Degrader": "fdcore.interfaces",
    "Distiller": "fdcore.interfaces",
    "Aggregator": "fdcore.interfaces",
    "Preprocessing": "fdcore.preprocess",
    "UnknownNameError": "fdcore.registry",
    "list_experts": "fdcore.registry",
    "list_degraders": "fdcore.registry",
    "list_distillers": "fdcore.registry",
    "list_aggregators": "fdcore.registry",
    "list_policies": "fdcore.registry",
    "get_expert": "fdcore.registry",
    "get_expert_class": "fdcore.registry",
    "get_degrader": "fdcore.registry",
    "get_distiller": "fdcore.registry",
    "get_aggregator": "fdcore.registry",
    "plugins_info": "fdcore.registry",
    "DataSpec": "fdcore.data.spec",
    "resolve_data_spec": "fdcore.data.spec",
    "split_train_validation": "fdcore.data.split",
    "DetectionDataset": "fdcore.data.torch_dataset",
    "collate_samples": "fdcore.data.torch_dataset",
    "degrade": "fdcore.degradations.api",
    "apply_policy": "fdcore.degradations.api",
    "replay": "fdcore.degradations.api",
    "load_policy": "fdcore.degradations.api",
    "save_expert": "fdcore.expert_io",
    "load_expert": "fdcore.expert_io",
    "expert_identity": "fdcore.expert_io",
    "HFVisionExpert": "fdcore.hf_expert",
    "load_featdistill_release": "fdcore.featdistill",
    "load_ensemble": "fdcore.ensemble_io",
    "push_ensemble": "fdcore.hub",
    "pull_ensemble": "fdcore.hub",
    "compute_metrics": "fdcore.metrics",
    "Calibration": "fdcore.calibration",
    "fit_calibration": "fdcore.calibration",
    "select_threshold": "fdcore.calibration",
    "write_report": "fdcore.report",
}

__all__ = ["__version__", "hookimpl", *_LAZY]


__getattr__, __dir__ = lazy_exports(globals(), _LAZY)
