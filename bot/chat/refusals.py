"""The engine's refusals in chat words: what happened, and which /vpn command to try instead."""
from __future__ import annotations

from bot.engine.policy import Code, Refused


def say(r: Refused, *, private: bool = True) -> str:
    f = r.facts
    match r.code:
        case Code.NOT_ALLOWED:
            # An id is said only in a private chat, never in a group or channel.
            where = f" (your id is {f['user']})" if private else " (message me privately to learn your id)"
            return f"Sorry, you are not allowed to use this VPN bot. If you should be, ask an admin to add you{where}."
        case Code.ADMIN_ONLY:
            return f"Sorry, only admins can use /vpn {f['command']}."
        case Code.NOT_OWNER:
            return "Sorry, only admins can stop another person's session."
        case Code.NO_SUCH_SESSION:
            return f"No live session matches '{str(f['target'])[:40]}'. /vpn status shows yours."
        case Code.NO_SESSION:
            return "You have no VPN session running."
        case Code.ALREADY_ENDED:
            return f"Session {f['session_id']} has already ended. /vpn status shows yours."
        case Code.UNKNOWN_REGION:
            return f"Region '{f['region']}' is not available. Choose one of: {', '.join(f['regions'])}."
        case Code.MINUTES_OUT_OF_RANGE:
            return f"A session can last 1 to {f['max']} minutes; {f['minutes']} is out of range."
        case Code.NO_PRIVATE_DELIVERY:
            return (
                "I cannot send you a config privately from here, and I never post one in a group. "
                "An admin has been told what to set up. Meanwhile: /vpn start key=YOUR-PUBLIC-KEY works (the public key from your WireGuard app)."
            )
        case Code.PRIVATE_CHAT_UNAVAILABLE:
            return str(f["reason"])
        case Code.KEY_IN_USE:
            return "That public key is already in use by another VPN session. Create a new tunnel in your WireGuard app and use its public key."
        case Code.USER_LIMIT:
            if not f.get("session_id"):  # its place is held by a start being written, or one a crash cut short
                return "Your previous start is still being set up. Try again in a few seconds."
            detail = f" (session {f['session_id']}, {f['state']})"
            return (
                f"You already have a VPN session running{detail}. "
                "Use /vpn status to see it, /vpn extend to keep it longer, or /vpn stop to end it."
            )
        case Code.GLOBAL_LIMIT:
            return f"All {f['max']} VPN slots are in use right now. Please try again in a few minutes."
        case Code.NOTHING_TO_EXTEND:
            if f.get("session_id") and f.get("state"):
                return f"Session {f['session_id']} is {f['state']} now; there is nothing to extend."
            return "You have no running VPN session to extend. Use /vpn start for a new one."
        case Code.EXTEND_TOO_SHORT:
            return "Extend by at least 1 minute."
        case Code.AT_MAXIMUM:
            return f"Session {f['session_id']} is already at the maximum of {f['max']} minutes.{_longer(f)}"
        case Code.EXTEND_TOO_LONG:
            return f"Session {f['session_id']} can be extended by at most {f['room']} more minutes (the maximum is {f['max']}).{_longer(f)}"
        case Code.GROUPS_UNAVAILABLE:
            return ("Sorry, I cannot check your group memberships with Microsoft right now, so I did nothing. "
                    "Please try again in a few minutes; if it keeps happening, tell an admin.")
        case Code.PROVIDER_NOT_ALLOWED:
            return f"Sorry, your access policy does not include this VPN's {f['provider']} servers (only: {', '.join(f['providers'])})."
        case Code.REASON_TOO_LONG:
            return f"Please keep the reason under {f['max']} characters."
        case Code.NOT_APPROVER:
            return f"Sorry, you are not one of the approvers of request {f['session_id']}."
        case Code.SELF_APPROVAL:
            return f"You cannot decide your own request ({f['session_id']}): another approver has to. /vpn stop withdraws it."
        case Code.ALREADY_DECIDED:
            by = f" by {f['decided_by']}" if f.get("decided_by") else ""
            return f"Request {f['session_id']} was already decided{by}: it is {str(f['state']).replace('_', ' ')} now."
        case Code.AMBIGUOUS:
            return f"'{str(f['target'])[:40]}' has several requests waiting ({', '.join(f['session_ids'])}): name one by its id."
    return "Sorry, I cannot do that."


def _longer(f: dict[str, object]) -> str:
    return " Longer needs an approval: ask with /vpn start." if f.get("approval") else ""
