"""Dovecot authentication for congvu: the checkpassword hook, the auth service and its policy server.

Kept free of imports on purpose: ``congvu-checkpassword`` is forked by Dovecot on every
login and imports this package, so anything imported here is paid on every login.
"""
