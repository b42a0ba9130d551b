"""Headless training of the CGC network (``python -m CGCTraining``; see docs/TRAINING.md).

Imports the Slicer-free core (:mod:`CGCLesionSegLib`), never ``slicer``. Public API:
:class:`~CGCTraining.config.TrainConfig`, :func:`~CGCTraining.train.train`,
:func:`~CGCTraining.data.discover_cases`, :func:`~CGCTraining.__main__.main`.
"""
from __future__ import annotations

__all__ = ["TrainConfig", "train", "discover_cases"]


def __getattr__(name):  # lazy: keep `import CGCTraining` (and --help) free of torch start-up cost
    if name == "TrainConfig":
        from .config import TrainConfig
        return TrainConfig
    if name == "train":
        from .train import train
        return train
    if name == "discover_cases":
        from .data import discover_cases
        return discover_cases
    raise AttributeError(name)
