"""The training loop: cache preparation, Adam on eq. 8, checkpoints, resume, DDP, progress and logs.

Reproducibility: the network is initialised from ``seed``; every crop is a pure function of
``(seed, epoch, slot, case)`` (see :mod:`CGCTraining.data`); the checkpoint holds the weights and the
Adam state. On CPU (float32, same thread count) a run resumed from ``last.pt`` therefore produces
the very same parameters, step for step, as a run that was never interrupted.
"""
from __future__ import annotations

import csv
import json
import math
import os
import signal
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from CGCLesionSegLib.checkpoint import build_checkpoint, read_checkpoint, save_checkpoint_dict
from CGCLesionSegLib.config import config_to_dict
from CGCLesionSegLib.image_io import atomic_write
from CGCLesionSegLib.inference import bf16_autocast_ok, resolve_device
from CGCLesionSegLib.losses import cgc_loss
from CGCLesionSegLib.network import CGCNet, NetConfig
from CGCLesionSegLib.preprocess import NormalizationConfig, default_brain_mask
from CGCLesionSegLib.progress import ProgressReporter, emit_json

from . import distributed as dd
from .config import TrainConfig, auto_workers, shared_memory_bytes, train_config_to_dict
from .data import CaseSpec, CropDataset, StepBatchSampler, load_cached, prepare_case, steps_per_epoch

LAST = "last.pt"
LOG = "loss_log.csv"
LOG_COLUMNS = ("step", "epoch", "total", "bce", "cg", "fg", "lesion_patches", "lr", "seconds")
#: Settings that may change between a run and its --resume (they do not alter the optimisation path).
RESUMABLE_CHANGES = ("epochs", "steps", "max_minutes", "workers", "checkpoint_every")


@dataclass
class TrainResult:
    checkpoint: Path
    step: int
    total_steps: int
    stopped_early: bool
    last_loss: Optional[float]
    elapsed_s: float
    #: The signal (SIGTERM/SIGINT number) that stopped the run after a clean checkpoint; None otherwise.
    #: A run stopped by a signal is not complete: the command line exits 128 + signal.
    signal: Optional[int] = None
    #: :func:`CGCTraining.sanity.lesion_check` of the saved model (None when the run was stopped by a signal).
    lesion_check: Optional[dict] = None


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """:func:`~CGCLesionSegLib.inference.resolve_device` (auto/cpu/cuda, the same errors as inference),
    then this process's own GPU under torchrun (``local_rank`` modulo the GPUs present)."""
    dev = resolve_device(name)
    if dev.type == "cuda":
        index = local_rank % torch.cuda.device_count()
        torch.cuda.set_device(index)
        return torch.device("cuda", index)
    return dev


def read_spacing_xyz(path: str, orientation: Optional[str] = None) -> tuple[float, float, float]:
    """Spacing of an image from its header only (cheap); with ``orientation``, in the axis order of the
    image reoriented to it (see :mod:`CGCLesionSegLib.orientation`)."""
    import SimpleITK as sitk
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    spacing = tuple(float(s) for s in reader.GetSpacing())
    if orientation:
        from CGCLesionSegLib.orientation import orientation_of, reorient
        from CGCLesionSegLib.image_io import Geometry
        geom = Geometry((1, 1, 1), spacing, tuple(reader.GetOrigin()), tuple(reader.GetDirection()))
        if orientation_of(geom) != orientation:
            spacing = tuple(reorient(np.zeros((1, 1, 1), np.uint8), geom, orientation)[1].spacing)
    return spacing  # type: ignore[return-value]


def preprocessing_settings(modalities: Sequence[str], gmm_config, normalization: NormalizationConfig,
                           spacing_xyz: Optional[Sequence[float]], orientation: Optional[str] = None,
                           target_sigma_mm: float = 0.0) -> dict:
    """What inference must reproduce; also the cache key of every prepared case. ``orientation``: the
    voxel order every case is reoriented to before P and the crops (recorded so inference does the same).
    ``target_sigma_mm`` > 0: the training target is P smoothed with this Gaussian on the training grid
    (recorded only when set, so runs and caches from before the option resume unchanged; inference
    ignores it — it shapes what the network learns, not what it is fed)."""
    from CGCLesionSegLib.gmm import config_to_dict as gmm_to_dict
    out = {"modalities": list(modalities), "normalization": config_to_dict(normalization),
           "gmm": gmm_to_dict(gmm_config) if gmm_config is not None else None,
           "spacing_xyz": list(spacing_xyz) if spacing_xyz is not None else None,
           "brain_mask": "ct_window" if getattr(gmm_config, "modality", "mri") == "ct" else "nonzero"}
    if orientation:
        out["orientation"] = orientation
    if target_sigma_mm:
        out["target_sigma_mm"] = float(target_sigma_mm)
    return out


def _gmm_prob_fn(gmm_config, modalities: Sequence[str]) -> Callable:
    def compute(channels, mask):
        from CGCLesionSegLib.gmm import compute_probability_map
        if mask is None and gmm_config.modality != "ct":
            mask = default_brain_mask(channels)  # the same mask inference normalises with
        res = compute_probability_map(channels, mask, gmm_config, names=list(modalities))
        return res.probability, res.mask
    return compute


def _json_roundtrip(d):
    return json.loads(json.dumps(d))


#: The 1×1 convolutions that turn features into the lesion logit and the coarse logit.
OUTPUT_LAYERS = ("head", "coarse_head")


def param_groups(model: torch.nn.Module, head_lr_scale: float, lr: float) -> list[dict]:
    """Adam parameter groups: :data:`OUTPUT_LAYERS` get ``lr × head_lr_scale``, the rest ``lr``; each group
    carries its ``lr_scale`` so the schedule keeps the ratio. One group when the scale is 1 (as before,
    so older runs' optimizer states load unchanged)."""
    if float(head_lr_scale) == 1.0:
        return [{"params": list(model.parameters()), "lr": lr, "lr_scale": 1.0}]
    heads = [p for name in OUTPUT_LAYERS if getattr(model, name, None) is not None
             for p in getattr(model, name).parameters()]
    ids = {id(p) for p in heads}
    rest = [p for p in model.parameters() if id(p) not in ids]
    return [{"params": rest, "lr": lr, "lr_scale": 1.0},
            {"params": heads, "lr": lr * float(head_lr_scale), "lr_scale": float(head_lr_scale)}]


def _check_resume_compatible(ckpt: dict, net_config: NetConfig, train_cfg: TrainConfig, channels: list,
                             preprocessing: dict, path: Path) -> None:
    problems = []
    if _json_roundtrip(ckpt["net_config"]) != _json_roundtrip(config_to_dict(net_config)):
        problems.append("network configuration")
    if list(ckpt["channels"]) != list(channels):
        problems.append(f"modalities ({ckpt['channels']} vs {channels})")
    if _json_roundtrip(ckpt["preprocessing"]) != _json_roundtrip(preprocessing):
        problems.append("preprocessing/GMM settings or spacing")
    # Settings added after a checkpoint was written count as their defaults (the run used them).
    old = {**train_config_to_dict(TrainConfig()), **dict(ckpt.get("train_config") or {})}
    new = train_config_to_dict(train_cfg)
    for k in RESUMABLE_CHANGES:
        old.pop(k, None)
        new.pop(k, None)
    if _json_roundtrip(old) != _json_roundtrip(new):
        diff = sorted(k for k in set(old) | set(new) if _json_roundtrip(old.get(k)) != _json_roundtrip(new.get(k)))
        problems.append(f"training settings {diff}")
    if problems:
        raise ValueError(f"--resume: {path} was trained with different {'; '.join(problems)}. Resume with the "
                         f"same arguments (only {', '.join('--' + k.replace('_', '-') for k in RESUMABLE_CHANGES)} "
                         f"may change), or start a new run in another --output-dir")


def _init_from(model: torch.nn.Module, path: Path, net_config: NetConfig, channels: list, dev: torch.device) -> None:
    """Start from another run's weights (fine-tuning, e.g. ``cgcseg segment --adapt``): same architecture
    and modalities required; the optimizer and the step count start fresh. A seed ensemble (``cgcseg
    ensemble``, e.g. either shipped model) starts from its first network: training continues one."""
    _load_weights(model, _read_init_checkpoint(path, net_config, channels, dev), net_config, path)


def check_init_checkpoint(path: str | os.PathLike, net_config: NetConfig, channels: list) -> None:
    """ValueError (or FileNotFoundError) unless ``--init-from path`` can start this run; the command line
    calls it before it makes the run folder, so a refused checkpoint leaves nothing behind."""
    _read_init_checkpoint(Path(path), net_config, channels, torch.device("cpu"), announce=False)


def _read_init_checkpoint(path: Path, net_config: NetConfig, channels: list, dev: torch.device,
                          announce: bool = True) -> dict:
    """The checkpoint ``--init-from`` starts from (an ensemble's first network), checked against this run:
    ValueError naming what differs (the modalities first: they also change the network's input layer)."""
    from CGCLesionSegLib.checkpoint import first_member, network_states
    ckpt = read_checkpoint(path, map_location=dev)
    if ckpt.get("members") and announce:
        print(f"{path} is a seed ensemble of {len(network_states(ckpt))} networks; fine-tuning starts from its first "
              "network (the result is one network)", file=sys.stderr)
    if ckpt.get("members"):
        ckpt = first_member(ckpt)
    theirs, ours = _json_roundtrip(ckpt["net_config"]), _json_roundtrip(config_to_dict(net_config))
    # in_channels follows the modalities: named through them below, not as a bare number.
    other = sorted(k for k in set(theirs) | set(ours) if k != "in_channels" and theirs.get(k) != ours.get(k))
    arch = "; ".join(f"{k} {_words(theirs.get(k))} there, {_words(ours.get(k))} here" for k in other)
    if list(ckpt["channels"]) != list(channels):
        what = "; ".join(["input channels"] + ([arch] if arch else []))
        same = " and the same network options (e.g. its --recipe)" if other else ""
        raise ValueError(f"{path} was trained on {' '.join(ckpt['channels'])}, this run uses {' '.join(channels)}, so "
                         f"its network configuration differs from this run's ({what}); give --modalities "
                         f"{' '.join(ckpt['channels'])} (and those images in --cases){same}, or --init-from a "
                         f"checkpoint trained on {' '.join(channels)}")
    if theirs != ours:
        raise ValueError(f"{path}: its network configuration differs from this run's ({arch}); fine-tuning needs "
                         "the same architecture: give the same network options (e.g. its --recipe), or another checkpoint")
    return ckpt


def _words(value) -> str:
    """A config value as it is written on the command line (lists as space-separated words)."""
    return " ".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


def _load_weights(model: torch.nn.Module, ckpt: dict, net_config: NetConfig, path: Path, optimizer=None) -> None:
    """Weights (and optimizer state) of a checkpoint into this run's network: names, shapes and finite
    values are checked first, so a damaged or edited file is one clear error, not a traceback."""
    from CGCLesionSegLib.checkpoint import check_state_dict, network_states
    if ckpt.get("members"):
        files = ", ".join(str(m.get("file")) for m in (ckpt.get("extra") or {}).get("ensemble", []) if isinstance(m, dict))
        raise ValueError(f"{path} is a seed ensemble of {len(network_states(ckpt))} networks (`cgcseg ensemble`); training "
                         f"continues one network: start from one member's own file{' (' + files + ')' if files else ''}")
    check_state_dict(ckpt["model"], net_config, path)
    model.load_state_dict(ckpt["model"])
    if optimizer is not None and ckpt.get("optimizer"):
        try:
            optimizer.load_state_dict(ckpt["optimizer"])
        except (ValueError, KeyError, TypeError, RuntimeError) as exc:
            raise ValueError(f"{path}: its optimizer state does not fit this run's network ({str(exc)[:160]}); "
                             "the file is damaged, or start a new run in another --output-dir") from exc


def _take_run_lock(out: Path, info: dd.DistInfo, dev: torch.device):
    """Rank 0 takes ``RUN_DIR/run.lock`` (see :mod:`CGCTraining.run_lock`); every rank learns whether it
    did, so a refused run stops on all ranks at once. Returns the lock (rank 0) or None."""
    from .run_lock import RunLockError, acquire_run_lock
    lock, error = None, None
    if info.is_main:
        try:
            out.mkdir(parents=True, exist_ok=True)
            lock = acquire_run_lock(out)
        except RunLockError as exc:
            error = exc
    if dd.any_rank(error is not None, info, dev):
        raise error or RunLockError(f"{out} is in use by another training (see rank 0's message)")
    return lock


@torch.no_grad()
def _ema_update(ema_state: dict, model: torch.nn.Module, decay: float, step: int) -> None:
    """``ema ← d·ema + (1 − d)·weights`` with ``d = min(decay, (1 + step) / (10 + step))`` (a short
    average early on, so the random initialisation fades quickly). Integer buffers are copied."""
    d = min(float(decay), (1.0 + step) / (10.0 + step))
    for k, v in model.state_dict().items():
        e = ema_state[k]
        if e.dtype.is_floating_point:
            e.mul_(d).add_(v.detach(), alpha=1.0 - d)
        else:
            e.copy_(v)


class LossLog:
    """CSV of every loss term per step; on resume, rows after the checkpoint's step are dropped
    (they belong to the interrupted part that is about to be redone)."""

    def __init__(self, path: Path, resume_step: Optional[int]) -> None:
        self.path = path
        rows = []
        if resume_step is not None and path.exists():
            with open(path, newline="") as fh:
                rows = [r for r in csv.DictReader(fh) if r.get("step", "").isdigit() and int(r["step"]) <= resume_step]
        with atomic_write(path, newline="") as fh:
            w = csv.DictWriter(fh, fieldnames=LOG_COLUMNS)
            w.writeheader()
            for r in rows:
                w.writerow({k: r.get(k, "") for k in LOG_COLUMNS})
        self._fh = open(path, "a", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=LOG_COLUMNS)

    def write(self, row: dict) -> None:
        self._writer.writerow(row)
        self._fh.flush()

    def close(self) -> None:
        self._fh.close()


def prepare_cases(cases: Sequence[CaseSpec], cache_dir: Path, settings: dict, gmm_config,
                  info: dd.DistInfo, reporter: Optional[ProgressReporter], json_mode: bool):
    """Every rank prepares its share (case i on rank i mod world), then all load all (cache hits)."""
    prob_fn = _gmm_prob_fn(gmm_config, settings["modalities"])
    n = len(cases)
    for i, spec in enumerate(cases):
        if i % info.world_size != info.rank:
            continue
        if info.is_main:
            msg = f"preparing case {i + 1}/{n}: {spec.name}"
            if json_mode:
                emit_json("prepare", index=i + 1, total=n, case=spec.name, message=msg)
            elif reporter is not None:
                reporter.update(0.0, msg)
        t = time.perf_counter()
        try:
            prepare_case(spec, cache_dir, settings, prob_fn)
        except ValueError as exc:  # bad images, empty mask, constant channel ...: say which case
            if spec.name in str(exc):
                raise
            raise ValueError(f"case {spec.name}: {exc}") from exc
        if info.is_main and json_mode:
            emit_json("prepared", index=i + 1, total=n, case=spec.name, seconds=round(time.perf_counter() - t, 2))
    dd.barrier(info)
    out = []
    for spec in cases:
        c = load_cached(cache_dir, spec, settings)
        if c is None:
            raise RuntimeError(f"cache entry of {spec.name} missing after preparation in {cache_dir}")
        out.append(c)
    return out


def train(cases: Sequence[CaseSpec], train_cfg: TrainConfig, net_config: NetConfig, output_dir: str | os.PathLike,
          *, gmm_config=None, normalization: NormalizationConfig = NormalizationConfig(),
          spacing_xyz: Optional[Sequence[float]] = None, resume: bool = False, device: str = "auto",
          progress: str = "bar", record_samples: bool = False,
          should_stop: Optional[Callable[[], bool]] = None,
          init_checkpoint: Optional[str | os.PathLike] = None,
          progress_stage: Optional[tuple[int, int]] = None, overgrowth_ratio: Optional[float] = None,
          resume_hint: bool = True) -> TrainResult:
    """Train the CGC network on ``cases``; writes ``RUN_DIR/last.pt``, ``loss_log.csv``, ``run.json``
    and the cache ``RUN_DIR/cache``. See docs/TRAINING.md.

    ``progress_stage=(k, n)``: this training is round ``k`` (0-based) of ``n`` (``--self-train-rounds``):
    the reported fraction is ``(k + step / total) / n`` and messages start with ``round k+1/n``, so a
    progress bar fed by ``--progress json`` runs once over all rounds. ``overgrowth_ratio``: the bound of the
    lesion check's ``overgrown`` flag (None: :data:`CGCTraining.sanity.OVERGROWTH_RATIO`). ``resume_hint``
    False: a stop's message does not offer ``--resume`` (a caller whose run folder is temporary, e.g. ``--adapt``)."""
    t_start = time.monotonic()
    info = dd.from_env()
    dev = pick_device(device, info.local_rank)
    dd.init(info, dev)
    lock = None
    finished = False
    try:
        # One training per run folder: a second one is refused at once; a lock whose process is gone
        # (kill -9) is free again, so --resume after a crash works.
        lock = _take_run_lock(Path(output_dir), info, dev)
        result = _train(cases, train_cfg, net_config, Path(output_dir), gmm_config, normalization, spacing_xyz,
                        resume, dev, progress, record_samples, should_stop, info, t_start, init_checkpoint,
                        progress_stage, overgrowth_ratio, resume_hint)
        finished = True  # every rank is past _train's final barrier
        return result
    finally:
        if lock is not None:
            lock.release()
        dd.cleanup(info, orderly=finished)


def _train(cases, train_cfg: TrainConfig, net_config: NetConfig, out: Path, gmm_config, normalization,
           spacing_xyz, resume: bool, dev: torch.device, progress: str, record_samples: bool, should_stop,
           info: dd.DistInfo, t_start: float, init_checkpoint=None,
           progress_stage: Optional[tuple[int, int]] = None, overgrowth_ratio: Optional[float] = None,
           resume_hint: bool = True) -> TrainResult:
    if net_config.in_channels != len(train_cfg.modalities):
        raise ValueError(f"the network has {net_config.in_channels} input channel(s) but {len(train_cfg.modalities)} "
                         f"modalities were given ({' '.join(train_cfg.modalities)})")
    if not net_config.coarse and train_cfg.loss.patch_label_source == "coarse" and net_config.fine:
        raise ValueError("patch labels from the coarse map need the coarse path; use --patch-labels prob or switch "
                         "the coarse path on")
    if gmm_config is None:
        from CGCLesionSegLib.gmm import GMMConfig
        gmm_config = GMMConfig(channels=(0,))
    last = out / LAST
    if resume and not last.exists():
        raise ValueError(f"--resume: no {LAST} in {out}; start without --resume")
    if not resume and last.exists():
        raise ValueError(f"{out} already holds a run ({LAST}); continue it with --resume or choose another --output-dir")
    out.mkdir(parents=True, exist_ok=True)
    from CGCLesionSegLib.orientation import DEFAULT_ORIENTATION
    orientation = DEFAULT_ORIENTATION
    if resume and "orientation" not in (read_checkpoint(last).get("preprocessing") or {}):
        orientation = None  # a run begun before orientations were recorded goes on as it began
    if spacing_xyz is None:
        spacing_xyz = read_spacing_xyz(next(iter(cases[0].images.values())), orientation)
    channels = list(train_cfg.modalities)
    settings = preprocessing_settings(channels, gmm_config, normalization, spacing_xyz, orientation,
                                      train_cfg.target_sigma_mm)
    # Checked before the P maps are computed (minutes on a cohort), so a wrong file fails at once.
    init_ckpt = (_read_init_checkpoint(Path(init_checkpoint), net_config, channels, dev)
                 if init_checkpoint is not None and not resume else None)
    json_mode = progress == "json"
    reporter = ProgressReporter(progress if info.is_main else "none", description="training")
    try:
        cached = prepare_cases(cases, out / "cache", settings, gmm_config, info, reporter, json_mode)

        torch.manual_seed(train_cfg.seed)
        np.random.seed(train_cfg.seed)
        model = CGCNet(net_config).to(dev)
        optimizer = torch.optim.Adam(param_groups(model, train_cfg.head_lr_scale, train_cfg.lr))
        start_step = 0
        if init_ckpt is not None:
            _load_weights(model, init_ckpt, net_config, Path(init_checkpoint))
            del init_ckpt
        ema_state = ({k: v.detach().clone() for k, v in model.state_dict().items()}
                     if train_cfg.ema > 0 else None)
        if resume:
            ckpt = read_checkpoint(last, map_location=dev)
            _check_resume_compatible(ckpt, net_config, train_cfg, channels, settings, last)
            # With EMA on, "model" holds the averaged weights and "train_model" the raw ones.
            from CGCLesionSegLib.checkpoint import check_state_dict
            if ckpt.get("train_model") is not None:
                check_state_dict(ckpt["train_model"], net_config, last, "raw (non-averaged) weights")
            _load_weights(model, {"model": ckpt["model"]}, net_config, last)  # checked, and loaded if no raw ones
            model.load_state_dict(ckpt.get("train_model") or ckpt["model"])
            if train_cfg.ema > 0:
                ema_state = {k: v.detach().to(dev).clone() for k, v in ckpt["model"].items()}
            if ckpt.get("optimizer"):
                try:
                    optimizer.load_state_dict(ckpt["optimizer"])
                except (ValueError, KeyError, TypeError, RuntimeError) as exc:
                    raise ValueError(f"--resume: the optimizer state in {last} does not fit this run's network "
                                     f"({str(exc)[:160]}); the file is damaged — start a new run in another "
                                     "--output-dir") from exc
            start_step = int(ckpt["step"])
            del ckpt

        spe = steps_per_epoch(len(cached), train_cfg.batch_size, info.world_size)
        total = int(train_cfg.steps) if train_cfg.steps is not None else int(train_cfg.epochs) * spe
        sampler = StepBatchSampler(len(cached), train_cfg.batch_size, train_cfg.seed, total, start_step,
                                   info.rank, info.world_size)
        dataset = CropDataset(cached, train_cfg.crop_zyx, train_cfg.seed, train_cfg.lesion_crop_fraction,
                              train_cfg.flip, train_cfg.intensity_jitter, train_cfg.augment)
        # A batch as the workers hand it over: the image channels and P, float32.
        batch_bytes = train_cfg.batch_size * (len(train_cfg.modalities) + 1) * math.prod(train_cfg.crop_zyx) * 4
        workers = train_cfg.workers if train_cfg.workers is not None else auto_workers(
            dev.type, int(os.environ.get("LOCAL_WORLD_SIZE", "1")), batch_bytes=batch_bytes,
            shm_bytes=shared_memory_bytes())
        loader = torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=workers,
                                             pin_memory=dev.type == "cuda")
        net = model
        if info.enabled:
            unused = (net_config.fine and train_cfg.loss.lambda_fg == 0) or (
                net_config.coarse and net_config.fusion == "none" and train_cfg.loss.lambda_cg == 0)
            net = torch.nn.parallel.DistributedDataParallel(
                model, device_ids=[dev.index] if dev.type == "cuda" else None, find_unused_parameters=unused)
        use_amp = train_cfg.amp and bf16_autocast_ok(dev)  # float32 on GPUs without bf16 hardware
        if dev.type == "cuda":
            torch.backends.cudnn.benchmark = True  # fixed crop size: let cuDNN pick the fastest kernels
        patch_zyx = net_config.patch_size_zyx
        tcfg_dict = train_config_to_dict(train_cfg)
        run_meta = {"init_checkpoint": str(init_checkpoint) if init_checkpoint else None,
                    "cases": [c.name for c in cached], "world_size": info.world_size, "device": str(dev),
                    "steps_per_epoch": spe, "total_steps": total}

        saved = {"step": start_step if resume else None}
        # What `--postprocess auto` uses with this model: the fine-tuned model's rule, else "none" (the
        # paper's output; multi-focal lesions are kept).
        from CGCLesionSegLib.checkpoint import default_output_rule
        output_rule = default_output_rule(init_checkpoint) if init_checkpoint is not None else "none"

        def checkpoint(step: int) -> None:
            saved["step"] = step
            if not info.is_main:
                return
            ckpt = build_checkpoint(model, net_config, channels, settings, tcfg_dict, optimizer, step,
                                    epoch=step // spe, extra={**run_meta, "elapsed_s": round(time.monotonic() - t_start, 1)},
                                    default_output_rule=output_rule)
            if ema_state is not None:  # inference reads "model": give it the averaged weights
                ckpt["train_model"] = ckpt["model"]
                ckpt["model"] = {k: v.detach().cpu().clone() for k, v in ema_state.items()}
            try:
                save_checkpoint_dict(last, ckpt)
            except BaseException:
                # A Ctrl-C inside torch.save surfaces as a write error ("unexpected pos"), which the core
                # blames on the disk; the write is atomic, so the previous file is untouched.
                if not stop_requested["interrupted"]:
                    raise
                before = "the previous checkpoint file is kept" if last.exists() else "no checkpoint was written"
                raise KeyboardInterrupt(f"interrupted while writing the checkpoint of step {step}; {before}") from None

        if info.is_main:
            with atomic_write(out / "run.json") as fh:
                json.dump({"train_config": tcfg_dict, "net_config": config_to_dict(net_config),
                           "preprocessing": settings, **run_meta}, fh, indent=1)
        log = LossLog(out / LOG, start_step if resume else None) if info.is_main else None
        samples_fh = open(out / f"samples_rank{info.rank}.jsonl", "a") if record_samples else None

        # SIGTERM (and a first Ctrl-C) ask for a clean stop after the current step: checkpoint, then exit.
        # A second Ctrl-C interrupts at once.
        stop_requested = {"flag": False, "interrupted": False}
        old_handlers = {}

        def request_stop(signum, frame):
            if signum == getattr(signal, "SIGINT", None) and stop_requested["flag"]:
                stop_requested["interrupted"] = True  # lets checkpoint() tell an interrupt from a disk error
                raise KeyboardInterrupt
            stop_requested["flag"] = True
            stop_requested["signum"] = signum
            if signum == getattr(signal, "SIGINT", None):
                print("\nstopping after this step (Ctrl-C again to abort without a checkpoint)", file=sys.stderr)

        for name in ("SIGTERM", "SIGINT"):
            if hasattr(signal, name):
                try:
                    old_handlers[name] = signal.signal(getattr(signal, name), request_stop)
                except ValueError:  # not the main thread: keep the defaults
                    pass
        budget_s = train_cfg.max_minutes * 60.0 if train_cfg.max_minutes else None
        step, last_loss, stopped_early, stop_reason = start_step, None, False, None
        model.train()
        t_loop = time.monotonic()
        try:
            for batch in loader:
                x = batch["image"].to(dev, non_blocking=True)
                p = batch["prob"].to(dev, non_blocking=True)
                with torch.autocast(device_type=dev.type, dtype=torch.bfloat16, enabled=use_amp):
                    outputs = net(x)
                loss, terms = cgc_loss(outputs, p, train_cfg.loss, patch_zyx)
                lr_now = train_cfg.lr_at(step, total)
                for group in optimizer.param_groups:
                    group["lr"] = lr_now * group.get("lr_scale", 1.0)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                if ema_state is not None:
                    _ema_update(ema_state, model, train_cfg.ema, step)
                step += 1
                vec = dd.mean_across(torch.stack([terms[k].float() for k in LOG_COLUMNS[2:7]]).detach(), info)
                vals = dict(zip(LOG_COLUMNS[2:7], (float(v) for v in vec.cpu())))
                if not np.isfinite(vals["total"]):
                    # The mean over ranks is non-finite on every rank alike, so all stop together. The
                    # weights are spoilt from here on: never checkpoint them over the last good model.
                    kept = (f"{last} still holds step {saved['step']}" if saved["step"] is not None
                            else "no checkpoint was written")
                    raise ValueError(
                        f"the loss became {vals['total']} at step {step} (bce {vals['bce']}, cg {vals['cg']}, "
                        f"fg {vals['fg']}); training stopped and {kept}. Lower --lr, or check the cases "
                        "(their images and P) for extreme values")
                last_loss = vals["total"]
                epoch = (step - 1) // spe
                if samples_fh is not None:
                    samples_fh.write(json.dumps({"step": step, "rank": info.rank,
                                                 "cases": [int(c) for c in batch["case"]]}) + "\n")
                    samples_fh.flush()
                if log is not None:
                    log.write({"step": step, "epoch": epoch, **{k: f"{v:.6g}" for k, v in vals.items()},
                               "lr": f"{lr_now:.6g}", "seconds": round(time.monotonic() - t_start, 2)})
                if info.is_main:
                    frac, where = step / total, ""
                    if progress_stage is not None:
                        frac = (progress_stage[0] + frac) / progress_stage[1]
                        where = f"round {progress_stage[0] + 1}/{progress_stage[1]} "
                    if json_mode:
                        emit_json("progress", epoch=epoch, step=step, fraction=round(frac, 5),
                                  loss=round(last_loss, 6), message=f"{where}step {step}/{total}")
                    else:
                        reporter.update(step / total, f"{where}epoch {epoch} step {step}/{total} loss {last_loss:.4f}")
                over = budget_s is not None and time.monotonic() - t_start >= budget_s
                asked = bool(should_stop and should_stop())
                halt = over or stop_requested["flag"] or asked
                halt = dd.any_rank(halt, info, dev)
                if step % train_cfg.checkpoint_every == 0 or step == total or halt:
                    checkpoint(step)
                if halt:
                    stopped_early = step < total
                    # The reason this rank saw (another rank's reason reads as a stop request).
                    stop_reason = ("time budget reached (--max-minutes)" if over and not asked else
                                   getattr(should_stop, "description", "a stop was requested") if asked else
                                   "a stop was requested")
                    break
            if step == start_step and info.is_main and not last.exists():
                checkpoint(step)  # nothing to do (e.g. resume of a finished run): still leave a model
        finally:
            for name, handler in old_handlers.items():
                signal.signal(getattr(signal, name), handler)
            if log is not None:
                log.close()
            if samples_fh is not None:
                samples_fh.close()
        if record_samples:
            digest = torch.cat([q.detach().double().flatten().cpu() for q in model.parameters()])
            with open(out / f"params_rank{info.rank}.json", "w") as fh:
                json.dump({"step": step, "sum": float(digest.sum()), "abs_sum": float(digest.abs().sum()),
                           "first": [float(v) for v in digest[:16]]}, fh)
        elapsed = time.monotonic() - t_start
        stopped_by = stop_requested.get("signum")
        check = None
        if info.is_main and stopped_by is not None:
            # Stopped by a signal: the checkpoint is intact, but the run is not complete (exit 128 + signal).
            name = signal.Signals(stopped_by).name
            if json_mode:
                emit_json("stopped", signal=name, checkpoint=str(last), step=step, total_steps=total,
                          elapsed_s=round(elapsed, 1))
            else:
                reporter.close()
            print(f"stopped by {name} at step {step}/{total}" + (f"; {last} holds step {step}, continue with --resume"
                                                                  if resume_hint else ""), file=sys.stderr)
        elif info.is_main:
            # A resume whose checkpoint is already at (or past) the requested length trains nothing. Not an
            # error: re-running a finished command (a protocol script, a finished self-training round) must
            # stay a no-op success; but say so, since "step 168/2" alone reads like a bug.
            nothing_to_do = None
            if resume and start_step == total:
                nothing_to_do = (f"nothing trained: {last} is already at step {start_step}/{total} (the run is "
                                 "complete); to train on, give a longer --steps or --epochs with --resume")
            elif resume and start_step > total:
                nothing_to_do = (f"nothing trained: {last} is already at step {start_step}, past the requested "
                                 f"{total} steps; the checkpoint is unchanged. To train on, give --steps (or --epochs) "
                                 f"beyond {start_step} with --resume")
            summary = {"checkpoint": str(last), "step": step, "total_steps": total, "stopped_early": stopped_early,
                       "stop_reason": stop_reason, "loss": last_loss, "elapsed_s": round(elapsed, 1),
                       "steps_per_s": round((step - start_step) / max(time.monotonic() - t_loop, 1e-9), 4)}
            # Label-free: does the saved model mark lesion where its own target does? (sanity.py)
            from .sanity import OVERGROWTH_RATIO, check_message, lesion_check
            check = lesion_check(last, cached, train_cfg.crop_zyx, dev,
                                 overgrowth_ratio=OVERGROWTH_RATIO if overgrowth_ratio is None else overgrowth_ratio)
            (out / "lesion_check.json").write_text(json.dumps(check, indent=1))
            summary["lesion_check"] = check
            warning = check_message(check, last)
            if json_mode:
                if nothing_to_do:
                    emit_json("warning", kind="nothing_to_train", message=nothing_to_do)
                if warning:
                    emit_json("warning", kind="lesion_check", message=warning)
                emit_json("done", **summary)
            else:
                reporter.close()
                if stopped_early:
                    print(f"trained to step {step}/{total}, then stopped: {stop_reason}" + (
                        f"; model: {last} (holds step {step}, continue with --resume)" if resume_hint else ""),
                          file=sys.stderr)
                elif nothing_to_do:
                    print(nothing_to_do, file=sys.stderr)
                else:
                    print(f"trained to step {step}/{total}; model: {last}", file=sys.stderr)
                if warning:
                    print(warning, file=sys.stderr)
        dd.barrier(info)
        return TrainResult(last, step, total, stopped_early, last_loss, elapsed, stopped_by, check)
    finally:
        reporter.close()
