"""``congvu``: the operator's command line.  Each subcommand lives in its own module.

Exit codes shared by every subcommand: 0 ok, 1 refused or invalid, 2 usage error,
3 the operator must decide by hand, 4 not found.  Heavy imports (Twisted, ldap3,
redis) happen inside the commands that need them, so ``congvu config check`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from directory.model import AccountNotFound, DirectoryError, DirectoryUnavailable, StateUnavailable
from directory.output import Output
from rules.config import Config, ConfigError, load_config, resolve_path

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_MANUAL, EXIT_NOT_FOUND = 0, 1, 2, 3, 4

#: Modules exposing ``register(subparsers)``; each adds its subcommands.
COMMAND_MODULES: tuple[str, ...] = (
    "directory.cmd_config",
    "directory.cmd_password",
    "directory.cmd_address",
    "directory.cmd_account",
    "directory.cmd_directory",
    "authhooks.cmd",
    "policyd.cmd",
    "directory.cmd_serve",
)


class UsageError(Exception):
    """Bad arguments that argparse could not catch; exits 2."""


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="config file (default: $CONGVU_CONFIG, then /etc/congvu/congvu.toml)")
    p.add_argument("--profile", metavar="P",
                   help="profile to use when no config file is found or it names none")


def config_for(args: argparse.Namespace) -> Config:
    """Load the config the command line points at; raises ConfigError."""
    return load_config(resolve_path(getattr(args, "config", None)),
                       profile=getattr(args, "profile", None))


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        raise UsageError(message)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="congvu", description=__doc__.splitlines()[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
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
