"""Fault tests run their in-process training on one thread: as a Ray worker holding one CPU does (so results
compare bit for bit), and without oversubscribing the 2-core machine while Ray processes run beside them."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
