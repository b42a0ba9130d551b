"""Self-describing CGC checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict (only tensors, numbers, strings, lists, dicts — nothing pickled)::

    {"format": "cgc-lesion-seg-checkpoint", "format_version": 1, "package_version": "0.1.0",
     "net_config": {...NetConfig...}, "train_config": {...} | None,
     "preprocessing": {"normalization": {...NormalizationConfig...}, "gmm": {...GMMConfig...} | None,
                       "spacing_xyz": [x, y, z] | None, ...},
     "channels": ["flair", "t1", "t1ce", "t2"], "model": state_dict,
     "optimizer": state_dict | None, "step": int, "epoch": int, "extra": {...}}

:func:`load_checkpoint` rebuilds the :class:`~CGCLesionSegLib.network.CGCNet` from the file alone.
Files that are not ours (another project's weights, a truncated or corrupt file, a pickle that would
run code) are refused with :class:`CheckpointError` and a message saying what the file is expected to be.
"""
from __future__ import annotations

import os
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .config import config_from_dict, config_to_dict
from .image_io import atomic_write
from .network import CGCNet, NetConfig

FORMAT = "cgc-lesion-seg-checkpoint"
FORMAT_VERSION = 1


class CheckpointError(ValueError):
    """A file is not a usable CGC checkpoint; the message says why and what to do."""


@dataclass
class CheckpointInfo:
    """What a checkpoint says about itself (everything but the weights)."""

    path: Path
    channels: list[str]
    net_config: NetConfig
    preprocessing: dict
    train_config: Optional[dict]
    step: int
    epoch: int
    format_version: int
    package_version: str
    extra: dict = field(default_factory=dict)


def _unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """DistributedDataParallel / compiled wrappers → the plain module (clean state-dict keys)."""
    while hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
        model = model.module
    return getattr(model, "_orig_mod", model)


def _package_version() -> str:
    try:
        from . import __version__
        return str(__version__)
    except ImportError:  # pragma: no cover
        return "unknown"


def build_checkpoint(model: torch.nn.Module, net_config: NetConfig, channels: Sequence[str],
                     preprocessing: dict, train_config: Optional[dict] = None,
                     optimizer: Optional[torch.optim.Optimizer | dict] = None, step: int = 0, epoch: int = 0,
                     extra: Optional[dict] = None) -> dict:
    """The checkpoint dict (see the module docstring); tensors are cloned to CPU."""
    channels = [str(c) for c in channels]
    if len(channels) != net_config.in_channels:
        raise ValueError(f"{len(channels)} channel name(s) {channels} for a network with "
                         f"{net_config.in_channels} input channel(s)")
    state = {k: v.detach().cpu().clone() for k, v in _unwrap(model).state_dict().items()}
    opt_state = optimizer.state_dict() if isinstance(optimizer, torch.optim.Optimizer) else optimizer
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "package_version": _package_version(),
        "net_config": config_to_dict(net_config),
        "train_config": train_config,
        "preprocessing": dict(preprocessing),
        "channels": channels,
        "model": state,
        "optimizer": opt_state,
        "step": int(step),
        "epoch": int(epoch),
        "extra": dict(extra or {}),
    }


def save_checkpoint(path: str | os.PathLike, model: torch.nn.Module, net_config: NetConfig,
                    channels: Sequence[str], preprocessing: dict, train_config: Optional[dict] = None,
                    optimizer: Optional[torch.optim.Optimizer | dict] = None, step: int = 0, epoch: int = 0,
                    extra: Optional[dict] = None) -> Path:
    """Write a checkpoint atomically (temp file in the same folder, fsync, rename).

    A run killed at any moment leaves either the previous file or the new one, never half a file.
    """
    ckpt = build_checkpoint(model, net_config, channels, preprocessing, train_config, optimizer, step, epoch, extra)
    return save_checkpoint_dict(path, ckpt)


def make_checkpoint_for_inference(model: CGCNet, path: str | os.PathLike, channels: Sequence[str],
                                  preprocessing: Optional[dict] = None) -> Path:
    """Save a bare inference checkpoint of ``model`` (its own ``config``; default preprocessing, no
    optimizer) — for benchmarks and tests that need a model file without training one."""
    from .preprocess import NormalizationConfig
    pre = {"normalization": config_to_dict(NormalizationConfig()), "gmm": None, "spacing_xyz": None}
    pre.update(preprocessing or {})
    return save_checkpoint(path, model, _unwrap(model).config, channels, pre)


def save_checkpoint_dict(path: str | os.PathLike, ckpt: dict) -> Path:
    """Atomic write of an already built checkpoint dict."""
    path = Path(path)
    with atomic_write(path, "wb", fsync=True) as fh:
        torch.save(ckpt, fh)
    return path


def read_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> dict:
    """Load and validate the raw checkpoint dict (``weights_only=True``); raise :class:`CheckpointError`."""
    path = Path(path)
    what = ("a CGC Lesion Seg model (.pt written by `cgcseg train` / `python -m CGCTraining`, "
            "e.g. RUN_DIR/last.pt)")
    if not path.exists():
        raise CheckpointError(f"model file not found: {path}; give {what}")
    if path.is_dir():
        raise CheckpointError(f"{path} is a folder; give the model file itself, e.g. {path / 'last.pt'}")
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise CheckpointError(f"{path} is not {what}: it contains Python objects that are not plain "
                              f"weights, so it is refused for safety ({str(exc).splitlines()[0][:200]})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, TypeError) as exc:
        raise CheckpointError(f"{path} is not {what}, or the file is truncated/corrupt "
                              f"({type(exc).__name__}: {str(exc).splitlines()[0][:200] if str(exc) else ''})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        kind = "a bare state dict or another project's file" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not {what}; it looks like {kind}")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}, but this version of "
                              f"CGC Lesion Seg reads up to {FORMAT_VERSION}; update the package")
    missing = [k for k in ("net_config", "channels", "model", "preprocessing", "step") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; the file is incomplete")
    return ckpt


def info_from_dict(ckpt: dict, path: str | os.PathLike = "") -> CheckpointInfo:
    try:
        net_config = config_from_dict(NetConfig, ckpt["net_config"])
    except (ValueError, TypeError) as exc:
        raise CheckpointError(f"{path}: invalid network configuration in the checkpoint ({exc})") from exc
    return CheckpointInfo(path=Path(path), channels=list(ckpt["channels"]), net_config=net_config,
                          preprocessing=dict(ckpt["preprocessing"]), train_config=ckpt.get("train_config"),
                          step=int(ckpt["step"]), epoch=int(ckpt.get("epoch", 0)),
                          format_version=int(ckpt["format_version"]),
                          package_version=str(ckpt.get("package_version", "unknown")),
                          extra=dict(ckpt.get("extra") or {}))


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CGCNet, CheckpointInfo]:
    """Rebuild the network from a checkpoint: returns ``(model in eval mode on device, info)``."""
    ckpt = read_checkpoint(path)
    info = info_from_dict(ckpt, path)
    model = CGCNet(info.net_config)
    try:
        model.load_state_dict(ckpt["model"], strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{path}: the weights do not match the network configuration stored in it "
                              f"({str(exc).splitlines()[0][:300]})") from exc
    return model.to(device).eval(), info


def describe(info: CheckpointInfo) -> dict[str, Any]:
    """Short JSON-able summary for sidecars and logs."""
    return {"path": str(info.path), "channels": info.channels, "step": info.step, "epoch": info.epoch,
            "format_version": info.format_version, "package_version": info.package_version,
            "net_config": config_to_dict(info.net_config)}
