"""What every subcommand shares: exit codes, the usage error, the ``--config``/``--profile`` arguments."""

from __future__ import annotations

import argparse
import getpass
import os

from congvu.config import Config, load_config, resolve_path
from congvu.rules.errors import CongvuError

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_MANUAL, EXIT_NOT_FOUND = 0, 1, 2, 3, 4


class UsageError(CongvuError):
    """Bad arguments that argparse could not catch; exits 2."""


def add_config_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", metavar="FILE",
                   help="config file (default: $CONGVU_CONFIG, then /etc/congvu/congvu.toml)")
    p.add_argument("--profile", metavar="P",
                   help="profile to use when no config file is found or it names none")


def operator() -> str:
    """Who runs the command: the login behind sudo if any, else the user (the audit log's "who")."""
    return os.environ.get("SUDO_USER") or getpass.getuser()


def config_for(args: argparse.Namespace) -> Config:
    """Load the config the command line points at; raises ConfigError."""
    return load_config(resolve_path(getattr(args, "config", None)),
                       profile=getattr(args, "profile", None))
