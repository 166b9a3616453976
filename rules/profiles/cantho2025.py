"""Quyết định 21/2025/QĐ-UBND, TP Cần Thơ (in force 26/10/2025): the default profile."""

NAME = "cantho-2025"
TITLE = "Quyết định 21/2025/QĐ-UBND TP Cần Thơ"
DOCUMENT = "CT25"

VALUES = {
    "": {
        "domain": ("cantho.gov.vn", "CT25-2"),
        "city": ("Cần Thơ", "CT25-2"),
    },
    "mailbox": {
        "quota_personal": ("5GB", "CT25-5.1"),
        "max_quota_personal": ("5GB", "CT25-5.1"),
        "quota_unit": ("10GB", "CT25-5.1"),
        "min_quota_unit": ("10GB", "CT25-5.1"),
        "quota_agency": ("10GB", "CT25-5.1"),
        "min_quota_agency": ("10GB", "CT25-5.1"),
        "personal_not_above_shared": (True, "CT25-5.1"),
        "attachment_max": ("20MB", "CT25-5.1"),
    },
    "password": {
        "min_length": (8, "CT25-5.3"),
        "require_upper": (True, "CT25-5.3"),
        "require_lower": (True, "CT25-5.3"),
        "require_digit": (True, "CT25-5.3"),
        "require_special": (True, "CT25-5.3"),
        "expiry_personal": ("3 months", "CT25-6.4b"),
        "expiry_unit": ("3 months", "CT25-6.4b"),
        "expiry_agency": ("3 months", "CT25-6.4b"),
        "must_change_on_create": (True, "CT25-5.2"),
    },
    "lifecycle": {
        "reclaim_after": ("6 months", "CT25-6.5"),
        "suspend_after": ("never", "CT25-6.5"),
    },
    "naming": {
        "scheme": ("ct25", "CT25-4.3b"),
        "max_clash": (3, "CT25-4.3b"),
    },
}
