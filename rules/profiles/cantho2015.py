"""Quyết định 33/2015/QĐ-UBND, TP Cần Thơ: replaced by 21/2025, kept for sites still on it."""

NAME = "cantho-2015"
TITLE = "Quyết định 33/2015/QĐ-UBND TP Cần Thơ"
DOCUMENT = "CT15"

VALUES = {
    "": {
        "domain": ("cantho.gov.vn", "CT15-4.2c"),
        "city": ("Cần Thơ", "CT15-4.2c"),
    },
    "mailbox": {
        "quota_personal": ("5GB", "CT15-4.1"),
        "max_quota_personal": ("5GB", "CT15-4.1"),
        "quota_unit": ("10GB", "CT15-4.1"),
        "max_quota_unit": ("10GB", "CT15-4.1"),
        "quota_agency": ("unlimited", "CT15-4.1"),
        "personal_not_above_shared": (True, "CT15-4.1"),
    },
    "password": {
        "min_length": (8, "CT15-10.3"),
        "require_upper": (True, "CT15-10.3"),
        "require_lower": (True, "CT15-10.3"),
        "require_digit": (True, "CT15-10.3"),
        "require_special": (True, "CT15-10.3"),
        "expiry_personal": ("3 months", "CT15-10.3"),
        "expiry_unit": ("2 months", "CT15-11.4"),
        "expiry_agency": ("2 months", "CT15-11.4"),
        "must_change_on_create": (True, "CT15-10.3"),
    },
    "lifecycle": {
        "suspend_after": ("3 months", "CT15-5.4"),
        "reclaim_after_suspend_working_days": (15, "CT15-5.4"),
        "reclaim_after": ("never", "CT15-5.4"),
    },
    "naming": {
        "scheme": ("ct15", "CT15-4.2c"),
        "max_clash": (3, "CT15-4.2d"),
    },
}
