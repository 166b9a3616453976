"""``[state]`` parsed once into a RedisTarget: URL forms, the password rule, errors naming the key, no secret shown."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from congvu.config import config_from_mapping
from congvu.directory.counters import open_counters
from congvu.directory.counters_redis import RedisCounters
from congvu.directory.redis_target import RedisTarget
from congvu.rules.errors import ConfigError

SECRET = "s3cr3t-Pw"


def target(**state: Any) -> RedisTarget:
    return RedisTarget.from_config(config_from_mapping({"state": {"backend": "redis", **state}}))


@pytest.mark.parametrize(("url", "want"), [
    ("redis://10.0.0.5:6380/2", {"host": "10.0.0.5", "port": 6380, "db": 2, "password": None, "username": ""}),
    ("redis://", {"host": "localhost", "port": 6379, "db": 0}),
    (f"redis://:{SECRET}@127.0.0.1/0", {"password": SECRET, "password_from": "state.url", "username": ""}),
    (f"redis://congvu:{SECRET}@redis.cantho.gov.vn", {"username": "congvu", "password": SECRET, "port": 6379}),
    ("redis://:p%40ss%2Fw@h:1/0", {"password": "p@ss/w"}),  # percent-encoded, decoded once
    (f"redis://h/0?password={SECRET}&username=congvu", {"password": SECRET, "username": "congvu"}),
    ("redis://[::1]:6379/1", {"host": "::1", "db": 1}),
    ("redis://h:6379?db=4", {"db": 4}),
    ("rediss://h:6380/0?ssl_ca_certs=/etc/ssl/ca.pem&ssl_check_hostname=false",
     {"tls": True, "tls_options": (("ssl_ca_certs", "/etc/ssl/ca.pem"), ("ssl_check_hostname", False))}),
    ("unix:///run/redis/redis.sock?db=2", {"path": "/run/redis/redis.sock", "db": 2, "tls": False}),
    (f"unix://:{SECRET}@/run/redis.sock", {"path": "/run/redis.sock", "password": SECRET}),
])
def test_url_forms(url: str, want: dict[str, Any]) -> None:
    """Each documented URL form gives its host or socket, database, user, password and TLS options."""
    t = target(url=url)
    assert {k: getattr(t, k) for k in want} == want


def test_where_names_the_server_never_the_url() -> None:
    """What log lines call the server: host:port ([v6]:port), the socket, or the Sentinel service."""
    assert target(url=f"redis://:{SECRET}@10.0.0.5:6380/2").where == "10.0.0.5:6380"
    assert target(url="redis://[::1]:6379").where == "[::1]:6379"
    assert target(url="unix:///run/r.sock").where == "/run/r.sock"
    assert target(sentinels=["10.0.0.1:26379"], sentinel_service="congvu").where == "sentinel service congvu"


def test_the_password_file_replaces_the_urls_password_and_keeps_the_user(tmp_path: Path) -> None:
    """The one rule: password_file (first line) wins over any password in the URL; the URL's user name stays."""
    pw = tmp_path / "redis.pw"
    pw.write_text("from-file\nignored second line\n")
    t = target(url=f"redis://congvu:{SECRET}@h/1", password_file=str(pw))
    assert (t.username, t.password, t.password_from) == ("congvu", "from-file", "state.password_file")
    t = target(url="redis://congvu@h/1", password_file=str(pw))  # a user from the URL, its password from the file
    assert (t.username, t.password) == ("congvu", "from-file")
    assert target(url="redis://h/1", password_file=str(pw)).password == "from-file"


@pytest.mark.parametrize("url", [f"redis://:{SECRET}@h/0", f"redis://u:{SECRET}@h/0", f"redis://h/0?password={SECRET}",
                                 f"unix://:{SECRET}@/run/r.sock"])
def test_the_password_is_in_no_repr_or_str(url: str) -> None:
    """Neither repr() nor str() of the target, nor of the store built from it, shows the password."""
    t = target(url=url)
    assert t.password == SECRET
    assert SECRET not in repr(t) and SECRET not in str(t)
    store = open_counters(config_from_mapping({"state": {"backend": "redis", "url": url}}))
    assert SECRET not in repr(store)
    store.close()


@pytest.mark.parametrize(("state", "key", "reason"), [
    ({"url": "http://127.0.0.1/"}, "state.url", "redis://, rediss:// or unix://"),
    ({"url": "redis:127.0.0.1"}, "state.url", "redis://, rediss:// or unix://"),
    ({"url": "redis://h/0?socket_keepalive=true"}, "state.url", "unsupported option ?socket_keepalive="),
    ({"url": "redis://h/0?db=1&db=2"}, "state.url", "given twice"),
    ({"url": "redis://h/1?db=2"}, "state.url", "database given twice"),
    ({"url": f"redis://:{SECRET}@h/0?password=other"}, "state.url", "password given twice"),
    ({"url": "redis://h/zero"}, "state.url", "must be a number"),
    ({"url": f"redis://:{SECRET}@h:99999/0"}, "state.url", "not a valid URL"),
    ({"url": "redis://h:0/0"}, "state.url", "port 0"),
    ({"url": "redis://h/0?ssl_ca_certs=/ca.pem"}, "state.url", "need a rediss:// URL"),
    ({"url": "rediss://h/0?ssl_cert_reqs=maybe"}, "state.url", "none, optional or required"),
    ({"url": "unix://relative.sock"}, "state.url", "absolute socket path"),
    ({"url": "redis://congvu@h/0"}, "state.url", "user name without a password"),
    ({"sentinels": ["no-port"]}, "state.sentinels", "expected host:port"),
    ({"sentinels": ["h:26379"], "url": "unix:///run/r.sock"}, "state.sentinels", "TCP master"),
    ({"password_file": "/nonexistent/pw"}, "state.password_file", "cannot read"),
])
def test_bad_settings_name_the_key_and_never_the_password(state: dict[str, Any], key: str, reason: str) -> None:
    """Every refusal is a one-line ConfigError naming file and key; the URL (and its password) is never quoted."""
    with pytest.raises(ConfigError) as err:
        target(**state)
    assert err.value.key == key and reason in err.value.reason, err.value
    assert SECRET not in str(err.value)


def test_an_empty_password_file_is_refused(tmp_path: Path) -> None:
    """A password file without a first line is a mistake, not "no password"."""
    pw = tmp_path / "empty.pw"
    pw.write_text("")
    with pytest.raises(ConfigError, match=r"state\.password_file: the file is empty"):
        target(password_file=str(pw))


def test_sentinels_and_timeout() -> None:
    """Sentinels are (host, port) pairs, IPv6 in brackets; the timeout is in seconds."""
    t = target(sentinels=["10.0.0.1:26379", "[2001:db8::1]:26380"], sentinel_service="congvu", timeout="3s")
    assert t.sentinels == (("10.0.0.1", 26379), ("2001:db8::1", 26380)) and t.sentinel_service == "congvu"
    assert t.timeout == 3.0


def test_the_setting_to_fix_follows_where_the_password_came_from(tmp_path: Path) -> None:
    """A refused login points at the password file, the URL, or says a password is missing; NOPERM at the ACL."""
    pw = tmp_path / "redis.pw"
    pw.write_text("x\n")
    assert target(password_file=str(pw)).fix("WRONGPASS") == "[state] password_file"
    assert target(url="redis://:x@h").fix("WRONGPASS") == "the password in [state] url"
    assert "none is configured" in target(url="redis://h").fix("NOAUTH")
    assert "ACL of Redis user congvu" in target(url="redis://congvu:x@h").fix("NOPERM")


def test_redis_py_is_built_from_the_target() -> None:
    """RedisCounters gets the URL's user, password and database; a unix URL its socket; rediss its TLS options."""
    store = open_counters(config_from_mapping({"state": {"backend": "redis",
                                                         "url": f"redis://congvu:{SECRET}@10.0.0.5:6380/4"}}))
    assert isinstance(store, RedisCounters)
    kw = store._r.connection_pool.connection_kwargs
    assert (kw["host"], kw["port"], kw["db"], kw["username"], kw["password"]) == (
        "10.0.0.5", 6380, 4, "congvu", SECRET)
    store.close()
    store = open_counters(config_from_mapping({"state": {"backend": "redis", "url": "unix:///run/r.sock?db=2"}}))
    assert isinstance(store, RedisCounters)
    kw = store._r.connection_pool.connection_kwargs
    assert (kw["path"], kw["db"]) == ("/run/r.sock", 2)
    store.close()
    store = open_counters(config_from_mapping({"state": {"backend": "redis",
                                                         "url": "rediss://h:6380/0?ssl_ca_certs=/ca.pem"}}))
    assert isinstance(store, RedisCounters)
    kw = store._r.connection_pool.connection_kwargs
    assert kw["ssl_ca_certs"] == "/ca.pem" and store._r.connection_pool.connection_class.__name__ == "SSLConnection"
    store.close()
