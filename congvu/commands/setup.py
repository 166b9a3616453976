"""``congvu setup``: show (and with ``--apply`` make) every change that wires congvu into Postfix and Dovecot."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from congvu.commands.common import EXIT_OK, EXIT_REFUSED, UsageError
from congvu.output import Output

DESCRIPTION = """\
Show every step that installs congvu on this Debian mail host (Postfix and Dovecot from
apt): the congvu and vmail users, the directories, /etc/congvu/congvu.toml, the
checkpassword launcher, the systemd unit, the Postfix map definitions and postconf
changes, the Dovecot snippets and includes.  Nothing changes without --apply.  Rerunning
is safe: congvu's own files are replaced, an operator's file that differs is never
overwritten (the step says so and shows the difference).
"""


def register(sub: Any) -> None:
    p = sub.add_parser("setup", help="wire congvu into this host's Postfix and Dovecot (shows; --apply does)",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--domain", required=True, help="the site's mail domain, e.g. cantho.gov.vn (CT25-2)")
    p.add_argument("--profile", default="cantho-2025", help="regulation profile (default cantho-2025)")
    p.add_argument("--backend", choices=("sqlite", "ldap"), default="sqlite", help="where accounts live")
    p.add_argument("--ldap-url", default="", help="LDAP backend: server URL")
    p.add_argument("--base-dn", default="", help="LDAP backend: the accounts subtree, e.g. ou=people,dc=…")
    p.add_argument("--bind-dn", default="", help="LDAP backend: congvu's service account")
    p.add_argument("--bind-password-file", default="", help="LDAP backend: file with that account's password")
    p.add_argument("--postfix-ldap-password-file", default="",
                   help="LDAP backend: file with the password of Postfix's lookup account (cn=postfix)")
    p.add_argument("--apply", action="store_true", help="make the changes (as root)")
    p.add_argument("--root", default="/", help=argparse.SUPPRESS)  # the integration test installs under a temp dir
    p.add_argument("--postfix-config", help="Postfix config directory (default /etc/postfix)")
    p.add_argument("--dovecot-config", help="Dovecot config directory (default /etc/dovecot)")
    p.add_argument("--submission", default="submission", help=argparse.SUPPRESS)  # the test's loopback port
    p.add_argument("--user", default="congvu", help=argparse.SUPPRESS)
    p.add_argument("--mail-user", default="vmail", help=argparse.SUPPRESS)
    p.set_defaults(func=_setup)


def _setup(args: argparse.Namespace, out: Output) -> int:
    from congvu import setup
    from congvu.rules.profiles import PROFILES

    if args.profile not in PROFILES:
        raise UsageError(f"--profile: unknown profile {args.profile!r} (known: {', '.join(sorted(PROFILES))})")
    if args.backend == "ldap" and not (args.ldap_url and args.base_dn and args.bind_dn and args.bind_password_file
                                       and args.postfix_ldap_password_file):
        raise UsageError("--backend ldap needs --ldap-url, --base-dn, --bind-dn, --bind-password-file and "
                         "--postfix-ldap-password-file")
    root = Path(args.root)
    layout = setup.Layout(root=root, user=args.user, mail_user=args.mail_user, submission=args.submission,
                          postfix_config=Path(args.postfix_config) if args.postfix_config else None,
                          dovecot_config=Path(args.dovecot_config) if args.dovecot_config else None)
    try:
        layout = setup.detect(layout)
        site = setup.Site(args.domain.strip().lower(), args.profile, args.backend, args.ldap_url, args.base_dn,
                          args.bind_dn, args.bind_password_file, args.postfix_ldap_password_file)
        steps = setup.plan(layout, site)
    except setup.SetupError as e:
        out.error(f"congvu setup: {e}")
        return EXIT_REFUSED
    out.line(f"congvu setup for {site.domain} (profile {site.profile}, {site.backend} directory)"
             + ("" if args.apply else ": the plan; nothing is changed without --apply"))
    for n, step in enumerate(steps, 1):
        out.line(f"{n:2}. {step.title}")
        for line in step.detail:
            out.line(f"      {line}")
        if args.apply and step.apply is not None:
            try:
                result = step.apply()
            except (setup.SetupError, OSError) as e:
                out.error(f"congvu setup: step {n} ({step.title}) failed: {e}")
                out.error("Nothing after it was done; fix the cause and rerun (the steps before it are kept).")
                return EXIT_REFUSED
            out.line(f"      → {result}")
    out.line("")
    out.line("Then:" if args.apply else "After --apply:")
    for line in setup.AFTERWARDS:
        out.line(f"  {line}")
    return EXIT_OK
