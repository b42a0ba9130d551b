"""TrainConfig: everything about a training run except the architecture (NetConfig) and P (GMMConfig).

Sizes written by users are ``x × y × z`` (``crop_xyz``); :attr:`TrainConfig.crop_zyx` is the array
order. The loss weights and choices live in :class:`CGCLesionSegLib.losses.LossConfig`, nested here as
``loss`` so one dict in the checkpoint describes the run.
"""
from __future__ import annotations

import math
import os
from dataclasses import asdict, dataclass, field
from typing import Optional

from CGCLesionSegLib.config import config_from_dict, xyz_to_zyx
from CGCLesionSegLib.losses import LossConfig
from CGCLesionSegLib.network import DOWNSAMPLE_FACTOR


AUGMENTATIONS = ("basic", "scanner", "scanner-strong")
LR_SCHEDULES = ("constant", "cosine")

#: ``--recipe NAME``: command-line defaults (argparse destinations) that a recipe sets; options given on
#: the command line still win. ``paper`` is the plain defaults (the paper's settings where it gives
#: them). ``shipped`` is the shipped models' recipe with targets for any cohort: `robust-2mm-st` of declared
#: protocol cgc-v9 (docs/protocols/cgc-v9.toml: its base arguments, the variant's arguments, 300 steps per
#: round and one self-training round on ``fixed`` targets). Both shipped models (since cgc-v43) made their round's
#: targets with ``--pseudo-rule default-output-agreed-opened``: the pipeline's one-lesion default output plus the
#: further lesions round 1 agrees with (the four-channel model used ``default-output``, one lesion only, from cgc-v24
#: until 2026-12-05). Those targets start from a glioma rule, wrong for MS or several haemorrhages and refused for
#: CT — so they are not a recipe default; a glioma-like cohort adds them. Testing/unit/test_self_train.py checks that it expands to
#: exactly that protocol's command line. With ``--epochs`` given, its ``steps`` is not applied.
RECIPES = {
    "paper": {},
    "shipped": {"crop": [96, 96, 64], "spacing": [2.0, 2.0, 2.0], "patch": [3, 3, 4], "lr": 1e-3, "batch_size": 2,
                "checkpoint_every": 50, "lr_schedule": "cosine", "ema": 0.99, "augment": "scanner", "steps": 300,
                "self_train_rounds": 1},
}


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation, data sampling and run-length settings (paper §4.3 where it says anything).

    ``epochs`` / ``steps``: run length; exactly one is used (``steps`` wins when both are set). One
    epoch visits every case once (per process group: the cases are split across ranks), so it has
    ``ceil(n_cases / (batch_size × world_size))`` steps. Paper: 400 epochs, batch 2, Adam lr 1e-4.
    ``max_minutes``: wall-clock budget; the run checkpoints and stops cleanly when it is spent.
    ``crop_xyz``: random crop (paper 192×192×64); must be a multiple of 8 in every axis.
    ``lesion_crop_fraction``: share of crops centred on a voxel with P ≥ 0.5 (the rest are centred on a
    random brain voxel). Our choice: the paper only says "randomly cropped"; centring some crops on
    P makes most batches contain lesion patches, without which eq. 6 has no anchor. Uses P only,
    never labels. ``flip``: random flips along each axis (p = 0.5). ``intensity_jitter``: per channel
    ``x·(1+a) + b`` inside the brain with ``a, b ~ N(0, jitter)``.
    ``augment``: ``basic`` (flips + jitter, as above) or ``scanner``: also, each with probability
    0.3 per crop, a per-channel gamma, a smooth multiplicative bias field, a thick-slice blur (down-
    and up-sampling along one axis by 2–4) and Gaussian noise, to mimic other scanners and other
    preprocessing. P is left as computed on the clean image, so the network must map the perturbed
    image to the same target (our choice; the paper uses no augmentation beyond random crops).
    ``scanner-strong``: the same perturbations, each with probability 0.6 (almost every crop is perturbed,
    often by several at once) — for a self-training round whose targets were made on clean images (a
    "noisy student": the student sees harder inputs than the teacher did; protocol cgc-v26).
    ``lr_schedule``: ``constant`` (the paper) or ``cosine``: linear warm-up over the first 5 % of the
    steps, then cosine decay to 1 % of ``lr`` at the last step. It needs a known run length, so a
    ``--max-minutes`` stop before the last step leaves the decay unfinished.
    ``ema``: decay of an exponential moving average of the weights (0 = off). With it on, the
    checkpoint's ``model`` holds the averaged weights (what inference uses) and ``train_model`` the raw
    ones (what ``--resume`` continues from). The first steps use ``min(ema, (1+step)/(10+step))`` so
    the average is not dominated by the random initialisation.
    ``head_lr_scale``: the output layers (the 1×1 convolutions giving the lesion logit and the coarse
    logit, ``train.OUTPUT_LAYERS``) learn at ``lr × head_lr_scale``; 1 (default) is the paper's single
    rate. Our option (issue 9, cgc-v17): Adam moves each parameter by at most about ``lr`` per step, so in
    the shipped recipe's 300 steps the lesion head's bias reached only −0.37 (−0.50 after the
    self-training round) and the network's map sits at a median 0.24–0.41 (round 1) wherever its target is
    below 0.1, with the BCE still 0.30–0.38 at the last step (docs/BENCHMARKS.md, map-floor) — the output layer, not the features, runs out of steps.
    ``checkpoint_every``: steps between ``last.pt`` writes (also written at the end and on budget stop).
    ``amp``: bf16 autocast on CUDA (ignored on CPU, where training runs in float32 for exact resume).
    ``target_sigma_mm``: > 0 trains on P smoothed with a Gaussian of this SD (mm, on the training grid;
    ``postprocess.smooth_probability``) instead of P itself — the BCE target, the crop centres and the
    patch labels all read the smoothed map. 0 (default) is the paper: P as the GMM gives it. Our
    option (issue 9): a smoothed P beats the network trained on raw P held-out, which points at the
    GMM's speckle being learnt; the smoothed target tests that without labels. Cached P files are
    keyed on it, so changing it recomputes the cache of a new run.
    """

    modalities: tuple[str, ...] = ("flair", "t1", "t1ce", "t2")
    crop_xyz: tuple[int, int, int] = (192, 192, 64)
    batch_size: int = 2
    lr: float = 1e-4
    epochs: Optional[int] = 400
    steps: Optional[int] = None
    max_minutes: Optional[float] = None
    seed: int = 0
    workers: Optional[int] = None  # None: auto_workers(device) — 1 on the CPU, more on a GPU
    lesion_crop_fraction: float = 0.5
    flip: bool = True
    intensity_jitter: float = 0.1
    checkpoint_every: int = 50
    amp: bool = True
    augment: str = "basic"
    lr_schedule: str = "constant"
    ema: float = 0.0
    target_sigma_mm: float = 0.0
    head_lr_scale: float = 1.0
    loss: LossConfig = field(default_factory=LossConfig)

    def __post_init__(self) -> None:
        if not self.modalities or len(set(m.lower() for m in self.modalities)) != len(self.modalities):
            raise ValueError(f"modalities must be distinct names, got {list(self.modalities)}")
        object.__setattr__(self, "modalities", tuple(str(m).lower() for m in self.modalities))
        if len(self.crop_xyz) != 3 or any(int(v) < DOWNSAMPLE_FACTOR or int(v) % DOWNSAMPLE_FACTOR for v in self.crop_xyz):
            raise ValueError(f"crop must be three multiples of {DOWNSAMPLE_FACTOR} (x y z), e.g. 192 192 64; "
                             f"got {tuple(self.crop_xyz)}")
        object.__setattr__(self, "crop_xyz", tuple(int(v) for v in self.crop_xyz))
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not (float(self.lr) > 0):
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if self.steps is None and self.epochs is None:
            raise ValueError("give the run length: epochs or steps")
        if self.steps is not None and int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if self.epochs is not None and int(self.epochs) < 1:
            raise ValueError(f"epochs must be >= 1, got {self.epochs}")
        if self.max_minutes is not None and not (float(self.max_minutes) > 0):
            raise ValueError(f"max_minutes must be > 0, got {self.max_minutes}")
        if int(self.seed) < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.workers is not None and int(self.workers) < 0:
            raise ValueError(f"workers must be >= 0, got {self.workers}")
        if not (0.0 <= float(self.lesion_crop_fraction) <= 1.0):
            raise ValueError(f"lesion_crop_fraction must be in [0, 1], got {self.lesion_crop_fraction}")
        if not (0.0 <= float(self.intensity_jitter) < 1.0):
            raise ValueError(f"intensity_jitter must be in [0, 1), got {self.intensity_jitter}")
        if int(self.checkpoint_every) < 1:
            raise ValueError(f"checkpoint_every must be >= 1, got {self.checkpoint_every}")
        if self.augment not in AUGMENTATIONS:
            raise ValueError(f"augment must be one of {', '.join(AUGMENTATIONS)}, got {self.augment!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            raise ValueError(f"lr_schedule must be one of {', '.join(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        if not (0.0 <= float(self.ema) < 1.0):
            raise ValueError(f"ema must be in [0, 1) (0 = off), got {self.ema}")
        if not (0.0 <= float(self.target_sigma_mm) <= 20.0):
            raise ValueError(f"target_sigma_mm must be in [0, 20] mm (0 = P as computed), got {self.target_sigma_mm}")
        if not (0.0 < float(self.head_lr_scale) <= 1000.0):
            raise ValueError(f"head_lr_scale must be in (0, 1000] (1 = one rate for all layers), got {self.head_lr_scale}")
        if isinstance(self.loss, dict):
            object.__setattr__(self, "loss", LossConfig(**self.loss))

    @property
    def crop_zyx(self) -> tuple[int, int, int]:
        return xyz_to_zyx(self.crop_xyz)

    def lr_at(self, step: int, total: int) -> float:
        """Learning rate of optimisation step ``step`` (0-based) of ``total``."""
        if self.lr_schedule == "constant" or total <= 1:
            return float(self.lr)
        warm = max(1, int(round(0.05 * total)))
        if step < warm:
            return float(self.lr) * (step + 1) / warm
        t = min(1.0, (step - warm) / max(1, total - 1 - warm))
        floor = 0.01
        return float(self.lr) * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * t)))


def train_config_to_dict(cfg: TrainConfig) -> dict:
    """Plain dict (nested ``loss`` too) for the checkpoint."""
    return asdict(cfg)


def train_config_from_dict(data: dict) -> TrainConfig:
    """Inverse of :func:`train_config_to_dict` (the nested ``loss`` dict becomes a LossConfig in
    ``__post_init__``); unknown keys raise ``ValueError`` naming them."""
    return config_from_dict(TrainConfig, data)


#: The most DataLoader workers ``auto`` gives one training process on a GPU.
MAX_AUTO_WORKERS = 12


def shared_memory_bytes(path: str = "/dev/shm") -> Optional[int]:
    """Size of the shared-memory file system DataLoader workers hand batches over (None where there is none)."""
    import shutil
    try:
        return int(shutil.disk_usage(path).total)
    except OSError:
        return None


def auto_workers(device_type: str, local_world_size: int = 1, cores: Optional[int] = None,
                 batch_bytes: Optional[int] = None, shm_bytes: Optional[int] = None) -> int:
    """DataLoader workers for ``--workers auto`` (:attr:`TrainConfig.workers` None).

    CPU: 1, the tested default — crops are cheap next to a CPU step, and the network wants the cores. GPU: the
    cores this process may use (``cores``, default its CPU affinity, shared among ``local_world_size`` torchrun
    processes) minus two (the training process itself and one spare), at least 1 and at most
    :data:`MAX_AUTO_WORKERS`. Measured on an H200 with 16 cores (docs/BENCHMARKS.md ``train-cuda``): the shipped
    recipe ran 4.8 / 14.6 / 23.5 / 26.6 steps/s with 1 / 4 / 8 / 12 workers, against 46.8 for the bare step, so
    one worker starves the GPU. Sampling does not depend on the number of workers (:mod:`CGCTraining.data`), so
    the choice changes speed only.

    Workers hand batches over in shared memory, about three batches each (two prefetched, one in transit):
    with ``batch_bytes`` and ``shm_bytes`` (``/dev/shm``'s size, 64 MB in a default Docker container, where
    too many workers die of a bus error) the count is cut to what fits, 0 (load in the training process)
    when not even one worker fits.
    """
    if device_type != "cuda":
        workers = 1
    else:
        if cores is None:
            try:
                cores = len(os.sched_getaffinity(0))
            except AttributeError:  # not on Linux
                cores = os.cpu_count() or 1
        workers = max(1, min(MAX_AUTO_WORKERS, int(cores) // max(1, int(local_world_size)) - 2))
    if batch_bytes and shm_bytes:
        workers = min(workers, int(shm_bytes) // (3 * int(batch_bytes)))
    return workers
