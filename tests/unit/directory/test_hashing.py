"""Password hashing: argon2 by default, legacy schemes verify and rehash, NFC, dummy verify."""

from __future__ import annotations

import time
import unicodedata

import pytest
from passlib.hash import argon2, bcrypt, sha512_crypt

from congvu.directory.hashing import Hasher, rotate_history, strip_scheme_prefix

FAST = Hasher("test")


def test_new_hashes_are_argon2id() -> None:
    """hash() makes an argon2id hash that verifies and needs no update."""
    h = FAST.hash("Cantho@2025x")
    assert h.startswith("$argon2id$")
    assert FAST.verify("Cantho@2025x", h) == (True, None)
    assert not FAST.needs_update(h)


def test_wrong_password_fails_without_rehash() -> None:
    """A wrong password gives (False, None)."""
    h = FAST.hash("Cantho@2025x")
    assert FAST.verify("Cantho@2025y", h) == (False, None)


@pytest.mark.parametrize("legacy", [
    bcrypt.using(rounds=4).hash("Cantho@2025x"),
    sha512_crypt.using(rounds=1000).hash("Cantho@2025x"),
], ids=["bcrypt", "sha512_crypt"])
def test_legacy_schemes_verify_and_come_back_as_argon2(legacy: str) -> None:
    """bcrypt and sha512-crypt verify; the returned new hash is argon2id and verifies too."""
    assert FAST.needs_update(legacy)
    ok, new = FAST.verify("Cantho@2025x", legacy)
    assert ok and new is not None and new.startswith("$argon2id$")
    assert FAST.verify("Cantho@2025x", new) == (True, None)
    assert FAST.verify("wrong", legacy) == (False, None)


def test_rfc2307_prefixes_are_accepted() -> None:
    """{CRYPT} and {ARGON2} prefixes, as slapd keeps userPassword, verify like the bare hash."""
    crypt = sha512_crypt.using(rounds=1000).hash("Cantho@2025x")
    assert FAST.verify("Cantho@2025x", "{CRYPT}" + crypt)[0]
    a2 = FAST.hash("Cantho@2025x")
    assert FAST.verify("Cantho@2025x", "{ARGON2}" + a2) == (True, None)
    assert strip_scheme_prefix("{crypt}$6$x") == "$6$x"
    assert FAST.identify("{CRYPT}" + crypt) == "sha512_crypt"


def test_nfc_and_nfd_spellings_are_one_password() -> None:
    """A Vietnamese password typed decomposed verifies against its composed hash, and back."""
    composed = unicodedata.normalize("NFC", "Đường@Phố2025")
    decomposed = unicodedata.normalize("NFD", composed)
    assert composed != decomposed
    assert FAST.verify(decomposed, FAST.hash(composed))[0]
    assert FAST.verify(composed, FAST.hash(decomposed))[0]


def test_unusable_input_never_raises_on_verify() -> None:
    """Garbage hashes, empty hashes and surrogate passwords give False, not an exception."""
    good = FAST.hash("Cantho@2025x")
    assert FAST.verify("Cantho@2025x", "not-a-hash") == (False, None)
    assert FAST.verify("Cantho@2025x", "") == (False, None)
    assert FAST.verify("\udcff", good) == (False, None)
    with pytest.raises(ValueError):
        FAST.hash("\udcff")
    assert FAST.needs_update("not-a-hash")
    assert FAST.identify("not-a-hash") is None


def test_dummy_verify_costs_a_real_verify() -> None:
    """The dummy hash uses the default scheme and current parameters, so unknown users cost the same."""
    normal = Hasher("normal")
    assert argon2.identify(normal.dummy_hash)
    assert not normal.needs_update(normal.dummy_hash)
    start = time.perf_counter()
    normal.dummy_verify()
    dummy = time.perf_counter() - start
    h = normal.hash("Cantho@2025x")
    start = time.perf_counter()
    normal.verify("wrong", h)
    real = time.perf_counter() - start
    assert dummy > real / 4  # same work; generous bound for a shared, busy machine


def test_test_cost_is_fast_and_differs_from_normal() -> None:
    """The test cost hashes in milliseconds; each cost asks to rehash the other's hashes."""
    start = time.perf_counter()
    for _ in range(10):
        FAST.verify("Cantho@2025x", FAST.hash("Cantho@2025x"))
    assert (time.perf_counter() - start) / 10 < 0.05
    normal = Hasher("normal")
    assert normal.needs_update(FAST.hash("x"))
    assert "m=65536" in normal.hash("x")
    with pytest.raises(ValueError):
        Hasher("cheap")


def test_matches_any_and_history_rotation() -> None:
    """The last N hashes are kept newest first; matches_any finds a reused password."""
    h1, h2, h3 = FAST.hash("One@2025aa"), FAST.hash("Two@2025bb"), FAST.hash("Three@2025c")
    history = rotate_history(h2, (h1,), keep=5)
    assert history == (h2, h1)
    assert rotate_history(h3, history, keep=2) == (h3, h2)
    assert rotate_history(h3, history, keep=0) == ()
    assert rotate_history("", history, keep=5) == history
    assert FAST.matches_any("One@2025aa", history)
    assert not FAST.matches_any("Four@2025dd", history)
