"""`python -m CGCTraining --self-train-rounds N` and `python -m CGCTraining.self_train`: the shipped recipe's
self-training round for any cohort, with resume, budget stops and clear refusals."""
from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from CGCLesionSegLib.checkpoint import read_checkpoint
from CGCLesionSegLib.image_io import read_image
from test_training_synth import MODS, TINY_NET_ARGS, run_cli, subprocess_env, write_brats_folder

TRAIN = ["--modalities", *MODS, "--crop", "16", "16", "16", "--batch-size", "1", "--workers", "0", "--device", "cpu",
         "--steps", "2", "--progress", "none", "--checkpoint-every", "1", *TINY_NET_ARGS,
         "--overgrowth-ratio", "1000"]  # a 2-step model marks most of the brain: overgrown by the default bound


def _reference_pseudo_label(model, case_dir, name):
    """The rule written out by hand: fused map 0.5·CGC + 0.5·P >= 0.5, 2-D hole filling, nothing removed."""
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    imgs = [read_image(case_dir / f"{name}_{m}.nii.gz") for m in MODS]
    cfg = InferenceConfig(device="cpu", gmm_weight=0.5, fill_holes="2d", keep_largest=0, opening_radius=0,
                          min_component_voxels=0)
    return segment_case([i.array_zyx for i in imgs], imgs[0].geometry, list(MODS), model, config=cfg).mask


@pytest.fixture(scope="module")
def two_rounds(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("selftrain")
    cases = write_brats_folder(tmp / "cases", n_cases=2)
    run = tmp / "run"
    r = run_cli(["--cases", cases, "--output-dir", run, "--self-train-rounds", "1", *TRAIN], timeout=600)
    return cases, run, r


def test_two_rounds_train_on_the_first_rounds_pseudo_labels(two_rounds):
    cases, run, r = two_rounds
    assert r.returncode == 0, r.stderr
    second = run / "self-train-1"
    assert read_checkpoint(run / "last.pt")["step"] == 2 and read_checkpoint(second / "last.pt")["step"] == 2
    record = json.loads((run / "self_train.json").read_text())
    assert record["final_model"] == "self-train-1/last.pt" and record["finished_rounds"] == 1
    assert json.loads((second / "run.json").read_text())["init_checkpoint"] == str(run / "last.pt")
    rows = list(csv.DictReader(open(second / "targets" / "cases.csv")))
    assert [row["case"] for row in rows] == ["Case000", "Case001"]
    for row in rows:
        target = read_image(row["prob"]).array_zyx
        assert set(np.unique(target)) <= {0.0, 1.0}
        assert target.shape == read_image(cases / row["case"] / f"{row['case']}_flair.nii.gz").array_zyx.shape
        # exactly the documented rule with the first round's model (labels are never read)
        np.testing.assert_array_equal(target > 0, _reference_pseudo_label(run / "last.pt", cases / row["case"],
                                                                          row["case"]))


def test_resume_keeps_finished_rounds_and_their_targets(two_rounds):
    cases, run, r = two_rounds
    assert r.returncode == 0, r.stderr
    target = run / "self-train-1" / "targets" / "Case000.nii.gz"
    before = (target.stat().st_mtime_ns, (run / "self-train-1" / "last.pt").read_bytes())
    again = run_cli(["--output-dir", run, "--resume", "--progress", "none"], timeout=600)  # rounds from args.json
    assert again.returncode == 0, again.stderr
    assert (target.stat().st_mtime_ns, (run / "self-train-1" / "last.pt").read_bytes()) == before
    assert not (run / "self-train-2").exists()


def test_a_longer_resume_continues_every_round(two_rounds, tmp_path):
    cases, run, r = two_rounds
    assert r.returncode == 0, r.stderr
    import shutil
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    (copy / "self-train-1" / "targets" / "Case000.nii.gz").unlink()  # a target lost: it is written again
    again = run_cli(["--output-dir", copy, "--resume", "--steps", "3", "--progress", "none"], timeout=600)
    assert again.returncode == 0, again.stderr
    assert read_checkpoint(copy / "last.pt")["step"] == 3
    assert read_checkpoint(copy / "self-train-1" / "last.pt")["step"] == 3
    assert (copy / "self-train-1" / "targets" / "Case000.nii.gz").exists()


def test_rounds_wait_for_a_finished_first_training(tmp_path):
    cases = write_brats_folder(tmp_path / "cases", n_cases=2)
    stop = tmp_path / "stop"
    stop.write_text("")
    r = run_cli(["--cases", cases, "--output-dir", tmp_path / "run", "--self-train-rounds", "1", "--stop-file", stop,
                 *TRAIN])
    assert "self-training not started" in r.stderr and "--resume" in r.stderr, r.stderr
    assert (tmp_path / "run" / "last.pt").exists() and not (tmp_path / "run" / "self-train-1").exists()


def test_refused_under_torchrun_and_for_negative_rounds(tmp_path):
    import subprocess
    import sys
    from test_training_synth import REPO
    cases = write_brats_folder(tmp_path / "cases", n_cases=1)
    env = dict(subprocess_env(), WORLD_SIZE="2", RANK="0")
    r = subprocess.run([sys.executable, "-m", "CGCTraining", "--cases", str(cases), "--output-dir",
                        str(tmp_path / "run"), "--self-train-rounds", "1", *map(str, TRAIN)],
                       capture_output=True, text=True, timeout=300, env=env, cwd=str(REPO))
    assert r.returncode == 2 and "torchrun" in r.stderr and "CGCTraining.self_train" in r.stderr, r.stderr
    assert not (tmp_path / "run").exists()
    r = run_cli(["--cases", cases, "--output-dir", tmp_path / "run", "--self-train-rounds", "-1", *TRAIN])
    assert r.returncode == 2 and "--self-train-rounds" in r.stderr and not (tmp_path / "run").exists()


def test_targets_command_for_torchrun_users(two_rounds, tmp_path):
    import subprocess
    import sys
    from test_training_synth import REPO
    cases, run, r = two_rounds
    assert r.returncode == 0, r.stderr
    cmd = [sys.executable, "-m", "CGCTraining.self_train", "--model", str(run / "last.pt"), "--cases", str(cases),
           "--output-dir", str(tmp_path / "t"), "--device", "cpu"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    listing = out.stdout.strip().splitlines()[-1]
    assert listing == str(tmp_path / "t" / "cases.csv")
    for name in ("Case000", "Case001"):  # the same targets as the one-command rounds
        np.testing.assert_array_equal(read_image(tmp_path / "t" / f"{name}.nii.gz").array_zyx,
                                      read_image(run / "self-train-1" / "targets" / f"{name}.nii.gz").array_zyx)
    # the listing trains the next round as it is
    nxt = run_cli(["--cases", listing, "--output-dir", tmp_path / "r2", "--init-from", run / "last.pt", *TRAIN])
    assert nxt.returncode == 0, nxt.stderr
    bad = subprocess.run(cmd[:-4] + ["--modalities", "flair", "--output-dir", str(tmp_path / "u")], capture_output=True,
                         text=True, timeout=300, env=subprocess_env(), cwd=str(REPO))
    assert bad.returncode == 2 and "trained on flair t2" in bad.stderr, bad.stderr
    assert not any((tmp_path / "u").glob("*.nii.gz"))


def test_shipped_recipe_is_the_command_line_of_the_shipped_models():
    """`--recipe shipped` expands to protocol cgc-v9's `robust-2mm-st`: its base arguments, the variant's,
    300 steps per round and one self-training round (what scripts/train_default_models.py ran)."""
    import sys
    from pathlib import Path
    from CGCTraining.__main__ import apply_recipe, build_parser
    root = Path(__file__).resolve().parents[2]
    sys.path.insert(0, str(root / "benchmarks"))
    import protocol
    proto = protocol.load_protocol(root / "docs" / "protocols" / "cgc-v9.toml")
    variant = proto["variants"]["robust-2mm-st"]
    assert variant["self_train_from"] == "robust-2mm" and proto["variants"]["robust-2mm"]["args"] == variant["args"]
    steps = str(proto["stages"]["confirm"]["steps"])
    parser = build_parser()
    spelled = ["--output-dir", "x", *proto["base_train_args"], *variant["args"], "--steps", steps,
               "--self-train-rounds", "1"]
    by_recipe = ["--output-dir", "x", "--recipe", "shipped", "--workers", "0"]
    expected = {k: v for k, v in vars(parser.parse_args(spelled)).items() if k != "recipe"}
    got = vars(apply_recipe(parser, by_recipe, parser.parse_args(by_recipe)))
    assert {k: v for k, v in got.items() if k != "recipe"} == expected
    # options given win; --epochs replaces the recipe's steps; the parser's own defaults are left alone
    over = ["--output-dir", "x", "--recipe", "shipped", "--epochs", "5", "--lr", "0.01", "--self-train-rounds", "0"]
    got = apply_recipe(parser, over, parser.parse_args(over))
    assert (got.epochs, got.steps, got.lr, got.self_train_rounds, got.ema) == (5, None, 0.01, 0, 0.99)
    assert parser.parse_args(["--output-dir", "x"]).ema == 0.0
    # the shipped models' recipes: the same with `--pseudo-rule default-output` (cgc-v24, until 2026-12-05) and
    # `default-output-agreed-opened` (cgc-v43, both models since 2026-12-05) (TRAINING.md)
    for name, vname, rule in (("cgc-v24", "robust-2mm-std", "default-output"),
                              ("cgc-v43", "robust-2mm-stdopen", "default-output-agreed-opened")):
        proto = protocol.load_protocol(root / "docs" / "protocols" / f"{name}.toml")
        rival = proto["variants"][vname]
        assert rival["pseudo_volume"] == rule and rival["self_train_from"] == "robust-2mm"
        spelled = ["--output-dir", "x", *proto["base_train_args"], *rival["args"], "--steps",
                   str(proto["stages"]["confirm"]["steps"]), "--self-train-rounds", "1", "--pseudo-rule", rule]
        by_recipe = ["--output-dir", "x", "--recipe", "shipped", "--pseudo-rule", rule, "--workers", "0"]
        expected = {k: v for k, v in vars(parser.parse_args(spelled)).items() if k != "recipe"}
        got = vars(apply_recipe(parser, by_recipe, parser.parse_args(by_recipe)))
        assert {k: v for k, v in got.items() if k != "recipe"} == expected, name


def test_recipe_run_records_its_settings_and_resumes_with_them(tmp_path):
    cases = write_brats_folder(tmp_path / "cases", n_cases=2)
    run = tmp_path / "run"
    small = ["--modalities", *MODS, "--crop", "16", "16", "16", "--spacing", "1", "1", "1", "--batch-size", "1",
             "--workers", "0", "--device", "cpu", "--steps", "2", "--progress", "none", *TINY_NET_ARGS,
             "--overgrowth-ratio", "1000"]
    r = run_cli(["--cases", cases, "--output-dir", run, "--recipe", "shipped", *small], timeout=600)
    assert r.returncode == 0, r.stderr
    for folder in (run, run / "self-train-1"):  # both rounds trained with the recipe's settings
        cfg = read_checkpoint(folder / "last.pt")["train_config"]
        assert (cfg["ema"], cfg["lr_schedule"], cfg["augment"], cfg["lr"]) == (0.99, "cosine", "scanner", 1e-3)
    stored = json.loads((run / "args.json").read_text())
    assert stored["recipe"] == "shipped" and stored["self_train_rounds"] == 1 and stored["ema"] == 0.99
    again = run_cli(["--output-dir", run, "--resume", "--steps", "3", "--progress", "none"], timeout=600)
    assert again.returncode == 0, again.stderr
    assert read_checkpoint(run / "self-train-1" / "last.pt")["step"] == 3


def test_json_progress_runs_once_over_all_rounds(tmp_path):
    cases = write_brats_folder(tmp_path / "cases", n_cases=2)
    r = run_cli(["--cases", cases, "--output-dir", tmp_path / "run", "--self-train-rounds", "1",
                 *[a if a != "none" else "json" for a in TRAIN]], timeout=600)
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines() if line.startswith("{")]
    fractions = [e["fraction"] for e in events if e["event"] == "progress" and "step" in e]
    assert fractions == sorted(fractions) and fractions[0] <= 0.5 and fractions[-1] == 1.0
    assert [e["message"] for e in events if e["event"] == "progress" and "step" in e][-1] == "round 2/2 step 2/2"
    assert sum(e["event"] == "done" for e in events) == 2


def test_no_targets_from_a_model_that_failed_its_lesion_check(tmp_path, monkeypatch, capsys):
    """An overgrown (or collapsed) first model stops the rounds with a clear error before any target is made."""
    import CGCTraining.train as train_module
    from CGCTraining.__main__ import main
    from CGCTraining.train import TrainResult
    cases = write_brats_folder(tmp_path / "cases", n_cases=1)
    run = tmp_path / "run"
    check = {"cases": ["Case000"], "network_voxels": 700, "target_voxels": 100, "ratio": 7.0, "collapsed": False,
             "overgrown": True}
    calls = []

    def fake_train(cases_, *a, **kw):
        calls.append(kw.get("progress_stage"))
        return TrainResult(run / "last.pt", 2, 2, False, 0.1, 1.0, None, check)

    monkeypatch.setattr(train_module, "train", fake_train)
    rc = main(["--cases", str(cases), "--output-dir", str(run), "--self-train-rounds", "1", *map(str, TRAIN)])
    err = capsys.readouterr().err
    assert rc == 2 and "lesion check" in err and "overgrown" in err and "--seed" in err, err
    assert calls == [(0, 2)] and not (run / "self-train-1").exists()
    rc = main(["--cases", str(cases), "--output-dir", str(run), "--overgrowth-ratio", "0.5", *map(str, TRAIN[:-2])])
    assert rc == 2 and "--overgrowth-ratio must be above 1" in capsys.readouterr().err
    check.update(overgrown=False)  # a healthy first model goes on to make its targets (here: no model file)
    rc = main(["--cases", str(cases), "--output-dir", str(tmp_path / "run2"), "--self-train-rounds", "1",
               *map(str, TRAIN)])
    assert "lesion check" not in capsys.readouterr().err


def _slow_volume_threshold(fused, p, brain, floor=0.3, ceiling=0.5):
    """Every candidate threshold tried in turn, from the ceiling down: the first that holds P's volume."""
    want = int(((p >= 0.5) & brain).sum())
    candidates = [ceiling] + sorted({float(v) for v in fused[brain] if v < ceiling}, reverse=True)
    for t in candidates:
        if t < floor:
            break
        if int(((fused >= t) & brain).sum()) >= want:
            return t
    return floor


@pytest.mark.parametrize("seed", range(12))
def test_volume_keeping_threshold_matches_trying_every_threshold(seed):
    from CGCTraining.self_train import volume_keeping_threshold
    rng = np.random.default_rng(seed)
    shape = (5, 6, 7)
    brain = rng.random(shape) < 0.8
    p = rng.random(shape).astype(np.float32) ** rng.uniform(0.3, 3)
    fused = (0.5 * rng.random(shape) + 0.5 * p).astype(np.float32) * rng.uniform(0.5, 1.2)
    if seed % 4 == 0:
        fused = np.round(fused, 1)  # ties
    got = volume_keeping_threshold(fused, p, brain)
    assert got == pytest.approx(_slow_volume_threshold(fused, p, brain))
    assert 0.3 <= got <= 0.5
    if got > 0.3:  # the target holds at least P's volume, and the threshold was lowered no further than needed
        assert ((fused >= got) & brain).sum() >= ((p >= 0.5) & brain).sum()
    assert volume_keeping_threshold(fused, np.zeros(shape), brain) == 0.5  # nothing to keep: the fixed rule


def test_keep_p_targets_lower_the_threshold_only_as_far_as_ps_volume(two_rounds, tmp_path):
    """`--pseudo-volume keep-p` (cgc-v22): each target is the fixed rule's clean-up at the recorded threshold,
    computed by hand; the record holds it; a folder of fixed-rule targets is not mixed with keep-p ones."""
    import subprocess
    import sys
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, segment_case
    from CGCTraining.self_train import volume_keeping_threshold
    from test_training_synth import REPO
    cases, run, r = two_rounds
    assert r.returncode == 0, r.stderr
    cmd = [sys.executable, "-m", "CGCTraining.self_train", "--model", str(run / "last.pt"), "--cases", str(cases),
           "--output-dir", str(tmp_path / "t"), "--device", "cpu", "--pseudo-volume", "keep-p"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "t" / "targets.json").read_text())
    assert record["volume"] == "keep-p" and sorted(record["cases"]) == ["Case000", "Case001"]
    cfg = InferenceConfig(device="cpu", gmm_weight=0.5, fill_holes="2d", keep_largest=0, opening_radius=0,
                          min_component_voxels=0)
    for name, rec in record["cases"].items():
        imgs = [read_image(cases / name / f"{name}_{m}.nii.gz") for m in MODS]
        res = segment_case([i.array_zyx for i in imgs], imgs[0].geometry, list(MODS), run / "last.pt", config=cfg)
        t = volume_keeping_threshold(res.probability, res.gmm_probability, res.brain_mask)
        assert rec["threshold"] == pytest.approx(t) and 0.3 <= t <= 0.5
        by_hand = res.mask if t == 0.5 else output_mask(
            res.probability, res.brain_mask, InferenceConfig(**{**cfg.__dict__, "threshold": t}))
        target = read_image(tmp_path / "t" / f"{name}.nii.gz").array_zyx
        np.testing.assert_array_equal(target > 0, by_hand > 0)
        assert rec["voxels"] == int(by_hand.sum()) >= rec["voxels_at_0.5"] == int(res.mask.sum())
        assert rec["p_voxels"] == int(((res.gmm_probability >= 0.5) & res.brain_mask).sum())
    # the default rule's targets in a folder are not topped up with keep-p ones (nor the reverse)
    fixed = tmp_path / "f"
    ok = subprocess.run(cmd[:7] + ["--output-dir", str(fixed), "--device", "cpu"], capture_output=True, text=True,
                        timeout=300, env=subprocess_env(), cwd=str(REPO))
    assert ok.returncode == 0, ok.stderr
    assert json.loads((fixed / "targets.json").read_text())["volume"] == "fixed"
    (fixed / "Case001.nii.gz").unlink()
    bad = subprocess.run(cmd[:7] + ["--output-dir", str(fixed), "--device", "cpu", "--pseudo-volume", "keep-p"],
                         capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=str(REPO))
    assert bad.returncode == 2 and "'fixed', not 'keep-p'" in bad.stderr, bad.stderr
    assert not (fixed / "Case001.nii.gz").exists()
    (fixed / "targets.json").unlink()
    bad = subprocess.run(cmd[:7] + ["--output-dir", str(fixed), "--device", "cpu", "--pseudo-volume", "keep-p"],
                         capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=str(REPO))
    assert bad.returncode == 2 and "without a record" in bad.stderr, bad.stderr


def test_self_train_rounds_take_keep_p_targets(tmp_path):
    """`python -m CGCTraining --self-train-rounds 1 --pseudo-volume keep-p`: round 2 trains on exactly the
    targets `python -m CGCTraining.self_train --pseudo-volume keep-p` writes for round 1's model, and the run
    records the rule (args.json for --resume, self_train.json, targets.json); without rounds it is refused."""
    from CGCTraining.data import discover_cases
    from CGCTraining.self_train import write_pseudo_labels
    cases = write_brats_folder(tmp_path / "cases", n_cases=2)
    bad = run_cli(["--cases", cases, "--output-dir", tmp_path / "none", "--pseudo-volume", "keep-p", *TRAIN])
    assert bad.returncode == 2 and "--self-train-rounds" in bad.stderr, bad.stderr
    assert not (tmp_path / "none" / "last.pt").exists()
    run = tmp_path / "run"
    r = run_cli(["--cases", cases, "--output-dir", run, "--self-train-rounds", "1", "--pseudo-volume", "keep-p",
                 *TRAIN], timeout=600)
    assert r.returncode == 0, r.stderr
    assert json.loads((run / "args.json").read_text())["pseudo_volume"] == "keep-p"
    assert json.loads((run / "self_train.json").read_text())["pseudo_volume"] == "keep-p"
    targets = run / "self-train-1" / "targets"
    record = json.loads((targets / "targets.json").read_text())
    assert record["volume"] == "keep-p"
    by_hand = write_pseudo_labels(run / "last.pt", discover_cases(cases, list(MODS)), list(MODS), tmp_path / "ref",
                                  volume="keep-p").parent
    ref = json.loads((by_hand / "targets.json").read_text())
    assert record["cases"] == ref["cases"]
    for name in ref["cases"]:
        np.testing.assert_array_equal(read_image(targets / f"{name}.nii.gz").array_zyx,
                                      read_image(by_hand / f"{name}.nii.gz").array_zyx)


def test_default_output_targets_are_the_shipped_default_output(two_rounds, tmp_path):
    """`--pseudo-rule default-output` (cgc-v24): each target is `single-lesion-recommended` at 0.3 (fused with
    `cgcseg gmm`'s map, cleaned, one lesion), computed by hand with segment_case; the record says so; and the
    old option name `--pseudo-volume` still selects the same rule."""
    import subprocess
    import sys
    from scipy import ndimage
    from CGCLesionSegLib.inference import InferenceConfig, output_preset, segment_case
    from CGCTraining.self_train import DEFAULT_OUTPUT_THRESHOLD
    from test_training_synth import REPO
    cases, run, r = two_rounds
    assert r.returncode == 0, r.stderr
    cmd = [sys.executable, "-m", "CGCTraining.self_train", "--model", str(run / "last.pt"), "--cases", str(cases),
           "--device", "cpu"]
    out = subprocess.run(cmd + ["--output-dir", str(tmp_path / "t"), "--pseudo-rule", "default-output"],
                         capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=str(REPO))
    assert out.returncode == 0, out.stderr
    record = json.loads((tmp_path / "t" / "targets.json").read_text())
    assert record["volume"] == "default-output" and sorted(record["cases"]) == ["Case000", "Case001"]
    # the lesion of the recipe cgc-v24 confirmed: the largest (`cgcseg segment`'s preset chose by core after
    # hysteresis-v1 and by the 0.5 seed since hysteresis-v2; the training targets did not change with either)
    cfg = InferenceConfig(device="cpu", **{**output_preset("single-lesion-recommended"), "threshold": 0.3,
                                           "lesion_choice": "size"})
    assert DEFAULT_OUTPUT_THRESHOLD == 0.3 and output_preset("single-lesion-recommended")["lesion_choice"] == "seed"
    for name, rec in record["cases"].items():
        imgs = [read_image(cases / name / f"{name}_{m}.nii.gz") for m in MODS]
        res = segment_case([i.array_zyx for i in imgs], imgs[0].geometry, list(MODS), run / "last.pt", config=cfg)
        target = read_image(tmp_path / "t" / f"{name}.nii.gz").array_zyx > 0
        np.testing.assert_array_equal(target, res.mask > 0)
        assert rec["threshold"] == 0.3 and rec["voxels"] == int(target.sum()) > 0
        assert ndimage.label(target)[1] == 1  # one lesion kept
    old = subprocess.run(cmd + ["--output-dir", str(tmp_path / "o"), "--pseudo-volume", "default-output"],
                         capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=str(REPO))
    assert old.returncode == 0, old.stderr
    for name in record["cases"]:
        np.testing.assert_array_equal(read_image(tmp_path / "o" / f"{name}.nii.gz").array_zyx,
                                      read_image(tmp_path / "t" / f"{name}.nii.gz").array_zyx)


def test_each_pseudo_rule_has_its_own_card_text():
    """The model card's sentence for each target rule (scripts/train_default_models.py): the fixed rule's is
    the text the shipped cards hold; keep-p and default-output name their option and what differs."""
    from CGCTraining.self_train import PSEUDO_VOLUMES, target_rule_text
    texts = {v: target_rule_text(v) for v in PSEUDO_VOLUMES}
    assert texts["fixed"] == "0.5·CGC + 0.5·P, 2-D hole filling, threshold 0.5 and no keep-largest"
    assert "--pseudo-rule keep-p" in texts["keep-p"] and "no keep-largest" in texts["keep-p"]
    assert "--pseudo-rule default-output" in texts["default-output"] and "largest lesion only" in texts["default-output"]
    assert len(set(texts.values())) == len(texts)
    with pytest.raises(ValueError, match="one of fixed, keep-p, default-output"):
        target_rule_text("bigger")


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_keep_cored_components_against_a_flood_fill(seed):
    """`default-output-all` keeps exactly the 26-connected components that reach the core level somewhere."""
    from flood_fill import flood_components
    from CGCTraining.self_train import keep_cored_components
    rng = np.random.default_rng(seed)
    fused = np.zeros((12, 14, 16), np.float32)
    for k in range(10):  # boxes (some touching) of one level each, half of them below the core
        z, y, x = rng.integers(0, 10), rng.integers(0, 12), rng.integers(0, 14)
        fused[z:z + rng.integers(1, 3), y:y + rng.integers(1, 3), x:x + rng.integers(1, 3)] = 0.4 + 0.5 * (k % 2) + 0.05 * rng.random()
    mask = fused >= 0.35
    kept = keep_cored_components(mask, fused, core=0.8)
    expected = np.zeros_like(mask)
    for comp in flood_components(mask):
        if any(fused[v] >= 0.8 for v in comp):
            for v in comp:
                expected[v] = True
    np.testing.assert_array_equal(kept, expected)
    assert 0 < kept.sum() < mask.sum()
    assert not keep_cored_components(np.zeros_like(mask), fused).any()


def _targets_of(two_rounds, tmp_path, rule: str):
    """``(cases, run, targets.json)`` of ``python -m CGCTraining.self_train --pseudo-rule RULE`` on the first
    round's model (written to ``tmp_path/RULE``), with the shipped rule's targets beside (``tmp_path/default-output``)."""
    import subprocess
    import sys
    from test_training_synth import REPO
    cases, run, r = two_rounds
    assert r.returncode == 0, r.stderr
    cmd = [sys.executable, "-m", "CGCTraining.self_train", "--model", str(run / "last.pt"), "--cases", str(cases),
           "--device", "cpu"]
    for name in (rule, "default-output"):
        out = subprocess.run(cmd + ["--output-dir", str(tmp_path / name), "--pseudo-rule", name],
                             capture_output=True, text=True, timeout=300, env=subprocess_env(), cwd=str(REPO))
        assert out.returncode == 0, out.stderr
    return cases, run, json.loads((tmp_path / rule / "targets.json").read_text())


def test_default_output_all_targets_keep_every_cored_lesion(two_rounds, tmp_path):
    """`--pseudo-rule default-output-all` (cgc-v38): the same fused map and threshold as `default-output`, computed by
    hand with segment_case without keep-largest, every component that reaches 0.5 kept; it contains the
    `default-output` target (that lesion is one of them)."""
    from CGCLesionSegLib.inference import InferenceConfig, output_preset, segment_case
    from CGCTraining.self_train import keep_cored_components
    cases, run, record = _targets_of(two_rounds, tmp_path, "default-output-all")
    assert record["volume"] == "default-output-all"
    cfg = InferenceConfig(device="cpu", **{**output_preset("single-lesion-recommended"), "threshold": 0.3,
                                           "keep_largest": 0, "opening_radius": 0,
                                           "lesion_choice": "size"})
    for name, rec in record["cases"].items():
        imgs = [read_image(cases / name / f"{name}_{m}.nii.gz") for m in MODS]
        res = segment_case([i.array_zyx for i in imgs], imgs[0].geometry, list(MODS), run / "last.pt", config=cfg)
        target = read_image(tmp_path / "default-output-all" / f"{name}.nii.gz").array_zyx > 0
        np.testing.assert_array_equal(target, keep_cored_components(res.mask, res.probability))
        one = read_image(tmp_path / "default-output" / f"{name}.nii.gz").array_zyx > 0
        assert rec["voxels"] == int(target.sum()) and not (one & ~target).any()


@pytest.mark.parametrize("seed", [0, 1])
def test_agreed_lesions_against_a_flood_fill(seed):
    """`default-output-agreed` keeps the 26-connected candidates of which at least half the voxels are marked."""
    from flood_fill import flood_components
    from CGCTraining.self_train import agreed_lesions
    rng = np.random.default_rng(seed)
    cand = np.zeros((12, 14, 16), bool)
    for _ in range(10):
        z, y, x = rng.integers(0, 10), rng.integers(0, 12), rng.integers(0, 14)
        cand[z:z + rng.integers(1, 3), y:y + rng.integers(1, 3), x:x + rng.integers(1, 3)] = True
    marks = rng.random(cand.shape) < 0.5
    kept = agreed_lesions(cand, marks)
    expected = np.zeros_like(cand)
    for comp in flood_components(cand):
        if sum(marks[v] for v in comp) >= 0.5 * len(comp):
            for v in comp:
                expected[v] = True
    np.testing.assert_array_equal(kept, expected)
    assert not agreed_lesions(cand, np.zeros_like(cand)).any() and (agreed_lesions(cand, np.ones_like(cand)) == cand).all()


def test_default_output_agreed_targets_add_only_lesions_the_network_marks(two_rounds, tmp_path):
    """`--pseudo-rule default-output-agreed` (cgc-v39): the `default-output` target plus the other opened candidates
    the network's own map marks by a majority, computed by hand from segment_case and the postprocess functions."""
    from CGCLesionSegLib.inference import InferenceConfig, output_preset, segment_case
    from CGCLesionSegLib.postprocess import binarize, open_and_keep
    from CGCTraining.self_train import agreed_lesions
    cases, run, record = _targets_of(two_rounds, tmp_path, "default-output-agreed")
    assert record["volume"] == "default-output-agreed"
    cfg = InferenceConfig(device="cpu", **{**output_preset("single-lesion-recommended"), "threshold": 0.3,
                                           "lesion_choice": "size"})
    for name in record["cases"]:
        imgs = [read_image(cases / name / f"{name}_{m}.nii.gz") for m in MODS]
        g = imgs[0].geometry
        res = segment_case([i.array_zyx for i in imgs], g, list(MODS), run / "last.pt", config=cfg)
        every = open_and_keep(binarize(res.probability, 0.3, fill_holes="2d", mask_zyx=res.brain_mask,
                                       spacing_xyz=g.spacing), 3, keep_largest=0, spacing_xyz=g.spacing)
        expected = (res.mask > 0) | agreed_lesions(every, res.network_probability >= 0.5)
        target = read_image(tmp_path / "default-output-agreed" / f"{name}.nii.gz").array_zyx > 0
        np.testing.assert_array_equal(target, expected)
        one = read_image(tmp_path / "default-output" / f"{name}.nii.gz").array_zyx > 0
        assert not (one & ~target).any()  # the shipped target is always part of it


def _slow_fill_2d(mask):
    """Holes of each z slice filled: background not reachable from the slice's border by 4-neighbour moves."""
    out = mask.copy()
    for z in range(mask.shape[0]):
        sl = mask[z]
        outside = np.zeros(sl.shape, bool)
        stack = [(y, x) for y in range(sl.shape[0]) for x in range(sl.shape[1])
                 if (y in (0, sl.shape[0] - 1) or x in (0, sl.shape[1] - 1)) and not sl[y, x]]
        for p in stack:
            outside[p] = True
        while stack:
            y, x = stack.pop()
            for q in ((y + 1, x), (y - 1, x), (y, x + 1), (y, x - 1)):
                if 0 <= q[0] < sl.shape[0] and 0 <= q[1] < sl.shape[1] and not sl[q] and not outside[q]:
                    outside[q] = True
                    stack.append(q)
        out[z] = ~outside
    return out


def _slow_step(mask, axes, erode):
    """One erosion (every neighbour along ``axes`` set; outside the volume counts as unset) or dilation step."""
    out = mask.copy()
    for z, y, x in np.ndindex(mask.shape):
        near = [mask[z, y, x]]
        for i, on in enumerate(axes):
            if on:
                for d in (-1, 1):
                    q = [z, y, x]
                    q[i] += d
                    near.append(0 <= q[i] < mask.shape[i] and mask[tuple(q)])
        out[z, y, x] = all(near) if erode else any(near)
    return out


def _slow_agreed_opened(fused, brain, marks, kept, spacing, threshold=0.3, agree=0.5, radius=3):
    from flood_fill import flood_components
    from CGCLesionSegLib.postprocess import step_axes
    mask = _slow_fill_2d(fused >= threshold)
    opened = mask
    for axes in step_axes(radius, spacing):
        opened = _slow_step(opened, axes, erode=True)
    for axes in reversed(step_axes(radius, spacing)):
        opened = _slow_step(opened, axes, erode=False)
    seeds = np.zeros_like(mask)
    for comp in flood_components(opened):
        if any(kept[v] for v in comp):
            continue
        if sum(bool(marks[v]) for v in comp) >= agree * len(comp):
            for v in comp:
                seeds[v] = True
    for axes in step_axes(2 * radius, spacing):
        seeds = _slow_step(seeds, axes, erode=False) & mask
    return seeds & brain


@pytest.mark.parametrize("seed, spacing", [(0, (1.0, 1.0, 1.0)), (1, (1.0, 1.0, 2.5))])
def test_agreed_opened_lesions_against_a_slow_reference(seed, spacing):
    """`default-output-agreed-opened`: threshold, 2-D holes, opening, each opened component apart from the kept
    lesion judged on its own voxels, grown back inside the mask; a loop-by-loop reference on random blobs."""
    from CGCTraining.self_train import agreed_opened_lesions
    rng = np.random.default_rng(seed)
    fused = np.zeros((14, 24, 40), np.float32)
    for _ in range(8):
        z, y, x = rng.integers(0, 8), rng.integers(0, 16), rng.integers(0, 31)
        fused[z:z + rng.integers(5, 9), y:y + rng.integers(5, 10), x:x + rng.integers(5, 10)] = rng.uniform(0.2, 1.0)
    fused += rng.uniform(0, 0.15, fused.shape).astype(np.float32)
    brain = np.ones(fused.shape, bool)
    brain[:, :, :2] = False
    # marked densely on the left half, sparsely on the right: components pass or fail on their own voxels
    marks = rng.random(fused.shape) < np.where(np.arange(40) < 20, 0.8, 0.3)[None, None, :]
    kept = np.zeros(fused.shape, bool)
    kept[tuple(np.argwhere(fused >= 0.3)[0])] = True  # the rule's lesion: whatever component holds this voxel
    got = agreed_opened_lesions(fused, brain, marks, kept, spacing)
    want = _slow_agreed_opened(fused, brain, marks, kept, spacing)
    np.testing.assert_array_equal(got, want)
    every = _slow_agreed_opened(fused, brain, np.ones_like(marks), kept, spacing)
    assert want.any() and (every & ~want).any()  # some lesions are added, some are refused
    assert not agreed_opened_lesions(fused, brain, np.zeros_like(marks), kept, spacing).any()


def test_agreed_opened_lesions_leave_out_a_leak_bridged_to_the_lesion():
    """The case a review found: a leak joined to the lesion by a thin bridge 8 mm long. After the 6 mm grow-backs
    `default-output-agreed` sees one candidate (lesion + bridge + leak), marked by the network on the lesion, and adds
    the leak whole; the opened rule judges the leak on its own voxels and leaves it out, while a separate lesion the
    network marks is added and one it does not mark is not."""
    from CGCLesionSegLib.postprocess import binarize
    from CGCTraining.self_train import agreed_lesions, agreed_opened_lesions, opened_candidates
    zz, yy, xx = np.mgrid[:40, :40, :90]
    ball = lambda cz, cy, cx, r: (zz - cz) ** 2 + (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r
    lesion, leak = ball(20, 20, 15, 8), ball(20, 20, 36, 5)  # 8 mm apart (x 23 .. 31)
    second, ignored = ball(20, 20, 60, 5), ball(20, 20, 80, 5)
    fused = (lesion | leak | second | ignored).astype(np.float32)
    fused[20, 20, 23:32] = 1.0  # the bridge
    brain = np.ones(fused.shape, bool)
    marks = lesion | second  # the network marks the lesion and the second lesion, not the leak
    spacing = (1.0, 1.0, 1.0)
    kept = binarize(fused, 0.3, fill_holes="2d", keep_largest=1, opening_radius=3, spacing_xyz=spacing).astype(bool)
    assert kept[lesion].all() and not kept[leak].any()  # the shipped rule cuts the leak off
    old = agreed_lesions(opened_candidates(fused, brain, spacing), marks)
    assert old[leak].all()  # what default-output-agreed adds
    new = agreed_opened_lesions(fused, brain, marks, kept, spacing)
    assert not new[leak].any() and new[second].all() and not new[ignored].any()
    assert not (new & kept).any()  # the kept lesion is never judged again


def test_default_output_agreed_opened_targets(two_rounds, tmp_path):
    """`--pseudo-rule default-output-agreed-opened` (cgc-v42): the `default-output` target plus
    agreed_opened_lesions of segment_case's maps, by hand; targets.json records the rule's own voxels; and a case
    stored with its axes permuted gets the same target voxel for voxel once mapped back (the candidates are made
    in the model's voxel order, where the rule's lesion is)."""
    from CGCLesionSegLib.image_io import write_image
    from CGCLesionSegLib.inference import InferenceConfig, output_preset, segment_case
    from CGCLesionSegLib.orientation import reorient
    from CGCTraining.data import discover_cases
    from CGCTraining.self_train import agreed_opened_lesions, write_pseudo_labels
    cases, run, record = _targets_of(two_rounds, tmp_path, "default-output-agreed-opened")
    assert record["volume"] == "default-output-agreed-opened"
    cfg = InferenceConfig(device="cpu", **{**output_preset("single-lesion-recommended"), "threshold": 0.3,
                                           "lesion_choice": "size"})
    name = sorted(record["cases"])[0]
    imgs = [read_image(cases / name / f"{name}_{m}.nii.gz") for m in MODS]
    g = imgs[0].geometry
    res = segment_case([i.array_zyx for i in imgs], g, list(MODS), run / "last.pt", config=cfg)
    kept = res.mask > 0
    expected = kept | agreed_opened_lesions(res.probability, res.brain_mask, res.network_probability >= 0.5, kept,
                                            g.spacing)
    target = read_image(tmp_path / "default-output-agreed-opened" / f"{name}.nii.gz").array_zyx > 0
    np.testing.assert_array_equal(target, expected)
    one = read_image(tmp_path / "default-output" / f"{name}.nii.gz").array_zyx > 0
    np.testing.assert_array_equal(one, kept)
    assert record["cases"][name]["rule_voxels"] == int(kept.sum()) and record["cases"][name]["voxels"] == int(target.sum())
    # the same case stored as S-P-L (axes permuted and flipped)
    turned = tmp_path / "turned" / name
    for m in MODS:
        arr, tg = reorient(read_image(cases / name / f"{name}_{m}.nii.gz").array_zyx, g, "SPL")
        write_image(turned / f"{name}_{m}.nii.gz", arr, tg)
    listing = write_pseudo_labels(run / "last.pt", discover_cases(tmp_path / "turned", list(MODS)), list(MODS),
                                  tmp_path / "turned-targets", volume="default-output-agreed-opened")
    back_img = read_image(listing.parent / f"{name}.nii.gz")
    back, _ = reorient(back_img.array_zyx > 0, back_img.geometry, "LPS")
    np.testing.assert_array_equal(back, target)


def test_agreed_opened_target_is_made_in_the_models_voxel_order():
    """A tube along S with a 4 mm wall: filled slice by slice in axial slices it is a solid lesion the network marks
    by more than half (its inner 8 mm), so it is added; in sagittal slices nothing closes, the thin wall does not survive
    the opening, and nothing is added. A case stored S-P-L must get the axial answer, as its rule's lesion does."""
    from types import SimpleNamespace
    from CGCLesionSegLib.image_io import Geometry
    from CGCLesionSegLib.orientation import reorient
    from CGCLesionSegLib.postprocess import binarize
    from CGCTraining.self_train import agreed_opened_target
    zz, yy, xx = np.mgrid[:30, :44, :70]
    lesion = (zz - 15) ** 2 + (yy - 22) ** 2 + (xx - 15) ** 2 <= 14 ** 2  # larger than the filled tube
    r2 = (yy - 22) ** 2 + (xx - 50) ** 2
    tube, inside = (r2 <= 10 ** 2) & (r2 > 6 ** 2), r2 <= 8 ** 2  # along z, end to end; the network marks r <= 8
    fused = (lesion | tube).astype(np.float32)
    net = (lesion | inside).astype(np.float32)
    g = Geometry(spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, 1, 0, 0, 0, 1),
                 shape_zyx=fused.shape)
    kept = binarize(fused, 0.3, fill_holes="2d", keep_largest=1, opening_radius=3, spacing_xyz=g.spacing)
    assert kept[lesion].all() and not kept[tube].any()
    res = SimpleNamespace(probability=fused, network_probability=net, mask=kept, brain_mask=np.ones(fused.shape, bool))
    target = agreed_opened_target(res, g, "LPS")
    assert target[tube].all() and target[inside].all() and target[lesion].all()
    turned = SimpleNamespace(**{k: reorient(np.asarray(v), g, "SPL")[0] for k, v in vars(res).items()})
    g_turned = reorient(fused, g, "SPL")[1]
    back = reorient(agreed_opened_target(turned, g_turned, "LPS"), g_turned, "LPS")[0]
    np.testing.assert_array_equal(back, target)
    # in the storage order itself (no model orientation) the slices are sagittal: the tube is not added
    naive = reorient(agreed_opened_target(turned, g_turned, None), g_turned, "LPS")[0]
    assert not naive[tube].any()
