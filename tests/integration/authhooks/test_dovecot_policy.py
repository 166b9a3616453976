"""The auth policy server path (Dovecot 2.4 / LDAP-passdb sites): a passwd-file passdb plus congvu's policy."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest

from tests.integration.authhooks.conftest import GOOD, Authd
from tests.integration.servers.dovecot import DOVECOT_CONF, MAIL_GID, MAIL_UID, DovecotServer

SHIPPED_URL = "http://127.0.0.1:10042/"
USERS = ("polok", "polmoi", "polkhoa")


@pytest.fixture(scope="module")
def dovecot(authd: Authd, dovecot_factory: Callable[[str], DovecotServer]) -> DovecotServer:
    """Dovecot whose own passdb checks passwords, with the shipped policy snippet pointed at authd."""
    users = authd.root / "dovecot-users"
    users.write_text("".join(f"{u}@cantho.gov.vn:{{PLAIN}}{GOOD}:{MAIL_UID}:{MAIL_GID}::{authd.mail}/{u}::\n"
                             for u in USERS), encoding="utf-8")
    users.chmod(0o644)
    snippet = (DOVECOT_CONF / "congvu-policy.conf.ext").read_text(encoding="utf-8")
    assert SHIPPED_URL in snippet
    snippet = snippet.replace(SHIPPED_URL, f"http://127.0.0.1:{authd.policy_port}/")
    return dovecot_factory(f"""\
auth_mechanisms = plain login
passdb {{
  driver = passwd-file
  args = username_format=%u {users}
  override_fields = congvu_authed=yes
}}
userdb {{
  driver = passwd-file
  args = username_format=%u {users}
}}
{snippet}""")


def test_policy_server_refuses_must_change_with_expired_and_lets_others_in(authd: Authd,
                                                                           dovecot: DovecotServer) -> None:
    """After a correct password the policy refuses a must-change user with [EXPIRED] + URL; others log in."""
    authd.add("polok")
    authd.add("polmoi", must_change=True)
    assert dovecot.imap_login("polok@cantho.gov.vn", GOOD) == (True, "OK"), dovecot.log_tail()
    ok, text = dovecot.imap_login("polmoi@cantho.gov.vn", GOOD)
    assert not ok and "[EXPIRED]" in text and authd.cfg.change_url in text, text
    ok, text = dovecot.imap_login("polmoi@cantho.gov.vn", "Sai-1")
    assert not ok and "[AUTHENTICATIONFAILED]" in text


def test_policy_server_locks_out_after_reported_failures(authd: Authd, dovecot: DovecotServer) -> None:
    """10 distinct wrong passwords reported by Dovecot lock the account: the right one is then refused."""
    authd.add("polkhoa")
    for i in range(10):
        assert not dovecot.imap_login("polkhoa@cantho.gov.vn", f"Sai-{i}")[0]
    time.sleep(0.3)  # the report request is sent after Dovecot answers the client
    ok, _text = dovecot.imap_login("polkhoa@cantho.gov.vn", GOOD)
    assert not ok, dovecot.log_tail()
