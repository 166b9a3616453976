"""The one error hierarchy: everything congvu raises on purpose is a :class:`CongvuError`.

Callers catch by what an error means, not by which module raised it:

* :class:`ConfigError`: the operator's configuration cannot be used (one line: file, key, reason);
* :class:`InvalidInput`: a value a person gave is refused (a size, a name, a transition, a file row);
* :class:`Unavailable`: a store or a service did not answer in time.  Always temporary:
  a 4xx to Postfix, ``[UNAVAILABLE]`` or SASL 454 to Dovecot, never a permanent refusal;
* :class:`ProtocolError`: a peer sent bytes its protocol does not allow: close the
  connection or give the protocol's safe answer.

Pure and stdlib-only: the checkpassword hook imports it under ``python -S``.
"""

from __future__ import annotations


class CongvuError(Exception):
    """Root of every error congvu raises on purpose; anything else is a bug."""


class ConfigError(CongvuError):
    """The configuration cannot be used: ``file: key: reason``."""

    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}" if key else f"{file}: {reason}")
        self.file, self.key, self.reason = file, key, reason


class InvalidInput(CongvuError, ValueError):
    """A value given by a person (operator, user, import file) is refused; the message says why."""


class Unavailable(CongvuError):
    """A store or service did not answer in time or refused the connection: temporary by definition."""


class ProtocolError(CongvuError, ValueError):
    """A peer broke its protocol (malformed, oversized or out-of-order input)."""
