"""Deriving optimizer param groups and requires_grad flags from a state (pure).

Setting the flags on a model is not pure: that lives in ``_requires_grad``,
beside the wrapper.

One traversal of the model, with the state's resolved values looked up by
position: linear in the number of layers. With ``no_weight_decay`` rules, each
layer's parameters split into a decay half and a no-decay half, each its own
group (see :func:`param_groups`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from torch import nn

from .messages import check_same_layers, short_list
from .model_walk import ModelLayers, walk_model
from .state import CurriculumState
from .validation import validate_coefficient, validate_lr
from .weight_decay import NoWeightDecayRule, WeightDecayRules, weight_decay_rules

__all__ = [
    "DECAY_KEY",
    "Halves",
    "decay_halves",
    "groups_of_walk",
    "is_reference_group",
    "param_groups",
    "requires_grad_map",
    "unit_groups_of_walk",
    "walk_for_state",
    "with_norm_layers_of",
]

DECAY_KEY = "applies_weight_decay"
"""The group key saying which half of a layer's parameters a group holds.

True: the parameters that get the group's ``weight_decay``; False: those the
``no_weight_decay`` rules exclude (the group's ``weight_decay`` is 0.0).
Groups carry it only when there are rules.
"""

Halves = tuple[tuple[tuple[nn.Parameter, ...], tuple[nn.Parameter, ...]], ...]
"""Per layer of a walk: (its parameters that get weight decay, those that do not)."""


def walk_for_state(state: CurriculumState, model: nn.Module) -> ModelLayers:
    """Walk ``model`` and check that its layers are the state's."""
    if not isinstance(state, CurriculumState):
        raise TypeError(f"expected a CurriculumState, got {type(state).__name__}")
    walked = walk_model(model)
    check_same_layers(state.layers, walked.layers, "the model")
    return walked


def with_norm_layers_of(state: CurriculumState, walked: ModelLayers) -> CurriculumState:
    """``state``, with the walked model's norm layers where the policy reads them.

    Only the ``"train"`` policy makes a layer's kind change what trains; a
    state made by hand (``CurriculumState(layers)``) knows no norm layers, but
    the model is right here, and normalization is a matter of module type.
    """
    if state.norm_policy != "train" or state.norm_layers == walked.norm_layers:
        return state
    return state.with_layer_kinds(
        parameter_owners=state.parameter_owners, norm_layers=walked.norm_layers
    )


def param_groups(
    state: CurriculumState,
    model: nn.Module,
    lr: float,
    *,
    coalesce: bool = False,
    weight_decay: float | None = None,
    no_weight_decay: Iterable[NoWeightDecayRule] = (),
) -> list[dict[str, Any]]:
    """Optimizer param groups for ``model`` under ``state``.

    One group per trainable layer that owns at least one parameter, in layer
    order, with ``lr = lr * coefficient``. Each group also carries ``layers``
    (the tuple of layer names it covers) and ``coefficient``; torch keeps such
    extra keys, and :func:`layout_of` reads them back. With ``coalesce=True``,
    layers of equal coefficient share one group (ordered by first appearance):
    fewer groups, faster optimizer steps.

    With ``no_weight_decay`` rules, each of those groups splits in two: the
    parameters the rules exclude (``weight_decay`` 0.0,
    ``applies_weight_decay`` False) and the others (``applies_weight_decay``
    True, ``weight_decay`` as given, or, when ``weight_decay`` is None, no
    ``weight_decay`` key: the optimizer's own applies), the decay half first,
    a half without parameters left out. Coalesced groups are then keyed by
    (coefficient, half). Without rules the groups are exactly as without
    these keywords, except that a given ``weight_decay`` is set on each.

    Args:
        state: the curriculum state of ``model``.
        model: the model (bare, or wrapped in DDP / DataParallel / compile).
        lr: the global learning rate.
        coalesce: one group per distinct coefficient instead of per layer.
        weight_decay: the decay of the decay half (finite, >= 0).
        no_weight_decay: rules naming the parameters that get none:
            ``"bias"``, ``"norm"`` (parameters of normalization modules, by
            type), ``"embedding"``, ``"1d"`` (``ndim <= 1``), any other str
            as a regex on the full parameter name (``re.fullmatch``), or a
            callable ``(name, parameter, module) -> bool``.

    Raises:
        ValueError: a regex rule that matches no parameter of the model (a
            typo, most likely), an invalid regex or weight decay.
        TypeError: a rule that is neither a str nor a callable.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> model = nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 1))
        >>> state = CurriculumState.from_model(model).set_lr_coefficient(0.5, "0")
        >>> optimizer = torch.optim.SGD(param_groups(state, model, lr=0.1))
        >>> [(group["layers"], group["lr"]) for group in optimizer.param_groups]
        [(('0',), 0.05), (('1',), 0.1)]
        >>> groups = param_groups(state, model, 0.1, weight_decay=0.05, no_weight_decay=["bias"])
        >>> [(g["layers"], g["applies_weight_decay"], g["weight_decay"]) for g in groups]
        [(('0',), True, 0.05), (('0',), False, 0.0), (('1',), True, 0.05), (('1',), False, 0.0)]
    """
    global_lr = validate_lr(lr)
    decay = (
        None if weight_decay is None else validate_coefficient(weight_decay, what="weight_decay")
    )
    rules = weight_decay_rules(no_weight_decay)
    walked = walk_for_state(state, model)
    halves = decay_halves(walked, rules) if rules else None
    return groups_of_walk(
        with_norm_layers_of(state, walked),
        walked,
        global_lr,
        coalesce=coalesce,
        weight_decay=decay,
        halves=halves,
    )


def decay_halves(walked: ModelLayers, rules: WeightDecayRules) -> Halves:
    """Split each layer's parameters by ``rules``: (decay half, no-decay half).

    Raises:
        ValueError: a regex rule matches no parameter of the model.
    """
    named = list(walked.named_parameters())
    unmatched = rules.unmatched_patterns(name for _, name, _ in named)
    if unmatched:
        raise ValueError(
            f"no_weight_decay pattern(s) {short_list(unmatched, quote=True)} match no parameter "
            f"of the model (full names, e.g. {short_list([n for _, n, _ in named], limit=4, quote=True)})"
        )
    names = iter(named)
    halves = []
    for module, parameters in zip(walked.modules, walked.parameters):
        decay: list[nn.Parameter] = []
        no_decay: list[nn.Parameter] = []
        for parameter in parameters:
            _, name, _ = next(names)
            (no_decay if rules.excludes(name, parameter, module) else decay).append(parameter)
        halves.append((tuple(decay), tuple(no_decay)))
    return tuple(halves)


def groups_of_walk(
    state: CurriculumState,
    walked: ModelLayers,
    global_lr: float,
    *,
    coalesce: bool = False,
    weight_decay: float | None = None,
    halves: Halves | None = None,
) -> list[dict[str, Any]]:
    """:func:`param_groups` on a model already walked (``walk_for_state``), values validated.

    ``halves`` (from :func:`decay_halves`) splits the groups by weight decay;
    ``weight_decay`` is set on every group but the no-decay halves.
    """
    template: dict[str, Any] = {"params": [], "lr": global_lr, "layers": (), "coefficient": 1.0}
    if weight_decay is not None:
        template["weight_decay"] = weight_decay
    groups, coefficients = unit_groups_of_walk(
        state, walked, coalesce=coalesce, template=template, halves=halves
    )
    for group, coefficient in zip(groups, coefficients):
        group["lr"] = global_lr * coefficient
        group["coefficient"] = coefficient
    return groups


def unit_groups_of_walk(
    state: CurriculumState,
    walked: ModelLayers,
    *,
    coalesce: bool,
    template: dict[str, Any],
    halves: Halves | None = None,
) -> tuple[list[dict[str, Any]], list[float]]:
    """The groups of :func:`groups_of_walk` as copies of ``template``, and their coefficients.

    Each group is ``template.copy()`` with its own ``params`` and ``layers``
    (and, with ``halves``, its half's key and a no-decay half's 0.0 weight
    decay); every other key (``lr``, ``coefficient``, an optimizer's
    defaults) is the template's. So an optimizer's full group is one
    allocation of the right size, never resized when the template has both
    keys already: this runs once per layer. The second list holds each
    group's coefficient in ``state``, for the caller to apply.
    """
    if halves is not None:
        return _split_groups(state, walked, coalesce=coalesce, template=template, halves=halves)
    trainable = state.resolved_trainable()
    coefficients = state.resolved_coefficients()
    layers = walked.layers
    new_group = template.copy
    groups: list[dict[str, Any]] = []
    if coalesce:
        by_coefficient: dict[float, dict[str, Any]] = {}
        for position, parameters in enumerate(walked.parameters):
            if not parameters or not trainable[position]:
                continue
            coefficient = coefficients[position]
            group = by_coefficient.get(coefficient)
            if group is None:
                group = new_group()
                group["params"] = []
                group["layers"] = []
                by_coefficient[coefficient] = group
                groups.append(group)
            group["params"].extend(parameters)
            group["layers"].append(layers[position])
        for group in groups:
            group["layers"] = tuple(group["layers"])
        return groups, list(by_coefficient)
    group_coefficients: list[float] = []
    for position, parameters in enumerate(walked.parameters):
        if parameters and trainable[position]:
            group = new_group()
            group["params"] = list(parameters)
            group["layers"] = (layers[position],)
            groups.append(group)
            group_coefficients.append(coefficients[position])
    return groups, group_coefficients


def _split_groups(
    state: CurriculumState,
    walked: ModelLayers,
    *,
    coalesce: bool,
    template: dict[str, Any],
    halves: Halves,
) -> tuple[list[dict[str, Any]], list[float]]:
    """:func:`unit_groups_of_walk` with each group split into its decay and no-decay halves."""
    trainable = state.resolved_trainable()
    coefficients = state.resolved_coefficients()
    layers = walked.layers
    groups: list[dict[str, Any]] = []
    group_coefficients: list[float] = []
    by_key: dict[tuple[float, bool], dict[str, Any]] = {}

    def new_group(applies: bool, coefficient: float) -> dict[str, Any]:
        group = template.copy()
        group["params"] = []
        group["layers"] = []
        group[DECAY_KEY] = applies
        if not applies:
            group["weight_decay"] = 0.0
        groups.append(group)
        group_coefficients.append(coefficient)
        return group

    for position, (decay, no_decay) in enumerate(halves):
        if not trainable[position]:
            continue
        coefficient = coefficients[position]
        for applies, parameters in ((True, decay), (False, no_decay)):
            if not parameters:
                continue
            if coalesce:
                group = by_key.get((coefficient, applies))
                if group is None:
                    group = by_key[coefficient, applies] = new_group(applies, coefficient)
            else:
                group = new_group(applies, coefficient)
            group["params"].extend(parameters)
            group["layers"].append(layers[position])
    for group in groups:
        group["layers"] = tuple(group["layers"])
    return groups, group_coefficients


def is_reference_group(group: Mapping[str, Any]) -> bool:
    """Whether an optimizer group (live, or saved with parameter names) is the reference group.

    A Curriculum's optimizer ends with one group that covers no layer and
    holds no parameter; it follows the scheduler like one flat group at the
    global lr would, and every other group's lr is proportional to its.
    """
    layers = group.get("layers")
    return layers is not None and len(layers) == 0 and not group.get("params")


def requires_grad_map(state: CurriculumState, model: nn.Module) -> dict[str, bool]:
    """Parameter name -> whether it should require grad (its owning layer trains).

    A layer trains when it is not frozen, or, under the ``"train"`` norm
    policy, when it is a normalization layer (``state.resolved_trainable()``).
    """
    walked = walk_for_state(state, model)
    trainable = dict(zip(walked.layers, with_norm_layers_of(state, walked).resolved_trainable()))
    return {name: trainable[layer] for layer, name, _ in walked.named_parameters()}
