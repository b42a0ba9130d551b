"""Training data: case discovery, the cache under RUN_DIR (and its invalidation), sampling and crops."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest

from CGCTraining.data import (CaseSpec, CropDataset, StepBatchSampler, discover_cases, load_cached, prepare_case,
                              steps_per_epoch)
from test_training_synth import MODS, SHAPE_ZYX, geometry, phantom, write_brats_folder, write_csv_with_prob

SETTINGS = {"modalities": list(MODS), "normalization": {"clip_percentiles": [0.5, 99.5]},
            "gmm": {"n_clusters": 3}, "spacing_xyz": [1.0, 1.0, 1.0], "brain_mask": "nonzero"}


def test_brats_layout_ignores_seg_and_keeps_modality_order(tmp_path):
    root = write_brats_folder(tmp_path / "data", n_cases=2)
    cases = discover_cases(root, ["t2", "flair"])
    assert [c.name for c in cases] == ["Case000", "Case001"]
    assert list(cases[0].images) == ["t2", "flair"]
    assert all(not Path(p).name.endswith("_seg.nii.gz") for c in cases for p in c.images.values())


def test_missing_modality_names_the_case(tmp_path):
    root = write_brats_folder(tmp_path / "data", n_cases=2)
    (root / "Case001" / "Case001_t2.nii.gz").unlink()
    with pytest.raises(ValueError, match=r"Case001.*t2|--modalities"):
        discover_cases(root, MODS)
    with pytest.raises(ValueError, match="BraTS layout"):
        discover_cases(tmp_path / "data" / "Case000", MODS)  # a case folder is not a cohort
    with pytest.raises(ValueError, match="does not exist"):
        discover_cases(tmp_path / "nope", MODS)


def test_csv_and_json_lists_with_relative_paths(tmp_path):
    csv_path = write_csv_with_prob(tmp_path / "list", n_cases=2)
    cases = discover_cases(csv_path, MODS)
    assert [c.name for c in cases] == ["s0", "s1"]
    assert cases[0].prob and os.path.isabs(cases[0].prob) and os.path.exists(cases[0].images["flair"])
    records = [{"case": c.name, **{m: os.path.relpath(p, tmp_path / "list") for m, p in c.images.items()}}
               for c in cases]
    (tmp_path / "list" / "cases.json").write_text(json.dumps({"cases": records}))
    js = discover_cases(tmp_path / "list" / "cases.json", MODS)
    assert [c.images for c in js] == [c.images for c in cases] and js[0].prob is None
    bad = tmp_path / "list" / "bad.json"
    bad.write_text(json.dumps([{"case": "x", "flair": "img/s0_flair.nii.gz"}]))
    with pytest.raises(ValueError, match="no path for t2"):
        discover_cases(bad, MODS)


def _spec(tmp_path, k=0) -> CaseSpec:
    root = write_brats_folder(tmp_path / "data", n_cases=k + 1)
    return discover_cases(root, MODS)[k]


class CountingProb:
    def __init__(self):
        self.calls = 0

    def __call__(self, channels, mask):
        self.calls += 1
        brain = channels[0] != 0
        return (channels[0] > np.percentile(channels[0][brain], 90)).astype(np.float32), brain


def test_cache_lives_in_run_dir_and_is_reused(tmp_path):
    spec = _spec(tmp_path)
    before = sorted(p.name for p in (tmp_path / "data").rglob("*"))
    fn = CountingProb()
    a = prepare_case(spec, tmp_path / "run" / "cache", SETTINGS, fn)
    b = prepare_case(spec, tmp_path / "run" / "cache", SETTINGS, fn)
    assert fn.calls == 1
    assert sorted(p.name for p in (tmp_path / "data").rglob("*")) == before  # nothing beside the input
    assert a.image.shape[0] == 2 and a.image.shape[1:] == a.prob.shape == a.mask.shape
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
    # Cropped to the brain bounding box (+ margin), so smaller than the full volume in some axis.
    assert np.prod(a.mask.shape) <= np.prod(SHAPE_ZYX)
    # Normalised inside the brain, zero outside.
    inside = np.asarray(a.image)[0][np.asarray(a.mask)]
    assert abs(inside.mean()) < 0.2 and np.all(np.asarray(a.image)[:, ~np.asarray(a.mask)] == 0)


@pytest.mark.parametrize("change", ["gmm", "normalization", "spacing", "input_file"])
def test_cache_is_invalidated_when_a_setting_or_file_changes(tmp_path, change):
    spec = _spec(tmp_path)
    fn = CountingProb()
    cache = tmp_path / "run" / "cache"
    prepare_case(spec, cache, SETTINGS, fn)
    settings = json.loads(json.dumps(SETTINGS))
    if change == "gmm":
        settings["gmm"]["n_clusters"] = 5
    elif change == "normalization":
        settings["normalization"]["clip_percentiles"] = [1.0, 99.0]
    elif change == "spacing":
        settings["spacing_xyz"] = [2.0, 2.0, 2.0]
    else:
        time.sleep(0.01)
        os.utime(spec.images["flair"], None)
    assert load_cached(cache, spec, settings) is None
    c = prepare_case(spec, cache, settings, fn)
    assert fn.calls == 2
    if change == "spacing":  # resampled to 2 mm: about half the size per axis
        assert c.meta["shape_zyx"] == [round(s / 2) for s in SHAPE_ZYX]


def test_precomputed_p_skips_the_gmm(tmp_path):
    spec = discover_cases(write_csv_with_prob(tmp_path / "list", 1), MODS)[0]
    fn = CountingProb()
    c = prepare_case(spec, tmp_path / "cache", SETTINGS, fn)
    assert fn.calls == 0
    _, _, prob = phantom(100)
    assert np.isclose(np.asarray(c.prob).sum(), prob.sum(), rtol=1e-5)


@pytest.mark.parametrize("n, b, w", [(7, 2, 1), (8, 2, 2), (5, 1, 2), (1, 2, 1)])
def test_sampler_shards_are_disjoint_and_deterministic(n, b, w):
    total = 3 * steps_per_epoch(n, b, w)
    per_rank = [list(StepBatchSampler(n, b, seed=3, total_steps=total, rank=r, world_size=w)) for r in range(w)]
    assert all(len(r) == total for r in per_rank)
    for step in range(total):
        slots = [key[1] for r in range(w) for key in per_rank[r][step]]
        assert len(set(slots)) == len(slots) == b * w  # no slot (crop) seen twice across ranks
    # Every case appears in every epoch.
    spe = steps_per_epoch(n, b, w)
    for e in range(3):
        seen = {key[2] for r in range(w) for s in range(e * spe, (e + 1) * spe) for key in per_rank[r][s]}
        assert seen == set(range(n))
    # Resuming at step k yields exactly the tail of the full schedule.
    tail = list(StepBatchSampler(n, b, seed=3, total_steps=total, start_step=2, rank=0, world_size=w))
    assert tail == per_rank[0][2:]
    other_seed = list(StepBatchSampler(n, b, seed=4, total_steps=total, rank=0, world_size=w))
    assert n == 1 or other_seed != per_rank[0]


def _cached(tmp_path, n=1):
    root = write_brats_folder(tmp_path / "data", n_cases=n)
    return [prepare_case(s, tmp_path / "cache", SETTINGS, CountingProb()) for s in discover_cases(root, MODS)]


def test_crops_are_deterministic_per_key_and_cover_the_brain(tmp_path):
    cases = _cached(tmp_path)
    ds = CropDataset(cases, (8, 16, 16), seed=0, lesion_crop_fraction=0.0)
    a, b = ds[(0, 3, 0)], ds[(0, 3, 0)]
    assert np.array_equal(a["image"].numpy(), b["image"].numpy())
    assert tuple(a["image"].shape) == (2, 8, 16, 16) and tuple(a["prob"].shape) == (1, 8, 16, 16)
    assert not np.array_equal(a["image"].numpy(), ds[(0, 4, 0)]["image"].numpy())
    # Crops are centred on brain voxels: each one contains brain.
    assert all((ds[(1, s, 0)]["image"].abs().sum() > 0) for s in range(10))
    ds2 = CropDataset(cases, (8, 16, 16), seed=0, lesion_crop_fraction=1.0, flip=False, intensity_jitter=0)
    assert all(ds2[(0, s, 0)]["prob"].max() >= 0.5 for s in range(10))


def test_crop_larger_than_case_is_zero_padded(tmp_path):
    cases = _cached(tmp_path)
    ds = CropDataset(cases, (32, 40, 40), seed=0, flip=False, intensity_jitter=0.0)
    s = ds[(0, 0, 0)]
    assert tuple(s["image"].shape) == (2, 32, 40, 40)
    z, y, x = cases[0].mask.shape
    assert np.array_equal(s["image"][:, :z, :y, :x].numpy(), np.asarray(cases[0].image))
    assert s["image"][:, z:].abs().sum() == 0


def test_flips_move_image_and_p_together(tmp_path):
    cases = _cached(tmp_path)
    ds = CropDataset(cases, (8, 16, 16), seed=0, flip=True, intensity_jitter=0.0)
    ref = CropDataset(cases, (8, 16, 16), seed=0, flip=False, intensity_jitter=0.0)
    for s in range(6):
        a, r = ds[(0, s, 0)], ref[(0, s, 0)]
        img, p = a["image"].numpy(), a["prob"].numpy()
        # Same crop window; flips applied identically to image and P: find the flip that maps r to a.
        found = False
        for fz in (0, 1):
            for fy in (0, 1):
                for fx in (0, 1):
                    axes = [ax for ax, f in zip((1, 2, 3), (fz, fy, fx)) if f]
                    ri = np.flip(r["image"].numpy(), axes) if axes else r["image"].numpy()
                    rp = np.flip(r["prob"].numpy(), axes) if axes else r["prob"].numpy()
                    found |= np.array_equal(ri, img) and np.array_equal(rp, p)
        assert found


def test_cached_case_pickles_as_paths_for_spawned_workers(tmp_path):
    import pickle
    case = _cached(tmp_path)[0]
    blob = pickle.dumps(case)
    assert len(blob) < 10_000  # paths only, not the arrays
    back = pickle.loads(blob)
    assert isinstance(back.image, np.memmap) and np.array_equal(np.asarray(back.image), np.asarray(case.image))
    assert np.array_equal(np.asarray(back.prob), np.asarray(case.prob))


def test_csv_saved_by_a_spreadsheet_with_a_byte_order_mark(tmp_path):
    csv_path = write_csv_with_prob(tmp_path / "list", n_cases=2)
    text = csv_path.read_text()
    assert text.startswith("case")
    bom = csv_path.with_name("excel.csv")
    bom.write_text(text, encoding="utf-8-sig")  # what "CSV UTF-8" export of a spreadsheet writes
    assert [c.name for c in discover_cases(bom, MODS)] == ["s0", "s1"]
    broken = csv_path.with_name("broken.json")
    broken.write_text('[{"case": "s0",')
    with pytest.raises(ValueError, match=r"broken.json is not valid JSON"):
        discover_cases(broken, MODS)
