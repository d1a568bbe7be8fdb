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


# ---------------------------------------------------------------------------------------------- head options
def test_linear_projection_head_is_one_bias_free_layer():
    torch.manual_seed(0)
    head = ProjectionHead(32, 8, kind="linear")
    assert isinstance(head.linear, nn.Linear) and head.linear.bias is None  # the authors' last dense layer: no bias
    assert not hasattr(head, "mlp")
    assert count_parameters(head) == 32 * 8
    assert set(head.state_dict()) == {"linear.weight"}
    z = head(torch.randn(5, 32) * 10)
    assert z.shape == (5, 8) and z.dtype == torch.float32
    torch.testing.assert_close(z.norm(dim=1), torch.ones(5))
    network = ContrastiveNetwork(build_encoder("resnet18", width=TINY, image_size=16), projection_dim=16,
                                 projection_head="linear")
    assert count_parameters(network.head) == network.encoder.output_dim * 16
    assert network(torch.randn(3, 3, 16, 16)).shape == (3, 16)


def test_default_head_and_classifier_keep_their_state_dict_keys():
    """Old checkpoints (written before projection_head / normalize_embedding) still load strictly."""
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", width=TINY, image_size=16)
    network = ContrastiveNetwork(encoder, projection_dim=16)
    assert network.head.kind == "mlp" and not network.normalize_embedding
    head_keys = {key for key in network.state_dict() if key.startswith("head.")}
    assert head_keys == {"head.mlp.0.weight", "head.mlp.0.bias", "head.mlp.2.weight", "head.mlp.2.bias"}
    classifier = Classifier(encoder, 10)
    assert not classifier.normalize_embedding
    # the flags add no state: a normalising model loads a default one's weights and vice versa
    ContrastiveNetwork(encoder, 16, normalize_embedding=True).load_state_dict(network.state_dict())
    Classifier(encoder, 10, normalize_embedding=True).load_state_dict(classifier.state_dict())


def _capture_inputs(module: nn.Module) -> list[torch.Tensor]:
    seen: list[torch.Tensor] = []
    module.register_forward_hook(lambda _module, inputs, _output: seen.append(inputs[0].detach()))
    return seen


def test_normalize_embedding_feeds_unit_norm_features_to_both_heads():
    torch.manual_seed(0)
    encoder = build_encoder("resnet18", width=TINY, image_size=16).eval()
    x = torch.randn(4, 3, 16, 16)
    pooled = encoder(x).detach()
    assert not torch.allclose(pooled.norm(dim=1), torch.ones(4))  # so normalising is not a no-op
    for kind in ("mlp", "linear"):
        plain = ContrastiveNetwork(encoder, 16, projection_head=kind)
        normalized = ContrastiveNetwork(encoder, 16, projection_head=kind, normalize_embedding=True)
        normalized.load_state_dict(plain.state_dict())
        into_head = _capture_inputs(normalized.head.mlp[0] if kind == "mlp" else normalized.head.linear)
        z = normalized(x)
        torch.testing.assert_close(into_head[0], pooled / pooled.norm(dim=1, keepdim=True))
        torch.testing.assert_close(z.norm(dim=1), torch.ones(4))
        if kind == "mlp":  # the bias and ReLU make the head's output depend on its input's scale
            assert not torch.allclose(z, plain(x), atol=1e-4)
        else:  # a bias-free linear map followed by L2 normalisation is blind to its input's scale
            torch.testing.assert_close(z, plain(x))

    classifier = Classifier(encoder, 10)
    normalizing = Classifier(encoder, 10, normalize_embedding=True)
    normalizing.load_state_dict(classifier.state_dict())
    into_fc = _capture_inputs(normalizing.fc)
    logits = normalizing(x)
    torch.testing.assert_close(into_fc[0].norm(dim=1), torch.ones(4))
    torch.testing.assert_close(normalizing.features(x), into_fc[0])
    torch.testing.assert_close(logits, normalizing.fc(pooled / pooled.norm(dim=1, keepdim=True)))
    assert not torch.allclose(logits, classifier(x))
    torch.testing.assert_close(classifier.features(x), pooled)  # default: the raw pooled output
    # the gradient reaches the encoder through the normalisation (the authors' stop-gradient is a training choice)
    normalizing.train()
    normalizing(x).sum().backward()
    assert all(p.grad is not None for p in normalizing.parameters())


def test_normalized_embedding_is_float32_under_autocast():
    encoder = build_encoder("resnet18", width=TINY, image_size=16)
    classifier = Classifier(encoder, 10, normalize_embedding=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = classifier.features(torch.randn(2, 3, 16, 16))
    assert features.dtype == torch.float32
    torch.testing.assert_close(features.norm(dim=1), torch.ones(2))


def test_bad_head_kind_and_flag_raise():
    encoder = build_encoder("resnet18", width=TINY, image_size=16)
    with pytest.raises(ValueError, match="kind='conv'; allowed: mlp | linear"):
        ProjectionHead(8, 4, kind="conv")
    with pytest.raises(ValueError, match="kind='deep'"):
        ContrastiveNetwork(encoder, 8, projection_head="deep")
    with pytest.raises(ValueError, match="normalize_embedding='yes'"):
        Classifier(encoder, 10, normalize_embedding="yes")
