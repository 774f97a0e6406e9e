"""Prompt templates: versioned text files in `prompts/` (`seed_v1.txt`, ...), never strings in code.

A file starts with `#` comment lines that document it (placeholders, answer format, what was measured); they are
stripped before the text goes to a model. The rest is a `string.Template`: `$caption`, `$examples` (write `$$` for
a literal dollar sign). The sha256 of the whole file goes into the stage fingerprint, so editing a prompt file
invalidates the stages that used it. To change a prompt, add `seed_v2.txt` and point the profile at it.
"""

from __future__ import annotations

import hashlib
import string
from dataclasses import dataclass
from pathlib import Path

PROMPT_DIR = Path(__file__).parent / "prompts"


class PromptError(ValueError):
    """Unknown prompt name, or values that do not match the template's placeholders."""


@dataclass(frozen=True)
class Prompt:
    name: str
    text: str  # the template body, header comments removed
    sha256: str  # of the whole file, header included

    @property
    def placeholders(self) -> set[str]:
        found = set()
        for match in string.Template.pattern.finditer(self.text):
            name = match.group("named") or match.group("braced")
            if name:
                found.add(name)
        return found

    def render(self, **values: str) -> str:
        """The template filled with exactly its placeholders (a missing or an unknown value is an error)."""
        missing, unknown = self.placeholders - values.keys(), values.keys() - self.placeholders
        if missing or unknown:
            raise PromptError(
                f"prompt {self.name!r} takes {sorted(self.placeholders)}; missing {sorted(missing)}, unknown {sorted(unknown)}"
            )
        return string.Template(self.text).substitute(values)


def available_prompts() -> list[str]:
    return sorted(p.stem for p in PROMPT_DIR.glob("*.txt"))


def load_prompt(name: str) -> Prompt:
    """`seed_v1` -> the Prompt in prompts/seed_v1.txt (a path to a .txt file also works, for trying a new prompt)."""
    path = Path(name) if name.endswith(".txt") else PROMPT_DIR / f"{name}.txt"
    if not path.is_file():
        raise PromptError(f"unknown prompt {name!r}; known: {', '.join(available_prompts())} (or a .txt path)")
    raw = path.read_text(encoding="utf-8")
    lines = raw.splitlines(keepends=True)
    start = 0
    while start < len(lines) and lines[start].startswith("#"):
        start += 1
    body = "".join(lines[start:]).strip("\n")
    return Prompt(name=path.stem, text=body, sha256=hashlib.sha256(raw.encode("utf-8")).hexdigest())


def render(name: str, **values: str) -> str:
    return load_prompt(name).render(**values)
