"""`hierarcaps download official:...`: the release's files and test images from a mirror on 127.0.0.1, every sha256
checked, mismatches refused, an interrupted or killed download resumed, train's hash recorded then checked.

The fixture is the first rows of the release's test CSV (tests/fixtures/hierarcaps_test_head.csv) with made-up
images and a catalog pinned to them; the last test serves the shared copy itself against the real pins."""

from __future__ import annotations

import csv
import hashlib
import http.server
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from hierarcaps import official
from hierarcaps.config import DownloadConfig
from hierarcaps.download import DownloadError, part_path
from hierarcaps.eval.validate import load_data
from hierarcaps.official import CATALOG, LOCK, Official, OfficialFile, download_official
from range_server import send_range

ROOT = Path(__file__).resolve().parents[1]
HEAD_CSV = ROOT / "tests" / "fixtures" / "hierarcaps_test_head.csv"


class Mirror(http.server.BaseHTTPRequestHandler):
    """Serves `files` (URL path -> bytes) with HEAD and `Range: bytes=N-`. A path in `cut` gets half its body and a
    dropped connection; one in `stall` gets half its body and then nothing until `release` is set."""

    files: dict[str, bytes] = {}
    cut: set[str] = set()
    stall: set[str] = set()
    release = threading.Event()
    gets: list[tuple[str, int]] = []  # (path, first byte asked for)

    def _body(self) -> bytes | None:
        data = self.files.get(self.path.lstrip("/"))
        if data is None:
            self.send_error(404)
        return data

    def do_HEAD(self) -> None:
        data = self._body()
        if data is not None:
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()

    def do_GET(self) -> None:
        data = self._body()
        if data is None:
            return
        path = self.path.lstrip("/")
        start, body = send_range(self, data)
        self.gets.append((path, start))
        if path in self.cut or path in self.stall:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            if path in self.stall:
                self.release.wait(60)
            self.close_connection = True
            return
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def mirror():
    Mirror.files, Mirror.cut, Mirror.stall, Mirror.gets = {}, set(), set(), []
    Mirror.release = threading.Event()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Mirror)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/"
    Mirror.release.set()
    server.shutdown()
    server.server_close()


def _image_names() -> list[str]:
    with open(HEAD_CSV, newline="") as fh:
        return [row["image_url"].rsplit("/", 1)[1] for row in csv.DictReader(fh)]


@pytest.fixture
def fixture_catalog(tmp_path) -> dict[str, Official]:
    """The mirror holds the fixture CSV and an image per row; the catalog pins their sha256s, as CATALOG pins the real ones."""
    csv_bytes = HEAD_CSV.read_bytes()
    Mirror.files["data/hierarcaps_test.csv"] = csv_bytes
    pins = tmp_path / "pins.csv"
    with open(pins, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["name", "sha256", "bytes"])
        for i, name in enumerate(_image_names()):
            image = bytes([i]) * 5000 + name.encode()  # validate only needs the files to exist here
            Mirror.files[official.RELEASE_IMAGES + name] = image
            writer.writerow([name, hashlib.sha256(image).hexdigest(), len(image)])
    test = OfficialFile("data/hierarcaps_test.csv", hashlib.sha256(csv_bytes).hexdigest(), len(csv_bytes))
    return {"test": Official((test,), pins), "train": CATALOG["train"]}


def test_download_checks_every_file_and_lays_it_out_like_the_shared_copy(mirror, fixture_catalog, tmp_path):
    to = tmp_path / "test"
    got = download_official("test", to, DownloadConfig(official_base=mirror), progress=False, catalog=fixture_catalog)
    assert got == {"files": ["hierarcaps_test.csv"], "images": 3, "recorded": []}
    assert (to / "hierarcaps_test.csv").read_bytes() == HEAD_CSV.read_bytes()
    assert sorted(p.name for p in (to / "images").iterdir()) == sorted(_image_names())
    data = load_data(to)  # what `hierarcaps validate --data DIR` reads
    assert len(data.texts) == 3 and [p.name for p in data.images] == _image_names()
    # the images come before the CSV: a folder with the CSV has all its images
    assert [p for p, _ in Mirror.gets][-1] == "data/hierarcaps_test.csv"
    Mirror.gets.clear()
    download_official("test", to, DownloadConfig(official_base=mirror), progress=False, catalog=fixture_catalog)
    assert Mirror.gets == []  # a rerun checks what is there and fetches nothing


def test_a_file_that_does_not_match_its_pin_is_refused_and_never_kept(mirror, fixture_catalog, tmp_path):
    to, cfg = tmp_path / "test", DownloadConfig(official_base=mirror)
    name = _image_names()[1]
    good = Mirror.files[official.RELEASE_IMAGES + name]
    Mirror.files[official.RELEASE_IMAGES + name] = good[:-1] + b"X"
    with pytest.raises(DownloadError, match=rf"(?s){name}: sha256 mismatch: expected {hashlib.sha256(good).hexdigest()}.*pinned"):
        download_official("test", to, cfg, progress=False, catalog=fixture_catalog)
    assert not (to / "images" / name).exists() and not part_path(to / "images" / name).exists()
    assert not (to / "hierarcaps_test.csv").exists()  # the CSV waits for every image
    Mirror.files[official.RELEASE_IMAGES + name] = good
    Mirror.files["data/hierarcaps_test.csv"] += b"3,extra row,http://x/y.jpg\n"  # longer than pinned
    with pytest.raises(DownloadError, match="hierarcaps_test.csv: size mismatch"):
        download_official("test", to, cfg, progress=False, catalog=fixture_catalog)
    assert not (to / "hierarcaps_test.csv").exists() and not part_path(to / "hierarcaps_test.csv").exists()


def test_the_real_pins_refuse_a_different_test_expanded(mirror, tmp_path):
    pinned = CATALOG["test-expanded"].files[0]
    Mirror.files[pinned.path] = b"\0" * pinned.bytes  # right size, wrong bytes
    with pytest.raises(DownloadError, match=f"hierarcaps_test_expanded.csv.gz: sha256 mismatch: expected {pinned.sha256}"):
        download_official("test-expanded", tmp_path, DownloadConfig(official_base=mirror), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_an_interrupted_download_resumes_where_it_stopped(mirror, fixture_catalog, tmp_path):
    to, cfg = tmp_path / "test", DownloadConfig(official_base=mirror)
    names = _image_names()
    Mirror.cut = {official.RELEASE_IMAGES + n for n in names[:2]}  # every try of these drops halfway
    with pytest.raises(DownloadError, match="2 of 3 file"):
        download_official("test", to, cfg, progress=False, catalog=fixture_catalog)
    kept = {}
    for n in names[:2]:  # each retry went on from its .part, which is kept for the next run
        assert not (to / "images" / n).exists() and part_path(to / "images" / n).is_file()
        kept[n] = part_path(to / "images" / n).stat().st_size
        assert len(Mirror.files[official.RELEASE_IMAGES + n]) // 2 < kept[n] < len(Mirror.files[official.RELEASE_IMAGES + n])
    assert (to / "images" / names[2]).is_file() and not (to / "hierarcaps_test.csv").exists()
    Mirror.cut, Mirror.gets = set(), []
    download_official("test", to, cfg, progress=False, catalog=fixture_catalog)
    resumed = {p: start for p, start in Mirror.gets}
    for n in names[:2]:
        assert resumed[official.RELEASE_IMAGES + n] == kept[n]  # only the missing bytes were asked for
        assert (to / "images" / n).read_bytes() == Mirror.files[official.RELEASE_IMAGES + n]
    assert official.RELEASE_IMAGES + names[2] not in resumed and (to / "hierarcaps_test.csv").is_file()


def test_train_hash_is_recorded_at_first_download_and_checked_later(mirror, tmp_path):
    path = CATALOG["train"].files[0].path
    Mirror.files[path] = b"positive,negative\n" + b"a => b,c => d\n" * 500
    cfg = DownloadConfig(official_base=mirror)
    got = download_official("train", tmp_path, cfg, progress=False)
    assert got["recorded"] == ["hierarcaps_train.csv.gz"]
    lock = official.read_lock(tmp_path)["hierarcaps_train.csv.gz"]
    assert lock["sha256"] == hashlib.sha256(Mirror.files[path]).hexdigest() and lock["url"] == mirror + path
    # later downloads check the file against the lock: a damaged local copy is fetched again and checked
    (tmp_path / "hierarcaps_train.csv.gz").write_bytes(b"damaged")
    download_official("train", tmp_path, cfg, progress=False)
    assert (tmp_path / "hierarcaps_train.csv.gz").read_bytes() == Mirror.files[path]
    # finetune --data DIR checks the file it reads against the lock too
    from hierarcaps.finetune.data import load_training_data

    (tmp_path / "hierarcaps_train.csv.gz").write_bytes(Mirror.files[path] + b"e => f,g => h\n")
    with pytest.raises(DownloadError, match=f"hierarcaps_train.csv.gz: sha256 .* differs from the {lock['sha256']} recorded"):
        load_training_data(tmp_path)
    # ... and a release file that changed since is refused, naming the lock
    Mirror.files[path] = Mirror.files[path].replace(b"a => b", b"x => y")
    (tmp_path / "hierarcaps_train.csv.gz").unlink()
    with pytest.raises(DownloadError, match=rf"(?s)sha256 mismatch: expected {lock['sha256']}.*recorded in .*{LOCK}"):
        download_official("train", tmp_path, cfg, progress=False)
    assert not (tmp_path / "hierarcaps_train.csv.gz").exists()
    (tmp_path / LOCK).write_text("{}")
    with pytest.raises(DownloadError, match=f"{LOCK}: not a lock"):
        download_official("train", tmp_path, cfg, progress=False)


def test_coco_originals_are_fetched_from_coco_base_and_their_hashes_recorded(mirror, fixture_catalog, tmp_path):
    for name in _image_names():
        Mirror.files[official.COCO_IMAGES + name] = b"original " + name.encode()
    cfg = DownloadConfig(official_base=mirror, coco_base=mirror, images="coco")
    got = download_official("test", tmp_path, cfg, progress=False, catalog=fixture_catalog)
    assert got["recorded"] == sorted(f"images/{n}" for n in _image_names())
    assert (tmp_path / "images" / _image_names()[0]).read_bytes().startswith(b"original ")


def test_unknown_official_name_says_which_exist(tmp_path):
    with pytest.raises(DownloadError, match="official:tset: unknown; the official files are official:test, "):
        download_official("tset", tmp_path, progress=False)


def test_the_image_pins_are_the_images_the_test_csv_names(test_set):
    pins = {p.path for p in official.read_pins(CATALOG["test"].images)}
    assert len(pins) == 1000 and set(_image_names()) <= pins
    with open(test_set / "hierarcaps_test.csv", newline="") as fh:
        urls = [row["image_url"] for row in csv.DictReader(fh)]
    assert {u.rsplit("/", 1)[1] for u in urls} == pins
    assert all(u == DownloadConfig().coco_base + official.COCO_IMAGES + u.rsplit("/", 1)[1] for u in urls)


def _cli(to: Path, base: str) -> list[str]:
    return [sys.executable, "-m", "hierarcaps.cli", "download", "official:test", "--to", str(to),
            "--set", f"download.official_base={base}"]


def test_official_test_from_a_mirror_of_the_shared_copy_survives_a_kill(mirror, test_set, tmp_path):
    """1,000 rows + 1,000 images against the real pins, served from the shared (or an earlier downloaded) copy; the
    first download is killed while files hang half sent."""
    Mirror.files["data/hierarcaps_test.csv"] = (test_set / "hierarcaps_test.csv").read_bytes()
    for image in (test_set / "images").iterdir():
        Mirror.files[official.RELEASE_IMAGES + image.name] = image.read_bytes()
    stalled = sorted(Mirror.files)[1:4]
    Mirror.stall = set(stalled)
    to = tmp_path / "hierarcaps_test"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    proc = subprocess.Popen(_cli(to, mirror), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 60
        parts = [part_path(to / "images" / Path(p).name) for p in stalled]
        while not all(p.exists() and p.stat().st_size > 0 for p in parts) or not any((to / "images").glob("*.jpg")):
            assert proc.poll() is None and time.monotonic() < deadline, "the download ended before the stalled files arrived"
            time.sleep(0.1)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert not (to / "hierarcaps_test.csv").exists()
    Mirror.stall, Mirror.gets = set(), []
    Mirror.release.set()
    done = subprocess.run(_cli(to, mirror), env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "every sha256 checked" in done.stderr
    resumed = dict(Mirror.gets)
    assert all(resumed[p] > 0 for p in stalled)  # the killed files went on from their .part
    assert len(Mirror.gets) < 1001  # files finished before the kill were not fetched again
    data = load_data(to)
    assert len(data.texts) == 1000 and len(data.images) == 1000
    assert not list(to.rglob("*.part"))


def test_cli_refuses_official_settings_for_a_release_source(tmp_path):
    from typer.testing import CliRunner

    from hierarcaps.cli import app

    result = CliRunner().invoke(app, ["download", str(tmp_path), "--to", str(tmp_path / "x"), "--set", "download.coco_base=http://m/"])
    assert result.exit_code == 1 and "--set applies to official:... sources only" in " ".join(result.output.split())
    result = CliRunner().invoke(app, ["download", "official:test", "--to", str(tmp_path / "x"), "--manifest-sha256", "0" * 64])
    assert result.exit_code == 1 and "pinned in hierarcaps/official.py" in " ".join(result.output.split())  # rich wraps
