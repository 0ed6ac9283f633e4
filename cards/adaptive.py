"""Adaptive Card 1.4 JSON (the highest version Teams renders everywhere) from a neutral Card."""
from __future__ import annotations

from cards.model import Action, Card

SCHEMA = "http://adaptivecards.io/schemas/adaptive-card.json"


def _submit(action: Action) -> dict:
    # The command travels as data; the bot treats it exactly like typed text, access checks included.
    return {"type": "Action.Submit", "title": action.title, "data": {"command": action.command}}


def render_adaptive(card: Card, *, image_data_uri: str | None = None) -> dict:
    body: list[dict] = [{"type": "TextBlock", "text": card.title, "weight": "Bolder", "size": "Medium", "wrap": True}]
    body += [{"type": "TextBlock", "text": line, "wrap": True, "spacing": "Small"} for line in card.lines]
    if card.facts:
        body.append({"type": "FactSet", "facts": [{"title": k, "value": v} for k, v in card.facts]})
    if image_data_uri:
        # A fixed 300 px: big enough for a phone camera to read off a laptop screen.
        body.append({"type": "Image", "url": image_data_uri, "width": "300px", "altText": "WireGuard QR code", "horizontalAlignment": "Center"})
    if card.table is not None:
        # One block per row (bold first column, the rest as facts): columns of eight squeeze to
        # unreadable slivers in a Teams chat pane, blocks stay readable on a phone too.
        t = card.table
        if not t.rows:
            body.append({"type": "TextBlock", "text": "(none)", "isSubtle": True})
        for i, row in enumerate(t.rows):
            values = [str(v) for v in row]
            block: list[dict] = [
                {"type": "TextBlock", "text": values[0], "weight": "Bolder", "wrap": True},
                {"type": "FactSet", "facts": [{"title": str(c), "value": v} for c, v in zip(t.columns[1:], values[1:])]},
            ]
            action = t.row_actions[i] if i < len(t.row_actions) else None
            if action is not None:
                block.append({"type": "ActionSet", "actions": [_submit(action)]})
            body.append({"type": "Container", "separator": True, "spacing": "Medium", "items": block})
    out = {"type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.4", "body": body}
    if card.actions:
        out["actions"] = [_submit(a) for a in card.actions]
    return out
