"""Encoders (ResNet trunks), the contrastive projection head and the linear classifier.

Our own compact ResNet, layer for layer the torchvision one (v1.5: the stride sits on the 3x3 conv of a
bottleneck), so parameter counts at width 1.0 with the ImageNet stem equal torchvision's resnet18-152
trunks and ResNet-200 equals torchvision's `ResNet(Bottleneck, [3, 24, 36, 3])`. Two additions:

- `width` multiplies every channel count (rounded, at least 1), so width 0.25 gives 16 base channels and
  a ResNet-18 small enough to train on a laptop CPU.
- `stem`: "imagenet" (7x7/2 conv + 3x3/2 max-pool) or "cifar" (3x3/1 conv, no pool, for small images);
  "auto" picks "cifar" below 64 px.

Initialisation: Kaiming-normal convs (fan_out, ReLU), BN weight 1 / bias 0, and the last BN of every
residual branch zero-initialised so each block starts as the identity (Goyal et al. 2017; torchvision's
`zero_init_residual=True`), which helps large-batch training.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from study.config import MODELS, PROJECTION_HEADS, STEMS, is_integer, is_real

__all__ = [
    "MODELS",
    "PROJECTION_HEADS",
    "STEMS",
    "BasicBlock",
    "Bottleneck",
    "ResNet",
    "ProjectionHead",
    "ContrastiveNetwork",
    "Classifier",
    "build_encoder",
    "embedding",
    "resolve_stem",
    "scaled_channels",
]

SMALL_IMAGE_SIZE = 64  # below this many pixels "auto" picks the CIFAR stem


class BasicBlock(nn.Module):
    """Two 3x3 convs with an identity (or 1x1 projection) shortcut; ResNet-18/34."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x), inplace=True)


class Bottleneck(nn.Module):
    """1x1 reduce, 3x3 (carrying the stride), 1x1 expand by 4; ResNet-50 and deeper."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.shortcut = _shortcut(in_channels, out_channels, stride)

    @property
    def last_bn(self) -> nn.BatchNorm2d:
        return self.bn3

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)), inplace=True)
        out = F.relu(self.bn2(self.conv2(out)), inplace=True)
        out = self.bn3(self.conv3(out))
        return F.relu(out + self.shortcut(x), inplace=True)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    if stride == 1 and in_channels == out_channels:
        return nn.Identity()
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


@dataclass(frozen=True)
class _Architecture:
    block: type[BasicBlock] | type[Bottleneck]
    blocks_per_stage: tuple[int, int, int, int]


_ARCHITECTURES: dict[str, _Architecture] = {
    "resnet18": _Architecture(BasicBlock, (2, 2, 2, 2)),
    "resnet34": _Architecture(BasicBlock, (3, 4, 6, 3)),
    "resnet50": _Architecture(Bottleneck, (3, 4, 6, 3)),
    "resnet101": _Architecture(Bottleneck, (3, 4, 23, 3)),
    "resnet152": _Architecture(Bottleneck, (3, 8, 36, 3)),
    "resnet200": _Architecture(Bottleneck, (3, 24, 36, 3)),
}
assert tuple(_ARCHITECTURES) == MODELS, "study.config.MODELS and study.models disagree"


class ResNet(nn.Module):
    """A ResNet trunk: stem, four stages, global average pool. forward(x [B,3,H,W]) -> [B, output_dim]."""

    def __init__(
        self,
        block: type[BasicBlock] | type[Bottleneck],
        blocks_per_stage: tuple[int, ...],
        *,
        width: float = 1.0,
        stem: str = "imagenet",
        zero_init_residual: bool = True,
    ) -> None:
        super().__init__()
        if stem not in ("cifar", "imagenet"):
            raise ValueError(f"invalid stem={stem!r}; allowed: cifar | imagenet")
        planes = [scaled_channels(64 * 2**i, width) for i in range(4)]
        stem_channels = planes[0]
        if stem == "cifar":
            self.stem = nn.Sequential(
                nn.Conv2d(3, stem_channels, 3, stride=1, padding=1, bias=False),
                nn.BatchNorm2d(stem_channels),
                nn.ReLU(inplace=True),
            )
        else:
            self.stem = nn.Sequential(
                nn.Conv2d(3, stem_channels, 7, stride=2, padding=3, bias=False),
                nn.BatchNorm2d(stem_channels),
                nn.ReLU(inplace=True),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
        stages = []
        in_channels = stem_channels
        for index, (stage_planes, num_blocks) in enumerate(zip(planes, blocks_per_stage, strict=True)):
            stride = 1 if index == 0 else 2
            blocks = []
            for block_index in range(num_blocks):
                blocks.append(block(in_channels, stage_planes, stride if block_index == 0 else 1))
                in_channels = stage_planes * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.output_dim: int = in_channels
        self.stem_name = stem
        self.width = width
        self._init_weights(zero_init_residual)

    def _init_weights(self, zero_init_residual: bool) -> None:
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
        if zero_init_residual:
            # each residual branch starts as zero, so every block starts as the identity
            for module in self.modules():
                if isinstance(module, (BasicBlock, Bottleneck)):
                    nn.init.zeros_(module.last_bn.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stages(self.stem(x))
        return torch.flatten(self.pool(x), 1)


def scaled_channels(channels: int, width: float) -> int:
    """`channels * width`, rounded to the nearest integer and at least 1."""
    return max(1, int(round(channels * width)))


def resolve_stem(stem: str, image_size: int) -> str:
    """The concrete stem ("cifar" or "imagenet") for a stem name that may be "auto"."""
    if stem not in STEMS:
        raise ValueError(f"invalid stem={stem!r}; allowed: {' | '.join(STEMS)}")
    if stem != "auto":
        return stem
    return "cifar" if image_size < SMALL_IMAGE_SIZE else "imagenet"


def build_encoder(name: str, *, width: float = 1.0, stem: str = "auto", image_size: int = 224) -> ResNet:
    """A ResNet trunk by name (one of `MODELS`) returning global-average-pooled features [B, output_dim].

    `width` multiplies every channel count; `stem="auto"` picks the CIFAR stem for images under 64 px.
    """
    if name not in _ARCHITECTURES:
        raise ValueError(f"invalid model={name!r}; allowed: {' | '.join(MODELS)}")
    if not (is_real(width) and math.isfinite(width) and width > 0):
        raise ValueError(f"invalid width={width!r}; allowed: a finite number > 0")
    if not (is_integer(image_size) and image_size >= 1):
        raise ValueError(f"invalid image_size={image_size!r}; allowed: an integer >= 1")
    architecture = _ARCHITECTURES[name]
    return ResNet(
        architecture.block,
        architecture.blocks_per_stage,
        width=float(width),
        stem=resolve_stem(stem, int(image_size)),
    )


class ProjectionHead(nn.Module):
    """Projection to out_dim; the output is L2-normalised, in float32 even under autocast.

    kind "mlp": Linear(in_dim, in_dim) - ReLU - Linear(in_dim, out_dim), the authors' CIFAR head
    (supcon/scripts/supcon_cifar10_resnet50.sh: projection_head_layers="2048,128"). kind "linear": one
    Linear(in_dim, out_dim) without a bias, the authors' ImageNet SupCon head (supcon/scripts/configs.sh
    SUPCON_FLAGS: projection_head_layers=128); supcon/projection_head.py gives its last dense layer no bias
    (`use_bias=not is_last_layer and not use_batch_norm`), and a one-layer head's only layer is its last."""

    def __init__(self, in_dim: int, out_dim: int = 128, kind: str = "mlp") -> None:
        super().__init__()
        for label, value in (("in_dim", in_dim), ("out_dim", out_dim)):
            if not (is_integer(value) and value >= 1):
                raise ValueError(f"invalid {label}={value!r}; allowed: an integer >= 1")
        if kind not in PROJECTION_HEADS:
            raise ValueError(f"invalid kind={kind!r}; allowed: {' | '.join(PROJECTION_HEADS)}")
        in_dim, out_dim = int(in_dim), int(out_dim)
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.kind = kind
        # one attribute per kind, so an "mlp" head keeps the state-dict keys (mlp.0.*, mlp.2.*) of old checkpoints
        if kind == "mlp":
            self.mlp = nn.Sequential(nn.Linear(in_dim, in_dim), nn.ReLU(inplace=True), nn.Linear(in_dim, out_dim))
        else:
            self.linear = nn.Linear(in_dim, out_dim, bias=False)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        projected = self.mlp(features) if self.kind == "mlp" else self.linear(features)
        # normalise in float32: under bf16 the unit norm, and the loss's logits z.z/t, would be coarse
        return F.normalize(projected.float(), dim=1)


def embedding(encoder: nn.Module, x: torch.Tensor, normalize: bool = False) -> torch.Tensor:
    """The encoder's pooled output, L2-normalised (in float32) when `normalize`: what both heads take as input.

    As the authors' ContrastiveModel.call (supcon/models.py): `normalized_embedding =
    tf.nn.l2_normalize(embedding, axis=1)` on the encoder's output, fed to the projection head and to the
    classification head when their normalize_*_input flags are set (both = the normalize_embedding flag,
    supcon/hparams_flags.py). eps=1e-6 on the norm equals tf.nn.l2_normalize's default epsilon=1e-12 on the
    squared norm."""
    features = encoder(x)
    return F.normalize(features.float(), dim=1, eps=1e-6) if normalize else features


def _output_dim(encoder: nn.Module) -> int:
    # A plain int attribute of ResNet (also after SyncBatchNorm conversion); nn.Module's __getattr__ would
    # type it as Tensor | Module.
    return cast(int, encoder.output_dim)


def _check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"invalid {name}={value!r}; allowed: true | false")
    return value


class ContrastiveNetwork(nn.Module):
    """Encoder + projection head for the contrastive stage. forward(x) -> z [B, projection_dim], unit norm.

    `normalize_embedding` L2-normalises the encoder's output before the head (see `embedding`)."""

    def __init__(self, encoder: nn.Module, projection_dim: int = 128, *, projection_head: str = "mlp",
                 normalize_embedding: bool = False) -> None:
        super().__init__()
        self.encoder = encoder
        self.head = ProjectionHead(_output_dim(encoder), projection_dim, kind=projection_head)
        self.normalize_embedding = _check_flag("normalize_embedding", normalize_embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(embedding(self.encoder, x, self.normalize_embedding))


class Classifier(nn.Module):
    """Encoder + linear layer. forward(x) -> logits [B, num_classes].

    `normalize_embedding` L2-normalises the encoder's output before the linear layer (see `embedding`);
    `features(x)` is that input, for training the linear layer alone on a frozen encoder."""

    def __init__(self, encoder: nn.Module, num_classes: int, *, normalize_embedding: bool = False) -> None:
        super().__init__()
        if not (is_integer(num_classes) and num_classes >= 1):
            raise ValueError(f"invalid num_classes={num_classes!r}; allowed: an integer >= 1")
        self.encoder = encoder
        self.fc = nn.Linear(_output_dim(encoder), int(num_classes))
        self.normalize_embedding = _check_flag("normalize_embedding", normalize_embedding)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """What the linear layer sees: the encoder's output, normalised when `normalize_embedding`."""
        return embedding(self.encoder, x, self.normalize_embedding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.features(x))
