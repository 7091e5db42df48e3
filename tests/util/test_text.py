"""Text from data made safe for Markdown and CSV: a value stays in its table cell and never becomes HTML; a CSV text
cell a spreadsheet would run as a formula is prefixed with `'`, numbers are not, and every string reads back exactly
(real files through pandas, property tests over any text)."""

from __future__ import annotations

import csv
import io
import re

import pandas as pd
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bottleneck.util.text import (
    csv_cell,
    csv_safe,
    csv_text,
    csv_unescape,
    md_cell,
    md_code,
    md_table,
    md_text,
    write_csv,
)

SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
HOSTILE = ["a|b", "head\nneck", "x\r\ny", "<b>x</b>", "<script>alert(1)</script>", "<img src=x>", "a\\|b", "a\\",
           "&lt;", "`code`", "=HYPERLINK(\"http://x\")", "-1", "'quoted", "", " ", "|", "\\", "\u2028", "\x1b[31m"]


def gfm_cells(line: str) -> list[str]:
    """A table row split into cells as GitHub's Markdown (cmark-gfm) splits it: a backslash escapes the next
    character, any other `|` separates cells; the leading and trailing pipe are the row's edges."""
    assert line.startswith("|") and line.endswith("|"), line
    cells, cell, escaped = [], "", False
    for ch in line[1:-1]:
        if escaped:
            cell, escaped = cell + ch, False
        elif ch == "\\":
            cell, escaped = cell + ch, True
        elif ch == "|":
            cells, cell = cells + [cell], ""
        else:
            cell += ch
    assert not escaped, line  # a trailing backslash would escape the row's closing pipe
    return cells + [cell]


def unescape_cell(cell: str) -> str:
    """What a reader sees of one escaped cell: backslash escapes and the three entities undone."""
    text = re.sub(r"\\(.)", r"\1", cell.strip())
    return text.replace("&lt;", "<").replace("&gt;", ">").replace("&amp;", "&")


# --- Markdown -----------------------------------------------------------------------------------------------------

def test_hostile_values_stay_in_their_cell_and_carry_no_html():
    header = ["col|<i>", "images", "balanced acc"]
    lines = md_table(header, [[v, 12, "0.812 (0.7-0.9)"] for v in HOSTILE])
    assert len(lines) == 2 + len(HOSTILE)
    for line, value in zip(lines[2:], HOSTILE):
        cells = gfm_cells(line)
        assert len(cells) == 3 and cells[1].strip() == "12" and cells[2].strip() == "0.812 (0.7-0.9)", line
        assert "<" not in line and "\n" not in line and "\r" not in line
        assert unescape_cell(cells[0]) == re.sub(r"\r\n|[\x00-\x1f\u2028]", " ", value).strip()
    assert len(gfm_cells(lines[0])) == 3 and unescape_cell(gfm_cells(lines[0])[0]) == "col|<i>"
    assert md_cell("a|b") == "a\\|b" and md_cell("head\nneck") == "head neck" and md_cell("x\r\ny") == "x y"
    assert md_cell("<b>x</b>") == "&lt;b&gt;x&lt;/b&gt;" and md_cell("a\\|b") == "a\\\\\\|b"
    assert md_cell(0.5) == "0.5" and md_cell(None) == "None"


def test_prose_keeps_pipes_but_not_lines_or_html():
    assert md_text("a|b <script>x</script> &amp;\n# heading") == \
        "a|b &lt;script&gt;x&lt;/script&gt; &amp;amp; # heading"


@given(st.text())
@example("`` ` ```")
@example("`a`")
@example("a\n<b>")
@SETTINGS
def test_any_string_makes_one_cell_and_a_closed_code_span(value):
    line = md_table(["value", "n"], [[value, 1]])[2]
    cells = gfm_cells(line)
    assert len(cells) == 2 and cells[1] == " 1 "
    assert "<" not in line and "\n" not in line and "\r" not in line
    assert "<" not in md_text(value) and "\n" not in md_text(value)

    span = md_code(value)
    fence = re.match(r"`+", span).group()
    inner = span[len(fence):-len(fence)]
    assert span.endswith(fence) and "\n" not in span
    assert fence not in re.findall(r"`+", inner)  # no run of exactly the fence's length closes it early


# --- CSV ----------------------------------------------------------------------------------------------------------

def test_formula_cells_are_prefixed_and_numbers_are_not(tmp_path):
    frame = pd.DataFrame({"image_id": ["=HYPERLINK(\"http://x\")", "-abc", "+1", "@sum", "\tx", "\rx", "'q", "ok", ""],
                          "score": [-1.5, -0.25, 0.0, 1.0, 2.0, -3.0, 4.0, 5.0, 6.0],
                          "mixed": [-2.0, "-x", None, True, 3, "=y", "a-b", "", "'"]})
    write_csv(tmp_path / "p.csv", frame)
    with open(tmp_path / "p.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    assert rows[0] == ["image_id", "score", "mixed"]
    assert [r[0] for r in rows[1:]] == ["'=HYPERLINK(\"http://x\")", "'-abc", "'+1", "'@sum", "'\tx", "'\rx", "''q",
                                        "ok", ""]
    assert [r[1] for r in rows[1:]][:3] == ["-1.5", "-0.25", "0.0"]  # numbers stay numbers, negative ones too
    assert [r[2] for r in rows[1:]] == ["-2.0", "'-x", "", "True", "3", "'=y", "a-b", "", "''"]
    back = csv_unescape(pd.read_csv(tmp_path / "p.csv", dtype=str, keep_default_na=False))
    assert list(back["image_id"]) == list(frame["image_id"])
    assert pd.read_csv(tmp_path / "p.csv")["score"].tolist() == frame["score"].tolist()
    assert csv_cell(-1.5) == -1.5 and csv_cell(None) is None and csv_text("'") == "'" and csv_text("'a") == "'a"


def test_a_formula_column_name_is_escaped_and_read_back(tmp_path):
    frame = pd.DataFrame({"=cmd": ["a"], "p_-x": [0.5]})
    assert list(csv_safe(frame).columns) == ["'=cmd", "p_-x"]
    write_csv(tmp_path / "h.csv", frame)
    assert list(csv_unescape(pd.read_csv(tmp_path / "h.csv", dtype=str)).columns) == ["=cmd", "p_-x"]


@given(st.text())
@example("'")
@example("''=")
@example("'=x")
@example("-")
@SETTINGS
def test_any_string_round_trips_through_the_escape(value):
    cell = csv_cell(value)
    assert csv_text(cell) == value
    assert cell[:1] not in set("=+-@\t\r")


@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00")),
                min_size=1, max_size=8))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@example(["x\ry", "-a"])
def test_any_ids_round_trip_through_a_real_csv_file(ids):
    buf = io.StringIO()
    write_csv(buf, pd.DataFrame({"image_id": ids, "split": "train"}))
    back = csv_unescape(pd.read_csv(io.StringIO(buf.getvalue()), dtype=str, keep_default_na=False))
    assert list(back["image_id"]) == ids
