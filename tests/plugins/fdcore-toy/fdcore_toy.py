"""A third-party fdcore plugin, written exactly as an outside author would: importing it loads no torch."""

import fdcore


@fdcore.hookimpl
def register_experts(register):
    from fdcore_toy_expert import ToyExpert  # torch is imported here, when fdcore asks, not at plugin import

    register(ToyExpert)


@fdcore.hookimpl
def register_aggregators(register):
    from fdcore_toy_expert import GeometricMean

    register(GeometricMean)
