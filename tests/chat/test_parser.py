"""The command parser: tolerant of chat noise, strict about hostile input, never raising."""
import pytest

from bot.chat.parser import Command, StartOptions, Usage, parse, parse_extend, parse_minutes, parse_start


@pytest.mark.parametrize(
    "text, expected",
    [
        ("/vpn start", Command("start")),
        ("vpn start", Command("start")),
        ("VPN   Start  ", Command("start")),
        ("  /Vpn STATUS", Command("status")),
        ("/vpn", Command("help")),
        ("vpn help", Command("help")),
        ("/vpn ls", Command("list")),
        ("/vpn stop 1a2b3c", Command("stop", ("1a2b3c",))),
        ("/vpn extend 30", Command("extend", ("30",))),
        ("/vpn&nbsp;start", Command("start")),
        ("／ｖｐｎ　ｓｔａｒｔ", Command("start")),  # full-width look-alikes normalise (NFKC)
        ("/vpn\tstart\nwesteurope", Command("start", ("westeurope",))),
        ("hello there", None),
        ("", None),
        ("   ", None),
        (None, None),
        ("vpnstart", None),
        ("/vpn launch", Usage("'launch' is not a command I know")),
        ("/start", Usage("commands start with /vpn, e.g. /vpn start")),
        ("/vpn stаrt", Usage("'stаrt' is not a command I know")),  # Cyrillic а is not a Latin a
        ("/vpn start\x00", Usage("that message contains control characters")),
        ("/vpn start\u202e", Usage("that message contains control characters")),
        ("/vpn " + "a" * 600, Usage("that message is too long to be a command")),
        ("/vpn start " + " ".join(["x"] * 20), Usage("too many words after the command")),
        ("/vpn stop '; DROP TABLE sessions; --", Command("stop", ("';", "DROP", "TABLE", "sessions;", "--"))),
    ],
)
def test_parse(text, expected):
    assert parse(text) == expected


@pytest.mark.parametrize(
    "token, minutes",
    [("45", 45), ("45m", 45), ("45min", 45), ("2h", 120), ("1h30m", 90), ("1h30", 90), ("0", 0), ("abc", None), ("h", None), ("", None), ("-5", None), ("99999999", None)],
)
def test_parse_minutes(token, minutes):
    assert parse_minutes(token) == minutes


@pytest.mark.parametrize(
    "args, expected",
    [
        ((), StartOptions()),
        (("westeurope",), StartOptions("westeurope", None)),
        (("60",), StartOptions(None, 60)),
        (("1h", "WestEurope"), StartOptions("westeurope", 60)),
        (("a", "b"), Usage("give one region, e.g. /vpn start westeurope")),
        (("10", "20"), Usage("give the duration once, e.g. /vpn start 60")),
        (("<script>",), Usage("'<script>' is neither a region nor a duration")),
        (("$(reboot)",), Usage("'$(reboot)' is neither a region nor a duration")),
    ],
)
def test_parse_start(args, expected):
    assert parse_start(args) == expected


def test_parse_extend():
    assert parse_extend(()) is None
    assert parse_extend(("15",)) == 15
    assert isinstance(parse_extend(("soon",)), Usage)
    assert isinstance(parse_extend(("1", "2")), Usage)


def test_parser_never_raises_on_random_input():
    import random

    rng = random.Random(7)
    alphabet = "vpn /start\x00\u200b\u202eé漢😀&nbsp;\t\n" + "".join(chr(i) for i in range(32, 127))
    for _ in range(3000):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        for candidate in (text, "/vpn " + text):
            result = parse(candidate)
            assert result is None or isinstance(result, (Command, Usage))


def test_the_ascii_fast_path_refuses_exactly_the_control_characters_the_categories_do():
    """normalise skips NFKC and _has_control asks isprintable for ASCII: the same answers as the
    Unicode categories for every ASCII character, alone or between words."""
    import unicodedata

    from bot.chat.parser import _has_control, normalise

    for i in range(128):
        for text in (chr(i), f"/vpn start{chr(i)}", f"/vpn{chr(i)}start x"):
            clean = normalise(text)
            assert clean == " ".join(unicodedata.normalize("NFKC", text).split())
            assert _has_control(clean) == any(unicodedata.category(c) in ("Cc", "Cf", "Co", "Cs") for c in clean), repr(text)
