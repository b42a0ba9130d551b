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
