"""The overview shows the result: drawn last and thicker, never covered; panels of >= 300 px."""
from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from CGCLesionSegLib.image_io import Geometry
from CGCLesionSegLib.overview import write_overview

IDENTITY = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def _case(shape=(24, 60, 60)):
    rng = np.random.default_rng(0)
    vol = rng.uniform(100, 200, shape).astype(np.float32)
    zz, yy, xx = np.indices(shape)
    ref = (zz - 12) ** 2 + (yy - 30) ** 2 + (xx - 30) ** 2 < 12 ** 2
    result = (zz - 12) ** 2 + (yy - 31) ** 2 + (xx - 30) ** 2 < 11 ** 2   # borders cross the reference's
    speckle = rng.random(shape) > 0.9
    return vol, Geometry(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), IDENTITY), ref, result, speckle


def test_result_is_drawn_last_thicker_and_never_covered(tmp_path):
    vol, geom, ref, result, speckle = _case()
    # The result comes first in the dict: emphasize must still put it on top.
    masks = {"CGC": result, "reference": ref, "GMM": speckle}
    info = write_overview(tmp_path / "o.png", vol, geom, masks, n_slices=3, emphasize="CGC")
    assert info.overdrawn_px["CGC"] == 0
    assert info.contour_px["CGC"] > 0 and info.overdrawn_px["reference"] > 0  # the two do cross
    png = np.asarray(Image.open(tmp_path / "o.png").convert("RGB"))
    red = np.all(png == np.array(info.colors["CGC"], np.uint8), axis=-1)
    assert int(red.sum()) >= info.contour_px["CGC"]   # every result pixel is visible (+ legend swatch)
    for left, top, w, h in info.panels:
        assert max(w, h) >= 300
    # Without emphasis, the last mask covers the first one.
    plain = write_overview(tmp_path / "p.png", vol, geom, masks, n_slices=3)
    assert plain.overdrawn_px["CGC"] > 0
    # Thicker: the emphasised contour has more pixels than the same mask drawn plainly.
    assert info.contour_px["CGC"] > plain.contour_px["CGC"]
    with pytest.raises(ValueError, match="emphasize"):
        write_overview(tmp_path / "x.png", vol, geom, masks, emphasize="nope")


def test_demo_manifest_removes_only_what_the_previous_demo_listed(tmp_path):
    from CGCLesionSegLib.commands.demo import MANIFEST, remove_previous_outputs, write_manifest
    out = tmp_path / "out"
    (out / "phantom" / "phantom").mkdir(parents=True)
    mine = [out / "segmentation.nii.gz", out / "phantom" / "phantom" / "phantom_flair.nii.gz"]
    for f in mine:
        f.write_text("x")
    users = [out / "notes.txt", out / "phantom" / "mine.nii.gz", tmp_path / "outside.nii.gz"]
    for f in users:
        f.write_text("keep")
    write_manifest(out, mine)
    # A tampered manifest naming files outside the folder or folders is ignored for those entries.
    record = json.loads((out / MANIFEST).read_text())
    record["files"] += ["../outside.nii.gz", "phantom", "/etc/hostname"]
    (out / MANIFEST).write_text(json.dumps(record))
    removed = remove_previous_outputs(out)
    assert sorted(removed) == sorted(mine)
    assert all(f.exists() for f in users)
    assert not (out / "phantom" / "phantom").exists()      # emptied, so removed
    assert (out / "phantom").is_dir()                      # still holds the user's file
    assert not (out / MANIFEST).exists()
    assert remove_previous_outputs(out) == []              # no manifest: nothing happens
