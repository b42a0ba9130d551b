"""GMM foreground estimation: config, estimator contract, EM vs scikit-learn, posterior vs a slow
reference, foreground rules, the pipeline on a synthetic phantom, and every bad input."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest

from CGCLesionSegLib import gmm as G
from CGCLesionSegLib.gmm import (ForegroundGMM, GMMConfig, GMMResult, ProbabilityMapSession,
                                 compute_probability_map, config_from_dict, config_to_dict, select_foreground)
from CGCLesionSegLib.progress import Cancelled


# ------------------------------------------------------------------------------------------ helpers
def mixture(n_per=(3000, 2000, 1000), means=((0, 0), (4, 1), (8, -2)), seed=0):
    """Three well separated 2-D Gaussians; returns X (n, 2) and true labels (n,)."""
    rng = np.random.default_rng(seed)
    cov = np.array([[1.0, 0.3], [0.3, 0.5]])
    X = np.concatenate([rng.multivariate_normal(m, cov, size=n) for m, n in zip(means, n_per)])
    y = np.repeat(np.arange(len(n_per)), n_per)
    return X, y


def phantom(shape=(20, 32, 32), seed=0, lesion_value=300.0, skull=False):
    """Skull-stripped brain phantom (z, y, x): zero background, two tissues, a bright lesion ball.

    Returns (flair, t2, mask, lesion)."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=float)
    c = [(s - 1) / 2 for s in shape]
    r = ((z - c[0]) / (shape[0] * 0.45)) ** 2 + ((y - c[1]) / (shape[1] * 0.45)) ** 2 + ((x - c[2]) / (shape[2] * 0.45)) ** 2
    mask = r <= 1.0
    tissue = np.where(x < c[2], 100.0, 160.0)                      # "white" and "grey" matter halves
    lesion = ((z - c[0]) ** 2 + (y - c[1] - 4) ** 2 + (x - c[2] - 5) ** 2) <= 16
    flair = tissue + rng.normal(0, 8, shape)
    flair[lesion] = lesion_value + rng.normal(0, 12, int(lesion.sum()))
    t2 = 0.8 * flair + rng.normal(0, 5, shape)
    if skull:
        flair = np.where(mask, flair, 50.0 + rng.normal(0, 5, shape))
        t2 = np.where(mask, t2, 40.0 + rng.normal(0, 5, shape))
    else:
        flair = np.where(mask, flair, 0.0)
        t2 = np.where(mask, t2, 0.0)
    return flair.astype(np.float32), t2.astype(np.float32), mask, lesion & mask


def slow_posterior(X, weights, means, covariances, covariance_type):
    """Per-sample, per-component posterior with scipy's multivariate_normal (obviously correct)."""
    from scipy.stats import multivariate_normal
    k, d = means.shape
    out = np.zeros((X.shape[0], k))
    for j in range(k):
        if covariance_type == "full":
            cov = covariances[j]
        elif covariance_type == "tied":
            cov = covariances
        elif covariance_type == "diag":
            cov = np.diag(covariances[j])
        else:
            cov = np.eye(d) * covariances[j]
        out[:, j] = weights[j] * np.array([multivariate_normal(means[j], cov).pdf(x) for x in X])
    return out / out.sum(axis=1, keepdims=True)


# ------------------------------------------------------------------------------------------- config
def test_config_defaults_and_json_round_trip():
    cfg = GMMConfig(n_clusters=5, n_foreground=2, foreground_components=(4, 3), seed=3)
    assert cfg.foreground_components == (3, 4)  # sorted
    data = config_to_dict(cfg)
    back = config_from_dict(json.loads(json.dumps(data)))
    assert back == cfg
    assert isinstance(back.clip_percentiles, tuple)


@pytest.mark.parametrize("kwargs, word", [
    (dict(n_clusters=1), "n_clusters"), (dict(n_clusters=11), "n_clusters"), (dict(n_clusters=4.0), "n_clusters"),
    (dict(n_foreground=0), "n_foreground"), (dict(n_clusters=3, n_foreground=3), "n_foreground"),
    (dict(foreground_components=(4,)), "out of range"), (dict(foreground_components=()), "empty"),
    (dict(n_clusters=2, foreground_components=(0, 1)), "every component"),
    (dict(covariance_type="banana"), "covariance_type"), (dict(seed=-1), "seed"),
    (dict(subsample=10), "subsample"), (dict(max_iter=0), "max_iter"), (dict(tol=0), "tol"),
    (dict(init="random"), "init"), (dict(channels=(1, 0)), "channels"), (dict(modality="pet"), "modality"),
    (dict(ct_foreground_hu=(90, 50)), "ct_foreground_hu"), (dict(clip_percentiles=(50, 10)), "clip"),
    (dict(foreground_rule="darkest"), "foreground_rule"), (dict(outlier_z=float("nan")), "outlier_z"),
])
def test_config_rejects_bad_values(kwargs, word):
    with pytest.raises(ValueError, match=word):
        GMMConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys():
    with pytest.raises(ValueError, match="unknown"):
        config_from_dict({"n_clusters": 4, "bogus": 1})


def test_effective_rule():
    assert GMMConfig().effective_foreground_rule == "brightest"
    assert GMMConfig(modality="ct").effective_foreground_rule == "hu_range"
    assert GMMConfig(foreground_components=(1,)).effective_foreground_rule == "explicit"


# ---------------------------------------------------------------------------------------- estimator
def test_estimator_contract():
    est = ForegroundGMM(n_clusters=3, covariance_type="diag", seed=7)
    assert est.get_params()["n_clusters"] == 3 and est.seed == 7
    assert not [a for a in vars(est) if a.endswith("_")]  # __init__ learns nothing
    with pytest.raises(RuntimeError, match="not fitted"):
        est.predict_proba(np.zeros((2, 2)))
    X, _ = mixture()
    assert est.fit(X) is est
    for attr in ("weights_", "means_", "covariances_", "precisions_cholesky_", "converged_", "n_iter_",
                 "lower_bound_", "foreground_components_", "n_features_in_"):
        assert hasattr(est, attr)
    proba = est.predict_proba(X)
    assert proba.shape == (X.shape[0], 2) and proba.dtype == np.float32
    np.testing.assert_allclose(proba.sum(axis=1), 1.0, atol=1e-6)
    assert np.all(np.diff(est.means_[:, 0]) > 0)  # sorted by the reference feature
    assert est.foreground_components_ == (2,)
    assert set(np.unique(est.predict(X))) <= {0, 1}
    comp = est.component_proba(X)
    np.testing.assert_allclose(comp.sum(axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(proba[:, 1], comp[:, 2], atol=1e-6)
    est.set_params(n_clusters=4)
    assert est.n_clusters == 4 and est.means_.shape[0] == 3  # params change, learned state untouched


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_em_matches_sklearn(covariance_type):
    from sklearn.mixture import GaussianMixture
    X, y = mixture(seed=1)
    sk = GaussianMixture(3, covariance_type=covariance_type, random_state=0, tol=1e-6, max_iter=500).fit(X)
    ours = ForegroundGMM(3, covariance_type=covariance_type, tol=1e-6, max_iter=500).fit(X)
    order = np.argsort(sk.means_[:, 0])
    np.testing.assert_allclose(ours.means_, sk.means_[order], atol=2e-3)
    np.testing.assert_allclose(ours.weights_, sk.weights_[order], atol=1e-3)
    assert abs(ours.score(X) - sk.score(X)) < 1e-4 * abs(sk.score(X))
    assert abs(ours.bic(X) - sk.bic(X)) < 1e-3 * abs(sk.bic(X))
    # and both recover the true means
    np.testing.assert_allclose(ours.means_, [[0, 0], [4, 1], [8, -2]], atol=0.1)
    # hard assignments agree with scikit-learn's, and with the truth up to the Bayes error
    sk_lab = np.argsort(order)[sk.predict(X)]
    assert (ours.predict_components(X) == sk_lab).mean() > 0.999
    assert (ours.predict_components(X) == y).mean() > 0.97


def test_em_recovers_known_clusters_in_4d():
    rng = np.random.default_rng(3)
    true_means = np.array([[-3, 0, 1, 0], [0, 2, -1, 1], [3, -2, 0, 2], [6, 1, 2, -1]], float)
    X = np.concatenate([rng.normal(m, 0.6, size=(4000, 4)) for m in true_means])
    est = ForegroundGMM(4, seed=2).fit(X)
    np.testing.assert_allclose(est.means_, true_means, atol=0.05)
    np.testing.assert_allclose(est.weights_, 0.25, atol=0.01)
    assert est.converged_


@pytest.mark.parametrize("covariance_type", ["full", "diag", "spherical", "tied"])
def test_posterior_matches_slow_reference(covariance_type):
    X, _ = mixture(n_per=(300, 200, 100), seed=4)
    est = ForegroundGMM(3, covariance_type=covariance_type).fit(X)
    rng = np.random.default_rng(5)
    Xq = rng.uniform(-3, 11, size=(60, 2))
    ref = slow_posterior(Xq, est.weights_, est.means_, est.covariances_, covariance_type)
    np.testing.assert_allclose(est.component_proba(Xq), ref, atol=2e-4)
    # log-likelihood too
    from scipy.stats import multivariate_normal
    if covariance_type == "full":
        dens = sum(w * multivariate_normal(m, c).pdf(Xq) for w, m, c in zip(est.weights_, est.means_, est.covariances_))
        np.testing.assert_allclose(est.score_samples(Xq), np.log(dens), rtol=1e-4, atol=1e-4)


def test_quantile_init_and_seed_reproducible():
    X, _ = mixture(seed=6)
    a = ForegroundGMM(3, init="quantile").fit(X)
    np.testing.assert_allclose(a.means_, [[0, 0], [4, 1], [8, -2]], atol=0.1)
    b1 = ForegroundGMM(3, seed=11).fit(X)
    b2 = ForegroundGMM(3, seed=11).fit(X)
    np.testing.assert_array_equal(b1.means_, b2.means_)


def test_estimator_rejects_bad_data():
    with pytest.raises(ValueError, match="NaN"):
        ForegroundGMM(2).fit(np.array([[0.0], [np.nan], [1.0]]))
    with pytest.raises(ValueError, match="distinct"):
        ForegroundGMM(4).fit(np.repeat([[0.0], [1.0], [2.0]], 50, axis=0))
    with pytest.raises(ValueError, match="cannot be split"):
        ForegroundGMM(4).fit(np.arange(3.0)[:, None])
    est = ForegroundGMM(3).fit(mixture()[0])
    with pytest.raises(ValueError, match="feature"):
        est.predict_proba(np.zeros((3, 5)))


def test_set_foreground_without_refit():
    X, _ = mixture()
    est = ForegroundGMM(3).fit(X)
    means = est.means_.copy()
    est.set_foreground([0, 1])
    assert est.foreground_components_ == (0, 1)
    np.testing.assert_array_equal(est.means_, means)
    np.testing.assert_allclose(est.predict_proba(X)[:, 1], est.component_proba(X)[:, :2].sum(axis=1), atol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        est.set_foreground([3])


# ------------------------------------------------------------------------------------ foreground rules
def test_select_foreground_rules():
    means = [5.0, -1.0, 10.0, 2.0]
    assert select_foreground(means, n_foreground=1) == (2,)
    assert select_foreground(means, n_foreground=2) == (0, 2)
    assert select_foreground(means, components=[3, 1]) == (1, 3)
    assert select_foreground(means, value_range=(1.5, 6.0)) == (0, 3)
    assert select_foreground(means, value_range=(20, 30)) == ()
    with pytest.raises(ValueError):
        select_foreground(means, n_foreground=4)
    with pytest.raises(ValueError):
        select_foreground(means, components=[7])


def test_foreground_range_on_estimator():
    X, _ = mixture()
    est = ForegroundGMM(3, foreground_range=(3.0, 5.0)).fit(X)
    assert est.foreground_components_ == (1,)
    est2 = ForegroundGMM(3, foreground_components=[0]).fit(X)
    assert est2.foreground_components_ == (0,)


# ------------------------------------------------------------------------------------------ pipeline
def test_compute_probability_map_on_phantom():
    flair, t2, mask, lesion = phantom()
    calls = []
    res = compute_probability_map([flair, t2], None, GMMConfig(n_clusters=3, subsample=0),
                                  progress=lambda f, m: calls.append(f))
    assert isinstance(res, GMMResult)
    p = res.probability
    assert p.dtype == np.float32 and p.shape == flair.shape
    assert p.min() >= 0 and p.max() <= 1
    assert np.all(p[~mask] == 0)
    np.testing.assert_array_equal(res.mask, mask)
    assert res.labels.dtype == np.uint8 and set(np.unique(res.labels[mask])) <= {1, 2, 3}
    assert np.all(res.labels[~mask] == 0)
    assert res.foreground_components == (2,)
    # labels ordered by reference mean: the lesion is the brightest label
    assert np.median(res.labels[lesion]) == 3
    means = [flair[res.labels == j].mean() for j in (1, 2, 3)]
    assert means == sorted(means)
    assert np.all(np.diff(res.component_means) > 0)
    from CGCLesionSegLib.metrics import dice
    assert dice(p >= 0.5, lesion) > 0.95
    assert calls and calls[-1] == 1.0
    json.dumps(res.summary())


def test_default_uses_reference_channel_only_and_all_channels_option():
    flair, t2, mask, lesion = phantom()
    r1 = compute_probability_map([flair, t2], None, GMMConfig(n_clusters=3))
    assert r1.model.means_.shape[1] == 1
    r2 = compute_probability_map([flair, t2], None, GMMConfig(n_clusters=3, channels=None))
    assert r2.model.means_.shape[1] == 2


def test_explicit_and_outlier_rules_in_pipeline():
    flair, t2, mask, lesion = phantom()
    res = compute_probability_map([flair], None, GMMConfig(n_clusters=3, foreground_components=(0, 1)))
    assert res.foreground_components == (0, 1)
    np.testing.assert_allclose(res.probability[mask] + compute_probability_map(
        [flair], None, GMMConfig(n_clusters=3)).probability[mask], 1.0, atol=1e-5)
    out = compute_probability_map([flair], None, GMMConfig(n_clusters=3, foreground_rule="outlier", outlier_z=1.0))
    assert out.foreground_components == (2,)
    none = compute_probability_map([flair], None, GMMConfig(n_clusters=3, foreground_rule="outlier", outlier_z=50))
    assert none.foreground_components == (2,) and none.warnings


def test_session_reuses_work():
    flair, t2, mask, lesion = phantom()
    s = ProbabilityMapSession([flair, t2], None, max_cached_fits=2)
    r1 = s.run(GMMConfig(n_clusters=3))
    prepared, means = s.prepared, r1.model.means_
    r2 = s.run(GMMConfig(n_clusters=3, foreground_components=(1, 2)))
    assert s.prepared is prepared and r2.model.means_ is means  # no new normalisation, no refit
    assert r1.model.foreground_components_ == (2,) and r2.model.foreground_components_ == (1, 2)
    assert np.all(r2.probability >= r1.probability - 1e-6)
    r3 = s.run(GMMConfig(n_clusters=4))
    assert s.prepared is prepared and r3.model.means_.shape[0] == 4
    assert s.run(GMMConfig(n_clusters=3)).model.means_ is means   # back to K=3: cached fit
    s.run(GMMConfig(n_clusters=5))
    s.run(GMMConfig(n_clusters=6))                                  # evicts K=3 (cache of 2)
    assert s.run(GMMConfig(n_clusters=3)).model.means_ is not means
    r1.labels[:] = 0                                                # results are copies
    assert s.run(GMMConfig(n_clusters=3)).labels.max() == 3
    s.run(GMMConfig(n_clusters=4, channels=None))
    assert s.prepared is not prepared
    s.clear_fits()
    assert s.run(GMMConfig(n_clusters=4, channels=None)).model.means_.shape == (4, 2)


def test_subsample_is_seeded_and_used():
    flair, _, mask, _ = phantom(shape=(30, 40, 40))
    s = ProbabilityMapSession([flair], None)
    a = s.run(GMMConfig(n_clusters=3, subsample=2000, seed=1))
    assert a.model.n_fit_samples_ == 2000
    b = compute_probability_map([flair], None, GMMConfig(n_clusters=3, subsample=2000, seed=1))
    np.testing.assert_array_equal(a.probability, b.probability)


def test_cancel_and_bic():
    flair, _, mask, _ = phantom()
    with pytest.raises(Cancelled):
        compute_probability_map([flair], None, GMMConfig(n_clusters=3), should_stop=lambda: True)
    prep = G.prepare_data([flair], None, GMMConfig())
    best, scores = G.select_n_clusters_bic(prep, GMMConfig(subsample=0), candidates=(2, 3, 4))
    assert set(scores) == {2, 3, 4} and best == min(scores, key=scores.get)
    assert scores[3] < scores[2]  # three real classes: two tissues + lesion


def test_fit_bic_equals_bic_on_fit_samples():
    X, _ = mixture()
    est = ForegroundGMM(3).fit(X)
    assert math.isclose(est.fit_bic(), est.bic(X), rel_tol=1e-5)


def test_mask_given_explicitly_and_skull_image():
    flair, t2, mask, lesion = phantom(skull=True)
    res = compute_probability_map([flair], mask.astype(np.uint8), GMMConfig(n_clusters=3))
    np.testing.assert_array_equal(res.mask, mask)
    assert np.all(res.probability[~mask] == 0)


# ----------------------------------------------------------------------------------------- bad inputs
@pytest.mark.parametrize("case, word", [
    ("mismatched", "shape"), ("nan", "NaN"), ("inf", "NaN/inf"), ("empty_mask", "mask is empty"),
    ("mask_shape", "mask has shape"), ("constant", "constant"), ("constant_in_mask", "constant"),
    ("too_many_clusters", "distinct"), ("skull_no_mask", "--mask"), ("no_channel", "no input"),
    ("all_zero", "constant"), ("channel_index", "channel"),
])
def test_bad_inputs_raise_clear_errors(case, word):
    flair, t2, mask, _ = phantom()
    channels, m, cfg = [flair, t2], None, GMMConfig(n_clusters=3)
    if case == "mismatched":
        channels = [flair, t2[:, :, :-1]]
    elif case == "nan":
        flair[3, 10, 10] = np.nan
    elif case == "inf":
        t2[3, 10, 10] = np.inf
    elif case == "empty_mask":
        m = np.zeros(flair.shape, np.uint8)
    elif case == "mask_shape":
        m = mask[:, :, :-1]
    elif case == "constant":
        channels = [np.full(flair.shape, 7.0, np.float32)]
    elif case == "constant_in_mask":
        channels, m = [np.where(mask, 5.0, 0.0).astype(np.float32)], mask
    elif case == "too_many_clusters":
        channels = [np.where(mask, np.where(flair > 130, 2.0, 1.0), 0.0).astype(np.float32)]
        cfg = GMMConfig(n_clusters=4)
    elif case == "skull_no_mask":
        channels = [phantom(skull=True)[0]]
    elif case == "no_channel":
        channels = []
    elif case == "all_zero":
        channels = [np.zeros(flair.shape, np.float32)]
    elif case == "channel_index":
        cfg = GMMConfig(n_clusters=3, channels=(0, 5))
    with pytest.raises(ValueError, match=word):
        compute_probability_map(channels, m, cfg)


# ------------------------------------------------------------------------------------------------ CT
def ct_phantom(shape=(24, 48, 48), seed=0, bleed=True):
    """Head CT in HU: air -1000, skull 800, brain 30 (+CSF 5), an acute bleed at 65 HU."""
    rng = np.random.default_rng(seed)
    z, y, x = np.indices(shape, dtype=float)
    c = [(s - 1) / 2 for s in shape]
    r = np.sqrt(((z - c[0]) / (shape[0] * 0.45)) ** 2 + ((y - c[1]) / (shape[1] * 0.45)) ** 2
                + ((x - c[2]) / (shape[2] * 0.45)) ** 2)
    ct = np.full(shape, -1000.0)
    ct[r <= 1.0] = 800.0                      # skull shell
    brain = r <= 0.85
    ct[brain] = 32.0
    csf = brain & (((y - c[1]) ** 2 + (x - c[2]) ** 2) <= 9)
    ct[csf] = 5.0
    bleed_mask = brain & (((z - c[0]) ** 2 + (y - c[1] + 8) ** 2 + (x - c[2] - 6) ** 2) <= 20)
    if bleed:
        ct[bleed_mask] = 65.0
    ct = ct + rng.normal(0, 3, shape)
    return ct.astype(np.float32), brain, bleed_mask


def test_ct_brain_mask_and_blood_rule():
    ct, brain, bleed = ct_phantom()
    m = G.ct_brain_mask(ct)
    assert (m & brain).sum() / brain.sum() > 0.9 and (m & ~brain).sum() < 0.05 * brain.sum()
    res = compute_probability_map([ct], None, GMMConfig(n_clusters=3, modality="ct"))
    assert len(res.foreground_components) == 1
    fg = res.foreground_components[0]
    assert 50 <= res.component_means[fg] <= 90  # in HU
    from CGCLesionSegLib.metrics import dice
    assert dice(res.probability >= 0.5, bleed) > 0.9


def test_ct_without_blood_gives_empty_p_and_warning():
    ct, brain, _ = ct_phantom(bleed=False)
    ct[brain & (ct > 20)] += np.random.default_rng(1).choice([0.0, 10.0], size=int((brain & (ct > 20)).sum()))
    res = compute_probability_map([ct], None, GMMConfig(n_clusters=3, modality="ct"))
    assert res.foreground_components == () and res.warnings
    assert res.probability.max() == 0


def test_ct_window_without_brain_fails_clearly():
    with pytest.raises(ValueError, match="Hounsfield"):
        G.ct_brain_mask(np.full((8, 8, 8), 2000.0, np.float32))


def test_ensemble_is_mean_of_member_maps_and_cached():
    from CGCLesionSegLib.gmm import RECOMMENDED_POSTPROCESS, recommended_config
    flair, _, mask, lesion = phantom()
    cfg = GMMConfig(n_clusters=3, foreground_rule="outlier", outlier_z=1.0, ensemble_clusters=(3, 4), subsample=0)
    s = ProbabilityMapSession([flair], None)
    res = s.run(cfg)
    singles = [compute_probability_map([flair], None, GMMConfig(n_clusters=k, foreground_rule="outlier",
                                                                 outlier_z=1.0, subsample=0)).probability
               for k in (3, 4)]
    np.testing.assert_allclose(res.probability, (singles[0] + singles[1]) / 2, atol=1e-6)
    assert [k for k, _ in res.ensemble_members] == [3, 4]
    assert res.labels.max() == 3  # labels from n_clusters
    means = [f.model.means_ for f in s._fits.values()]
    assert len(means) == 2  # K=3 (display and member) and K=4
    s.run(cfg)
    assert all(a is b for a, b in zip([f.model.means_ for f in s._fits.values()], means))  # no refit
    json.dumps(res.summary())
    rec = recommended_config()
    assert rec.ensemble_clusters == (4, 5, 6, 7, 8) and rec.effective_foreground_rule == "outlier"
    assert RECOMMENDED_POSTPROCESS["keep_largest"] == 1
    r = compute_probability_map([flair], None, recommended_config(subsample=0))
    from CGCLesionSegLib.metrics import dice
    from CGCLesionSegLib.postprocess import binarize
    assert dice(binarize(r.probability, **RECOMMENDED_POSTPROCESS), lesion) > 0.9
    with pytest.raises(ValueError, match="single K"):
        GMMConfig(foreground_components=(1,), ensemble_clusters=(3, 4))
    with pytest.raises(ValueError, match="ensemble_clusters"):
        GMMConfig(ensemble_clusters=(1, 4))
    with pytest.raises(ValueError, match="smallest ensemble"):
        GMMConfig(n_foreground=3, ensemble_clusters=(3, 4))


def test_pipeline_p_equals_slow_posterior_sum():
    """P at mask voxels = Σ_fg posterior, recomputed voxel by voxel with scipy from the fitted model."""
    flair, t2, mask, lesion = phantom()
    s = ProbabilityMapSession([flair, t2], None)
    res = s.run(GMMConfig(n_clusters=3, channels=None, foreground_components=(1, 2)))
    feats = s.prepared.features                      # (n, 2) normalised mask voxels, mask order
    rng = np.random.default_rng(0)
    pick = rng.choice(feats.shape[0], 40, replace=False)
    m = res.model
    ref = slow_posterior(feats[pick].astype(float), m.weights_, m.means_, m.covariances_, "full")[:, [1, 2]].sum(axis=1)
    flat = np.flatnonzero(mask)[pick]
    np.testing.assert_allclose(res.probability.ravel()[flat], ref, atol=1e-4)
    # labels are the arg-max of the same posteriors
    full = slow_posterior(feats[pick].astype(float), m.weights_, m.means_, m.covariances_, "full")
    np.testing.assert_array_equal(res.labels.ravel()[flat], full.argmax(axis=1) + 1)
