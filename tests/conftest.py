"""Root conftest: registers the fixtures that start real servers (one module per server)."""

pytest_plugins: list[str] = [
    "tests.integration.servers.redis",
    "tests.integration.servers.slapd",
    "tests.integration.servers.postfix",
    "tests.integration.servers.dovecot",
    "tests.integration.servers.rspamd",
]
