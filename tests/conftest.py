"""Shared pytest fixtures.

``rng`` gives every test fresh random inputs (a new seed each run, so the code must be right on any valid
input, not on one frozen draw). The seed is printed in the report of a failing test; rerun one draw with
``PALU_TEST_SEED=<seed> pytest ...``.
"""

from __future__ import annotations

import os
import secrets

import numpy as np
import pytest


@pytest.fixture
def rng(request):
    seed = int(os.environ.get("PALU_TEST_SEED") or secrets.randbits(63))
    request.node.user_properties.append(("seed", seed))
    yield np.random.default_rng(seed)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        seeds = [v for k, v in item.user_properties if k == "seed"]
        if seeds:
            report.sections.append(("random seed", f"PALU_TEST_SEED={seeds[0]}"))
