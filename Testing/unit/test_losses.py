"""Losses against slow, loop-based references (values and gradients), edge cases, eq. 8 assembly."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from CGCLesionSegLib.losses import (LossConfig, bce_loss, cgc_loss, coarse_loss, patch_labels,
                                    supervised_contrastive_loss)
from CGCLesionSegLib.network import CGCNet, NetConfig

D = torch.float64  # references and losses are compared in double precision


# ------------------------------------------------------------------------------------ references
def bce_reference(logits: torch.Tensor, prob: torch.Tensor, band=None) -> torch.Tensor:
    total, n = 0.0, 0
    for lg, y in zip(logits.flatten(), prob.flatten()):
        if band is not None and band[0] < float(y) < band[1]:
            continue  # undecided target: no loss
        s = 1.0 / (1.0 + torch.exp(-lg))
        total = total - (y * torch.log(s) + (1 - y) * torch.log(1 - s))
        n += 1
    return total / n if n else logits.sum() * 0.0


def coarse_reference(coarse: torch.Tensor, prob: torch.Tensor, band=None) -> torch.Tensor:
    B, _, Z, Y, X = prob.shape
    f = 8
    targets = torch.zeros_like(coarse)
    for b in range(B):
        for z in range(coarse.shape[2]):
            for y in range(coarse.shape[3]):
                for x in range(coarse.shape[4]):
                    cell = prob[b, 0, z * f:(z + 1) * f, y * f:(y + 1) * f, x * f:(x + 1) * f]
                    # Padding is zero: the cell mean divides by the full 8³ even at the border.
                    targets[b, 0, z, y, x] = cell.sum() / f ** 3
    return bce_reference(coarse, targets, band)


def supcon_reference(emb: torch.Tensor, labels: torch.Tensor, tau: float, anchors: str) -> torch.Tensor:
    """Eq. 6 written out with plain loops over anchors, positives and the contrast set."""
    e = emb.reshape(-1, emb.shape[-1])
    lab = labels.reshape(-1).tolist()
    m = e.shape[0]

    def sim(i, j):
        return torch.dot(e[i], e[j]) / (torch.linalg.norm(e[i]) * torch.linalg.norm(e[j]))

    losses = []
    for i in range(m):
        if anchors == "lesion" and not lab[i]:
            continue
        positives = [p for p in range(m) if p != i and lab[p] == lab[i]]
        if not positives:
            continue
        denom = sum(torch.exp(sim(i, k) / tau) for k in range(m) if k != i)
        li = 0.0
        for p in positives:
            li = li - torch.log(torch.exp(sim(i, p) / tau) / denom)
        losses.append(li / len(positives))
    if not losses:
        return e.sum() * 0.0
    return sum(losses) / len(losses)


def patch_labels_reference(label_map: np.ndarray, patch, threshold, rule):
    B, _, Z, Y, X = label_map.shape
    pz, py, px = patch
    out = []
    for b in range(B):
        row = []
        for z0 in range(0, Z, pz):
            for y0 in range(0, Y, py):
                for x0 in range(0, X, px):
                    block = label_map[b, 0, z0:z0 + pz, y0:y0 + py, x0:x0 + px]
                    row.append((block.max() if rule == "any" else block.mean()) >= threshold)
        out.append(row)
    return np.array(out)


# ------------------------------------------------------------------------------------ tests
def _grads(fn, *tensors):
    ts = [t.detach().clone().requires_grad_(True) for t in tensors]
    value = fn(*ts)
    value.backward()
    return value.detach(), [t.grad for t in ts]


def test_bce_matches_reference_values_and_gradients():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 1, 3, 4, 5, generator=g, dtype=D) * 3
    prob = torch.rand(2, 1, 3, 4, 5, generator=g, dtype=D)
    v, (gl,) = _grads(lambda l: bce_loss(l, prob), logits)
    vr, (glr,) = _grads(lambda l: bce_reference(l, prob), logits)
    assert torch.allclose(v, vr, rtol=1e-10)
    assert torch.allclose(gl, glr, rtol=1e-8, atol=1e-12)


def test_bce_never_sends_gradient_into_p():
    logits = torch.randn(1, 1, 2, 2, 2)
    prob = torch.rand(1, 1, 2, 2, 2, requires_grad=True)
    bce_loss(logits.requires_grad_(), prob).backward()
    assert prob.grad is None


def test_coarse_loss_matches_reference_including_padding():
    g = torch.Generator().manual_seed(1)
    prob = torch.rand(2, 1, 16, 13, 9, generator=g, dtype=D)  # Y and X need padding to 16
    coarse = torch.randn(2, 1, 2, 2, 2, generator=g, dtype=D)
    v, (gc,) = _grads(lambda c: coarse_loss(c, prob), coarse)
    vr, (gcr,) = _grads(lambda c: coarse_reference(c, prob), coarse)
    assert torch.allclose(v, vr, rtol=1e-10)
    assert torch.allclose(gc, gcr, rtol=1e-8)


@pytest.mark.parametrize("band", [(0.1, 0.9), (0.0, 0.5), (0.3, 1.0)])
def test_bce_ignore_band_matches_reference(band):
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(2, 1, 3, 4, 5, generator=g, dtype=D) * 3
    prob = torch.rand(2, 1, 3, 4, 5, generator=g, dtype=D)
    prob[0, 0, 0] = torch.tensor([0.0, 1.0, 0.1, 0.9, 0.5])  # both ends, the band's edges (kept), inside
    v, (gl,) = _grads(lambda l: bce_loss(l, prob, band), logits)
    vr, (glr,) = _grads(lambda l: bce_reference(l, prob, band), logits)
    assert torch.allclose(v, vr, rtol=1e-10)
    assert torch.allclose(gl, glr, rtol=1e-8, atol=1e-12)
    inside = (prob > band[0]) & (prob < band[1])
    assert inside.any() and bool((gl[inside] == 0).all()) and bool((gl[~inside] != 0).all())
    assert not torch.allclose(v, bce_loss(logits, prob))  # the band changed the value


def test_coarse_ignore_band_matches_reference():
    g = torch.Generator().manual_seed(4)
    prob = 0.2 + 0.6 * torch.rand(2, 1, 16, 16, 16, generator=g, dtype=D)  # no padding: cell means near 0.5
    prob[0, 0, :8, :8, :8] = 0.0   # one decided cell per image (its mean 0 and 1), the rest undecided
    prob[1, 0, :8, :8, :8] = 1.0
    coarse = torch.randn(2, 1, 2, 2, 2, generator=g, dtype=D)
    v, (gc,) = _grads(lambda c: coarse_loss(c, prob, (0.1, 0.9)), coarse)
    vr, (gcr,) = _grads(lambda c: coarse_reference(c, prob, (0.1, 0.9)), coarse)
    assert torch.allclose(v, vr, rtol=1e-10)
    assert torch.allclose(gc, gcr, rtol=1e-8, atol=1e-12)
    assert int((gc != 0).sum()) == 2  # only the two decided cells teach


def test_ignore_band_all_undecided_is_a_zero_that_keeps_the_graph():
    logits = torch.randn(1, 1, 2, 2, 2, requires_grad=True)
    v = bce_loss(logits, torch.full((1, 1, 2, 2, 2), 0.5), (0.1, 0.9))
    v.backward()
    assert float(v) == 0.0 and torch.equal(logits.grad, torch.zeros_like(logits))


def test_ignore_band_leaves_binary_targets_alone():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(1, 1, 4, 4, 4, generator=g, dtype=D)
    target = (torch.rand(1, 1, 4, 4, 4, generator=g, dtype=D) > 0.5).to(D)
    assert torch.equal(bce_loss(logits, target, (0.1, 0.9)), bce_loss(logits, target))


@pytest.mark.parametrize("band", [(0.9, 0.1), (0.5, 0.5), (-0.1, 0.5), (0.2, 1.5), (0.5,)])
def test_ignore_band_rejects_bad_bands(band):
    with pytest.raises(ValueError, match="ignore_band"):
        LossConfig(ignore_band=band)


def test_ignore_band_reaches_cgc_loss_and_survives_a_dict_round_trip():
    from dataclasses import asdict
    import json
    cfg = LossConfig(ignore_band=[0.1, 0.9])
    assert cfg.ignore_band == (0.1, 0.9)
    back = LossConfig(**json.loads(json.dumps(asdict(cfg))))
    assert back == cfg
    g = torch.Generator().manual_seed(6)
    logits = torch.randn(1, 1, 8, 8, 8, generator=g)
    prob = torch.rand(1, 1, 8, 8, 8, generator=g)
    _, terms = cgc_loss({"logits": logits}, prob, cfg)
    assert torch.allclose(terms["bce"], bce_loss(logits, prob, (0.1, 0.9)))
    assert not torch.allclose(terms["bce"], bce_loss(logits, prob))


def test_coarse_loss_rejects_wrong_grid():
    with pytest.raises(ValueError, match="bottleneck grid"):
        coarse_loss(torch.zeros(1, 1, 3, 3, 3), torch.zeros(1, 1, 16, 16, 16))


@pytest.mark.parametrize("anchors", ["lesion", "all"])
@pytest.mark.parametrize("tau", [0.07, 0.2, 0.9])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_supcon_matches_reference_values_and_gradients(anchors, tau, seed):
    g = torch.Generator().manual_seed(seed)
    emb = torch.randn(2, 7, 5, generator=g, dtype=D)
    labels = torch.rand(2, 7, generator=g) < 0.4
    labels[0, 0] = True  # at least one lesion pair
    labels[1, 0] = True
    v, (ge,) = _grads(lambda e: supervised_contrastive_loss(e, labels, tau, anchors), emb)
    vr, (ger,) = _grads(lambda e: supcon_reference(e, labels, tau, anchors), emb)
    assert torch.allclose(v, vr, rtol=1e-9), (v, vr)
    assert torch.allclose(ge, ger, rtol=1e-7, atol=1e-10)
    assert v > 0


def test_supcon_is_scale_invariant_cosine():
    g = torch.Generator().manual_seed(3)
    emb = torch.randn(1, 6, 4, generator=g, dtype=D)
    labels = torch.tensor([[True, True, False, True, False, False]])
    a = supervised_contrastive_loss(emb, labels)
    b = supervised_contrastive_loss(emb * torch.rand(1, 6, 1, generator=g, dtype=D) * 10, labels)
    assert torch.allclose(a, b)


def test_supcon_prefers_separated_embeddings():
    labels = torch.tensor([True, True, True, False, False, False])
    together = torch.tensor([[1.0, 0.0]] * 3 + [[-1.0, 0.0]] * 3) + 0.01 * torch.randn(6, 2)
    mixed = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0], [1.0, 0.0], [-1.0, 0.0]])
    assert supervised_contrastive_loss(together, labels) < supervised_contrastive_loss(mixed, labels)


@pytest.mark.parametrize("labels", [torch.zeros(2, 5, dtype=torch.bool), torch.ones(2, 5, dtype=torch.bool),
                                    torch.tensor([[True, False, False, False, False], [False] * 5])])
@pytest.mark.parametrize("anchors", ["lesion", "all"])
def test_supcon_finite_without_positives_or_negatives(labels, anchors):
    emb = torch.randn(2, 5, 3, requires_grad=True)
    v = supervised_contrastive_loss(emb, labels, 0.2, anchors)
    v.backward()
    assert torch.isfinite(v) and torch.isfinite(emb.grad).all()
    if anchors == "lesion" and labels.sum() < 2:
        assert v.item() == 0.0 and torch.count_nonzero(emb.grad) == 0


@pytest.mark.parametrize("rule", ["any", "mean"])
@pytest.mark.parametrize("grid, patch", [((2, 6, 6), (2, 3, 3)), ((3, 5, 4), (2, 2, 3)), ((1, 3, 3), (4, 6, 6))])
def test_patch_labels_match_reference(rule, grid, patch):
    rng = np.random.default_rng(0)
    lm = rng.random((2, 1) + grid) ** 3
    got = patch_labels(torch.from_numpy(lm), patch, 0.4, rule).numpy()
    np.testing.assert_array_equal(got, patch_labels_reference(lm, patch, 0.4, rule))


def _tiny_net(**kw):
    torch.manual_seed(0)
    cfg = NetConfig(in_channels=2, widths=(2, 2, 3, 4), blocks=(0, 0, 1, 1), decoder_width=2, projection_dim=4,
                    patch_size_xyz=(1, 1, 1), **kw)
    return CGCNet(cfg), cfg


@pytest.mark.parametrize("pvalue", [0.0, 1.0])
def test_total_loss_finite_with_all_background_or_all_lesion_p(pvalue):
    net, cfg = _tiny_net()
    x = torch.randn(2, 2, 16, 16, 16)
    prob = torch.full((2, 1, 16, 16, 16), pvalue)
    for anchors in ("lesion", "all"):
        for source in ("prob", "coarse"):
            net.zero_grad()
            total, terms = cgc_loss(net(x), prob, LossConfig(anchors=anchors, patch_label_source=source),
                                    cfg.patch_size_zyx)
            total.backward()
            assert torch.isfinite(total)
            assert all(torch.isfinite(p.grad).all() for p in net.parameters() if p.grad is not None)
            assert set(terms) >= {"bce", "cg", "fg", "total", "lesion_patches"}


def test_total_is_eq8():
    net, cfg = _tiny_net()
    x = torch.randn(2, 2, 16, 16, 16)
    prob = (torch.rand(2, 1, 16, 16, 16) > 0.6).float()
    out = net(x)
    lc = LossConfig(lambda_cg=0.3, lambda_fg=2.5, anchors="all")
    total, terms = cgc_loss(out, prob, lc, cfg.patch_size_zyx)
    assert terms["cg"] > 0 and terms["fg"] > 0
    assert torch.isclose(total, terms["bce"] + 0.3 * terms["cg"] + 2.5 * terms["fg"])
    assert torch.isclose(terms["bce"], bce_loss(out["logits"], prob))


def test_switched_off_paths_contribute_nothing():
    net, cfg = _tiny_net(coarse=False, fine=False)
    x = torch.randn(1, 2, 8, 8, 8)
    prob = torch.rand(1, 1, 8, 8, 8)
    total, terms = cgc_loss(net(x), prob, LossConfig(), cfg.patch_size_zyx)
    assert terms["cg"] == 0 and terms["fg"] == 0 and torch.isclose(total, terms["bce"])
    net, cfg = _tiny_net()
    total, terms = cgc_loss(net(x), prob, LossConfig(lambda_cg=0, lambda_fg=0), cfg.patch_size_zyx)
    assert torch.isclose(total, terms["bce"])


def test_coarse_labels_need_the_coarse_path():
    net, cfg = _tiny_net(coarse=False)
    with pytest.raises(ValueError, match="coarse path"):
        cgc_loss(net(torch.randn(1, 2, 8, 8, 8)), torch.rand(1, 1, 8, 8, 8),
                 LossConfig(patch_label_source="coarse"), cfg.patch_size_zyx)


@pytest.mark.parametrize("kw, word", [(dict(tau=0), "tau"), (dict(lambda_cg=-1), "lambda_cg"),
                                      (dict(patch_label_source="gt"), "patch_label_source"),
                                      (dict(anchors="some"), "anchors"), (dict(patch_threshold=0), "patch_threshold"),
                                      (dict(patch_rule="median"), "patch_rule")])
def test_loss_config_validation(kw, word):
    with pytest.raises(ValueError, match=word):
        LossConfig(**kw)


def test_defaults_are_the_papers():
    lc = LossConfig()
    assert math.isclose(lc.tau, 0.2) and lc.lambda_cg == 1.0 and lc.lambda_fg == 1.0
