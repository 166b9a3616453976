"""``congvu doctor``: one line per check of a live installation, exit 1 on any failure, with the fix."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from congvu.commands.common import EXIT_OK, EXIT_REFUSED, add_config_args, config_for
from congvu.output import Output


def register(sub: Any) -> None:
    p = sub.add_parser("doctor", help="check this installation (sockets as postfix/dovecot, Postfix and Dovecot "
                                      "config, stores, files); exit 1 on any failure")
    add_config_args(p)
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)  # the integration test's install root
    p.add_argument("--postfix-config", help="Postfix config directory (default /etc/postfix)")
    p.add_argument("--dovecot-config", help="Dovecot config directory (default /etc/dovecot)")
    p.add_argument("--user", default="congvu", help=argparse.SUPPRESS)
    p.set_defaults(func=_doctor, keep_root=True)


def _doctor(args: argparse.Namespace, out: Output) -> int:
    from congvu.doctor import Doctor, summary
    from congvu.setup import Layout

    cfg = config_for(args)
    layout = Layout(root=Path(args.root), user=args.user,
                    postfix_config=Path(args.postfix_config) if args.postfix_config else None,
                    dovecot_config=Path(args.dovecot_config) if args.dovecot_config else None)
    findings = Doctor(cfg, layout).run()
    for f in findings:
        out.line(f.line())
    out.line(summary(findings))
    return EXIT_OK if all(f.ok for f in findings) else EXIT_REFUSED
