"""Everything under tests/integration talks to real servers or processes: it carries the ``integration`` marker.

The marker is given here, to every test collected below this folder, so no file can
forget it: ``pytest -m "not integration"`` is the fast inner loop (unit tests only).
"""

from __future__ import annotations

from pathlib import Path

import pytest

HERE = Path(__file__).parent


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if HERE in Path(str(item.path)).parents:
            item.add_marker(pytest.mark.integration)
