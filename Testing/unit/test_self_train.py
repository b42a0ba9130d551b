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
    # the shipped models since cgc-v24: the same recipe with `--pseudo-rule default-output` (TRAINING.md)
    v24 = protocol.load_protocol(root / "docs" / "protocols" / "cgc-v24.toml")
    rival = v24["variants"]["robust-2mm-std"]
    assert rival["pseudo_volume"] == "default-output" and rival["self_train_from"] == "robust-2mm"
    spelled = ["--output-dir", "x", *v24["base_train_args"], *rival["args"], "--steps", str(v24["stages"]["confirm"]["steps"]),
               "--self-train-rounds", "1", "--pseudo-rule", "default-output"]
    by_recipe = ["--output-dir", "x", "--recipe", "shipped", "--pseudo-rule", "default-output", "--workers", "0"]
    expected = {k: v for k, v in vars(parser.parse_args(spelled)).items() if k != "recipe"}
    got = vars(apply_recipe(parser, by_recipe, parser.parse_args(by_recipe)))
    assert {k: v for k, v in got.items() if k != "recipe"} == expected


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
