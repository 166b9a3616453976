"""authd's SMTP AUTH server: Postfix's bytes in, the auth service's decisions out, a silent close on outages."""

from __future__ import annotations

from base64 import b64encode
from collections.abc import Callable
from typing import Any

import pytest
from twisted.internet.testing import StringTransport
from twisted.python.failure import Failure

from congvu.authhooks import sasl
from congvu.authhooks.sasl_server import SaslFactory, SaslProtocol, decide
from congvu.authhooks.service import AuthService
from congvu.rules.lifecycle import AccountState
from tests.unit.authhooks.conftest import PW, Clock, add

HELLO = b"VERSION\t1\t0\nCPID\t4242\n"


class InlinePool:
    """A thread pool that runs the call at once (the decision is the same; the test needs no threads)."""

    def callInThreadWithCallback(self, on_result: Callable[[bool, Any], None], f: Callable[..., Any],
                                 *args: Any) -> None:
        try:
            result = f(*args)
        except Exception:
            on_result(False, Failure())
            return
        on_result(True, result)


class InlineReactor:
    def callFromThread(self, f: Callable[..., Any], *args: Any) -> None:
        f(*args)


def connect(svc: AuthService) -> tuple[SaslProtocol, StringTransport]:
    proto = SaslFactory(svc, InlineReactor(), InlinePool()).buildProtocol(None)  # type: ignore[arg-type]
    tr = StringTransport()
    proto.makeConnection(tr)
    assert tr.value().endswith(b"DONE\n")
    tr.clear()
    return proto, tr


def plain(rid: int, user: str, password: str = PW) -> bytes:
    token = b64encode(f"\0{user}\0{password}".encode()).decode()
    return f"AUTH\t{rid}\tPLAIN\tservice=smtp\tnologin\tlip=127.0.0.1\trip=192.0.2.5\tresp={token}\n".encode()


def test_good_login_is_ok_with_the_canonical_address(env: tuple[AuthService, Clock]) -> None:
    """The bare local part logs in; OK names the canonical address (policyd compares senders with it)."""
    svc, _ = env
    add(svc, "tot")
    proto, tr = connect(svc)
    proto.dataReceived(HELLO + plain(1, "TOT"))
    assert tr.value() == b"OK\t1\tuser=tot@cantho.gov.vn\n"


def test_refusals_carry_their_reason_and_wrong_passwords_a_generic_one(env: tuple[AuthService, Clock]) -> None:
    """Must change: pass_expired + URL (CT25-5.2); locked: user_disabled; wrong password or name: the same words."""
    svc, _ = env
    add(svc, "moi", must_change=True)
    add(svc, "khoa", state=AccountState.LOCKED)
    add(svc, "sai")
    proto, tr = connect(svc)
    proto.dataReceived(HELLO + plain(1, "moi") + plain(2, "khoa") + plain(3, "sai", "wrong") + plain(4, "khongco"))
    lines = tr.value().decode().split("\n")
    assert lines[0].startswith(
        f"FAIL\t1\tuser=moi@cantho.gov.vn\tcode=pass_expired\treason={svc.cfg.change_url} - Mật khẩu")
    assert "(CT25-5.2: " in lines[0]
    assert lines[1].startswith("FAIL\t2\tuser=khoa@cantho.gov.vn\tcode=user_disabled\treason=Hộp thư đang bị tạm")
    assert "CT25-6.4a" in lines[1]
    assert lines[2].replace("sai@", "khongco@") == lines[3].replace("\t4\t", "\t3\t"), "only Postfix's log tells"
    assert "Wrong user name or password" in lines[2]


def test_lockout_reason_is_sent_whatever_the_password(env: tuple[AuthService, Clock]) -> None:
    """After 3 distinct wrong passwords the right one reads "locked until 15:10 on 02/03/2026" (CT25-3.2)."""
    svc, _ = env
    add(svc, "doan")
    proto, tr = connect(svc)
    proto.dataReceived(HELLO + b"".join(plain(i, "doan", f"wrong-{i}") for i in range(1, 4)))
    tr.clear()
    proto.dataReceived(plain(9, "doan"))
    line = tr.value().decode()
    assert line.startswith("FAIL\t9\tuser=doan@cantho.gov.vn\treason=Đăng nhập sai quá nhiều lần")
    assert "locked until 15:10 on 02/03/2026" in line


def test_login_mechanism_through_the_protocol(env: tuple[AuthService, Clock]) -> None:
    """LOGIN's prompts go out as CONT lines, and the password completes the login."""
    svc, _ = env
    add(svc, "dang")
    proto, tr = connect(svc)
    proto.dataReceived(HELLO + b"AUTH\t1\tLOGIN\tservice=smtp\n")
    assert tr.value() == b"CONT\t1\tVXNlcm5hbWU6\n"
    proto.dataReceived(b"CONT\t1\t" + b64encode(b"dang") + b"\n")
    proto.dataReceived(b"CONT\t1\t" + b64encode(PW.encode()) + b"\n")
    assert tr.value().endswith(b"CONT\t1\tUGFzc3dvcmQ6\nOK\t1\tuser=dang@cantho.gov.vn\n")


def test_directory_outage_closes_without_an_answer(env: tuple[AuthService, Clock]) -> None:
    """Directory down: no FAIL, the connection is closed, so Postfix answers 454 4.7.0, never 535."""
    svc, _ = env
    add(svc, "tot")
    svc.accounts.close()
    proto, tr = connect(svc)
    proto.dataReceived(HELLO + plain(1, "tot") + plain(2, "tot"))
    assert tr.value() == b"" and tr.disconnecting


def test_a_bug_closes_without_an_answer(env: tuple[AuthService, Clock], monkeypatch: pytest.MonkeyPatch) -> None:
    """An exception while deciding is logged and closes the connection (454), never a refusal."""
    svc, _ = env

    def boom(*_a: Any, **_k: Any) -> Any:
        raise RuntimeError("bug")

    monkeypatch.setattr(svc, "login", boom)
    proto, tr = connect(svc)
    proto.dataReceived(HELLO + plain(1, "tot"))
    assert tr.value() == b"" and tr.disconnecting


def test_protocol_violation_closes(env: tuple[AuthService, Clock]) -> None:
    """A client that skips the handshake is disconnected without an answer."""
    svc, _ = env
    proto, tr = connect(svc)
    proto.dataReceived(plain(1, "tot"))
    assert tr.value() == b"" and tr.disconnecting


def test_decide_never_lets_a_password_into_the_answer(env: tuple[AuthService, Clock]) -> None:
    """Neither the answer nor the request's repr contains the password."""
    svc, _ = env
    add(svc, "kin")
    request = sasl.Verify(1, "PLAIN", "kin", "Sai-Bí-Mật-77", "smtp")
    answer = decide(svc, request)
    assert answer is not None and b"Sai-B" not in answer.encode() and "Sai-B" not in repr(request)
