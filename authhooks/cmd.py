"""``congvu authd [--config FILE]``: run the auth service alone in the foreground until SIGTERM/SIGINT."""

from __future__ import annotations

import argparse
from typing import Any

from directory.cli import add_config_args
from directory.output import Output


def register(sub: Any) -> None:
    p = sub.add_parser("authd", help="run the Dovecot auth service (checkpassword socket, auth policy server)")
    add_config_args(p)
    p.set_defaults(func=_authd)


def _authd(args: argparse.Namespace, out: Output) -> int:
    from directory.cmd_serve import run_services  # the same runner as `congvu serve`, one service

    return run_services(["authd"], args, out)
