"""Per-case adaptation (``cgcseg segment --adapt``): for users with no suitable model.

Computes P for this one case with the GMM stage, then trains the CGC network on random crops of this
case for a bounded time — fine-tuning the base model (``--model``, else the shipped default for these
modalities) or, when none exists for the inputs, training the default architecture from scratch.
The adapted checkpoint is an ordinary CGC checkpoint: preprocessing, GMM settings and spacing are
taken from the base model, so inference reproduces them. Training happens in a temporary run folder;
nothing is written beside the inputs.

Choice (the paper trains on a cohort; adaptation is our addition): fine-tuning keeps the base
model's learning rate scale small (1e-4, the paper's) because it starts from a converged state; from
scratch uses 1e-3 because a per-case budget is minutes, not 400 epochs.
"""
from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

from .inputs import order_inputs
from .progress import Cancelled


class StoppedBySignal(Cancelled):
    """Adaptation was stopped by SIGTERM/SIGINT: nothing may be segmented with the half-adapted model.
    ``exit_code`` is 128 + the signal number (143 for SIGTERM, 130 for SIGINT)."""

    def __init__(self, signum: int) -> None:
        import signal
        name = signal.Signals(signum).name
        super().__init__(f"stopped by {name} during --adapt; nothing was segmented or written")
        self.exit_code = 128 + int(signum)


@dataclass(frozen=True)
class AdaptConfig:
    """``minutes``: wall-clock budget; ``steps``: optional step budget (whichever comes first).
    ``crop_xyz``: training crop (x y z, multiples of 8). ``lr``: None → 1e-4 when fine-tuning, 1e-3
    from scratch. ``spacing_xyz`` only matters from scratch (default 1.5 mm isotropic, the FLAIR
    shipped model's; the four-channel one is at 2 mm); a base model brings its own."""

    minutes: float = 5.0
    steps: Optional[int] = None
    crop_xyz: tuple[int, int, int] = (96, 96, 64)
    lr: Optional[float] = None
    batch_size: int = 2
    device: str = "auto"
    seed: int = 0
    spacing_xyz: tuple[float, float, float] = (1.5, 1.5, 1.5)

    def __post_init__(self) -> None:
        if not self.minutes > 0:
            raise ValueError(f"adaptation minutes must be > 0, got {self.minutes}")
        if self.steps is not None and self.steps < 1:
            raise ValueError(f"adaptation steps must be >= 1, got {self.steps}")
        if any(int(v) % 8 or int(v) < 16 for v in self.crop_xyz):
            raise ValueError(f"adaptation crop must be multiples of 8 and >= 16, got {self.crop_xyz}")


#: Said when ``--adapt`` would fine-tune a shipped model. Measured on held-out cases
#: (``benchmarks/evaluate_adapt_heldout.py``, docs/BENCHMARKS.md ``adapt-heldout``, declared before its run):
#: cgc-v32's fold ensembles of the shipped recipe, 50 steps, the default output 0.867 -> 0.853 over 7 cases
#: (CI [-0.025, -0.002], lower on 5). In-sample (``adapt``) it lost more: 0.764 -> 0.739 (four-channel) and
#: 0.765 -> 0.724 (FLAIR) on 2 cases each. Adaptation trains toward the case's own GMM map, the target the
#: shipped models' second round moved away from.
SHIPPED_BASE_NOTE = ("--adapt fine-tunes the shipped model for these inputs toward this case's own GMM map; "
                     "measured on 7 held-out cases with models of the shipped recipe, that lowered the default "
                     "output's Dice from 0.867 to 0.853 (lower on 5 of 7; docs/BENCHMARKS.md 'adapt-heldout'). It is "
                     "meant for inputs no shipped model fits; without --adapt the shipped model is used as it is")


def shipped_base_note(names: Sequence[Optional[str]], base_model: Optional[str | Path]) -> Optional[str]:
    """What ``--adapt`` should say first, or None: :data:`SHIPPED_BASE_NOTE` when it would fine-tune a shipped
    model (``base_model`` None and one fits ``names``, or ``base_model`` is a shipped file); when it would
    train from scratch although a shipped model fits a subset of the inputs, that model (far better where
    measured: ~0.86 held out against 0.46 for 2 minutes from scratch, docs/BENCHMARKS.md)."""
    from .default_models import available_default_models, default_model_path, subset_default_model, subset_hint
    if base_model is None:
        try:
            default_model_path(list(names))
        except ValueError:
            best = subset_default_model(names)
            if best is None:
                return None
            return (f"{subset_hint(best)} The shipped models' default output scored ~0.86 Dice on held-out cases "
                    "(protocols cgc-v29 and cgc-v44), --adapt from scratch 0.46 on 2 cases (docs/BENCHMARKS.md 'adapt'). Training "
                    "from scratch on this case now, as asked")
        return SHIPPED_BASE_NOTE
    shipped = {p.resolve() for p in available_default_models().values()}
    return SHIPPED_BASE_NOTE if Path(base_model).resolve() in shipped else None


def adapt_to_case(pairs: Sequence[tuple[Optional[str], str]], mask_path: Optional[str],
                  base_model: Optional[str | Path], config: AdaptConfig = AdaptConfig(),
                  run_dir: Optional[str | Path] = None, progress: str = "bar") -> Path:
    """Train on one case (``pairs`` = ``[(modality or None, path)]``); returns the adapted checkpoint.

    ``run_dir``: where the temporary run lives (default: a new system temp folder; the caller owns
    and removes it)."""
    from CGCTraining.config import TrainConfig
    from CGCTraining.data import CaseSpec
    from CGCTraining.train import train

    from .checkpoint import info_from_dict, read_checkpoint
    from .default_models import default_model_path
    from .gmm import GMMConfig, config_from_dict as gmm_from_dict
    from .network import NetConfig
    from .preprocess import NormalizationConfig
    from .config import config_from_dict

    names = [n for n, _ in pairs]
    base_path: Optional[Path] = Path(base_model) if base_model else None
    if base_path is None:
        try:
            base_path = default_model_path(names)
        except ValueError:
            base_path = None  # no shipped model for these inputs: train from scratch
    if base_path is not None:
        # a seed ensemble (either shipped model) is fine-tuned from its first network (train's --init-from)
        info = info_from_dict(read_checkpoint(base_path), base_path)
        modalities = list(info.channels)
        net_config = info.net_config
        pre = info.preprocessing
        gmm_config = gmm_from_dict(pre["gmm"]) if pre.get("gmm") else GMMConfig()
        normalization = config_from_dict(NormalizationConfig, pre["normalization"]) if pre.get("normalization") else NormalizationConfig()
        spacing = pre.get("spacing_xyz")
        lr = config.lr if config.lr is not None else 1e-4
    else:
        if any(n is None for n in names):
            raise ValueError("--adapt without a model for these inputs trains from scratch and needs named inputs "
                             "(e.g. --input flair=F.nii.gz)")
        modalities = list(names)
        net_config = NetConfig(in_channels=len(modalities))
        gmm_config = GMMConfig()
        normalization = NormalizationConfig()
        spacing = list(config.spacing_xyz)
        lr = config.lr if config.lr is not None else 1e-3
    paths = order_inputs(pairs, modalities)
    case = CaseSpec(name="adapt_case", images=dict(zip(modalities, paths)), mask=mask_path)
    run = Path(run_dir) if run_dir is not None else Path(tempfile.mkdtemp(prefix="cgc-adapt-"))
    train_cfg = TrainConfig(modalities=tuple(modalities), crop_xyz=tuple(config.crop_xyz), batch_size=config.batch_size,
                            lr=lr, epochs=None, steps=config.steps or 1_000_000, max_minutes=config.minutes,
                            seed=config.seed, workers=0, checkpoint_every=1_000_000)
    result = train([case], train_cfg, net_config, run, gmm_config=gmm_config, normalization=normalization,
                   spacing_xyz=spacing, device=config.device, progress=progress, init_checkpoint=base_path,
                   resume_hint=False)  # its run folder is temporary: `cgcseg segment` has nothing to resume
    if getattr(result, "signal", None) is not None:
        raise StoppedBySignal(result.signal)
    return Path(result.checkpoint)
