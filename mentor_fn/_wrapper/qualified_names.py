"""Classes named by their qualified names, as checkpoints record them.

A checkpoint stores ``"torch.optim.adam.Adam"``, never a pickled class; on
load the name is resolved only within a namespace the caller names (torch's
own optimizers and schedulers), so reading a file never imports anything.
"""

from __future__ import annotations

from types import ModuleType

__all__ = ["class_in_namespace", "qualified_name"]


def qualified_name(cls: type) -> str:
    """``module.QualifiedName`` of a class, e.g. ``"torch.optim.adam.Adam"``."""
    return f"{cls.__module__}.{cls.__qualname__}"


def class_in_namespace(namespace: ModuleType, name: object) -> type | None:
    """The class of ``namespace`` whose qualified name is ``name``, or None.

    Only attributes of ``namespace`` itself are considered (``torch.optim.Adam``
    for ``"torch.optim.adam.Adam"``): nothing is imported.

    Example:
        >>> import torch
        >>> class_in_namespace(torch.optim, "torch.optim.sgd.SGD") is torch.optim.SGD
        True
        >>> class_in_namespace(torch.optim, "os.system") is None
        True
    """
    if not isinstance(name, str):
        return None
    found = getattr(namespace, name.rpartition(".")[2], None)
    if isinstance(found, type) and qualified_name(found) == name:
        return found
    return None
