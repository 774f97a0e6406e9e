"""The dataset card (README.md) of a published release, in the Hugging Face dataset-card format.

The YAML front matter is what the hub and `datasets.load_dataset(dir)` read: `configs` (which files make which
config), `dataset_info` (features and sizes, written by `datasets` itself so the types match what it loads),
`license`, plus a `hierarcaps` block with the build's provenance. The body is for people.
"""

from __future__ import annotations

import pyarrow as pa

CITATION = """\
@inproceedings{alper2024emergent,
  title     = {Emergent Visual-Semantic Hierarchies in Image-Text Representations},
  author    = {Alper, Morris and Averbuch-Elor, Hadar},
  booktitle = {European Conference on Computer Vision (ECCV)},
  year      = {2024}
}"""

# What each column means, for the card's table; columns not listed are shown without a description.
COLUMN_DOCS = {
    "id": "row id (sha1 prefix of the caption, or the source id)",
    "caption": "the original caption (= tier 4 of `positive`)",
    "image_url": "URL of the captioned image, when the input had one",
    "positive": "4 captions from generic (tier 1) to specific (tier 4 = the caption); each entails the one before",
    "negative": "4 captions that contradict `positive` tier by tier (may be null)",
    "source": "which stage wrote the row: seed / augment / generate / external",
    "model": "model id that wrote the row",
    "min_entail": "lowest NLI entailment score along the positive chain (why the filter kept it)",
    "min_contradict": "lowest NLI contradiction score between positive and negative tiers",
    "stage": "stage that rejected the row",
    "reason": "short rule name of the rejection",
    "detail": "human-readable reason: failing pair, scores, parse error",
}


def size_category(rows: int) -> str:
    """The hub's `size_categories` tag for a row count."""
    for limit, label in ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M")):
        if rows < limit:
            return label
    return "1M<n<10M" if rows < 10_000_000 else "10M<n<100M"


def type_name(arrow_type: pa.DataType) -> str:
    """A short type for people: `list<string>[4]` instead of Arrow's `fixed_size_list<element: string>[4]`."""
    if pa.types.is_fixed_size_list(arrow_type):
        return f"list<{type_name(arrow_type.value_type)}>[{arrow_type.list_size}]"
    if pa.types.is_list(arrow_type) or pa.types.is_large_list(arrow_type):
        return f"list<{type_name(arrow_type.value_type)}>"
    return str(arrow_type)


def front_matter(
    configs: dict[str, dict],
    license: str,
    provenance: dict,
    pretty_name: str,
) -> dict:
    """Card metadata. `configs` maps a config name to {"pattern", "schema", "rows", "num_bytes", "download_bytes"}."""
    import datasets
    from datasets.info import DatasetInfosDict
    from huggingface_hub import DatasetCardData

    card = DatasetCardData(
        license=license,
        language=["en"],
        pretty_name=pretty_name,
        size_categories=[size_category(configs["default"]["rows"])],
        task_categories=["text-retrieval", "zero-shot-image-classification"],
        tags=["hierarchies", "image-captions", "hierarcaps", "synthetic"],
        configs=[
            {"config_name": name, "data_files": [{"split": "train", "path": c["pattern"]}], **({"default": True} if name == "default" else {})}
            for name, c in configs.items()
        ],
    )
    infos = DatasetInfosDict(
        {
            name: datasets.DatasetInfo(
                features=datasets.Features.from_arrow_schema(c["schema"]),
                splits=datasets.SplitDict(
                    {"train": datasets.SplitInfo(name="train", num_bytes=c["num_bytes"], num_examples=c["rows"])}
                ),
                download_size=c["download_bytes"],
                dataset_size=c["num_bytes"],
            )
            for name, c in configs.items()
        }
    )
    infos.to_dataset_card_data(card)  # datasets' own writer, so the YAML types are the ones it reads back
    data = card.to_dict()
    data["hierarcaps"] = provenance
    return data


def body(
    pretty_name: str,
    schema: pa.Schema,
    provenance: dict,
    totals: dict,
    csv_name: str | None,
    include_rejects: bool,
) -> str:
    """The human-readable part of the card (markdown)."""
    stages = provenance.get("stages", {})
    lines = [
        f"# {pretty_name}",
        "",
        "Caption hierarchies in the style of **HierarCaps** (Alper & Averbuch-Elor, ECCV 2024): each row expands an image",
        "caption into four captions from generic to specific (tier 4 is the caption itself), each entailed by the next,",
        "optionally with a negative hierarchy that contradicts it tier by tier. Built with the `hierarcaps` pipeline",
        f"(code {provenance.get('code_version', '?')}, profile `{provenance.get('profile', '?')}`, built {provenance.get('build_date', '?')}).",
        "",
        f"- rows: **{totals['rows']}** in {totals['shards']} parquet shard(s), {totals['bytes']} bytes",
        f"- published stage: `{provenance.get('stage')}`; input file sha256 `{provenance.get('source_sha256') or 'unknown'}`",
        "",
    ]
    if provenance.get("profile") == "offline":
        lines += [
            "> **Warning: stand-in models.** This release was built with the `offline` profile, which runs on a CPU with",
            "> no network: a 135M-parameter LLM, a tiny student trained from scratch and a small NLI stand-in. The rows",
            "> exercise the pipeline; they are not of the quality of the paper's data. Rebuild with the `paper` profile",
            "> for real use.",
            "",
        ]
    for note in provenance.get("notes", []):
        lines += [f"> Note: {note}", ""]
    lines += ["## Columns", "", "| column | type | meaning |", "|---|---|---|"]
    lines += [f"| `{f.name}` | `{type_name(f.type)}` | {COLUMN_DOCS.get(f.name, '')} |" for f in schema]
    lines += ["", "## How it was built", "", "| stage | rows in | rows out | rejected | models | prompts |", "|---|---|---|---|---|---|"]
    for name, info in stages.items():
        models = ", ".join(f"{k}: `{v}`" for k, v in info.get("models", {}).items()) or "-"
        prompts = ", ".join(f"{k}: `{str(v)[:16]}`" for k, v in info.get("prompts", {}).items()) or "-"
        lines.append(f"| {name} | {info.get('rows_in', '-')} | {info.get('rows_out', '-')} | {info.get('rows_rejected', '-')} | {models} | {prompts} |")
    lines += [
        "",
        "Every stage's config hash, fingerprint and prompt hashes are in the front matter (`hierarcaps:`).",
        "",
        "## Files",
        "",
        "- `data/part-*.parquet`: the rows (config `default`)",
    ]
    if include_rejects:
        lines.append("- `data/rejects-*.parquet`: rows the stage rejected, with `reason` and `detail` (config `rejects`)")
    if csv_name:
        lines.append(f"- `{csv_name}`: the same rows in the official HierarCaps CSV format (`positive,negative,image_url`, tiers joined by ` => `)")
    lines += [
        "- `manifest.json`: sha256, byte size and row count of every file",
        "",
        "## Download and verify",
        "",
        "```bash",
        "hierarcaps download <url-of-this-folder | local-dir | hf-repo-id> --to my_copy   # parallel, resumable, checks every sha256",
        "```",
        "",
        "```python",
        "from datasets import load_dataset",
        'ds = load_dataset("parquet", data_files="my_copy/data/part-*.parquet", split="train")',
        "# or: load_dataset(\"my_copy\")  (reads this card's `configs`)",
        "```",
        "",
        "`hierarcaps download` refuses a file whose size or sha256 differs from `manifest.json` and never leaves it under",
        "its final name. To check by hand, compare `sha256sum data/*.parquet` with the manifest's `sha256` fields.",
        "",
        "## Citation",
        "",
        "If you use this data, cite the paper that defined HierarCaps:",
        "",
        "```bibtex",
        CITATION,
        "```",
        "",
    ]
    return "\n".join(lines)


def render(front: dict, text: str) -> str:
    import yaml

    return "---\n" + yaml.safe_dump(front, sort_keys=False, allow_unicode=True) + "---\n\n" + text
