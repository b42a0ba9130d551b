"""The shipped default models: they load, describe themselves, and still reproduce their model card."""
from __future__ import annotations

import json
import re

import pytest

from CGCLesionSegLib.checkpoint import load_checkpoint
from CGCLesionSegLib.config import config_from_dict
from CGCLesionSegLib.default_models import available_default_models, default_model_path, model_file_name
from CGCLesionSegLib.gmm import GMMConfig

MODELS = available_default_models()
EXPECTED = [("flair", "t1", "t1ce", "t2"), ("flair",)]


def test_both_default_models_are_shipped_with_cards():
    for mods in EXPECTED:
        assert mods in MODELS, f"missing default model for {mods}"
        path = MODELS[mods]
        assert path.name == model_file_name(mods)
        assert path.with_suffix(".md").exists() and path.stat().st_size < 10e6
        model, info = load_checkpoint(path)
        assert tuple(info.channels) == mods and info.net_config.in_channels == len(mods)
        assert info.preprocessing["spacing_xyz"] and info.step > 0
        config_from_dict(GMMConfig, info.preprocessing["gmm"])  # the stored GMM settings still load
    assert default_model_path(["t2", "flair", "t1ce", "t1"]) == MODELS[EXPECTED[0]]
    assert default_model_path([None]) == MODELS[("flair",)]
    with pytest.raises(ValueError, match="Shipped models expect") as err:
        default_model_path(["flair", "t2"])
    assert "The shipped flair model fits a subset of them: give only --input flair=..." in str(err.value)
    with pytest.raises(ValueError) as err:  # FLAIR + T1 + T1ce + T2 + something: the four-channel model first
        default_model_path(["flair", "t1", "t1ce", "t2", "dwi"])
    assert "The shipped flair t1 t1ce t2 model fits a subset" in str(err.value)
    with pytest.raises(ValueError) as err:  # no FLAIR: no subset to suggest
        default_model_path(["t1", "t2"])
    assert "subset" not in str(err.value)


@pytest.mark.parametrize("mods", EXPECTED, ids=lambda m: "_".join(m))
def test_shipped_model_reproduces_its_card(mods, shared_data):
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    from CGCLesionSegLib.metrics import dice
    path = MODELS[mods]
    card = path.with_suffix(".md").read_text()
    found = re.search(r"<!-- card-dice (\{.*?\}) -->", card)
    assert found, "the model card has no per-case Dice record"
    recorded = json.loads(found.group(1))
    case = sorted(recorded)[0]
    folder = shared_data / "brats" / case
    if not folder.is_dir():
        pytest.skip(f"case {case} of the card is not in {shared_data}")
    images = [read_image(folder / f"{case}_{m}.nii.gz") for m in mods]
    ref = read_image(folder / f"{case}_seg.nii.gz", dtype=None).array_zyx > 0
    res = segment_case([i.array_zyx for i in images], images[0].geometry, list(mods), path,
                       config=InferenceConfig(device="cpu"), compute_gmm=False)
    assert dice(res.mask, ref) == pytest.approx(recorded[case], abs=0.01)
    # The default output rule of `cgcseg segment` with this model (the rule it records), from its own record.
    found = re.search(r"<!-- card-dice-default (\{.*?\}) -->", card)
    assert found, "the model card has no per-case Dice record of the default output rule"
    from CGCLesionSegLib.checkpoint import default_output_rule, default_threshold
    from CGCLesionSegLib.inference import output_preset
    rule = default_output_rule(path)
    assert f"`{rule}`" in card  # the card names the rule its numbers were made with
    threshold = default_threshold(path, rule)  # what `cgcseg segment` uses when --threshold is not given
    assert f"threshold {threshold:g}" in card
    res = segment_case([i.array_zyx for i in images], images[0].geometry, list(mods), path,
                       config=InferenceConfig(device="cpu", threshold=threshold, **output_preset(rule)))
    assert dice(res.mask, ref) == pytest.approx(json.loads(found.group(1))[case], abs=0.01)
