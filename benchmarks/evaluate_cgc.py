"""Accuracy of the CGC stage against its own GMM stage on the real BraTS cases (whole lesion = seg > 0).

Two modes:

* ``--model CKPT``: segment every case with one model and report per-case Dice of the CGC mask and
  of the GMM mask (P ≥ 0.5 with the GMM settings stored in the model). When the model was trained on
  these cases (the shipped defaults are), the table says so: that is *not* a held-out result.
* ``--folds K --train-minutes M``: leave-cases-out. Cases are split into K folds (sorted names,
  round-robin, fixed before any label is read); for each fold a model is trained on the other cases
  (``python -m CGCTraining``, labels never read) for M minutes, then segments the held-out cases.

Training settings for the folds are declared here, not tuned on labels: the shipped models'
settings (see ``CGCLesionSegLib/models/*.md``). Writes the section ``cgc-accuracy[-NAME]`` of
docs/BENCHMARKS.md.

    python benchmarks/evaluate_cgc.py --model CGCLesionSegLib/models/cgc_flair_t1_t1ce_t2.pt
    python benchmarks/evaluate_cgc.py --folds 2 --train-minutes 30 --modalities flair t1 t1ce t2
    python benchmarks/evaluate_cgc.py --protocol docs/protocols/cgc-v1.toml --stage screen [-- TRAIN_ARGS]

The declared protocol (``--protocol``, see benchmarks/protocol.py) is the way to compare recipes: it
reports every baseline the issue asks for and paired differences with bootstrap CIs.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

# Declared before running: the settings of the shipped CPU-trained models.
FOLD_TRAIN_ARGS = ["--crop", "96", "96", "64", "--spacing", "1.5", "1.5", "1.5", "--patch", "3", "3", "4",
                   "--lr", "1e-3", "--steps", "1000000", "--checkpoint-every", "50", "--workers", "0"]


def _cases(data: Path) -> list[Path]:
    return sorted(d for d in (data / "brats").iterdir() if d.is_dir())


def _score_case(case: Path, model_path: Path, modalities, device: str, rule: str | None = None) -> dict:
    """Dice of every output rule on one case, from one network pass and one GMM fit.

    ``gmm`` / ``cgc``: P ≥ 0.5 and CGC ≥ 0.5 (the paper's comparison); ``gmm_clean``: P with the GMM's
    recommended clean-up; ``cgc_clean``: CGC with the same clean-up; ``default``: what ``cgcseg segment``
    writes with this model, i.e. the output rule its checkpoint records (``default_rule`` in the row;
    ``single-lesion``: 0.5·CGC + 0.5·P, then the same clean-up; ``single-lesion-recommended``: the same
    with the recommended preset's P). ``rule`` overrides it: a training run's ``last.pt`` records none, and
    the shipping script scores it with the rule the exported file will record. The default column is
    thresholded at the threshold the checkpoint records for that rule (``default_threshold`` in the row),
    as ``cgcseg segment`` does without ``--threshold``."""
    from CGCLesionSegLib.checkpoint import default_output_rule, default_threshold
    from CGCLesionSegLib.gmm import RECOMMENDED_POSTPROCESS
    from CGCLesionSegLib.image_io import read_image
    from CGCLesionSegLib.inference import InferenceConfig, output_preset, segment_case
    from CGCLesionSegLib.metrics import dice, sensitivity
    from CGCLesionSegLib.postprocess import binarize
    images = [read_image(case / f"{case.name}_{m}.nii.gz") for m in modalities]
    ref = read_image(case / f"{case.name}_seg.nii.gz", dtype=None).array_zyx > 0
    res = segment_case([i.array_zyx for i in images], images[0].geometry, list(modalities), model_path,
                       None, InferenceConfig(device=device), compute_gmm=True)
    cgc, gmm = res.probability, res.gmm_probability
    preset = output_preset("single-lesion")
    post = {k: preset[k] for k in ("fill_holes", "keep_largest", "opening_radius", "min_component_voxels")}
    assert post == {k: RECOMMENDED_POSTPROCESS.get(k, 0) for k in post}, "single-lesion must use the GMM's clean-up"
    clean = lambda prob: binarize(prob, threshold=0.5, mask_zyx=res.brain_mask, **post)
    w = preset["gmm_weight"]
    rule = rule or default_output_rule(model_path)
    threshold = default_threshold(model_path, rule)
    if rule == "single-lesion" and threshold == 0.5:
        default = clean((1 - w) * cgc + w * gmm)
    else:  # the rule's own path (e.g. the recommended preset's P), as `cgcseg segment` runs it
        default = segment_case([i.array_zyx for i in images], images[0].geometry, list(modalities), model_path, None,
                               InferenceConfig(device=device, threshold=threshold, **output_preset(rule)),
                               gmm_probability_zyx=gmm).mask
    masks = {"gmm": gmm >= 0.5, "cgc": res.mask.astype(bool), "gmm_clean": clean(gmm), "cgc_clean": clean(cgc),
             "default": default.astype(bool)}
    row = {"case": case.name, "seconds": round(res.elapsed_s, 1), "default_rule": rule, "default_threshold": threshold}
    for k, m in masks.items():
        row[f"{k}_dice"] = dice(m, ref)
        row[f"{k}_sensitivity"] = sensitivity(m, ref)
    return row


#: What each output rule a row's ``default`` column was made with does, for report text.
RULE_TEXT = {"single-lesion": "0.5·CGC + 0.5·P, then the same clean-up",
             "single-lesion-recommended": "0.5·CGC + 0.5·P of the recommended GMM preset, then the same clean-up, "
                                          "the lesion kept being the component that holds what the same rule keeps at 0.5 "
                                          "(`--lesion-choice seed`, protocol hysteresis-v2)",
             "none": "CGC ≥ 0.5, no clean-up"}


def _rule_of(rows: list[dict]) -> str:
    """The output rule of the rows' ``default`` column (rows made before the field: ``single-lesion``)."""
    rules = {r.get("default_rule", "single-lesion") for r in rows}
    return rules.pop() if len(rules) == 1 else "the rule each model records"


def _threshold_text(rows: list[dict]) -> str:
    """How the rows' ``default`` column was thresholded (rows made before the field: 0.5)."""
    ts = {r.get("default_threshold", 0.5) for r in rows}
    if len(ts) > 1:
        return ", thresholded at the threshold each model records"
    t = ts.pop()
    return ", thresholded at 0.5" if t == 0.5 else f", thresholded at {t:g} (the checkpoint's `default_threshold`)"


def _table(rows: list[dict], title: str, note: str) -> str:
    rule = _rule_of(rows)
    cols = [("gmm", "GMM"), ("cgc", "CGC"), ("gmm_clean", "GMM + clean-up"), ("cgc_clean", "CGC + clean-up"),
            ("default", f"**default** ({rule})")]
    lines = [f"### {title}", "", note, "",
             "Columns: Dice (whole lesion). GMM = P ≥ 0.5, CGC = network ≥ 0.5 (the paper's comparison); "
             "clean-up = the GMM's recommended one (2-D hole filling, largest lesion after an opening r = 3 mm); "
             f"default = what `cgcseg segment` writes with the model, its output rule `{rule}`"
             + (f" ({RULE_TEXT[rule]})" if rule in RULE_TEXT else "") + _threshold_text(rows) + ".", "",
             "| case | " + " | ".join(n for _, n in cols) + " | Δ CGC−GMM | Δ default−GMM | Δ default−(GMM + clean-up) |",
             "|---|" + "---|" * (len(cols) + 3)]
    mean = lambda k: statistics.mean(r[f"{k}_dice"] for r in rows)
    for r in rows:
        d = {k: r[f"{k}_dice"] for k, _ in cols}
        lines.append(f"| {r['case']} | " + " | ".join(f"{d[k]:.4f}" for k, _ in cols)
                     + f" | {d['cgc'] - d['gmm']:+.4f} | {d['default'] - d['gmm']:+.4f} | {d['default'] - d['gmm_clean']:+.4f} |")
    m = {k: mean(k) for k, _ in cols}
    lines.append("| **mean** | " + " | ".join(f"**{m[k]:.4f}**" for k, _ in cols)
                 + f" | **{m['cgc'] - m['gmm']:+.4f}** | **{m['default'] - m['gmm']:+.4f}** | **{m['default'] - m['gmm_clean']:+.4f}** |")
    sens = lambda k: statistics.mean(r[f"{k}_sensitivity"] for r in rows)
    lines += ["", "Mean sensitivity: " + ", ".join(f"{n.replace('**', '')} {sens(k):.4f}" for k, n in cols) + "."]
    return "\n".join(lines)


def _fold_runs(cases: list[Path], work: Path, k: int, modalities) -> list[tuple[Path, Path, list[Path]]]:
    """``[(listing.csv, run dir, held-out cases)]`` of a K-fold split (round-robin over sorted names)."""
    work.mkdir(parents=True, exist_ok=True)
    runs = []
    for i in range(k):
        test = cases[i::k]
        listing = work / f"fold{i}.csv"
        with listing.open("w") as fh:
            fh.write("case," + ",".join(modalities) + "\n")
            for c in (c for c in cases if c not in test):
                fh.write(c.name + "," + ",".join(str(c / f"{c.name}_{m}.nii.gz") for m in modalities) + "\n")
        runs.append((listing, work / f"fold{i}", test))
    return runs


def _score_folds(runs, args) -> tuple[list[dict], list[int]]:
    """Score each fold's ``last.pt`` on its held-out cases; checks no test case was trained on."""
    from CGCLesionSegLib.checkpoint import info_from_dict, read_checkpoint
    rows, steps = [], []
    for _, run, test in runs:
        if not (run / "last.pt").exists():
            raise SystemExit(f"no model in {run}; run without --score-only first")
        info = info_from_dict(read_checkpoint(run / "last.pt"), run / "last.pt")
        trained_on = set((info.extra or {}).get("cases", []))
        assert not trained_on & {c.name for c in test}, f"{run}: a test case was in its training set"
        steps.append(info.step)
        rows += [_score_case(c, run / "last.pt", args.modalities, args.device) for c in test]
    return rows, steps


def _curve_table(points: list[tuple[list[int], list[dict]]], title: str, note: str) -> str:
    rule = _rule_of([r for _, rows in points for r in rows])
    cols = [("gmm", "GMM"), ("cgc", "CGC"), ("cgc_clean", "CGC + clean-up"), ("default", f"default ({rule})")]
    lines = [f"### {title}", "", note, "", "| steps (per fold) | " + " | ".join(n for _, n in cols) + " | Δ CGC−GMM |",
             "|---|" + "---|" * (len(cols) + 1)]
    for steps, rows in points:
        m = {k: statistics.mean(r[f"{k}_dice"] for r in rows) for k, _ in cols}
        lines.append(f"| {', '.join(map(str, steps))} | " + " | ".join(f"{m[k]:.4f}" for k, _ in cols)
                     + f" | {m['cgc'] - m['gmm']:+.4f} |")
    return "\n".join(lines)


def _train_fold(listing: Path, run: Path, args, threads: int) -> subprocess.Popen:
    import os
    cmd = [sys.executable, "-m", "CGCTraining", "--cases", str(listing), "--modalities", *args.modalities,
           "--output-dir", str(run), "--max-minutes", str(args.train_minutes), "--progress", "none",
           "--device", args.device, *FOLD_TRAIN_ARGS]
    if (run / "last.pt").exists():
        cmd.append("--resume")
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    log = open(run.parent / f"{run.name}.log", "a")
    return subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--model")
    ap.add_argument("--folds", type=int)
    ap.add_argument("--train-minutes", type=float, default=30.0)
    ap.add_argument("--modalities", nargs="+", default=["flair", "t1", "t1ce", "t2"])
    ap.add_argument("--device", default="cpu", help="cpu or cuda: inference, and with --protocol also the trainings")
    ap.add_argument("--name", default=None, help="section suffix in docs/BENCHMARKS.md")
    ap.add_argument("--work-dir", default=None, help="keep fold runs here (default: a temp folder)")
    ap.add_argument("--jobs", type=int, default=None, help="models trained at once (cores are shared among them; "
                    "default 1, or the protocol's)")
    ap.add_argument("--score-only", action="store_true", help="score the fold models already in --work-dir")
    ap.add_argument("--curve", nargs="+", metavar="DIR",
                    help="score snapshot folders (each with foldK/last.pt of the same split) as a learning curve")
    ap.add_argument("--curve-folds", type=int, default=2, help="folds of the --curve snapshots (default 2)")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--protocol", metavar="TOML", help="run a declared protocol (docs/protocols/*.toml); "
                    "arguments after -- go to every training")
    ap.add_argument("--stage", default="screen", help="stage of --protocol (default screen)")
    ap.add_argument("--tag", help="with --protocol: keep runs and results apart (e.g. for extra training arguments)")
    ap.add_argument("--score-available", action="store_true",
                    help="with --protocol: score the models that have finished (kept beside them), train nothing; "
                         "print their tables marked PARTIAL, write no report")
    ap.add_argument("--train-variants", nargs="+", metavar="VARIANT",
                    help="with --protocol: train only these variants of the stage (and their round-1 models), "
                         "then stop: nothing is scored or written. Rebuilds a source protocol's run folders "
                         "(lost with runs/) for a rule protocol; CPU trainings are deterministic per seed")
    ap.add_argument("--model-set", nargs="+", metavar="MODALITY",
                    help="with --protocol: only this model set of the stage (e.g. `--model-set flair`): train, "
                         "score and write it alone (results `<protocol>-<stage>-<set>`); decisions are per set")
    ap.add_argument("--train-seeds", nargs="+", type=int, metavar="SEED",
                    help="with --train-variants: only these seeds of the stage")
    argv = list(sys.argv[1:] if argv is None else argv)
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    argv = argv[:argv.index("--")] if "--" in argv else argv
    args = ap.parse_args(argv)
    if args.protocol:
        import tomllib
        with open(args.protocol, "rb") as fh:
            proto = tomllib.load(fh)
        if "source" in proto:  # an inference-rule protocol over another protocol's trained models
            from rules import run as run_rules
            return run_rules(args, proto, Path(args.protocol))
        from protocol import run as run_protocol
        return run_protocol(args, extra)
    cases = _cases(Path(args.data))
    if args.model:
        from CGCLesionSegLib.checkpoint import info_from_dict, read_checkpoint
        info = info_from_dict(read_checkpoint(args.model), args.model)
        mods = list(info.channels)
        trained_on = set((info.extra or {}).get("cases", []))
        rows = [_score_case(c, Path(args.model), mods, args.device) for c in cases]
        seen = [r["case"] for r in rows if r["case"] in trained_on]
        note = (f"Model `{Path(args.model).name}` (channels {' '.join(mods)}, step {info.step}). "
                + (f"**These are its training cases** ({len(seen)} of {len(rows)}; no labels were used in training, "
                   "but the images were): not a held-out result." if seen else "None of these cases were in its training set."))
        text = _table(rows, f"CGC vs its GMM stage — {Path(args.model).name}", note)
    elif args.folds:
        import os
        work = Path(args.work_dir or tempfile.mkdtemp(prefix="cgc-folds-"))
        runs = _fold_runs(cases, work, args.folds, args.modalities)
        if not args.score_only:
            args.jobs = args.jobs or 1
            threads = max(1, (os.cpu_count() or 1) // args.jobs)
            pending = list(runs)
            while pending:  # at most --jobs folds train at once, each with its share of the cores
                batch, pending = pending[:args.jobs], pending[args.jobs:]
                t = time.time()
                procs = [_train_fold(listing, run, args, threads) for listing, run, _ in batch]
                for proc, (_, run, _) in zip(procs, batch):
                    if proc.wait() != 0:
                        raise SystemExit(f"training {run} failed; see {run.parent / (run.name + '.log')}")
                print(f"folds {[r.name for _, r, _ in batch]}: trained in {time.time() - t:.0f} s", file=sys.stderr)
        rows, steps = _score_folds(runs, args)
        rows.sort(key=lambda r: r["case"])
        note = (f"Leave-cases-out: {args.folds} folds (round-robin over sorted case names), each model trained "
                f"{args.train_minutes:g} min ({args.jobs} fold(s) at a time on {os.cpu_count()} cores; "
                f"{', '.join(str(s) for s in steps)} steps) on the other cases ({' '.join(args.modalities)}), settings "
                f"`{' '.join(FOLD_TRAIN_ARGS)}`; every case below was held out from its model's training. "
                "No label was read in training; the output rules were fixed before any held-out number existed (from the shipped models' numbers on their own training cases).")
        text = _table(rows, f"CGC vs GMM, leave-cases-out ({' '.join(args.modalities)})", note)
    elif args.curve:
        points = []
        for d in args.curve:
            runs = _fold_runs(cases, Path(d), args.curve_folds, args.modalities)
            rows, steps = _score_folds(runs, args)
            points.append((steps, rows))
        points.sort(key=lambda p: sum(p[0]))
        note = (f"Held-out mean Dice of the same {args.curve_folds}-fold leave-cases-out runs, scored on snapshots of "
                f"their `last.pt` taken during training ({' '.join(args.modalities)}). Read it as a measurement of "
                "how the held-out result moves with training length, not as a choice: no setting was changed from it.")
        text = _curve_table(points, f"Held-out Dice vs training steps ({' '.join(args.modalities)})", note)
    else:
        ap.error("give --model CKPT, --folds K or --curve DIR ...")
    print(text)
    if not args.no_write:
        from _report import machine_line, write_section
        name = "cgc-accuracy" + (f"-{args.name}" if args.name else "")
        write_section(name, text + "\n\n" + machine_line())
    print(json.dumps(rows), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
