"""What a noun is a kind of, from WordNet 3.0 (issue #18: tier 1 must be a category of tier 2's head noun).

A table derived from WordNet ships with the package (`lexicon/wordnet-nouns.json.gz`, its card beside it): for each
common noun, the names of every hypernym of every sense ("cup" -> "container", "vessel", "crockery", ...), and the
category its senses agree on, if they do ("cup" -> "container"; "bat" -> none: an animal and a club). The development
share's own tier 1s are no guide (they say "breed" for sheep 66 of 87 times). `build` remakes the table from the
WordNet files (Debian `wordnet-base` + `wordnet-sense-index`) with nltk, which is needed only there:

    apt-get install wordnet-base wordnet-sense-index && pip install nltk && python -m hierarcaps.lexicon /usr/share/wordnet
"""

from __future__ import annotations

import gzip
import hashlib
import json
import shutil
import sys
from functools import cache
from pathlib import Path

ARTIFACT = Path(__file__).parent / "lexicon" / "wordnet-nouns.json.gz"
# Categories a tier 1 may be mended to (not `negatives.CATEGORIES`, the hand-made ones this table comes after); the one a
# noun gets is the first of its hypernyms (nearest first) that is here.
KINDS = (
    "animal", "food", "vehicle", "furniture", "plant", "person", "appliance", "device", "container", "tableware",
    "clothing", "equipment", "tool", "instrument", "toy", "building", "structure",
)  # fmt: skip
# A sense counts towards a noun's category only when it is used this often in the tagged corpus WordNet ships, relative
# to its most used sense: rare senses ("fence": a receiver of stolen goods) do not make a noun ambiguous. Where even the
# most used sense is tagged fewer than _MIN_COUNT times, every sense counts ("bat": an animal 2 times, a club 0).
_RARE = 0.25
_MIN_COUNT = 5
# WordNet's lexicographer files in their numbered order (the data files refer to them by number).
_LEXNAMES = """adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body noun.cognition
noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive noun.object noun.person noun.phenomenon
noun.plant noun.possession noun.process noun.quantity noun.relation noun.shape noun.state noun.substance noun.time
verb.body verb.change verb.cognition verb.communication verb.competition verb.consumption verb.contact verb.creation
verb.emotion verb.motion verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl""".split()


@cache
def _table() -> dict[str, list]:
    with gzip.open(ARTIFACT, "rt", encoding="utf-8") as f:
        return json.load(f)["nouns"]


def _entry(noun: str) -> list | None:
    from lemminflect import getAllLemmas  # the base form of an inflected noun: "cups" -> "cup"

    noun = noun.lower().strip()
    for form in (noun, *getAllLemmas(noun).get("NOUN", ())):
        if form in _table():
            return _table()[form]
    return None


def hypernyms(noun: str) -> frozenset[str] | None:
    """Every name of every hypernym of every sense of `noun` (any inflection); None if the table lacks the noun."""
    entry = _entry(noun)
    return None if entry is None else frozenset(entry[0])


def category(noun: str) -> str | None:
    """The one category (`KINDS`) the noun's common senses are kinds of, or None (unknown, or they disagree)."""
    entry = _entry(noun)
    return None if entry is None else entry[1]


def build(wordnet_dir: Path, out: Path = ARTIFACT, min_zipf: float = 3.0, only: set[str] | None = None) -> dict:
    """Write the table for the nouns of `checks.english_words(min_zipf)` (or those of them in `only`) that WordNet
    has; hypernym names are kept when each of their words is that common. Returns the card."""
    import tempfile

    import nltk
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    from hierarcaps.checks import english_words

    common = english_words(min_zipf)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp) / "corpora" / "wordnet"  # nltk's layout: the Debian files, plus the `lexnames` list nltk
        root.mkdir(parents=True)  # reads and Debian does not ship
        for f in Path(wordnet_dir).iterdir():  # copied: nltk refuses a link out of its root
            shutil.copyfile(f, root / f.name)
        pos = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
        (root / "lexnames").write_text("".join(f"{i:02d}\t{name}\t{pos[name.split('.')[0]]}\n" for i, name in enumerate(_LEXNAMES)))
        nltk.data.path.insert(0, tmp)  # nltk reads only below its data paths, and maps "wordnet" to this one
        wn = WordNetCorpusReader(str(root), None)
        nouns = {}
        for word in sorted(common if only is None else common & only):
            senses = wn.synsets(word, "n")
            if not senses or word not in {lemma.name().lower() for s in senses for lemma in s.lemmas()}:
                continue
            names, kinds = set(), []
            counts = [sum(lemma.count() for lemma in s.lemmas() if lemma.name().lower() == word) for s in senses]
            for sense, count in zip(senses, counts):
                chain = list(sense.closure(lambda s: s.hypernyms() + s.instance_hypernyms()))
                found = [lemma.name().replace("_", " ").lower() for s in chain for lemma in s.lemmas()]
                names.update(n for n in found if all(w in common for w in n.split()))
                kind = next((n for n in found if n in KINDS), None)
                if kind and (count >= _RARE * max(counts) or max(counts) < _MIN_COUNT):
                    kinds.append(kind)
            agreed = kinds[0] if kinds and len(set(kinds)) == 1 else None
            nouns[word] = [sorted(names), agreed]
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = json.dumps({"version": 1, "nouns": nouns}, sort_keys=True, separators=(",", ":")).encode()
    with gzip.GzipFile(out, "wb", mtime=0) as f:  # mtime 0: the same table gives the same bytes
        f.write(payload)
    card = {
        "name": "wordnet-nouns",
        "source": "WordNet 3.0 (Princeton University), as Debian's wordnet-base package installs it",
        "licence": "WordNet 3.0 license (Princeton University): use, copy, modify and distribute with the copyright notice",
        "notice": _notice(Path(wordnet_dir) / "data.noun"),
        "files": {f: hashlib.sha256((Path(wordnet_dir) / f).read_bytes()).hexdigest() for f in ("data.noun", "index.noun", "cntlist.rev")},
        "nltk": nltk.__version__,
        "min_zipf": min_zipf,
        "nouns": len(nouns),
        "with_category": sum(1 for _, kind in nouns.values() if kind),
        "sha256": hashlib.sha256(out.read_bytes()).hexdigest(),
        "reproduce": "apt-get install wordnet-base wordnet-sense-index && pip install nltk && python -m hierarcaps.lexicon /usr/share/wordnet",
    }
    out.with_name("card.json").write_text(json.dumps(card, indent=2) + "\n")
    return card


def _notice(data_file: Path) -> str:
    """The licence and copyright notice WordNet's data files open with (lines "  1 ...", "  2 ..."), which its licence
    asks every copy to carry."""
    lines = []
    with open(data_file, encoding="utf-8") as f:
        for line in f:
            if not line.startswith("  "):
                break
            lines.append(line[2:].split(" ", 1)[1].rstrip() if " " in line[2:] else "")
    return "\n".join(lines).strip()


if __name__ == "__main__":
    print(json.dumps(build(Path(sys.argv[1] if len(sys.argv) > 1 else "/usr/share/wordnet")), indent=2))
