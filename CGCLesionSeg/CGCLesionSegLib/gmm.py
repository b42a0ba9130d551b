"""GMM foreground estimation: the probability map P of the paper (§3.2, §4.4).

A Gaussian mixture with ``K`` components is fitted by EM on (a random subsample of) the brain-mask
voxels, each voxel a feature vector of its normalised channel intensities. Components are then sorted
by their mean in the **reference channel** (the first channel: FLAIR for MRI, the CT itself for CT),
ascending, so component ``i`` is shown as label ``i + 1`` and the brightest is last.

Foreground rule (which components are lesion):

* MRI (paper, AUCseg-style): the ``n_foreground`` components with the highest reference-channel mean.
* explicit: ``foreground_components`` lists component indices (0-based, ``i`` ↔ label ``i + 1``).
* CT (our extension, not the paper's): the components whose mean reference value lies in the acute
  blood range ``ct_foreground_hu`` (Hounsfield units).

**Soft P.** The paper's eq. 5 assigns each voxel to its arg-max component (a hard label). We use the
soft version: ``P(x) = Σ_{j ∈ foreground} γ_j(x)``, the summed posterior probability of the foreground
components. It is 1 where the arg-max is certainly foreground, 0 where it certainly is not, and
thresholding it at 0.5 gives the arg-max result whenever one component dominates. P is 0 outside the
mask.

Speed: the mask voxels are gathered and normalised once (:class:`PreparedData`), EM runs on a seeded
subsample in float32 numpy, and the posterior of all mask voxels is evaluated in chunks.
:class:`ProbabilityMapSession` keeps the prepared data, the fitted model and the component posteriors
between calls, so a change of foreground components costs only a sum, and a change of ``K`` only a
refit (see docs/GMM.md).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Callable, Optional, Sequence

import numpy as np

from .config import config_from_dict as _config_from_dict
from .config import config_to_dict as _config_to_dict
from .preprocess import (NormalizationConfig, check_given_mask, normalize_channels, skull_stripped_mask,
                         validate_channels)
from .progress import call_progress, check_stop

ProgressCallback = Callable[[float, str], None]
StopCallback = Callable[[], bool]

COVARIANCE_TYPES = ("full", "diag", "spherical", "tied")
FOREGROUND_RULES = ("auto", "brightest", "outlier", "hu_range")
INIT_METHODS = ("kmeans", "quantile")
MODALITIES = ("mri", "ct")
MIN_CLUSTERS, MAX_CLUSTERS = 2, 10
_LOG_2PI = math.log(2.0 * math.pi)
_CHUNK = 1 << 18  # rows per posterior chunk: bounds memory at K * C * 1 MiB and allows cancelling


# --------------------------------------------------------------------------------------------- config
@dataclass(frozen=True)
class GMMConfig:
    """Settings of the GMM stage (frozen; validated on construction).

    n_clusters: number of Gaussian components K (2–10).
    n_foreground: how many of the brightest (reference-channel) components are lesion ("brightest").
    foreground_components: explicit 0-based component indices (sorted order, index i ↔ label i+1);
        overrides ``foreground_rule``. Indices must be < ``n_clusters``.
    foreground_rule: "brightest" (the ``n_foreground`` highest reference means; the paper's rule),
        "outlier" (every component whose reference mean is at least ``outlier_z`` standard
        deviations above the brain average of the normalised reference channel; the brightest one
        if none is), "hu_range" (component means in ``ct_foreground_hu``), or "auto" = "hu_range"
        for CT and "brightest" for MRI.
    outlier_z: threshold of the "outlier" rule, in SDs of the normalised reference channel.
    covariance_type: "full", "diag", "spherical" or "tied" (as scikit-learn).
    seed: seeds the subsample and the initialisation; same seed, same data → same result.
    subsample: number of mask voxels EM is fitted on (0 = all). The posterior is always evaluated
        on every mask voxel.
    max_iter, tol: EM stops after ``max_iter`` iterations or when the mean log-likelihood per voxel
        changes by less than ``tol``.
    reg_covar: added to covariance diagonals (features are z-scored, so this is in units of SD²).
    init: "kmeans" (k-means++ then Lloyd iterations on the subsample) or "quantile" (equal-count
        split of the reference channel; deterministic).
    channels: indices of the given channels that enter the GMM; default ``(0,)`` = the reference
        channel only (the paper's FLAIR-only configuration; see docs/GMM.md for why more channels
        are not the default); None = all. Index 0 must come first: the first channel is the
        reference channel that orders the components.
    modality: "mri" (default) or "ct". CT: the mask defaults to an HU window (``ct_brain_hu``)
        instead of non-zero voxels, and the foreground rule is the blood range ``ct_foreground_hu``.
    ct_foreground_hu: (low, high) HU range of component means counted as acute blood.
    ct_brain_hu: (low, high) HU window of brain tissue for the default CT mask.
    clip_percentiles: percentile clipping before z-scoring, inside the mask (see preprocess).
    n4: N4 bias-field correction of MRI channels before normalisation (on a shrunk image).
    ensemble_clusters: if given, P is the mean of the P maps obtained with each of these K (same
        rule and seed), which is steadier than any single K; ``labels``/``model`` still come from
        ``n_clusters``. Not combinable with explicit ``foreground_components``. See
        :func:`recommended_config`.
    """

    n_clusters: int = 4
    n_foreground: int = 1
    foreground_components: Optional[tuple[int, ...]] = None
    foreground_rule: str = "auto"
    outlier_z: float = 1.0
    covariance_type: str = "full"
    seed: int = 0
    subsample: int = 100_000
    max_iter: int = 100
    tol: float = 1e-3
    reg_covar: float = 1e-6
    init: str = "kmeans"
    channels: Optional[tuple[int, ...]] = (0,)
    modality: str = "mri"
    ct_foreground_hu: tuple[float, float] = (50.0, 90.0)
    ct_brain_hu: tuple[float, float] = (0.0, 100.0)
    clip_percentiles: tuple[float, float] = (0.5, 99.5)
    n4: bool = False
    ensemble_clusters: Optional[tuple[int, ...]] = None

    def __post_init__(self) -> None:
        # Normalise list inputs (from JSON) to tuples so the dataclass stays hashable.
        for name in ("foreground_components", "channels", "ct_foreground_hu", "ct_brain_hu", "clip_percentiles"):
            v = getattr(self, name)
            if isinstance(v, list):
                object.__setattr__(self, name, tuple(v))
        if isinstance(self.n_clusters, bool) or not isinstance(self.n_clusters, (int, np.integer)) or not (
                MIN_CLUSTERS <= self.n_clusters <= MAX_CLUSTERS):
            raise ValueError(f"n_clusters must be an integer from {MIN_CLUSTERS} to {MAX_CLUSTERS}, got {self.n_clusters!r}")
        if not isinstance(self.n_foreground, (int, np.integer)) or not (1 <= self.n_foreground < self.n_clusters):
            raise ValueError(f"n_foreground must be at least 1 and less than n_clusters={self.n_clusters}, "
                             f"got {self.n_foreground!r}")
        if self.foreground_components is not None:
            comps = tuple(int(c) for c in self.foreground_components)
            if not comps:
                raise ValueError("foreground_components is empty; give at least one component index or None")
            bad = [c for c in comps if not 0 <= c < self.n_clusters]
            if bad:
                raise ValueError(f"foreground_components {bad} out of range: indices are 0..{self.n_clusters - 1} "
                                 f"for n_clusters={self.n_clusters}")
            if len(set(comps)) != len(comps):
                raise ValueError(f"foreground_components has duplicates: {comps}")
            if len(comps) == self.n_clusters:
                raise ValueError("foreground_components lists every component; P would be 1 everywhere in the mask")
            object.__setattr__(self, "foreground_components", tuple(sorted(comps)))
        if self.foreground_rule not in FOREGROUND_RULES:
            raise ValueError(f"foreground_rule must be one of {FOREGROUND_RULES}, got {self.foreground_rule!r}")
        if not (isinstance(self.outlier_z, (int, float)) and math.isfinite(self.outlier_z)):
            raise ValueError(f"outlier_z must be a finite number, got {self.outlier_z!r}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if not isinstance(self.seed, (int, np.integer)) or self.seed < 0:
            raise ValueError(f"seed must be a non-negative integer, got {self.seed!r}")
        if not isinstance(self.subsample, (int, np.integer)) or self.subsample < 0 or 0 < self.subsample < 1000:
            raise ValueError(f"subsample must be 0 (all voxels) or at least 1000, got {self.subsample!r}")
        if not isinstance(self.max_iter, (int, np.integer)) or self.max_iter < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter!r}")
        if not (self.tol > 0):
            raise ValueError(f"tol must be positive, got {self.tol!r}")
        if not (self.reg_covar >= 0):
            raise ValueError(f"reg_covar must be >= 0, got {self.reg_covar!r}")
        if self.init not in INIT_METHODS:
            raise ValueError(f"init must be one of {INIT_METHODS}, got {self.init!r}")
        if self.channels is not None:
            ch = tuple(int(c) for c in self.channels)
            if not ch or ch[0] != 0 or any(c < 0 for c in ch) or len(set(ch)) != len(ch):
                raise ValueError(f"channels must be distinct non-negative indices starting with 0 (the reference "
                                 f"channel), got {self.channels}")
            object.__setattr__(self, "channels", ch)
        if self.modality not in MODALITIES:
            raise ValueError(f"modality must be one of {MODALITIES}, got {self.modality!r}")
        for name in ("ct_foreground_hu", "ct_brain_hu"):
            lo, hi = getattr(self, name)
            if not lo < hi:
                raise ValueError(f"{name} must be (low, high) with low < high, got {getattr(self, name)}")
        NormalizationConfig(tuple(self.clip_percentiles))  # validates the percentiles
        if isinstance(self.ensemble_clusters, list):
            object.__setattr__(self, "ensemble_clusters", tuple(self.ensemble_clusters))
        if self.ensemble_clusters is not None:
            ks = tuple(sorted(int(k) for k in self.ensemble_clusters))
            if not ks or any(not MIN_CLUSTERS <= k <= MAX_CLUSTERS for k in ks) or len(set(ks)) != len(ks):
                raise ValueError(f"ensemble_clusters must be distinct K values from {MIN_CLUSTERS} to {MAX_CLUSTERS}, "
                                 f"got {self.ensemble_clusters}")
            if self.foreground_components is not None:
                raise ValueError("explicit foreground_components need a single K; set ensemble_clusters=None")
            if self.effective_foreground_rule == "brightest" and self.n_foreground >= ks[0]:
                raise ValueError(f"n_foreground={self.n_foreground} must be less than the smallest ensemble K {ks[0]}")
            object.__setattr__(self, "ensemble_clusters", ks)

    @property
    def effective_foreground_rule(self) -> str:
        """The rule actually applied: "explicit", "brightest", "outlier" or "hu_range"."""
        if self.foreground_components is not None:
            return "explicit"
        if self.foreground_rule == "auto":
            return "hu_range" if self.modality == "ct" else "brightest"
        return self.foreground_rule

    @property
    def normalization(self) -> NormalizationConfig:
        return NormalizationConfig(tuple(self.clip_percentiles))


def config_to_dict(cfg: GMMConfig) -> dict:
    """JSON-able dict of a :class:`GMMConfig` (for sidecars, checkpoints, P caches)."""
    return _config_to_dict(cfg)


def config_from_dict(data: dict) -> GMMConfig:
    """Inverse of :func:`config_to_dict`; unknown keys raise ``ValueError``."""
    return _config_from_dict(GMMConfig, data)


#: Binary post-processing chosen with the configuration of :func:`recommended_config` (keyword
#: arguments of :func:`CGCLesionSegLib.postprocess.binarize`); see docs/BENCHMARKS.md, gmm-accuracy.
RECOMMENDED_POSTPROCESS = {"threshold": 0.5, "fill_holes": "2d", "keep_largest": 1, "opening_radius": 3}


def recommended_config(**overrides) -> GMMConfig:
    """The configuration selected on the real BraTS cases by leave-one-case-out (docs/BENCHMARKS.md):
    FLAIR only, P averaged over K = 4..8, components >= 1 SD above the brain average are lesion.
    Use with :data:`RECOMMENDED_POSTPROCESS` for the binary output. ``GMMConfig()`` itself stays the
    paper's single-K configuration (K = 4, brightest component), which the live preview tunes."""
    base = dict(n_clusters=6, foreground_rule="outlier", outlier_z=1.0, ensemble_clusters=(4, 5, 6, 7, 8))
    base.update(overrides)
    return GMMConfig(**base)


# --------------------------------------------------------------------------------- foreground rules
def select_foreground(reference_means: Sequence[float], n_foreground: int = 1,
                      components: Optional[Sequence[int]] = None,
                      value_range: Optional[tuple[float, float]] = None) -> tuple[int, ...]:
    """Indices of the lesion components.

    ``reference_means``: (K,) mean of each component in the reference channel. Priority: explicit
    ``components`` (validated), else ``value_range`` (components whose mean lies in [low, high];
    may be empty), else the ``n_foreground`` components with the highest mean.
    """
    means = np.asarray(reference_means, dtype=float)
    k = means.shape[0]
    if components is not None:
        comps = tuple(sorted(int(c) for c in components))
        bad = [c for c in comps if not 0 <= c < k]
        if bad or not comps:
            raise ValueError(f"foreground component(s) {bad or comps} out of range 0..{k - 1}")
        return comps
    if value_range is not None:
        lo, hi = value_range
        return tuple(int(i) for i in np.flatnonzero((means >= lo) & (means <= hi)))
    if not 1 <= n_foreground < k:
        raise ValueError(f"n_foreground must be 1..{k - 1} for {k} components, got {n_foreground}")
    order = np.argsort(means, kind="stable")
    return tuple(sorted(int(i) for i in order[k - n_foreground:]))


# ------------------------------------------------------------------------------------ EM internals
def _compute_precision_cholesky(covariances: np.ndarray, covariance_type: str) -> np.ndarray:
    """Cholesky factor P of each precision (Σ⁻¹ = P Pᵀ), float64; raises on a singular covariance."""
    if covariance_type in ("full", "tied"):
        covs = covariances if covariance_type == "full" else covariances[None]
        out = np.empty_like(covs, dtype=np.float64)
        for j, cov in enumerate(covs):
            try:
                chol = np.linalg.cholesky(cov.astype(np.float64))
            except np.linalg.LinAlgError as exc:
                raise ValueError("a GMM component collapsed onto too few distinct intensities (singular "
                                 "covariance); use fewer clusters or a larger reg_covar") from exc
            out[j] = np.linalg.solve(chol, np.eye(cov.shape[0])).T
        return out if covariance_type == "full" else out[0]
    if np.any(covariances <= 0):
        raise ValueError("a GMM component collapsed onto one intensity (zero variance); use fewer clusters")
    return 1.0 / np.sqrt(covariances.astype(np.float64))


def _log_det_cholesky(prec_chol: np.ndarray, covariance_type: str, d: int) -> np.ndarray:
    if covariance_type == "full":
        return np.log(np.diagonal(prec_chol, axis1=1, axis2=2)).sum(axis=1)
    if covariance_type == "tied":
        return np.log(np.diag(prec_chol)).sum()
    if covariance_type == "diag":
        return np.log(prec_chol).sum(axis=1)
    return d * np.log(prec_chol)


def _estimate_log_gaussian(Xt: np.ndarray, means: np.ndarray, prec_chol: np.ndarray,
                           covariance_type: str) -> np.ndarray:
    """log N(x | μ_j, Σ_j) for every sample and component: (K, n) float32 from ``Xt`` (d, n).

    Feature-major (d, n) input and component-major (K, n) output keep every reduction over a short
    leading axis, i.e. whole-row vector adds; with (n, d) layouts the reductions over d = 1–4 or
    K ≤ 10 inner elements dominated the run time. All components come from one matrix product.
    """
    d, n = Xt.shape
    k = means.shape[0]
    log_det = np.broadcast_to(np.asarray(_log_det_cholesky(prec_chol, covariance_type, d), dtype=np.float64), (k,))
    if covariance_type in ("full", "tied"):
        pcs = prec_chol if covariance_type == "full" else np.broadcast_to(prec_chol, (k, d, d))
        stacked = np.concatenate([pc.T for pc in pcs], axis=0).astype(np.float32)  # (K*d, d): rows Pᵀ
        offset = np.einsum("kd,kde->ke", means, pcs).reshape(k * d, 1).astype(np.float32)
        y = stacked @ Xt
        y -= offset
        np.square(y, out=y)
        maha = y.reshape(k, d, n).sum(axis=1)
    elif covariance_type == "diag":
        prec = prec_chol ** 2  # (K, d)
        maha = prec.astype(np.float32) @ (Xt * Xt)
        maha -= (2.0 * means * prec).astype(np.float32) @ Xt
        maha += np.sum(means ** 2 * prec, axis=1).astype(np.float32)[:, None]
    else:  # spherical
        prec = prec_chol ** 2  # (K,)
        sq = (Xt * Xt).sum(axis=0)
        maha = prec.astype(np.float32)[:, None] * sq[None]
        maha -= (2.0 * means * prec[:, None]).astype(np.float32) @ Xt
        maha += (np.sum(means ** 2, axis=1) * prec).astype(np.float32)[:, None]
    maha *= np.float32(-0.5)
    maha += (-0.5 * d * _LOG_2PI + log_det).astype(np.float32).reshape(k, 1)
    return maha


def _e_step(Xt: np.ndarray, weights: np.ndarray, means: np.ndarray, prec_chol: np.ndarray,
            covariance_type: str) -> tuple[np.ndarray, np.ndarray]:
    """(responsibilities (K, n), log-likelihood per sample (n,)), float32; one exp per entry."""
    w = _estimate_log_gaussian(Xt, means, prec_chol, covariance_type)
    w += np.log(np.maximum(weights, 1e-300)).astype(np.float32)[:, None]
    mx = w.max(axis=0)
    w -= mx
    np.exp(w, out=w)
    tot = w.sum(axis=0)
    w /= tot
    np.log(tot, out=tot)
    tot += mx
    return w, tot


def _m_step(Xt: np.ndarray, resp: np.ndarray, covariance_type: str,
            reg_covar: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weights (K,), means (K, d), covariances (by type) from ``Xt`` (d, n) and ``resp`` (K, n); float64."""
    d, n = Xt.shape
    k = resp.shape[0]
    nk = resp.sum(axis=1, dtype=np.float64) + 10 * np.finfo(np.float32).eps
    means = (resp @ Xt.T).astype(np.float64) / nk[:, None]
    if covariance_type in ("full", "tied"):
        covs = np.empty((k, d, d))
        for j in range(k):
            diff = Xt - means[j].astype(np.float32)[:, None]
            covs[j] = ((diff * resp[j]) @ diff.T).astype(np.float64) / nk[j]
        if covariance_type == "full":
            covs[:, np.arange(d), np.arange(d)] += reg_covar
            cov = covs
        else:
            cov = (covs * nk[:, None, None]).sum(axis=0) / nk.sum()
            cov[np.arange(d), np.arange(d)] += reg_covar
    else:
        avg_x2 = (resp @ (Xt * Xt).T).astype(np.float64) / nk[:, None]
        diag = np.maximum(avg_x2 - means ** 2, 0.0) + reg_covar
        cov = diag if covariance_type == "diag" else diag.mean(axis=1)
    return nk / n, means, cov


def _kmeans_init(Xt: np.ndarray, k: int, rng: np.random.Generator, n_lloyd: int = 20,
                 max_points: int = 20_000) -> np.ndarray:
    """Hard labels (n,) of ``Xt`` (d, n): greedy k-means++ seeding and Lloyd iterations on
    ≤ ``max_points`` samples, then nearest centre for all."""
    n = Xt.shape[1]
    pts = Xt.T if n <= max_points else Xt[:, rng.choice(n, max_points, replace=False)].T
    pts = pts.astype(np.float64)
    centers = np.empty((k, Xt.shape[0]))
    centers[0] = pts[rng.integers(pts.shape[0])]
    d2 = ((pts - centers[0]) ** 2).sum(axis=1)
    for j in range(1, k):
        total = d2.sum()
        if total <= 0:  # fewer distinct points than clusters
            raise ValueError(f"the data has fewer distinct values than the {k} clusters requested; use fewer clusters")
        # A few candidates per step, keep the one that lowers the potential most (greedy k-means++).
        cand = rng.choice(pts.shape[0], size=2 + int(math.log(k)), p=d2 / total)
        cand_d2 = np.minimum(d2[None], ((pts[None] - pts[cand][:, None]) ** 2).sum(axis=2))
        best = int(np.argmin(cand_d2.sum(axis=1)))
        centers[j] = pts[cand[best]]
        d2 = cand_d2[best]
    for _ in range(n_lloyd):
        lab = _nearest(pts.T, centers)
        new = centers.copy()
        for j in range(k):
            sel = lab == j
            if sel.any():
                new[j] = pts[sel].mean(axis=0)
        done = np.allclose(new, centers, atol=1e-6)
        centers = new
        if done:
            break
    return _nearest(Xt, centers)


def _nearest(Xt: np.ndarray, centers: np.ndarray) -> np.ndarray:
    """Index of the nearest centre (k, d) for each column of ``Xt`` (d, n)."""
    c = centers.astype(np.float32)
    dist = c @ Xt.astype(np.float32, copy=False)
    dist *= -2.0
    dist += (c ** 2).sum(axis=1)[:, None]
    return np.argmin(dist, axis=0)


def _quantile_init(Xt: np.ndarray, k: int, reference: int) -> np.ndarray:
    """Hard labels (n,) splitting the reference feature into k equal-count bins."""
    ref = Xt[reference]
    edges = np.quantile(ref, np.linspace(0, 1, k + 1)[1:-1])
    return np.searchsorted(edges, ref, side="right")


# ---------------------------------------------------------------------------------------- estimator
class ForegroundGMM:
    """Gaussian mixture whose components are split into lesion (foreground) and background.

    scikit-learn conventions: ``__init__`` stores its arguments unchanged; :meth:`fit` learns the
    attributes ending in ``_`` and returns ``self``. ``X`` is ``(n_samples, n_features)``; feature
    ``reference`` (default 0) orders the components (ascending mean after fitting) and drives the
    highest-mean foreground rule. :meth:`predict_proba` returns ``(n, 2)`` columns
    [background, foreground]; the foreground column is the soft P (see module docstring).

    Learned attributes: ``weights_`` (K,), ``means_`` (K, d), ``covariances_`` (by type as in
    scikit-learn), ``precisions_cholesky_``, ``converged_``, ``n_iter_``, ``lower_bound_`` (mean
    log-likelihood per sample at the end), ``foreground_components_`` (tuple of indices).
    """

    def __init__(self, n_clusters: int = 4, n_foreground: int = 1, foreground_components=None,
                 covariance_type: str = "full", max_iter: int = 100, tol: float = 1e-3,
                 reg_covar: float = 1e-6, init: str = "kmeans", seed: int = 0, reference: int = 0,
                 foreground_range=None) -> None:
        self.n_clusters = n_clusters
        self.n_foreground = n_foreground
        self.foreground_components = foreground_components
        self.covariance_type = covariance_type
        self.max_iter = max_iter
        self.tol = tol
        self.reg_covar = reg_covar
        self.init = init
        self.seed = seed
        self.reference = reference
        self.foreground_range = foreground_range

    @classmethod
    def from_config(cls, config: GMMConfig) -> "ForegroundGMM":
        """Estimator with the EM settings of ``config`` (the CT rule is applied by the pipeline in HU)."""
        return cls(n_clusters=config.n_clusters, n_foreground=config.n_foreground,
                   foreground_components=config.foreground_components, covariance_type=config.covariance_type,
                   max_iter=config.max_iter, tol=config.tol, reg_covar=config.reg_covar, init=config.init,
                   seed=config.seed, reference=0)

    def get_params(self, deep: bool = True) -> dict:
        return {k: getattr(self, k) for k in ("n_clusters", "n_foreground", "foreground_components",
                                              "covariance_type", "max_iter", "tol", "reg_covar", "init",
                                              "seed", "reference", "foreground_range")}

    def set_params(self, **params) -> "ForegroundGMM":
        for k, v in params.items():
            if k not in self.get_params():
                raise ValueError(f"unknown parameter {k!r}")
            setattr(self, k, v)
        return self

    # -- fitting
    def _check_X(self, X: np.ndarray) -> np.ndarray:
        X = np.asarray(X)
        if X.ndim == 1:
            X = X[:, None]
        if X.ndim != 2:
            raise ValueError(f"X must be (n_samples, n_features), got shape {X.shape}")
        if not np.all(np.isfinite(X)):
            raise ValueError("X contains NaN or inf")
        return np.ascontiguousarray(X, dtype=np.float32)

    def fit(self, X: np.ndarray, y=None, should_stop: Optional[StopCallback] = None) -> "ForegroundGMM":
        """Fit by EM on ``X`` (n, d); returns ``self``. Raises ``ValueError`` when the data has fewer
        distinct rows than components."""
        X = self._check_X(X)
        return self._fit_t(np.ascontiguousarray(X.T), should_stop)

    def _fit_t(self, Xt: np.ndarray, should_stop: Optional[StopCallback] = None) -> "ForegroundGMM":
        """EM on feature-major ``Xt`` (d, n) float32 (what :class:`PreparedData` stores)."""
        k = int(self.n_clusters)
        d, n = Xt.shape
        if k < 1:
            raise ValueError(f"n_clusters must be positive, got {k}")
        if self.covariance_type not in COVARIANCE_TYPES:
            raise ValueError(f"covariance_type must be one of {COVARIANCE_TYPES}, got {self.covariance_type!r}")
        if not 0 <= self.reference < d:
            raise ValueError(f"reference feature {self.reference} out of range for {d} feature(s)")
        if n < k:
            raise ValueError(f"{n} samples cannot be split into {k} clusters")
        _check_distinct(Xt, k)
        rng = np.random.default_rng(self.seed)
        if self.init == "kmeans":
            labels = _kmeans_init(Xt, k, rng)
        elif self.init == "quantile":
            labels = _quantile_init(Xt, k, self.reference)
        else:
            raise ValueError(f"init must be one of {INIT_METHODS}, got {self.init!r}")
        resp = np.zeros((k, n), dtype=np.float32)
        resp[labels, np.arange(n)] = 1.0
        weights, means, covs = _m_step(Xt, resp, self.covariance_type, self.reg_covar)
        prec_chol = _compute_precision_cholesky(covs, self.covariance_type)
        lower = -np.inf
        self.converged_ = False
        it = 0
        for it in range(1, int(self.max_iter) + 1):
            check_stop(should_stop)
            resp, ll = _e_step(Xt, weights, means, prec_chol, self.covariance_type)
            new_lower = float(ll.mean(dtype=np.float64))
            weights, means, covs = _m_step(Xt, resp, self.covariance_type, self.reg_covar)
            prec_chol = _compute_precision_cholesky(covs, self.covariance_type)
            change = new_lower - lower
            lower = new_lower
            if abs(change) < self.tol:
                self.converged_ = True
                break
        self.n_iter_ = it
        # Mean log-likelihood of the returned parameters (one more E-step, as scikit-learn does).
        _, ll = _e_step(Xt, weights, means, prec_chol, self.covariance_type)
        self.lower_bound_ = float(ll.mean(dtype=np.float64))
        self._set_sorted(weights, means, covs)
        self.n_features_in_ = d
        self.n_fit_samples_ = n
        self.foreground_components_ = self._select()
        return self

    def _set_sorted(self, weights: np.ndarray, means: np.ndarray, covs: np.ndarray) -> None:
        """Store parameters with components in ascending reference-feature mean."""
        order = np.argsort(means[:, self.reference], kind="stable")
        self.weights_ = weights[order]
        self.means_ = means[order]
        self.covariances_ = covs if self.covariance_type == "tied" else covs[order]
        self.precisions_cholesky_ = _compute_precision_cholesky(self.covariances_, self.covariance_type)

    def _select(self) -> tuple[int, ...]:
        rng = None if self.foreground_range is None else tuple(self.foreground_range)
        return select_foreground(self.means_[:, self.reference], self.n_foreground,
                                 self.foreground_components, rng)

    def set_foreground(self, components: Sequence[int]) -> "ForegroundGMM":
        """Change the lesion components of a fitted model without refitting; returns ``self``."""
        self._check_fitted()
        self.foreground_components_ = select_foreground(self.means_[:, self.reference], components=components)
        return self

    def _check_fitted(self) -> None:
        if not hasattr(self, "means_"):
            raise RuntimeError("this ForegroundGMM is not fitted yet; call fit(X) first")

    # -- prediction
    def component_proba(self, X: np.ndarray) -> np.ndarray:
        """Posterior γ_j(x) of every component: (n, K) float32, rows sum to 1."""
        X = self._check_X(X)
        return self._component_proba_t(np.ascontiguousarray(X.T)).T

    def _component_proba_t(self, Xt: np.ndarray, should_stop: Optional[StopCallback] = None) -> np.ndarray:
        """Posteriors (K, n) float32 of feature-major ``Xt`` (d, n), evaluated in chunks."""
        self._check_fitted()
        if Xt.shape[0] != self.means_.shape[1]:
            raise ValueError(f"X has {Xt.shape[0]} feature(s) but the model was fitted on {self.means_.shape[1]}")
        n = Xt.shape[1]
        out = np.empty((self.n_clusters, n), dtype=np.float32)
        for s in range(0, n, _CHUNK):
            check_stop(should_stop)
            out[:, s:s + _CHUNK] = _e_step(Xt[:, s:s + _CHUNK], self.weights_, self.means_,
                                           self.precisions_cholesky_, self.covariance_type)[0]
        return out

    def predict_components(self, X: np.ndarray) -> np.ndarray:
        """Arg-max component index (n,) (the hard assignment of the paper's eq. 5)."""
        return np.argmax(self.component_proba(X), axis=1)

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """(n, 2) float32: column 0 = background, column 1 = foreground (summed posterior); rows sum to 1."""
        comp = self.component_proba(X)
        fg = np.clip(comp[:, list(self.foreground_components_)].sum(axis=1), 0.0, 1.0) \
            if self.foreground_components_ else np.zeros(comp.shape[0], np.float32)
        return np.stack([1.0 - fg, fg], axis=1).astype(np.float32)

    def predict(self, X: np.ndarray) -> np.ndarray:
        """1 where the foreground posterior is ≥ 0.5, else 0: (n,) uint8."""
        return (self.predict_proba(X)[:, 1] >= 0.5).astype(np.uint8)

    def score_samples(self, X: np.ndarray) -> np.ndarray:
        """Log-likelihood log p(x) of each sample: (n,) float32."""
        self._check_fitted()
        Xt = np.ascontiguousarray(self._check_X(X).T)
        return np.concatenate([_e_step(Xt[:, s:s + _CHUNK], self.weights_, self.means_, self.precisions_cholesky_,
                                       self.covariance_type)[1] for s in range(0, Xt.shape[1], _CHUNK)])

    def score(self, X: np.ndarray, y=None) -> float:
        """Mean log-likelihood per sample."""
        return float(self.score_samples(X).mean(dtype=np.float64))

    def n_parameters(self) -> int:
        self._check_fitted()
        k, d = self.means_.shape
        cov = {"full": k * d * (d + 1) / 2, "diag": k * d, "spherical": k, "tied": d * (d + 1) / 2}
        return int(cov[self.covariance_type] + k * d + k - 1)

    def fit_bic(self) -> float:
        """BIC on the samples the model was fitted on, from the stored mean log-likelihood (no pass
        over the data)."""
        self._check_fitted()
        m = self.n_fit_samples_
        return -2 * self.lower_bound_ * m + self.n_parameters() * math.log(m)

    def bic(self, X: np.ndarray) -> float:
        """Bayesian information criterion on ``X`` (lower is better), as scikit-learn defines it."""
        X = self._check_X(X)
        return -2 * self.score(X) * X.shape[0] + self.n_parameters() * math.log(X.shape[0])


def _check_distinct(Xt: np.ndarray, k: int) -> None:
    """Raise when ``Xt`` (d, n) has fewer than ``k`` distinct samples (EM would collapse components)."""
    n = Xt.shape[1]
    probe = Xt if n <= 200_000 else Xt[:, :: n // 200_000 + 1]
    # Cheap first pass on the first feature; a full unique-rows check only when it is inconclusive.
    if np.unique(probe[0]).shape[0] >= k:
        return
    n_distinct = np.unique(Xt.T, axis=0).shape[0]
    if n_distinct < k:
        raise ValueError(f"the image has only {n_distinct} distinct intensity value(s) inside the mask, fewer "
                         f"than the {k} clusters requested; use at most {n_distinct} clusters")


# -------------------------------------------------------------------------------- prepared data
def ct_brain_mask(ct_zyx: np.ndarray, window_hu: tuple[float, float] = (0.0, 100.0),
                  erode_voxels: int = 2) -> np.ndarray:
    """Rough brain mask of a head CT from an HU window: (z, y, x) bool.

    Voxels in ``window_hu`` (soft tissue, blood), opened by ``erode_voxels`` to cut thin bridges
    to scalp and orbits, the largest connected part kept and its holes filled. Good enough for the
    GMM; a proper skull-stripping tool is better when available.
    """
    from scipy import ndimage
    lo, hi = window_hu
    win = (ct_zyx >= lo) & (ct_zyx <= hi)
    st = ndimage.generate_binary_structure(3, 1)
    core = ndimage.binary_erosion(win, st, iterations=erode_voxels) if erode_voxels else win
    lab, n = ndimage.label(core, st)
    if n == 0:
        raise ValueError(f"no voxel of the CT lies in the brain window {window_hu} HU; is it in Hounsfield "
                         "units? Give a brain mask with --mask")
    sizes = np.bincount(lab.ravel())
    sizes[0] = 0
    keep = lab == int(np.argmax(sizes))
    if erode_voxels:
        keep = ndimage.binary_dilation(keep, st, iterations=erode_voxels) & win
    for z in range(keep.shape[0]):  # per-slice fill: the ventricles touch the mask border in 3-D
        keep[z] = ndimage.binary_fill_holes(keep[z])
    return keep & (ct_zyx > window_hu[0] - 50) & (ct_zyx < window_hu[1] + 50)


@dataclass
class PreparedData:
    """Mask voxels of one case, gathered and normalised once; reused by every refit.

    ``mask``: (z, y, x) bool. ``index``: (n,) flat indices of the mask voxels. ``features_t``:
    (d, n) float32 normalised channels, feature-major (those of ``config.channels``; row 0 =
    reference); ``features`` is its (n, d) view.
    ``reference_raw``: (n,) float32 reference intensities before normalisation (HU for CT).
    """

    mask: np.ndarray
    index: np.ndarray
    features_t: np.ndarray
    reference_raw: np.ndarray
    key: tuple
    _subsamples: dict = field(default_factory=dict, repr=False)

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.mask.shape)

    @property
    def features(self) -> np.ndarray:
        """(n, d) view of the normalised mask voxels."""
        return self.features_t.T

    def fit_samples_t(self, subsample: int, seed: int) -> np.ndarray:
        """(d, m) samples EM is fitted on: a seeded random subsample, cached per (size, seed)."""
        n = self.features_t.shape[1]
        if subsample == 0 or subsample >= n:
            return self.features_t
        key = (subsample, seed)
        if key not in self._subsamples:
            rng = np.random.default_rng(seed)
            idx = np.sort(rng.choice(n, size=subsample, replace=False))
            self._subsamples[key] = np.ascontiguousarray(self.features_t[:, idx])
        return self._subsamples[key]

    def fit_rows(self, subsample: int, seed: int) -> np.ndarray:
        """(m, d) view of :meth:`fit_samples_t`."""
        return self.fit_samples_t(subsample, seed).T

    def to_volume(self, values: np.ndarray, dtype=np.float32) -> np.ndarray:
        """Scatter (n,) mask values into a zero (z, y, x) volume."""
        out = np.zeros(self.mask.size, dtype=dtype)
        out[self.index] = values
        return out.reshape(self.mask.shape)


def _prep_key(config: GMMConfig) -> tuple:
    return (config.channels, config.modality, tuple(config.clip_percentiles), config.n4,
            tuple(config.ct_brain_hu))


def prepare_data(channels_zyx: Sequence[np.ndarray], mask_zyx: Optional[np.ndarray], config: GMMConfig,
                 names: Optional[Sequence[str]] = None, spacing_xyz: Optional[Sequence[float]] = None,
                 progress: Optional[ProgressCallback] = None,
                 should_stop: Optional[StopCallback] = None) -> PreparedData:
    """Validate the channels, build or check the mask, optionally N4-correct, normalise, gather.

    ``channels_zyx``: sequence of (z, y, x) arrays on one grid, first = reference channel.
    ``mask_zyx``: (z, y, x), non-zero = brain, or None (MRI: non-zero voxels of any channel; CT:
    HU window). Raises ``ValueError`` with an actionable message for every bad input.
    """
    names = list(names) if names is not None else [f"channel {i + 1}" for i in range(len(channels_zyx))]
    validate_channels(channels_zyx, names)
    use = config.channels if config.channels is not None else tuple(range(len(channels_zyx)))
    if max(use) >= len(channels_zyx):
        raise ValueError(f"GMM channels {use} refer to channel {max(use) + 1} but only {len(channels_zyx)} "
                         "channel(s) were given")
    shape = channels_zyx[0].shape
    for i in use:  # a constant volume would otherwise be mistaken for "MRI with skull" below
        ch = np.asarray(channels_zyx[i])
        if float(ch.max()) == float(ch.min()):
            raise ValueError(f"{names[i]} is constant (every voxel is {float(ch.min()):g}); it carries no contrast")
    call_progress(progress, 0.0, "preparing mask")
    if mask_zyx is not None:
        mask = np.asarray(mask_zyx)
        if mask.shape != shape:
            raise ValueError(f"the mask has shape {mask.shape} but the images have {shape}; resample it onto their grid")
        mask = mask != 0
        check_given_mask(mask, channels_zyx[use[0]])
    elif config.modality == "ct":
        mask = ct_brain_mask(np.asarray(channels_zyx[0]), tuple(config.ct_brain_hu))
    else:
        mask = skull_stripped_mask([channels_zyx[i] for i in use])
        if not mask.any():
            raise ValueError("every voxel is zero in every channel: the images are empty")
    check_stop(should_stop)
    chans = [np.asarray(channels_zyx[i], dtype=np.float32) for i in use]
    reference_raw_vol = chans[0]
    if config.n4 and config.modality == "mri":
        from .bias_field import n4_correct
        corrected = []
        for j, ch in enumerate(chans):
            call_progress(progress, 0.1 + 0.5 * j / len(chans), f"N4 bias correction of {names[use[j]]}")
            check_stop(should_stop)
            corrected.append(n4_correct(ch, mask, spacing_xyz=spacing_xyz))
        chans = corrected
    call_progress(progress, 0.6, "normalising channels")
    for j, ch in enumerate(chans):
        values = ch[mask]
        if float(values.max()) - float(values.min()) <= 1e-6 * max(1.0, abs(float(values.mean()))):
            raise ValueError(f"{names[use[j]]} is constant inside the brain mask; it carries no contrast")
    norm = normalize_channels(chans, mask, config.normalization)  # (d, Z, Y, X)
    index = np.flatnonzero(mask)
    features_t = np.ascontiguousarray(norm.reshape(norm.shape[0], -1)[:, index])  # (d, n)
    reference_raw = reference_raw_vol.reshape(-1)[index].astype(np.float32)
    call_progress(progress, 1.0, f"{index.size} mask voxels ready")
    return PreparedData(mask=mask, index=index, features_t=features_t, reference_raw=reference_raw,
                        key=_prep_key(config))


# ------------------------------------------------------------------------------------ pipeline
@dataclass
class GMMResult:
    """Output of :func:`compute_probability_map`.

    probability: (z, y, x) float32 in [0, 1], 0 outside the mask (the soft P).
    mask: (z, y, x) bool brain mask used. labels: (z, y, x) uint8, 0 outside the mask, 1..K =
    arg-max component (ascending reference-channel mean). model: the fitted :class:`ForegroundGMM`.
    foreground_components: 0-based indices counted as lesion (label = index + 1).
    component_means: (K,) mean reference intensity of each component in input units (HU for CT).
    config: the :class:`GMMConfig` used. elapsed_s: seconds spent (preparation excluded when reused).
    """

    probability: np.ndarray
    mask: np.ndarray
    labels: np.ndarray
    model: ForegroundGMM
    foreground_components: tuple[int, ...]
    component_means: np.ndarray
    config: GMMConfig
    elapsed_s: float = 0.0
    warnings: tuple[str, ...] = ()
    ensemble_members: tuple = ()  # ((K, foreground components), ...) when config.ensemble_clusters is set

    def summary(self) -> dict:
        """JSON-able description for sidecars and logs."""
        return {"config": config_to_dict(self.config),
                "foreground_components": list(self.foreground_components),
                "foreground_labels": [c + 1 for c in self.foreground_components],
                "component_weights": [round(float(w), 6) for w in self.model.weights_],
                "component_reference_means": [round(float(m), 4) for m in self.component_means],
                "converged": bool(self.model.converged_), "n_iter": int(self.model.n_iter_),
                "mean_log_likelihood": round(float(self.model.lower_bound_), 6),
                "mask_voxels": int(self.mask.sum()), "warnings": list(self.warnings),
                "ensemble_members": [{"K": k, "foreground_labels": [c + 1 for c in fg]}
                                     for k, fg in self.ensemble_members]}


@dataclass
class _Fit:
    """One fitted model of a session and what it yields on every mask voxel."""

    model: ForegroundGMM
    comp: np.ndarray          # (K, n) float32 posteriors
    labels: np.ndarray        # (z, y, x) uint8 arg-max labels 1..K, 0 outside the mask
    comp_means: np.ndarray    # (K,) posterior-weighted reference mean in input units


class ProbabilityMapSession:
    """Keeps the work of one case between GMM runs (for the GUI's live preview).

    ``channels_zyx`` and ``mask_zyx`` are fixed for the session; :meth:`run` takes a
    :class:`GMMConfig` and only redoes what changed: normalisation when channel/mask settings
    change, EM when K/covariance/seed/subsample change (the last ``max_cached_fits`` fits are kept,
    so going back to a previous K is instant), and just the foreground sum otherwise.
    """

    def __init__(self, channels_zyx: Sequence[np.ndarray], mask_zyx: Optional[np.ndarray] = None,
                 names: Optional[Sequence[str]] = None, spacing_xyz: Optional[Sequence[float]] = None,
                 max_cached_fits: int = 3) -> None:
        self._channels = list(channels_zyx)
        self._mask = mask_zyx
        self._names = names
        self._spacing = spacing_xyz
        self.max_cached_fits = max(1, int(max_cached_fits))
        self._cache_size = self.max_cached_fits
        self.prepared: Optional[PreparedData] = None
        self._fits: "dict[tuple, _Fit]" = {}  # insertion order = least recently used first

    def clear_fits(self) -> None:
        """Forget the fitted models (the prepared voxels stay); the next run refits."""
        self._fits.clear()

    @staticmethod
    def _fit_key(config: GMMConfig) -> tuple:
        return (config.n_clusters, config.covariance_type, config.seed, config.subsample, config.max_iter,
                config.tol, config.reg_covar, config.init)

    def _fit(self, config: GMMConfig, progress, should_stop) -> _Fit:
        key = self._fit_key(config)
        if key in self._fits:
            self._fits[key] = self._fits.pop(key)  # mark as most recently used
            return self._fits[key]
        prep = self.prepared
        call_progress(progress, 0.3, f"fitting {config.n_clusters} Gaussian components")
        samples = prep.fit_samples_t(config.subsample, config.seed)
        model = ForegroundGMM.from_config(config)._fit_t(samples, should_stop=should_stop)
        check_stop(should_stop)
        call_progress(progress, 0.7, "posterior of every mask voxel")
        comp = model._component_proba_t(prep.features_t, should_stop)  # (K, n)
        labels = prep.to_volume(_argmax0(comp) + 1, np.uint8)
        # Component means in input units (HU for CT): posterior-weighted raw reference values.
        w = comp.sum(axis=1, dtype=np.float64)
        comp_means = (comp @ prep.reference_raw).astype(np.float64) / np.maximum(w, 1e-12)
        fit = _Fit(model, comp, labels, comp_means)
        self._fits[key] = fit
        while len(self._fits) > self._cache_size:
            self._fits.pop(next(iter(self._fits)))
        return fit

    def run(self, config: GMMConfig, progress: Optional[ProgressCallback] = None,
            should_stop: Optional[StopCallback] = None) -> GMMResult:
        """P for ``config``; see the class docstring for what is reused."""
        import copy
        import time
        t0 = time.perf_counter()
        # An ensemble keeps all its members (and the display fit) cached, or every call would refit.
        self._cache_size = max(self.max_cached_fits, len(config.ensemble_clusters or ()) + 1)
        if self.prepared is None or self.prepared.key != _prep_key(config):
            self.prepared = prepare_data(self._channels, self._mask, config, self._names, self._spacing,
                                         progress=_sub(progress, 0.0, 0.3), should_stop=should_stop)
            self._fits.clear()
        prep = self.prepared
        fit = self._fit(config, progress, should_stop)
        fg, warnings = self._foreground(fit, config)
        model = copy.copy(fit.model)  # shallow: shares the arrays, own foreground_components_
        model.foreground_components_ = tuple(fg)
        p = self._p(fit, fg)
        members: tuple = ()
        if config.ensemble_clusters is not None:
            # Mean of the members' P; each member is a single-K run of the same rule and seed.
            total = np.zeros_like(p)
            parts = []
            for i, k in enumerate(config.ensemble_clusters):
                check_stop(should_stop)
                call_progress(progress, 0.3 + 0.6 * i / len(config.ensemble_clusters), f"ensemble member K={k}")
                ck = replace(config, n_clusters=k, ensemble_clusters=None,
                             n_foreground=min(config.n_foreground, k - 1))
                fk = self._fit(ck, None, should_stop)
                fgk, wk = self._foreground(fk, ck)
                total += self._p(fk, fgk)
                parts.append((k, tuple(fgk)))
                warnings.extend(f"K={k}: {w}" for w in wk)
            p = total / np.float32(len(config.ensemble_clusters))
            members = tuple(parts)
        np.clip(p, 0.0, 1.0, out=p)
        probability = prep.to_volume(p, np.float32)
        call_progress(progress, 1.0, "P ready")
        return GMMResult(probability=probability, mask=prep.mask.copy(), labels=fit.labels.copy(), model=model,
                         foreground_components=tuple(fg), component_means=fit.comp_means.copy(),
                         config=config, elapsed_s=time.perf_counter() - t0, warnings=tuple(warnings),
                         ensemble_members=members)

    @staticmethod
    def _foreground(fit: _Fit, config: GMMConfig) -> tuple[tuple[int, ...], list[str]]:
        """Lesion components of ``fit`` under the rule of ``config``, and any warnings."""
        warnings: list[str] = []
        rule = config.effective_foreground_rule
        if rule == "explicit":
            fg = select_foreground(fit.comp_means, components=config.foreground_components)
        elif rule == "hu_range":
            fg = select_foreground(fit.comp_means, value_range=tuple(config.ct_foreground_hu))
            if not fg:
                warnings.append(f"no component has a mean in the range {config.ct_foreground_hu} "
                                f"(means: {', '.join(f'{m:.0f}' for m in fit.comp_means)}); P is 0. "
                                "Pick components explicitly or change the range")
        elif rule == "outlier":
            fg = select_foreground(fit.model.means_[:, 0], value_range=(float(config.outlier_z), np.inf))
            if not fg:
                fg = (config.n_clusters - 1,)
                warnings.append(f"no component is {config.outlier_z} SD above the brain average; "
                                "the brightest one is used")
        else:
            fg = select_foreground(fit.model.means_[:, 0], n_foreground=config.n_foreground)
        return tuple(fg), warnings

    @staticmethod
    def _p(fit: _Fit, fg: Sequence[int]) -> np.ndarray:
        """Summed posterior of components ``fg`` for every mask voxel: (n,) float32."""
        p = np.zeros(fit.comp.shape[1], np.float32)
        for j in fg:
            p += fit.comp[j]
        return p


def _argmax0(a: np.ndarray) -> np.ndarray:
    """Arg-max over axis 0 of (K, n) as uint8, by K whole-row comparisons (faster than np.argmax
    over a short strided axis)."""
    best = a[0].copy()
    lab = np.zeros(a.shape[1], dtype=np.uint8)
    for j in range(1, a.shape[0]):
        upd = a[j] > best
        lab[upd] = j
        np.maximum(best, a[j], out=best)
    return lab


def _sub(progress: Optional[ProgressCallback], lo: float, hi: float) -> Optional[ProgressCallback]:
    if progress is None:
        return None
    return lambda f, m: progress(lo + (hi - lo) * f, m)


def compute_probability_map(channels_zyx: Sequence[np.ndarray], mask_zyx: Optional[np.ndarray],
                            config: GMMConfig = GMMConfig(), progress: Optional[ProgressCallback] = None,
                            should_stop: Optional[StopCallback] = None, *,
                            names: Optional[Sequence[str]] = None,
                            spacing_xyz: Optional[Sequence[float]] = None) -> GMMResult:
    """Foreground probability map P of one case.

    ``channels_zyx``: 1–N co-registered (z, y, x) volumes, the first is the reference channel
    (FLAIR for MRI, the CT in HU for CT). ``mask_zyx``: (z, y, x) brain mask or None (see
    :func:`prepare_data`). Returns a :class:`GMMResult`; ``result.probability`` is float32 (z, y, x)
    in [0, 1] and 0 outside the mask. For repeated calls on one case use
    :class:`ProbabilityMapSession`, which reuses the normalised voxels and the fitted model.
    """
    return ProbabilityMapSession(channels_zyx, mask_zyx, names=names, spacing_xyz=spacing_xyz).run(
        config, progress=progress, should_stop=should_stop)


def select_n_clusters_bic(prepared: PreparedData, config: GMMConfig,
                          candidates: Sequence[int] = (3, 4, 5, 6)) -> tuple[int, dict[int, float]]:
    """K with the lowest BIC on the fit subsample (a label-free model-selection rule); returns
    (best K, {K: BIC})."""
    samples = prepared.fit_samples_t(config.subsample, config.seed)
    scores = {}
    for k in candidates:
        cfg = replace(config, n_clusters=int(k), n_foreground=min(config.n_foreground, int(k) - 1),
                      foreground_components=None)
        scores[int(k)] = ForegroundGMM.from_config(cfg)._fit_t(samples).fit_bic()
    best = min(scores, key=scores.get)
    return best, scores
