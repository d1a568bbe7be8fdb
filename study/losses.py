"""Supervised contrastive loss (Khosla et al., NeurIPS 2020, Eqs. 2 and 3) and its SimCLR special case.

Layout: `features` is `[batch, n_views, dim]`; the contrast set is every view of every sample (of every
worker, when `torch.distributed` runs with more than one process), flattened sample-major, so view v of
sample s is row `s * n_views + v`. Per anchor i with positives P(i) (same label, or same sample for
SimCLR) and A(i) (every other view):

    L_out(i) = logsumexp_{a in A(i)} z_i.z_a/t - mean_{p in P(i)} z_i.z_p/t
    L_in(i)  = logsumexp_{a in A(i)} z_i.z_a/t - logsumexp_{p in P(i)} z_i.z_p/t + log |P(i)|

Memory: one `[anchors, contrast]` float matrix, kept for backward (a custom autograd function writes the
gradient from the closed form instead of saving intermediates; backward adds row blocks of it), plus
boolean masks only where a positives cap or L_in needs them: for L_out without a cap the positive term is
z_i . (sum of the other same-label features) / |P(i)|, from per-class feature sums. `chunk_size` bounds
that matrix to `[chunk_size, contrast]` and recomputes it in backward (activation checkpointing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.distributed as dist
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

VARIANTS = ("out", "in")
CONTRAST_MODES = ("all", "one")
# exp(logit - shift) for a row whose maximum is 40 below the shift stays a normal float32 down to e^-47
# of that maximum, far below float32's resolution of the row's sum (about e^-16).
_SHARED_SHIFT_RANGE = 40.0


def _world() -> tuple[int, int]:
    """(world size, rank) of the default process group, or (1, 0) when none is running."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, tensor: Tensor) -> Tensor:
        world, rank = _world()
        ctx.rank, ctx.rows = rank, tensor.shape[0]
        parts = [torch.empty_like(tensor) for _ in range(world)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:
        # Every worker's loss used this worker's slice: its gradient is the sum over workers.
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad.narrow(0, ctx.rank * ctx.rows, ctx.rows)


def gather_with_grad(tensor: Tensor) -> Tensor:
    """Concatenate `tensor` from all workers along dim 0 (rank order), with gradients flowing back.

    Backward sums the incoming gradient over workers and returns this worker's slice, so every worker
    must call backward (as under DistributedDataParallel). Without a process group of size > 1 this
    returns `tensor` unchanged. All workers must pass the same shape."""
    if _world()[0] == 1:
        return tensor
    return _GatherWithGrad.apply(tensor)


def _gather_no_grad(tensor: Tensor) -> Tensor:
    world, _ = _world()
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _validate(features: Tensor, labels: Tensor | None, temperature: float, variant: str, contrast_mode: str,
              max_positives: int | None, chunk_size: int | None) -> None:
    if not isinstance(features, Tensor) or features.dim() != 3 or min(features.shape) < 1:
        shape = tuple(features.shape) if isinstance(features, Tensor) else type(features).__name__
        raise ValueError(f"features must be a non-empty tensor [batch, n_views, dim], got {shape}")
    if not features.is_floating_point():
        raise ValueError(f"features must be floating point, got dtype {features.dtype}")
    if labels is not None:
        if labels.dim() != 1 or labels.shape[0] != features.shape[0]:
            raise ValueError(f"labels must have shape [batch] = [{features.shape[0]}], got {tuple(labels.shape)}")
        if labels.is_floating_point() or labels.is_complex():
            raise ValueError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) \
            or not math.isfinite(temperature) or temperature <= 0:
        raise ValueError(f"temperature must be a finite number > 0, got {temperature!r}")
    if variant not in VARIANTS:
        raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
    if contrast_mode not in CONTRAST_MODES:
        raise ValueError(f"contrast_mode must be one of {CONTRAST_MODES}, got {contrast_mode!r}")
    for name, value in (("max_positives", max_positives), ("chunk_size", chunk_size)):
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ValueError(f"{name} must be an integer >= 1 or None, got {value!r}")


def _positive_masks(self_cols: Tensor, anchor_class: Tensor, contrast_class: Tensor, n_views: int,
                    max_positives: int | None) -> tuple[Tensor, Tensor | None]:
    """Boolean `[anchors, contrast]` masks: the kept positives, and the positives the cap drops from
    numerator and denominator (None without a cap). The cap keeps the anchor's own other views first, then
    other same-label views in contrast order (batches are shuffled, so this is a random pick)."""
    positives = anchor_class[:, None] == contrast_class[None, :]
    positives[torch.arange(len(self_cols), device=self_cols.device), self_cols] = False
    if max_positives is None:
        return positives, None
    cols = torch.arange(len(contrast_class), device=self_cols.device)
    own = positives & ((self_cols // n_views)[:, None] == (cols // n_views)[None, :])
    own_rank = own.cumsum(1, dtype=torch.int32)
    other_rank = (positives & ~own).cumsum(1, dtype=torch.int32) + own.sum(1, keepdim=True, dtype=torch.int32)
    kept = positives & (torch.where(own, own_rank, other_rank) <= max_positives)
    return kept, positives & ~kept


def _global_mean(local_sum: Tensor, count: Tensor, world: int, scale: float) -> Tensor:
    """This worker's share of the mean over every worker's anchors, times `scale` (t when the loss is rescaled
    by the temperature). With several workers the value is the global mean on every worker while the gradient
    stays this share's, scaled by `world` for DDP's gradient averaging (report the global loss on every
    worker while keeping the DDP-scaled gradient of this share)."""
    loss = local_sum * world / count
    if world > 1:
        total = local_sum.detach().clone()
        dist.all_reduce(total, op=dist.ReduceOp.SUM)
        loss = loss + (total / count - loss).detach()
    return loss * scale


def _row_blocks(n_rows: int, n_cols: int, elements: int = 1 << 22) -> list[slice]:
    """Row slices of about `elements` entries: bounds the temporaries of row-wise work to 16 MB of float32."""
    step = max(1, elements // max(n_cols, 1))
    return [slice(start, min(start + step, n_rows)) for start in range(0, n_rows, step)]


class _ContrastTerms(torch.autograd.Function):
    """Per anchor row of the logits `anchors @ contrast.T / t`: their log-sum-exp over A(i) and, when a
    kept-positives mask is given, the positive term: their mean ("out") or their log-sum-exp ("in").

    Saves one `[anchors, contrast]` matrix and writes the gradient from the closed form (softmax minus the
    positive weights). For L_out the saved matrix is exp(logits - row max), computed in place, so backward
    is two matrix products scaled per row, with no `[anchors, contrast]` temporaries; L_in keeps the logits
    (its positive softmax must not underflow) and works in row blocks.

    `symmetric` says the anchors are the contrast rows themselves (every view is an anchor, one process,
    one block), so the logits are symmetric. L_out without masks then shifts the whole matrix by one
    constant, when every row's maximum lies within `_SHARED_SHIFT_RANGE` of it, keeping exp(logits - shift)
    symmetric: the gradient from both sides, u_i E_ij + u_j E_ji = (u_i + u_j) E_ij, is then one matrix
    product instead of two (the products dominate the cost)."""

    @staticmethod
    def forward(ctx, anchors: Tensor, contrast: Tensor, inv_t: float, self_cols: Tensor, kept: Tensor | None,
                dropped: Tensor | None, n_kept: Tensor, variant: str, symmetric: bool) -> tuple[Tensor, Tensor]:
        logits = anchors.new_empty(len(anchors), len(contrast))
        torch.addmm(logits, anchors, contrast.T, beta=0, alpha=inv_t, out=logits)  # 1/t at no extra pass
        # A finite fill (not -inf) keeps a row without any entry (a lone view) finite forward and backward.
        fill = torch.finfo(logits.dtype).min
        logits[torch.arange(len(anchors), device=anchors.device), self_cols] = fill
        if dropped is not None:
            logits.masked_fill_(dropped, fill)
        positive = logits.new_zeros(len(anchors))
        if variant == "in":
            assert kept is not None  # L_in always has a positives mask (only L_out takes the class-sum path)
            lse = logits.new_empty(len(anchors))
            for rows in _row_blocks(*logits.shape):
                lse[rows] = logits[rows].logsumexp(1)
                positive[rows] = logits[rows].masked_fill(~kept[rows], fill).logsumexp(1)
            saved, normaliser = logits, lse  # softmax = exp(saved - lse)
        else:
            if kept is not None:
                for rows in _row_blocks(*logits.shape):
                    positive[rows] = torch.where(kept[rows], logits[rows], 0.0).sum(1) / n_kept[rows]
            row_max = logits.amax(1)
            shift = row_max.max()
            # One shift for all rows (synchronises a GPU, as torch.unique in supcon_loss already does).
            symmetric = symmetric and bool(shift - row_max.min() <= _SHARED_SHIFT_RANGE)
            if symmetric:
                row_max = shift.expand(len(anchors))
            saved = logits.sub_(row_max[:, None]).exp_()  # excluded entries become exactly 0
            normaliser = saved.sum(1)  # softmax = saved / normaliser
            lse = row_max + normaliser.log()
        ctx.save_for_backward(anchors, contrast, saved, normaliser, positive, kept, n_kept)
        ctx.variant, ctx.inv_t, ctx.symmetric = variant, inv_t, symmetric
        return lse, positive

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_lse: Tensor, grad_positive: Tensor):
        anchors, contrast, saved, normaliser, positive, kept, n_kept = ctx.saved_tensors
        inv_t = ctx.inv_t
        if ctx.symmetric:
            weight = grad_lse * inv_t / normaliser
            # Row blocks bound the scaled copy of the matrix: 256 rows stay fast on CPU, a GPU wants few launches.
            rows_per_block = 256 if saved.device.type == "cpu" else max(256, (1 << 24) // len(saved))
            grad = torch.empty_like(contrast)
            block = anchors.new_empty(min(rows_per_block, len(saved)), len(saved))
            for start in range(0, len(saved), len(block)):
                rows = slice(start, min(start + len(block), len(saved)))
                scaled = torch.add(weight[rows, None], weight[None, :], out=block[:rows.stop - start])
                torch.mm(scaled.mul_(saved[rows]), contrast, out=grad[rows])
            return grad, *[None] * 8
        if ctx.variant == "out" and kept is None:
            weight = (grad_lse * inv_t / normaliser)[:, None]
            return (saved @ contrast).mul_(weight), saved.T @ (anchors * weight), *[None] * 7
        grad_anchors, grad_contrast = torch.empty_like(anchors), torch.zeros_like(contrast)
        for rows in _row_blocks(*saved.shape):
            if ctx.variant == "out":
                grad = saved[rows] * (grad_lse[rows] / normaliser[rows])[:, None]
                grad += torch.where(kept[rows], (grad_positive[rows] / n_kept[rows])[:, None], 0.0)
            else:
                grad = (saved[rows] - normaliser[rows, None]).exp_().mul_(grad_lse[rows, None])
                grad += torch.where(kept[rows], (saved[rows] - positive[rows, None]).exp(), 0.0) \
                    * grad_positive[rows, None]
            torch.mm(grad, contrast, out=grad_anchors[rows]).mul_(inv_t)
            grad_contrast.addmm_(grad.T, anchors[rows], alpha=inv_t)
        return grad_anchors, grad_contrast, *[None] * 7


def _anchor_losses(anchors: Tensor, contrast: Tensor, inv_t: float, self_cols: Tensor, anchor_class: Tensor,
                   contrast_class: Tensor, n_positives: Tensor, positive_mean: Tensor | None, n_views: int,
                   variant: str, max_positives: int | None, symmetric: bool) -> Tensor:
    """Per-anchor loss for a block of anchors (`symmetric`: the block is all of `contrast`, in order)."""
    n_kept = n_positives.clamp(min=1).to(anchors.dtype)
    if positive_mean is not None:  # L_out without cap: the positive term needs no mask
        lse, _ = _ContrastTerms.apply(anchors, contrast, inv_t, self_cols, None, None, n_kept, variant, symmetric)
        return lse - (anchors * positive_mean).sum(1) * inv_t
    kept, dropped = _positive_masks(self_cols, anchor_class, contrast_class, n_views, max_positives)
    lse, positive = _ContrastTerms.apply(anchors, contrast, inv_t, self_cols, kept, dropped, n_kept, variant,
                                         False)
    return lse - positive if variant == "out" else lse - positive + n_kept.log()


def supcon_loss(features: Tensor, labels: Tensor | Sequence[int] | None = None, *, temperature: float = 0.1,
                variant: str = "out", contrast_mode: str = "all", scale_by_temperature: bool = False,
                max_positives: int | None = None, chunk_size: int | None = None) -> Tensor:
    """Supervised contrastive loss: the mean over anchors of the per-anchor loss of Khosla et al. (2020).

    Args:
        features: `[batch, n_views, dim]`, the (L2-normalised) projections of every view.
        labels: `[batch]` integer class labels; None gives SimCLR (positives are the sample's other views).
        temperature: t > 0 dividing the dot products.
        variant: "out" (Eq. 2, L_out, the paper's choice) or "in" (Eq. 3, L_in).
        contrast_mode: "all" (every view is an anchor) or "one" (only view 0 is an anchor; every view is
            still contrasted).
        scale_by_temperature: multiply the loss by t, as the paper does for stability.
        max_positives: keep at most this many positives per anchor (its own other views first, then other
            same-label views in batch order) and drop the rest from numerator and denominator
            (the paper's positives cap, Supp. Sec. 11).
        chunk_size: process anchors in blocks of this many rows, recomputing each block in backward, so
            memory is bounded by `chunk_size x contrast` instead of `anchors x contrast`. Same result.

    Returns:
        A float scalar (float32, or float64 for float64 input; autocast is disabled inside). Anchors
        without any positive are left out of the mean; if no anchor has one the loss is 0.

    Distributed: with a `torch.distributed` group of size k > 1, each worker's anchors are contrasted with
    the features and labels of all workers (differentiable all-gather; every worker must pass the same
    batch size and call backward). The returned value is the global loss, identical on every worker and
    equal to the single-process loss on the concatenated batch. Gradients follow DistributedDataParallel's
    convention: each worker's gradient is k times its share of the global loss, so the gradients averaged
    over workers (what DDP does) equal the single-process gradients exactly.
    """
    if labels is not None and not isinstance(labels, Tensor):
        labels = torch.as_tensor(labels)
    _validate(features, labels, temperature, variant, contrast_mode, max_positives, chunk_size)
    batch, n_views, dim = features.shape
    device = features.device
    world, rank = _world()
    dtype = torch.promote_types(features.dtype, torch.float32)

    with torch.autocast(device_type=device.type, enabled=False):
        features = features.to(dtype)
        if world > 1:
            sizes = _gather_no_grad(torch.tensor([[batch, labels is None]], device=device))
            if not (sizes == sizes[:1]).all():
                raise ValueError(f"every worker must pass the same batch size and labels/None, got "
                                 f"(batch, labels is None) per worker {sizes.tolist()}")
            everyone = gather_with_grad(features)
        else:
            everyone = features
        # Class index of every contrast row: labels, or the global sample index for SimCLR.
        ids = torch.arange(world * batch, device=device) if labels is None else (
            _gather_no_grad(labels.to(device)) if world > 1 else labels.to(device))
        _, sample_class = torch.unique(ids, return_inverse=True)
        contrast_class = sample_class.repeat_interleave(n_views)
        class_sizes = torch.bincount(contrast_class)
        contrast = everyone.reshape(world * batch * n_views, dim)

        # This worker's anchors are contrast rows offset + [0, 1, 2, ...] ("all") or every n_views-th ("one").
        offset, stride = rank * batch * n_views, 1 if contrast_mode == "all" else n_views
        anchors = features.reshape(batch * n_views, dim)[::stride]
        self_rows = slice(offset, offset + batch * n_views, stride)
        self_cols = torch.arange(offset, offset + batch * n_views, stride, device=device)
        anchor_class = contrast_class[self_rows]
        global_anchor_class = contrast_class[::stride]
        n_positives = class_sizes[anchor_class] - 1
        if max_positives is not None:
            n_positives = n_positives.clamp(max=max_positives)

        positive_mean = None
        if variant == "out" and max_positives is None:
            # Mean of the other same-class contrast features, from per-class sums: no [anchors, contrast] mask.
            class_sums = contrast.new_zeros(len(class_sizes), dim).index_add_(0, contrast_class, contrast)
            positive_mean = (class_sums.index_select(0, anchor_class) - contrast[self_rows]) \
                / n_positives.clamp(min=1).to(dtype)[:, None]

        def block(start: int, stop: int, symmetric: bool = False) -> Tensor:
            return _anchor_losses(anchors[start:stop], contrast, 1.0 / temperature, self_cols[start:stop],
                                  anchor_class[start:stop], contrast_class, n_positives[start:stop],
                                  None if positive_mean is None else positive_mean[start:stop],
                                  n_views, variant, max_positives, symmetric)

        if chunk_size is None or chunk_size >= len(anchors):
            per_anchor = block(0, len(anchors), symmetric=world == 1 and contrast_mode == "all")
        else:
            per_anchor = torch.cat([checkpoint(block, start, min(start + chunk_size, len(anchors)),
                                               use_reentrant=False)
                                    for start in range(0, len(anchors), chunk_size)])

        local_sum = torch.where(n_positives > 0, per_anchor, 0.0).sum()
        global_count = (class_sizes[global_anchor_class] > 1).sum().clamp(min=1).to(dtype)
        return _global_mean(local_sum, global_count, world, temperature if scale_by_temperature else 1.0)


def supcon_loss_with_memory(features: Tensor, keys: Tensor, labels: Tensor | Sequence[int] | None,
                            queue_keys: Tensor, queue_labels: Tensor | None, *, temperature: float = 0.1,
                            variant: str = "out", contrast_mode: str = "all",
                            scale_by_temperature: bool = False) -> Tensor:
    """`supcon_loss` with an external contrast set: the memory variant of Sec. 4.1 (MoCo-style keys and queue).

    Args:
        features: `[batch, n_views, dim]`, the anchors: this batch's projections by the trained network.
        keys: `[batch, n_views, dim]`, the same views embedded by the momentum network (no gradient flows
            into them).
        labels: `[batch]` class labels (SupCon), or None (SimCLR).
        queue_keys: `[queue, dim]`, past keys (only the filled part of the queue; may be empty).
        queue_labels: `[queue]` their labels (ignored, and may be None, for SimCLR).
        temperature, variant, contrast_mode, scale_by_temperature: as in `supcon_loss`.

    The contrast set is this batch's keys (of every worker, when distributed), flattened sample-major as in
    `supcon_loss`, followed by the queue. Anchor i (view v of sample s) leaves out the key of its own view;
    its positives are, for SupCon, every other entry with its label (its image's other views' keys
    included), for SimCLR only the keys of its image's other views; queue entries are then negatives.
    Same L_out / L_in per-anchor loss, mean over anchors with a positive, optional rescaling by t. One
    `[anchors, contrast]` logits matrix through plain autograd (which keeps a few matrices of that size for
    backward, unlike `supcon_loss`'s closed-form gradient): gradients reach `features` only.

    Distributed: this worker's anchors are contrasted with the keys of all workers (gathered, no gradient)
    and the queue, which must be the same on every worker (`study.memory.KeyMemory` keeps it so). The value
    is the global loss on every worker; gradients follow DistributedDataParallel's convention, as in
    `supcon_loss`."""
    supervised = labels is not None
    labels = None if labels is None else torch.as_tensor(labels)  # a Tensor passes through as is
    _validate(features, labels, temperature, variant, contrast_mode, None, None)
    if not isinstance(keys, Tensor) or keys.shape != features.shape:
        raise ValueError(f"keys must have the shape of features {tuple(features.shape)}, "
                         f"got {tuple(keys.shape) if isinstance(keys, Tensor) else type(keys).__name__}")
    dim = features.shape[2]
    if queue_keys.dim() != 2 or queue_keys.shape[1] != dim:
        raise ValueError(f"queue_keys must be [queue, {dim}], got {tuple(queue_keys.shape)}")
    if supervised and (queue_labels is None or queue_labels.shape != queue_keys.shape[:1]):
        raise ValueError(f"queue_labels must be [queue] = [{len(queue_keys)}] with labels, got "
                         f"{None if queue_labels is None else tuple(queue_labels.shape)}")
    batch, n_views, _ = features.shape
    device = features.device
    world, rank = _world()
    dtype = torch.promote_types(features.dtype, torch.float32)

    with torch.autocast(device_type=device.type, enabled=False):
        features, keys = features.to(dtype), keys.detach().to(dtype)
        if world > 1:
            sizes = _gather_no_grad(torch.tensor([[batch, not supervised]], device=device))
            if not (sizes == sizes[:1]).all():
                raise ValueError(f"every worker must pass the same batch size and labels/None, got "
                                 f"(batch, labels is None) per worker {sizes.tolist()}")
            keys = _gather_no_grad(keys)
        batch_keys = keys.reshape(world * batch * n_views, dim)
        contrast = torch.cat([batch_keys, queue_keys.detach().to(device, dtype)])
        # Who is whose positive: labels for SupCon; for SimCLR the global sample index, queue never.
        sample = torch.arange(world * batch, device=device).repeat_interleave(n_views)
        if labels is not None:
            assert queue_labels is not None  # checked above
            everyone = _gather_no_grad(labels.to(device)) if world > 1 else labels.to(device)
            contrast_class = torch.cat([everyone.repeat_interleave(n_views), queue_labels.to(device)])
        else:
            contrast_class = torch.cat([sample, sample.new_full((len(queue_keys),), -1)])

        offset, stride = rank * batch * n_views, 1 if contrast_mode == "all" else n_views
        anchors = features.reshape(batch * n_views, dim)[::stride]
        self_cols = torch.arange(offset, offset + batch * n_views, stride, device=device)
        rows = torch.arange(len(anchors), device=device)
        logits = anchors @ contrast.T / temperature
        fill = torch.finfo(dtype).min
        logits = logits.index_put((rows, self_cols), torch.tensor(fill, dtype=dtype, device=device))
        positives = contrast_class[self_cols][:, None] == contrast_class[None, :]
        positives[rows, self_cols] = False
        n_positives = positives.sum(1)
        n_kept = n_positives.clamp(min=1).to(dtype)
        lse = logits.logsumexp(1)
        if variant == "out":
            per_anchor = lse - torch.where(positives, logits, 0.0).sum(1) / n_kept
        else:
            per_anchor = lse - logits.masked_fill(~positives, fill).logsumexp(1) + n_kept.log()

        has_positive = n_positives > 0
        local_sum = torch.where(has_positive, per_anchor, 0.0).sum()
        count = has_positive.sum().to(dtype)
        if world > 1:
            dist.all_reduce(count, op=dist.ReduceOp.SUM)
        count = count.clamp(min=1)
        return _global_mean(local_sum, count, world, temperature if scale_by_temperature else 1.0)
