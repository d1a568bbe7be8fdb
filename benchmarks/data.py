"""Data: multi-view augmentation throughput per policy vs what the SupCon training step consumes.

    python -m benchmarks.data                  # digits at 16 px (native) and 32 px (CIFAR's size)
    python -m benchmarks.data --sizes 16

Everything at the default config (study/config.py): ResNet-18 at width 0.25, batch 128, 2 views, SGD,
`loader_workers` 0. Throughputs count views (images the network sees): a batch is 128 x 2 = 256 views.

1. Per policy: the loader's views/s (`MultiViewDataset` + the policy's transform through a DataLoader with
   0 workers, i.e. in the training process, as the default config runs it) vs the training step's views/s
   (forward + SupCon loss + backward + SGD step of `ContrastiveNetwork` on a ready batch, torch at 1 thread
   as in a 1-CPU Ray worker). With 0 workers the two run one after the other, so an epoch spends
   step/(loader + step) of its time augmenting: the "loader share"; the loader is the bottleneck when it is
   the slower stage (share > 50%). Repeats run round-robin over the policies; medians are reported.
2. The pipeline as `study.train` runs it (a fresh DataLoader per epoch, persistent_workers=False), SimAugment,
   with 0, 1 and 2 loader worker processes: time to the first batch (worker start-up included) and views/s.
3. The training step at 1 torch thread vs the default thread count: on a shared, loaded machine extra
   intra-op threads can cost far more than they give.
"""

from __future__ import annotations

import argparse
import itertools
import time

import torch
from torch.utils.data import DataLoader

from benchmarks.common import median, print_header, print_table
from study.augment import AUGMENTATIONS, build_train_transform, default_autoaugment_policy
from study.config import Config
from study.data import MultiViewDataset, load_dataset
from study.losses import supcon_loss
from study.models import ContrastiveNetwork, build_encoder
from study.optim import build_optimizer


def make_step(config: Config, image_size: int):
    """One SupCon training step of the default network on a [B, V, 3, S, S] batch."""
    network = ContrastiveNetwork(build_encoder(config.model, width=config.width, image_size=image_size),
                                 config.projection_dim)
    optimizer = build_optimizer(config.optimizer, network, lr=config.scaled_lr(config.lr, config.batch_size),
                                momentum=config.momentum, weight_decay=config.weight_decay)
    network.train()

    def step(images: torch.Tensor, labels: torch.Tensor) -> None:
        batch, views = images.shape[:2]
        features = network(images.flatten(0, 1)).view(batch, views, -1)
        loss = supcon_loss(features, labels, temperature=config.temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def step_views_per_second(step, batch: tuple[torch.Tensor, torch.Tensor], steps: int) -> float:
    step(*batch)  # warm-up: first-call allocations
    started = time.perf_counter()
    for _ in range(steps):
        step(*batch)
    return steps * batch[0].shape[0] * batch[0].shape[1] / (time.perf_counter() - started)


def loader(dataset, config: Config, workers: int, seed: int = 0) -> DataLoader:
    """As study.train._loader builds it for one worker."""
    return DataLoader(dataset, batch_size=config.batch_size, shuffle=True, drop_last=True, num_workers=workers,
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)


def loader_views_per_second(dataset, config: Config, batches: int) -> float:
    started = time.perf_counter()
    views = sum(images.shape[0] * images.shape[1] for images, _ in itertools.islice(loader(dataset, config, 0),
                                                                                   batches))
    return views / (time.perf_counter() - started)


def pipeline(dataset, config: Config, step, workers: int, batches: int) -> dict[str, float]:
    """Fresh loader, `batches` training steps; first-batch latency and views/s."""
    started = time.perf_counter()
    first = None
    views = 0
    for images, labels in itertools.islice(loader(dataset, config, workers, seed=workers), batches):
        if first is None:
            first = time.perf_counter() - started
        step(images, labels)
        views += images.shape[0] * images.shape[1]
    total = time.perf_counter() - started
    return {"workers": workers, "first": first, "rate": views / total, "batches": batches}


def bench_size(config: Config, image_size: int, repeats: int, default_threads: int) -> None:
    splits = load_dataset(config.dataset, image_size=image_size)
    views_per_batch = config.batch_size * config.n_views
    batches_per_epoch = len(splits.train) // config.batch_size
    print(f"\n-- digits at {image_size} px: {len(splits.train)} training images, {batches_per_epoch} batches of "
          f"{config.batch_size} x {config.n_views} views per epoch --")
    datasets = {
        policy: MultiViewDataset(splits.train, build_train_transform(
            policy, image_size=image_size, mean=splits.mean, std=splits.std,
            autoaugment_policy=default_autoaugment_policy(image_size), randaugment_n=config.randaugment_n,
            randaugment_m=config.randaugment_m), config.n_views)
        for policy in AUGMENTATIONS}
    step = make_step(config, image_size)
    batch = (torch.randn(config.batch_size, config.n_views, 3, image_size, image_size),
             torch.randint(0, splits.num_classes, (config.batch_size,)))
    steps = max(2, round(4 * 16 / image_size))
    batches = max(2, round(48 / image_size))

    for policy in AUGMENTATIONS:  # warm-up, untimed: first-call costs of each transform
        loader_views_per_second(datasets[policy], config, 1)
    rates: dict[str, list[float]] = {policy: [] for policy in AUGMENTATIONS}
    step_rates = []
    for _ in range(repeats):  # round-robin, so the machine's drift hits every policy alike
        for policy in AUGMENTATIONS:
            rates[policy].append(loader_views_per_second(datasets[policy], config, batches))
        step_rates.append(step_views_per_second(step, batch, steps))
    step_rate = median(step_rates)
    rows = []
    for policy in AUGMENTATIONS:
        rate = median(rates[policy])
        share = step_rate / (rate + step_rate)
        rows.append({"policy": policy, "loader": rate, "step": step_rate, "ratio": rate / step_rate,
                     "share": share, "epoch": 1 / (1 / rate + 1 / step_rate),
                     "verdict": "loader" if share > 0.5 else "training step"})
    print_table(rows, [("policy", "policy", ""), ("loader", "loader views/s (0 workers)", ".0f"),
                       ("step", "training step views/s", ".0f"), ("ratio", "loader / step", ".2f"),
                       ("share", "loader share of epoch", ".0%"), ("epoch", "serial epoch views/s", ".0f"),
                       ("verdict", "slower stage", "")])

    batches = batches_per_epoch if image_size <= 16 else max(3, batches_per_epoch // 3)
    runs = [pipeline(datasets["simaugment"], config, step, workers, batches) for workers in (0, 1, 2)]
    for run in runs:
        run["speed_up"] = run["rate"] / runs[0]["rate"]
    print(f"\nSimAugment pipeline, a fresh DataLoader as study.train builds one per epoch, {batches} batches "
          f"({batches * views_per_batch} views), training step at 1 thread:")
    print_table(runs, [("workers", "loader_workers", "d"), ("first", "first batch s", ".2f"),
                       ("rate", "views/s incl. start-up", ".0f"), ("speed_up", "vs 0 workers", ".2f")])

    if image_size == 16:
        threads = {}
        for count in sorted({1, default_threads}):
            torch.set_num_threads(count)
            threads[count] = median(step_views_per_second(step, batch, steps) for _ in range(2))
        torch.set_num_threads(1)
        print("\nTraining step by torch thread count (same batch, same network):")
        print_table([{"threads": count, "rate": rate, "ratio": rate / threads[1]} for count, rate in threads.items()],
                    [("threads", "torch threads", "d"), ("rate", "training step views/s", ".0f"),
                     ("ratio", "vs 1 thread", ".2f")])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[16, 32], help="image sizes (digits rendered)")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    default_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    config = Config()
    print_header("Data: multi-view augmentation vs the SupCon training step",
                 f"default config: {config.model} width {config.width}, batch {config.batch_size} x "
                 f"{config.n_views} views, loader_workers {config.loader_workers}; views/s; "
                 f"default torch threads here: {default_threads}")
    torch.manual_seed(0)
    for size in args.sizes:
        bench_size(config, size, args.repeats, default_threads)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
