"""Pure rendering: neutral cards to Adaptive Card JSON and to text."""
from cards.adaptive import render_adaptive
from cards.model import Action, Card, Table
from cards.text import format_cost, format_minutes, render_card_text

CARD = Card(
    title="Live VPN sessions",
    lines=("2 live session(s).",),
    facts=(("Region", "eastus"),),
    table=Table(("Session", "Owner", "Left"), (("a1", "alice@x.org", "5 min"), ("b2", "bob@x.org", "ending")), (Action("Stop a1", "/vpn stop a1"), None)),
    actions=(Action("Help", "/vpn help"),),
)


def test_adaptive_card_shape():
    out = render_adaptive(CARD, image_data_uri="data:image/png;base64,AAAA")
    assert out["type"] == "AdaptiveCard" and out["version"] == "1.4"
    types = [el["type"] for el in out["body"]]
    assert types == ["TextBlock", "TextBlock", "FactSet", "Image", "Container", "Container"]
    first, second = out["body"][4]["items"], out["body"][5]["items"]
    assert first[0]["text"] == "a1" and first[1]["facts"] == [{"title": "Owner", "value": "alice@x.org"}, {"title": "Left", "value": "5 min"}]
    assert first[2]["actions"] == [{"type": "Action.Submit", "title": "Stop a1", "data": {"command": "/vpn stop a1"}}]
    assert len(second) == 2  # no Stop button for a session already ending
    assert out["actions"][0]["data"] == {"command": "/vpn help"}
    assert out["body"][3]["width"] == "300px"


def test_empty_table_says_none():
    out = render_adaptive(Card("t", table=Table(("a",), ())))
    assert out["body"][-1]["text"] == "(none)"
    assert render_card_text(Card("t", table=Table(("a",), ()))) == "t\n(none)"


def test_text_rendering():
    text = render_card_text(CARD)
    assert text.splitlines()[0] == "Live VPN sessions"
    assert "Region  eastus" in text and "a1       alice@x.org  5 min" in text and "[Help: /vpn help]" in text


def test_formats():
    assert [format_minutes(s) for s in (0, 30, 60, 125 * 60)] == ["0 min", "under a minute", "1 min", "2 h 05 min"]
    assert format_cost(0.00615) == "$0.0062" and format_cost(12.5) == "$12.50"


def test_a_wide_table_becomes_blocks_that_fit_80_columns():
    from cards.model import Table
    from cards.text import render_table

    wide = Table(("Session", "Owner", "Where", "Endpoint", "State", "Since (UTC)", "Left", "Cost"),
                 [["a1b2c3d4e5", "alice@example.org", "azure/westeurope (Standard_B1s)", "203.0.113.10:51820", "ready", "12:00", "1 h 05 min", "$0.0123"]])
    text = render_table(wide)
    assert all(len(line) <= 80 for line in text.splitlines()), text
    assert "Owner" in text and "alice@example.org" in text and "203.0.113.10:51820" in text
    narrow = Table(("A", "B"), [["1", "2"]])
    assert render_table(narrow) == "A  B\n1  2"
