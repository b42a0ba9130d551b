"""Whole-case CGC inference: preprocessing from the checkpoint, resampling to the model's spacing,
sliding-window prediction over the brain's bounding box, and outputs back on the input grid.

Arrays are ``(z, y, x)``; the network sees ``(B, C, Z, Y, X)`` tensors.
"""
from __future__ import annotations

import itertools
import time
from dataclasses import dataclass, field, replace as _replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch

from .config import config_from_dict, xyz_to_zyx
from .image_io import Geometry
from .network import logit_of_mean_probability
from .preprocess import NormalizationConfig, normalize_channels, validate_channels
from .progress import ProgressCallback, StopCallback, call_progress, check_stop
from .resample import check_work_grid, grid_for_spacing, resample_to_grid, same_spacing
from .sliding_window import brain_bounding_box, sliding_window_probability


@dataclass(frozen=True)
class InferenceConfig:
    """Settings of one inference run.

    ``window_xyz`` None (the default) means the **training crop recorded in the checkpoint**, tiled
    with ``overlap`` and Gaussian blending (``sigma_scale`` × window). The network is fully
    convolutional, but it uses instance normalisation and a receptive field of ~150 voxels: on a
    window much larger than its training crop the normalisation statistics and the context differ
    from what it learned (measured: the shipped models scored 0.670 / 0.699 Dice on their training
    cases with one 160×192×160 window and 0.726 / 0.733 with 96×96×64 windows). A checkpoint without
    a recorded crop falls back to :data:`LEGACY_WINDOW_XYZ`. An explicit ``window_xyz`` overrides.
    ``overlap`` 0.5 (every voxel inside the volume is seen by up to 8 windows): the Gaussian weights
    of neighbouring windows then cross well above their floor, so there are no seams.

    ``pad_to_window``: where the brain's box is smaller than the window along an axis (at 2 mm a
    brain is ~75 voxels wide against a 96-voxel crop), zero-pad it to the window as training pads a
    case smaller than its crop, instead of shrinking the window. Off by default: it is an inference
    rule under test (docs/protocols/cgc-v6.toml), not yet a measured improvement.

    ``mirror_axes``: test-time mirroring. The network's map is the mean of its probabilities over every
    combination of flips along these axes (``("x",)``: 2 passes; ``("x", "y", "z")``: 8), each flipped
    back before averaging. Axes are those of the network's voxel order (the model's training
    orientation, LPS for our models: x is left-right). Training flips every axis at random, so each
    pass is an input the network was trained for; the mean removes the part of its output that depends
    on the side a structure lies on. Probabilities are averaged (not logits), so a single confident
    pass cannot outvote the others. Empty by default: on cgc-v5's 2 mm models it changed the mean
    held-out Dice by −0.002 (x) / −0.001 (x, y, z) (docs/protocols/cgc-v8.toml, screen).

    ``gmm_weight`` w > 0 thresholds the fused map ``(1 − w)·CGC + w·P`` instead of the CGC map alone
    (P: the GMM map of the model's own GMM settings). The two err differently — P misses lesion that
    is not the brightest in FLAIR, the network extends into regions where its training targets leaked
    — so their mean is the safer estimate; see :data:`OUTPUT_PRESETS`.

    ``fusion_map``: which P the fused map takes. ``"model"`` (the default): the map of the GMM settings
    the model was trained with (for the shipped models the paper's configuration: K = 4, brightest
    component). ``"recommended"``: the recommended preset's map (:func:`gmm.recommended_config`: FLAIR,
    K = 4..8 averaged, components >= 1 SD above the brain average), i.e. the very map ``cgcseg gmm``
    thresholds by default, so the output rule is ``cgcseg gmm``'s default output with the network
    added. MRI models only (that preset was chosen on MRI tumours). Costs one more GMM fit per case.

    ``lesion_choice``: which components ``keep_largest`` keeps. ``"size"`` (the default): the largest
    (after the opening). ``"network"``: those holding the most voxels where the network's own map is
    >= 0.5 (:data:`NETWORK_VOTE`, its operating point whatever ``threshold`` the output uses), size
    breaking ties; with no such voxel in any component it is the largest again. Why: the fused map
    thresholds ``(CGC + P) / 2``, so where P leaks widely (a bias field plus noise on a clinical FLAIR)
    a large region that P alone marks passes 0.5 and outranks the tumour by size, while the network
    marks the tumour; the network's votes pick the lesion without any new parameter. Under test
    (docs/protocols/README.md, "lesion-choice-v1"): not a measured improvement yet.
    ``"core"``: those holding the most voxels where the thresholded map itself (the fused map) is
    >= 0.5 (:data:`CORE_VOTE`), size breaking ties — hysteresis: the lesion is chosen where the map is
    confident, at the rules' standard 0.5, and delineated at ``threshold``. Why: at the shipped 0.3 a
    wide, lukewarm region (P under a bias field: fused values 0.3-0.5) can merge with the tumour and,
    after the opening, outrank it by size, though few of its voxels reach 0.5. At ``threshold`` 0.5 it
    ranks as ``"size"`` up to filled holes. ``single-lesion-recommended`` used it from protocol hysteresis-v1's
    confirmation (on held-out fold models under nine preprocessing shifts it changed 2 of 126 (shift, case)
    pairs, both up, and none down) until hysteresis-v2's.
    ``"seed"``: the component(s) holding the most voxels of the lesion that the same rule keeps at 0.5
    (:data:`CORE_VOTE`; its choice there is by size), size breaking ties — classic hysteresis: the lesion is
    chosen as at 0.5 and delineated at ``threshold``. Why "core" is not enough: under a bias field the
    lukewarm region at 0.3 also holds many small islands >= 0.5 that the opening at 0.5 keeps apart but the
    region at 0.3 joins, so their sum outranks the tumour's core although at 0.5 the tumour is the largest
    object (traced, docs/protocols/README.md "hysteresis-v2"). At ``threshold`` >= 0.5 it is ``"size"``.
    ``single-lesion-recommended`` (the shipped models' rule) uses it since protocol hysteresis-v2 was confirmed
    (docs/protocols/README.md: on held-out fold models no one had scored, nine preprocessing shifts, both
    model sets, it changed 2 of 126 (shift, case) pairs against ``"core"``, both up, and none down).
    """

    window_xyz: Optional[tuple[int, int, int]] = None
    overlap: float = 0.5
    batch_size: int = 1
    sigma_scale: float = 0.125
    threshold: float = 0.5
    min_component_voxels: int = 0
    fill_holes: bool | str = False
    keep_largest: int = 0
    opening_radius: float = 0  # mm on the image's grid (voxels of a 1 mm grid), see postprocess.open_and_keep
    gmm_weight: float = 0.0
    device: str = "auto"
    amp: bool = True
    margin_voxels: int = 4
    pad_to_window: bool = False
    mirror_axes: tuple[str, ...] = ()
    fusion_map: str = "model"
    lesion_choice: str = "size"

    def __post_init__(self) -> None:
        axes = tuple(str(a).lower() for a in self.mirror_axes)
        if any(a not in MIRROR_AXES for a in axes) or len(set(axes)) != len(axes):
            raise ValueError(f"mirror_axes must name distinct axes among x, y, z, got {self.mirror_axes!r}")
        object.__setattr__(self, "mirror_axes", tuple(sorted(axes, key="xyz".index)))
        if self.window_xyz is not None:
            if len(self.window_xyz) != 3 or any(int(w) < 8 for w in self.window_xyz):
                raise ValueError(f"window_xyz must be three sizes >= 8, got {self.window_xyz}")
            object.__setattr__(self, "window_xyz", tuple(int(w) for w in self.window_xyz))
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {self.batch_size}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if self.min_component_voxels < 0 or self.keep_largest < 0 or self.opening_radius < 0:
            raise ValueError("min_component_voxels, keep_largest and opening_radius must be >= 0, got "
                             f"{self.min_component_voxels}, {self.keep_largest}, {self.opening_radius}")
        if self.opening_radius and not self.keep_largest:
            raise ValueError("opening_radius ranks components for keep_largest; set keep_largest too")
        if self.fill_holes not in (False, True, "2d", "3d"):
            raise ValueError(f"fill_holes must be False, True, '2d' or '3d', got {self.fill_holes!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ValueError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not 0.0 <= self.gmm_weight < 1.0:
            raise ValueError(f"gmm_weight must be in [0, 1), got {self.gmm_weight}")
        if self.fusion_map not in FUSION_MAPS:
            raise ValueError(f"fusion_map must be one of {', '.join(FUSION_MAPS)}, got {self.fusion_map!r}")
        if self.lesion_choice not in LESION_CHOICES:
            raise ValueError(f"lesion_choice must be one of {', '.join(LESION_CHOICES)}, got {self.lesion_choice!r}")
        if self.lesion_choice != "size" and not self.keep_largest:
            raise ValueError("lesion_choice ranks components for keep_largest; set keep_largest too")


#: Values of :attr:`InferenceConfig.fusion_map`.
FUSION_MAPS = ("model", "recommended")
#: Values of :attr:`InferenceConfig.lesion_choice`.
LESION_CHOICES = ("size", "network", "core", "seed")
#: Where the network's own map votes for a component under ``lesion_choice="network"``.
NETWORK_VOTE = 0.5
#: Where the fused map votes for a component under ``lesion_choice="core"``; the threshold at which
#: ``lesion_choice="seed"`` chooses the lesion it then delineates.
CORE_VOTE = 0.5
#: Axis name -> dimension of a ``(B, C, Z, Y, X)`` batch.
MIRROR_AXES = {"x": 4, "y": 3, "z": 2}


def mirrored(predict: Callable[[torch.Tensor], torch.Tensor], axes: Sequence[str]) -> Callable[[torch.Tensor], torch.Tensor]:
    """``predict`` (``(B, C, Z, Y, X)`` → ``(B, 1, Z, Y, X)`` logits) averaged over every combination of
    flips along ``axes`` (see :class:`InferenceConfig`); returns logits of the mean probability, so the
    sliding window's sigmoid gives that mean back (to within float32 rounding near 0 and 1)."""
    dims = [MIRROR_AXES[a] for a in axes]
    if not dims:
        return predict
    flips = [tuple(d for d, on in zip(dims, bits) if on) for bits in itertools.product((0, 1), repeat=len(dims))]

    def predict_mirrored(batch: torch.Tensor) -> torch.Tensor:
        return logit_of_mean_probability((predict(batch.flip(f)).flip(f) if f else predict(batch)) for f in flips)

    return predict_mirrored


#: Window of checkpoints that record no training crop (x, y, z): one window over a typical adult
#: brain at 1 mm, as inference ran before the window followed the training crop.
LEGACY_WINDOW_XYZ: tuple[int, int, int] = (160, 192, 160)


def window_for_checkpoint(config: InferenceConfig, train_config: Optional[dict]) -> tuple[int, int, int]:
    """The sliding-window size (x, y, z) for a model: ``config.window_xyz`` when given, else the
    training crop recorded in ``train_config`` (``crop_xyz``), else :data:`LEGACY_WINDOW_XYZ`."""
    if config.window_xyz is not None:
        return tuple(config.window_xyz)  # type: ignore[return-value]
    crop = (train_config or {}).get("crop_xyz")
    if crop is not None and len(crop) == 3 and all(isinstance(c, (int, float)) and int(c) >= 8 for c in crop):
        return tuple(int(c) for c in crop)  # type: ignore[return-value]
    return LEGACY_WINDOW_XYZ


# Output rules, selectable by name (``cgcseg segment --postprocess NAME``).
#  * ``none``: the paper's output, CGC probability ≥ threshold, nothing else.
#  * ``single-lesion``: for one contiguous lesion per scan (gliomas, the shipped BraTS models): the
#    fused map 0.5·CGC + 0.5·P, 2-D hole filling, and the largest lesion after an opening of radius 3 mm
#    (the GMM's recommended clean-up, docs/GMM.md). Fixed before the leave-cases-out run, from the
#    shipped model's in-sample numbers (docs/BENCHMARKS.md); wrong for multi-focal disease (MS).
#  * ``single-lesion-recommended``: the same with P from the recommended GMM preset (``fusion_map``),
#    i.e. ``cgcseg gmm``'s default output with the network fused in; protocol cgc-v11
#    (docs/protocols/cgc-v11.toml) measures it on held-out cases. MRI models only. Its lesion is the
#    component holding the lesion the same rule keeps at 0.5 (``lesion_choice="seed"``, protocol
#    hysteresis-v2: chosen as at 0.5, delineated at the threshold), which equals the largest one except where a
#    wide lukewarm region outgrows the tumour at a low threshold.
OUTPUT_PRESETS: dict[str, dict] = {
    "none": dict(gmm_weight=0.0, fill_holes=False, keep_largest=0, opening_radius=0, min_component_voxels=0,
                 fusion_map="model", lesion_choice="size"),
    "single-lesion": dict(gmm_weight=0.5, fill_holes="2d", keep_largest=1, opening_radius=3, min_component_voxels=0,
                          fusion_map="model", lesion_choice="size"),
    "single-lesion-recommended": dict(gmm_weight=0.5, fill_holes="2d", keep_largest=1, opening_radius=3,
                                      min_component_voxels=0, fusion_map="recommended", lesion_choice="seed"),
}


def output_preset(name: str) -> dict:
    """The :class:`InferenceConfig` fields of an output preset; unknown names list the known ones."""
    try:
        return dict(OUTPUT_PRESETS[name])
    except KeyError:
        raise ValueError(f"unknown output preset {name!r}; choose one of {', '.join(OUTPUT_PRESETS)}") from None


@dataclass
class SegmentationResult:
    """Outputs on the input grid: ``probability`` float32 and ``mask`` uint8 ``(z, y, x)``.
    ``probability`` is the map that was thresholded (the fused map when ``gmm_weight`` > 0)."""

    probability: np.ndarray
    mask: np.ndarray
    brain_mask: np.ndarray
    gmm_probability: Optional[np.ndarray]
    model_path: Path
    channels: list[str]
    device: str
    elapsed_s: float
    timings: dict = field(default_factory=dict)
    network_probability: Optional[np.ndarray] = None  # the CGC map alone, when it differs from ``probability``
    window_xyz: Optional[tuple] = None  # the sliding window that ran (x, y, z)
    removed_lesions: Optional[dict] = None  # with keep-largest: what it removed (postprocess.removed_components)


def resolve_device(name: str) -> torch.device:
    """``auto`` → CUDA when available, else CPU; ``cuda`` without a GPU is a clear error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but PyTorch sees no CUDA GPU; use --device cpu or auto")
    if name not in ("cpu", "cuda"):
        raise ValueError(f"device must be auto, cpu or cuda, got {name!r}")
    return torch.device(name)


def bf16_autocast_ok(device: torch.device) -> bool:
    """Whether bf16 autocast runs natively on ``device``: a CUDA GPU of compute capability 8.0 or newer
    (Ampere, Hopper, ...), or a ROCm GPU that PyTorch says supports bf16. Older GPUs (V100, T4, RTX 20xx)
    lack bf16 hardware, where autocast would be emulated or refused by cuDNN; they run float32 instead
    (fp16 would need loss scaling in training). Only the H200 (capability 9.0) has been run here."""
    if device.type != "cuda" or not torch.cuda.is_available():
        return False
    if getattr(torch.version, "hip", None):
        return bool(torch.cuda.is_bf16_supported())
    return torch.cuda.get_device_capability(device) >= (8, 0)


def order_channels(channels_zyx: Sequence[np.ndarray], names: Sequence[str | None] | None,
                   expected: Sequence[str]) -> list[np.ndarray]:
    """Put channels in the model's order. Named channels are matched by name; unnamed ones must be as
    many as the model expects. Errors list what the model expects."""
    from .inputs import order_inputs
    names = list(names) if names is not None else [None] * len(channels_zyx)
    if len(names) != len(channels_zyx):
        raise ValueError("one name per channel is needed (use None for unnamed channels)")
    index = order_inputs([(n, str(i)) for i, n in enumerate(names)], expected)
    return [channels_zyx[int(i)] for i in index]


def _brain_mask(channels: Sequence[np.ndarray], preprocessing: dict) -> np.ndarray:
    """The mask rule the model was trained with: voxels other than the fill value outside the brain
    (skull-stripped MRI; an image with no background raises ``ValueError``) or, for CT
    models, the GMM stage's HU window on the first channel."""
    if preprocessing.get("brain_mask") == "ct_window":
        from .gmm import ct_brain_mask
        window = tuple((preprocessing.get("gmm") or {}).get("ct_brain_hu", (0.0, 100.0)))
        return ct_brain_mask(channels[0], window)
    from .preprocess import skull_stripped_mask
    return skull_stripped_mask(channels)  # refused as `cgcseg gmm` refuses it: the network would segment the head


def predict_probability(model: torch.nn.Module, image_czyx: np.ndarray, config: InferenceConfig,
                        device: torch.device, progress: Optional[ProgressCallback] = None,
                        should_stop: Optional[StopCallback] = None,
                        window_xyz: Optional[Sequence[int]] = None) -> np.ndarray:
    """Network probability for a normalised ``(C, Z, Y, X)`` array; returns ``(Z, Y, X)`` float32.
    ``window_xyz``: the window to tile with (default ``config.window_xyz`` or the legacy window);
    ``config.mirror_axes`` averages each window over flips (:func:`mirrored`)."""
    window_xyz = tuple(window_xyz or config.window_xyz or LEGACY_WINDOW_XYZ)
    image = torch.from_numpy(np.ascontiguousarray(image_czyx)).to(device)
    use_amp = config.amp and bf16_autocast_ok(device)
    segment = getattr(model, "segment_logits", model)

    def predict(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device_type=device.type, dtype=torch.bfloat16, enabled=use_amp):
            return segment(batch)

    with torch.inference_mode():
        prob = sliding_window_probability(mirrored(predict, config.mirror_axes), image, xyz_to_zyx(window_xyz), config.overlap,
                                          config.batch_size, config.sigma_scale, progress, should_stop,
                                          pad_to_window=config.pad_to_window)
    return prob.float().cpu().numpy()


def output_mask(prob_zyx: np.ndarray, brain_zyx: np.ndarray, config: InferenceConfig,
                spacing_xyz: Optional[Sequence[float]] = None,
                network_zyx: Optional[np.ndarray] = None) -> np.ndarray:
    """The output rule of ``config`` (threshold and clean-up) on a ``(Z, Y, X)`` map already fused as
    wanted; uint8 ``(Z, Y, X)``, limited to ``brain_zyx``. ``spacing_xyz`` (mm) makes the opening
    radius millimetres (``cgcseg segment`` passes the image's); without it, voxels. ``network_zyx``: the
    network's own map, read by ``lesion_choice="network"`` (None: ``prob_zyx`` is the network's map);
    ``lesion_choice="core"`` and ``"seed"`` read ``prob_zyx`` itself."""
    from .postprocess import binarize
    votes = None
    if config.lesion_choice == "network" and config.keep_largest:
        votes = np.asarray(prob_zyx if network_zyx is None else network_zyx) >= NETWORK_VOTE
    elif config.lesion_choice == "core" and config.keep_largest:
        votes = np.asarray(prob_zyx) >= CORE_VOTE
    elif config.lesion_choice == "seed" and config.keep_largest and config.threshold < CORE_VOTE:
        # The lesion this rule keeps at 0.5 (ranked by size there) votes; at >= 0.5 the seed is the output itself.
        seed = _replace(config, threshold=CORE_VOTE, lesion_choice="size")
        votes = output_mask(prob_zyx, brain_zyx, seed, spacing_xyz).astype(bool)
    return binarize(prob_zyx, threshold=config.threshold, min_component_voxels=config.min_component_voxels,
                    fill_holes=config.fill_holes, keep_largest=config.keep_largest, mask_zyx=brain_zyx,
                    opening_radius=config.opening_radius, spacing_xyz=spacing_xyz, votes_zyx=votes)


def removed_by_rule(prob_zyx: np.ndarray, brain_zyx: np.ndarray, config: InferenceConfig, mask_zyx: np.ndarray,
                    spacing_xyz: Sequence[float]) -> Optional[dict]:
    """With ``config.keep_largest``: the lesion candidates the rule removed whole — the components of the
    same threshold, hole filling and minimum size without keep-largest that ``mask_zyx`` does not touch
    (:func:`CGCLesionSegLib.postprocess.removed_components`). None without keep-largest."""
    if not config.keep_largest:
        return None
    from .postprocess import removed_by_keep_largest
    return removed_by_keep_largest(prob_zyx, mask_zyx, spacing_xyz, threshold=config.threshold,
                                   min_component_voxels=config.min_component_voxels, fill_holes=config.fill_holes,
                                   mask_zyx=brain_zyx)


def _is_recommended(preprocessing: dict) -> bool:
    """True when the model's own GMM settings are the recommended preset (its P is then P_rec already)."""
    from .gmm import GMMConfig, recommended_config
    gmm = preprocessing.get("gmm")
    return bool(gmm) and config_from_dict(GMMConfig, gmm) == recommended_config()


def _recommended_probability(channels: Sequence[np.ndarray], brain: np.ndarray, names: Sequence[str],
                             geometry: Geometry, preprocessing: dict, progress: Optional[ProgressCallback],
                             timings: dict) -> np.ndarray:
    """P of the recommended GMM preset (what ``cgcseg gmm`` thresholds by default) on ``channels``
    ``(Z, Y, X)`` in the model's channel order; ``(Z, Y, X)`` float32. Refused for CT models."""
    from .gmm import compute_probability_map, recommended_config
    if preprocessing.get("brain_mask") == "ct_window" or (preprocessing.get("gmm") or {}).get("modality") == "ct":
        raise ValueError("the output rule single-lesion-recommended fuses the recommended MRI GMM preset's map; "
                         "this is a CT model: use --postprocess single-lesion (its own GMM map) or none")
    call_progress(progress, 0.96, "GMM map of the recommended preset")
    t = time.perf_counter()
    p = compute_probability_map(list(channels), brain, recommended_config(), names=list(names),
                                spacing_xyz=geometry.spacing).probability
    timings["gmm_recommended_s"] = time.perf_counter() - t
    return np.asarray(p, np.float32)


def segment_case(channels_zyx: Sequence[np.ndarray], geometry: Geometry,
                 modalities: Sequence[str | None] | None = None, model_path: str | Path | None = None,
                 mask_zyx: np.ndarray | None = None, config: InferenceConfig = InferenceConfig(),
                 progress: Optional[ProgressCallback] = None, should_stop: Optional[StopCallback] = None,
                 compute_gmm: bool = True, model: torch.nn.Module | None = None, info=None,
                 gmm_probability_zyx: np.ndarray | None = None) -> SegmentationResult:
    """Segment one case with a CGC checkpoint (``model_path``; None → the shipped default for
    ``modalities``). Preprocessing (channel order, normalisation, spacing, GMM settings) comes from the
    checkpoint. ``model``/``info`` may be passed pre-loaded (cohort mode; a model on another device type than
    ``config.device`` is moved there in place); ``gmm_probability_zyx`` is a
    P already computed with the model's GMM settings on this grid (used instead of a new fit). Nothing
    is written here."""
    from .checkpoint import load_checkpoint
    from .default_models import default_model_path

    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    device = resolve_device(config.device)
    if model is None:
        model_path = Path(model_path) if model_path is not None else default_model_path(
            list(modalities) if modalities is not None else [None] * len(channels_zyx))
        call_progress(progress, 0.0, f"loading model {model_path.name}")
        model, info = load_checkpoint(model_path, device=str(device))
    # A pre-loaded model runs where config.device says: callers load on the CPU by default (the
    # self-training round's pseudo-labels did, and crashed under --device cuda). Module.to moves it in
    # place; a model already on a GPU stays on its own (torchrun ranks place theirs).
    param = next(model.parameters(), None)
    if param is not None and param.device.type != device.type:
        model.to(device)
    model.eval()
    expected = list(info.channels)
    channels = order_channels(channels_zyx, modalities, expected)
    validate_channels(channels, expected)
    for ch in channels:
        if ch.shape != tuple(geometry.shape_zyx):
            raise ValueError(f"channel shape {ch.shape} does not match the geometry {geometry.shape_zyx}")
    # One voxel order for the GMM and the network: the orientation the model was trained in (axes
    # permuted/flipped exactly); every result is mapped back to the input's storage order at the end.
    from .checkpoint import model_orientation
    from .orientation import Reorientation
    turn = Reorientation(geometry, model_orientation(info))
    if turn.active:
        channels = [turn.forward(c) for c in channels]
        if mask_zyx is not None:
            if np.shape(mask_zyx) != tuple(geometry.shape_zyx):
                raise ValueError(f"mask shape {np.shape(mask_zyx)} does not match the image shape {geometry.shape_zyx}")
            mask_zyx = turn.forward(np.asarray(mask_zyx) != 0)
        if gmm_probability_zyx is not None:
            if np.shape(gmm_probability_zyx) != tuple(geometry.shape_zyx):
                raise ValueError(f"GMM map shape {np.shape(gmm_probability_zyx)} does not match the image {geometry.shape_zyx}")
            gmm_probability_zyx = turn.forward(np.asarray(gmm_probability_zyx, np.float32))
        geometry = turn.geometry
    pre = dict(info.preprocessing or {})
    brain = _brain_mask(channels, pre) if mask_zyx is None else np.asarray(mask_zyx) != 0
    if mask_zyx is not None and brain.shape != tuple(geometry.shape_zyx):
        raise ValueError(f"mask shape {brain.shape} does not match the image shape {geometry.shape_zyx}")
    if mask_zyx is not None:
        from .preprocess import check_given_mask
        check_given_mask(brain, channels[0])
    if not brain.any():
        raise ValueError("the brain mask is empty: give a mask with non-zero brain voxels (--mask)")
    check_stop(should_stop)

    gmm_probability = None
    if gmm_probability_zyx is not None:
        if gmm_probability_zyx.shape != tuple(geometry.shape_zyx):
            raise ValueError(f"GMM map shape {gmm_probability_zyx.shape} does not match the image {geometry.shape_zyx}")
        gmm_probability = np.asarray(gmm_probability_zyx, np.float32)
    elif compute_gmm or (config.gmm_weight > 0 and config.fusion_map == "model"):
        from .gmm import GMMConfig, compute_probability_map
        gmm_cfg = config_from_dict(GMMConfig, pre["gmm"]) if pre.get("gmm") else GMMConfig()
        call_progress(progress, 0.01, "GMM map P")
        t = time.perf_counter()
        gmm_probability = compute_probability_map(channels, brain, gmm_cfg, names=expected,
                                                  spacing_xyz=geometry.spacing).probability
        timings["gmm_s"] = time.perf_counter() - t

    # Resample to the model's spacing when the input differs (e.g. 5 mm clinical FLAIR).
    call_progress(progress, 0.03, "preparing the network input")
    t = time.perf_counter()
    spacing = pre.get("spacing_xyz")
    work_geometry, work_channels, work_brain = geometry, channels, brain
    if spacing is not None and not same_spacing(geometry.spacing, spacing):
        work_geometry = grid_for_spacing(geometry, spacing)
        check_work_grid(geometry, work_geometry)  # before allocating it: a wrong header spacing is one clear error
        work_channels = [resample_to_grid(c, geometry, work_geometry, "linear") for c in channels]
        work_brain = resample_to_grid(brain.astype(np.uint8), geometry, work_geometry, "nearest") > 0
        if not work_brain.any():
            raise ValueError(f"the brain mask vanished after resampling to the model spacing "
                             f"{'×'.join(f'{v:g}' for v in spacing)} mm (grid {'×'.join(map(str, work_geometry.shape_xyz))}); "
                             "check the mask and the spacing in the image header")
    norm_cfg = config_from_dict(NormalizationConfig, pre["normalization"]) if pre.get("normalization") else NormalizationConfig()
    image = normalize_channels(work_channels, work_brain, norm_cfg)
    box = brain_bounding_box(work_brain, config.margin_voxels)
    timings["preprocess_s"] = time.perf_counter() - t
    check_stop(should_stop)

    t = time.perf_counter()
    sub = lambda f, m: progress(0.05 + 0.9 * f, m) if progress else None
    window = window_for_checkpoint(config, getattr(info, "train_config", None))
    prob_box = predict_probability(model, image[(slice(None),) + box], config, device, sub, should_stop, window)
    timings["network_s"] = time.perf_counter() - t
    prob = np.zeros(work_brain.shape, np.float32)
    prob[box] = prob_box
    prob[~work_brain] = 0.0
    if work_geometry is not geometry:
        prob = np.clip(resample_to_grid(prob, work_geometry, geometry, "linear"), 0.0, 1.0)
        prob[~brain] = 0.0
    network_prob = None
    if config.gmm_weight > 0:
        network_prob = prob.astype(np.float32, copy=False)  # prob is rebound below, not modified
        fuse = gmm_probability
        if config.fusion_map == "recommended" and not (gmm_probability is not None and _is_recommended(pre)):
            fuse = _recommended_probability(channels, brain, expected, geometry, pre, progress, timings)
        prob = (1.0 - config.gmm_weight) * prob + config.gmm_weight * fuse
    mask = output_mask(prob, brain, config, geometry.spacing, network_prob)
    removed = removed_by_rule(prob, brain, config, mask, geometry.spacing)
    if turn.active:  # back to the input's own voxel order
        prob, mask, brain = turn.back(prob), turn.back(mask), turn.back(brain)
        gmm_probability, network_prob = turn.back(gmm_probability), turn.back(network_prob)
    call_progress(progress, 1.0, "done")
    return SegmentationResult(prob.astype(np.float32), mask.astype(np.uint8), brain, gmm_probability,
                              Path(model_path) if model_path is not None else Path(getattr(info, "path", "")),
                              expected, str(device), time.perf_counter() - t0, timings, network_prob, window,
                              removed)
