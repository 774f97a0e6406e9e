"""Bad input never crashes a build or loses a row: file-level problems raise naming the file, row-level ones are rejects."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from hierarcaps import inputs


def test_csv_rows_become_captions_or_named_rejects(tmp_path):
    path = tmp_path / "caps.csv"
    long_caption = "word " * 400
    path.write_bytes(
        b"caption,image_url\n"
        b"A dog on a beach.,u1\n"
        b"   ,u2\n"
        b",u3\n"
        + f"{long_caption},u4\n".encode()
        + b"A dog on a beach.,u5\n"
        b"Caf\xe9 with a red door,u6\n"  # latin-1 byte: not UTF-8
        b"A cat  sleeps\ton a sofa,u7\n"
    )
    captions, rejects = inputs.load_captions(path, max_chars=200)
    assert captions.num_rows + rejects.num_rows == 7
    assert captions["caption"].to_pylist() == ["A dog on a beach.", "A cat sleeps on a sofa"]
    assert captions["source_row"].to_pylist() == [0, 6]
    reasons = dict(zip(rejects["source_row"].to_pylist(), rejects["reason"].to_pylist()))
    assert reasons == {1: "empty", 2: "empty", 3: "too_long", 4: "duplicate", 5: "not_utf8"}
    details = rejects["detail"].to_pylist()
    assert all(d.startswith(f"row {r}:") for r, d in zip(rejects["source_row"].to_pylist(), details))
    assert "row 0" in details[rejects["reason"].to_pylist().index("duplicate")]


def test_jsonl_with_broken_lines(tmp_path):
    path = tmp_path / "caps.jsonl"
    path.write_text(json.dumps({"caption": "A red bus."}) + "\n{not json\n" + json.dumps([1, 2]) + "\n")
    captions, rejects = inputs.load_captions(path)
    assert captions["caption"].to_pylist() == ["A red bus."]
    assert sorted(rejects["reason"].to_pylist()) == ["unparsable_row", "unparsable_row"]
    assert any("line 2" in d for d in rejects["detail"].to_pylist())


def test_missing_caption_column_names_file_and_columns(tmp_path):
    path = tmp_path / "caps.csv"
    path.write_text("text,image_url\nA dog,u\n")
    with pytest.raises(inputs.InputError, match=r"caps\.csv.*no 'caption' column.*text"):
        inputs.load_captions(path)


def test_truncated_parquet_names_file(tmp_path):
    good = tmp_path / "good.parquet"
    pq.write_table(pa.table({"caption": [f"caption {i}" for i in range(100)]}), good)
    bad = tmp_path / "bad.parquet"
    bad.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(inputs.InputError, match=r"bad\.parquet.*truncated or corrupt"):
        inputs.load_captions(bad)


def test_parquet_binary_captions_are_checked_per_row(tmp_path):
    path = tmp_path / "bin.parquet"
    pq.write_table(pa.table({"caption": pa.array([b"A dog", b"\xff\xfe bad"], pa.binary())}), path)
    captions, rejects = inputs.load_captions(path)
    assert captions["caption"].to_pylist() == ["A dog"]
    assert rejects["reason"].to_pylist() == ["not_utf8"]


def test_official_hierarcaps_csv_round_trip(tmp_path, test_set):
    source = test_set / "hierarcaps_test.csv"
    table, rejects = inputs.load_hierarchies(source)
    assert table.num_rows == 1000 and rejects.num_rows == 0
    assert all(len(p) == 4 for p in table["positive"].to_pylist())
    assert table["negative"].null_count == 1000
    out = tmp_path / "out.csv"
    inputs.write_hierarchies_csv(table.slice(0, 5), out)
    again, _ = inputs.load_hierarchies(out)
    assert again["positive"].to_pylist() == table.slice(0, 5)["positive"].to_pylist()


def test_hierarchy_rows_with_wrong_tier_count_are_rejected(tmp_path):
    path = tmp_path / "h.csv"
    path.write_text("positive,negative,image_url\na => b => c => d,e => f => g => h,u\na => b,,u\n")
    table, rejects = inputs.load_hierarchies(path)
    assert table.num_rows == 1 and rejects["reason"].to_pylist() == ["not_4_tiers"]
    assert table["negative"].to_pylist() == [["e", "f", "g", "h"]]


def test_hub_style_source_goes_through_datasets(tmp_path):
    """`hf:<dataset>:<split>` is how the paper profile reads Conceptual Captions; a local dataset folder stands in."""
    folder = tmp_path / "cc"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"caption": ["a dog runs", "a cat sleeps", ""], "image_url": ["u1", "u2", "u3"]}),
                   folder / "data" / "train-00000-of-00001.parquet")
    captions, rejects = inputs.load_captions(f"hf:{folder}:train")
    assert captions["caption"].to_pylist() == ["a dog runs", "a cat sleeps"]
    assert captions["image_url"].to_pylist() == ["u1", "u2"]
    assert rejects["reason"].to_pylist() == ["empty"]
    with pytest.raises(inputs.InputError, match="cannot load the dataset"):
        inputs.load_captions(f"hf:{tmp_path / 'missing'}:train")


def test_build_input_stage_from_a_hub_style_source(tmp_path):
    from hierarcaps import pipeline
    from hierarcaps.config import load_profile

    folder = tmp_path / "cc"
    (folder / "data").mkdir(parents=True)
    pq.write_table(pa.table({"caption": [f"caption number {i}" for i in range(7)]}), folder / "data" / "train-00000-of-00001.parquet")
    profile = load_profile("offline", {"input.rows_per_shard": 3})
    manifest = pipeline.run_stage("input", tmp_path / "run", profile, source=f"hf:{folder}:train")
    assert manifest["stats"]["rows_out"] == 7 and len([s for s in manifest["shards"] if s["kind"] == "part"]) == 3
    assert pipeline.run_stage("input", tmp_path / "run", profile, source=f"hf:{folder}:train").get("skipped")
