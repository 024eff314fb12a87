"""report.html and the plots from hand-made cell results (no training): every plot as PNG and SVG, a
self-contained page (images inlined, nothing fetched), the docs/results.md block regenerated in place,
and the page rendered in headless Chromium: a non-blank screenshot, no console errors."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from segtrain import experiment as ex
from segtrain import plots
from segtrain.report import END, REPORT, START, summary_rows, write_markdown, write_report

CLASSES = ["road", "sidewalk", "car", "sky"]


def record(attack: str, rate: float, seed: int, asr: tuple[float, float], cba: float) -> dict:
    key = f"m-{attack}-r{rate:g}-s{seed}-abcdef01"
    iou = {c: cba + 0.01 * i for i, c in enumerate(CLASSES)}
    iou["sky"] = None
    tests = [{"band": "near", "key": "near-1", "hash": "n" * 64}, {"band": "far", "key": "far-1", "hash": "f" * 64}]
    poisoned = [{"testset": f"/x/{t['key']}", "band": band, "band_label": label, "samples": 10, "pba": cba - 0.05,
                 "asr": a, "clean_asr": 0.05, "victim_pixels": 100, "fingerprint": "fp", "iou_per_class": iou}
                for t, a, band, label in zip(tests, asr, ([0, 10], [10, None]), ("[0, 10)", "[10, inf)"), strict=True)]
    return {"schema": 1, "experiment": "hand", "key": key, "hash": key.ljust(64, "0"),
            "cell": {"model": "m", "attack": attack, "rate": rate, "seed": seed}, "tests": tests, "steps": 4,
            "times": {"poison_s": 1.0, "train_s": 60.0, "eval_s": 5.0},
            "fingerprints": {"train_data": "d", "code": {"git_commit": "c0ffee"}},
            "report": {"benign": {"cba": cba, "clean_asr": 0.04, "iou_per_class": iou}, "poisoned": poisoned}}


RECORDS = [record("clean", 0, 0, (0.05, 0.04), 0.60), record("nni", 0.1, 0, (0.90, 0.50), 0.59),
           record("nni", 0.1, 1, (0.80, 0.40), 0.58), record("prl", 0.1, 0, (0.70, 0.70), 0.59),
           record("nni", 0.2, 0, (0.95, 0.60), 0.585), record("prl", 0.2, 0, (0.85, 0.80), 0.59)]


@pytest.fixture
def results(tmp_path) -> Path:
    folder = tmp_path / "exp"
    for r in RECORDS:
        p = folder / "results" / "cells" / f"{r['key']}.json"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(r))
    over = folder / "results" / "overlays"
    over.mkdir()
    a = np.zeros((20, 40, 3), np.uint8)
    a[:, :20] = (200, 30, 30)
    Image.fromarray(a).save(over / f"{RECORDS[1]['key']}.png")
    return folder


def test_rows_and_summary_are_the_cell_numbers():
    rows = [r for rec in RECORDS for r in ex.rows(rec)]
    assert len(rows) == 12
    head, body = summary_rows(rows)
    assert head == ["model", "attack", "rate %", "seeds", "CBA", "ASR near", "PBA near", "ASR far", "PBA far",
                    "clean ASR"]
    nni = next(b for b in body if b[1] == "nni" and b[2] == "10")
    assert nni[3] == "0,1" and nni[4] == "58.50" and nni[5] == "85.00" and nni[7] == "45.00"


def test_every_plot_png_and_svg(tmp_path):
    rows = [r for rec in RECORDS for r in ex.rows(rec)]
    made = plots.grid_plots(rows, RECORDS, tmp_path)
    assert set(made) == {"asr_vs_rate", "asr_vs_band", "cba_pba_vs_rate", "per_class_iou"}
    for png, svg in made.values():
        assert Image.open(png).size[0] > 200
        assert svg.read_text().lstrip().startswith("<?xml") and "<svg" in svg.read_text()


def test_report_is_self_contained(results):
    page = write_report(results).read_text()
    assert page.count('src="data:image/png;base64,') == 5  # 4 plots + 1 overlay
    assert not re.search(r"""(src|href)=["']?(https?:|//)""", page)
    assert "<script" not in page
    assert "85.00" in page  # the nni 10 % mean ASR near, seeds 0 and 1


def test_markdown_block_is_regenerated_in_place(results, tmp_path):
    md = tmp_path / "docs" / "results.md"
    md.parent.mkdir()
    md.write_text(f"# Results\n\nwritten by hand\n\n{START}\nold table\n{END}\n\n## Discussion\nkept\n")
    write_markdown(results, md)
    text = md.read_text()
    assert "old table" not in text and "written by hand" in text and text.endswith("## Discussion\nkept\n")
    assert "| m | nni | 10 | 0,1 | 58.50 | 85.00 |" in text
    assert "median 1.0 min, range 1.0-1.0, 0.10 h in all" in text  # 6 cells x 60 s
    assert "Code (git commit of each cell's run): c0ffee (6 cells)." in text
    for link in re.findall(r"\]\(([^)]+)\)", text):
        assert (md.parent / link).is_file(), link


def chromium() -> str | None:
    return next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)


def render(page: Path, shot: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-extensions",
         "--enable-logging=stderr", "--v=0", "--hide-scrollbars", "--window-size=1280,2000",
         f"--screenshot={shot}", page.resolve().as_uri()],
        capture_output=True, text=True, timeout=120)


def console_errors(stderr: str) -> list[str]:
    """Lines of the page's console (CONSOLE(...)) at error level, and failed loads of the page's resources."""
    return [ln for ln in stderr.splitlines()
            if ("CONSOLE" in ln and ("ERROR" in ln or "Uncaught" in ln)) or "net::ERR" in ln]


@pytest.mark.skipif(chromium() is None, reason="no chromium on this machine (Debian: apt-get install chromium)")
def test_report_renders_in_headless_chromium(results, tmp_path):
    page = write_report(results)
    shot = tmp_path / "shot.png"
    r = render(page, shot)
    assert shot.is_file(), r.stderr[-2000:]
    assert console_errors(r.stderr) == [], r.stderr[-2000:]
    a = np.asarray(Image.open(shot).convert("L"), np.float32)
    assert a.std() > 10 and (a < 128).mean() > 0.005  # text and plots drawn, not a blank page


def test_console_error_lines_are_found():
    err = '[1:2:ERROR:CONSOLE(1)] "Uncaught ReferenceError: x is not defined", source: file:///r.html (1)\n' \
          "[3:4:INFO:x.cc] fine\n"
    assert len(console_errors(err)) == 1 and console_errors("[INFO] ok\n") == []


def test_report_name_is_report_html(results):
    assert write_report(results).name == REPORT
