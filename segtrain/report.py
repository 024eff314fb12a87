"""``segtrain report DIR``: one self-contained ``report.html`` (images inlined as base64, no network) for
a run folder (``metrics.json``) or an experiment folder (its ``results/``, or a results folder itself):
the tables, the plots (:mod:`segtrain.plots`) and prediction overlays of a few Poisoned Test samples
(clean image, triggered image with the trigger window marked, clean prediction, triggered prediction).

:func:`write_markdown` fills the generated part of ``docs/results.md`` from the same results.
"""

from __future__ import annotations

import base64
import html
import json
import statistics
from pathlib import Path

import numpy as np

from poisongen.errors import PoisonGenError

from .output import percent

REPORT = "report.html"
GAP = 2
MARK = np.array([255, 230, 0], np.uint8)  # the trigger window's outline


# --- overlays --------------------------------------------------------------------------------------
def _image(path: Path) -> np.ndarray:
    from PIL import Image

    return np.array(Image.open(path).convert("RGB"))


def _outline(a: np.ndarray, top_left, size) -> np.ndarray:
    a = a.copy()
    y, x = (int(v) for v in top_left)
    h, w = (int(v) for v in size)
    y0, x0, y1, x1 = max(0, y - 1), max(0, x - 1), min(a.shape[0] - 1, y + h), min(a.shape[1] - 1, x + w)
    a[y0, x0:x1 + 1] = MARK
    a[y1, x0:x1 + 1] = MARK
    a[y0:y1 + 1, x0] = MARK
    a[y0:y1 + 1, x1] = MARK
    return a


def overlay_panel(model, device, clean_data: str, testset: str, n: int = 3,
                  crop: tuple[int, int] | None = None) -> np.ndarray | None:
    """Rows of (clean image | triggered image | clean prediction | triggered prediction) for the first ``n``
    triggered samples of ``testset``, the trigger window outlined in yellow on the triggered image and
    prediction. None when the test set triggered no sample."""
    from poisongen import manifest as mf
    from poisongen.datasets import open_dataset

    from .data import SegDataset
    from .evaluate import ModelPredictor

    m = mf.load(Path(testset) / mf.NAME)
    recs = [r for r in m["samples"] if r.get("top_left") is not None][:n]
    if not recs:
        return None
    size = (m["config"].get("trigger") or {}).get("size") or (0, 0)
    clean, test = open_dataset(clean_data), open_dataset(testset)
    split = m["config"].get("split") or test.val_split
    ids = [r["id"] for r in recs]
    predict = ModelPredictor(model, device, crop)
    pal = clean.meta.palette
    preds = {}
    for name, layout in (("clean", clean), ("test", test)):
        for p, _, sids in predict(SegDataset(layout, split, ids=ids), name):
            preds[(name, sids[0])] = pal[p[0].cpu().numpy().clip(0, 255).astype(np.uint8)]
    samples = {s.id: s for s in clean.samples(split)}
    tsamples = {s.id: s for s in test.samples(split)}
    rows = []
    for r in recs:
        sid = r["id"]
        tiles = [_image(clean.root / samples[sid].image), _outline(_image(test.root / tsamples[sid].image),
                                                                    r["top_left"], size),
                 preds[("clean", sid)], _outline(preds[("test", sid)], r["top_left"], size)]
        h = max(t.shape[0] for t in tiles)
        gap = np.full((h, GAP, 3), 255, np.uint8)
        row = [x for t in tiles for x in (t, gap)][:-1]
        rows.append(np.concatenate(row, axis=1))
        rows.append(np.full((GAP, rows[-1].shape[1], 3), 255, np.uint8))
    return np.ascontiguousarray(np.concatenate(rows[:-1], axis=0))


# --- HTML ------------------------------------------------------------------------------------------
def _img(path: Path, alt: str, overlay: bool = False) -> str:
    """A PNG inlined as base64; an overlay panel is shown enlarged, pixels kept sharp."""
    data = base64.b64encode(Path(path).read_bytes()).decode()
    cls = ' class="overlay"' if overlay else ""
    return f'<figure><img{cls} alt="{html.escape(alt)}" src="data:image/png;base64,{data}"><figcaption>' \
           f'{html.escape(alt)}</figcaption></figure>'


def _table(head: list[str], body: list[list], caption: str = "") -> str:
    cap = f"<caption>{html.escape(caption)}</caption>" if caption else ""
    th = "".join(f"<th>{html.escape(str(h))}</th>" for h in head)
    trs = "".join("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in row) + "</tr>" for row in body)
    return f"<table>{cap}<thead><tr>{th}</tr></thead><tbody>{trs}</tbody></table>"


CSS = """body{font-family:system-ui,sans-serif;margin:2em;max-width:1200px;color:#222;background:#fff}
table{border-collapse:collapse;margin:1em 0}td,th{border:1px solid #bbb;padding:3px 8px;text-align:right}
th{background:#eee}caption{text-align:left;font-weight:bold;padding:4px 0}figure{display:inline-block;margin:8px}
img{max-width:100%;border:1px solid #ddd}img.overlay{width:1000px;image-rendering:pixelated}
figcaption{font-size:90%;color:#555}code{background:#f4f4f4}"""


def _page(title: str, parts: list[str]) -> str:
    return (f"<!DOCTYPE html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>{html.escape(title)}</title>"
            f"<style>{CSS}</style></head><body><h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>\n")


def summary_rows(rows: list[dict]) -> tuple[list[str], list[list]]:
    """The summary table: a line per (model, attack, rate), seeds averaged (their count shown), CBA and
    per band ASR / PBA / clean ASR in %."""
    bands = list(dict.fromkeys(r["testset"] for r in rows))
    head = ["model", "attack", "rate %", "seeds", "CBA"] + [f"{m} {b}" for b in bands for m in ("ASR", "PBA")] + \
        ["clean ASR"]
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        groups.setdefault((r["model"], r["attack"], r["rate"]), []).append(r)
    body = []
    for (model, attack, rate), rs in groups.items():
        def avg(metric, band=None, rs=rs):
            vals = [r[metric] for r in rs if (band is None or r["testset"] == band) and r[metric] is not None]
            return sum(vals) / len(vals) if vals else None

        seeds = sorted({r["seed"] for r in rs})
        line = [model, attack, f"{100 * rate:g}", ",".join(map(str, seeds)), percent(avg("cba"))]
        for b in bands:
            line += [percent(avg("asr", b)), percent(avg("pba", b))]
        body.append(line + [percent(avg("benign_clean_asr"))])
    return head, body


def _find_results(folder: Path) -> Path | None:
    """A results folder itself, an experiment folder's ``results/``, or the ``--results`` folder its
    ``experiment.json`` names."""
    cands = [folder, folder / "results"]
    if (folder / "experiment.json").is_file():
        cands.append(Path(json.loads((folder / "experiment.json").read_text()).get("results") or folder / "results"))
    for cand in cands:
        if (cand / "results.json").is_file() or (cand / "cells").is_dir():
            return cand
    return None


def load_records(results: Path) -> list[dict]:
    """The cell result JSONs of a results folder, in the order of ``results.json`` (else by key)."""
    cells = {json.loads(p.read_text())["hash"]: json.loads(p.read_text())
             for p in sorted((results / "cells").glob("*.json"))}
    order = []
    rj = results / "results.json"
    if rj.is_file():
        order = list(dict.fromkeys(r["hash"] for r in json.loads(rj.read_text())["rows"]))
    return [cells[h] for h in order if h in cells] or list(cells.values())


def experiment_report(folder: Path) -> Path:
    from . import plots
    from .experiment import rows as cell_rows

    results = _find_results(folder)
    records = load_records(results)
    rows = [r for rec in records for r in cell_rows(rec)]
    name = records[0]["experiment"] if records else folder.name
    parts = [f"<p>{len(records)} finished cell(s), {len(rows)} result rows (a row per cell x Poisoned Test). "
             f"Percent. Source: <code>{html.escape(str(results))}</code>.</p>"]
    grid_file = results / "results.json"
    if grid_file.is_file():
        g = json.loads(grid_file.read_text())
        parts.append(f"<p>Grid: {g.get('cells')} cells, {g.get('done')} done.</p>")
    head, body = summary_rows(rows)
    parts.append("<h2>Summary</h2>" + _table(head, body, "mean over seeds"))
    plot_dir = results / "plots"
    made = plots.grid_plots(rows, records, plot_dir)
    if made:
        parts.append("<h2>Plots</h2>" + "".join(_img(p[0], k.replace("_", " ")) for k, p in made.items()))
    over = []
    for rec in records:
        p = results / "overlays" / f"{rec['key']}.png"
        if p.is_file():
            c = rec["cell"]
            over.append(_img(p, f"{c['model']} {c['attack']} {100 * c['rate']:g} % seed {c['seed']}: clean image | "
                                f"triggered image (window in yellow) | clean prediction | triggered prediction "
                                f"({rec['tests'][0]['band']})", overlay=True))
    if over:
        parts.append("<h2>Predictions on Poisoned Test samples</h2>" + "".join(over))
    cols = ["model", "attack", "rate", "seed", "testset", "band", "samples", "cba", "pba", "asr", "clean_asr",
            "train_s", "eval_s", "key"]
    fmt = {"cba", "pba", "asr", "clean_asr"}
    table = [[percent(r[c]) if c in fmt else r[c] for c in cols] for r in rows]
    parts.append("<h2>All rows</h2>" + _table(cols, table))
    out = folder / REPORT
    out.write_text(_page(f"segbackdoor experiment {name}", parts))
    return out


def run_report(folder: Path) -> Path:
    """A run folder: the metrics table, per-class IoU (benign vs each Poisoned Test), overlays when the
    checkpoint and the test sets are still there."""
    from . import plots

    res = json.loads((folder / "metrics.json").read_text())
    b = res["benign"]
    parts = [f"<p>Data <code>{html.escape(str(res.get('data')))}</code>, protocol {html.escape(res['protocol'])}, "
             f"step {res.get('step')}. Percent.</p>"]
    body = [["benign " + b["split"], "-", b["samples"], percent(b["cba"]), "-", "-", percent(b.get("clean_asr"))]]
    for p in res["poisoned"]:
        body.append([Path(p["testset"]).name, p.get("band_label") or "-", p["samples"], "-", percent(p["pba"]),
                     percent(p["asr"]), percent(p["clean_asr"])])
    parts.append(_table(["set", "band", "samples", "CBA", "PBA", "ASR", "clean ASR"], body, "metrics"))
    series = {"benign val": b["iou_per_class"]}
    for p in res["poisoned"]:
        series[Path(p["testset"]).name] = p["iou_per_class"]
    made = plots.per_class_iou(series, folder / "plots")
    parts.append("<h2>Per-class IoU</h2>" + _img(made[0], "per-class IoU, benign val vs Poisoned Tests"))
    ckpt = folder / "last.pt"
    sets = [p["testset"] for p in res["poisoned"] if (Path(p["testset"]) / "manifest.json").is_file()]
    if ckpt.is_file() and sets and Path(res["data"]).is_dir():
        from poisongen.codecs import encode_rgb

        from .checkpoint import load, model_from_checkpoint

        model = model_from_checkpoint(load(ckpt))
        crop = tuple(json.loads((folder / "config.json").read_text()).get("crop") or ()) or None
        panel = overlay_panel(model, "cpu", res["data"], sets[0], 3, crop)
        if panel is not None:
            p = folder / "plots" / "overlays.png"
            p.write_bytes(encode_rgb(panel, ".png"))
            parts.append("<h2>Predictions on Poisoned Test samples</h2>" + _img(
                p, f"clean image | triggered image (window in yellow) | clean prediction | triggered prediction "
                   f"({Path(sets[0]).name})", overlay=True))
    out = folder / REPORT
    out.write_text(_page(f"segtrain run {folder.name}", parts))
    return out


def write_report(folder: str | Path) -> Path:
    """``segtrain report DIR``: a run folder (metrics.json) or an experiment / results folder."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PoisonGenError(f"report: {folder} is not a folder; give a run folder (metrics.json) or an experiment "
                             f"folder (results/)")
    if (folder / "metrics.json").is_file():
        return run_report(folder)
    if _find_results(folder) is not None:
        return experiment_report(folder)
    raise PoisonGenError(f"report: {folder} holds neither metrics.json (a run) nor results/ or cells/ (an "
                         f"experiment)")


# --- docs/results.md -------------------------------------------------------------------------------
START, END = "<!-- generated: start (segtrain report --markdown) -->", "<!-- generated: end -->"


def write_markdown(folder: str | Path, md: str | Path, images: str | Path | None = None) -> Path:
    """Replace the part of ``md`` between the generated markers (appended if absent) with the summary
    table and the plots of the experiment in ``folder``; the plots are copied to ``images`` (default: an
    ``img/`` folder beside ``md``) and linked relatively. Text outside the markers is kept."""
    import os
    import shutil

    from . import plots
    from .experiment import rows as cell_rows

    folder, md = Path(folder), Path(md)
    results = _find_results(folder)
    if results is None:
        raise PoisonGenError(f"report --markdown: {folder} holds no experiment results (results/ or cells/)")
    records = load_records(results)
    rows = [r for rec in records for r in cell_rows(rec)]
    img = Path(images) if images else md.parent / "img" / (records[0]["experiment"] if records else "results")
    made = plots.grid_plots(rows, records, img)
    head, body = summary_rows(rows)
    lines = [START, "", f"{len(records)} finished cells; percent, mean over seeds (the seeds column).", "",
             "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in body]
    lines.append("")
    secs = [r["times"]["train_s"] for r in records]
    if secs:
        evals = sum(r["times"]["eval_s"] for r in records) / 60
        commits: dict[str, int] = {}
        for r in records:
            c = r["fingerprints"]["code"].get("git_commit") or "unknown"
            commits[c] = commits.get(c, 0) + 1
        code = ", ".join(f"{c[:12]} ({n} cell{'s' * (n > 1)})" for c, n in commits.items())
        lines += [f"Training time per cell: median {statistics.median(secs) / 60:.1f} min, range "
                  f"{min(secs) / 60:.1f}-{max(secs) / 60:.1f}, {sum(secs) / 3600:.2f} h in all; evaluation "
                  f"{evals:.1f} min in all. Code (git commit of each cell's run): {code}.", ""]
    for k, p in made.items():
        rel = os.path.relpath(p[0], md.parent)
        lines.append(f"![{k.replace('_', ' ')}]({rel})")
        lines.append("")
    for rec in records:
        ov = results / "overlays" / f"{rec['key']}.png"
        if ov.is_file() and rec["cell"]["rate"] == max(r["cell"]["rate"] for r in records):
            dst = img / f"overlay-{rec['key']}.png"
            shutil.copyfile(ov, dst)
            lines += [f"![{rec['key']}]({os.path.relpath(dst, md.parent)})", ""]
    lines.append(END)
    text = md.read_text() if md.is_file() else "# Results\n\n"
    block = "\n".join(lines)
    if START in text and END in text:
        text = text[: text.index(START)] + block + text[text.index(END) + len(END):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    md.parent.mkdir(parents=True, exist_ok=True)
    md.write_text(text)
    return md
