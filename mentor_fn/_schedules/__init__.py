"""Schedules: a curriculum over time, as data, and the runner that executes it.

Phases and schedules (``schedule``), the conditions that end a phase
(``conditions``), where a run stands (``cursor``), warmup ramps (``warmup``),
the usual recipes (``recipes``), the :class:`~mentor_fn.ScheduleRunner` that
drives a Curriculum (``runner``), and a schedule run as files hold it
(``saved_schedule``) and as ``inspect`` tells it (``text``). Imports the core
and the wrapper.
"""
