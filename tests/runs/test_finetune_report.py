"""The fine-tune report's paired comparison with its head run (`paired_with_head`): made on the test images both runs
scored, or, where the head run's predictions.csv cannot be compared, the reason and the command, in report.md. The
session fixtures `ham_run` and `tuned` (a fine-tune of it) live in conftest.py."""

from __future__ import annotations

import json
import shutil

import pandas as pd
import pytest

from bottleneck.runs.finetune_report import paired_with_head, write_finetune_report


def paired_section(report: str) -> str:
    return report.split("## Paired comparison with the head run")[1].split("\n## ")[0]


def test_paired_with_head_is_the_comparison_of_compare_on_the_images_both_scored(ham_run, tuned):
    run = tuned["result"].run_dir
    record = paired_with_head(ham_run["run"], run, run.name)
    assert record["made"] and [r["label"] for r in record["runs"]] == [ham_run["run"].name, run.name]
    assert record["rows"]["intersect"] and record["rows"]["images"] == tuned["result"].metrics["test"]["n"]
    saved = json.loads((run / "metrics.json").read_text())["paired_with_head"]  # made when the run was written
    assert saved["pairs"][0]["metrics"]["balanced_accuracy"] == pytest.approx(
        record["pairs"][0]["metrics"]["balanced_accuracy"])


def test_a_head_run_compare_cannot_read_gets_the_reason_and_the_command(ham_run, tuned, tmp_path):
    head = shutil.copytree(ham_run["run"], tmp_path / "old-head")
    df = pd.read_csv(head / "predictions.csv", dtype=str, keep_default_na=False)
    df[[c for c in df.columns if not c.startswith("logp_")]].to_csv(head / "predictions.csv", index=False)
    run = tuned["result"].run_dir
    record = paired_with_head(head, run, run.name)
    assert record["made"] is False and "logp_" in record["reason"]
    config = json.loads((run / "config.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text()) | {"paired_with_head": record}
    section = paired_section(write_finetune_report(tmp_path / "report.md", config, metrics, run.name).read_text())
    assert "Not made:" in section and "logp_" in section and "bottleneck compare" in section
    assert "--intersect" in section and "| B - A |" not in section
