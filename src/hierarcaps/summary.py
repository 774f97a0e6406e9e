"""The per-stage summary (rows in/out/rejected, rows/s, yield, time, where the shards are).

The CLI prints it as a rich table and the Prefect flows publish the same rows as a markdown artifact.
"""

from __future__ import annotations

from pathlib import Path

COLUMNS = ("stage", "rows in", "rows out", "rejected", "yield", "nli kept", "rows/s", "seconds", "shards", "top reject reasons")


def summary_rows(manifests: dict[str, dict], run_dir: str | Path | None = None) -> list[dict]:
    rows = []
    for name, manifest in manifests.items():
        stats = manifest.get("stats", {})
        rows_in, rows_out = int(stats.get("rows_in", 0)), int(stats.get("rows_out", 0))
        seconds = float(manifest.get("wall_seconds", stats.get("seconds", 0.0)))
        reasons = sorted(((k.split(":", 1)[1], v) for k, v in stats.items() if k.startswith("reject:")), key=lambda kv: -kv[1])
        location = Path(run_dir) / name if run_dir else name
        rows.append(
            {
                "stage": name + (" (cached)" if manifest.get("skipped") else ""),
                "rows in": rows_in,
                "rows out": rows_out,
                "rejected": int(stats.get("rows_rejected", 0)),
                "yield": f"{rows_out / rows_in:.0%}" if rows_in else "-",
                # stages that judge rows (seed, augment, filter): kept by the NLI / passed the checks
                "nli kept": f"{rows_out}/{int(stats['pass:structural'])}" if "pass:structural" in stats else "-",
                "rows/s": f"{rows_in / seconds:.1f}" if seconds > 0 else "-",
                "seconds": f"{seconds:.1f}",
                "shards": str(location),
                "top reject reasons": ", ".join(f"{k} {int(v)}" for k, v in reasons[:3]),
            }
        )
    return rows


def to_markdown(rows: list[dict]) -> str:
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    lines += ["| " + " | ".join(str(row[c]) for c in COLUMNS) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_rich_table(rows: list[dict], title: str = "hierarcaps build"):
    from rich.table import Table

    table = Table(title=title)
    for column in COLUMNS:
        table.add_column(column, justify="left" if column in ("stage", "shards", "top reject reasons") else "right")
    for row in rows:
        table.add_row(*(str(row[c]) for c in COLUMNS))
    return table
