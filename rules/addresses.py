"""The one canonical form of a mail address: how every store looks it up and every check compares it.

Postfix hands policyd ``<Nguyen@CanTho.gov.vn.>``, Dovecot hands the hook what the user
typed (``nvminh``), an operator types ``NVMinh``; all of them mean
``nvminh@cantho.gov.vn``.  One function decides that, so a lookup, a cache key, a rate
counter and a comparison of sender and login can never disagree (CT25-3.2).
"""

from __future__ import annotations


def canonical(text: object, default_domain: str = "") -> str | None:
    """``text`` as an address: trimmed, without angle brackets, lower-cased, no trailing dot on the domain.

    A bare local part gets ``default_domain`` when one is given.  None for what no
    account can be named by: not a string, empty, a NUL or other control character, or
    text that cannot be encoded as UTF-8 (a lone surrogate from a broken client).
    """
    if not isinstance(text, str):
        return None
    addr = text.strip()
    if addr.startswith("<") and addr.endswith(">"):
        addr = addr[1:-1].strip()
    if not addr or any(c < " " or c == "\x7f" for c in addr):
        return None
    try:
        addr.encode("utf-8")
    except UnicodeEncodeError:
        return None
    addr = addr.lower()
    local, at, domain = addr.rpartition("@")
    if at:
        domain = domain.rstrip(".")
        return f"{local}@{domain}" if local and domain else None
    if default_domain:
        return f"{addr}@{default_domain.lower().rstrip('.')}"
    return addr
