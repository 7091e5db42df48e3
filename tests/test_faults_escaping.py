"""Issue 24, case 5 and the CSV note: text from data in the files a run writes. A metadata value with `|`, a line
break or HTML, a class name and a column name of the same kind, image and group ids a spreadsheet would run as
formulas: report.md keeps every table row at its header's cells and carries no raw HTML, every CSV cell that starts
like a formula is prefixed with `'`, and `--split-from` and `evaluate` of that run still find every id."""

from __future__ import annotations

import csv
import json
import re
import shutil

import numpy as np
import pandas as pd
import pytest
from conftest import run_cli

from bottleneck.util import csv_unescape

SITES = ("a|b", "head\nneck", "<b>x</b>", "back")
COLUMN = "site|<i>x"  # a metadata column name is a table header (no "/": the cache names a dataset by it)
CLASSES = {"bcc": 24, "mel": 24, "=nv|<u>": 48}  # a class name in headers, cells and predictions.csv
PREFIXES = ("-", "=", "'", "+", "@", "''", "")
FAST = ["--epochs", "4", "--patience", "2", "--quiet"]


def hostile_cache(path, dim=16):
    """A real cache (through CacheWriter) whose ids, groups, class names and metadata hold the hostile text."""
    from bottleneck.cache.store import CacheConfig
    from bottleneck.cache.writer import CacheWriter

    rng = np.random.default_rng(0)
    config = CacheConfig(backbone="vgg16", weights="none", weights_sha256="", seed=0, input_size=32, pooling="avg",
                         preprocessing="test", dtype="float16", num_features=dim)
    centers = rng.normal(0, 1.5, size=(len(CLASSES), dim))
    rows, feats, k = [], [], 0
    for c, (name, n) in enumerate(CLASSES.items()):
        for i in range(n):
            lesion = f"{c}-{i // 2}"
            site = SITES[(i // 2) % len(SITES)]
            rows.append(dict(image_id=f"{PREFIXES[k % len(PREFIXES)]}img{k:04d}", path=f"c{c}/img{k:04d}.jpg",
                             label=name, group=f'=HYPERLINK("http://x/{lesion}")', sha256=f"{k:064x}", width=40,
                             height=30, meta={"localization": site, COLUMN: site}))
            feats.append(centers[c] + rng.normal(0, 1, dim))
            k += 1
    with CacheWriter(path, config, {"dataset": "hostile"}, tuple(sorted(CLASSES))) as w:
        w.write_batch(rows, np.array(feats, dtype=np.float32))
    return path


def gfm_cells(line: str) -> int:
    """How many cells GitHub's Markdown sees in a table row: `\\` escapes the next character, `|` separates."""
    return len(re.findall(r"(?:\\.|[^|\\])*\|", line[1:]))


def tables(text: str) -> list[list[str]]:
    blocks, block = [], []
    for line in text.split("\n") + [""]:
        if line.startswith("|"):
            block.append(line)
        elif block:
            blocks, block = blocks + [block], []
    return blocks


def outside_code(text: str) -> str:
    """The text less its code spans (whose content Markdown shows as it is, never as HTML)."""
    return re.sub(r"(`+).*?(?<!`)\1(?!`)", "", text)


def raw_cells(path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


@pytest.fixture(scope="module")
def hostile_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("hostile")
    cache = hostile_cache(tmp / "c.h5")
    r = run_cli("train-head", cache, "--out", tmp / "run", "--subgroups", f"localization,{COLUMN}", *FAST)
    assert r.exit_code == 0, r.output
    return {"tmp": tmp, "cache": cache, "run": tmp / "run"}


def test_report_tables_keep_their_columns_and_no_html_gets_in(hostile_run):
    report = (hostile_run["run"] / "report.md").read_text(encoding="utf-8")
    blocks = tables(report)
    assert len(blocks) >= 8
    for block in blocks:
        width = gfm_cells(block[0])
        assert all(gfm_cells(line) == width for line in block), block
    m = json.loads((hostile_run["run"] / "metrics.json").read_text())
    for col in ("localization", COLUMN):
        rows = {r["value"]: r for r in m["subgroups"]["tables"][col]}
        assert set(rows) == set(SITES)
        block = next(b for b in blocks if b[0].startswith("| " + col.replace("|", "\\|").replace("<", "&lt;")[:6]))
        for line, row in zip(block[2:], m["subgroups"]["tables"][col]):  # images and lesions under their headers
            cells = [c.strip() for c in re.findall(r"((?:\\.|[^|\\])*)\|", line[1:])]
            assert cells[1:3] == [str(row["images"]), str(row["lesions"])], line
    assert "&lt;b&gt;x&lt;/b&gt;" in report and "a\\|b" in report and "head neck" in report
    assert "head\nneck" not in report
    # A code span shows its text as it is (the rerun command holds `site|<i>x`, shell-quoted); outside them, no `<`
    # at all: nothing of ours is HTML either.
    assert "'localization,site|<i>x'" in report
    assert "<" not in outside_code(report)


def test_csv_cells_that_start_like_formulas_are_prefixed(hostile_run):
    run = hostile_run["run"]
    rows = raw_cells(run / "predictions.csv")
    header = rows[0]
    assert header[:6] == ["image_id", "path", "group", "split", "true", "predicted"]
    text = next(i for i, c in enumerate(header) if c.startswith("p_"))  # then numbers (logp_ ones are negative)
    for row in rows[1:]:
        assert row[2].startswith("'=HYPERLINK(")
        assert all(c[:1] not in set("=+-@\t\r") for c in row[:text]), row
        numbers = np.array(row[text:], dtype=float)  # numbers as numbers: p_ and logp_ never escaped
        assert ((numbers[:len(numbers) // 2] >= 0) & (numbers[len(numbers) // 2:] <= 0)).all()
    assert {r[4] for r in rows[1:]} == {"bcc", "mel", "'=nv|<u>"}
    ids = {r[0] for r in rows[1:]}
    assert {"'-img0000", "'=img0001", "''img0002", "'+img0003", "'@img0004", "'''img0005", "img0006"} & ids
    preds = csv_unescape(pd.read_csv(run / "predictions.csv", dtype=str, keep_default_na=False))
    assert preds["group"].str.startswith('=HYPERLINK("http://x/').all()  # what a reviewer reads after stripping
    assert set(preds["true"]) == set(CLASSES)
    for row in raw_cells(run / "split.csv")[1:]:
        assert row[0][:1] not in set("=+-@")


@pytest.mark.slow
def test_split_from_and_evaluate_still_find_every_id(hostile_run):
    tmp, run = hostile_run["tmp"], hostile_run["run"]
    r = run_cli("train-head", hostile_run["cache"], "--out", tmp / "again", "--split-from", run,
                "--subgroups", "none", *FAST)
    assert r.exit_code == 0, r.output
    assert (tmp / "again" / "split.csv").read_bytes() == (run / "split.csv").read_bytes()

    r = run_cli("evaluate", run)
    assert r.exit_code == 0, r.output
    split = csv_unescape(pd.read_csv(run / "split.csv", dtype=str, keep_default_na=False))
    test = set(split["image_id"][split["split"] == "test"])
    preds = csv_unescape(pd.read_csv(run / "eval-test" / "predictions.csv", dtype=str, keep_default_na=False))
    assert set(preds["image_id"]) == test and any(i[:1] in "-='+@" for i in test)

    # an external copy of the training cache: the run's train/val rows (found through split.csv) are left out
    copy = shutil.copy(hostile_run["cache"], tmp / "copy.h5")
    r = run_cli("evaluate", run, "--cache", copy)
    assert r.exit_code == 0, r.output
    out = run / "eval-copy"
    assert set(csv_unescape(pd.read_csv(out / "predictions.csv", dtype=str, keep_default_na=False))["image_id"]) \
        == test
    excluded = csv_unescape(pd.read_csv(out / "excluded.csv", dtype=str, keep_default_na=False))
    assert set(excluded["image_id"]) == set(split["image_id"]) - test
    assert "<" not in outside_code((out / "report.md").read_text(encoding="utf-8"))
