"""Download a published release (an http(s) URL, a local folder or a Hugging Face dataset repo) and verify every file.

A file's life: fetched into `<name>.part` (resumed with an HTTP Range request when a .part is already there),
checked against the release's manifest.json (byte size, sha256, parquet row count), and only then renamed to its
final name. A file that fails a check never gets its final name. `manifest.json` is written last, so a folder with
one is a complete, verified download. A rerun skips files that verify and resumes partial ones.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Callable, Iterator
from urllib.parse import quote, urljoin

import pyarrow.parquet as pq

from hierarcaps.shards import ShardError, atomic_write_bytes, sha256_file

log = logging.getLogger(__name__)

RELEASE_MANIFEST = "manifest.json"
RELEASE_FORMAT = "hierarcaps-release"
RELEASE_VERSION = 1

Advance = Callable[[int], None]


class DownloadError(ShardError):
    """A release or one of its files cannot be fetched, or does not match its manifest."""


class TruncatedError(DownloadError):
    """Fewer bytes than the manifest says: the .part file is kept so a rerun can resume it."""


@dataclass(frozen=True)
class Entry:
    """One file of a release, as its manifest lists it."""

    path: str  # relative, '/'-separated
    sha256: str | None  # None only while a file's hash is being recorded (official.py: a first download of train)
    bytes: int
    rows: int | None = None


def manifest_entries(manifest: dict, where: str) -> list[Entry]:
    """Every file a release manifest lists (shards, then extra files), checked for shape and safe paths."""
    if not isinstance(manifest, dict) or manifest.get("format") != RELEASE_FORMAT:
        raise DownloadError(f"{where}: not a hierarcaps release manifest (no \"format\": \"{RELEASE_FORMAT}\")")
    if manifest.get("release_version", 0) > RELEASE_VERSION:
        raise DownloadError(f"{where}: release_version {manifest['release_version']} is newer than this hierarcaps reads; upgrade it")
    entries = []
    for item in [*manifest.get("shards", []), *manifest.get("files", [])]:
        try:
            entry = Entry(str(item["path"]), str(item["sha256"]).lower(), int(item["bytes"]), item.get("rows"))
        except (KeyError, TypeError, ValueError):
            raise DownloadError(f"{where}: malformed file entry {item!r}") from None
        parts = PurePosixPath(entry.path).parts
        # a manifest from a server must not write outside the target folder
        if not parts or entry.path.startswith("/") or ".." in parts or "\\" in entry.path or entry.path == RELEASE_MANIFEST:
            raise DownloadError(f"{where}: unsafe file path {entry.path!r} in manifest")
        if not re.fullmatch(r"[0-9a-f]{64}", entry.sha256) or entry.bytes < 0:
            raise DownloadError(f"{where}: bad sha256 or size for {entry.path!r}")
        entries.append(entry)
    if not entries:
        raise DownloadError(f"{where}: the manifest lists no files")
    return entries


def check_file(path: Path, entry: Entry) -> None:
    """Raise DownloadError (naming the file, expected and actual) unless `path` is exactly the file `entry` lists."""
    size = path.stat().st_size
    if size < entry.bytes:
        raise TruncatedError(f"{entry.path}: truncated: got {size} of {entry.bytes} bytes")
    if size > entry.bytes:
        raise DownloadError(f"{entry.path}: size mismatch: expected {entry.bytes} bytes, got {size}")
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise DownloadError(f"{entry.path}: sha256 mismatch: expected {entry.sha256}, got {actual} (corrupt or altered file)")
    if entry.rows is not None and entry.path.endswith(".parquet"):
        rows = pq.ParquetFile(path).metadata.num_rows
        if rows != entry.rows:
            raise DownloadError(f"{entry.path}: row count mismatch: expected {entry.rows}, got {rows}")


def part_path(final: Path) -> Path:
    return final.with_name(final.name + ".part")


def finish(part: Path, final: Path, entry: Entry, keep_truncated: bool) -> None:
    """Verify the .part file and give it its final name; a bad file is deleted (a short one kept if resumable)."""
    try:
        check_file(part, entry)
    except TruncatedError as err:
        if not keep_truncated:
            part.unlink(missing_ok=True)
            raise
        raise TruncatedError(f"{err}; kept {part.name} so a rerun resumes it") from None
    except DownloadError:
        part.unlink(missing_ok=True)
        raise
    os.replace(part, final)


# ---------------------------------------------------------------- sources


class LocalSource:
    """A release in a folder (a published one, or a Hugging Face snapshot)."""

    resumable = False

    def __init__(self, root: Path):
        self.root = root
        self.where = str(root)

    def read_manifest(self) -> bytes:
        path = self.root / RELEASE_MANIFEST
        if not path.is_file():
            raise DownloadError(f"{path}: missing; is {self.root} a folder made by `hierarcaps publish`?")
        return path.read_bytes()

    def size(self, path: str) -> int:
        if not (self.root / path).is_file():
            raise DownloadError(f"{self.root / path}: missing")
        return (self.root / path).stat().st_size

    def fetch(self, entry: Entry, part: Path, advance: Advance) -> None:
        source = self.root / entry.path
        if not source.is_file():
            raise DownloadError(f"{source}: missing (listed in the manifest)")
        shutil.copyfile(source, part)
        advance(part.stat().st_size)

    def close(self) -> None:
        pass


class HttpSource:
    """A release served over http(s): `<base>/manifest.json` and `<base>/<path>` for each file."""

    resumable = True

    def __init__(self, url: str, retries: int = 2):
        import httpx

        self.httpx = httpx
        base = url[: -len(RELEASE_MANIFEST)] if url.endswith("/" + RELEASE_MANIFEST) else url
        self.base = base if base.endswith("/") else base + "/"
        self.where = self.base
        self.retries = retries
        # identity encoding: byte offsets (Range) and sizes must be those of the file, not of a gzip stream
        self.client = httpx.Client(timeout=httpx.Timeout(30.0, connect=10.0), follow_redirects=True,
                                   headers={"Accept-Encoding": "identity"})

    def url(self, path: str) -> str:
        return urljoin(self.base, quote(path))

    def read_manifest(self) -> bytes:
        url = self.url(RELEASE_MANIFEST)
        try:
            response = self.client.get(url)
        except self.httpx.HTTPError as err:
            raise DownloadError(f"{url}: {type(err).__name__}: {err}") from None
        if response.status_code != 200:
            raise DownloadError(f"{url}: HTTP {response.status_code}; is this the URL of a published release?")
        return response.content

    def size(self, path: str) -> int:
        """The file's length in bytes, from a HEAD request."""
        url = self.url(path)
        try:
            response = self.client.head(url)
        except self.httpx.HTTPError as err:
            raise DownloadError(f"{url}: {type(err).__name__}: {err}") from None
        if response.status_code != 200 or not response.headers.get("content-length", "").isdigit():
            raise DownloadError(f"{url}: HTTP {response.status_code}, no Content-Length; cannot learn the file's size")
        return int(response.headers["content-length"])

    def fetch(self, entry: Entry, part: Path, advance: Advance) -> None:
        """Fetch into `part`, resuming what is there; network errors are retried with backoff."""
        counted = 0

        def count(n: int) -> None:
            nonlocal counted
            counted += n
            advance(n)

        for attempt in range(self.retries + 1):
            try:
                return self._get(entry, part, count)
            except self.httpx.TransportError as err:  # connection dropped, timeout: retry, resuming the .part
                if attempt == self.retries:
                    raise DownloadError(f"{self.url(entry.path)}: {type(err).__name__}: {err} ({attempt + 1} attempts); rerun to resume") from None
                log.warning("%s: %s; retrying", entry.path, err)
                advance(-counted)  # the retry counts what the .part holds again
                counted = 0
                time.sleep(0.5 * 2**attempt)
            except self.httpx.HTTPError as err:
                raise DownloadError(f"{self.url(entry.path)}: {type(err).__name__}: {err}") from None

    def _get(self, entry: Entry, part: Path, advance: Advance, allow_resume: bool = True) -> None:
        url = self.url(entry.path)
        have = part.stat().st_size if allow_resume and part.exists() else 0
        if have > entry.bytes or (have == entry.bytes and not self._complete(part, entry)):
            have = 0  # longer than the file, or full length but wrong: start over
        elif have == entry.bytes:
            advance(have)
            return  # an earlier run finished it; finish moves it into place
        headers = {"Range": f"bytes={have}-"} if have else {}
        with self.client.stream("GET", url, headers=headers) as response:
            if have and not (response.status_code == 206 and response.headers.get("content-range", "").startswith(f"bytes {have}-")):
                # the server ignored the Range (python -m http.server does) or cannot satisfy it: start over
                log.info("%s: server did not resume at byte %d (HTTP %d); downloading it whole", entry.path, have, response.status_code)
                if response.status_code == 200:
                    have = 0
                else:
                    response.close()
                    return self._get(entry, part, advance, allow_resume=False)
            if response.status_code not in (200, 206):
                raise DownloadError(f"{url}: HTTP {response.status_code}")
            advance(have)
            written = have
            with open(part, "ab" if have else "wb") as fh:
                # no chunk_size: httpx would buffer up to it, and lose the buffer (not resume it) on a dropped connection
                for chunk in response.iter_bytes():
                    written += len(chunk)
                    if written > entry.bytes:
                        fh.close()
                        part.unlink(missing_ok=True)
                        raise DownloadError(f"{entry.path}: size mismatch: the server sent more than the manifest's {entry.bytes} bytes")
                    fh.write(chunk)
                    advance(len(chunk))

    @staticmethod
    def _complete(part: Path, entry: Entry) -> bool:
        return entry.sha256 is None or sha256_file(part) == entry.sha256

    def close(self) -> None:
        self.client.close()


def _hf_snapshot(repo: str) -> Path:
    """Fetch a Hugging Face dataset repo (`owner/name[@revision]`) into the hub cache; its files are then
    verified and copied like a local release."""
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError

    repo_id, _, revision = repo.partition("@")
    try:
        return Path(huggingface_hub.snapshot_download(repo_id=repo_id, repo_type="dataset", revision=revision or None))
    except (HfHubHTTPError, LocalEntryNotFoundError, OSError, ValueError) as err:
        hint = ""
        if huggingface_hub.constants.HF_HUB_OFFLINE:
            hint = " (HF_HUB_OFFLINE is set, so the hub was not contacted: unset it, or pass a URL or a local folder)"
        raise DownloadError(f"Hugging Face dataset {repo_id!r}: download failed: {type(err).__name__}: {err}{hint}") from None


def open_source(source: str, retries: int = 2) -> LocalSource | HttpSource:
    """An http(s) URL, a folder (or its manifest.json), `hf://datasets/owner/name`, or a repo id `owner/name[@rev]`."""
    if re.match(r"https?://", source, re.IGNORECASE):
        return HttpSource(source, retries)
    if source.startswith("hf://"):
        return LocalSource(_hf_snapshot(source.removeprefix("hf://").removeprefix("datasets/")))
    path = Path(source).expanduser()
    if path.is_file() and path.name == RELEASE_MANIFEST:
        return LocalSource(path.parent)
    if path.is_dir():
        return LocalSource(path)
    if re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+(@[\w./-]+)?", source):
        return LocalSource(_hf_snapshot(source))
    raise DownloadError(f"{source}: not an http(s) URL, an existing folder, or a Hugging Face dataset repo id (owner/name)")


# ---------------------------------------------------------------- the command


@contextmanager
def _progress_bar(enabled: bool, total: int) -> Iterator[Advance]:
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, Progress, TextColumn, TimeRemainingColumn, TransferSpeedColumn

    columns = (TextColumn("download"), BarColumn(), DownloadColumn(), TransferSpeedColumn(), TimeRemainingColumn())
    with Progress(*columns, console=Console(stderr=True)) as progress:
        task = progress.add_task("download", total=total)
        yield lambda n: progress.advance(task, n)  # Progress locks internally: safe from worker threads


def _verified(final: Path, entry: Entry) -> bool:
    """True if an earlier run left this exact file; a wrong file under the final name is removed. A file whose hash is
    not known yet (sha256 None) is never taken as verified."""
    if not final.is_file() or entry.sha256 is None:
        return False
    try:
        check_file(final, entry)
        return True
    except DownloadError as err:
        log.warning("%s; fetching it again", err)
        final.unlink()
        return False


def verify_release(folder: Path) -> dict:
    """Check every file of a release folder against its manifest.json; return the manifest or raise DownloadError."""
    folder = Path(folder)
    source = LocalSource(folder)
    manifest = json.loads(source.read_manifest())
    errors = []
    for entry in manifest_entries(manifest, str(folder)):
        try:
            if not (folder / entry.path).is_file():
                raise DownloadError(f"{entry.path}: missing")
            check_file(folder / entry.path, entry)
        except DownloadError as err:
            errors.append(str(err))
    if errors:
        raise DownloadError(f"{folder}: {len(errors)} file(s) do not match manifest.json:\n  " + "\n  ".join(errors))
    return manifest


def download(
    source: str,
    to: Path,
    workers: int = 4,
    progress: bool = True,
    manifest_sha256: str | None = None,
    retries: int = 2,
) -> Path:
    """Fetch every file of a release into `to`, in parallel, verifying each; return `to`.

    `manifest_sha256` pins the release: the download is refused if its manifest.json has another hash."""
    to = Path(to)
    opener = open_source(str(source), retries)
    try:
        raw = opener.read_manifest()
        actual = hashlib.sha256(raw).hexdigest()
        if manifest_sha256 and actual != manifest_sha256.lower():
            raise DownloadError(f"{opener.where}: manifest.json sha256 mismatch: expected {manifest_sha256}, got {actual}")
        try:
            manifest = json.loads(raw)
        except json.JSONDecodeError as err:
            raise DownloadError(f"{opener.where}{RELEASE_MANIFEST}: not valid JSON ({err})") from None
        entries = manifest_entries(manifest, opener.where)
        if isinstance(opener, LocalSource) and to.exists() and to.resolve() == opener.root.resolve():
            verify_release(to)  # downloading a folder onto itself: only check it
            return to
        fetch_all(opener, [(e, to / e.path) for e in entries], workers, progress)
        _remove_dropped(to, entries)
        atomic_write_bytes(to / RELEASE_MANIFEST, raw)  # last: a manifest here means every file is verified
    finally:
        opener.close()
    log.info("downloaded and verified %d file(s) into %s (manifest sha256 %s)", len(entries), to, actual)
    return to


def fetch_all(opener: LocalSource | HttpSource, jobs: list[tuple[Entry, Path]], workers: int = 4, progress: bool = True,
              one: Callable[[LocalSource | HttpSource, Entry, Path, Advance], None] | None = None) -> None:
    """Fetch each (entry, local path) that is not already there and verified, in parallel, with `one` (default: fetch
    and verify); raise one DownloadError naming every file that failed (none of them is left under its final name; a
    short .part is kept to resume)."""
    one = one or _fetch_one
    todo = [(e, final) for e, final in jobs if not _verified(final, e)]
    log.info("%s: %d file(s), %d already here and verified", opener.where, len(jobs), len(jobs) - len(todo))
    errors = []
    with _progress_bar(progress and bool(todo), sum(e.bytes for e, _ in todo)) as advance, ThreadPoolExecutor(max(1, workers)) as pool:
        futures = [pool.submit(one, opener, e, final, advance) for e, final in todo]
        for future in as_completed(futures):
            try:
                future.result()
            except DownloadError as err:
                errors.append(str(err))
    if errors:
        raise DownloadError(
            f"{len(errors)} of {len(jobs)} file(s) from {opener.where} failed; none was kept under its final name:\n  "
            + "\n  ".join(sorted(errors))
        )


def _remove_dropped(to: Path, entries: list[Entry]) -> None:
    """Delete files an earlier release downloaded here listed and this one does not, so that a glob such as
    `data/part-*.parquet` sees exactly this release. Only files the old manifest named are touched."""
    try:
        old = manifest_entries(json.loads((to / RELEASE_MANIFEST).read_bytes()), str(to))
    except (OSError, json.JSONDecodeError, DownloadError):
        return
    keep = {e.path for e in entries}
    for entry in old:
        if entry.path not in keep and (to / entry.path).is_file():
            log.info("removing %s: an earlier release had it, this one does not", entry.path)
            (to / entry.path).unlink()


def _fetch_one(opener: LocalSource | HttpSource, entry: Entry, final: Path, advance: Advance) -> None:
    final.parent.mkdir(parents=True, exist_ok=True)
    part = part_path(final)
    opener.fetch(entry, part, advance)
    finish(part, final, entry, keep_truncated=opener.resumable)
