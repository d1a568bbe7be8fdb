"""A memory of past keys for the contrastive stage: the paper's Sec. 4.1 variant ("with a memory size of 8192
(requiring only the storage of 128-dimensional vectors), a batch size of 256 ... SupCon is able to achieve
79.1% top-1 accuracy"), built as the MoCo memory it cites (He et al., CVPR 2020): a momentum copy of
encoder + projection head, and a first-in-first-out queue of its projections with their labels.

Pure PyTorch. The training loop (`study.train`) embeds each batch with the momentum network (`keys`), feeds
the keys and the queue to `study.losses.supcon_loss_with_memory`, and after the optimizer step calls
`enqueue` and `update`. With `torch.distributed` initialised, `enqueue` all-gathers every worker's keys
(rank order), so every worker writes the same entries in the same order and the queues stay identical.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn


def _gather(tensor: Tensor) -> Tensor:
    """`tensor` of every worker concatenated in rank order (itself without a process group)."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


class KeyMemory:
    """The momentum network and the labelled queue.

    Args:
        network: the trained contrastive network (encoder + head, unwrapped from DDP); copied.
        size: queue length (`Config.memory_size`).
        dim: key dimension (`Config.projection_dim`).
        momentum: m of the update `key_param = m * key_param + (1 - m) * param` (`Config.memory_momentum`).
    """

    def __init__(self, network: nn.Module, size: int, dim: int, momentum: float) -> None:
        if size < 1 or dim < 1 or not 0 <= momentum < 1:
            raise ValueError(f"need size >= 1, dim >= 1, momentum in [0, 1); got {size}, {dim}, {momentum}")
        self.network = copy.deepcopy(network).requires_grad_(False)
        self.momentum = float(momentum)
        device = next(network.parameters()).device
        self.keys = torch.zeros(size, dim, device=device)
        self.labels = torch.full((size,), -1, dtype=torch.long, device=device)
        self.pointer = 0  # next row to write
        self.filled = 0  # rows written so far, at most `size`

    @property
    def size(self) -> int:
        return len(self.keys)

    @torch.no_grad()
    def embed(self, images: Tensor) -> Tensor:
        """Keys of `images` from the momentum network, float32, no gradient. Train mode (batch statistics in
        batch norm), as MoCo's key encoder."""
        self.network.train()
        return self.network(images).float()

    def queue(self) -> tuple[Tensor, Tensor]:
        """The filled part of the queue: (keys [filled, dim], labels [filled])."""
        return self.keys[:self.filled], self.labels[:self.filled]

    @torch.no_grad()
    def enqueue(self, keys: Tensor, labels: Tensor) -> None:
        """Write `keys` [n, dim] (or [batch, n_views, dim], flattened sample-major) and their labels ([n], or
        [batch], repeated per view) of every worker at the write pointer, over the oldest entries."""
        if keys.dim() == 3:
            labels = labels.repeat_interleave(keys.shape[1])
            keys = keys.flatten(0, 1)
        keys = _gather(keys.detach().to(self.keys.dtype))
        labels = _gather(labels.to(self.labels.device, torch.long))
        if len(keys) > self.size:  # more than the queue holds: only the newest survive, where they would land
            self.pointer = (self.pointer + len(keys) - self.size) % self.size
            keys, labels = keys[-self.size:], labels[-self.size:]
        rows = (self.pointer + torch.arange(len(keys), device=self.keys.device)) % self.size
        self.keys[rows] = keys
        self.labels[rows] = labels
        self.pointer = (self.pointer + len(keys)) % self.size
        self.filled = min(self.size, self.filled + len(keys))

    @torch.no_grad()
    def update(self, network: nn.Module) -> None:
        """Move the momentum network towards `network` (parameters: EMA; buffers such as batch-norm
        statistics: copied)."""
        for key_param, param in zip(self.network.parameters(), network.parameters(), strict=True):
            key_param.mul_(self.momentum).add_(param.detach(), alpha=1 - self.momentum)
        for key_buffer, buffer in zip(self.network.buffers(), network.buffers(), strict=True):
            key_buffer.copy_(buffer)

    def state_dict(self) -> dict[str, Any]:
        return {"network": self.network.state_dict(), "keys": self.keys.clone(), "labels": self.labels.clone(),
                "pointer": self.pointer, "filled": self.filled}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if tuple(state["keys"].shape) != tuple(self.keys.shape):
            raise ValueError(f"memory of shape {tuple(state['keys'].shape)} does not fit {tuple(self.keys.shape)}")
        self.network.load_state_dict(state["network"])
        self.keys.copy_(state["keys"])
        self.labels.copy_(state["labels"])
        self.pointer, self.filled = int(state["pointer"]), int(state["filled"])
