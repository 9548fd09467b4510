"""Test configuration: hypothesis profiles, the (device, backend) parametrization, the ``gen`` fixture.
Helpers live in helpers.py, the toy model in models.py. Triton runs on CPU tensors through its interpreter."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")  # must precede any triton import

import pytest
import torch
from hypothesis import HealthCheck, settings

from helpers import cpu_backends, device_backends

# Hypothesis: fixed settings, so the test command gives the same verdict on every run and machine.
# "ci" (default): 25 examples per property, derandomized (examples derived from the test's source, the
# same every run), no example database (a draw saved in .hypothesis/ by one run never changes the next).
# "explore": 1,000 random examples, still without a database, to look for new failures locally:
#   GH_HYPOTHESIS_PROFILE=explore python -m pytest tests/test_weights.py
# A failure found while exploring becomes an explicit @example in the test.
_COMMON = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
settings.register_profile("ci", max_examples=25, derandomize=True, **_COMMON)
settings.register_profile("explore", max_examples=1000, derandomize=False, **_COMMON)
settings.load_profile(os.environ.get("GH_HYPOTHESIS_PROFILE", "ci"))

# The fuzzer's seed (tests/test_fuzz.py): 0 for the CI budget; the long profile (GH_FUZZ_LONG=1) draws one,
# printed in the report header so a failure can be replayed with GH_FUZZ_SEED.
if os.environ.get("GH_FUZZ_LONG") == "1" and "GH_FUZZ_SEED" not in os.environ:
    os.environ["GH_FUZZ_SEED"] = str(int.from_bytes(os.urandom(4), "little"))


def pytest_report_header(config):
    return f"gh_kernels fuzz seed: {os.environ.get('GH_FUZZ_SEED', '0')} (GH_FUZZ_LONG={os.environ.get('GH_FUZZ_LONG', '0')})"


def pytest_addoption(parser):
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run the tests marked slow (mutation check, long studies)")


def pytest_collection_modifyitems(config, items):
    """Tests marked slow are skipped unless asked for: they are not part of the CI budget."""
    if config.getoption("--run-slow") or os.environ.get("GH_RUN_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow: run with --run-slow or GH_RUN_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def pytest_generate_tests(metafunc):
    """Tests taking ``device`` and ``backend`` run on every (device, backend) pair available here;
    tests taking only ``backend`` run every backend on CPU tensors."""
    names = metafunc.fixturenames
    if "backend" in names and "device" in names:
        metafunc.parametrize(("device", "backend"), device_backends())
    elif "backend" in names:
        metafunc.parametrize("backend", cpu_backends())


@pytest.fixture
def gen():
    """A fresh, randomly seeded generator per test (failure messages print gen.initial_seed())."""
    seed = int(torch.randint(0, 2**31 - 1, ()).item())
    g = torch.Generator().manual_seed(seed)
    return g
