"""`cgcseg segment` end to end: single case, anisotropic input, wrong inputs, cohort mode with resume."""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from CGCLesionSegLib.gmm import GMMConfig
from CGCLesionSegLib.image_io import Geometry, read_image, write_image
from CGCLesionSegLib.phantom import make_cohort, make_phantom, save_phantom

MODS = ["flair", "t1", "t1ce", "t2"]


def cli(*args):
    return subprocess.run([sys.executable, "-m", "CGCLesionSegLib.cli", *map(str, args)], capture_output=True, text=True)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory, make_tiny_model):
    return make_tiny_model(tmp_path_factory.mktemp("model") / "tiny.pt", MODS, GMMConfig())


@pytest.fixture(scope="module")
def case(phantom_case):
    return phantom_case


def _inputs(case, order=MODS):
    out = []
    for m in order:
        out += ["--input", f"{m}={case[m]}"]
    return out


def test_segment_one_case_writes_outputs_on_the_input_grid(tmp_path, tiny_model, case):
    seg, prob = tmp_path / "seg.nii.gz", tmp_path / "prob.nii.gz"
    r = cli("segment", *_inputs(case, ["t2", "flair", "t1ce", "t1"]), "--model", tiny_model, "--output", seg,
            "--probability-output", prob, "--gmm-output", tmp_path / "gmm.nii.gz", "--progress", "json")
    assert r.returncode == 0, r.stderr
    events = [json.loads(line) for line in r.stdout.splitlines()]
    assert events[-1]["event"] == "done" and any(e["event"] == "progress" for e in events)
    ref = read_image(case["flair"])
    s, p = read_image(seg, dtype=None), read_image(prob)
    assert s.geometry == ref.geometry and p.geometry == ref.geometry
    assert set(np.unique(s.array_zyx)) <= {0, 1}
    assert p.array_zyx.min() >= 0 and p.array_zyx.max() <= 1
    assert np.all(p.array_zyx[ref.array_zyx == 0] == 0)  # nothing outside the brain
    np.testing.assert_array_equal(s.array_zyx, (p.array_zyx >= 0.5).astype(np.uint8))
    side = json.loads((tmp_path / "seg.nii.gz.json").read_text())
    assert side["model"]["sha256"] and side["channels"] == MODS and side["inputs"]["t2"] == Path(case["t2"]).name
    assert (tmp_path / "gmm.nii.gz").exists()


def test_anisotropic_input_is_resampled_and_returned_on_its_grid(tmp_path, tiny_model):
    ph = make_phantom(shape_xyz=(48, 48, 12), spacing_xyz=(1.5, 1.5, 5.0), seed=4)
    paths = save_phantom(ph, tmp_path, "thick")
    seg = tmp_path / "seg.nii.gz"
    r = cli("segment", *_inputs(paths), "--model", tiny_model, "--output", seg, "--probability-output", tmp_path / "p.nii.gz")
    assert r.returncode == 0, r.stderr
    out = read_image(seg)
    assert out.geometry == read_image(paths["flair"]).geometry


def test_wrong_modalities_error_lists_expected_and_writes_nothing(tmp_path, tiny_model, case):
    seg = tmp_path / "seg.nii.gz"
    r = cli("segment", "--input", f"flair={case['flair']}", "--input", f"pd={case['t1']}", "--model", tiny_model,
            "--output", seg)
    assert r.returncode == 2
    assert "flair=PATH t1=PATH t1ce=PATH t2=PATH" in r.stderr
    assert not seg.exists() and not list(tmp_path.iterdir())


def test_mismatched_grid_and_foreign_model_are_refused(tmp_path, tiny_model, case):
    img = read_image(case["t1"])
    g = img.geometry
    shifted = Geometry(g.shape_zyx, g.spacing, (g.origin[0] + 7.0, g.origin[1], g.origin[2]), g.direction)
    moved = write_image(tmp_path / "t1_moved.nii.gz", img.array_zyx, shifted)
    seg = tmp_path / "seg.nii.gz"
    r = cli("segment", "--input", f"flair={case['flair']}", "--input", f"t1={moved}", "--input", f"t1ce={case['t1ce']}",
            "--input", f"t2={case['t2']}", "--model", tiny_model, "--output", seg)
    assert r.returncode == 2 and "origin" in r.stderr and not seg.exists()
    foreign = tmp_path / "foreign.pt"
    torch.save({"state_dict": {"w": torch.zeros(2)}}, foreign)
    r = cli("segment", *_inputs(case), "--model", foreign, "--output", seg)
    assert r.returncode == 2 and "not a CGC Lesion Seg model" in r.stderr and not seg.exists()


def test_cohort_mode_skips_done_cases_and_survives_a_bad_case(tmp_path, tiny_model):
    cohort = tmp_path / "cohort"
    make_cohort(cohort, 2, seed=10, shape_xyz=(40, 40, 24), spacing_xyz=(1.5, 1.5, 1.5))
    bad = cohort / "zz_broken"
    bad.mkdir()
    for m in MODS:
        (bad / f"zz_broken_{m}.nii.gz").write_bytes(b"garbage")
    out = tmp_path / "out"
    r = cli("segment", "--cases", cohort, "--output-dir", out, "--model", tiny_model, "--progress", "none")
    assert r.returncode == 1  # one case failed, the others were segmented
    assert "2 segmented, 0 already done" in r.stderr and "1 failed" in r.stderr and "zz_broken" in r.stderr
    done = sorted(p.name for p in out.glob("*.nii.gz"))
    assert done == ["phantom_000.nii.gz", "phantom_000_probability.nii.gz", "phantom_001.nii.gz",
                    "phantom_001_probability.nii.gz"]
    shutil.rmtree(bad)
    before = (out / "phantom_000.nii.gz").stat().st_mtime_ns
    r = cli("segment", "--cases", cohort, "--output-dir", out, "--model", tiny_model, "--progress", "none")
    assert r.returncode == 0 and "0 segmented, 2 already done" in r.stderr
    assert (out / "phantom_000.nii.gz").stat().st_mtime_ns == before


def test_postprocessing_options_keep_one_component(tmp_path, tiny_model, case):
    from scipy import ndimage
    seg = tmp_path / "seg.nii.gz"
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", seg, "--threshold", "0.3",
            "--keep-largest", "1", "--open-radius", "1", "--fill-holes")
    assert r.returncode == 0, r.stderr
    _, n = ndimage.label(read_image(seg, dtype=None).array_zyx)
    assert n <= 1
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", tmp_path / "b.nii.gz", "--open-radius", "2")
    assert r.returncode == 2 and "keep_largest" in r.stderr and not (tmp_path / "b.nii.gz").exists()


def test_output_over_an_input_or_bad_name_is_refused_before_any_work(tmp_path, tiny_model, case):
    import hashlib
    before = hashlib.sha256(case["flair"].read_bytes()).hexdigest()
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", case["flair"])
    assert r.returncode == 2 and "also an input" in r.stderr
    assert hashlib.sha256(case["flair"].read_bytes()).hexdigest() == before
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", tmp_path / "seg.png")
    assert r.returncode == 2 and "unsupported format" in r.stderr and not list(tmp_path.iterdir())


def test_cohort_mode_refuses_single_case_flags(tmp_path, tiny_model):
    r = cli("segment", "--cases", tmp_path, "--output-dir", tmp_path / "o", "--model", tiny_model,
            "--mask", tmp_path / "nope.nii.gz", "--adapt")
    assert r.returncode == 2 and "--mask, --adapt apply to one case" in r.stderr


def test_cohort_under_torchrun_splits_cases_between_ranks(tmp_path, tiny_model):
    cohort = tmp_path / "cohort"
    make_cohort(cohort, 3, seed=20, shape_xyz=(40, 40, 24), spacing_xyz=(1.5, 1.5, 1.5))
    out = tmp_path / "out"
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
                        "-m", "CGCLesionSegLib.cli", "segment", "--cases", str(cohort), "--output-dir", str(out),
                        "--model", str(tiny_model), "--device", "cpu", "--progress", "none"],
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "rank 0/2: 2 segmented" in r.stderr and "rank 1/2: 1 segmented" in r.stderr
    assert sorted(p.name for p in out.glob("phantom_*[0-9].nii.gz")) == ["phantom_000.nii.gz", "phantom_001.nii.gz",
                                                                         "phantom_002.nii.gz"]


def test_gmm_weight_thresholds_the_fused_map(tmp_path, tiny_model, case):
    # Reference: the network map alone (weight 0) and the GMM map, fused by hand.
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", tmp_path / "a.nii.gz",
            "--probability-output", tmp_path / "cgc.nii.gz", "--gmm-output", tmp_path / "gmm.nii.gz")
    assert r.returncode == 0, r.stderr
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", tmp_path / "b.nii.gz",
            "--probability-output", tmp_path / "fused.nii.gz", "--gmm-weight", "0.3")
    assert r.returncode == 0, r.stderr
    cgc, gmm = read_image(tmp_path / "cgc.nii.gz").array_zyx, read_image(tmp_path / "gmm.nii.gz").array_zyx
    fused = read_image(tmp_path / "fused.nii.gz").array_zyx
    np.testing.assert_allclose(fused, 0.7 * cgc + 0.3 * gmm, atol=1e-5)
    seg = read_image(tmp_path / "b.nii.gz", dtype=None).array_zyx
    np.testing.assert_array_equal(seg, (fused >= 0.5).astype(np.uint8))
    side = json.loads((tmp_path / "b.nii.gz.json").read_text())
    assert side["postprocess"] == "none" and side["inference"]["gmm_weight"] == 0.3  # own model: auto → none
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", tmp_path / "c.nii.gz", "--gmm-weight", "1")
    assert r.returncode == 2 and "gmm_weight" in r.stderr and not (tmp_path / "c.nii.gz").exists()


def test_single_lesion_preset_keeps_one_component_of_the_fused_map(tmp_path, tiny_model, case):
    from scipy import ndimage
    seg = tmp_path / "seg.nii.gz"
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", seg, "--postprocess", "single-lesion",
            "--threshold", "0.3")
    assert r.returncode == 0, r.stderr
    _, n = ndimage.label(read_image(seg, dtype=None).array_zyx)
    assert n <= 1
    side = json.loads((tmp_path / "seg.nii.gz.json").read_text())
    assert side["postprocess"] == "single-lesion"
    assert side["inference"]["gmm_weight"] == 0.5 and side["inference"]["keep_largest"] == 1
    # What keep-largest removed is recorded; a lesion-sized removal is said on stderr, a smaller one is not.
    img = read_image(seg, dtype=None)
    removed = side["removed_lesions"]
    assert removed["kept"] == n
    assert removed["kept_ml"] == pytest.approx(img.array_zyx.sum() * np.prod(img.geometry.spacing) / 1000, abs=1e-3)
    from CGCLesionSegLib.postprocess import removed_warning
    assert ("--keep-largest 0" in r.stderr) == (removed_warning(removed) is not None), r.stderr
    assert ("keep-largest removed" in r.stderr) == (removed["count_1ml"] > 0), r.stderr


def test_auto_output_rule_depends_on_whose_model_it_is(tmp_path):
    import argparse
    from CGCLesionSegLib.commands.segment import _inference_config, add_arguments, resolve_postprocess
    from CGCLesionSegLib.default_models import available_default_models
    p = argparse.ArgumentParser()
    add_arguments(p)
    parse = lambda *a: p.parse_args(["--input", "x.nii.gz", *a])
    shipped = next(iter(available_default_models().values()))
    assert resolve_postprocess(parse()) == "single-lesion-recommended"            # no --model: shipped model
    assert resolve_postprocess(parse("--model", str(shipped))) == "single-lesion-recommended"
    assert resolve_postprocess(parse("--model", str(tmp_path / "mine.pt"))) == "none"
    assert resolve_postprocess(parse("--postprocess", "none")) == "none"
    named = lambda *a: p.parse_args([*a])
    assert resolve_postprocess(named("--input", "flair=f.nii.gz", "--adapt")) == "single-lesion-recommended"  # fine-tunes cgc_flair
    assert resolve_postprocess(named("--input", "flair=f.nii.gz", "--input", "t2=t.nii.gz", "--adapt")) == "none"
    cfg = _inference_config(parse())
    assert (cfg.gmm_weight, cfg.keep_largest, cfg.opening_radius, cfg.fill_holes) == (0.5, 1, 3, "2d")
    # Explicit flags override the rule; without keep-largest the ranking opening is dropped.
    cfg = _inference_config(parse("--keep-largest", "0", "--fill-holes", "none", "--gmm-weight", "0.2"))
    assert (cfg.gmm_weight, cfg.keep_largest, cfg.opening_radius, cfg.fill_holes) == (0.2, 0, 0, False)
    cfg = _inference_config(parse("--model", str(tmp_path / "mine.pt")))
    assert (cfg.gmm_weight, cfg.keep_largest, cfg.fill_holes) == (0.0, 0, False)
    assert not cfg.pad_to_window and _inference_config(parse("--pad-to-window")).pad_to_window
    assert cfg.mirror_axes == () and _inference_config(parse("--mirror", "z", "x")).mirror_axes == ("x", "z")
    # The component choice: the shipped rule's 0.5 seed (hysteresis-v2), single-lesion's size, unless asked;
    # only with keep-largest.
    assert _inference_config(parse()).lesion_choice == "seed"
    assert _inference_config(parse("--lesion-choice", "core")).lesion_choice == "core"
    assert _inference_config(parse("--postprocess", "single-lesion")).lesion_choice == "size"
    assert _inference_config(parse("--lesion-choice", "size")).lesion_choice == "size"
    assert _inference_config(parse("--lesion-choice", "network")).lesion_choice == "network"
    assert _inference_config(parse("--keep-largest", "0")).lesion_choice == "size"
    with pytest.raises(ValueError, match="keep_largest"):
        _inference_config(parse("--postprocess", "none", "--lesion-choice", "network"))


def test_segment_case_fuses_a_given_gmm_map_and_keeps_the_network_map(tiny_model, case):
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    images = [read_image(case[m]) for m in MODS]
    chans, geom = [i.array_zyx for i in images], images[0].geometry
    rng = np.random.default_rng(0)
    given = rng.random(geom.shape_zyx).astype(np.float32) * (chans[0] != 0)
    plain = segment_case(chans, geom, MODS, tiny_model, config=InferenceConfig(device="cpu"), compute_gmm=False)
    fused = segment_case(chans, geom, MODS, tiny_model, config=InferenceConfig(device="cpu", gmm_weight=0.25),
                         gmm_probability_zyx=given)
    assert plain.network_probability is None and plain.gmm_probability is None
    np.testing.assert_allclose(fused.network_probability, plain.probability, atol=1e-6)
    np.testing.assert_allclose(fused.probability, 0.75 * plain.probability + 0.25 * given, atol=1e-6)
    np.testing.assert_array_equal(fused.mask, (fused.probability >= 0.5).astype(np.uint8))
    with pytest.raises(ValueError, match="GMM map shape"):
        segment_case(chans, geom, MODS, tiny_model, config=InferenceConfig(device="cpu", gmm_weight=0.5),
                     gmm_probability_zyx=given[:-1])


def ndimage_smooth(a):
    from scipy import ndimage
    return ndimage.gaussian_filter(a, 2.0)


def test_lesion_choice_network_ranks_the_fused_components_by_the_networks_own_votes(tmp_path, tiny_model, case):
    """segment_case hands the network's own map (not the fused one) to the ranking; the ranking itself is
    tested in test_postprocess.py and :func:`test_output_mask_keeps_the_component_the_network_votes_for`."""
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    from CGCLesionSegLib.postprocess import binarize
    images = [read_image(case[m]) for m in MODS]
    chans, geom = [i.array_zyx for i in images], images[0].geometry
    brain = chans[0] != 0
    rule = dict(device="cpu", keep_largest=1, opening_radius=2, fill_holes="2d")
    plain = segment_case(chans, geom, MODS, tiny_model, config=InferenceConfig(**rule), compute_gmm=False)
    net = plain.probability
    given = (ndimage_smooth(np.random.default_rng(1).random(geom.shape_zyx)) > 0.5).astype(np.float32) * brain
    fused_cfg = dict(rule, gmm_weight=0.5)
    by_size = segment_case(chans, geom, MODS, tiny_model, config=InferenceConfig(**fused_cfg), gmm_probability_zyx=given)
    by_votes = segment_case(chans, geom, MODS, tiny_model, config=InferenceConfig(**fused_cfg, lesion_choice="network"),
                            gmm_probability_zyx=given)
    kw = dict(fill_holes="2d", keep_largest=1, opening_radius=2, spacing_xyz=geom.spacing, mask_zyx=by_votes.brain_mask)
    np.testing.assert_array_equal(by_votes.mask, binarize(by_votes.probability, 0.5, votes_zyx=net >= 0.5, **kw))
    np.testing.assert_array_equal(by_size.mask, binarize(by_size.probability, 0.5, **kw))
    # Without fusion the thresholded map is the network's: its votes are that map's.
    alone = segment_case(chans, geom, MODS, tiny_model, config=InferenceConfig(**rule, lesion_choice="network"),
                         compute_gmm=False)
    np.testing.assert_array_equal(alone.mask, binarize(net, 0.5, fill_holes="2d", keep_largest=1, opening_radius=2,
                                                       spacing_xyz=geom.spacing, mask_zyx=alone.brain_mask,
                                                       votes_zyx=net >= 0.5))
    # The CLI flag reaches the run and its sidecar.
    seg = tmp_path / "seg.nii.gz"
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", seg, "--postprocess", "single-lesion",
            "--lesion-choice", "network")
    assert r.returncode == 0, r.stderr
    assert json.loads((tmp_path / "seg.nii.gz.json").read_text())["inference"]["lesion_choice"] == "network"
    r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", tmp_path / "x.nii.gz", "--postprocess", "none",
            "--lesion-choice", "network")
    assert r.returncode != 0 and "keep_largest" in r.stderr and not (tmp_path / "x.nii.gz").exists()


def test_single_lesion_recommended_fuses_the_map_cgcseg_gmm_thresholds(tmp_path, tiny_model, case):
    """``--postprocess single-lesion-recommended``: the single-lesion clean-up of 0.5·network + 0.5·P_rec, P_rec
    being the map ``cgcseg gmm`` writes with its defaults (not the model's own P); recorded in the sidecar."""
    import argparse
    from CGCLesionSegLib.commands import gmm as gmm_cmd
    from CGCLesionSegLib.gmm import recommended_config
    from CGCLesionSegLib.postprocess import binarize
    ap = argparse.ArgumentParser()
    gmm_cmd.add_arguments(ap)
    defaults = ap.parse_args(["--input", "x.nii.gz", "--output", "p.nii.gz"])
    assert gmm_cmd.build_config(defaults, "mri", 4) == recommended_config()  # the preset is cgcseg gmm's default
    r = cli("gmm", "--progress", "none", *_inputs(case), "--output", tmp_path / "p_rec.nii.gz")
    assert r.returncode == 0, r.stderr
    out = {}
    for rule in ("single-lesion", "single-lesion-recommended"):
        seg = tmp_path / f"{rule}.nii.gz"
        r = cli("segment", *_inputs(case), "--model", tiny_model, "--output", seg, "--postprocess", rule,
                "--probability-output", tmp_path / f"{rule}-fused.nii.gz", "--progress", "none",
                "--gmm-output", tmp_path / f"{rule}-own.nii.gz")
        assert r.returncode == 0, r.stderr
        out[rule] = (read_image(seg, dtype=None).array_zyx, read_image(tmp_path / f"{rule}-fused.nii.gz").array_zyx)
        side = json.loads((tmp_path / f"{rule}.nii.gz.json").read_text())
        assert side["postprocess"] == rule
        assert side["inference"]["fusion_map"] == ("recommended" if rule.endswith("recommended") else "model")
    p_rec = read_image(tmp_path / "p_rec.nii.gz").array_zyx
    # the network map, from the single-lesion run: fused_own = 0.5 network + 0.5 P_own (the model's own P)
    p_own = read_image(tmp_path / "single-lesion-own.nii.gz").array_zyx
    net = 2 * out["single-lesion"][1] - p_own
    brain = read_image(case["flair"]).array_zyx != 0
    assert not np.allclose(p_own, p_rec)
    np.testing.assert_allclose(out["single-lesion-recommended"][1], 0.5 * net + 0.5 * p_rec, atol=2e-5)
    want = binarize(0.5 * net + 0.5 * p_rec, 0.5, fill_holes="2d", keep_largest=1, opening_radius=3, mask_zyx=brain)
    assert np.array_equal(out["single-lesion-recommended"][0], want)
    assert not np.allclose(out["single-lesion"][1], out["single-lesion-recommended"][1])  # another P was fused


def test_single_lesion_recommended_is_refused_for_ct_models():
    from CGCLesionSegLib.inference import InferenceConfig, _recommended_probability, output_preset
    with pytest.raises(ValueError, match="CT model: use --postprocess single-lesion"):
        _recommended_probability([np.zeros((4, 4, 4))], np.ones((4, 4, 4), bool), ["ct"], None,
                                 {"brain_mask": "ct_window"}, None, {})
    assert InferenceConfig(**output_preset("single-lesion-recommended")).fusion_map == "recommended"
    with pytest.raises(ValueError, match="fusion_map must be one of model, recommended"):
        InferenceConfig(fusion_map="mine")


def test_single_lesion_recommended_reuses_the_models_p_when_it_is_the_recommended_preset(tmp_path, make_tiny_model, case,
                                                                                        monkeypatch):
    """A model trained on the recommended preset's P (``--gmm-preset recommended``) fuses its own P: one GMM fit;
    a paper-P model in cohort mode (no P output asked) fits only the recommended preset."""
    import CGCLesionSegLib.gmm as gmm_mod
    from CGCLesionSegLib.gmm import recommended_config
    from CGCLesionSegLib.inference import InferenceConfig, output_preset, segment_case
    fits = []
    real = gmm_mod.compute_probability_map
    monkeypatch.setattr(gmm_mod, "compute_probability_map", lambda *a, **k: fits.append(a[2]) or real(*a, **k))
    images = [read_image(case[m]) for m in MODS]
    chans, geom = [i.array_zyx for i in images], images[0].geometry
    cfg = InferenceConfig(device="cpu", **output_preset("single-lesion-recommended"))
    rec_model = make_tiny_model(tmp_path / "rec.pt", MODS, recommended_config())
    res = segment_case(chans, geom, MODS, rec_model, config=cfg)
    assert fits == [recommended_config()]
    assert np.allclose(res.probability, 0.5 * res.network_probability + 0.5 * res.gmm_probability, atol=1e-6)
    fits.clear()
    segment_case(chans, geom, MODS, make_tiny_model(tmp_path / "paper.pt", MODS, GMMConfig()), config=cfg,
                 compute_gmm=False)
    assert fits == [recommended_config()]
