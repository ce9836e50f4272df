"""Checks of the invariant's points 1-3 (docs/design.md) on live objects, with readable failures.

Each check reads the model through :func:`view_model` (torch's registries,
not mentor_fn's traversal), collects every problem it finds and raises one
``AssertionError`` that names the culprits: parameters by name and owning
layer, groups by index and layers, expected against actual values.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from .._core.groups import DECAY_KEY
from .._core.state import CurriculumState
from .._wrapper.curriculum import Curriculum
from ._views import ModelView, view_model

__all__ = [
    "LR_KEYS",
    "check_flags",
    "check_lrs",
    "check_partition",
    "flags_agree",
    "partition_agrees",
]

LR_KEYS = ("lr", "initial_lr", "max_lr", "min_lr")
"""The lr-like values torch keeps per param group (schedulers recompute from them)."""

# Patches multiply an lr by new/old ratios and schedulers recompute it step by
# step: every multiplication may round, so a group's lr drifts from the exact
# product by a few ulps per operation. 2**-40 (about 1e-12) is thousands of
# ulps yet far below any real mistake (a wrong coefficient is off by >1%).
DEFAULT_REL_TOL = 2.0**-40

_MAX_LISTED = 10


def _fail(title: str, problems: list[str], footer: str = "") -> None:
    if not problems:
        return
    shown = problems[:_MAX_LISTED]
    if len(problems) > _MAX_LISTED:
        shown.append(f"... and {len(problems) - _MAX_LISTED} more")
    message = title + "\n" + "\n".join(f"  - {problem}" for problem in shown)
    raise AssertionError(message + (f"\n{footer}" if footer else ""))


def _check_layers(state: CurriculumState, view: ModelView, check: str) -> None:
    if tuple(state.layers) == view.layers:
        return
    missing = [layer for layer in view.layers if layer not in state.layers]
    extra = [layer for layer in state.layers if layer not in view.layers]
    detail = f"layers of the model missing from the state: {missing}; " if missing else ""
    detail += f"layers of the state not in the model: {extra}" if extra else ""
    raise AssertionError(
        f"{check}: the state is not for this model: {detail or 'the layers are in another order'}"
    )


def check_flags(state: CurriculumState, model: nn.Module) -> None:
    """Invariant 1: a parameter requires grad iff its owning layer is not frozen.

    Under the ``"train"`` norm policy, parameters of normalization modules
    (by type) train inside frozen layers too. A parameter that does not train
    must also hold no ``.grad`` (mentor_fn drops them, so no optimizer
    applies a stale gradient).

    Raises:
        AssertionError: naming every parameter whose flag is wrong.

    Example:
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> state = CurriculumState.from_model(model).freeze("0")
        >>> check_flags(state, model)
        Traceback (most recent call last):
        ...
        AssertionError: check_flags: requires_grad disagrees with the state (invariant 1):
          - '0.weight' (layer '0'): requires_grad is True, but its layer is frozen
          - '0.bias' (layer '0'): requires_grad is True, but its layer is frozen
    """
    flags_agree(state, view_model(model))


def flags_agree(state: CurriculumState, view: ModelView) -> None:
    """:func:`check_flags` on a model already read (the machine reads it once)."""
    _check_layers(state, view, "check_flags")
    problems = []
    for parameter in view.parameters.values():
        frozen = not view.trains(state, view.owners[id(parameter)])
        if parameter.requires_grad == frozen:
            problems.append(
                f"{view.describe(parameter)}: requires_grad is {parameter.requires_grad}, but "
                f"its layer is {'frozen' if frozen else 'trainable'}"
            )
        elif frozen and parameter.grad is not None:
            problems.append(f"{view.describe(parameter)}: frozen, but holds a .grad")
    _fail("check_flags: requires_grad disagrees with the state (invariant 1):", problems)


def _group_label(index: int, group: Mapping[str, Any]) -> str:
    return f"group {index} (layers {group.get('layers', '<no layers key>')!r})"


def _groups_table(optimizer: torch.optim.Optimizer, view: ModelView) -> str:
    lines = ["the optimizer's groups:"]
    for index, group in enumerate(optimizer.param_groups):
        names = [view.names.get(id(p), "<not the model's>") for p in group["params"]]
        lines.append(
            f"  {index}: layers {group.get('layers', '<none>')!r}, coefficient "
            f"{group.get('coefficient', '<none>')!r}, lr {group.get('lr')!r}, params {names}"
        )
    return "\n".join(lines)


def check_partition(
    optimizer: torch.optim.Optimizer, state: CurriculumState, model: nn.Module
) -> None:
    """Invariant 2: every trainable parameter is in exactly one optimizer group.

    By identity, not by name ("trainable" as :func:`check_flags` reads it,
    norm policy included). Also: no parameter is in two groups; a group
    holds exactly the parameters its ``layers`` own (groups split by weight
    decay: a layer's two halves together hold them, each half in one group,
    the no-decay half at ``weight_decay`` 0.0), and its ``coefficient``
    is what the state says for each of them; a parameter of a frozen layer
    may sit in an (inert) group, but with ``requires_grad`` False; at most one
    group is the parameter-less reference group (``layers == ()``,
    coefficient 1.0) that :class:`~mentor_fn.Curriculum` keeps.

    Raises:
        AssertionError: naming each misplaced parameter and each wrong group,
            followed by a table of the optimizer's groups.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> from mentor_fn import param_groups
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> state = CurriculumState.from_model(model)
        >>> check_partition(torch.optim.SGD(param_groups(state, model, 0.1)), state, model)
    """
    partition_agrees(optimizer, state, view_model(model))


def partition_agrees(
    optimizer: torch.optim.Optimizer, state: CurriculumState, view: ModelView
) -> None:
    """:func:`check_partition` on a model already read."""
    _check_layers(state, view, "check_partition")
    problems: list[str] = []
    owned: dict[str, list[int]] = {}
    for parameter in view.parameters.values():
        owned.setdefault(view.owners[id(parameter)], []).append(id(parameter))
    membership: dict[int, list[int]] = {id(p): [] for p in view.parameters.values()}
    halves_of: dict[str, list[tuple[int, bool | None]]] = {}  # layer -> (group, half) pairs
    split_present: dict[str, set[int]] = {}  # layer -> its parameters in its split groups
    reference_groups = []
    groups = optimizer.param_groups
    for index, group in enumerate(groups):
        label = _group_label(index, group)
        params = group["params"]
        for parameter in params:
            if id(parameter) in membership:
                membership[id(parameter)].append(index)
            else:
                problems.append(f"{label} holds {view.describe(parameter)}")
        layers = group.get("layers")
        if not isinstance(layers, tuple):
            problems.append(
                f"{label}: 'layers' must be a tuple of layer names (not derived by mentor_fn?)"
            )
            continue
        if layers == ():
            reference_groups.append(index)
            if params:
                problems.append(
                    f"{label} is a reference group (no layers) but holds {len(params)} parameters, first {view.describe(params[0])}"
                )
            if group.get("coefficient") != 1.0:
                problems.append(
                    f"{label} is a reference group but has coefficient {group.get('coefficient')!r}, not 1.0"
                )
            continue
        # Split by weight decay, a layer has a group per half: its decay
        # half (True) and its no-decay half (False), with weight decay 0.0.
        half = group.get(DECAY_KEY)
        if half is False and group.get("weight_decay") != 0.0:
            problems.append(
                f"{label} holds a no-decay half, but its weight_decay is "
                f"{group.get('weight_decay')!r}, not 0.0"
            )
        for layer in layers:
            if layer not in owned:
                known = (
                    "owns no parameter" if layer in view.layers else "is not a layer of the model"
                )
                problems.append(f"{label}: layer {layer!r} {known}")
                continue
            earlier = halves_of.setdefault(layer, [])
            if earlier and (half is None or len(earlier) > 1 or earlier[0][1] in (None, half)):
                problems.append(f"layer {layer!r} is in group {earlier[0][0]} and {label}")
            earlier.append((index, half))
            if state.coefficient(layer) != group.get("coefficient"):
                problems.append(
                    f"{label} has coefficient {group.get('coefficient')!r}, but the state gives "
                    f"layer {layer!r} {state.coefficient(layer)!r}"
                )
        expected = {pid for layer in layers for pid in owned.get(layer, ())}
        present = {id(p) for p in params}
        if half is None:
            for name, parameter in view.parameters.items():
                if id(parameter) in expected and id(parameter) not in present:
                    problems.append(
                        f"{label} lacks {name!r}, owned by its layer {view.owners[id(parameter)]!r}"
                    )
        else:
            for pid in present:
                split_present.setdefault(view.owners.get(pid, ""), set()).add(pid)
        for parameter in params:
            if id(parameter) in view.owners and id(parameter) not in expected:
                problems.append(f"{label} holds {view.describe(parameter)}, owned by another layer")
    if len(reference_groups) > 1:
        problems.append(f"more than one reference group (no layers): groups {reference_groups}")
    for layer, entries in halves_of.items():
        if entries[0][1] is None:
            continue
        where = " and ".join(_group_label(i, groups[i]) for i, _ in entries)
        for name, parameter in view.parameters.items():
            pid = id(parameter)
            if view.owners[pid] == layer and pid not in split_present.get(layer, ()):
                problems.append(f"{where} lack {name!r}, owned by their layer {layer!r}")

    for parameter in view.parameters.values():
        indices = membership[id(parameter)]
        frozen = not view.trains(state, view.owners[id(parameter)])
        where = ", ".join(_group_label(i, groups[i]) for i in indices)
        if len(indices) > 1:
            problems.append(f"{view.describe(parameter)} is in {len(indices)} groups: {where}")
        elif not frozen and not indices:
            problems.append(f"trainable {view.describe(parameter)} is in no group")
        elif frozen and indices and parameter.requires_grad:
            problems.append(f"frozen {view.describe(parameter)} is in {where} and requires grad")
    _fail(
        "check_partition: the optimizer's groups disagree with the state (invariant 2):",
        problems,
        _groups_table(optimizer, view),
    )


def check_lrs(
    curriculum: Curriculum,
    reference_lr: float | Mapping[str, Any],
    *,
    rel_tol: float = DEFAULT_REL_TOL,
) -> None:
    """Invariant 3: every group's lr is the flat reference's times its layers' coefficient.

    ``reference_lr`` is the lr one flat group with the global lr would have
    under the same scheduler after the same steps (build a one-parameter
    optimizer of the same class, with a scheduler from the same factory, and
    step both in lockstep). Pass that flat group itself (a mapping) to
    compare every lr-like value torch keeps in it (``lr``, ``initial_lr``,
    ``max_lr``, ``min_lr``: schedulers recompute from them later). The
    coefficient comes from the state, for inert groups of frozen layers
    too; the reference group (``layers == ()``) has coefficient 1.

    Args:
        curriculum: a built Curriculum.
        reference_lr: the flat lr, or the flat param group.
        rel_tol: relative tolerance (default 2**-40, a few thousand ulps:
            rounding of repeated rescaling, far below a wrong coefficient).

    Raises:
        AssertionError: naming each group whose lr is off, with expected and
            actual values and their ratio.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> curriculum = Curriculum(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1)), 0.1)
        >>> _ = curriculum.build()
        >>> _ = curriculum.set_lr_coefficient(0.5, "0")
        >>> check_lrs(curriculum, 0.1)
        >>> curriculum.optimizer.param_groups[0]["lr"] = 0.1
        >>> check_lrs(curriculum, 0.1)
        Traceback (most recent call last):
        ...
        AssertionError: check_lrs: group lrs are not the reference lr times the coefficient (invariant 3):
          - group 0 (layers ('0',)), coefficient 0.5: lr is 0.1, expected 0.1 x 0.5 = 0.05 (2 times too large)
    """
    optimizer = curriculum.optimizer
    if optimizer is None:
        raise AssertionError("check_lrs: the Curriculum is not built (no optimizer); call build()")
    if isinstance(reference_lr, Mapping):
        reference = {key: reference_lr[key] for key in LR_KEYS if reference_lr.get(key) is not None}
    else:
        reference = {"lr": reference_lr}
    state = curriculum.state
    problems = []
    for index, group in enumerate(optimizer.param_groups):
        label = _group_label(index, group)
        layers = group.get("layers")
        if not isinstance(layers, tuple):
            problems.append(f"{label}: no 'layers' tuple, so no coefficient to check against")
            continue
        coefficients = {state.coefficient(layer) for layer in layers} or {1.0}
        if len(coefficients) > 1:
            problems.append(
                f"{label}: its layers have different coefficients {sorted(coefficients)}"
            )
            continue
        (coefficient,) = coefficients
        for key, flat in reference.items():
            if key not in group:
                problems.append(f"{label}: has no {key!r}, the reference has {flat!r}")
                continue
            actual, expected = float(group[key]), float(flat) * coefficient
            if not math.isclose(actual, expected, rel_tol=rel_tol, abs_tol=0.0):
                problems.append(
                    f"{label}, coefficient {coefficient!r}: {key} is {actual!r}, expected "
                    f"{float(flat)!r} x {coefficient!r} = {expected!r}{_ratio(actual, expected)}"
                )
    _fail(
        "check_lrs: group lrs are not the reference lr times the coefficient (invariant 3):",
        problems,
    )


def _ratio(actual: float, expected: float) -> str:
    if expected == 0.0 or actual == 0.0:
        return ""
    ratio = actual / expected
    if ratio >= 1:
        return f" ({ratio:.6g} times too large)"
    return f" ({1 / ratio:.6g} times too small)"
