"""Publish a finished run as a release folder, and download one (`download` lives in download.py).

A release folder is what you upload to a web server or a Hugging Face dataset repo:

    data/part-NNNNN.parquet      the published stage's accepted rows (schema.FILTERED for `filter`)
    data/rejects-NNNNN.parquet   its rejects, with --include-rejects
    hierarcaps.csv               the same rows in the official HierarCaps CSV format (hierarchy stages only)
    README.md                    dataset card: YAML front matter (configs, features, sizes, license, provenance) + text
    manifest.json                sha256, bytes and rows of every file above; written last

Every shard is checked against the run's own manifest before it is copied, so a damaged run is never published.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from hierarcaps import __version__, card, schema, shards
from hierarcaps.download import RELEASE_FORMAT, RELEASE_MANIFEST, RELEASE_VERSION, DownloadError, download, verify_release
from hierarcaps.inputs import write_hierarchies_csv
from hierarcaps.stages import BUILD_STAGES

__all__ = ["publish", "download", "verify_release", "PublishError", "DownloadError"]

log = logging.getLogger(__name__)

DATA_DIR = "data"
CSV_NAME = "hierarcaps.csv"
CARD_NAME = "README.md"
# The rows derive from MS-COCO captions (annotations under CC BY 4.0); change it when the input says otherwise.
DEFAULT_LICENSE = "cc-by-4.0"
# Stage order, to list provenance first to last. `external` (hierarchies read from a file, then filtered by
# `hierarcaps filter`) takes the place of input..generate.
STAGE_ORDER = (BUILD_STAGES[0], "external", *BUILD_STAGES[1:])
# Stage-manifest keys left out of the card: bulky (shards, full config: those go to manifest.json) or bookkeeping.
_NOT_PROVENANCE = {"shards", "stats", "config", "note", "stage", "skipped", "wall_seconds"}


class PublishError(RuntimeError):
    """The run cannot be published: missing or unfinished stage, damaged shard, foreign files in the target."""


def publish(
    run_dir: Path,
    to: Path,
    stage: str = "filter",
    include_rejects: bool = False,
    license: str = DEFAULT_LICENSE,
) -> Path:
    """Copy `run_dir/<stage>`'s verified shards into `to/data/`, write the CSV, the dataset card and `manifest.json`."""
    run_dir, to = Path(run_dir), Path(to)
    stage_dir = run_dir / stage
    manifest = shards.read_manifest(stage_dir)
    if manifest is None:
        raise PublishError(f"{stage_dir}: no manifest.json; stage {stage!r} has not finished in this run")
    if manifest.get("schema_version") != schema.SCHEMA_VERSION:
        raise PublishError(f"{stage_dir}: schema_version {manifest.get('schema_version')} but this code writes {schema.SCHEMA_VERSION}; rebuild the stage")
    kinds = ("part", "rejects") if include_rejects else ("part",)
    # Empty shards (a filter may reject a whole shard) are left out: they hold nothing, and `datasets` 5.2 fails
    # on a 0-row parquet file ("BatchSize must be greater than 0").
    listed = [s for s in manifest["shards"] if s["kind"] in kinds]
    problems = shards.verify_stage(stage_dir)  # what `hierarcaps verify` checks, before anything is written
    if problems:
        raise PublishError("refusing to publish a damaged run: " + "; ".join(problems))
    chosen = [s for s in listed if s["rows"] > 0]
    if not any(s["kind"] == "part" for s in chosen):
        raise PublishError(f"{stage_dir}: no rows to publish (every part shard is empty)")
    _clear_stale(to, {s["name"] for s in chosen})

    entries = [_copy(stage_dir, s, to) for s in chosen]
    parts = [e for e in entries if e["kind"] == "part"]
    data_schema = pq.read_schema(to / parts[0]["path"])
    extra_files = []
    if {"positive", "negative", "image_url"} <= set(data_schema.names):
        extra_files.append(_write_csv([to / e["path"] for e in parts], to / CSV_NAME))

    provenance = _provenance(run_dir, stage, manifest)
    configs = {"default": _config_info(to, parts, "part")}
    if any(e["kind"] == "rejects" for e in entries):
        configs["rejects"] = _config_info(to, [e for e in entries if e["kind"] == "rejects"], "rejects")
    totals = _totals(entries)
    pretty_name = f"HierarCaps-style hierarchies ({run_dir.name})"
    front = card.front_matter(configs, license, provenance, pretty_name)
    text = card.body(pretty_name, data_schema, provenance, totals, CSV_NAME if extra_files else None, "rejects" in configs)
    shards.atomic_write_bytes(to / CARD_NAME, card.render(front, text).encode("utf-8"))
    extra_files.append(_file_entry(to, CARD_NAME, "card"))

    release = {
        "format": RELEASE_FORMAT,
        "release_version": RELEASE_VERSION,
        "schema_version": schema.SCHEMA_VERSION,
        "stage": stage,
        "license": license,
        "built_at": provenance["build_date"],
        "published_at": provenance["published_at"],
        "code_version": __version__,
        "run": run_dir.name,
        "run_fingerprint": manifest.get("fingerprint"),
        "shards": entries,
        "files": extra_files,
        "totals": totals,
        "provenance": provenance,
        # full resolved config of every stage, to rebuild the release (the card carries only their hashes)
        "stage_configs": {name: (shards.read_manifest(run_dir / name) or {}).get("config") for name in provenance["stages"]},
    }
    shards.atomic_write_json(to / RELEASE_MANIFEST, release)
    verify_release(to)  # cheap, and proves the folder is exactly what the manifest says before anyone uploads it
    log.info("published %s (%d rows in %d shard(s)) to %s", stage_dir, totals["rows"], totals["shards"], to)
    return to


def _clear_stale(to: Path, names: set[str]) -> None:
    """Make room for this release in `to`: drop the previous release's manifest first (a folder without one is an
    unfinished release), then its shards that this one does not have (so `data/*.parquet` globs stay exact) and its
    extra files. Parquet files in a folder that is not a release are never touched."""
    data = to / DATA_DIR
    stale = [p for p in data.glob("*.parquet") if p.name not in names] if data.is_dir() else []
    old_manifest = to / RELEASE_MANIFEST
    if stale and not old_manifest.is_file():
        raise PublishError(f"{data}: holds parquet files that are not from a hierarcaps release ({stale[0].name}, ...); publish to an empty folder")
    old_files = []
    if old_manifest.is_file():
        try:
            old_files = [f["path"] for f in json.loads(old_manifest.read_text()).get("files", [])]
        except (json.JSONDecodeError, TypeError, KeyError):
            pass
        old_manifest.unlink()
    for path in [*stale, *(to / f for f in old_files if ".." not in Path(f).parts)]:
        if path.is_file():
            log.info("removing %s from an earlier publish", path)
            path.unlink()


def _copy(stage_dir: Path, shard: dict, to: Path) -> dict:
    """Copy a verified run shard (temp name + rename) into `to/data/`."""
    source = stage_dir / shard["name"]
    target = to / DATA_DIR / shard["name"]
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".tmp-{target.name}")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)
    return {"name": shard["name"], "path": f"{DATA_DIR}/{shard['name']}", "kind": shard["kind"], "rows": shard["rows"],
            "sha256": shard["sha256"], "bytes": target.stat().st_size}


def _file_entry(to: Path, name: str, kind: str) -> dict:
    path = to / name
    return {"name": name, "path": name, "kind": kind, "sha256": shards.sha256_file(path), "bytes": path.stat().st_size}


def _write_csv(paths: list[Path], target: Path) -> dict:
    table = pa.concat_tables([shards.read_table(p, ["positive", "negative", "image_url"]) for p in paths])
    tmp = target.with_name(f".tmp-{target.name}")
    write_hierarchies_csv(table, tmp)
    os.replace(tmp, target)
    return {**_file_entry(target.parent, target.name, "csv"), "rows": table.num_rows}


def _config_info(to: Path, entries: list[dict], kind: str) -> dict:
    """Sizes of one card config: rows, parquet bytes, and in-memory Arrow bytes (the hub's `num_bytes`)."""
    num_bytes = sum(pq.read_table(to / e["path"]).nbytes for e in entries)
    return {
        "pattern": f"{DATA_DIR}/{kind}-*.parquet",
        "schema": pq.read_schema(to / entries[0]["path"]) if entries else schema.REJECTS,
        "rows": sum(e["rows"] for e in entries),
        "num_bytes": num_bytes,
        "download_bytes": sum(e["bytes"] for e in entries),
    }


def _totals(entries: list[dict]) -> dict:
    totals: dict = {"shards": 0, "rows": 0, "bytes": 0, "rejects_shards": 0, "rejected_rows": 0, "rejects_bytes": 0}
    for e in entries:
        prefix = "" if e["kind"] == "part" else "rejects_"
        totals[prefix + "shards"] += 1
        totals["rows" if e["kind"] == "part" else "rejected_rows"] += e["rows"]
        totals[prefix + "bytes"] += e["bytes"]
    return totals


def _provenance(run_dir: Path, stage: str, manifest: dict) -> dict:
    """Where the rows came from: input file hash, and for each stage up to `stage` its models, prompt hashes,
    config hash, fingerprint, code version and row counts (all read from the stage manifests)."""
    order = STAGE_ORDER[: STAGE_ORDER.index(stage) + 1] if stage in STAGE_ORDER else (*STAGE_ORDER, stage)
    stages, notes = {}, []
    for name in order:
        found = manifest if name == stage else shards.read_manifest(run_dir / name)
        if found is None:
            continue
        info = {k: _no_local_paths(v) for k, v in found.items() if k not in _NOT_PROVENANCE and "prompt" not in k}
        info["models"] = _no_local_paths(found.get("models") or {})
        info["prompts"] = {k: v for k, v in found.items() if "prompt" in k}
        if "source" in found:  # the input file: its name and sha256, never where it sat on the builder's disk
            info["source"] = Path(str(found["source"])).name
        stats = found.get("stats", {})
        info.update({k: int(stats.get(k, 0)) for k in ("rows_in", "rows_out", "rows_rejected")})
        stages[name] = info
        if found.get("note"):
            notes.append(f"{name}: {found['note']}")
    profile = _read_json(run_dir / "profile.json")
    return {
        "run": run_dir.name,
        "stage": stage,
        "profile": profile.get("name"),
        "profile_description": profile.get("description"),
        "code_version": __version__,
        "build_date": manifest.get("finished_at") or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "published_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "source_sha256": next((i["source_sha256"] for i in stages.values() if i.get("source_sha256")), None),
        "stages": stages,
        "notes": notes,
    }


def _no_local_paths(value):
    """Absolute paths (a model directory, a cache) reduced to their last component: a public card must not
    show the builder's disk layout."""
    if isinstance(value, dict):
        return {k: _no_local_paths(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_no_local_paths(v) for v in value]
    if isinstance(value, str) and value.startswith("/") and " " not in value:
        return Path(value).name
    return value


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}
