"""SupCon loss, forward + backward: ours vs the widely copied reference, pytorch-metric-learning and the floor.

    python -m benchmarks.loss                      # CPU, shapes (2048, 2, 128) and (512, 2, 128)
    python -m benchmarks.loss --device cuda        # peak memory from torch.cuda.max_memory_allocated

Time: median wall time of forward + backward over repeats, contenders run round-robin so that the shared
machine's noise hits all of them alike. Peak memory: the most memory the step holds at once beyond what
existed before it (inputs excluded, the gradient of the features included). On CPU it is read from the
PyTorch profiler's allocator events (`profile_memory=True`): every allocation and free of the CPU
allocator with its time stamp, summed in order, so temporaries and tensors saved for backward are all
seen (tracemalloc and RSS do not see, or do not separate, torch's allocations). Shapes run largest first,
so the small shape is timed with the allocator in the steady state of a training process (glibc has raised
its mmap/trim thresholds after large frees and reuses heap pages); in a fresh process every large
temporary costs page faults, which flatters implementations with few temporaries (ours), so this order is
the conservative one for us. Goals (issue 7): ours
<= 0.7x the reference's time and <= 0.4x its peak memory, and <= 1.3x the floor's time.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from study.losses import supcon_loss

Loss = Callable[[torch.Tensor, torch.Tensor, float], torch.Tensor]
SHAPES = ((2048, 2, 128), (512, 2, 128))
NUM_CLASSES = 10
TEMPERATURE = 0.1


def reference_loss(features: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    """The widely copied PyTorch reference formulation (contrast_mode "all", base temperature = t),
    re-implemented from its description: row-max subtraction, a float positive mask tiled over views,
    a float logits mask with the diagonal scattered out, exp, log of the masked sum, mean over positives."""
    batch, n_views = features.shape[:2]
    mask = torch.eq(labels[:, None], labels[None, :]).float()
    contrast = torch.cat(torch.unbind(features, dim=1))  # view-major
    logits = contrast @ contrast.T / t
    logits_max, _ = logits.max(dim=1, keepdim=True)
    logits = logits - logits_max.detach()
    mask = mask.repeat(n_views, n_views)
    logits_mask = torch.scatter(torch.ones_like(mask), 1,
                                torch.arange(batch * n_views, device=features.device).view(-1, 1), 0)
    mask = mask * logits_mask
    exp_logits = torch.exp(logits) * logits_mask
    log_prob = logits - torch.log(exp_logits.sum(1, keepdim=True))
    mean_log_prob_pos = (mask * log_prob).sum(1) / mask.sum(1)
    return -mean_log_prob_pos.view(n_views, batch).mean()


def floor_loss(features: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    """The least any implementation does: f @ f.T / t (self excluded), log_softmax, masked mean."""
    n_views = features.shape[1]
    z = features.reshape(-1, features.shape[-1])
    logits = (z @ z.T / t).fill_diagonal_(float("-inf"))
    ids = labels.repeat_interleave(n_views)
    positives = (ids[:, None] == ids[None, :]).fill_diagonal_(False)
    log_prob = logits.log_softmax(1)
    return -(torch.where(positives, log_prob, 0.0).sum(1) / positives.sum(1)).mean()


def ours(features: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    return supcon_loss(features, labels, temperature=t)


def ours_chunked(features: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
    return supcon_loss(features, labels, temperature=t, chunk_size=512)


def metric_learning_loss() -> Loss | None:
    """pytorch-metric-learning's SupConLoss on the flattened views, or None when it is not installed."""
    try:
        from pytorch_metric_learning.losses import SupConLoss
    except ImportError:
        return None
    loss = SupConLoss(temperature=TEMPERATURE)

    def pml(features: torch.Tensor, labels: torch.Tensor, t: float) -> torch.Tensor:
        return loss(torch.cat(torch.unbind(features, dim=1)), labels.repeat(features.shape[1]))
    return pml


@contextlib.contextmanager
def quiet_stderr():
    """The profiler's C++ start/stop lines go to file descriptor 2; keep them out of the table."""
    saved = os.dup(2)
    with open(os.devnull, "w") as devnull:
        os.dup2(devnull.fileno(), 2)
        try:
            yield
        finally:
            os.dup2(saved, 2)
            os.close(saved)


def step(fn: Loss, features: torch.Tensor, labels: torch.Tensor) -> float:
    features.grad = None
    loss = fn(features, labels, TEMPERATURE)
    loss.backward()
    return loss.item()


def peak_bytes(fn: Loss, features: torch.Tensor, labels: torch.Tensor) -> int:
    """Peak bytes allocated during one forward + backward, above what was allocated before it."""
    features.grad = None
    if features.device.type == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        step(fn, features, labels)
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - before
    from torch.profiler import ProfilerActivity, profile
    with quiet_stderr(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        step(fn, features, labels)
    events = sorted((e for e in prof.profiler.kineto_results.events() if e.name() == "[memory]"),
                    key=lambda e: e.start_ns())
    held = peak = 0
    for event in events:  # allocations are positive, frees negative
        held += event.nbytes()
        peak = max(peak, held)
    return peak


def timed(fn: Loss, features: torch.Tensor, labels: torch.Tensor) -> float:
    if features.device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    step(fn, features, labels)
    if features.device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def bench_shape(shape: tuple[int, int, int], contenders: dict[str, Loss], repeats: int,
                device: torch.device, budget_s: float = 40.0) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(shape, generator=generator), dim=-1).to(device).requires_grad_()
    labels = torch.randint(0, NUM_CLASSES, shape[:1], generator=generator).to(device)
    values = {name: step(fn, features, labels) for name, fn in contenders.items()}  # also warms up
    memory = {name: peak_bytes(fn, features, labels) for name, fn in contenders.items()}
    times: dict[str, list[float]] = {name: [] for name in contenders}
    started = time.perf_counter()
    for repeat in range(repeats):
        for name, fn in contenders.items():
            times[name].append(timed(fn, features, labels))
        if repeat >= 2 and time.perf_counter() - started > budget_s:  # a loaded machine: stop early
            break
    rows = []
    for name in contenders:
        rows.append({"shape": shape, "contender": name, "loss": values[name],
                     "ms": 1e3 * statistics.median(times[name]), "peak_mb": memory[name] / 2**20})
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads (default: torch's); 1 is steadier on a machine shared with other jobs")
    parser.add_argument("--repeats", type=int, default=None, help="default: 9 for the big shape, 61 for the small")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)

    contenders: dict[str, Loss] = {"ours": ours, "ours chunk=512": ours_chunked, "reference": reference_loss}
    pml = metric_learning_loss()
    if pml is not None:
        contenders["pytorch-metric-learning"] = pml
    contenders["floor"] = floor_loss
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, t={TEMPERATURE}, "
          f"{NUM_CLASSES} classes, float32, forward+backward, median over repeats"
          + ("" if pml else "; pytorch-metric-learning not installed (pip install pytorch-metric-learning)"))

    header = (f"{'shape':>14} {'contender':<24} {'loss':>10} {'ms':>9} {'peak MB':>9} {'t/ref':>6} {'mem/ref':>8} "
              f"{'t/floor':>8}")
    print(header)
    print("-" * len(header))
    failures = []
    for shape in SHAPES:
        repeats = args.repeats or (9 if shape[0] * shape[1] > 2048 else 61)
        rows = bench_shape(shape, contenders, repeats, device)
        by_name = {row["contender"]: row for row in rows}
        ref, floor = by_name["reference"], by_name["floor"]
        for row in rows:
            print(f"{str(shape):>14} {row['contender']:<24} {row['loss']:>10.5f} {row['ms']:>9.1f} "
                  f"{row['peak_mb']:>9.1f} {row['ms'] / ref['ms']:>6.2f} {row['peak_mb'] / ref['peak_mb']:>8.2f} "
                  f"{row['ms'] / floor['ms']:>8.2f}")
            if abs(row["loss"] - ref["loss"]) > 1e-4 * abs(ref["loss"]):
                failures.append(f"{shape} {row['contender']}: loss {row['loss']} != reference {ref['loss']}")
        mine = by_name["ours"]
        goals = {"time <= 0.7x reference": mine["ms"] <= 0.7 * ref["ms"],
                 "peak memory <= 0.4x reference": mine["peak_mb"] <= 0.4 * ref["peak_mb"],
                 "time <= 1.3x floor": mine["ms"] <= 1.3 * floor["ms"]}
        print(f"{'':>14} goals: " + ", ".join(f"{goal} {'met' if ok else 'MISSED'}" for goal, ok in goals.items()))
    for failure in failures:
        print("DISAGREE:", failure)
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main())
