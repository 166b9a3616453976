"""``congvu authd``: run the auth service in the foreground, or write the launcher Dovecot execs.

* ``congvu authd [--config FILE]`` runs the auth service (checkpassword socket, Postfix's
  SMTP AUTH socket, auth policy server, password page) until SIGTERM/SIGINT.
* ``congvu authd hook-script FILE`` writes the fast checkpassword launcher (see
  :mod:`congvu.authhooks.launcher`) that ``conf/dovecot/congvu-checkpassword.conf.ext`` points at.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from congvu.commands.common import EXIT_OK, EXIT_REFUSED, add_config_args, config_for
from congvu.output import Output
from congvu.rules.errors import ConfigError

DESCRIPTION = """\
Without an action: run the auth service in the foreground (the unix socket congvu-checkpassword
asks, Postfix's SMTP AUTH on [authhooks] sasl_listen, the Dovecot auth policy server on
[authhooks] policy_listen, and the password page on [authhooks] web_listen) until SIGTERM or
SIGINT; `congvu serve` runs it too.

hook-script FILE: write the launcher Dovecot's checkpassword passdb should exec.
Dovecot 2.3 forks it for every login; it starts this interpreter with -S, which skips the
venv's site processing (~25 ms per login) and loads only the standard library and the hook.
Then point Dovecot at it:  passdb { driver = checkpassword
                                    args = FILE --socket <[authhooks] socket> }
"""


def register(sub: Any) -> None:
    p = sub.add_parser("authd", help="run the Dovecot auth service, or write its checkpassword launcher",
                       usage="congvu authd [-h] [--config FILE] [--profile P] [hook-script FILE]",
                       description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_config_args(p)
    p.set_defaults(func=_authd)
    actions = p.add_subparsers(dest="authd_action", metavar="ACTION", title="actions (none: run the service)")
    h = actions.add_parser(
        "hook-script", help="write the fast checkpassword launcher Dovecot execs (e.g. "
                            "/usr/local/libexec/congvu/checkpassword)",
        description="Write FILE (mode 0755): '#!<this python> -S', the congvu package on sys.path, then "
                    "congvu.authhooks.checkpassword.main.  A launcher written before is replaced; any other "
                    "existing file is refused.  Regenerate it after moving or reinstalling congvu.")
    h.add_argument("file", metavar="FILE", help="where to write the launcher")
    # SUPPRESS: an absent --config here must not hide one given before the action.
    h.add_argument("--config", metavar="FILE", default=argparse.SUPPRESS,
                   help="config whose [authhooks] socket the printed Dovecot line names")
    h.set_defaults(func=_hook_script)


def _authd(args: argparse.Namespace, out: Output) -> int:
    from congvu.serve import build_services, run  # the same runner as `congvu serve`

    return run(args, out, lambda cfg, reactor, listen: build_services(cfg, reactor, listen, ["authd", "web"]))


def _user_exists(name: str) -> bool:
    import pwd
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def _hook_script(args: argparse.Namespace, out: Output) -> int:
    from congvu.authhooks import launcher

    path = Path(os.path.abspath(args.file))
    try:
        launcher.write(path)
        launcher.self_check(path)
    except launcher.LauncherError as e:
        out.error(f"congvu: {e}")
        return EXIT_REFUSED
    try:
        cfg = config_for(args)
        sock = os.path.abspath(cfg.state_file(cfg.authhooks.socket, "authd.sock"))
    except ConfigError:
        sock = "<[authhooks] socket>"
    out.line(f"wrote {path} (runs {launcher.package_parent()}/congvu/authhooks with python -S)")
    if os.geteuid() == 0 and _user_exists("dovecot"):  # Dovecot's auth process forks it as dovecot
        from congvu.setup import SetupError, runs_as
        try:
            runs_as("dovecot", [str(path)], expect_exit=111, expect_err="no reply program given",
                    what=f"the launcher {path}")
        except SetupError as e:  # a warning: a site may run Dovecot's auth as another user
            out.error(f"congvu: warning: {e}")
    out.line("Dovecot (conf/dovecot/congvu-checkpassword.conf.ext), passdb and userdb:")
    out.line(f"  args = {path} --socket {sock}")
    return EXIT_OK
