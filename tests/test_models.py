"""Encoders, projection head and classifier: shapes, parameter counts against torchvision, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models.resnet import Bottleneck as TorchvisionBottleneck
from torchvision.models.resnet import ResNet as TorchvisionResNet

from study import config
from study.models import (
    MODELS,
    BasicBlock,
    Bottleneck,
    Classifier,
    ContrastiveNetwork,
    ProjectionHead,
    build_encoder,
    resolve_stem,
    scaled_channels,
)

TINY = 0.0625  # 4 base channels
EXPANSION = {"resnet18": 1, "resnet34": 1, "resnet50": 4, "resnet101": 4, "resnet152": 4, "resnet200": 4}


def count_parameters(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def test_model_names_match_config():
    assert MODELS == config.MODELS
    assert set(EXPANSION) == set(MODELS)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
@pytest.mark.parametrize("size", [16, 32])
def test_every_architecture_gives_pooled_features(name, stem, size):
    torch.manual_seed(0)
    encoder = build_encoder(name, width=TINY, stem=stem, image_size=size)
    assert encoder.output_dim == scaled_channels(512, TINY) * EXPANSION[name]
    out = encoder(torch.randn(2, 3, size, size))
    assert out.shape == (2, encoder.output_dim)
    assert torch.isfinite(out).all()


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_large_images(name, stem):
    encoder = build_encoder(name, width=TINY, stem=stem, image_size=224).eval()
    with torch.no_grad():
        out = encoder(torch.randn(1, 3, 224, 224))
    assert out.shape == (1, encoder.output_dim)


# Built on the meta device: shapes only, no memory and no initialisation, so counting is instant.
@pytest.mark.parametrize("name", MODELS)
def test_parameter_counts_match_torchvision(name):
    with torch.device("meta"):
        ours = build_encoder(name, width=1.0, stem="imagenet")
        if name == "resnet200":
            reference = TorchvisionResNet(TorchvisionBottleneck, [3, 24, 36, 3])
        else:
            reference = getattr(torchvision.models, name)(weights=None)
    assert count_parameters(ours) == count_parameters(reference) - count_parameters(reference.fc)
    assert ours.output_dim == reference.fc.in_features


def test_width_scales_channels():
    assert build_encoder("resnet18", width=0.25, stem="cifar").stem[0].out_channels == 16
    assert build_encoder("resnet18", width=0.25).output_dim == 128
    assert build_encoder("resnet50", width=0.5).output_dim == 1024
    # very small widths keep at least one channel
    assert build_encoder("resnet18", width=0.001, stem="cifar", image_size=8).output_dim == 1
    # wider is bigger
    small = count_parameters(build_encoder("resnet18", width=0.125))
    large = count_parameters(build_encoder("resnet18", width=0.25))
    assert large > 3 * small


def test_auto_stem_follows_image_size():
    assert resolve_stem("auto", 32) == "cifar"
    assert resolve_stem("auto", 63) == "cifar"
    assert resolve_stem("auto", 64) == "imagenet"
    assert resolve_stem("imagenet", 16) == "imagenet"
    small = build_encoder("resnet18", width=TINY, image_size=32)
    large = build_encoder("resnet18", width=TINY, image_size=224)
    assert small.stem[0].kernel_size == (3, 3) and small.stem[0].stride == (1, 1)
    assert not any(isinstance(m, nn.MaxPool2d) for m in small.modules())
    assert large.stem[0].kernel_size == (7, 7) and large.stem[0].stride == (2, 2)
    assert any(isinstance(m, nn.MaxPool2d) for m in large.modules())


def test_residual_branches_start_at_zero_and_convs_are_kaiming():
    torch.manual_seed(0)
    encoder = build_encoder("resnet50", width=0.25, stem="cifar")
    blocks = [m for m in encoder.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    assert len(blocks) == 16
    for block in blocks:
        assert torch.count_nonzero(block.last_bn.weight) == 0
        assert torch.all(block.bn1.weight == 1)
    conv = encoder.stages[2][0].conv2  # 3x3, 32 -> 32 channels at width 0.25
    expected_std = math.sqrt(2.0 / (conv.out_channels * 9))  # kaiming, fan_out, ReLU
    assert conv.weight.std().item() == pytest.approx(expected_std, rel=0.1)


def test_channels_last_gives_the_same_features():
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", width=0.125, stem="cifar").eval()
    for block in encoder.modules():  # non-trivial residual branches
        if isinstance(block, BasicBlock):
            nn.init.normal_(block.last_bn.weight)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        expected = encoder(x)
        encoder = encoder.to(memory_format=torch.channels_last)
        got = encoder(x.to(memory_format=torch.channels_last))
    torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)


def test_projection_head_is_unit_norm_even_under_autocast():
    torch.manual_seed(0)
    head = ProjectionHead(32, 8)
    features = torch.randn(5, 32) * 10
    z = head(features)
    assert z.shape == (5, 8)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z = head(features)
    assert z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    hidden = head.mlp[0]
    assert hidden.in_features == hidden.out_features == 32


def test_contrastive_network_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    network = ContrastiveNetwork(build_encoder("resnet18", width=TINY, image_size=16), projection_dim=16)
    assert network.head.in_dim == network.encoder.output_dim
    z = network(torch.randn(4, 3, 16, 16))
    assert z.shape == (4, 16)
    torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
    (z[:, 0] * torch.arange(4.0)).sum().backward()
    # DDP needs every parameter in the graph (no find_unused_parameters)
    assert all(p.grad is not None for p in network.parameters())


def test_classifier_logits():
    encoder = build_encoder("resnet34", width=TINY, image_size=16)
    classifier = Classifier(encoder, num_classes=10)
    assert classifier.encoder is encoder
    assert isinstance(classifier.fc, nn.Linear)
    assert classifier.fc.in_features == encoder.output_dim and classifier.fc.out_features == 10
    assert classifier(torch.randn(3, 3, 16, 16)).shape == (3, 10)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"name": "resnet19"}, "model='resnet19'"),
        ({"name": "ResNet18"}, "model='ResNet18'"),
        ({"name": "resnet18", "width": 0}, "width=0"),
        ({"name": "resnet18", "width": -0.5}, "width=-0.5"),
        ({"name": "resnet18", "width": float("nan")}, "width=nan"),
        ({"name": "resnet18", "width": float("inf")}, "width=inf"),
        ({"name": "resnet18", "width": "1"}, "width='1'"),
        ({"name": "resnet18", "stem": "tiny"}, "stem='tiny'"),
        ({"name": "resnet18", "image_size": 0}, "image_size=0"),
    ],
)
def test_bad_encoder_arguments_raise(kwargs, message):
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match="allowed") as error:
        build_encoder(name, **kwargs)
    assert message in str(error.value)
    assert "\n" not in str(error.value)


def test_bad_head_and_classifier_arguments_raise():
    encoder = build_encoder("resnet18", width=TINY, image_size=16)
    with pytest.raises(ValueError, match="num_classes=0"):
        Classifier(encoder, num_classes=0)
    with pytest.raises(ValueError, match="out_dim=0"):
        ContrastiveNetwork(encoder, projection_dim=0)
    with pytest.raises(ValueError, match="in_dim=-1"):
        ProjectionHead(-1)
