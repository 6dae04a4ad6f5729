"""Shared fixtures: fixed seeds, and a ``device`` parameter whose CUDA case skips without a GPU.

Set RWWCE_REQUIRE_CUDA=1 on a GPU machine to turn those skips into failures.
"""

import os

import pytest
import torch
from hypothesis import settings

# CI runs the same examples every time (CI=true there); locally hypothesis explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI") == "true":
    settings.load_profile("ci")

CUDA = torch.cuda.is_available()
REQUIRE_CUDA = os.environ.get("RWWCE_REQUIRE_CUDA") == "1"


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def pytest_sessionstart(session):
    if REQUIRE_CUDA and not CUDA:
        raise pytest.UsageError("RWWCE_REQUIRE_CUDA=1 but torch.cuda.is_available() is False")


def pytest_collection_modifyitems(config, items):
    if CUDA:
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


@pytest.fixture(params=DEVICES)
def device(request):
    return torch.device(request.param)
