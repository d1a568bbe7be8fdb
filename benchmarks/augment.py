"""Augmentation throughput per policy: the per-image CPU path per core vs the batched path (issue 14).

    python -m benchmarks.augment                    # 32 px and 224 px, every policy
    python -m benchmarks.augment --sizes 32 --policies crop_flip simaugment

Images/s counts augmented views (images the network sees). Sources: a 32 x 32 image at 32 px (CIFAR,
stored at the model's size) and a 500 x 375 image at 224 px (an ImageNet-sized photo, already decoded:
JPEG decoding is left out of both paths).

- per-image: `study.augment.build_train_transform` on a PIL image, one view at a time, torch at 1 thread
  (one core, as one DataLoader worker runs it).
- batched: `study.batched_augment.BatchAugment` on a uint8 batch of the sources (256 views at 32 px, 32
  at 224 px), on the CPU at 1 thread (per core) and at every core; on the GPU too when CUDA is available.
Each measurement is the median of `--repeats` timed runs after one warm-up run.
"""

from __future__ import annotations

import argparse
import os
import time

import numpy as np
import torch
from PIL import Image

from benchmarks.common import median, print_header, print_table
from study.augment import build_train_transform, default_autoaugment_policy
from study.batched_augment import build_batch_augment
from study.config import AUGMENTATIONS

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
SOURCE = {32: (32, 32), 224: (500, 375)}  # (width, height) of the decoded source image per model size
BATCH = {32: 256, 224: 32}


def source_image(width: int, height: int, seed: int = 0) -> np.ndarray:
    """A smooth colour image with edges and texture (uint8 HWC)."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width] / max(width, height)
    channels = [np.sin(2 * np.pi * (rng.uniform(1, 4) * x + rng.uniform(1, 4) * y)) for _ in range(3)]
    image = (np.stack(channels, -1) * 0.35 + 0.5) * 255 + rng.normal(0, 8, (height, width, 3))
    image[height // 4 : height // 2, width // 4 : width // 2] = rng.integers(0, 256, 3)
    return image.clip(0, 255).astype(np.uint8)


def timed(run, repeats: int) -> float:
    run()  # warm-up
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        run()
        seconds.append(time.perf_counter() - started)
    return median(seconds)


def per_image_rate(policy: str, size: int, image: np.ndarray, views: int, repeats: int) -> float:
    transform = build_train_transform(policy, image_size=size, mean=MEAN, std=STD,
                                      autoaugment_policy=default_autoaugment_policy(size))
    pil = Image.fromarray(image)
    torch.set_num_threads(1)
    return views / timed(lambda: [transform(pil) for _ in range(views)], repeats)


def batched_rate(policy: str, size: int, image: np.ndarray, views: int, repeats: int, device: str,
                 threads: int) -> float:
    augment = build_batch_augment(policy, image_size=size, mean=MEAN, std=STD,
                                  autoaugment_policy=default_autoaugment_policy(size), device=device)
    batch = torch.from_numpy(image).permute(2, 0, 1)[None].expand(views, -1, -1, -1).contiguous()
    if device == "cuda":
        batch = batch.pin_memory()
    torch.set_num_threads(threads)

    def run() -> None:
        augment(batch)  # uint8 batch in (copied to the device inside), normalised float batch out
        if device == "cuda":
            torch.cuda.synchronize()

    return views / timed(run, repeats)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", type=int, default=[32, 224], choices=sorted(SOURCE))
    parser.add_argument("--policies", nargs="+", default=list(AUGMENTATIONS), choices=AUGMENTATIONS)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    cores = os.cpu_count() or 1
    gpu = torch.cuda.is_available()
    print_header("Augmentation: per-image CPU path vs batched path",
                 f"views/s; per-image at 1 thread; batched at 1 thread and at {cores} threads"
                 + ("; batched on the GPU" if gpu else "; no GPU here"))
    for size in args.sizes:
        image = source_image(*SOURCE[size])
        views = BATCH[size]
        rows = []
        for policy in args.policies:
            row = {"policy": policy,
                   "per_image": per_image_rate(policy, size, image, min(views, 64), args.repeats),
                   "batched_1": batched_rate(policy, size, image, views, args.repeats, "cpu", 1),
                   "batched_all": batched_rate(policy, size, image, views, args.repeats, "cpu", cores)}
            row["ratio"] = row["batched_1"] / row["per_image"]
            if gpu:
                row["gpu"] = batched_rate(policy, size, image, 256, args.repeats, "cuda", cores)
            rows.append(row)
        print(f"\n{size} px (source {SOURCE[size][0]} x {SOURCE[size][1]}, batched batch {views} views)")
        columns = [("policy", "policy", ""), ("per_image", "per-image CPU, 1 core", ".0f"),
                   ("batched_1", "batched CPU, 1 core", ".0f"), ("ratio", "batched / per-image per core", ".2f"),
                   ("batched_all", f"batched CPU, {cores} cores", ".0f")]
        if gpu:
            columns.append(("gpu", "batched GPU (256 views)", ".0f"))
        print_table(rows, columns)


if __name__ == "__main__":
    main()
