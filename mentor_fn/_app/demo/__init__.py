"""The demo (``python -m mentor_fn demo``): its data, model, protocol, tables and run."""
