"""``congvu-checkpassword``: Dovecot 2.3's checkpassword program, a stdlib-only thin client.

Dovecot forks this on every login and never caches the answer, so it imports nothing
but the standard library and ``authhooks.wire`` (importing ldap3, passlib and redis
would cost ~0.45 s per login).  It reads ``user NUL password NUL`` from fd 3, asks
``congvu authd`` over its unix socket, and then either execs the reply program (the
last argv element, keeping fd 4 open) with USER, HOME and the userdb fields exported,
or exits: 1 = wrong password or unknown user, 3 = unknown user in lookup mode
(``AUTHORIZED=1``), 111 = internal error (socket missing, service down or answering
garbage).  A refusal with a reason (must change, expired, disabled, locked out) also
execs the reply, exporting ``noauthenticate`` (set here, whatever the service sends, so
a refusal can never become a login), ``reason`` and ``code``: an exit code cannot carry
a reason, and the passdb snippet turns that answer into a failure the client reads.
Every decision is the service's; this file only carries it.

Usage, in Dovecot's ``passdb { args = … }`` (argv is split on single spaces)::

    congvu-checkpassword [--socket PATH] [--timeout SECONDS] [--config FILE]

Deploy it through the launcher ``congvu authd hook-script FILE`` writes
(:mod:`authhooks.launcher`): the same ``main`` under ``python -S``, ~25 ms faster per
login than pip's console script, which skips nothing.

The socket is ``--socket``, else ``$CONGVU_AUTH_SOCKET``, else ``[authhooks] socket`` of
``--config``/``$CONGVU_CONFIG``/``/etc/congvu/congvu.toml`` (default STATE_DIR/authd.sock).
It never prints a traceback and never prints the password.
"""

from __future__ import annotations

import os
import sys

from congvu.authhooks import wire
from congvu.rules.errors import CongvuError, ProtocolError

EXIT_FAIL = 1
EXIT_NOUSER = 3
EXIT_TEMPFAIL = 111

DEFAULT_TIMEOUT = 10.0
DEFAULT_CONFIG = "/etc/congvu/congvu.toml"
SOCKET_ENV = "CONGVU_AUTH_SOCKET"


class HookError(CongvuError):
    """An internal failure: exit 111 with this one line on stderr."""


def _say(text: str) -> None:
    """One line to stderr (Dovecot logs it); never a traceback, never a secret."""
    try:
        os.write(2, f"congvu-checkpassword: {text}\n".encode("utf-8", "replace"))
    except OSError:
        return


def parse_argv(argv: list[str]) -> tuple[dict[str, str], str]:
    """(options, reply program).  The reply program is the last element (Dovecot appends it)."""
    if len(argv) < 2:
        raise HookError("no reply program given (run by Dovecot's checkpassword passdb)")
    opts: dict[str, str] = {}
    args = argv[1:-1]
    i = 0
    while i < len(args):
        a = args[i]
        name, eq, value = a.partition("=")
        if name in ("--socket", "--timeout", "--config"):
            if not eq:
                i += 1
                if i >= len(args):
                    raise HookError(f"{name} needs a value")
                value = args[i]
            opts[name[2:]] = value
        elif a:  # Dovecot splits args on single spaces, so empty items can appear
            raise HookError(f"unknown option {a!r}")
        i += 1
    return opts, argv[-1]


def _from_config(path: str) -> dict[str, str]:
    """``[authhooks] socket`` and ``hook_timeout`` from the TOML file (only when no --socket is given)."""
    import tomllib  # ~14 ms: paid only by sites that do not pass --socket

    try:
        with open(path, "rb") as fh:
            data = tomllib.load(fh)
    except (OSError, ValueError) as e:
        raise HookError(f"cannot read config {path}: {e}") from None
    section = data.get("authhooks", {})
    out: dict[str, str] = {}
    sock = section.get("socket", "") if isinstance(section, dict) else ""
    if not sock:
        state_dir = data.get("state_dir", "./var")
        sock = os.path.join(str(state_dir), "authd.sock")
    out["socket"] = str(sock)
    timeout = section.get("hook_timeout") if isinstance(section, dict) else None
    if isinstance(timeout, int | float) or (isinstance(timeout, str) and timeout.rstrip("s").isdigit()):
        out["timeout"] = str(timeout).rstrip("s")
    return out


def resolve(opts: dict[str, str], environ: dict[str, str] | os._Environ[str]) -> tuple[str, float]:
    """(socket path, timeout): --socket, then $CONGVU_AUTH_SOCKET, then the config file."""
    sock = opts.get("socket") or environ.get(SOCKET_ENV, "")
    timeout_s = opts.get("timeout", "")
    if not sock:
        conf = opts.get("config") or environ.get("CONGVU_CONFIG", "") or DEFAULT_CONFIG
        if not os.path.exists(conf) and "config" not in opts and not environ.get("CONGVU_CONFIG"):
            sock = os.path.join("var", "authd.sock")
        else:
            found = _from_config(conf)
            sock = found["socket"]
            timeout_s = timeout_s or found.get("timeout", "")
    try:
        timeout = float(timeout_s) if timeout_s else DEFAULT_TIMEOUT
    except ValueError:
        raise HookError(f"bad --timeout {timeout_s!r}") from None
    if not 0 < timeout <= 300:
        raise HookError("--timeout must be between 0 and 300 seconds")
    return sock, timeout


def read_fd3(limit: int = wire.MAX_FD3) -> bytes:
    """Everything Dovecot wrote on fd 3, up to limit+1 bytes (one more means too long)."""
    chunks: list[bytes] = []
    size = 0
    while size <= limit:
        try:
            chunk = os.read(3, limit + 1 - size)
        except InterruptedError:
            continue
        except OSError as e:
            raise HookError(f"cannot read fd 3: {e.strerror}") from None
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def ask(path: str, request: wire.AuthRequest, timeout: float) -> wire.AuthReply:
    """One request, one reply over the unix socket; any failure is a HookError (exit 111)."""
    import _socket  # the C module: `import socket` costs ~5 ms more per login

    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(timeout)
        try:
            s.connect(path)
            s.sendall(request.encode())
            decoder = wire.FrameDecoder()
            while True:
                chunk = s.recv(wire.MAX_FRAME + wire.HEADER)
                if not chunk:
                    raise HookError("auth service closed the connection without an answer")
                frames = decoder.feed(chunk)
                if frames:
                    return wire.AuthReply.decode(frames[0])
        except TimeoutError:
            raise HookError(f"auth service at {path} did not answer within {timeout:g}s") from None
        except OSError as e:
            raise HookError(f"auth service at {path} unavailable: {e.strerror or e}") from None
        except ProtocolError as e:
            raise HookError(f"auth service answered garbage: {e}") from None
    finally:
        s.close()


def run(argv: list[str], environ: os._Environ[str]) -> int:
    """The hook's whole life; returns an exit code, or does not return (exec)."""
    opts, reply_program = parse_argv(argv)
    lookup = environ.get("AUTHORIZED", "") == "1"
    if lookup and environ.get("CREDENTIALS_LOOKUP") == "1":
        # Hashes cannot be handed out for CRAM-MD5 & co: enable only PLAIN and LOGIN.
        _say("credentials lookups are not supported (auth_mechanisms = plain login)")
        return EXIT_FAIL
    data = read_fd3()
    try:
        user, password = wire.parse_fd3(data)
    except ProtocolError as e:
        _say(f"refused: {e}")
        return EXIT_NOUSER if lookup else EXIT_FAIL
    sock, timeout = resolve(opts, environ)
    request = wire.AuthRequest(
        wire.OP_LOOKUP if lookup else wire.OP_AUTH, user, "" if lookup else password,
        service=environ.get("SERVICE", ""),
        remote_ip=environ.get("TCPREMOTEIP", "") or environ.get("REMOTE_IP", ""),
        local_ip=environ.get("TCPLOCALIP", "") or environ.get("LOCAL_IP", ""))
    del password
    reply = ask(sock, request, timeout)
    if reply.status == wire.TEMPFAIL:
        _say(f"temporary failure: {reply.message or 'auth service unavailable'}")
        return EXIT_TEMPFAIL
    if reply.status in (wire.FAIL, wire.UNKNOWN) or (lookup and reply.status == wire.REFUSE):
        return EXIT_NOUSER if lookup else EXIT_FAIL
    # OK or REFUSE: export the fields and hand over to checkpassword-reply, fd 4 still open.
    exports = reply.exports
    if reply.status == wire.REFUSE:
        exports = (("noauthenticate", "y"), *((n, v) for n, v in exports if n in ("reason", "code")))
        for name in ("USER", "HOME"):  # inherited ones would reach the reply as user= and userdb_home=
            os.environ.pop(name, None)
    elif not any(n == "USER" for n, _ in exports):
        raise HookError("auth service answered ok without USER")
    extra = []
    for name, value in exports:
        if "\0" in value or "\n" in value or (name == "USER" and "\t" in value):
            raise HookError("auth service exported an unusable value")
        os.environ[name] = value
        if name not in ("USER", "HOME"):
            extra.append(name)
    if extra:
        os.environ["EXTRA"] = " ".join(extra)
    if lookup:
        os.environ["AUTHORIZED"] = "2"
    try:
        os.execv(reply_program, [reply_program])
    except OSError as e:
        raise HookError(f"cannot run {reply_program}: {e.strerror}") from None
    return EXIT_TEMPFAIL  # not reached


def main(argv: list[str] | None = None) -> int:
    """Console entry point: every failure becomes an exit code and one stderr line."""
    try:
        return run(list(sys.argv if argv is None else argv), os.environ)
    except HookError as e:
        _say(str(e))
        return EXIT_TEMPFAIL
    except BaseException as e:  # a traceback would reach Dovecot's log
        if isinstance(e, SystemExit) and isinstance(e.code, int):
            return e.code
        _say(f"internal error ({type(e).__name__})")
        return EXIT_TEMPFAIL


if __name__ == "__main__":
    sys.exit(main())
