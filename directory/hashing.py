"""Password hashes: argon2id for new hashes; bcrypt and sha512-crypt still verify, then rehash.

Every verify goes through passlib's ``verify_and_update``, so a hash made with a
deprecated scheme or older argon2 parameters comes back as a fresh argon2 hash the
caller stores (the migration happens at the user's next login, never in bulk).

Cost: ``[directory] hash_cost = "normal"`` (64 MiB, 3 passes, 4 lanes, RFC 9106's second
recommendation, ~0.15 s on one core) or ``"test"`` (1 MiB, 1 pass, 1 lane, ~2 ms) so tests
and benchmarks are not dominated by hashing.  A hash made at one cost reports
``needs_update`` under the other, so a site that ran on "test" by mistake is upgraded
at each user's next login.

Passwords are NFC-normalised first: "Đ" typed as one code point or as D + combining
stroke is the same password to the user, so it must be the same to the hash.
Hashes are RFC 2307-tolerant: a ``{CRYPT}`` or ``{ARGON2}`` prefix, as slapd stores
``userPassword``, is stripped before verifying.
"""

from __future__ import annotations

import re
import secrets
from typing import Literal

from passlib.context import CryptContext
from twisted.logger import Logger

from congvu.rules.passwords import normalize_password  # the same NFC the policy check judges

log = Logger()

HashCost = Literal["normal", "test"]

SCHEMES = ("argon2", "bcrypt", "sha512_crypt")

_COSTS: dict[str, dict[str, int]] = {
    "normal": {"argon2__memory_cost": 65536, "argon2__rounds": 3, "argon2__parallelism": 4},
    "test": {"argon2__memory_cost": 1024, "argon2__rounds": 1, "argon2__parallelism": 1},
}

_RFC2307 = re.compile(r"^\{(CRYPT|ARGON2)\}", re.IGNORECASE)


def strip_scheme_prefix(stored: str) -> str:
    """``{CRYPT}$6$…`` → ``$6$…``: LDAP's userPassword prefixes mean nothing to passlib."""
    return _RFC2307.sub("", stored, count=1)


class Hasher:
    """One CryptContext with the site's cost; thread-safe (passlib contexts are)."""

    def __init__(self, cost: HashCost | str = "normal") -> None:
        if cost not in _COSTS:
            raise ValueError(f"hash cost must be one of {', '.join(_COSTS)}, got {cost!r}")
        self.cost = cost
        self._ctx = CryptContext(schemes=list(SCHEMES), default="argon2", deprecated="auto",
                                 **_COSTS[cost])
        self._dummy: str | None = None

    def hash(self, password: str) -> str:
        """A new argon2id hash.  Raises ValueError for text that is not valid Unicode."""
        try:
            return str(self._ctx.hash(normalize_password(password)))
        except UnicodeEncodeError:
            raise ValueError("the password is not valid Unicode text") from None

    def verify(self, password: str, stored: str) -> tuple[bool, str | None]:
        """(matches, new hash to store or None).  Never raises on a bad hash or bad input."""
        if not stored:
            self.dummy_verify()
            return False, None
        try:
            ok, new = self._ctx.verify_and_update(normalize_password(password),
                                                  strip_scheme_prefix(stored))
        except UnicodeEncodeError:
            self.dummy_verify()
            return False, None
        except (ValueError, TypeError) as e:
            # An unknown or corrupt hash: the account cannot log in until reset; say so once.
            log.warn("password hash not usable ({kind}); reset the password", kind=type(e).__name__)
            self.dummy_verify()
            return False, None
        return bool(ok), (str(new) if ok and new else None)

    def needs_update(self, stored: str) -> bool:
        """True when the hash uses a deprecated scheme or other parameters (a rehash is due)."""
        if not stored:
            return False
        try:
            return bool(self._ctx.needs_update(strip_scheme_prefix(stored)))
        except (ValueError, TypeError):
            return True

    def identify(self, stored: str) -> str | None:
        """The scheme name (argon2, bcrypt, sha512_crypt) or None if not recognised."""
        try:
            found = self._ctx.identify(strip_scheme_prefix(stored))
        except (ValueError, TypeError):
            return None
        return str(found) if found else None

    def dummy_verify(self) -> None:
        """Spend what a real verify costs, so an unknown user answers as slowly as a known one."""
        self._ctx.verify("not the password", self.dummy_hash)

    def matches_any(self, password: str, hashes: tuple[str, ...] | list[str]) -> bool:
        """True if ``password`` matches one of ``hashes`` (the "not the last N passwords" rule)."""
        return any(self.verify(password, h)[0] for h in hashes if h)

    @property
    def dummy_hash(self) -> str:
        """The hash dummy_verify checks against (tests compare its parameters)."""
        if self._dummy is None:
            self._dummy = str(self._ctx.hash(secrets.token_urlsafe(24)))
        return self._dummy


def rotate_history(old_hash: str, history: tuple[str, ...], keep: int) -> tuple[str, ...]:
    """Put the hash being replaced in front of the history and keep the newest ``keep``."""
    if keep <= 0:
        return ()
    items = ((old_hash,) if old_hash else ()) + history
    return items[:keep]
