"""`hierarcaps view SOURCE --out SITE`: a static site to look at hierarchies beside their images (issue 19).

Why static files and script chunks: the site must open from `file://` on any machine, with no server and no network,
and browsers refuse `fetch()` of `file://` URLs, so the data is JavaScript that calls `HC.meta(...)` / `HC.chunk(...)`
when loaded by a `<script>` tag. `data/meta.js` holds what filtering needs for every row (a reason code and a source
code per row, so a filter over 100K rows runs without reading them); the rows themselves sit in `data/chunk-NNNNN.js`
files of CHUNK_ROWS rows, and a page loads only the chunks its rows are in. So the first page of a 100K-row run opens as
fast as that of a 100-row one (bench/viewer.py measures it), and the site grows linearly with the rows.

    SITE/index.html, viewer.js, viewer.css   the page (package data: src/hierarcaps/viewer/), the same for every site
    SITE/data/meta.js, data/chunk-*.js       this SOURCE's rows
    SITE/images/                             copies of the local images (--copy-images); else relative links to them
    SITE/hierarcaps-view.json                what was shown: marks the folder as a site that `view` may replace

SITE is written into a folder beside it and swapped in whole (`shards.replacing_dir`), so a failed run leaves the
old site as it was; an existing folder that is not a site is never replaced. Reading SOURCE: `view_sources.py`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from importlib import resources
from pathlib import Path
from urllib.parse import quote, urlparse

from hierarcaps import __version__, shards
from hierarcaps.view_sources import Source, ViewError, load_source

__all__ = ["build_site", "write_site", "ViewError", "CHUNK_ROWS", "SITE_MARKER"]

CHUNK_ROWS = 200  # ~60 KB of script per chunk: a 50-row page needs one, a sparse filter's page at most 50
ASSETS = ("index.html", "viewer.js", "viewer.css")
SITE_MARKER = "hierarcaps-view.json"
SITE_FORMAT = "hierarcaps-view"
IMAGE_DIR = "images"


def build_site(source: str | Path, out: str | Path, stage: str | None = None, images: list[str | Path] = (),
               copy_images: bool = False, remote_images: bool = True, chunk_rows: int = CHUNK_ROWS) -> dict:
    """Read SOURCE (a run, release, official CSV or review kit) and write its site to `out`; return the site's
    summary (what `hierarcaps-view.json` holds). `images`: more folders to look for local copies of the images in;
    `remote_images=False`: a row with no local image shows its URL as a link only, so the page loads nothing remote."""
    return write_site(load_source(source, stage), out, images=images, copy_images=copy_images,
                      remote_images=remote_images, chunk_rows=chunk_rows)


def write_site(source: Source, out: str | Path, images: list[str | Path] = (), copy_images: bool = False,
               remote_images: bool = True, chunk_rows: int = CHUNK_ROWS) -> dict:
    """Write `source`'s rows as a site in `out`, replacing an earlier site there whole."""
    out = Path(out).absolute()
    _check_out(out, source.path)
    if chunk_rows < 1:
        raise ViewError(f"chunk_rows {chunk_rows}: need at least 1 row per chunk")
    folders = [Path(d) for d in images] + source.images_dirs
    missing = [str(d) for d in map(Path, images) if not d.is_dir()]
    if missing:
        raise ViewError(f"--images {', '.join(missing)}: not a folder")
    with shards.replacing_dir(out) as tmp:
        for name in ASSETS:
            (tmp / name).write_bytes(resources.files("hierarcaps").joinpath("viewer", name).read_bytes())
        found = _Images([d for d in folders if d.is_dir()], out, tmp if copy_images else None)
        rows = [found.attach(row) for row in source.rows]
        data = tmp / "data"
        data.mkdir()
        chunks = [rows[lo:lo + chunk_rows] for lo in range(0, len(rows), chunk_rows)]
        for k, chunk in enumerate(chunks):
            (data / f"chunk-{k:05d}.js").write_text(f"HC.chunk({k},{_js(chunk)});\n", encoding="utf-8")
        meta = {**_meta(source, rows, chunk_rows, len(chunks), found), "remote_images": remote_images}
        (data / "meta.js").write_text(f"HC.meta({_js(meta)});\n", encoding="utf-8")
        summary = {"format": SITE_FORMAT, "generator": f"hierarcaps {__version__}",
                   "generated_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   **{k: meta[k] for k in ("kind", "source", "stage", "rows", "chunks", "counts")},
                   "bytes": sum(p.stat().st_size for p in tmp.rglob("*") if p.is_file())}
        shards.atomic_write_json(tmp / SITE_MARKER, summary)
    return {**summary, "site": str(out), "index": str(out / "index.html")}


def _check_out(out: Path, source: Path) -> None:
    """SITE is replaced whole: never a folder that is not an earlier site, nor SOURCE or a folder holding it."""
    source = source.absolute()
    if out == source or out in source.parents:
        raise ViewError(f"--out {out}: would replace the SOURCE {source} it is written from; pick a folder of its own")
    if out.exists():
        if not out.is_dir():
            raise ViewError(f"--out {out}: exists and is not a folder")
        if any(out.iterdir()) and not (out / SITE_MARKER).is_file():
            raise ViewError(f"--out {out}: exists and is not a site written by `hierarcaps view` (no {SITE_MARKER}); "
                            "it would be replaced whole, so pick an empty or new folder")


def _js(value) -> str:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":"))


class _Images:
    """A row's image: a local file of the same name as its URL's last path part, in the first folder that has one;
    linked relative to the site (it opens wherever the two stay side by side) or copied into SITE/images/."""

    def __init__(self, folders: list[Path], out: Path, copy_into: Path | None):
        self.folders, self.out, self.copy_into = folders, out, copy_into
        self.index: dict[str, Path] = {}
        for folder in reversed(folders):  # the first folder wins a name
            self.index.update({entry.name: Path(entry.path) for entry in os.scandir(folder) if entry.is_file()})
        self.linked: dict[Path, str] = {}
        self.local = self.remote = 0

    def attach(self, row: dict) -> dict:
        url = row.get("u")
        file = self._file(url)
        if file is not None:
            row = {**row, "img": self._site_path(file)}
            self.local += 1
        elif url:
            self.remote += 1
        return row

    def _file(self, url: str | None) -> Path | None:
        if not url:
            return None
        parsed = urlparse(url)
        if parsed.scheme in ("", "file") and Path(parsed.path).is_absolute() and Path(parsed.path).is_file():
            return Path(parsed.path)
        return self.index.get(Path(parsed.path).name)

    def _site_path(self, file: Path) -> str:
        if file not in self.linked:
            if self.copy_into is not None:
                target = self.copy_into / IMAGE_DIR / file.name
                target.parent.mkdir(exist_ok=True)
                if not target.exists():
                    shutil.copyfile(file, target)
                rel = f"{IMAGE_DIR}/{file.name}"
            else:
                rel = Path(os.path.relpath(file.absolute(), self.out)).as_posix()
            self.linked[file] = quote(rel)
        return self.linked[file]


def _facet(values: list[str], first: str | None = None) -> dict:
    """Distinct values (most frequent first; `first` always at 0), their counts, and each row's value as a code."""
    counts: dict[str | None, int] = {}
    for value in values:
        counts[value] = counts.get(value, 0) + 1
    order = sorted(counts, key=lambda v: (-counts[v], v))
    if first is not None:
        order = [first] + [v for v in order if v != first]
    code = {v: k for k, v in enumerate(order)}
    return {"values": order, "counts": [counts.get(v, 0) for v in order], "codes": [code[v] for v in values]}


def _meta(source: Source, rows: list[dict], chunk_rows: int, chunks: int, found: _Images) -> dict:
    reasons = [row.get("r") or "" for row in rows]
    rejected = sum(1 for r in reasons if r)
    return {
        "version": 1,
        "kind": source.kind,
        "source": str(source.path),
        "name": source.path.name,
        "stage": source.stage,
        "rows": len(rows),
        "chunk_rows": chunk_rows,
        "chunks": chunks,
        "counts": {"accepted": len(rows) - rejected, "rejected": rejected, "images_local": found.local,
                   "images_remote": found.remote},
        "facets": {"reason": _facet(reasons, first=""), "source": _facet([row.get("s") or "" for row in rows])},
        "review": source.review,
    }
