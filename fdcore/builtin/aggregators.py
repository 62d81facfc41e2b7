"""Built-in fusion rules for per-expert P(AI-generated)."""

from __future__ import annotations

import torch

from fdcore.hookspecs import hookimpl
from fdcore.interfaces import Aggregator

# Probabilities are clipped this far from 0 and 1 before taking logits, so a saturated expert cannot
# dominate a logit mean with an infinite vote.
LOGIT_EPSILON = 1e-6


class Mean(Aggregator):
    """Arithmetic mean of the experts' probabilities (FeatDistill's rule)."""

    name = "mean"
    description = "arithmetic mean of the experts' P(AI-generated) (FeatDistill's rule)"

    def fuse(self, probs, weights):
        return probs.mean(dim=0)


class Weighted(Aggregator):
    """Weighted mean with user weights (normalised to sum to one)."""

    name = "weighted"
    description = "weighted mean of P(AI-generated); weights from --weights or ensemble.json"
    uses_weights = True
    requires_weights = True

    def fuse(self, probs, weights):
        return (weights[:, None] * probs).sum(dim=0)


class LogitMean(Aggregator):
    """Mean in logit space, mapped back through the sigmoid (optionally weighted)."""

    name = "logit-mean"
    description = "sigmoid of the (optionally weighted) mean logit"
    uses_weights = True

    def fuse(self, probs, weights):
        logits = torch.logit(probs.clamp(LOGIT_EPSILON, 1 - LOGIT_EPSILON))
        if weights is None:
            return torch.sigmoid(logits.mean(dim=0))
        return torch.sigmoid((weights[:, None] * logits).sum(dim=0))


class Median(Aggregator):
    """Median across experts (the mean of the two middle values for an even count)."""

    name = "median"
    description = "median of the experts' P(AI-generated)"

    def fuse(self, probs, weights):
        return torch.quantile(probs, 0.5, dim=0)


class Max(Aggregator):
    """The most confident 'AI-generated' vote."""

    name = "max"
    description = "maximum P(AI-generated) over the experts"

    def fuse(self, probs, weights):
        return probs.max(dim=0).values


class SoftOr(Aggregator):
    """Noisy-OR: the image is AI-generated if any expert is right, ``1 - prod(1 - p)``."""

    name = "soft-or"
    description = "noisy-OR, 1 - prod(1 - p)"

    def fuse(self, probs, weights):
        return 1.0 - torch.prod(1.0 - probs, dim=0)


class RankMean(Aggregator):
    """Mean over experts of each image's normalised rank within the scored set.

    Ranks are relative to the other images fused in the same call, so ``fdcore predict`` applies this rule once
    over the whole run, not per batch (``set_level = True``).
    """

    name = "rank-mean"
    description = "mean normalised rank (set-level: depends on all images scored together)"
    set_level = True

    def fuse(self, probs, weights):
        n_experts, count = probs.shape
        if count == 1:
            return torch.full((1,), 0.5, dtype=probs.dtype)
        ranks = torch.empty_like(probs)
        for expert in range(n_experts):
            ranks[expert] = average_ranks(probs[expert])
        return ((ranks - 1.0) / (count - 1)).mean(dim=0)


def average_ranks(values: torch.Tensor) -> torch.Tensor:
    """1-based ranks with ties sharing their average rank (as scipy.stats.rankdata 'average')."""
    order = torch.argsort(values, stable=True)
    sorted_values = values[order]
    count = values.numel()
    ranks_sorted = torch.arange(1, count + 1, dtype=torch.float64)
    # Average over runs of equal values.
    boundaries = torch.ones(count, dtype=torch.bool)
    boundaries[1:] = sorted_values[1:] != sorted_values[:-1]
    group = torch.cumsum(boundaries.to(torch.int64), 0) - 1
    sums = torch.zeros(int(group[-1]) + 1, dtype=torch.float64).index_add_(0, group, ranks_sorted)
    counts = torch.zeros_like(sums).index_add_(0, group, torch.ones(count, dtype=torch.float64))
    ranks = torch.empty(count, dtype=torch.float64)
    ranks[order] = (sums / counts)[group]
    return ranks


@hookimpl
def register_aggregators(register):
    for aggregator in (Mean, Weighted, LogitMean, Median, Max, SoftOr, RankMean):
        register(aggregator)
