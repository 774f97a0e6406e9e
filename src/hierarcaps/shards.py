"""Atomic parquet shards, per-shard completion markers, shard claims and the stage manifest.

Order of a shard's life (so a killed run resumes and two workers never write one shard):
1. `claim()` creates `part-NNNNN.lock` with O_EXCL; a worker that fails to create it leaves the shard alone.
   A lock whose owning process is dead (same host) is stale and may be taken over; an executor that saw its worker
   die (a Ray actor on a lost node) breaks that worker's locks with `break_claim()`.
2. The outputs are written to `.tmp-*` names and renamed into place (rename is atomic on one filesystem).
3. `part-NNNNN.done.json` (rows, sha256, stats, fingerprint) is written last, atomically: a shard without it is
   not complete, whatever files exist.
4. When every planned shard is done, the stage `manifest.json` merges the markers.
A shard is done only while every file its marker lists has the sha256 the marker records (`shard_is_done`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

import pyarrow as pa
import pyarrow.parquet as pq

MANIFEST = "manifest.json"

log = logging.getLogger(__name__)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates 0600 files; shards, manifests and reports are meant to be shared, so give them the usual mode.
FILE_MODE = 0o666 & ~_umask()


class ShardError(RuntimeError):
    """A shard file is missing, truncated or does not match its recorded checksum."""


def shard_name(index: int, kind: str = "part") -> str:
    return f"{kind}-{index:05d}.parquet"


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# (resolved path, size, mtime_ns) -> sha256: a file is hashed once per process until it changes on disk. Rewriting a
# file changes its mtime_ns; the cache only spares re-hashing the same unchanged bytes within one process.
_digests: dict[tuple[str, int, int], str] = {}


def sha256_cached(path: Path) -> str:
    """sha256 of a file, hashed again only when its size or mtime_ns changed (see `_digests`)."""
    stat = os.stat(path)
    key = (str(Path(path).resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _digests:
        _digests[key] = sha256_file(Path(path))
    return _digests[key]


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def atomic_write_bytes(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_bytes(path, (json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n").encode("utf-8"))


@contextmanager
def replacing_dir(out: Path) -> Iterator[Path]:
    """Yield a new empty folder beside `out` to fill; when the block ends without error it replaces `out` whole (the
    old folder is moved aside, the new one renamed in, the old one deleted last). On any error the new folder is
    removed and `out` is left as it was, so a reader never sees a half-written folder (review kits, viewer sites)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:8]
    tmp, old = out.parent / f".tmp-{out.name}.{tag}", None
    tmp.mkdir()  # not mkdtemp: its 0700 mode would keep the folder from the people it is written for
    try:
        yield tmp
        if out.exists():
            old = out.parent / f".old-{out.name}.{tag}"
            os.replace(out, old)
        os.replace(tmp, out)
    except BaseException:
        if old is not None and not out.exists():
            os.replace(old, out)
            old = None
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def write_table(table: pa.Table, path: Path, schema: pa.Schema | None = None) -> dict:
    """Write `table` to `path` via a temp file + rename; return {"name", "rows", "sha256"}."""
    if schema is not None:
        table = table.select(schema.names).cast(schema)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".tmp-{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        pq.write_table(table, tmp, compression="zstd")
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        digest = sha256_file(Path(tmp))
        os.chmod(tmp, FILE_MODE)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return {"name": path.name, "rows": table.num_rows, "sha256": digest}


def read_table(path: Path, columns: list[str] | None = None) -> pa.Table:
    """Read a parquet file, turning pyarrow's low-level errors into one that names the file."""
    try:
        return pq.read_table(path, columns=columns)
    except FileNotFoundError:
        raise ShardError(f"{path}: file not found") from None
    except (pa.ArrowInvalid, OSError) as err:
        raise ShardError(f"{path}: not a readable parquet file (truncated or corrupt?): {err}") from None


def verify(path: Path, sha256: str, rows: int | None = None, listed_by: str = "manifest") -> None:
    """Raise ShardError unless `path` exists with this sha256 (and `rows` rows, when given)."""
    if not path.exists():
        raise ShardError(f"{path}: missing ({listed_by} lists it)")
    actual = sha256_cached(path)
    if actual != sha256:
        raise ShardError(f"{path}: sha256 {actual[:12]}… does not match the {listed_by}'s {sha256[:12]}…")
    if rows is not None:
        try:
            found = pq.ParquetFile(path).metadata.num_rows
        except (pa.ArrowInvalid, OSError) as err:
            raise ShardError(f"{path}: not a readable parquet file: {err}") from None
        if found != rows:
            raise ShardError(f"{path}: {found} rows but the {listed_by} records {rows}")


def verify_stage(stage_dir: Path) -> list[str]:
    """Every problem with a finished stage: a shard the manifest lists that is missing or differs from its recorded
    sha256 / rows, or a done marker of the manifest's fingerprint that records another sha256. Empty = verified."""
    manifest = read_manifest(stage_dir)
    if manifest is None:
        return [f"{stage_dir}: no {MANIFEST}"]
    problems = []
    for entry in manifest.get("shards", []):
        try:
            verify(stage_dir / entry["name"], entry["sha256"], entry.get("rows"))
        except ShardError as err:
            problems.append(str(err))
    listed = {e["name"]: e["sha256"] for e in manifest.get("shards", [])}
    for path in sorted(stage_dir.glob("part-*.done.json")):
        marker = read_done(stage_dir, int(path.name.split(".")[0].split("-")[1]))
        if marker is None:
            problems.append(f"{path}: not readable JSON")
            continue
        if marker.get("fingerprint") != manifest.get("fingerprint"):
            continue  # a shard of an unfinished rerun with another config: not part of what the manifest lists
        for entry in marker.get("files", []):
            if listed.get(entry["name"], entry["sha256"]) != entry["sha256"]:
                problems.append(f"{stage_dir / entry['name']}: the manifest and {path.name} record different sha256")
    return problems


# ---------------------------------------------------------------- completion markers


def done_path(stage_dir: Path, index: int) -> Path:
    return stage_dir / f"part-{index:05d}.done.json"


def read_done(stage_dir: Path, index: int) -> dict | None:
    path = done_path(stage_dir, index)
    if not path.exists():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError:
        return None  # a torn marker means the shard is not done


def verify_run(run_dir: Path) -> tuple[list[str], list[str]]:
    """(stages checked, problems) for every stage folder of a run that has a manifest (`hierarcaps verify`)."""
    checked, problems = [], []
    for stage_dir in sorted(p.parent for p in Path(run_dir).glob(f"*/{MANIFEST}")):
        checked.append(stage_dir.name)
        problems += verify_stage(stage_dir)
    return checked, problems


def shard_is_done(stage_dir: Path, index: int, fingerprint: str) -> bool:
    """Done = marker with this fingerprint, and every file it lists still has the sha256 the marker records."""
    marker = read_done(stage_dir, index)
    if not marker or marker.get("fingerprint") != fingerprint:
        return False
    for entry in marker.get("files", []):
        try:
            verify(stage_dir / entry["name"], entry["sha256"], listed_by="done marker")
        except ShardError as err:
            log.warning("%s; shard %d will be redone", err, index)
            return False
    return True


def mark_done(stage_dir: Path, index: int, marker: dict) -> None:
    atomic_write_json(done_path(stage_dir, index), marker)


# ---------------------------------------------------------------- claims (one writer per shard)


def _lock_path(stage_dir: Path, index: int) -> Path:
    return stage_dir / f"part-{index:05d}.lock"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def worker_id() -> str:
    """This process as a shard writer, `host:pid`; a Ray actor prefixes its node id (ray_executor.py)."""
    return f"{socket.gethostname()}:{os.getpid()}"


def claim(stage_dir: Path, index: int, worker: str | None = None) -> bool:
    """Try to become the only writer of shard `index`; False if another live worker holds it."""
    stage_dir.mkdir(parents=True, exist_ok=True)
    path = _lock_path(stage_dir, index)
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "worker": worker or worker_id()}
    for _ in range(2):
        try:
            fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                held = json.loads(path.read_text() or "{}")
            except (OSError, json.JSONDecodeError):
                return False  # being written right now by its owner
            stale = held.get("host") == owner["host"] and not _pid_alive(int(held.get("pid", -1)))
            if stale and held.get("pid") != owner["pid"]:
                path.unlink(missing_ok=True)
                continue
            return held.get("pid") == owner["pid"] and held.get("host") == owner["host"]
        with os.fdopen(fd, "w") as fh:
            json.dump(owner, fh)
        return True
    return False


def release(stage_dir: Path, index: int) -> None:
    _lock_path(stage_dir, index).unlink(missing_ok=True)


def break_claim(stage_dir: Path, index: int, worker: str) -> bool:
    """Remove shard `index`'s lock and half-written temp files if `worker` holds it: called by an executor that
    knows that worker is dead (its host may be gone, so `claim` cannot tell). True if a lock was broken."""
    path = _lock_path(stage_dir, index)
    try:
        held = json.loads(path.read_text() or "{}")
    except (OSError, json.JSONDecodeError):
        return False
    if held.get("worker") != worker:
        return False
    for kind in ("part", "rejects"):
        for tmp in stage_dir.glob(f".tmp-{shard_name(index, kind)}.*"):
            tmp.unlink(missing_ok=True)
    path.unlink(missing_ok=True)
    return True


# ---------------------------------------------------------------- manifest


def read_manifest(stage_dir: Path) -> dict | None:
    path = stage_dir / MANIFEST
    if not path.exists():
        return None
    return json.loads(path.read_text())


def write_manifest(stage_dir: Path, manifest: dict) -> None:
    atomic_write_json(stage_dir / MANIFEST, manifest)


def output_shards(stage_dir: Path, kind: str = "part") -> list[Path]:
    """The stage's shards of one kind, in index order, as listed by its manifest."""
    manifest = read_manifest(stage_dir)
    if manifest is None:
        raise ShardError(f"{stage_dir}: no {MANIFEST}; run that stage first")
    return [stage_dir / s["name"] for s in manifest["shards"] if s["kind"] == kind]


def iter_batches(paths: list[Path], batch_size: int, columns: list[str] | None = None) -> Iterator[pa.RecordBatch]:
    for path in paths:
        try:
            yield from pq.ParquetFile(path).iter_batches(batch_size=batch_size, columns=columns)
        except (pa.ArrowInvalid, OSError) as err:
            raise ShardError(f"{path}: not a readable parquet file (truncated or corrupt?): {err}") from None
