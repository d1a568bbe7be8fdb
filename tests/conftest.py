"""Shared fixtures: one local Ray runtime per test session, and the read-only shared data beside the repo."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

# One intra-op thread per test process: Ray's trial and task processes run beside pytest's on these 2-core
# machines, and oversubscribed BLAS threads slow everything down many times over when the machine is busy.
torch.set_num_threads(1)

SHARED = Path(__file__).resolve().parents[2] / "shared"
CIFAR_SUBSET_TAR = SHARED / "data" / "cifar10-jpeg-subset.tar"


@pytest.fixture(scope="session")
def ray_session():
    """A local Ray runtime sized for the 2-core machines, started once and always shut down.

    Tests that need Ray take this fixture; everything else runs without a cluster."""
    import ray

    from study.launch import connect_ray

    connect_ray(num_cpus=2)  # as the product starts one: loopback only
    try:
        yield ray
    finally:
        ray.shutdown()


@pytest.fixture(scope="session")
def cifar_subset_tar() -> Path:
    """The real CIFAR-10 JPEG subset from ../shared, or a skip saying why it is missing."""
    if not CIFAR_SUBSET_TAR.is_file():
        pytest.skip(f"shared CIFAR-10 subset not found at {CIFAR_SUBSET_TAR} (../shared is absent)")
    return CIFAR_SUBSET_TAR
