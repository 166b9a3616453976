"""congvu.toml → one frozen :class:`Config`, loaded once and passed in explicitly.

The composition root is the only place that knows every section: the regulation's own
(:mod:`congvu.rules.config`), the stores' (:mod:`congvu.directory.settings`), the policy
server's (:mod:`congvu.policyd.settings`), the content milter's
(:mod:`congvu.policyd.milter.settings`) and the auth service's
(:mod:`congvu.authhooks.settings`).  Each layer reads the whole ``Config`` through its own
Protocol (``RulesConfig`` ⊂ ``StoreConfig`` ⊂ ``PolicydConfig`` / ``MilterConfig`` / ``AuthConfig``), so no
layer imports this module.  Reading the file, the environment and ``/etc`` happens here
and nowhere below.  Every error names the file, the key and the reason: a broken config
stops start-up with one sentence, never a traceback.
"""

from __future__ import annotations

import dataclasses
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from congvu.authhooks.settings import AuthhooksSettings
from congvu.directory.settings import DirectorySettings, StateSettings
from congvu.directory.settings import validate as validate_stores
from congvu.policyd.milter.settings import MilterSettings, check_milter_listen
from congvu.policyd.settings import PolicydSettings, check_listen
from congvu.rules.config import (
    ContentSettings,
    Language,
    LifecycleSettings,
    MailboxSettings,
    NamingSettings,
    Origin,
    Parser,
    PasswordSettings,
    build_section,
    choice,
    domain_name,
    resolve,
    text,
    validate_rules,
)
from congvu.rules.errors import ConfigError
from congvu.rules.profiles import DEFAULT_PROFILE, PROFILES, Profile, get_profile

DEFAULT_CONFIG_PATH = Path("/etc/congvu/congvu.toml")
ENV_CONFIG = "CONGVU_CONFIG"

#: ``[section]`` name → the frozen dataclass declaring its keys, in the order ``config show`` lists them.
SECTIONS: dict[str, type[Any]] = {
    "mailbox": MailboxSettings,
    "password": PasswordSettings,
    "lifecycle": LifecycleSettings,
    "naming": NamingSettings,
    "content": ContentSettings,
    "directory": DirectorySettings,
    "state": StateSettings,
    "policyd": PolicydSettings,
    "milter": MilterSettings,
    "authhooks": AuthhooksSettings,
}

#: Top-level keys: raw default, parser, rule id, doc.
TOP_LEVEL: dict[str, tuple[Any, Parser, str, str]] = {
    "profile": (DEFAULT_PROFILE, choice(*PROFILES), "SUITE", "built-in regulation profile"),
    "domain": ("cantho.gov.vn", domain_name, "CT25-2", "mail domain of the site"),
    "organisation": ("", text, "CT25-4.4", "organisation name shown in display names"),
    "city": ("", text, "SUITE", "city or province, refused inside passwords"),
    "language": ("both", choice("vi", "en", "both"), "SUITE", "language of user-facing text"),
    "state_dir": ("/var/lib/congvu", text, "SUITE",
                  "where the embedded databases live (a relative path is relative to this file)"),
}


@dataclass(frozen=True)
class Config:
    """The whole effective configuration.  Build it with :func:`load_config`."""

    path: str
    profile: Profile
    domain: str
    organisation: str
    city: str
    language: Language
    state_dir: Path
    mailbox: MailboxSettings
    password: PasswordSettings
    lifecycle: LifecycleSettings
    naming: NamingSettings
    content: ContentSettings
    directory: DirectorySettings
    state: StateSettings
    policyd: PolicydSettings
    milter: MilterSettings
    authhooks: AuthhooksSettings
    origins: Mapping[str, Origin] = field(compare=False, hash=False, repr=False)

    def state_file(self, configured: str, default_name: str) -> Path:
        """A path from the config, or ``state_dir/default_name`` when left empty."""
        return Path(configured) if configured else self.state_dir / default_name

    @property
    def change_url(self) -> str:
        return self.password.change_url.replace("{domain}", self.domain)


def resolve_path(explicit: str | None) -> Path | None:
    """``--config`` wins, then ``$CONGVU_CONFIG``, then /etc/congvu/congvu.toml if present."""
    if explicit:
        return Path(explicit)
    if env := os.environ.get(ENV_CONFIG):
        return Path(env)
    if DEFAULT_CONFIG_PATH.exists():
        return DEFAULT_CONFIG_PATH
    return None


def load_config(path: str | Path | None = None, *, profile: str | None = None) -> Config:
    """Read ``path`` (None = built-in defaults only) into a :class:`Config`.

    ``profile`` selects the profile when no file is given or the file names none.
    Raises :class:`ConfigError` and nothing else.
    """
    fname = str(path) if path is not None else "<defaults>"
    data: dict[str, Any] = {}
    if path is not None:
        try:
            raw = Path(path).read_bytes()
        except OSError as e:
            raise ConfigError(fname, "", f"cannot read: {e.strerror or e}") from None
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise ConfigError(fname, "", "not UTF-8 text") from None
        except tomllib.TOMLDecodeError as e:
            raise ConfigError(fname, "", f"not valid TOML: {e}") from None
    try:
        return _build(fname, data, profile)
    except ConfigError:
        raise
    except Exception as e:  # a parser bug must still come out as one sentence
        raise ConfigError(fname, "", f"cannot load: {e}") from None


def config_from_mapping(data: Mapping[str, Any], *, profile: str | None = None,
                        name: str = "<mapping>") -> Config:
    """Build a Config from an already-parsed TOML mapping (tests, ``explain``)."""
    return _build(name, dict(data), profile)


def _resolve_path(value: str, base: Path) -> str:
    """A relative path, or the path of a relative ``unix:`` endpoint, made absolute against ``base``."""
    if value.startswith("unix:"):
        parts = re.split(r"(?<!\\):", value[5:])
        path = parts[0].replace("\\:", ":")
        prefix = ""
        if path.startswith("path="):
            prefix, path = "path=", path[5:]
        if not path or os.path.isabs(path):
            return value
        return ":".join(["unix", prefix + str(base / path).replace(":", "\\:"), *parts[1:]])
    if not value or value.startswith(("tcp:", "tcp6:", "ssl:")) or os.path.isabs(value):
        return value
    return str(base / value)


def _resolved(section: Any, base: Path | None) -> Any:
    """``section`` with its path settings resolved against the config file's directory (``base``).

    A config file names files relative to itself, never to the working directory of
    whoever runs ``congvu``: two operators in two directories open the same database.
    """
    if base is None:
        return section
    changes: dict[str, Any] = {}
    for f in dataclasses.fields(section):
        if not f.metadata.get("path"):
            continue
        value = getattr(section, f.name)
        changes[f.name] = (tuple(_resolve_path(v, base) for v in value) if isinstance(value, tuple)
                           else _resolve_path(value, base))
    return dataclasses.replace(section, **changes)


def _build(fname: str, data: dict[str, Any], profile_arg: str | None) -> Config:
    origins: dict[str, Origin] = {}
    allowed = set(TOP_LEVEL) | set(SECTIONS)
    for key, value in data.items():
        if key not in allowed:
            raise ConfigError(fname, key, f"unknown key (known: {', '.join(sorted(allowed))})")
        if key in SECTIONS and not isinstance(value, dict):
            raise ConfigError(fname, key, "expected a [section] table")

    prof_name = data.get("profile", profile_arg or DEFAULT_PROFILE)
    if not isinstance(prof_name, str) or prof_name not in PROFILES:
        raise ConfigError(fname, "profile",
                          f"unknown profile {prof_name!r} (known: {', '.join(sorted(PROFILES))})")
    prof = get_profile(prof_name)

    top: dict[str, Any] = {}
    for key, (raw_default, parse, rid, doc) in TOP_LEVEL.items():
        if key == "profile":
            raw_default = prof_name  # --profile (or the default) is what the file's absence means
        top[key] = resolve(fname, key, parse, raw_default, rid, prof.get("", key),
                           (key in data, data.get(key)), doc, origins)

    base = Path(fname).absolute().parent if fname not in ("<defaults>", "<mapping>") else None
    sections = {sname: _resolved(build_section(fname, sname, cls, data.get(sname, {}), prof, origins), base)
                for sname, cls in SECTIONS.items()}
    state_dir = Path(top["state_dir"])
    cfg = Config(path=fname, profile=prof, domain=top["domain"],
                 organisation=top["organisation"], city=top["city"] or "",
                 language=top["language"], state_dir=base / state_dir if base else state_dir,
                 origins=MappingProxyType(origins), **sections)
    validate_rules(fname, cfg)
    check_listen(cfg)
    check_milter_listen(cfg)
    validate_stores(fname, cfg)
    return cfg
