"""Root conftest: registers the fixtures that start real servers (one module per server)."""

pytest_plugins: list[str] = [
]
