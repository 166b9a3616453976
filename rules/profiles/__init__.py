"""Built-in profiles: each regulation's numbers as data, every value tagged with its id.

A profile only holds what its regulation says.  Keys it leaves out fall back to the
suite default declared on the config field (cited as ``SUITE``), and ``congvu config
show`` says which of the three a value came from.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from congvu.rules.profiles import cantho2015, cantho2025, thanhhoa2013


@dataclass(frozen=True, slots=True)
class Sourced:
    """A raw profile value (as it would be written in congvu.toml) and its requirement id."""

    raw: Any
    rule_id: str


@dataclass(frozen=True, slots=True)
class Profile:
    name: str
    title: str
    document: str
    #: section name ("" for top level) → key → value
    values: Mapping[str, Mapping[str, Sourced]]

    def get(self, section: str, key: str) -> Sourced | None:
        return self.values.get(section, {}).get(key)


def _build(module: Any) -> Profile:
    values = {
        section: {key: Sourced(raw, rid) for key, (raw, rid) in keys.items()}
        for section, keys in module.VALUES.items()
    }
    return Profile(module.NAME, module.TITLE, module.DOCUMENT, values)


PROFILES: dict[str, Profile] = {
    p.name: p for p in (_build(cantho2025), _build(cantho2015), _build(thanhhoa2013))
}
DEFAULT_PROFILE = "cantho-2025"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[name]
    except KeyError:
        known = ", ".join(sorted(PROFILES))
        raise KeyError(f"unknown profile {name!r} (known: {known})") from None
