"""The experiment's plots (matplotlib, Agg; each written as PNG and SVG) from the tidy result rows of
:func:`segtrain.experiment.rows`: ASR vs poisoning rate per method, ASR vs distance band per method, CBA and
PBA vs rate with the clean model's CBA as a line, per-class IoU of the clean vs the poisoned models."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path
from statistics import mean

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

CLEAN = "clean"
MARKERS = "osD^vP*X"


def _save(fig, out: Path, name: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{name}.{ext}"
        # fixed metadata: the same results give the same files
        fig.savefig(p, dpi=110, bbox_inches="tight", metadata={"Date": None} if ext == "svg" else {"Software": None})
        paths.append(p)
    plt.close(fig)
    return paths


def _mean_spread(values: list[float]) -> tuple[float, float, float]:
    return mean(values), min(values), max(values)


def _by(rows: list[dict], *keys) -> dict:
    out = defaultdict(list)
    for r in rows:
        out[tuple(r[k] for k in keys)].append(r)
    return out


def _methods(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["attack"] for r in rows if r["attack"] != CLEAN))


def _bands(rows: list[dict]) -> list[str]:
    return list(dict.fromkeys(r["testset"] for r in rows))


def _line(ax, xs, groups, label, marker):
    """Mean over seeds with the min-max spread as error bars."""
    pts = [(x, *_mean_spread(g)) for x, g in zip(xs, groups, strict=True) if g]
    if not pts:
        return
    x, m, lo, hi = zip(*pts, strict=True)
    ax.errorbar(x, [100 * v for v in m], yerr=[[100 * (a - b) for a, b in zip(m, lo, strict=True)],
                                               [100 * (b - a) for a, b in zip(m, hi, strict=True)]],
                marker=marker, capsize=3, label=label)


def _panel(ax, title: str, xlabel: str) -> None:
    ax.set_title(title)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)


def _asr_figure(fig, axes, out: Path, name: str) -> list[Path]:
    axes[0][0].set_ylabel("ASR (%)")
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    return _save(fig, out, name)


def asr_vs_rate(rows: list[dict], out: Path) -> list[Path]:
    """One panel per Poisoned Test band: ASR (%) against the poisoning rate, a line per method (the clean
    model is every line's rate 0)."""
    bands, methods = _bands(rows), _methods(rows)
    fig, axes = plt.subplots(1, len(bands), figsize=(4.2 * len(bands), 3.4), squeeze=False, sharey=True)
    for ax, band in zip(axes[0], bands, strict=True):
        br = [r for r in rows if r["testset"] == band]
        clean = [r["asr"] for r in br if r["attack"] == CLEAN and r["asr"] is not None]
        for i, m in enumerate(methods):
            rates = sorted({r["rate"] for r in br if r["attack"] == m})
            groups = [[r["asr"] for r in br if r["attack"] == m and r["rate"] == q and r["asr"] is not None]
                      for q in rates]
            if clean:
                rates, groups = [0.0, *rates], [clean, *groups]
            _line(ax, [100 * q for q in rates], groups, m, MARKERS[i % len(MARKERS)])
        label = next((r["band"] for r in br if r.get("band")), None)
        _panel(ax, f"{band}" + (f" {label}" if label else ""), "poisoning rate (%)")
    return _asr_figure(fig, axes, out, "asr_vs_rate")


def asr_vs_band(rows: list[dict], out: Path) -> list[Path]:
    """One panel per poisoning rate > 0: ASR (%) against the distance band, a line per method."""
    bands, methods = _bands(rows), _methods(rows)
    rates = sorted({r["rate"] for r in rows if r["rate"] > 0})
    fig, axes = plt.subplots(1, max(1, len(rates)), figsize=(4.2 * max(1, len(rates)), 3.4), squeeze=False,
                             sharey=True)
    for ax, q in zip(axes[0], rates, strict=False):
        for i, m in enumerate(methods):
            groups = [[r["asr"] for r in rows if r["attack"] == m and r["rate"] == q and r["testset"] == b
                       and r["asr"] is not None] for b in bands]
            _line(ax, list(range(len(bands))), groups, m, MARKERS[i % len(MARKERS)])
        ax.set_xticks(range(len(bands)), bands, rotation=20)
        _panel(ax, f"rate {100 * q:g} %", "distance band (trigger to victim)")
    return _asr_figure(fig, axes, out, "asr_vs_band")


def cba_pba_vs_rate(rows: list[dict], out: Path) -> list[Path]:
    """CBA (benign val) and PBA (first band) against the rate per method; the clean model's CBA as a line."""
    methods, bands = _methods(rows), _bands(rows)
    first = [r for r in rows if r["testset"] == bands[0]] if bands else []
    clean = [r["cba"] for r in first if r["attack"] == CLEAN]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), squeeze=False)
    fig.subplots_adjust(wspace=0.45)
    for ax, metric in zip(axes[0], ("cba", "pba"), strict=True):
        for i, m in enumerate(methods):
            rates = sorted({r["rate"] for r in first if r["attack"] == m})
            groups = [[r[metric] for r in first if r["attack"] == m and r["rate"] == q and r[metric] is not None]
                      for q in rates]
            _line(ax, [100 * q for q in rates], groups, m, MARKERS[i % len(MARKERS)])
        ref = [r[metric] for r in first if r["attack"] == CLEAN and r[metric] is not None]
        if ref:
            ax.axhline(100 * mean(ref), color="k", ls="--", lw=1, label=f"clean model {metric.upper()}")
        ax.set_xlabel("poisoning rate (%)")
        ax.set_ylabel(f"{metric.upper()} (%)" + (f" on {bands[0]}" if metric == "pba" and bands else ""))
        ax.grid(alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    if not clean:
        axes[0][0].set_title("(no clean model in the results)")
    return _save(fig, out, "cba_pba_vs_rate")


def per_class_iou(series: dict[str, dict[str, float | None]], out: Path, name: str = "per_class_iou") -> list[Path]:
    """Grouped bars: per-class IoU (%) of each model in ``series`` (label -> class -> IoU; the clean model
    first). Classes absent from every series are left out."""
    classes = [c for c in dict.fromkeys(k for s in series.values() for k in s)
               if any(s.get(c) is not None for s in series.values())]
    fig, ax = plt.subplots(figsize=(max(6, 0.55 * len(classes) * max(1, len(series)) / 2 + 2), 3.6))
    width = 0.8 / max(1, len(series))
    for i, (label, s) in enumerate(series.items()):
        ax.bar([j + i * width for j in range(len(classes))], [100 * (s.get(c) or 0) for c in classes], width,
               label=label)
    ax.set_xticks([j + 0.4 - width / 2 for j in range(len(classes))], classes, rotation=60, ha="right", fontsize=8)
    ax.set_ylabel("IoU (%) on the benign val split")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1))
    ax.grid(alpha=0.3, axis="y")
    return _save(fig, out, name)


def grid_plots(rows: list[dict], records: list[dict], out: Path) -> dict[str, list[Path]]:
    """Every plot of an experiment: the three metric plots and the per-class IoU of the clean model against
    each method at its highest rate (seed of the first such cell)."""
    plots = {}
    if not rows:
        return plots
    plots["asr_vs_rate"] = asr_vs_rate(rows, out)
    if any(r["rate"] > 0 for r in rows):
        plots["asr_vs_band"] = asr_vs_band(rows, out)
    plots["cba_pba_vs_rate"] = cba_pba_vs_rate(rows, out)
    series = {}
    clean = [r for r in records if r["cell"]["attack"] == CLEAN]
    if clean:
        series["clean model"] = clean[0]["report"]["benign"]["iou_per_class"]
    for m in dict.fromkeys(r["cell"]["attack"] for r in records if r["cell"]["attack"] != CLEAN):
        cells = [r for r in records if r["cell"]["attack"] == m]
        top = max(cells, key=lambda r: (r["cell"]["rate"], -r["cell"]["seed"]))
        series[f"{m} {100 * top['cell']['rate']:g} %"] = top["report"]["benign"]["iou_per_class"]
    if series:
        plots["per_class_iou"] = per_class_iou(series, out)
    return plots
