"""supcon_loss against an independent plain-loop float64 implementation of the paper's Eqs. 2 and 3."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from study import losses
from study.losses import supcon_loss


def loop_loss(features: torch.Tensor, labels: list[int] | None, t: float, variant: str = "out",
              contrast_mode: str = "all", max_positives: int | None = None) -> float:
    """Eqs. 2 and 3 written out anchor by anchor in float64. Views are numbered sample-major
    (view v of sample s is index s*V+v); the cap keeps own views first, then others in index order."""
    z = features.detach().double()
    batch, n_views, _ = z.shape
    labels = list(range(batch)) if labels is None else list(labels)
    items = [(s, v) for s in range(batch) for v in range(n_views)]
    anchors = [(s, v) for (s, v) in items if contrast_mode == "all" or v == 0]
    losses = []
    for s, v in anchors:
        others = [(s2, v2) for (s2, v2) in items if (s2, v2) != (s, v)]
        own = [x for x in others if x[0] == s]
        same = [x for x in others if x[0] != s and labels[x[0]] == labels[s]]
        positives = own + same
        if max_positives is not None:
            dropped = positives[max_positives:]
            positives = positives[:max_positives]
            others = [x for x in others if x not in dropped]
        if not positives:
            continue
        dot = {x: float(z[s, v] @ z[x[0], x[1]]) / t for x in others}
        denominator = sum(math.exp(dot[a]) for a in others)
        if variant == "out":
            losses.append(-sum(math.log(math.exp(dot[p]) / denominator) for p in positives) / len(positives))
        else:
            losses.append(-math.log(sum(math.exp(dot[p]) / denominator for p in positives) / len(positives)))
    return sum(losses) / len(losses) if losses else 0.0


def random_features(batch: int, n_views: int, dim: int = 8, seed: int = 0, dtype=torch.float64) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(batch, n_views, dim, generator=generator, dtype=dtype), dim=-1)


LABEL_PATTERNS = {
    "few_classes": [0, 1, 2, 0, 1, 2, 0, 0],
    "all_distinct": [5, 3, 9, 1, 0, 2, 7, 4],
    "singletons_and_pairs": [4, 4, 7, 1, 1, 1, 9, 2],
    "all_same": [3] * 8,
    "negative_and_large_ids": [-1, 1000, -1, 5, 5, 1000, 0, 5],
}


@pytest.mark.parametrize("pattern", sorted(LABEL_PATTERNS))
@pytest.mark.parametrize("n_views", [2, 3])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_matches_plain_loop(pattern, n_views, variant, contrast_mode):
    labels = LABEL_PATTERNS[pattern]
    features = random_features(len(labels), n_views, seed=n_views)
    got = supcon_loss(features, torch.tensor(labels), temperature=0.5, variant=variant, contrast_mode=contrast_mode)
    assert got.dtype == torch.float64
    assert got.item() == pytest.approx(loop_loss(features, labels, 0.5, variant, contrast_mode), rel=1e-10)


@pytest.mark.parametrize("max_positives", [1, 2, 3, 5, 100])
@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("contrast_mode", ["all", "one"])
def test_positives_cap_matches_plain_loop(max_positives, variant, contrast_mode):
    labels = [0, 1, 0, 0, 1, 2, 0, 0, 1]
    features = random_features(len(labels), 3, seed=max_positives)
    got = supcon_loss(features, torch.tensor(labels), temperature=0.3, variant=variant,
                      contrast_mode=contrast_mode, max_positives=max_positives)
    expected = loop_loss(features, labels, 0.3, variant, contrast_mode, max_positives)
    assert got.item() == pytest.approx(expected, rel=1e-10)


def test_positives_cap_changes_the_loss_only_when_it_binds():
    labels = torch.tensor([0, 0, 0, 0, 1, 1])
    features = random_features(6, 2)
    uncapped = supcon_loss(features, labels)
    assert supcon_loss(features, labels, max_positives=7).item() == pytest.approx(uncapped.item(), rel=1e-12)
    assert supcon_loss(features, labels, max_positives=2).item() != pytest.approx(uncapped.item(), rel=1e-3)


def test_simclr_is_labels_none_and_matches_nt_xent():
    features = random_features(6, 2, seed=3)
    t = 0.2
    simclr = supcon_loss(features, None, temperature=t)
    # NT-Xent written as cross-entropy: each view's target is its sample's other view.
    z = features.reshape(12, -1)
    logits = (z @ z.T / t).fill_diagonal_(float("-inf"))
    targets = torch.arange(12) ^ 1  # sample-major: views 2s and 2s+1 pair up
    assert simclr.item() == pytest.approx(F.cross_entropy(logits, targets).item(), rel=1e-12)
    assert simclr.item() == pytest.approx(supcon_loss(features, torch.arange(6), temperature=t).item(), rel=1e-12)
    # With one positive per anchor, L_in and L_out coincide.
    assert supcon_loss(features, None, temperature=t, variant="in").item() == pytest.approx(simclr.item(), rel=1e-12)


@pytest.mark.parametrize("seed", range(5))
def test_l_in_is_at_most_l_out(seed):
    features = random_features(10, 2, seed=seed)
    labels = torch.randint(0, 3, (10,), generator=torch.Generator().manual_seed(seed))
    assert supcon_loss(features, labels, variant="in") <= supcon_loss(features, labels, variant="out")


def test_anchors_without_positives_are_left_out():
    # One view: samples 2 and 3 have no positive at all.
    labels = [0, 0, 1, 2]
    features = random_features(4, 1).requires_grad_()
    loss = supcon_loss(features, torch.tensor(labels))
    assert loss.item() == pytest.approx(loop_loss(features, labels, 0.1), rel=1e-10)
    loss.backward()
    assert torch.isfinite(features.grad).all()
    assert features.grad[2:].abs().sum() > 0  # they still act as negatives


def test_no_positive_anywhere_gives_zero_not_nan():
    features = random_features(4, 1).requires_grad_()
    loss = supcon_loss(features, torch.tensor([0, 1, 2, 3]))
    loss.backward()
    assert loss.item() == 0.0
    assert torch.equal(features.grad, torch.zeros_like(features))
    assert supcon_loss(random_features(1, 1), None).item() == 0.0


@pytest.mark.parametrize("variant", ["out", "in"])
def test_batch_without_negatives_is_finite(variant):
    features = random_features(5, 2).float().requires_grad_()
    loss = supcon_loss(features, torch.zeros(5, dtype=torch.long), temperature=0.05, variant=variant)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(features.grad).all()
    assert loss.item() == pytest.approx(loop_loss(features, [0] * 5, 0.05, variant), rel=1e-5)


def test_scale_by_temperature_multiplies_by_t():
    features, labels = random_features(6, 2), torch.tensor([0, 1, 0, 1, 2, 2])
    plain = supcon_loss(features, labels, temperature=0.07)
    scaled = supcon_loss(features, labels, temperature=0.07, scale_by_temperature=True)
    assert scaled.item() == pytest.approx(0.07 * plain.item(), rel=1e-12)


def test_low_temperature_stays_finite():
    features = random_features(16, 2).float()
    labels = torch.randint(0, 4, (16,), generator=torch.Generator().manual_seed(0))
    loss = supcon_loss(features, labels, temperature=1e-3)
    assert torch.isfinite(loss)


@pytest.mark.parametrize("variant", ["out", "in"])
@pytest.mark.parametrize("max_positives", [None, 2])
def test_float32_matches_float64_at_low_temperature(variant, max_positives):
    # At t = 0.01 the anchor's own logit (1/t) dwarfs the rest: the row maximum must leave it out.
    features = random_features(16, 2, seed=4)
    labels = torch.randint(0, 3, (16,), generator=torch.Generator().manual_seed(4))
    grads = []
    for dtype in (torch.float64, torch.float32):
        leaf = features.to(dtype).detach().clone().requires_grad_()
        loss = supcon_loss(leaf, labels, temperature=0.01, variant=variant, max_positives=max_positives)
        loss.backward()
        grads.append((loss.detach().double(), leaf.grad.double()))
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-4, atol=1e-4)


def test_backward_twice_with_retained_graph_doubles_the_gradient():
    features = random_features(6, 2).requires_grad_()
    loss = supcon_loss(features, torch.tensor([0, 1, 0, 1, 2, 2]))
    loss.backward(retain_graph=True)
    once = features.grad.clone()
    loss.backward()
    torch.testing.assert_close(features.grad, 2 * once)


def test_bf16_autocast_computes_in_float32():
    generator = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(16, 8)
    x = torch.randn(12, 2, 16, generator=generator)
    labels = torch.randint(0, 3, (12,), generator=generator)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        features = F.normalize(layer(x), dim=-1)
        assert features.dtype == torch.bfloat16
        loss = supcon_loss(features, labels)
    assert loss.dtype == torch.float32
    expected = supcon_loss(features.detach().float(), labels)  # the same bf16 values, upcast outside autocast
    assert loss.item() == pytest.approx(expected.item(), rel=1e-6)
    loss.backward()
    assert torch.isfinite(layer.weight.grad).all()


def test_float16_and_float32_inputs_give_float32():
    features = random_features(4, 2, dtype=torch.float32)
    assert supcon_loss(features).dtype == torch.float32
    assert supcon_loss(features.half()).dtype == torch.float32


def test_labels_may_be_a_list():
    features = random_features(4, 2)
    assert supcon_loss(features, [0, 1, 0, 1]).item() == supcon_loss(features, torch.tensor([0, 1, 0, 1])).item()


@pytest.mark.parametrize("features, labels, kwargs, message", [
    (torch.randn(4, 8), None, {}, r"\[batch, n_views, dim\]"),
    (torch.randn(2, 4, 2, 8), None, {}, r"\[batch, n_views, dim\]"),
    (torch.randn(0, 2, 8), None, {}, r"\[batch, n_views, dim\]"),
    (torch.randint(0, 3, (4, 2, 8)), None, {}, "floating point"),
    (torch.randn(4, 2, 8), torch.tensor([0, 1, 2]), {}, r"labels must have shape \[batch\] = \[4\]"),
    (torch.randn(4, 2, 8), torch.zeros(4, 1, dtype=torch.long), {}, "labels must have shape"),
    (torch.randn(4, 2, 8), torch.zeros(4), {}, "integer class indices"),
    (torch.randn(4, 2, 8), None, {"temperature": 0.0}, "temperature must be a finite number > 0, got 0.0"),
    (torch.randn(4, 2, 8), None, {"temperature": -0.1}, "temperature"),
    (torch.randn(4, 2, 8), None, {"temperature": float("nan")}, "temperature"),
    (torch.randn(4, 2, 8), None, {"variant": "mid"}, "variant must be one of"),
    (torch.randn(4, 2, 8), None, {"contrast_mode": "two"}, "contrast_mode must be one of"),
    (torch.randn(4, 2, 8), None, {"max_positives": 0}, "max_positives must be an integer >= 1"),
    (torch.randn(4, 2, 8), None, {"chunk_size": 0}, "chunk_size must be an integer >= 1"),
])
def test_bad_input_raises_value_error(features, labels, kwargs, message):
    with pytest.raises(ValueError, match=message):
        supcon_loss(features, labels, **kwargs)


@pytest.mark.parametrize("kwargs", [
    {},
    {"variant": "in"},
    {"contrast_mode": "one"},
    {"max_positives": 2},
    {"max_positives": 2, "variant": "in"},
    {"chunk_size": 4},
    {"labels": None},
])
def test_gradcheck_float64(kwargs):
    kwargs = dict(kwargs)
    labels = kwargs.pop("labels", torch.tensor([0, 1, 0, 0, 1]))
    # Unnormalised features: the loss is defined for any vectors, and this checks the full Jacobian.
    features = torch.randn(5, 2, 4, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    features.requires_grad_()
    assert torch.autograd.gradcheck(lambda f: supcon_loss(f, labels, temperature=0.5, **kwargs), (features,))


@pytest.mark.parametrize("scale", [1.0, 6.0])
def test_shared_shift_and_row_shift_agree(monkeypatch, scale):
    # Every view an anchor on one process: L_out shifts all logits by one constant (one product in backward)
    # unless the row maxima spread wider than _SHARED_SHIFT_RANGE; force each path and compare both.
    labels = [0, 1, 0, 0, 1, 2, 2]
    features = scale * random_features(len(labels), 2, seed=3)
    results = []
    for shift_range in (math.inf, -1.0):  # always shared, never shared
        monkeypatch.setattr(losses, "_SHARED_SHIFT_RANGE", shift_range)
        leaf = features.clone().requires_grad_()
        loss = supcon_loss(leaf, torch.tensor(labels), temperature=0.5)
        loss.backward()
        assert loss.item() == pytest.approx(loop_loss(features, labels, 0.5), rel=1e-10)
        assert torch.autograd.gradcheck(lambda f: supcon_loss(f, torch.tensor(labels), temperature=0.5), (leaf,))
        results.append(leaf.grad)
    torch.testing.assert_close(results[0], results[1], rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("kwargs", [
    {},
    {"variant": "in"},
    {"contrast_mode": "one"},
    {"max_positives": 3},
    {"labels": None},
])
@pytest.mark.parametrize("chunk_size", [1, 7, 32])
def test_chunked_equals_full(kwargs, chunk_size):
    kwargs = dict(kwargs)
    generator = torch.Generator().manual_seed(chunk_size)
    labels = kwargs.pop("labels", torch.randint(0, 5, (24,), generator=generator))
    layer = torch.nn.Linear(10, 6)
    x = torch.randn(24, 2, 10, generator=generator)

    def loss_and_grad(chunk):
        layer.zero_grad()
        loss = supcon_loss(F.normalize(layer(x), dim=-1), labels, chunk_size=chunk, **kwargs)
        loss.backward()
        return loss.detach(), layer.weight.grad.clone(), layer.bias.grad.clone()

    full, chunked = loss_and_grad(None), loss_and_grad(chunk_size)
    for a, b in zip(full, chunked):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-6)
