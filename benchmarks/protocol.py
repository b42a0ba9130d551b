"""A declared evaluation protocol of the CGC network: trains every fold model it names, scores the
held-out cases against the baselines, and reports paired differences with bootstrap CIs.

Run through ``python benchmarks/evaluate_cgc.py --protocol FILE --stage NAME [-- TRAIN_ARGS ...]``;
the protocol file (TOML, e.g. docs/protocols/cgc-v1.toml) says what is trained, on which cases,
with which seeds and budget, and which choices read labels (see its header). Arguments after ``--``
are passed to every training of the stage (so every ablation flag works) and recorded with the
results; give ``--tag`` to keep such runs apart from the declared ones.

Columns, per case (the lesion = reference label > 0):

* ``p``: the model's own P (its stored GMM settings, on the input grid) >= 0.5 — the paper's baseline;
* ``p_smooth``: that P smoothed with a Gaussian of sigma (mm) chosen inside the training fold;
* ``p_netgrid``: P computed on the model's spacing and resampled back like the network output;
* ``gmm_default``: the default output of ``cgcseg gmm`` (recommended preset and clean-up);
* ``network``: the network map >= 0.5 (the paper's output);
* ``default``: the default output of ``cgcseg segment`` (the ``single-lesion`` rule).
"""
from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
COLUMNS = (("p", "P ≥ 0.5"), ("p_smooth", "smoothed P"), ("p_netgrid", "P on the net's grid"),
           ("gmm_default", "`cgcseg gmm` default"), ("network", "network ≥ 0.5"), ("default", "**default output**"))
METRIC_KEYS = ("dice", "sensitivity", "precision", "hd95_mm", "assd_mm")
#: (a, b, what the issue asks of a − b)
DIFFERENCES = (("network", "p", "≥ +0.05, CI > 0"), ("network", "p_smooth", "≥ +0.03, CI > 0"),
               ("network", "p_netgrid", "—"), ("default", "gmm_default", "≥ +0.03; no case < −0.10"),
               ("default", "p_smooth", "—"))


def load_protocol(path: str | os.PathLike) -> dict:
    import tomllib
    with open(path, "rb") as fh:
        proto = tomllib.load(fh)
    for key in ("name", "labelled", "unlabelled", "folds", "base_train_args", "variants", "stages"):
        if key not in proto:
            raise SystemExit(f"{path}: the protocol lacks '{key}'")
    # A dot in an unquoted table name nests it ([variants.abl-tau-0.07] is variant "abl-tau-0" with a
    # sub-table "07"), which TOML accepts silently: every variant must be a table with "args".
    for name, v in proto["variants"].items():
        if not isinstance(v, dict) or "args" not in v:
            raise SystemExit(f"{path}: variant '{name}' has no 'args' (a name with a dot must be quoted: "
                             f'[variants."{name}.…"])')
    from CGCTraining.self_train import PSEUDO_VOLUMES
    for name, v in proto["variants"].items():
        if "pseudo_volume" in v and (v["pseudo_volume"] not in PSEUDO_VOLUMES or not v.get("self_train_from")):
            raise SystemExit(f"{path}: variant '{name}' pseudo_volume = {v['pseudo_volume']!r}: one of "
                             f"{', '.join(PSEUDO_VOLUMES)}, and only in a variant with self_train_from")
    for sname, stage in proto["stages"].items():
        for ref in [v for v in stage.get("variants", []) if v not in proto["variants"]]:
            raise SystemExit(f"{path}: stage '{sname}' names variant '{ref}', which is not declared "
                             f"(declared: {', '.join(proto['variants'])}); a name with a dot must be quoted")
        for key in ("variant", "base"):
            ref = stage.get(key)
            if ref and (not ref.startswith("winner of ") or ref[len("winner of "):].strip() not in proto["stages"]):
                raise SystemExit(f"{path}: stage '{sname}' {key} = '{ref}': write 'winner of STAGE' with a "
                                 f"declared stage ({', '.join(proto['stages'])})")
    return proto


@dataclass
class Model:
    """One fold model of a stage."""
    modalities: tuple
    variant: str
    fold: int
    seed: int
    run: Path
    test: list
    train: list
    args: list = field(default_factory=list)
    parent: Optional["Model"] = None  # self-training: the previous round, whose pseudo-labels are this model's targets
    pseudo_volume: str = "fixed"  # how those pseudo-labels are thresholded (CGCTraining.self_train.PSEUDO_VOLUMES)

    @property
    def key(self) -> str:
        # fold -1: trained on every case (the shipped models), so there is no held-out fold to name
        where = "all" if self.fold < 0 else f"fold{self.fold}"
        return f"{'-'.join(self.modalities)}/{self.variant}/{where}-seed{self.seed}"


def _case_dirs(folder: Path) -> list[Path]:
    if not folder.is_dir():
        raise SystemExit(f"{folder} not found: the protocol needs ../shared/data (give --data)")
    return sorted(d for d in folder.iterdir() if d.is_dir())


def _winner(proto: dict, ref: str, results_dir: Path) -> str:
    """The variant named by ``winner of STAGE``, read from that stage's results file."""
    other = ref.split(" of ", 1)[1].strip()
    path = results_dir / f"{proto['name']}-{other}.json"
    if not path.exists():
        raise SystemExit(f"this stage trains the winner of '{other}', but {path} does not exist: run that stage first")
    return json.loads(path.read_text())["winner"]


def _variant_args(proto: dict, stage: dict, results_dir: Path, name: str) -> list:
    """Training args of variant ``name`` in ``stage``: the stage's ``base`` recipe (if any), then the variant's."""
    base = list(proto["variants"][_winner(proto, stage["base"], results_dir)]["args"]) if stage.get("base") else []
    return base + list(proto["variants"][name]["args"])


def stage_variants(proto: dict, stage: dict, results_dir: Path) -> list[tuple[str, list]]:
    """[(variant name, its training args)] of a stage; ``winner of screen`` is read from that stage's results."""
    names = [_winner(proto, stage["variant"], results_dir)] if "variant" in stage else list(stage["variants"])
    return [(n, _variant_args(proto, stage, results_dir, n)) for n in names]


def plan(proto: dict, stage_name: str, data: Path, work: Path, results_dir: Path, extra: list) -> list[Model]:
    stage = proto["stages"][stage_name]
    labelled = _case_dirs(data / proto["labelled"])
    unlabelled = _case_dirs(data / proto["unlabelled"])
    k = int(proto["folds"])
    models = []
    for mods in stage["modalities"]:
        for vname, vargs in stage_variants(proto, stage, results_dir):
            for fold in range(k):
                test = labelled[fold::k]
                train = [c for c in labelled if c not in test] + unlabelled
                for seed in stage["seeds"]:
                    def model(name: str, args: list, chain: tuple = ()) -> Model:
                        """``name``'s model of this fold and seed, after the earlier rounds it trains on (each
                        planned once, where its own variant's model would live, and shared)."""
                        if name in chain:
                            raise SystemExit(f"self_train_from loops: {' -> '.join(chain + (name,))}")
                        run = work / "-".join(mods) / name / f"fold{fold}-seed{seed}"
                        found = next((m for m in models if m.run == run), None)
                        if found is not None:
                            return found
                        source = proto["variants"][name].get("self_train_from")
                        parent = model(source, _variant_args(proto, stage, results_dir, source),
                                       chain + (name,)) if source else None
                        made = Model(tuple(mods), name, fold, int(seed), run, test, train,
                                     list(proto["base_train_args"]) + args + list(extra), parent,
                                     proto["variants"][name].get("pseudo_volume", "fixed"))
                        models.append(made)
                        return made
                    model(vname, vargs)
    resolve_fold_sigma(models, proto, data, work)
    return models


#: In a variant's training arguments: replaced, per fold, by the smoothed-P sigma chosen on that fold's
#: labelled training cases — the same choice (and the same file) as the smoothed-P baseline's, so no
#: held-out label is read. A model without held-out cases (fold -1: the shipped models) gets the sigma
#: chosen on every labelled case.
FOLD_SIGMA = "{fold_sigma}"


def gmm_config_of(args: list, mods):
    """The GMM settings a training with ``args`` uses (parsed the way ``python -m CGCTraining`` does)."""
    from CGCTraining.__main__ import _gmm_config, build_parser
    parsed = build_parser().parse_args(["--cases", "-", "--output-dir", "-", *[str(a) for a in args]])
    return _gmm_config(parsed, [m.lower() for m in mods])


def sigma_tag(fold: int, gmm_cfg) -> str:
    """The tag of a fold's smoothed-P sigma: ``fold<k>`` (``all`` for fold -1) for the paper's GMM settings,
    with ``-gmm-<hash>`` appended for any other settings, since the sigma is chosen on that P."""
    from CGCLesionSegLib.config import config_to_dict
    from CGCLesionSegLib.gmm import GMMConfig
    tag = f"fold{fold}" if fold >= 0 else "all"
    if gmm_cfg is None or gmm_cfg == GMMConfig():
        return tag
    import hashlib
    digest = hashlib.sha1(json.dumps(config_to_dict(gmm_cfg), sort_keys=True).encode()).hexdigest()[:8]
    return f"{tag}-gmm-{digest}"


def model_sigma_tag(model: "Model") -> str:
    """:func:`sigma_tag` of a trained model, from the GMM settings its checkpoint records."""
    from CGCLesionSegLib.checkpoint import info_from_dict, read_checkpoint
    from CGCLesionSegLib.config import config_from_dict
    from CGCLesionSegLib.gmm import GMMConfig
    info = info_from_dict(read_checkpoint(model.run / "last.pt"), model.run / "last.pt")
    gmm = (info.preprocessing or {}).get("gmm")
    return sigma_tag(model.fold, config_from_dict(GMMConfig, gmm) if gmm else None)


def sigma_path(work: Path, mods, tag: str) -> Path:
    """Where the smoothed-P sigma of a fold (``tag``: ``fold<k>`` or ``all``) is kept."""
    return work / f"sigma-{'-'.join(mods)}-{tag}.json"


def sigma_choice(work: Path, tag: str, train_cases: list, mods, gmm_cfg, sigmas) -> dict:
    """``{"sigma": s, "scores": {sigma: mean Dice}}`` for the labelled ``train_cases``, computed once and
    kept in ``work/sigma-<modalities>-<tag>.json`` (shared by every model of that fold)."""
    path = sigma_path(work, mods, tag)
    if path.exists():
        saved = json.loads(path.read_text())
        return {"sigma": saved["sigma"], "scores": {float(a): b for a, b in saved["scores"].items()}}
    if not train_cases:
        raise SystemExit(f"no labelled training case to choose the smoothing sigma of {tag} on")
    s, scores = choose_sigma(train_cases, list(mods), gmm_cfg, [float(v) for v in sigmas])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"sigma": s, "scores": scores}))
    return {"sigma": s, "scores": scores}


def resolve_fold_sigma(models: list, proto: dict, data: Path, work: Path) -> None:
    """Replace :data:`FOLD_SIGMA` in the models' arguments by their fold's sigma (in place)."""
    labelled_dir = (data / proto["labelled"]).resolve()
    cases: dict = {}
    for m in models:
        if FOLD_SIGMA not in m.args:
            continue
        train = [d for d in m.train if Path(d).resolve().parent == labelled_dir]
        for d in train:
            cases.setdefault(d.name, CaseData(Path(d)))
        gmm_cfg = gmm_config_of(["0" if a == FOLD_SIGMA else a for a in m.args], m.modalities)
        choice = sigma_choice(work, sigma_tag(m.fold, gmm_cfg), [cases[d.name] for d in train], m.modalities,
                              gmm_cfg, proto["smoothing_sigmas_mm"])
        m.args = [f"{choice['sigma']:g}" if a == FOLD_SIGMA else a for a in m.args]


def pseudo_labels(model: Model, device: str = "cpu") -> dict:
    """Segment ``model``'s training cases with its round-1 parent (labels never read; the rule is
    :data:`CGCTraining.self_train.PSEUDO_RULE`, the one ``--self-train-rounds`` uses, thresholded as the
    variant's ``pseudo_volume`` says); returns
    {case name: path of the binary target written under the run's ``-pseudo`` folder}."""
    from CGCTraining.data import CaseSpec
    from CGCTraining.self_train import write_pseudo_labels
    out = model.run.parent / f"{model.run.name}-pseudo"
    specs = [CaseSpec(c.name, {m: str(c / f"{c.name}_{m}.nii.gz") for m in model.modalities}) for c in model.train]
    write_pseudo_labels(model.parent.run / "last.pt", specs, model.modalities, out, device=device,
                        volume=model.pseudo_volume)
    return {c.name: out / f"{c.name}.nii.gz" for c in model.train}


def _listing(model: Model, device: str = "cpu") -> Path:
    model.run.parent.mkdir(parents=True, exist_ok=True)
    path = model.run.parent / f"{model.run.name}.csv"
    probs = pseudo_labels(model, device) if model.parent is not None else None
    lines = ["case," + ",".join(model.modalities) + (",prob" if probs else "")]
    for c in model.train:
        lines.append(c.name + "," + ",".join(str(c / f"{c.name}_{m}.nii.gz") for m in model.modalities)
                     + (f",{probs[c.name]}" if probs else ""))
    path.write_text("\n".join(lines) + "\n")
    return path


def _finished(model: Model) -> Optional[dict]:
    marker = model.run / "finished.json"
    return json.loads(marker.read_text()) if marker.exists() else None


def _running_elsewhere(model: Model) -> bool:
    """A training of this run folder started by an earlier runner and still alive (adopted, not restarted)."""
    needle = b"\0".join([b"--output-dir", str(model.run).encode(), b""])
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if needle in (proc / "cmdline").read_bytes() + b"\0":
                return True
        except OSError:
            continue
    return False


class _Adopted:
    """Stands in for the Popen of a training an earlier runner started."""

    def __init__(self, model: Model):
        self.model, self.t0, self.returncode = model, time.time(), None

    def poll(self):
        if _running_elsewhere(self.model):
            return None
        from CGCLesionSegLib.checkpoint import read_checkpoint
        ok = (self.model.run / "last.pt").exists()
        self.returncode = 0 if ok else 1
        if ok:
            self.t0 = time.time() - float(read_checkpoint(self.model.run / "last.pt").get("extra", {}).get("elapsed_s", 0))
        return self.returncode


def _start(model: Model, stage: dict, threads: int, device: str = "cpu") -> subprocess.Popen:
    cmd = [sys.executable, "-m", "CGCTraining", "--cases", str(_listing(model, device)), "--modalities", *model.modalities,
           "--output-dir", str(model.run), "--steps", str(stage["steps"]), "--max-minutes", str(stage["max_minutes"]),
           "--seed", str(model.seed), "--progress", "none", "--device", device, *model.args]
    if (model.run / "last.pt").exists():
        cmd.append("--resume")  # an interrupted session: continue where the checkpoint stands
    elif model.parent is not None:
        cmd += ["--init-from", str(model.parent.run / "last.pt")]  # self-training: round 2 starts from round 1
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    model.run.parent.mkdir(parents=True, exist_ok=True)
    log = open(model.run.parent / f"{model.run.name}.log", "a")
    log.write(f"$ {' '.join(cmd)}\n")
    log.flush()
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=str(ROOT))
    proc.t0 = time.time()  # type: ignore[attr-defined]
    return proc


def train_all(models: list[Model], stage: dict, jobs: int, device: str = "cpu") -> None:
    """Train every unfinished model, ``jobs`` at a time (a queue: the next starts as one ends), on
    ``device`` (the protocols' plans are for CPU; a GPU session may pass ``cuda``, recorded per model)."""
    pending = [m for m in models if _finished(m) is None]
    threads = max(1, (os.cpu_count() or 1) // max(1, jobs))
    running: list[tuple[Model, subprocess.Popen]] = []
    for m in list(pending):
        if _running_elsewhere(m):
            print(f"adopting the running training {m.key}", file=sys.stderr)
            pending.remove(m)
            running.append((m, _Adopted(m)))
    while pending or running:
        while len(running) < jobs:
            ready = [m for m in pending if m.parent is None or _finished(m.parent) is not None]
            if not ready:
                break
            m = ready[0]
            pending.remove(m)
            print(f"training {m.key}" + (f" on pseudo-labels of {m.parent.key}" if m.parent else ""), file=sys.stderr)
            running.append((m, _start(m, stage, threads, device)))
        if not running and pending:
            raise SystemExit(f"cannot train {', '.join(m.key for m in pending)}: their round-1 models are missing")
        time.sleep(5)
        for m, proc in list(running):
            if proc.poll() is None:
                continue
            running.remove((m, proc))
            if proc.returncode != 0:
                log = m.run.parent / f"{m.run.name}.log"
                tail = log.read_text(errors="replace").strip().splitlines()[-1:] if log.exists() else []
                raise SystemExit(f"training {m.key} failed (exit {proc.returncode}): {' '.join(tail)}; see {log}")
            from CGCLesionSegLib.checkpoint import read_checkpoint
            step = int(read_checkpoint(m.run / "last.pt")["step"])
            (m.run / "finished.json").write_text(json.dumps({"step": step, "steps": stage["steps"], "device": device,
                                                             "seconds": round(time.time() - proc.t0, 1)}))
            print(f"trained {m.key}: {step} steps in {time.time() - proc.t0:.0f} s", file=sys.stderr)


# ------------------------------------------------------------------------------------------ scoring
class CaseData:
    """A labelled case read once; P maps memoised per (GMM settings, spacing)."""

    def __init__(self, folder: Path):
        self.folder = folder
        self.name = folder.name
        self._images: dict = {}
        self._p: dict = {}
        self._brain: dict = {}
        self._gmm_default: dict = {}
        self._ref = None

    def images(self, mods):
        from CGCLesionSegLib.image_io import read_image
        for m in mods:
            if m not in self._images:
                self._images[m] = read_image(self.folder / f"{self.name}_{m}.nii.gz")
        return [self._images[m] for m in mods]

    @property
    def geometry(self):
        return next(iter(self._images.values())).geometry if self._images else self.images(["flair"])[0].geometry

    @property
    def reference(self):
        if self._ref is None:
            from CGCLesionSegLib.image_io import read_image
            self._ref = read_image(self.folder / f"{self.name}_seg.nii.gz", dtype=None).array_zyx > 0
        return self._ref

    def brain(self, mods):
        key = tuple(mods)
        if key not in self._brain:
            from CGCLesionSegLib.preprocess import default_brain_mask
            self._brain[key] = default_brain_mask([i.array_zyx for i in self.images(mods)])
        return self._brain[key]

    def probability(self, mods, gmm_cfg, spacing=None):
        """P with ``gmm_cfg`` on the input grid, or computed on ``spacing`` and resampled back."""
        from CGCLesionSegLib.config import config_to_dict
        key = (tuple(mods), json.dumps(config_to_dict(gmm_cfg), sort_keys=True), tuple(spacing or ()))
        if key not in self._p:
            from CGCLesionSegLib.gmm import compute_probability_map
            from CGCLesionSegLib.resample import grid_for_spacing, resample_to_grid, same_spacing
            imgs = self.images(mods)
            geom = imgs[0].geometry
            chans = [i.array_zyx for i in imgs]
            brain = self.brain(mods)
            if spacing is None or same_spacing(geom.spacing, spacing):
                p = compute_probability_map(chans, brain, gmm_cfg, names=list(mods), spacing_xyz=geom.spacing).probability
            else:
                g2 = grid_for_spacing(geom, spacing)
                c2 = [resample_to_grid(c, geom, g2, "linear") for c in chans]
                b2 = resample_to_grid(brain.astype("uint8"), geom, g2, "nearest") > 0
                p2 = compute_probability_map(c2, b2, gmm_cfg, names=list(mods), spacing_xyz=g2.spacing).probability
                import numpy as np
                p = np.clip(resample_to_grid(p2, g2, geom, "linear"), 0.0, 1.0)
                p[~brain] = 0.0
            self._p[key] = p.astype("float32")
        return self._p[key]


def gmm_default_mask(case: CaseData, mods):
    """The binary output of ``cgcseg gmm`` with its defaults (recommended preset and clean-up); the same
    for every model of a case, so it is computed once per case and modality set."""
    key = tuple(mods)
    if key not in case._gmm_default:
        case._gmm_default[key] = _gmm_default_mask(case, mods)
    return case._gmm_default[key]


def _gmm_default_settings(mods):
    """``(GMM config, threshold, clean-up keywords)`` of ``cgcseg gmm`` run with its defaults on ``mods``."""
    import argparse

    from CGCLesionSegLib.commands import gmm as gmm_cmd
    ap = argparse.ArgumentParser()
    gmm_cmd.add_arguments(ap)
    args = ap.parse_args([a for m in mods for a in ("--input", f"{m}=x.nii.gz")] + ["--output", "p.nii.gz",
                                                                                    "--binary-output", "b.nii.gz"])
    return gmm_cmd.build_config(args, "mri", len(mods)), args.threshold, gmm_cmd.build_postprocess(args, "mri")


def gmm_default_probability(case: CaseData, mods):
    """The map ``cgcseg gmm`` thresholds by default (recommended preset), ``(Z, Y, X)`` float32, memoised."""
    return case.probability(mods, _gmm_default_settings(mods)[0])


def _gmm_default_mask(case: CaseData, mods):
    from CGCLesionSegLib.postprocess import binarize
    _, threshold, post = _gmm_default_settings(mods)
    return binarize(gmm_default_probability(case, mods), threshold, mask_zyx=case.brain(mods),
                    spacing_xyz=case.geometry.spacing, **post)


def choose_sigma(train_cases: list[CaseData], mods, gmm_cfg, sigmas) -> tuple[float, dict]:
    """The sigma with the best mean Dice of smoothed P >= 0.5 on the fold's labelled training cases."""
    from CGCLesionSegLib.metrics import dice
    from CGCLesionSegLib.postprocess import smooth_probability
    scores = {}
    for s in sigmas:
        scores[s] = statistics.mean(dice(smooth_probability(c.probability(mods, gmm_cfg), s, c.geometry.spacing) >= 0.5, c.reference)
                                    for c in train_cases)
    best = max(sigmas, key=lambda s: (round(scores[s], 6), -s))
    return best, scores


def segment_held_out(model: Model, cases: dict, device: str = "cpu", **config):
    """Segments each held-out case of ``model`` (InferenceConfig fields ``config``); yields
    ``(case, P on the input grid, SegmentationResult, checkpoint info, GMM settings)``."""
    from CGCLesionSegLib.checkpoint import load_checkpoint
    from CGCLesionSegLib.config import config_from_dict
    from CGCLesionSegLib.gmm import GMMConfig
    from CGCLesionSegLib.inference import InferenceConfig, segment_case
    net, info = load_checkpoint(model.run / "last.pt")
    assert not set(info.extra.get("cases", [])) & {c.name for c in model.test}, f"{model.key}: a test case was trained on"
    gmm_cfg = config_from_dict(GMMConfig, info.preprocessing["gmm"])
    for folder in model.test:
        case = cases[folder.name]
        mods = list(model.modalities)
        imgs = case.images(mods)
        p = case.probability(mods, gmm_cfg)
        res = segment_case([i.array_zyx for i in imgs], imgs[0].geometry, mods, model.run / "last.pt",
                           config=InferenceConfig(device=device, **config), model=net, info=info, gmm_probability_zyx=p)
        yield case, p, res, info, gmm_cfg


def score_model(model: Model, cases: dict, sigma: float, device: str = "cpu") -> list[dict]:
    from CGCLesionSegLib.inference import output_preset
    from CGCLesionSegLib.postprocess import smooth_probability
    rows = []
    mods = list(model.modalities)
    for case, p, res, info, gmm_cfg in segment_held_out(model, cases, device, **output_preset("single-lesion")):
        spacing = info.preprocessing.get("spacing_xyz")
        masks = {"p": p >= 0.5, "p_smooth": smooth_probability(p, sigma, case.geometry.spacing) >= 0.5,
                 "p_netgrid": case.probability(mods, gmm_cfg, spacing) >= 0.5,
                 "gmm_default": gmm_default_mask(case, mods), "network": res.network_probability >= 0.5,
                 "default": res.mask.astype(bool)}
        rows.append(score_row(model, case, info, masks, sigma, window_xyz=list(res.window_xyz or ())))
    return rows


def score_row(model: Model, case: CaseData, info, masks: dict, sigma: float, **extra) -> dict:
    """One case's row: every mask of ``masks`` ({column: (Z, Y, X) bool}) scored against the reference."""
    from CGCLesionSegLib.metrics import all_metrics
    spacing_zyx = tuple(reversed(case.geometry.spacing))
    row = {"case": case.name, "model": model.key, "variant": model.variant, "fold": model.fold, "seed": model.seed,
           "modalities": list(model.modalities), "sigma_mm": sigma, "step": info.step, **extra}
    for col, m in masks.items():
        row[col] = all_metrics(m, case.reference, spacing_zyx)
    print(f"  {model.key} {case.name}: " + " ".join(f"{c} {row[c]['dice']:.3f}" for c in masks), file=sys.stderr)
    return row


# ------------------------------------------------------------------------------------------ statistics
def bootstrap_ci(values: list[float], resamples: int, seed: int) -> tuple[float, float]:
    """Percentile 95 % CI of the mean over cases (resampling cases with replacement)."""
    rng = random.Random(seed)
    n = len(values)
    means = sorted(sum(values[rng.randrange(n)] for _ in range(n)) / n for _ in range(resamples))
    return means[int(0.025 * resamples)], means[min(resamples - 1, int(0.975 * resamples))]


def bootstrap_settings(proto: dict) -> tuple[int, int]:
    """(resamples, seed) of a protocol's bootstrap: its ``bootstrap_resamples`` / ``bootstrap_seed``, else 10000 / 0."""
    return int(proto.get("bootstrap_resamples", 10000)), int(proto.get("bootstrap_seed", 0))


def paired_difference(per_case: dict, proto: dict) -> dict:
    """``{case: a − b}`` → its mean, the protocol's bootstrap 95 % CI over cases, worst case, and the values."""
    d = list(per_case.values())
    lo, hi = bootstrap_ci(d, *bootstrap_settings(proto))
    return {"mean": statistics.mean(d), "ci95": [lo, hi], "min_case": min(d), "per_case": dict(per_case)}


def summarise(rows: list[dict], proto: dict, columns=COLUMNS, differences=DIFFERENCES) -> dict:
    """Per (modalities, variant): per-case metrics averaged over seeds, means, paired differences with a
    bootstrap CI over cases, and the seed SD of each column's mean Dice."""
    out = {}
    groups: dict = {}
    for r in rows:
        groups.setdefault(("-".join(r["modalities"]), r["variant"]), []).append(r)
    for (mods, variant), rs in sorted(groups.items()):
        cases = sorted({r["case"] for r in rs})
        seeds_idx: dict = {}
        per_case = {}
        for c in cases:
            crs = [r for r in rs if r["case"] == c]
            per_case[c] = {col: {k: _mean([r[col][k] for r in crs]) for k in METRIC_KEYS} for col, _ in columns}
            per_case[c]["n_seeds"] = len(crs)
            per_case[c]["sigma_mm"] = crs[0]["sigma_mm"]
        # Seed index i = the i-th seed of every fold (the folds use the same seed list).
        for r in rs:
            seeds_idx.setdefault(r["seed"], []).append(r)
        seed_means = {col: [statistics.mean(r[col]["dice"] for r in sr) for sr in seeds_idx.values()] for col, _ in columns}
        means = {col: {k: _mean([per_case[c][col][k] for c in cases]) for k in METRIC_KEYS} for col, _ in columns}
        diffs = {f"{a}-{b}": paired_difference({c: per_case[c][a]["dice"] - per_case[c][b]["dice"] for c in cases}, proto)
                 for a, b, _ in differences}
        out[f"{mods}/{variant}"] = {
            "modalities": mods, "variant": variant, "cases": cases, "per_case": per_case, "means": means,
            "differences": diffs,
            "seed_sd": {col: (statistics.stdev(v) if len(v) > 1 else None) for col, v in seed_means.items()},
            "steps": sorted({r["step"] for r in rs}), "seeds": sorted(seeds_idx)}
    return out


def _mean(vals):
    vals = [v for v in vals if v is not None]
    return statistics.mean(vals) if vals else None


def pick_winner(summary: dict, stage: dict) -> str:
    """The screening rule of cgc-v1: the highest mean network Dice; a variant must beat the control
    (the stage's ``control``, default the variant named ``control``) by more than 0.01 to replace it."""
    scores = {}
    for g in summary.values():
        scores.setdefault(g["variant"], []).append(g["means"]["network"]["dice"])
    return winner_by_margin({v: statistics.mean(s) for v, s in scores.items()}, stage.get("control", "control"))


def winner_by_margin(mean: dict, control: str, margin: float = 0.01) -> str:
    """The key of the highest ``mean``, unless it beats ``control`` by ``margin`` or less (simpler wins)."""
    best = max(mean, key=mean.get)
    if control in mean and best != control and mean[best] - mean[control] <= margin:
        return control
    return best


def _fmt(v, nd=4):
    return "—" if v is None else f"{v:.{nd}f}"


def group_table(g: dict, columns=COLUMNS, differences=DIFFERENCES) -> list[str]:
    """Markdown lines of one summary group: Dice per case, mean metrics, seed SD, paired differences."""
    lines = [f"Dice per held-out case (mean over seeds {', '.join(map(str, g['seeds']))}):", "",
             "| case | " + " | ".join(n for _, n in columns) + " |", "|---|" + "---|" * len(columns)]
    for c in g["cases"]:
        lines.append(f"| {c} | " + " | ".join(_fmt(g["per_case"][c][col]["dice"]) for col, _ in columns) + " |")
    for k, name in (("dice", "Dice"), ("sensitivity", "sensitivity"), ("precision", "precision"),
                    ("hd95_mm", "HD95 (mm)"), ("assd_mm", "ASSD (mm)")):
        nd = 2 if k.endswith("_mm") else 4
        lines.append(f"| **mean {name}** | " + " | ".join(_fmt(g["means"][col][k], nd) for col, _ in columns) + " |")
    lines.append("| seed SD of mean Dice | " + " | ".join(_fmt(g["seed_sd"][col]) for col, _ in columns) + " |")
    lines += ["", "| paired difference (Dice) | mean | bootstrap 95 % CI over cases | worst case | target |",
              "|---|---|---|---|---|"]
    for a, b, target in differences:
        d = g["differences"][f"{a}-{b}"]
        lines.append(f"| {a} − {b} | {d['mean']:+.4f} | [{d['ci95'][0]:+.4f}, {d['ci95'][1]:+.4f}] | "
                     f"{d['min_case']:+.4f} | {target} |")
    return lines


def variant_differences(summary: dict, proto: dict, reference: str, cols=("network", "default")) -> dict:
    """Per modality set, each variant against ``reference``: the per-case paired Dice difference
    (averaged over seeds first, as in ``summarise``) of each of ``cols``, its mean, bootstrap 95 % CI over
    the cases both hold, worst case and per-case values (``paired_difference``). ``{mods: {variant: {col:
    {...}}}}``; the reference is left out."""
    out: dict = {}
    for g in summary.values():
        ref = summary.get(f"{g['modalities']}/{reference}")
        if ref is None or g["variant"] == reference:
            continue
        cases = [c for c in g["cases"] if c in ref["cases"]]
        out.setdefault(g["modalities"], {})[g["variant"]] = {
            col: paired_difference({c: g["per_case"][c][col]["dice"] - ref["per_case"][c][col]["dice"] for c in cases},
                                   proto) for col in cols}
    return out


def table_reference(stage: dict) -> str:
    """The variant every other one is compared with in a several-variant stage's table."""
    return stage.get("control", stage["variants"][0])


def variants_table(summary: dict, proto: dict, stage: dict) -> list[str]:
    """Markdown lines of one row per variant (a stage with several; the paper's ablation-table shape):
    mean network Dice, sensitivity, precision, HD95 and default-output Dice, and each variant's paired
    difference from the stage's ``control`` if it names one, else its *first* variant (cgc-v1: the
    control of the screen, BCE only of the ablation — the simplest network that does the job). Round-1
    models of self-training variants follow the stage's own variants. Empty for a one-variant stage."""
    if len(stage.get("variants", [])) < 2:
        return []
    reference = table_reference(stage)
    diffs = variant_differences(summary, proto, reference)
    lines = []
    for mods in sorted({g["modalities"] for g in summary.values()}):
        names = list(stage["variants"]) + sorted({g["variant"] for g in summary.values()
                                                  if g["modalities"] == mods} - set(stage["variants"]))
        lines += [f"#### {mods} — all variants against `{reference}`", "",
                  "| variant | arguments | network Dice | sensitivity | precision | HD95 (mm) | network − "
                  f"`{reference}` (95 % CI; worst case) | default output Dice | default − `{reference}` (95 % CI) |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for v in names:
            g = summary.get(f"{mods}/{v}")
            if g is None:  # not finished yet (a partial report)
                continue
            net, dflt = g["means"]["network"], g["means"]["default"]
            vargs = proto["variants"].get(v, {}).get("args")
            args = "—" if vargs is None else (" ".join(vargs) or "(base)")
            if proto["variants"].get(v, {}).get("self_train_from"):
                args += f"` + a self-training round on `{proto['variants'][v]['self_train_from']}"
                if proto["variants"][v].get("pseudo_volume", "fixed") != "fixed":
                    args += f"`, pseudo-labels `{proto['variants'][v]['pseudo_volume']}"
            d = diffs.get(mods, {}).get(v)
            ci = lambda x: f"{x['mean']:+.4f} [{x['ci95'][0]:+.4f}, {x['ci95'][1]:+.4f}]"  # noqa: E731
            dn = f"{ci(d['network'])}; {d['network']['min_case']:+.4f}" if d else "—"
            dd = ci(d["default"]) if d else "—"
            lines.append(f"| `{v}` | `{args}` | {_fmt(net['dice'])} | {_fmt(net['sensitivity'])} | "
                         f"{_fmt(net['precision'])} | {_fmt(net['hd95_mm'], 2)} | {dn} | {_fmt(dflt['dice'])} | {dd} |")
        lines.append("")
    return lines


def lesion_check_line(models: list) -> Optional[str]:
    """One report line from the label-free lesion checks training wrote (``RUN_DIR/lesion_check.json``,
    CGCTraining.sanity): the ratio range and which models collapsed; None when no model has one (runs
    trained before the check existed)."""
    checks = {}
    for m in models:
        path = m.run / "lesion_check.json"
        if path.exists():
            checks[m.key] = json.loads(path.read_text())
    if not checks:
        return None
    ratios = [c["ratio"] for c in checks.values() if c.get("ratio") is not None]
    collapsed = [k for k, c in checks.items() if c.get("collapsed")]
    # overgrown: the flag since cgc-v14, or the ratio for checks written before it existed
    from CGCTraining.sanity import OVERGROWTH_RATIO
    overgrown = [k for k, c in checks.items() if c.get("overgrown") or (c.get("ratio") or 0) > OVERGROWTH_RATIO]
    return (f"Lesion check after training (no label read; the model's voxels ≥ 0.5 over its target's on its two "
            f"largest-target training cases): {len(checks)} of {len(models)} models checked"
            + (f", ratio {min(ratios):.2f}–{max(ratios):.2f}" if ratios else "")
            + (f"; **collapsed: {', '.join(collapsed)}**" if collapsed else "; none collapsed")
            + (f"; **overgrown (ratio > {OVERGROWTH_RATIO:g}): {', '.join(overgrown)}**." if overgrown
               else "; none overgrown."))


def report(proto: dict, stage_name: str, summary: dict, sigmas: dict, models: list[Model], extra: list,
           winner: Optional[str], finished: dict) -> str:
    stage = proto["stages"][stage_name]
    lines = [f"### Protocol {proto['name']}, stage `{stage_name}`", "",
             f"Protocol file `docs/protocols/{proto['name']}.toml` (committed before its first run). "
             f"{proto['folds']} folds over the labelled cases in `{proto['labelled']}/` (round-robin over sorted "
             f"names); every training set adds the cases in `{proto['unlabelled']}/` (never scored); seeds "
             + ", ".join(map(str, stage["seeds"])) + f"; {stage['steps']} steps per model "
             f"(safety stop {stage['max_minutes']} min). Base training arguments `{' '.join(proto['base_train_args'])}`."
             + (f" Extra arguments passed through: `{' '.join(extra)}`." if extra else ""), ""]
    lines.append("Smoothed-P sigma chosen inside each training fold (mean Dice on the fold's labelled training cases): "
                 + "; ".join(f"{k}: **{v['sigma']:g} mm** ({', '.join(f'{s:g}: {d:.3f}' for s, d in v['scores'].items())})"
                             for k, v in sorted(sigmas.items())) + ".")
    steps = sorted({f.get('step') for f in finished.values() if f})
    lines += ["", f"Steps reached: {', '.join(map(str, steps))} (of {stage['steps']}); training time per model: "
              + ", ".join(f"{f['seconds'] / 60:.0f}" for f in finished.values() if f) + " min.", ""]
    checked = lesion_check_line(models)
    if checked:
        lines += [checked, ""]
    lines += variants_table(summary, proto, stage)
    for key, g in summary.items():
        lines += [f"#### {g['modalities']} — variant `{g['variant']}`", ""] + group_table(g) + [""]
    rule = stage.get("winner_rule", "")
    if header_decided(stage):
        lines += [f"Decision: by the criteria declared in the protocol file's header ({rule}); they need numbers from "
                  "other runs (the multi-lesion probe, the rule protocol), so this runner names no winner: the "
                  "decision and its numbers are in docs/protocols/README.md.", ""]
    elif winner:
        lines += [f"Winner by the declared rule ({rule}): **`{winner}`**"
                  + (" — computed from its network-Dice margin only; the rule's further condition is read in "
                     "docs/protocols/README.md" if " with " in rule else "") + ".", ""]
    return "\n".join(lines)


def header_decided(stage: dict) -> bool:
    """Whether the stage's ``winner_rule`` defers to criteria in the protocol file's header (cgc-v38 on): criteria
    that read other runs' numbers, which :func:`pick_winner` (network Dice and a margin) does not compute."""
    return stage.get("winner_rule", "").startswith("declared in the file's header")


def kept_scores(score_file: Path, stamp: dict, compute) -> list[dict]:
    """The rows saved in ``score_file`` if they were made with ``stamp``, else ``compute()``'s, saved there."""
    saved = json.loads(score_file.read_text()) if score_file.exists() else None
    if saved and saved.get("stamp") == stamp:
        return saved["rows"]
    rows = compute()
    score_file.write_text(json.dumps({"stamp": stamp, "rows": rows}, default=str))
    return rows


def require_package() -> None:
    """Stop before any training starts when this interpreter cannot import the package the trainings
    (``python -m CGCTraining``, run with this interpreter) need, instead of failing the first model."""
    import importlib.util
    missing = [m for m in ("CGCLesionSegLib", "torch") if importlib.util.find_spec(m) is None]
    if missing:
        raise SystemExit(f"{sys.executable} cannot import {', '.join(missing)}: run the protocol with the "
                         "project's environment (`bash scripts/setup.sh`, then `source .venv/bin/activate`) "
                         "or `pip install -e .` into this one")


def run(args, extra: list) -> int:
    proto = load_protocol(args.protocol)
    require_package()
    if args.stage not in proto["stages"]:
        raise SystemExit(f"stage {args.stage!r} is not in {args.protocol}; it has {', '.join(proto['stages'])}")
    stage = proto["stages"][args.stage]
    tag = f"-{args.tag}" if args.tag else ""
    results_dir = ROOT / "docs" / "protocols" / "results"
    work = Path(args.work_dir or ROOT / "runs" / f"protocol-{proto['name']}") / f"{args.stage}{tag}"
    data = Path(args.data)
    models = plan(proto, args.stage, data, work, results_dir, extra)
    models, set_tag = only_model_set(models, getattr(args, "model_set", None), stage)
    only = getattr(args, "train_variants", None)
    if only:
        models = only_variants(models, only, getattr(args, "train_seeds", None))
    print(f"{len(models)} models in stage {args.stage}: " + ", ".join(m.key for m in models), file=sys.stderr)
    if only or (not args.score_only and not args.score_available):
        train_all(models, stage, int(args.jobs or proto.get("jobs", 1)), args.device)
    if only:  # --train-variants trains and stops: nothing is scored or written
        return 0
    missing = [m.key for m in models if _finished(m) is None]
    if missing and args.score_available:
        models = [m for m in models if _finished(m) is not None]
        print(f"scoring the {len(models)} finished models only (not yet: {', '.join(missing)})", file=sys.stderr)
    elif missing:
        raise SystemExit(f"not trained yet: {', '.join(missing)}; run without --score-only")
    cases = {d.name: CaseData(d) for d in _case_dirs(data / proto["labelled"])}
    rows, sigmas = [], {}
    for m in models:
        from CGCLesionSegLib.checkpoint import read_checkpoint, info_from_dict
        from CGCLesionSegLib.config import config_from_dict
        from CGCLesionSegLib.gmm import GMMConfig
        info = info_from_dict(read_checkpoint(m.run / "last.pt"), m.run / "last.pt")
        gmm_cfg = config_from_dict(GMMConfig, info.preprocessing["gmm"])
        train_labelled = [cases[c.name] for c in m.train if c.name in cases]
        stag = sigma_tag(m.fold, gmm_cfg)  # not `tag`: that one names the stage's results
        skey = f"{'-'.join(m.modalities)} fold {m.fold}" + stag[len(f"fold{m.fold}"):]
        if skey not in sigmas:  # shared by the stage's models of that fold with the same GMM settings
            sigmas[skey] = sigma_choice(work, stag, train_labelled, m.modalities, gmm_cfg, proto["smoothing_sigmas_mm"])
        # Scores are kept beside the model, so a later pass (or the final one) does not redo them.
        score_file = m.run / "scores.json"
        stamp = {"sigma": sigmas[skey]["sigma"], "step": info.step}
        rows += kept_scores(score_file, stamp, lambda: score_model(m, cases, sigmas[skey]["sigma"], args.device))
    summary = summarise(rows, proto)
    winner = (pick_winner(summary, stage) if "winner_rule" in stage and not args.score_available
              and not header_decided(stage) else None)
    finished = {m.key: _finished(m) for m in models}
    text = report(proto, args.stage, summary, sigmas, models, extra, winner, finished) + model_set_note(set_tag)
    if args.score_available:  # progress only: the same tables, marked, and nothing written
        print(f"PARTIAL: {len(models)} finished model(s) scored"
              + (f"; not yet finished: {', '.join(missing)}" if missing else "")
              + ". Progress, not the stage's result.\n\n" + text)
        return 0
    print(text)
    if not args.no_write:
        write_stage(results_dir, f"{proto['name']}-{args.stage}{tag}{set_tag}", text,
                    {"protocol": proto["name"], "stage": args.stage, "extra_args": extra, "winner": winner,
                     "sigmas": sigmas, "trained": finished, "summary": summary, "rows": rows,
                     "variant_differences": (variant_differences(summary, proto, table_reference(stage))
                                             if len(stage.get("variants", [])) > 1 else {})})
    return 0


def only_model_set(models: list[Model], mods: Optional[list[str]], stage: dict) -> tuple[list[Model], str]:
    """The models of one of the stage's model sets (``--model-set flair``) and the suffix its results are
    written under (``-flair``); every model and ``""`` without ``mods``. Scores, sigmas, summaries and the
    declared decisions are all per model set, so one set can be scored and written when it is finished
    while another still trains; the numbers are those the whole stage gives for that set. Refused for a
    stage whose ``winner_rule`` averages over several sets (one set alone would not be that rule), unless the
    stage declares ``winner_per_set``."""
    if not mods:
        return models, ""
    sets = sorted({m.modalities for m in models})
    if "winner_rule" in stage and len(sets) > 1 and not stage.get("winner_per_set"):
        raise SystemExit("--model-set: this stage's winner rule averages over its model sets "
                         f"({'; '.join(' '.join(s) for s in sets)}); score the whole stage")
    if tuple(mods) not in sets:
        raise SystemExit(f"--model-set {' '.join(mods)}: this stage's model sets are "
                         + "; ".join(" ".join(s) for s in sets))
    return [m for m in models if m.modalities == tuple(mods)], "-" + "-".join(mods)


def model_set_note(set_tag: str) -> str:
    """The line a report scored with ``--model-set`` ends with (empty without it)."""
    return (f"\nModel set `{set_tag[1:]}` only (`--model-set`): the stage's other model sets are scored apart; "
            "their decisions are their own.\n") if set_tag else ""


def only_variants(models: list[Model], names: list[str], seeds: Optional[list[int]] = None) -> list[Model]:
    """The models of the variants ``names`` (of ``seeds`` only, when given) and every earlier self-training
    round they train on, in plan order (``--train-variants``, ``--train-seeds``)."""
    known = sorted({m.variant for m in models})
    unknown = [n for n in names if n not in known]
    if unknown:
        raise SystemExit(f"--train-variants: {', '.join(unknown)} not in this stage; it has {', '.join(known)}")
    if seeds and not set(seeds) <= {m.seed for m in models}:
        raise SystemExit(f"--train-seeds: the stage's seeds are {', '.join(map(str, sorted({m.seed for m in models})))}")
    keep = set()
    for m in models:
        if m.variant in names and (not seeds or m.seed in seeds):
            while m is not None and id(m) not in keep:  # the model and every earlier round it trains on
                keep.add(id(m))
                m = m.parent
    return [m for m in models if id(m) in keep]


def write_stage(results_dir: Path, name: str, text: str, payload: dict) -> None:
    """A finished stage: ``results_dir/<name>.json`` and the docs/BENCHMARKS.md section ``protocol-<name>``."""
    results_dir.mkdir(parents=True, exist_ok=True)
    out = results_dir / f"{name}.json"
    out.write_text(json.dumps(payload, indent=1, default=str))
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from _report import machine_line, write_section
    write_section(f"protocol-{name}", text + "\n" + machine_line())
    print(f"wrote {out} and docs/BENCHMARKS.md section protocol-{name}", file=sys.stderr)
