"""``congvu password check``: judge a password the way the self-service page will (CT25-5.3).

The password is read from standard input, one line, never from the command line,
where every other user could read it in ``ps`` and the shell would keep it in its
history.  Exit 0 accepted, 1 refused, 2 usage (nothing on stdin, not UTF-8 text).
"""

from __future__ import annotations

import argparse
import getpass
import sys
from typing import IO, Any

from congvu.commands.common import EXIT_OK, EXIT_REFUSED, EXIT_USAGE, add_config_args, config_for
from congvu.output import Output
from congvu.rules.config import MAILBOX_TYPES
from congvu.rules.errors import InvalidInput


def register(sub: Any) -> None:
    p = sub.add_parser("password", help="check passwords against the site's policy")
    psub = p.add_subparsers(dest="password_command", required=True)
    check = psub.add_parser(
        "check", help="check a password read from stdin (one line); exit 0 accepted, 1 refused",
        description="Reads ONE line from standard input (the trailing newline is dropped) and "
                    "checks it for the given account.  Never pass a password as an argument.")
    check.add_argument("--user", required=True, metavar="LOCAL", help="mailbox local part, e.g. nvminh")
    check.add_argument("--name", required=True, metavar="FULL_NAME", help='full name, e.g. "Nguyễn Văn Minh"')
    check.add_argument("--agency", default="", metavar="ABBR", help="agency abbreviation, e.g. sonv")
    check.add_argument("--type", dest="mailbox_type", choices=MAILBOX_TYPES, default="personal",
                       help="mailbox type, for the password's lifetime (default personal)")
    add_config_args(check)
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_check)


class _StdinError(InvalidInput):
    """Standard input held no usable line."""


def _read_line(stream: IO[Any] | None, limit: int) -> tuple[str, bool]:
    """(the first line without its newline, True if it was cut at ``limit``).

    A binary-capable stream is read as bytes and decoded strictly as UTF-8, so a
    terminal in another encoding is refused rather than silently changing the password.
    """
    if stream is None:
        raise _StdinError("no standard input")
    if stream.isatty():
        # Interactive: ask without echoing instead of showing the password on screen.
        return getpass.getpass("Mật khẩu / Password: "), False
    buffer = getattr(stream, "buffer", None)
    if buffer is not None:
        raw: bytes = buffer.readline(4 * limit)  # UTF-8 is at most 4 bytes a character
        if not raw:
            raise _StdinError("no password on standard input")
        cut = not raw.endswith(b"\n") and len(raw) >= 4 * limit
        if cut:
            return "", True
        try:
            line = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise _StdinError("standard input is not UTF-8 text") from None
    else:
        line = stream.readline(limit)
        if not line:
            raise _StdinError("no password on standard input")
        if not line.endswith("\n") and len(line) >= limit:
            return "", True
    if line.endswith("\n"):
        line = line[:-1]
        if line.endswith("\r"):
            line = line[:-1]
    return line, False


def _check(args: argparse.Namespace, out: Output) -> int:
    cfg = config_for(args)
    from congvu.rules.passwords import RAW_LENGTH_FACTOR, PasswordPolicy  # zxcvbn + Twisted: load only here

    policy = PasswordPolicy.from_config(cfg)
    try:
        password, cut = _read_line(sys.stdin, RAW_LENGTH_FACTOR * cfg.password.max_length + 2)
    except _StdinError as e:
        out.error(f"congvu password check: {e} (give the password as one line on stdin)")
        return EXIT_USAGE
    result = policy.too_long() if cut else policy.check(
        password, local_part=args.user, full_name=args.name, agency=args.agency)
    del password

    if args.json:
        lifetime = cfg.password.expiry(args.mailbox_type)
        out.json({
            "accepted": result.accepted,
            "score": result.score,
            "reasons": [{"rule": d.rule_id, "citation": d.citation, "vi": d.text_vi, "en": d.text_en,
                         "code": code} for code, d in zip(result.codes, result.reasons, strict=True)],
            "mailbox_type": args.mailbox_type,
            "expires_after_days": lifetime.days if lifetime is not None else None,
            "expiry_rule": cfg.origins[f"password.expiry_{args.mailbox_type}"].rule_id,
        })
    elif result.accepted:
        out.line("accepted")
    else:
        out.line("refused")
        for d in result.reasons:
            out.line(f"- {d.text_vi}")
            out.line(f"  {d.text_en}")
            out.line(f"  ({d.rule_id}: {d.citation})")
    return EXIT_OK if result.accepted else EXIT_REFUSED
