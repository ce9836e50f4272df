"""mentor_fn inside the training frameworks people already use.

* :mod:`mentor_fn.integrations.lightning` (the ``lightning`` extra):
  ``CurriculumCallback`` for Lightning's ``Trainer``.
* :mod:`mentor_fn.integrations.transformers` (the ``transformers`` extra):
  ``CurriculumCallback`` for the transformers ``Trainer``.
* :mod:`mentor_fn.integrations.deepspeed` (the ``deepspeed`` extra):
  ``initialize`` / ``DeepSpeedCurriculum`` for a DeepSpeed ZeRO engine in your own loop.

The Lightning and transformers adapters work in one process, under DDP (no
``find_unused_parameters`` needed: the DDP wrapper's reducer follows the
phases), under FSDP2 (Lightning's ``ModelParallelStrategy``, or
``CurriculumModelParallelStrategy`` for checkpoints; transformers'
``DistributedConfig(fsdp_size=...)``) and under DeepSpeed ZeRO (Lightning's
``DeepSpeedStrategy``; the transformers ``CurriculumTrainer``), and refuse
what they cannot drive before training starts.

Each adapter imports its framework; this package imports none of them (nor does
``import mentor_fn``), so the frameworks stay optional.
"""
