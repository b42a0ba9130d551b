"""scripts/train_default_models.py: the protocol's screening winner (a self-training recipe here) trained
on every case, round 2 from round 1 on pseudo-labels, exported with its output rule and card."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "benchmarks"))

PROTOCOL = """
name = "tiny"
labelled = "brats"
unlabelled = "unlabelled"
folds = 2
base_train_args = ["--crop", "16", "16", "16", "--spacing", "3", "3", "3", "--patch", "1", "1", "1",
                   "--batch-size", "1", "--checkpoint-every", "1", "--workers", "0", "--overgrowth-ratio", "1000"]
[variants.control]
args = []
[variants.robust]
args = ["--ema", "0.9", "--lr-schedule", "cosine"]
[variants.robust-st]
args = ["--ema", "0.9", "--lr-schedule", "cosine"]
self_train_from = "robust"
[stages.screen]
modalities = [["flair"]]
variants = ["control", "robust", "robust-st"]
seeds = [1]
steps = 2
[stages.confirm]
modalities = [["flair"]]
variant = "winner of screen"
seeds = [2]
steps = 3
"""


def _summary_group(mods: str, variant: str) -> dict:
    cols = ("p", "p_smooth", "p_netgrid", "gmm_default", "network", "default")
    return {"cases": ["a", "b"], "seeds": [1], "steps": [2],
            "means": {c: {"dice": 0.5 + 0.01 * i} for i, c in enumerate(cols)},
            "differences": {"network-p": {"mean": 0.04, "ci95": [-0.01, 0.09]},
                            "network-p_smooth": {"mean": -0.01, "ci95": [-0.05, 0.03]},
                            "default-gmm_default": {"mean": 0.0, "ci95": [-0.02, 0.02]}}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    root = tmp_path_factory.mktemp("ship")
    for group, names, seed0 in (("brats", ["a", "b"], 10), ("unlabelled", ["u"], 20)):
        for i, n in enumerate(names):
            ph = make_phantom(shape_xyz=(48, 48, 32), spacing_xyz=(1.5, 1.5, 1.5), seed=seed0 + i)
            save_phantom(ph, root / "data" / group, n)
    (root / "tiny.toml").write_text(PROTOCOL)
    results = root / "results"
    results.mkdir()
    (results / "tiny-screen.json").write_text(json.dumps(
        {"winner": "robust-st", "summary": {"flair/robust-st": _summary_group("flair", "robust-st")}}))
    # a rule protocol that scored the recipe's fold models with default_rec (as cgc-v11 did cgc-v9's)
    rule = _summary_group("flair", "robust-st")
    rule["means"]["default_rec"] = {"dice": 0.61}
    rule["differences"].update({"default_rec-default": {"mean": 0.06, "ci95": [0.01, 0.11]},
                                "default_rec-gmm_default": {"mean": 0.08, "ci95": [0.02, 0.14]}})
    (results / "tinyrule-confirm.json").write_text(json.dumps({"winner": "default_rec",
                                                               "summary": {"flair/robust-st": rule}}))
    return root


def test_recipe_is_read_from_the_screen_and_missing_screen_is_an_error(setup, tmp_path):
    import protocol
    import train_default_models as tdm
    proto = protocol.load_protocol(setup / "tiny.toml")
    assert tdm.recipe(proto, setup / "results") == "robust-st"
    with pytest.raises(SystemExit, match="no screening winner"):
        tdm.recipe(proto, tmp_path)
    models = tdm.plan_models(proto, ["flair", "four-channel"], setup / "data", tmp_path / "w", setup / "results")
    assert [(m.modalities, m.variant, m.parent is not None) for m in models] == [
        (("flair",), "robust", False), (("flair",), "robust-st", True),
        (("flair", "t1", "t1ce", "t2"), "robust", False), (("flair", "t1", "t1ce", "t2"), "robust-st", True)]
    # every case trains (labelled images and unlabelled), none is held out
    assert sorted(c.name for c in models[0].train) == ["a", "b", "u"] and models[0].test == []
    assert models[1].parent is models[0]
    assert models[1].key == "flair/robust-st/all-seed0"  # no held-out fold to name
    assert models[1].args[-4:] == ["--ema", "0.9", "--lr-schedule", "cosine"]
    # a protocol without a screen that confirms one recipe (cgc-v9): that recipe; with two, still an error
    one = PROTOCOL.split("[stages.screen]")[0] + ('[stages.confirm]\nmodalities = [["flair"]]\nvariants = ["robust-st"]\n'
                                                 'seeds = [2]\nsteps = 3\n')
    (tmp_path / "one.toml").write_text(one)
    assert tdm.recipe(protocol.load_protocol(tmp_path / "one.toml"), tmp_path) == "robust-st"
    (tmp_path / "two.toml").write_text(one.replace('["robust-st"]', '["robust", "robust-st"]'))
    with pytest.raises(SystemExit, match="no screening winner"):
        tdm.recipe(protocol.load_protocol(tmp_path / "two.toml"), tmp_path)


def test_trains_both_rounds_and_exports_a_model_with_its_rule_and_card(setup, monkeypatch):
    import torch

    import train_default_models as tdm
    monkeypatch.setitem(tdm.RULE_EVIDENCE, ("tiny", tdm.SHIP_OUTPUT_RULE), ("tinyrule", "confirm", "default_rec"))
    from CGCLesionSegLib.checkpoint import default_output_rule, load_checkpoint, read_checkpoint
    work, models_dir = setup / "work", setup / "models"
    rc = tdm.main(["--protocol", str(setup / "tiny.toml"), "--models", "flair", "--data", str(setup / "data"),
                   "--work-dir", str(work), "--results-dir", str(setup / "results"), "--models-dir", str(models_dir),
                   "--jobs", "1", "--export", "--hardware", "test machine"])
    assert rc == 0
    r1, r2 = work / "flair" / "robust" / "all-seed0", work / "flair" / "robust-st" / "all-seed0"
    for run in (r1, r2):
        finished = json.loads((run / "finished.json").read_text())
        assert finished["step"] == 3 and finished["device"] == "cpu"  # the confirmation budget, on the device asked
    # round 2 started from round 1 and trained on binary pseudo-labels of every case
    ck2 = read_checkpoint(r2 / "last.pt")
    assert Path(ck2["extra"]["init_checkpoint"]) == r1 / "last.pt"
    pseudo = sorted((work / "flair" / "robust-st" / "all-seed0-pseudo").glob("*.nii.gz"))
    assert [p.name for p in pseudo] == ["a.nii.gz", "b.nii.gz", "u.nii.gz"]
    from CGCLesionSegLib.image_io import read_image
    assert set(np.unique(read_image(pseudo[0]).array_zyx)) <= {0.0, 1.0}
    listing = (work / "flair" / "robust-st" / "all-seed0.csv").read_text().splitlines()
    assert listing[0] == "case,flair,prob" and len(listing) == 4
    # the exported model: averaged fp16 weights only, the declared rule inside the file
    out = models_dir / "cgc_flair.pt"
    ck = read_checkpoint(out)
    assert ck["default_output_rule"] == tdm.SHIP_OUTPUT_RULE == default_output_rule(out)
    assert tdm.SHIP_OUTPUT_RULE == "single-lesion-recommended"  # cgc-v11's confirmed rule
    assert "train_model" not in ck and ck["optimizer"] is None
    assert all(v.dtype == torch.float16 for v in ck["model"].values() if v.is_floating_point())
    ema = {k: v.half() for k, v in ck2["model"].items() if v.is_floating_point()}
    assert all(torch.equal(ck["model"][k], v) for k, v in ema.items())
    load_checkpoint(out)  # validates
    card = (models_dir / "cgc_flair.md").read_text()
    assert "screening winner `robust-st`" in card and "round 2" in card
    assert "stage `screen`" in card and "not the confirmation" in card
    assert "network − smoothed P -0.010 [-0.050, +0.030]" in card and "| 0.500 | 0.510 | 0.530 | 0.540 | 0.550 |" in card
    assert "<!-- card-dice-default" in card and "`single-lesion-recommended`" in card
    # the in-sample table's default column is made with the shipped rule, not the run's own ("none")
    assert "default output (single-lesion-recommended)" in card and "rule `none`" not in card
    assert all(r["default_rule"] == "single-lesion-recommended" for r in json.loads((r2 / "card_dice.json").read_text()))
    assert "\n\n## Held-out numbers of the output rule" in card
    # the rule protocol's numbers for this recipe: gmm 0.530, previous rule 0.550, the shipped rule 0.610
    assert "output rule `single-lesion-recommended` (protocol `tinyrule`, stage `confirm`)" in card
    assert "| 0.530 | 0.550 | 0.610 |" in card and "`cgcseg gmm` default +0.080 [+0.020, +0.140]" in card
    rows = json.loads((r2 / "card_dice.json").read_text())
    assert [r["case"] for r in rows] == ["a", "b"]  # in-sample table: the labelled cases only
    # a run whose lesion check found it collapsed is never exported; the shipped file stays as it was
    assert json.loads((r2 / "lesion_check.json").read_text())["ratio"] is not None
    check = json.loads((r2 / "lesion_check.json").read_text())
    (r2 / "lesion_check.json").write_text(json.dumps(dict(check, collapsed=True)))
    before = out.read_bytes()
    with pytest.raises(SystemExit, match="collapsed.*not exported"):
        tdm.main(["--protocol", str(setup / "tiny.toml"), "--models", "flair", "--data", str(setup / "data"),
                  "--work-dir", str(work), "--results-dir", str(setup / "results"), "--models-dir", str(models_dir),
                  "--jobs", "1", "--export"])
    assert out.read_bytes() == before
    # so is one whose check found it overgrown (far more voxels than its target)
    (r2 / "lesion_check.json").write_text(json.dumps(dict(check, ratio=6.8, overgrown=True)))
    with pytest.raises(SystemExit, match="overgrown.*6.8 times.*not exported"):
        tdm.main(["--protocol", str(setup / "tiny.toml"), "--models", "flair", "--data", str(setup / "data"),
                  "--work-dir", str(work), "--results-dir", str(setup / "results"), "--models-dir", str(models_dir),
                  "--jobs", "1", "--export"])
    assert out.read_bytes() == before


def test_card_time_sums_resumed_sessions_and_adds_round_1(tmp_path):
    """The log's `seconds` restarts with each --resume; the card's time is the sum over sessions, and a
    round-2 model also names round 1's time."""
    import export_default_model as edm
    header = "step,epoch,total,bce,cg,fg,lesion_patches,lr,seconds\n"
    row = lambda step, secs: f"{step},0,1,1,0,0,0,0.001,{secs}\n"
    r1, r2 = tmp_path / "r1", tmp_path / "r2"
    r1.mkdir(), r2.mkdir()
    # round 1: one session, 3 steps, 90 s
    (r1 / "loss_log.csv").write_text(header + row(1, 30) + row(2, 60) + row(3, 90))
    # round 2: three sessions (600 s to step 2, resumed: 300 s to step 3, resumed: 120 s to step 4)
    (r2 / "loss_log.csv").write_text(header + row(1, 300) + row(2, 600) + row(3, 300) + row(4, 120))
    assert edm.training_seconds(r1 / "loss_log.csv") == (90.0, 1)
    assert edm.training_seconds(r2 / "loss_log.csv") == (1020.0, 3)
    note = edm._length_note(r2, {"init_checkpoint": str(r1 / "last.pt")}, "a box")
    assert note.startswith("17 min wall-clock on a box (summed over 3 sessions: resumed)")
    assert "which took 2 min (both rounds: 18 min)" in note
    assert edm._length_note(r1, {}, "a box") == "2 min wall-clock on a box"


def test_card_scores_follow_the_output_rule_the_model_records(tmp_path, make_tiny_model):
    """``default`` in the card rows (and so the regression record) is what `cgcseg segment` writes with the
    model: its recorded rule, here single-lesion-recommended, not a hard-coded single-lesion."""
    import evaluate_cgc
    from CGCLesionSegLib.checkpoint import read_checkpoint, save_checkpoint_dict
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.inference import InferenceConfig, output_preset, segment_case
    from CGCLesionSegLib.metrics import dice
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    mods = ["flair", "t1", "t1ce", "t2"]
    paths = save_phantom(make_phantom(shape_xyz=(40, 40, 24), spacing_xyz=(1.5, 1.5, 1.5), seed=12), tmp_path, "c")
    model = make_tiny_model(tmp_path / "m.pt", mods)
    ck = read_checkpoint(model)
    ck["default_output_rule"] = "single-lesion-recommended"
    save_checkpoint_dict(model, ck)
    row = evaluate_cgc._score_case(paths["case_dir"], model, mods, "cpu")
    assert row["default_rule"] == "single-lesion-recommended"
    images = [read_image(paths[m]) for m in mods]
    ref = read_image(paths["seg"], dtype=None).array_zyx > 0
    want = segment_case([i.array_zyx for i in images], images[0].geometry, mods, model,
                        config=InferenceConfig(device="cpu", **output_preset("single-lesion-recommended"))).mask
    assert row["default_dice"] == pytest.approx(dice(want, ref), abs=1e-9)
    import export_default_model
    lines = export_default_model.dice_section([row])
    assert any("default output (single-lesion-recommended)" in ln for ln in lines)


def test_update_model_cards_re_declares_the_output_rule_without_touching_the_weights(tmp_path):
    """``benchmarks/update_model_cards.py --output-rule R``: the checkpoint records R (weights identical), the
    card's rule line says R, and its Dice section is re-measured with R; an unknown rule changes nothing."""
    import shutil
    import update_model_cards
    import torch
    from CGCLesionSegLib.checkpoint import default_output_rule, read_checkpoint
    from CGCLesionSegLib.default_models import available_default_models
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    for i in range(2):
        save_phantom(make_phantom(shape_xyz=(40, 40, 24), spacing_xyz=(1.5, 1.5, 1.5), seed=40 + i),
                     tmp_path / "data" / "brats", f"case{i}")
    shipped = available_default_models()[("flair",)]
    models = tmp_path / "models"
    models.mkdir()
    for suffix in (".pt", ".md"):
        shutil.copy(shipped.with_suffix(suffix), models / shipped.with_suffix(suffix).name)
    model = models / shipped.name
    before = read_checkpoint(model)["model"]
    with pytest.raises(SystemExit, match="unknown output rule"):
        update_model_cards.main(["--data", str(tmp_path / "data"), "--models-dir", str(models), "--output-rule", "x"])
    assert model.read_bytes() == shipped.read_bytes()
    update_model_cards.main(["--data", str(tmp_path / "data"), "--models-dir", str(models),
                             "--output-rule", "single-lesion-recommended"])
    assert default_output_rule(model) == "single-lesion-recommended"
    after = read_checkpoint(model)["model"]
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    card = model.with_suffix(".md").read_text()
    assert "- **Output rule** (`--postprocess auto`): `single-lesion-recommended`." in card
    assert "default output (single-lesion-recommended)" in card and "| case0 |" in card and "| case1 |" in card
    assert card.count("<!-- card-dice-default ") == 1


def test_rule_notes_only_where_a_rule_protocol_measured_this_recipe(setup, monkeypatch):
    """No card section for a rule without evidence, for another recipe or another recipe protocol (even with
    the same variant name), or for a missing results file."""
    import train_default_models as tdm
    monkeypatch.setitem(tdm.RULE_EVIDENCE, ("tiny", "single-lesion-recommended"), ("tinyrule", "confirm", "default_rec"))
    results = setup / "results"
    text = tdm.rule_notes("tiny", "single-lesion-recommended", ("flair",), "robust-st", results)
    assert "0.610" in text and "−" in text
    assert tdm.rule_notes("tiny", "single-lesion", ("flair",), "robust-st", results) == ""
    assert tdm.rule_notes("other", "single-lesion-recommended", ("flair",), "robust-st", results) == ""
    assert tdm.rule_notes("tiny", "single-lesion-recommended", ("flair",), "robust", results) == ""
    assert tdm.rule_notes("tiny", "single-lesion-recommended", ("flair", "t1", "t1ce", "t2"), "robust-st", results) == ""
    monkeypatch.setitem(tdm.RULE_EVIDENCE, ("tiny", "single-lesion-recommended"), ("absent", "confirm", "default_rec"))
    assert tdm.rule_notes("tiny", "single-lesion-recommended", ("flair",), "robust-st", results) == ""
    # the real evidence file of the shipped recipe exists and has both shipped model sets; cgc-v13 trained a
    # variant of the same name, but cgc-v11 did not score its models
    for mods in tdm.MODEL_SETS.values():
        assert "`single-lesion-recommended`" in tdm.rule_notes("cgc-v9", "single-lesion-recommended", mods, "robust-2mm-st")
        assert tdm.rule_notes("cgc-v13", "single-lesion-recommended", mods, "robust-2mm-st") == ""


def test_threshold_protocol_card_compares_the_shipped_threshold_with_the_same_rule_at_half():
    """cgc-v25 scores no `default` column: the card's comparison is the same rule at 0.5 (`default_rec`), its
    paired difference from the rows with the tool the declaration was read with (shipped_thresholds --compare)."""
    import protocol
    import train_default_models as tdm
    res = json.loads((tdm.RESULTS / "cgc-v25-confirm-flair.json").read_text())
    group = res["summary"]["flair/robust-2mm-std"]
    per_case: dict = {}  # seeds averaged per case, cases in the rows' order
    for r in res["rows"]:
        per_case.setdefault(r["case"], []).append(r["default_rec_03"]["dice"] - r["default_rec"]["dice"])
    diffs = [sum(v) / len(v) for v in per_case.values()]
    lo, hi = protocol.bootstrap_ci(diffs, 10000, 0)
    text = tdm.rule_notes("cgc-v24", "single-lesion-recommended", ("flair",), "robust-2mm-std")
    assert f"| {group['means']['gmm_default']['dice']:.3f} | {group['means']['default_rec']['dice']:.3f} | " \
           f"{group['means']['default_rec_03']['dice']:.3f} |" in text
    assert f"− `single-lesion-recommended` at 0.5 {sum(diffs) / len(diffs):+.3f} [{lo:+.3f}, {hi:+.3f}]" in text
    assert "`single-lesion-recommended` at 0.5 +0.019 [-0.022, +0.058]" in text  # the declaration's reading
    d = group["differences"]["default_rec_03-gmm_default"]
    assert f"`cgcseg gmm` default {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" in text


def test_benchmark_tables_name_the_rule_their_default_column_was_made_with():
    """evaluate_cgc's --model / leave-cases-out tables title the default column with the rows' rule, and
    say when rows of different rules were mixed."""
    import evaluate_cgc
    keys = ("gmm", "cgc", "gmm_clean", "cgc_clean", "default")
    row = lambda rule, v: dict({f"{k}_{m}": v for k in keys for m in ("dice", "sensitivity")}, case="c", default_rule=rule)
    text = evaluate_cgc._table([row("single-lesion-recommended", 0.5)], "t", "n")
    assert "**default** (single-lesion-recommended)" in text and "recommended GMM preset" in text
    old = {k: v for k, v in row("x", 0.5).items() if k != "default_rule"}  # rows before the field
    assert "**default** (single-lesion)" in evaluate_cgc._table([old], "t", "n")
    mixed = evaluate_cgc._table([row("none", 0.2), row("single-lesion", 0.4)], "t", "n")
    assert "the rule each model records" in mixed and "**0.3000**" in mixed
    curve = evaluate_cgc._curve_table([([10], [row("single-lesion-recommended", 0.5)])], "t", "n")
    assert "default (single-lesion-recommended)" in curve


def test_benchmark_tables_say_which_threshold_their_default_column_used():
    """A model that records ``default_threshold`` (0.3 for the shipped ones) has its default column
    thresholded there; the table says so, and says 0.5 for rows made before the field."""
    import evaluate_cgc
    keys = ("gmm", "cgc", "gmm_clean", "cgc_clean", "default")
    row = dict({f"{k}_{m}": 0.5 for k in keys for m in ("dice", "sensitivity")}, case="c",
               default_rule="single-lesion-recommended")
    assert "thresholded at 0.3 (the checkpoint's `default_threshold`)" in evaluate_cgc._table(
        [dict(row, default_threshold=0.3)], "t", "n")
    assert "thresholded at 0.5." in evaluate_cgc._table([row], "t", "n")
    mixed = evaluate_cgc._table([dict(row, default_threshold=0.3), dict(row, default_threshold=0.5)], "t", "n")
    assert "the threshold each model records" in mixed


def test_card_recipe_shows_each_repeated_option_once_with_the_value_argparse_keeps():
    import argparse

    import train_default_models as tdm
    args = ["--crop", "96", "96", "64", "--spacing", "1.5", "1.5", "1.5", "--lr", "1e-3", "--ema", "0.99",
            "--shift", "-0.5", "--spacing", "2", "2", "2", "--flip"]
    got = tdm.effective_args(args)
    assert got == ["--crop", "96", "96", "64", "--spacing", "2", "2", "2", "--lr", "1e-3", "--ema", "0.99",
                   "--shift", "-0.5", "--flip"]
    ap = argparse.ArgumentParser()
    for opt, n in (("--crop", 3), ("--spacing", 3), ("--lr", 1), ("--ema", 1), ("--shift", 1)):
        ap.add_argument(opt, nargs=n)
    ap.add_argument("--flip", action="store_true")
    assert vars(ap.parse_args(got)) == vars(ap.parse_args(args))  # the same parse as the full list
    assert tdm.effective_args([]) == []


def test_shipping_a_second_self_training_round_trains_every_round_in_order(setup, tmp_path):
    import protocol
    import train_default_models as tdm
    chain = PROTOCOL.replace('self_train_from = "robust"\n', 'self_train_from = "robust"\n[variants.robust-st2]\n'
                             'args = ["--ema", "0.9"]\nself_train_from = "robust-st"\n')
    (tmp_path / "chain.toml").write_text(chain)
    proto = protocol.load_protocol(tmp_path / "chain.toml")
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "tiny-screen.json").write_text(json.dumps({"winner": "robust-st2"}))
    models = tdm.plan_models(proto, ["flair"], setup / "data", tmp_path / "w", tmp_path / "results")
    assert [m.variant for m in models] == ["robust", "robust-st", "robust-st2"]
    assert models[2].parent is models[1] and models[1].parent is models[0] and models[0].parent is None
    assert models[2].args[-2:] == ["--ema", "0.9"] and all(m.test == [] for m in models)


def test_a_named_variant_is_shipped_without_a_screening_winner_and_an_unknown_one_is_refused(setup, tmp_path):
    import protocol
    import train_default_models as tdm
    proto = protocol.load_protocol(setup / "tiny.toml")
    models = tdm.plan_models(proto, ["flair"], setup / "data", tmp_path / "w", tmp_path / "no-results",
                             variant="robust-st")  # no results file: the screen's winner is not read
    assert [m.variant for m in models] == ["robust", "robust-st"]
    with pytest.raises(SystemExit, match="no variant 'robust-st9'"):
        tdm.plan_models(proto, ["flair"], setup / "data", tmp_path / "w", tmp_path / "no-results", variant="robust-st9")


def test_a_keep_p_variant_ships_with_its_pseudo_label_rule(setup, tmp_path):
    """A variant with `pseudo_volume = "keep-p"` (cgc-v22) is retrained with that rule's targets, not the
    fixed threshold: the plan carries it to protocol.pseudo_labels; its round 1 and a fixed variant keep fixed."""
    import protocol
    import train_default_models as tdm
    text = PROTOCOL.replace('self_train_from = "robust"\n', 'self_train_from = "robust"\n[variants.robust-stv]\n'
                            'args = ["--ema", "0.9", "--lr-schedule", "cosine"]\nself_train_from = "robust"\n'
                            'pseudo_volume = "keep-p"\n')
    (tmp_path / "v.toml").write_text(text)
    proto = protocol.load_protocol(tmp_path / "v.toml")
    models = tdm.plan_models(proto, ["flair"], setup / "data", tmp_path / "w", tmp_path / "none", variant="robust-stv")
    assert [(m.variant, m.pseudo_volume) for m in models] == [("robust", "fixed"), ("robust-stv", "keep-p")]
    fixed = tdm.plan_models(proto, ["flair"], setup / "data", tmp_path / "w", tmp_path / "none", variant="robust-st")
    assert [m.pseudo_volume for m in fixed] == ["fixed", "fixed"]


def test_held_out_notes_read_a_per_set_confirmation_before_the_screen(setup, tmp_path):
    """A confirmation run per model set (`--model-set`, results `<name>-<stage>-<modalities>.json`) is the
    card's evidence for that set and its section is named; a set without its own file falls back to the
    whole stage's file (here the screen)."""
    import shutil
    import train_default_models as tdm
    results = tmp_path / "results"
    shutil.copytree(setup / "results", results)
    confirm = _summary_group("flair", "robust-st")
    confirm["means"]["network"] = {"dice": 0.777}
    (results / "tiny-confirm-flair.json").write_text(json.dumps({"summary": {"flair/robust-st": confirm}}))
    proto = {"name": "tiny", "folds": 2}
    text = tdm.held_out_notes(proto, ("flair",), "robust-st", results)
    assert "stage `confirm`" in text and "0.777" in text and "`protocol-tiny-confirm-flair`" in text
    assert "screening numbers" not in text
    (results / "tiny-confirm-flair.json").unlink()
    text = tdm.held_out_notes(proto, ("flair",), "robust-st", results)
    assert "stage `screen`" in text and "`protocol-tiny-screen`" in text and "0.777" not in text
    # cgc-v24's confirmation was run per set: both shipped sets find their own numbers, not the screen's
    for mods in tdm.MODEL_SETS.values():
        text = tdm.held_out_notes({"name": "cgc-v24", "folds": 2}, mods, "robust-2mm-std")
        assert f"`protocol-cgc-v24-confirm-{'-'.join(mods)}`" in text and "2400, 2401" in text


def test_rule_notes_of_a_threshold_protocol_without_a_default_column(setup, tmp_path, monkeypatch):
    """A threshold protocol (as cgc-v25) has no `default` column: the card shows its rule's numbers and a
    dash for the previous rule instead of failing."""
    import shutil
    import train_default_models as tdm
    results = tmp_path / "results"
    shutil.copytree(setup / "results", results)
    group = _summary_group("flair", "robust-st")
    del group["means"]["default"]
    group["means"]["default_rec_03"] = {"dice": 0.861}
    group["differences"]["default_rec_03-gmm_default"] = {"mean": 0.031, "ci95": [0.007, 0.058]}
    (results / "tinythr-confirm-flair.json").write_text(json.dumps({"summary": {"flair/robust-st": group}}))
    monkeypatch.setitem(tdm.RULE_EVIDENCE, ("tiny", "single-lesion-recommended"), ("tinythr", "confirm", "default_rec_03"))
    text = tdm.rule_notes("tiny", "single-lesion-recommended", ("flair",), "robust-st", results)
    assert "0.861" in text and "+0.031 [+0.007, +0.058]" in text and "`protocol-tinythr-confirm-flair`" in text
    assert "| — |" in text


def test_cgc_v24_cards_carry_cgc_v25_numbers_of_the_shipped_threshold():
    """The shipped rival's cards: the rule section comes from its own set's cgc-v25 file at the recorded 0.3."""
    import train_default_models as tdm
    for mods in tdm.MODEL_SETS.values():
        text = tdm.rule_notes("cgc-v24", "single-lesion-recommended", mods, "robust-2mm-std")
        assert f"`protocol-cgc-v25-confirm-{'-'.join(mods)}`" in text and "at 0.5 |" in text and "| — |" not in text


def test_two_seeds_ship_their_seed_ensemble_and_the_card_scores_it(setup, tmp_path, monkeypatch):
    """``--seeds 0 1``: the recipe trains once per seed; the shipped file is their ensemble (format 2, float16
    members, the rule recorded), its card says so and its in-sample table scores the ensemble, not one member."""
    import torch

    import evaluate_cgc
    import train_default_models as tdm
    from CGCLesionSegLib.checkpoint import ENSEMBLE_FORMAT_VERSION, load_checkpoint, read_checkpoint
    from CGCLesionSegLib.network import CGCEnsemble
    scored = []
    real = evaluate_cgc._score_case
    monkeypatch.setattr(evaluate_cgc, "_score_case", lambda case, path, *a: scored.append(Path(path)) or real(case, path, *a))
    work, models_dir = tmp_path / "work", tmp_path / "models"
    common = ["--protocol", str(setup / "tiny.toml"), "--models", "flair", "--data", str(setup / "data"),
              "--work-dir", str(work), "--results-dir", str(setup / "results"), "--models-dir", str(models_dir),
              "--jobs", "1"]
    with pytest.raises(SystemExit, match="each seed once"):
        tdm.main(common + ["--seeds", "0", "0"])
    assert tdm.main(common + ["--seeds", "0", "1", "--export"]) == 0
    runs = [work / "flair" / "robust-st" / f"all-seed{s}" for s in (0, 1)]
    assert all((r / "finished.json").exists() for r in runs)
    out = models_dir / "cgc_flair.pt"
    ck = read_checkpoint(out)
    assert ck["format_version"] == ENSEMBLE_FORMAT_VERSION and len(ck["members"]) == 1
    assert ck["default_output_rule"] == tdm.SHIP_OUTPUT_RULE and ck["optimizer"] is None
    assert [s["seed"] for s in ck["extra"]["ensemble"]] == [0, 1]
    for state, run in zip([ck["model"], ck["members"][0]], runs):
        own = read_checkpoint(run / "last.pt")["model"]
        assert all(v.dtype == torch.float16 and torch.equal(v, own[k].half()) for k, v in state.items()
                   if v.is_floating_point())
    model, info = load_checkpoint(out)
    assert isinstance(model, CGCEnsemble) and info.members == 2
    assert set(p.name for p in scored) == {"ensemble-seeds-0-1.pt"}  # the card scores what ships
    card = (models_dir / "cgc_flair.md").read_text()
    assert "a seed ensemble of 2 networks" in card and "seeds 0, 1" in card and "member 2 (`all-seed1`)" in card


def test_an_ensembles_card_carries_the_ensemble_protocols_numbers_for_its_own_set(tmp_path, monkeypatch):
    import train_default_models as tdm
    group = {"cases": list("abcdefg"), "seeds": [2600, 2601],
             "means": {c: {"dice": v} for c, v in [("p_smooth", 0.7586), ("gmm_default", 0.8302), ("network", 0.7823),
                                                   ("network_ensemble", 0.8183), ("default_rec_03", 0.8476),
                                                   ("default_rec_03_ensemble", 0.8532)]},
             "differences": {"network_ensemble-p_smooth": {"mean": 0.0597, "ci95": [0.0036, 0.1188]},
                             "network_ensemble-network": {"mean": 0.036, "ci95": [0.008, 0.0699]}}}
    (tmp_path / "ens-confirm-flair.json").write_text(json.dumps({"summary": {"flair/r": group}}))
    monkeypatch.setitem(tdm.ENSEMBLE_EVIDENCE, ("tiny", "r"), ("ens", "confirm"))
    text = tdm.ensemble_notes("tiny", ("flair",), "r", tmp_path)
    assert "protocol `ens`, stage `confirm`" in text and "seeds 2600, 2601" in text
    assert "| 0.759 | 0.830 | 0.782 | 0.818 | 0.848 | 0.853 |" in text
    assert "network − smoothed P +0.060 [+0.004, +0.119]" in text and "network +0.036 [+0.008, +0.070]" in text
    assert "section `protocol-ens-confirm-flair`" in text
    # no numbers for this set, this recipe or this protocol: nothing is claimed
    assert tdm.ensemble_notes("tiny", ("flair", "t1", "t1ce", "t2"), "r", tmp_path) == ""
    assert tdm.ensemble_notes("tiny", ("flair",), "other", tmp_path) == ""


def _shipped_recipe(mods: tuple) -> tuple[str, str]:
    """(recipe protocol, variant) the shipped file of ``mods`` was trained with, read from its card's Recipe line."""
    import train_default_models as tdm
    from CGCLesionSegLib.default_models import available_default_models
    card = available_default_models()[tuple(mods)].with_suffix(".md").read_text()
    found = tdm.RECIPE_LINE.search(card)
    assert found, "the shipped card has no Recipe line naming its protocol and variant"
    return found.group(1), found.group(2)


def test_threshold_card_section_reads_the_leave_one_out_protocol_and_matches_what_the_shipped_files_record():
    """Each shipped file's threshold section (cgc-v29 for cgc-v24's recipe, cgc-v44's rival stage for cgc-v43's): its
    numbers are the results file's, and the threshold the procedure gives over every case is the one the shipped file
    records (a re-exported file must get it again: the guard is here)."""
    import train_default_models as tdm
    from CGCLesionSegLib.checkpoint import default_threshold
    from CGCLesionSegLib.default_models import available_default_models, model_file_name
    shipped = available_default_models()
    for mods in tdm.MODEL_SETS.values():
        recipe = _shipped_recipe(mods)
        name, stage = tdm.THRESHOLD_EVIDENCE[recipe]
        res = json.loads((tdm.RESULTS / f"{name}-{stage}-{'-'.join(mods)}.json").read_text())
        key = f"{'-'.join(mods)}/{recipe[1]}"
        group, chosen = res["summary"][key], res["leave_one_out"][key]["default_rec_loo_ensemble"]
        text = tdm.threshold_notes(*recipe[:1], mods, recipe[1])
        assert f"| {group['means']['default_rec_loo_ensemble']['dice']:.3f} |" in text
        d = group["differences"]["default_rec_loo_ensemble-gmm_default"]
        assert f"`cgcseg gmm` default {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" in text
        assert f"gives {chosen['all']['threshold']:g}, the threshold this file records" in text
        path = shipped[tuple(mods)]
        assert path.name == model_file_name(list(mods))
        assert default_threshold(path, "single-lesion-recommended") == pytest.approx(chosen["all"]["threshold"])
        card = path.with_suffix(".md").read_text()
        assert f"## Held-out numbers of the threshold (protocol `{name}`" in card and "(the shipped threshold)" not in card
    assert tdm.threshold_notes("cgc-v9", ("flair",), "robust-2mm-st") == ""


def test_replication_card_section_reads_cgc_v31_and_is_only_in_a_card_of_that_recipe():
    """The cgc-v24 FLAIR ensemble's second independent reading (cgc-v31, fresh seeds): its numbers are the results
    file's two-seed columns; a shipped card carries the section exactly when its recipe has such a reading (the
    four-channel set was not scored by cgc-v31; the FLAIR file ships cgc-v43's recipe since 2026-12-05)."""
    import train_default_models as tdm
    from CGCLesionSegLib.default_models import available_default_models
    res = json.loads((tdm.RESULTS / "cgc-v31-confirm.json").read_text())
    group = res["summary"]["flair/robust-2mm-std"]
    text = tdm.ensemble_replication_notes("cgc-v24", ("flair",), "robust-2mm-std")
    assert f"| {group['means']['network_ensemble2']['dice']:.3f} |" in text and "seeds 3000, 3001 " in text
    d = group["differences"]["network_ensemble2-p_smooth"]
    assert f"ensemble network − smoothed P {d['mean']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]" in text
    assert tdm.ensemble_replication_notes("cgc-v24", ("flair", "t1", "t1ce", "t2"), "robust-2mm-std") == ""
    assert tdm.ensemble_replication_notes("cgc-v9", ("flair",), "robust-2mm-st") == ""
    shipped = available_default_models()
    for mods in tdm.MODEL_SETS.values():
        card = shipped[tuple(mods)].with_suffix(".md").read_text()
        expected = tdm.ensemble_replication_notes(*_shipped_recipe(mods)[:1], mods, _shipped_recipe(mods)[1])
        assert (expected.strip() in card) if expected else ("read again on fresh seeds" not in card)


def test_every_shipped_card_is_what_the_generator_writes_from_the_committed_results(tmp_path):
    """A card whose evidence sections differ from what `--export` would write now (a generator change, a results file
    changed after export) fails here; `--refresh-cards` rewrites them. The FLAIR file ships cgc-v43's rival, so its
    card must carry the rival-against-control section; a copy whose section was altered is rewritten."""
    import shutil
    import train_default_models as tdm
    from CGCLesionSegLib.default_models import available_default_models
    for mods, path in available_default_models().items():
        copy = tmp_path / path.name
        shutil.copy(path, copy)
        shutil.copy(path.with_suffix(".md"), copy.with_suffix(".md"))
        assert not tdm.refresh_card(copy), f"{path.with_suffix('.md').name} is stale: run --refresh-cards"
    flair = tmp_path / available_default_models()[("flair",)].name
    assert _shipped_recipe(("flair",)) in tdm.RIVAL_EVIDENCE
    text = flair.with_suffix(".md").read_text()
    assert "## Against the recipe it replaced" in text
    flair.with_suffix(".md").write_text(text.replace("| **`robust-2mm-stdopen`** | 0.", "| **`robust-2mm-stdopen`** | 1."))
    assert tdm.refresh_card(flair) and flair.with_suffix(".md").read_text() == text


def test_rival_card_section_pairs_both_readings_over_cases_and_says_nothing_without_one(tmp_path, monkeypatch):
    """A recipe that replaced the shipped one (cgc-v43's FLAIR set): its card shows both recipes' held-out numbers and
    rival − control paired over cases, each difference checked against a hand computation; a missing control stage,
    another set's rows or a probe of another pair give no section (nothing borrowed)."""
    import statistics
    import train_default_models as tdm
    import protocol
    cases = ["a", "b", "c", "d"]
    rng = np.random.default_rng(0)
    vals = {(v, col): {c: float(rng.uniform(0.6, 0.9)) for c in cases}
            for v in ("new", "old") for col in ("network", "default", "default_rec_loo_ensemble")}
    group = lambda v, cols: {"cases": cases, "seeds": [4000, 4001],
                             "per_case": {c: {col: {"dice": vals[(v, col)][c]} for col in cols} for c in cases},
                             "means": {col: {"dice": statistics.mean(vals[(v, col)].values())} for col in cols},
                             "differences": {}}
    (tmp_path / "rv-confirm-flair.json").write_text(json.dumps({"summary": {
        "flair/new": group("new", ("network", "default")), "flair/old": group("old", ("network", "default"))}}))
    # the four-channel set's rule rows are in the same stage files: they must not be mixed in
    other = {"flair-t1-t1ce-t2/new": {"per_case": {c: {"default_rec_loo_ensemble": {"dice": 0.0}} for c in cases}}}
    for stage, v in (("rival", "new"), ("control", "old")):
        (tmp_path / f"rl-{stage}.json").write_text(json.dumps({"summary": {
            f"flair/{v}": group(v, ("default_rec_loo_ensemble",)), **other}}))
    probe = {"summary": {"cases": ["a", "b"], "variants": {"new": {"network": {"sens_second": 0.709}},
                                                           "old": {"network": {"sens_second": 0.402}}},
                         "difference": {"of": "new - old", "mean": 0.307, "ci95": [0.228, 0.411]}},
             "rows": [{"modalities": ["flair"]}]}
    (tmp_path / "pr-flair.json").write_text(json.dumps(probe))
    monkeypatch.setitem(tdm.RIVAL_EVIDENCE, ("rv", "new"), ("old", "rl", "pr"))
    text = tdm.rival_notes("rv", ("flair",), "new", tmp_path)

    def expect(col: str) -> str:
        d = [vals[("new", col)][c] - vals[("old", col)][c] for c in cases]
        lo, hi = protocol.bootstrap_ci(d, 10000, 0)
        return f"{statistics.mean(d):+.4f} [{lo:+.3f}, {hi:+.3f}]"
    m = lambda v, col: f"{statistics.mean(vals[(v, col)].values()):.4f}"
    assert (f"| **`new`** | {m('new', 'network')} | {m('new', 'default')} | 0.709 | "
            f"{m('new', 'default_rec_loo_ensemble')} |") in text
    assert f"| `old` | {m('old', 'network')} | {m('old', 'default')} | 0.402 | {m('old', 'default_rec_loo_ensemble')} |" in text
    assert f"network {expect('network')}; `single-lesion` default {expect('default')}" in text
    assert f"probe second lesion +0.3070 [+0.228, +0.411]; shipped rule {expect('default_rec_loo_ensemble')}." in text
    assert "over its 2 cases with a second lesion" in text and "`pr-flair`" in text
    # another set, a recipe without a rival reading, a probe of another pair, a missing control stage: nothing
    assert tdm.rival_notes("rv", ("flair", "t1", "t1ce", "t2"), "new", tmp_path) == ""
    assert tdm.rival_notes("rv", ("flair",), "old", tmp_path) == ""
    probe["summary"]["difference"]["of"] = "new - older"
    (tmp_path / "pr-flair.json").write_text(json.dumps(probe))
    assert tdm.rival_notes("rv", ("flair",), "new", tmp_path) == ""
    probe["summary"]["difference"]["of"] = "new - old"
    (tmp_path / "pr-flair.json").write_text(json.dumps(probe))
    (tmp_path / "rl-control.json").unlink()
    assert tdm.rival_notes("rv", ("flair",), "new", tmp_path) == ""


def test_ensemble_and_threshold_sections_of_a_narrower_protocol_leave_out_the_columns_it_did_not_score(tmp_path, monkeypatch):
    """cgc-v44 scored the ensemble network and the shipped rule at the left-out threshold, not the one-seed or 0.3
    columns: the card's tables then have only what was scored (no dash columns), and no difference it lacks."""
    import train_default_models as tdm
    group = {"cases": list("abc"), "seeds": [4000, 4001],
             "means": {c: {"dice": v} for c, v in [("p", 0.70), ("p_smooth", 0.75), ("gmm_default", 0.83),
                                                   ("network_ensemble", 0.80), ("default_rec_loo_ensemble", 0.86)]},
             "differences": {"network_ensemble-p_smooth": {"mean": 0.045, "ci95": [0.013, 0.088], "min_case": -0.01},
                             "default_rec_loo_ensemble-gmm_default": {"mean": 0.034, "ci95": [-0.007, 0.077],
                                                                      "min_case": -0.058}}}
    loo = {"default_rec_loo_ensemble": {"per_case": {c: {"threshold": t} for c, t in zip("abc", (0.3, 0.35, 0.35))},
                                        "all": {"threshold": 0.35}}}
    (tmp_path / "nr-rival-flair.json").write_text(json.dumps({"summary": {"flair/r": group},
                                                              "leave_one_out": {"flair/r": loo}}))
    monkeypatch.setitem(tdm.ENSEMBLE_EVIDENCE, ("tiny", "r"), ("nr", "rival"))
    monkeypatch.setitem(tdm.THRESHOLD_EVIDENCE, ("tiny", "r"), ("nr", "rival"))
    ens = tdm.ensemble_notes("tiny", ("flair",), "r", tmp_path)
    assert "| P ≥ 0.5 | smoothed P | `cgcseg gmm` default | **network, ensemble** |\n|---|---|---|---|\n" \
           "| 0.700 | 0.750 | 0.830 | 0.800 |" in ens
    assert "—" not in ens and "one seed" not in ens and "ensemble network − smoothed P +0.045 [+0.013, +0.088]" in ens
    thr = tdm.threshold_notes("tiny", ("flair",), "r", tmp_path)
    assert "| `cgcseg gmm` default | **default output at the left-out threshold** |" in thr and "| 0.830 | 0.860 |" in thr
    assert "− `cgcseg gmm` default +0.034 [-0.007, +0.077] (worst case -0.058)" in thr and "same freedom" not in thr
    assert "leave one case out: 0.3, 0.35" in thr and "gives 0.35, the threshold this file records" in thr
