#!/usr/bin/env python
"""Run every defense and detector on the quickstart-style models poisoned with baseline, NNI and PRL, write
one JSON per step, the plots, and the results tables of docs/defenses.md (generated from the JSONs, never
typed). Resumable: a step whose JSON exists is skipped; a killed step leaves no folder (it runs again).

Two sources of models:

- RUNS (quickstart-style, trained by hand): the poisoned copies RUNS/{baseline,nni,prl}/, the test sets
  RUNS/test_near and RUNS/test_far, and the trained runs RUNS/pspnet_{baseline,nni,prl}/ (last.pt); --clean is
  the clean dataset they were made from (the quickstart's $POISONGEN_DATA/synthetic-96x192).

      nice -n 10 .venv/bin/python scripts/defense_results.py RUNS --clean data/synthetic-96x192 \\
          --out RUNS/defenses --doc docs/defenses.md

- --grid OUT (an experiment folder of `segtrain experiment`): the finished cells of --grid-rate (default 10 %),
  --grid-model and --grid-seed, one per attack; their checkpoints, poisoned copies and Poisoned Tests are the
  grid's own, the clean data is the grid's source (--clean not needed). --tests picks the bands (default near,far).

      nice -n 10 .venv/bin/python scripts/defense_results.py --grid runs/paper-shape-cpu \\
          --out runs/paper-shape-cpu-defenses --doc docs/defenses.md
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from segtrain.defenses import runs  # noqa: E402
from segtrain.defenses.common import RESULT  # noqa: E402

ATTACKS = ("baseline", "nni", "prl")
TESTS = ("test_near", "test_far")


class InputError(ValueError):
    """A bad argument or folder: main prints it as one line and exits 2."""


class Subject(NamedTuple):
    """What the steps of one attack work on: a checkpoint, its poisoned training copy, Poisoned Tests by name."""

    ckpt: Path
    poisoned: Path
    tests: dict[str, Path]
    clean: Path


def runs_subjects(runs: Path, clean: Path, attacks: list[str]) -> dict[str, Subject]:
    return {a: Subject(runs / f"pspnet_{a}" / "last.pt", runs / a, {t: runs / t for t in TESTS}, clean)
            for a in attacks}


def grid_subjects(out: Path, attacks: list[str], rate: float, model: str | None, seed: int,
                  bands: list[str]) -> dict[str, Subject]:
    """The finished cells of an experiment folder at one rate/model/seed, one per attack (from the result JSONs
    the grid wrote last, so an unfinished cell is never used)."""
    exp = out / "experiment.json"
    if not exp.is_file():
        raise InputError(f"--grid {out}: no experiment.json (not a `segtrain experiment` folder)")
    from segtrain.experiment import parse_grid, source_root

    rec = json.loads(exp.read_text())
    results = Path(rec["results"])
    clean = source_root(parse_grid(rec["grid"], where=str(exp)), out, create=False)  # generated, rescaled or given
    cells = [json.loads(f.read_text()) for f in sorted((results / "cells").glob("*.json"))]
    found: dict[str, Subject] = {}
    for attack in attacks:
        match = [c for c in cells if c["cell"]["attack"] == attack and c["cell"]["rate"] == rate
                 and c["cell"]["seed"] == seed and (model is None or c["cell"]["model"] == model)]
        if len(match) != 1:
            have = sorted({(c["cell"]["model"], c["cell"]["attack"], c["cell"]["rate"], c["cell"]["seed"])
                           for c in cells})
            raise InputError(f"--grid {out}: {len(match)} finished cells for attack {attack!r} at rate {rate:g}, "
                             f"seed {seed}, model {model or 'any'} (need one); finished: {have}")
        c = match[0]
        tests = {t["band"]: out / "data" / "tests" / t["key"] for t in c["tests"] if t["band"] in bands}
        missing = sorted(set(bands) - set(tests))
        if missing:
            raise InputError(f"--tests {','.join(bands)}: the grid has no band {missing}; it has "
                             f"{sorted(t['band'] for t in c['tests'])}")
        sub = Subject(out / "runs" / c["key"] / "last.pt", out / "data" / "poisoned" / c["poison"]["key"],
                      {b: tests[b] for b in bands}, Path(clean))
        for p in (sub.ckpt, sub.poisoned, sub.clean, *sub.tests.values()):
            if not p.exists():
                raise InputError(f"--grid {out}: {p} is missing (the cell's result JSON is there, its files not)")
        found[attack] = sub
    return found
BEGIN, END = "<!-- defense-results:begin -->", "<!-- defense-results:end -->"


def steps(args, attack: str) -> list[tuple[str, str, callable]]:
    """(name, result file, call(out)) of every step of one attack, in order."""
    sub = args.subjects[attack]
    ck = sub.ckpt
    tests = [str(t) for t in sub.tests.values()]
    clean = str(sub.clean)
    common = {"device": args.device, "seed": args.seed, "workers": args.workers}
    fr = [float(x) for x in args.fractions.split(",")]
    ks = [int(x) for x in args.channels.split(",")]
    out = [
        ("finetune", RESULT, lambda o: runs.run_finetune(ck, clean, tests, o, fr, args.epochs, **common)),
        ("prune", RESULT, lambda o: runs.run_prune(ck, clean, tests, o, ks, None, args.of, args.calibration,
                                                   **common)),
        ("fineprune", RESULT, lambda o: runs.run_prune(ck, clean, tests, o, ks, None, args.of, args.calibration,
                                                       fine={"fraction": args.fineprune_fraction,
                                                             "epochs": args.epochs}, **common)),
        ("detect_samples", runs.DETECT, lambda o: runs.run_detect_samples(ck, str(sub.poisoned), o, **common)),
    ]
    for name, t in sub.tests.items():
        out.append((f"detect_inputs_{name}", runs.DETECT,
                    lambda o, t=t: runs.run_detect_inputs(ck, clean, str(t), o, args.overlays, 1.0, args.seed,
                                                          args.device, args.max_inputs or None)))
    if not args.no_abl:
        out.append(("abl", RESULT, lambda o: runs.run_abl(ck, clean, str(sub.poisoned), tests, o, args.isolate,
                                                          isolate_iters=args.abl_isolate_iters,
                                                          train_iters=args.abl_train_iters,
                                                          unlearn_epochs=args.abl_unlearn_epochs, **common)))
    return out


def log(args, rec: dict) -> None:
    rec = {"time": datetime.now(timezone.utc).isoformat(timespec="seconds"), **rec}
    print(json.dumps(rec), flush=True)
    with (args.out / "log.jsonl").open("a") as f:
        f.write(json.dumps(rec) + "\n")


def run_all(args) -> dict:
    """Every step of every attack (skipping finished ones); returns {attack: {step: result}}."""
    args.out.mkdir(parents=True, exist_ok=True)
    results: dict = {}
    for attack in args.attacks:
        results[attack] = {}
        for name, file, call in steps(args, attack):
            folder = args.out / attack / name
            if (folder / file).is_file():
                results[attack][name] = json.loads((folder / file).read_text())
                continue
            t = time.perf_counter()
            log(args, {"attack": attack, "step": name, "event": "start"})
            call(folder)
            results[attack][name] = json.loads((folder / file).read_text())  # the figures are the JSON's
            log(args, {"attack": attack, "step": name, "event": "done", "seconds": round(time.perf_counter() - t, 1)})
    return results


# --- plots ----------------------------------------------------------------------------------------------
def _curve(res: dict, key: str):
    xs = [0] + [row[key] for row in res["rows"]]
    heads = [res["before"]] + [row["after"] for row in res["rows"]]
    return xs, heads


def plot(results: dict, folder: Path) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for step, key, xlabel in (("finetune", "fraction", "clean fine-tuning fraction"),
                              ("prune", "k", "pruned channels k"),
                              ("fineprune", "k", "pruned channels k (+ fine-tuning)")):
        have = [a for a in results if step in results[a]]
        if not have:
            continue
        fig, axes = plt.subplots(1, len(have), figsize=(4.2 * len(have), 3.4), dpi=100, squeeze=False)
        for ax, attack in zip(axes[0], have, strict=True):
            xs, heads = _curve(results[attack][step], key)
            ax.plot(xs, [100 * (h["cba"] or 0) for h in heads], "k-o", label="CBA")
            for i, s in enumerate(heads[0]["sets"]):
                ax.plot(xs, [100 * (h["sets"][i]["asr"] or 0) for h in heads], "-s",
                        label=f"ASR {s['testset']} {s['band'] or ''}")
            ax.set_title(attack)
            ax.set_xlabel(xlabel)
            ax.set_ylabel("%")
            ax.set_ylim(0, 100)
            ax.legend(fontsize=7)
        fig.tight_layout()
        path = folder / f"{step}.png"
        fig.savefig(path)
        plt.close(fig)
        written.append(path)
    return written


# --- tables of docs/defenses.md ---------------------------------------------------------------------------
def _p(v) -> str:
    return "-" if v is None else f"{100 * v:.1f}"


def _a(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def defense_table(attack: str, res: dict) -> list[str]:
    sets = res["before"]["sets"]
    head = ["model", "CBA", "clean ASR"] + [f"{c} {s['testset']}" for s in sets for c in ("PBA", "ASR")]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    rows = [("no defense", res["before"])]
    for r in res["rows"]:
        if res["defense"] == "finetune":
            label = f"fine-tune {100 * r['fraction']:g} % ({r['samples']} img)"
        elif res["defense"] in ("prune", "fineprune"):
            label = f"prune {r['k']}/{res['settings']['width']}"
            label += " + fine-tune" if res["defense"] == "fineprune" else ""
        else:
            iso = r["isolation"]
            label = f"ABL (isolated {iso['truly_poisoned']}/{iso['isolated']} poisoned, chance {_p(iso['chance'])} %)"
        rows.append((label, r["after"]))
    for label, h in rows:
        lines.append("| " + " | ".join([label, _p(h["cba"]), _p(h["clean_asr"])]
                                        + [_p(s[k]) for s in h["sets"] for k in ("pba", "asr")]) + " |")
    return lines


def doc_block(results: dict, args) -> str:
    out = [BEGIN, "", f"Generated by `scripts/defense_results.py` on {datetime.now(timezone.utc):%Y-%m-%d} from "
           f"`{args.out}`; every figure below comes from the JSON files there. Metrics in %.", ""]
    timing = ["| attack | step | minutes |", "|---|---|---|"]
    for attack, steps_ in results.items():
        out.append(f"### {attack}")
        out.append("")
        for name in ("finetune", "prune", "fineprune", "abl"):
            if name in steps_:
                out += [f"**{name}**", "", *defense_table(attack, steps_[name]), ""]
        det = ["| detector | data | AUROC | precision@k | recall@k | TPR@5 % FPR | TPR@10 % FPR | pixel AUROC |",
               "|---|---|---|---|---|---|---|---|"]
        for name, res in steps_.items():
            if not name.startswith("detect"):
                continue
            where = "training samples" if res["detect"] == "samples" else Path(res["testset"]).name
            for d in res["detectors"]:
                s = res["scores"][d]
                det.append(f"| {d} | {where} | {_a(s['auroc'])} | {_p(s['precision_at_k'])} | {_p(s['recall_at_k'])} "
                           f"| {_p(s.get('tpr_at_fpr_0.05'))} | {_p(s.get('tpr_at_fpr_0.1'))} "
                           f"| {_a(s.get('pixel_auroc'))} |")
        if len(det) > 2:
            out += ["**detection**", "", *det, ""]
        for name, res in steps_.items():
            sec = res["seconds"]["total"] if isinstance(res.get("seconds"), dict) else res.get("seconds")
            timing.append(f"| {attack} | {name} | {sec / 60:.1f} |")
    out += ["### time per step (this machine, all cores shared)", "", *timing, ""]
    out += ["Plots: " + ", ".join(f"`{p.relative_to(args.out)}`" for p in sorted((args.out / "plots").glob("*.png"))),
            "", END]
    return "\n".join(out)


def check_doc(doc: Path) -> str:
    """The text of --doc, which must hold the generated block (checked before the first step runs)."""
    if not doc.is_file():
        raise InputError(f"--doc {doc}: no such file")
    text = doc.read_text()
    if BEGIN not in text or END not in text:
        raise InputError(f"--doc {doc}: has no {BEGIN} ... {END} block to replace")
    return text


def write_doc(doc: Path, block: str) -> None:
    text = check_doc(doc)
    a, b = text.index(BEGIN), text.index(END) + len(END)
    tmp = doc.with_name(f".{doc.name}.tmp")
    tmp.write_text(text[:a] + block + text[b:])
    tmp.replace(doc)


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path, nargs="?", help="a folder of quickstart-style runs (or use --grid)")
    ap.add_argument("--clean", type=Path, help="the clean dataset the poisoned copies of RUNS came from")
    ap.add_argument("--grid", type=Path, help="an experiment folder: defend its finished cells instead of RUNS")
    ap.add_argument("--grid-rate", type=float, default=0.1)
    ap.add_argument("--grid-model", default=None, help="the grid's model name (default: the only one)")
    ap.add_argument("--grid-seed", type=int, default=0)
    ap.add_argument("--tests", default="near,far", help="with --grid: the Poisoned Test bands to evaluate")
    ap.add_argument("--out", type=Path, default=None, help="default RUNS/defenses (GRID/defenses)")
    ap.add_argument("--doc", type=Path, default=None, help="refresh the results block of this file (docs/defenses.md)")
    ap.add_argument("--attacks", default=",".join(ATTACKS))
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--fractions", default="0.01,0.05,0.10")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--channels", default="5,15,30")
    ap.add_argument("--of", type=int, default=None, help="scale --channels from a layer this wide (default absolute)")
    ap.add_argument("--calibration", type=float, default=0.10)
    ap.add_argument("--fineprune-fraction", type=float, default=0.05)
    ap.add_argument("--overlays", type=int, default=100)
    ap.add_argument("--max-inputs", type=int, default=50,
                    help="triggered inputs (and their benign twins) per test set for STRIP/TeCo; 0: all. STRIP costs "
                         "N overlays x 2 forward passes per input")
    ap.add_argument("--isolate", type=float, default=0.05)
    ap.add_argument("--abl-isolate-iters", type=int, default=None)
    ap.add_argument("--abl-train-iters", type=int, default=None)
    ap.add_argument("--abl-unlearn-epochs", type=int, default=5)
    ap.add_argument("--no-abl", action="store_true", help="skip ABL (it trains a model anew: the longest step)")
    args = ap.parse_args(argv)
    args.attacks = [a for a in args.attacks.split(",") if a]
    if (args.runs is None) == (args.grid is None):
        ap.error("give RUNS or --grid OUT (one of them)")
    if args.grid is None and args.clean is None:
        ap.error("RUNS needs --clean (the clean dataset its poisoned copies came from)")
    try:
        if args.doc:
            check_doc(args.doc)
        if args.grid is not None:
            args.subjects = grid_subjects(args.grid, args.attacks, args.grid_rate, args.grid_model,
                                          args.grid_seed, [b for b in args.tests.split(",") if b])
        else:
            args.subjects = runs_subjects(args.runs, args.clean, args.attacks)
    except InputError as e:  # one line, exit 2, nothing written: the same contract as the CLIs
        ap.exit(2, f"{ap.prog}: error: {e}\n")
    args.out = args.out or (args.runs or args.grid) / "defenses"
    results = run_all(args)
    plot(results, args.out / "plots")
    (args.out / "summary.json").write_text(json.dumps(results, indent=1, sort_keys=True) + "\n")
    if args.doc:
        write_doc(args.doc, doc_block(results, args))
        print(f"refreshed the results of {args.doc}")


if __name__ == "__main__":
    main()
