"""The evaluation protocol's statistics and planning (benchmarks/protocol.py), on synthetic rows."""
from __future__ import annotations

import json
import random
import statistics
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))
import protocol  # noqa: E402


def _row(case, seed, variant, dices, mods=("flair",)):
    r = {"case": case, "seed": seed, "variant": variant, "modalities": list(mods), "sigma_mm": 2.0, "step": 10,
         "fold": 0, "model": "m"}
    for (col, _), d in zip(protocol.COLUMNS, dices):
        r[col] = {"dice": d, "sensitivity": d, "precision": None if d == 0 else d, "hd95_mm": 1.0, "assd_mm": 0.5}
    return r


def test_bootstrap_ci_matches_a_slow_resampling_loop():
    vals = [0.1, -0.05, 0.2, 0.03, 0.07]
    lo, hi = protocol.bootstrap_ci(vals, 2000, 3)
    rng = random.Random(3)
    slow = []
    for _ in range(2000):
        sample = [vals[rng.randrange(len(vals))] for _ in vals]
        slow.append(sum(sample) / len(sample))
    slow.sort()
    assert (lo, hi) == (slow[50], slow[1950])
    assert lo < statistics.mean(vals) < hi


def test_summary_averages_seeds_per_case_before_differences():
    rows = [_row("A", 1, "v", [0.5, 0.6, 0.6, 0.7, 0.8, 0.9]), _row("A", 2, "v", [0.5, 0.6, 0.6, 0.7, 0.6, 0.9]),
            _row("B", 1, "v", [0.4, 0.5, 0.4, 0.6, 0.5, 0.5]), _row("B", 2, "v", [0.4, 0.5, 0.4, 0.6, 0.3, 0.7])]
    s = protocol.summarise(rows, {"bootstrap_resamples": 500})["flair/v"]
    assert s["per_case"]["A"]["network"]["dice"] == pytest.approx(0.7)
    assert s["per_case"]["B"]["network"]["dice"] == pytest.approx(0.4)
    d = s["differences"]["network-p"]
    assert d["per_case"] == pytest.approx({"A": 0.2, "B": 0.0}) and d["mean"] == pytest.approx(0.1)
    assert d["min_case"] == pytest.approx(0.0) and d["ci95"][0] <= 0.1 <= d["ci95"][1]
    # Seed SD: the mean over cases for seed 1 is 0.65, for seed 2 0.45.
    assert s["seed_sd"]["network"] == pytest.approx(statistics.stdev([0.65, 0.45]))
    assert s["means"]["network"]["precision"] == pytest.approx(0.55)  # None values are left out


def test_winner_keeps_the_control_unless_clearly_beaten():
    def summary(net):
        return {f"flair/{v}": {"variant": v, "means": {"network": {"dice": d}}} for v, d in net.items()}
    assert protocol.pick_winner(summary({"control": 0.70, "robust": 0.705}), {}) == "control"
    assert protocol.pick_winner(summary({"control": 0.70, "robust": 0.72, "big": 0.715}), {}) == "robust"
    # a stage may name its control (cgc-v2: the previous winner)
    assert protocol.pick_winner(summary({"robust-st": 0.74, "smooth-st": 0.749}), {"control": "robust-st"}) == "robust-st"
    assert protocol.pick_winner(summary({"robust-st": 0.74, "smooth-st": 0.751}), {"control": "robust-st"}) == "smooth-st"
    assert protocol.pick_winner(summary({"robust-st": 0.74, "smooth-st": 0.749}), {}) == "smooth-st"


def test_plan_folds_hold_out_disjoint_cases_and_train_on_all_unlabelled(tmp_path):
    for group, names in (("brats", [f"c{i}" for i in range(7)]), ("unlabelled", ["u1", "u2"])):
        for n in names:
            (tmp_path / group / n).mkdir(parents=True)
    proto = protocol.load_protocol(ROOT / "docs" / "protocols" / "cgc-v1.toml")
    models = protocol.plan(proto, "screen", tmp_path, tmp_path / "work", tmp_path / "results", ["--tau", "0.1"])
    assert len(models) == 3 * 2 * 1
    for m in models:
        names = {c.name for c in m.train}
        assert not names & {c.name for c in m.test} and {"u1", "u2"} <= names
        assert m.args[-2:] == ["--tau", "0.1"] and m.args[:len(proto["base_train_args"])] == proto["base_train_args"]
    tests = [sorted(c.name for c in m.test) for m in models if m.variant == "control"]
    assert sorted(sum(tests, [])) == [f"c{i}" for i in range(7)]
    with pytest.raises(SystemExit, match="run that stage first"):
        protocol.plan(proto, "confirm", tmp_path, tmp_path / "work", tmp_path / "results", [])


def test_report_lists_every_column_difference_and_the_winner():
    rows = [_row(c, s, "v", [0.5, 0.6, 0.6, 0.7, 0.8, 0.9]) for c in "AB" for s in (1, 2)]
    proto = protocol.load_protocol(ROOT / "docs" / "protocols" / "cgc-v1.toml")
    summary = protocol.summarise(rows, proto)
    text = protocol.report(proto, "screen", summary, {"flair fold 0": {"sigma": 2.0, "scores": {1.0: 0.5, 2.0: 0.6}}},
                           [], ["--tau", "0.1"], "v", {"m": {"step": 300, "seconds": 600}})
    for _, name in protocol.COLUMNS:
        assert name in text
    for a, b, _ in protocol.DIFFERENCES:
        assert f"| {a} − {b} | " in text
    assert "**`v`**" in text and "`--tau 0.1`" in text and "**2 mm**" in text and "HD95" in text


def test_report_names_no_winner_where_the_header_decides_and_says_what_a_margin_winner_leaves_out():
    """cgc-v43's confirmation is decided by four criteria, three of them from other runs: the report names no winner
    (it once printed the network-margin pick under that rule's text, naming the control where the rival had passed);
    a rule with a further condition says its winner is the margin part only."""
    rows = [_row(c, s, v, [0.5, 0.6, 0.6, 0.7, d, 0.9]) for c in "AB" for s in (1, 2)
            for v, d in (("robust-2mm-std", 0.80), ("robust-2mm-stdopen", 0.79))]
    proto = protocol.load_protocol(ROOT / "docs" / "protocols" / "cgc-v43.toml")
    stage = proto["stages"]["confirm"]
    assert protocol.header_decided(stage)
    summary = protocol.summarise(rows, proto)
    text = protocol.report(proto, "confirm", summary, {}, [], [], None, {})
    assert "Decision: by the criteria declared in the protocol file's header" in text and "Winner" not in text
    v24 = protocol.load_protocol(ROOT / "docs" / "protocols" / "cgc-v24.toml")
    assert not protocol.header_decided(v24["stages"]["screen"])
    text = protocol.report(v24, "screen", summary, {}, [], [], "robust-2mm-std", {})
    assert "**`robust-2mm-std`** — computed from its network-Dice margin only" in text


def test_self_training_variant_depends_on_its_round_one(tmp_path):
    for group, names in (("brats", [f"c{i}" for i in range(7)]), ("unlabelled", ["u1"])):
        for n in names:
            (tmp_path / group / n).mkdir(parents=True)
    proto = protocol.load_protocol(ROOT / "docs" / "protocols" / "cgc-v1.toml")
    models = protocol.plan(proto, "screen", tmp_path, tmp_path / "work", tmp_path / "results", [])
    st = [m for m in models if m.variant == "robust-st"]
    assert len(st) == 2 and len(models) == 6
    for m in st:
        assert m.parent is not None and m.parent.variant == "robust" and m.parent in models
        assert (m.parent.fold, m.parent.seed) == (m.fold, m.seed) and m.parent.test == m.test


FOLD_SIGMA_PROTOCOL = """
name = "tiny-sigma"
labelled = "brats"
unlabelled = "unlabelled"
folds = 2
smoothing_sigmas_mm = [1.0, 3.0]
base_train_args = ["--crop", "16", "16", "16"]
[variants.smooth]
args = ["--target-sigma", "{fold_sigma}"]
[variants.plain]
args = []
[stages.screen]
modalities = [["flair"]]
variants = ["smooth", "plain"]
seeds = [1]
steps = 2
"""


def test_fold_sigma_is_chosen_on_the_folds_training_labels_only(tmp_path, monkeypatch):
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    for group, names in (("brats", ["a", "b", "c", "d"]), ("unlabelled", ["u"])):
        for i, n in enumerate(names):
            save_phantom(make_phantom(shape_xyz=(32, 32, 20), spacing_xyz=(1.5, 1.5, 1.5), seed=30 + i),
                         tmp_path / "data" / group, n)
    (tmp_path / "p.toml").write_text(FOLD_SIGMA_PROTOCOL)
    proto = protocol.load_protocol(tmp_path / "p.toml")
    read = []
    real = protocol.CaseData.reference
    monkeypatch.setattr(protocol.CaseData, "reference", property(lambda self: read.append(self.name) or real.fget(self)))
    models = protocol.plan(proto, "screen", tmp_path / "data", tmp_path / "work", tmp_path / "results", [])
    smooth = {m.fold: m for m in models if m.variant == "smooth"}
    # fold k holds out cases[k::2]: fold 0 trains on b, d and fold 1 on a, c — only those labels are read
    planned, half = list(read), len(read) // 2
    assert set(planned[:half]) == {"b", "d"} and set(planned[half:]) == {"a", "c"}
    for fold, train_names in ((0, ["b", "d"]), (1, ["a", "c"])):
        m = smooth[fold]
        assert "{fold_sigma}" not in m.args
        saved = json.loads((tmp_path / "work" / f"sigma-flair-fold{fold}.json").read_text())
        want, scores = protocol.choose_sigma([protocol.CaseData(tmp_path / "data" / "brats" / n) for n in train_names],
                                             ["flair"], protocol.gmm_config_of([], ["flair"]), [1.0, 3.0])
        assert saved["sigma"] == want and m.args[-2:] == ["--target-sigma", f"{want:g}"]
        assert saved["scores"] == pytest.approx({str(k): v for k, v in scores.items()})
    assert all(m.args == ["--crop", "16", "16", "16"] for m in models if m.variant == "plain")
    # a second plan reads the kept choice (no label read again)
    read.clear()
    again = protocol.plan(proto, "screen", tmp_path / "data", tmp_path / "work", tmp_path / "results", [])
    assert read == [] and [m.args for m in again] == [m.args for m in models]


def test_declared_protocols_load_and_a_dotted_variant_name_is_refused(tmp_path):
    # every committed protocol's stages name declared variants (the ablation's tau rows once did not)
    proto = protocol.load_protocol(ROOT / "docs" / "protocols" / "cgc-v1.toml")
    ablation = proto["stages"]["ablation"]["variants"]
    assert {"abl-tau-0.07", "abl-tau-0.1", "abl-tau-0.5"} <= set(ablation) <= set(proto["variants"])
    assert proto["variants"]["abl-tau-0.07"]["args"] == ["--tau", "0.07"]
    for path in sorted((ROOT / "docs" / "protocols").glob("cgc-v*.toml")):
        if "stages" in path.read_text() and "[variants" in path.read_text():  # training protocols (not v3's rules)
            protocol.load_protocol(path)
    v4 = protocol.load_protocol(ROOT / "docs" / "protocols" / "cgc-v4.toml")
    for name in ("bce-st", "p664-st"):  # each round 2 keeps its round 1's loss settings
        parent = v4["variants"][name]["self_train_from"]
        assert v4["variants"][name]["args"] == v4["variants"][parent]["args"]
    head = ('name = "t"\nlabelled = "a"\nunlabelled = "b"\nfolds = 2\nbase_train_args = []\n'
            '[variants.c]\nargs = []\n')
    bad = tmp_path / "dotted.toml"
    bad.write_text(head + '[variants.tau-0.1]\nargs = ["--tau", "0.1"]\n'
                   '[stages.s]\nmodalities = [["flair"]]\nvariants = ["c", "tau-0.1"]\nseeds = [1]\nsteps = 1\n')
    with pytest.raises(SystemExit, match="variant 'tau-0' has no 'args'.*quoted"):
        protocol.load_protocol(bad)
    quoted = tmp_path / "quoted.toml"
    quoted.write_text(bad.read_text().replace("[variants.tau-0.1]", '[variants."tau-0.1"]'))
    assert protocol.load_protocol(quoted)["variants"]["tau-0.1"]["args"] == ["--tau", "0.1"]
    missing = tmp_path / "missing.toml"
    missing.write_text(head + '[stages.s]\nmodalities = [["flair"]]\nvariants = ["c", "x"]\nseeds = [1]\nsteps = 1\n')
    with pytest.raises(SystemExit, match="names variant 'x', which is not declared"):
        protocol.load_protocol(missing)
    winner = tmp_path / "winner.toml"
    winner.write_text(head + '[stages.s]\nmodalities = [["flair"]]\nvariant = "winner of scren"\nseeds = [1]\nsteps = 1\n')
    with pytest.raises(SystemExit, match="winner of STAGE"):
        protocol.load_protocol(winner)


def test_variants_table_pairs_each_variant_with_the_first_by_case_after_averaging_seeds():
    """The ablation-style table: variant − reference per case (seeds averaged first), against a brute-force
    computation; the reference row itself has no difference; an unfinished variant is left out."""
    rng = random.Random(3)
    rows = []
    for v in ("ref", "b"):
        for c in "ABCDE":
            for s in (1, 2):
                rows.append(_row(c, s, v, [rng.random() for _ in protocol.COLUMNS]))
    proto = {"bootstrap_resamples": 400, "bootstrap_seed": 0,
             "variants": {"ref": {"args": ["--no-fine"]}, "b": {"args": []}, "late": {"args": ["--tau", "0.5"]}}}
    stage = {"variants": ["ref", "b", "late"]}
    summary = protocol.summarise(rows, proto)
    d = protocol.variant_differences(summary, proto, "ref")["flair"]
    assert set(d) == {"b"}

    def case_mean(v, c, col):
        return statistics.mean(r[col]["dice"] for r in rows if r["variant"] == v and r["case"] == c)

    for col in ("network", "default"):
        per_case = [case_mean("b", c, col) - case_mean("ref", c, col) for c in "ABCDE"]
        assert d["b"][col]["mean"] == pytest.approx(statistics.mean(per_case))
        assert d["b"][col]["min_case"] == pytest.approx(min(per_case))
        lo, hi = d["b"][col]["ci95"]
        assert lo <= statistics.mean(per_case) <= hi
    text = "\n".join(protocol.variants_table(summary, proto, stage))
    ref_line = next(l for l in text.splitlines() if l.startswith("| `ref` |"))
    b_line = next(l for l in text.splitlines() if l.startswith("| `b` |"))
    assert "`--no-fine`" in ref_line and ref_line.count("—") == 2
    assert f"{d['b']['network']['mean']:+.4f}" in b_line and "`(base)`" in b_line
    assert "`late`" not in text
    assert protocol.variants_table(summary, proto, {"variants": ["ref"]}) == []
    # a stage's named control is the reference; a round-1 model outside the stage's list gets a row too
    text = "\n".join(protocol.variants_table(summary, proto, {"variants": ["late", "b"], "control": "b"}))
    assert "against `b`" in text and text.index("| `b` |") < text.index("| `ref` |")
    assert f"{-d['b']['network']['mean']:+.4f}" in next(l for l in text.splitlines() if l.startswith("| `ref` |"))


def test_report_line_names_collapsed_models_from_their_lesion_checks(tmp_path):
    from types import SimpleNamespace
    models = []
    for key, check in (("a", {"ratio": 0.5, "collapsed": False}), ("b", {"ratio": 0.0, "collapsed": True}),
                       ("c", None), ("d", {"ratio": None, "collapsed": False}),
                       ("e", {"ratio": 6.8, "collapsed": False}),  # written before the overgrown flag existed
                       ("f", {"ratio": 2.0, "collapsed": False, "overgrown": True})):  # a run's own --overgrowth-ratio
        run = tmp_path / key
        run.mkdir()
        if check is not None:
            (run / "lesion_check.json").write_text(json.dumps(check))
        models.append(SimpleNamespace(key=key, run=run))
    line = protocol.lesion_check_line(models[:4])
    assert "3 of 4 models checked" in line and "ratio 0.00–0.50" in line and "**collapsed: b**" in line
    assert "none overgrown" in line
    assert "none collapsed" in protocol.lesion_check_line(models[:1])
    line = protocol.lesion_check_line(models)
    assert "5 of 6 models checked" in line and "ratio 0.00–6.80" in line and "**overgrown (ratio > 3): e, f**" in line
    assert protocol.lesion_check_line(models[2:3]) is None  # trained before the check existed


def test_a_failed_training_is_reported_with_its_error_and_a_missing_package_before_any_training(tmp_path, monkeypatch):
    case = tmp_path / "c0"
    case.mkdir()
    model = protocol.Model(("flair",), "v", 0, 1, tmp_path / "work" / "v" / "fold0-seed1", [], [case],
                           ["--crop", "not-a-number", "8", "8"])
    stage = {"steps": 1, "max_minutes": 1}
    with pytest.raises(SystemExit, match=r"training flair/v/fold0-seed1 failed \(exit 2\): .*--crop.*see "):
        protocol.train_all([model], stage, jobs=1)
    assert protocol._finished(model) is None  # nothing marked finished

    import importlib.util
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "CGCLesionSegLib" else real(name, *a))
    with pytest.raises(SystemExit, match="cannot import CGCLesionSegLib.*source .venv/bin/activate"):
        protocol.require_package()


def test_gmm_default_baseline_is_what_cgcseg_gmm_writes_with_its_defaults(tmp_path):
    """The ``gmm_default`` column and the P it thresholds (``default_rec``'s P_rec) equal the files ``cgcseg
    gmm`` writes when run with its defaults on the same case."""
    import numpy as np
    from CGCLesionSegLib.cli import main
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    mods = ["flair", "t1", "t1ce", "t2"]
    paths = save_phantom(make_phantom(shape_xyz=(48, 48, 32), spacing_xyz=(1.5, 1.5, 1.5), seed=8), tmp_path / "d", "c")
    rc = main(["gmm", "--progress", "none", *[a for m in mods for a in ("--input", f"{m}={paths[m]}")],
               "--output", str(tmp_path / "p.nii.gz"), "--binary-output", str(tmp_path / "b.nii.gz")])
    assert rc == 0
    case = protocol.CaseData(paths["case_dir"])
    p_rec = protocol.gmm_default_probability(case, mods)
    assert np.allclose(p_rec, read_image(tmp_path / "p.nii.gz").array_zyx, atol=1e-6)
    mask = protocol.gmm_default_mask(case, mods)
    assert mask.any() and np.array_equal(mask, read_image(tmp_path / "b.nii.gz", dtype=None).array_zyx > 0)


def test_sigma_tag_keeps_the_paper_settings_files_and_separates_other_gmm_settings():
    from CGCLesionSegLib.gmm import GMMConfig, recommended_config
    paper = protocol.gmm_config_of([], ["flair", "t1"])
    assert paper == GMMConfig()
    assert protocol.sigma_tag(0, paper) == "fold0" and protocol.sigma_tag(-1, paper) == "all"  # earlier runs' files
    rec = protocol.gmm_config_of(["--gmm-preset", "recommended"], ["flair", "t1"])
    assert rec == recommended_config()
    tag = protocol.sigma_tag(1, rec)
    assert tag.startswith("fold1-gmm-") and tag == protocol.sigma_tag(1, recommended_config())
    assert tag != protocol.sigma_tag(1, GMMConfig(n_clusters=5))


def test_train_variants_keeps_the_named_variants_and_their_round_one_models_only(tmp_path):
    """``--train-variants`` (rebuilding a source protocol's lost run folders): the named self-training
    variant brings its round-1 parents, the other variants stay out, and an unknown name is refused."""
    for group, names in (("brats", [f"c{i}" for i in range(7)]), ("unlabelled", ["u1"])):
        for n in names:
            (tmp_path / group / n).mkdir(parents=True)
    proto = protocol.load_protocol(ROOT / "docs" / "protocols" / "cgc-v13.toml")
    models = protocol.plan(proto, "screen", tmp_path, tmp_path / "work", tmp_path / "results", [])
    kept = protocol.only_variants(models, ["robust-2mm-st"])
    assert {m.variant for m in kept} == {"robust-2mm", "robust-2mm-st"} and len(kept) == 8
    assert all(m.parent in kept for m in kept if m.variant == "robust-2mm-st")
    assert [m for m in models if m in kept] == kept  # plan order: round 1 before the round 2 that needs it
    with pytest.raises(SystemExit, match="not in this stage.*robust-2mm-st"):
        protocol.only_variants(models, ["robust-st"])
    one_seed = protocol.only_variants(models, ["robust-2mm-st"], [900])
    assert {m.seed for m in one_seed} == {900} and len(one_seed) == 4
    with pytest.raises(SystemExit, match="seeds are 900, 901"):
        protocol.only_variants(models, ["robust-2mm-st"], [5])


CHAIN_PROTOCOL = """
name = "tiny-chain"
labelled = "brats"
unlabelled = "unlabelled"
folds = 2
base_train_args = ["--crop", "16", "16", "16"]
[variants.r1]
args = ["--ema", "0.9"]
[variants.r2]
args = ["--ema", "0.9"]
self_train_from = "r1"
[variants.r3]
args = ["--ema", "0.9"]
self_train_from = "r2"
[stages.screen]
modalities = [["flair"]]
variants = ["r3", "r2"]
seeds = [1, 2]
steps = 2
"""


def test_a_second_self_training_round_chains_to_the_first_and_each_round_is_planned_once(tmp_path):
    for group, names in (("brats", [f"c{i}" for i in range(7)]), ("unlabelled", ["u1"])):
        for n in names:
            (tmp_path / group / n).mkdir(parents=True)
    (tmp_path / "p.toml").write_text(CHAIN_PROTOCOL)
    proto = protocol.load_protocol(tmp_path / "p.toml")
    models = protocol.plan(proto, "screen", tmp_path, tmp_path / "work", tmp_path / "results", [])
    assert len(models) == 3 * 2 * 2 and len({m.run for m in models}) == len(models)  # r2 listed after r3: no copy
    for m in models:
        want = {"r1": None, "r2": "r1", "r3": "r2"}[m.variant]
        assert (m.parent.variant if m.parent else None) == want
        if m.parent is not None:
            assert m.parent in models and models.index(m.parent) < models.index(m)  # trained before
            assert (m.parent.fold, m.parent.seed, m.parent.test) == (m.fold, m.seed, m.test)
    r3 = [m for m in models if m.variant == "r3"]
    assert all(m.parent.parent.variant == "r1" for m in r3)
    kept = protocol.only_variants(models, ["r3"], [2])
    assert sorted(m.variant for m in kept) == ["r1", "r1", "r2", "r2", "r3", "r3"] and {m.seed for m in kept} == {2}
    proto["variants"]["r1"]["self_train_from"] = "r3"
    with pytest.raises(SystemExit, match="loops"):
        protocol.plan(proto, "screen", tmp_path, tmp_path / "work", tmp_path / "results", [])


def test_a_volume_keeping_variant_carries_its_pseudo_label_rule_and_bad_rules_are_refused(tmp_path):
    for group, names in (("brats", [f"c{i}" for i in range(7)]), ("unlabelled", ["u1"])):
        for n in names:
            (tmp_path / group / n).mkdir(parents=True)
    text = CHAIN_PROTOCOL.replace('self_train_from = "r1"', 'self_train_from = "r1"\npseudo_volume = "keep-p"')
    (tmp_path / "p.toml").write_text(text)
    proto = protocol.load_protocol(tmp_path / "p.toml")
    models = protocol.plan(proto, "screen", tmp_path, tmp_path / "work", tmp_path / "results", [])
    assert {m.variant: m.pseudo_volume for m in models} == {"r1": "fixed", "r2": "keep-p", "r3": "fixed"}
    (tmp_path / "bad.toml").write_text(text.replace('"keep-p"', '"bigger"'))
    with pytest.raises(SystemExit, match="pseudo_volume = 'bigger': one of fixed, keep-p"):
        protocol.load_protocol(tmp_path / "bad.toml")
    (tmp_path / "bad2.toml").write_text(CHAIN_PROTOCOL.replace('args = ["--ema", "0.9"]\n[variants.r2]',
                                                               'args = ["--ema", "0.9"]\npseudo_volume = "keep-p"\n'
                                                               '[variants.r2]', 1))
    with pytest.raises(SystemExit, match="only in a variant with self_train_from"):
        protocol.load_protocol(tmp_path / "bad2.toml")
