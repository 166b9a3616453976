"""Config loading: profiles, overrides, errors naming file/key/reason, and arbitrary TOML."""

from __future__ import annotations

import contextlib
import tempfile
from datetime import date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from congvu.config import Config, config_from_mapping, load_config
from congvu.rules.config import redact
from congvu.rules.errors import ConfigError
from congvu.rules.units import GB, MB


def test_default_profile_is_cantho_2025() -> None:
    """Without a file the loader gives cantho-2025's numbers with their ids."""
    cfg = load_config(None)
    assert cfg.profile.name == "cantho-2025"
    assert cfg.mailbox.quota_personal == 5 * GB and cfg.mailbox.attachment_max == 20 * MB
    assert cfg.password.expiry("personal") == timedelta(days=90)
    assert cfg.origins["mailbox.attachment_max"].rule_id == "CT25-5.1"
    assert cfg.origins["mailbox.attachment_max"].source == "profile"
    assert cfg.origins["password.history"].source == "suite"


@pytest.mark.parametrize(("profile", "agency", "unit_expiry", "domain"), [
    ("cantho-2015", None, timedelta(days=60), "cantho.gov.vn"),
    ("thanhhoa-2013", 500 * MB, None, "thanhhoa.gov.vn"),
])
def test_other_profiles(profile: str, agency: int | None, unit_expiry: timedelta | None, domain: str) -> None:
    """CT15 agency mailboxes are unlimited with 2-month shared passwords; TH13 has its own domain."""
    cfg = load_config(None, profile=profile)
    assert cfg.mailbox.quota_agency == agency
    assert cfg.password.expiry("unit") == unit_expiry
    assert cfg.domain == domain


def test_file_overrides_profile_and_is_reported(tmp_path: Path) -> None:
    """A value in the file wins and its origin records the profile value beside it."""
    f = tmp_path / "congvu.toml"
    f.write_text('profile = "cantho-2025"\n[mailbox]\nattachment_max = "25MB"\n', encoding="utf-8")
    cfg = load_config(f)
    assert cfg.mailbox.attachment_max == 25 * MB
    o = cfg.origins["mailbox.attachment_max"]
    assert (o.source, o.raw, o.profile_raw, o.rule_id) == ("file", "25MB", "20MB", "CT25-5.1")


def test_profile_named_in_file_beats_argument(tmp_path: Path) -> None:
    """profile = … in the file selects the profile even if --profile says otherwise."""
    f = tmp_path / "c.toml"
    f.write_text('profile = "thanhhoa-2013"\n', encoding="utf-8")
    assert load_config(f, profile="cantho-2015").profile.name == "thanhhoa-2013"


@pytest.mark.parametrize(("data", "key", "reason"), [
    ({"bogus": 1}, "bogus", "unknown key"),
    ({"mailbox": {"bogus": 1}}, "mailbox.bogus", "unknown key"),
    ({"mailbox": 3}, "mailbox", "expected a [section] table"),
    ({"profile": "hanoi-2030"}, "profile", "unknown profile"),
    ({"mailbox": {"attachment_max": "twenty"}}, "mailbox.attachment_max", "expected a size"),
    ({"mailbox": {"attachment_max": True}}, "mailbox.attachment_max", "boolean"),
    ({"password": {"min_length": "8"}}, "password.min_length", "whole number"),
    ({"password": {"min_score": 7}}, "password.min_score", "between 0 and 4"),
    ({"password": {"expiry_personal": "3 fortnights"}}, "password.expiry_personal", "unknown unit"),
    ({"password": {"min_length": 20, "max_length": 12}}, "password.max_length", "smaller than"),
    ({"mailbox": {"quota_personal": "6GB"}}, "mailbox.quota_personal", "ceiling"),
    ({"mailbox": {"quota_agency": "5GB"}}, "mailbox.quota_agency", "below the floor"),
    ({"mailbox": {"max_quota_personal": "unlimited", "quota_personal": "12GB"}},
     "mailbox.quota_personal", "CT25-5.1 forbids"),
    ({"domain": "not a domain"}, "domain", "expected a domain"),
    ({"language": "fr"}, "language", "expected one of"),
    ({"policyd": {"listen": ["10040"]}}, "policyd.listen", "Twisted endpoint"),
    ({"policyd": {"mynetworks": ["300.1.2.3/8"]}}, "policyd.mynetworks", "network"),
    ({"authhooks": {"sasl_listen": ["tcp:12345:interface=127.0.0.1"]}}, "authhooks.sasl_listen", "unix socket"),
    ({"authhooks": {"nologin_services": ["imap"]}}, "authhooks.nologin_services", "unknown key"),
    ({"lifecycle": {"holidays": ["30/04/2026"]}}, "lifecycle.holidays", "date"),
    ({"lifecycle": {"holidays": [datetime(2026, 9, 2, 8, 0)]}}, "lifecycle.holidays", "date"),
    ({"directory": {"backend": "ldap"}}, "directory.base_dn", "required"),
])
def test_invalid_values_name_key_and_reason(data: dict[str, Any], key: str, reason: str) -> None:
    """Every invalid value gives one ConfigError naming the file, the key and the reason."""
    with pytest.raises(ConfigError) as ei:
        config_from_mapping(data, name="site.toml")
    assert ei.value.key == key
    assert reason in ei.value.reason
    assert str(ei.value).startswith("site.toml")


def test_personal_above_shared_allowed_where_profile_does_not_forbid() -> None:
    """TH13 sets floors only, so a large personal quota is the operator's choice."""
    cfg = config_from_mapping({"profile": "thanhhoa-2013", "mailbox": {"quota_personal": "2GB"}})
    assert cfg.mailbox.quota_personal == 2 * GB


@pytest.mark.parametrize(("content", "reason"), [
    (b"profile = \n", "not valid TOML"),
    (b"\xff\xfe[x]", "not UTF-8"),
])
def test_broken_files(tmp_path: Path, content: bytes, reason: str) -> None:
    """Unparseable files give a ConfigError naming the file, never a traceback."""
    f = tmp_path / "broken.toml"
    f.write_bytes(content)
    with pytest.raises(ConfigError, match=reason) as ei:
        load_config(f)
    assert ei.value.file == str(f)


def test_missing_file(tmp_path: Path) -> None:
    """A missing file is a ConfigError, not an OSError."""
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "nope.toml")


def test_config_is_frozen() -> None:
    """Config and its sections cannot be changed after loading."""
    cfg = load_config(None)
    with pytest.raises(AttributeError):
        cfg.mailbox.attachment_max = 1  # type: ignore[misc]


toml_scalars = st.one_of(st.integers(-10**12, 10**12), st.text(max_size=20), st.booleans(),
                         st.floats(allow_nan=False), st.dates())
keys = st.sampled_from(["profile", "domain", "language", "mailbox", "password", "lifecycle", "policyd",
                        "quota_personal", "attachment_max", "min_length", "expiry_personal", "listen",
                        "holidays", "mynetworks", "state_dir", "x"])
toml_values = st.recursive(toml_scalars, lambda c: st.lists(c, max_size=3) | st.dictionaries(keys, c, max_size=4),
                           max_leaves=12)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(keys, toml_values, max_size=5))
def test_loader_raises_only_config_error(data: dict[str, Any]) -> None:
    """On any TOML-shaped data the loader returns a Config or raises ConfigError, nothing else."""
    with contextlib.suppress(ConfigError):
        assert isinstance(config_from_mapping(data), Config)


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=st.sampled_from('[]{}=."\'#\n 0123456789abcdefghijklmnopqrstuvwxyz_-:GBMd,'), max_size=80)
       | st.binary(max_size=40).map(lambda b: b.decode("latin-1")))
def test_load_config_raises_only_config_error_on_any_file(text: str) -> None:
    """Any file content, TOML or not, gives a Config or one ConfigError naming the file."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d) / "congvu.toml"
        f.write_text(text, encoding="utf-8")
        try:
            assert isinstance(load_config(f), Config)
        except ConfigError as e:
            assert e.file == str(f)


@pytest.mark.parametrize(("key", "value", "shown"), [
    ("mailbox.quota_personal", "6GB", "6GB is above the ceiling max_quota_personal = 5GB (CT25-5.1)"),
    ("mailbox.quota_agency", "5GB", "5GB is below the floor min_quota_agency = 10GB (CT25-5.1)"),
])
def test_quota_errors_read_in_units(key: str, value: str, shown: str) -> None:
    """A quota out of bounds is explained in GB, as the operator wrote it, not in bytes."""
    section, name = key.split(".")
    with pytest.raises(ConfigError) as ei:
        config_from_mapping({section: {name: value}})
    assert shown in ei.value.reason


def test_holidays_are_dates() -> None:
    """TOML dates and ISO strings both load as dates the working-day calendar can match."""
    cfg = config_from_mapping({"lifecycle": {"holidays": [date(2026, 9, 2), "2026-04-30"]}})
    assert cfg.lifecycle.holidays == (date(2026, 9, 2), date(2026, 4, 30))


def test_redis_password_stays_out_of_repr_and_show() -> None:
    """A password inside state.url never reaches the Config repr; redact() masks it for display."""
    url = "redis://:s3cret@127.0.0.1:6379/0"
    cfg = config_from_mapping({"state": {"backend": "redis", "url": url}})
    assert cfg.state.url == url
    assert "s3cret" not in repr(cfg) and "s3cret" not in repr(cfg.state)
    assert redact(url) == "redis://:***@127.0.0.1:6379/0"
    assert redact(["rediss://user:p%40ss@h:1", "redis://h:1/0", 5]) == ["rediss://user:***@h:1", "redis://h:1/0", 5]


@pytest.mark.parametrize(("url", "shown"), [
    ("redis://:s3cret@h/0?password=s3cret", "redis://:***@h/0?password=***"),
    ("redis://h/0?password=s3cret", "redis://h/0?password=***"),
    ("redis://h/0?db=1&password=s3cret&username=u", "redis://h/0?db=1&password=***&username=u"),
    ("redis://:p@s3cret@h/0", "redis://:***@h/0"),  # an unencoded @ inside the password
    ("unix://:s3cret@/run/redis.sock?db=2", "unix://:***@/run/redis.sock?db=2"),
    ("ldap://a.example:389 ldap://b.example:389", "ldap://a.example:389 ldap://b.example:389"),
])
def test_redact_covers_every_place_a_url_carries_a_password(url: str, shown: str) -> None:
    """``user:password@`` (even with an @ inside) and ``?password=`` are masked; URLs without one are untouched."""
    assert redact(url) == shown


def test_relative_paths_in_a_file_are_relative_to_the_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Relative state_dir, files and unix: endpoints resolve against the config file's directory, not the cwd."""
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "congvu.toml").write_text(
        'state_dir = "../lib"\n[state]\npassword_file = "redis.pw"\n'
        '[policyd]\nlisten = ["unix:run/policy:mode=660", "tcp:10040:interface=127.0.0.1", "unix:/abs/p"]\n'
        '[authhooks]\nsocket = "authd.sock"\n', encoding="utf-8")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_config("../etc/congvu.toml")
    assert cfg.state_dir.resolve() == (tmp_path / "lib").resolve()
    assert Path(cfg.state.password_file).resolve() == (etc / "redis.pw").resolve()
    assert Path(cfg.authhooks.socket).resolve() == (etc / "authd.sock").resolve()
    first, tcp, absolute = cfg.policyd.listen
    assert first.startswith("unix:/") and first.endswith("/etc/run/policy:mode=660")
    assert (tcp, absolute) == ("tcp:10040:interface=127.0.0.1", "unix:/abs/p")
    assert cfg.state_file(cfg.directory.path, "directory.sqlite3").resolve() == (tmp_path / "lib" / "directory.sqlite3"
                                                                                  ).resolve()


def test_the_built_in_defaults_are_the_installed_layout() -> None:
    """Without a file, state lives in /var/lib/congvu and the auth socket in /run/congvu, as the snippets say."""
    cfg = config_from_mapping({})
    assert cfg.state_dir == Path("/var/lib/congvu")
    assert cfg.authhooks.socket == "/run/congvu/authd.sock" and cfg.authhooks.socket_group == "dovecot"
    # Postfix resolves the shipped smtpd_sasl_path = congvu/auth inside its queue directory.
    assert cfg.authhooks.sasl_listen == ("unix:/var/spool/postfix/congvu/auth:mode=660",)
    assert cfg.authhooks.sasl_group == "postfix"
