"""Who may use the console: proof of the API token kept in an HttpOnly, SameSite=Strict cookie (or a
trusted reverse proxy's user header), and a per-session CSRF token on every POST.

The cookie never holds the token itself: it holds an HMAC of the session (nonce and user) keyed by
the token, so a leaked cookie opens the console for that session but is no bearer token for the
read API, and it is void once the token is rotated."""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from urllib.parse import urlsplit

from starlette.requests import Request
from starlette.responses import Response

from incident_platform.urls import is_loopback

TOKEN_COOKIE = "incidents_console"  # the proof: HMAC(token, session nonce and user)
SESSION_COOKIE = "incidents_console_session"  # "<nonce>.<user>": the CSRF key and who acts
_USER = re.compile(r"[A-Za-z0-9 ._@+-]{1,64}")  # ASCII: it travels in a cookie


@dataclass(frozen=True)
class Access:
    """The console's access rules (from the engine's settings)."""

    token: str | None  # INCIDENTS_API_TOKEN
    open: bool = False  # INCIDENTS_API_OPEN: no token asked
    user_header: str | None = None  # e.g. X-Forwarded-User, set by an authenticating reverse proxy
    # Secure cookies: None = always, but for a loopback host over plain http (a laptop's make run);
    # TLS usually ends at a proxy, so the scheme the engine sees says nothing. False: only over https (plain
    # http on a trusted network only; still Secure when the engine itself serves https).
    cookie_secure: bool | None = None

    @property
    def closed(self) -> bool:
        """No way in: neither a token nor the open flag nor a proxy header is configured."""
        return self.token is None and not self.open and self.user_header is None

    def token_ok(self, offered: str) -> bool:
        """The offered token is the configured one (constant time; digests hide its length)."""
        if self.token is None:
            return False
        expected = hashlib.sha256(self.token.encode()).digest()
        return hmac.compare_digest(hashlib.sha256(offered.encode()).digest(), expected)

    def proof(self, nonce: str, user: str) -> str:
        """What the cookie holds for a session signed in with the token (no token: nothing to prove)."""
        assert self.token is not None
        return hmac.new(self.token.encode(), f"session:{nonce}.{user}".encode(), hashlib.sha256).hexdigest()


@dataclass(frozen=True)
class Session:
    """A signed-in user and the nonce their CSRF tokens derive from."""

    user: str
    nonce: str

    def csrf(self, key: str) -> str:
        """The CSRF token of this session (an HMAC of its nonce, keyed by the token it signed in with)."""
        return hmac.new(key.encode(), f"csrf:{self.nonce}".encode(), hashlib.sha256).hexdigest()


def valid_user(name: str) -> str | None:
    """A user name fit to record (1..64 of letters, digits, space, `._@+-`), stripped; else None."""
    name = name.strip()
    return name if _USER.fullmatch(name) else None


def session_of(request: Request, access: Access) -> Session | None:
    """The request's session, or None (not signed in, or signed in with a token no longer valid)."""
    if access.user_header:
        proxied = valid_user(request.headers.get(access.user_header, ""))
        if proxied is not None:
            nonce = request.cookies.get(SESSION_COOKIE, "").partition(".")[0] or "proxy"
            return Session(proxied, nonce)
    nonce, _, user = request.cookies.get(SESSION_COOKIE, "").partition(".")
    if not nonce or valid_user(user) is None:
        return None
    if access.open and access.token is None:
        return Session(user, nonce)
    proof = request.cookies.get(TOKEN_COOKIE)
    if access.token is None or proof is None:
        return None
    if not hmac.compare_digest(proof.encode(), access.proof(nonce, user).encode()):
        return None  # forged, or signed in with a token since rotated
    return Session(user, nonce)


def csrf_key(request: Request, access: Access) -> str:
    """The key CSRF tokens are signed with: the session's token (or a per-process secret without one)."""
    return request.cookies.get(TOKEN_COOKIE) or access.token or _PROCESS_SECRET


_PROCESS_SECRET = secrets.token_hex(32)


def csrf_ok(request: Request, access: Access, session: Session, offered: str) -> bool:
    """A POST is ours: same origin (Origin or Referer) and the session's CSRF token."""
    if not same_origin(request):
        return False
    return hmac.compare_digest(offered.encode(), session.csrf(csrf_key(request, access)).encode())


def same_origin(request: Request) -> bool:
    """The Origin (else the Referer) names this host; a browser sends one of them on every POST."""
    origin = request.headers.get("origin") or request.headers.get("referer")
    if not origin:
        return False
    parts = urlsplit(origin)
    # host names are case-insensitive (a browser lowercases both; a client need not)
    same_host = parts.netloc.lower() == request.headers.get("host", "").lower()
    return same_host and parts.scheme in ("http", "https")


def cookies_secure(request: Request, access: Access) -> bool:
    """Whether the session cookies get `Secure` (see `Access.cookie_secure`)."""
    if request.url.scheme == "https" or access.cookie_secure:
        return True
    if access.cookie_secure is False:
        return False
    # any other name: served behind a proxy that ends TLS, most likely
    return not is_loopback((request.url.hostname or "").strip("[]"))


def sign_in(response: Response, request: Request, access: Access, user: str) -> None:
    """Set the session cookies (HttpOnly, SameSite=Strict, Secure but on loopback http; path /console)."""
    options = {
        "httponly": True, "samesite": "strict", "secure": cookies_secure(request, access), "path": "/console",
    }  # fmt: skip
    nonce = secrets.token_urlsafe(18)
    if access.token is not None:
        response.set_cookie(TOKEN_COOKIE, access.proof(nonce, user), **options)  # type: ignore[arg-type]
    response.set_cookie(SESSION_COOKIE, f"{nonce}.{user}", **options)  # type: ignore[arg-type]


def sign_out(response: Response) -> None:
    """Drop the session cookies."""
    for name in (TOKEN_COOKIE, SESSION_COOKIE):
        response.delete_cookie(name, path="/console")
