"""The [milter] section: actions and failure policies per rule, and a listen endpoint only loopback can reach."""

from __future__ import annotations

import pytest

from congvu.config import config_from_mapping
from congvu.policyd.milter.checks import RULE_NAMES
from congvu.rules.errors import ConfigError


def test_every_rule_has_an_action_and_a_failure_policy() -> None:
    """Each rule of the table is configurable per site: [milter] <rule> and fail_<rule>, never a 5xx on failure."""
    m = config_from_mapping({}).milter
    assert {r: (m.action(r), m.failure(r)) for r in RULE_NAMES} == {
        "attachment_size": ("reject", "tempfail"), "attachment_type": ("reject", "tempfail"),
        "unicode": ("tag", "accept"), "subject": ("reject", "tempfail"), "header_from": ("reject", "tempfail")}
    with pytest.raises(ConfigError, match=r"milter\.fail_subject"):
        config_from_mapping({"milter": {"fail_subject": "reject"}})


@pytest.mark.parametrize("listen", ["tcp:10041", "tcp:10041:interface=0.0.0.0", "tcp6:10041:interface=\\:\\:"])
def test_a_listen_endpoint_other_hosts_reach_is_refused(listen: str) -> None:
    """Whoever connects learns who delegates to whom: loopback or a unix socket, unless allow_remote."""
    with pytest.raises(ConfigError, match=r"milter\.listen: .*not loopback"):
        config_from_mapping({"milter": {"listen": [listen]}})
    assert config_from_mapping({"milter": {"listen": [listen], "allow_remote": True}}).milter.allow_remote
