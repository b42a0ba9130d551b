"""Losses of the CGC method (paper eq. 1, §3.3.1, eq. 6–8), computed in float32.

``prob`` is the GMM foreground probability map P ``(B, 1, Z, Y, X)`` in [0, 1]; it is a fixed
target (detached here too, so no gradient can ever reach it).

* :func:`bce_loss` — eq. 1: voxel-wise binary cross-entropy of the decoder output against soft P
  (optionally skipping an undecided band of P, :class:`LossConfig` ``ignore_band``).
* :func:`coarse_loss` — §3.3.1 ``L_cg``: BCE of the coarse logit against P averaged over each
  bottleneck cell (P "down-sampled to the bottleneck grid").
* :func:`supervised_contrastive_loss` — eq. 6 ``L_fg`` with cosine similarity (eq. 7 read as
  ``x·y / (‖x‖‖y‖)``; the paper's ``‖x‖ + ‖y‖`` is a typo for cosine) and temperature τ.
* :func:`cgc_loss` — eq. 8: ``L = L_bce + λ_cg L_cg + λ_fg L_fg``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
import torch.nn.functional as F

from .network import downsample_to_bottleneck, patch_pool

LABEL_SOURCES = ("prob", "coarse")
ANCHOR_MODES = ("lesion", "all")
PATCH_RULES = ("any", "mean")


@dataclass(frozen=True)
class LossConfig:
    """Weights and choices of the CGC losses (stored in the checkpoint's training config).

    ``tau``: temperature of eq. 6 (paper: 0.2, best of Table 3). ``lambda_cg`` / ``lambda_fg``: eq. 8
    weights (paper: 1 and 1). A path whose network part is off contributes nothing, whatever its λ.

    ``patch_label_source`` — which map says that a mini-patch is lesion (the paper's
    ``C(x̃) ∈ C(r^lesion)`` leaves it open): ``"prob"`` (default) = P down-sampled to the bottleneck
    grid; ``"coarse"`` = the network's own coarse map ``p`` (detached). Default ``"prob"`` because P is
    the only supervision the method has, it is stable from the first step (a random coarse map would
    label patches at random early on), the coarse map is trained towards the very same down-sampled P
    anyway, and it keeps the "fine path only" ablation row well defined without the coarse path.

    ``patch_rule`` / ``patch_threshold`` — when a mini-patch counts as lesion: ``"any"`` (default) = at
    least one bottleneck cell of the patch has a label-map value ≥ ``patch_threshold`` (0.5); ``"mean"``
    = the patch mean is ≥ ``patch_threshold``. Default ``"any"`` because a 6×6×4 patch of the
    bottleneck covers 48×48×32 voxels: measured on P of our 7 BraTS cases (192×192×64 crops, batch 2),
    the ``"mean"`` rule labels 0.25 of 64 patches per batch lesion (a batch almost never has the two
    lesion patches eq. 6 needs, and 12×12×4 never does), while ``"any"`` labels ~16 of 64 (6×6×4),
    ~30 of 256 (3×3×4) and ~10 of 16 (12×12×4), so the fine loss is active for every patch size of
    Table 2. It also matches the paper's remark that large patches "contain both lesion and normal
    tissues" (mixed patches are lesion patches).

    ``anchors`` — which patches are anchors of eq. 6: ``"lesion"`` (default) = the literal eq. 6:
    lesion patches are anchors, the other lesion patches their positives, all other patches in the
    batch the contrast set; ``"all"`` = SupCon style: every patch is an anchor and its positives are
    the patches with its label (normal patches also pull together). Default ``"lesion"`` because it is
    what eq. 6 writes (Ω⁺ are lesion patches), and because with ``"all"`` the far more numerous normal
    anchors dominate the loss. Patches of all images in the batch are pooled into one contrast set.

    ``ignore_band`` — ``(lo, hi)`` with ``0 <= lo < hi <= 1``, or ``None`` (default: the paper, every
    voxel counts). Our option (issue 9, cgc-v19): the two BCE terms (eq. 1 and ``L_cg``) skip every
    voxel (every bottleneck cell, by its averaged target) whose target lies strictly inside the band,
    and average over the rest, so the network is taught only where P is decided and must fill in the
    undecided voxels from what it learnt there. Why: on 5 of the 11 tumour cases P is between 0.1 and
    0.9 over 33–78 % of the brain, mostly a 0.1–0.2 haze (docs/BENCHMARKS.md, p-haze), and BCE to a
    soft target fits the network to that haze. The contrastive patch labels are unchanged (they
    threshold P at ``patch_threshold``). Binary targets (the self-training round's) are never inside
    a band with ``lo > 0`` and ``hi < 1``, so the band changes nothing there.
    """

    tau: float = 0.2
    lambda_cg: float = 1.0
    lambda_fg: float = 1.0
    patch_label_source: str = "prob"
    patch_threshold: float = 0.5
    patch_rule: str = "any"
    anchors: str = "lesion"
    ignore_band: Optional[tuple[float, float]] = None

    def __post_init__(self) -> None:
        if not (float(self.tau) > 0.0):
            raise ValueError(f"LossConfig.tau must be > 0, got {self.tau}")
        for name in ("lambda_cg", "lambda_fg"):
            if not (float(getattr(self, name)) >= 0.0):
                raise ValueError(f"LossConfig.{name} must be >= 0, got {getattr(self, name)}")
        if self.patch_label_source not in LABEL_SOURCES:
            raise ValueError(f"LossConfig.patch_label_source must be one of {LABEL_SOURCES}, "
                             f"got {self.patch_label_source!r}")
        if not (0.0 < float(self.patch_threshold) <= 1.0):
            raise ValueError(f"LossConfig.patch_threshold must be in (0, 1], got {self.patch_threshold}")
        if self.patch_rule not in PATCH_RULES:
            raise ValueError(f"LossConfig.patch_rule must be one of {PATCH_RULES}, got {self.patch_rule!r}")
        if self.anchors not in ANCHOR_MODES:
            raise ValueError(f"LossConfig.anchors must be one of {ANCHOR_MODES}, got {self.anchors!r}")
        for name in ("tau", "lambda_cg", "lambda_fg", "patch_threshold"):
            object.__setattr__(self, name, float(getattr(self, name)))
        if self.ignore_band is not None:
            band = tuple(float(v) for v in self.ignore_band)
            if len(band) != 2 or not (0.0 <= band[0] < band[1] <= 1.0):
                raise ValueError(f"LossConfig.ignore_band must be (lo, hi) with 0 <= lo < hi <= 1, e.g. (0.1, 0.9); "
                                 f"got {self.ignore_band}")
            object.__setattr__(self, "ignore_band", band)


def _wide(t: torch.Tensor) -> torch.Tensor:
    """float32 for half/bf16 tensors (autocast outputs); float64 stays float64 (reference tests)."""
    return t if t.dtype in (torch.float32, torch.float64) else t.float()


def _bce(logits: torch.Tensor, target: torch.Tensor, ignore_band: Optional[tuple[float, float]]) -> torch.Tensor:
    """Mean BCE over the elements whose target is outside the open interval ``ignore_band`` (all if None).
    With every element ignored it is an exact 0 that keeps the graph (zero gradient)."""
    if ignore_band is None:
        return F.binary_cross_entropy_with_logits(logits, target)
    keep = ~((target > ignore_band[0]) & (target < ignore_band[1]))
    per = F.binary_cross_entropy_with_logits(logits, target, reduction="none")
    return (per * keep).sum() / keep.sum().clamp(min=1)


def bce_loss(logits: torch.Tensor, prob: torch.Tensor,
             ignore_band: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """Eq. 1: mean BCE of ``logits`` ``(B, 1, Z, Y, X)`` against soft targets ``prob`` (same shape),
    over the voxels whose target is outside ``ignore_band`` (:class:`LossConfig`; None = every voxel)."""
    if logits.shape != prob.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and P {tuple(prob.shape)} differ in shape")
    return _bce(_wide(logits), prob.detach().to(_wide(logits).dtype), ignore_band)


def coarse_loss(coarse_logits: torch.Tensor, prob: torch.Tensor,
                ignore_band: Optional[tuple[float, float]] = None) -> torch.Tensor:
    """``L_cg``: BCE of ``coarse_logits`` ``(B, 1, z, y, x)`` against P ``(B, 1, Z, Y, X)`` averaged per cell,
    over the cells whose averaged target is outside ``ignore_band`` (None = every cell)."""
    target = downsample_to_bottleneck(prob.detach().to(_wide(coarse_logits).dtype))
    if target.shape != coarse_logits.shape:
        raise ValueError(f"coarse logits {tuple(coarse_logits.shape)} do not lie on P's bottleneck grid "
                         f"{tuple(target.shape)}")
    return _bce(_wide(coarse_logits), target, ignore_band)


def patch_labels(label_map: torch.Tensor, patch_zyx: tuple[int, int, int], threshold: float = 0.5,
                 rule: str = "any") -> torch.Tensor:
    """Bottleneck-grid map ``(B, 1, z, y, x)`` in [0, 1] → bool ``(B, N)`` (patches as :func:`patch_pool`).

    ``rule="any"``: some cell of the patch ≥ ``threshold``; ``"mean"``: the patch mean ≥ ``threshold``.
    """
    m = _wide(label_map.detach())
    if rule == "mean":
        return patch_pool(m, patch_zyx)[..., 0] >= threshold
    if rule != "any":
        raise ValueError(f"rule must be one of {PATCH_RULES}, got {rule!r}")
    # Max over each patch; ceil_mode gives the smaller last patch when the grid is not a multiple.
    pooled = F.max_pool3d(m, patch_zyx, stride=patch_zyx, ceil_mode=True)
    return pooled.reshape(m.shape[0], -1) >= threshold


def supervised_contrastive_loss(embeddings: torch.Tensor, labels: torch.Tensor, tau: float = 0.2,
                                anchors: str = "lesion") -> torch.Tensor:
    """Eq. 6 over all patches of the batch.

    ``embeddings``: ``(B, N, D)`` (or ``(M, D)``), un-normalised; ``labels``: bool ``(B, N)`` (or ``(M,)``),
    True = lesion. For every anchor ``i`` with at least one positive::

        ℓ_i = −1/|P(i)| Σ_{p∈P(i)} log( exp(s_ip/τ) / Σ_{k≠i} exp(s_ik/τ) ),   s = cosine similarity

    where P(i) = the other patches with the anchor's label. Anchors are the lesion patches
    (``anchors="lesion"``) or all patches (``"all"``). The loss is the mean of ℓ_i over anchors that
    have a positive. With no such anchor (no lesion patch, or a single one) it is an exact 0 that keeps
    the graph (finite, zero gradient); with no negative (all patches lesion) it stays finite.
    """
    if anchors not in ANCHOR_MODES:
        raise ValueError(f"anchors must be one of {ANCHOR_MODES}, got {anchors!r}")
    d = embeddings.shape[-1]
    e = F.normalize(_wide(embeddings).reshape(-1, d), dim=1)
    lab = labels.reshape(-1).to(torch.bool)
    if lab.numel() != e.shape[0]:
        raise ValueError(f"{e.shape[0]} embeddings but {lab.numel()} labels")
    m = e.shape[0]
    if m < 2:
        return embeddings.sum() * 0.0
    sim = e @ e.t() / tau
    eye = torch.eye(m, dtype=torch.bool, device=e.device)
    # log-denominator over Ω' = all patches except the anchor itself
    log_denom = torch.logsumexp(sim.masked_fill(eye, float("-inf")), dim=1, keepdim=True)
    log_prob = sim - log_denom
    pos = (lab[:, None] == lab[None, :]) & ~eye
    is_anchor = lab.clone() if anchors == "lesion" else torch.ones_like(lab)
    n_pos = pos.sum(dim=1)
    valid = is_anchor & (n_pos > 0)
    if not bool(valid.any()):
        return embeddings.sum() * 0.0
    per_anchor = -(log_prob * pos).sum(dim=1) / n_pos.clamp(min=1)
    return per_anchor[valid].mean()


def cgc_loss(out: dict, prob: torch.Tensor, config: LossConfig = LossConfig(),
             patch_zyx: Optional[tuple[int, int, int]] = None) -> tuple[torch.Tensor, dict]:
    """Eq. 8 from a :meth:`CGCNet.forward` output and P ``(B, 1, Z, Y, X)``.

    Returns ``(total, terms)`` where ``terms`` maps ``"bce"``, ``"cg"``, ``"fg"``, ``"total"`` to detached
    float tensors (``cg``/``fg`` are 0 when their path is off) plus ``"lesion_patches"`` (fraction of
    patches labelled lesion, a diagnostic). ``patch_zyx`` is required when ``out["embeddings"]`` is set.
    """
    total = bce_loss(out["logits"], prob, config.ignore_band)
    terms = {"bce": total.detach()}
    zero = total.detach() * 0.0
    coarse = out.get("coarse_logits")
    if coarse is not None and config.lambda_cg > 0:
        l_cg = coarse_loss(coarse, prob, config.ignore_band)
        total = total + config.lambda_cg * l_cg
        terms["cg"] = l_cg.detach()
    else:
        terms["cg"] = zero
    emb = out.get("embeddings")
    if emb is not None and config.lambda_fg > 0:
        if patch_zyx is None:
            raise ValueError("cgc_loss needs patch_zyx to label the mini-patches")
        if config.patch_label_source == "coarse":
            if coarse is None:
                raise ValueError("patch_label_source='coarse' needs the coarse path; switch it on or use 'prob'")
            label_map = torch.sigmoid(_wide(coarse.detach()))
        else:
            label_map = downsample_to_bottleneck(_wide(prob.detach()))
        labels = patch_labels(label_map, patch_zyx, config.patch_threshold, config.patch_rule)
        l_fg = supervised_contrastive_loss(emb, labels, config.tau, config.anchors)
        total = total + config.lambda_fg * l_fg
        terms["fg"] = l_fg.detach()
        terms["lesion_patches"] = labels.float().mean().detach()
    else:
        terms["fg"] = zero
        terms["lesion_patches"] = zero
    terms["total"] = total.detach()
    return total, terms
