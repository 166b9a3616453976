"""Rendering: outcomes as JSON for the API and the page's script, and the HTML page itself.

The page is ``page.html`` (a ``string.Template``) beside ``app.css`` and ``app.js``, all
read once from the package; every value put into it is HTML-escaped.
"""

from __future__ import annotations

import html
import json as _json
import string
from importlib import resources
from typing import Any

from congvu.authhooks.settings import AuthConfig
from congvu.authhooks.web.texts import TEXT, reason, rules_list
from congvu.authhooks.web.values import Outcome, WebRequest, WebResponse, dumps

#: The static files served under /static/, with their content types.
STATIC = {"app.css": "text/css; charset=utf-8", "app.js": "text/javascript; charset=utf-8"}


def asset(name: str) -> bytes:
    """A file shipped beside this package (the page template, its CSS and script)."""
    return resources.files("congvu.authhooks.web").joinpath(name).read_bytes()


class Renderer:
    """The template and static files, loaded once."""

    def __init__(self) -> None:
        self.template = string.Template(asset("page.html").decode("utf-8"))
        self.static = {name: asset(name) for name in STATIC}

    def json(self, out: Outcome, lang: str) -> WebResponse:
        """An outcome as the JSON API answers it (``Retry-After`` when the client must wait)."""
        body: dict[str, Any] = {"ok": out.ok, "code": out.code}
        if out.reasons:
            body["message"] = " ".join(d.text(lang) for d in out.reasons)  # type: ignore[arg-type]
            codes = out.codes if len(out.codes) == len(out.reasons) else (out.code,) * len(out.reasons)
            body["reasons"] = [reason(d, c, lang) for d, c in zip(out.reasons, codes, strict=True)]
        if out.score:
            body["score"] = out.score
        if out.temporary:
            body["temporary"] = True
        headers: tuple[tuple[str, str], ...] = ()
        if out.retry_after is not None:
            body["retry_after"] = out.retry_after
            headers = (("Retry-After", str(out.retry_after)),)
        return WebResponse(out.status, dumps(body), "application/json; charset=utf-8", headers)

    def page(self, cfg: AuthConfig, req: WebRequest, lang: str, csrf_token: str, *,
             outcome: Outcome | None = None, status: int = 200,
             headers: tuple[tuple[str, str], ...] = ()) -> WebResponse:
        """The HTML page in ``lang``: the rules in force, the form (carrying ``csrf_token``), any outcome."""
        t = TEXT[lang]
        cookie = csrf_token
        e = html.escape
        rules = "\n".join(
            f'<li><span class="rule-text">{e(d.text_vi if lang == "vi" else d.text_en)}</span> '
            f'<span class="rule-id" title="{e(d.citation)}">{e(d.rule_id)}</span></li>'
            for d in rules_list(cfg))
        message = ""
        if outcome is not None:
            if outcome.ok:
                message = f'<div id="result" class="result ok" role="status">{e(t["success"])}</div>'
            else:
                items = "".join(f"<li>{e(d.text(lang))}</li>" for d in outcome.reasons)  # type: ignore[arg-type]
                message = (f'<div id="result" class="result error" role="alert">{e(t["failed"])}'
                           f"<ul>{items}</ul></div>")
        else:
            message = '<div id="result" class="result" role="status" hidden></div>'
        org = cfg.organisation or cfg.domain
        i18n = {k: t[k] for k in ("s0", "s1", "s2", "s3", "s4", "typing", "meets", "mismatch", "success",
                                  "failed", "network", "strength")}
        values = {
            "lang": lang,
            "title": e(t["title"]),
            "org": e(org),
            "domain": e(cfg.domain),
            "intro": e(t["intro"]),
            "rules_title": e(t["rules"]),
            "rules": rules,
            "other_lang": e(t["other_lang"]),
            "other_lang_code": t["other_lang_code"],
            "label_user": e(t["user"]),
            "label_curpass": e(t["curpass"]),
            "label_newpass": e(t["newpass"]),
            "label_newpass2": e(t["newpass2"]),
            "label_show": e(t["show"]),
            "label_strength": e(t["strength"]),
            "typing": e(t["typing"]),
            "submit": e(t["submit"]),
            "footer": e(t["footer"]),
            "user": e(req.form.get("user", "") or req.query.get("user", "")),
            "csrf": e(cookie),
            "message": message,
            "min_length": str(cfg.password.min_length),
            "max_length": str(cfg.password.max_length),
            # Raw text inside <script type="application/json">: escape what could end the element.
            "i18n": _json.dumps(i18n, ensure_ascii=False).replace("<", "\\u003c").replace(">", "\\u003e")
                    .replace("&", "\\u0026"),
        }
        body = self.template.substitute(values).encode("utf-8")
        return WebResponse(status, body, "text/html; charset=utf-8", headers)
