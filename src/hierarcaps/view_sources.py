"""What `hierarcaps view` can show, read into one row shape: a run's stage, a release, an official CSV, a review kit.

Why a module of its own: each kind of SOURCE keeps its rows differently (a run's stage shards and their rejects, a
release's `data/` shards, a CSV's joined tiers, a review kit's blind sheet), and the site writer (`view.py`) should not
care which it was given. Every reader returns `Source`: rows in display order (accepted first, then rejects, each in
shard order) as small dicts with short keys (they are written as-is into the site's data chunks, so a 100K-row run
stays a few tens of MB):

    id, p (positive tiers), n (negative tiers or None), c (caption, when there are no tiers), u (image URL),
    r (reject reason; None = accepted), d (reject detail text), x (the failing NLI pair, parsed from an NLI detail),
    st (stage), s (row source: seed / augment / generate / external), me / mc (weakest entailment / contradiction
    of an accepted filter row), raw (the model output of a parse failure)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hierarcaps import schema, shards
from hierarcaps.download import RELEASE_FORMAT, RELEASE_MANIFEST
from hierarcaps.inputs import HIERARCHY_CSV_SUFFIXES, InputError, load_hierarchies

# Stage folders in build order (`external` stands in for input..generate after `hierarcaps filter`): the default
# stage of a run is the last one present, and a reject's image URL and source are looked up from later stages first.
RUN_STAGES = ("input", "external", "seed", "augment", "distill", "generate", "filter")
RAW_CHARS = 2000  # a parse failure's raw model output, cut: enough to see what went wrong
EXPECTED = ("expected a run folder (runs/X with <stage>/manifest.json), a release folder (manifest.json with "
            f"\"format\": \"{RELEASE_FORMAT}\"), a review kit (sheet.json + key.json from `hierarcaps review sample`), "
            "an official HierarCaps CSV (.csv / .csv.gz with columns positive,negative,image_url or id,captions,image_url), "
            "or a folder holding one such CSV (and its images/)")


class ViewError(ValueError):
    """SOURCE cannot be shown, or SITE cannot be written; the message names the path and what was expected."""


@dataclass
class Source:
    kind: str  # run | release | csv | review
    path: Path
    rows: list[dict]
    stage: str | None = None
    images_dirs: list[Path] = field(default_factory=list)  # where local copies of the images may be
    review: dict | None = None  # review kits only: {"sheet_sha256", "items", "labels_file"}


def load_source(source: str | Path, stage: str | None = None) -> Source:
    """Recognise SOURCE and read its rows; raise ViewError saying what was expected when it is none of the kinds."""
    path = Path(source)
    if not path.exists():
        raise ViewError(f"{path}: not found; {EXPECTED}")
    if path.is_file():
        if path.name.lower().endswith(HIERARCHY_CSV_SUFFIXES):
            return _csv(path)
        raise ViewError(f"{path}: not a folder or a .csv / .csv.gz file; {EXPECTED}")
    if (path / "sheet.json").is_file() and (path / "key.json").is_file():
        return _review_kit(path)
    if _release_manifest(path) is not None:
        return _release(path)
    present = [name for name in RUN_STAGES if (path / name / shards.MANIFEST).is_file()]
    if present:
        return _run(path, present, stage)
    csvs = sorted(p for p in path.iterdir() if p.is_file() and p.name.lower().endswith(HIERARCHY_CSV_SUFFIXES))
    if len(csvs) == 1:
        return _csv(csvs[0])
    found = ", ".join(sorted(p.name for p in path.iterdir())[:12]) or "nothing"
    raise ViewError(f"{path}: not a run, release, review kit or CSV folder (it holds: {found}); {EXPECTED}")


# --- runs and releases ---


def _run(path: Path, present: list[str], stage: str | None) -> Source:
    stage = stage or present[-1]
    stage_dir = path / stage
    if shards.read_manifest(stage_dir) is None:
        raise ViewError(f"{stage_dir}: stage {stage!r} has not finished (no {shards.MANIFEST}); "
                        f"finished stages of this run: {', '.join(present)}")
    parts, rejects = (shards.output_shards(stage_dir, kind) for kind in ("part", "rejects"))
    rows = _shard_rows(parts, rejects, stage, lambda: _lookup(path, present, stage))
    return Source("run", path, rows, stage=stage, images_dirs=[path / "images"])


def _release_manifest(path: Path) -> dict | None:
    try:
        manifest = json.loads((path / RELEASE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None
    return manifest if isinstance(manifest, dict) and manifest.get("format") == RELEASE_FORMAT else None


def _release(path: Path) -> Source:
    manifest = _release_manifest(path)
    entries = manifest.get("shards", [])
    parts, rejects = ([path / e["path"] for e in entries if e.get("kind") == kind] for kind in ("part", "rejects"))
    stage = manifest.get("stage")
    rows = _shard_rows(parts, rejects, stage, lambda: _ids_to_urls(parts))
    return Source("release", path, rows, stage=stage, images_dirs=[path / "images"])


def _read(paths: list[Path]) -> list[dict]:
    try:
        return [row for p in paths for row in shards.read_table(p).to_pylist()]
    except shards.ShardError as err:
        raise ViewError(str(err)) from None


def _shard_rows(parts: list[Path], rejects: list[Path], stage: str | None, lookup) -> list[dict]:
    """Accepted rows, then rejects (which carry no image URL or source: those come from `lookup()`, id -> row)."""
    rows = [_accepted(row, stage) for row in _read(parts)]
    rejected = _read(rejects)
    known = lookup() if rejected else {}
    return rows + [_rejected(row, known.get(row.get("id"), {})) for row in rejected]


def _accepted(row: dict, stage: str | None) -> dict:
    out = {"id": row.get("id"), **_tiers(row), "u": row.get("image_url"), "r": None, "st": stage, "s": row.get("source")}
    if row.get("min_entail") is not None:
        out["me"] = round(row["min_entail"], 4)
    if row.get("min_contradict") is not None:
        out["mc"] = round(row["min_contradict"], 4)
    return out


def _rejected(row: dict, upstream: dict) -> dict:
    out = {"id": row.get("id"), **_tiers(row), "u": upstream.get("image_url"), "r": row["reason"], "st": row.get("stage"),
           "s": upstream.get("source")}
    detail = row.get("detail")
    parsed = _nli_detail(detail)
    if parsed is not None:
        out["x"] = parsed
    elif detail:
        out["d"] = detail
    if row.get("raw"):
        out["raw"] = row["raw"][:RAW_CHARS]
    return out


def _tiers(row: dict) -> dict:
    positive = row.get("positive")
    if positive:
        return {"p": list(positive), "n": list(row["negative"]) if row.get("negative") else None}
    return {"p": None, "n": None, "c": row.get("caption") or row.get("source_text")}


def _nli_detail(detail: str | None) -> dict | None:
    """The filter's JSON detail of an NLI reject (rule, side, tier, premise, hypothesis, probs, threshold, needs)."""
    if not detail or not detail.startswith("{"):
        return None
    try:
        parsed = json.loads(detail)
    except json.JSONDecodeError:
        return None
    return parsed if isinstance(parsed, dict) and isinstance(parsed.get("probs"), dict) else None


def _ids_to_urls(paths: list[Path]) -> dict[str, dict]:
    known: dict[str, dict] = {}
    for path in paths:
        table = shards.read_table(path)
        columns = [c for c in ("id", "image_url", "source") if c in table.column_names]
        if "id" in columns and len(columns) > 1:
            for row in table.select(columns).to_pylist():
                known.setdefault(row["id"], row)
    return known


def _lookup(run: Path, present: list[str], stage: str) -> dict[str, dict]:
    """id -> {image_url, source} from the run's other stages, later stages first (the filter's upstream first)."""
    known: dict[str, dict] = {}
    for name in reversed(present):
        if name == stage:
            continue
        try:
            found = _ids_to_urls(shards.output_shards(run / name))
        except shards.ShardError:
            continue
        for key, row in found.items():
            known.setdefault(key, row)
    return known


# --- CSVs and review kits ---


def _csv(path: Path) -> Source:
    try:
        table, rejects = load_hierarchies(path)
    except InputError as err:
        raise ViewError(f"{err}; {EXPECTED}") from None
    rows = [_accepted(row, None) for row in table.to_pylist()]
    rows += [{"id": None, "p": None, "n": None, "c": row["caption"], "u": None, "r": row["reason"], "d": row["detail"],
              "st": None, "s": None} for row in rejects.to_pylist()]
    return Source("csv", path, rows, images_dirs=[path.parent / "images"])


def _review_kit(path: Path) -> Source:
    """The sheet only, as the reviewers see it (id and tiers): nothing of key.json reaches the site, so it stays blind."""
    from hierarcaps.review import SHEET, ReviewError, load_kit

    try:
        load_kit(path)  # refuses a sheet and key that do not belong together, as `review score` would
    except ReviewError as err:
        raise ViewError(str(err)) from None
    text = (path / SHEET).read_text(encoding="utf-8")
    rows = [{"id": str(item["id"]), "p": schema.split_tiers(item["positive"]),
             "n": schema.split_tiers(item["negative"]) if item.get("negative") else None, "r": None}
            for item in json.loads(text)]
    review = {"sheet_sha256": shards.sha256_text(text), "items": len(rows), "labels_file": f"labels-{path.name}.json"}
    return Source("review", path, rows, review=review)

