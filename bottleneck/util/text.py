"""Text from data (class names, ids, file names, metadata values) made safe for the two formats we write it into.

Markdown (`report.md`, `leaderboard.md`): a value must stay inside its table cell and must not become HTML. A `|`
or a line break in a subgroup value used to add cells to its row, shifting every figure one column; `<script>` went
into the report as it was. `md_cell` escapes a table cell, `md_text` a value in a line of prose, `md_code` puts a
value (a path, a run name, a command) in a code span.

CSV (`predictions.csv`, `split.csv`, ...): a spreadsheet evaluates a cell that starts with `=`, `+`, `-` or `@` (and
after a tab or carriage return) as a formula, so a group id `=HYPERLINK(...)` would run when a reviewer opens the
file. As OWASP advises for CSV export, `csv_cell` prefixes such a text cell with `'`; it also prefixes a cell that
starts with `'` itself, so that `csv_text` undoes the escape exactly: any string survives the round trip, and our
own readers (`--split-from`, `evaluate`) see the ids the cache holds. Numbers are never touched.
"""

from __future__ import annotations

import re

# Line breaks as Markdown and Python see them, and the other control characters: all end up as one space (a
# line break inside a table row ends the row; inside prose it can start a heading or an HTML block).
_BREAKS = re.compile(r"\r\n|[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029]")
_HTML = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;"})
_CELL = str.maketrans({"\\": "\\\\", "|": "\\|"})

CSV_FORMULA_STARTS = frozenset("=+-@\t\r")  # OWASP's list for CSV export
CSV_QUOTE = "'"
_CSV_ESCAPED = CSV_FORMULA_STARTS | {CSV_QUOTE}
_NUMERIC_KINDS = frozenset("biufc")  # numpy dtype kinds a CSV writes as numbers


def md_text(value) -> str:
    """`value` as text for a line of Markdown prose: `&`, `<` and `>` as entities (no HTML gets in), line breaks
    and other control characters as a space (a value cannot start a new line, hence no heading or HTML block)."""
    return _BREAKS.sub(" ", str(value)).translate(_HTML)


def md_cell(value) -> str:
    """`value` as one Markdown table cell: `md_text`, and `|` escaped as `\\|` (backslashes doubled first, so that
    `\\|` in a value cannot unescape our escape). A line break becomes a space rather than `<br>`: report.md is read
    as plain text as often as rendered, `<br>` would be the one raw HTML tag we write, and not every renderer takes
    it inside a table; the exact value is in metrics.json and predictions.csv."""
    return md_text(value).translate(_CELL)


def md_code(value) -> str:
    """`value` in a Markdown code span, shown exactly (no HTML, no emphasis inside one) whatever backticks it holds:
    the fence is one backtick longer than its longest run of backticks, padded with a space where the value starts or
    ends with one. Line breaks become spaces. For prose only: a table cell takes `md_cell`."""
    text = _BREAKS.sub(" ", str(value))
    runs = [len(r) for r in re.findall(r"`+", text)]
    fence = "`" * (max(runs, default=0) + 1)
    pad = " " if text[:1] == "`" or text[-1:] == "`" else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def md_table(header: list, rows: list[list]) -> list[str]:
    """A Markdown table as lines, every header and cell through `md_cell`: each row has the header's cells."""
    lines = ["| " + " | ".join(md_cell(c) for c in header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(md_cell(c) for c in r) + " |" for r in rows]


def csv_cell(value):
    """A CSV cell a spreadsheet will not run as a formula: a string starting with `=`, `+`, `-`, `@`, a tab, a carriage
    return or `'` gets a leading `'`; anything else (numbers included, negative ones too) is returned as it is."""
    if isinstance(value, str) and value[:1] in _CSV_ESCAPED:
        return CSV_QUOTE + value
    return value


def csv_text(cell: str) -> str:
    """The value `csv_cell` escaped: the leading `'` taken off a cell it put one on, any other cell as it is (so a
    file written before the escape, or by hand, reads as before unless a cell starts with `'` and then one of
    `=+-@'`, a tab or a carriage return)."""
    if cell[:1] == CSV_QUOTE and cell[1:2] and cell[1:2] in _CSV_ESCAPED:
        return cell[1:]
    return cell


def csv_safe(frame):
    """A copy of a pandas DataFrame to write with `.to_csv`: every text cell and column name through `csv_cell`,
    numeric columns untouched (a negative probability or score stays a number)."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype.kind not in _NUMERIC_KINDS:
            out[col] = out[col].map(csv_cell)
    out.columns = [csv_cell(c) for c in out.columns]
    return out


def csv_unescape(frame):
    """A DataFrame read back from a file written through `csv_safe` (read with `dtype=str`), with the values it
    was given: `csv_text` on every text cell and column name."""
    out = frame.copy()
    for col in out.columns:
        if out[col].dtype.kind not in _NUMERIC_KINDS:
            out[col] = out[col].map(lambda v: csv_text(v) if isinstance(v, str) else v)
    out.columns = [csv_text(c) if isinstance(c, str) else c for c in out.columns]
    return out


def write_csv(path, frame) -> None:
    """Write a pandas DataFrame as CSV through `csv_safe` (no index): the one way our CSV files are written.

    Lines end in `\n`, except in a file with a carriage return inside a text cell (a file name may hold one): the
    csv module quotes only the characters of its line terminator, so with `\n` it would write that cell unquoted and
    every reader would split the row there; such a file ends its lines in `\r\n` (RFC 4180), which quotes it."""
    safe = csv_safe(frame)
    carriage = any(isinstance(v, str) and "\r" in v for col in safe.columns for v in safe[col]
                   if safe[col].dtype.kind not in _NUMERIC_KINDS) or any("\r" in str(c) for c in safe.columns)
    safe.to_csv(path, index=False, lineterminator="\r\n" if carriage else "\n")
