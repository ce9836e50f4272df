"""The application: ``python -m mentor_fn`` (``cli``), its text (``render``) and images (``plot``).

The demo lives in ``demo``; the package's version in ``version``. The top
layer: nothing below imports it (the package root reads ``version``).
"""
