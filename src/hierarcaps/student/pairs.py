"""The student's training pairs, one definition for the distill stage, the generate stage and the shipped start.

A direction tag starts every source; tiers are joined with " => ":
- s2g (specific -> general): "s2g: <caption>"  ->  "t1 => t2 => t3"  (the caption stays tier 4, never generated)
- g2s (general -> specific), i = 0..3: "g2s: t1 => ... => ti"  ->  "t(i+1) => ... => t4"; i = 0 is "g2s:" alone.
- neg (negative tier i, i = 1..4): "neg: t1 => ... => t(i-1) | p_i"  ->  "n_i". The source holds what the negative
  must entail (the positive prefix) and what it must contradict (positive tier i), so the student learns to write a
  sibling of p_i, not just any continuation of the prefix. The generate stage samples this direction for negatives.
"""

from __future__ import annotations

from hierarcaps.schema import SEPARATOR, TIERS

S2G, G2S, NEG = "s2g", "g2s", "neg"
DIRECTIONS = (S2G, G2S, NEG)
NEG_MARK = " | "


def source_text(direction: str, tiers: list[str]) -> str:
    return f"{direction}: {SEPARATOR.join(tiers)}".rstrip()


def negative_source(positive: list[str], tier: int) -> str:
    """The neg source for negative tier `tier` (1-based) of a hierarchy whose positive tiers are `positive`."""
    return f"{source_text(NEG, positive[: tier - 1])}{NEG_MARK}{positive[tier - 1]}"


def hierarchy_pairs(row_id: str, positive: list[str], negative: list[str] | None, directions: tuple[str, ...] = DIRECTIONS) -> list[dict]:
    """The training pairs of one hierarchy (without `split`), in a fixed order: s2g, g2s, neg."""
    unknown = set(directions) - set(DIRECTIONS)
    if unknown:
        raise ValueError(f"unknown student direction(s) {sorted(unknown)}; expected some of {DIRECTIONS}")
    join = SEPARATOR.join
    pairs = []
    if S2G in directions:
        pairs.append({"id": row_id, "direction": S2G, "source_text": source_text(S2G, [positive[3]]), "target_text": join(positive[:3])})
    if G2S in directions:
        for i in range(TIERS):
            pairs.append({"id": row_id, "direction": G2S, "source_text": source_text(G2S, positive[:i]), "target_text": join(positive[i:])})
    if NEG in directions and negative is not None:
        for i in range(1, TIERS + 1):
            pairs.append({"id": row_id, "direction": NEG, "source_text": negative_source(positive, i), "target_text": negative[i - 1]})
    return pairs
