"""Stage reports: rows in, rows out, rows removed per rule, plus the stage's own facts.

Every stage returns one; the pipeline prints it and saves it as JSON under ``reports/``.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class StageReport:
    stage: str
    rows_in: dict[str, int] = field(default_factory=dict)
    rows_out: dict[str, int] = field(default_factory=dict)
    removed: dict[str, int] = field(default_factory=dict)
    facts: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0
    _t0: float = field(default_factory=time.monotonic, repr=False)

    def finish(self) -> "StageReport":
        self.seconds = round(time.monotonic() - self._t0, 2)
        return self

    def to_dict(self) -> dict[str, Any]:
        return {
            "stage": self.stage,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "removed": self.removed,
            "facts": self.facts,
            "seconds": self.seconds,
        }

    def render(self) -> str:
        lines = [f"[{self.stage}] {self.seconds:.1f}s"]
        if self.rows_in:
            lines.append("  rows in : " + ", ".join(f"{k}={v:,}" for k, v in self.rows_in.items()))
        if self.rows_out:
            lines.append("  rows out: " + ", ".join(f"{k}={v:,}" for k, v in self.rows_out.items()))
        for k, v in self.removed.items():
            lines.append(f"  removed {k}: {v:,}")
        for k, v in self.facts.items():
            lines.append(f"  {k}: {v}")
        return "\n".join(lines)
