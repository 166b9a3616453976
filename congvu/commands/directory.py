"""``congvu directory init|export|import``: set up the store and move accounts between backends.

A site starts on the embedded SQLite file and may later move to the city's LDAP
directory (CT15-3.2): export from one config, import with the other.  Every field
travels, password hashes included, so nobody has to be issued a new password; the
export file is therefore created readable by its owner only.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from dataclasses import fields
from typing import Any

from congvu.commands.common import EXIT_OK, EXIT_REFUSED, UsageError, add_config_args, config_for
from congvu.directory.model import Account, AccountStore, DirectoryError
from congvu.output import Output

# The stores and ldap3 load inside the commands, so `congvu config check` stays fast.
FORMATS = ("csv", "ldif")


def register(sub: Any) -> None:
    p = sub.add_parser("directory", help="create or check the account store; import and export accounts")
    dsub = p.add_subparsers(dest="directory_command", required=True)

    init = dsub.add_parser("init", help="create the SQLite schema, or check the LDAP schema and base DN")
    add_config_args(init)
    init.set_defaults(func=_init)

    exp = dsub.add_parser("export", help="write every account (hashes included) to a CSV or LDIF file")
    exp.add_argument("--format", choices=FORMATS, required=True)
    exp.add_argument("file", help='output file ("-" for standard output)')
    add_config_args(exp)
    exp.set_defaults(func=_export)

    imp = dsub.add_parser("import", help="add the accounts of a CSV or LDIF file")
    imp.add_argument("file", help='input file ("-" for standard input)')
    imp.add_argument("--format", choices=FORMATS, help="default: from the file name or its first line")
    imp.add_argument("--replace", action="store_true",
                     help="overwrite accounts that already exist (default: refuse the whole import)")
    add_config_args(imp)
    imp.set_defaults(func=_import)


def _init(args: argparse.Namespace, out: Output) -> int:
    from congvu.directory.accounts import open_store, sqlite_path

    cfg = config_for(args)
    where = sqlite_path(cfg) if cfg.directory.backend == "sqlite" else f"{cfg.directory.url} {cfg.directory.base_dn}"
    store = open_store(cfg)  # DirectoryError: one line from congvu.cli.main
    try:
        # Both backends have it (SqliteAccountStore, LdapAccountStore); the Protocol does not.
        problems: list[str] = store.check_schema()  # type: ignore[attr-defined]
    finally:
        store.close()
    if problems:
        for p in problems:
            out.error(f"refused: {where}: {p}")
        return EXIT_REFUSED
    if cfg.directory.backend == "sqlite":
        from congvu.directory.sqlite_store import SCHEMA_VERSION
        out.line(f"{where}: ready (schema version {SCHEMA_VERSION}, WAL)")
    else:
        out.line(f"{where}: congvu schema and base DN present")
    return EXIT_OK


def _export(args: argparse.Namespace, out: Output) -> int:
    from congvu.directory.accounts import open_store
    from congvu.directory.transfer import TransferError, write

    cfg = config_for(args)
    store = open_store(cfg)
    try:
        accounts = list(store.list())
    finally:
        store.close()
    try:
        if args.file == "-":
            n = write(accounts, args.format, out.out, base_dn=cfg.directory.base_dn)
        else:
            # Hashes inside: owner-only from the first byte, written whole or not at all.
            tmp = f"{args.file}.tmp{os.getpid()}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
                    n = write(accounts, args.format, f, base_dn=cfg.directory.base_dn)
                os.replace(tmp, args.file)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
    except TransferError as e:
        out.error(f"refused: {e}")
        return EXIT_REFUSED
    except OSError as e:
        out.error(f"congvu: cannot write {args.file}: {e.strerror or e}")
        return EXIT_REFUSED
    if args.file != "-":
        out.line(f"exported {n} accounts to {args.file} ({args.format}, readable by the owner only)")
    return EXIT_OK


_REPLACEABLE = tuple(f.name for f in fields(Account) if f.name not in ("local_part", "domain"))


def _import(args: argparse.Namespace, out: Output) -> int:
    from congvu.directory.accounts import open_store
    from congvu.directory.transfer import TransferError, detect_format, read

    cfg = config_for(args)
    try:
        if args.file == "-":
            text = sys.stdin.read()
        else:
            with open(args.file, encoding="utf-8", newline="") as f:  # CR LF inside quoted CSV cells stays
                text = f.read()
    except (OSError, UnicodeDecodeError) as e:
        why = e.strerror if isinstance(e, OSError) else "not UTF-8 text"
        out.error(f"congvu: cannot read {args.file}: {why or e}")
        return EXIT_REFUSED
    fmt = args.format or detect_format(args.file, text)
    try:
        accounts = read(text, fmt)
    except TransferError as e:
        out.error(f"refused: {args.file}: {e}")
        return EXIT_REFUSED
    seen: dict[str, str] = {}
    for a in accounts:
        for name in (a.address, *a.aliases):
            key = name.lower()
            if key in seen:
                raise UsageError(f"{args.file}: {key} appears twice ({seen[key]} and {a.address})")
            seen[key] = a.address
    store = open_store(cfg)
    try:
        return _apply(args, out, store, accounts, fmt)
    finally:
        store.close()


def _apply(args: argparse.Namespace, out: Output, store: AccountStore, accounts: list[Account], fmt: str) -> int:
    """All or nothing: on the first failure, undo what this run added or replaced."""
    existing = {a.address: old for a in accounts if (old := store.get(a.address)) is not None}
    if existing and not args.replace:
        names = sorted(existing)
        out.error(f"refused: {len(names)} accounts already exist ({', '.join(names[:10])}"
                  f"{', …' if len(names) > 10 else ''}); nothing imported; use --replace to overwrite them")
        return EXIT_REFUSED
    added: list[str] = []
    replaced: list[Account] = []
    try:
        for a in accounts:
            if a.address in existing:
                store.update(a.address, **{n: getattr(a, n) for n in _REPLACEABLE})
                replaced.append(existing[a.address])
            else:
                store.add(a)
                added.append(a.address)
    except (DirectoryError, ValueError) as e:
        failed = a.address
        for address in reversed(added):
            with contextlib.suppress(DirectoryError):
                store.delete(address)
        for old in reversed(replaced):
            with contextlib.suppress(DirectoryError, ValueError):
                store.update(old.address, **{n: getattr(old, n) for n in _REPLACEABLE})
        out.error(f"refused: {failed}: {type(e).__name__}: {e}; the import was rolled back, nothing changed")
        return EXIT_REFUSED
    out.line(f"imported {len(accounts)} accounts from {args.file} ({fmt}): "
             f"{len(added)} added, {len(replaced)} replaced")
    return EXIT_OK
