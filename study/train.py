"""The training loop: SupCon / SimCLR (contrastive stage, then a linear classifier on the frozen encoder) and
cross-entropy (end to end, optionally followed by a linear stage on the frozen encoder).

The loop is written once and knows nothing of how it is launched. It is handed a `RunContext` that says
where to report metrics and checkpoints and how to wrap the model for data parallelism, so the same code
runs under Ray Train's `TorchTrainer` (`study.launch`), directly inside a Ray Tune trial (`study.sweep`) or
in a plain process (`LocalContext`, used by tests and benchmarks).

Every epoch reports: stage, epoch, loss, lr, val top-1/top-5, images/s, epoch seconds, and
augment_fraction: the part of the epoch spent in training augmentation (with `data_pipeline` "device",
the batched augmentation on the training device; with "cpu", waiting for the loader, which decodes and
augments each image); memory_fraction: the part of the epoch spent in Sec. 4.1's memory (the momentum
network's keys, the enqueue and the momentum update; 0 without a memory); peak_memory_mb: the peak memory
of the run so far, in MiB: `torch.cuda.max_memory_allocated` of the training device on CUDA (tensors only),
else the process's peak resident set size (`resource.getrusage(RUSAGE_SELF).ru_maxrss`, KiB on Linux; it
includes the dataset and the interpreter). The contrastive stage has no classifier yet, so its val
top-1/top-5 come from a k-nearest-neighbour classifier on the encoder's representations (a standard
monitor; selection and final numbers use the linear classifier). The test split is touched once, at the very end.
"""

from __future__ import annotations

import math
import os
import random
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Subset

from study.augment import build_eval_transform, build_train_transform, default_autoaugment_policy
from study.batched_augment import build_batch_augment, resolve_data_pipeline
from study.checkpoint import STATE_FILE, CheckpointError, atomic_save, safe_load, save_classifier, unwrap
from study.config import Config
from study.data import (
    DatasetSplits,
    DecodedDataset,
    MultiViewDataset,
    SizedDataset,
    TransformedDataset,
    collate_decoded,
    load_dataset,
)
from study.losses import supcon_loss, supcon_loss_with_memory
from study.memory import KeyMemory
from study.models import Classifier, ContrastiveNetwork, build_encoder
from study.optim import LINEAR_RMSPROP_EPSILON, build_optimizer, build_scheduler
from study.tables import MODEL_FILE

KNN_NEIGHBOURS = 20
KNN_MAX_TRAIN = 10_000  # bank size cap for the kNN monitor: bounded cost on ImageNet-sized data


class RunContext(Protocol):
    """What the training loop needs from whoever launched it."""

    world_rank: int
    world_size: int
    device: torch.device

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        """Record one epoch's metrics; `checkpoint_dir` (rank 0 only) holds the files to persist."""

    def latest_checkpoint(self) -> Path | None:
        """Folder of the checkpoint to resume from, or None for a fresh run."""

    def prepare_model(self, model: nn.Module) -> nn.Module:
        """Move to the device and wrap for data parallelism when there is more than one worker."""


@dataclass
class LocalContext:
    """A RunContext for a plain process: checkpoints under `run_dir/checkpoints`, the last `keep` kept."""

    run_dir: Path
    keep: int = 2
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    print_progress: bool = False
    history: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.run_dir = Path(self.run_dir)
        self.world_rank = dist.get_rank() if dist.is_initialized() else 0
        self.world_size = dist.get_world_size() if dist.is_initialized() else 1

    def report(self, metrics: dict[str, Any], checkpoint_dir: str | None = None) -> None:
        self.history.append(dict(metrics))
        if self.print_progress and self.world_rank == 0:
            print(format_progress(metrics), flush=True)
        if checkpoint_dir is None or self.world_rank != 0:
            return
        folder = self.run_dir / "checkpoints"
        folder.mkdir(parents=True, exist_ok=True)
        existing = [int(path.name.split("_")[1]) for path in folder.glob("checkpoint_*")]
        target = folder / f"checkpoint_{max(existing, default=0) + 1:06d}"
        staging = folder / f".{target.name}.tmp"
        shutil.rmtree(staging, ignore_errors=True)
        shutil.copytree(checkpoint_dir, staging)
        os.replace(staging, target)  # a folder appears complete or not at all
        for old in sorted(folder.glob("checkpoint_*"))[: -self.keep]:
            shutil.rmtree(old, ignore_errors=True)

    def latest_checkpoint(self) -> Path | None:
        found = sorted((self.run_dir / "checkpoints").glob("checkpoint_*"))
        return found[-1] if found else None

    def prepare_model(self, model: nn.Module) -> nn.Module:
        model = model.to(self.device)
        if self.world_size > 1 and any(p.requires_grad for p in model.parameters()):
            device_ids = [self.device.index] if self.device.type == "cuda" else None
            model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        return model


def format_progress(metrics: dict[str, Any]) -> str:
    """One line per epoch for the console."""
    if metrics.get("status") == "diverged":
        return f"[{metrics.get('stage')}] epoch {metrics.get('epoch')}: DIVERGED (non-finite loss)"
    parts = [f"[{metrics['stage']}] epoch {metrics['epoch']}/{metrics['epochs']}", f"loss {metrics['loss']:.4f}"]
    parts.append(f"lr {metrics['lr']:.4g}")
    if not math.isnan(metrics.get("val_top1", math.nan)):
        parts.append(f"val top-1 {metrics['val_top1']:.2f}%")
    parts.append(f"{metrics['images_per_second']:.0f} img/s")
    parts.append(f"{metrics['epoch_seconds']:.1f}s")
    return " | ".join(parts)


# ---------------------------------------------------------------------------------------------- helpers
def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stages_of(config: Config) -> list[str]:
    """The ordered training stages of a run."""
    first = "contrastive" if config.is_contrastive else "ce"
    return [first, "linear"] if config.has_linear_stage else [first]


def _loader(dataset: Dataset, batch_size: int, *, shuffle: bool, drop_last: bool, seed: int, epoch: int,
            context: RunContext, config: Config, collate_fn: Callable | None = None) -> DataLoader:
    """A loader for this worker's shard. Shuffling is seeded by (seed, epoch) so a resumed run sees the
    same order as an uninterrupted one."""
    sampler: DistributedSampler | None
    if context.world_size > 1:
        sampler = DistributedSampler(dataset, num_replicas=context.world_size, rank=context.world_rank,
                                     shuffle=shuffle, seed=seed, drop_last=drop_last)
        sampler.set_epoch(epoch)
        generator = None
    else:
        sampler = None
        generator = torch.Generator().manual_seed(seed * 1000 + epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        drop_last=drop_last,
        num_workers=config.loader_workers,
        pin_memory=context.device.type == "cuda",
        persistent_workers=False,
        collate_fn=collate_fn,
    )


def _shard(dataset: SizedDataset, context: RunContext) -> Dataset:
    """Every world_size-th sample, for evaluation split across workers without padding."""
    if context.world_size == 1:
        return dataset
    return Subset(dataset, range(context.world_rank, len(dataset), context.world_size))


def _all_reduce_sum(values: list[float], context: RunContext) -> list[float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    if context.world_size > 1:
        dist.all_reduce(tensor)
    return tensor.tolist()


def _autocast(config: Config, device: torch.device):
    enabled = config.amp and device.type == "cuda"
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=enabled)


def _topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> float:
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return (top == labels[:, None]).any(dim=1).sum().item()


@torch.no_grad()
def _embed(
    encoder: nn.Module, dataset: Dataset, config: Config, context: RunContext
) -> tuple[torch.Tensor, torch.Tensor]:
    loader = DataLoader(dataset, batch_size=256, shuffle=False, num_workers=config.loader_workers)
    features, labels = [], []
    for images, targets in loader:
        images = images.to(context.device, non_blocking=True)
        if context.device.type == "cuda" and config.amp:
            images = images.contiguous(memory_format=torch.channels_last)
        with _autocast(config, context.device):
            features.append(F.normalize(encoder(images).float(), dim=1))
        labels.append(targets.to(context.device))
    return torch.cat(features), torch.cat(labels)


@torch.no_grad()
def knn_accuracy(encoder: nn.Module, bank: Dataset, queries: SizedDataset, num_classes: int, config: Config,
                 context: RunContext) -> tuple[float, float]:
    """Top-1/top-5 (percent) of a weighted k-NN classifier on cosine similarity of representations."""
    was_training = encoder.training
    encoder.eval()
    bank_features, bank_labels = _embed(encoder, bank, config, context)
    query_features, query_labels = _embed(encoder, _shard(queries, context), config, context)
    correct1 = correct5 = 0.0
    for start in range(0, len(query_features), 1024):
        similarity = query_features[start:start + 1024] @ bank_features.T
        weights, indices = similarity.topk(min(KNN_NEIGHBOURS, len(bank_features)), dim=1)
        votes = torch.zeros(len(similarity), num_classes, device=similarity.device)
        votes.scatter_add_(1, bank_labels[indices], (weights / 0.07).exp())
        targets = query_labels[start:start + 1024]
        correct1 += _topk_correct(votes, targets, 1)
        correct5 += _topk_correct(votes, targets, 5)
    encoder.train(was_training)
    correct1, correct5, count = _all_reduce_sum([correct1, correct5, len(query_features)], context)
    return 100 * correct1 / count, 100 * correct5 / count


@torch.no_grad()
def classifier_accuracy(classifier: nn.Module, dataset: SizedDataset, config: Config,
                        context: RunContext) -> tuple[float, float]:
    """Top-1/top-5 (percent) of a classifier on a dataset of (tensor, label), split across workers."""
    was_training = classifier.training
    classifier.eval()
    loader = DataLoader(_shard(dataset, context), batch_size=256, shuffle=False,
                        num_workers=config.loader_workers)
    correct1 = correct5 = count = 0.0
    for images, labels in loader:
        images, labels = images.to(context.device), labels.to(context.device)
        with _autocast(config, context.device):
            logits = classifier(images).float()
        correct1 += _topk_correct(logits, labels, 1)
        correct5 += _topk_correct(logits, labels, 5)
        count += len(labels)
    classifier.train(was_training)
    correct1, correct5, count = _all_reduce_sum([correct1, correct5, count], context)
    return 100 * correct1 / count, 100 * correct5 / count


def _rng_state() -> dict[str, Any]:
    numpy_state = np.random.get_state()
    assert isinstance(numpy_state, tuple)  # the legacy form, get_state's default: (name, keys, pos, ...)
    return {
        "torch": torch.get_rng_state(),
        "numpy": torch.from_numpy(numpy_state[1].astype(np.int64)),
        "numpy_position": int(numpy_state[2]),
        "python": random.getstate(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", state["numpy"].numpy().astype(np.uint32), state["numpy_position"], 0, 0.0))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_resume_state(context: RunContext) -> dict[str, Any] | None:
    """The training state to resume from, or None for a fresh run.

    The candidates are the checkpoint the launcher hands over and, when it is a local `checkpoint_*` folder,
    the other `checkpoint_*` folders beside it, newest first. A newer one exists when the launcher's record
    lags behind what was written (Tune snapshots its experiment state every ~10 s, so a driver killed in
    between forgets the last checkpoints); an older one is the fallback when the latest is truncated or
    corrupt (launchers keep two). The first readable state wins. Any other choice than the handed-over
    checkpoint, and a fresh start, is printed: a damaged checkpoint never stops a run, nor loops it."""
    handed = context.latest_checkpoint()
    if handed is None:
        return None
    handed = Path(handed)
    for candidate in _checkpoints_beside(handed):
        try:
            state = safe_load(candidate / STATE_FILE)
        except CheckpointError as error:
            print(f"warning: {error}; trying the checkpoint before it", flush=True)
            continue
        if candidate != handed:
            which = "newer" if candidate.name > handed.name else "older"
            print(f"resuming from the {which} checkpoint {candidate} (handed {handed})", flush=True)
        return state
    print(f"warning: no readable checkpoint in {handed.parent}; starting this run from scratch", flush=True)
    return None


def _checkpoints_beside(folder: Path) -> list[Path]:
    """`folder` and its local `checkpoint_*` siblings, newest first (names sort by creation: Ray Train and Tune
    name them by timestamp or zero-padded index, LocalContext by index). A downloaded copy of a remote
    checkpoint has no siblings to consult."""
    if not folder.name.startswith("checkpoint_") or not folder.parent.is_dir():
        return [folder]
    found = {path for path in folder.parent.glob("checkpoint_*") if path.is_dir()} | {folder}
    return sorted(found, key=lambda path: path.name, reverse=True)


# ---------------------------------------------------------------------------------------------- the run
def load_splits(config: Config) -> DatasetSplits:
    """The run's data. The validation split is the same for every seed; the `train_fraction` subset of the
    rest depends on the seed alone (not on the method or the worker), so the SupCon and CE runs of one seed
    train on the same images, and a smaller fraction's images lie inside a larger one's."""
    return load_dataset(config.dataset, root=config.data_root, download=config.download,
                        image_size=config.image_size, val_fraction=config.val_fraction, seed=0,
                        train_fraction=config.train_fraction, train_seed=config.seed)


class _Networks:
    """The modules of a run. The encoder object is shared by the contrastive network and the classifier."""

    def __init__(self, config: Config, splits: DatasetSplits):
        encoder = build_encoder(config.model, width=config.width, stem=config.stem, image_size=splits.image_size)
        self.encoder: nn.Module = encoder  # a ResNet, or its SyncBatchNorm conversion (replace_encoder)
        self.contrastive = ContrastiveNetwork(
            encoder, config.projection_dim, projection_head=config.projection_head,
            normalize_embedding=config.normalize_embedding) if config.is_contrastive else None
        self.classifier = Classifier(encoder, splits.num_classes, normalize_embedding=config.normalize_embedding)

    def state_dict(self) -> dict[str, Any]:
        state = {"classifier": self.classifier.state_dict()}
        if self.contrastive is not None:
            state["contrastive"] = self.contrastive.state_dict()
        return state

    def replace_encoder(self, encoder: nn.Module) -> None:
        """Share a converted (e.g. SyncBatchNorm) encoder between the contrastive network and the classifier."""
        self.encoder = encoder
        if self.contrastive is not None:
            self.contrastive.encoder = encoder
        self.classifier.encoder = encoder

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if self.contrastive is not None:
            self.contrastive.load_state_dict(state["contrastive"])
        self.classifier.load_state_dict(state["classifier"])


def train(config: Config, context: RunContext, *, on_step: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Train one run to the end (or until it diverges) and return its final metrics.

    `on_step` is called with the global step index after every optimizer step (tests use it to inject
    faults). Returns a dict with `status` ("completed" or "diverged"), final val/test top-1/top-5 and, on
    rank 0, `checkpoint` (path of the exported `model.pt` inside the last reported checkpoint folder)."""
    seed_everything(config.seed + context.world_rank)
    splits = load_splits(config)
    networks = _Networks(config, splits)
    stages = stages_of(config)
    resume = load_resume_state(context)
    first_stage, first_epoch = 0, 0
    if resume is not None:
        networks.load_state_dict(resume["networks"])
        first_stage, first_epoch = resume["stage_index"], resume["epoch"]
        if context.world_rank == 0:
            where = f"stage {stages[first_stage]!r}, epoch {first_epoch + 1}" if first_stage < len(stages) \
                else "the end (training finished; evaluating)"
            print(f"resuming at {where}", flush=True)
    if config.sync_batchnorm and context.world_size > 1:
        networks.replace_encoder(nn.SyncBatchNorm.convert_sync_batchnorm(networks.encoder))
    if context.device.type == "cuda" and config.amp:
        networks.classifier.to(memory_format=torch.channels_last)
        if networks.contrastive is not None:
            networks.contrastive.to(memory_format=torch.channels_last)

    eval_transform = build_eval_transform(image_size=splits.image_size, mean=splits.mean, std=splits.std)
    val_set = TransformedDataset(splits.val, eval_transform)
    final: dict[str, Any] = {"status": "completed"}
    if resume is not None:
        final["resumed_from"] = f"{stages[first_stage]}:{first_epoch + 1}" if first_stage < len(stages) \
            else "finished"
    for stage_index in range(first_stage, len(stages)):
        start_epoch = first_epoch if stage_index == first_stage else 0
        stage_state = resume if (resume is not None and stage_index == first_stage) else None
        outcome = _run_stage(stages[stage_index], stage_index, start_epoch, stage_state, config, splits, networks,
                             val_set, context, on_step)
        final.update(outcome)
        if outcome["status"] == "diverged":
            return final

    test_set = TransformedDataset(splits.test, eval_transform)
    networks.classifier.to(context.device)
    if "val_top1" not in final:  # resumed after training finished: the selection metric is measured again
        final["val_top1"], final["val_top5"] = classifier_accuracy(networks.classifier, val_set, config, context)
    test_top1, test_top5 = classifier_accuracy(networks.classifier, test_set, config, context)
    # Counted here, not from the reported history: a Tune driver killed between its experiment snapshots
    # loses the log lines of the epochs after the last snapshot, never the training they record.
    final.update(test_top1=test_top1, test_top5=test_top5,
                 epochs_run=sum(config.linear_epochs if stage == "linear" else config.epochs for stage in stages))
    metrics = {**final, "stage": "final", "epoch": 0, "done": True}
    with tempfile.TemporaryDirectory() as folder:
        checkpoint_dir = None
        if context.world_rank == 0:
            save_classifier(Path(folder) / MODEL_FILE, networks.classifier, {
                "config": config.to_dict(), "num_classes": splits.num_classes, "image_size": splits.image_size,
                "mean": list(splits.mean), "std": list(splits.std), "test_top1": test_top1,
                "test_top5": test_top5, "val_top1": final.get("val_top1", math.nan),
            })
            atomic_save({"stage_index": len(stages), "epoch": 0, "networks": networks.state_dict(),
                         "done": True}, Path(folder) / STATE_FILE)
            checkpoint_dir = folder
        context.report(metrics, checkpoint_dir)
    if context.world_rank == 0:
        latest = context.latest_checkpoint()
        final["checkpoint"] = str(Path(latest) / MODEL_FILE) if latest is not None else ""
    return final


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # the time of the work, not of its launch


def _peak_memory_mb(device: torch.device) -> float:
    """The run's peak memory so far in MiB: CUDA tensors on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    import resource  # POSIX only; ru_maxrss is in KiB on Linux, in bytes on macOS

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 2**10


def _run_stage(stage: str, stage_index: int, start_epoch: int, resume: dict[str, Any] | None, config: Config,
               splits: DatasetSplits, networks: _Networks, val_set: TransformedDataset, context: RunContext,
               on_step: Callable[[int], None] | None) -> dict[str, Any]:
    """Train one stage from `start_epoch`; report and checkpoint every epoch."""
    linear = stage == "linear"
    epochs = config.linear_epochs if linear else config.epochs
    global_batch = config.linear_batch_size if linear else config.batch_size
    local_batch = global_batch // context.world_size
    policy = config.linear_augmentation if linear else config.augmentation
    augment_args: dict[str, Any] = dict(image_size=splits.image_size, mean=splits.mean, std=splits.std,
                        autoaugment_policy=default_autoaugment_policy(splits.image_size),
                        randaugment_n=config.randaugment_n, randaugment_m=config.randaugment_m)
    views = config.n_views if stage == "contrastive" else 1
    augment, collate = None, None
    if resolve_data_pipeline(config.data_pipeline, context.device) == "device":
        # The loader only decodes; each batch is augmented on the training device (study/batched_augment.py).
        augment = build_batch_augment(policy, device=context.device, **augment_args)
        train_set: SizedDataset = DecodedDataset(splits.train)
        collate = collate_decoded
    elif stage == "contrastive":
        train_set = MultiViewDataset(splits.train, build_train_transform(policy, **augment_args), views)
    else:
        train_set = TransformedDataset(splits.train, build_train_transform(policy, **augment_args))

    # What is trained in this stage, and how the loss is computed.
    if linear:
        networks.classifier.fc.reset_parameters()  # ce_two_stage retrains from scratch, as in the paper
        networks.encoder.requires_grad_(False)
        networks.encoder.to(context.device).eval()
        trained = context.prepare_model(networks.classifier.fc)
        optimizer = build_optimizer(config.linear_optimizer, trained,
                                    lr=config.scaled_lr(config.linear_lr, global_batch),
                                    momentum=config.linear_momentum, weight_decay=config.linear_weight_decay,
                                    rmsprop_epsilon=LINEAR_RMSPROP_EPSILON)
        schedule_name, warmup = config.linear_schedule, 0
    else:
        network = networks.contrastive if stage == "contrastive" else networks.classifier
        assert network is not None  # a contrastive stage runs only for the methods that build that network
        trained = context.prepare_model(network)
        optimizer = build_optimizer(config.optimizer, trained, lr=config.scaled_lr(config.lr, global_batch),
                                    momentum=config.momentum, nesterov=config.nesterov,
                                    weight_decay=config.weight_decay)
        schedule_name, warmup = config.schedule, config.warmup_epochs

    drop_last = len(train_set) >= 2 * global_batch  # contrastive batches need >= 2 samples
    steps_per_epoch = max(1, len(_loader(train_set, local_batch, shuffle=True, drop_last=drop_last, seed=config.seed,
                                         epoch=0, context=context, config=config, collate_fn=collate)))
    scheduler = build_scheduler(schedule_name, optimizer, epochs=epochs, steps_per_epoch=steps_per_epoch,
                                warmup_epochs=warmup, decay_rate=config.lr_decay_rate,
                                step_epochs=config.lr_step_epochs)
    if resume is not None and "optimizer" in resume:
        optimizer.load_state_dict(resume["optimizer"])
        scheduler.load_state_dict(resume["scheduler"])
    if resume is not None and "rng" in resume:
        _set_rng_state(resume["rng"])

    # Sec. 4.1's memory (MoCo-style, study/memory.py): copied after DDP has broadcast rank 0's weights, so
    # every worker starts from the same momentum network. A checkpoint without one starts a fresh memory.
    memory = None
    if stage == "contrastive" and config.memory_size > 0:
        memory = KeyMemory(unwrap(trained), config.memory_size, config.projection_dim, config.memory_momentum)
        if resume is not None and "memory" in resume:
            memory.load_state_dict(resume["memory"])

    def step_loss(images: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The loss, and the momentum network's keys of this batch when there is a memory."""
        if stage == "contrastive":
            batch, views = images.shape[:2]
            flat = images.flatten(0, 1)
            with _autocast(config, context.device):
                features = trained(flat).view(batch, views, -1)
            if memory is not None:
                _synchronize(context.device)  # on a GPU, time the memory's work only
                memory_started = time.perf_counter()
                with _autocast(config, context.device):
                    keys = memory.embed(flat).view(batch, views, -1)
                _synchronize(context.device)
                memory_seconds[0] += time.perf_counter() - memory_started
                return supcon_loss_with_memory(
                    features.float(), keys, labels if config.method == "supcon" else None, *memory.queue(),
                    temperature=config.temperature, variant=config.loss_variant,
                    contrast_mode=config.contrast_mode, scale_by_temperature=config.scale_by_temperature), keys
            return supcon_loss(features.float(), labels if config.method == "supcon" else None,
                               temperature=config.temperature, variant=config.loss_variant,
                               contrast_mode=config.contrast_mode, scale_by_temperature=config.scale_by_temperature,
                               max_positives=config.max_positives, chunk_size=config.loss_chunk_size), None
        if linear:
            with torch.no_grad(), _autocast(config, context.device):
                features = networks.classifier.features(images)  # normalised when normalize_embedding
            with _autocast(config, context.device):
                logits = trained(features.float())
        else:
            with _autocast(config, context.device):
                logits = trained(images)
        return F.cross_entropy(logits.float(), labels), None

    metrics: dict[str, Any] = {}
    for epoch in range(start_epoch, epochs):
        if linear:
            networks.encoder.eval()  # frozen: its batch-norm statistics must not move either
        else:
            trained.train()
        loader = _loader(train_set, local_batch, shuffle=True, drop_last=drop_last, seed=config.seed, epoch=epoch,
                         context=context, config=config, collate_fn=collate)
        started = time.perf_counter()
        loss_sum = torch.zeros((), dtype=torch.float64, device=context.device)
        seen = 0
        augment_seconds = 0.0
        memory_seconds = [0.0]  # key embedding (in step_loss), enqueue and momentum update
        batches = iter(loader)
        for step in range(len(loader)):
            # Augmentation: in the loader (cpu pipeline: the wait for the batch) or on the device, timed.
            augment_started = time.perf_counter()
            images, labels = next(batches)
            if augment is not None:
                images = augment(images) if stage != "contrastive" else augment.views(images, views)
                if context.device.type == "cuda":
                    torch.cuda.synchronize(context.device)  # the time of the augmentation, not of its launch
            augment_seconds += time.perf_counter() - augment_started
            images = images.to(context.device, non_blocking=True)
            labels = labels.to(context.device, non_blocking=True)
            if context.device.type == "cuda" and config.amp and images.dim() == 4:
                images = images.contiguous(memory_format=torch.channels_last)
            loss, keys = step_loss(images, labels)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
            if memory is not None:  # MoCo's order: this batch's keys join the queue, then the momentum update
                _synchronize(context.device)
                memory_started = time.perf_counter()
                assert keys is not None  # step_loss embeds the keys whenever there is a memory
                memory.enqueue(keys, labels)
                memory.update(unwrap(trained))
                _synchronize(context.device)
                memory_seconds[0] += time.perf_counter() - memory_started
            loss_sum += loss.detach().double() * len(labels)
            seen += len(labels)
            if on_step is not None:
                on_step(epoch * steps_per_epoch + step)
        loss_total, seen_total = _all_reduce_sum([loss_sum.item(), seen], context)
        epoch_loss = loss_total / max(seen_total, 1)
        seconds = time.perf_counter() - started
        if not math.isfinite(epoch_loss):
            diverged = {"status": "diverged", "stage": stage, "epoch": epoch + 1, "epochs": epochs,
                        "loss": epoch_loss, "diverged_epoch": epoch + 1}
            context.report(diverged)
            return diverged

        if stage == "contrastive":
            bank = Subset(splits.train, range(min(len(splits.train), KNN_MAX_TRAIN)))
            eval_transform = val_set.transform
            encoder = unwrap(trained).encoder
            assert isinstance(encoder, nn.Module)  # the contrastive network's encoder (an attribute, typed loosely)
            val_top1, val_top5 = knn_accuracy(encoder, TransformedDataset(bank, eval_transform),
                                              val_set, splits.num_classes, config, context)
        else:
            networks.classifier.to(context.device)
            val_top1, val_top5 = classifier_accuracy(networks.classifier, val_set, config, context)
        metrics = {
            "status": "running", "stage": stage, "epoch": epoch + 1, "epochs": epochs, "loss": epoch_loss,
            "lr": optimizer.param_groups[0]["lr"], "val_top1": val_top1, "val_top5": val_top5,
            "images_per_second": seen_total * views / seconds, "epoch_seconds": seconds,
            "augment_fraction": augment_seconds / seconds, "memory_fraction": memory_seconds[0] / seconds,
            "peak_memory_mb": _peak_memory_mb(context.device),
        }
        last = epoch + 1 == epochs
        with tempfile.TemporaryDirectory() as folder:
            checkpoint_dir = None
            if context.world_rank == 0 and ((epoch + 1) % config.checkpoint_every == 0 or last):
                next_stage, next_epoch = (stage_index + 1, 0) if last else (stage_index, epoch + 1)
                state = {"stage_index": next_stage, "epoch": next_epoch, "networks": networks.state_dict(),
                         "rng": _rng_state()}
                if not last:  # optimizer, schedule and memory belong to this stage only
                    state.update(optimizer=optimizer.state_dict(), scheduler=scheduler.state_dict())
                    if memory is not None:
                        state["memory"] = memory.state_dict()
                atomic_save(state, Path(folder) / STATE_FILE)
                checkpoint_dir = folder
            context.report(metrics, checkpoint_dir)
    networks.encoder.requires_grad_(True)
    return {"status": "completed", "val_top1": metrics.get("val_top1", math.nan),
            "val_top5": metrics.get("val_top5", math.nan)}

