"""A whole protocol stage, end to end on phantoms: trains its fold models, scores them and names the
results after the protocol and stage (``<name>-<stage>[-<tag>]``), whatever GMM settings its models use."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

PROTOCOL = """
name = "tinyrun"
labelled = "brats"
unlabelled = "unlabelled"
folds = 2
smoothing_sigmas_mm = [1.0, 2.0]
bootstrap_resamples = 200
bootstrap_seed = 0
jobs = 1
base_train_args = ["--crop", "16", "16", "16", "--spacing", "3", "3", "3", "--patch", "1", "1", "1",
                   "--batch-size", "1", "--checkpoint-every", "1", "--workers", "0"]
[variants.paper]
args = []
[variants.rec]
args = ["--gmm-preset", "recommended"]
[stages.screen]
modalities = [["flair"]]
variants = ["paper", "rec"]
control = "paper"
seeds = [1]
steps = 2
max_minutes = 5
winner_rule = "max mean network Dice; paper unless beaten by > 0.01"
[stages.confirm]
modalities = [["flair"], ["flair", "t1"]]
variants = ["paper"]
seeds = [1]
steps = 2
max_minutes = 5
[stages.pooled]
modalities = [["flair"], ["flair", "t1"]]
variants = ["paper", "rec"]
control = "paper"
seeds = [1]
steps = 2
max_minutes = 5
winner_rule = "max mean network Dice over both sets"
"""


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    root = tmp_path_factory.mktemp("protocol")
    for group, names, seed0 in (("brats", ["a", "b", "c", "d"], 30), ("unlabelled", ["u"], 40)):
        for i, n in enumerate(names):
            ph = make_phantom(shape_xyz=(40, 40, 24), spacing_xyz=(1.5, 1.5, 1.5), seed=seed0 + i)
            save_phantom(ph, root / "data" / group, n)
    (root / "tinyrun.toml").write_text(PROTOCOL)
    return root


@pytest.mark.parametrize("tag", [None, "extra"])
def test_stage_results_are_named_after_protocol_stage_and_tag(data, monkeypatch, tag):
    """Regression: the scoring loop's per-fold sigma tag (``fold1-gmm-…`` for the recommended preset) once
    overwrote the stage's tag, so the results went to ``tinyrun-screenfold1-gmm-….json``."""
    import evaluate_cgc
    import protocol
    written = []
    monkeypatch.setattr(protocol, "write_stage", lambda results_dir, name, text, payload: written.append((name, payload)))
    argv = ["--protocol", str(data / "tinyrun.toml"), "--stage", "screen", "--data", str(data / "data"),
            "--work-dir", str(data / "work")] + (["--tag", tag] if tag else [])
    assert evaluate_cgc.main(argv) == 0
    assert [n for n, _ in written] == ["tinyrun-screen" + (f"-{tag}" if tag else "")]
    payload = written[0][1]
    # both GMM settings were scored, each with its own fold sigmas; every labelled case was held out once
    assert set(payload["summary"]) == {"flair/paper", "flair/rec"}
    keys = set(payload["sigmas"])
    assert {"flair fold 0", "flair fold 1"} <= keys and any(k.startswith("flair fold 0-gmm-") for k in keys)
    assert sorted(payload["summary"]["flair/rec"]["cases"]) == ["a", "b", "c", "d"]
    assert payload["winner"] in ("paper", "rec")
    json.dumps(payload, default=str)  # what write_stage stores


def test_one_model_set_is_trained_scored_and_written_alone_with_the_whole_stages_numbers(data, monkeypatch):
    """``--model-set``: a stage's decisions are per model set, so a finished set is scored and written as
    ``<name>-<stage>-<set>`` while the other still trains; its numbers are the whole stage's for that set.
    A set the stage lacks and a winner rule that averages over sets are refused before anything trains."""
    import evaluate_cgc
    import protocol
    written = []
    monkeypatch.setattr(protocol, "write_stage", lambda results_dir, name, text, payload: written.append((name, text, payload)))
    common = ["--protocol", str(data / "tinyrun.toml"), "--data", str(data / "data"), "--work-dir", str(data / "work")]
    assert evaluate_cgc.main(common + ["--stage", "confirm", "--model-set", "flair"]) == 0
    assert not (data / "work" / "confirm" / "flair-t1").exists()  # the other set was not trained
    (name, text, alone), = written
    assert name == "tinyrun-confirm-flair" and set(alone["summary"]) == {"flair/paper"}
    assert "Model set `flair` only" in text
    assert evaluate_cgc.main(common + ["--stage", "confirm"]) == 0  # the whole stage, both sets
    whole = written[1][2]
    assert written[1][0] == "tinyrun-confirm" and set(whole["summary"]) == {"flair/paper", "flair-t1/paper"}
    assert whole["summary"]["flair/paper"] == alone["summary"]["flair/paper"]
    with pytest.raises(SystemExit, match="model sets are flair; flair t1"):
        evaluate_cgc.main(common + ["--stage", "confirm", "--model-set", "t1"])
    with pytest.raises(SystemExit, match="winner rule averages over its model sets"):
        evaluate_cgc.main(common + ["--stage", "pooled", "--model-set", "flair"])
    assert not (data / "work" / "pooled").exists() and len(written) == 2
