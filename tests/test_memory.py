"""The memory of past keys (Sec. 4.1's variant, MoCo-style): loss, momentum network, queue, checkpoint, training."""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from study.checkpoint import atomic_save, safe_load
from study.config import Config, ConfigError
from study.losses import supcon_loss, supcon_loss_with_memory
from study.memory import KeyMemory
from study.train import LocalContext, load_splits, train
from workers import run_workers

TINY = {"dataset": "digits", "model": "resnet18", "width": 0.0625, "epochs": 1, "linear_epochs": 1,
        "batch_size": 64, "linear_batch_size": 64, "augmentation": "crop_flip"}


def reference_loss(features, keys, labels, queue_keys, queue_labels, temperature, variant, contrast_mode,
                   scale):
    """Plain loops in float64 over the explicit contrast set of each anchor: this batch's keys without the
    anchor's own-view key, then the queue."""
    batch, views, _ = features.shape
    features, keys, queue_keys = features.double(), keys.double(), queue_keys.double()
    total, count = 0.0, 0
    for s, v in itertools.product(range(batch), range(views if contrast_mode == "all" else 1)):
        anchor = features[s, v]
        logits, positive = [], []
        for s2, v2 in itertools.product(range(batch), range(views)):
            if (s2, v2) == (s, v):
                continue
            logits.append(anchor @ keys[s2, v2] / temperature)
            positive.append(s2 == s if labels is None else bool(labels[s2] == labels[s]))
        for q in range(len(queue_keys)):
            logits.append(anchor @ queue_keys[q] / temperature)
            positive.append(labels is not None and bool(queue_labels[q] == labels[s]))
        logits = torch.stack(logits)
        mask = torch.tensor(positive)
        if not mask.any():
            continue
        lse = torch.logsumexp(logits, 0)
        if variant == "out":
            total = total + lse - logits[mask].mean()
        else:
            total = total + lse - torch.logsumexp(logits[mask], 0) + math.log(mask.sum())
        count += 1
    loss = total / max(count, 1)
    return loss * temperature if scale else loss


def make_batch(batch=5, views=2, dim=6, queue=7, seed=0):
    generator = torch.Generator().manual_seed(seed)
    features = F.normalize(torch.randn(batch, views, dim, generator=generator, dtype=torch.float64), dim=-1)
    keys = F.normalize(torch.randn(batch, views, dim, generator=generator, dtype=torch.float64), dim=-1)
    labels = torch.tensor([0, 1, 0, 2, 1][:batch])
    queue_keys = F.normalize(torch.randn(queue, dim, generator=generator, dtype=torch.float64), dim=-1)
    queue_labels = torch.randint(0, 4, (queue,), generator=generator)  # class 3 appears only in the queue
    return features, keys, labels, queue_keys, queue_labels


@pytest.mark.parametrize("supervised", [True, False])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_loss_and_gradient_match_a_plain_loop_over_the_contrast_set(supervised, variant, contrast_mode):
    features, keys, labels, queue_keys, queue_labels = make_batch()
    labels = labels if supervised else None
    features.requires_grad_(True)
    kwargs = dict(temperature=0.3, variant=variant, contrast_mode=contrast_mode, scale_by_temperature=True)
    loss = supcon_loss_with_memory(features, keys, labels, queue_keys, queue_labels, **kwargs)
    (grad,) = torch.autograd.grad(loss, features)
    want = reference_loss(features, keys, labels, queue_keys, queue_labels, 0.3, variant, contrast_mode, True)
    (want_grad,) = torch.autograd.grad(want, features)
    torch.testing.assert_close(loss, want, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(grad, want_grad, rtol=1e-10, atol=1e-10)


def test_simclr_ignores_queue_labels_and_supcon_counts_queue_positives():
    features, keys, labels, queue_keys, queue_labels = make_batch()
    simclr = supcon_loss_with_memory(features, keys, None, queue_keys, queue_labels)
    assert simclr == supcon_loss_with_memory(features, keys, None, queue_keys, None)
    relabelled = supcon_loss_with_memory(features, keys, labels, queue_keys, (queue_labels + 1) % 4)
    assert relabelled != supcon_loss_with_memory(features, keys, labels, queue_keys, queue_labels)


@pytest.mark.parametrize("supervised", [True, False])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_without_a_queue_and_with_keys_equal_to_the_anchors_it_is_supcon_loss(supervised, variant, contrast_mode):
    """The memory off (empty queue, keys = the trained network's projections): supcon_loss's value."""
    features, _, labels, queue_keys, queue_labels = make_batch()
    labels = labels if supervised else None
    kwargs = dict(temperature=0.2, variant=variant, contrast_mode=contrast_mode, scale_by_temperature=True)
    got = supcon_loss_with_memory(features, features, labels, queue_keys[:0], queue_labels[:0], **kwargs)
    torch.testing.assert_close(got, supcon_loss(features, labels, **kwargs), rtol=1e-12, atol=1e-12)


def small_network(seed=0) -> nn.Module:
    torch.manual_seed(seed)

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Linear(5, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 4))

        def forward(self, x):
            return F.normalize(self.body(x), dim=1)

    return Net()


def test_momentum_zero_keys_are_the_trained_networks_projections_detached():
    network = small_network()
    memory = KeyMemory(network, size=16, dim=4, momentum=0.0)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(torch.randn_like(parameter))  # the trained network moves on
    x = torch.randn(6, 5)
    assert not torch.allclose(memory.embed(x), network(x))
    memory.update(network)
    keys = memory.embed(x)
    torch.testing.assert_close(keys, network(x).detach(), rtol=0, atol=0)
    assert not keys.requires_grad


def test_momentum_update_is_an_exponential_moving_average():
    network = small_network()
    memory = KeyMemory(network, size=4, dim=4, momentum=0.75)
    before = [p.clone() for p in memory.network.parameters()]
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.add_(1.0)
    memory.update(network)
    for old, new, target in zip(before, memory.network.parameters(), network.parameters()):
        torch.testing.assert_close(new, 0.75 * old + 0.25 * target)


def test_gradients_reach_only_the_trained_network():
    network = small_network()
    memory = KeyMemory(network, size=32, dim=4, momentum=0.9)
    x, labels = torch.randn(6, 2, 5), torch.tensor([0, 1, 0, 1, 2, 2])
    memory.enqueue(memory.embed(x.flatten(0, 1)).view(6, 2, 4), labels)
    features = network(x.flatten(0, 1)).view(6, 2, 4)
    keys = memory.embed(x.flatten(0, 1)).view(6, 2, 4)
    loss = supcon_loss_with_memory(features, keys, labels, *memory.queue(), temperature=0.1)
    loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in network.parameters())
    assert all(p.grad is None and not p.requires_grad for p in memory.network.parameters())
    assert not memory.keys.requires_grad


def test_queue_uses_only_its_filled_part_and_drops_the_oldest():
    memory = KeyMemory(small_network(), size=10, dim=4, momentum=0.9)
    assert memory.queue()[0].shape == (0, 4)
    batches = [(torch.full((2, 2, 4), float(i)), torch.tensor([i, i])) for i in range(1, 4)]
    memory.enqueue(*batches[0])
    keys, labels = memory.queue()
    assert keys.shape == (4, 4) and labels.tolist() == [1, 1, 1, 1] and memory.pointer == 4
    # The loss sees those 4 entries, not the 6 zero rows behind them.
    features, batch_keys, batch_labels, _, _ = make_batch(dim=4)
    got = supcon_loss_with_memory(features, batch_keys, batch_labels, *memory.queue())
    want = reference_loss(features, batch_keys, batch_labels, keys, labels, 0.1, "out", "all", False)
    torch.testing.assert_close(got, want.to(got.dtype))
    padded = supcon_loss_with_memory(features, batch_keys, batch_labels, memory.keys, memory.labels)
    assert not torch.isclose(got, padded)
    memory.enqueue(*batches[1])
    memory.enqueue(*batches[2])  # 12 entries into 10 rows: the first two of batch 1 are gone
    keys, labels = memory.queue()
    assert memory.filled == 10 and memory.pointer == 2
    assert labels.tolist() == [3, 3, 1, 1, 2, 2, 2, 2, 3, 3]
    assert sorted(keys[:, 0].tolist()) == [1.0] * 2 + [2.0] * 4 + [3.0] * 4
    memory.enqueue(torch.arange(13.0)[:, None].expand(13, 4), torch.arange(13))  # more than it holds
    assert memory.pointer == (2 + 13) % 10 and sorted(memory.labels.tolist()) == list(range(3, 13))
    assert memory.labels[(memory.pointer - 1) % 10] == 12  # the newest entry is just behind the pointer


def test_checkpoint_round_trip_restores_network_queue_and_pointer(tmp_path):
    network = small_network()
    memory = KeyMemory(network, size=8, dim=4, momentum=0.5)
    with torch.no_grad():
        for parameter in network.parameters():
            parameter.mul_(2)
    memory.update(network)
    memory.enqueue(torch.randn(3, 2, 4), torch.tensor([4, 5, 6]))
    atomic_save({"memory": memory.state_dict()}, tmp_path / "state.pt")
    restored = KeyMemory(small_network(seed=1), size=8, dim=4, momentum=0.5)
    restored.load_state_dict(safe_load(tmp_path / "state.pt")["memory"])
    assert (restored.pointer, restored.filled) == (memory.pointer, memory.filled) == (6, 6)
    assert torch.equal(restored.keys, memory.keys) and torch.equal(restored.labels, memory.labels)
    for a, b in zip(restored.network.state_dict().values(), memory.network.state_dict().values()):
        assert torch.equal(a, b)
    with pytest.raises(ValueError, match="does not fit"):
        KeyMemory(network, size=9, dim=4, momentum=0.5).load_state_dict(memory.state_dict())


def test_config_fields():
    assert Config().memory_size == 0 and Config().memory_momentum == 0.999
    assert Config(method="simclr", memory_size=8192).memory_size == 8192
    for bad in ({"memory_size": -1}, {"memory_momentum": 1.0}, {"memory_momentum": -0.1},
                {"method": "ce", "memory_size": 16}, {"memory_size": 16, "max_positives": 2}):
        with pytest.raises(ConfigError) as error:
            Config.from_dict(bad)
        assert "\n" not in str(error.value)


@pytest.mark.slow  # three end-to-end trainings
def test_training_with_a_memory_checkpoints_it_and_resumes(tmp_path):
    """digits, memory_size=128: the queue fills, is checkpointed mid-stage, and a run killed in its second
    epoch resumes with it to the same numbers as an unkilled run; a checkpoint without it still loads."""
    config = Config.from_dict({**TINY, "method": "supcon", "epochs": 2, "memory_size": 128,
                               "memory_momentum": 0.99})
    whole = LocalContext(tmp_path / "whole")
    final = train(config, whole)
    assert final["status"] == "completed" and 0 <= final["test_top1"] <= 100
    # The memory's cost is in the history (study/tables.py HISTORY_COLUMNS): a share of each contrastive
    # epoch, none in the linear stage, and the process's peak memory (CPU: peak resident set, MiB).
    epochs = [m for m in whole.history if m["stage"] in ("contrastive", "linear")]
    assert all(0 < m["memory_fraction"] < 1 for m in epochs if m["stage"] == "contrastive")
    assert all(m["memory_fraction"] == 0 for m in epochs if m["stage"] == "linear")
    assert all(10 < m["peak_memory_mb"] < 1e6 for m in epochs)

    interrupted = LocalContext(tmp_path / "killed")

    def stop_in_second_epoch(step: int) -> None:
        if len(interrupted.history) == 1:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(config, interrupted, on_step=stop_in_second_epoch)
    state = safe_load(interrupted.latest_checkpoint() / "state.pt")
    memory = state["memory"]
    written = len(load_splits(config).train) // 64 * 64 * 2  # one epoch of full batches, 2 views each
    assert memory["filled"] == 128 and memory["pointer"] == written % 128
    assert memory["keys"].shape == (128, 128) and (memory["labels"] >= 0).all()
    resumed = LocalContext(tmp_path / "killed")
    again = train(config, resumed)
    assert [m["loss"] for m in resumed.history[:1]] == [whole.history[1]["loss"]]
    assert again["test_top1"] == final["test_top1"]

    # An old checkpoint (no memory in it) resumes too, with a fresh memory.
    del state["memory"]
    old = LocalContext(tmp_path / "old")
    (old.run_dir / "checkpoints" / "checkpoint_000001").mkdir(parents=True)
    atomic_save(state, old.run_dir / "checkpoints" / "checkpoint_000001" / "state.pt")
    assert train(config, old)["status"] == "completed"
    assert [(m["stage"], m["epoch"]) for m in old.history] == [("contrastive", 2), ("linear", 1), ("final", 0)]


# ------------------------------------------------------------------------------ two gloo workers
WORLD, BATCH, STEPS = 2, 6, 3  # global batch 6, 2 views: 12 keys a step into a queue of 16 (wraps at step 2)


class _Projector(nn.Module):
    """No BatchNorm: per-worker batch statistics would differ from one process's (as in test_losses_distributed)."""

    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(5, 4)

    def forward(self, x):
        return F.normalize(self.linear(x), dim=-1)


def _memory_steps(rows: slice, supervised: bool, distributed: bool):
    """STEPS SGD steps with a memory on the samples `rows` of each global batch: per step the loss and the
    (DDP-averaged) gradients, then the queue."""
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(STEPS, BATCH, 2, 5, generator=generator)
    labels = torch.tensor([0, 1, 0, 2, 1, 3])
    torch.manual_seed(0)
    network = _Projector()
    trained = nn.parallel.DistributedDataParallel(network) if distributed else network
    memory = KeyMemory(network, size=16, dim=4, momentum=0.5)
    optimizer = torch.optim.SGD(trained.parameters(), lr=0.5)
    steps = []
    for step in range(STEPS):
        x, y = data[step, rows], labels[rows]
        features = trained(x.flatten(0, 1)).view(len(x), 2, 4)
        keys = memory.embed(x.flatten(0, 1)).view(len(x), 2, 4)
        loss = supcon_loss_with_memory(features, keys, y if supervised else None, *memory.queue(), temperature=0.3)
        optimizer.zero_grad()
        loss.backward()
        steps.append((loss.item(), [p.grad.numpy().copy() for p in network.parameters()]))
        optimizer.step()
        memory.enqueue(keys, y)
        memory.update(network)
    return steps, (memory.keys.numpy().copy(), memory.labels.numpy().copy(), memory.pointer, memory.filled)


def _memory_worker(rank: int, store_path: str) -> list:
    import torch.distributed as dist

    dist.init_process_group("gloo", store=dist.FileStore(store_path, WORLD), rank=rank, world_size=WORLD)
    torch.set_num_threads(1)
    mine = slice(rank * BATCH // WORLD, (rank + 1) * BATCH // WORLD)
    outputs = [_memory_steps(mine, supervised, True) for supervised in (True, False)]
    dist.destroy_process_group()
    return outputs


def test_two_workers_keep_identical_queues_and_match_one_process(tmp_path):
    import numpy as np

    outputs = run_workers(_memory_worker, WORLD, str(tmp_path / "store"))
    for case, supervised in enumerate((True, False)):
        want_steps, want_queue = _memory_steps(slice(None), supervised, False)
        for rank in range(WORLD):
            steps, queue = outputs[rank][case]
            assert queue[2:] == want_queue[2:] == (STEPS * BATCH * 2 % 16, 16)
            np.testing.assert_array_equal(queue[1], want_queue[1])
            np.testing.assert_allclose(queue[0], want_queue[0], rtol=1e-5, atol=1e-6)
            for (loss, grads), (want_loss, want_grads) in zip(steps, want_steps):
                np.testing.assert_allclose(loss, want_loss, rtol=1e-5, atol=1e-6)
                for got, want in zip(grads, want_grads):
                    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
        # Identical across workers, bit for bit.
        np.testing.assert_array_equal(outputs[0][case][1][0], outputs[1][case][1][0])
