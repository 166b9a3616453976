"""The CLI's output layer: the only place that writes to the terminal.

Library code logs through twisted.logger; commands talk to the operator through
this, so tests can capture what a command printed without patching sys.stdout.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any, TextIO


class Output:
    def __init__(self, out: TextIO | None = None, err: TextIO | None = None) -> None:
        self.out = out if out is not None else sys.stdout
        self.err = err if err is not None else sys.stderr

    def line(self, text: str = "") -> None:
        self.out.write(text + "\n")

    def error(self, text: str) -> None:
        self.err.write(text + "\n")

    def json(self, value: Any) -> None:
        self.out.write(json.dumps(value, ensure_ascii=False, indent=2, default=str) + "\n")

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        """A plain aligned table, readable in a terminal and in a ticket."""
        cells = [[str(h) for h in headers]] + [["" if c is None else str(c) for c in r]
                                               for r in rows]
        widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
        for n, r in enumerate(cells):
            self.line("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip())
            if n == 0:
                self.line("  ".join("-" * w for w in widths))
