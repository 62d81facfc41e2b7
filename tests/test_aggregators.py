"""Built-in fusion rules, and a conformance check every registered Aggregator must pass."""

import math

import pytest
import torch

import fdcore
from fdcore.testing import AGGREGATOR_CHECKS, check_aggregator

PROBS = torch.tensor([[0.1, 0.8, 0.5, 0.0],
                      [0.3, 0.6, 0.5, 1.0],
                      [0.2, 0.9, 0.2, 0.5]])


def test_seven_builtin_rules_are_registered():
    assert {"mean", "weighted", "logit-mean", "median", "max", "soft-or", "rank-mean"} <= set(fdcore.list_aggregators())


def test_mean():
    assert torch.allclose(fdcore.get_aggregator("mean")(PROBS), torch.tensor([0.2, 2.3 / 3, 0.4, 0.5]))


def test_weighted_normalises_weights():
    fused = fdcore.get_aggregator("weighted")(PROBS, torch.tensor([2.0, 1.0, 1.0]))
    expected = (2 * PROBS[0] + PROBS[1] + PROBS[2]) / 4
    assert torch.allclose(fused, expected)


def test_weighted_without_weights_is_an_error():
    with pytest.raises(ValueError, match="needs one weight per expert"):
        fdcore.get_aggregator("weighted")(PROBS)


def test_rules_that_take_no_weights_refuse_them():
    with pytest.raises(ValueError, match="does not take weights"):
        fdcore.get_aggregator("mean")(PROBS, torch.ones(3))


def test_logit_mean():
    fused = fdcore.get_aggregator("logit-mean")(torch.tensor([[0.9], [0.5]]))
    expected = 1 / (1 + math.exp(-(math.log(9) + 0.0) / 2))
    assert fused.item() == pytest.approx(expected, rel=1e-6)
    # saturated experts are clipped, not infinite
    assert torch.isfinite(fdcore.get_aggregator("logit-mean")(torch.tensor([[0.0], [1.0]]))).all()
    weighted = fdcore.get_aggregator("logit-mean")(torch.tensor([[0.9], [0.5]]), torch.tensor([1.0, 0.0]))
    assert weighted.item() == pytest.approx(0.9, rel=1e-6)


def test_median_averages_the_middle_pair():
    assert torch.allclose(fdcore.get_aggregator("median")(PROBS), torch.tensor([0.2, 0.8, 0.5, 0.5]))
    even = torch.tensor([[0.1], [0.2], [0.6], [0.9]])
    assert fdcore.get_aggregator("median")(even).item() == pytest.approx(0.4)


def test_max_and_soft_or():
    assert torch.allclose(fdcore.get_aggregator("max")(PROBS), torch.tensor([0.3, 0.9, 0.5, 1.0]))
    expected = 1 - (1 - PROBS).prod(dim=0)
    assert torch.allclose(fdcore.get_aggregator("soft-or")(PROBS), expected)


def test_rank_mean_uses_average_ranks_for_ties():
    probs = torch.tensor([[0.1, 0.5, 0.5, 0.9],
                          [0.4, 0.3, 0.2, 0.1]])
    fused = fdcore.get_aggregator("rank-mean")(probs)
    first = torch.tensor([0.0, 0.5, 0.5, 1.0])  # ranks 1, 2.5, 2.5, 4 normalised
    second = torch.tensor([1.0, 2 / 3, 1 / 3, 0.0])
    assert torch.allclose(fused, (first + second) / 2)
    assert fdcore.get_aggregator("rank-mean")(torch.tensor([[0.3]])).item() == 0.5


def test_invalid_weights_are_errors():
    rule = fdcore.get_aggregator("weighted")
    for weights in (torch.tensor([1.0, -1.0, 1.0]), torch.zeros(3), torch.tensor([1.0, float("nan"), 1.0]),
                    torch.ones(2)):
        with pytest.raises(ValueError):
            rule(PROBS, weights)


@pytest.mark.parametrize("check", AGGREGATOR_CHECKS)
@pytest.mark.parametrize("name", fdcore.list_aggregators())
def test_aggregator_conformance(name, check):
    """Every registered aggregator: metadata; shape, range, monotone in each expert's vote, invariant to expert order;
    NaN, infinite or out-of-range probabilities and misplaced weights are errors."""
    check_aggregator(name, checks=check)


def test_a_rule_that_depends_on_the_order_of_the_experts_is_caught():
    class FirstExpert(fdcore.Aggregator):
        name = "first-expert"
        description = "the first expert's probability (broken on purpose)"

        def fuse(self, probs, weights):
            return probs[0]

    check_aggregator(FirstExpert, checks=["metadata", "invalid_input"])
    with pytest.raises(AssertionError, match="'first-expert' fails the 'fusion' check: .*order of the experts"):
        check_aggregator(FirstExpert)
