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
        body.append({"type": "Image", "url": image_data_uri, "size": "Large", "altText": "WireGuard QR code"})
    if card.table is not None:
        t = card.table
        header = {
            "type": "ColumnSet",
            "columns": [
                {"type": "Column", "width": "stretch", "items": [{"type": "TextBlock", "text": c, "weight": "Bolder", "wrap": True}]}
                for c in t.columns
            ],
        }
        body.append(header)
        if not t.rows:
            body.append({"type": "TextBlock", "text": "(none)", "isSubtle": True})
        for i, row in enumerate(t.rows):
            columns = [
                {"type": "Column", "width": "stretch", "items": [{"type": "TextBlock", "text": str(v), "wrap": True}]}
                for v in row
            ]
            action = t.row_actions[i] if i < len(t.row_actions) else None
            body.append({"type": "ColumnSet", "separator": True, "columns": columns})
            if action is not None:
                body.append({"type": "ActionSet", "actions": [_submit(action)]})
    out = {"type": "AdaptiveCard", "$schema": SCHEMA, "version": "1.4", "body": body}
    if card.actions:
        out["actions"] = [_submit(a) for a in card.actions]
    return out
