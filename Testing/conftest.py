"""Shared pytest fixtures: the real data folder (../shared/data) and small helpers."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("CGC_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
BRATS = SHARED_DATA / "brats"
MODALITIES = ("flair", "t1", "t1ce", "t2")


def brats_cases() -> list[Path]:
    return sorted(d for d in BRATS.iterdir() if d.is_dir()) if BRATS.is_dir() else []


@pytest.fixture(scope="session")
def brats_case() -> Path:
    """One real BraTS case folder (the smallest download); skips when ../shared/data is absent."""
    cases = brats_cases()
    if not cases:
        pytest.skip(f"real data not found at {BRATS} (set CGC_SHARED_DATA or place ../shared/data beside the checkout)")
    return cases[0]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def save_tiny_model(path: Path, modalities=MODALITIES, gmm_config=None) -> Path:
    """An untrained small CGC network for ``modalities`` (1.5 mm, the given GMM settings): enough to
    run the whole segment path quickly in end-to-end tests."""
    import torch

    from CGCLesionSegLib.checkpoint import save_checkpoint
    from CGCLesionSegLib.config import config_to_dict
    from CGCLesionSegLib.gmm import GMMConfig, config_to_dict as gmm_to_dict
    from CGCLesionSegLib.network import CGCNet, NetConfig
    from CGCLesionSegLib.preprocess import NormalizationConfig
    torch.manual_seed(0)
    cfg = NetConfig(in_channels=len(modalities), widths=(4, 8, 8, 16), blocks=(0, 0, 1, 1), decoder_width=4,
                    projection_dim=8)
    pre = {"normalization": config_to_dict(NormalizationConfig()),
           "gmm": gmm_to_dict(gmm_config or GMMConfig()), "spacing_xyz": [1.5, 1.5, 1.5]}
    save_checkpoint(path, CGCNet(cfg), cfg, list(modalities), pre)
    return path


@pytest.fixture(scope="session")
def make_tiny_model():
    """:func:`save_tiny_model` as a fixture (test files must not import conftest: Testing/slicer has its own)."""
    return save_tiny_model


@pytest.fixture(scope="module")
def phantom_case(tmp_path_factory):
    """A small four-channel phantom case saved as files (48×48×32 at 1.5 mm, seed 3)."""
    from CGCLesionSegLib.phantom import make_phantom, save_phantom
    ph = make_phantom(shape_xyz=(48, 48, 32), spacing_xyz=(1.5, 1.5, 1.5), seed=3)
    return save_phantom(ph, tmp_path_factory.mktemp("case"), "p1")
