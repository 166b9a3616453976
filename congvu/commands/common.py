"""What every subcommand shares: exit codes, the usage error, the ``--config``/``--profile`` arguments."""

from __future__ import annotations

import argparse
import getpass
import grp
import os
import pwd
from pathlib import Path

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
    """Load the config the command line points at (ConfigError), then act as the owner of its state.

    An operator runs ``congvu account …`` as root; the service runs as ``congvu``.  A file
    root created in the state directory (a database's -wal, the audit log) would lock the
    service out, so as root a command becomes the owner of ``state_dir`` first, unless it
    needs root itself (``doctor``, which tries the sockets as postfix and dovecot).
    """
    cfg = load_config(resolve_path(getattr(args, "config", None)), profile=getattr(args, "profile", None))
    if not getattr(args, "keep_root", False):
        become_state_owner(cfg.state_dir)
    return cfg


def become_state_owner(state_dir: Path) -> None:
    """As root, switch to the user owning ``state_dir`` (with its groups); otherwise do nothing."""
    if os.geteuid() != 0:
        return
    try:
        st = state_dir.stat()
    except OSError:
        return  # not made yet: setup will make it, and root may create it here
    if st.st_uid == 0:
        return
    try:
        pw = pwd.getpwuid(st.st_uid)
    except KeyError:
        return
    groups = [g.gr_gid for g in grp.getgrall() if pw.pw_name in g.gr_mem]
    os.setgroups([pw.pw_gid, *groups])
    os.setgid(pw.pw_gid)
    os.setuid(pw.pw_uid)
