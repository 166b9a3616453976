"""The self-service password page and the Roundcube ``httpapi`` API (CT25-5.2, CT25-5.3, CT25-3.2).

Why a page of its own: a user who must change a new password (CT25-5.2) or whose
password expired (CT25-6.4b, CT15-11.4) gets ``NO [EXPIRED]`` from IMAP, so webmail,
which logs into IMAP with that password, cannot help them.  The page checks the
current password itself through :meth:`AuthService.verify_current` (same lockout,
same rules, no IMAP login) and changes it with :meth:`AuthService.change_password`
(policy, history, must_change cleared, lifecycle back to active).

Routes (behind nginx at ``https://mail.<domain>/doimatkhau/``, see ``conf/nginx/``):

* ``GET /`` the page, Vietnamese first, ``?lang=en`` for English; it states the rules
  from the config with their requirement ids.
* ``POST /`` the form without JavaScript (CSRF token required).
* ``POST /api/strength`` server-side zxcvbn and policy feedback while typing (CSRF
  token required, ``web_strength_rate`` per client IP per minute).
* ``POST /api/password`` Roundcube's ``httpapi`` driver: form fields ``user``,
  ``curpass``, ``newpass`` → ``200 OK`` (body ``OK``; ``{"ok": true}`` with
  ``Accept: application/json``), otherwise 4xx with a JSON reason.  A browser request
  (it carries an Origin, Sec-Fetch-Site or our cookie) must pass the CSRF check; a
  server-side client such as Roundcube has no ambient credentials to abuse and needs none.
* ``GET /static/app.css|app.js``.

CSRF: double-submit of a token signed with the authd key (cookie ``congvu_csrf``,
SameSite=Strict, HttpOnly; the page echoes it in a form field or ``X-CSRF-Token``),
plus an Origin check (the Host, or ``web_origins``) and a refusal of
``Sec-Fetch-Site: cross-site``.  Rate limits (counter store): ``web_rate_user`` and
``web_rate_ip`` attempts per ``web_rate_window``; a wrong current password also counts
towards the login lockout, so the page is no faster a guessing oracle than IMAP.

The package, one idea per module: ``values`` (request, response, outcome), ``texts``
(both languages, the rules in force), ``csrf``, ``proxies`` (who the client is),
``render`` (JSON and the HTML page), ``core`` (the I/O-free core, :class:`PasswordWeb`) and
``resource`` (the twisted.web resource and the ``Service``).  No password reaches a log
line, a repr or an exception.  Internal errors answer 424 with ``"temporary": true``
(never 5xx).
"""

from congvu.authhooks.web.core import PasswordWeb
from congvu.authhooks.web.csrf import COOKIE, Csrf, origin_allowed
from congvu.authhooks.web.proxies import client_ip
from congvu.authhooks.web.resource import PasswordWebService, WebResource, parse_cookies, parse_form
from congvu.authhooks.web.texts import rules_list
from congvu.authhooks.web.values import Outcome, WebRequest, WebResponse

__all__ = ["COOKIE", "Csrf", "Outcome", "PasswordWeb", "PasswordWebService", "WebRequest", "WebResource",
           "WebResponse", "client_ip", "origin_allowed", "parse_cookies", "parse_form", "rules_list"]
