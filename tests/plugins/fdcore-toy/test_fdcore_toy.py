"""The toy plugin's own tests: fdcore's conformance checks on everything it registers, one test per implementation
and check (run them in the plugin's CI with the plugin installed)."""

import pytest

import fdcore
from fdcore.testing import AGGREGATOR_CHECKS, EXPERT_CHECKS, check_aggregator, check_expert


@pytest.mark.parametrize("check", EXPERT_CHECKS)
@pytest.mark.parametrize("name", fdcore.list_experts("toy*"))
def test_expert(name, check):
    check_expert(name, checks=check)


@pytest.mark.parametrize("check", AGGREGATOR_CHECKS)
@pytest.mark.parametrize("name", fdcore.list_aggregators("toy*"))
def test_aggregator(name, check):
    check_aggregator(name, checks=check)


def test_an_expert_option_the_tiny_config_does_not_cover():
    check_expert("toy", width=4, resize="native")
