"""The wrapper: :class:`~mentor_fn.Curriculum` executes the core's plans, and is the one mutator.

It builds optimizers (``optimizers``, ``optimizer_recipe``), patches or rebuilds
them in place (``plan_execution``, ``fresh_starts``), keeps lr schedulers
consistent (``lr_schedulers``), sets ``requires_grad`` (``requires_grad``),
enforces the norm policy (``norm_hooks``), saves and checks its own state
(``state_dict``, ``load_checks``), notices a model that changed under it
(``structure_watch``, ``kept_walk``, ``registration_lookups``,
``stale_parameters``) and survives DDP (``ddp``). Imports only the core.
"""
