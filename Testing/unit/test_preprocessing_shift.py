"""The preprocessing-shift stress test (benchmarks/preprocessing_shift.py): its shifts against slow
references, its grids, and the summary's paired differences."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import preprocessing_shift as ps  # noqa: E402

from CGCLesionSegLib.image_io import Geometry  # noqa: E402
from CGCLesionSegLib.preprocess import default_brain_mask  # noqa: E402


def _slow_block_mean(a, f):
    Z, Y, X = a.shape
    out = np.zeros(tuple(-(-n // k) for n, k in zip(a.shape, f)))
    for i in range(out.shape[0]):
        for j in range(out.shape[1]):
            for k in range(out.shape[2]):
                out[i, j, k] = a[i * f[0]:min(Z, (i + 1) * f[0]), j * f[1]:min(Y, (j + 1) * f[1]),
                                 k * f[2]:min(X, (k + 1) * f[2])].mean()
    return out


@pytest.mark.parametrize("shape, f", [((11, 6, 7), (5, 1, 1)), ((9, 8, 7), (2, 2, 2)), ((4, 5, 6), (3, 2, 4))])
def test_block_mean_against_a_loop(shape, f):
    a = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    np.testing.assert_allclose(ps.block_mean(a, f), _slow_block_mean(a, f), rtol=1e-5, atol=1e-6)


def test_coarse_grid_centres_each_block_and_maps_block_masks_back_exactly():
    d = (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0)  # a turned direction, to catch axis mix-ups
    g = Geometry((20, 12, 10), (1.0, 0.8, 1.2), (5.0, -3.0, 7.0), d)
    f = (5, 2, 1)
    c = ps.coarse_geometry(g, f)
    assert c.shape_zyx == (4, 6, 10) and c.spacing == pytest.approx((1.0, 1.6, 6.0))
    fine = np.mean([g.index_to_lps((i, j, k)) for k in range(5) for j in range(2) for i in range(1)], axis=0)
    np.testing.assert_allclose(c.index_to_lps((0, 0, 0)), fine, atol=1e-9)
    blocks = np.random.default_rng(1).random((4, 6, 10)) > 0.5
    fine_mask = np.repeat(np.repeat(blocks, 5, axis=0), 2, axis=1)
    back = ps.back_to(blocks, c, g)
    # Block centres and interiors come back exactly; only voxels between two different blocks may differ.
    inner = np.zeros_like(fine_mask)
    inner[2::5] = True
    np.testing.assert_array_equal(back[inner], fine_mask[inner])


def _case(seed=0):
    rng = np.random.default_rng(seed)
    a = np.zeros((16, 18, 20), np.float32)
    a[3:13, 4:14, 5:15] = rng.normal(200, 30, (10, 10, 10))
    return a


@pytest.mark.parametrize("shift", [s for s in ps.SHIFTS if s not in ("thick5", "iso2", "clinical")])
def test_intensity_shifts_keep_the_grid_and_the_brain(shift):
    g = Geometry((16, 18, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a = _case()
    (b,), g2 = ps.apply_shift(shift, [a], g, "c")
    assert g2 == g and b.shape == a.shape and np.isfinite(b).all()
    np.testing.assert_array_equal(default_brain_mask([b]), a != 0)
    if shift == "none":
        np.testing.assert_array_equal(b, a)
    elif shift == "zscore":
        assert abs(float(b.mean())) < 1e-4 and float(b[0, 0, 0]) < 0
    elif shift == "gamma":  # monotonic inside the brain: the ranks of the voxels are kept
        inside = a != 0
        assert (np.argsort(a[inside], kind="stable") == np.argsort(b[inside], kind="stable")).all()
    elif shift == "uint8":
        assert b.max() == 255 and (b == np.round(b)).all()
    elif shift == "bias":
        ratio = b[a != 0] / a[a != 0]
        assert 0.69 < ratio.min() and ratio.max() < 1.41
    else:
        assert not np.array_equal(b, a)
    (again,), _ = ps.apply_shift(shift, [a], g, "c")
    np.testing.assert_array_equal(again, b)  # seeded per case and channel


def test_summary_differences_average_seeds_per_case_first():
    def row(case, shift, **dice):
        return {"case": case, "shift": shift, **{c: {"dice": dice.get(c, 0.5)} for c in ps.COLUMNS}}
    rows = [row("a", "none", network=0.9, p_smooth=0.7), row("a", "none", network=0.5, p_smooth=0.7),
            row("b", "none", network=0.6, p_smooth=0.8)]
    s = ps.summarise(rows, ["none"], resamples=200)
    d = s["none"]["differences"]["network − p_smooth"]
    assert d["mean"] == pytest.approx(((0.7 - 0.7) + (0.6 - 0.8)) / 2) and d["min_case"] == pytest.approx(-0.2)
    assert s["none"]["means"]["network"] == pytest.approx((0.7 + 0.6) / 2)
    assert ps.failures(s) == []
    bad = ps.summarise(rows + [row("a", "noise", network=0.1, p_smooth=0.7), row("b", "noise", network=0.2, p_smooth=0.8)], ["none", "noise"], 200)
    assert ps.failures(bad) == ["noise/network (0.150, -0.500)"]


def test_clinical_is_bias_then_noise_then_thick_slices():
    g = Geometry((16, 18, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    a = _case()
    (b,), gb = ps.apply_shift("bias", [a], g, "c")
    (n,), _ = ps.apply_shift("noise", [b], gb, "c")
    (want,), gw = ps.apply_shift("thick5", [n], gb, "c")
    (got,), gg = ps.apply_shift("clinical", [a], g, "c")
    assert gg == gw and gg.spacing == (1.0, 1.0, 5.0)
    np.testing.assert_array_equal(got, want)


def test_lesion_choice_reading_applies_the_declared_limits_and_reads_the_motivating_pair_apart():
    def row(case, shift, vote, rec=0.8):
        return {"case": case, "shift": shift, **{c: {"dice": 0.5} for c in ps.COLUMNS},
                "default_rec": {"dice": rec}, "default_vote": {"dice": vote}}
    rows = [row("BraTS2021_00000", "clinical", 0.7, 0.0), row("b", "clinical", 0.8), row("b", "none", 0.8),
            row("BraTS2021_00000", "none", 0.8)]
    text = ps.rule_reading(ps.summarise(rows, ["none", "clinical"], 200), "lesion-choice-v1")
    assert "1 of 4 (shift, case) pairs changed: clinical/BraTS2021_00000 +0.700" in text
    assert "Mean over all pairs +0.1750" in text and "(read apart) +0.0000" in text
    assert "below -0.005: nothing; pairs below -0.05: nothing — passes" in text
    # One case 0.06 below: the case limit fails; the shift's mean (-0.03) is below -0.005 as well.
    rows.append(row("c", "none", 0.74))
    text = ps.rule_reading(ps.summarise(rows, ["none", "clinical"], 200), "lesion-choice-v1")
    assert "Shift means below -0.005: `none`;" in text and "-0.05: none/c —" in text
    assert text.endswith("fails the declared limits.")
    assert "default_vote − default_rec" in ps.report("t", ps.summarise(rows, ["none"], 200), 1)


def test_n4_reading_sets_the_shifts_it_targets_apart():
    def row(case, shift, n4, gmm=0.8):
        return {"case": case, "shift": shift, **{c: {"dice": 0.5} for c in ps.COLUMNS},
                "gmm_default": {"dice": gmm}, "gmm_default_n4": {"dice": n4}}
    rows = [row("a", "none", 0.792), row("b", "none", 0.8), row("a", "bias", 0.9, 0.6), row("b", "bias", 0.8)]
    s = ps.summarise(rows, ["none", "bias"], 200)
    text = ps.rule_reading(s, "n4-v1 (`cgcseg gmm`)")
    assert "2 of 4 (shift, case) pairs changed: bias/a +0.300, none/a -0.008" in text
    assert "Mean over all pairs +0.0730; without `bias`, `clinical` (read apart) -0.0040" in text
    assert text.endswith("passes the declared limits.")  # none: -0.004
    assert "n4-v1 (`cgcseg gmm`)" in ps.report("t", s, 1)


def test_rule_columns_are_opt_in_and_the_summary_reads_only_the_columns_every_row_has():
    assert ps.columns_for([]) == (ps.BASE_COLUMNS, ps.BASE_PAIRS)
    cols, pairs = ps.columns_for(["n4-v2"])
    assert cols == ps.BASE_COLUMNS + ("gmm_default_n4x", "default_n4x")
    assert pairs[-2:] == (("gmm_default_n4x", "gmm_default"), ("default_n4x", "default_rec"))
    with pytest.raises(ValueError, match="unknown rule protocol"):
        ps.columns_for(["n4-v3"])

    def row(case, cols, **dice):
        return {"case": case, "shift": "none", **{c: {"dice": dice.get(c, 0.5)} for c in cols}}
    base_rows = [row("a", ps.BASE_COLUMNS, network=0.9), row("b", ps.BASE_COLUMNS)]
    s = ps.summarise(base_rows, ["none"], 200)
    assert list(s["none"]["means"]) == list(ps.BASE_COLUMNS)
    assert list(s["none"]["differences"]) == ["network − p_smooth", "default_rec − gmm_default"]
    text = ps.report("t", s, 1)
    assert "default_vote" not in text and "n4" not in text and "network − p_smooth (95 % CI)" in text
    # A row missing a rule column (an older kept score) drops that column rather than failing.
    mixed = base_rows + [row("c", ps.BASE_COLUMNS + ("default_vote",), default_vote=0.1)]
    assert "default_vote" not in ps.summarise(mixed, ["none"], 200)["none"]["means"]
    full = [row("a", cols), row("b", cols, default_n4x=0.7)]
    d = ps.summarise(full, ["none"], 200)["none"]["differences"]["default_n4x − default_rec"]
    assert d["mean"] == pytest.approx(0.1) and d["per_case"] == pytest.approx({"a": 0.0, "b": 0.2})


def test_compare_runs_pairs_cases_after_averaging_each_runs_seeds_and_counts_the_low_shifts():
    def row(case, shift, **dice):
        return {"case": case, "shift": shift, **{c: {"dice": dice.get(c, 0.5)} for c in ps.BASE_COLUMNS}}
    this = [row("a", "none", default_rec=0.8), row("a", "none", default_rec=0.6), row("b", "none", default_rec=0.9),
            row("a", "bias", default_rec=0.5), row("b", "bias", default_rec=0.5), row("c", "bias", default_rec=0.1)]
    other = [row("a", "none", default_rec=0.7), row("b", "none", default_rec=0.8),
             row("a", "bias", default_rec=0.6), row("a", "bias", default_rec=0.6), row("b", "bias", default_rec=0.6)]
    cmp = ps.compare_runs(this, other, ["none", "bias", "noise"], resamples=200)
    assert set(cmp) == {"none", "bias"}  # no case of `noise` in either; `c` only in this run: left out
    # Brute force: per case, mean over this run's rows minus mean over the other's.
    for s in cmp:
        for case, d in cmp[s]["default_rec"]["per_case"].items():
            mine = [r["default_rec"]["dice"] for r in this if (r["shift"], r["case"]) == (s, case)]
            theirs = [r["default_rec"]["dice"] for r in other if (r["shift"], r["case"]) == (s, case)]
            assert d == pytest.approx(sum(mine) / len(mine) - sum(theirs) / len(theirs))
    assert cmp["none"]["default_rec"]["mean"] == pytest.approx((0.0 + 0.1) / 2)
    assert cmp["bias"]["default_rec"]["mean"] == pytest.approx(-0.1) and cmp["bias"]["default_rec"]["min_case"] == pytest.approx(-0.1)
    assert cmp["none"]["network"]["mean"] == pytest.approx(0.0)
    assert ps.shifts_below(cmp, "default_rec", 0.02) == ["bias"]  # `none` is never counted
    assert ps.shifts_below(cmp, "default_rec", 0.2) == []
    text = ps.comparison_report(cmp, "`new`", "`old.json`")
    assert "more than 0.02 below `old.json`'s: 1 (`bias`)" in text


def test_shipped_threshold_column_is_opt_in_and_paired_with_both_baselines():
    cols, pairs = ps.columns_for(["shipped-0.3"])
    assert cols == ps.BASE_COLUMNS + ("default_rec_03",)
    assert pairs[-2:] == (("default_rec_03", "gmm_default"), ("default_rec_03", "default_rec"))


def test_hysteresis_column_pairs_with_the_shipped_threshold_and_reads_both_motivating_pairs_apart():
    cols, pairs = ps.columns_for(["shipped-0.3", "hysteresis-v1"])
    assert cols[-2:] == ("default_rec_03", "default_core_03") and pairs[-1] == ("default_core_03", "default_rec_03")

    def row(case, shift, **dice):
        return {"case": case, "shift": shift, **{c: {"dice": dice.get(c, 0.5)} for c in cols}}
    rows = [row("BraTS2021_00000", "bias", default_core_03=0.9, default_rec_03=0.0),
            row("x", "bias", default_core_03=0.49, default_rec_03=0.5),
            row("BraTS2021_00000", "none"), row("x", "none")]
    text = ps.rule_reading(ps.summarise(rows, ["none", "bias"], 200), "hysteresis-v1")
    assert "2 of 4 (shift, case) pairs changed" in text and "passes the declared limits" in text
    assert "without BraTS2021_00000/bias" in text or "bias/BraTS2021_00000" in text


def test_seed_column_pairs_with_the_shipped_choice_and_fails_on_one_pair_below_the_limit():
    """hysteresis-v2: ``default_seed_03`` pairs with ``default_core_03`` (the decision) and ``default_rec_03``; the
    three seen-failure pairs are read apart, and one other pair below -0.05 fails the declared limits."""
    cols, pairs = ps.columns_for(["shipped-0.3", "hysteresis-v1", "hysteresis-v2"])
    assert cols[-3:] == ("default_rec_03", "default_core_03", "default_seed_03")
    assert pairs[-2:] == (("default_seed_03", "default_core_03"), ("default_seed_03", "default_rec_03"))

    def row(case, shift, **dice):
        return {"case": case, "shift": shift, **{c: {"dice": dice.get(c, 0.5)} for c in cols}}
    up = [row("BraTS2021_00000", s, default_seed_03=0.8, default_core_03=0.0) for s in ("bias", "thick5", "gamma")]
    rows = up + [row("x", s) for s in ("none", "bias", "thick5", "gamma")] + [row("BraTS2021_00000", "none")]
    text = ps.rule_reading(ps.summarise(rows, ["none", "bias", "thick5", "gamma"], 200), "hysteresis-v2")
    assert "3 of 8 (shift, case) pairs changed" in text and "passes the declared limits" in text
    assert "(read apart) +0.0000" in text  # the three motivating pairs are out of the second mean
    rows.append(row("y", "bias", default_seed_03=0.40, default_core_03=0.46))
    rows.append(row("y", "none"))
    text = ps.rule_reading(ps.summarise(rows, ["none", "bias", "thick5", "gamma"], 200), "hysteresis-v2")
    assert "bias/y" in text and "fails the declared limits" in text


def test_the_four_channel_threshold_column_pairs_with_the_seed_rule_at_0_3_and_with_cgcseg_gmm():
    """``--rules shipped-0.35`` (cgc-v29's four-channel threshold, a report): its column comes after the seed rule's
    and pairs with it and with `cgcseg gmm`; a pair's difference is read per case, seeds averaged."""
    cols, pairs = ps.columns_for(["shipped-0.3", "hysteresis-v1", "hysteresis-v2", "shipped-0.35"])
    assert cols[-2:] == ("default_seed_03", "default_seed_035")
    assert pairs[-2:] == (("default_seed_035", "default_seed_03"), ("default_seed_035", "gmm_default"))

    def row(case, shift, seed, **dice):
        return {"case": case, "shift": shift, "seed": seed, **{c: {"dice": dice.get(c, 0.5)} for c in cols}}
    rows = [row("a", "none", 1, default_seed_035=0.7), row("a", "none", 2, default_seed_035=0.5),
            row("b", "none", 1, default_seed_035=0.4), row("b", "none", 2, default_seed_035=0.4)]
    got = ps.summarise(rows, ["none"], 200)["none"]
    diff = got["differences"]["default_seed_035 − default_seed_03"]
    assert got["differences"]["default_seed_035 − gmm_default"]["per_case"] == pytest.approx({"a": 0.1, "b": -0.1})
    assert diff["mean"] == pytest.approx(((0.6 - 0.5) + (0.4 - 0.5)) / 2) and diff["min_case"] == pytest.approx(-0.1)
