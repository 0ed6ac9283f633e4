"""Text renderings: the fallback for every card and the whole UI of plain-text channels."""
from __future__ import annotations

from cards.model import Card, Table


def render_card_text(card: Card) -> str:
    parts = [card.title]
    parts += list(card.lines)
    if card.facts:
        width = max(len(k) for k, _ in card.facts)
        parts += [f"{k.ljust(width)}  {v}" for k, v in card.facts]
    if card.table is not None:
        parts.append(render_table(card.table))
    if card.actions:
        parts.append("  ".join(f"[{a.title}: {a.command}]" for a in card.actions))
    return "\n".join(p for p in parts if p != "")


WIDTH = 80  # a terminal's, and about what a GroupMe message shows on a phone before it wraps


def render_table(table: Table, width: int = WIDTH) -> str:
    """A monospace table where it fits in `width` columns; otherwise one block per row (its first
    column, then "column: value" lines), so nothing wraps mid-word. No rows: says so."""
    if not table.rows:
        return "(none)"
    cols = [str(c) for c in table.columns]
    rows = [[str(v) for v in r] for r in table.rows]
    widths = [max(len(cols[i]), *(len(r[i]) for r in rows)) for i in range(len(cols))]
    if sum(widths) + 2 * (len(widths) - 1) <= width:
        fmt = lambda r: "  ".join(v.ljust(widths[i]) for i, v in enumerate(r)).rstrip()  # noqa: E731
        return "\n".join([fmt(cols), *(fmt(r) for r in rows)])
    label = max(len(c) for c in cols[1:]) if len(cols) > 1 else 0
    blocks = []
    for r in rows:
        lines = [f"{cols[0]} {r[0]}"] + [f"  {cols[i].ljust(label)}  {r[i]}" for i in range(1, len(cols))]
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


def format_minutes(seconds: float) -> str:
    """'1 h 05 min', '12 min', 'under a minute'; never negative."""
    minutes = max(0, int(seconds // 60))
    if seconds < 60:
        return "under a minute" if seconds > 0 else "0 min"
    if minutes >= 60:
        return f"{minutes // 60} h {minutes % 60:02d} min"
    return f"{minutes} min"


def format_cost(dollars: float) -> str:
    return f"${dollars:.4f}" if dollars < 1 else f"${dollars:.2f}"
