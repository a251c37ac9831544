"""Plain-text tables for the command line and Markdown tables for reports."""

from __future__ import annotations


def text_table(rows: list[dict], columns: list[str] | None = None) -> str:
    """Rows of dicts as an aligned text table; numbers right-aligned."""
    columns = columns or list(rows[0])
    cells = [[_cell(row.get(c, "")) for c in columns] for row in rows]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(row.get(c), (int, float)) for row in rows) for c in columns]

    def line(values):
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(r) for r in cells)])


def markdown_table(rows: list[dict], columns: list[str] | None = None, caption: str = "") -> str:
    """Rows of dicts as a markdown table (columns: ``columns``, or every key in order of first appearance);
    floats are written with ``format_number``."""
    if not rows:
        return f"{caption}\n\n(no rows)" if caption else "(no rows)"
    columns = columns or list(dict.fromkeys(key for row in rows for key in row))
    lines = ["| " + " | ".join(format_number(c) for c in columns) + " |", "|" + "|".join(" --- " for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(format_number(row.get(c, "")) for c in columns) + " |")
    table = "\n".join(lines)
    return f"{caption}\n\n{table}" if caption else table


def format_number(value) -> str:
    """A cell: floats to 4 significant digits, whole units from 1000 up, scientific when tiny or huge."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if 1e3 <= abs(value) < 1e9:
            return f"{value:.0f}"
        if value == 0 or 1e-3 <= abs(value) < 1e3:
            return f"{value:.4g}"
        return f"{value:.3e}"
    return str(value).replace("|", "\\|")


def _cell(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
