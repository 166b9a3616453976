"""The page's values: a request as the core sees it, a response, the outcome of a change."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from congvu.rules.decision import Decision

#: Largest request body read; a larger one is refused with 413.
MAX_BODY = 65536


@dataclass(frozen=True, slots=True)
class WebRequest:
    """One HTTP request as the core sees it.  ``form`` holds passwords: never in a repr."""

    method: str
    path: str
    query: Mapping[str, str] = field(default_factory=dict)
    headers: Mapping[str, str] = field(default_factory=dict)  # lower-case names
    cookies: Mapping[str, str] = field(default_factory=dict)
    form: Mapping[str, str] = field(default_factory=dict, repr=False)
    client_ip: str = ""
    secure: bool = False  # the browser talks https (directly, or to the trusted proxy)
    body_too_large: bool = False

    def header(self, name: str) -> str:
        return self.headers.get(name.lower(), "")

    @property
    def wants_json(self) -> bool:
        return "application/json" in self.header("accept")


@dataclass(frozen=True, slots=True)
class WebResponse:
    status: int
    body: bytes
    content_type: str = "text/html; charset=utf-8"
    headers: tuple[tuple[str, str], ...] = ()


@dataclass(frozen=True, slots=True)
class Outcome:
    """The result of a change attempt, before it is rendered as JSON, ``OK`` or a page."""

    status: int
    code: str
    reasons: tuple[Decision, ...] = ()
    codes: tuple[str, ...] = ()
    score: int = 0
    retry_after: int | None = None
    temporary: bool = False

    @property
    def ok(self) -> bool:
        return self.status == 200


def dumps(v: Mapping[str, Any]) -> bytes:
    """A JSON body, UTF-8, Vietnamese left readable."""
    return json.dumps(v, ensure_ascii=False).encode("utf-8")


def plain(status: int, text: str, headers: tuple[tuple[str, str], ...] = ()) -> WebResponse:
    """A one-line text/plain response."""
    return WebResponse(status, text.encode() + b"\n", "text/plain; charset=utf-8", headers)
