"""benchmarks/stage_pairs.py: rival − control of a rule protocol's two stages, paired over cases."""
from __future__ import annotations

import json
import statistics
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

import protocol  # noqa: E402
import stage_pairs  # noqa: E402

PROTO = """
name = "tiny-rule"
bootstrap_resamples = 500
bootstrap_seed = 3
[stages.control]
variant = "old"
[stages.rival]
variant = "new"
"""


def _group(values: dict) -> dict:
    return {"per_case": {c: {"default_rec_loo_ensemble": {"dice": v}} for c, v in values.items()}}


def test_pairs_the_two_stages_per_case_with_the_protocols_bootstrap_and_writes_nothing_without_both(tmp_path, capsys):
    rng = np.random.default_rng(1)
    new = {c: float(rng.uniform(0.7, 0.9)) for c in "abcde"}
    old = {c: float(rng.uniform(0.7, 0.9)) for c in "abcdf"}  # e / f scored by one stage only: left out
    (tmp_path / "p.toml").write_text(PROTO)
    (tmp_path / "tiny-rule-rival-flair.json").write_text(json.dumps({"summary": {"flair/new": _group(new)}}))
    # the other set's rows sit in a whole-stage file: never read for flair
    (tmp_path / "tiny-rule-control.json").write_text(json.dumps({"summary": {
        "flair/old": _group(old), "flair-t1-t1ce-t2/old": _group({c: 0.0 for c in "abcd"})}}))
    assert stage_pairs.main(["--protocol", str(tmp_path / "p.toml"), "--model-set", "flair",
                             "--results-dir", str(tmp_path), "--no-write"]) == 0
    out = capsys.readouterr().out
    diffs = [new[c] - old[c] for c in "abcd"]
    lo, hi = protocol.bootstrap_ci(diffs, 500, 3)
    assert f"Difference {statistics.mean(diffs):+.4f}, CI [{lo:+.4f}, {hi:+.4f}], worst case {min(diffs):+.4f}, over 4 cases" in out
    assert f"| a | {old['a']:.4f} | {new['a']:.4f} | {new['a'] - old['a']:+.4f} |" in out and "| e |" not in out
    assert not list(tmp_path.glob("*rival-vs-control*"))
    with pytest.raises(SystemExit, match="no results of stage rival"):
        stage_pairs.main(["--protocol", str(tmp_path / "p.toml"), "--model-set", "flair", "t1", "t1ce", "t2",
                          "--results-dir", str(tmp_path), "--no-write"])
    assert stage_pairs.paired(_group({"a": 0.5}), _group({"b": 0.5})) is None
