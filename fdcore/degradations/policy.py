"""Degradation policies: declarative specs, a seeded sampler, compact records and exact replay.

A policy is a dict (or a YAML file with the same keys)::

    name: my-policy
    description: what it is for
    clean_probability: 0.2          # share of images left untouched
    branches:                       # one branch is picked per image, by weight; branches never mix
      - name: main
        weight: 1
        groups:                     # k groups are drawn without replacement, then one operator per group
          blur: [gaussian_blur, lens_blur]
          noise: [white_noise, {op: impulse_noise, weight: 2}]
          jpeg: [jpeg]
        # or: ops: [a, b, c]        # every operator its own group
        # or: from_policy: ntire2026  (copy that policy's single branch; keys given here override it)
        group_weights: {blur: 2}    # default 1 per group
        k: {uniform: [1, 3]}        # or an int, or {values: [1, 2], probabilities: [0.7, 0.3]}
        levels: {probabilities: [0.293, 0.270, 0.213, 0.143, 0.081]}   # or "uniform", or
                                    # {uniform_strength: [0.1, 1.0]} for continuous strengths
        order: random               # or "listed" (the order of the groups above)
        last: [jpeg]                # groups or operators that, when drawn, go last ("final JPEG last")
        first: []                   # ... or first

Reproducibility: every draw comes from a generator keyed by (seed, sample_id): the sampler's choices from
``sampler_rng(seed, sample_id)`` and operator ``i``'s randomness from ``operator_rng(seed, sample_id, i)``, so a sample's
result depends on nothing else (not on worker count, batch composition or the other samples). The record of an
application lists the operators, severities, levels and scalar parameters; :func:`replay` re-runs it exactly.
"""

from __future__ import annotations

import copy
import dataclasses
import json
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from fdcore.errors import FdcoreError
from fdcore.seeding import check_seed, operator_rng, sample_key, sampler_rng  # noqa: F401 - re-used names

RECORD_FORMAT = 1
LEVEL_COUNT = 5
# Stream tags inside a sample's seed material, so that the sampler and operator i never share a generator.

_POLICY_KEYS = {"name", "description", "clean_probability", "branches", "options"}
_BRANCH_KEYS = {"name", "weight", "groups", "ops", "from_policy", "group_weights", "k", "levels", "order", "first",
                "last"}
_OPTIONS = {"preserve_alignment": False}


class PolicyError(FdcoreError, ValueError):
    """A policy spec that is malformed or names operators that are not registered."""


class ReplayError(FdcoreError, ValueError):
    """A record that cannot be replayed (malformed, unknown operator, or an operator whose parameters changed)."""


# --------------------------------------------------------------------------------------------- seeds and records




@dataclasses.dataclass(frozen=True)
class Step:
    """One operator application: which operator, at which severity (and integer level when it is one)."""

    op: str
    severity: float
    level: int | None


def _degrader(name: str):
    from fdcore import registry

    return registry.get("degraders", name)()


def step_record(step: Step, degrader=None) -> dict[str, Any]:
    degrader = degrader if degrader is not None else _degrader(step.op)
    return {"op": step.op, "severity": step.severity, "level": step.level,
            "params": _json_ready(degrader.parameters(step.severity))}


def _json_ready(params: dict) -> dict:
    ready = {}
    for key, value in params.items():
        if isinstance(value, (np.integer,)):
            value = int(value)
        elif isinstance(value, (np.floating,)):
            value = float(value)
        elif isinstance(value, tuple):
            value = list(value)
        ready[str(key)] = value
    json.dumps(ready)  # a parameter that is not JSON-ready is the operator's bug: fail here, not when saving
    return ready


def apply_steps(image: np.ndarray, steps: Sequence[Step], seed: int, sample_id: int | str,
                degraders: dict[str, Any] | None = None) -> tuple[np.ndarray, list[dict]]:
    """Apply ``steps`` in order, operator ``i`` drawing from ``operator_rng(seed, sample_id, i)``; returns the image
    and the per-step records. The one place where policies, :func:`replay` and ``fdcore.degrade`` run operators."""
    degraders = degraders if degraders is not None else {}
    out = image
    records = []
    for index, step in enumerate(steps):
        if step.op not in degraders:
            degraders[step.op] = _degrader(step.op)
        degrader = degraders[step.op]
        out = degrader(out, step.severity, operator_rng(seed, sample_id, index))
        records.append(step_record(step, degrader))
    if out is image:
        out = image.copy()
    return out, records


def replay(record: dict, image: np.ndarray) -> np.ndarray:
    """Re-apply the operators of a record to ``image`` (uint8 HxWx3) and return the identical result.

    Raises :class:`ReplayError` when the record is malformed, names an unregistered operator, or an operator now
    derives different parameters from the recorded severity (the operator changed since the record was made).
    """
    if not isinstance(record, dict) or not {"seed", "sample_id", "ops"} <= set(record):
        raise ReplayError(f"not a degradation record (needs 'seed', 'sample_id' and 'ops'): {record!r}")
    if record.get("format", RECORD_FORMAT) != RECORD_FORMAT:
        raise ReplayError(f"record format {record.get('format')!r} is not supported (this fdcore writes "
                          f"format {RECORD_FORMAT})")
    from fdcore import registry

    steps = []
    degraders = {}
    for index, entry in enumerate(record["ops"]):
        if not isinstance(entry, dict) or "op" not in entry or "severity" not in entry:
            raise ReplayError(f"record operator #{index} must have 'op' and 'severity', got {entry!r}")
        try:
            degrader = degraders.get(entry["op"]) or registry.get("degraders", entry["op"])()
        except registry.UnknownNameError as exc:
            raise ReplayError(f"record operator #{index}: {exc}") from exc
        degraders[entry["op"]] = degrader
        severity = float(entry["severity"])
        if "params" in entry:
            now = _json_ready(degrader.parameters(severity))
            if now != entry["params"]:
                raise ReplayError(f"operator {entry['op']!r} now derives parameters {now} from severity {severity}, "
                                  f"but the record has {entry['params']}: the operator changed since the record "
                                  "was made, so replay would not reproduce it")
        steps.append(Step(entry["op"], severity, entry.get("level")))
    out, _ = apply_steps(image, steps, record["seed"], record["sample_id"], degraders)
    return out


# --------------------------------------------------------------------------------------------------- the spec

@dataclasses.dataclass(frozen=True)
class Group:
    name: str
    ops: tuple[str, ...]
    op_weights: tuple[float, ...]
    weight: float


@dataclasses.dataclass(frozen=True)
class Branch:
    name: str
    weight: float
    groups: tuple[Group, ...]
    k_values: tuple[int, ...]
    k_probabilities: tuple[float, ...]
    level_probabilities: tuple[float, ...] | None  # None: continuous strengths
    strength_range: tuple[float, float] | None
    order: str
    first: tuple[str, ...]
    last: tuple[str, ...]

    def operators(self) -> list[str]:
        return [op for group in self.groups for op in group.ops]


def _probabilities(values: Sequence[Any], what: str) -> tuple[float, ...]:
    try:
        array = np.asarray([float(v) for v in values], dtype=np.float64)
    except (TypeError, ValueError):
        raise PolicyError(f"{what} must be a list of numbers, got {values!r}") from None
    if array.size == 0 or not np.all(np.isfinite(array)) or np.any(array < 0) or array.sum() <= 0:
        raise PolicyError(f"{what} must be non-negative numbers that are not all zero, got {list(values)!r}")
    return tuple((array / array.sum()).tolist())


class Policy:
    """A validated policy: ``plan`` draws the steps for one sample, ``apply`` runs them and returns a record."""

    def __init__(self, spec: dict, name: str | None = None, **options: Any):
        if not isinstance(spec, dict):
            raise PolicyError(f"a policy spec is a dict, got {type(spec).__name__}")
        unknown = set(spec) - _POLICY_KEYS
        if unknown:
            raise PolicyError(f"policy {name or spec.get('name')!r}: unknown key(s) {sorted(unknown)}; "
                              f"valid keys: {sorted(_POLICY_KEYS)}")
        self.spec = copy.deepcopy(spec)
        self.name = str(name or spec.get("name") or "custom")
        self.description = str(spec.get("description", ""))
        self.options = dict(_OPTIONS)
        declared = spec.get("options", {}) or {}
        for source in (declared, options):
            for key, value in source.items():
                if key not in _OPTIONS:
                    raise PolicyError(f"policy {self.name!r}: unknown option {key!r}; valid options: "
                                      f"{sorted(_OPTIONS)}")
                if not isinstance(value, bool):
                    raise PolicyError(f"policy {self.name!r}: option {key!r} must be true or false, got {value!r}")
                self.options[key] = value
        self.clean_probability = float(spec.get("clean_probability", 0.0))
        if not 0.0 <= self.clean_probability <= 1.0:
            raise PolicyError(f"policy {self.name!r}: clean_probability must be in [0, 1], "
                              f"got {spec.get('clean_probability')!r}")
        raw_branches = spec.get("branches")
        if not isinstance(raw_branches, list) or not raw_branches:
            raise PolicyError(f"policy {self.name!r}: 'branches' must be a non-empty list of branch specs")
        self.branches = tuple(self._parse_branch(raw, index) for index, raw in enumerate(raw_branches))
        names = [branch.name for branch in self.branches]
        if len(set(names)) != len(names):
            raise PolicyError(f"policy {self.name!r}: branch names must be unique, got {names}")
        self.branch_probabilities = _probabilities([b.weight for b in self.branches], f"policy {self.name!r} weights")
        self._degraders: dict[str, Any] = {}

    # -- parsing -------------------------------------------------------------------------------------------------
    def _parse_branch(self, raw: Any, index: int) -> Branch:
        where = f"policy {self.name!r} branch #{index}"
        if not isinstance(raw, dict):
            raise PolicyError(f"{where} must be a dict, got {raw!r}")
        unknown = set(raw) - _BRANCH_KEYS
        if unknown:
            raise PolicyError(f"{where}: unknown key(s) {sorted(unknown)}; valid keys: {sorted(_BRANCH_KEYS)}")
        if "from_policy" in raw:
            base = _registered_spec(raw["from_policy"], f"{where} from_policy")
            base_branches = base.get("branches") or []
            if len(base_branches) != 1:
                raise PolicyError(f"{where}: from_policy {raw['from_policy']!r} must have exactly one branch, has "
                                  f"{len(base_branches)}")
            merged = {key: value for key, value in base_branches[0].items() if key not in ("name", "weight")}
            if "groups" in raw or "ops" in raw:
                merged.pop("groups", None)
                merged.pop("ops", None)
            merged.update({key: value for key, value in raw.items() if key != "from_policy"})
            merged.setdefault("name", str(raw["from_policy"]))
            raw = merged
        name = str(raw.get("name", f"branch{index}"))
        where = f"policy {self.name!r} branch {name!r}"
        weight = raw.get("weight", 1.0)
        if not isinstance(weight, (int, float)) or isinstance(weight, bool) or not weight > 0:
            raise PolicyError(f"{where}: weight must be a positive number, got {weight!r}")

        if ("groups" in raw) == ("ops" in raw):
            raise PolicyError(f"{where}: give exactly one of 'groups' (a mapping group -> operators) or 'ops' "
                              "(a list of operators)")
        group_weights = raw.get("group_weights") or {}
        if not isinstance(group_weights, dict):
            raise PolicyError(f"{where}: group_weights must map group names to weights, got {group_weights!r}")
        group_weights = dict(group_weights)
        if "ops" in raw:
            if not isinstance(raw["ops"], list) or not raw["ops"]:
                raise PolicyError(f"{where}: 'ops' must be a non-empty list of operator names, got {raw['ops']!r}")
            raw_groups = {}
            for member in raw["ops"]:  # every operator is its own group; {op, weight} sets that group's weight
                if isinstance(member, dict) and set(member) <= {"op", "weight"} and isinstance(member.get("op"), str):
                    op_name = member["op"]
                    group_weights.setdefault(op_name, member.get("weight", 1.0))
                elif isinstance(member, str):
                    op_name = member
                else:
                    raise PolicyError(f"{where}: 'ops' members must be operator names or {{op: name, weight: w}}, "
                                      f"got {member!r}")
                if op_name in raw_groups:
                    raise PolicyError(f"{where}: 'ops' lists {op_name!r} twice")
                raw_groups[op_name] = [op_name]
        else:
            raw_groups = raw["groups"]
            if not isinstance(raw_groups, dict) or not raw_groups:
                raise PolicyError(f"{where}: 'groups' must be a non-empty mapping group -> list of operators")
        if set(group_weights) - set(raw_groups):
            raise PolicyError(f"{where}: group_weights names unknown groups {sorted(set(group_weights) - set(raw_groups))}")

        groups = []
        unknown_ops = []
        for group_name, members in raw_groups.items():
            if not isinstance(members, list) or not members:
                raise PolicyError(f"{where}: group {group_name!r} must list at least one operator, got {members!r}")
            ops, weights = [], []
            for member in members:
                if isinstance(member, str):
                    op, op_weight = member, 1.0
                elif isinstance(member, dict) and set(member) <= {"op", "weight"} and "op" in member:
                    op, op_weight = member["op"], member.get("weight", 1.0)
                else:
                    raise PolicyError(f"{where}: group {group_name!r} member must be an operator name or "
                                      f"{{op: name, weight: w}}, got {member!r}")
                if not _is_registered(op):
                    unknown_ops.append(op)
                    continue
                if self.options["preserve_alignment"] and _moves_pixels(op):
                    continue
                ops.append(op)
                weights.append(op_weight)
            if ops:
                groups.append(Group(str(group_name), tuple(ops),
                                    _probabilities(weights, f"{where} group {group_name!r} operator weights"),
                                    float(group_weights.get(group_name, 1.0))))
        if unknown_ops:
            from fdcore import registry

            from fdcore import plugins

            broken = "".join(f"; note: {failure.message()}" for failure in plugins.failures()
                             if failure.stage == "register_degraders" or failure.stage == "import")
            raise PolicyError(f"{where} names unregistered operator(s) {sorted(set(unknown_ops))}; registered "
                              f"degraders: {', '.join(registry.names('degraders')) or '(none)'}{broken}")
        if not groups:
            raise PolicyError(f"{where}: no operator is left"
                              + (" after preserve_alignment removed the pixel-moving ones"
                                 if self.options["preserve_alignment"] else ""))
        _probabilities([g.weight for g in groups], f"{where} group weights")

        k_values, k_probabilities = self._parse_k(raw.get("k", 1), where)
        level_probabilities, strength_range = self._parse_levels(raw.get("levels", "uniform"), where)
        order = raw.get("order", "random")
        if order not in ("random", "listed"):
            raise PolicyError(f"{where}: order must be 'random' or 'listed', got {order!r}")
        # Names from the spec as written (not only the operators left after preserve_alignment).
        known_names = set(raw_groups) | {m if isinstance(m, str) else m["op"] for ms in raw_groups.values() for m in ms}
        constraints = {}
        for key in ("first", "last"):
            values = raw.get(key, []) or []
            if not isinstance(values, list) or any(v not in known_names for v in values):
                raise PolicyError(f"{where}: {key!r} must list groups or operators of this branch, got {values!r}")
            constraints[key] = tuple(values)
        if set(constraints["first"]) & set(constraints["last"]):
            raise PolicyError(f"{where}: {sorted(set(constraints['first']) & set(constraints['last']))} "
                              "cannot be both first and last")
        return Branch(name, float(weight), tuple(groups), k_values, k_probabilities, level_probabilities,
                      strength_range, order, constraints["first"], constraints["last"])

    @staticmethod
    def _parse_k(raw: Any, where: str) -> tuple[tuple[int, ...], tuple[float, ...]]:
        def positive_int(value):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise PolicyError(f"{where}: k values must be positive integers, got {value!r}")
            return value

        if isinstance(raw, int) and not isinstance(raw, bool):
            return (positive_int(raw),), (1.0,)
        if isinstance(raw, dict) and set(raw) == {"uniform"} and isinstance(raw["uniform"], list) \
                and len(raw["uniform"]) == 2:
            low, high = (positive_int(v) for v in raw["uniform"])
            if high < low:
                raise PolicyError(f"{where}: k uniform range {raw['uniform']} is empty")
            values = tuple(range(low, high + 1))
            return values, tuple(1.0 / len(values) for _ in values)
        if isinstance(raw, dict) and set(raw) == {"values", "probabilities"}:
            values = tuple(positive_int(v) for v in raw["values"])
            if len(values) != len(raw["probabilities"]):
                raise PolicyError(f"{where}: k values and probabilities differ in length")
            return values, _probabilities(raw["probabilities"], f"{where} k probabilities")
        raise PolicyError(f"{where}: k must be an integer, {{uniform: [low, high]}} or "
                          f"{{values: [...], probabilities: [...]}}, got {raw!r}")

    @staticmethod
    def _parse_levels(raw: Any, where: str):
        if raw == "uniform":
            return tuple(1.0 / LEVEL_COUNT for _ in range(LEVEL_COUNT)), None
        if isinstance(raw, dict) and set(raw) == {"probabilities"}:
            if len(raw["probabilities"]) != LEVEL_COUNT:
                raise PolicyError(f"{where}: level probabilities need {LEVEL_COUNT} values (levels 1..5), got "
                                  f"{raw['probabilities']!r}")
            return _probabilities(raw["probabilities"], f"{where} level probabilities"), None
        if isinstance(raw, dict) and set(raw) == {"uniform_strength"}:
            bounds = raw["uniform_strength"]
            if (not isinstance(bounds, list) or len(bounds) != 2
                    or not all(isinstance(b, (int, float)) for b in bounds) or not 0 < bounds[0] <= bounds[1] <= 1):
                raise PolicyError(f"{where}: uniform_strength must be [low, high] with 0 < low <= high <= 1, "
                                  f"got {bounds!r}")
            return None, (float(bounds[0]), float(bounds[1]))
        raise PolicyError(f"{where}: levels must be 'uniform', {{probabilities: [5 values]}} or "
                          f"{{uniform_strength: [low, high]}}, got {raw!r}")

    # -- sampling ------------------------------------------------------------------------------------------------
    def operators(self) -> list[str]:
        """Every operator this policy can apply (sorted)."""
        return sorted({op for branch in self.branches for op in branch.operators()})

    def plan(self, seed: int, sample_id: int | str = 0) -> tuple[str, list[Step]]:
        """The branch name and the steps for one sample. The draws happen in a fixed sequence (clean coin, branch,
        k, groups, operator per group, level per operator), each made even when it has one outcome, so that
        editing one weight never shifts the draws behind it."""
        rng = sampler_rng(seed, sample_id)
        clean = rng.random() < self.clean_probability
        branch = self.branches[int(rng.choice(len(self.branches), p=self.branch_probabilities))]
        k = int(branch.k_values[int(rng.choice(len(branch.k_values), p=branch.k_probabilities))])
        k = min(k, len(branch.groups))
        group_p = np.array([g.weight for g in branch.groups], dtype=np.float64)
        chosen = [branch.groups[int(i)] for i in rng.choice(len(branch.groups), size=k, replace=False,
                                                            p=group_p / group_p.sum())]
        picks = []
        for group in chosen:
            op = group.ops[int(rng.choice(len(group.ops), p=group.op_weights))]
            if branch.level_probabilities is not None:
                level = int(rng.choice(LEVEL_COUNT, p=branch.level_probabilities)) + 1
                picks.append((group, Step(op, level / LEVEL_COUNT, level)))
            else:
                low, high = branch.strength_range
                picks.append((group, Step(op, float(rng.uniform(low, high)), None)))
        if clean:
            return "clean", []
        if branch.order == "listed":
            position = {group.name: i for i, group in enumerate(branch.groups)}
            picks.sort(key=lambda pick: position[pick[0].name])

        def rank(pick):
            group, step = pick
            for names, value in ((branch.first, 0), (branch.last, 2)):
                for index, name in enumerate(names):
                    if name in (group.name, step.op):
                        return (value, index)
            return (1, 0)

        picks.sort(key=rank)  # stable: the random (or listed) order survives within each rank
        return branch.name, [step for _, step in picks]

    def apply(self, image: np.ndarray, seed: int, sample_id: int | str = 0) -> tuple[np.ndarray, dict]:
        """Degrade one uint8 HxWx3 image; returns the new image and its JSON-ready record."""
        branch, steps = self.plan(seed, sample_id)
        out, op_records = apply_steps(image, steps, seed, sample_id, self._degraders)
        record = {"format": RECORD_FORMAT, "policy": self.name, "options": dict(self.options), "seed": int(seed),
                  "sample_id": sample_id if isinstance(sample_id, str) else int(sample_id), "branch": branch,
                  "ops": op_records}
        return out, record

    def describe(self) -> dict:
        return {"name": self.name, "description": self.description, "options": dict(self.options),
                "clean_probability": self.clean_probability,
                "branches": [{"name": b.name, "probability": p, "k": dict(zip(b.k_values, b.k_probabilities)),
                              "groups": {g.name: list(g.ops) for g in b.groups}}
                             for b, p in zip(self.branches, self.branch_probabilities)]}

    def __repr__(self) -> str:
        return f"Policy({self.name!r}, options={self.options})"


def _is_registered(op: Any) -> bool:
    from fdcore import registry

    return isinstance(op, str) and op in registry.table("degraders")


def _moves_pixels(op: str) -> bool:
    from fdcore import registry

    return bool(getattr(registry.get("degraders", op), "moves_pixels", False))


def _registered_spec(name: Any, where: str) -> dict:
    from fdcore import registry

    if not isinstance(name, str) or name not in registry.table("policies"):
        raise PolicyError(f"{where}: {name!r} is not a registered policy; registered policies: "
                          f"{', '.join(registry.names('policies'))}")
    spec = registry.get("policies", name)
    spec = spec() if callable(spec) else spec
    if not isinstance(spec, dict):
        raise PolicyError(f"registered policy {name!r} is a {type(spec).__name__}, not a dict")
    return spec


def read_policy_file(path: str | Path) -> dict:
    """A policy spec from a .yaml/.yml/.json file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise PolicyError(f"cannot read policy file {path}: {exc.strerror or exc}") from exc
    try:
        if path.suffix.lower() == ".json":
            spec = json.loads(text)
        else:
            import yaml

            spec = yaml.safe_load(text)
    except Exception as exc:
        raise PolicyError(f"policy file {path} is not valid {path.suffix.lstrip('.').upper() or 'YAML'}: {exc}") from exc
    if not isinstance(spec, dict):
        raise PolicyError(f"policy file {path} must contain a mapping at the top level, got {type(spec).__name__}")
    return spec


def load_policy(policy: str | Path | dict | Policy, **options: Any) -> Policy:
    """A :class:`Policy` from a registered name (``"ntire2026"``), a YAML/JSON file path, a spec dict or a Policy.

    Options (e.g. ``preserve_alignment=True``) override the spec's own. Every operator the policy names must be
    registered: an unknown one raises :class:`PolicyError` here, not in the middle of a run.
    """
    if isinstance(policy, Policy):
        return Policy(policy.spec, policy.name, **{**policy.options, **options}) if options else policy
    if isinstance(policy, dict):
        return Policy(policy, **options)
    if isinstance(policy, (str, Path)):
        from fdcore import registry

        text = str(policy)
        if isinstance(policy, str) and text in registry.table("policies"):
            return Policy(_registered_spec(text, "load_policy"), text, **options)
        path = Path(text)
        if path.suffix.lower() in (".yaml", ".yml", ".json") or path.exists():
            if not path.is_file():
                raise PolicyError(f"policy file {path} does not exist")
            spec = read_policy_file(path)
            return Policy(spec, spec.get("name") or path.stem, **options)
        names = registry.names("policies")
        raise PolicyError(f"unknown policy {text!r}{registry.did_you_mean(text, names)}: not a registered policy "
                          f"({', '.join(names)}) nor a .yaml/.json file")
    raise PolicyError(f"a policy is a name, a file path, a dict or a Policy, got {type(policy).__name__}")

