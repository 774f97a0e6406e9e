"""publish -> serve with `python -m http.server` -> download -> `datasets` load, and every way a download must fail."""

from __future__ import annotations

import http.server
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import pyarrow as pa
import pytest
import yaml
from typer.testing import CliRunner

from hierarcaps import inputs, pipeline, schema, shards
from hierarcaps.download import DownloadError, download, part_path, verify_release
from hierarcaps.release import PublishError, publish
from range_server import send_range

ROOT = Path(__file__).resolve().parents[1]
SHARD_ROWS = (12, 0, 9)  # an empty shard too: a filter may reject a whole shard
NONEMPTY = sum(1 for n in SHARD_ROWS if n)
SEED_MODEL = "HuggingFaceTB/SmolLM2-135M-Instruct"


# ---------------------------------------------------------------- a small finished run


def _stage_manifest(stage: str, files: list[dict], rows_in: int, **extra) -> dict:
    rows_out = sum(f["rows"] for f in files if f["kind"] == "part")
    return {
        "stage": stage,
        "schema_version": schema.SCHEMA_VERSION,
        "fingerprint": shards.sha256_text(stage),
        "code_version": "0.1.0",
        "config": {"k": 1},
        "config_sha256": shards.sha256_text(stage + "config"),
        "shards": files,
        "stats": {"rows_in": rows_in, "rows_out": rows_out, "rows_rejected": rows_in - rows_out},
        "finished_at": "2026-11-25T00:00:00Z",
        **extra,
    }


def make_run(root: Path) -> Path:
    """A run with a real `input` stage, a seed manifest (models, prompt hash) and three `filter` shards."""
    run = root / "run"
    pipeline.build(ROOT / "data" / "coco_captions_100.parquet", run, "offline", stages=("input",))
    captions = shards.read_table(run / "input" / "part-00000.parquet").to_pylist()
    shards.write_manifest(run / "seed", _stage_manifest("seed", [], 24, models={"generator": SEED_MODEL},
                                                        prompt="seed_v1", prompt_sha256=shards.sha256_text("seed prompt")))
    files, start = [], 0
    for index, n in enumerate(SHARD_ROWS):
        rows = [
            {"id": c["id"], "caption": c["caption"], "image_url": c["image_url"],
             "positive": [f"something {i}", f"a scene {i}", f"a busy scene {i}", c["caption"]],
             "negative": None if i % 3 == 0 else [f"nothing {i}", f"no scene {i}", f"an empty room {i}", f"not {c['caption']}"],
             "source": "seed", "model": SEED_MODEL, "min_entail": 0.5 + i / 100, "min_contradict": 0.25}
            for i, c in enumerate(captions[start : start + n], start=start)
        ]
        start += n
        rejects = schema.rejects_table([{"id": f"r{index}", "stage": "filter", "reason": "not_entailed", "detail": "tier 2 -> 3: 0.1"}])
        files.append({**shards.write_table(pa.Table.from_pylist(rows, schema=schema.FILTERED), run / "filter" / shards.shard_name(index)), "kind": "part"})
        files.append({**shards.write_table(rejects, run / "filter" / shards.shard_name(index, "rejects")), "kind": "rejects"})
    shards.write_manifest(run / "filter", _stage_manifest("filter", files, start + len(SHARD_ROWS), models={"nli": "/home/builder/models/tiny-nli"},
                                                          thresholds={"entail": 0.5}, note="filter NLI is a stand-in"))
    return run


def flip_byte(path: Path, offset: int = 100) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> dict:
    """Published releases under one folder, served by `python -m http.server` on 127.0.0.1:
    good/, corrupt/ (a shard with a flipped byte) and truncated/ (a shard cut short)."""
    root = tmp_path_factory.mktemp("release")
    run = make_run(root)
    www = root / "www"
    good = publish(run, www / "good", include_rejects=True)
    for name in ("corrupt", "truncated"):
        shutil.copytree(good, www / name)
    flip_byte(www / "corrupt" / "data" / "part-00002.parquet")
    bad = www / "truncated" / "data" / "part-00000.parquet"
    bad.write_bytes(bad.read_bytes()[:-200])
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", str(port), "--bind", "127.0.0.1", "--directory", str(www)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(100):
            try:
                httpx.get(f"{url}/good/manifest.json", timeout=1).raise_for_status()
                break
            except httpx.HTTPError:
                time.sleep(0.05)
        else:
            raise RuntimeError("http.server did not start")
        yield {"run": run, "good": good, "url": url, "root": root}
    finally:
        server.terminate()
        server.wait(timeout=10)


# ---------------------------------------------------------------- publish


def test_publish_writes_verified_shards_manifest_csv_and_card(site):
    run, good = site["run"], site["good"]
    release = json.loads((good / "manifest.json").read_text())
    run_manifest = shards.read_manifest(run / "filter")
    # every non-empty shard, byte for byte (an empty one is left out: `datasets` cannot read a 0-row parquet file)
    assert [s["sha256"] for s in release["shards"]] == [s["sha256"] for s in run_manifest["shards"] if s["rows"]]
    assert not (good / "data" / "part-00001.parquet").exists()
    for entry in release["shards"] + release["files"]:
        path = good / entry["path"]
        assert shards.sha256_file(path) == entry["sha256"] and path.stat().st_size == entry["bytes"]
    assert release["totals"]["rows"] == sum(SHARD_ROWS) and release["totals"]["shards"] == NONEMPTY
    assert release["totals"]["rejected_rows"] == len(SHARD_ROWS)

    front_text = (good / "README.md").read_text().split("---\n")[1]
    front = yaml.safe_load(front_text)
    assert front["license"] == "cc-by-4.0"
    info = {c["config_name"]: c for c in front["dataset_info"]}
    assert [f["name"] for f in info["default"]["features"]] == schema.FILTERED.names
    assert info["default"]["splits"][0]["num_examples"] == sum(SHARD_ROWS)
    assert info["default"]["download_size"] == sum(e["bytes"] for e in release["shards"] if e["kind"] == "part")
    assert {c["config_name"]: c["data_files"][0]["path"] for c in front["configs"]} == {
        "default": "data/part-*.parquet", "rejects": "data/rejects-*.parquet"}
    prov = front["hierarcaps"]
    assert prov["source_sha256"] == shards.sha256_file(ROOT / "data" / "coco_captions_100.parquet")
    assert prov["stages"]["seed"]["models"] == {"generator": SEED_MODEL}
    assert prov["stages"]["seed"]["prompts"]["prompt_sha256"] == shards.sha256_text("seed prompt")
    assert prov["stages"]["filter"]["thresholds"] == {"entail": 0.5} and prov["profile"] == "offline"
    assert prov["stages"]["filter"]["models"] == {"nli": "tiny-nli"}  # a local model path is reduced to its name
    body = (good / "README.md").read_text()
    assert "/home/builder" not in body and "filter NLI is a stand-in" in body
    assert "stand-in models" in body and "Alper" in body and "ECCV 2024" in body

    # the CSV convenience file reads back with the official-format reader, tiers intact
    table, rejects = inputs.load_hierarchies(good / "hierarcaps.csv")
    published = pa.concat_tables([shards.read_table(good / e["path"]) for e in release["shards"] if e["kind"] == "part"])
    assert rejects.num_rows == 0
    assert table["positive"].to_pylist() == published["positive"].to_pylist()
    assert table["negative"].to_pylist() == published["negative"].to_pylist()


def test_publish_refuses_a_damaged_run_and_an_unfinished_stage(tmp_path, site):
    run = tmp_path / "run"
    shutil.copytree(site["run"], run)
    flip_byte(run / "filter" / "part-00002.parquet", offset=10)
    with pytest.raises(PublishError, match="part-00002.parquet.*sha256"):
        publish(run, tmp_path / "out")
    assert not (tmp_path / "out" / "manifest.json").exists()
    with pytest.raises(PublishError, match="generate.*has not finished"):
        publish(run, tmp_path / "out2", stage="generate")


# ---------------------------------------------------------------- download over HTTP


def _rows(table: pa.Table) -> list[dict]:
    return sorted(table.to_pylist(), key=lambda r: r["id"])


def test_http_download_round_trips_through_datasets(site, tmp_path):
    import datasets

    to = download(f"{site['url']}/good/", tmp_path / "copy", workers=3, progress=False)
    verify_release(to)
    original = pa.concat_tables([shards.read_table(p) for p in sorted((site["run"] / "filter").glob("part-*.parquet"))])
    loaded = datasets.load_dataset("parquet", data_files=str(to / "data" / "part-*.parquet"), split="train",
                                   cache_dir=str(tmp_path / "cache"))
    got = _rows(loaded.data.table)
    want = _rows(original)
    assert [r["positive"] for r in got] == [r["positive"] for r in want] and [r["id"] for r in got] == [r["id"] for r in want]
    assert got[0]["min_entail"] == pytest.approx(want[0]["min_entail"])
    # the card's `configs` make the folder itself loadable, rejects as their own config
    by_card = datasets.load_dataset(str(to), split="train", cache_dir=str(tmp_path / "cache"))
    assert by_card.num_rows == sum(SHARD_ROWS) and by_card.column_names == schema.FILTERED.names
    rejects = datasets.load_dataset(str(to), "rejects", split="train", cache_dir=str(tmp_path / "cache"))
    assert rejects.num_rows == len(SHARD_ROWS) and set(rejects["reason"]) == {"not_entailed"}

    # a rerun skips verified files (untouched), and refetches one that was damaged after download
    before = {p: p.stat().st_mtime_ns for p in (to / "data").iterdir()}
    flip_byte(to / "data" / "part-00000.parquet")
    download(f"{site['url']}/good", to, progress=False)
    verify_release(to)
    assert (to / "data" / "part-00002.parquet").stat().st_mtime_ns == before[to / "data" / "part-00002.parquet"]


@pytest.mark.parametrize(
    ("release", "shard", "message"),
    [("corrupt", "part-00002.parquet", r"sha256 mismatch: expected [0-9a-f]{64}, got [0-9a-f]{64}"),
     ("truncated", "part-00000.parquet", r"truncated: got \d+ of \d+ bytes")],
)
def test_bad_shard_is_refused_and_never_kept_under_its_name(site, tmp_path, release, shard, message):
    to = tmp_path / "copy"
    with pytest.raises(DownloadError, match=rf"1 of \d+ file\(s\).*\n  data/{shard}: {message}"):
        download(f"{site['url']}/{release}", to, progress=False)
    assert not (to / "data" / shard).exists()
    assert not (to / "manifest.json").exists()  # an incomplete download never looks complete
    good = [p.name for p in (to / "data").glob("*.parquet")]
    assert shard not in good and len(good) == NONEMPTY + len(SHARD_ROWS) - 1
    # a sha mismatch at full length is deleted; a short file is kept only as .part, to resume
    assert part_path(to / "data" / shard).exists() == (release == "truncated")


def test_pinned_manifest_hash_and_bad_sources(site, tmp_path):
    with pytest.raises(DownloadError, match="manifest.json sha256 mismatch"):
        download(f"{site['url']}/good", tmp_path / "a", progress=False, manifest_sha256="0" * 64)
    with pytest.raises(DownloadError, match="HTTP 404"):
        download(f"{site['url']}/missing", tmp_path / "b", progress=False)
    with pytest.raises(DownloadError, match="HF_HUB_OFFLINE"):  # the hub path is wired, and fails clearly offline
        download("someone/hierarcaps-demo", tmp_path / "c", progress=False)


def test_a_newer_release_into_the_same_folder_drops_files_it_no_longer_has(site, tmp_path):
    inputs_release = publish(site["run"], tmp_path / "inputs-release", stage="input")
    assert not (inputs_release / "hierarcaps.csv").exists()  # captions are not hierarchies: no HierarCaps CSV
    to = download(str(site["good"]), tmp_path / "copy", progress=False)
    assert (to / "data" / "part-00002.parquet").exists() and (to / "hierarcaps.csv").exists()
    download(str(inputs_release), to, progress=False)
    assert sorted(p.name for p in (to / "data").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    assert not (to / "hierarcaps.csv").exists()
    verify_release(to)


def test_hf_repo_id_goes_through_the_same_verification(site, tmp_path, monkeypatch):
    """Offline, `snapshot_download` serves a snapshot already in the hub cache: plant one there."""
    import huggingface_hub

    commit = "0" * 40
    repo = tmp_path / "hub" / "datasets--someone--demo"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(site["good"], repo / "snapshots" / commit)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    download("someone/demo", tmp_path / "copy", progress=False)
    verify_release(tmp_path / "copy")
    flip_byte(repo / "snapshots" / commit / "data" / "part-00000.parquet")
    with pytest.raises(DownloadError, match="part-00000.parquet: sha256 mismatch"):
        download("hf://datasets/someone/demo", tmp_path / "copy2", progress=False)
    assert not (tmp_path / "copy2" / "data" / "part-00000.parquet").exists()


def test_resume_from_partial_file_without_range_support(site, tmp_path):
    """python -m http.server ignores Range: a partial .part is replaced by a whole download, and verifies."""
    to = tmp_path / "copy"
    shard = site["good"] / "data" / "part-00000.parquet"
    part = part_path(to / "data" / shard.name)
    part.parent.mkdir(parents=True)
    part.write_bytes(shard.read_bytes()[:300])
    download(f"{site['url']}/good", to, progress=False)
    verify_release(to)
    assert not part.exists()


class _RangeHandler(http.server.SimpleHTTPRequestHandler):
    """Serves `bytes=N-` ranges, and records how many body bytes each path was sent."""

    sent: dict[str, int] = {}
    drop_once: set[str] = set()  # names whose first response is cut off halfway (a dropped connection)

    def do_GET(self) -> None:
        path = Path(self.translate_path(self.path))
        if not path.is_file():
            self.send_error(404)
            return
        _, body = send_range(self, path.read_bytes())
        if path.name in self.drop_once:
            self.drop_once.discard(path.name)
            body = body[: len(body) // 2]
            self.close_connection = True
        self.wfile.write(body)
        self.sent[path.name] = self.sent.get(path.name, 0) + len(body)

    def log_message(self, *args) -> None:
        pass


def test_resume_with_http_range_fetches_only_the_rest(site, tmp_path):
    handler = lambda *a, **k: _RangeHandler(*a, directory=str(site["good"]), **k)  # noqa: E731
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        shard = site["good"] / "data" / "part-00002.parquet"
        size = shard.stat().st_size
        part = part_path(tmp_path / "copy" / "data" / shard.name)
        part.parent.mkdir(parents=True)
        part.write_bytes(shard.read_bytes()[:400])
        dropped = site["good"] / "data" / "part-00000.parquet"
        _RangeHandler.drop_once.add(dropped.name)
        download(url, tmp_path / "copy", progress=False)
        verify_release(tmp_path / "copy")
        assert _RangeHandler.sent[shard.name] == size - 400  # only the missing tail was sent
        # the dropped connection was retried from where it stopped, not from byte 0
        assert _RangeHandler.sent[dropped.name] == dropped.stat().st_size and not _RangeHandler.drop_once

        # a .part with wrong bytes is resumed, fails its sha256, is deleted, and the rerun succeeds
        (tmp_path / "copy" / "data" / shard.name).unlink()
        part.write_bytes(b"\0" * 400)
        with pytest.raises(DownloadError, match=f"{shard.name}: sha256 mismatch"):
            download(url, tmp_path / "copy", progress=False)
        assert not part.exists() and not (tmp_path / "copy" / "data" / shard.name).exists()
        download(url, tmp_path / "copy", progress=False)
        verify_release(tmp_path / "copy")
    finally:
        server.shutdown()
        server.server_close()


# ---------------------------------------------------------------- CLI


def test_cli_publish_and_download(site, tmp_path):
    from hierarcaps.cli import app

    runner = CliRunner()
    result = runner.invoke(app, ["publish", str(site["run"]), "--to", str(tmp_path / "pub"), "--license", "cc-by-sa-4.0"])
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "pub" / "manifest.json").read_text())["license"] == "cc-by-sa-4.0"
    assert not list((tmp_path / "pub" / "data").glob("rejects-*"))  # rejects only with --include-rejects

    # publishing again into the same folder replaces the release (here: captions, which have no HierarCaps CSV)
    result = runner.invoke(app, ["publish", str(site["run"]), "--to", str(tmp_path / "pub"), "--stage", "input"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "pub" / "hierarcaps.csv").exists()
    assert sorted(p.name for p in (tmp_path / "pub" / "data").iterdir()) == ["part-00000.parquet", "part-00001.parquet"]
    (tmp_path / "foreign" / "data").mkdir(parents=True)
    (tmp_path / "foreign" / "data" / "mine.parquet").write_bytes(b"x")
    result = runner.invoke(app, ["publish", str(site["run"]), "--to", str(tmp_path / "foreign")])
    assert result.exit_code == 1 and (tmp_path / "foreign" / "data" / "mine.parquet").exists()

    result = runner.invoke(app, ["download", str(tmp_path / "pub"), "--to", str(tmp_path / "local"), "--workers", "2"])
    assert result.exit_code == 0, result.output
    verify_release(tmp_path / "local")

    result = runner.invoke(app, ["download", f"{site['url']}/corrupt", "--to", str(tmp_path / "bad")])
    assert result.exit_code == 1
    assert "part-00002.parquet: sha256 mismatch" in " ".join(result.output.split())
