"""Command line of the training package: ``python -m CGCTraining``, ``cgcseg train``, ``torchrun ... -m
CGCTraining`` and ``Slicer --no-main-window --python-script <path>/CGCTraining/__main__.py -- ...``.

See docs/TRAINING.md for a guide. :func:`main` returns the exit code (0 ok, 2 bad input, 130 cancelled).
"""
from __future__ import annotations

import sys
from pathlib import Path

if __package__ in (None, ""):
    # Run as a script path (Slicer --python-script): make ``CGCTraining`` and the core importable.
    _here = Path(__file__).resolve().parent
    for _p in (_here.parent, _here.parent / "CGCLesionSeg"):
        if (_p / "CGCTraining").is_dir() or (_p / "CGCLesionSegLib").is_dir():
            if str(_p) not in sys.path:
                sys.path.insert(0, str(_p))

import argparse
import json
import os
import time
from typing import Callable, Optional, Sequence

EPILOG = """examples:
  python -m CGCTraining --cases /data/brats --output-dir runs/full --epochs 400
  python -m CGCTraining --cases cases.csv --modalities flair t2 --output-dir runs/a --steps 200 --crop 96 96 32
  python -m CGCTraining --output-dir runs/full --resume      (the settings of the first call are reused)
  torchrun --nproc_per_node 2 -m CGCTraining --cases /data/brats --output-dir runs/ddp --epochs 400
ablation rows of the paper (Table 2): --no-coarse --no-fine (backbone + P), --no-fine (+ global),
  --no-coarse (+ local), default (both); --patch 12 12 4 / 6 6 4 / 3 3 4; Table 3: --tau 0.07 ... 0.9
sizes are x y z (as the paper writes them); see docs/TRAINING.md"""


def _workers_arg(text: str) -> Optional[int]:
    """``--workers``: a count >= 0, or ``auto`` (None: :func:`CGCTraining.config.auto_workers` at the start)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of workers or 'auto', got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"workers must be >= 0, got {value}")
    return value


def _prog() -> str:
    return "cgcseg train" if Path(sys.argv[0]).name.startswith("cgcseg") else "python -m CGCTraining"


def build_parser() -> argparse.ArgumentParser:
    from CGCLesionSegLib.losses import ANCHOR_MODES, LABEL_SOURCES, PATCH_RULES, LossConfig
    from CGCLesionSegLib.network import FUSIONS, NORMS, NetConfig
    from CGCTraining.config import AUGMENTATIONS, LR_SCHEDULES, MAX_AUTO_WORKERS, RECIPES, TrainConfig
    from CGCTraining.self_train import PSEUDO_RULE_HELP, PSEUDO_VOLUMES

    n, t, lo = NetConfig(), TrainConfig(), LossConfig()
    from CGCLesionSegLib.cli import ArgumentParser
    p = ArgumentParser(prog=_prog(), formatter_class=argparse.RawDescriptionHelpFormatter,
                                description="Train the CGC lesion segmentation network without labels: P from a "
                                            "GMM per case, then Adam on eq. 8 (BCE to P + coarse + fine contrastive).",
                                epilog=EPILOG)
    g = p.add_argument_group("data and run")
    g.add_argument("--cases", metavar="DIR|LIST",
                   help="folder in BraTS layout <case>/<case>_<modality>.nii.gz (_seg files are ignored), or a "
                        ".csv/.json list with columns case,<modality>...[,mask][,prob]")
    g.add_argument("--modalities", nargs="+", default=list(t.modalities), metavar="NAME",
                   help=f"input channels in order; stored in the model (default: {' '.join(t.modalities)})")
    g.add_argument("--output-dir", required=True, metavar="RUN_DIR",
                   help="run folder: last.pt, loss_log.csv, run.json and the P cache (cache/)")
    length = g.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, help=f"epochs (one visit of every case; default {t.epochs})")
    length.add_argument("--steps", type=int, help="optimisation steps instead of epochs")
    g.add_argument("--max-minutes", type=float, help="wall-clock budget; then checkpoint and stop cleanly")
    g.add_argument("--stop-file", metavar="PATH", help="stop cleanly (checkpoint, then exit 0) once this file exists; "
                   "checked after every step (the Slicer module's Cancel writes it); a file already there when the "
                   "command starts is refused (left by an earlier cancel)")
    g.add_argument("--resume", action="store_true",
                   help=f"continue RUN_DIR/last.pt with the settings stored in RUN_DIR/{ARGS_FILE} (--output-dir alone "
                        "is enough); a setting given again must match, except --epochs/--steps/--max-minutes/"
                        "--workers/--checkpoint-every/--device/--progress/--stop-file")
    g.add_argument("--init-from", metavar="CKPT", help="start from this model's weights (fine-tuning; same architecture "
                   "and modalities; the optimizer and step count start fresh)")
    g.add_argument("--overgrowth-ratio", type=float, default=None, metavar="R",
                   help="the lesion check after training reports a model that marks more than R times its target's "
                        "voxels on its training cases as overgrown (default 3.0); --self-train-rounds and the "
                        "shipping script refuse such a model. Raise it only if your targets are known to mark a "
                        "small part of each lesion")
    g.add_argument("--recipe", choices=sorted(RECIPES), default="paper",
                   help="defaults of a training recipe; options given still win. paper: the plain defaults; "
                        "shipped: the shipped models' recipe (--crop 96 96 64 --spacing 2 2 2 --patch 3 3 4 --lr 1e-3 "
                        "--batch-size 2 --lr-schedule cosine --ema 0.99 --augment scanner --steps 300 "
                        "--self-train-rounds 1; protocol cgc-v9; both shipped models add --pseudo-rule "
                        "default-output-agreed-opened, for glioma-like MRI cohorts only: docs/TRAINING.md)")
    g.add_argument("--self-train-rounds", type=int, default=0, metavar="N",
                   help="after training, N self-training rounds: segment the training cases with the model (0.5*CGC "
                        "+ 0.5*P, 2-D hole filling, no keep-largest; no label read) and train again from its weights "
                        "on those maps, same settings, in RUN_DIR/self-train-<k>; RUN_DIR/self_train.json names the "
                        "final model (the shipped models use 1; default 0; one process, see docs/TRAINING.md for torchrun)")
    g.add_argument("--pseudo-rule", "--pseudo-volume", dest="pseudo_volume", choices=PSEUDO_VOLUMES, default="fixed",
                   help="with --self-train-rounds: " + PSEUDO_RULE_HELP)
    g.add_argument("--crop", nargs=3, type=int, default=list(t.crop_xyz), metavar=("X", "Y", "Z"),
                   help="random crop size x y z (default 192 192 64 as the paper; smaller on CPU, e.g. 96 96 64). "
                        "Each side / 8 (the bottleneck) must be a multiple of --patch on that axis, so with the "
                        "default patch 6 6 4: x, y multiples of 48 and z of 32 (--no-fine: multiples of 8)")
    g.add_argument("--batch-size", type=int, default=t.batch_size, help=f"crops per step and process (default {t.batch_size})")
    g.add_argument("--lr", type=float, default=t.lr, help=f"Adam learning rate (default {t.lr})")
    g.add_argument("--seed", type=int, default=t.seed, help="seed of initialisation and sampling (default 0)")
    g.add_argument("--workers", type=_workers_arg, default=None, metavar="N|auto",
                   help="DataLoader worker processes (default auto: 1 on the CPU; on a GPU the process's cores minus "
                        f"two, at most {MAX_AUTO_WORKERS} — one worker starves a GPU; either way no more than "
                        "/dev/shm holds)")
    g.add_argument("--checkpoint-every", type=int, default=t.checkpoint_every, metavar="STEPS",
                   help=f"write last.pt every this many steps (default {t.checkpoint_every})")
    g.add_argument("--spacing", nargs=3, type=float, metavar=("X", "Y", "Z"),
                   help="training voxel spacing in mm (default: the first case's); other cases are resampled")
    g.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                   help="auto takes CUDA when available (default: auto)")
    g.add_argument("--no-amp", action="store_true", help="no bf16 autocast on CUDA (GPUs older than compute capability 8.0 never use it: float32)")
    g.add_argument("--progress", choices=("bar", "json", "none"), default="bar",
                   help="bar: tqdm on stderr; json: one JSON object per line on stdout (default: bar)")
    g.add_argument("--record-samples", action="store_true", help=argparse.SUPPRESS)

    a = p.add_argument_group("sampling and augmentation")
    a.add_argument("--lesion-crop-fraction", type=float, default=t.lesion_crop_fraction,
                   help=f"share of crops centred on a P>=0.5 voxel, the rest on a brain voxel (default {t.lesion_crop_fraction})")
    a.add_argument("--no-flip", action="store_true", help="no random flips")
    a.add_argument("--intensity-jitter", type=float, default=t.intensity_jitter,
                   help=f"SD of per-channel scale/shift jitter (default {t.intensity_jitter}; 0 = off)")
    a.add_argument("--augment", choices=AUGMENTATIONS, default=t.augment,
                   help="basic: flips + jitter; scanner: also gamma, bias field, thick-slice blur and noise, "
                        f"each with p = 0.3 per crop, to mimic other scanners; scanner-strong: the same with p = 0.6 "
                        f"(default {t.augment})")
    g.add_argument("--lr-schedule", choices=LR_SCHEDULES, default=t.lr_schedule,
                   help="constant (the paper) or cosine: 5 %% warm-up, then decay to 1 %% of --lr at the last step "
                        f"(default {t.lr_schedule})")
    g.add_argument("--head-lr-scale", type=float, default=t.head_lr_scale, metavar="K",
                   help="the output layers (lesion and coarse logits) learn at K × --lr; in a short run Adam moves "
                        f"each weight by about --lr per step, too little for the output's offset (default {t.head_lr_scale:g})")
    g.add_argument("--ema", type=float, default=t.ema, metavar="DECAY",
                   help="keep an exponential moving average of the weights with this decay (e.g. 0.99) and save it "
                        f"as the model; 0 = off (default {t.ema:g})")

    m = p.add_argument_group("network (sizes x y z)")
    m.add_argument("--widths", nargs=4, type=int, default=list(n.widths), metavar="W",
                   help=f"channels at full, /2, /4, /8 resolution (default {' '.join(map(str, n.widths))})")
    m.add_argument("--blocks", nargs=4, type=int, default=list(n.blocks), metavar="N",
                   help=f"residual blocks per level (default {' '.join(map(str, n.blocks))})")
    m.add_argument("--decoder-width", type=int, default=n.decoder_width, help=f"full-resolution decoder channels (default {n.decoder_width})")
    m.add_argument("--norm", choices=NORMS, default=n.norm, help=f"normalisation layers (default {n.norm})")
    m.add_argument("--no-coarse", action="store_true", help="switch the coarse-grained path off")
    m.add_argument("--no-fine", action="store_true", help="switch the fine-grained path off")
    m.add_argument("--fusion", choices=FUSIONS, default=n.fusion,
                   help=f"how p*z and (1-p)*z enter the decoder (default {n.fusion})")
    m.add_argument("--patch", nargs=3, type=int, default=list(n.patch_size_xyz), metavar=("X", "Y", "Z"),
                   help="mini-patch size on the bottleneck grid (default 6 6 4; paper also 12 12 4, 3 3 4)")
    m.add_argument("--projection-dim", type=int, default=n.projection_dim, help=f"embedding size (default {n.projection_dim})")

    lg = p.add_argument_group("losses (eq. 8)")
    lg.add_argument("--tau", type=float, default=lo.tau, help=f"temperature of eq. 6 (default {lo.tau})")
    lg.add_argument("--lambda-cg", type=float, default=lo.lambda_cg, help=f"weight of the coarse loss (default {lo.lambda_cg})")
    lg.add_argument("--lambda-fg", type=float, default=lo.lambda_fg, help=f"weight of the fine loss (default {lo.lambda_fg})")
    lg.add_argument("--patch-labels", choices=LABEL_SOURCES, default=lo.patch_label_source,
                    help=f"map that labels mini-patches lesion: P or the coarse prediction (default {lo.patch_label_source})")
    lg.add_argument("--patch-rule", choices=PATCH_RULES, default=lo.patch_rule,
                    help=f"a patch is lesion when any of its bottleneck cells, or its mean, reaches --patch-threshold "
                         f"(default {lo.patch_rule})")
    lg.add_argument("--patch-threshold", type=float, default=lo.patch_threshold,
                    help=f"label-map value that makes a patch lesion (default {lo.patch_threshold})")
    lg.add_argument("--ignore-band", nargs=2, type=float, default=None, metavar=("LO", "HI"),
                    help="no BCE (eq. 1 and the coarse loss) where the target lies strictly between LO and HI, "
                         "e.g. 0.1 0.9: the network learns only where P is decided (default: every voxel, the paper)")
    lg.add_argument("--anchors", choices=ANCHOR_MODES, default=lo.anchors,
                    help=f"anchors of eq. 6: lesion patches, or all patches (default {lo.anchors})")

    gg = p.add_argument_group("GMM probability map P (computed once per case, cached in RUN_DIR/cache)")
    gg.add_argument("--gmm-modalities", nargs="+", metavar="NAME",
                    help="modalities the GMM uses, starting with the first of --modalities "
                         "(default: the first only = FLAIR, as the paper)")
    gg.add_argument("--gmm-clusters", type=int, help="number of Gaussian components (default: GMMConfig's)")
    gg.add_argument("--gmm-foreground", type=int, help="how many brightest components are lesion (default: GMMConfig's)")
    gg.add_argument("--gmm-config", metavar="JSON", help="GMMConfig fields as JSON (e.g. saved by the Slicer module); "
                                                          "the flags above override it")
    gg.add_argument("--gmm-preset", choices=("paper", "recommended"), default="paper",
                    help="starting GMM settings: paper = K 4, brightest component (the paper; default); recommended = "
                         "the map `cgcseg gmm` thresholds by default (K 4..8 averaged, outlier rule; MRI only). "
                         "--gmm-config and the flags above override it")
    gg.add_argument("--target-sigma", type=float, default=t.target_sigma_mm, metavar="MM",
                    help="train on P smoothed with a Gaussian of this SD in mm (on the training grid) instead of P "
                         f"itself: BCE target, crop centres and patch labels (default {t.target_sigma_mm:g} = P as the "
                         "GMM gives it, the paper)")
    return p


def _gmm_config(args, modalities: list[str]):
    from CGCLesionSegLib.gmm import GMMConfig, config_from_dict, config_to_dict, recommended_config
    base = {}
    preset = getattr(args, "gmm_preset", "paper")
    if preset == "recommended":
        if modalities[0] == "ct":
            raise ValueError("--gmm-preset recommended is the MRI preset; CT models keep the paper's settings "
                             "(or give --gmm-config)")
        base = config_to_dict(recommended_config())
    if args.gmm_config:
        path = Path(args.gmm_config)
        if not path.exists():
            raise ValueError(f"--gmm-config {path} does not exist")
        try:
            loaded = json.loads(path.read_text())
        except ValueError as exc:
            raise ValueError(f"--gmm-config {path} is not valid JSON ({exc})") from None
        loaded = loaded.get("gmm", loaded) if isinstance(loaded, dict) else loaded
        if not isinstance(loaded, dict):
            raise ValueError(f"--gmm-config {path} must hold an object of GMMConfig fields")
        base.update(loaded)  # over the preset's fields
    if args.gmm_modalities:
        names = [m.lower() for m in args.gmm_modalities]
        unknown = [m for m in names if m not in modalities]
        if unknown:
            raise ValueError(f"--gmm-modalities {' '.join(unknown)} not among --modalities {' '.join(modalities)}")
        if names[0] != modalities[0]:
            raise ValueError(f"--gmm-modalities must start with the reference channel {modalities[0]} "
                             "(the first of --modalities), which orders the GMM components")
        base["channels"] = [modalities.index(m) for m in names]
    elif "channels" not in base:
        base["channels"] = [0]
    if args.gmm_clusters is not None:
        base["n_clusters"] = args.gmm_clusters
        base["ensemble_clusters"] = None  # one K asked for, as `cgcseg gmm --clusters` does
    if args.gmm_foreground is not None:
        base["n_foreground"] = args.gmm_foreground
    if modalities[0] == "ct" and "modality" not in base:
        base["modality"] = "ct"
    return config_from_dict(base) if base else GMMConfig()


def configs_from_args(args):
    """(TrainConfig, NetConfig, GMMConfig) from parsed arguments; ValueError on bad values."""
    from CGCLesionSegLib.losses import LossConfig
    from CGCLesionSegLib.network import NetConfig
    from CGCTraining.config import TrainConfig

    modalities = [m.lower() for m in args.modalities]
    loss = LossConfig(tau=args.tau, lambda_cg=args.lambda_cg, lambda_fg=args.lambda_fg,
                      patch_label_source=args.patch_labels, patch_threshold=args.patch_threshold,
                      patch_rule=args.patch_rule, anchors=args.anchors,
                      ignore_band=args.ignore_band)  # LossConfig checks it and makes it a tuple
    epochs = args.epochs if args.steps is None else None
    if args.steps is None and args.epochs is None:
        epochs = TrainConfig().epochs
    train_cfg = TrainConfig(modalities=tuple(modalities), crop_xyz=tuple(args.crop), batch_size=args.batch_size,
                            lr=args.lr, epochs=epochs, steps=args.steps, max_minutes=args.max_minutes, seed=args.seed,
                            workers=args.workers, lesion_crop_fraction=args.lesion_crop_fraction,
                            flip=not args.no_flip, intensity_jitter=args.intensity_jitter,
                            checkpoint_every=args.checkpoint_every, amp=not args.no_amp, loss=loss,
                            augment=args.augment, lr_schedule=args.lr_schedule, ema=args.ema,
                            target_sigma_mm=args.target_sigma, head_lr_scale=args.head_lr_scale)
    net_cfg = NetConfig(in_channels=len(modalities), widths=tuple(args.widths), blocks=tuple(args.blocks),
                        decoder_width=args.decoder_width, norm=args.norm, coarse=not args.no_coarse,
                        fine=not args.no_fine, fusion=args.fusion, patch_size_xyz=tuple(args.patch),
                        projection_dim=args.projection_dim)
    bottleneck = [c // 8 for c in train_cfg.crop_xyz]
    if net_cfg.fine and any(b % p for b, p in zip(bottleneck, net_cfg.patch_size_xyz)):
        raise ValueError(f"--patch {' '.join(map(str, net_cfg.patch_size_xyz))} does not tile the bottleneck "
                         f"{'×'.join(map(str, bottleneck))} of --crop {' '.join(map(str, train_cfg.crop_xyz))} "
                         "(crop / 8 must be a multiple of the patch in x, y and z); nearest valid crops: "
                         + " or ".join(" ".join(map(str, c)) for c in nearest_crops(train_cfg.crop_xyz,
                                                                                    net_cfg.patch_size_xyz)))
    return train_cfg, net_cfg, _gmm_config(args, modalities)


def nearest_crops(crop_xyz, patch_xyz) -> list[tuple[int, int, int]]:
    """The valid crops just below and just above ``crop_xyz`` (each side a multiple of 8 × the patch),
    e.g. 64 64 32 with patch 6 6 4 → [(48, 48, 32), (96, 96, 32)]."""
    steps = [8 * p for p in patch_xyz]
    lower = tuple(max(s, c // s * s) for c, s in zip(crop_xyz, steps))
    upper = tuple(-(-c // s) * s for c, s in zip(crop_xyz, steps))
    return [lower] if lower == upper else [lower, upper]


#: The arguments of a run's first call, kept in the run folder so ``--resume`` needs nothing else.
ARGS_FILE = "args.json"
#: Options that belong to one call, not to the run (never taken from ARGS_FILE over what is given).
_PER_CALL = ("resume", "output_dir")


def _given(parser: argparse.ArgumentParser, argv: Sequence[str]) -> set[str]:
    """Destinations of the options written on the command line (not their defaults)."""
    import copy
    quiet = copy.deepcopy(parser)
    for action in quiet._actions:
        action.default = argparse.SUPPRESS
        action.required = False
    for group in quiet._mutually_exclusive_groups:
        group.required = False
    return set(vars(quiet.parse_args(argv)))


def apply_stored_args(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace) -> argparse.Namespace:
    """With ``--resume``, take every setting not given on the command line from RUN_DIR/args.json
    (written by the run's first call); settings given must still match the checkpoint (checked by
    ``train``). Without ``--resume``, ``--cases`` is required."""
    if not args.resume:
        if not args.cases:
            parser.error("the following arguments are required: --cases (or --resume with the --output-dir of a run)")
        return args
    stored_path = Path(args.output_dir) / ARGS_FILE
    if not stored_path.is_file():
        if not args.cases:
            raise ValueError(f"--resume: {stored_path} not found (a run started by an older version, or not a run "
                             "folder); give the same arguments as the first call")
        return args
    try:
        stored = json.loads(stored_path.read_text())
    except ValueError as exc:
        raise ValueError(f"--resume: {stored_path} is not valid JSON ({exc}); give the arguments again") from None
    given = _given(parser, argv)
    if "cases" in given and stored.get("cases") and not _same_path(args.cases, stored["cases"]):
        # The checkpoint cannot tell (its P cache and case names come from the cases), and args.json would
        # be rewritten with the new cohort: the run's record of what it was trained on would be lost.
        raise ValueError(f"--resume: this run was trained on --cases {stored['cases']} ({stored_path}), not "
                         f"{args.cases}. Resume without --cases (or with the same one), or train on other cases "
                         "in a new --output-dir (--init-from RUN_DIR/last.pt starts from this run's model)")
    if "init_from" in given and not (stored.get("init_from") and args.init_from
                                     and _same_path(args.init_from, stored["init_from"])):
        # The checkpoint holds the run's weights: a resumed run never reads --init-from again, so another
        # model given here would be ignored without a word.
        first = f"--init-from {stored['init_from']}" if stored.get("init_from") else "no --init-from"
        raise ValueError(f"--resume: this run was started with {first} ({stored_path}), not --init-from "
                         f"{args.init_from}; a resumed run continues from its own last.pt. Resume without "
                         "--init-from, or fine-tune from that model in a new --output-dir")
    merged = vars(args).copy()
    known = set(merged)
    for key, value in stored.items():
        if key in known and key not in given and key not in _PER_CALL:
            merged[key] = value
    if given & {"epochs", "steps"}:  # a new length replaces the stored one, whichever kind it was
        for key in {"epochs", "steps"} - given:
            merged[key] = None
    return argparse.Namespace(**merged)


def _same_path(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Whether two paths name the same file (relative ones against the working folder, links followed)."""
    return Path(a).resolve() == Path(b).resolve()


def apply_recipe(parser: argparse.ArgumentParser, argv: Sequence[str], args: argparse.Namespace) -> argparse.Namespace:
    """``--recipe NAME``: parse again with the recipe's defaults (:data:`CGCTraining.config.RECIPES`); the
    options written on the command line keep their values, and ``--epochs`` drops the recipe's ``steps``."""
    from CGCTraining.config import RECIPES
    defaults = dict(RECIPES[args.recipe])
    if not defaults:
        return args
    if "epochs" in _given(parser, argv):
        defaults.pop("steps", None)
    before = {a.dest: a.default for a in parser._actions if a.dest in defaults}
    parser.set_defaults(**defaults)
    try:
        return parser.parse_args(argv)
    finally:
        parser.set_defaults(**before)  # the parser's own defaults again (it is also used by --resume)


def _store_args(args: argparse.Namespace) -> None:
    """Write RUN_DIR/args.json (rank 0 only) for a new run, or refresh it after a --resume ran."""
    if int(os.environ.get("RANK", "0")) != 0:
        return
    out = Path(args.output_dir)
    if not args.resume and (out / "last.pt").exists():
        return  # train() refuses to start over an existing run; leave its record alone
    from CGCLesionSegLib.image_io import atomic_write
    record = {k: v for k, v in vars(args).items() if k not in _PER_CALL}
    for key in ("cases", "init_from"):  # absolute, so a --resume from another folder compares and finds it
        if record.get(key):
            record[key] = str(Path(record[key]).resolve())
    out.mkdir(parents=True, exist_ok=True)
    with atomic_write(out / ARGS_FILE) as fh:
        json.dump(record, fh, indent=1)
        fh.write("\n")


def main(argv: Optional[Sequence[str]] = None) -> int:
    started = time.time()  # before torch is imported (seconds): the stop-file check compares with it
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "--":  # Slicer --python-script file.py -- ARGS
        argv = argv[1:]
    try:
        parser = build_parser()  # imports torch: the slow part of a start, where a Ctrl-C most often lands
        args = apply_recipe(parser, argv, parser.parse_args(argv))
        from CGCLesionSegLib.image_io import GeometryMismatchError, ImageIOError
        from CGCLesionSegLib.progress import Cancelled
    except KeyboardInterrupt as exc:
        print(f"{_prog()}: {_interrupted_message(exc, None)}", file=sys.stderr)
        return 130
    prog = parser.prog
    lock = None
    try:
        from CGCTraining.data import discover_cases
        from CGCTraining.train import train
        args = apply_stored_args(parser, argv, args)
        rounds = args.self_train_rounds
        if rounds < 0:
            raise ValueError(f"--self-train-rounds must be 0 or more, got {rounds}")
        if args.pseudo_volume != "fixed" and not rounds:
            raise ValueError(f"--pseudo-rule {args.pseudo_volume} sets the targets of self-training rounds: give "
                             "--self-train-rounds N (N >= 1) with it")
        if args.overgrowth_ratio is not None and not args.overgrowth_ratio > 1.0:
            raise ValueError(f"--overgrowth-ratio must be above 1 (a model marking its target exactly has 1), "
                             f"got {args.overgrowth_ratio}")
        if rounds and int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise ValueError("--self-train-rounds runs in one process; under torchrun train the rounds as separate "
                             "commands: this training without it, then `python -m CGCTraining.self_train --model "
                             "RUN_DIR/last.pt --cases CASES --output-dir TARGETS`, then torchrun ... -m CGCTraining "
                             "--cases TARGETS/cases.csv --init-from RUN_DIR/last.pt (same settings, another --output-dir)")
        train_cfg, net_cfg, gmm_cfg = configs_from_args(args)
        _check_run_folder_outside_cases(args.output_dir, args.cases)
        _check_output_dir(args.output_dir)
        should_stop = _stop_file_check(args.stop_file, started)
        cases = discover_cases(args.cases, train_cfg.modalities)
        if args.init_from and not args.resume:
            # Before the run folder is made: a refused checkpoint leaves no args.json or run.lock behind.
            from CGCTraining.train import check_init_checkpoint
            check_init_checkpoint(args.init_from, net_cfg, list(train_cfg.modalities))
        if int(os.environ.get("RANK", "0")) == 0:  # before anything is written there (train() takes it again)
            from CGCTraining.run_lock import acquire_run_lock
            lock = acquire_run_lock(args.output_dir)
        if not args.resume:
            _store_args(args)
        result = train(cases, train_cfg, net_cfg, args.output_dir, gmm_config=gmm_cfg,
                       spacing_xyz=tuple(args.spacing) if args.spacing else None, resume=args.resume,
                       device=args.device, progress=args.progress, record_samples=args.record_samples,
                       init_checkpoint=args.init_from, progress_stage=(0, rounds + 1) if rounds else None,
                       overgrowth_ratio=args.overgrowth_ratio, should_stop=should_stop)
        # The checkpoint accepted these settings: the next --resume starts from them. Not when it is past the
        # length asked for (nothing was trained): the record keeps the run's real length.
        if args.resume and result.step <= result.total_steps:
            _store_args(args)
        if rounds:
            result = _self_train(args, rounds, cases, train_cfg, net_cfg, gmm_cfg, result, prog, should_stop)
    except (ValueError, ImageIOError, GeometryMismatchError, FileNotFoundError) as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return 2
    except (Cancelled, KeyboardInterrupt) as exc:
        # str() of a bare KeyboardInterrupt is '': always say what happened and where the run stands.
        print(f"{prog}: {_interrupted_message(exc, args.output_dir)}", file=sys.stderr)
        return 130
    except OSError as exc:  # a full disk or a file-size limit while writing the cache, the log, ...
        where = f" ({exc.filename})" if getattr(exc, "filename", None) else ""
        kept = ("the last checkpoint there is intact and --resume continues it"
                if (Path(args.output_dir) / "last.pt").is_file() else "no checkpoint was written")
        print(f"{prog}: error: could not write in {args.output_dir}{where}: {exc.strerror or exc}. Check the free "
              f"space (and any file-size limit) of the folder; {kept}", file=sys.stderr)
        return 2
    except MemoryError as exc:  # host RAM (numpy, the P cache)
        print(f"{prog}: error: out of memory ({exc or 'MemoryError'}). {_oom_advice(args)}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if not _is_out_of_memory(exc):
            raise
        print(f"{prog}: error: out of memory on the {'GPU' if 'CUDA' in str(exc) else 'device'} "
              f"({str(exc).splitlines()[0][:160]}). {_oom_advice(args)}", file=sys.stderr)
        return 2
    finally:
        if lock is not None:
            lock.release()
    if result.signal is not None:  # stopped by SIGTERM/SIGINT: the checkpoint is intact, the run is not done
        return 128 + int(result.signal)
    return 0 if result.step > 0 or result.total_steps == 0 else 1


def _self_train(args, rounds: int, cases, train_cfg, net_cfg, gmm_cfg, first, prog: str,
                should_stop: Optional[Callable[[], bool]] = None):
    """The ``--self-train-rounds`` after the first training (:mod:`CGCTraining.self_train`); returns the
    result that decides the exit code (the first training's if it stopped early, else the last round's)."""
    from CGCTraining import self_train
    from CGCTraining.data import discover_cases
    from CGCTraining.train import train
    if not self_train.finished(first):
        print(f"{prog}: self-training not started: the first training stopped at step {first.step} of "
              f"{first.total_steps}; continue it with --output-dir {args.output_dir} --resume", file=sys.stderr)
        return first
    self_train.require_passed(first.lesion_check, first.checkpoint)

    def train_round(k, run_dir, listing, init_from, resume):
        return train(discover_cases(listing, train_cfg.modalities), train_cfg, net_cfg, run_dir, gmm_config=gmm_cfg,
                     spacing_xyz=tuple(args.spacing) if args.spacing else None, resume=resume, device=args.device,
                     progress=args.progress, init_checkpoint=init_from, progress_stage=(k, rounds + 1),
                     overgrowth_ratio=args.overgrowth_ratio, should_stop=should_stop)

    quiet = args.progress == "none"
    result = self_train.run_rounds(rounds, args.output_dir, cases, train_cfg.modalities, train_round,
                                   device=args.device, volume=args.pseudo_volume,
                                   log=(lambda s: None) if quiet else
                                   (lambda s: print(s, file=sys.stderr, flush=True)))
    if self_train.finished(result) and not quiet:
        print(f"final model: {self_train.round_dir(args.output_dir, rounds) / 'last.pt'}", file=sys.stderr)
    return result


def _check_output_dir(output_dir: str | os.PathLike) -> None:
    """ValueError unless the run folder is (or can be made) a folder this process can write to, checked
    before any work with a real write (``os.access`` says yes for root on a read-only mount). Creates
    nothing that stays."""
    import tempfile
    out = Path(output_dir)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--output-dir {out} is a file, not a folder; give a folder for the run (a new one, or "
                         "the folder of a run to --resume)")
    probe = out.absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    if not probe.is_dir():
        raise ValueError(f"--output-dir {out}: {probe} is a file, not a folder; choose a folder you can write to")
    try:
        with tempfile.TemporaryFile(dir=probe, prefix=".cgc-write-test-"):
            pass
    except OSError as exc:
        raise ValueError(f"--output-dir {out}: the folder {probe} is not writable ({exc.strerror or exc}); choose a "
                         "folder you can write to") from None


#: A stop file written this long before the command started counts as left over from an earlier run.
#: The margin covers a Cancel pressed while the interpreter was still starting (the Slicer module writes
#: the file as soon as the child exists): that is a real request, and the run stops after one step.
STALE_STOP_FILE_S = 1.0


def _stop_file_check(stop_file: Optional[str], started: float) -> Optional[Callable[[], bool]]:
    """``should_stop`` for ``--stop-file`` (it carries a ``description`` that the final message quotes).
    ValueError when the file is already there from before this command: it would cut every new run to
    one step without saying why."""
    if not stop_file:
        return None
    path = Path(stop_file)
    try:
        mtime = path.stat().st_mtime
    except FileNotFoundError:
        mtime = None
    except OSError as exc:
        raise ValueError(f"--stop-file {path}: cannot be checked ({exc.strerror or exc}); give a path in a folder "
                         "this process can read") from None
    if mtime is not None and mtime < started - STALE_STOP_FILE_S:
        raise ValueError(f"--stop-file {path} exists already, probably left by an earlier cancel, and would stop this "
                         "run after its first step; delete it or give another path")

    def should_stop() -> bool:
        return path.exists()

    should_stop.description = f"the stop file {path} appeared"  # type: ignore[attr-defined]
    return should_stop


def _interrupted_message(exc: BaseException, output_dir: Optional[str]) -> str:
    """One line for Ctrl-C / a cancel: what happened, where the last checkpoint is, what to do next."""
    text = str(exc).strip() or "interrupted"
    if not output_dir:
        return f"{text}; nothing was written"
    last = Path(output_dir) / "last.pt"
    if not last.is_file():
        return (f"{text}; no checkpoint was written yet in {output_dir}: run the same command again (without "
                "--resume; the P maps already computed in its cache/ are reused)")
    try:
        from CGCLesionSegLib.checkpoint import read_checkpoint
        held = f" holds step {int(read_checkpoint(last)['step'])}"
    except Exception:  # the message must come out whatever the file holds
        held = " is the last checkpoint"
    return f"{text}; {last}{held}: continue with --output-dir {output_dir} --resume"


def _check_run_folder_outside_cases(output_dir, cases) -> None:
    """The run folder may not be the cases folder: its cache/ would be taken for a case by the next run.
    ValueError."""
    cases_dir = Path(cases).resolve()
    if not cases_dir.is_dir():
        return
    if Path(output_dir).resolve() == cases_dir:
        raise ValueError(f"--output-dir {output_dir} is the --cases folder {cases}; its cache/ would be taken for a "
                         "case. Choose a run folder outside the cases")


def _is_out_of_memory(exc: BaseException) -> bool:
    import torch
    oom = getattr(torch, "OutOfMemoryError", None) or getattr(torch.cuda, "OutOfMemoryError", ())
    return isinstance(exc, oom) or "out of memory" in str(exc).lower()


def _oom_advice(args) -> str:
    crop = " ".join(str(max(8, c // 16 * 8) if i < 2 else c) for i, c in enumerate(args.crop))  # x, y halved, multiples of 8
    return (f"Use a smaller --crop (e.g. {crop}) or --batch-size, or fewer --widths; the last checkpoint in "
            f"{args.output_dir} is intact and --resume continues it with the same settings, so a smaller "
            "crop needs a new --output-dir")


if __name__ == "__main__":
    sys.exit(main())
