"""Mailbox limits: attachment → message size, quota bounds, Dovecot quota rules."""

from __future__ import annotations

import pytest

from congvu.config import config_from_mapping, load_config
from congvu.rules.limits import attachment_equivalent, dovecot_quota_rule, effective_quota, message_size_limit
from congvu.rules.units import GB, MB, format_size


def _b64_size(raw: int) -> int:
    """Exact size of base64 with CRLF every 76 characters, as MUAs encode attachments."""
    enc = 4 * ((raw + 2) // 3)
    return enc + 2 * ((enc + 75) // 76)


@pytest.mark.parametrize(
    ("profile", "key", "value", "rule"),
    [
        # CT25-5.1: personal at most 5 GB; agency and unit at least 10 GB; attachments at most 20 MB.
        ("cantho-2025", "max_quota_personal", 5 * GB, "CT25-5.1"),
        ("cantho-2025", "min_quota_unit", 10 * GB, "CT25-5.1"),
        ("cantho-2025", "min_quota_agency", 10 * GB, "CT25-5.1"),
        ("cantho-2025", "attachment_max", 20 * MB, "CT25-5.1"),
        # CT15-4.1: agency unlimited, unit at most 10 GB, personal at most 5 GB.
        ("cantho-2015", "quota_agency", None, "CT15-4.1"),
        ("cantho-2015", "max_quota_unit", 10 * GB, "CT15-4.1"),
        ("cantho-2015", "max_quota_personal", 5 * GB, "CT15-4.1"),
        # TH13-9: agency at least 500 MB, personal at least 100 MB, attachments at most 10 MB.
        ("thanhhoa-2013", "min_quota_agency", 500 * MB, "TH13-9"),
        ("thanhhoa-2013", "min_quota_personal", 100 * MB, "TH13-9"),
        ("thanhhoa-2013", "attachment_max", 10 * MB, "TH13-9"),
    ],
)
def test_the_regulations_numbers(profile: str, key: str, value: int | None, rule: str) -> None:
    """Every quota and attachment figure printed in the three regulations, with the article it comes from."""
    cfg = load_config(None, profile=profile)
    assert getattr(cfg.mailbox, key) == value
    assert cfg.origins[f"mailbox.{key}"].rule_id == rule


@pytest.mark.parametrize(
    ("profile", "allowed_mb", "refused_mb"),
    [("cantho-2025", 20, 21), ("cantho-2015", 20, 21), ("thanhhoa-2013", 10, 11)],
)
def test_attachment_limit_becomes_message_limit(profile: str, allowed_mb: int, refused_mb: int) -> None:
    """The allowed attachment, encoded, fits the derived limit; one MB more does not."""
    mb = load_config(None, profile=profile).mailbox
    limit = message_size_limit(mb)
    assert _b64_size(allowed_mb * MB) + 20_000 <= limit
    assert _b64_size(refused_mb * MB) > limit


def test_factor_and_allowance_are_configurable() -> None:
    """mime_factor and header_allowance from the config change the derived limit."""
    cfg = config_from_mapping({"mailbox": {"mime_factor": 2.0, "header_allowance": "1MB"}})
    assert message_size_limit(cfg.mailbox) == 40 * MB + 1 * MB
    assert attachment_equivalent(cfg.mailbox, 41 * MB) == 20 * MB


@pytest.mark.parametrize(
    ("profile", "kind", "override", "expected"),
    [
        ("cantho-2025", "personal", None, 5 * GB),
        ("cantho-2025", "agency", None, 10 * GB),
        ("cantho-2025", "agency", 12 * GB, 12 * GB),
        ("cantho-2015", "agency", None, None),
        ("thanhhoa-2013", "personal", 200 * MB, 200 * MB),
    ],
)
def test_effective_quota(profile: str, kind: str, override: int | None, expected: int | None) -> None:
    """Type quota, or an override within the profile's floor and ceiling."""
    cfg = load_config(None, profile=profile)
    check = effective_quota(cfg.mailbox, kind, override, "CT25-5.1")  # type: ignore[arg-type]
    assert check.refusal is None
    assert check.quota == expected


@pytest.mark.parametrize(
    ("profile", "kind", "override", "rule"),
    [("cantho-2025", "personal", 6 * GB, "CT25-5.1"), ("cantho-2025", "unit", 5 * GB, "CT25-5.1"),
     ("thanhhoa-2013", "personal", 50 * MB, "TH13-9"), ("cantho-2015", "unit", 11 * GB, "CT15-4.1")],
)
def test_override_outside_bounds_is_refused(profile: str, kind: str, override: int, rule: str) -> None:
    """An override above the ceiling or below the floor is refused citing the article."""
    cfg = load_config(None, profile=profile)
    rid = cfg.origins[f"mailbox.quota_{kind}"].rule_id
    assert rid == rule
    check = effective_quota(cfg.mailbox, kind, override, rid)  # type: ignore[arg-type]
    assert check.quota is None and check.refusal is not None
    assert check.refusal.rule_id == rule and check.refusal.text_vi
    assert format_size(override) in check.refusal.text_en and "byte" not in check.refusal.text_en


def test_dovecot_rule() -> None:
    """Dovecot gets bytes; unlimited is 0."""
    assert dovecot_quota_rule(5 * GB) == "*:bytes=5368709120"
    assert dovecot_quota_rule(None) == "*:bytes=0"
