"""Group chatter: which GroupMe callbacks can be meant for the bot, decided as cheaply as possible.

GroupMe posts every message of a group to the bot's callback, and nearly all of them are people
talking to each other (issue 20, item 10). A message is for the bot only when its first word is
`/vpn` (or `vpn`, any case, full-width look-alikes too) or it is a lone `/<verb>` (answered with
"commands start with /vpn"), which is the parser's own test of a command (bot/chat/parser.py; a
test holds the two together). Everything else is answered at once, before the store, the task
runner or GroupMe's API is touched:

1. `cannot_be_a_command(body)` looks at the raw bytes only: a JSON object in plain ASCII with no
   escapes holds its text as a literal slice of the bytes, which NFKC leaves alone; if neither
   `vpn` nor `/<verb>` occurs anywhere in it (any case), no field of it can be a command. About 2 µs,
   no JSON parsed. Anything else (non-ASCII, escapes, not object-shaped) goes on to step 2, so
   malformed bodies still get their 400.
2. `addressed(text)`, after the JSON is read and the @mentions are stripped, applies the parser's
   test of the first word without the parser's per-character checks (~2 µs instead of ~35 µs), so
   a long message or an emoji joined with U+200D is chatter, not "that message contains control
   characters" answered in the group.

Standard library only, on purpose: a front that drops chatter before the app wakes
(docs/groupme-front.md) copies this one file and calls `worth_waking`, so both decide alike.
"""
from __future__ import annotations

import json
import unicodedata
from collections.abc import Collection

VERBS = ("start", "stop", "status", "extend", "list", "help", "approve", "deny", "pending", "report", "audit", "notify")  # bot/chat/parser.py's VERBS (tested equal)
_VERBS_BYTES = tuple(v.encode() for v in VERBS)


def cannot_be_a_command(body: bytes) -> bool:
    """True only when no text in this callback body can be a command (see the module docstring)."""
    if not body.isascii() or b"\\" in body:
        return False  # non-ASCII or escapes: NFKC or an escape could spell "vpn"; read the JSON
    stripped = body.strip()
    if not (stripped.startswith(b"{") and stripped.endswith(b"}")):
        return False  # not an object: let the JSON reader answer it (400)
    low = body.lower()
    if b"vpn" in low:
        return False
    slash = low.find(b"/")
    while slash >= 0:
        if low.startswith(_VERBS_BYTES, slash + 1):
            return False
        slash = low.find(b"/", slash + 1)
    return True


def addressed(text: str) -> bool:
    """Is this group message meant for the bot? The parser's test of the first word, nothing more."""
    clean = " ".join(unicodedata.normalize("NFKC", text.replace("&nbsp;", " ")).split())
    words = clean.split(" ") if clean else []
    if not words:
        return False
    head = words[0].lower().lstrip("/")
    return head == "vpn" or (len(words) == 1 and words[0].startswith("/") and head in VERBS)


def strip_mentions(text: object, attachments: object) -> str:
    """Remove @mentions GroupMe marks with loci, so '@VPN Bot /vpn start' reads '/vpn start'."""
    if not isinstance(text, str):
        return ""
    spans = []
    for att in attachments if isinstance(attachments, list) else []:
        if isinstance(att, dict) and att.get("type") == "mentions":
            for locus in att.get("loci") or []:
                if isinstance(locus, list) and len(locus) == 2 and all(isinstance(x, int) for x in locus):
                    spans.append(locus)
    for start, length in sorted(spans, reverse=True):
        text = text[:start] + " " + text[start + length:]
    return text.strip()


def worth_waking(body: bytes, group_ids: Collection[str]) -> bool:
    """For a front before the app: could the app act on this callback? False for chatter, other
    groups, bots (the bot's own posts included), system notices and junk. The app checks it all
    again (and verifies the message with GroupMe); this only decides what is worth forwarding."""
    if cannot_be_a_command(body):
        return False
    try:
        msg = json.loads(body)
    except (ValueError, RecursionError):
        return False
    if not isinstance(msg, dict) or str(msg.get("group_id") or "") not in group_ids:
        return False
    if msg.get("sender_type") != "user" or msg.get("system") is not False:
        return False
    text = msg.get("text")
    return isinstance(text, str) and addressed(strip_mentions(text, msg.get("attachments")))
