"""Two gloo workers with batch b compute the same SupCon loss and parameter gradients as one worker with 2b."""

from __future__ import annotations

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from study.losses import supcon_loss
from workers import run_workers

WORLD = 2
BATCH = 6  # global
CASES = [
    {"labels": "supervised"},
    {"labels": "supervised", "variant": "in"},
    {"labels": "supervised", "contrast_mode": "one"},
    {"labels": "supervised", "max_positives": 2},
    {"labels": "supervised", "chunk_size": 5},
    {"labels": None},
    # One view: samples 3 and 5 have no positive, and the workers hold unequal numbers of valid anchors
    # (3 and 1), so the mean must be over the global count, not a mean of per-worker means.
    {"labels": "supervised", "views": 1},
]


def make_inputs():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(BATCH, 2, 5, generator=generator)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    torch.manual_seed(0)
    return torch.nn.Linear(5, 4), x, labels


def loss_and_grads(model, x, labels, case):
    kwargs = {k: v for k, v in case.items() if k not in ("labels", "views")}
    model.zero_grad()
    x = x[:, :case.get("views", x.shape[1])]
    loss = supcon_loss(F.normalize(model(x), dim=-1), None if case["labels"] is None else labels,
                       temperature=0.3, **kwargs)
    loss.backward()
    module = getattr(model, "module", model)
    # numpy, so results cross process boundaries by value (torch would share memory with a finished process)
    return loss.detach().numpy(), [p.grad.detach().numpy().copy() for p in module.parameters()]


def worker(rank: int, store_path: str):
    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    model, x, labels = make_inputs()
    mine = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    plain = [loss_and_grads(model, x[mine], labels[mine], case) for case in CASES]
    wrapped = DistributedDataParallel(model)
    ddp = [loss_and_grads(wrapped, x[mine], labels[mine], case) for case in CASES]
    try:
        supcon_loss(torch.randn(1 + rank, 2, 3), None)
        unequal = "no error"
    except ValueError as error:
        unequal = str(error)
    dist.destroy_process_group()
    return plain, ddp, unequal


def test_two_workers_equal_one_worker_with_the_whole_batch(tmp_path):
    outputs = run_workers(worker, WORLD, str(tmp_path / "store"))

    model, x, labels = make_inputs()
    for index, case in enumerate(CASES):
        expected_loss, expected_grads = loss_and_grads(model, x, labels, case)
        for rank in range(WORLD):
            plain, ddp, _ = outputs[rank]
            # The reported value is the global loss on every worker, with or without DDP.
            np.testing.assert_allclose(plain[index][0], expected_loss, rtol=1e-5, atol=1e-5, err_msg=str(case))
            np.testing.assert_allclose(ddp[index][0], expected_loss, rtol=1e-5, atol=1e-5, err_msg=str(case))
            # DDP averages gradients over workers: that average is the single-process gradient.
            for got, want in zip(ddp[index][1], expected_grads):
                np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5, err_msg=str(case))
        # Without DDP each worker holds k times its share; their mean is the same single-process gradient.
        for parameter, want in enumerate(expected_grads):
            mean = sum(outputs[rank][0][index][1][parameter] for rank in range(WORLD)) / WORLD
            np.testing.assert_allclose(mean, want, rtol=1e-5, atol=1e-5, err_msg=str(case))
    for rank in range(WORLD):
        assert "same batch size" in outputs[rank][2]
