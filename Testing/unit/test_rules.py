"""The inference-rule protocol (benchmarks/rules.py, docs/protocols/cgc-v3.toml): the smoothed network is
the same rule as the smoothed P, and the runner uses another protocol's models without training."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import evaluate_cgc  # noqa: E402
import rules  # noqa: E402

V3 = ROOT / "docs" / "protocols" / "cgc-v3.toml"
V6 = ROOT / "docs" / "protocols" / "cgc-v6.toml"
V8 = ROOT / "docs" / "protocols" / "cgc-v8.toml"


def test_smoothed_network_is_the_smoothed_p_rule_applied_to_the_network_map():
    rng = np.random.default_rng(0)
    p = rng.random((12, 14, 16)).astype(np.float32)
    spacing_xyz = (1.0, 1.5, 2.0)
    same = rules.rule_masks(p, p.copy(), 2.0, spacing_xyz)
    assert np.array_equal(same["p_smooth"], same["network_smooth"]) and np.array_equal(same["p"], same["network"])
    # Slow reference: a Gaussian of sigma mm per axis (in voxels: sigma / spacing), then >= 0.5.
    net = np.zeros_like(p)
    net[2:9, 3:11, 4:12] = 0.9
    net[10, 12, 14] = 1.0  # an isolated voxel: kept by the bare threshold, removed by smoothing
    masks = rules.rule_masks(p, net, 2.0, spacing_xyz)
    ref = ndimage.gaussian_filter(net.astype(np.float64), sigma=[2.0 / s for s in reversed(spacing_xyz)],
                                  mode="constant") >= 0.5
    assert masks["network"][10, 12, 14] and not masks["network_smooth"][10, 12, 14]
    # float32 vs float64 may flip a voxel whose value is within rounding of 0.5; nothing else may differ.
    assert (masks["network_smooth"] != ref).sum() <= 2 and masks["network_smooth"][5, 7, 8]


def test_rule_winner_keeps_the_control_unless_clearly_beaten():
    def summary(net, sm):
        return {"flair/x": {"means": {"network": {"dice": net}, "network_smooth": {"dice": sm}}}}
    assert rules.pick_winner(summary(0.74, 0.749), "network", ["network", "network_smooth"]) == "network"
    assert rules.pick_winner(summary(0.74, 0.751), "network", ["network", "network_smooth"]) == "network_smooth"
    assert rules.pick_winner(summary(0.76, 0.75), "network", ["network", "network_smooth"]) == "network"


def _screen_without_models(tmp_path, proto: Path) -> list:
    """Empty case folders (7 labelled, 1 unlabelled) and the arguments that score ``proto``'s screen on them."""
    for group, names in (("brats", [f"c{i}" for i in range(7)]), ("unlabelled", ["u1"])):
        for n in names:
            (tmp_path / group / n).mkdir(parents=True)
    return ["--protocol", str(proto), "--stage", "screen", "--data", str(tmp_path), "--work-dir", str(tmp_path / "w"),
            "--no-write"]


def test_rule_protocol_refuses_until_its_source_models_have_finished(tmp_path):
    argv = _screen_without_models(tmp_path, V3)
    with pytest.raises(SystemExit, match="has not finished these models yet.*robust-st/fold0-seed100"):
        evaluate_cgc.main(argv)
    with pytest.raises(SystemExit, match="is not in"):
        evaluate_cgc.main(["--protocol", str(V3), "--stage", "ablation", "--data", str(tmp_path)])
    assert not (tmp_path / "w" / "screen").exists() or not any((tmp_path / "w" / "screen").rglob("*.pt"))



def test_a_rule_protocol_names_its_columns_and_cgc_v3_keeps_its_own():
    import tomllib
    v3 = tomllib.loads(V3.read_text())
    assert rules.columns_of(v3) == (rules.COLUMNS, rules.DIFFERENCES)
    v6 = tomllib.loads(V6.read_text())
    cols, diffs = rules.columns_of(v6)
    names = [c for c, _ in cols]
    assert names[:2] == ["p", "p_smooth"] and {"network_padded", "default_padded", "gmm_default"} <= set(names)
    assert ("network_padded", "network") in {(a, b) for a, b, _ in diffs}
    with pytest.raises(SystemExit, match="unknown columns"):
        rules.columns_of({"name": "x", "columns": ["network", "netwrk_padded"]})
    with pytest.raises(SystemExit, match="not scored"):
        rules.columns_of({"name": "x", "columns": ["network"], "differences": [["default", "p", "—"]]})


def test_companion_guard_keeps_the_control_when_the_default_output_drops():
    def summary(net, pad, default, default_pad):
        return {"g": {"means": {"network": {"dice": net}, "network_padded": {"dice": pad},
                                "default": {"dice": default}, "default_padded": {"dice": default_pad}}}}
    comp = {"network": "default", "network_padded": "default_padded"}
    pick = lambda *m: rules.pick_winner(summary(*m), "network", ["network", "network_padded"], comp, 0.01)
    assert pick(0.80, 0.83, 0.83, 0.825) == "network_padded"   # default within 0.01
    assert pick(0.80, 0.83, 0.83, 0.815) == "network"          # default drops by 0.015
    assert pick(0.80, 0.805, 0.83, 0.85) == "network"          # network gain not above 0.01
    # a protocol's own winner_margin (cgc-v28: 0.005)
    assert rules.pick_winner(summary(0.80, 0.807, 0.83, 0.83), "network", ["network", "network_padded"], comp, 0.01,
                             0.005) == "network_padded"
    assert rules.pick_winner(summary(0.80, 0.804, 0.83, 0.83), "network", ["network", "network_padded"], comp, 0.01,
                             0.005) == "network"


@pytest.mark.parametrize("proto", [V6, V8])
def test_cgc_v6_and_v8_wait_for_cgc_v5_models(tmp_path, proto):
    argv = _screen_without_models(tmp_path, proto)
    with pytest.raises(SystemExit, match="cgc-v5 has not finished these models yet.*robust-2mm-st/fold0-seed500"):
        evaluate_cgc.main(argv)


def test_output_rule_mask_reproduces_segment_and_varies_only_the_fusion_weight(tmp_path, make_tiny_model):
    from CGCLesionSegLib.inference import InferenceConfig, output_preset, segment_case
    from CGCLesionSegLib.phantom import make_phantom
    from CGCLesionSegLib.postprocess import binarize
    ph = make_phantom(shape_xyz=(40, 40, 24), spacing_xyz=(1.5, 1.5, 1.5), seed=5)
    mods = ["flair", "t1", "t1ce", "t2"]
    model = make_tiny_model(tmp_path / "tiny.pt", mods)
    rng = np.random.default_rng(0)
    p = (rng.random(ph.brain_mask.shape) * 0.4 + 0.6 * (ph.labels > 0)).astype(np.float32) * (ph.brain_mask > 0)
    res = segment_case([ph.channels[m] for m in mods], ph.geometry, mods, model, mask_zyx=ph.brain_mask,
                       config=InferenceConfig(device="cpu", **output_preset("single-lesion")), gmm_probability_zyx=p)
    net, brain = res.network_probability, res.brain_mask
    sp = ph.geometry.spacing  # 1.5 mm: the opening counts millimetres, as `cgcseg segment` does
    assert np.array_equal(rules.output_rule_mask(net, p, brain, 0.5, sp), res.mask.astype(bool))
    # w = 0 and w = 1: the same clean-up on one map alone (brute force: the map itself to binarize)
    for w, alone in ((0.0, net), (1.0, p)):
        ref = binarize(alone, 0.5, fill_holes="2d", keep_largest=1, opening_radius=3, mask_zyx=brain,
                       spacing_xyz=sp).astype(bool)
        assert np.array_equal(rules.output_rule_mask(net, p, brain, w, sp), ref)
    assert rules.output_rule_mask(net, p, brain, 1.0, sp).sum() > 0


def test_each_named_pass_column_comes_from_a_pass_with_that_passes_settings(monkeypatch):
    """``network_<pass>`` / ``default_<pass>`` columns are read from a segmentation made with PASSES[pass]
    (on top of the `single-lesion` preset), in the same case order as the bare pass."""
    from types import SimpleNamespace
    calls = []
    ids = {(): 1, ("x",): 3, ("x", "y", "z"): 4}

    def fake_segment_held_out(model, cases, device="cpu", **config):
        calls.append(config)
        # the pass's id (bare 1, padded 2, mirror x 3, mirror xyz 4) = voxels at >= 0.5; + the case's index
        n = 2 if config.get("pad_to_window") else ids[tuple(config.get("mirror_axes", ()))]
        for i, name in enumerate(cases):
            flat = np.zeros(27, np.float32)
            flat[:n + i] = 0.9
            res = SimpleNamespace(network_probability=flat.reshape(3, 3, 3), mask=(flat.reshape(3, 3, 3) > 0).astype(np.uint8),
                                  brain_mask=np.ones((3, 3, 3), bool), window_xyz=(3, 3, 3))
            yield SimpleNamespace(name=name, geometry=SimpleNamespace(spacing=(1, 1, 1))), np.zeros((3, 3, 3)), res, None, None

    monkeypatch.setattr(rules.base, "segment_held_out", fake_segment_held_out)
    monkeypatch.setattr(rules.base, "score_row", lambda model, case, info, masks, sigma, **extra: (case.name, masks))
    names = ["network", "default", "network_mirror_x", "default_mirror_xyz", "network_padded", "default_padded"]
    rows = rules._score_with_output_rule(None, {"a": None, "b": None}, 2.0, "cpu", names)
    assert [r[0] for r in rows] == ["a", "b"] and len(calls) == 4
    assert all(c["keep_largest"] == 1 and c["gmm_weight"] == 0.5 for c in calls)  # every pass: the preset
    for i, (_, masks) in enumerate(rows):
        got = {c: int(m.sum()) - i for c, m in masks.items()}
        assert got == {"network": 1, "default": 1, "network_mirror_x": 3, "default_mirror_xyz": 4,
                       "network_padded": 2, "default_padded": 2}, got
    # a pass that no column names is not run
    calls.clear()
    list(rules._score_with_output_rule(None, {"a": None}, 2.0, "cpu", ["network", "default_mirror_x"]))
    assert [tuple(c.get("mirror_axes", ())) for c in calls] == [(), ("x",)]


def test_seed_ensemble_averages_the_groups_healthy_models_maps_case_by_case(tmp_path, monkeypatch):
    """``network_ensemble`` / ``default_ensemble``: the mean of the network maps of the fold's models of every
    seed (brute force here: a per-voxel loop), a collapsed member left out, other folds ignored; every seed's
    row carries the same ensemble."""
    import json
    from types import SimpleNamespace
    from CGCLesionSegLib.postprocess import binarize
    shape = (12, 12, 12)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    p = np.random.default_rng(99).random(shape).astype(np.float32)

    def net_map(model, case):  # a fixed map per (model, case)
        return np.random.default_rng(hash((model.seed, model.fold, case)) % 2**32).random(shape).astype(np.float32)

    def fake_segment_held_out(model, cases, device="cpu", **config):
        for name in cases:
            own = net_map(model, name)  # its default output, as `cgcseg segment` makes it (the runner checks this)
            res = SimpleNamespace(network_probability=own, mask=rules.output_rule_mask(own, p, brain, 0.5).astype(np.uint8),
                                  brain_mask=brain, window_xyz=(12, 12, 12))
            yield SimpleNamespace(name=name, geometry=SimpleNamespace(spacing=(1, 1, 1))), p, res, None, None

    p_rec = np.random.default_rng(98).random(shape).astype(np.float32)  # `cgcseg gmm`'s map, another than P
    monkeypatch.setattr(rules.base, "segment_held_out", fake_segment_held_out)
    monkeypatch.setattr(rules.base, "gmm_default_probability", lambda case, mods: p_rec)
    monkeypatch.setattr(rules.base, "score_row", lambda model, case, info, masks, sigma, **extra: (case.name, masks, extra))
    mk = lambda fold, seed: rules.base.Model(("flair",), "v", fold, seed, tmp_path / f"f{fold}s{seed}", [], [])
    models = [mk(0, 2), mk(0, 1), mk(0, 3), mk(1, 1)]
    for m in models:
        m.run.mkdir()
    (models[2].run / "lesion_check.json").write_text(json.dumps({"ratio": 0.0, "collapsed": True}))
    assert [m.seed for m in rules.ensemble_members(models[0], models)] == [1, 2]
    names = ["network", "network_ensemble", "default_ensemble", "default_rec_03_ensemble"]
    per_seed = {m.seed: rules._score_with_output_rule(m, {"a": None, "b": None}, 2.0, "cpu", names, models)
                for m in models[:3]}
    for i, case in enumerate(["a", "b"]):
        ref = np.zeros(shape, np.float32)
        for z, y, x in np.ndindex(*shape):
            ref[z, y, x] = (net_map(models[1], case)[z, y, x] + net_map(models[0], case)[z, y, x]) / 2
        want_default = binarize(0.5 * ref + 0.5 * p, 0.5, fill_holes="2d", keep_largest=1, opening_radius=3,
                                mask_zyx=brain).astype(bool)
        want_shipped = binarize(0.5 * ref + 0.5 * p_rec, 0.3, fill_holes="2d", keep_largest=1, opening_radius=3,
                                mask_zyx=brain).astype(bool)
        assert want_shipped.any() and not np.array_equal(want_shipped, want_default)
        for seed, rows in per_seed.items():
            name, masks, extra = rows[i]
            assert name == case and extra["ensemble"] == ["flair/v/fold0-seed1", "flair/v/fold0-seed2"]
            assert np.array_equal(masks["network_ensemble"], ref >= 0.5)
            assert np.array_equal(masks["default_ensemble"], want_default)
            assert np.array_equal(masks["default_rec_03_ensemble"], want_shipped)
            assert np.array_equal(masks["network"], net_map(models[[2, 1, 3].index(seed)], case) >= 0.5)
    # every member collapsed: all are kept rather than none
    for m in models[:3]:
        (m.run / "lesion_check.json").write_text(json.dumps({"ratio": 0.0, "collapsed": True}))
    assert [m.seed for m in rules.ensemble_members(models[1], models)] == [1, 2, 3]


def _one_case_scorer(monkeypatch, net, p, p_rec, brain):
    """``names -> (masks, extra)`` of :func:`rules._score_with_output_rule` for one held-out case "a" (1 mm
    voxels) whose segmentation gives the network map ``net``, P ``p`` and brain ``brain``, with ``p_rec`` as
    ``cgcseg gmm``'s map; no model or image is read. Arrays ``(Z, Y, X)``."""
    from types import SimpleNamespace

    def fake_segment_held_out(model, cases, device="cpu", **config):
        res = SimpleNamespace(network_probability=net, mask=rules.output_rule_mask(net, p, brain, 0.5).astype(np.uint8),
                              brain_mask=brain, window_xyz=tuple(reversed(net.shape)))
        yield SimpleNamespace(name="a", geometry=SimpleNamespace(spacing=(1.0, 1.0, 1.0))), p, res, None, None

    monkeypatch.setattr(rules.base, "segment_held_out", fake_segment_held_out)
    monkeypatch.setattr(rules.base, "gmm_default_probability", lambda case, mods: p_rec)
    monkeypatch.setattr(rules.base, "score_row", lambda model, case, info, masks, sigma, **extra: (masks, extra))
    model = SimpleNamespace(modalities=("flair",), run=Path("/nonexistent"))
    return lambda names: rules._score_with_output_rule(model, {"a": None}, 2.0, "cpu", names)[0]


def test_default_rec_fuses_the_network_with_the_cgcseg_gmm_map(monkeypatch):
    """``default_rec`` = the `single-lesion` rule on 0.5·network + 0.5·P_rec (``cgcseg gmm``'s map), not on the
    model's own P; brute force: binarize with the preset's clean-up."""
    from CGCLesionSegLib.postprocess import binarize
    shape = (12, 12, 12)
    rng = np.random.default_rng(3)
    net, p_own, p_rec = (rng.random(shape).astype(np.float32) for _ in range(3))
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True

    score = _one_case_scorer(monkeypatch, net, p_own, p_rec, brain)
    masks, _ = score(["default", "default_rec"])
    want = binarize(0.5 * net + 0.5 * p_rec, 0.5, fill_holes="2d", keep_largest=1, opening_radius=3, mask_zyx=brain)
    assert np.array_equal(masks["default_rec"], want.astype(bool))
    assert not np.array_equal(masks["default_rec"], masks["default"])  # the model's own P gives another mask
    # the network's baseline in that rule: the same fusion with smoothed P (the p_smooth column's map) for it
    from scipy.ndimage import gaussian_filter
    masks, _ = score(["default_rec", "default_rec_psmooth"])
    smoothed = np.clip(gaussian_filter(p_own, sigma=2.0, mode="constant"), 0, 1)  # 1 mm voxels; zero beyond the edge
    want = binarize(0.5 * smoothed + 0.5 * p_rec, 0.5, fill_holes="2d", keep_largest=1, opening_radius=3, mask_zyx=brain)
    assert np.array_equal(masks["default_rec_psmooth"], want.astype(bool))
    assert not np.array_equal(masks["default_rec_psmooth"], masks["default_rec"])


@pytest.mark.parametrize("name, screen, confirm", [
    ("cgc-v10", ("cgc-v5", "seed500"), ("cgc-v9", "900", "901")),
    ("cgc-v11", ("cgc-v5", "seed500"), ("cgc-v9", "900", "901")),
    ("cgc-v18", ("cgc-v13", "seed900"), ("cgc-v17", "1700", "1701"))])
def test_each_stage_reads_the_models_of_its_own_source_protocol(tmp_path, name, screen, confirm):
    """cgc-v10 / cgc-v11 name a source per stage: the screen scores cgc-v5's screen models, the confirmation
    cgc-v9's confirmation models (seeds 900/901, both model sets), and each waits for its own; cgc-v18
    screens on cgc-v13's screen models and confirms on cgc-v17's confirmation models (fresh seeds)."""
    proto = ROOT / "docs" / "protocols" / f"{name}.toml"
    argv = _screen_without_models(tmp_path, proto)
    with pytest.raises(SystemExit, match=f"{screen[0]} has not finished these models yet.*robust-2mm-st/fold0-{screen[1]}"):
        evaluate_cgc.main(argv)
    src, first, last = confirm
    with pytest.raises(SystemExit, match=rf"{src} has not finished these models yet.*flair-t1-t1ce-t2/robust-2mm-st/"
                                         rf"fold0-seed{first}.*flair/robust-2mm-st/fold1-seed{last}"):
        evaluate_cgc.main([a if a != "screen" else "confirm" for a in argv])


def _metrics(pred, ref):
    from CGCLesionSegLib.metrics import all_metrics
    return all_metrics(pred, ref, (1.0, 1.0, 1.0))


def _smooth_maps(seed: int):
    """``(net, p, p_rec, brain)``: three smooth random maps in [0, 1] and a brain one voxel inside the edge,
    ``(14, 14, 14)``."""
    from scipy.ndimage import gaussian_filter
    rng = np.random.default_rng(seed)
    maps = [gaussian_filter(rng.random((14, 14, 14)), 1.5).astype(np.float32) for _ in range(3)]
    net, p, p_rec = ((m - m.min()) / (m.max() - m.min()) for m in maps)
    brain = np.zeros(net.shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    return net, p, p_rec, brain


def test_threshold_sweep_matches_thresholding_each_map_by_hand(monkeypatch):
    """cgc-v18's sweep: at every threshold, each family's metrics are those of its map thresholded and
    cleaned up by hand (network ≥ t; the shipped rule at t on 0.5·network + 0.5·P_rec; ``cgcseg gmm``'s
    clean-up on P_rec at t; P smoothed with each fold's sigma ≥ t)."""
    from types import SimpleNamespace
    from scipy.ndimage import gaussian_filter
    from CGCLesionSegLib.postprocess import binarize
    net, p, p_rec, brain = _smooth_maps(7)
    shape = net.shape
    ref = np.zeros(shape, bool)
    ref[3:10, 4:11, 2:9] = True
    case = SimpleNamespace(name="a", geometry=SimpleNamespace(spacing=(1.0, 1.0, 1.0)), reference=ref,
                           brain=lambda mods: brain)
    res = SimpleNamespace(network_probability=net, brain_mask=brain)
    monkeypatch.setattr(rules.base, "gmm_default_probability", lambda c, mods: p_rec)
    ts = (0.3, 0.5, 0.6)
    sweep = rules.threshold_sweep(case, ["flair"], p, res, ts, {0: 1.0, 1: 2.0})
    assert set(sweep) == {"network", "default_rec", "gmm_default", "p_smooth@0", "p_smooth@1"}
    for t in ts:
        k = f"{t:.2f}"
        assert sweep["network"][k] == _metrics(net >= t, ref)
        fused = binarize(0.5 * net + 0.5 * p_rec, t, fill_holes="2d", keep_largest=1, opening_radius=3, mask_zyx=brain,
                         spacing_xyz=(1.0, 1.0, 1.0))
        assert sweep["default_rec"][k] == _metrics(fused.astype(bool), ref)
        gmm = binarize(p_rec, t, fill_holes="2d", keep_largest=1, opening_radius=3, mask_zyx=brain,
                       spacing_xyz=(1.0, 1.0, 1.0))
        assert sweep["gmm_default"][k] == _metrics(gmm.astype(bool), ref)
        for fold, s in ((0, 1.0), (1, 2.0)):
            sm = np.clip(gaussian_filter(p.astype(np.float64), s, mode="constant"), 0, 1)
            got = sweep[f"p_smooth@{fold}"][k]
            assert abs(got["dice"] - _metrics(sm >= t, ref)["dice"]) < 0.02  # float32 rounding at the edge
    # the thresholds change the masks (else the test would be vacuous)
    assert sweep["network"]["0.30"]["dice"] != sweep["network"]["0.60"]["dice"]


def _sweep_row(case, fold, seed, by_t, mods=("flair",)):
    """A row whose every family has Dice ``by_t`` ({"0.40": d}); the 0.5 columns copied from it."""
    fams = {f: {t: {"dice": d, "sensitivity": d, "precision": d, "hd95_mm": 1.0, "assd_mm": 1.0}
                for t, d in by_t.items()} for f in ("network", "default_rec", "gmm_default", "p_smooth@0", "p_smooth@1")}
    return {"case": case, "fold": fold, "seed": seed, "variant": "v", "modalities": list(mods), "model": f"m{fold}{seed}",
            "sweep": fams, "network": dict(fams["network"]["0.50"])}


def test_each_folds_threshold_is_chosen_on_the_other_folds_rows_only():
    rows = [_sweep_row("a", 0, 1, {"0.40": 0.9, "0.50": 0.5, "0.60": 0.1}),
            _sweep_row("b", 0, 1, {"0.40": 0.8, "0.50": 0.5, "0.60": 0.2}),
            _sweep_row("c", 1, 1, {"0.40": 0.1, "0.50": 0.5, "0.60": 0.7}),
            # two seeds of case d: averaged first, so d weighs as much as c
            _sweep_row("d", 1, 1, {"0.40": 0.2, "0.50": 0.5, "0.60": 0.9}),
            _sweep_row("d", 1, 2, {"0.40": 0.2, "0.50": 0.5, "0.60": 0.9})]
    choice = rules.choose_thresholds(rows)
    # fold 0 (held out a, b) takes the threshold that is best on c, d — 0.6 — although 0.4 is best on a, b
    assert choice["flair/v fold 0"]["network_t"]["threshold"] == 0.6
    assert choice["flair/v fold 1"]["network_t"]["threshold"] == 0.4
    assert choice["flair/v fold 0"]["network_t"]["scores"]["0.60"] == pytest.approx(0.8)
    assert rows[0]["network_t"]["dice"] == 0.1 and rows[2]["network_t"]["dice"] == 0.1
    assert rows[0]["thresholds"] == {c: 0.6 for c in rules.THRESHOLD_COLUMNS}
    # a held-out case's own labels cannot move its fold's threshold
    rows[0]["sweep"]["network"]["0.60"]["dice"] = 0.0
    assert rules.choose_thresholds(rows)["flair/v fold 0"]["network_t"]["threshold"] == 0.6
    # p_smooth: fold 0's threshold is read from the other fold's rows smoothed with fold 0's sigma
    rows[2]["sweep"]["p_smooth@0"]["0.40"]["dice"] = rows[3]["sweep"]["p_smooth@0"]["0.40"]["dice"] = 1.0
    rows[4]["sweep"]["p_smooth@0"]["0.40"]["dice"] = 1.0
    again = rules.choose_thresholds(rows)
    assert again["flair/v fold 0"]["p_smooth_t"]["threshold"] == 0.4
    assert again["flair/v fold 0"]["network_t"]["threshold"] == 0.6
    assert rows[0]["p_smooth_t"] == rows[0]["sweep"]["p_smooth@0"]["0.40"]
    with pytest.raises(SystemExit, match="no other fold"):
        rules.choose_thresholds([r for r in rows if r["fold"] == 0])


def test_threshold_ties_go_to_the_value_nearer_one_half_then_the_higher():
    assert rules._best_threshold({"0.40": 0.7, "0.50": 0.7, "0.60": 0.6}) == "0.50"
    assert rules._best_threshold({"0.40": 0.7, "0.45": 0.6, "0.55": 0.6, "0.60": 0.7}) == "0.60"
    assert rules._best_threshold({"0.30": 0.7000000001, "0.50": 0.7}) == "0.50"  # float noise does not decide
    assert rules._best_threshold({"0.30": 0.71, "0.50": 0.7}) == "0.30"


def test_a_threshold_decision_needs_its_gain_and_more_than_its_baseline_gains():
    def summary(rule, control, brule, base):
        means = {"network_t": rule, "network": control, "p_smooth_t": brule, "p_smooth": base}
        return {"g": {"means": {k: {"dice": v} for k, v in means.items()}}}
    d = [{"name": "net", "rule": "network_t", "control": "network", "baseline_rule": "p_smooth_t", "baseline": "p_smooth"}]
    assert rules.decide(summary(0.80, 0.78, 0.76, 0.76), d, 0.01)["net"]["g"]["passes"]       # +0.02, baseline flat
    assert not rules.decide(summary(0.80, 0.78, 0.78, 0.76), d, 0.01)["net"]["g"]["passes"]   # baseline gains as much
    assert not rules.decide(summary(0.785, 0.78, 0.70, 0.76), d, 0.01)["net"]["g"]["passes"]  # gain only +0.005
    got = rules.decide(summary(0.80, 0.78, 0.765, 0.76), d, 0.01)["net"]["g"]
    assert got["gain"] == pytest.approx(0.02) and got["gain_over_baseline"] == pytest.approx(0.015) and got["passes"]


def test_the_sweep_must_reproduce_the_half_threshold_columns():
    row = _sweep_row("a", 0, 1, {"0.50": 0.5})
    rules.check_sweep_at_half([row])
    row["network"] = {"dice": 0.49}
    with pytest.raises(RuntimeError, match="sweep of network at 0.5"):
        rules.check_sweep_at_half([row])


def test_threshold_columns_summarise_decide_and_report_like_the_runner():
    """The runner's chain on cgc-v18's own columns: rows with sweeps -> the half-threshold check -> fold
    choices -> summary -> declared decisions -> report text (one group, two folds, two cases each)."""
    import tomllib
    proto = tomllib.loads((ROOT / "docs" / "protocols" / "cgc-v18.toml").read_text())
    columns, differences = rules.columns_of(proto)
    rows = []
    for case, fold, best in (("a", 0, 0.40), ("b", 0, 0.40), ("c", 1, 0.60), ("d", 1, 0.60)):
        by_t = {f"{t:.2f}": 0.8 - abs(t - best) for t in proto["thresholds"]}
        r = _sweep_row(case, fold, 1, by_t, mods=("flair", "t1"))
        r.update(sigma_mm=2.0, step=300)
        for col in ("p", "p_smooth", "gmm_default", "default_rec"):
            r[col] = dict(r["sweep"]["network"]["0.50"])
        rows.append(r)
    rules.check_sweep_at_half(rows)
    choice = rules.choose_thresholds(rows)
    assert choice["flair-t1/v fold 0"]["default_rec_t"]["threshold"] == 0.6  # read on fold 1's cases
    summary = rules.base.summarise(rows, proto, columns, differences)
    g = summary["flair-t1/v"]
    assert g["means"]["network_t"]["dice"] == pytest.approx(0.6) and g["means"]["network"]["dice"] == pytest.approx(0.7)
    decisions = rules.decide(summary, proto["decisions"], proto["margin"])
    assert set(decisions) == {"network threshold", "default-output threshold"}
    assert not decisions["network threshold"]["flair-t1/v"]["passes"]  # each fold's choice is wrong for the other
    text = rules.threshold_report(choice, decisions)
    assert "| flair-t1/v fold 0 | network_t | 0.60 | 0.8000 (0.7000) |" in text and "| no |" in text


V23 = ROOT / "docs" / "protocols" / "cgc-v23.toml"


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_volume_threshold_keeps_the_top_voxels_of_the_brain(seed):
    """cgc-v23's rule against a brute-force reference: sort the brain's values, the V-th largest is t,
    and map ≥ t inside the brain holds exactly V voxels (continuous values: no ties)."""
    rng = np.random.default_rng(seed)
    values = rng.random((9, 10, 11))
    values[0] = 5.0  # outside the brain: larger than anything inside, must not count
    brain = np.zeros(values.shape, bool)
    brain[1:-1, 2:, :-3] = True
    inside = sorted(values[brain].tolist(), reverse=True)
    for v in (1, 7, int(rng.integers(2, brain.sum() - 1)), int(brain.sum())):
        mask, t = rules.volume_matched(values, brain, v)
        assert t == inside[v - 1] and mask.sum() == v and not mask[~brain].any()
        assert values[mask].min() >= values[brain & ~mask].max() if v < brain.sum() else mask.sum() == brain.sum()
    mask, t = rules.volume_matched(values, brain, 0)
    assert t == float("inf") and not mask.any()
    assert rules.volume_matched(values, brain, 10 ** 6)[0].sum() == brain.sum()
    # a plateau at the cut keeps all of its voxels rather than an arbitrary subset
    flat = np.where(brain, 0.5, 0.0)
    flat[2, 3, 4] = 0.9
    assert rules.volume_matched(flat, brain, 2)[0].sum() == brain.sum()


def test_volume_columns_keep_p_s_volume_and_the_default_output_p_rec_s(monkeypatch):
    """cgc-v23's columns by hand: the network and the smoothed P keep as many brain voxels as P ≥ 0.5; the
    default output thresholds 0.5·network + 0.5·P_rec where it keeps P_rec ≥ 0.5's voxels, then cleans up;
    ``default_rec_03`` is the same rule at 0.3. Thresholds and volumes are recorded in the row."""
    from scipy.ndimage import gaussian_filter
    from CGCLesionSegLib.postprocess import binarize
    net, p, p_rec, brain = _smooth_maps(11)
    shape = net.shape
    p = np.where(brain, p, 0).astype(np.float32)

    score = _one_case_scorer(monkeypatch, net, p, p_rec, brain)
    masks, extra = score(["network", "network_vol", "p_smooth_vol", "default_rec_03", "default_rec_vol"])
    v = int((p >= 0.5).sum())
    top = np.zeros(brain.sum(), bool)
    top[np.argsort(-net[brain], kind="stable")[:v]] = True
    want = np.zeros(shape, bool)
    want[brain] = top
    assert masks["network_vol"].sum() == v and np.array_equal(masks["network_vol"], want)
    assert not np.array_equal(masks["network_vol"], masks["network"])  # else the check would be vacuous
    assert masks["p_smooth_vol"].sum() == v
    smoothed = np.clip(gaussian_filter(p.astype(np.float64), 2.0, mode="constant"), 0, 1)
    ranked = np.sort(smoothed[brain])[::-1]
    assert extra["volumes"]["p_smooth_vol_t"] == pytest.approx(ranked[v - 1], abs=1e-6)
    fused = 0.5 * net + 0.5 * p_rec
    clean = dict(fill_holes="2d", keep_largest=1, opening_radius=3, mask_zyx=brain, spacing_xyz=(1.0, 1.0, 1.0))
    assert np.array_equal(masks["default_rec_03"], binarize(fused, 0.3, **clean).astype(bool))
    v_rec = int(((p_rec >= 0.5) & brain).sum())
    t_rec = np.sort(fused[brain])[::-1][v_rec - 1]
    assert np.array_equal(masks["default_rec_vol"], binarize(fused, t_rec, **clean).astype(bool))
    assert extra["volumes"]["p_voxels"] == v and extra["volumes"]["p_rec_voxels"] == v_rec
    assert extra["volumes"]["network_voxels"] == int(((net >= 0.5) & brain).sum())  # counted in the brain


def _confirm_waits_for(tmp_path, proto_path: Path, message: str) -> dict:
    """Scoring ``proto_path``'s stage ``confirm`` without its source models stops with ``message`` (a regex);
    returns the protocol, parsed."""
    import tomllib
    argv = _screen_without_models(tmp_path, proto_path)
    with pytest.raises(SystemExit, match=message):
        evaluate_cgc.main([a if a != "screen" else "confirm" for a in argv])
    return tomllib.loads(proto_path.read_text())


def test_cgc_v23_reads_cgc_v22s_control_models_and_decides_without_a_sweep(tmp_path):
    """cgc-v23 scores cgc-v22's confirmation control (fresh seeds 1700/1701, both sets) and waits for it; its
    declared decisions are read from the summary and reported although it sweeps no threshold."""
    proto = _confirm_waits_for(tmp_path, V23, r"cgc-v22 has not finished these models yet.*flair-t1-t1ce-t2/"
                                              r"robust-2mm-st/fold0-seed1700.*flair/robust-2mm-st/fold1-seed1701")
    columns, differences = rules.columns_of(proto)
    assert not rules.THRESHOLD_COLUMNS.keys() & {c for c, _ in columns}
    rows = []
    for case, fold, gain in (("a", 0, 0.05), ("b", 0, 0.03), ("c", 1, 0.0), ("d", 1, 0.04)):
        m = lambda d: {"dice": d, "sensitivity": d, "precision": d, "hd95_mm": 1.0, "assd_mm": 1.0}  # noqa: E731
        r = {"case": case, "fold": fold, "seed": 1, "variant": "v", "modalities": ["flair"], "model": f"m{fold}",
             "sigma_mm": 2.0, "step": 300, "volumes": {"p_voxels": 100, "network_voxels": 80, "network_vol_t": 0.4}}
        r.update({c: m(0.7) for c, _ in columns})
        r["network_vol"] = m(0.7 + gain)
        r["default_rec_vol"] = m(0.7 + gain / 10)
        rows.append(r)
    summary = rules.base.summarise(rows, proto, columns, differences)
    decisions = rules.decide(summary, proto["decisions"], proto["margin"])
    assert decisions["network volume rule"]["flair/v"]["passes"]  # +0.03 over the control and over its baseline
    assert not decisions["default-output volume rule"]["flair/v"]["passes"]  # +0.003
    text = rules.decision_report(decisions) + rules.volume_report(rows)
    assert "| network volume rule" in text and "**yes**" in text and "| flair | a | 100 | 0.80 | 0.400 |" in text


def test_cgc_v25_waits_for_cgc_v24s_confirmation_rival_and_sweeps_a_wider_grid(tmp_path):
    """cgc-v25 scores cgc-v24's confirmation rival (`robust-2mm-std`, seeds 2400/2401, both sets) with cgc-v18's
    threshold rule on a grid reaching below 0.3 (and holding 0.5, which the runner requires)."""
    proto = _confirm_waits_for(tmp_path, ROOT / "docs" / "protocols" / "cgc-v25.toml",
                               r"cgc-v24 has not finished these models yet.*flair-t1-t1ce-t2/robust-2mm-std/"
                               r"fold0-seed2400.*flair/robust-2mm-std/fold1-seed2401")
    columns, _ = rules.columns_of(proto)
    assert rules.THRESHOLD_COLUMNS.keys() <= {c for c, _ in columns} and min(proto["thresholds"]) < 0.3
    assert 0.5 in proto["thresholds"]


def test_a_per_set_stage_decides_each_model_set_alone_and_may_be_scored_one_set_at_a_time():
    """cgc-v28's confirmation (``winner_per_set``): each set's winner by its own numbers, where the pooled rule
    would average them; ``--model-set`` is then allowed although the stage has a winner rule."""
    import protocol
    groups = {"flair-t1-t1ce-t2/v": {"modalities": "flair-t1-t1ce-t2", "means": {
                  "network": {"dice": 0.80}, "network_ensemble": {"dice": 0.81},
                  "default_rec_03": {"dice": 0.86}, "default_rec_03_ensemble": {"dice": 0.86}}},
              "flair/v": {"modalities": "flair", "means": {
                  "network": {"dice": 0.80}, "network_ensemble": {"dice": 0.802},
                  "default_rec_03": {"dice": 0.86}, "default_rec_03_ensemble": {"dice": 0.86}}}}
    proto = {"control": "network", "rules": ["network", "network_ensemble"], "winner_margin": 0.005,
             "companions": {"network": "default_rec_03", "network_ensemble": "default_rec_03_ensemble"}}
    pooled, per_set = {"winner_rule": "pooled"}, {"winner_rule": "per set", "winner_per_set": True}
    assert rules.stage_winner(groups, proto, pooled) == "network_ensemble"  # mean gain 0.006 > 0.005
    assert rules.stage_winner(groups, proto, per_set) == ("flair-t1-t1ce-t2: `network_ensemble`; flair: `network`")
    assert rules.stage_winner({}, proto, per_set) is None and rules.stage_winner(groups, proto, {}) is None
    mk = lambda mods: protocol.Model(mods, "v", 0, 1, Path("/nonexistent"), [], [])
    models = [mk(("flair",)), mk(("flair", "t1", "t1ce", "t2"))]
    with pytest.raises(SystemExit, match="averages over its model sets"):
        protocol.only_model_set(models, ["flair"], pooled)
    kept, tag = protocol.only_model_set(models, ["flair"], per_set)
    assert kept == models[:1] and tag == "-flair"


def _ensemble_case(monkeypatch, seed: int):
    """A held-out case for an ensemble sweep: ``(case, res, net, other, p, p_rec, brain, ref)`` — two members' smooth
    maps ``net`` (the row's own, in ``res``) and ``other``, the model's P, `cgcseg gmm`'s P_rec (patched in), the brain
    and a box reference, all ``(14, 14, 14)`` on a 1 mm grid."""
    from types import SimpleNamespace
    net, p, p_rec, brain = _smooth_maps(seed)
    other = _smooth_maps(seed + 1)[0]
    ref = np.zeros(net.shape, bool)
    ref[3:10, 4:11, 2:9] = True
    case = SimpleNamespace(name="a", geometry=SimpleNamespace(spacing=(1.0, 1.0, 1.0)), reference=ref,
                           brain=lambda mods: brain)
    monkeypatch.setattr(rules.base, "gmm_default_probability", lambda c, mods: p_rec)
    return case, SimpleNamespace(network_probability=net, brain_mask=brain), net, other, p, p_rec, brain, ref


def test_the_ensemble_sweep_is_the_shipped_rule_on_the_mean_map_and_is_shared_by_the_folds_seeds(monkeypatch):
    """cgc-v29's family: at t >= 0.5 the shipped rule (lesion chosen as at 0.5 = by size there) is ``binarize``'s
    clean-up of 0.5·mean map + 0.5·P_rec by hand; below 0.5 it is ``single-lesion-recommended`` at t; a second
    seed of the fold (same members) reads the memo, not its own network map; only the named families run."""
    from types import SimpleNamespace
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset
    from CGCLesionSegLib.postprocess import binarize
    case, res, net, other, p, p_rec, brain, ref = _ensemble_case(monkeypatch, 11)
    mean = 0.5 * (net + other)
    ts = (0.3, 0.5, 0.6)
    sweep = rules.threshold_sweep(case, ["flair"], p, res, ts, {}, {"default_rec_ensemble", "gmm_default"},
                                  (("m0", "m1"), mean))
    assert set(sweep) == {"default_rec_ensemble", "gmm_default"}
    fused = 0.5 * mean + 0.5 * p_rec
    for t in (0.5, 0.6):
        by_hand = binarize(fused, t, fill_holes="2d", keep_largest=1, opening_radius=3, mask_zyx=brain,
                           spacing_xyz=(1.0, 1.0, 1.0)).astype(bool)
        assert sweep["default_rec_ensemble"][f"{t:.2f}"] == _metrics(by_hand, ref)
    shipped = InferenceConfig(**{**output_preset("single-lesion-recommended"), "threshold": 0.3})
    assert shipped.lesion_choice == "seed"
    assert sweep["default_rec_ensemble"]["0.30"] == _metrics(output_mask(fused, brain, shipped, (1.0, 1.0, 1.0)).astype(bool), ref)
    assert sweep["default_rec_ensemble"]["0.30"]["dice"] != sweep["default_rec_ensemble"]["0.60"]["dice"]
    # the fold's other seed: same members, another network map of its own -> the same (memoised) sweep
    res2 = SimpleNamespace(network_probability=other, brain_mask=brain)
    again = rules.threshold_sweep(case, ["flair"], p, res2, ts, {}, {"default_rec_ensemble"}, (("m0", "m1"), None))
    assert again["default_rec_ensemble"] == sweep["default_rec_ensemble"]
    with pytest.raises(ValueError, match="mean map"):
        rules.threshold_sweep(case, ["flair"], p, res, ts, {}, {"default_rec_ensemble"}, None)


def _loo_by_brute_force(rows, family):
    """{case: threshold}: for each case, every grid value's mean over the other cases (seeds averaged), the
    best by the tie rule — written out with plain loops."""
    cases = sorted({r["case"] for r in rows})
    grid = sorted(rows[0]["sweep"][family], key=float)
    out = {}
    for c in cases:
        best, best_key = None, None
        for t in grid:
            total = 0.0
            for o in cases:
                if o == c:
                    continue
                vals = [r["sweep"][family][t]["dice"] for r in rows if r["case"] == o]
                total += sum(vals) / len(vals)
            score = round(total / (len(cases) - 1), 6)
            key = (score, -abs(float(t) - 0.5), float(t))
            if best_key is None or key > best_key:
                best, best_key = t, key
        out[c] = float(best)
    return out


@pytest.mark.parametrize("seed", range(5))
def test_leave_one_out_thresholds_match_a_brute_force_choice_and_ignore_the_cases_own_labels(seed):
    rng = np.random.default_rng(seed)
    grid = ["0.20", "0.30", "0.40", "0.50", "0.60"]
    rows = []
    for i, case in enumerate("abcdefg"):
        for s in (1, 2):
            by_t = {t: float(np.round(rng.random(), 2)) for t in grid}  # rounded: ties happen
            r = _sweep_row(case, i % 2, s, by_t)
            r["sweep"]["default_rec_ensemble"] = {t: dict(m) for t, m in r["sweep"]["default_rec"].items()}
            rows.append(r)
    choice = rules.choose_leave_one_out(rows, ["gmm_default", "gmm_default_loo", "default_rec_loo_ensemble"])
    got = choice["flair/v"]
    assert set(got) == {"gmm_default_loo", "default_rec_loo_ensemble"}
    for col, fam in [("default_rec_loo_ensemble", "default_rec_ensemble"), ("gmm_default_loo", "gmm_default")]:
        assert rules.LOO_COLUMNS[col] == fam
        want = _loo_by_brute_force(rows, fam)
        assert {c: v["threshold"] for c, v in got[col]["per_case"].items()} == want
        for r in rows:
            t = f"{want[r['case']]:.2f}"
            assert r[col] == r["sweep"][fam][t] and r["thresholds"][col] == want[r["case"]]
    # the threshold over every case is the best mean over all of them
    all_scores = {t: np.mean([np.mean([r["sweep"]["gmm_default"][t]["dice"] for r in rows if r["case"] == c])
                              for c in "abcdefg"]) for t in grid}
    assert got["gmm_default_loo"]["all"]["scores"]["0.30"] == pytest.approx(all_scores["0.30"])
    # case a's own Dice cannot move case a's threshold
    before = got["gmm_default_loo"]["per_case"]["a"]["threshold"]
    for r in rows:
        if r["case"] == "a":
            for t in grid:
                r["sweep"]["gmm_default"][t]["dice"] = 1.0 if float(t) != before else 0.0
    assert rules.choose_leave_one_out(rows, ["gmm_default_loo"])["flair/v"]["gmm_default_loo"]["per_case"]["a"][
        "threshold"] == before
    with pytest.raises(SystemExit, match="at least 2"):
        rules.choose_leave_one_out([r for r in rows if r["case"] == "a"], ["gmm_default_loo"])


def test_leave_one_out_columns_summarise_and_report_like_the_runner():
    """cgc-v29's chain: rows -> leave-one-out choice -> summary with its differences -> report lines."""
    import tomllib
    proto = tomllib.loads((ROOT / "docs" / "protocols" / "cgc-v29.toml").read_text())
    columns, differences = rules.columns_of(proto)
    assert {c for c, _ in columns} >= {"default_rec_loo_ensemble", "gmm_default_loo"} and 0.5 in proto["thresholds"]
    rows = []
    for i, case in enumerate("abcd"):
        by_t = {f"{t:.2f}": 0.8 - abs(t - 0.3) - 0.01 * i for t in proto["thresholds"]}
        r = _sweep_row(case, i % 2, 1, by_t)
        r["sweep"]["default_rec_ensemble"] = {t: dict(m) for t, m in r["sweep"]["default_rec"].items()}
        r.update(sigma_mm=2.0, step=300)
        for col in ("p", "p_smooth", "gmm_default", "network_ensemble"):
            r[col] = dict(r["sweep"]["gmm_default"]["0.50"])
        r["default_rec_03_ensemble"] = dict(r["sweep"]["default_rec_ensemble"]["0.30"])
        rows.append(r)
    rules.check_sweep_at_half(rows)
    loo = rules.choose_leave_one_out(rows, [c for c, _ in columns])
    summary = rules.base.summarise(rows, proto, columns, differences)
    g = summary["flair/v"]
    assert g["means"]["default_rec_loo_ensemble"]["dice"] == pytest.approx(g["means"]["default_rec_03_ensemble"]["dice"])
    assert g["means"]["default_rec_loo_ensemble"]["dice"] - g["means"]["gmm_default"]["dice"] == pytest.approx(0.2)
    text = rules.loo_report(loo, rows)
    assert "| default_rec_loo_ensemble | 0.30 | 0.30 | 0.30 | 0.30 | 0.30 |" in text
    assert "on 4 of 4 rows" in text


def test_cgc_v29_waits_for_cgc_v27s_models_and_replicates_on_cgc_v24s(tmp_path):
    proto = _confirm_waits_for(tmp_path, ROOT / "docs" / "protocols" / "cgc-v29.toml",
                               r"cgc-v27 has not finished these models yet.*fold0-seed2600")
    assert proto["stages"]["replicate"]["source"] == "cgc-v24.toml" and "caveat" in proto["stages"]["replicate"]


def test_two_seed_ensemble_columns_average_the_first_two_healthy_seeds_only(tmp_path, monkeypatch):
    """cgc-v31: with three seeds in a fold, ``network_ensemble`` averages all three and ``network_ensemble2`` the two
    lowest seeds (brute force: a per-voxel loop), whichever seed's row it is; ``default_rec_03_ensemble2`` is the
    shipped rule at 0.3 on that two-seed map fused with `cgcseg gmm`'s."""
    from types import SimpleNamespace
    from CGCLesionSegLib.postprocess import binarize
    shape = (12, 12, 12)
    brain = np.zeros(shape, bool)
    brain[1:-1, 1:-1, 1:-1] = True
    p = np.random.default_rng(5).random(shape).astype(np.float32)
    p_rec = np.random.default_rng(6).random(shape).astype(np.float32)

    def net_map(model, case):
        return np.random.default_rng(hash((model.seed, model.fold, case, 7)) % 2**32).random(shape).astype(np.float32)

    def fake_segment_held_out(model, cases, device="cpu", **config):
        for name in cases:
            own = net_map(model, name)
            res = SimpleNamespace(network_probability=own, mask=rules.output_rule_mask(own, p, brain, 0.5).astype(np.uint8),
                                  brain_mask=brain, window_xyz=(12, 12, 12))
            yield SimpleNamespace(name=name, geometry=SimpleNamespace(spacing=(1, 1, 1))), p, res, None, None

    monkeypatch.setattr(rules.base, "segment_held_out", fake_segment_held_out)
    monkeypatch.setattr(rules.base, "gmm_default_probability", lambda case, mods: p_rec)
    monkeypatch.setattr(rules.base, "score_row", lambda model, case, info, masks, sigma, **extra: (case.name, masks, extra))
    mk = lambda seed: rules.base.Model(("flair",), "v", 0, seed, tmp_path / f"s{seed}", [], [])
    models = [mk(3002), mk(3000), mk(3001)]
    for m in models:
        m.run.mkdir()
    names = ["network_ensemble", "network_ensemble2", "default_rec_03_ensemble2"]
    for m in models:
        name, masks, _ = rules._score_with_output_rule(m, {"a": None}, 2.0, "cpu", names, models)[0]
        two = np.zeros(shape, np.float32)
        three = np.zeros(shape, np.float32)
        for z, y, x in np.ndindex(*shape):
            two[z, y, x] = (net_map(models[1], "a")[z, y, x] + net_map(models[2], "a")[z, y, x]) / 2
            three[z, y, x] = sum(net_map(o, "a")[z, y, x] for o in models) / 3
        assert np.array_equal(masks["network_ensemble2"], two >= 0.5)
        assert np.array_equal(masks["network_ensemble"], three >= 0.5)
        assert not np.array_equal(masks["network_ensemble"], masks["network_ensemble2"])
        want = binarize(0.5 * two + 0.5 * p_rec, 0.3, fill_holes="2d", keep_largest=1, opening_radius=3,
                        mask_zyx=brain).astype(bool)
        assert want.any() and np.array_equal(masks["default_rec_03_ensemble2"], want)


def test_cgc_v31_waits_for_cgc_v30s_three_seed_flair_models():
    """cgc-v31 reads cgc-v30's FLAIR models (three fresh seeds), its control is the shipped two-seed ensemble."""
    import tomllib
    src = tomllib.loads((ROOT / "docs" / "protocols" / "cgc-v30.toml").read_text())
    proto = tomllib.loads((ROOT / "docs" / "protocols" / "cgc-v31.toml").read_text())
    assert src["stages"]["confirm"]["seeds"] == [3000, 3001, 3002] and src["stages"]["confirm"]["modalities"] == [["flair"]]
    columns, differences = rules.columns_of(proto)
    assert {"network_ensemble2", "default_rec_03_ensemble2"} <= {c for c, _ in columns}
    assert proto["control"] == "network_ensemble2" and proto["companions"]["network_ensemble"] == "default_rec_03_ensemble"
    groups = {"flair/v": {"modalities": "flair", "means": {"network_ensemble2": {"dice": 0.80}, "network_ensemble": {"dice": 0.806},
                                                           "default_rec_03_ensemble2": {"dice": 0.86},
                                                           "default_rec_03_ensemble": {"dice": 0.845}}}}
    assert rules.stage_winner(groups, proto, proto["stages"]["confirm"]) == "network_ensemble2"  # default fell 0.015
    groups["flair/v"]["means"]["default_rec_03_ensemble"]["dice"] = 0.855
    assert rules.stage_winner(groups, proto, proto["stages"]["confirm"]) == "network_ensemble"


def test_the_weighted_ensemble_sweep_fuses_each_weight_by_hand_and_equals_the_threshold_sweep_at_one_half(monkeypatch):
    """cgc-v33's family: at every (w, t) the shipped rule on (1 − w)·mean map + w·P_rec, made by hand with
    ``output_mask``; at w = 0.5 exactly cgc-v29's ``default_rec_ensemble`` sweep; the fold's other seed reads the memo;
    without weights it refuses."""
    from types import SimpleNamespace
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset
    case, res, net, other, p, p_rec, brain, ref = _ensemble_case(monkeypatch, 21)
    mean = 0.5 * (net + other)
    ts, ws = (0.3, 0.5, 0.6), (0.0, 0.25, 0.5, 0.75)
    sweep = rules.threshold_sweep(case, ["flair"], p, res, ts, {}, {"default_rec_ensemble", "default_rec_ensemble_w"},
                                  (("m0", "m1"), mean), ws)
    assert sorted(sweep["default_rec_ensemble_w"]) == sorted(rules.sweep_key(w, t) for w in ws for t in ts)
    shipped = output_preset("single-lesion-recommended")
    for w in ws:
        for t in ts:
            by_hand = output_mask((1 - w) * mean + w * p_rec, brain, InferenceConfig(**{**shipped, "threshold": t}),
                                  (1.0, 1.0, 1.0)).astype(bool)
            assert sweep["default_rec_ensemble_w"][rules.sweep_key(w, t)] == _metrics(by_hand, ref)
        assert sweep["default_rec_ensemble_w"][rules.sweep_key(0.5, t)] == sweep["default_rec_ensemble"][f"{t:.2f}"]
    assert len({round(m["dice"], 9) for m in sweep["default_rec_ensemble_w"].values()}) > 3  # the weight matters
    again = rules.threshold_sweep(case, ["flair"], p, SimpleNamespace(network_probability=p, brain_mask=brain), ts, {},
                                  {"default_rec_ensemble_w"}, (("m0", "m1"), None), ws)
    assert again["default_rec_ensemble_w"] == sweep["default_rec_ensemble_w"]
    with pytest.raises(ValueError, match="gmm_weights"):
        rules.threshold_sweep(case, ["flair"], p, res, ts, {}, {"default_rec_ensemble_w"}, (("m2", "m3"), mean), ())
    # the consistency check catches a weighted sweep that does not match the threshold sweep at w = 0.5
    row = {"model": "m", "case": "a", "fold": 0, "sweep": {k: {kk: dict(vv) for kk, vv in v.items()} for k, v in sweep.items()}}
    rules.check_sweep_at_half([row])
    row["sweep"]["default_rec_ensemble_w"]["0.50/0.30"]["dice"] += 0.1
    with pytest.raises(RuntimeError, match="weighted sweep at 0.50/0.30"):
        rules.check_sweep_at_half([row])


def _wloo_by_brute_force(rows, family="default_rec_ensemble_w"):
    """{case: (w, t)}: every grid pair's mean over the other cases (seeds averaged), the best by the declared tie
    rule (w nearer 0.5, t nearer 0.5, higher t, higher w), written out with plain loops."""
    cases = sorted({r["case"] for r in rows})
    out = {}
    for c in cases:
        best, best_key = None, None
        for k in rows[0]["sweep"][family]:
            w, t = float(k.split("/")[0]), float(k.split("/")[1])
            total = 0.0
            for o in cases:
                if o != c:
                    vals = [r["sweep"][family][k]["dice"] for r in rows if r["case"] == o]
                    total += sum(vals) / len(vals)
            key = (round(total / (len(cases) - 1), 6), -abs(w - 0.5), -abs(t - 0.5), t, w)
            if best_key is None or key > best_key:
                best, best_key = (w, t), key
        out[c] = best
    return out


@pytest.mark.parametrize("seed", range(5))
def test_leave_one_out_weight_and_threshold_match_a_brute_force_choice(seed):
    """cgc-v33's choice over pairs: each case's (w, t) is the brute-force best on the other cases with the tie rule;
    its row gets that pair's metrics and records both; the all-cases pair is the best over every case; case a's own
    labels cannot move case a's pair."""
    rng = np.random.default_rng(100 + seed)
    keys = [rules.sweep_key(w, t) for w in (0.0, 0.25, 0.5, 0.75) for t in (0.2, 0.3, 0.5, 0.6)]
    rows = []
    for i, case in enumerate("abcdefg"):
        for s in (1, 2):
            r = _sweep_row(case, i % 2, s, {"0.50": 0.5})
            r["sweep"]["default_rec_ensemble_w"] = {k: {"dice": float(np.round(rng.random(), 1))} for k in keys}  # ties
            rows.append(r)
    got = rules.choose_leave_one_out(rows, ["default_rec_wloo_ensemble"])["flair/v"]["default_rec_wloo_ensemble"]
    want = _wloo_by_brute_force(rows)
    assert {c: (v["gmm_weight"], v["threshold"]) for c, v in got["per_case"].items()} == want
    for r in rows:
        k = rules.sweep_key(*want[r["case"]])
        assert r["default_rec_wloo_ensemble"] == r["sweep"]["default_rec_ensemble_w"][k]
        assert (r["gmm_weights"]["default_rec_wloo_ensemble"], r["thresholds"]["default_rec_wloo_ensemble"]) == want[r["case"]]
    all_scores = {k: np.mean([np.mean([r["sweep"]["default_rec_ensemble_w"][k]["dice"] for r in rows if r["case"] == c])
                              for c in "abcdefg"]) for k in keys}
    best_all = rules.sweep_key(got["all"]["gmm_weight"], got["all"]["threshold"])
    assert got["all"]["scores"][best_all] == pytest.approx(max(all_scores.values()))
    before = want["a"]
    for r in rows:
        if r["case"] == "a":
            for k in keys:
                r["sweep"]["default_rec_ensemble_w"][k]["dice"] = 1.0 if k != rules.sweep_key(*before) else 0.0
    again = rules.choose_leave_one_out(rows, ["default_rec_wloo_ensemble"])["flair/v"]["default_rec_wloo_ensemble"]
    assert (again["per_case"]["a"]["gmm_weight"], again["per_case"]["a"]["threshold"]) == before


def test_weight_ties_go_to_one_half_before_the_threshold_rule():
    scores = {"0.25/0.50": 0.8, "0.50/0.30": 0.8, "0.75/0.50": 0.8, "0.50/0.70": 0.8, "0.00/0.50": 0.7}
    assert rules._best_threshold(scores) == "0.50/0.70"  # w = 0.5; t 0.3 and 0.7 equally near 0.5: the higher
    scores["0.25/0.50"] = 0.8000001  # below the rounding: still a tie
    assert rules._best_threshold(scores) == "0.50/0.70"
    scores["0.25/0.50"] = 0.801
    assert rules._best_threshold(scores) == "0.25/0.50"
    assert rules._best_threshold({"0.25/0.40": 0.8, "0.75/0.40": 0.8}) == "0.75/0.40"  # then the higher w


def test_cgc_v33_waits_for_cgc_v32s_four_channel_models_and_reports_the_pairs(tmp_path):
    """cgc-v33 reads cgc-v32's fresh four-channel models; its weight grid holds 0.5 and its control is cgc-v29's rule;
    the candidate replaces it only above the declared margin; the report shows each case's w/t."""
    proto = _confirm_waits_for(tmp_path, ROOT / "docs" / "protocols" / "cgc-v33.toml",
                               r"cgc-v32 has not finished these models yet.*flair-t1-t1ce-t2/robust-2mm-std/fold0-seed3200")
    import tomllib
    src = tomllib.loads((ROOT / "docs" / "protocols" / "cgc-v32.toml").read_text())
    assert src["stages"]["confirm"]["seeds"] == [3200, 3201]
    assert src["stages"]["confirm"]["modalities"] == [["flair", "t1", "t1ce", "t2"]]
    assert 0.5 in proto["gmm_weights"] and 0.3 in proto["thresholds"] and proto["control"] == "default_rec_loo_ensemble"
    columns, differences = rules.columns_of(proto)
    assert ("default_rec_wloo_ensemble", "gmm_default", "≥ +0.03; no case < −0.10") in differences
    groups = {"x/v": {"modalities": "flair-t1-t1ce-t2", "means": {"default_rec_loo_ensemble": {"dice": 0.860},
                                                                  "default_rec_wloo_ensemble": {"dice": 0.864}}}}
    assert rules.stage_winner(groups, proto, proto["stages"]["confirm"]) == "default_rec_loo_ensemble"
    groups["x/v"]["means"]["default_rec_wloo_ensemble"]["dice"] = 0.866
    assert rules.stage_winner(groups, proto, proto["stages"]["confirm"]) == "default_rec_wloo_ensemble"
    rows = []
    for i, case in enumerate("abcd"):
        r = _sweep_row(case, i % 2, 1, {"0.50": 0.5})
        r["sweep"]["default_rec_ensemble_w"] = {rules.sweep_key(w, t): {"dice": 0.9 - abs(w - 0.25) - abs(t - 0.4)}
                                                for w in proto["gmm_weights"] for t in proto["thresholds"]}
        rows.append(r)
    loo = rules.choose_leave_one_out(rows, ["default_rec_wloo_ensemble"])
    text = rules.loo_report(loo, rows)
    assert "| default_rec_wloo_ensemble | 0.25/0.40 | 0.25/0.40 | 0.25/0.40 | 0.25/0.40 | 0.25/0.40 | 0.9000 (0.5500) |" in text


def test_the_runners_scoring_passes_the_weight_grid_to_the_ensemble_sweep(tmp_path, monkeypatch):
    """cgc-v33's plumbing: scoring a row for ``default_rec_wloo_ensemble`` sweeps the fold's seed-ensemble mean map
    over the protocol's weights and thresholds (the mean of both seeds' maps, fused by hand here), and makes no mask
    for the left-out column itself (it is filled by the choice)."""
    from types import SimpleNamespace
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset
    net1, p, p_rec, brain = _smooth_maps(31)
    net2 = _smooth_maps(32)[0]
    ref = np.zeros(net1.shape, bool)
    ref[3:10, 4:11, 2:9] = True
    maps = {1: net1, 2: net2}

    def fake_segment_held_out(model, cases, device="cpu", **config):
        own = maps[model.seed]
        res = SimpleNamespace(network_probability=own, mask=rules.output_rule_mask(own, p, brain, 0.5).astype(np.uint8),
                              brain_mask=brain, window_xyz=(14, 14, 14))
        case = SimpleNamespace(name="a", geometry=SimpleNamespace(spacing=(1.0, 1.0, 1.0)), reference=ref,
                               brain=lambda mods: brain)
        yield case, p, res, None, None

    monkeypatch.setattr(rules.base, "segment_held_out", fake_segment_held_out)
    monkeypatch.setattr(rules.base, "gmm_default_probability", lambda case, mods: p_rec)
    monkeypatch.setattr(rules.base, "score_row", lambda model, case, info, masks, sigma, **extra: (masks, extra))
    models = [rules.base.Model(("flair",), "v", 0, s, tmp_path / f"s{s}", [], []) for s in (1, 2)]
    for m in models:
        m.run.mkdir()
    ws, ts = (0.0, 0.25, 0.5), (0.3, 0.5)
    masks, extra = rules._score_with_output_rule(models[1], {"a": None}, 2.0, "cpu", ["default_rec_wloo_ensemble"],
                                                 models, ts, {}, ws)[0]
    assert masks == {} and set(extra["sweep"]) == {"default_rec_ensemble_w"}
    sweep = extra["sweep"]["default_rec_ensemble_w"]
    assert sorted(sweep) == sorted(rules.sweep_key(w, t) for w in ws for t in ts)
    mean = 0.5 * (net1 + net2)
    shipped = output_preset("single-lesion-recommended")
    for w in ws:
        for t in ts:
            by_hand = output_mask((1 - w) * mean + w * p_rec, brain, InferenceConfig(**{**shipped, "threshold": t}),
                                  (1.0, 1.0, 1.0)).astype(bool)
            assert sweep[rules.sweep_key(w, t)] == _metrics(by_hand, ref)
