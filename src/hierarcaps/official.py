"""`hierarcaps download official:NAME --to DIR`: the public HierarCaps release (github.com/TAU-VAILab/hierarcaps),
fetched through download.py's parallel, resumable, verified downloader.

    official:test           data/hierarcaps_test.csv (1,000 curated rows) + the 1,000 images it names, in DIR/images/
    official:test-expanded  data/hierarcaps_test_expanded.csv.gz (23,558 uncurated rows on COCO val2014)
    official:train          data/hierarcaps_train.csv.gz (70K+ rows on Conceptual Captions)

Where each file's sha256 could be known when this was written it is pinned here (test, test-expanded) or in
`pins/hierarcaps_test_images.csv` (each test image), and a file with another hash is refused. Train's could not (the
file was too large to be had), so it is recorded in DIR/official.lock.json at its first download and every later
download into DIR is checked against it.

The test images are the release's own copies (`assets/test_imgs/`, 256x256 JPEGs: what its `code/eval.py` reads, and
byte for byte the shared copy). With `download.images = "coco"` the originals come from `download.coco_base` instead,
at the path image_url gives them (`val2014/<name>`); their hashes are not known here, so they are recorded like train's.

DIR holds the CSV at the top and images/<name>, the layout `validate --data DIR` reads. The CSV is fetched last, so
a folder with the CSV has every image verified; a file that fails its check never gets its final name.
"""

from __future__ import annotations

import csv
import json
import logging
import threading
import time
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from hierarcaps.config import DownloadConfig
from hierarcaps.download import Advance, DownloadError, Entry, finish, fetch_all, open_source, part_path
from hierarcaps.shards import atomic_write_json, sha256_file

log = logging.getLogger(__name__)

PREFIX = "official:"
LOCK = "official.lock.json"
IMAGES = "images"
PINS = Path(__file__).parent / "pins"


@dataclass(frozen=True)
class OfficialFile:
    path: str  # in the release, under download.official_base
    sha256: str | None  # None: not knowable when this was written; recorded at first download
    bytes: int | None


@dataclass(frozen=True)
class Official:
    files: tuple[OfficialFile, ...]
    images: Path | None = None  # name,sha256,bytes of the images the CSV names (the release's copies)


CATALOG = {
    "test": Official(
        (OfficialFile("data/hierarcaps_test.csv", "3474564194fd2a85e1d8f4dbe6e040c795e94677b2982cfb161b14908cae33b0", 196471),),
        PINS / "hierarcaps_test_images.csv",
    ),
    "test-expanded": Official(
        (OfficialFile("data/hierarcaps_test_expanded.csv.gz", "746a0fee51ee4554d7f050a9d6838699375f7175c12655cbd98562f42afe8590", 1630558),)
    ),
    "train": Official((OfficialFile("data/hierarcaps_train.csv.gz", None, None),)),
}
RELEASE_IMAGES = "assets/test_imgs/"  # where the release keeps its copies of the test images
COCO_IMAGES = "val2014/"  # the path of image_url after download.coco_base


def parse(source: str) -> str | None:
    """`official:test` -> "test"; None for a source that is not an official name."""
    return source[len(PREFIX):] if source.startswith(PREFIX) else None


def read_pins(path: Path) -> list[OfficialFile]:
    with open(path, newline="") as fh:
        return [OfficialFile(row["name"], row["sha256"], int(row["bytes"])) for row in csv.DictReader(fh)]


def read_lock(to: Path) -> dict[str, dict]:
    """Hashes recorded at first download, by local path; {} when there is no lock."""
    path = Path(to) / LOCK
    if not path.exists():
        return {}
    try:
        files = json.loads(path.read_text())["files"]
        assert all(isinstance(v["sha256"], str) and isinstance(v["bytes"], int) for v in files.values())
        return files
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError):
        raise DownloadError(f"{path}: not a lock written by `hierarcaps download official:...` (expected "
                            "{\"files\": {PATH: {\"sha256\", \"bytes\", ...}}}); move it away to record the hashes again") from None


def check_recorded(path: Path, sha256: str) -> None:
    """Raise DownloadError if `path` was recorded in its folder's lock at first download with another sha256 (a file
    the lock does not list, or a folder without one, has nothing to be checked against)."""
    entry = read_lock(Path(path).parent).get(Path(path).name)
    if entry is not None and entry["sha256"] != sha256:
        raise DownloadError(f"{path}: sha256 {sha256} differs from the {entry['sha256']} recorded in {Path(path).parent / LOCK} "
                            f"when it was downloaded from {entry.get('url')}; download it again")


class _Recorder:
    """Fetches files whose sha256 is not known, and records each in DIR/official.lock.json before the file gets its
    final name: a file under its final name always has a hash to be checked against on later downloads."""

    def __init__(self, base: str, to: Path, lock: dict[str, dict]):
        self.base, self.to, self.lock, self.mutex = base, to, lock, threading.Lock()

    def __call__(self, opener, entry: Entry, final: Path, advance: Advance) -> None:
        final.parent.mkdir(parents=True, exist_ok=True)
        part = part_path(final)
        known = Entry(entry.path, None, opener.size(entry.path))
        opener.fetch(known, part, advance)
        if part.stat().st_size != known.bytes:
            raise DownloadError(f"{entry.path}: got {part.stat().st_size} of {known.bytes} bytes; rerun to resume")
        recorded = Entry(entry.path, sha256_file(part), known.bytes)
        with self.mutex:
            self.lock[final.relative_to(self.to).as_posix()] = {
                "sha256": recorded.sha256, "bytes": recorded.bytes, "url": self.base + entry.path,
                "recorded_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
            atomic_write_json(self.to / LOCK, {"note": "sha256 of files whose hash hierarcaps could not pin, recorded at "
                                               "their first download; later downloads into this folder are checked against it",
                                               "files": dict(sorted(self.lock.items()))})
        finish(part, final, recorded, keep_truncated=False)
        log.info("%s: recorded sha256 %s (%d bytes) in %s", final.name, recorded.sha256, recorded.bytes, self.to / LOCK)


def _fetch(base: str, files: list[tuple[OfficialFile, str]], to: Path, lock: dict, workers: int, progress: bool) -> None:
    """Fetch (file, local path) pairs from `base`: pinned or previously recorded hashes are checked, others recorded."""
    known, unknown = [], []
    for item, local in files:
        pinned = (item.sha256, item.bytes) if item.sha256 else (lock[local]["sha256"], lock[local]["bytes"]) if local in lock else None
        if pinned:
            known.append((Entry(item.path, *pinned), to / local))
        else:
            unknown.append((Entry(item.path, None, 0), to / local))
    opener = open_source(base)
    try:
        fetch_all(opener, known, workers, progress)
        fetch_all(opener, unknown, workers, progress, one=_Recorder(base, to, lock))
    except DownloadError as err:
        recorded = [local for item, local in files if not item.sha256 and local in lock]
        where = f"; {', '.join(recorded[:3])}: recorded in {to / LOCK} at first download" if recorded else ""
        raise DownloadError(f"{err}\n(expected sha256s: pinned in hierarcaps/official.py and hierarcaps/pins/{where})") from None
    finally:
        opener.close()


def _safe(local: str) -> str:
    parts = PurePosixPath(local).parts
    if not parts or local.startswith("/") or ".." in parts or "\\" in local:
        raise DownloadError(f"unsafe file name {local!r}")
    return local


def download_official(name: str, to: Path, cfg: DownloadConfig | None = None, progress: bool = True,
                      catalog: dict[str, Official] = CATALOG) -> dict:
    """Fetch official:`name` into `to` (images first, the CSV last) and return what is there: {files, images, recorded}."""
    cfg = cfg or DownloadConfig()
    if name not in catalog:
        raise DownloadError(f"{PREFIX}{name}: unknown; the official files are {', '.join(PREFIX + n for n in catalog)}")
    spec, to = catalog[name], Path(to)
    to.mkdir(parents=True, exist_ok=True)
    lock = read_lock(to)
    images = []
    if spec.images is not None:
        pins = read_pins(spec.images)
        if cfg.images == "release":
            images = [(OfficialFile(RELEASE_IMAGES + p.path, p.sha256, p.bytes), _safe(f"{IMAGES}/{p.path}")) for p in pins]
        else:
            images = [(OfficialFile(COCO_IMAGES + p.path, None, None), _safe(f"{IMAGES}/{p.path}")) for p in pins]
        base = cfg.official_base if cfg.images == "release" else cfg.coco_base
        _fetch(base, images, to, lock, cfg.workers, progress)
    files = [(f, _safe(PurePosixPath(f.path).name)) for f in spec.files]
    _fetch(cfg.official_base, files, to, lock, cfg.workers, progress)
    recorded = sorted(k for _, k in [*images, *files] if k in lock)
    log.info("%s%s: %d file(s) and %d image(s) in %s, every sha256 checked%s", PREFIX, name, len(files), len(images), to,
             f" ({len(recorded)} against hashes recorded in {LOCK})" if recorded else "")
    return {"files": [k for _, k in files], "images": len(images), "recorded": recorded}
