"""Self-describing CGC checkpoints: written atomically, read with ``torch.load(weights_only=True)``.

A checkpoint is a plain dict (only tensors, numbers, strings, lists, dicts — nothing pickled)::

    {"format": "cgc-lesion-seg-checkpoint", "format_version": 1, "package_version": "0.1.0",
     "net_config": {...NetConfig...}, "train_config": {...} | None,
     "preprocessing": {"normalization": {...NormalizationConfig...}, "gmm": {...GMMConfig...} | None,
                       "spacing_xyz": [x, y, z] | None, ...},
     "channels": ["flair", "t1", "t1ce", "t2"], "model": state_dict,
     "optimizer": state_dict | None, "step": int, "epoch": int, "extra": {...}}

A **seed ensemble** (:func:`combine_checkpoints`, ``cgcseg ensemble``) is the same dict with
``"members": [state_dict, ...]`` (the members after the first, whose weights stay in ``"model"``) and
``"format_version": 2``, so a package too old to average the members refuses the file instead of
silently using the first member alone. Single models are still written as version 1.

:func:`load_checkpoint` rebuilds the :class:`~CGCLesionSegLib.network.CGCNet` (or, for an ensemble, the
:class:`~CGCLesionSegLib.network.CGCEnsemble`) from the file alone.
Files that are not ours (another project's weights, a truncated or corrupt file, a pickle that would
run code) are refused with :class:`CheckpointError` and a message saying what the file is expected to be.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Sequence

import torch

from .config import config_from_dict, config_to_dict
from .image_io import atomic_write
from .network import CGCEnsemble, CGCNet, NetConfig

FORMAT = "cgc-lesion-seg-checkpoint"
#: The version single-model checkpoints are written with.
FORMAT_VERSION = 1
#: The version of seed-ensemble checkpoints (``"members"``), and the newest this package reads.
ENSEMBLE_FORMAT_VERSION = 2
#: Most members an ensemble file may hold (each costs one network pass per window).
MAX_MEMBERS = 16

#: Output rules a checkpoint may record as its ``default_output_rule`` (what ``--postprocess auto`` picks).
OUTPUT_RULE_NAMES = ("none", "single-lesion", "single-lesion-recommended")
#: The first shipped models (replaced 2026-12-02; users may still hold copies) predate the
#: ``default_output_rule`` field: their rule, by file content (sha256). They were trained on gliomas (one
#: contiguous lesion per scan). Later shipped files record their rule and orientation themselves.
KNOWN_MODEL_RULES = {
    "c1c5f7b854ef7e975afce329c2a0da1cc886066ff8efc56294dd3e9d339a921e": "single-lesion",  # cgc_flair.pt
    "52a426f60e16e068b9f008aea58460704ff81426c5c9e74d3b33abe7e0b2b59e": "single-lesion",  # cgc_flair_t1_t1ce_t2.pt
}
#: Those files predate the ``preprocessing.orientation`` field too; every case they were trained on
#: was stored LPS (identity direction), so that is their orientation.
KNOWN_MODEL_ORIENTATIONS = {sha: "LPS" for sha in KNOWN_MODEL_RULES}
#: Largest network a checkpoint may describe (parameters); the shipped ones have about 1 million.
MAX_PARAMETERS = 200_000_000
#: Plausible model spacings (mm): outside, resampling builds absurd grids.
SPACING_RANGE_MM = (0.05, 20.0)


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
    members: int = 1  # networks averaged at inference (a seed ensemble: >= 2)


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
                     extra: Optional[dict] = None, default_output_rule: Optional[str] = None,
                     default_threshold: Optional[float] = None) -> dict:
    """The checkpoint dict (see the module docstring); tensors are cloned to CPU.
    ``default_output_rule``: what ``--postprocess auto`` uses with this model (None: not recorded,
    which means ``none`` — the paper's output — for any model but the shipped ones).
    ``default_threshold``: the threshold of that rule when the user gives none (None: 0.5)."""
    if default_output_rule is not None and default_output_rule not in OUTPUT_RULE_NAMES:
        raise ValueError(f"default_output_rule must be one of {', '.join(OUTPUT_RULE_NAMES)}, got {default_output_rule!r}")
    if default_threshold is not None and not valid_threshold(default_threshold):
        raise ValueError(f"default_threshold must be a number in (0, 1), got {default_threshold!r}")
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
        **({"default_output_rule": default_output_rule} if default_output_rule is not None else {}),
        **({"default_threshold": float(default_threshold)} if default_threshold is not None else {}),
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
    try:
        with atomic_write(path, "wb", fsync=True) as fh:
            torch.save(ckpt, fh)
    except (OSError, RuntimeError) as exc:  # full disk / file-size limit: torch says "unexpected pos ..."
        kept = "the previous file is kept" if path.exists() else "nothing was written"
        raise CheckpointError(f"could not write the checkpoint {path} ({str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__}); "
                              f"{kept}. Check the free space (and any file-size limit) of the folder") from exc
    return path


def _plain(text: str) -> str:
    """``text`` without terminal colour codes (torch formats some load errors for a terminal)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", text)


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
        with open(path, "rb") as fh:
            magic = fh.read(4)
    except OSError as exc:
        raise CheckpointError(f"cannot read {path} ({exc.strerror or exc})") from exc
    # torch.save writes a zip archive ("PK\x03\x04"); old torch versions a pickle (protocol 2: "\x80\x02").
    if not (magic.startswith(b"PK\x03\x04") or magic.startswith(b"\x80")):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint file at all (neither the zip archive torch.save "
                              f"writes nor a pickle); give {what}")
    damaged = "; if it is one, this copy is damaged: copy or download it again"
    try:
        ckpt = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        text = _plain(str(exc))
        if "weights only" not in text.lower() and "unsupported global" not in text.lower():
            raise CheckpointError(f"{path} is not {what}, or the file is truncated/corrupt "
                                  f"({text.splitlines()[0][:200] if text else 'unreadable pickle'}){damaged}") from exc
        raise CheckpointError(f"{path} is not {what}: it contains Python objects that are not plain "
                              f"weights, so it is refused for safety ({text.splitlines()[0][:200]})") from exc
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, AttributeError, TypeError) as exc:
        text = _plain(str(exc))
        raise CheckpointError(f"{path} is not {what}, or the file is truncated/corrupt "
                              f"({type(exc).__name__}: {text.splitlines()[0][:200] if text else ''}){damaged}") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        kind = "a bare state dict or another project's file" if isinstance(ckpt, dict) else type(ckpt).__name__
        raise CheckpointError(f"{path} is not {what}; it looks like {kind}")
    version = ckpt.get("format_version")
    if not isinstance(version, int) or version > ENSEMBLE_FORMAT_VERSION:
        raise CheckpointError(f"{path} has checkpoint format version {version!r}, but this version of "
                              f"CGC Lesion Seg reads up to {ENSEMBLE_FORMAT_VERSION}; update the package")
    missing = [k for k in ("net_config", "channels", "model", "preprocessing", "step") if k not in ckpt]
    if missing:
        raise CheckpointError(f"{path} lacks {', '.join(missing)}; the file is incomplete")
    return ckpt


def _check_fields(ckpt: dict, net_config: NetConfig, path) -> None:
    """Types and ranges of the fields inference and training rely on; CheckpointError naming the field."""
    def bad(field: str, why: str) -> CheckpointError:
        return CheckpointError(f"{path}: the checkpoint's {field} is invalid ({why}); the file is damaged or was "
                               "not written by CGC Lesion Seg")

    channels = ckpt.get("channels")
    if not isinstance(channels, (list, tuple)) or not all(isinstance(c, str) and c for c in channels):
        raise bad("channels", f"a list of modality names is needed, got {channels!r:.100}")
    if len(channels) != net_config.in_channels:
        raise bad("channels", f"{len(channels)} name(s) for a network with {net_config.in_channels} input channel(s)")
    pre = ckpt.get("preprocessing")
    if not isinstance(pre, dict):
        raise bad("preprocessing", f"a dictionary is needed, got {type(pre).__name__}")
    for key in ("normalization", "gmm"):
        if pre.get(key) is not None and not isinstance(pre[key], dict):
            raise bad(f"preprocessing.{key}", f"a dictionary or null is needed, got {type(pre[key]).__name__}")
    spacing = pre.get("spacing_xyz")
    if spacing is not None:
        lo, hi = SPACING_RANGE_MM
        try:
            values = [float(v) for v in spacing]
        except (TypeError, ValueError):
            raise bad("preprocessing.spacing_xyz", f"three numbers (mm) are needed, got {spacing!r:.100}") from None
        if len(values) != 3 or not all(lo <= v <= hi for v in values):
            raise bad("preprocessing.spacing_xyz", f"three spacings between {lo} and {hi} mm are needed, got {spacing!r:.100}")
    if pre.get("orientation") is not None:
        from .orientation import check_orientation
        try:
            check_orientation(pre["orientation"])
        except ValueError as exc:
            raise bad("preprocessing.orientation", str(exc)) from None
    if pre.get("brain_mask") not in (None, "nonzero", "ct_window"):
        raise bad("preprocessing.brain_mask", f"'nonzero' or 'ct_window' is needed, got {pre.get('brain_mask')!r:.60}")
    for key in ("step", "epoch"):
        if key in ckpt and (isinstance(ckpt[key], bool) or not isinstance(ckpt[key], int) or ckpt[key] < 0):
            raise bad(key, f"a whole number >= 0 is needed, got {ckpt[key]!r:.60}")
    rule = ckpt.get("default_output_rule")
    if rule is not None and rule not in OUTPUT_RULE_NAMES:
        raise bad("default_output_rule", f"one of {', '.join(OUTPUT_RULE_NAMES)} is needed, got {rule!r:.60}")
    if "default_threshold" in ckpt and not valid_threshold(ckpt["default_threshold"]):
        raise bad("default_threshold", f"a number in (0, 1) is needed, got {ckpt['default_threshold']!r:.60}")
    if not isinstance(ckpt.get("model"), dict):
        raise bad("model", f"a state dict is needed, got {type(ckpt.get('model')).__name__}")
    if "members" in ckpt:
        members = ckpt["members"]
        if not isinstance(members, list) or not members or not all(isinstance(m, dict) for m in members):
            raise bad("members", "a non-empty list of state dicts is needed")
        if len(members) + 1 > MAX_MEMBERS:
            raise bad("members", f"{len(members) + 1} networks, more than the {MAX_MEMBERS} an ensemble may hold")
        if ckpt.get("format_version") != ENSEMBLE_FORMAT_VERSION:
            raise bad("format_version", f"an ensemble is version {ENSEMBLE_FORMAT_VERSION}, got {ckpt.get('format_version')!r}")


def check_state_dict(state: dict, net_config: NetConfig, path, what: str = "weights") -> None:
    """The weights must be exactly those of ``net_config``'s network (names and shapes, checked on the
    meta device, so nothing is allocated for a configuration that would not fit) and finite."""
    with torch.device("meta"):
        reference = CGCNet(net_config)
    n_params = sum(p.numel() for p in reference.parameters())
    if n_params > MAX_PARAMETERS:
        raise CheckpointError(f"{path}: its network configuration has {n_params:,} parameters, more than the "
                              f"{MAX_PARAMETERS:,} this package accepts; the file is damaged or not a CGC model")
    expected = {k: tuple(v.shape) for k, v in reference.state_dict().items()}
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: its {what} are not a dictionary of tensors")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})" for k in expected
             if k in state and tuple(state[k].shape) != expected[k]]
    if missing or unexpected or wrong:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(unexpected[:3])}{' ...' if len(unexpected) > 3 else ''}"] if unexpected else []) + \
                ([f"shape of {', '.join(wrong[:3])}{' ...' if len(wrong) > 3 else ''}"] if wrong else [])
        raise CheckpointError(f"{path}: the {what} do not match the network configuration stored in it "
                              f"({'; '.join(parts)}); the file is damaged or was edited")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        raise CheckpointError(f"{path}: {len(bad)} weight tensor(s) hold NaN or inf values ({', '.join(bad[:3])}"
                              f"{' ...' if len(bad) > 3 else ''}); the model is unusable — use an earlier checkpoint "
                              "or retrain (e.g. with a lower --lr)")


def default_output_rule(path: str | os.PathLike, ckpt: Optional[dict] = None) -> str:
    """The output rule ``--postprocess auto`` uses with the model in ``path``, decided from the file's
    content, never from where it lies: the checkpoint's ``default_output_rule`` field, else the
    shipped models' rule by their sha256 (they predate the field), else ``none`` (the paper's output)."""
    if ckpt is None:
        ckpt = read_checkpoint(path)
    rule = ckpt.get("default_output_rule")
    if rule in OUTPUT_RULE_NAMES:
        return rule
    return KNOWN_MODEL_RULES.get(_sha256(path), "none")


def valid_threshold(value) -> bool:
    """A usable recorded threshold: a real number strictly between 0 and 1 (not a bool, not NaN)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0.0 < float(value) < 1.0


def default_threshold(path: str | os.PathLike, rule: str, ckpt: Optional[dict] = None) -> float:
    """The threshold used with the model in ``path`` and output rule ``rule`` when the user gives none:
    the checkpoint's ``default_threshold`` if ``rule`` is the model's own default output rule (the one
    that threshold was chosen for: both shipped models record 0.35, chosen leave one case out by cgc-v29's
    procedure on their recipe's held-out fold ensembles, cgc-v43's models read in cgc-v44), else 0.5 — any other
    rule, a model without the field, the paper's output."""
    if ckpt is None:
        ckpt = read_checkpoint(path)
    recorded = ckpt.get("default_threshold")
    if recorded is None or rule != default_output_rule(path, ckpt):
        return 0.5
    return float(recorded)


def _sha256(path) -> str:
    import hashlib
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def model_orientation(info: "CheckpointInfo") -> Optional[str]:
    """The voxel orientation a model was trained in: ``preprocessing.orientation`` (new checkpoints), the
    shipped models' by their sha256, else None (older checkpoints: inputs are used as stored)."""
    code = (info.preprocessing or {}).get("orientation")
    if code:
        return str(code)
    path = Path(str(getattr(info, "path", "") or ""))
    if str(path) not in ("", ".") and path.is_file():
        return KNOWN_MODEL_ORIENTATIONS.get(_sha256(path))
    return None


def info_from_dict(ckpt: dict, path: str | os.PathLike = "") -> CheckpointInfo:
    try:
        net_config = config_from_dict(NetConfig, ckpt["net_config"])
    except (ValueError, TypeError, KeyError, AttributeError) as exc:
        raise CheckpointError(f"{path}: invalid network configuration in the checkpoint ({exc})") from exc
    _check_fields(ckpt, net_config, path)
    return CheckpointInfo(path=Path(path), channels=list(ckpt["channels"]), net_config=net_config,
                          preprocessing=dict(ckpt["preprocessing"]), train_config=ckpt.get("train_config"),
                          step=int(ckpt["step"]), epoch=int(ckpt.get("epoch", 0)),
                          format_version=int(ckpt["format_version"]),
                          package_version=str(ckpt.get("package_version", "unknown")),
                          extra=dict(ckpt.get("extra") or {}), members=len(network_states(ckpt)))


def network_states(ckpt: dict) -> list[dict]:
    """The state dicts of every network a checkpoint holds: ``[model]``, or an ensemble's ``[model, *members]``."""
    return [ckpt["model"]] + list(ckpt.get("members") or [])


def check_network_states(ckpt: dict, net_config: NetConfig, path) -> list[dict]:
    """:func:`check_state_dict` on every network of ``ckpt`` (an ensemble's named by member); returns them."""
    states = network_states(ckpt)
    for i, state in enumerate(states):
        check_state_dict(state, net_config, path, "weights" if len(states) == 1 else f"weights of ensemble member {i + 1}")
    return states


def load_checkpoint(path: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[CGCNet | CGCEnsemble, CheckpointInfo]:
    """Rebuild the network from a checkpoint: returns ``(model in eval mode on device, info)``; for a seed
    ensemble the model is a :class:`CGCEnsemble` (``info.members`` >= 2)."""
    ckpt = read_checkpoint(path)
    info = info_from_dict(ckpt, path)
    nets = []
    for state in check_network_states(ckpt, info.net_config, path):
        net = CGCNet(info.net_config)
        try:
            net.load_state_dict(state, strict=True)
        except RuntimeError as exc:
            raise CheckpointError(f"{path}: the weights do not match the network configuration stored in it "
                                  f"({str(exc).splitlines()[0][:300]})") from exc
        nets.append(net)
    model = nets[0] if len(nets) == 1 else CGCEnsemble(nets)
    return model.to(device).eval(), info


#: What every member of an ensemble must share: the fields that decide how a case is prepared, tiled and
#: post-processed (a member trained otherwise would be averaged over inputs it never saw).
SHARED_FIELDS = ("net_config", "channels", "preprocessing", "default_output_rule", "default_threshold")


def combine_checkpoints(paths: Sequence[str | os.PathLike]) -> dict:
    """A seed-ensemble checkpoint dict of the models in ``paths`` (each a checkpoint file; an ensemble counts
    as its members). They must share :data:`SHARED_FIELDS` and the training crop (the inference window);
    otherwise :class:`CheckpointError` names the field and the files. The first file's fields are kept
    (``train_config`` included); the optimizer state is dropped; ``extra["ensemble"]`` lists each source
    file's name, sha256, step and training seed."""
    if len(paths) < 2:
        raise CheckpointError(f"an ensemble needs at least 2 model files, got {len(paths)}")
    ckpts = [read_checkpoint(p) for p in paths]
    for p, c in zip(paths, ckpts):
        check_network_states(c, info_from_dict(c, p).net_config, p)
    crop = lambda c: (c.get("train_config") or {}).get("crop_xyz")
    first = ckpts[0]
    for p, c in zip(paths[1:], ckpts[1:]):
        for key in SHARED_FIELDS:
            if _json_form(c.get(key)) != _json_form(first.get(key)):
                raise CheckpointError(f"{p} and {paths[0]} differ in {key}; an ensemble averages models trained the "
                                      "same way (same recipe, other seeds): retrain the odd one out with the others' "
                                      "settings")
        if _json_form(crop(c)) != _json_form(crop(first)):
            raise CheckpointError(f"{p} and {paths[0]} were trained on different crops ({crop(c)} vs {crop(first)}), "
                                  "so they would be tiled with different windows; retrain with the same --crop")
    states, sources = [], []
    for p, c in zip(paths, ckpts):
        states += network_states(c)
        sources.append({"file": Path(p).name, "sha256": _sha256(p), "step": int(c["step"]),
                        "seed": (c.get("train_config") or {}).get("seed"), "networks": len(network_states(c))})
    if len(states) > MAX_MEMBERS:
        raise CheckpointError(f"{len(states)} networks, more than the {MAX_MEMBERS} an ensemble may hold")
    out = {k: v for k, v in first.items() if k not in ("members", "train_model")}
    out.update(format_version=ENSEMBLE_FORMAT_VERSION, package_version=_package_version(), model=states[0],
               members=states[1:], optimizer=None, extra={**dict(first.get("extra") or {}), "ensemble": sources})
    return out


def first_member(ckpt: dict) -> dict:
    """A single-model checkpoint dict of an ensemble's first network (what fine-tuning starts from); a
    single model's dict is returned unchanged."""
    if not ckpt.get("members"):
        return ckpt
    out = {k: v for k, v in ckpt.items() if k != "members"}
    out["format_version"] = FORMAT_VERSION
    return out


def _json_form(value):
    """``value`` as JSON would store it (tuples → lists), for comparing checkpoint fields."""
    import json
    return json.loads(json.dumps(value, sort_keys=True, default=str))


def describe(info: CheckpointInfo) -> dict[str, Any]:
    """Short JSON-able summary for sidecars and logs."""
    return {"path": str(info.path), "channels": info.channels, "step": info.step, "epoch": info.epoch,
            "format_version": info.format_version, "package_version": info.package_version,
            "net_config": config_to_dict(info.net_config), **({"members": info.members} if info.members > 1 else {})}
