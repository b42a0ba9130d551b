"""``cgcseg gmm``: the foreground probability map P of one case (the method's first stage).

A Gaussian mixture is fitted to the brain voxels of the reference channel (the first input: FLAIR
for MRI); its brightest components are lesion, and P is their summed posterior (0..1, 0 outside
the brain). Two presets: "recommended" (default; selected on real BraTS cases, see
docs/BENCHMARKS.md): P averaged over K = 4..8 with components >= 1 SD above the brain average as
lesion, binary output with 2-D hole filling and the largest lesion after an opening of 3 voxels;
"paper": K = 4, the brightest component, plain threshold. Any option given overrides the preset;
--clusters K means a single K. Skull-stripped MRI uses its non-zero voxels as the brain; MRI with
skull needs --mask (in Slicer: SwissSkullStripper, HD-BET or SynthStrip extensions). CT inputs
(named ct=PATH, in Hounsfield units) get an HU-window brain mask and the blood-range rule.

Examples:
  cgcseg gmm --input flair=case_flair.nii.gz --output P.nii.gz --binary-output lesion.nii.gz
  cgcseg gmm --preset paper --input flair=f.nii.gz --output P.nii.gz --binary-output lesion.nii.gz
  cgcseg gmm --input flair=f.nii.gz --clusters 5 --components 4 5 \\
             --output P.nii.gz --labels-output clusters.nii.gz
  cgcseg gmm --input ct=head_ct.nii.gz --output P.nii.gz
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from . import add_input_args, add_progress_args

DESCRIPTION = __doc__

def add_arguments(p: argparse.ArgumentParser) -> None:
    from ..gmm import COVARIANCE_TYPES, FOREGROUND_RULES, GMMConfig
    d = GMMConfig()
    add_input_args(p)
    g = p.add_argument_group("GMM")
    g.add_argument("--preset", choices=("recommended", "paper"), default="recommended",
                   help="starting configuration (default recommended, see above)")
    g.add_argument("--clusters", type=int, default=None, metavar="K",
                   help=f"a single K, 2-10 (paper preset: {d.n_clusters}; turns the recommended K ensemble off)")
    g.add_argument("--ensemble", type=int, nargs="+", default=None, metavar="K",
                   help="average P over these K (recommended preset: 4 5 6 7 8)")
    g.add_argument("--foreground-components", type=int, default=None, metavar="N",
                   help=f"brightest rule: the N components with the highest reference mean are lesion (default {d.n_foreground})")
    g.add_argument("--components", type=int, nargs="+", metavar="L",
                   help="explicit lesion components by label number 1..K as in --labels-output "
                        "(1 = darkest in the reference channel); overrides the rule")
    g.add_argument("--foreground-rule", choices=FOREGROUND_RULES, default=None,
                   help="brightest: N brightest components (paper); outlier: components >= --outlier-z SD above "
                        "the brain average (recommended); hu_range: CT blood range (default for ct inputs); "
                        "auto: hu_range for ct, brightest for MRI")
    g.add_argument("--outlier-z", type=float, default=d.outlier_z, metavar="Z",
                   help=f"threshold of the outlier rule in SD (default {d.outlier_z})")
    g.add_argument("--covariance", choices=COVARIANCE_TYPES, default=d.covariance_type,
                   help=f"covariance type (default {d.covariance_type})")
    g.add_argument("--seed", type=int, default=d.seed, help=f"random seed (default {d.seed})")
    g.add_argument("--subsample", type=int, default=d.subsample, metavar="N",
                   help=f"fit on N random brain voxels, 0 = all (default {d.subsample})")
    g.add_argument("--all-channels", action="store_true",
                   help="fit the GMM on every input (default: the reference input only, the paper's configuration)")
    g.add_argument("--n4", action="store_true", help="N4 bias-field correction of MRI inputs first (a few seconds each)")
    g.add_argument("--ct-blood-hu", type=float, nargs=2, default=d.ct_foreground_hu, metavar=("LOW", "HIGH"),
                   help=f"CT: component means in this HU range are lesion (default {d.ct_foreground_hu[0]:g} {d.ct_foreground_hu[1]:g})")
    o = p.add_argument_group("outputs")
    o.add_argument("--output", required=True, metavar="P.nii.gz", help="probability map P (float, 0..1)")
    o.add_argument("--binary-output", metavar="FILE", help="also write the thresholded, cleaned lesion mask")
    o.add_argument("--labels-output", metavar="FILE", help="also write the component label map (0 outside the brain, 1..K)")
    o.add_argument("--threshold", type=float, default=0.5, help="binary output: P >= threshold (default 0.5)")
    o.add_argument("--min-size", type=int, default=None, metavar="V",
                   help="binary output: drop connected components smaller than V voxels (default 0: keep all)")
    o.add_argument("--fill-holes", nargs="?", const="2d", choices=("2d", "3d", "none"), default=None,
                   help="binary output: fill holes per axial slice (2d, the default when given), in 3-D, or none "
                        "(recommended preset: 2d)")
    o.add_argument("--keep-largest", type=int, default=None, metavar="N",
                   help="binary output: keep only the N largest components, 0 = all (recommended preset: 1)")
    o.add_argument("--open-radius", type=float, default=None, metavar="R",
                   help="with --keep-largest: rank components after an opening of R mm (R voxels on 1 mm grids; "
                        "a coarser axis only by whole voxels within R mm), so thin bridges to other bright "
                        "tissue do not join them (recommended preset: 3)")
    o.add_argument("--no-postprocess", action="store_true",
                   help="binary output: plain threshold, ignore the preset's clean-up")
    p.add_argument("--strict", action="store_true",
                   help="refuse inputs that may be swapped or misnamed (file name or intensity signature "
                        "contradicts the --input name); without it they get a warning")
    add_progress_args(p)


def build_config(args: argparse.Namespace, modality: str, n_inputs: int):
    """GMMConfig from the preset and the options given (an option given always wins)."""
    from ..gmm import GMMConfig, recommended_config
    common = dict(covariance_type=args.covariance, seed=args.seed, subsample=args.subsample,
                  channels=tuple(range(n_inputs)) if args.all_channels else (0,), modality=modality,
                  ct_foreground_hu=tuple(args.ct_blood_hu), n4=bool(args.n4), outlier_z=args.outlier_z)
    single_k = args.clusters is not None or bool(args.components)
    if args.preset == "recommended" and modality == "mri" and not single_k:
        base = dict(n_clusters=recommended_config().n_clusters, foreground_rule="outlier",
                    ensemble_clusters=recommended_config().ensemble_clusters)
    else:
        base = dict(n_clusters=4, foreground_rule="auto",
                    ensemble_clusters=None)
        if args.preset == "recommended" and modality == "mri":
            base["foreground_rule"] = "outlier"
    if args.clusters is not None:
        base["n_clusters"] = args.clusters
    if args.ensemble:
        base["ensemble_clusters"] = tuple(args.ensemble)
    if args.foreground_rule is not None:
        base["foreground_rule"] = args.foreground_rule
    if args.foreground_components is not None:
        base["n_foreground"] = args.foreground_components
        if args.foreground_rule is None:
            base["foreground_rule"] = "brightest"
    if args.components:
        k = base["n_clusters"]
        bad = [c for c in args.components if not 1 <= c <= k]
        if bad:
            raise ValueError(f"--components {bad}: label numbers run from 1 to --clusters {k}")
        base["foreground_components"] = tuple(c - 1 for c in args.components)
        base["ensemble_clusters"] = None
    return GMMConfig(**base, **common)


def build_postprocess(args: argparse.Namespace, modality: str = "mri") -> dict:
    """binarize() keyword arguments from the preset and the options given. The recommended clean-up
    was selected on MRI tumours (one lesion); CT bleeds may be several, so CT keeps the plain threshold."""
    from ..gmm import RECOMMENDED_POSTPROCESS
    post = {"fill_holes": False, "min_component_voxels": 0, "keep_largest": 0, "opening_radius": 0}
    if args.preset == "recommended" and modality == "mri" and not args.no_postprocess:
        post.update({k: v for k, v in RECOMMENDED_POSTPROCESS.items() if k != "threshold"})
    if args.fill_holes is not None:
        post["fill_holes"] = False if args.fill_holes == "none" else args.fill_holes
    if args.min_size is not None:
        post["min_component_voxels"] = args.min_size
    if args.keep_largest is not None:
        post["keep_largest"] = args.keep_largest
        if args.keep_largest == 0 and args.open_radius is None:
            post["opening_radius"] = 0
    if args.open_radius is not None:
        post["opening_radius"] = args.open_radius
    if min(post["min_component_voxels"], post["keep_largest"], post["opening_radius"]) < 0:
        raise ValueError("--min-size, --keep-largest and --open-radius must be >= 0")
    if post["opening_radius"] and not post["keep_largest"]:
        raise ValueError("--open-radius needs --keep-largest N")
    return post


def run(args: argparse.Namespace) -> int:
    from ..gmm import ProbabilityMapSession, config_to_dict
    from ..image_io import check_output_paths, check_same_grid, read_image, write_image
    from ..inputs import parse_input_specs
    from ..postprocess import binarize, removed_by_keep_largest, removed_warning
    from ..channel_check import check_and_warn
    from ..output_probe import probe_writable
    from ..progress import ProgressReporter, emit_json
    from ..sidecar import sidecar_path, write_sidecar

    t0 = time.perf_counter()
    specs = parse_input_specs(args.inputs)
    names = [n or f"input{i + 1}" for i, (n, _) in enumerate(specs)]
    paths = [p for _, p in specs]
    # Every output name is checked before any work; an output never replaces an input (the mask included).
    outputs = check_output_paths({flag: val for flag, val in (("--output", args.output),
                                                              ("--binary-output", args.binary_output),
                                                              ("--labels-output", args.labels_output)) if val},
                                 paths + [args.mask])
    probe_writable({k: v for what, path in outputs.items() for k, v in ((what, path), (f"sidecar of {what}",
                                                                                       sidecar_path(path)))})
    if not 0.0 < args.threshold <= 1.0:
        raise ValueError(f"--threshold must be in (0, 1], got {args.threshold}")
    modality = "ct" if "ct" in [n for n, _ in specs if n] else "mri"
    post = build_postprocess(args, modality)
    config = build_config(args, modality, len(paths))

    images = [read_image(p) for p in paths]
    ref_geom = images[0].geometry
    for name, img in zip(names[1:], images[1:]):
        check_same_grid(ref_geom, img.geometry, names[0], name)
    mask = None
    if args.mask:
        mask_img = read_image(args.mask, dtype=None)
        check_same_grid(ref_geom, mask_img.geometry, names[0], "--mask")
        mask = mask_img.array_zyx
    # gmm gives unnamed inputs no modality (only the first is the reference), so only named ones are checked.
    check = check_and_warn([im.array_zyx for im in images], [n for n, _ in specs], paths, mask,
                           strict=args.strict, progress_mode=args.progress)

    reporter = ProgressReporter(args.progress, description="gmm")
    try:
        session = ProbabilityMapSession([im.array_zyx for im in images], mask, names=names,
                                        spacing_xyz=ref_geom.spacing)
        result = session.run(config, progress=reporter)
    finally:
        reporter.close()
    for w in result.warnings:
        print(f"cgcseg gmm: warning: {w}", file=sys.stderr)
    binary = removed = None
    if "--binary-output" in outputs:
        binary = binarize(result.probability, args.threshold, mask_zyx=result.mask, spacing_xyz=ref_geom.spacing, **post)
        if post["keep_largest"]:
            removed = removed_by_keep_largest(result.probability, binary, ref_geom.spacing, threshold=args.threshold,
                                              min_component_voxels=post["min_component_voxels"],
                                              fill_holes=post["fill_holes"], mask_zyx=result.mask)
            text = removed_warning(removed)
            if text:
                print(f"cgcseg gmm: warning: {text}", file=sys.stderr)
    elapsed = time.perf_counter() - t0
    inputs = {n: str(Path(p).resolve()) for n, p in zip(names, paths)}
    if args.mask:
        inputs["mask"] = str(Path(args.mask).resolve())
    common = dict(inputs=inputs, gmm_settings=config_to_dict(config), elapsed_s=elapsed, device="cpu",
                  gmm_result=result.summary(), channel_check=check.to_dict())
    write_image(outputs["--output"], result.probability, ref_geom)
    write_sidecar(outputs["--output"], kind="probability_map", **common)
    if binary is not None:
        write_image(outputs["--binary-output"], binary, ref_geom)
        write_sidecar(outputs["--binary-output"], kind="binary_lesion_mask",
                      postprocess={"threshold": args.threshold, **post}, removed_lesions=removed, **common)
    if "--labels-output" in outputs:
        write_image(outputs["--labels-output"], result.labels, ref_geom)
        write_sidecar(outputs["--labels-output"], kind="component_labels", **common)
    fg = ", ".join(str(c + 1) for c in result.foreground_components) or "none"
    ks = f"K={'/'.join(map(str, config.ensemble_clusters))} averaged" if config.ensemble_clusters else f"K={config.n_clusters}"
    print(f"P written to {outputs['--output']} ({ks}, lesion label(s) {fg} of K={config.n_clusters}, "
          f"{int(result.mask.sum())} brain voxels, {elapsed:.1f} s)", file=sys.stderr)
    if args.progress == "json":
        emit_json("done", outputs=[str(v) for v in outputs.values()], seconds=round(elapsed, 2))
    return 0
