"""The ``[authhooks]`` section: the auth service, its socket, lockouts and the password page.

:class:`AuthConfig` is what the auth service reads of the whole configuration.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any, Protocol

from congvu.directory.settings import StoreConfig
from congvu.rules.config import duration, endpoint, list_of, network, setting, text, whole


def unix_endpoint(v: Any) -> str:
    """A ``unix:`` endpoint only: whoever reaches the SASL socket can test passwords, so never over TCP."""
    s = endpoint(v)
    if not s.startswith("unix:"):
        raise ValueError(f"expected a unix socket endpoint such as \"unix:/var/spool/postfix/congvu/auth:mode=660\", "
                         f"got {s!r} (a TCP listener would let anyone who can connect try passwords)")
    return s


@dataclass(frozen=True)
class AuthhooksSettings:
    """Dovecot authentication and the self-service password page (CT25-5.2, CT25-3.2)."""

    socket: str = setting("/run/congvu/authd.sock", text, path=True,
        doc="auth service unix socket, which congvu-checkpassword connects to (mode 0660, group socket_group)")
    socket_group: str = setting("dovecot", text,
        doc="group owning the socket (mode 0660): the group of the user Dovecot runs checkpassword as "
            "(its auth worker, dovecot); \"\" = the service's own group")
    web_listen: tuple[str, ...] = setting(["tcp:8080:interface=127.0.0.1"], list_of(endpoint), path=True,
        doc="password page and API (behind the TLS proxy of conf/nginx)")
    web_rate_user: int = setting(10, whole(0, 10000), "CT25-3.2",
        doc="password change attempts per account within web_rate_window (page and API); 0 = no limit")
    web_rate_ip: int = setting(30, whole(0, 100000), "CT25-3.2",
        doc="password change attempts per client IP within web_rate_window (lockout_exempt networks are not "
            "limited per IP); 0 = no limit")
    web_rate_window: timedelta = setting("15m", duration, "CT25-3.2",
        doc="window of web_rate_user and web_rate_ip")
    web_strength_rate: int = setting(120, whole(0, 100000), "SUITE",
        doc="strength checks (the page's feedback while typing) per client IP per minute; 0 = no limit")
    web_origins: tuple[str, ...] = setting([], list_of(text), "SUITE",
        doc="public origins of the page (e.g. https://mail.cantho.gov.vn) accepted in Origin besides the Host")
    web_trusted_proxies: tuple[Any, ...] = setting(["127.0.0.1/32", "::1/128"], list_of(network), "SUITE",
        doc="reverse proxies whose X-Forwarded-For names the client (rate limits and lockout use it)")
    policy_listen: tuple[str, ...] = setting([], list_of(endpoint), "CT25-3.2", path=True,
        doc="Dovecot auth policy server (auth_policy_server_url) endpoints; empty = off")
    sasl_listen: tuple[str, ...] = setting(["unix:/var/spool/postfix/congvu/auth:mode=660"], list_of(unix_endpoint),
        "CT25-5.2", path=True,
        doc="SMTP AUTH for Postfix (smtpd_sasl_type = dovecot, smtpd_sasl_path = congvu/auth): unix sockets "
            "inside Postfix's queue directory, where chrooted smtpd reaches them; empty = off")
    sasl_group: str = setting("postfix", text,
        doc="group given the sasl_listen sockets (mode 0660): postfix, whose smtpd connects; \"\" = the "
            "service's own group")
    lockout_failures: int = setting(10, whole(0, 1000), "CT25-3.2",
        doc="distinct wrong passwords for one account within lockout_window that lock it; 0 = no lockout")
    lockout_ip_failures: int = setting(30, whole(0, 100000), "CT25-3.2",
        doc="distinct wrong logins from one client IP within lockout_window that lock the IP; 0 = off")
    lockout_window: timedelta = setting("15m", duration, "CT25-3.2", doc="window in which failures count")
    lockout_duration: timedelta = setting("15m", duration, "CT25-3.2", doc="how long a lockout lasts")
    lockout_exempt: tuple[Any, ...] = setting([], list_of(network), "CT25-3.2",
        doc="client networks never locked per IP (the webmail host, which logs everyone in)")
    uid: str = setting("vmail", text, doc="userdb_uid of every mailbox (name or number)")
    gid: str = setting("vmail", text, doc="userdb_gid of every mailbox (name or number)")
    home: str = setting("/var/vmail/{domain}/{local_part}", text,
        doc="home directory template: {domain}, {local_part}, {address}")
    hook_timeout: timedelta = setting("10s", duration, doc="how long congvu-checkpassword waits for authd")
    threads: int = setting(4, whole(1, 64), doc="authd worker threads (password hashing, directory)")
    secret_file: str = setting("", text, doc="key for wrong-password fingerprints; empty = STATE_DIR/authd.key",
                               path=True)
    reminder_every: timedelta = setting("1d", duration, "CT25-6.4b",
        doc="record the expiry reminder at most this often per account")


class AuthConfig(StoreConfig, Protocol):
    """What the auth service reads: the stores' view plus ``[authhooks]``."""

    @property
    def authhooks(self) -> AuthhooksSettings: ...
