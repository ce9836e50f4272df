"""How a Mentee is rebuilt from a checkpoint: its class by name, and its constructor's arguments.

Every Mentee subclass is registered by qualified name when it is defined (a
checkpoint names its class; nothing is ever imported to find it), and its
``__init__`` is wrapped to record the arguments it receives, defaults
included, so that ``Mentee.resume`` needs no bookkeeping by the user.
"""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from torch import nn

from .._files.checkpoint import is_plain_data
from .._files.mentee_values import ConstructorArguments
from .._wrapper.qualified_names import qualified_name

__all__ = [
    "constructor_arguments",
    "record_explicit_arguments",
    "recording",
    "register_model_class",
    "registered_model_class",
]

_REGISTRY: dict[str, type[nn.Module]] = {}
# What a model's __dict__ holds (set with object.__setattr__: nn.Module's own
# __setattr__ would treat these as attributes of the model).
_RECEIVED, _EXPLICIT, _DEPTH = (
    "_mentee_constructor",
    "_mentee_explicit_constructor",
    "_mentee_init_depth",
)


def register_model_class(cls: type[nn.Module]) -> None:
    """Make ``cls`` findable by its qualified name, and record its constructor's arguments."""
    _REGISTRY[qualified_name(cls)] = cls
    init = cls.__dict__.get("__init__")
    if init is not None:
        cls.__init__ = recording(init)  # type: ignore[method-assign]


# Classes of this package that files name by a path they no longer have: the
# package moved into layer subpackages, and files written before still load.
_FORMER_NAMES = {"mentor_fn._demo_model.DigitsCNN": "mentor_fn._app.demo.model.DigitsCNN"}


def registered_model_class(name: str) -> type[nn.Module] | None:
    """The class defined in this process under the qualified ``name``, if any."""
    return _REGISTRY.get(_FORMER_NAMES.get(name, name))


def _received_arguments(
    signature: inspect.Signature | None,
    instance: Any,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> ConstructorArguments:
    """What a constructor received: the arguments passed, and the defaults of the others.

    Defaults are recorded too (as keywords), so a model resumed after a
    default changed in the code is still built as it was saved; a default
    that is not plain data is left to the code, as it cannot be saved.
    """
    received = dict(kwargs)
    if signature is not None:
        try:
            bound = signature.bind(instance, *args, **kwargs)
        except TypeError:
            return ConstructorArguments(args, received)  # the call itself fails: it says why
        for name, parameter in signature.parameters.items():
            if (
                name not in bound.arguments
                and parameter.default is not parameter.empty
                and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
                and is_plain_data(parameter.default)
            ):
                received[name] = parameter.default
    return ConstructorArguments(args, received)


def recording(init: Callable[..., None]) -> Callable[..., None]:
    """``init``, wrapped to record the arguments the outermost constructor receives."""
    try:
        signature: inspect.Signature | None = inspect.signature(init)
    except (TypeError, ValueError):
        signature = None

    @functools.wraps(init)
    def __init__(self: nn.Module, *args: Any, **kwargs: Any) -> None:
        # The outermost constructor runs first, that of type(self) (or the one
        # it inherits): its arguments are the ones that rebuild the model. The
        # depth of nested recorded constructors tells Mentee.__init__ whose
        # explicit arguments it receives (see record_explicit_arguments).
        if _RECEIVED not in self.__dict__:
            object.__setattr__(self, _RECEIVED, _received_arguments(signature, self, args, kwargs))
        depth = self.__dict__.get(_DEPTH, 0)
        object.__setattr__(self, _DEPTH, depth + 1)
        try:
            init(self, *args, **kwargs)
        finally:
            if depth:
                object.__setattr__(self, _DEPTH, depth)
            else:
                self.__dict__.pop(_DEPTH, None)

    return __init__


def record_explicit_arguments(
    model: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
) -> None:
    """Keep the arguments a subclass passed to ``Mentee.__init__``, torch_mentor style.

    They describe the signature of the class that passes them: a fallback
    only when that is ``type(model)``'s own constructor (one recorded
    constructor deep, or none). A subclass of a class that passes its
    arguments explicitly has another signature.
    """
    if (args or kwargs) and model.__dict__.get(_DEPTH, 0) <= 1:
        object.__setattr__(model, _EXPLICIT, ConstructorArguments(args, dict(kwargs)))


def constructor_arguments(model: nn.Module) -> ConstructorArguments | None:
    """The arguments that rebuild ``model``: the received ones, else the explicit
    ones, whichever are plain data; None when neither can be saved."""
    recorded = model.__dict__.get(_RECEIVED)
    explicit = model.__dict__.get(_EXPLICIT)
    if recorded is None and explicit is None:
        return ConstructorArguments((), {})
    for candidate in (recorded, explicit):
        if candidate is not None and is_plain_data((candidate.args, dict(candidate.kwargs))):
            return candidate
    return None  # resume() then explains that the model must be built by hand
