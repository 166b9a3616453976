"""Quyết định 3380/2013/QĐ-UBND, tỉnh Thanh Hóa."""

NAME = "thanhhoa-2013"
TITLE = "Quyết định 3380/2013/QĐ-UBND tỉnh Thanh Hóa"
DOCUMENT = "TH13"

VALUES = {
    "": {
        "domain": ("thanhhoa.gov.vn", "TH13-3.1"),
        "city": ("Thanh Hóa", "TH13-3.1"),
    },
    "mailbox": {
        "quota_personal": ("100MB", "TH13-9"),
        "min_quota_personal": ("100MB", "TH13-9"),
        "quota_unit": ("500MB", "TH13-9"),
        "min_quota_unit": ("500MB", "TH13-9"),
        "quota_agency": ("500MB", "TH13-9"),
        "min_quota_agency": ("500MB", "TH13-9"),
        "attachment_max": ("10MB", "TH13-9"),
    },
    "content": {
        "allowed_types": (["txt", "doc", "odt", "ods", "odp", "rtf", "pdf"], "TH13-6.1"),
        "require_unicode": (True, "TH13-6.2"),
        "require_subject": (True, "TH13-7"),
    },
    "naming": {
        "scheme": ("th13", "TH13-3.3"),
        "max_clash": (0, "TH13-3.3"),
    },
}
