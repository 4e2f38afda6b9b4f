"""Whether a mail's `From:` may command an incident: the header itself is free text, so a command is
applied only when something vouches for it (README "Intake: email and phone").

- an SMTP AUTH session, when INTAKE_SMTP_AUTH_TRUSTS_FROM says its users are the responders' own
  servers or clients (never a relay that forwards outside mail: that would vouch for anyone);
- or the `Authentication-Results` header (RFC 8601) that a trusted relay (its authserv-id in
  INTAKE_SMTP_TRUSTED_AUTHSERV_ID) added: `dmarc=pass` for the From domain, or `dkim=pass` by the
  From domain (or a parent of it). Only the topmost header with a trusted id counts: a relay adds
  its own above whatever the sender wrote.
"""

from __future__ import annotations

from collections.abc import Iterable

import authres

__all__ = ["unverified_reason"]


def _aligned(signer: str, domain: str) -> bool:
    """DKIM `d=` aligned with the From domain: the same, or a parent domain of it."""
    signer = signer.strip().lower().lstrip("@").rpartition("@")[2]
    return bool(signer) and (domain == signer or domain.endswith("." + signer))


def _passes(header: authres.AuthenticationResultsHeader, domain: str) -> bool:
    for result in header.results:
        if str(result.result).lower() != "pass":
            continue
        props = {(p.type.lower(), p.name.lower()): str(p.value) for p in result.properties}
        method = str(result.method).lower()
        if method == "dmarc" and props.get(("header", "from"), domain).lower() == domain:
            return True
        signer = props.get(("header", "d")) or props.get(("header", "i"))
        if method == "dkim" and signer and _aligned(signer, domain):
            return True
    return False


def unverified_reason(
    sender: str,
    results: Iterable[str],
    *,
    authenticated: bool,
    auth_trusts_from: bool,
    trusted_ids: Iterable[str],
) -> str | None:
    """None when `sender` (the From address) is vouched for, else why not (one line)."""
    if authenticated and auth_trusts_from:
        return None
    trusted = {i.strip().lower() for i in trusted_ids if i.strip()}
    if not trusted:
        return "the sender's address is not verified (no trusted relay configured)"
    domain = sender.rpartition("@")[2].lower()
    for value in results:
        authserv_id = (value.split(";", 1)[0].split() or [""])[0].lower()
        if authserv_id not in trusted:
            continue
        try:  # the topmost header of a trusted relay decides, whatever it says
            header = authres.AuthenticationResultsHeader.parse_value(value)
        except authres.AuthResError:
            return f"the Authentication-Results of {authserv_id} cannot be read"
        if _passes(header, domain):
            return None
        return f"{authserv_id} did not verify {domain or 'the sender'} (no dmarc=pass, no aligned dkim=pass)"
    return "the sender's address is not verified (no Authentication-Results from a trusted relay)"
