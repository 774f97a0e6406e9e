"""Structured decoding for the transformers back-end: force the numbered-line skeleton, let the model write the rest.

SmolLM2-135M writes good first tiers but rarely the `Negative:` block: it keeps counting ("4:", "5:", ... "14:")
until max_new_tokens (measured: 1/12 answers parsable with the best plain prompt). Full regex-constrained decoding
(vLLM structured outputs, `outlines`) fixes that on GPUs; here a small LogitsProcessor does the same for our one
format, with no extra dependency:

- each line's prefix ("1:", "2:", "3:", "Negative:\\n1:", ...) is forced token by token;
- inside a line the model writes freely, except that it cannot end the line before writing a word, cannot use a
  token that has a newline glued to other text, cannot end the answer early, and must end a line after
  `max_line_tokens` tokens;
- after the last line's newline only EOS is allowed, so a batch stops as soon as every answer is complete
  (no rambling to max_new_tokens: this is also what makes it fast);
- two structural rules of hierarcaps.checks are enforced where they are cheap to enforce while decoding: a line
  cannot end as a copy of an earlier line (repeated tiers, negatives that copy their positive were ~half of
  SmolLM2's rejections), and the lines in `growing` cannot end with fewer words than the line before them.
  Whether a tier *means* something sensible is left to the checks and the NLI filter.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Sequence

import torch
from transformers import LogitsProcessor

from hierarcaps.checks import normalize


@lru_cache(maxsize=4)
def _newline_tokens(tokenizer) -> tuple[int, torch.Tensor]:
    """(the id of the plain "\\n" token, a mask of every other token whose text holds a newline)."""
    ids = tokenizer.encode("\n", add_special_tokens=False)
    if len(ids) != 1:
        raise ValueError(f"structured decoding needs a single-token newline; {type(tokenizer).__name__} gives {ids}")
    size = len(tokenizer)
    texts = tokenizer.convert_ids_to_tokens(list(range(size)))
    mask = torch.zeros(size, dtype=torch.bool)
    for i, token in enumerate(texts):
        if token is not None and i != ids[0] and "\n" in tokenizer.convert_tokens_to_string([token]):
            mask[i] = True
    return ids[0], mask


class LineTemplate(LogitsProcessor):
    """Forces the answer into `prefixes`, one line each (see the module docstring). One instance per batch."""

    def __init__(
        self,
        tokenizer,
        prefixes: Sequence[str],
        prompt_length: int,
        batch_size: int,
        max_line_tokens: int = 32,
        growing: Sequence[int] = (),
    ):
        self.tokenizer = tokenizer
        self.growing = set(growing)  # line indices that must have at least the previous line's word count
        self.prefix_ids = [tokenizer.encode(p, add_special_tokens=False) for p in prefixes]
        self.prompt_length = prompt_length
        self.max_line_tokens = max_line_tokens
        self.newline, self.glued_newline = _newline_tokens(tokenizer)
        eos = tokenizer.eos_token_id
        self.eos = eos[0] if isinstance(eos, list) else eos
        self.line = [0] * batch_size  # index of the line being written
        self.queue = [list(self.prefix_ids[0]) for _ in range(batch_size)]  # tokens still to force
        self.forced = [False] * batch_size  # whether the last token was forced (not model content)
        self.content = [""] * batch_size  # model-written text of the current line
        self.count = [0] * batch_size  # model-written tokens in the current line
        self.done: list[list[str]] = [[] for _ in range(batch_size)]  # finished lines, normalized

    def _consume(self, row: int, token: int) -> None:
        """Update a row's state with the token generated at the previous step."""
        if self.forced[row]:
            return
        if token == self.newline:
            self.done[row].append(normalize(self.content[row]))
            self.line[row] += 1
            self.content[row], self.count[row] = "", 0
            if self.line[row] < len(self.prefix_ids):
                self.queue[row] = list(self.prefix_ids[self.line[row]])
            return
        self.content[row] += self.tokenizer.decode([token])
        self.count[row] += 1

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        started = input_ids.shape[1] > self.prompt_length
        banned = torch.full_like(scores, float("-inf"))
        for row in range(scores.shape[0]):
            if started:
                self._consume(row, int(input_ids[row, -1]))
            # Forced prefix tokens are skeleton, not content; a forced end of line still ends the line.
            self.forced[row] = bool(self.queue[row])
            if self.line[row] >= len(self.prefix_ids):
                allowed = self.eos  # answer complete
            elif self.queue[row]:
                allowed = self.queue[row].pop(0)
            elif self.count[row] >= self.max_line_tokens:
                allowed = self.newline  # a tier this long is rambling; end the line
            else:
                allowed = None
            if allowed is not None:
                scores[row] = banned[row]
                scores[row, allowed] = 0.0
                continue
            mask = self._base_mask(scores)
            if self.eos is not None:
                mask[self.eos] = True  # no early end: every line must be written
            if not self.may_end_line(row):
                mask[self.newline] = True
            scores[row] = scores[row].masked_fill(mask, float("-inf"))
        return scores

    def may_end_line(self, row: int) -> bool:
        """Whether the current line is acceptable as written so far: not empty, not a copy, not shrinking."""
        text = normalize(self.content[row])
        if not text or text in self.done[row]:
            return False
        line = self.line[row]
        return line not in self.growing or len(text.split()) >= len(self.done[row][line - 1].split())

    def _base_mask(self, scores: torch.Tensor) -> torch.Tensor:
        """The always-banned tokens, sized like the model's logits (its vocabulary may be padded past the tokenizer's)."""
        if not hasattr(self, "_mask"):
            mask = torch.zeros(scores.shape[1], dtype=torch.bool)
            size = min(len(self.glued_newline), scores.shape[1])
            mask[:size] = self.glued_newline[:size]
            self._mask = mask.to(scores.device)
        return self._mask.clone()
