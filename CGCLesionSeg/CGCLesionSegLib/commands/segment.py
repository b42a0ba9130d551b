"""``cgcseg segment``: CGC segmentation of one case (``--input``) or of a cohort (``--cases``).

One case:  cgcseg segment --input flair=F.nii.gz --input t1=T1.nii.gz ... --output SEG.nii.gz
           [--probability-output P.nii.gz] [--model CKPT] [--mask M] [--threshold T] [--adapt]
Cohort:    cgcseg segment --cases DIR --output-dir OUT [--modalities flair t1 t1ce t2] [--model CKPT]
           DIR is a BraTS-layout folder (<case>/<case>_<modality>.nii.gz) or a CSV with a `case` column
           and one column per modality (case names: plain file names, unique). A case is done — and
           skipped, so an interrupted run resumes — when its mask and probability map read back complete
           and the mask's sidecar records the same model (sha256) and settings; incomplete outputs are
           recomputed; outputs made with another model or settings are an error unless --overwrite.
           A failing case is reported and the cohort goes on. Each case gets
           OUT/<case>.nii.gz (mask) and OUT/<case>_probability.nii.gz, with sidecars. Under torchrun each rank takes
           its share of the cases.
Without --model, the default model shipped for the given modalities is used.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Optional

from . import add_device_args, add_input_args, add_output_rule_arg, add_progress_args

DESCRIPTION = __doc__


def add_arguments(p: argparse.ArgumentParser) -> None:
    add_input_args(p, required=False)
    p.add_argument("--model", metavar="CKPT", help="CGC checkpoint (e.g. RUN_DIR/last.pt); default: the shipped model for these modalities")
    p.add_argument("--output", metavar="SEG.nii.gz", help="binary segmentation (uint8) on the first input's grid")
    p.add_argument("--probability-output", metavar="P.nii.gz", help="also write the probability map that was thresholded (the CGC map; with --gmm-weight W > 0, (1-W)*CGC + W*P)")
    p.add_argument("--gmm-output", metavar="P.nii.gz", help="also write the GMM foreground map P the model was trained on")
    p.add_argument("--cases", metavar="DIR|CSV", help="cohort mode: BraTS-layout folder or CSV of paths")
    p.add_argument("--output-dir", metavar="DIR", help="cohort mode: output folder")
    p.add_argument("--modalities", nargs="+", metavar="NAME", help="cohort mode: modalities to read (default: the model's)")
    p.add_argument("--threshold", type=float, default=None,
                   help="probability threshold of the map the output rule thresholds (default: the threshold the "
                        "model records for its own output rule — the shipped models: 0.35 (cgc-v29's leave-one-case-out "
                        "procedure, protocol cgc-v44) — "
                        "else 0.5; with --postprocess none, another rule or another --gmm-weight, 0.5)")
    add_output_rule_arg(p,
                        "output rule: none = the network's map >= threshold (the paper); single-lesion = mean of the "
                        "network and GMM maps, hole filling, largest lesion (gliomas); single-lesion-recommended = the "
                        "same with the GMM map `cgcseg gmm` thresholds by default (recommended preset, MRI); "
                        "auto (default) = the rule the model file records: single-lesion-recommended for the "
                        "shipped BraTS models, none for your own --model. The flags below override it")
    p.add_argument("--gmm-weight", type=float, default=None, metavar="W",
                   help="threshold (1-W)*CGC + W*P, P = the model's GMM map, or the recommended preset's with "
                        "single-lesion-recommended (single-lesion*: 0.5, none: 0)")
    p.add_argument("--min-size", type=int, default=None, metavar="VOXELS", help="remove lesion components smaller than this (0: keep all)")
    p.add_argument("--fill-holes", nargs="?", const="2d", choices=("2d", "3d", "none"), default=None,
                   help="fill holes inside lesion components, slice by slice (2d, the default when given alone), in 3-D, or none")
    p.add_argument("--keep-largest", type=int, default=None, metavar="N", help="keep only the N largest lesion components (0: all)")
    p.add_argument("--open-radius", type=float, default=None, metavar="R",
                   help="with --keep-largest: rank components after an opening of R mm (R voxels on 1 mm grids; "
                        "thin bridges do not merge lesions)")
    # inference.LESION_CHOICES, written out: building the parser must not import torch
    p.add_argument("--lesion-choice", choices=("size", "network", "core", "seed"), default=None,
                   help="with --keep-largest: keep the largest components (size: single-lesion's default), those "
                        "holding the most voxels where the network's own map is >= 0.5 (network, under test: "
                        "docs/protocols/README.md 'lesion-choice-v1'), or where the thresholded map itself is >= 0.5 "
                        "(core, protocol 'hysteresis-v1'), or that hold the lesion the same rule keeps at 0.5 (seed: "
                        "hysteresis, chosen as at 0.5 and delineated at --threshold; single-lesion-recommended's "
                        "default, protocol 'hysteresis-v2')")
    p.add_argument("--window", type=int, nargs=3, metavar=("X", "Y", "Z"),
                   help="sliding-window size (default: the model's training crop, e.g. 96 96 64; "
                        "160 192 160 for models that record none)")
    p.add_argument("--overlap", type=float, default=0.5, help="sliding-window overlap fraction (default 0.5)")
    p.add_argument("--pad-to-window", action="store_true",
                   help="where the brain's box is smaller than the window, zero-pad it to the window as training pads "
                        "a small case (instead of shrinking the window); under test, see docs/protocols/cgc-v6.toml")
    p.add_argument("--mirror", nargs="+", choices=("x", "y", "z"), default=(), metavar="AXIS",
                   help="test-time mirroring: average the network over flips along these axes of the model's voxel "
                        "order (x = left-right; 'x' doubles the network's time, 'x y z' makes it 8x); off by default: no "
                        "measurable gain on held-out cases (docs/protocols/cgc-v8.toml)")
    p.add_argument("--batch-size", type=int, default=1, help="windows per forward pass (default 1)")
    p.add_argument("--adapt", action="store_true", help="adapt to this case first: compute its P and train the model on it (see --adapt-minutes); for "
                        "inputs no shipped model fits — fine-tuning a shipped model lowered Dice where measured")
    p.add_argument("--adapt-minutes", type=float, default=5.0, help="time budget of --adapt (default 5)")
    p.add_argument("--adapt-steps", type=int, default=None, help="step budget of --adapt (default: until --adapt-minutes)")
    p.add_argument("--strict", action="store_true",
                   help="refuse inputs that may be swapped or misnamed (file name or intensity signature "
                        "contradicts the --input name); without it they get a warning")
    p.add_argument("--overwrite", action="store_true",
                   help="cohort mode: recompute cases whose outputs were made with another model or other settings")
    p.add_argument("--record-full-paths", action="store_true",
                   help="sidecars record absolute input/output paths and the host (default: file names only, "
                        "since patient identifiers often live in folder and file names)")
    add_device_args(p)
    add_progress_args(p)


def resolve_postprocess(args) -> str:
    """``auto`` → the rule the model's checkpoint records (``default_output_rule``; the shipped BraTS
    shipped models record ``single-lesion-recommended``; earlier shipped files, which predate that field,
    are recognised by their sha256 and get ``single-lesion``),
    else ``none`` — also for ``--adapt`` from scratch, whose lesions may be multi-focal (MS). Decided
    from the file's content, never from the folder it lies in. ``--adapt`` uses its base model's rule."""
    if args.postprocess != "auto":
        return args.postprocess
    from ..checkpoint import default_output_rule
    model = _rule_model(args)
    return "none" if model is None else default_output_rule(model)


def _rule_model(args) -> Optional[Path]:
    """The model whose recorded rule and threshold apply: ``--model``, else the shipped model for the
    inputs' modalities (``--adapt`` adapts that one, and keeps its rule); None when there is no such file
    (no shipped model fits — ``--adapt`` then trains from scratch — or a missing ``--model``, which is
    reported where it is used)."""
    from ..default_models import default_model_path
    from ..inputs import parse_input_specs
    model = getattr(args, "model", None)
    if model is None:
        try:
            if getattr(args, "cases", None) and not getattr(args, "inputs", None):
                names = getattr(args, "modalities", None) or ["flair", "t1", "t1ce", "t2"]
            else:
                names = [n for n, _ in parse_input_specs(args.inputs or [])]
            model = default_model_path(names)
        except ValueError:
            return None
    return Path(model) if Path(model).is_file() else None


def resolve_threshold(args, rule: str, same_map: bool = True) -> float:
    """``--threshold`` if given, else the threshold the rule's model records for ``rule``
    (:func:`CGCLesionSegLib.checkpoint.default_threshold`), else 0.5. ``same_map`` False (``--gmm-weight``
    changed what is thresholded, e.g. the network's map alone, whose background sits at 0.3-0.4): 0.5,
    since the recorded threshold was chosen for the rule's own map."""
    if args.threshold is not None:
        return float(args.threshold)
    if not same_map:
        return 0.5
    from ..checkpoint import default_threshold
    model = _rule_model(args)
    return 0.5 if model is None else default_threshold(model, rule)


def _inference_config(args):
    from ..inference import InferenceConfig, output_preset
    rule = resolve_postprocess(args)
    kw = output_preset(rule)
    overrides = dict(gmm_weight=args.gmm_weight, min_component_voxels=args.min_size, keep_largest=args.keep_largest,
                     opening_radius=args.open_radius, lesion_choice=args.lesion_choice,
                     fill_holes=None if args.fill_holes is None else (False if args.fill_holes == "none" else args.fill_holes))
    kw.update({k: v for k, v in overrides.items() if v is not None})
    if not kw["keep_largest"] and args.open_radius is None:
        kw["opening_radius"] = 0  # the preset's opening only ranks components for keep-largest
    if not kw["keep_largest"] and args.lesion_choice is None:
        kw["lesion_choice"] = "size"  # likewise the preset's choice of component
    same_map = kw["gmm_weight"] == output_preset(rule)["gmm_weight"]
    kw.update(threshold=resolve_threshold(args, rule, same_map), overlap=args.overlap, batch_size=args.batch_size, device=args.device,
              pad_to_window=args.pad_to_window, mirror_axes=tuple(args.mirror))
    if args.window:
        kw["window_xyz"] = tuple(args.window)
    return InferenceConfig(**kw)


def _reporter(args, description):
    from ..progress import ProgressReporter
    return ProgressReporter(args.progress, description)


def _write_outputs(result, geometry, inputs, config, rule: str, output: Path, probability_output, gmm_output,
                   extra=None, adapted_model: Path | None = None):
    """Write every output only after all computing succeeded: all files (images and sidecars) are
    written under temporary names and verified (images read back) first, then renamed into place with
    the mask last (in cohort mode it marks a finished case). A full disk or any other write error
    leaves no file under a final name and keeps the files that were there.
    ``config`` / ``rule``: the InferenceConfig and output rule the result was made with.
    ``adapted_model``: where ``--adapt``'s model (``result.model_path``, in its temporary folder) is kept;
    staged with the other files, so a failed write keeps an earlier file of that name too."""
    from ..image_io import StagedWrites
    from ..sidecar import sidecar_path, sidecar_text
    from ..config import config_to_dict
    common = dict(inputs=inputs, model_path=result.model_path, device=result.device,
                  gmm_settings=_gmm_settings(result.model_path),
                  elapsed_s=result.elapsed_s, inference=config_to_dict(config), postprocess=rule,
                  channels=result.channels, timings=result.timings,
                  window_xyz=list(result.window_xyz) if result.window_xyz else None,
                  removed_lesions=result.removed_lesions, model_recorded_as=adapted_model, **(extra or {}))
    written = []
    with StagedWrites() as staged:
        if adapted_model is not None:
            staged.file(adapted_model, result.model_path)
        if probability_output:
            staged.image(probability_output, result.probability, geometry)
            staged.text(sidecar_path(probability_output), sidecar_text(probability_output, kind="probability",
                                                                         holds=_probability_holds(config), **common))
            written.append(Path(probability_output))
        if gmm_output and result.gmm_probability is not None:
            staged.image(gmm_output, result.gmm_probability, geometry)
            staged.text(sidecar_path(gmm_output), sidecar_text(gmm_output, kind="gmm_probability", **common))
            written.append(Path(gmm_output))
        staged.text(sidecar_path(output), sidecar_text(output, kind="segmentation", **common))
        staged.image(output, result.mask, geometry)  # the mask goes last
    written.insert(0, output)
    return written


def _warn_removed(result, progress: str, case: str = "") -> None:
    """Say so when the output rule's keep-largest removed a lesion-sized candidate (several lesions?)."""
    from ..postprocess import removed_warning
    text = removed_warning(result.removed_lesions)
    if not text:
        return
    if progress == "json":
        from ..progress import emit_json
        emit_json("warning", kind="removed_lesions", case=case or None, message=text)
    else:
        print(f"{case + ': ' if case else ''}warning: {text}", file=sys.stderr)


def _gmm_settings(model_path) -> dict | None:
    """The GMM settings of the map P this model was trained on (and that the output rule averages
    in): the checkpoint's, else the defaults it falls back to."""
    from ..checkpoint import read_checkpoint
    from ..config import config_to_dict
    from ..gmm import GMMConfig
    try:
        gmm = (read_checkpoint(model_path).get("preprocessing") or {}).get("gmm")
    except Exception:
        return None
    return dict(gmm) if gmm else config_to_dict(GMMConfig())


def _probability_holds(config) -> str:
    """What the probability output holds, in words, for its sidecar."""
    w = float(config.gmm_weight or 0.0)
    if w <= 0:
        return "the CGC network's probability map"
    return f"{1 - w:g} x the CGC network's map + {w:g} x the GMM map P (the map that was thresholded)"


def _read_case(pairs, mask_path):
    """pairs: [(name|None, path)] → (channels, geometry, names, mask). Grids must match the first."""
    from ..image_io import check_same_grid, read_image
    images = [read_image(p) for _, p in pairs]
    ref_name = pairs[0][0] or Path(pairs[0][1]).name
    for (name, path), img in zip(pairs[1:], images[1:]):
        check_same_grid(images[0].geometry, img.geometry, ref_name, name or Path(path).name)
    mask = None
    if mask_path:
        m = read_image(mask_path, dtype=None)
        check_same_grid(images[0].geometry, m.geometry, ref_name, "mask")
        mask = m.array_zyx != 0
    return [i.array_zyx for i in images], images[0].geometry, [n for n, _ in pairs], mask


def _channel_check(args, channels, names, paths, mask):
    """Warn (or refuse under --strict) when the inputs look swapped: file names and intensities."""
    from ..channel_check import check_and_warn
    from ..inputs import names_in_order
    expected = None
    if all(n is None for n in names):  # unnamed inputs are used in the model's order
        try:
            if args.model:
                from ..checkpoint import read_checkpoint
                expected = list(read_checkpoint(args.model)["channels"])
            else:
                from ..default_models import default_model_path
                expected = default_model_path([None] * len(names)).stem[len("cgc_"):].split("_")
        except Exception:  # no model for these inputs: segment_case says so with the full message
            expected = None
    return check_and_warn(channels, names_in_order(names, expected), paths, mask, strict=args.strict,
                          progress_mode=args.progress)


def _segment_one(args) -> int:
    from ..inference import segment_case
    from ..inputs import parse_input_specs
    if not args.output:
        raise ValueError("--output SEG.nii.gz is required (or use --cases DIR --output-dir OUT for a cohort)")
    from ..image_io import check_output_paths
    if args.modalities:
        raise ValueError("--modalities is for cohort mode (--cases); name single-case inputs as --input NAME=PATH")
    pairs = parse_input_specs(args.inputs)
    outputs = {"--output": args.output, "--probability-output": args.probability_output,
               "--gmm-output": args.gmm_output}
    check_output_paths({k: v for k, v in outputs.items() if v}, [p for _, p in pairs] + [args.mask])
    from ..output_probe import probe_writable
    from ..sidecar import sidecar_path
    probes = {}
    for k, v in outputs.items():
        if v:
            probes[k], probes[f"sidecar of {k}"] = v, sidecar_path(v)
    if args.adapt:
        adapted = f"{args.output}.adapted.pt"
        if args.model and Path(args.model).exists() and Path(adapted).exists() and os.path.samefile(args.model, adapted):
            raise ValueError(f"--adapt keeps its model as {adapted}, which is --model here: it would replace the model "
                             "it starts from. Choose another --output (or copy the model and give the copy)")
        check_output_paths({"the adapted model (--output + .adapted.pt)": adapted},
                           [p for _, p in pairs] + [args.mask, args.model], formats=None)
        probes["adapted model"] = adapted
    probe_writable(probes)
    channels, geometry, names, mask = _read_case(pairs, args.mask)
    model_path = args.model
    if model_path and not Path(model_path).exists():  # a folder is named as such by the checkpoint reader
        raise FileNotFoundError(f"--model file not found: {model_path}")
    extra = {"channel_check": _channel_check(args, channels, names, [p for _, p in pairs], mask).to_dict()}
    adapt_dir = None
    if args.adapt:
        import tempfile
        from ..adapt import AdaptConfig, adapt_to_case, shipped_base_note
        note = shipped_base_note([n for n, _ in pairs], model_path)
        if note:
            print(f"warning: {note}", file=sys.stderr)
        t = time.perf_counter()
        adapt_dir = Path(tempfile.mkdtemp(prefix="cgc-adapt-"))
        try:
            model_path = adapt_to_case(pairs, args.mask, model_path,
                                       AdaptConfig(minutes=args.adapt_minutes, steps=args.adapt_steps, device=args.device),
                                       run_dir=adapt_dir / "run", progress=args.progress)
        except BaseException:  # a bad setting, a signal, ...: leave no temporary folder behind
            import shutil
            shutil.rmtree(adapt_dir, ignore_errors=True)
            raise
        base = (args.model if getattr(args, "record_full_paths", False) else Path(args.model).name) if args.model else None
        extra["adapted"] = {"base_model": base or "shipped default (or from scratch when none fits)",
                            "minutes": args.adapt_minutes, "steps": args.adapt_steps,
                            "seconds": round(time.perf_counter() - t, 1)}
    reporter = _reporter(args, "segment")
    try:
        config = _inference_config(args)
        result = segment_case(channels, geometry, names, model_path, mask, config,
                              progress=reporter, compute_gmm=bool(args.gmm_output))
    except BaseException:
        if adapt_dir is not None:
            import shutil
            shutil.rmtree(adapt_dir, ignore_errors=True)
        raise
    finally:
        reporter.close()
    inputs = {n or f"input{i + 1}": str(p) for i, (n, p) in enumerate(pairs)}
    extra["full_paths"] = bool(getattr(args, "record_full_paths", False))
    # The adapted model is kept beside the output (the sidecar's model hash refers to it), written with the
    # other outputs: a failed write replaces nothing, an earlier .adapted.pt included.
    kept = Path(str(args.output) + ".adapted.pt") if adapt_dir is not None else None
    try:
        written = _write_outputs(result, geometry, inputs, config, resolve_postprocess(args), Path(args.output),
                                 args.probability_output, args.gmm_output, extra, adapted_model=kept)
    finally:
        if adapt_dir is not None:
            import shutil
            shutil.rmtree(adapt_dir, ignore_errors=True)
    if kept is not None:
        result.model_path = kept
        written.append(kept)
        print(f"adapted model kept as {kept} (reuse it with --model {kept} and another --output)", file=sys.stderr)
    _warn_removed(result, args.progress)
    voxel_ml = float(geometry.spacing[0] * geometry.spacing[1] * geometry.spacing[2]) / 1000.0
    from ..postprocess import removed_summary
    msg = (f"lesion volume {result.mask.sum() * voxel_ml:.1f} mL{removed_summary(result.removed_lesions)}, "
           f"{result.elapsed_s:.1f} s on {result.device}; "
           f"wrote {', '.join(str(w) for w in written)}")
    if args.progress == "json":
        from ..progress import emit_json
        emit_json("done", outputs=[str(w) for w in written], seconds=round(result.elapsed_s, 2))
    else:
        print(msg, file=sys.stderr)
    return 0


def check_case_name(name, where: str) -> str:
    """A case name becomes output file names (``OUT/<case>.nii.gz``), so it must be one plain file-name
    component: not empty, no folder separators, not ``.``/``..``, no leading dot, no control
    characters. Raises ValueError naming ``where`` (file and row)."""
    why = None
    if name is None or not str(name).strip():
        why = "it is empty"
    else:
        name = str(name)
        if any(c in name for c in "/\\") or os.path.isabs(name):
            why = "it contains a folder separator"
        elif name in (".", "..") or name.startswith("."):
            why = "it starts with a dot"
        elif any(ord(c) < 32 or c in ':*?"<>|' for c in name):
            why = "it contains a control character or one of : * ? \" < > |"
        elif name != name.strip():
            why = "it starts or ends with a space"
        elif len(name) > 200:
            why = "it is longer than 200 characters"
    if why:
        raise ValueError(f"{where}: case name {name!r} is not a plain file name ({why}); outputs are named "
                         "OUT/<case>.nii.gz, so use letters, digits, '-', '_' or '.' and no folders")
    return name


def list_cases(source: Path, modalities) -> list[tuple[str, list[tuple[str, str]], str | None]]:
    """Cases as ``[(case, [(modality, path), ...], mask path or None)]`` from a BraTS-layout folder
    (``<case>_mask.nii.gz`` is used when present) or a CSV (optional ``mask`` column). Case names must
    be plain file names and unique (also ignoring case), else ValueError with the row numbers."""
    import csv
    if source.is_file():
        with source.open(newline="") as fh:
            rows = list(csv.DictReader(fh))
        if not rows or "case" not in rows[0]:
            raise ValueError(f"{source}: a CSV needs a header with a `case` column and one column per modality")
        missing = [m for m in modalities if m not in rows[0]]
        if missing:
            raise ValueError(f"{source}: no column for modality {', '.join(missing)} (columns: {', '.join(rows[0])})")
        base = source.parent
        resolve = lambda v: str(base / v) if not os.path.isabs(v) else v
        seen: dict[str, int] = {}
        cases = []
        for row_no, r in enumerate(rows, start=2):  # row 1 is the header
            name = check_case_name(r.get("case"), f"{source}, row {row_no}")
            key = name.casefold()
            if key in seen:
                raise ValueError(f"{source}: rows {seen[key]} and {row_no} both name case {name!r}; every case needs "
                                 "its own name (its outputs are OUT/<case>.nii.gz)")
            seen[key] = row_no
            empty = [m for m in modalities if not (r.get(m) or "").strip()]
            if empty:
                raise ValueError(f"{source}, row {row_no} (case {name}): no path for {', '.join(empty)}")
            cases.append((name, [(m, resolve(r[m])) for m in modalities],
                          resolve(r["mask"]) if r.get("mask") else None))
        return cases
    if not source.is_dir():
        raise FileNotFoundError(f"--cases not found: {source}")
    cases = []
    for d in sorted(x for x in source.iterdir() if x.is_dir()):
        pairs = []
        for m in modalities:
            hits = [d / f"{d.name}_{m}{s}" for s in (".nii.gz", ".nii", ".nrrd", ".mha")]
            hit = next((h for h in hits if h.exists()), None)
            pairs.append((m, str(hit) if hit else str(hits[0])))
        mask = d / f"{d.name}_mask.nii.gz"
        cases.append((check_case_name(d.name, f"{source}, folder {d.name!r}"), pairs,
                      str(mask) if mask.exists() else None))
    if not cases:
        raise ValueError(f"no case folders in {source} (expected <case>/<case>_<modality>.nii.gz)")
    return cases


def cohort_outputs(out_dir: Path, case: str) -> tuple[Path, Path]:
    """(mask, probability map) of one case in cohort mode."""
    return out_dir / f"{case}.nii.gz", out_dir / f"{case}_probability.nii.gz"


def check_cohort_outputs(cases, out_dir: Path) -> None:
    """No output (or sidecar) of any case may be an input of any case, or another case's output
    (e.g. case ``a_probability`` and case ``a``); checked before any work. Raises ValueError."""
    from ..sidecar import sidecar_path

    def key(p) -> str:
        return os.path.normcase(os.path.realpath(p))

    inputs: dict[str, str] = {}
    for case, pairs, mask in cases:
        for name, path in list(pairs) + ([("mask", mask)] if mask else []):
            inputs[key(path)] = f"{name} input of case {case}"
    outputs: dict[str, str] = {}
    for case, _, _ in cases:
        for path in cohort_outputs(out_dir, case):
            for p in (path, sidecar_path(path)):
                k = key(p)
                if k in inputs:
                    raise ValueError(f"the output {p} of case {case} would overwrite the {inputs[k]}; choose another "
                                     "--output-dir (inputs are never overwritten)")
                if k in outputs:
                    raise ValueError(f"case {case} and {outputs[k]} would both write {p}; rename one of the cases")
                outputs[k] = f"case {case}"


#: InferenceConfig fields that do not change a result (left out when comparing a finished case's settings).
_SETTINGS_IGNORED = ("batch_size", "device")


def _inference_defaults() -> dict:
    """:class:`InferenceConfig`'s defaults as JSON types (what an older sidecar's missing keys meant)."""
    import json
    from ..config import config_to_dict
    from ..inference import InferenceConfig
    return json.loads(json.dumps(config_to_dict(InferenceConfig())))


def cohort_settings(config, rule: str, channels) -> dict:
    """What must match for an existing output to count as done (as JSON types)."""
    import json
    from ..config import config_to_dict
    inference = {k: v for k, v in config_to_dict(config).items() if k not in _SETTINGS_IGNORED}
    return json.loads(json.dumps({"inference": inference, "postprocess": rule, "channels": list(channels)}))


def case_state(out_dir: Path, case: str, model_sha256: str, settings: dict) -> tuple[str, str]:
    """Whether a case of a cohort is done: ``("new", "")``, ``("done", "")``, ``("incomplete", why)``
    or ``("different", what)``. A case is done when its mask and probability map exist and read back
    complete, and the mask's sidecar records the same model (sha256) and the same settings."""
    import json
    from ..image_io import ImageIOError, read_image
    from ..sidecar import sidecar_path
    mask, prob = cohort_outputs(out_dir, case)
    if not mask.exists():
        return "new", ""
    try:
        record = json.loads(sidecar_path(mask).read_text())
        if not isinstance(record, dict):
            raise ValueError("not a JSON object")
    except (OSError, ValueError) as exc:
        return "incomplete", f"its sidecar {sidecar_path(mask).name} is missing or unreadable ({exc})"
    for path in (mask, prob):
        try:
            read_image(path, dtype=None)
        except (ImageIOError, ValueError) as exc:
            return "incomplete", str(exc)
    differs = []
    if (record.get("model") or {}).get("sha256") != model_sha256:
        differs.append("model")
    old = {"inference": {k: v for k, v in (record.get("inference") or {}).items() if k not in _SETTINGS_IGNORED},
           "postprocess": record.get("postprocess"), "channels": record.get("channels")}
    for k in ("inference", "postprocess", "channels"):
        if k == "inference":
            # A setting newer than the sidecar (e.g. pad_to_window, mirror_axes) ran at its default then.
            known = _inference_defaults()
            differs += sorted(f for f in set(old[k]) | set(settings[k])
                              if old[k].get(f, known.get(f)) != settings[k].get(f, known.get(f)))
        elif old[k] != settings[k]:
            differs.append(k)
    if differs:
        return "different", ", ".join(differs)
    return "done", ""


def _check_cohort_inputs(cases, modalities, given: bool) -> None:
    """Refuse up front a modality that no case has (each case would fail alike), naming what to give."""
    if not cases:
        return
    present = [any(Path(pairs[k][1]).exists() for _, pairs, _ in cases) for k in range(len(modalities))]
    for k, modality in enumerate(modalities):
        if not present[k]:
            example = Path(cases[0][1][k][1]).name
            have = [m for m, there in zip(modalities, present) if there]
            hint = (f"; the cases have {' '.join(have)}: give --modalities {' '.join(have)} (the shipped model for "
                    "those channels is used)" if have and not given else "")
            raise ValueError(f"no case has a {modality} image (e.g. {example} is missing){hint}")


def _segment_cohort(args) -> int:
    import torch
    from ..checkpoint import load_checkpoint
    from ..default_models import default_model_path
    from ..inference import resolve_device, segment_case
    from ..progress import ProgressReporter, emit_json
    from ..sidecar import file_sha256
    if not args.output_dir:
        raise ValueError("cohort mode needs --output-dir OUT")
    ignored = [flag for flag, value in (("--mask", args.mask), ("--output", args.output),
                                        ("--probability-output", args.probability_output),
                                        ("--gmm-output", args.gmm_output), ("--adapt", args.adapt)) if value]
    if ignored:
        raise ValueError(f"{', '.join(ignored)} apply to one case (--input), not to a cohort; cohort mode writes "
                         "OUT/<case>.nii.gz and OUT/<case>_probability.nii.gz (per-case masks: <case>_mask.nii.gz "
                         "in the case folder, or a `mask` column in a CSV list)")
    rank, world = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    cfg, rule = _inference_config(args), resolve_postprocess(args)
    if world > 1 and torch.cuda.is_available() and args.device != "cpu":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    device = resolve_device(args.device)
    model_path = Path(args.model) if args.model else default_model_path(args.modalities or ["flair", "t1", "t1ce", "t2"])
    model, info = load_checkpoint(model_path, device=str(device))
    model_sha256 = file_sha256(model_path)
    modalities = [m.lower() for m in args.modalities] if args.modalities else list(info.channels)
    if sorted(modalities) != sorted(str(c).lower() for c in info.channels):  # else every case fails alike
        raise ValueError(f"--modalities {' '.join(modalities)} do not match the model's channels "
                         f"{' '.join(info.channels)} ({model_path.name}); give --modalities {' '.join(info.channels)}, "
                         "or a --model trained on your channels (without --model: the shipped one for them)")
    out_dir = Path(args.output_dir)
    all_cases = list_cases(Path(args.cases), modalities)
    check_cohort_outputs(all_cases, out_dir)
    _check_cohort_inputs(all_cases, modalities, given=bool(args.modalities))
    from ..output_probe import probe_writable
    probe_writable({"--output-dir": out_dir / "case.nii.gz"})  # once, not once per case
    cases = all_cases[rank::world]
    settings = cohort_settings(cfg, rule, info.channels)
    states = {case: case_state(out_dir, case, model_sha256, settings) for case, _, _ in cases}
    different = [(c, why) for c, (state, why) in states.items() if state == "different"]
    if different and not getattr(args, "overwrite", False):
        shown = "; ".join(f"{c} ({why})" for c, why in different[:10]) + (" ..." if len(different) > 10 else "")
        raise ValueError(f"{len(different)} case(s) in {out_dir} were segmented with another model or other settings: "
                         f"{shown}. Add --overwrite to recompute them, or choose another --output-dir")
    out_dir.mkdir(parents=True, exist_ok=True)
    where = f"rank {rank}/{world}: " if world > 1 else ""
    done, skipped, failed = [], [], []
    bar = ProgressReporter(args.progress if args.progress != "json" else "none",
                           f"cohort (rank {rank})" if world > 1 else "cohort", total=max(len(cases), 1))
    for i, (case, pairs, mask_path) in enumerate(cases):
        output, prob_output = cohort_outputs(out_dir, case)
        state, why = states[case]
        if state == "done":
            skipped.append(case)
        else:
            if state == "incomplete":
                print(f"{case}: the existing output is incomplete ({why}); segmenting it again", file=sys.stderr)
            try:
                channels, geometry, names, mask = _read_case(pairs, mask_path)
                from ..channel_check import check_channels, enforce, format_warning
                check = check_channels(channels, names, [p for _, p in pairs], mask)
                if not check.ok:
                    print(f"{case}: {format_warning(check)}", file=sys.stderr)
                enforce(check, args.strict)
                result = segment_case(channels, geometry, names, model_path, mask, cfg, compute_gmm=False,
                                      model=model, info=info)
                _write_outputs(result, geometry, dict(pairs), cfg, rule, output, prob_output, None,
                               {"full_paths": bool(getattr(args, "record_full_paths", False)),
                                "channel_check": check.to_dict()})
                _warn_removed(result, args.progress, case)
                done.append(case)
            except Exception as exc:  # one bad case must not stop the cohort
                failed.append((case, str(exc)))
                print(f"{case}: error: {exc}", file=sys.stderr)
        bar.update((i + 1) / max(len(cases), 1), case)
        if args.progress == "json":
            emit_json("progress", fraction=round((i + 1) / max(len(cases), 1), 4), message=case)
    bar.close()
    summary = (f"{where}{len(done)} segmented, {len(skipped)} already done (same model and settings), "
               f"{len(failed)} failed, of {len(cases)} case(s)")
    print(summary, file=sys.stderr)
    for case, err in failed:
        print(f"  failed {case}: {err}", file=sys.stderr)
    if args.progress == "json":
        emit_json("done", segmented=done, skipped=skipped, failed=[c for c, _ in failed])
    return 1 if failed else 0


def run(args: argparse.Namespace) -> int:
    if args.cases:
        if args.inputs:
            raise ValueError("give either --input (one case) or --cases (a cohort), not both")
        return _segment_cohort(args)
    if not args.inputs:
        raise ValueError("give --input [NAME=]PATH (repeatable) or --cases DIR")
    return _segment_one(args)
