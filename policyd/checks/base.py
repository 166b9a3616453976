"""What every check is: a name, a requirement id, the protocol states it runs in, a failure policy.

A check is pure logic over a request and a :class:`Context`.  ``needs_io`` tells the
server whether ``run`` would touch the directory or the counter store, so requests that
need neither (most RCPT size checks, cached senders) are answered inside the reactor.
``run`` returns a :class:`Result`: a blocking Decision, or None with a note saying why it
let the request pass (``congvu policyd explain`` prints those notes).
"""

from __future__ import annotations

import ipaddress
import threading
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import ClassVar, NamedTuple

from congvu.directory.cache import CachedAccountStore
from congvu.directory.model import Account, CounterStore
from congvu.policyd.protocol import PolicyRequest
from congvu.policyd.settings import PolicydConfig
from congvu.rules.addresses import canonical
from congvu.rules.config import MAILBOX_TYPES
from congvu.rules.decision import Decision
from congvu.rules.limits import message_size_limit

MESSAGE_STATES = frozenset({"MAIL", "RCPT", "DATA", "END-OF-MESSAGE"})


class Result(NamedTuple):
    """A check's answer: a blocking decision, or None and why not.

    A NamedTuple, not a frozen dataclass: one is built for most checks of every request,
    and a frozen dataclass's ``__init__`` costs several times more.
    """

    decision: Decision | None
    note: str


def passed(note: str) -> Result:
    return Result(None, note)


#: "Passed" on the hot path, where nobody reads the note: checks build their explanatory
#: notes only when ``ctx.dry_run`` (``congvu policyd explain``) will print them.
PASSED = Result(None, "passed")


class CountedInstances:
    """Messages (Postfix ``instance``) already counted, so DATA + END-OF-MESSAGE count once.

    Every request about one message comes over one policy connection, hence to this
    process (SMTPD_POLICY_README), so a bounded in-memory set is enough and costs no I/O.
    """

    def __init__(self, size: int = 100_000) -> None:
        self.size = size
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._lock = threading.Lock()  # added to from the thread pool

    def __contains__(self, key: str) -> bool:
        return key in self._seen

    def add(self, key: str) -> None:
        with self._lock:
            self._seen[key] = None
            if len(self._seen) > self.size:
                self._seen.popitem(last=False)


@dataclass
class Context:
    """Everything a check may consult; built once per config and shared by every request."""

    cfg: PolicydConfig
    accounts: CachedAccountStore
    counters: CounterStore | None
    clock: Callable[[], float]
    counted: CountedInstances
    counters_reason: str = ""
    #: ``explain``: look at counters without adding to them.
    dry_run: bool = False

    _logins: dict[str, str] = field(default_factory=dict)
    _addresses: dict[str, str] = field(default_factory=dict)
    #: Derived once per config: the whole-message limit, and whether any per-type limit is set.
    size_limit: int = 0
    size_per_type: bool = False

    def __post_init__(self) -> None:
        p = self.cfg.policyd
        self.size_limit = message_size_limit(self.cfg.mailbox)
        self.size_per_type = any(p.attachment_max_for(k) is not None for k in MAILBOX_TYPES)

    def login(self, req: PolicyRequest) -> str:
        """The authenticated address: ``sasl_username``, qualified with the site domain if bare."""
        raw = req.sasl_username
        user = self._logins.get(raw)
        if user is None:
            user = canonical(raw, self.cfg.domain) or ""
            if len(self._logins) > 50_000:
                self._logins.clear()
            self._logins[raw] = user
        return user

    def address(self, raw: str) -> str:
        """``canonical(raw)`` ("" for the null sender or garbage), remembered: senders repeat request after request."""
        addr = self._addresses.get(raw)
        if addr is None:
            addr = canonical(raw) or ""
            if len(self._addresses) > 50_000:
                self._addresses.clear()
            self._addresses[raw] = addr
        return addr

    def login_account(self, req: PolicyRequest) -> Account | None:
        return self.accounts.get(self.login(req))

    def in_mynetworks(self, address: str) -> bool:
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.cfg.policyd.mynetworks)

    def is_local_domain(self, address: str) -> bool:
        domain = self.address(address).rpartition("@")[2]
        return bool(domain) and (domain == self.cfg.domain or domain in self.cfg.policyd.local_domains)


class Check:
    """Base of every check; subclasses set the class attributes and implement ``run``."""

    name: ClassVar[str]
    rule_id: ClassVar[str]
    states: ClassVar[frozenset[str]]

    @property
    def summary(self) -> str:
        """The one-line docstring, for ``explain`` and ``stats``."""
        return (type(self).__doc__ or "").strip().splitlines()[0]

    def skip_reason(self, req: PolicyRequest, ctx: Context) -> str | None:
        """Why the check does not apply to this request (no I/O), or None if it does.

        The engine has already matched the protocol state against :attr:`states`.
        """
        return None

    def needs_io(self, req: PolicyRequest, ctx: Context) -> bool:
        """True if ``run`` would call the directory or the counter store."""
        return False

    def run(self, req: PolicyRequest, ctx: Context) -> Result:
        raise NotImplementedError
