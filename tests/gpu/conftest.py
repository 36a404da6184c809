"""Fixtures for the CUDA tests in tests/gpu.

This file must import without torch: the core suite also runs under AddressSanitizer, which does not mix
with torch, and a sanitizer build is CPU-only. So torch is only touched inside fixtures, which run only for
tests that were not skipped; each test module skips itself (module level, before importing torch) unless
palu_c was built with CUDA and torch sees a GPU. See tests/gpu/README.md for the commands.
"""

from __future__ import annotations

import sys

import pytest


@pytest.fixture
def torch_gen(rng):
    """A CUDA torch.Generator seeded from the session's fresh `rng` seed (printed on failure)."""
    import torch

    gen = torch.Generator(device="cuda")
    gen.manual_seed(int(rng.integers(0, 2**62)))
    return gen


@pytest.fixture(autouse=True)
def _surface_async_errors():
    """Synchronize after every test so that an asynchronous kernel fault fails the test that caused it."""
    yield
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
