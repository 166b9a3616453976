"""What the page says, in Vietnamese and English, and the password rules it lists with their ids."""

from __future__ import annotations

from datetime import timedelta

from congvu.authhooks.settings import AuthConfig
from congvu.rules.decision import Decision, Verdict

LANGS = ("vi", "en")

TEXT: dict[str, dict[str, str]] = {
    "vi": {
        "title": "Đổi mật khẩu thư điện tử công vụ",
        "intro": "Dùng trang này để đổi mật khẩu được cấp lần đầu, mật khẩu đã hết hạn, hoặc đổi định kỳ. "
                 "Trang tự kiểm tra mật khẩu hiện tại, không cần đăng nhập hộp thư trước.",
        "rules": "Quy định về mật khẩu",
        "user": "Địa chỉ thư hoặc tên đăng nhập",
        "curpass": "Mật khẩu hiện tại",
        "newpass": "Mật khẩu mới",
        "newpass2": "Nhập lại mật khẩu mới",
        "submit": "Đổi mật khẩu",
        "show": "Hiện mật khẩu",
        "strength": "Độ mạnh",
        "other_lang": "English",
        "other_lang_code": "en",
        "s0": "Rất yếu", "s1": "Yếu", "s2": "Trung bình", "s3": "Mạnh", "s4": "Rất mạnh",
        "typing": "Nhập mật khẩu mới để xem đánh giá.",
        "meets": "Mật khẩu đạt yêu cầu.",
        "mismatch": "Hai lần nhập mật khẩu mới không khớp.",
        "success": "Đã đổi mật khẩu. Bạn có thể đăng nhập hộp thư bằng mật khẩu mới ngay bây giờ.",
        "failed": "Chưa đổi được mật khẩu:",
        "network": "Không kết nối được máy chủ; hãy thử lại.",
        "footer": "Không ai, kể cả quản trị hệ thống, được hỏi mật khẩu của bạn. Không dùng chung mật khẩu "
                  "với người khác (CT25-3.2).",
    },
    "en": {
        "title": "Change your official e-mail password",
        "intro": "Use this page to change a first-issued password, an expired one, or for the periodic change. "
                 "It checks your current password itself; you do not need to log in to your mailbox first.",
        "rules": "Password rules",
        "user": "E-mail address or user name",
        "curpass": "Current password",
        "newpass": "New password",
        "newpass2": "Repeat the new password",
        "submit": "Change password",
        "show": "Show passwords",
        "strength": "Strength",
        "other_lang": "Tiếng Việt",
        "other_lang_code": "vi",
        "s0": "Very weak", "s1": "Weak", "s2": "Fair", "s3": "Strong", "s4": "Very strong",
        "typing": "Type a new password to see how strong it is.",
        "meets": "The password meets the rules.",
        "mismatch": "The two new passwords differ.",
        "success": "Your password has been changed. You can log in to your mailbox with it right away.",
        "failed": "The password was not changed:",
        "network": "Cannot reach the server; please try again.",
        "footer": "Nobody, not even the administrators, may ask for your password. Never share a password "
                  "(CT25-3.2).",
    },
}


def pick_lang(value: str, default: str = "vi") -> str:
    return value if value in LANGS else default


def _days(d: timedelta) -> int:
    return max(1, round(d / timedelta(days=1)))


def rules_list(cfg: AuthConfig) -> list[Decision]:
    """The password rules in force, from the config, each with the requirement id its value came from."""
    pw = cfg.password

    def rid(key: str) -> str:
        origin = cfg.origins.get(f"password.{key}")
        return origin.rule_id if origin is not None else "SUITE"

    out = [Decision(Verdict.WARN, rid("min_length"), f"Dài từ {pw.min_length} đến {pw.max_length} ký tự.",
              f"Between {pw.min_length} and {pw.max_length} characters long.")]
    classes = [(pw.require_upper, "upper", "chữ in hoa", "an upper-case letter"),
               (pw.require_lower, "lower", "chữ thường", "a lower-case letter"),
               (pw.require_digit, "digit", "chữ số", "a digit"),
               (pw.require_special, "special", "ký tự đặc biệt (ví dụ @ # ! hoặc dấu cách)",
                "a special character (such as @ # ! or a space)")]
    wanted = [c for c in classes if c[0]]
    if wanted:
        out.append(Decision(Verdict.WARN, rid(f"require_{wanted[0][1]}"),
                      "Có ít nhất một " + ", một ".join(c[2] for c in wanted)
                      + "; chữ có dấu như Đ, Ă, ơ đều được tính.",
                      "At least " + ", ".join(c[3] for c in wanted)
                      + "; letters with diacritics such as Đ, Ă, ơ count."))
    out.append(Decision(Verdict.WARN, rid("min_score"),
                  f"Khó đoán: độ mạnh tối thiểu {pw.min_score}/4; không chứa họ tên, tên hộp thư, tên viết tắt "
                  "của cơ quan, tên địa phương, hay mật khẩu ví dụ in trong quy định.",
                  f"Hard to guess: strength at least {pw.min_score}/4; no name, mailbox name, agency "
                  "abbreviation, city name or the example printed in the regulation."))
    if pw.history > 0:
        out.append(Decision(Verdict.WARN, rid("history"),
                      f"Khác mật khẩu hiện tại và {pw.history} mật khẩu gần nhất.",
                      f"Different from the current password and the last {pw.history}."))
    else:
        out.append(Decision(Verdict.WARN, rid("history"), "Khác mật khẩu hiện tại.",
                      "Different from the current password."))
    if pw.must_change_on_create:
        out.append(Decision(Verdict.WARN, rid("must_change_on_create"),
                      "Mật khẩu được cấp mới hoặc đặt lại phải được đổi trước khi dùng hộp thư.",
                      "A new or reset password must be changed before the mailbox can be used."))
    names = {"personal": ("cá nhân", "personal"), "unit": ("đơn vị", "unit"), "agency": ("cơ quan", "agency")}
    groups: dict[tuple[int | None, str], list[str]] = {}
    for kind in ("personal", "unit", "agency"):
        life = pw.expiry(kind)
        groups.setdefault((_days(life) if life else None, rid(f"expiry_{kind}")), []).append(kind)
    for (days, rule_id), kinds in groups.items():
        vi_kinds = ", ".join(names[k][0] for k in kinds)
        en_kinds = ", ".join(names[k][1] for k in kinds)
        if days is None:
            out.append(Decision(Verdict.WARN, rule_id, f"Hộp thư {vi_kinds}: mật khẩu không có thời hạn.",
                          f"{en_kinds.capitalize()} mailboxes: the password does not expire."))
        else:
            warn = _days(pw.warn_before)
            out.append(Decision(Verdict.WARN, rule_id,
                          f"Hộp thư {vi_kinds}: đổi mật khẩu ít nhất {days} ngày một lần (nhắc trước {warn} ngày); "
                          "quá hạn thì phải đổi tại trang này mới dùng được hộp thư.",
                          f"{en_kinds.capitalize()} mailboxes: change the password at least every {days} days "
                          f"(reminder {warn} days before); once expired, change it here to use the mailbox again."))
    return out


def reason(d: Decision, code: str, lang: str) -> dict[str, str]:
    """One refusal reason as the JSON API gives it: code, rule id, citation and both texts."""
    return {"code": code, "rule_id": d.rule_id, "citation": d.citation, "text_vi": d.text_vi,
            "text_en": d.text_en, "text": d.text_vi if lang == "vi" else d.text_en}
