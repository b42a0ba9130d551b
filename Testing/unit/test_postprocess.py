"""binarize(): threshold, small-component removal, largest-component selection, hole filling."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from CGCLesionSegLib.postprocess import binarize, fill_holes, min_voxels_from_volume, remove_small_components
from flood_fill import flood_components


def blobs():
    """(z, y, x) map with a 27-voxel cube, a 1-voxel speck and a hollow 5×5×5 box."""
    p = np.zeros((12, 20, 20), np.float32)
    p[1:4, 1:4, 1:4] = 0.9           # 27 voxels
    p[8, 2, 2] = 0.7                 # 1 voxel
    p[5:10, 10:15, 10:15] = 0.8      # hollow box: 125 - 27 = 98 voxels
    p[6:9, 11:14, 11:14] = 0.1
    return p


def test_threshold_only():
    p = blobs()
    b = binarize(p, 0.5)
    assert b.dtype == np.uint8 and b.shape == p.shape
    np.testing.assert_array_equal(b, (p >= 0.5).astype(np.uint8))
    assert binarize(p, 0.85).sum() == 27


def test_min_component_size_against_reference():
    p = blobs()
    b = binarize(p, 0.5, min_component_voxels=2)
    assert b[8, 2, 2] == 0 and b.sum() == 27 + 98
    b = binarize(p, 0.5, min_component_voxels=50)
    assert b.sum() == 98
    # reference: scipy label + size filter, 26-connectivity
    lab, n = ndimage.label(p >= 0.5, np.ones((3, 3, 3)))
    sizes = ndimage.sum(np.ones_like(lab), lab, range(1, n + 1))
    ref = np.isin(lab, [i + 1 for i, s in enumerate(sizes) if s >= 50])
    np.testing.assert_array_equal(b.astype(bool), ref)


def test_diagonal_neighbours_are_one_component():
    b = np.zeros((3, 3, 3), bool)
    b[0, 0, 0] = b[1, 1, 1] = b[2, 2, 2] = True
    assert remove_small_components(b, 3).sum() == 3


def test_keep_largest_and_fill_holes():
    p = blobs()
    assert binarize(p, 0.5, keep_largest=1).sum() == 98
    assert binarize(p, 0.5, keep_largest=2).sum() == 98 + 27
    filled = binarize(p, 0.5, fill_holes=True)
    assert filled[7, 12, 12] == 1 and filled.sum() == 27 + 1 + 125
    filled2d = binarize(p, 0.5, fill_holes="2d")
    # the cavity is closed on the top/bottom slices only in 3-D; per slice every middle slice is a ring
    assert filled2d[7, 12, 12] == 1 and filled2d.sum() == 27 + 1 + 125


def test_fill_2d_fills_cup_open_in_3d():
    b = np.zeros((6, 9, 9), bool)
    b[1:5, 2:7, 2:7] = True
    b[2:5, 3:6, 3:6] = False          # a cup open at the top: no 3-D hole
    assert fill_holes(b, "3d").sum() == b.sum()
    assert fill_holes(b, "2d").sum() == 4 * 25


def test_min_volume_in_mm3_and_mask():
    p = blobs()
    assert min_voxels_from_volume(10.0, (2.0, 2.0, 1.0)) == 3
    b = binarize(p, 0.5, min_component_mm3=100.0, spacing_xyz=(1.0, 1.0, 2.0))  # 50 voxels
    assert b.sum() == 98
    mask = np.zeros(p.shape, bool)
    mask[:6] = True
    assert binarize(p, 0.5, mask_zyx=mask)[6:].sum() == 0


@pytest.mark.parametrize("kwargs, word", [
    (dict(threshold=0.0), "threshold"), (dict(threshold=1.5), "threshold"),
    (dict(min_component_voxels=-1), ">= 0"), (dict(fill_holes="4d"), "fill_holes"),
    (dict(min_component_mm3=10.0), "spacing"),
])
def test_bad_arguments(kwargs, word):
    with pytest.raises(ValueError, match=word):
        binarize(blobs(), **kwargs)
    with pytest.raises(ValueError, match="3-D"):
        binarize(np.zeros((4, 4)))


def test_opening_cuts_thin_bridges_before_keeping_the_largest():
    from CGCLesionSegLib.postprocess import open_and_keep
    b = np.zeros((16, 30, 40), bool)
    b[3:13, 5:15, 3:13] = True        # big blob, 1000 voxels
    b[5:11, 8:14, 25:31] = True       # smaller blob, 216 voxels
    b[8, 10, 13:25] = True            # one-voxel-thin bridge between them
    p = b.astype(np.float32)
    assert binarize(p, keep_largest=1).sum() == b.sum()           # one object through the bridge
    kept = binarize(p, keep_largest=1, opening_radius=2).astype(bool)
    big = np.zeros_like(b)
    big[3:13, 5:15, 3:13] = True
    assert kept[big].all()                                         # big blob back in full, not eroded
    assert not kept[5:11, 8:14, 25:31].any()                       # small blob dropped
    assert kept.sum() <= big.sum() + 2 * 2 + 1                     # at most a short bridge stub
    # thinner than the opening everywhere: falls back to the plain largest component
    line = np.zeros((5, 5, 20), bool)
    line[2, 2, 2:18] = True
    np.testing.assert_array_equal(open_and_keep(line, 2), line)
    with pytest.raises(ValueError, match="keep_largest"):
        binarize(p, opening_radius=2)


# ------------------------------------------------------------------ the opening radius in millimetres
def test_step_axes_follow_whole_voxels_within_the_radius():
    from CGCLesionSegLib.postprocess import step_axes
    assert step_axes(3) == [(True, True, True)] * 3 == step_axes(3, (1.0, 1.0, 1.0))
    assert step_axes(3, (1.0, 1.0, 5.0)) == [(False, True, True)] * 3  # (z, y, x): no 5 mm step within 3 mm
    six = step_axes(6, (1.0, 1.0, 5.0))
    assert len(six) == 6 and [a[0] for a in six] == [False] * 4 + [True, False]
    assert step_axes(3, (2.0, 2.0, 2.0)) == [(True, True, True)] * 2  # round(1.5) steps of 2 mm
    assert step_axes(0, (1.0, 1.0, 5.0)) == []


def _old_open_and_keep(binary, radius, keep_largest=1):
    """The voxel rule as it was before millimetres: scipy's iterated 6-connected opening and growth."""
    st = ndimage.generate_binary_structure(3, 1)
    opened = ndimage.binary_opening(binary, st, iterations=radius)
    if not opened.any():
        return remove_small_components(binary, 0, keep_largest)
    kept = remove_small_components(opened, 0, keep_largest)
    return ndimage.binary_dilation(kept, st, iterations=2 * radius, mask=binary)


def _blobs(seed, shape=(18, 22, 24)):
    rng = np.random.default_rng(seed)
    return ndimage.gaussian_filter(rng.random(shape), 1.5) > 0.52


@pytest.mark.parametrize("seed", range(4))
def test_one_millimetre_grids_keep_the_voxel_rule(seed):
    from CGCLesionSegLib.postprocess import open_and_keep
    b = _blobs(seed)
    ref = _old_open_and_keep(b, 2)
    np.testing.assert_array_equal(open_and_keep(b, 2, 1, (1.0, 1.0, 1.0)), ref)
    np.testing.assert_array_equal(open_and_keep(b, 2, 1), ref)


def _slow_morph(binary, offsets, erode):
    """Erosion (every offset inside) or dilation (any offset inside) by an explicit offset set, border = outside."""
    Z, Y, X = binary.shape
    out = np.zeros_like(binary)
    for z in range(Z):
        for y in range(Y):
            for x in range(X):
                hits = []
                for dz, dy, dx in offsets:
                    q = (z + dz, y + dy, x + dx)
                    hits.append(0 <= q[0] < Z and 0 <= q[1] < Y and 0 <= q[2] < X and bool(binary[q]))
                out[z, y, x] = all(hits) if erode else any(hits)
    return out


@pytest.mark.parametrize("seed", range(3))
def test_anisotropic_opening_against_an_explicit_structuring_element(seed):
    from CGCLesionSegLib.postprocess import open_and_keep, step_axes
    spacing = (0.9, 1.0, 2.5)  # x, y, z in mm
    steps = step_axes(2.0, spacing)
    offsets = {(0, 0, 0)}
    for axes in steps:  # Minkowski sum of the steps' crosses
        moves = [(0, 0, 0)] + [tuple(s if i == a else 0 for i in range(3)) for a, on in enumerate(axes) if on
                               for s in (-1, 1)]
        offsets = {tuple(o + m for o, m in zip(off, mv)) for off in offsets for mv in moves}
    b = _blobs(seed, (8, 12, 12))
    opened = _slow_morph(_slow_morph(b, offsets, True), [tuple(-v for v in o) for o in offsets], False)
    assert opened.any()  # the seeds give blobs thick enough, so the opening itself is compared
    kept = remove_small_components(opened, 0, 1)
    for axes in step_axes(4.0, spacing):  # geodesic growth: one step at a time inside the mask
        kept = ndimage.binary_dilation(kept, _cross_ref(axes), mask=b)
    np.testing.assert_array_equal(open_and_keep(b, 2.0, 1, spacing), kept)


def _cross_ref(axes):
    st = np.zeros((3, 3, 3), bool)
    st[1, 1, 1] = True
    for a, on in enumerate(axes):
        if on:
            for v in (0, 2):
                idx = [1, 1, 1]
                idx[a] = v
                st[tuple(idx)] = True
    return st


def test_thin_slab_lesion_on_thick_slices_survives_the_single_lesion_rule():
    # 5 mm slices: a lesion 3 slices (15 mm) thick and 16 x 16 mm wide, and a smaller bright blob joined to
    # it by a one-voxel bridge. Counting voxels, the 3-voxel opening erased the lesion across slices.
    prob = np.zeros((9, 40, 40), np.float32)
    prob[3:6, 4:20, 4:20] = 1.0
    prob[3:6, 24:32, 24:32] = 1.0
    prob[4, 19:25, 19] = 1.0
    mm = binarize(prob, 0.5, keep_largest=1, opening_radius=3, spacing_xyz=(1.0, 1.0, 5.0)).astype(bool)
    lesion = np.zeros_like(mm)
    lesion[3:6, 4:20, 4:20] = True
    assert mm[lesion].all() and not mm[3:6, 24:32, 24:32].any()
    voxels = binarize(prob, 0.5, keep_largest=1, opening_radius=3).astype(bool)
    assert not np.array_equal(voxels, mm)  # the old rule: the opening removes everything, no bridge is cut


# ------------------------------------------------------------------ choosing the lesion by the network's votes
def _ranked_reference(binary, votes, keep):
    """Brute force: label, then sort the components by (votes inside, size), both descending."""
    lab, n = ndimage.label(binary, np.ones((3, 3, 3)))
    comps = [(int((votes & (lab == i)).sum()), int((lab == i).sum()), i) for i in range(1, n + 1)]
    comps.sort(key=lambda c: (c[0], c[1]), reverse=True)
    return np.isin(lab, [c[2] for c in comps[:keep]])


def test_votes_rank_components_against_a_brute_force_reference():
    changed = 0
    for seed in range(6):
        rng = np.random.default_rng(100 + seed)
        b = _blobs(seed, (14, 18, 20))
        lab, n = ndimage.label(b, np.ones((3, 3, 3)))
        density = rng.random(n + 1)  # each component gets its own share of votes, so size alone does not decide
        density[1 + np.argmax(np.bincount(lab.ravel())[1:])] = 0.03  # the largest: few votes
        votes = (rng.random(b.shape) < density[lab]) & b | (rng.random(b.shape) < 0.05)
        sizes = np.bincount(lab.ravel())[1:]
        inside = np.bincount(lab[votes], minlength=n + 1)[1:]
        keys = sorted(zip(inside, sizes), reverse=True)
        assert n >= 3 and keys[0] != keys[1] != keys[2]  # no tie decides which two are kept
        for keep in (1, 2):
            np.testing.assert_array_equal(remove_small_components(b, 0, keep, votes), _ranked_reference(b, votes, keep))
        changed += not np.array_equal(remove_small_components(b, 0, 1, votes), remove_small_components(b, 0, 1))
    assert changed >= 2  # the votes, not the sizes, decided some of these


def test_votes_that_miss_every_component_rank_by_size_and_none_is_the_old_rule():
    b = _blobs(7)
    none = np.zeros_like(b)
    for keep in (1, 2):
        np.testing.assert_array_equal(remove_small_components(b, 0, keep, none), remove_small_components(b, 0, keep))
    # Votes outside the mask count for no component.
    outside = ~b
    np.testing.assert_array_equal(remove_small_components(b, 0, 1, outside), remove_small_components(b, 0, 1))


def test_votes_pick_the_lesion_after_the_opening_and_it_grows_back_in_full():
    from CGCLesionSegLib.postprocess import open_and_keep
    b = np.zeros((16, 30, 40), bool)
    b[3:13, 5:15, 3:13] = True        # big bright region, 1000 voxels
    b[5:11, 8:14, 25:31] = True       # the lesion, 216 voxels
    b[8, 10, 13:25] = True            # a thin bridge joins them
    votes = np.zeros_like(b)
    votes[6:10, 9:13, 26:30] = True   # the network marks the lesion only
    kept = binarize(b.astype(np.float32), keep_largest=1, opening_radius=2, votes_zyx=votes).astype(bool)
    lesion = np.zeros_like(b)
    lesion[5:11, 8:14, 25:31] = True
    assert kept[lesion].all() and not kept[3:13, 5:15, 3:13].any()
    assert kept.sum() <= lesion.sum() + 2 * 2 + 1  # at most a short bridge stub
    # Without the opening the bridge makes one object, which holds the votes: everything is kept.
    assert binarize(b.astype(np.float32), keep_largest=1, votes_zyx=votes).sum() == b.sum()
    # Everything thinner than the opening: the fallback ranks by votes too.
    line = np.zeros((5, 5, 30), bool)
    line[2, 2, 1:10] = line[2, 2, 14:20] = True
    v = np.zeros_like(line)
    v[2, 2, 15] = True
    np.testing.assert_array_equal(open_and_keep(line, 2, 1, None, v), line & (np.arange(30) >= 14))
    with pytest.raises(ValueError, match="votes_zyx"):
        binarize(b.astype(np.float32), keep_largest=1, votes_zyx=votes[:-1])


def test_output_mask_keeps_the_component_the_network_votes_for():
    from CGCLesionSegLib.inference import NETWORK_VOTE, InferenceConfig, output_mask, output_preset
    net = np.full((20, 30, 40), 0.2, np.float32)
    p = np.zeros_like(net)
    p[2:18, 2:20, 2:20] = 1.0          # a large region P alone marks (a leaking bias field)
    p[6:14, 10:18, 26:34] = 1.0        # the lesion, which the network marks too
    net[6:14, 10:18, 26:34] = 0.9
    fused = 0.5 * net + 0.5 * p
    brain = np.ones(net.shape, bool)
    rule = output_preset("single-lesion")
    by_size = output_mask(fused, brain, InferenceConfig(**rule), (1.0, 1.0, 1.0), net).astype(bool)
    by_votes = output_mask(fused, brain, InferenceConfig(**{**rule, "lesion_choice": "network"}), (1.0, 1.0, 1.0),
                           net).astype(bool)
    assert by_size[2:18, 2:20, 2:20].all() and not by_size[6:14, 10:18, 26:34].any()
    assert by_votes[6:14, 10:18, 26:34].all() and by_votes.sum() == 8 * 8 * 8
    # A lower output threshold does not move the vote: the network's map still votes at its 0.5.
    low = output_mask(fused, brain, InferenceConfig(**{**rule, "lesion_choice": "network", "threshold": 0.3}),
                      (1.0, 1.0, 1.0), net).astype(bool)
    assert NETWORK_VOTE == 0.5 and np.array_equal(low, by_votes)
    # No network map given: the thresholded map votes (the `none`-style rule with keep-largest).
    alone = output_mask(net, brain, InferenceConfig(keep_largest=1, lesion_choice="network")).astype(bool)
    assert alone.sum() == 8 * 8 * 8
    with pytest.raises(ValueError, match="lesion_choice"):
        InferenceConfig(keep_largest=1, lesion_choice="votes")
    with pytest.raises(ValueError, match="keep_largest"):
        InferenceConfig(lesion_choice="core")
    with pytest.raises(ValueError, match="keep_largest"):
        InferenceConfig(lesion_choice="network")


def test_core_choice_keeps_the_component_whose_map_reaches_half_and_delineates_it_at_the_threshold():
    """``lesion_choice="core"``: at 0.3 a wide lukewarm region (0.35) outranks the lesion by size; ranked by the
    map's own voxels >= 0.5 the lesion (0.9 core, 0.4 rim) is kept, rim included; at 0.5 it ranks as size."""
    from CGCLesionSegLib.inference import CORE_VOTE, InferenceConfig, output_mask, output_preset
    from CGCLesionSegLib.postprocess import binarize
    fused = np.zeros((20, 30, 40), np.float32)
    fused[2:18, 2:22, 2:20] = 0.35      # lukewarm, large: 16*20*18 voxels
    fused[5:15, 9:19, 25:35] = 0.4      # the lesion's rim
    fused[7:13, 11:17, 27:33] = 0.9     # its confident core
    fused[3:5, 3:5, 3:5] = 0.6          # a few confident voxels inside the lukewarm region
    brain = np.ones(fused.shape, bool)
    rule = {**output_preset("single-lesion"), "threshold": 0.3, "opening_radius": 1}
    by_size = output_mask(fused, brain, InferenceConfig(**rule), (1.0, 1.0, 1.0)).astype(bool)
    core = output_mask(fused, brain, InferenceConfig(**{**rule, "lesion_choice": "core"}), (1.0, 1.0, 1.0)).astype(bool)
    assert by_size[2:18, 2:22, 2:20].all() and not by_size[5:15, 9:19, 25:35].any()
    assert core[5:15, 9:19, 25:35].all() and core.sum() == 10 * 10 * 10  # the rim too: delineated at 0.3
    # Brute force: among the opened components, the one with the most voxels >= 0.5 (the same binarize, votes given).
    ref = binarize(fused, threshold=0.3, fill_holes="2d", keep_largest=1, mask_zyx=brain, opening_radius=1,
                   spacing_xyz=(1.0, 1.0, 1.0), votes_zyx=fused >= 0.5).astype(bool)
    assert CORE_VOTE == 0.5 and np.array_equal(core, ref)
    # At the rules' standard 0.5 the choice is the size choice.
    half = {**rule, "threshold": 0.5}
    assert np.array_equal(output_mask(fused, brain, InferenceConfig(**{**half, "lesion_choice": "core"}), (1.0, 1.0, 1.0)),
                          output_mask(fused, brain, InferenceConfig(**half), (1.0, 1.0, 1.0)))


def test_seed_choice_keeps_the_lesion_chosen_at_half_where_lukewarm_islands_outvote_it_at_the_threshold():
    """``lesion_choice="seed"`` (protocol hysteresis-v2): at 0.3 a lukewarm region (0.35) joins many small islands
    (0.6) whose voxels >= 0.5 together outnumber the lesion's core, so both ``size`` and ``core`` keep the region;
    at 0.5 each island is smaller than the core, so the lesion is chosen there and delineated at 0.3 (rim kept)."""
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset
    fused = np.zeros((24, 40, 60), np.float32)
    fused[2:22, 2:38, 2:30] = 0.35                   # lukewarm and large
    for z in (4, 12):
        for y in (4, 12, 20, 28):
            for x in (4, 12, 20):
                fused[z:z + 5, y:y + 5, x:x + 5] = 0.6   # 24 islands of 125 voxels >= 0.5: 3000 in all
    fused[6:18, 8:20, 40:52] = 0.4                   # the lesion's rim
    fused[8:16, 10:18, 42:50] = 0.9                  # its core: 512 voxels >= 0.5, more than any island
    brain = np.ones(fused.shape, bool)
    rule = {**output_preset("single-lesion"), "threshold": 0.3, "opening_radius": 1}
    lesion = np.zeros(fused.shape, bool)
    lesion[6:18, 8:20, 40:52] = True

    def out(choice, **kw):
        return output_mask(fused, brain, InferenceConfig(**{**rule, **kw, "lesion_choice": choice}), (1.0, 1.0, 1.0)).astype(bool)

    assert not (out("size") & lesion).any() and not (out("core") & lesion).any()
    seed = out("seed")
    assert np.array_equal(seed, lesion)               # chosen at 0.5, delineated at 0.3: rim included
    assert out("size", threshold=0.5)[8:16, 10:18, 42:50].all()  # the seed: 0.5's own choice
    # At >= 0.5 the seed is the output itself, so the choice is the size choice.
    for t in (0.5, 0.55):
        assert np.array_equal(out("seed", threshold=t), out("size", threshold=t))


def test_seed_choice_on_random_maps_overlaps_the_half_rule_and_reduces_to_it_at_half():
    """On random smooth maps: the seed choice at 0.3 contains the opened core of what the rule keeps at 0.5
    (whenever that is not empty), and equals ``size`` at 0.5; an empty map gives an empty mask."""
    from scipy import ndimage
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, output_preset
    rng = np.random.default_rng(3)
    rule = {**output_preset("single-lesion"), "opening_radius": 1}
    for _ in range(6):
        m = ndimage.gaussian_filter(rng.random((16, 24, 24)), 2.0)
        m = ((m - m.min()) / (m.max() - m.min())).astype(np.float32)
        brain = np.ones(m.shape, bool)
        at_half = output_mask(m, brain, InferenceConfig(**{**rule, "threshold": 0.5}), (1.0, 1.0, 1.0)).astype(bool)
        seed = output_mask(m, brain, InferenceConfig(**{**rule, "threshold": 0.3, "lesion_choice": "seed"}),
                           (1.0, 1.0, 1.0)).astype(bool)
        opened = ndimage.binary_opening(at_half, ndimage.generate_binary_structure(3, 1))
        assert at_half.any() and seed[opened].all() and (seed & at_half).sum() >= opened.sum()
        assert np.array_equal(
            output_mask(m, brain, InferenceConfig(**{**rule, "threshold": 0.5, "lesion_choice": "seed"}), (1.0, 1.0, 1.0)),
            output_mask(m, brain, InferenceConfig(**{**rule, "threshold": 0.5}), (1.0, 1.0, 1.0)))
    zero = np.zeros((8, 8, 8), np.float32)
    assert not output_mask(zero, np.ones(zero.shape, bool),
                           InferenceConfig(**{**rule, "threshold": 0.3, "lesion_choice": "seed"})).any()


@pytest.mark.parametrize("seed", range(6))
def test_removed_components_against_flood_fill(seed):
    from CGCLesionSegLib.postprocess import removed_components
    rng = np.random.default_rng(seed)
    before = rng.random((9, 11, 10)) < 0.12
    comps = flood_components(before)
    after = np.zeros_like(before)
    for comp in comps:  # keep some components whole, a few voxels of others, drop the rest
        r = rng.random()
        vox = sorted(comp)
        if r < 0.3:
            for v in vox:
                after[v] = True
        elif r < 0.5:
            after[vox[0]] = True
    spacing = (1.0, 2.0, 0.5)
    out = removed_components(before, after, spacing)
    voxel_ml = 1.0 / 1000.0
    gone = [len(c) for c in comps if not any(after[v] for v in c)]
    assert out["count"] == len(gone)
    assert out["count_1ml"] == sum(g * voxel_ml >= 1.0 for g in gone)
    assert out["kept"] == len(comps) - len(gone)
    assert out["total_ml"] == pytest.approx(sum(gone) * voxel_ml, abs=1e-3)
    assert out["largest_ml"] == pytest.approx(max(gone, default=0) * voxel_ml, abs=1e-3)
    assert out["kept_ml"] == pytest.approx(after.sum() * voxel_ml, abs=1e-3)


def test_removed_warning_only_for_lesion_sized_candidates():
    from CGCLesionSegLib.postprocess import REMOVED_WARN_FRACTION, REMOVED_WARN_ML, removed_summary, removed_warning
    assert removed_warning(None) is None and removed_summary(None) == ""
    small = {"count": 5, "count_1ml": 0, "largest_ml": REMOVED_WARN_ML - 0.01, "total_ml": 2.0, "kept": 1,
             "kept_ml": 5.0}
    assert removed_warning(small) is None and removed_summary(small) == ""
    big = dict(small, count=7, count_1ml=2, largest_ml=3.25, total_ml=4.5)
    text = removed_warning(big)
    assert "removed 2 candidates of >= 1 mL" in text and "3.2 mL" in text and "--keep-largest 0" in text
    assert "2 candidates" in removed_summary(big)
    # the same candidate beside a kept lesion more than 1/REMOVED_WARN_FRACTION times larger: summary only
    beside_large = dict(big, kept_ml=3.25 / REMOVED_WARN_FRACTION + 1.0)
    assert removed_warning(beside_large) is None and "2 candidates" in removed_summary(beside_large)


def test_removed_by_rule_reports_the_second_lesion():
    """Two 1-mm-grid blobs of 4.1 and 2.2 mL: the single-lesion clean-up keeps the larger, reports the other."""
    from CGCLesionSegLib.inference import InferenceConfig, output_mask, removed_by_rule
    p = np.zeros((40, 40, 40), np.float32)
    p[2:18, 2:18, 2:18] = 0.9   # 4096 voxels = 4.096 mL
    p[25:38, 25:38, 25:38] = 0.8  # 2197 voxels
    brain = np.ones(p.shape, bool)
    cfg = InferenceConfig(keep_largest=1, opening_radius=3, fill_holes="2d")
    mask = output_mask(p, brain, cfg, (1.0, 1.0, 1.0))
    out = removed_by_rule(p, brain, cfg, mask, (1.0, 1.0, 1.0))
    assert out == {"count": 1, "count_1ml": 1, "largest_ml": 2.197, "total_ml": 2.197, "kept": 1, "kept_ml": 4.096}
    assert removed_by_rule(p, brain, InferenceConfig(), mask, (1.0, 1.0, 1.0)) is None  # no keep-largest
