"""CSRF defence for the page: double-submit tokens signed with the authd key, and the Origin check.

The cookie ``congvu_csrf`` (SameSite=Strict, HttpOnly) carries a token the page echoes in a
form field or ``X-CSRF-Token``; the token is signed, so a cookie planted by a sibling host
is refused.  An Origin header must be the page's own (its Host) or one of ``web_origins``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
from collections.abc import Sequence
from urllib.parse import urlsplit

COOKIE = "congvu_csrf"
_CSRF_LABEL = b"congvu-web-csrf-v1"


class Csrf:
    """Double-submit tokens signed with a key derived from the authd secret."""

    def __init__(self, secret: bytes) -> None:
        self._key = hmac.new(secret, _CSRF_LABEL, hashlib.sha256).digest()

    def __repr__(self) -> str:
        return "Csrf(<key>)"

    def new(self) -> str:
        nonce = base64.urlsafe_b64encode(secrets.token_bytes(18)).decode("ascii")
        return f"{nonce}.{self._mac(nonce)}"

    def _mac(self, nonce: str) -> str:
        return base64.urlsafe_b64encode(hmac.new(self._key, nonce.encode("ascii"), hashlib.sha256)
                                        .digest()[:18]).decode("ascii")

    def valid(self, token: str) -> bool:
        nonce, _, mac = token.partition(".")
        if not nonce or not mac or len(token) > 100 or not token.isascii():
            return False
        return hmac.compare_digest(mac, self._mac(nonce))

    def check(self, cookie: str, submitted: str) -> bool:
        """The submitted token is the cookie's, and ours (a cookie planted by a sibling host is not)."""
        return bool(cookie) and hmac.compare_digest(cookie.encode(), submitted.encode()) and self.valid(cookie)


def origin_allowed(origin: str, host: str, extra: Sequence[str]) -> bool:
    """An Origin header is the page's own (its host is the Host header) or a configured public origin."""
    origin = origin.strip()
    if not origin or origin == "null":
        return False
    if origin.rstrip("/") in {o.rstrip("/") for o in extra}:
        return True
    parts = urlsplit(origin)
    return parts.scheme in ("http", "https") and bool(host) and parts.netloc.lower() == host.strip().lower()
