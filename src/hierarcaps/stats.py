"""Counters that add up: per-shard stats merge into a stage total (datatrove's habit).

Shared counter names: rows_in, rows_out, rows_rejected, seconds; `reject:<reason>` counts rejections per rule.
"""

from __future__ import annotations

from collections import Counter

ROWS_IN, ROWS_OUT, ROWS_REJECTED, SECONDS = "rows_in", "rows_out", "rows_rejected", "seconds"


class Stats:
    def __init__(self, counters: dict[str, float] | None = None):
        self.counters: Counter = Counter(counters or {})

    def add(self, name: str, value: float = 1) -> None:
        self.counters[name] += value

    def set(self, name: str, value: float) -> None:
        self.counters[name] = value

    def reject(self, reason: str, n: int = 1) -> None:
        self.counters[f"reject:{reason}"] += n

    def __getitem__(self, name: str) -> float:
        return self.counters.get(name, 0)

    def __add__(self, other: "Stats") -> "Stats":
        merged = Counter(self.counters)
        merged.update(other.counters)
        return Stats(merged)

    def __iadd__(self, other: "Stats") -> "Stats":
        self.counters.update(other.counters)
        return self

    def reasons(self) -> dict[str, float]:
        return {k.split(":", 1)[1]: v for k, v in sorted(self.counters.items()) if k.startswith("reject:")}

    def to_dict(self) -> dict[str, float]:
        return dict(sorted(self.counters.items()))

    @classmethod
    def from_dict(cls, data: dict[str, float]) -> "Stats":
        return cls(data)

    def __repr__(self) -> str:
        return f"Stats({self.to_dict()})"
