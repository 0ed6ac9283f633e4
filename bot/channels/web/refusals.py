"""The engine's refusals in the web API's words and status codes (no command hints: the page has buttons)."""
from __future__ import annotations

from bot.engine.policy import Code, Refused

STATUS: dict[Code, int] = {
    Code.NOT_ALLOWED: 403,
    Code.ADMIN_ONLY: 403,
    Code.NOT_OWNER: 404,  # never say whose it is
    Code.NO_SUCH_SESSION: 404,
    Code.UNKNOWN_REGION: 400,
    Code.MINUTES_OUT_OF_RANGE: 400,
    Code.EXTEND_TOO_SHORT: 400,
    Code.REASON_TOO_LONG: 400,
    Code.PROVIDER_NOT_ALLOWED: 403,
    Code.NOT_APPROVER: 403,
    Code.SELF_APPROVAL: 403,
    Code.GROUPS_UNAVAILABLE: 503,  # Microsoft Graph: not the caller's fault, and nothing was allowed on a guess
}


def status_of(r: Refused) -> int:
    return STATUS.get(r.code, 409)


def words(r: Refused) -> str:
    f = r.facts
    match r.code:
        case Code.NOT_ALLOWED:
            return f"You are not allowed to use this VPN service. Ask an admin to add you (your id is {f['user']})."
        case Code.ADMIN_ONLY:
            return "Only admins can do that."
        case Code.NOT_OWNER | Code.NO_SUCH_SESSION:
            return "No such session."
        case Code.NO_SESSION:
            return "You have no VPN session running."
        case Code.ALREADY_ENDED:
            return f"Session {f['session_id']} has already ended."
        case Code.UNKNOWN_REGION:
            return f"region must be one of: {', '.join(f['regions'])}"
        case Code.MINUTES_OUT_OF_RANGE:
            return f"minutes must be a whole number from 1 to {f['max']}"
        case Code.NO_PRIVATE_DELIVERY:
            return "A config cannot be delivered privately here."
        case Code.PRIVATE_CHAT_UNAVAILABLE:
            return str(f["reason"])
        case Code.KEY_IN_USE:
            return "That public key is already in use by another VPN session; create a new tunnel and use its public key."
        case Code.USER_LIMIT:
            if not f.get("session_id"):  # its place is held by a start being written, or one a crash cut short
                return "Your previous start is still being set up. Try again in a few seconds."
            return f"You already have a VPN session running (session {f['session_id']}, {f['state']})."
        case Code.GLOBAL_LIMIT:
            return f"All {f['max']} VPN slots are in use right now. Please try again in a few minutes."
        case Code.NOTHING_TO_EXTEND:
            if f.get("session_id") and f.get("state"):
                return f"Session {f['session_id']} is {f['state']} now; there is nothing to extend."
            return "You have no running VPN session to extend."
        case Code.EXTEND_TOO_SHORT:
            return "Extend by at least 1 minute."
        case Code.AT_MAXIMUM:
            return f"Session {f['session_id']} is already at the maximum of {f['max']} minutes.{_longer(f)}"
        case Code.EXTEND_TOO_LONG:
            return f"Session {f['session_id']} can be extended by at most {f['room']} more minutes (the maximum is {f['max']}).{_longer(f)}"
        case Code.GROUPS_UNAVAILABLE:
            return "Your group memberships cannot be checked with Microsoft right now, so nothing was done. Try again in a few minutes."
        case Code.PROVIDER_NOT_ALLOWED:
            return f"Your access policy does not include this service's {f['provider']} servers."
        case Code.REASON_TOO_LONG:
            return f"reason must be text of at most {f['max']} characters"
        case Code.NOT_APPROVER:
            return "You are not one of the approvers of this request."
        case Code.SELF_APPROVAL:
            return "You cannot decide your own request: another approver has to (stopping it withdraws it)."
        case Code.ALREADY_DECIDED:
            by = f" by {f['decided_by']}" if f.get("decided_by") else ""
            return f"Request {f['session_id']} was already decided{by}: it is {str(f['state']).replace('_', ' ')} now."
        case Code.AMBIGUOUS:
            return "Several requests match: name one by its id."
    return "That cannot be done."


def _longer(f: dict[str, object]) -> str:
    return " Longer needs an approval: start a new session." if f.get("approval") else ""


def body(r: Refused) -> dict[str, object]:
    """The JSON error: the sentence, plus the code and facts for a client that renders its own."""
    facts = {k: (list(v) if isinstance(v, tuple) else v) for k, v in r.facts.items()}
    out: dict[str, object] = {"error": words(r), "code": r.code.value, **facts}
    return out
