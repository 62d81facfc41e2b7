"""The contract every registered Degrader keeps, checked for each one (built-in or from a plugin) by
``fdcore.testing.check_degrader``, the check plugin authors run too."""

from __future__ import annotations

import pytest

import fdcore
from fdcore.testing import DEGRADER_CHECKS, check_degrader, synthetic_image  # noqa: F401 (other tests import it)

NAMES = fdcore.list_degraders()


def test_registry_has_the_ntire_operators():
    for name in ("gaussian_blur", "lens_blur", "color_shift", "color_saturation", "jpeg", "white_noise",
                 "impulse_noise", "brighten", "darken", "jitter", "quantization", "linear_contrast_change"):
        assert name in NAMES


@pytest.mark.parametrize("check", DEGRADER_CHECKS)
@pytest.mark.parametrize("name", NAMES)
def test_degrader_conformance(name, check):
    """metadata, identity at 0, output contract without mutating the input, determinism from the seed, a visible
    change at full strength, monotone severity, continuity at weak strengths, tiny and thin images."""
    check_degrader(name, checks=check)


def test_a_degrader_that_returns_its_input_is_caught():
    class Flip(fdcore.Degrader):
        name = "flip-view"
        description = "flips the image, returning a view of the input (broken on purpose)"
        category = "geometric"

        def apply(self, image, severity, rng):
            return image[::-1]

    with pytest.raises(AssertionError, match="'flip-view' fails the 'output_contract' check: .*memory shared"):
        check_degrader(Flip, checks="output_contract")
