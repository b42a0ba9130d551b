"""Retrain the shipped default models with the recipe a declared protocol picked (issue 9, item 4).

    python scripts/train_default_models.py --protocol docs/protocols/cgc-v1.toml            # train both
    python scripts/train_default_models.py --protocol docs/protocols/cgc-v1.toml --export \\
        --hardware "2 CPU cores, no GPU"                                                     # then ship

Nothing here is chosen by looking at labels; every setting comes from the protocol file:

* **recipe**: the winner of the protocol's screening stage (read from
  ``docs/protocols/results/<name>-screen.json``), i.e. the protocol's ``base_train_args`` followed by
  that variant's arguments; a self-training winner trains its round-1 variant first, segments every
  training case with :data:`CGCTraining.self_train.PSEUDO_RULE` (labels never read) and trains round 2 from round
  1's weights on those targets, exactly as in the protocol's folds (a chain of rounds likewise, each from the
  one before); ``--variant`` names the recipe instead, for a confirmation that compared a control and a
  rival at fresh seeds (e.g. cgc-v21) and was decided as its protocol declares;
* **budget**: the confirmation stage's ``steps`` per round (the budget the held-out numbers were
  measured at); ``--max-minutes`` is only a safety stop;
* **data**: every tumour case the protocol names: its labelled folder (images only) and its
  unlabelled folder — 7 + 4 = 11 cases in ../shared/data;
* **seed**: :data:`SHIP_SEED`, fixed here (not one of the protocol's evaluation seeds); ``--seeds 0 1`` trains the
  recipe once per seed and ships their seed ensemble (``cgcseg ensemble``; only after a declared protocol
  confirmed the ensemble for that model set, e.g. cgc-v28);
* **output rule** recorded in the exported checkpoint: :data:`SHIP_OUTPUT_RULE` (``--output-rule``
  overrides), the rule a declared rule protocol confirmed on held-out cases (cgc-v11); the card shows
  that protocol's numbers for this recipe (:data:`RULE_EVIDENCE`).

Runs live in ``runs/default-models-<protocol>/<modalities>/<variant>`` (git-ignored) and resume where
an interrupted call left them. ``--export`` writes ``CGCLesionSegLib/models/cgc_<modalities>.pt``,
its loss curve and its card (:mod:`export_default_model`), with the per-case Dice on its labelled
training cases (in-sample, labelled so) and the protocol's held-out numbers for this recipe.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
sys.path.insert(0, str(ROOT / "scripts"))
sys.path.insert(0, str(ROOT / "CGCLesionSeg"))

#: The two shipped models' inputs.
MODEL_SETS = {"four-channel": ("flair", "t1", "t1ce", "t2"), "flair": ("flair",)}
#: Training seed of the shipped models (the protocol's evaluation seeds are 100, 200, 201, 300).
SHIP_SEED = 0
#: ``--postprocess auto`` of the shipped models. ``single-lesion`` until cgc-v11's confirmation picked
#: ``single-lesion-recommended`` by its declared rule (both model sets above the old rule, docs/protocols).
SHIP_OUTPUT_RULE = "single-lesion-recommended"
#: Where an output rule's held-out numbers come from, for the card: (recipe protocol, rule) -> (rule
#: protocol, stage, its column). A rule protocol scores one recipe protocol's fold models (its ``source``),
#: so its numbers belong to that recipe protocol only: keyed by it, a variant name that two recipe
#: protocols share (``robust-2mm-st`` in cgc-v9 and cgc-v13) cannot borrow the other's numbers.
RULE_EVIDENCE = {("cgc-v9", "single-lesion-recommended"): ("cgc-v11", "confirm", "default_rec"),
                 ("cgc-v14", "single-lesion-recommended"): ("cgc-v15", "confirm", "default_rec"),
                 # cgc-v24's rival ships at 0.3 (the declaration read on cgc-v25's FLAIR set, docs/protocols)
                 ("cgc-v24", "single-lesion-recommended"): ("cgc-v25", "confirm", "default_rec_03")}


#: Where a recipe's seed ensemble was measured, for the card of a shipped ensemble: (recipe protocol, variant) ->
#: (ensemble protocol, stage). cgc-v28 confirmed the two-seed ensemble of cgc-v24's recipe on cgc-v27's models;
#: cgc-v44's rival stage read cgc-v43's rival's ensemble.
ENSEMBLE_EVIDENCE = {("cgc-v24", "robust-2mm-std"): ("cgc-v28", "confirm"),
                     ("cgc-v43", "robust-2mm-stdopen"): ("cgc-v44", "rival")}

#: Later independent readings of the shipped two-seed ensemble on fresh seeds, for its card: (recipe protocol,
#: variant) -> (protocol, stage). cgc-v31 read the FLAIR ensemble again on cgc-v30's seeds 3000/3001.
ENSEMBLE_REPLICATION = {("cgc-v24", "robust-2mm-std"): ("cgc-v31", "confirm")}

#: Where the threshold a shipped ensemble records was chosen leave one case out, for its card: (recipe protocol,
#: variant) -> (threshold protocol, stage). cgc-v29 chose the four-channel model's 0.35 and kept FLAIR's 0.3; its
#: procedure on cgc-v44's rival stage gave cgc-v43's FLAIR recipe 0.35 (declared 2026-12-05 08:35).
THRESHOLD_EVIDENCE = {("cgc-v24", "robust-2mm-std"): ("cgc-v29", "confirm"),
                      ("cgc-v43", "robust-2mm-stdopen"): ("cgc-v44", "rival")}

#: A recipe that replaced the shipped one by a control-against-rival confirmation, for its card: (recipe protocol,
#: variant) -> (control variant, rule protocol scoring both with the shipped rule (its control and rival stages),
#: multi-lesion probe results name). cgc-v43's FLAIR set replaced `robust-2mm-std` (docs/protocols/README.md).
RIVAL_EVIDENCE = {("cgc-v43", "robust-2mm-stdopen"): ("robust-2mm-std", "cgc-v44", "multi-lesion-cgc-v43")}

#: The threshold of each rule-evidence column (what the card's heading says it was scored at).
COLUMN_THRESHOLD = {"default_rec": 0.5, "default_rec_03": 0.3}

RESULTS = ROOT / "docs" / "protocols" / "results"


def _results(proto: dict, stage: str, results_dir: Path = RESULTS) -> dict | None:
    path = Path(results_dir) / f"{proto['name']}-{stage}.json"
    return json.loads(path.read_text()) if path.exists() else None


def _set_results(name: str, stage: str, mods: tuple, results_dir: Path = RESULTS) -> tuple[dict | None, str]:
    """(results, BENCHMARKS section) of protocol ``name``'s ``stage`` for the model set ``mods``: the set's
    own file when the stage was run per set (``--model-set``: ``<name>-<stage>-<modalities>.json``, as
    cgc-v24's confirmation), else the whole stage's file; (None, "") when neither exists."""
    own = f"{name}-{stage}-{'-'.join(mods)}"
    path = Path(results_dir) / f"{own}.json"
    if path.exists():
        return json.loads(path.read_text()), f"protocol-{own}"
    res = _results({"name": name}, stage, results_dir)
    return res, (f"protocol-{name}-{stage}" if res is not None else "")


def recipe(proto: dict, results_dir: Path = RESULTS) -> str:
    """The screening winner (the protocol's recipe choice; a missing screen is an error, not a default), or,
    in a protocol without a screen (a confirmation of one recipe, e.g. cgc-v9), the one variant its
    confirmation stage names."""
    import protocol
    stages = proto.get("stages", {})
    named = stages.get("confirm", {}).get("variants", [])
    if "screen" not in stages and len(named) == 1:
        return named[0]
    try:
        winner = protocol._winner(proto, "winner of screen", results_dir)
    except SystemExit:
        winner = None
    if not winner:
        raise SystemExit(f"no screening winner for {proto['name']}: run "
                         f"`python benchmarks/evaluate_cgc.py --protocol ... --stage screen` first")
    return winner


def plan_models(proto: dict, sets: list[str], data: Path, work: Path, results_dir: Path = RESULTS,
                seed: int = SHIP_SEED, variant: Optional[str] = None) -> list:
    """One :class:`protocol.Model` per round per model set, training on every case (no held-out cases); each
    self-training round after the round it trains on."""
    import protocol
    labelled = protocol._case_dirs(data / proto["labelled"])
    unlabelled = protocol._case_dirs(data / proto["unlabelled"])
    winner = variant or recipe(proto, results_dir)
    if winner not in proto["variants"]:
        raise SystemExit(f"{proto['name']} has no variant {winner!r}; it has {', '.join(proto['variants'])}")
    models = []
    for name in sets:
        mods = MODEL_SETS[name]
        train = labelled + unlabelled
        base = list(proto["base_train_args"])

        def model(vname: str, chain: tuple = ()) -> "protocol.Model":
            """``vname``'s model after every earlier self-training round it trains on (appended first)."""
            if vname in chain:
                raise SystemExit(f"self_train_from loops: {' -> '.join(chain + (vname,))}")
            source = proto["variants"][vname].get("self_train_from")
            parent = model(source, chain + (vname,)) if source else None
            made = protocol.Model(mods, vname, -1, seed, work / "-".join(mods) / vname / f"all-seed{seed}", [], train,
                                  base + list(proto["variants"][vname].get("args", [])), parent,
                                  proto["variants"][vname].get("pseudo_volume", "fixed"))
            models.append(made)
            return made
        model(winner)
    protocol.resolve_fold_sigma(models, proto, data, work)  # no held-out case: chosen on every labelled one
    return models


def effective_args(args: list[str]) -> list[str]:
    """``args`` with each repeated ``--option`` shown once, with its last values (what argparse keeps), at its
    first place: ``--spacing 1.5 1.5 1.5 ... --spacing 2 2 2`` reads ``--spacing 2 2 2 ...``. Values are the
    tokens after an option up to the next ``--``-token (negative numbers have one dash)."""
    groups: dict[str, list[str]] = {}
    loose: list[str] = []
    current = None
    for tok in args:
        if tok.startswith("--"):
            current = tok
            groups.pop(tok, None)  # re-inserted last; its first place is restored below
            groups[tok] = []
        elif current is None:
            loose.append(tok)
        else:
            groups[current].append(tok)
    first = {}
    for i, tok in enumerate(args):
        if tok.startswith("--"):
            first.setdefault(tok, i)
    out = list(loose)
    for opt in sorted(groups, key=first.__getitem__):
        out += [opt, *groups[opt]]
    return out


def held_out_notes(proto: dict, mods: tuple, winner: str, results_dir: Path = RESULTS) -> str:
    """The protocol's held-out numbers of this recipe (confirmation if it exists, else screening), as
    card markdown; the card says which stage they come from."""
    lines = []
    for stage in ("confirm", "screen"):
        res, section = _set_results(proto["name"], stage, mods, results_dir)
        group = (res or {}).get("summary", {}).get(f"{'-'.join(mods)}/{winner}")
        if not group:
            continue
        m, d = group["means"], group["differences"]
        f = lambda col: f"{m[col]['dice']:.3f}" if m[col]["dice"] is not None else "—"
        ci = lambda key: (f"{d[key]['mean']:+.3f} [{d[key]['ci95'][0]:+.3f}, {d[key]['ci95'][1]:+.3f}]"
                          if key in d else "—")
        lines += [f"## Held-out numbers of this recipe (protocol `{proto['name']}`, stage `{stage}`)", "",
                  f"The same recipe trained leave-cases-out ({proto['folds']} folds over the labelled cases, seeds "
                  f"{', '.join(str(s) for s in group['seeds'])}, steps {', '.join(str(s) for s in group['steps'])}); "
                  f"docs/BENCHMARKS.md section `{section}`. Mean Dice over "
                  f"{len(group['cases'])} held-out cases:", "",
                  # the protocols' `default` column is always `single-lesion` at 0.5 (benchmarks/protocol.py), which
                  # is not what a shipped file records since cgc-v11: the heading says so
                  "| P ≥ 0.5 | smoothed P | `cgcseg gmm` default | network ≥ 0.5 | `single-lesion` output at 0.5 |",
                  "|---|---|---|---|---|",
                  f"| {f('p')} | {f('p_smooth')} | {f('gmm_default')} | {f('network')} | {f('default')} |", "",
                  f"Paired differences (mean, bootstrap 95 % CI over cases): network − P {ci('network-p')}; "
                  f"network − smoothed P {ci('network-p_smooth')}; `single-lesion` output − `cgcseg gmm` default "
                  f"{ci('default-gmm_default')}.", ""]
        if stage == "screen":
            lines += ["These are screening numbers (the stage that picked the recipe), not the confirmation.", ""]
        break
    return "\n".join(lines)


def _evidence(table: dict, protocol_name: str, mods: tuple, winner: str, column: str, results_dir: Path):
    """``(name, stage, section, results, group)`` of the protocol ``table`` names for the recipe, when its results
    summarise this model set with ``column``; else None."""
    if (protocol_name, winner) not in table:
        return None
    name, stage = table[(protocol_name, winner)]
    res, section = _set_results(name, stage, mods, results_dir)
    group = (res or {}).get("summary", {}).get(f"{'-'.join(mods)}/{winner}")
    if not group or column not in group["means"]:
        return None
    return name, stage, section, res, group


def _formatters(group: dict, worst: bool = False):
    """``(f, ci)``: a column's mean Dice ("0.812") and a paired difference with its CI ("+0.064 [+0.021, +0.111]",
    with ``worst`` also "(worst case −0.019)"), "—" where the group lacks it."""
    m, d = group["means"], group["differences"]
    f = lambda col: f"{m[col]['dice']:.3f}" if col in m else "—"
    ci = lambda key: (f"{d[key]['mean']:+.3f} [{d[key]['ci95'][0]:+.3f}, {d[key]['ci95'][1]:+.3f}]"
                      + (f" (worst case {d[key]['min_case']:+.3f})" if worst else "") if key in d else "—")
    return f, ci


def _table(group: dict, cells: list[tuple[str, str]], f) -> list[str]:
    """A one-row markdown table of the ``(column, heading)`` cells whose column ``group`` scored (a protocol that
    scored fewer columns, e.g. cgc-v44, gets a narrower table rather than dashes)."""
    kept = [(c, h) for c, h in cells if c in group["means"]]
    return ["| " + " | ".join(h for _, h in kept) + " |", "|" + "---|" * len(kept),
            "| " + " | ".join(f(c) for c, _ in kept) + " |"]


def _differences(group: dict, parts: list[tuple[str, str]], ci) -> str:
    """``"label CI; label CI"`` of the ``(difference key, label)`` parts ``group`` has."""
    return "; ".join(f"{label} {ci(key)}" for key, label in parts if key in group["differences"])


def ensemble_notes(protocol_name: str, mods: tuple, winner: str, results_dir: Path = RESULTS) -> str:
    """The held-out numbers of the recipe's seed ensemble (:data:`ENSEMBLE_EVIDENCE`), as card markdown for a
    shipped ensemble; empty when no protocol measured it for this model set."""
    found = _evidence(ENSEMBLE_EVIDENCE, protocol_name, mods, winner, "network_ensemble", results_dir)
    if not found:
        return ""
    name, stage, section, _, group = found
    f, ci = _formatters(group)
    return "\n".join(["",
        f"## Held-out numbers of the seed ensemble (protocol `{name}`, stage `{stage}`)", "",
        f"Two models of this recipe per fold (seeds {', '.join(str(s) for s in group['seeds'])}), their network maps "
        f"averaged as this file averages its members; docs/BENCHMARKS.md section `{section}`. Mean Dice over "
        f"{len(group['cases'])} held-out cases:", "",
        *_table(group, [("p", "P ≥ 0.5"), ("p_smooth", "smoothed P"), ("gmm_default", "`cgcseg gmm` default"),
                        ("network", "network, one seed"), ("network_ensemble", "**network, ensemble**"),
                        ("default_rec_03", "default output at 0.3, one seed"),
                        ("default_rec_03_ensemble", "**default output at 0.3, ensemble**")], f), "",
        "Paired differences (mean, bootstrap 95 % CI over cases): " + _differences(group, [
            ("network_ensemble-network", "ensemble − one seed, network"),
            ("default_rec_03_ensemble-default_rec_03", "ensemble − one seed, default output"),
            ("network_ensemble-p_smooth", "ensemble network − smoothed P"),
            ("network_ensemble-p", "ensemble network − P ≥ 0.5"),
            ("default_rec_03_ensemble-gmm_default", "ensemble default output − `cgcseg gmm` default")], ci) + ".", ""])


def ensemble_replication_notes(protocol_name: str, mods: tuple, winner: str, results_dir: Path = RESULTS) -> str:
    """The shipped two-seed ensemble read again on fresh seeds (:data:`ENSEMBLE_REPLICATION`; its
    ``network_ensemble2`` / ``default_rec_03_ensemble2`` columns), as card markdown; empty when that protocol did
    not score this model set."""
    found = _evidence(ENSEMBLE_REPLICATION, protocol_name, mods, winner, "network_ensemble2", results_dir)
    if not found:
        return ""
    name, stage, section, _, group = found
    f, ci = _formatters(group)
    return "\n".join(["",
        f"## Held-out numbers of the seed ensemble, read again on fresh seeds (protocol `{name}`, stage `{stage}`)", "",
        f"The same recipe trained again per fold on seeds {', '.join(str(s) for s in group['seeds'][:2])} (declared "
        f"before any of its models existed), the first two seeds' network maps averaged as this file averages its "
        f"members; docs/BENCHMARKS.md section `{section}`. Mean Dice over {len(group['cases'])} held-out cases:", "",
        "| P ≥ 0.5 | smoothed P | `cgcseg gmm` default | network, one seed | **network, ensemble** "
        "| default output at 0.3, ensemble |", "|---|---|---|---|---|---|",
        f"| {f('p')} | {f('p_smooth')} | {f('gmm_default')} | {f('network')} | {f('network_ensemble2')} "
        f"| {f('default_rec_03_ensemble2')} |", "",
        f"Paired differences (mean, bootstrap 95 % CI over cases): ensemble network − smoothed P "
        f"{ci('network_ensemble2-p_smooth')}, − P ≥ 0.5 {ci('network_ensemble2-p')}, − one seed "
        f"{ci('network_ensemble2-network')}; ensemble default output at 0.3 − `cgcseg gmm` default "
        f"{ci('default_rec_03_ensemble2-gmm_default')}.", ""])


def threshold_notes(protocol_name: str, mods: tuple, winner: str, results_dir: Path = RESULTS) -> str:
    """The held-out numbers of the shipped ensemble's threshold choice (:data:`THRESHOLD_EVIDENCE`: the default
    output at each case's leave-one-case-out threshold, and the threshold the procedure gives over every case), as
    card markdown; empty when no protocol measured it for this model set."""
    found = _evidence(THRESHOLD_EVIDENCE, protocol_name, mods, winner, "default_rec_loo_ensemble", results_dir)
    chosen = found and found[3].get("leave_one_out", {}).get(f"{'-'.join(mods)}/{winner}", {}).get("default_rec_loo_ensemble")
    if not chosen:
        return ""
    name, stage, section, _, group = found
    f, ci = _formatters(group, worst=True)
    ts = sorted({v["threshold"] for v in chosen["per_case"].values()})
    return "\n".join(["",
        f"## Held-out numbers of the threshold (protocol `{name}`, stage `{stage}`)", "",
        f"The seed ensembles above, each held-out case thresholded at the value best on the other "
        f"{len(chosen['per_case']) - 1} cases (leave one case out: {', '.join(f'{t:g}' for t in ts)})"
        + ("; `cgcseg gmm`'s clean-up given the same freedom" if "gmm_default_loo" in group["means"] else "")
        + f"; docs/BENCHMARKS.md section `{section}`. Mean Dice over {len(group['cases'])} held-out cases:", "",
        *_table(group, [("gmm_default", "`cgcseg gmm` default"),
                        ("gmm_default_loo", "`cgcseg gmm` at the left-out threshold"),
                        ("default_rec_03_ensemble", "default output at 0.3"),
                        ("default_rec_loo_ensemble", "**default output at the left-out threshold**")], f), "",
        "Paired differences (mean, bootstrap 95 % CI over cases), default output at the left-out threshold: "
        + _differences(group, [("default_rec_loo_ensemble-gmm_default", "− `cgcseg gmm` default"),
                               ("default_rec_loo_ensemble-gmm_default_loo", "− `cgcseg gmm` at the left-out threshold")],
                       ci)
        + f". The same procedure over all {len(chosen['per_case'])} cases gives {chosen['all']['threshold']:g}, the "
        "threshold this file records.", ""])


def rival_notes(protocol_name: str, mods: tuple, winner: str, results_dir: Path = RESULTS) -> str:
    """The recipe against the one it replaced (:data:`RIVAL_EVIDENCE`), as card markdown: one-seed network and
    ``single-lesion`` default (the recipe protocol's confirmation), the multi-lesion probe's second lesion, and the
    shipped rule on the two-seed ensemble at the left-out threshold (the rule protocol's control and rival stages,
    paired over cases by :mod:`stage_pairs` with that protocol's bootstrap settings), each with rival − control;
    empty when the model set lacks any of these readings (a set's numbers never stand in for another's)."""
    if (protocol_name, winner) not in RIVAL_EVIDENCE:
        return ""
    import protocol
    import stage_pairs
    control, rule_name, probe_name = RIVAL_EVIDENCE[(protocol_name, winner)]
    key = "-".join(mods)
    confirm, confirm_section = _set_results(protocol_name, "confirm", mods, results_dir)
    summary = (confirm or {}).get("summary", {})
    if f"{key}/{winner}" not in summary or f"{key}/{control}" not in summary:
        return ""
    groups = [stage_pairs.stage_group(results_dir, rule_name, st, mods, v) for st, v in (("rival", winner),
                                                                                     ("control", control))]
    rule = groups[0] and groups[1] and stage_pairs.paired(groups[0], groups[1], stage_pairs.COLUMN,
                                                          *_bootstrap_settings(rule_name))
    probe_path = Path(results_dir) / f"{probe_name}-{key}.json"
    if not probe_path.exists():  # a probe run over one set is named without it (cgc-v42's)
        probe_path = Path(results_dir) / f"{probe_name}.json"
    probe_file = json.loads(probe_path.read_text()) if probe_path.exists() else {}
    probe = probe_file.get("summary", {})
    probe_sets = {"-".join(r["modalities"]) for r in probe_file.get("rows", []) if "modalities" in r}
    if (not rule or (probe.get("difference") or {}).get("of") != f"{winner} - {control}"
            or (probe_sets and probe_sets != {key})):
        return ""

    confirm_bootstrap = _bootstrap_settings(confirm.get("protocol", protocol_name))

    def diff(col: str) -> dict:
        """rival − control of a confirmation column, per case (seed means) and over cases."""
        r, c = summary[f"{key}/{winner}"]["per_case"], summary[f"{key}/{control}"]["per_case"]
        d = [r[k][col]["dice"] - c[k][col]["dice"] for k in sorted(set(r) & set(c))]
        return {"mean": sum(d) / len(d), "ci95": protocol.bootstrap_ci(d, *confirm_bootstrap)}
    fmt = lambda x: f"{x['mean']:+.4f} [{x['ci95'][0]:+.3f}, {x['ci95'][1]:+.3f}]"
    second = lambda v: f"{probe['variants'][v]['network']['sens_second']:.3f}"
    mean = lambda v, col: f"{summary[f'{key}/{v}']['means'][col]['dice']:.4f}"
    avg = lambda d: f"{sum(d.values()) / len(d):.4f}"
    return "\n".join(["",
        f"## Against the recipe it replaced (protocols `{protocol_name}`, `{rule_name}`)", "",
        f"This recipe's round 2 replaced `{control}`'s after a declared control-against-rival confirmation on fresh "
        f"seeds ({', '.join(str(s) for s in summary[f'{key}/{winner}']['seeds'])}; docs/protocols/README.md, "
        f"docs/BENCHMARKS.md sections `{confirm_section}`, `protocol-{rule_name}-rival-vs-control-{key}`, "
        f"`{probe_path.stem}`). Mean over {len(rule['cases'])} held-out cases; the probe over its "
        f"{len(probe.get('cases', []))} cases with a second lesion:", "",
        "| | network ≥ 0.5, one seed | `single-lesion` default, one seed | probe: network's second-lesion sensitivity "
        "| **shipped rule, ensemble, threshold left out** |", "|---|---|---|---|---|",
        f"| `{control}` | {mean(control, 'network')} | {mean(control, 'default')} | {second(control)} | "
        f"{avg(rule['control'])} |",
        f"| **`{winner}`** | {mean(winner, 'network')} | {mean(winner, 'default')} | {second(winner)} | "
        f"{avg(rule['rival'])} |", "",
        f"`{winner}` − `{control}`, paired over cases (mean, bootstrap 95 % CI): network {fmt(diff('network'))}; "
        f"`single-lesion` default {fmt(diff('default'))}; probe second lesion {fmt(probe['difference'])}; shipped rule "
        f"{fmt(rule)}.", ""])


def _bootstrap_settings(name: str) -> tuple[int, int]:
    """(resamples, seed) of protocol ``name``'s bootstrap (docs/protocols/<name>.toml; the protocols' defaults
    10000 / 0 where the file or the keys are absent)."""
    import protocol
    import tomllib
    path = ROOT / "docs" / "protocols" / f"{name}.toml"
    return protocol.bootstrap_settings(tomllib.loads(path.read_text()) if path.exists() else {})


def rule_notes(protocol_name: str, rule: str, mods: tuple, winner: str, results_dir: Path = RESULTS) -> str:
    """The held-out numbers of the output rule ``rule`` on the fold models of recipe protocol
    ``protocol_name``'s variant ``winner`` (:data:`RULE_EVIDENCE`), as card markdown; empty when no rule
    protocol measured it on this recipe (the recipe table's "default output" column is then the rule's
    number)."""
    if (protocol_name, rule) not in RULE_EVIDENCE:
        return ""
    name, stage, column = RULE_EVIDENCE[(protocol_name, rule)]
    res, section = _set_results(name, stage, mods, results_dir)
    group = (res or {}).get("summary", {}).get(f"{'-'.join(mods)}/{winner}")
    if not group or column not in group["means"]:
        return ""
    m, d = group["means"], group["differences"]
    rows = [r for r in res.get("rows", []) if r.get("variant") == winner and tuple(r.get("modalities", ())) == tuple(mods)]

    def ci(a: str, b: str) -> str:
        if f"{a}-{b}" in d:
            x = d[f"{a}-{b}"]
            mean, (lo, hi) = x["mean"], x["ci95"]
        elif all(a in r and b in r for r in rows):  # a pair the protocol did not list: the tool its reading used
            import shipped_thresholds
            x = shipped_thresholds.paired(rows, a, b)[f"{'-'.join(mods)}/{winner}"]
            mean, (lo, hi) = x["mean"], x["ci95"]
        else:
            return "—"
        return f"{mean:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    # A rule protocol (cgc-v11) scores the previous rule as `default`; a threshold protocol (cgc-v25) scores
    # the same rule at 0.5 as `default_rec` instead, the comparison its shipped threshold was declared on.
    prev, short, note = next(((c, t, n) for c, t, n in (("default", "previous rule", " (`default output` above)"),
                                                          ("default_rec", f"`{rule}` at 0.5", ""))
                              if c in m and c != column), (None, "previous rule", ""))
    prev_dice = f"{m[prev]['dice']:.3f}" if prev else "—"
    return "\n".join(["",
        f"## Held-out numbers of the output rule `{rule}` (protocol `{name}`, stage `{stage}`)", "",
        f"The same fold models as above, their default output re-made with `{rule}`; docs/BENCHMARKS.md section "
        f"`{section}`. Mean Dice over {len(group['cases'])} held-out cases:", "",
        f"| `cgcseg gmm` default | {short}{note} | `{rule}` at {COLUMN_THRESHOLD.get(column, 0.5):g} |", "|---|---|---|",
        f"| {m['gmm_default']['dice']:.3f} | {prev_dice} | {m[column]['dice']:.3f} |", "",
        f"Paired differences (mean, bootstrap 95 % CI over cases): `{rule}` − {short} "
        f"{ci(column, prev) if prev else '—'}; `{rule}` − `cgcseg gmm` default {ci(column, 'gmm_default')}.", ""])


def card_sections(proto: dict, mods: tuple, variant: str, output_rule: str, ensemble: bool,
                  results_dir: Path = RESULTS) -> str:
    """The card's evidence sections after its Recipe paragraph: the recipe protocol's held-out numbers, the output
    rule's, and for a seed ensemble its own, its replication, its threshold and its rival reading."""
    name = proto["name"]
    return (held_out_notes(proto, mods, variant, results_dir)
            + rule_notes(name, output_rule, mods, variant, results_dir)
            + (ensemble_notes(name, mods, variant, results_dir) if ensemble else "")
            + (ensemble_replication_notes(name, mods, variant, results_dir) if ensemble else "")
            + (threshold_notes(name, mods, variant, results_dir) if ensemble else "")
            + (rival_notes(name, mods, variant, results_dir) if ensemble else ""))


RECIPE_LINE = re.compile(r"^\*\*Recipe\*\*: protocol `([\w.-]+)`'s [^`]*`([\w-]+)`", re.M)


def refresh_card(path: Path, results_dir: Path = RESULTS) -> bool:
    """Rewrite the evidence sections of the shipped model ``path``'s card from the committed results (after a card
    generator change, without retraining or re-scoring): the recipe the card names, the output rule the file
    records, ensemble sections when the file is a seed ensemble. Everything up to and including the Recipe
    paragraph is kept. True when the card changed."""
    import protocol
    from CGCLesionSegLib.checkpoint import read_checkpoint
    card = path.with_suffix(".md")
    text = card.read_text()
    found = RECIPE_LINE.search(text)
    if not found:
        raise SystemExit(f"{card}: no '**Recipe**: protocol `...`'s ... `variant`' paragraph; nothing changed")
    ck = read_checkpoint(path)
    proto = protocol.load_protocol(ROOT / "docs" / "protocols" / f"{found.group(1)}.toml")
    mods = tuple(ck["channels"])
    end = text.index("\n\n", found.start()) + 2
    fresh = text[:end] + card_sections(proto, mods, found.group(2), ck.get("default_output_rule") or SHIP_OUTPUT_RULE,
                                       bool(ck.get("members")), results_dir) + "\n"
    if fresh != text:
        card.write_text(fresh)
    return fresh != text


def export(proto: dict, model, labelled: list, hardware: str, results_dir: Path = RESULTS,
           models_dir: Path | None = None, output_rule: str = SHIP_OUTPUT_RULE, members: tuple = ()) -> None:
    """Write the shipped model, card and loss curve for a trained run; the card's per-case Dice is on
    ``labelled`` (its labelled training cases: in-sample, and the card says so). ``members``: the same recipe's
    runs of other seeds: the shipped file is then the seed ensemble of ``model`` and them, and the card scores it."""
    import evaluate_cgc
    import export_default_model
    from CGCLesionSegLib.default_models import model_file_name
    from CGCTraining.sanity import failure
    from CGCTraining.self_train import target_rule_text
    for m in (model, *members):
        check_file = m.run / "lesion_check.json"  # written by CGCTraining after training (CGCTraining.sanity)
        check = json.loads(check_file.read_text()) if check_file.exists() else None
        state = failure(check)
        if state:
            what = ("collapsed (it marks almost no lesion on its own training cases" if state == "collapsed" else
                    f"overgrown (it marks {check['ratio']:.1f} times its target's voxels on its own training cases")
            raise SystemExit(f"{m.run / 'last.pt'} has {what}; {check_file}): not exported, the shipped model is "
                             "unchanged. Train again with another seed")
    scored = model.run / "last.pt"
    if members:  # the card scores what ships: the ensemble (written beside the runs, not shipped from there)
        from CGCLesionSegLib.checkpoint import combine_checkpoints, save_checkpoint_dict
        scored = save_checkpoint_dict(model.run.parent / f"ensemble-seeds-{'-'.join(str(m.seed) for m in (model, *members))}.pt",
                                      combine_checkpoints([m.run / "last.pt" for m in (model, *members)]))
    # the run's last.pt records no rule; score "default" with the one the exported file will record
    rows = [evaluate_cgc._score_case(c, scored, list(model.modalities), "cpu", output_rule) for c in labelled]
    dice_json = model.run / "card_dice.json"
    dice_json.write_text(json.dumps(rows))
    chosen = "screening winner" if "screen" in proto.get("stages", {}) else "confirmed recipe"
    confirm, _ = _set_results(proto["name"], "confirm", model.modalities, results_dir)
    if chosen == "screening winner" and f"{'-'.join(model.modalities)}/{model.variant}" in (confirm or {}).get("summary", {}):
        chosen += ", confirmed on fresh seeds,"  # the held-out table below is then the confirmation's
    rounds, m = 1, model
    while m.parent is not None:  # this model's round: 1 + the rounds before it
        rounds, m = rounds + 1, m.parent
    recipe_note = (f"**Recipe**: protocol `{proto['name']}`'s {chosen} `{model.variant}` "
                   f"(`{' '.join(effective_args(list(model.args)))}`)"
                   + (f"; self-training round {rounds}: round {rounds - 1} (`{model.parent.variant}`, same seed and data) "
                      f"segmented the training cases with {target_rule_text(model.pseudo_volume)} "
                      f"(labels never read), and this model was trained from round {rounds - 1}'s weights "
                      "on those binary targets" + (" (each earlier round likewise from the one before)" if rounds > 2 else "")
                      if model.parent is not None else "") + ". Trained by `scripts/train_default_models.py`.")
    notes = recipe_note + "\n\n" + card_sections(proto, model.modalities, model.variant, output_rule, bool(members),
                                                 results_dir)
    stem = Path(model_file_name(list(model.modalities))).stem
    export_default_model.main([str(model.run), "--name", stem, "--dice-json", str(dice_json), "--hardware", hardware,
                               "--output-rule", output_rule, "--notes", notes]
                              + (["--members", *[str(m.run) for m in members]] if members else [])
                              + (["--models-dir", str(models_dir)] if models_dir else []))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--protocol", help="protocol TOML (e.g. docs/protocols/cgc-v1.toml); required unless --refresh-cards")
    ap.add_argument("--models", nargs="+", choices=sorted(MODEL_SETS), default=["four-channel", "flair"])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data"))
    ap.add_argument("--work-dir", help="default: runs/default-models-<protocol name>")
    ap.add_argument("--jobs", type=int, default=2, help="trainings at once (each gets cores // jobs threads)")
    ap.add_argument("--steps", type=int, help="steps per round (default: the protocol's confirmation budget)")
    ap.add_argument("--max-minutes", type=float, default=180.0, help="safety stop per round")
    ap.add_argument("--device", default="cpu", help="cpu or cuda (trainings and pseudo-labels)")
    ap.add_argument("--export", action="store_true", help="after training, write the shipped models and cards")
    ap.add_argument("--hardware", default="2 CPU cores, no GPU", help="for the model card")
    from CGCLesionSegLib.checkpoint import OUTPUT_RULE_NAMES
    ap.add_argument("--output-rule", default=SHIP_OUTPUT_RULE, choices=OUTPUT_RULE_NAMES,
                    help=f"`--postprocess auto` recorded in the exported models (default: {SHIP_OUTPUT_RULE})")
    ap.add_argument("--variant", help="ship this variant instead of the screening winner: a recipe whose "
                    "confirmation (a stage with a control and a rival) was decided as its protocol declares, "
                    "recorded in docs/protocols/README.md")
    ap.add_argument("--seeds", type=int, nargs="+", default=[SHIP_SEED], metavar="SEED",
                    help=f"training seeds (default {SHIP_SEED}); two or more ship their seed ensemble (only after a "
                         "declared protocol confirmed it for the model set)")
    ap.add_argument("--results-dir", default=str(RESULTS), help="where the protocol's results files are")
    ap.add_argument("--models-dir", help="where --export writes (default: the package's models folder)")
    ap.add_argument("--refresh-cards", action="store_true",
                    help="only rewrite the evidence sections of the shipped cards from the committed results "
                         "(no training, no scoring; each card names its own protocol)")
    args = ap.parse_args(argv)
    if args.refresh_cards:
        from update_model_cards import model_paths
        for path in model_paths(args.models_dir):
            print(f"{path.with_suffix('.md').name}: {'rewritten' if refresh_card(path, Path(args.results_dir)) else 'unchanged'}")
        return 0
    if not args.protocol:
        ap.error("--protocol is required (unless --refresh-cards)")
    import protocol
    proto = protocol.load_protocol(args.protocol)
    stage = {"steps": args.steps or int(proto["stages"]["confirm"]["steps"]), "max_minutes": args.max_minutes}
    work = Path(args.work_dir or ROOT / "runs" / f"default-models-{proto['name']}")
    results_dir = Path(args.results_dir)
    winner = args.variant or recipe(proto, results_dir)
    if len(set(args.seeds)) != len(args.seeds):
        raise SystemExit(f"--seeds {' '.join(map(str, args.seeds))}: give each seed once")
    models = [m for seed in args.seeds
              for m in plan_models(proto, args.models, Path(args.data), work, results_dir, seed=seed, variant=winner)]
    print(f"recipe {winner} ({stage['steps']} steps per round): " + ", ".join(str(m.run) for m in models),
          file=sys.stderr)
    protocol.train_all(models, stage, args.jobs, args.device)
    if args.export:
        labelled = protocol._case_dirs(Path(args.data) / proto["labelled"])
        for name in args.models:  # one file per model set: the first seed's run, the other seeds' as members
            runs = [m for m in models if m.variant == winner and m.modalities == MODEL_SETS[name]]
            export(proto, runs[0], labelled, args.hardware, results_dir, args.models_dir, args.output_rule,
                   tuple(runs[1:]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
