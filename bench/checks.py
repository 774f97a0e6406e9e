"""The structural checks on the development share: keep rate overall and per rule (issue #11: all checks together must
keep >= 95% of its rows), plus random accepted rows and rejects of each degenerate-text rule to read.

    python bench/checks.py [--data ../shared/data/hierarcaps_coco_auto/hierarcaps_coco_auto.csv.gz] [--profile offline]

Each rule is measured alone (the others switched off) and in the real order (a row counts under the first rule it
breaks). Never run this on the 1K test set: it is for evaluation only.
"""

from __future__ import annotations

import argparse
import random
import time
from collections import Counter
from pathlib import Path

from hierarcaps.config import load_profile
from hierarcaps.inputs import load_hierarchies
from hierarcaps.judge import Judge

DEV = Path(__file__).resolve().parents[2] / "shared" / "data" / "hierarcaps_coco_auto" / "hierarcaps_coco_auto.csv.gz"
NEW_RULES = ("copied_example", "repeated_word", "non_words")


def judge_for(profile_name: str, only: str | None = None, none: bool = False) -> Judge:
    """The profile's judge; `only` keeps one new rule on, `none` switches all new rules off."""
    off = {f"filter.checks.{rule}": False for rule in NEW_RULES if none or (only and rule != only)}
    return Judge(load_profile(profile_name, off))


def reasons(judge: Judge, rows: list[dict]) -> list[str | None]:
    out = []
    for row in rows:
        failed = judge.structural(row["positive"], row["negative"], row["caption"])
        out.append(failed[0] if failed else None)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=DEV)
    parser.add_argument("--profile", default="offline")
    parser.add_argument("--show", type=int, default=5, help="rejects shown per rule")
    args = parser.parse_args()
    table, bad = load_hierarchies(args.data)
    rows = table.to_pylist()
    n = len(rows)
    print(f"{args.data.name}: {n} rows ({bad.num_rows} unparsable, not counted)")

    started = time.perf_counter()
    full = judge_for(args.profile)
    fates = reasons(full, rows)
    seconds = time.perf_counter() - started
    base = reasons(judge_for(args.profile, none=True), rows)
    print(f"\nall checks: keep {fates.count(None) / n:.2%} ({fates.count(None)}/{n}; {n / seconds:.0f} rows/s)")
    print(f"checks before issue #11 alone: keep {base.count(None) / n:.2%}")
    print("\nrule alone (others of issue #11 off)   rows rejected")
    for rule in NEW_RULES:
        alone = reasons(judge_for(args.profile, only=rule), rows)
        extra = sum(1 for a, b in zip(alone, base) if a is not None and b is None)
        print(f"  {rule:<36} {extra / n:6.2%}  ({extra})")
    print("\nfirst failing rule, in order             rows")
    for reason, count in Counter(r for r in fates if r).most_common():
        print(f"  {reason:<36} {count / n:6.2%}  ({count})")

    rng = random.Random(0)
    kept = [i for i, r in enumerate(fates) if r is None]
    print("\n10 random accepted rows:")
    for i in rng.sample(kept, 10):
        print(f"  + {' => '.join(rows[i]['positive'])}\n    - {' => '.join(rows[i]['negative'])}")
    old = set(base)
    for reason in sorted({r for r in fates if r and r not in old}):
        hits = [i for i, r in enumerate(fates) if r == reason]
        print(f"\n{reason}: {args.show} of {len(hits)}")
        for i in rng.sample(hits, min(args.show, len(hits))):
            print(f"  {full.structural(rows[i]['positive'], rows[i]['negative'], rows[i]['caption'])[1]}  [caption: {rows[i]['caption']}]")


if __name__ == "__main__":
    main()
