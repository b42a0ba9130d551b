"""``cgcseg demo``: the whole pipeline on a generated phantom (no data needed) or on one case.

    cgcseg demo --output-dir DIR                       # phantom → GMM → CGC → mask → overview.png
    cgcseg demo --output-dir DIR --input flair=F.nii.gz --input t1=T1.nii.gz ... [--reference SEG]

Without --input, a four-channel brain MRI phantom (FLAIR, T1, T1ce, T2; 128×128×80 voxels at
1.5 mm, one irregular glioma-like lesion, Rician noise at SNR 20) is generated into DIR/phantom/ in
BraTS layout, with its ground truth (phantom_seg.nii.gz). Then:

1. GMM stage: the foreground probability map P (GMM settings from the CGC model when one is used,
   else the defaults) and its binary mask (P >= --threshold);
2. CGC stage: the network refines P into the final segmentation, with --model or the model shipped
   for these modalities. When no model is available the demo says so and the GMM mask is the
   segmentation (the summary and the sidecars name the stage that produced it);
3. outputs in DIR: segmentation.nii.gz, probability.nii.gz, gmm_probability.nii.gz (each with a
   .json sidecar), overview.png (axial slices with the contours) and a printed summary with the
   Dice against the ground truth when there is one (the phantom's, or --reference).
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Optional, Sequence

from . import add_device_args, add_input_args, add_output_rule_arg, add_progress_args
from .segment import resolve_postprocess

DESCRIPTION = __doc__

OUTPUT_NAMES = ("segmentation.nii.gz", "probability.nii.gz", "gmm_probability.nii.gz", "overview.png")
#: Lists every file the demo wrote in DIR; the next demo in DIR removes those files (and nothing else)
#: first, so a phantom's files do not stay beside a real case's outputs.
MANIFEST = "demo-manifest.json"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--output-dir", required=True, metavar="DIR", help="folder for the outputs (created if needed)")
    add_input_args(p, required=False)
    p.add_argument("--reference", metavar="SEG", help="reference labels of the given case (label > 0 = lesion) to "
                   "report Dice; the phantom's ground truth is used automatically")
    p.add_argument("--seed", type=int, default=0, help="phantom seed (default 0; same seed, same phantom)")
    p.add_argument("--model", metavar="CKPT", help="CGC checkpoint (default: the model shipped for these modalities)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold of the masks (default: 0.5 for the GMM mask; for the CGC stage the "
                        "threshold its model records for its own output rule, as in `cgcseg segment`, else 0.5)")
    add_output_rule_arg(p, "output rule of the CGC stage, as in `cgcseg segment` (auto: single-lesion with the "
                           "shipped models, none with --model)")
    p.add_argument("--slices", type=int, default=4, metavar="N", help="axial slices in overview.png (default 4)")
    p.add_argument("--overview-gmm", action="store_true",
                   help="also draw the GMM mask's contour in overview.png (off by default: its speckle hides the result)")
    p.add_argument("--strict", action="store_true",
                   help="refuse inputs that may be swapped or misnamed (file name or intensity signature "
                        "contradicts the --input name); without it they get a warning")
    add_device_args(p)
    add_progress_args(p)


# ------------------------------------------------------------------------------------------ stages
def _load_cgc(model_path: Optional[str], names: Sequence[Optional[str]], device: str):
    """Load the CGC model: ``(model, info, path, None)``, or ``(None, None, None, reason)`` when no
    model is available for these inputs. An explicit ``--model`` that cannot be loaded is an error."""
    try:
        from ..inference import resolve_device
        from ..checkpoint import load_checkpoint
        from ..default_models import default_model_path
    except ImportError as exc:  # pragma: no cover - the inference stack is part of the package
        return None, None, None, f"the CGC inference stack could not be imported ({exc})"
    if model_path is None:
        try:
            path = default_model_path(list(names))
        except ValueError as exc:
            # No model for all the given channels: a FLAIR-only model still runs on the FLAIR channel.
            try:
                if "flair" not in names or len(names) == 1:
                    raise exc
                path = default_model_path(["flair"])
            except ValueError:
                return None, None, None, str(exc)
    else:
        path = Path(model_path)
        if not path.is_file():
            raise FileNotFoundError(f"--model file not found: {path}")
    model, info = load_checkpoint(path, device=str(resolve_device(device)))
    return model, info, Path(path), None


def _run_cgc(channels_zyx: list, geometry, modalities: Sequence[Optional[str]], model_path: Path,
             mask_zyx, *, config, gmm_probability=None, model=None, info=None, progress=None,
             should_stop=None):
    """The CGC network stage: ``segment_case`` of :mod:`CGCLesionSegLib.inference` on this case.

    ``channels_zyx``: (z, y, x) arrays named by ``modalities`` (None = unnamed, taken in order).
    The GMM map P (model's settings) is computed before this call and passed for the output rule's
    fusion. Returns the ``SegmentationResult`` (``probability`` float32 and ``mask`` uint8, (z, y, x)).
    """
    from ..inference import segment_case
    return segment_case(channels_zyx, geometry, list(modalities), model_path=model_path, mask_zyx=mask_zyx,
                        config=config, progress=progress, should_stop=should_stop, compute_gmm=False,
                        model=model, info=info, gmm_probability_zyx=gmm_probability)


def _channels_for_model(channels: list, names: Sequence[Optional[str]], expected: Sequence[str]):
    """When every input is named and the model needs a subset of them (e.g. a FLAIR-only model on the
    four-channel phantom), pass just that subset; otherwise pass all and let the model check them."""
    if all(n is not None for n in names) and set(expected) < set(names):
        keep = [i for i, n in enumerate(names) if n in expected]
        return [channels[i] for i in keep], [names[i] for i in keep]
    return list(channels), list(names)


def _gmm_config(info):
    from ..config import config_from_dict
    from ..gmm import GMMConfig
    pre = dict(getattr(info, "preprocessing", None) or {})
    return config_from_dict(GMMConfig, pre["gmm"]) if pre.get("gmm") else GMMConfig()


# ------------------------------------------------------------------------------------------ inputs
def _phantom_case(out_dir: Path, seed: int, progress) -> dict[str, Any]:
    from ..phantom import make_phantom, save_phantom
    t0 = time.perf_counter()
    progress(0.02, "generating the phantom")
    ph = make_phantom(seed=seed)
    progress(0.10, "writing the phantom")
    paths = save_phantom(ph, out_dir / "phantom", "phantom")
    return {"channels": ph.channel_list(), "names": list(ph.modalities), "geometry": ph.geometry,
            "mask": ph.brain_mask, "reference": ph.labels > 0, "source": "phantom",
            "inputs": {m: str(paths[m]) for m in ph.modalities},
            "reference_path": str(paths["seg"]), "phantom": {"seed": seed, "case_dir": str(paths["case_dir"]),
                                                             "params": ph.params},
            "written": [str(v) for k, v in paths.items() if k != "case_dir"],
            "elapsed_s": time.perf_counter() - t0}


def _given_case(args, progress) -> dict[str, Any]:
    from ..image_io import check_same_grid, read_image
    from ..inputs import DEFAULT_ORDER, parse_input_specs
    t0 = time.perf_counter()
    specs = parse_input_specs(args.inputs)
    named = [n for n, _ in specs if n is not None]
    if named and len(named) != len(specs):
        raise ValueError("mix of named and unnamed inputs; name them all (e.g. --input flair=F.nii.gz)")
    if named:
        # The first channel is the GMM's reference: FLAIR first, then the documented order.
        rank = {m: i for i, m in enumerate(DEFAULT_ORDER)}
        specs = sorted(specs, key=lambda s: (rank.get(s[0], len(rank)), named.index(s[0])))
    progress(0.02, "reading the inputs")
    images = [read_image(p) for _, p in specs]
    ref_name = specs[0][0] or Path(specs[0][1]).name
    for (name, path), img in zip(specs[1:], images[1:]):
        check_same_grid(images[0].geometry, img.geometry, ref_name, name or Path(path).name)
    geometry = images[0].geometry
    mask = reference = None
    if args.mask:
        m = read_image(args.mask, dtype=None)
        check_same_grid(geometry, m.geometry, ref_name, "--mask")
        mask = m.array_zyx != 0
        if not mask.any():
            raise ValueError(f"the mask {args.mask} has no non-zero voxel")
    if args.reference:
        r = read_image(args.reference, dtype=None)
        check_same_grid(geometry, r.geometry, ref_name, "--reference")
        from .evaluate import check_reference_values
        check_reference_values(r.array_zyx, f"--reference {Path(args.reference).name}")
        reference = r.array_zyx > 0
    names = [n for n, _ in specs]
    return {"channels": [i.array_zyx for i in images], "names": names, "geometry": geometry, "mask": mask,
            "reference": reference, "source": "input",
            "inputs": {(n or f"input{i + 1}"): str(p) for i, (n, p) in enumerate(specs)},
            "reference_path": args.reference, "phantom": None, "elapsed_s": time.perf_counter() - t0}


# ------------------------------------------------------------------------------------------ main
def run(args: argparse.Namespace) -> int:
    import numpy as np

    from ..config import config_to_dict
    from ..gmm import compute_probability_map
    from ..image_io import write_image
    from ..metrics import dice, sensitivity
    from ..overview import write_overview
    from ..postprocess import binarize
    from ..progress import ProgressReporter, emit_json
    from ..sidecar import write_sidecar

    if args.threshold is not None and not 0.0 < args.threshold < 1.0:
        raise ValueError(f"--threshold must be in (0, 1), got {args.threshold}")
    if args.slices < 1:
        raise ValueError(f"--slices must be at least 1, got {args.slices}")
    if not args.inputs and (args.mask or args.reference):
        raise ValueError("--mask and --reference belong to --input; the phantom brings its own")
    out_dir = Path(args.output_dir)
    if args.inputs:  # the fixed output names must not be one of the given files
        from ..image_io import check_output_paths
        from ..inputs import parse_input_specs
        check_output_paths({f"output {n}": out_dir / n for n in OUTPUT_NAMES},
                           [p for _, p in parse_input_specs(args.inputs)] + [args.mask, args.reference], formats=None)
    from ..output_probe import probe_writable
    probe_writable({f"output {n}": out_dir / n for n in OUTPUT_NAMES + (MANIFEST,)})
    out_dir.mkdir(parents=True, exist_ok=True)
    removed = remove_previous_outputs(out_dir)
    t_start = time.perf_counter()
    reporter = ProgressReporter(args.progress, "cgcseg demo")
    try:
        case = _given_case(args, reporter) if args.inputs else _phantom_case(out_dir, args.seed, reporter)
        channels, names, geometry = case["channels"], case["names"], case["geometry"]
        times = {"input_s": case["elapsed_s"]}
        from ..channel_check import check_and_warn
        from ..inputs import names_in_order
        check = check_and_warn(channels, names_in_order(names), list(case["inputs"].values()), case["mask"],
                               strict=args.strict, progress_mode=args.progress)

        # CGC model first (only loading): its GMM settings are the ones the network was trained with.
        model, info, model_path, no_cgc_reason = _load_cgc(args.model, names, args.device)
        gmm_cfg = _gmm_config(info)

        reporter(0.15, "GMM stage")
        t = time.perf_counter()
        gmm = compute_probability_map(channels, case["mask"], gmm_cfg,
                                      progress=lambda f, m: reporter(0.15 + 0.35 * f, f"GMM: {m}"),
                                      names=[n or f"channel {i + 1}" for i, n in enumerate(names)],
                                      spacing_xyz=geometry.spacing)
        gmm_threshold = 0.5 if args.threshold is None else args.threshold
        gmm_mask = binarize(gmm.probability, threshold=gmm_threshold, mask_zyx=gmm.mask)
        times["gmm_s"] = time.perf_counter() - t
        brain = gmm.mask

        cgc = None
        rule = _output_rule(args, model_path)
        cgc_config = _inference_config(args, rule, model_path)
        if model is not None:
            reporter(0.5, "CGC network")
            t = time.perf_counter()
            cgc_channels, cgc_names = _channels_for_model(channels, names, list(info.channels))
            cgc = _run_cgc(cgc_channels, geometry, cgc_names, model_path, brain, config=cgc_config,
                           gmm_probability=gmm.probability, model=model, info=info,
                           progress=lambda f, m: reporter(0.5 + 0.4 * f, f"CGC: {m}"))
            times["cgc_s"] = time.perf_counter() - t
        if cgc is not None:
            stage, segmentation, probability = "cgc", cgc.mask, cgc.probability
            stage_note = f"CGC network ({model_path.name}) on the GMM map, output rule {rule}"
        else:
            stage, segmentation, probability = "gmm", gmm_mask, gmm.probability
            stage_note = f"GMM stage only (P >= {gmm_threshold:g}); CGC not run: {no_cgc_reason}"

        evaluation: dict[str, Any] = {}
        reference = case["reference"]
        if reference is not None:
            evaluation = {"reference": case["reference_path"],
                          "reference_voxels": int(reference.sum()),
                          "dice": round(dice(segmentation, reference), 4),
                          "sensitivity": round(sensitivity(segmentation, reference), 4),
                          "gmm_dice": round(dice(gmm_mask, reference), 4),
                          "gmm_sensitivity": round(sensitivity(gmm_mask, reference), 4)}
            if cgc is not None:
                evaluation["cgc_dice"] = evaluation["dice"]

        # Everything is computed: now write (each file atomically, sidecar after its file).
        reporter(0.92, "writing outputs")
        t = time.perf_counter()
        seg_path, prob_path, gmm_path, png_path = (out_dir / n for n in OUTPUT_NAMES)
        common = dict(inputs=case["inputs"], gmm_settings=gmm.summary(), device=cgc.device if cgc else "cpu",
                      model_path=model_path if cgc is not None else None, command="cgcseg demo",
                      stage=stage, stage_note=stage_note,
                      threshold=cgc_config.threshold if cgc is not None else gmm_threshold,
                      phantom=case["phantom"], timings={k: round(v, 3) for k, v in times.items()},
                      channel_check=check.to_dict())
        if cgc is not None:
            common["inference"] = config_to_dict(cgc_config)
        write_image(seg_path, segmentation.astype(np.uint8), geometry)
        write_sidecar(seg_path, kind="segmentation", elapsed_s=time.perf_counter() - t_start,
                      evaluation=evaluation, **common)
        write_image(prob_path, probability.astype(np.float32), geometry)
        holds = ("the GMM map P" if cgc is None else
                 "the CGC network's probability map" if not cgc_config.gmm_weight else
                 f"{1 - cgc_config.gmm_weight:g} x the CGC network's map + {cgc_config.gmm_weight:g} x the GMM map P")
        write_sidecar(prob_path, kind="probability", holds=holds + " (the map that was thresholded)",
                      elapsed_s=time.perf_counter() - t_start, **common)
        write_image(gmm_path, gmm.probability.astype(np.float32), geometry)
        write_sidecar(gmm_path, kind="gmm_probability", elapsed_s=times["gmm_s"], **common)

        masks = {}  # drawn in this order; the result last and thicker, so nothing covers it
        if reference is not None:
            masks["reference"] = reference
        if args.overview_gmm or cgc is None:
            masks["GMM"] = gmm_mask
        if cgc is not None:
            masks["CGC"] = cgc.mask
        result_name = "CGC" if cgc is not None else "GMM"
        ref_label = names[0].upper() if names[0] else Path(next(iter(case["inputs"].values()))).name
        source = f"phantom (seed {args.seed})" if case["phantom"] else "given case"
        title = f"CGC Lesion Seg demo: {source}, {ref_label}; segmentation by the {stage.upper()} stage"
        overview = write_overview(png_path, channels[0], geometry, masks, n_slices=args.slices, title=title,
                                  background_name=ref_label, emphasize=result_name)
        common["overview"] = {"contours": list(masks), "result": result_name, "size": list(overview.size),
                              "contour_px": overview.contour_px, "overdrawn_px": overview.overdrawn_px}
        write_sidecar(png_path, kind="overview", evaluation=evaluation, **common)
        written = [out_dir / n for n in OUTPUT_NAMES]
        written += [Path(str(w) + ".json") for w in written]
        written += [Path(p) for p in case.get("written", [])]
        write_manifest(out_dir, written)
        times["write_s"] = time.perf_counter() - t
        times["total_s"] = time.perf_counter() - t_start
        reporter(1.0, "done")
    finally:
        reporter.close()

    summary = {"stage": stage, "stage_note": stage_note, "outputs": {n: str(out_dir / n) for n in OUTPUT_NAMES},
               "inputs": case["inputs"], "evaluation": evaluation, "lesion_voxels": int(segmentation.sum()),
               "times_s": {k: round(v, 2) for k, v in times.items()}}
    if args.progress == "json":
        emit_json("summary", **summary)
    else:
        _print_summary(summary, sys.stdout)
    return 0


def remove_previous_outputs(out_dir: Path) -> list[Path]:
    """Delete the files a previous demo listed in ``out_dir/demo-manifest.json`` — only those, only
    inside ``out_dir``, never a folder with anything left in it — and the manifest itself."""
    import json
    manifest = out_dir / MANIFEST
    if not manifest.is_file():
        return []
    try:
        listed = json.loads(manifest.read_text()).get("files", [])
    except (OSError, ValueError, AttributeError):
        return []
    root = out_dir.resolve()
    removed, folders = [], set()
    for rel in listed:
        path = (out_dir / str(rel))
        try:
            resolved = path.resolve()
        except OSError:
            continue
        if root not in resolved.parents or not (path.is_file() or path.is_symlink()):
            continue
        path.unlink()
        removed.append(path)
        folders.add(path.parent)
    for folder in sorted(folders, key=lambda f: len(f.parts), reverse=True):
        while folder.resolve() != root and root in folder.resolve().parents:
            try:
                folder.rmdir()  # only when empty
            except OSError:
                break
            folder = folder.parent
    manifest.unlink()
    return removed


def write_manifest(out_dir: Path, files: Sequence[Path]) -> Path:
    import json
    from ..image_io import atomic_write
    rel = sorted({str(Path(f).resolve().relative_to(out_dir.resolve())) for f in files if Path(f).exists()})
    path = out_dir / MANIFEST
    with atomic_write(path) as fh:
        json.dump({"written_by": "cgcseg demo", "files": rel}, fh, indent=1)
        fh.write("\n")
    return path


def _output_rule(args, model_path) -> str:
    """``--postprocess``, or under ``auto`` the rule recorded for the model the demo actually runs (the
    phantom has no ``--input`` names from which `segment`'s resolution could find the shipped model)."""
    if args.postprocess != "auto" or model_path is None:
        return resolve_postprocess(args)
    from ..checkpoint import default_output_rule
    return default_output_rule(model_path)


def _inference_config(args, rule: str, model_path=None):
    """The CGC stage's settings: ``rule``'s preset at ``--threshold``, else at the threshold ``model_path``
    records for ``rule`` (0.5 without a model or for another rule)."""
    from ..checkpoint import default_threshold
    from ..inference import InferenceConfig, output_preset
    threshold = args.threshold if args.threshold is not None else (
        default_threshold(model_path, rule) if model_path is not None else 0.5)
    return InferenceConfig(threshold=threshold, device=args.device, **output_preset(rule))


def _print_summary(s: dict, fh) -> None:
    print("CGC Lesion Seg demo (research use only, not for clinical diagnosis)", file=fh)
    print(f"  segmentation by: {s['stage_note']}", file=fh)
    for name, path in s["outputs"].items():
        print(f"  {name:<24} {path}", file=fh)
    ev = s["evaluation"]
    if ev:
        line = f"  Dice vs reference: {ev['dice']:.4f} (sensitivity {ev['sensitivity']:.4f})"
        if "cgc_dice" in ev:
            line += f"; GMM stage alone: {ev['gmm_dice']:.4f}"
        print(line, file=fh)
    else:
        print("  Dice vs reference: no reference given", file=fh)
    t = s["times_s"]
    print("  times: " + ", ".join(f"{k[:-2]} {v:.1f} s" for k, v in t.items()), file=fh)
