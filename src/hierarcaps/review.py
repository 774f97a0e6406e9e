"""A blind review kit (issue #18 item 3): a shuffled sheet with the source hidden, a key kept apart, and scores.

`sample()` draws rows from a run's accepted rows (and, to compare, from a second run or a HierarCaps CSV) and writes
DIR/sheet.{json,md,csv} (opaque ids, tiers joined by " => ", nothing that tells the sources apart), DIR/brief.md (the
rubric's brief for one reviewer) and DIR/key.json (which source each id came from and the row's identity there).
`score()` reads reviewers' labels files (the JSON list docs/review.md specifies) and returns, per source, the share of
valid positives, negative tiers 1-4 and whole rows, and the agreement between reviewers (share equal, Cohen's kappa).
The rubric, with examples of every failure kind, is docs/review.md.
"""

from __future__ import annotations

import csv
import gzip
import io
import json
import random
from pathlib import Path

from hierarcaps import schema, shards
from hierarcaps.inputs import HIERARCHY_CSV_SUFFIXES, InputError, load_hierarchies

SHEET, SHEET_MD, SHEET_CSV, BRIEF_FILE, KEY = "sheet.json", "sheet.md", "sheet.csv", "brief.md", "key.json"
RUN_SOURCE, COMPARE_SOURCE = "run", "compare"
KEY_VERSION = 1
# One row's verdicts in a fixed order: the positive hierarchy, then negative tiers 1..4.
VERDICTS = ("positive", "negative_1", "negative_2", "negative_3", "negative_4")

# The brief each reviewer gets, word for word (docs/review.md quotes it; a test keeps the two the same).
BRIEF = """You are an annotator checking caption hierarchies, the way a careful human reviewer would. The file SHEET holds N items.
Each item has a positive hierarchy of 4 tiers (tier 1 most generic ... tier 4 = a full image caption) and a negative
hierarchy of 4 tiers, separated by " => ".

Definitions (from the HierarCaps paper):
- POSITIVE is valid when: tier 4 is a fluent caption; each tier i (1..3) is ENTAILED by tier i+1 (if tier i+1 is true of an
  image, tier i must be true of it), so the tiers go from generic to specific; tier 1 is a short generic concept; every tier
  is sensible English describing the same image (no garbage, no wrong word sense such as "hot dog" -> "dog").
- NEGATIVE tier i is valid when it LOGICALLY CONTRADICTS positive tier i (both cannot be true of the same image, e.g. "goat"
  vs "frog", "a dog on a beach" vs "a dog in a park"), AND, for i >= 2, it ENTAILS positive tier i-1 (e.g. "frog" entails
  "animal"), AND it is sensible English. A negative that is merely different but compatible (could be true of the same
  image, e.g. "a dog on a beach" vs "a brown dog"), a paraphrase or synonym, a more specific version of the positive, or
  garbage, is NOT valid.

For every item, judge the positive and each of the 4 negative tiers. Be strict but fair; judge only what is written. Work
through all items one by one; do not skip any and do not guess in bulk.

Write your answer as a JSON list to OUTFILE, one object per item:
{"id": "...", "positive_valid": true/false, "negative_valid": [t1, t2, t3, t4], "note": "<= 15 words on the main error, or ''"}
Then reply with a short summary: how many items have a valid positive, how many have all 4 negative tiers valid, how many
are fully valid, and per negative tier the share valid. Use only the sheet.
"""


class ReviewError(ValueError):
    """Bad input to the review kit; the message names the path and what was expected."""


# --- sources ---


def _csv_columns(path: Path) -> list[str]:
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rb") as raw, io.TextIOWrapper(raw, encoding="utf-8", errors="replace", newline="") as fh:
            return next(csv.reader(fh), [])
    except (OSError, EOFError, csv.Error) as err:
        raise ReviewError(f"{path}: not a readable CSV: {err}") from None


def _load_source(path: str | Path) -> dict:
    """{"path", "kind": run|csv, "rows": [{"positive", "negative", "index", "row_id", ["source_row"]}]}: only rows
    with a 4-tier negative, since the rubric judges the negative tiers too; `available` counts them."""
    path = Path(path)
    if path.is_dir():
        # the stages package only when a run is read
        from hierarcaps.stages.refilter import accepted_rows

        manifest = path / "filter" / shards.MANIFEST
        if not manifest.exists():
            raise ReviewError(f"{path}: no filter shards ({manifest} is missing); expected a run folder built by "
                              "`hierarcaps build` or `hierarcaps filter`")
        try:
            table = accepted_rows(path)
        except shards.ShardError as err:
            raise ReviewError(f"{path}: cannot read the filter shards: {err}") from None
        kind, source_rows = "run", [None] * table.num_rows
    elif path.is_file() and path.name.lower().endswith(HIERARCHY_CSV_SUFFIXES):
        columns = _csv_columns(path)
        missing = [c for c in ("positive", "negative") if c not in columns]
        if missing:
            raise ReviewError(f"{path}: expected an official HierarCaps CSV with columns positive,negative,image_url "
                              f"(tiers joined by ' => '); missing {', '.join(missing)}; found {', '.join(columns) or 'none'}")
        try:
            table, rejects = load_hierarchies(path)
        except InputError as err:
            raise ReviewError(str(err)) from None
        # load_hierarchies keeps file order and drops rows that are not 4 tiers: recover each kept row's data row.
        bad = set(rejects["source_row"].to_pylist())
        source_rows = [r for r in range(table.num_rows + rejects.num_rows) if r not in bad]
        kind = "csv"
    elif not path.exists():
        raise ReviewError(f"{path}: not found; expected a run folder or a HierarCaps CSV (.csv / .csv.gz)")
    else:
        raise ReviewError(f"{path}: expected a run folder or a HierarCaps CSV (.csv / .csv.gz)")
    rows = []
    for index, row in enumerate(table.select(["id", "positive", "negative"]).to_pylist()):
        if row["negative"] is None or len(row["negative"]) != schema.TIERS:
            continue
        entry = {"positive": list(row["positive"]), "negative": list(row["negative"]), "index": index, "row_id": row["id"]}
        if source_rows[index] is not None:
            entry["source_row"] = source_rows[index]
        rows.append(entry)
    return {"path": str(path), "kind": kind, "total": table.num_rows, "rows": rows}


def _caption_key(text: str) -> str:
    """Tier 4 as compared across sources: case, spacing and a final full stop do not make another caption."""
    return " ".join(text.lower().split()).rstrip(" .")


def _check_enough(source: dict, n: int, label: str) -> None:
    available = len(source["rows"])
    if n > available:
        raise ReviewError(f"{source['path']}: --n {n} is more than the {label} source holds: {available} row(s) with a "
                          f"4-tier negative (of {source['total']} row(s))")


def _pick(sources: dict[str, dict], n: int, rng: random.Random) -> tuple[dict[str, list[int]], dict]:
    """Row positions to review per source, and the rule used. With two sources, captions both hold come first, so the
    comparison is like for like; the rest (if too few are shared) are drawn from each source's other rows."""
    if COMPARE_SOURCE not in sources:
        rows = sources[RUN_SOURCE]["rows"]
        return {RUN_SOURCE: rng.sample(range(len(rows)), n)}, {"rule": "random", "shared_captions": None}
    first: dict[str, dict[str, int]] = {}
    for name, source in sources.items():
        first[name] = {}
        for k, row in enumerate(source["rows"]):
            first[name].setdefault(_caption_key(row["positive"][-1]), k)  # the first row of a caption stands for it
    shared = [c for c in first[RUN_SOURCE] if c in first[COMPARE_SOURCE]]  # run order: deterministic
    chosen = rng.sample(shared, min(n, len(shared)))
    picks = {name: [first[name][c] for c in chosen] for name in sources}
    if len(chosen) == n:
        rule = "shared captions"
    else:
        rule = "shared captions, then independent" if chosen else "independent"
        used = set(chosen)
        for name, source in sources.items():
            rest = [k for k, row in enumerate(source["rows"]) if _caption_key(row["positive"][-1]) not in used]
            picks[name] += rng.sample(rest, n - len(chosen))
    return picks, {"rule": rule, "shared_captions": len(shared), "shared_used": len(chosen)}


# --- writing the kit ---


def _sheet_md(items: list[dict]) -> str:
    lines = [f"# Review sheet ({len(items)} items)", "",
             "Judge each item with the rubric of brief.md; the tiers go from generic (1) to specific (4).", ""]
    for item in items:
        lines += [f"## {item['id']}", "", f"- positive: {item['positive']}", f"- negative: {item['negative']}", ""]
    return "\n".join(lines)


def _sheet_csv(items: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["id", "positive", "negative"])
    writer.writerows([item["id"], item["positive"], item["negative"]] for item in items)
    return buffer.getvalue()


def _write_kit(out: Path, files: dict[str, str], force: bool) -> None:
    """All files into a temp folder beside `out`, then one rename: `out` is never left half written."""
    with shards.replacing_dir(out) as tmp:
        for name, text in files.items():
            (tmp / name).write_text(text, encoding="utf-8")


def sample(run: str | Path, out: str | Path, n: int = 40, compare: str | Path | None = None, seed: int = 0,
           force: bool = False) -> dict:
    """Write the blind kit for `n` rows of `run` (and `n` of `compare`) into `out`; return the key (as key.json holds).

    Deterministic given the sources and `seed`. Refuses (ReviewError) before writing anything when a source is not a
    run with filter shards or a HierarCaps CSV, when n exceeds what a source holds, or when `out` exists without force.
    """
    out = Path(out)
    if n < 1:
        raise ReviewError(f"--n {n}: need at least 1 row")
    if out.exists() and not force:
        raise ReviewError(f"{out}: already exists; pick another --out or pass --force to replace it")
    if out.exists() and not out.is_dir():
        raise ReviewError(f"{out}: exists and is not a folder; refusing to replace it")
    sources = {RUN_SOURCE: _load_source(run)}
    if compare is not None:
        sources[COMPARE_SOURCE] = _load_source(compare)
    for name, source in sources.items():
        _check_enough(source, n, name)
    rng = random.Random(seed)
    picks, rule = _pick(sources, n, rng)
    drawn = [(name, sources[name]["rows"][k]) for name in sources for k in picks[name]]
    rng.shuffle(drawn)
    ids: list[str] = []
    while len(ids) < len(drawn):  # opaque: random, so neither the id nor the sheet order tells the source
        candidate = f"{rng.getrandbits(32):08x}"
        if candidate not in ids:
            ids.append(candidate)
    items, key_rows = [], {}
    for row_id, (name, row) in zip(ids, drawn):
        items.append({"id": row_id, "positive": schema.join_tiers(row["positive"]), "negative": schema.join_tiers(row["negative"])})
        key_rows[row_id] = {"source": name, **{k: row[k] for k in ("index", "row_id", "source_row") if k in row},
                            "caption": row["positive"][-1]}
    sheet_text = json.dumps(items, indent=2, ensure_ascii=False) + "\n"
    key = {
        "version": KEY_VERSION,
        "seed": seed,
        "n_per_source": n,
        "sources": {name: {"path": s["path"], "kind": s["kind"], "rows": s["total"], "with_negative": len(s["rows"]),
                           "sampled": len(picks[name])} for name, s in sources.items()},
        **rule,
        "sheet_sha256": shards.sha256_text(sheet_text),
        "rows": key_rows,
    }
    brief = BRIEF.replace("SHEET", SHEET_MD).replace("N items", f"{len(items)} items").replace("OUTFILE", "labels-<reviewer>.json")
    _write_kit(out, {SHEET: sheet_text, SHEET_MD: _sheet_md(items), SHEET_CSV: _sheet_csv(items), BRIEF_FILE: brief,
                     KEY: json.dumps(key, indent=2, ensure_ascii=False) + "\n"}, force)
    return key


# --- scoring ---


def _read_json(path: Path, what: str):
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ReviewError(f"{path}: not found; expected {what}") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ReviewError(f"{path}: not valid JSON ({err}); expected {what}") from None


def load_kit(review_dir: Path) -> tuple[list[str], dict]:
    sheet = _read_json(review_dir / SHEET, "the sheet `hierarcaps review sample` writes")
    key = _read_json(review_dir / KEY, "the key `hierarcaps review sample` writes")
    if not isinstance(sheet, list) or not all(isinstance(item, dict) and "id" in item for item in sheet):
        raise ReviewError(f"{review_dir / SHEET}: expected a JSON list of items with an 'id'")
    ids = [str(item["id"]) for item in sheet]
    if not isinstance(key, dict) or not isinstance(key.get("rows"), dict) or set(key["rows"]) != set(ids):
        raise ReviewError(f"{review_dir / KEY}: does not map exactly the ids of {review_dir / SHEET}; "
                          "the two must come from the same `hierarcaps review sample`")
    return ids, key


def _short(values: list[str], limit: int = 200) -> str:
    return ", ".join(values[:limit]) + (f", ... ({len(values) - limit} more)" if len(values) > limit else "")


def load_labels(path: Path, ids: list[str]) -> tuple[dict[str, list[bool]], list[str]]:
    """(verdicts per id in VERDICTS order, problems): every problem of the file is listed, not only the first."""
    data = _read_json(path, "a JSON list of labels (docs/review.md)")
    if not isinstance(data, list):
        return {}, [f"{path}: expected a JSON list of label objects, found {type(data).__name__}"]
    known, verdicts, problems = set(ids), {}, []
    unknown, duplicate, no_id, malformed = [], [], [], []
    for k, entry in enumerate(data):
        if not isinstance(entry, dict) or not isinstance(entry.get("id"), str):
            no_id.append(f"#{k}")
            continue
        row_id = entry["id"]
        if row_id not in known:
            unknown.append(row_id)
            continue
        if row_id in verdicts:
            duplicate.append(row_id)
            continue
        positive, negative = entry.get("positive_valid"), entry.get("negative_valid")
        wrong = []
        if not isinstance(positive, bool):
            wrong.append("positive_valid is not true/false")
        if not (isinstance(negative, list) and len(negative) == schema.TIERS and all(isinstance(v, bool) for v in negative)):
            wrong.append(f"negative_valid is not a list of {schema.TIERS} true/false")
        if wrong:
            malformed.append(f"{row_id} ({'; '.join(wrong)})")
            verdicts[row_id] = None  # present, so it is not also reported missing
            continue
        verdicts[row_id] = [positive, *negative]
    missing = [i for i in ids if i not in verdicts]
    for label, values in (("entries without a string 'id' (position in the list)", no_id), ("ids not in the sheet", unknown),
                          ("ids labelled twice", duplicate), ("ids of the sheet not labelled", missing),
                          ("entries with missing or malformed verdicts", malformed)):
        if values:
            problems.append(f"{path}: {len(values)} {label}: {_short(values)}")
    return verdicts, problems


def _shares(rows: list[list[bool]]) -> dict:
    """Share valid of each verdict kind and of whole rows; `rows` is never empty (a source is listed by its rows)."""
    count = len(rows)

    def share(values) -> float:
        return sum(values) / count

    return {"positive": share(r[0] for r in rows),
            "negative": [share(r[1 + t] for r in rows) for t in range(schema.TIERS)],
            "whole": share(all(r) for r in rows)}


def _mean(entries: list[dict]) -> dict:
    def avg(values) -> float:
        values = list(values)
        return sum(values) / len(values)

    return {"positive": avg(e["positive"] for e in entries),
            "negative": [avg(e["negative"][t] for e in entries) for t in range(schema.TIERS)],
            "whole": avg(e["whole"] for e in entries)}


def cohen_kappa(a: list[bool], b: list[bool]) -> float | None:
    """Cohen's kappa of two raters' verdicts; None where it is undefined (both raters gave one same verdict throughout,
    so chance agreement is 1)."""
    if not a:
        return None
    if len(set(a) | set(b)) < 2:
        return None
    try:
        from sklearn.metrics import cohen_kappa_score
    except ImportError:
        return _kappa(a, b)
    return float(cohen_kappa_score(a, b))


def _kappa(a: list[bool], b: list[bool]) -> float | None:
    """kappa = (p_o - p_e) / (1 - p_e), p_e from each rater's own rate of True (the fallback without scikit-learn)."""
    count = len(a)
    p_o = sum(x == y for x, y in zip(a, b)) / count
    rate_a, rate_b = sum(a) / count, sum(b) / count
    p_e = rate_a * rate_b + (1 - rate_a) * (1 - rate_b)
    return None if p_e == 1 else (p_o - p_e) / (1 - p_e)


def _agreement(first: dict[str, list[bool]], second: dict[str, list[bool]], ids: list[str]) -> dict:
    a = [v for i in ids for v in first[i]]
    b = [v for i in ids for v in second[i]]
    per_tier = {}
    for t, name in enumerate(VERDICTS):
        ta, tb = [first[i][t] for i in ids], [second[i][t] for i in ids]
        per_tier[name] = {"equal": sum(x == y for x, y in zip(ta, tb)) / len(ids), "kappa": cohen_kappa(ta, tb)}
    return {"verdicts": len(a), "equal": sum(x == y for x, y in zip(a, b)) / len(a), "kappa": cohen_kappa(a, b),
            "per_tier": per_tier}


def score(review_dir: str | Path, labels: list[str | Path], json_out: str | Path | None = None) -> dict:
    """Shares valid per source (mean of reviewers, and per reviewer) and the agreement of each pair of reviewers.

    Raises ReviewError listing every unknown, missing, duplicate or malformed label of every file before scoring.
    """
    review_dir = Path(review_dir)
    if not labels:
        raise ReviewError("no labels file given; pass --labels A.json (and --labels B.json for agreement)")
    ids, key = load_kit(review_dir)
    names = [str(p) for p in labels]
    if len(set(names)) != len(names):
        raise ReviewError(f"the same labels file is given twice: {', '.join(sorted({n for n in names if names.count(n) > 1}))}")
    reviewers, problems = {}, []
    for path in labels:
        verdicts, found = load_labels(Path(path), ids)
        reviewers[str(path)] = verdicts
        problems += found
    if problems:
        raise ReviewError("labels do not match the sheet " + str(review_dir / SHEET) + ":\n  " + "\n  ".join(problems))
    by_source: dict[str, list[str]] = {}
    for row_id in ids:
        by_source.setdefault(key["rows"][row_id]["source"], []).append(row_id)
    listed = key.get("sources", {})
    order = [s for s in listed if s in by_source] + [s for s in by_source if s not in listed]  # run, then compare
    sources = {}
    for name in order:
        source_ids = by_source[name]
        per_reviewer = {r: _shares([v[i] for i in source_ids]) for r, v in reviewers.items()}
        sources[name] = {"path": listed.get(name, {}).get("path"), "rows": len(source_ids),
                         "mean": _mean(list(per_reviewer.values())), "reviewers": per_reviewer}
    pairs = [(a, b) for k, a in enumerate(names) for b in names[k + 1:]]
    agreement = [{"reviewers": [a, b], **_agreement(reviewers[a], reviewers[b], ids)} for a, b in pairs]
    result = {"review_dir": str(review_dir), "items": len(ids), "reviewers": names, "rule": key.get("rule"),
              "sources": sources, "agreement": agreement}
    if json_out is not None:
        shards.atomic_write_json(Path(json_out), result)
    return result


def score_tables(result: dict) -> list:
    """Rich tables of a score(): shares per source and reviewer, then agreement per reviewer pair."""
    from rich.table import Table

    def pct(value) -> str:
        return f"{value:.0%}"

    def kappa(value) -> str:
        return "undefined" if value is None else f"{value:.3f}"

    shares = Table(title=f"share valid ({result['items']} items, {len(result['reviewers'])} reviewer(s))")
    for column in ("source", "reviewer", "rows", "positive", "neg 1", "neg 2", "neg 3", "neg 4", "whole row"):
        shares.add_column(column, justify="left" if column in ("source", "reviewer") else "right", overflow="fold")
    for name, entry in result["sources"].items():
        label = f"{name} ({entry['path']})" if entry.get("path") else name
        lines = [("mean of reviewers", entry["mean"])] if len(entry["reviewers"]) > 1 else []
        lines += list(entry["reviewers"].items())
        for k, (who, s) in enumerate(lines):
            shares.add_row(label if k == 0 else "", who, str(entry["rows"]) if k == 0 else "", pct(s["positive"]),
                           *(pct(v) for v in s["negative"]), pct(s["whole"]))
    tables = [shares]
    if result["agreement"]:
        agree = Table(title="agreement between reviewers")
        for column in ("reviewers", "verdicts", "equal", "kappa", *VERDICTS):
            agree.add_column(column, justify="left" if column == "reviewers" else "right", overflow="fold")
        for entry in result["agreement"]:
            agree.add_row(" vs ".join(entry["reviewers"]), str(entry["verdicts"]), pct(entry["equal"]), kappa(entry["kappa"]),
                          *(f"{pct(entry['per_tier'][t]['equal'])} / {kappa(entry['per_tier'][t]['kappa'])}" for t in VERDICTS))
        tables.append(agree)
    return tables
