"""The command tests run on the same throwaway sites as the directory tests (SQLite, and slapd for LDAP)."""

from tests.integration.directory.conftest import make_site, site

__all__ = ["make_site", "site"]
