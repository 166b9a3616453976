"""congvu: make Postfix + Dovecot enforce the rules Vietnamese provinces set for official e-mail.

This package is the composition root (the ``congvu`` command line, ``congvu serve``, the
deployment config, logging); the layers below it install as its subpackages:
``congvu.policyd`` | ``congvu.authhooks`` | ``congvu.quota`` → ``congvu.directory`` →
``congvu.rules``.  Kept free of imports: the checkpassword hook imports it on every login.
"""
