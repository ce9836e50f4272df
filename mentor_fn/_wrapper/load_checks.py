"""Checking saved optimizer and scheduler state before anything is loaded.

torch loads whatever it is given: a StepLR state into a CosineAnnealingLR
(its ``T_max`` silently kept, its class's fields overwritten), junk into any
scheduler, moments of other shapes into an optimizer (it fails at the first
``step()``, or broadcasts). These checks compare saved data with what this run
would make itself, so a mismatch is a ``ValueError`` naming the field before
anything changes. Every check is one that holds for every torch optimizer and
scheduler; where one cannot be made soundly (an optimizer whose probe step
fails), it is skipped rather than guessed.
"""

from __future__ import annotations

import numbers
from collections.abc import Mapping, Sequence
from typing import Any

import torch

from .._core.groups import DECAY_KEY, is_reference_group
from .lr_schedulers import GROUP_LR_KEYS, iter_schedulers
from .optimizer_recipe import OptimizerRecipe
from .optimizers import optimizer_on_one_group
from .qualified_names import qualified_name

__all__ = [
    "check_saved_layout",
    "check_saved_optimizer",
    "check_saved_scheduler",
    "parameter_shaped_state_keys",
    "scheduler_classes",
]

# Bookkeeping every LRScheduler keeps, added and removed across torch versions
# (``verbose`` went, ``_is_initial`` came): tolerated when only one side has it.
_VERSION_DEPENDENT_KEYS = frozenset(
    {"verbose", "_step_count", "_is_initial", "_get_lr_called_within_step"}
)
# Probe shapes: distinct, so a state tensor has a parameter's shape only by design.
_PROBE_SHAPES = ((5,), (3, 2), (2, 3, 2))


def scheduler_classes(scheduler: Any) -> list[str]:
    """Qualified class names of a scheduler and its nested schedulers, in order."""
    return [qualified_name(type(node)) for node in iter_schedulers(scheduler)]


def check_saved_scheduler(saved: object, fresh: Any, *, saved_classes: object = None) -> None:
    """Raise ValueError unless ``saved`` is state of a scheduler like ``fresh``.

    ``fresh`` is what the factory makes on the loaded optimizer. The saved
    classes (when recorded) must be fresh's; the saved state must have fresh's
    keys (for nested schedulers too) and, key by key, values of the same kind:
    number, bool, str, None, a list of the same length (one lr per group),
    a dict with the same str keys.
    """
    if saved_classes is not None:
        expected = scheduler_classes(fresh)
        if saved_classes != expected:
            raise ValueError(
                f"field 'scheduler': the state was saved from {_listing(saved_classes)}, "
                f"but the scheduler factory makes {_listing(expected)}"
            )
    _same_structure(saved, fresh.state_dict(), "scheduler")


def _listing(classes: object) -> str:
    if isinstance(classes, (list, tuple)):
        return " + ".join(map(str, classes))
    return repr(classes)


_EXACT_KINDS: dict[type, str] = {
    type(None): "None",
    bool: "a bool",
    int: "a number",
    float: "a number",
    str: "a str",
    dict: "a dict",
    list: "a list",
    tuple: "a list",
}


def _kind(value: object) -> str:
    kind = _EXACT_KINDS.get(type(value))  # the usual types, without ABC checks
    if kind is not None:
        return kind
    # None and bool (which cannot be subclassed) are exact kinds, found above.
    if isinstance(value, (numbers.Real, torch.Tensor)):
        return "a number"
    if isinstance(value, str):
        return "a str"
    if isinstance(value, Mapping):
        return "a dict"
    if isinstance(value, (list, tuple)):
        return "a list"
    return type(value).__name__


_SCALARS = frozenset({type(None), bool, int, float, str})


def _same_structure(saved: object, expected: object, path: str) -> None:
    if type(saved) is type(expected) and type(expected) in _SCALARS:
        return  # the usual case, decided without building the kinds
    kind, expected_kind = _kind(saved), _kind(expected)
    if kind != expected_kind:
        raise ValueError(f"field {path!r}: expected {expected_kind}, got {kind}: {saved!r:.80}")
    if expected_kind == "a dict":
        assert isinstance(saved, Mapping) and isinstance(expected, Mapping)
        if not all(isinstance(key, str) for key in expected):
            return  # data, not fields (MultiStepLR's milestone counts): the saved one wins
        missing = [k for k in expected if k not in saved and k not in _VERSION_DEPENDENT_KEYS]
        extra = [k for k in saved if k not in expected and k not in _VERSION_DEPENDENT_KEYS]
        if missing or extra:
            details = []
            if missing:
                details.append(f"lacks {sorted(map(str, missing))}")
            if extra:
                details.append(f"has {sorted(map(str, extra))} it does not know")
            raise ValueError(
                f"field {path!r} is not the state of the scheduler the factory makes: "
                f"it {' and '.join(details)}"
            )
        for key, value in expected.items():
            if key in saved:
                _same_structure(saved[key], value, f"{path}.{key}")
    elif expected_kind == "a list":
        assert isinstance(saved, (list, tuple)) and isinstance(expected, (list, tuple))
        if len(saved) != len(expected):
            raise ValueError(
                f"field {path!r}: expected {len(expected)} entries (one per optimizer group "
                f"where it is per group), got {len(saved)}"
            )
        for index, (item, expected_item) in enumerate(zip(saved, expected)):
            _same_structure(item, expected_item, f"{path}[{index}]")


def parameter_shaped_state_keys(
    recipe: OptimizerRecipe, like: torch.Tensor
) -> frozenset[str] | None:
    """The per-parameter state keys that always have their parameter's shape.

    Learned, not listed: a scratch optimizer of the recipe takes one step on
    probes of three distinct shapes (dtype and device of ``like``); a key is
    parameter-shaped if every probe's tensor under it has that probe's shape
    (Adam's ``exp_avg``, SGD's ``momentum_buffer``, ...; not ``step``, nor
    Adafactor's factored rows). None when the probe step fails (LBFGS needs a
    closure): then no shape can be checked.
    """
    probes = [
        torch.full(shape, 0.5, dtype=like.dtype, device=like.device, requires_grad=True)
        for shape in _PROBE_SHAPES
    ]
    try:
        scratch = optimizer_on_one_group(recipe, probes)
        for probe in probes:
            probe.grad = torch.full_like(probe, 0.25)
        scratch.step()
    except Exception:
        return None
    shaped: set[str] = set()
    not_shaped: set[str] = set()
    for probe in probes:
        for key, value in scratch.state.get(probe, {}).items():
            if isinstance(value, torch.Tensor) and value.shape == probe.shape:
                shaped.add(key)
            else:
                not_shaped.add(key)
    return frozenset(shaped - not_shaped)


def check_saved_optimizer(
    saved: object, parameters: Mapping[str, torch.Tensor], recipe: OptimizerRecipe
) -> None:
    """Raise ValueError unless ``saved`` (named groups and state) fits these parameters.

    Checks the structure (``param_groups``: dicts whose ``params`` name known
    parameters, each at most once; ``state``: a dict per known parameter), the
    kind of every hyperparameter against the optimizer's defaults (a number
    stays a number, betas stay a pair, lr-like values are numbers), and that
    parameter-shaped state (see :func:`parameter_shaped_state_keys`) has its
    parameter's shape.
    """
    if not isinstance(saved, Mapping) or set(saved) != {"param_groups", "state"}:
        raise ValueError("field 'optimizer': expected a dict with keys 'param_groups' and 'state'")
    groups, state = saved["param_groups"], saved["state"]
    if not isinstance(groups, (list, tuple)) or not all(isinstance(g, Mapping) for g in groups):
        raise ValueError("field 'optimizer.param_groups': expected a list of dicts")
    if not isinstance(state, Mapping):
        raise ValueError("field 'optimizer.state': expected a dict keyed by parameter name")
    like = next(iter(parameters.values()), None)
    # What each group value must look like: lr-like values are numbers, the
    # others like the optimizer's defaults (None there accepts anything).
    expectations: dict[str, object] = {
        key: value
        for key, value in (_defaults(recipe, like) if like is not None else {}).items()
        if value is not None
    }
    expectations.update(dict.fromkeys(GROUP_LR_KEYS, 0.0))
    seen: set[str] = set()
    for number, group in enumerate(groups):
        names = group.get("params")
        if not _is_list_of_str(names):
            raise ValueError(f"field '{_group(number)}.params': expected a list of parameter names")
        unknown = [name for name in names if name not in parameters]
        if unknown:
            raise ValueError(
                f"field '{_group(number)}.params' names unknown parameters: {unknown[:8]}"
            )
        again = [name for name in names if name in seen]
        if again:
            raise ValueError(
                f"field '{_group(number)}.params': {again[:8]} already in an earlier group"
            )
        seen.update(names)
        for key, value in group.items():
            expected = expectations.get(key)
            if expected is None or (type(value) is type(expected) and type(value) in _SCALARS):
                continue  # nothing to check, or the usual case (inlined: once per group and key)
            if value is None and key in GROUP_LR_KEYS and key != "lr":
                continue  # a scheduler's key the group does not use
            _same_structure(value, expected, f"{_group(number)}.{key}")
    unknown = [name for name in state if name not in parameters]
    if unknown:
        raise ValueError(f"field 'optimizer.state' names unknown parameters: {unknown[:8]}")
    shaped: frozenset[str] | None = None
    for name, values in state.items():
        if type(values) is not dict and not isinstance(values, Mapping):
            raise ValueError(f"field 'optimizer.state.{name}': expected a dict")
        if shaped is None:
            shaped = parameter_shaped_state_keys(recipe, parameters[name]) or frozenset()
        expected_shape = parameters[name].shape
        for key in shaped:
            value = values.get(key)
            if isinstance(value, torch.Tensor) and value.shape != expected_shape:
                raise ValueError(
                    f"field 'optimizer.state.{name}.{key}' has shape {tuple(value.shape)}, "
                    f"but parameter {name!r} has shape {tuple(expected_shape)}: saved from "
                    "another model?"
                )


def check_saved_layout(
    groups: Sequence[Mapping[str, Any]],
    layers: Sequence[str],
    required: Sequence[str],
) -> None:
    """Raise ValueError unless saved groups form a layout a Curriculum derives.

    Every group names its ``layers`` (known ones) and its ``coefficient`` (a
    finite number >= 0), and, split by weight decay, its half (a bool); one
    is the reference group; every parameter named in
    ``required`` (those of trainable layers) is in a group, so no trainable
    parameter is left out of the optimizer.
    """
    known = set(layers)
    has_reference = False
    for number, group in enumerate(groups):
        group_layers = group.get("layers")
        if not _is_list_of_str(group_layers):
            raise ValueError(
                f"field '{_group(number)}.layers': expected the list of layer names a Curriculum "
                f"records in each group, got {group_layers!r:.80}"
            )
        assert group_layers is not None
        unknown = [layer for layer in group_layers if layer not in known]
        if unknown:
            raise ValueError(f"field '{_group(number)}.layers' names unknown layers: {unknown[:8]}")
        coefficient = group.get("coefficient")
        if type(coefficient) is not float and (
            isinstance(coefficient, bool) or not isinstance(coefficient, numbers.Real)
        ):
            coefficient = None  # the ABC check only for what is not a float already
        if coefficient is None or not 0 <= float(coefficient) < float("inf"):
            raise ValueError(
                f"field '{_group(number)}.coefficient': expected a finite number >= 0, "
                f"got {group.get('coefficient')!r}"
            )
        half = group.get(DECAY_KEY)
        if half is not None and not isinstance(half, bool):
            raise ValueError(
                f"field '{_group(number)}.{DECAY_KEY}': expected a bool (which weight-decay "
                f"half the group holds), got {half!r:.80}"
            )
        has_reference = has_reference or is_reference_group(group)
    if not has_reference:
        raise ValueError(
            "field 'optimizer.param_groups' has no reference group (no layers, no parameters)"
        )
    grouped = {name for group in groups for name in group["params"]}
    left_out = [name for name in required if name not in grouped]
    if left_out:
        raise ValueError(
            f"field 'optimizer.param_groups' leaves out parameters of trainable layers: "
            f"{left_out[:8]}"
        )


def _defaults(recipe: OptimizerRecipe, like: torch.Tensor) -> dict[str, Any]:
    """The group values the recipe's optimizer gives a group, ``params`` excluded."""
    probe = torch.zeros(1, dtype=like.dtype, device=like.device, requires_grad=True)
    try:
        scratch = optimizer_on_one_group(recipe, [probe])
    except Exception:
        return {}
    return {key: value for key, value in scratch.param_groups[0].items() if key != "params"}


def _group(number: int) -> str:
    # Only in messages: made when raising, not once per group.
    return f"optimizer.param_groups[{number}]"


def _is_list_of_str(value: object) -> bool:
    # set(map(type, ...)) runs in C: this is called once per saved group.
    return isinstance(value, (list, tuple)) and set(map(type, value)) <= {str}
