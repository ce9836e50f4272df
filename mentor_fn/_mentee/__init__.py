"""Mentee: torch_mentor's object API, an ``nn.Module`` that trains, saves and resumes itself.

:class:`~mentor_fn.Mentee` (``mentee``) and its training side (``fitting``,
the loop in ``fit_loop``, a schedule's part in ``fit_schedule``), the
trainers (``trainers``), what resume rebuilds (``resume``, ``construction``,
``train_objects``). Imports the layers below.
"""
