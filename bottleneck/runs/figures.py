"""How a figure with its interval reads in a report: `0.812 (0.781-0.842)`, marked when it rests on few lesions
(`few` in metrics.json, set by stats' intervals), and the footnote that explains the mark."""

from __future__ import annotations

from ..stats import FEW_LESIONS, fmt

FEW = "\u2020"  # marks a figure resting on fewer than FEW_LESIONS lesions (`few` in metrics.json), see few_note


def ci(record: dict | None, digits: int = 3) -> str:
    """An interval record as `0.812 (0.781-0.842)`, `0.900 (0.555-0.997)†` when it rests on fewer than
    FEW_LESIONS lesions; "-" when undefined."""
    if not record:
        return "-"
    mark = FEW if record.get("few") else ""
    if record.get("lower") is None:
        return fmt(record["value"], digits) + mark
    return f"{fmt(record['value'], digits)} ({fmt(record['lower'], digits)}-{fmt(record['upper'], digits)}){mark}"


def few_note(lines: list[str]) -> list[str]:
    """The footnote of the FEW marker, where a line of the report shows one."""
    if not any(FEW in line for line in lines):
        return []
    return ["", f"{FEW} Rests on fewer than {FEW_LESIONS} lesions (for a sensitivity or recall, lesions of that class; "
            "for balanced accuracy or an AUC, of the smallest class it uses): the figure is rough and its interval "
            "wide, however it reads. `metrics.json` marks it `few` and names each interval's method.", ""]
