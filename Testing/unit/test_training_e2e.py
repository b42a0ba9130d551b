"""End to end on one real BraTS case: `python -m CGCTraining` for a few steps, then the lead's inference
reads the checkpoint. Skips when ../shared/data is absent."""
from __future__ import annotations

import json

import numpy as np
import pytest

from CGCLesionSegLib.checkpoint import load_checkpoint
from test_training_synth import run_cli

MODALITIES = ("flair", "t1", "t1ce", "t2")


def _listing(folder):
    return sorted((str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*"))


@pytest.mark.slow
def test_train_three_steps_on_a_real_case_then_segment(brats_case, tmp_path):
    cases = tmp_path / "cases"
    cases.mkdir()
    (cases / brats_case.name).symlink_to(brats_case, target_is_directory=True)
    before = _listing(brats_case)
    run = tmp_path / "run"
    r = run_cli(["--cases", cases, "--modalities", *MODALITIES, "--output-dir", run, "--steps", "3",
                 "--crop", "64", "64", "32", "--patch", "2", "2", "4", "--workers", "1", "--device", "cpu",
                 "--progress", "json"], timeout=600, threads=2)
    assert r.returncode == 0, r.stderr[-3000:]
    events = [json.loads(l) for l in r.stdout.splitlines() if l.startswith("{")]
    assert [e["step"] for e in events if e["event"] == "progress"] == [1, 2, 3]
    assert all(np.isfinite(e["loss"]) for e in events if e["event"] == "progress")
    assert _listing(brats_case) == before  # the (read-only) input data is never written to
    assert len(list((run / "cache").glob("*.prob.npy"))) == 1
    model, info = load_checkpoint(run / "last.pt")
    assert info.channels == list(MODALITIES) and info.step == 3
    assert info.preprocessing["spacing_xyz"] == [1.0, 1.0, 1.0]

    # The checkpoint is directly usable by the inference engine (the lead's `cgcseg segment --model`).
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    images = [read_image(brats_case / f"{brats_case.name}_{m}.nii.gz") for m in MODALITIES]
    res = segment_case([im.array_zyx for im in images], images[0].geometry, list(MODALITIES),
                       model_path=run / "last.pt", config=InferenceConfig(device="cpu"), compute_gmm=False)
    assert res.probability.shape == images[0].array_zyx.shape
    assert np.isfinite(res.probability).all() and 0 <= res.probability.min() <= res.probability.max() <= 1
