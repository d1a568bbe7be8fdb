"""GPU training step: ResNet-50 SupCon and cross-entropy steps, fp32 vs bf16 autocast + channels_last.

    python -m benchmarks.gpu                   # on a CUDA device: ResNet-50, 256 x 2 views, 224 px
    python -m benchmarks.gpu --smoke           # anywhere, in seconds: proves the script runs (numbers mean nothing)
    python -m benchmarks.gpu --pipeline-policies  # the step table only, without the augmentation pipeline

Needs torch and the `study` package only (no Ray), so it runs under a GPU machine's own PyTorch. Each row is
one training step as `study.train` runs it, on a fixed random batch already on the device (the loader is
measured by `benchmarks.data`): SupCon is `ContrastiveNetwork` on batch x views images (views flattened),
`supcon_loss`, backward and an SGD step; cross-entropy is `Classifier` on the same number of images (batch x
views, one view each), so the two rows push the same images through the same trunk per step. Precisions:
"fp32" is PyTorch's default (convolutions may use TF32, matrix products do not) and "bf16" is bf16 autocast
with channels_last weights and images, as `study.train` runs with `amp: true` on CUDA.

Images/s: images per step x timed steps / wall time, after warm-up steps (cuDNN autotuning on). Model FLOP
utilisation (MFU): the FLOPs of one step counted by `torch.utils.flop_counter.FlopCounterMode` (convolutions
and matrix products, forward and backward, the loss's included) x steps per second / the device's dense peak
for the step's math: bf16 tensor cores for "bf16", TF32 tensor cores for "fp32" (its convolutions). Peaks are
the datasheet's for the H100/H200 SXM (bf16 989.4 TFLOP/s, TF32 494.7); `--peak-bf16`/`--peak-tf32`
give them for any other device, and without a known peak MFU is left blank.

Pipeline (issue 14; `--pipeline-policies`, default simclr_augment and autoaugment): the SupCon step in bf16
fed by the batched augmentation (`study.batched_augment`, `data_pipeline: device`) on the same device, from
a fixed batch of decoded uint8 images already there (375 x 500, an ImageNet-size photo; decoding and the
host-to-device copy are the loader's, measured by `benchmarks.data`). Per policy: the augmentation alone
(views/s: `BatchAugment.views(batch, views)` per call), the step alone on a fixed batch (what it consumes,
views/s), end to end (augment, then step, every iteration: views/s and MFU, the FLOPs being the step's own,
as in the step table), and augmentation / step consumption, whose goal is >= 3x (the step never waits on
data).
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from benchmarks.common import print_header, print_table
from study.augment import default_autoaugment_policy
from study.batched_augment import build_batch_augment
from study.losses import supcon_loss
from study.models import Classifier, ContrastiveNetwork, build_encoder
from study.optim import build_optimizer

# Dense tensor-core peaks in TFLOP/s by device-name fragment (NVIDIA datasheets, SXM parts).
DATASHEET_PEAKS = {"H200": {"bf16": 989.4, "fp32": 494.7}, "H100": {"bf16": 989.4, "fp32": 494.7},
                   "A100": {"bf16": 312.0, "fp32": 156.0}}
METHODS = ("supcon", "ce")
PRECISIONS = ("fp32", "bf16")
PIPELINE_POLICIES = ("simclr_augment", "autoaugment")
PIPELINE_GOAL = 3.0  # augmentation views/s over the step's consumption


@dataclass(frozen=True)
class Setting:
    """What one run measures: the network, the batch and how many steps to time."""

    model: str = "resnet50"
    width: float = 1.0
    image_size: int = 224
    batch: int = 256
    views: int = 2
    num_classes: int = 1000
    warmup: int = 10
    steps: int = 30
    source_height: int = 375  # decoded images the batched augmentation starts from
    source_width: int = 500


SMOKE = Setting(model="resnet18", width=0.125, image_size=32, batch=8, views=2, num_classes=10, warmup=1, steps=2,
                source_height=40, source_width=48)


def make_step(method: str, precision: str, setting: Setting, device: torch.device):
    """One training step of `method` at `precision` on a fixed random batch; returns (step, images per step).

    `step()` trains on the fixed batch; `step(batch)` on the given one ([batch x views, 3, S, S], or SupCon's
    [batch, views, 3, S, S] as `BatchAugment.views` returns it)."""
    generator = torch.Generator().manual_seed(0)
    images_per_step = setting.batch * setting.views
    encoder = build_encoder(setting.model, width=setting.width, image_size=setting.image_size)
    network = ContrastiveNetwork(encoder) if method == "supcon" else Classifier(encoder, setting.num_classes)
    images = torch.randn(images_per_step, 3, setting.image_size, setting.image_size, generator=generator)
    labels = torch.randint(0, setting.num_classes, (setting.batch if method == "supcon" else images_per_step,),
                           generator=generator)
    network, images, labels = network.to(device), images.to(device), labels.to(device)
    if precision == "bf16":
        network = network.to(memory_format=torch.channels_last)
        images = images.contiguous(memory_format=torch.channels_last)
    optimizer = build_optimizer("sgd", network, lr=0.1, momentum=0.9, weight_decay=1e-4)
    network.train()

    def step(batch: torch.Tensor | None = None) -> None:
        if batch is None:
            batch = images
        else:
            batch = batch.flatten(0, 1) if batch.dim() == 5 else batch
            if precision == "bf16":
                batch = batch.contiguous(memory_format=torch.channels_last)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
            output = network(batch)
        if method == "supcon":
            loss = supcon_loss(output.float().view(setting.batch, setting.views, -1), labels, temperature=0.1)
        else:
            loss = F.cross_entropy(output.float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step, images_per_step


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(method: str, precision: str, setting: Setting, device: torch.device,
            peaks: dict[str, float] | None) -> dict:
    """Images/s, step time, achieved TFLOP/s, MFU and peak memory of one method at one precision."""
    step, images_per_step = make_step(method, precision, setting, device)
    for _ in range(setting.warmup):
        step()
    with FlopCounterMode(display=False) as counter:
        step()
    flops = counter.get_total_flops()
    synchronize(device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    started = time.perf_counter()
    for _ in range(setting.steps):
        step()
    synchronize(device)
    seconds = (time.perf_counter() - started) / setting.steps
    achieved = flops / seconds / 1e12
    peak = peaks.get(precision) if peaks else None
    return {"method": method, "precision": precision, "images_per_s": images_per_step / seconds,
            "step_ms": 1e3 * seconds, "tflop_per_step": flops / 1e12, "tflops": achieved,
            "peak": peak, "mfu": 100 * achieved / peak if peak else None,
            "memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}


def timed(function, setting: Setting, device: torch.device) -> float:
    """Seconds per call of `function` after the setting's warm-up calls."""
    for _ in range(setting.warmup):
        function()
    synchronize(device)
    started = time.perf_counter()
    for _ in range(setting.steps):
        function()
    synchronize(device)
    return (time.perf_counter() - started) / setting.steps


def measure_pipeline(policy: str, setting: Setting, device: torch.device, peaks: dict[str, float] | None,
                     precision: str = "bf16") -> dict:
    """The SupCon step fed by the batched augmentation of `policy`: the augmentation alone, the step alone,
    end to end (views/s, MFU), and augmentation / step consumption."""
    augment = build_batch_augment(policy, image_size=setting.image_size, mean=(0.485, 0.456, 0.406),
                                  std=(0.229, 0.224, 0.225),
                                  autoaugment_policy=default_autoaugment_policy(setting.image_size), device=device)
    generator = torch.Generator().manual_seed(1)
    decoded = torch.randint(0, 256, (setting.batch, 3, setting.source_height, setting.source_width),
                            dtype=torch.uint8, generator=generator).to(device)
    step, views_per_step = make_step("supcon", precision, setting, device)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)  # this policy's peak: the step's, the augmentation's and both

    def augmentation() -> torch.Tensor:
        return augment.views(decoded, setting.views)

    def end_to_end() -> None:
        step(augmentation())

    augment_seconds = timed(augmentation, setting, device)
    step_seconds = timed(step, setting, device)
    batch = augmentation()
    with FlopCounterMode(display=False) as counter:
        step(batch)
    flops = counter.get_total_flops()
    del batch
    end_seconds = timed(end_to_end, setting, device)
    peak = peaks.get(precision) if peaks else None
    achieved = flops / end_seconds / 1e12
    ratio = step_seconds / augment_seconds
    return {"policy": policy, "precision": precision, "augment_per_s": views_per_step / augment_seconds,
            "step_per_s": views_per_step / step_seconds, "ratio": ratio,
            "goal": "met" if ratio >= PIPELINE_GOAL else "short",
            "end_to_end_per_s": views_per_step / end_seconds, "step_ms": 1e3 * end_seconds,
            "tflops": achieved, "mfu": 100 * achieved / peak if peak else None,
            "memory_gb": torch.cuda.max_memory_allocated(device) / 1e9 if device.type == "cuda" else None}


def device_peaks(device_name: str, bf16: float | None, tf32: float | None) -> dict[str, float] | None:
    """Dense peaks for MFU: the ones given, else the datasheet's for a known device, else None."""
    if bf16 and tf32:
        return {"bf16": bf16, "fp32": tf32}
    known = next((peaks for fragment, peaks in DATASHEET_PEAKS.items() if fragment in device_name), None)
    return None if known is None else {"bf16": bf16 or known["bf16"], "fp32": tf32 or known["fp32"]}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("--smoke", action="store_true", help="a tiny network for a few steps on any device")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--methods", nargs="+", choices=METHODS, default=list(METHODS))
    parser.add_argument("--precisions", nargs="+", choices=PRECISIONS, default=list(PRECISIONS))
    parser.add_argument("--pipeline-policies", nargs="*", choices=PIPELINE_POLICIES + ("crop_flip", "randaugment",
                        "simaugment", "stacked_randaugment"), default=list(PIPELINE_POLICIES),
                        help="policies for the pipeline table (SupCon bf16 with batched augmentation); none: skip it")
    parser.add_argument("--steps", type=int, default=None, help="timed steps (default 30; smoke 2)")
    parser.add_argument("--peak-bf16", type=float, default=None, help="dense bf16 peak, TFLOP/s")
    parser.add_argument("--peak-tf32", type=float, default=None, help="dense TF32 peak, TFLOP/s")
    args = parser.parse_args(argv)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cpu" and not args.smoke:
        parser.error("the full benchmark needs a CUDA device; use --smoke to check the script on a CPU")
    setting = SMOKE if args.smoke else Setting()
    if args.steps is not None:
        if args.steps < 1:
            parser.error(f"--steps must be >= 1, got {args.steps}")
        setting = dataclasses.replace(setting, steps=args.steps)
    torch.backends.cudnn.benchmark = True
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    peaks = device_peaks(name, args.peak_bf16, args.peak_tf32)
    print_header("GPU training step", f"{name} | {setting.model} x{setting.width} at {setting.image_size} px, "
                 f"{setting.batch} x {setting.views} views per step | {setting.warmup} warm-up + "
                 f"{setting.steps} timed steps | peaks (TFLOP/s) {peaks or 'unknown: no MFU'}")
    rows = [measure(method, precision, setting, device, peaks)
            for method in args.methods for precision in args.precisions]
    print_table(rows, [("method", "method", ""), ("precision", "precision", ""),
                       ("images_per_s", "images/s", ".0f"), ("step_ms", "step ms", ".1f"),
                       ("tflop_per_step", "TFLOP/step", ".3f"), ("tflops", "TFLOP/s", ".1f"),
                       ("peak", "peak", ".1f"), ("mfu", "MFU %", ".1f"), ("memory_gb", "peak GB", ".1f")])
    if args.pipeline_policies:
        print_header("Pipeline: SupCon step with the batched augmentation on the device",
                     f"{setting.batch} decoded {setting.source_height} x {setting.source_width} uint8 images on "
                     f"the device -> {setting.views} views at {setting.image_size} px | views/s | goal: "
                     f"augmentation >= {PIPELINE_GOAL:g}x the step's consumption")
        rows = [measure_pipeline(policy, setting, device, peaks) for policy in args.pipeline_policies]
        print_table(rows, [("policy", "policy", ""), ("precision", "precision", ""),
                           ("augment_per_s", "augment views/s", ".0f"), ("step_per_s", "step views/s", ".0f"),
                           ("ratio", "augment / step", ".2f"), ("goal", "goal", ""),
                           ("end_to_end_per_s", "end-to-end views/s", ".0f"), ("step_ms", "end-to-end ms", ".1f"),
                           ("tflops", "TFLOP/s", ".1f"), ("mfu", "MFU %", ".1f"), ("memory_gb", "peak GB", ".1f")])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
