"""The pure core: nothing here mutates a model, an optimizer or a tensor.

A model's layers (``model_walk``, ``wrappers``), chosen by pattern
(``selection``, ``patterns``, ``layer_tree``); the immutable
:class:`~mentor_fn.CurriculumState` (``state``) and the transitions between
states (``transitions``); the param groups a state derives (``groups``,
``weight_decay``); and the plan that moves a live optimizer from one state to
the next (``plan``, ``group_index``). ``validation`` and ``messages`` serve
every layer. This layer imports no other.
"""
