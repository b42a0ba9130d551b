"""Lesions other than gliomas: what the shipped commands score on MS lesions and on synthetic CT bleeds.

The README calls MS and CT experimental; this script measures, through the command line exactly as a
user runs it, what the shipped defaults and their plain variants give there. Nothing is tuned: every
column is a command with fixed options, and no option was chosen by looking at these cases. Declared
2026-12-02 21:50 in this docstring, committed before its first run.

MS (``../shared/data/ms_isbi2015``: 5 FLAIRs with the brain mask and two raters' masks; reference =
rater 1, as the data README says). Columns, each with ``--mask`` = the case's brain mask:

- ``gmm_paper``       ``cgcseg gmm --preset paper`` (K = 4, brightest component, P >= 0.5, no clean-up);
- ``gmm_rec_raw``     ``cgcseg gmm --no-postprocess`` (the recommended preset's P >= 0.5, no clean-up);
- ``gmm_default``     ``cgcseg gmm`` with its defaults (recommended preset and its one-lesion clean-up);
- ``network``         ``cgcseg segment --postprocess none`` (the shipped FLAIR model's map >= 0.5);
- ``default``         ``cgcseg segment`` with its defaults (the shipped FLAIR model's default output);
- ``rater2``          rater 2's mask: the human ceiling.

CT (``../shared/data/ct_template``: the 1 mm skull-stripped template in HU and its brain mask).
Synthetic acute bleeds, seeded per (scenario, seed): Gaussian noise of SD 4 HU over the brain (the
template is an average with almost none; clinical head CT has 3-6 HU), then ``n`` solid ellipsoids,
semi-axes uniform in [5, 15] mm, random orientation-free (axis-aligned), centres uniform over brain
voxels at least 12 mm from the brain's edge, each set to a HU value uniform in [55, 80] plus the same
noise. Scenarios ``single`` (n = 1) and ``three`` (n = 3; they may touch), seeds 0-4 each. Column:
``gmm_default`` = ``cgcseg gmm --input ct=CT --mask BRAIN`` with its defaults (the CT path: HU blood-range
rule, plain threshold). No CT network exists.

Metrics per case: Dice, sensitivity, precision (pooled voxels) and the share of reference lesions
(26-connected components) that the mask touches. Means over cases; no CI (5 cases, nothing decided).

    python benchmarks/other_lesions.py [--data ../shared/data] [--only ms|ct]

``--only`` re-measures one part and keeps the other from the results file. Added after the first run (no
column changed): the share of the template's brain mask already >= 50 HU, which explains the CT precision.

Writes the docs/BENCHMARKS.md section ``other-lesions`` and ``docs/protocols/results/other-lesions.json``.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))

MS_COLUMNS = ("gmm_paper", "gmm_rec_raw", "gmm_default", "network", "default", "rater2")
CT_SCENARIOS = {"single": 1, "three": 3}
CT_SEEDS = range(5)
CT_TEMPLATE, CT_TEMPLATE_MASK = "scct_unsmooth_SS_0.01.nii.gz", "scct_unsmooth_SS_0.01_Mask.nii.gz"


def lesions_touched(pred: np.ndarray, ref: np.ndarray) -> float | None:
    """Share of ``ref``'s 26-connected components that hold at least one voxel of ``pred`` (None: no lesion)."""
    from scipy import ndimage
    labels, n = ndimage.label(ref, structure=np.ones((3, 3, 3), bool))
    if n == 0:
        return None
    hit = np.unique(labels[pred & (labels > 0)])
    return float(len(hit)) / n


def metrics(pred: np.ndarray, ref: np.ndarray) -> dict:
    from CGCLesionSegLib.metrics import dice, precision, sensitivity
    pred, ref = np.asarray(pred, bool), np.asarray(ref, bool)
    return {"dice": dice(pred, ref), "sensitivity": sensitivity(pred, ref), "precision": precision(pred, ref),
            "lesions_touched": lesions_touched(pred, ref), "voxels": int(pred.sum())}


def _cli(args: list[str]) -> None:
    from CGCLesionSegLib.cli import main as cli_main
    rc = cli_main(args + ["--progress", "none"])
    if rc != 0:
        raise RuntimeError(f"cgcseg {' '.join(args)} returned {rc}")


def _read(path: Path) -> np.ndarray:
    from CGCLesionSegLib.image_io import read_image
    return read_image(path).array_zyx > 0


def ms_case(case_dir: Path, tmp: Path) -> dict:
    """Every MS column's metrics for one case against rater 1."""
    n = case_dir.name
    flair, mask = case_dir / f"{n}_flair.nii.gz", case_dir / f"{n}_mask.nii.gz"
    ref = _read(case_dir / f"{n}_seg.nii.gz")
    inp = ["--input", f"flair={flair}", "--mask", str(mask)]
    runs = {"gmm_paper": ["gmm", *inp, "--preset", "paper"], "gmm_rec_raw": ["gmm", *inp, "--no-postprocess"],
            "gmm_default": ["gmm", *inp], "network": ["segment", *inp, "--postprocess", "none"],
            "default": ["segment", *inp]}
    out = {}
    for col, cmd in runs.items():
        seg = tmp / f"{n}-{col}.nii.gz"
        if cmd[0] == "gmm":
            cmd = cmd + ["--output", str(tmp / f"{n}-{col}-p.nii.gz"), "--binary-output", str(seg)]
        else:
            cmd = cmd + ["--output", str(seg)]
        t0 = time.perf_counter()
        _cli(cmd)
        out[col] = {**metrics(_read(seg), ref), "seconds": time.perf_counter() - t0}
    out["rater2"] = metrics(_read(case_dir / f"{n}_seg_rater2.nii.gz"), ref)
    return out


def synthetic_bleeds(ct_hu: np.ndarray, brain: np.ndarray, spacing_zyx, n: int, seed: int):
    """``(ct with bleeds, bleed mask)``: the declared generator (module docstring), ``(Z, Y, X)`` arrays."""
    from scipy import ndimage
    rng = np.random.default_rng(seed)
    ct = ct_hu.astype(np.float32).copy()
    noise = rng.normal(0.0, 4.0, ct.shape).astype(np.float32)
    ct[brain] += noise[brain]
    depth = ndimage.distance_transform_edt(brain, sampling=spacing_zyx)
    centres = np.argwhere(depth >= 12.0)
    if len(centres) == 0:
        raise ValueError("no brain voxel is 12 mm from the brain's edge")
    grid = np.indices(ct.shape, dtype=np.float32)
    bleed = np.zeros(ct.shape, bool)
    for _ in range(n):
        c = centres[rng.integers(len(centres))]
        axes = rng.uniform(5.0, 15.0, 3)
        hu = rng.uniform(55.0, 80.0)
        r2 = sum(((grid[i] - c[i]) * spacing_zyx[i] / axes[i]) ** 2 for i in range(3))
        blob = (r2 <= 1.0) & brain
        ct[blob] = hu + noise[blob]
        bleed |= blob
    return ct, bleed


def ct_cases(data: Path, tmp: Path) -> tuple[dict, dict]:
    """``(rows, hot)``: every scenario and seed scored, and :func:`template_hot_share` of the template (read once)."""
    from CGCLesionSegLib.image_io import read_image, write_image
    img = read_image(data / "ct_template" / CT_TEMPLATE)
    brain = read_image(data / "ct_template" / CT_TEMPLATE_MASK).array_zyx > 0
    spacing_zyx = tuple(reversed(img.geometry.spacing))
    mask_path = tmp / "brain.nii.gz"
    write_image(mask_path, brain.astype(np.uint8), img.geometry)
    out = {}
    for scen, n in CT_SCENARIOS.items():
        for seed in CT_SEEDS:
            ct, bleed = synthetic_bleeds(img.array_zyx, brain, spacing_zyx, n, seed)
            ct_path, seg = tmp / f"ct-{scen}-{seed}.nii.gz", tmp / f"ct-{scen}-{seed}-seg.nii.gz"
            write_image(ct_path, ct, img.geometry)
            t0 = time.perf_counter()
            _cli(["gmm", "--input", f"ct={ct_path}", "--mask", str(mask_path), "--output", str(tmp / "p.nii.gz"),
                  "--binary-output", str(seg)])
            out[f"{scen}/{seed}"] = {"gmm_default": {**metrics(_read(seg), bleed), "seconds": time.perf_counter() - t0,
                                                     "bleed_voxels": int(bleed.sum())}}
    return out, template_hot_share(img.array_zyx, brain)


def template_hot_share(ct_hu: np.ndarray, brain: np.ndarray) -> dict:
    """Voxels of the CT template's brain mask already in the blood range (>= 50 HU) before any bleed."""
    hot = int((ct_hu[brain] >= 50.0).sum())
    return {"voxels": hot, "share": hot / max(int(brain.sum()), 1)}


def _mean(rows: dict, col: str, key: str) -> str:
    vals = [r[col][key] for r in rows.values() if r[col][key] is not None]
    return f"{statistics.mean(vals):.3f}" if vals else "—"


def _cell(m: dict) -> str:
    def f(v):
        return "—" if v is None else f"{v:.3f}"
    return f"{f(m['dice'])} ({f(m['sensitivity'])} / {f(m['precision'])}; {f(m['lesions_touched'])})"


def report(ms: dict, ct: dict, hot: dict | None = None) -> str:
    from _report import machine_line
    lines = ["### Lesions other than gliomas (`benchmarks/other_lesions.py`)", "",
             "Declared in the script's docstring before its first run; every column is a shipped command with fixed "
             "options, nothing tuned on these cases. Cells: Dice (sensitivity / precision; share of reference lesions "
             "touched)."]
    if ms:
        lines += ["", "MS lesions, `ms_isbi2015` (5 FLAIRs, reference rater 1; `rater2` = the second rater, the human "
                  "ceiling). `gmm_paper`: `cgcseg gmm --preset paper`; `gmm_rec_raw`: `cgcseg gmm --no-postprocess`; "
                  "`gmm_default`: `cgcseg gmm`; `network`: `cgcseg segment --postprocess none` (shipped FLAIR model); "
                  "`default`: `cgcseg segment`. All with `--mask` = the case's brain mask.", "",
                  "| case | " + " | ".join(MS_COLUMNS) + " |", "|" + "---|" * (len(MS_COLUMNS) + 1)]
        lines += [f"| {c} | " + " | ".join(_cell(r[col]) for col in MS_COLUMNS) + " |" for c, r in ms.items()]
        lines.append("| **mean** | " + " | ".join(
            f"**{_mean(ms, col, 'dice')}** ({_mean(ms, col, 'sensitivity')} / {_mean(ms, col, 'precision')}; "
            f"{_mean(ms, col, 'lesions_touched')})" for col in MS_COLUMNS) + " |")
    if ct:
        lines += ["", "Synthetic acute bleeds in the 1 mm head-CT template (generator in the docstring: noise SD 4 HU, "
                  "ellipsoids with semi-axes 5–15 mm at 55–80 HU; `single`: one bleed, `three`: three; seeds 0–4). "
                  "Column: `cgcseg gmm --input ct=CT --mask BRAIN` with its defaults.", "",
                  "| scenario | seed | bleed voxels | `cgcseg gmm` default | mask voxels |", "|---|---|---|---|---|"]
        for k, r in ct.items():
            scen, seed = k.split("/")
            lines.append(f"| {scen} | {seed} | {r['gmm_default']['bleed_voxels']} | {_cell(r['gmm_default'])} | "
                         f"{r['gmm_default']['voxels']} |")
        for scen in CT_SCENARIOS:
            sub = {k: v for k, v in ct.items() if k.startswith(scen + "/")}
            if sub:
                lines.append(f"| **{scen} mean** | | | **{_mean(sub, 'gmm_default', 'dice')}** "
                             f"({_mean(sub, 'gmm_default', 'sensitivity')} / {_mean(sub, 'gmm_default', 'precision')}; "
                             f"{_mean(sub, 'gmm_default', 'lesions_touched')}) | |")
        if hot:
            lines += ["", f"Before any bleed, {hot['voxels']} voxels ({100 * hot['share']:.1f} %) of the template's brain "
                      "mask are already >= 50 HU (the blood range's lower end) — about the size of every mask above."]
    lines += ["", machine_line()]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    ap.add_argument("--only", choices=("ms", "ct"), default=None)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args(argv)
    ms_dir, ct_dir = args.data / "ms_isbi2015", args.data / "ct_template"
    if args.only != "ct" and not ms_dir.is_dir() or args.only != "ms" and not ct_dir.is_dir():
        raise SystemExit(f"needs {ms_dir} and {ct_dir} (../shared/data); pass --data")
    results = ROOT / "docs" / "protocols" / "results" / "other-lesions.json"
    kept = json.loads(results.read_text()) if args.only and results.exists() else {}
    ms, ct, hot = kept.get("ms", {}), kept.get("ct", {}), kept.get("ct_template_hot")  # --only: keep the other part
    with tempfile.TemporaryDirectory(prefix="other-lesions-") as t:
        tmp = Path(t)
        if args.only != "ct":
            for case_dir in sorted(p for p in ms_dir.iterdir() if p.is_dir()):
                ms[case_dir.name] = ms_case(case_dir, tmp)
                print(f"  {case_dir.name}: " + " ".join(f"{c} {ms[case_dir.name][c]['dice']:.3f}" for c in MS_COLUMNS),
                      file=sys.stderr)
        if args.only != "ms":
            ct, hot = ct_cases(args.data, tmp)
    text = report(ms, ct, hot)
    print(text)
    if not args.no_write:
        from _report import write_section
        results.parent.mkdir(parents=True, exist_ok=True)
        results.write_text(json.dumps({"ms": ms, "ct": ct, "ct_template_hot": hot}, indent=1))
        write_section("other-lesions", text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
