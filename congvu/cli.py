"""``congvu``: the operator's command line.  Each subcommand lives in its own module.

Exit codes shared by every subcommand: 0 ok, 1 refused or invalid, 2 usage error,
3 the operator must decide by hand, 4 not found.  Heavy imports (Twisted, ldap3,
redis) happen inside the commands that need them, so ``congvu config check`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from congvu import serve
from congvu.commands import account, address, authd, config, directory, doctor, milter, password, policyd, setup
from congvu.commands.common import EXIT_NOT_FOUND, EXIT_OK, EXIT_REFUSED, EXIT_USAGE, UsageError
from congvu.directory.model import AccountNotFound, DirectoryError, DirectoryUnavailable, StateUnavailable
from congvu.output import Output
from congvu.rules.errors import ConfigError

#: Modules exposing ``register(subparsers)``; each adds its subcommands, in ``--help`` order.
COMMANDS = (config, password, address, account, directory, authd, policyd, milter, serve, setup, doctor)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="congvu", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for command in COMMANDS:
        command.register(sub)
    return parser


def main(argv: Sequence[str] | None = None, out: Output | None = None) -> int:
    out = out or Output()
    try:
        args = build_parser().parse_args(argv)
        code: int = args.func(args, out)
        return code
    except UsageError as e:
        out.error(f"congvu: {e}")
        return EXIT_USAGE
    except ConfigError as e:
        out.error(f"congvu: config error: {e}")
        return EXIT_REFUSED
    except AccountNotFound as e:
        out.error(f"not found: {e}")
        return EXIT_NOT_FOUND
    except (DirectoryUnavailable, StateUnavailable) as e:  # the message names the file or server
        out.error(f"congvu: {'directory' if isinstance(e, DirectoryError) else 'state store'} unavailable: {e}")
        return EXIT_REFUSED
    except DirectoryError as e:
        out.error(f"congvu: directory error: {e}")
        return EXIT_REFUSED
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `congvu config show | head`
        return EXIT_OK
    except OSError as e:  # permission denied, disk full: the operator's to fix, in one line
        where = f"{e.filename}: " if e.filename else ""
        out.error(f"congvu: {where}{e.strerror or e}")
        return EXIT_REFUSED


if __name__ == "__main__":
    sys.exit(main())
