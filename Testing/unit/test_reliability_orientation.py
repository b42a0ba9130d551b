"""Issue 12, item 9: every axis flip and permutation of a case's storage gives the same mask, voxel for
voxel, once mapped back — for checkpoints that record their orientation (new trainings) and for the
shipped models (recognised by hash); older checkpoints use the inputs as stored, as before."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from CGCLesionSegLib.checkpoint import build_checkpoint, info_from_dict, model_orientation
from CGCLesionSegLib.config import config_to_dict
from CGCLesionSegLib.gmm import GMMConfig, config_to_dict as gmm_to_dict
from CGCLesionSegLib.image_io import Geometry, to_sitk
from CGCLesionSegLib.inference import InferenceConfig, segment_case
from CGCLesionSegLib.network import CGCNet, NetConfig
from CGCLesionSegLib.orientation import Reorientation, orientation_of, reorient
from CGCLesionSegLib.phantom import make_phantom
from CGCLesionSegLib.preprocess import NormalizationConfig

TINY = dict(widths=(2, 4, 4, 8), blocks=(0, 0, 0, 1), decoder_width=2, projection_dim=4, patch_size_xyz=(2, 2, 2))
#: Flips of every axis combination and every axis permutation (with and without flips).
CODES = ["RPS", "LAI", "PLS", "SAR"]


@pytest.fixture(scope="module")
def setup():
    ph = make_phantom(shape_xyz=(32, 36, 24), spacing_xyz=(1.5, 1.6, 2.0), seed=3, oversample=1)
    torch.manual_seed(0)
    cfg = NetConfig(in_channels=1, **TINY)
    model = CGCNet(cfg).eval()
    pre = {"normalization": config_to_dict(NormalizationConfig()), "gmm": gmm_to_dict(GMMConfig()),
           "spacing_xyz": [1.5, 1.5, 1.5], "orientation": "LPS"}
    info = info_from_dict(build_checkpoint(model, cfg, ["flair"], pre), "")
    flair = ph.channels["flair"] if isinstance(ph.channels, dict) else ph.channel_list()[0]
    return ph.geometry, np.asarray(flair, np.float32), model, info


def _segment(image, geometry, model, info):
    cfg = InferenceConfig(device="cpu", gmm_weight=0.5, fill_holes="2d", keep_largest=1, opening_radius=1,
                          threshold=0.5, window_xyz=(24, 24, 16))
    return segment_case([image], geometry, ["flair"], None, None, cfg, model=model, info=info, compute_gmm=True)


def test_reorient_is_an_exact_permutation_and_round_trips(setup):
    geometry, image, _, _ = setup
    assert orientation_of(geometry) == "LPS"
    for code in CODES:
        arr, g = reorient(image, geometry, code)
        assert orientation_of(g) == code and sorted(arr.ravel().tolist()[:50]) is not None
        assert np.array_equal(np.sort(arr, axis=None), np.sort(image, axis=None))
        back = Reorientation(g, "LPS")
        assert np.array_equal(back.forward(arr), image)
        assert np.allclose(back.geometry.origin, geometry.origin) and np.allclose(back.geometry.spacing, geometry.spacing)


def test_every_flip_and_permutation_gives_the_same_mask(setup):
    geometry, image, model, info = setup
    ref = _segment(image, geometry, model, info)
    assert ref.mask.any(), "the test needs a non-empty mask"
    for code in CODES:
        arr, g = reorient(image, geometry, code)
        res = _segment(arr, g, model, info)
        mask_back = reorient(res.mask, g, "LPS")[0]
        prob_back = reorient(res.probability, g, "LPS")[0]
        assert np.array_equal(mask_back, ref.mask), f"{code}: {int((mask_back != ref.mask).sum())} voxels differ"
        assert np.allclose(prob_back, ref.probability, atol=1e-6), code


def test_old_checkpoints_use_the_inputs_as_stored(setup):
    geometry, image, model, info = setup
    old = info_from_dict({**{"net_config": config_to_dict(info.net_config), "channels": ["flair"],
                                "preprocessing": {k: v for k, v in info.preprocessing.items() if k != "orientation"},
                                "model": model.state_dict(), "step": 0, "format_version": 1}}, "")
    assert model_orientation(old) is None and not Reorientation(geometry, model_orientation(old)).active


def test_shipped_models_are_known_to_be_lps():
    from CGCLesionSegLib.checkpoint import read_checkpoint
    from CGCLesionSegLib.default_models import MODELS_DIR
    path = MODELS_DIR / "cgc_flair.pt"
    if not path.exists():
        pytest.skip("shipped model not installed")
    assert model_orientation(info_from_dict(read_checkpoint(path), path)) == "LPS"


def test_training_records_the_orientation_and_reorients_cases(tmp_path):
    from CGCLesionSegLib.image_io import write_image
    from CGCTraining.data import CaseSpec, load_cached, prepare_case
    from CGCTraining.train import preprocessing_settings
    ph = make_phantom(shape_xyz=(32, 32, 20), spacing_xyz=(1.5, 1.5, 1.5), seed=4, oversample=1)
    flair = np.asarray(ph.channel_list()[0], np.float32)
    settings = preprocessing_settings(["flair"], GMMConfig(), NormalizationConfig(), None, "LPS")
    assert settings["orientation"] == "LPS"
    arrays = []
    for code in ("LPS", "RAI", "SPL"):
        arr, g = reorient(flair, ph.geometry, code)
        path = write_image(tmp_path / code / "c_flair.nii.gz", arr, g)
        spec = CaseSpec(name=code, images={"flair": str(path)})
        prepare_case(spec, tmp_path / "cache", settings,
                     lambda ch, m: (np.clip(ch[0] / ch[0].max(), 0, 1), ch[0] > 0))
        arrays.append(np.asarray(load_cached(tmp_path / "cache", spec, settings).image))
    assert all(np.array_equal(a, arrays[0]) for a in arrays[1:])
