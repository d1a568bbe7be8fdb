"""The memory of past keys (paper Sec. 4.1, issue 15): what it costs beside the plain loss and the training step.

    python -m benchmarks.memory                    # CPU: loss at batch 256 without / with 8192 x 128 keys,
                                                   # then the memory's parts for a ResNet-18 at width 0.25
    python -m benchmarks.memory --device cuda      # peak memory from torch.cuda.max_memory_allocated

1. The loss, forward + backward, float32, batch 256 x 2 views x 128 dimensions, 10 classes, t = 0.1:
   `supcon_loss` (no memory) beside `supcon_loss_with_memory` with this batch's keys and a full queue of
   8192 keys (the paper's memory, "requiring only the storage of 128-dimensional vectors"). Time and peak
   memory are measured as `benchmarks.loss` does (median of round-robin repeats; peak from the profiler's
   allocator events on the CPU).
2. The memory's parts in a training step of the toolkit's default network (ResNet-18 at width 0.25, CIFAR
   stem, 32 px, MLP head to 128), batch 256 x 2 views: the momentum network's keys (a forward pass without
   gradient), the enqueue, and the momentum update (an EMA over every parameter), beside the trained
   network's own forward + backward, and the memory's storage (queue + momentum copy of the network).
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from benchmarks.loss import peak_bytes
from study.losses import supcon_loss, supcon_loss_with_memory
from study.memory import KeyMemory
from study.models import ContrastiveNetwork, build_encoder

BATCH, VIEWS, DIM, QUEUE, CLASSES, TEMPERATURE = 256, 2, 128, 8192, 10, 0.1
MODEL, WIDTH, IMAGE_SIZE = "resnet18", 0.25, 32


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _median_seconds(fn: Callable[[], object], repeats: int, device: torch.device) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        _sync(device)
        started = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def bench_loss(device: torch.device, repeats: int) -> list[dict]:
    generator = torch.Generator().manual_seed(0)
    features = F.normalize(torch.randn(BATCH, VIEWS, DIM, generator=generator), dim=-1).to(device).requires_grad_()
    labels = torch.randint(0, CLASSES, (BATCH,), generator=generator).to(device)
    keys = F.normalize(torch.randn(BATCH, VIEWS, DIM, generator=generator), dim=-1).to(device)
    queue = F.normalize(torch.randn(QUEUE, DIM, generator=generator), dim=-1).to(device)
    queue_labels = torch.randint(0, CLASSES, (QUEUE,), generator=generator).to(device)

    def plain(f: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
        return supcon_loss(f, y, temperature=t, scale_by_temperature=True)

    def with_memory(f: torch.Tensor, y: torch.Tensor, t: float) -> torch.Tensor:
        return supcon_loss_with_memory(f, keys, y, queue, queue_labels, temperature=t, scale_by_temperature=True)

    contenders = {"supcon_loss, no memory": (plain, BATCH * VIEWS),
                  f"with memory {QUEUE} x {DIM}": (with_memory, BATCH * VIEWS + QUEUE)}
    times: dict[str, list[float]] = {name: [] for name in contenders}

    def step(fn) -> None:
        features.grad = None
        fn(features, labels, TEMPERATURE).backward()

    for fn, _ in contenders.values():
        step(fn)  # warm-up
    for _ in range(repeats):  # round-robin: the shared machine's noise hits both alike
        for name, (fn, _) in contenders.items():
            _sync(device)
            started = time.perf_counter()
            step(fn)
            _sync(device)
            times[name].append(time.perf_counter() - started)
    return [{"name": name, "contrast": contrast, "ms": 1e3 * statistics.median(times[name]),
             "peak_mb": peak_bytes(fn, features, labels) / 2**20} for name, (fn, contrast) in contenders.items()]


def bench_parts(device: torch.device, repeats: int) -> tuple[list[dict], dict]:
    torch.manual_seed(0)
    network = ContrastiveNetwork(build_encoder(MODEL, width=WIDTH, image_size=IMAGE_SIZE), DIM).to(device)
    memory = KeyMemory(network, QUEUE, DIM, momentum=0.999)
    images = torch.randn(BATCH * VIEWS, 3, IMAGE_SIZE, IMAGE_SIZE, device=device)
    labels = torch.randint(0, CLASSES, (BATCH,), device=device)
    keys = memory.embed(images).view(BATCH, VIEWS, -1)

    def train_step() -> None:
        network.zero_grad(set_to_none=True)
        network(images).float().sum().backward()

    parts = {
        "trained network forward + backward (no loss, no optimizer)": train_step,
        "momentum network keys (forward, no gradient)": lambda: memory.embed(images),
        f"enqueue {BATCH * VIEWS} keys": lambda: memory.enqueue(keys, labels),
        "momentum update (EMA of every parameter)": lambda: memory.update(network),
    }
    rows = [{"part": part, "ms": 1e3 * _median_seconds(fn, repeats, device)} for part, fn in parts.items()]
    parameters = sum(p.numel() for p in network.parameters())
    copy_bytes = sum(t.numel() * t.element_size() for t in memory.network.state_dict().values())
    storage = {"parameters": parameters, "momentum copy MiB": copy_bytes / 2**20,
               "queue MiB": (memory.keys.numel() * memory.keys.element_size()
                             + memory.labels.numel() * memory.labels.element_size()) / 2**20}
    return rows, storage


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=None, help="default: 31 for the loss, 5 for the network parts")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}, float32, "
          f"batch {BATCH} x {VIEWS} views, {DIM} dimensions, {CLASSES} classes, t={TEMPERATURE}")

    print(f"\n1. Loss forward + backward (median of {args.repeats or 31}; peak above the inputs)")
    rows = bench_loss(device, args.repeats or 31)
    header = f"{'contender':<28} {'contrast set':>12} {'ms':>8} {'peak MB':>9} {'t/plain':>8} {'mem/plain':>10}"
    print(header)
    print("-" * len(header))
    for row in rows:
        print(f"{row['name']:<28} {row['contrast']:>12} {row['ms']:>8.2f} {row['peak_mb']:>9.1f} "
              f"{row['ms'] / rows[0]['ms']:>8.2f} {row['peak_mb'] / rows[0]['peak_mb']:>10.2f}")

    print(f"\n2. The memory's parts, {MODEL} width {WIDTH}, {IMAGE_SIZE} px, {BATCH} x {VIEWS} views "
          f"(median of {args.repeats or 5})")
    parts, storage = bench_parts(device, args.repeats or 5)
    step = parts[0]["ms"]
    header = f"{'part':<60} {'ms':>9} {'/ fwd+bwd':>10}"
    print(header)
    print("-" * len(header))
    for row in parts:
        print(f"{row['part']:<60} {row['ms']:>9.2f} {row['ms'] / step:>10.3f}")
    memory_ms = sum(row["ms"] for row in parts[1:])
    print(f"{'memory total (keys + enqueue + update)':<60} {memory_ms:>9.2f} {memory_ms / step:>10.3f}")
    print(f"storage: queue {storage['queue MiB']:.2f} MiB ({QUEUE} x {DIM} float32 + labels), momentum copy "
          f"{storage['momentum copy MiB']:.2f} MiB ({storage['parameters']:,} parameters + buffers)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
