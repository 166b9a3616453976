"""The directory down (slapd stopped): IMAP, POP3 and SMTP AUTH all say "try again later", never a refusal.

authd reads accounts from the test slapd ([directory] backend = "ldap"); Dovecot runs the
shipped checkpassword snippet and Postfix the shipped submission entry, whose SMTP AUTH
goes to authd's own socket.  With slapd stopped, authd cannot decide: the hook exits 111
(IMAP ``NO [UNAVAILABLE]``, POP3 ``-ERR [SYS/TEMP]``) and the SASL server closes its
connection (Postfix ``454 4.7.0``, never ``535``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest

from tests.integration.authhooks.conftest import GOOD, Authd, running_authd, smtp_auth
from tests.integration.servers.dovecot import DovecotServer, shipped
from tests.integration.servers.postfix import PostfixServer
from tests.integration.servers.slapd import SlapdServer
from tests.integration.support import wait_for


@pytest.fixture(scope="module")
def authd(postfix_instance: PostfixServer, slapd_server: SlapdServer) -> Iterator[Authd]:
    """authd on the LDAP directory, answering SMTP AUTH where the shipped smtpd_sasl_path points."""
    slapd_server.start()
    with running_authd(sasl_socket=postfix_instance.sasl_socket,
                       directory=slapd_server.directory_overrides(timeout="2s")) as server:
        yield server


@pytest.fixture(scope="module")
def dovecot(authd: Authd, dovecot_factory: Callable[[str], DovecotServer]) -> DovecotServer:
    return dovecot_factory(shipped("congvu-checkpassword.conf.ext", socket_path=authd.socket))


def test_directory_down_is_a_temporary_failure_everywhere(authd: Authd, postfix: PostfixServer,
                                                          dovecot: DovecotServer, running_slapd: SlapdServer) -> None:
    """slapd stopped: SMTP AUTH 454 4.7.0, IMAP NO [UNAVAILABLE], POP3 -ERR [SYS/TEMP]; back up, all three log in."""
    user = authd.add("ldaptat")
    assert smtp_auth(postfix, user, GOOD)[0] == 235, authd.log_tail()
    assert dovecot.imap_login(user, GOOD)[0] and dovecot.pop3_login(user, GOOD)[0]
    running_slapd.stop()
    code, text = smtp_auth(postfix, user, GOOD)
    assert code == 454 and text.startswith("4.7.0 Temporary authentication failure"), (text, authd.log_tail())
    ok, text = dovecot.imap_login(user, GOOD)
    assert not ok and text.startswith("[UNAVAILABLE]"), text
    ok, text = dovecot.pop3_login(user, GOOD)
    assert not ok and text.startswith("-ERR [SYS/TEMP]"), text
    assert "login unavailable user=ldaptat@cantho.gov.vn service=smtp" in authd.log_tail(20000)
    running_slapd.start()
    wait_for(lambda: smtp_auth(postfix, user, GOOD)[0] == 235, "SMTP AUTH after slapd is back", timeout=20)
    assert dovecot.imap_login(user, GOOD)[0] and dovecot.pop3_login(user, GOOD)[0]
