"""The operator framework: level tables and severity interpolation (:class:`LeveledDegrader`, :func:`level_value`),
the severity measures the conformance suite checks, and the error for images no format or resampler can hold.

What goes here: what every operator builds on, nothing that processes pixels. Pixel helpers have topical modules:
``pixels`` (uint8/float arithmetic), ``color_spaces``, ``lut`` (lookup tables, tone curves), ``kernels`` (blur
kernels, convolutions), ``resampling`` (remaps, warps, resizes), ``codecs`` (encode/decode round trips) and
``randomness`` (random draws and fields). Like every helper there, operators take and return numpy arrays and never
modify their input.

Convention for every operator: the class lists its parameter at levels 1..5 in ``levels`` and the parameter value
that means "no change" in ``identity``; :meth:`LeveledDegrader.parameter` maps a continuous severity in [0, 1] onto
them piecewise-linearly (severity ``k/5`` is exactly level ``k``), so integer levels and continuous strengths are the
same scale.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np

from fdcore.errors import FdcoreError
from fdcore.interfaces import Degrader


class LeveledDegrader(Degrader):
    """A Degrader whose strength is one scalar parameter tabulated at levels 1..5."""

    levels: ClassVar[tuple[float, ...]] = ()
    identity: ClassVar[float] = 0.0
    # Round the interpolated parameter to an integer (kernel sizes, JPEG quality, palette sizes).
    integer_parameter: ClassVar[bool] = False
    # How the conformance suite checks that severity grows; one of SEVERITY_MEASURES (see below).
    severity_measure: ClassVar[str] = "psnr"

    def parameter(self, severity: float) -> float:
        if len(self.levels) != 5:
            raise TypeError(f"degrader {self.name!r} must list exactly 5 level values, has {len(self.levels)}")
        table = (self.identity, *self.levels)
        position = float(severity) * 5.0
        if abs(position - round(position)) < 1e-9:  # an exact level gives its tabulated value, bit for bit
            value = float(table[int(round(position))])
        else:
            value = float(np.interp(position, np.arange(6.0), np.array(table, dtype=np.float64)))
        return float(round(value)) if self.integer_parameter else value

    def parameters(self, severity: float) -> dict[str, Any]:
        """Scalar parameters used at this severity, for the application record."""
        return {"value": self.parameter(severity)}

    @classmethod
    def describe(cls) -> dict:
        return {**super().describe(), "levels": list(cls.levels)}


def level_value(severity: float, identity: float, levels: Sequence[float], integer: bool = False) -> float:
    """Piecewise-linear value of a secondary parameter: ``identity`` at severity 0, ``levels[k-1]`` at ``k/5``.

    The same scale as :meth:`LeveledDegrader.parameter`, for operators with more than one parameter.
    """
    # Unlike LeveledDegrader.parameter this has no exact-level shortcut, so level 3 of 0.18 gives
    # 0.17999999999999994. Recorded parameters and replayed pixels depend on these values: making the two agree is
    # a deliberate output change, not a refactor.
    value = float(np.interp(float(severity), np.linspace(0.0, 1.0, 6), np.array((identity, *levels), float)))
    return float(round(value)) if integer else value


# How conformance tests check that severity grows: "psnr" (PSNR against the original falls over levels 1..5),
# "output_area" (the output's pixel count shrinks: crops, downscales), or "none" for an operator whose level table
# is not ordered by distortion on purpose (the NTIRE linear_contrast_change table). Set on the class as
# ``severity_measure``; LeveledDegrader defaults to "psnr".
SEVERITY_MEASURES = ("psnr", "output_area", "none")


class ImageTooLargeError(FdcoreError, ValueError):
    """An image beyond what a file format (JPEG: 65,500 px a side; WebP: 16,383 px) or a resampling window (32,766
    px) can hold."""


# docs/degradations.md told operator authors to import these helpers from this module before they moved to topical
# modules, so the old import path keeps resolving them. Looked up lazily: the topical modules import this one.
_DOCUMENTED_HELPER_MODULES = {
    "rint_uint8": "pixels",
    "luma": "color_spaces",
    "srgb_to_linear": "color_spaces",
    "linear_to_srgb": "color_spaces",
    "srgb_to_lab": "color_spaces",
    "lab_to_srgb": "color_spaces",
    "relight_lab": "color_spaces",
    "apply_lut": "lut",
    "monotone_cubic": "lut",
    "tone_curve_table": "lut",
    "gaussian_kernel1d": "kernels",
    "blur_separable": "kernels",
    "convolve2d": "kernels",
    "disk_kernel": "kernels",
    "shift_bilinear": "resampling",
    "remap_any_size": "resampling",
    "codec_roundtrip": "codecs",
    "jpeg_roundtrip": "codecs",
    "standard_normal": "randomness",
    "random_count": "randomness",
}


def __getattr__(name: str) -> Any:
    module = _DOCUMENTED_HELPER_MODULES.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f"fdcore.degradations.{module}"), name)
