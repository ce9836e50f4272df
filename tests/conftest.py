"""Shared test setup: hypothesis profiles and a fixed torch seed."""

import os

import pytest
import torch
from hypothesis import HealthCheck, settings

# "ci" is deterministic (the default, so every run sees the same examples);
# HYPOTHESIS_PROFILE=dev explores more, with fresh random examples each run.
settings.register_profile(
    "ci",
    derandomize=True,
    database=None,
    deadline=None,
    max_examples=50,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.register_profile("dev", deadline=None, max_examples=100)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture(autouse=True)
def _seed_torch():
    torch.manual_seed(0)


@pytest.fixture(scope="module")
def one_torch_thread():
    """For modules of tiny models: on a busy machine torch's intra-op threads
    only spin-wait (a backward took 30 ms on two threads, 0.3 ms on one)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
