"""A neutral card: rendered natively where a channel has cards, as text everywhere else."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass(frozen=True)
class Action:
    """A button that sends `command` back as if the user had typed it (and is authorised the same way)."""

    title: str
    command: str


@dataclass(frozen=True)
class Table:
    columns: Sequence[str]
    rows: Sequence[Sequence[str]]
    # One action per row (or None), e.g. a Stop button for each session.
    row_actions: Sequence[Action | None] = ()


@dataclass(frozen=True)
class Card:
    title: str
    lines: Sequence[str] = ()
    facts: Sequence[tuple[str, str]] = ()
    table: Table | None = None
    actions: Sequence[Action] = field(default_factory=tuple)
