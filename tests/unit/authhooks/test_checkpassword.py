"""The hook as Dovecot runs it: a subprocess with fd 3 (credentials) and fd 4 (reply) set up.

Every behaviour is checked through both ways of installing it: pip's console script
``congvu-checkpassword`` and the launcher ``congvu authd hook-script FILE`` writes (what
the shipped Dovecot snippet recommends).
"""

from __future__ import annotations

import io
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from congvu.authhooks import wire
from congvu.cli import main as congvu
from congvu.output import Output

REPO = Path(__file__).resolve().parents[3]
CONSOLE_SCRIPT = Path(sys.executable).parent / "congvu-checkpassword"
REPLY = "/usr/lib/dovecot/checkpassword-reply"
#: What the launcher may load besides the standard library.
HOOK_MODULES = {"congvu", "congvu.authhooks", "congvu.authhooks.wire", "congvu.authhooks.checkpassword",
                "congvu.rules", "congvu.rules.errors"}


@pytest.fixture(scope="module")
def launcher() -> Iterator[Path]:
    """A launcher written by `congvu authd hook-script FILE` (the real command, in-process)."""
    d = Path(tempfile.mkdtemp(prefix="cvlaunch-"))
    path = d / "checkpassword"
    out, err = io.StringIO(), io.StringIO()
    assert congvu(["authd", "hook-script", str(path)], Output(out, err)) == 0, err.getvalue()
    yield path
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(params=["console-script", "launcher"])
def hook(request: pytest.FixtureRequest) -> Path:
    """The hook as pip installs it, then as `congvu authd hook-script` writes it."""
    if request.param == "launcher":
        path: Path = request.getfixturevalue("launcher")
        return path
    return CONSOLE_SCRIPT


class FakeAuthd:
    """A unix socket answering every request with a fixed byte string (and recording requests)."""

    def __init__(self, path: Path, answer: bytes) -> None:
        self.path, self.answer = path, answer
        self.requests: list[wire.AuthRequest] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(str(path))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                dec = wire.FrameDecoder()
                frames: list[bytes] = []
                while not frames:
                    data = conn.recv(4096)
                    if not data:
                        break
                    frames = dec.feed(data)
                if frames:
                    self.requests.append(wire.AuthRequest.decode(frames[0]))
                conn.sendall(self.answer)

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def sockdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="cvhook-", dir="/tmp"))  # short path: unix sockets max 108 bytes
    yield d
    for p in d.iterdir():
        p.unlink()
    d.rmdir()


def run_hook(hook: Path, fd3: bytes, sock: Path, env: dict[str, str] | None = None,
             argv_extra: list[str] | None = None) -> tuple[int, str, str]:
    """Run the hook with ``fd3`` on fd 3 and a pipe on fd 4; (exit code, stderr, what the reply wrote on fd 4)."""
    r3, w3 = os.pipe()
    r4, w4 = os.pipe()
    os.write(w3, fd3)
    os.close(w3)

    def onto_3_and_4() -> None:  # in the child only: the parent's 3 and 4 belong to pytest
        os.dup2(r3, 3)
        os.dup2(w4, 4)

    try:
        args = [str(hook), *(argv_extra if argv_extra is not None else ["--socket", str(sock)]), REPLY]
        proc = subprocess.run(args, pass_fds=(3, 4, r3, w4), preexec_fn=onto_3_and_4, capture_output=True,
                              timeout=30, env={"PATH": "/usr/bin:/bin", "SERVICE": "imap",
                                               "TCPREMOTEIP": "192.0.2.7", "PROTO": "TCP",
                                               "ORIG_UID": str(os.getuid()), **(env or {})})
    finally:
        os.close(r3)
        os.close(w4)
    reply = b""
    while chunk := os.read(r4, 65536):
        reply += chunk
    os.close(r4)
    return proc.returncode, proc.stderr.decode(), reply.decode()


OK_REPLY = wire.AuthReply(wire.OK, (("USER", "nvminh@cantho.gov.vn"), ("HOME", "/var/vmail/cantho.gov.vn/nvminh"),
                                   ("userdb_uid", "vmail"), ("userdb_gid", "vmail"),
                                   ("userdb_quota_rule", "*:bytes=5368709120"),
                                   ("userdb_quota_max_mail_size", "27731968"))).encode()


def test_success_execs_the_reply_with_user_home_and_extra_fields(hook: Path, sockdir: Path) -> None:
    """An ok answer exports USER, HOME and the userdb fields and execs checkpassword-reply (exit 0)."""
    srv = FakeAuthd(sockdir / "s", OK_REPLY)
    code, err, reply = run_hook(hook, b"nvminh\0Secret-1\0\0", sockdir / "s")
    srv.close()
    assert code == 0, err
    assert err == ""
    fields = reply.rstrip("\0").split("\t")
    assert "user=nvminh@cantho.gov.vn" in fields and "userdb_home=/var/vmail/cantho.gov.vn/nvminh" in fields
    assert "userdb_quota_rule=*:bytes=5368709120" in fields and "userdb_uid=vmail" in fields
    req = srv.requests[0]
    assert (req.op, req.username, req.password, req.service, req.remote_ip) == (
        "auth", "nvminh", "Secret-1", "imap", "192.0.2.7")


def test_lookup_mode_sets_authorized_2_and_unknown_exits_3(hook: Path, sockdir: Path) -> None:
    """AUTHORIZED=1: ok → the reply exits 2 (lookup done); unknown user → exit 3."""
    srv = FakeAuthd(sockdir / "s", OK_REPLY)
    code, err, _ = run_hook(hook, b"nvminh\0\0", sockdir / "s", env={"AUTHORIZED": "1"})
    srv.close()
    assert code == 2, err
    assert srv.requests[0].op == "lookup" and srv.requests[0].password == ""
    srv = FakeAuthd(sockdir / "u", wire.AuthReply(wire.UNKNOWN).encode())
    assert run_hook(hook, b"nobody\0\0", sockdir / "u", env={"AUTHORIZED": "1"})[0] == 3
    srv.close()


@pytest.mark.parametrize(("status", "code"), [(wire.FAIL, 1), (wire.UNKNOWN, 1), (wire.TEMPFAIL, 111)])
def test_refusals_map_to_exit_codes(hook: Path, sockdir: Path, status: str, code: int) -> None:
    """fail and unknown exit 1 (AUTHENTICATIONFAILED), tempfail exits 111 (UNAVAILABLE)."""
    srv = FakeAuthd(sockdir / "s", wire.AuthReply(status, message="directory down").encode())
    got, err, reply = run_hook(hook, b"nvminh\0x\0\0", sockdir / "s")
    srv.close()
    assert got == code and reply == ""
    assert "Traceback" not in err


def test_refusal_execs_the_reply_with_noauthenticate_reason_and_code(hook: Path, sockdir: Path) -> None:
    """refuse: the reply runs (exit 0) with noauthenticate, reason and code only: no user=, no home, no quota."""
    reason = "https://mail.cantho.gov.vn/doimatkhau - Mật khẩu được cấp mới phải được đổi (CT25-5.2: Điều 5)"
    srv = FakeAuthd(sockdir / "s", wire.AuthReply(wire.REFUSE, (
        ("reason", reason), ("code", "pass_expired"), ("USER", "x@cantho.gov.vn"),
        ("userdb_quota_rule", "*:bytes=1"))).encode())
    code, err, reply = run_hook(hook, b"nvminh\0Secret-1\0\0", sockdir / "s", env={"USER": "root", "HOME": "/root"})
    srv.close()
    assert code == 0, err
    fields = reply.rstrip("\0").rstrip("\t").split("\t")
    assert fields[:3] == ["noauthenticate=y", f"reason={reason}", "code=pass_expired"], fields
    assert not any(f.startswith(("user=", "userdb_home=", "userdb_quota_rule=")) for f in fields), fields


def test_refusal_in_lookup_mode_is_an_unknown_user(hook: Path, sockdir: Path) -> None:
    """A lookup (AUTHORIZED=1) answered with refuse exits 3 and never runs the reply."""
    srv = FakeAuthd(sockdir / "s", wire.AuthReply(wire.REFUSE, (("reason", "x"),)).encode())
    code, _, reply = run_hook(hook, b"nvminh\0\0", sockdir / "s", env={"AUTHORIZED": "1"})
    srv.close()
    assert code == 3 and reply == ""


@pytest.mark.parametrize("fd3", [
    b"",                                   # empty
    b"nvminh\0Secret",                     # truncated: no NUL after the password
    b"nvminh Secret",                      # no NUL at all
    b"a" * 300 + b"\0" + b"b" * 300 + b"\0",  # over 512 bytes
    b"nvminh\0\xff\xfe\0",                 # not UTF-8
    b"nv\nminh\0Secret-1\0",               # newline in the name
    b"nv\tminh\0Secret-1\0",               # tab in the name
])
def test_bad_fd3_input_exits_1_without_asking_or_traceback(hook: Path, sockdir: Path, fd3: bytes) -> None:
    """Malformed fd 3 is refused (exit 1) before the service is asked; never a traceback, never the password."""
    srv = FakeAuthd(sockdir / "s", OK_REPLY)
    code, err, reply = run_hook(hook, fd3, sockdir / "s")
    srv.close()
    assert code == 1 and reply == "" and srv.requests == []
    assert "Traceback" not in err and "Secret" not in err


@pytest.mark.parametrize("name", ["*", "a)(uid=*", "a\\5c", "nv*minh@cantho.gov.vn"])
def test_ldap_special_names_are_passed_to_the_service_which_decides(hook: Path, sockdir: Path, name: str) -> None:
    """Names with *, )( and \\ reach the service verbatim (it answers unknown); the hook does not crash."""
    srv = FakeAuthd(sockdir / "s", wire.AuthReply(wire.UNKNOWN).encode())
    code, err, _ = run_hook(hook, name.encode() + b"\0pw\0\0", sockdir / "s")
    srv.close()
    assert code == 1 and srv.requests[0].username == name and "Traceback" not in err


def test_socket_missing_is_a_temporary_failure(hook: Path, sockdir: Path) -> None:
    """No auth service: exit 111 with one line on stderr."""
    code, err, reply = run_hook(hook, b"nvminh\0Secret-1\0\0", sockdir / "missing")
    assert code == 111 and reply == ""
    assert err.count("\n") == 1 and "unavailable" in err and "Secret" not in err


@pytest.mark.parametrize("garbage", [
    b"HTTP/1.0 200 OK\r\n\r\n",                          # a huge length prefix
    b"\0\0\0\x05hello",                                   # fields without '='
    wire.encode_fields([("v", "1"), ("status", "maybe")]),  # unknown status
    wire.encode_fields([("v", "1"), ("status", "ok")]),     # ok without USER
    b"\0\0",                                              # closed mid-header
])
def test_socket_answering_garbage_is_a_temporary_failure(hook: Path, sockdir: Path, garbage: bytes) -> None:
    """Whatever garbage the socket answers, the hook exits 111 and never execs the reply."""
    srv = FakeAuthd(sockdir / "s", garbage)
    code, err, reply = run_hook(hook, b"nvminh\0Secret-1\0\0", sockdir / "s")
    srv.close()
    assert code == 111 and reply == ""
    assert "Traceback" not in err


def test_socket_from_environment_variable(hook: Path, sockdir: Path) -> None:
    """Without --socket the hook uses $CONGVU_AUTH_SOCKET."""
    srv = FakeAuthd(sockdir / "s", OK_REPLY)
    code, err, _ = run_hook(hook, b"nvminh\0Secret-1\0\0", sockdir / "s",
                            env={"CONGVU_AUTH_SOCKET": str(sockdir / "s")}, argv_extra=[])
    srv.close()
    assert code == 0, err


def test_socket_from_the_config_file(hook: Path, sockdir: Path) -> None:
    """Without --socket or the variable, [authhooks] socket of --config is used."""
    srv = FakeAuthd(sockdir / "s", OK_REPLY)
    conf = sockdir / "c.toml"
    conf.write_text(f'[authhooks]\nsocket = "{sockdir / "s"}"\n')
    code, err, _ = run_hook(hook, b"nvminh\0Secret-1\0\0", sockdir / "s", argv_extra=["--config", str(conf)])
    srv.close()
    assert code == 0, err


def test_hook_imports_only_the_standard_library() -> None:
    """The hook's module graph holds no twisted, ldap3, redis, passlib, zxcvbn or rules.* module."""
    probe = ("import sys; import authhooks.checkpassword; "
             "bad = [m for m in sys.modules if m.split('.')[0] in "
             "('twisted', 'ldap3', 'redis', 'passlib', 'zxcvbn', 'rules', 'directory', 'argon2', 'bcrypt', "
             "'tomllib', 'socket', 'json', 'dataclasses', 'typing')]; print(','.join(bad))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True, cwd=REPO)
    assert out.stdout.strip() == ""


def _outside_stdlib(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] not in sys.stdlib_module_names
                  and m not in HOOK_MODULES and m != "__main__")


def test_launcher_loads_only_the_standard_library_and_the_hook(launcher: Path) -> None:
    """Under its own #! flags the launcher leaves nothing in sys.modules but stdlib, wire and checkpassword; no site."""
    shebang = launcher.read_text(encoding="utf-8").splitlines()[0].removeprefix("#!").split()
    assert shebang == [sys.executable, "-S"]
    probe = ("import sys; p = sys.argv[1]; "
             "exec(compile(open(p).read(), p, 'exec'), {'__name__': 'probe'}); "
             "print('\\n'.join(sys.modules))")
    out = subprocess.run([*shebang, "-c", probe, str(launcher)], capture_output=True, text=True, check=True,
                         cwd="/")
    modules = out.stdout.split()
    assert "congvu.authhooks.checkpassword" in modules and "congvu.authhooks.wire" in modules
    assert "site" not in modules
    assert _outside_stdlib(modules) == []


def test_launcher_run_by_dovecot_imports_no_site_and_nothing_else(launcher: Path, sockdir: Path) -> None:
    """A whole successful login through the launcher (Python's import log on) imports no site and no third party."""
    srv = FakeAuthd(sockdir / "s", OK_REPLY)
    code, err, reply = run_hook(launcher, b"nvminh\0Secret-1\0\0", sockdir / "s",
                                env={"PYTHONPROFILEIMPORTTIME": "1"})
    srv.close()
    assert code == 0 and "user=nvminh@cantho.gov.vn" in reply, err
    imported = [line.rsplit("|", 1)[1].strip() for line in err.splitlines() if line.startswith("import time:")]
    assert "congvu.authhooks.checkpassword" in imported and "_socket" in imported
    assert "site" not in imported
    assert _outside_stdlib([m for m in imported if m != "imported package"]) == []
