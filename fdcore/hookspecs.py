"""The hooks a plugin implements. Hooks are for discovery only: each one hands the plugin a
``register`` callback, the plugin calls it with classes, and fdcore never calls a hook per batch."""

import pluggy

hookspec = pluggy.HookspecMarker("fdcore")
hookimpl = pluggy.HookimplMarker("fdcore")


@hookspec
def register_experts(register):
    """Register Expert subclasses: ``register(ExpertClass)``."""


@hookspec
def register_degraders(register):
    """Register Degrader subclasses: ``register(DegraderClass)``."""


@hookspec
def register_distillers(register):
    """Register Distiller subclasses: ``register(DistillerClass)``."""


@hookspec
def register_aggregators(register):
    """Register Aggregator subclasses: ``register(AggregatorClass)``."""


@hookspec
def register_policies(register):
    """Register degradation policies: ``register(name, spec, description="")`` with a policy dict."""
