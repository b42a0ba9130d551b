"""A checkpoint may record the threshold of its own default output rule (``default_threshold``, protocol
cgc-v18's decision): `cgcseg segment` / `cgcseg demo` / the module use it when no threshold is given, only
with that rule; an explicit ``--threshold`` wins; malformed values are refused on save and on load."""
from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

from CGCLesionSegLib.checkpoint import (CheckpointError, build_checkpoint, default_threshold, load_checkpoint,
                                        read_checkpoint, save_checkpoint_dict)


def _with(path, **fields):
    ck = read_checkpoint(path)
    ck.update(fields)
    return save_checkpoint_dict(path, ck)


@pytest.mark.parametrize("bad", [0.0, 1.0, 1.5, -0.2, float("nan"), True, "0.3", None])
def test_a_malformed_threshold_is_refused_when_built_and_when_loaded(tmp_path, make_tiny_model, bad):
    model = make_tiny_model(tmp_path / "m.pt", ["flair"])
    ck = read_checkpoint(model)
    from CGCLesionSegLib.checkpoint import info_from_dict
    from CGCLesionSegLib.network import CGCNet
    info = info_from_dict(ck, model)
    if bad is not None:
        with pytest.raises(ValueError, match="default_threshold"):
            build_checkpoint(CGCNet(info.net_config), info.net_config, ["flair"], ck["preprocessing"],
                             default_threshold=bad)
    with pytest.raises(CheckpointError, match="default_threshold"):
        load_checkpoint(_with(model, default_threshold=bad))


def test_the_recorded_threshold_applies_to_the_models_own_rule_only(tmp_path, make_tiny_model):
    plain = make_tiny_model(tmp_path / "plain.pt", ["flair"])
    assert default_threshold(plain, "none") == 0.5  # no field: the paper's 0.5
    rec = _with(make_tiny_model(tmp_path / "rec.pt", ["flair"]), default_output_rule="single-lesion",
                default_threshold=0.35)
    assert load_checkpoint(rec)[1] is not None
    assert default_threshold(rec, "single-lesion") == 0.35
    assert default_threshold(rec, "none") == 0.5 and default_threshold(rec, "single-lesion-recommended") == 0.5
    orphan = _with(make_tiny_model(tmp_path / "orphan.pt", ["flair"]), default_threshold=0.35)  # rule "none"
    assert default_threshold(orphan, "none") == 0.35 and default_threshold(orphan, "single-lesion") == 0.5


def test_segment_resolves_the_threshold_from_the_model_unless_given(tmp_path, make_tiny_model):
    from CGCLesionSegLib.commands.segment import _inference_config, resolve_threshold
    rec = _with(make_tiny_model(tmp_path / "rec.pt", ["flair"]), default_output_rule="single-lesion",
                default_threshold=0.35)
    args = lambda **kw: argparse.Namespace(**{**dict(  # noqa: E731
        postprocess="auto", model=str(rec), adapt=False, inputs=["flair=x.nii.gz"], cases=None, modalities=None,
        threshold=None), **kw})
    assert resolve_threshold(args(), "single-lesion") == 0.35
    assert resolve_threshold(args(threshold=0.6), "single-lesion") == 0.6
    assert resolve_threshold(args(model=str(tmp_path / "missing.pt")), "none") == 0.5
    full = dict(gmm_weight=None, min_size=None, keep_largest=None, open_radius=None, lesion_choice=None,
                fill_holes=None, overlap=0.5, batch_size=1, device="cpu", pad_to_window=False, mirror=[], window=None)
    assert _inference_config(args(**full)).threshold == 0.35
    assert _inference_config(args(**full, postprocess="none")).threshold == 0.5  # another rule: 0.5
    assert _inference_config(args(**full, threshold=0.45)).threshold == 0.45
    # another map (the network's alone): the recorded threshold was not chosen for it
    assert _inference_config(args(**{**full, "gmm_weight": 0.0})).threshold == 0.5
    assert _inference_config(args(**{**full, "gmm_weight": 0.5})).threshold == 0.35  # the rule's own weight
    assert _inference_config(args(**{**full, "gmm_weight": 0.0}, threshold=0.3)).threshold == 0.3


def test_segment_cli_writes_the_rule_at_the_recorded_threshold(tmp_path, make_tiny_model, phantom_case):
    """End to end: the mask is the rule's clean-up of the written probability map at 0.3 (computed here
    by hand), the sidecar says 0.3, and `--threshold 0.5` gives the 0.5 mask."""
    from CGCLesionSegLib.cli import main
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset
    mods = ["flair", "t1", "t1ce", "t2"]
    model = _with(make_tiny_model(tmp_path / "m.pt", mods), default_output_rule="single-lesion",
                  default_threshold=0.3)
    inputs = [a for m in mods for a in ("--input", f"{m}={phantom_case[m]}")]
    masks = {}
    for name, extra in (("auto", []), ("half", ["--threshold", "0.5"])):
        out = tmp_path / name / "seg.nii.gz"
        rc = main(["segment", *inputs, "--mask", str(phantom_case["mask"]), "--model", str(model), "--output", str(out),
                   "--probability-output", str(out.with_name("prob.nii.gz")), "--device", "cpu", "--progress", "none",
                   *extra])
        assert rc == 0
        masks[name] = read_image(out).array_zyx > 0
        side = json.loads(out.with_name("seg.nii.gz.json").read_text())
        assert side["inference"]["threshold"] == (0.3 if name == "auto" else 0.5)
    prob = read_image(tmp_path / "auto" / "prob.nii.gz").array_zyx
    brain = read_image(phantom_case["mask"]).array_zyx > 0
    spacing = read_image(phantom_case["flair"]).geometry.spacing
    for name, t in (("auto", 0.3), ("half", 0.5)):
        ref = output_mask(prob, brain, InferenceConfig(device="cpu", threshold=t, **output_preset("single-lesion")),
                          spacing)
        np.testing.assert_array_equal(masks[name], ref > 0)
    assert masks["auto"].sum() >= masks["half"].sum()  # the same map, a lower threshold, one lesion kept


def test_update_model_cards_records_the_threshold_in_the_file_and_its_card(tmp_path, make_tiny_model):
    """`benchmarks/update_model_cards.py --default-threshold NAME=T`: the field in the checkpoint (weights
    unchanged), one "Threshold" line right after the card's "Output rule" line (replaced, not repeated, when
    recorded again), and clear refusals for a malformed value or a card without the rule line."""
    import sys
    import torch
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import update_model_cards as umc
    model = _with(make_tiny_model(tmp_path / "cgc_flair.pt", ["flair"]), default_output_rule="single-lesion")
    card = model.with_suffix(".md")
    card.write_text("# Model card\n\n- **Output rule** (`--postprocess auto`): `single-lesion`.\n- **Next**: x\n")
    before = read_checkpoint(model)["model"]
    umc.record_threshold(model, 0.3, "protocol cgc-v18")
    umc.record_threshold(model, 0.35, "protocol cgc-v18")
    ck = read_checkpoint(model)
    assert ck["default_threshold"] == 0.35 and default_threshold(model, "single-lesion") == 0.35
    assert all(torch.equal(before[k], ck["model"][k]) for k in before)
    lines = card.read_text().splitlines()
    i = lines.index("- **Output rule** (`--postprocess auto`): `single-lesion`.")
    assert lines[i + 1] == "- **Threshold** of that rule when none is given (`--threshold`): `0.35` — protocol cgc-v18."
    assert sum(line.startswith("- **Threshold**") for line in lines) == 1 and lines[i + 2] == "- **Next**: x"
    with pytest.raises(SystemExit, match="in \\(0, 1\\)"):
        umc.record_threshold(model, 1.0, "")
    with pytest.raises(SystemExit, match="NAME=T"):
        umc._thresholds(["cgc_flair:0.3"])
    card.write_text("# no rule line\n")
    with pytest.raises(SystemExit, match="nothing changed"):
        umc.record_threshold(model, 0.3, "")
    assert read_checkpoint(model)["default_threshold"] == 0.35  # refused before the file was touched


def test_the_shipped_threshold_is_the_best_mean_over_every_case_with_seeds_averaged_first():
    """benchmarks/shipped_thresholds.py against a plain loop: per case the mean over its seeds, then the mean
    over cases, the best threshold (ties: nearer 0.5) — on random rows of two folds and two seeds."""
    import random
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import shipped_thresholds as st
    rng = random.Random(4)
    ts = ["0.30", "0.40", "0.50", "0.60"]
    rows = []
    for case in ("a", "b", "c"):
        for seed in (1, 2, 3) if case == "a" else (1, 2):  # unequal seed counts: a per-row mean would differ
            rows.append({"case": case, "modalities": ["flair"], "variant": "v", "seed": seed,
                         "sweep": {"default_rec": {t: {"dice": rng.random()} for t in ts}}})
    got = st.threshold_over_all_cases(rows, "default_rec")["flair/v"]
    means = {}
    for t in ts:
        case_means = []
        for case in ("a", "b", "c"):
            vals = [r["sweep"]["default_rec"][t]["dice"] for r in rows if r["case"] == case]
            case_means.append(sum(vals) / len(vals))
        means[t] = sum(case_means) / len(case_means)
    best = max(means.values())
    assert got["threshold"] == float(min((t for t in ts if means[t] == best), key=lambda t: abs(float(t) - 0.5)))
    assert got["cases"] == 3 and all(abs(got["scores"][t] - means[t]) < 1e-12 for t in ts)
    tied = [dict(r, sweep={"default_rec": {t: {"dice": 0.7} for t in ts}}) for r in rows]
    assert st.threshold_over_all_cases(tied, "default_rec")["flair/v"]["threshold"] == 0.5
    with pytest.raises(SystemExit, match="no 'network' sweep"):
        st.threshold_over_all_cases(rows, "network")


def test_paired_differences_average_seeds_per_case_before_the_bootstrap():
    import statistics
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    import protocol
    import shipped_thresholds as st
    rows = [{"case": c, "modalities": ["flair"], "variant": "v", "a": {"dice": da}, "b": {"dice": db}}
            for c, da, db in (("x", 0.9, 0.8), ("x", 0.7, 0.8), ("x", 0.8, 0.8), ("y", 0.6, 0.5), ("z", 0.5, 0.7))]
    got = st.paired(rows, "a", "b", resamples=500, seed=1)["flair/v"]
    per_case = [0.0, 0.1, -0.2]  # x: (0.1 - 0.1 + 0.0) / 3
    assert got["cases"] == 3 and abs(got["mean"] - statistics.mean(per_case)) < 1e-12
    assert abs(got["worst"] + 0.2) < 1e-12
    assert all(abs(u - v) < 1e-9 for u, v in zip(got["ci95"], protocol.bootstrap_ci(per_case, 500, 1)))
    with pytest.raises(SystemExit, match="lacks column 'c'"):
        st.paired(rows, "a", "c")
