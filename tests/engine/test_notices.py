"""The engine's own sentences: a chat register that names the next command, a page register that does not."""
from datetime import datetime, timezone

import pytest

from bot.engine import notices
from bot.messages import Notice

T = datetime(2026, 11, 25, 23, 12, tzinfo=timezone.utc)
ALL = {
    "ready": notices.ready("Sent.", "9a", T),
    "server_up": notices.server_up("9a", T),
    "ends_soon": notices.ends_soon("9a", 300, 30),
    "ended": notices.ended("9a", "stopped by you"),
    "failed": notices.failed("boom", notices.NOTHING_LEFT),
    "restarted": notices.restarted("9a"),
    "own_key": notices.own_key_settings("9a", "[Peer]\nPublicKey = abc="),
    "still_booting": notices.still_booting("Sent."),
    "went_wrong": notices.went_wrong("9a"),
}


@pytest.mark.parametrize("name", sorted(ALL))
def test_the_page_register_names_no_command(name):
    notice: Notice = ALL[name]
    assert "/vpn" not in notice.text_for(False)
    assert notice.text_for(False).strip() and notice.text_for(True).strip()


@pytest.mark.parametrize(
    "notice, chat, page",
    [
        (notices.ready("Sent.", "9a", T), "Sent. Session 9a ends at 23:12 UTC; /vpn stop ends it sooner.", "Sent. Session 9a ends at 23:12 UTC."),
        (notices.ended("9a", "stopped by you"), "Your VPN session 9a has ended (stopped by you). Use /vpn start for a new one.", "Your VPN session 9a has ended (stopped by you)."),
        (notices.failed("boom", notices.NOTHING_LEFT), "Sorry, I could not set up your VPN: boom. Nothing was left running. You can try /vpn start again.",
         "Sorry, I could not set up your VPN: boom. Nothing was left running."),
        (notices.ends_soon("1", 300, 30), "Your VPN session 1 ends in 5 min. Type /vpn extend 30 to keep it longer.", "Your VPN session 1 ends in 5 min."),
    ],
)
def test_each_register_reads_whole(notice, chat, page):
    assert notice.text_for(True) == chat
    assert notice.text_for(False) == page
