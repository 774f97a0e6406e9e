"""A trainable copy of an encoder's text tower beside the frozen original (for the pullback).

The models come from `hierarcaps.eval.encoders.load_encoder`, so whatever `validate` can score can be fine-tuned:
`minilm` (sentence-transformers: the whole model is the text tower), an open_clip `ARCH:TAG` (only the text
tower: token and positional embeddings, transformer, final norm and `text_projection`; the image tower and
`logit_scale` stay frozen and are not saved), or a folder written by an earlier fine-tune.
"""

from __future__ import annotations

import copy
import re

import torch

from hierarcaps.eval.encoders import OpenClipEncoder, SentenceEncoder, TunedEncoder, load_encoder

_BLOCK = re.compile(r"\.(?:layer|resblocks)\.(\d+)\.")
_NOT_TEXT = ("visual.", "logit_scale", "logit_bias")


class TextTower:
    """`embed(texts)` -> (n, d) float32, L2-normalised; `frozen=True` uses the untouched original in eval mode."""

    def __init__(self, name: str, device: str, train_layers: int | None = None):
        encoder = load_encoder(name, device)
        base = encoder.base if isinstance(encoder, TunedEncoder) else encoder
        if not isinstance(base, (SentenceEncoder, OpenClipEncoder)):
            raise ValueError(f"{name!r}: fine-tuning needs a sentence-transformers or open_clip model")
        self.name, self.device = name, base.device
        self.base_model = encoder.card["base_model"] if isinstance(encoder, TunedEncoder) else name
        self.kind = "open_clip" if isinstance(base, OpenClipEncoder) else "sentence-transformers"
        self._tokenizer = getattr(base, "tokenizer", None)
        self.frozen = base.model.eval()
        self.module = copy.deepcopy(base.model)
        for param in self.frozen.parameters():
            param.requires_grad_(False)
        self.trainable = self._choose_trainable(train_layers)

    def _is_text(self, key: str) -> bool:
        return self.kind != "open_clip" or not key.startswith(_NOT_TEXT)

    def _choose_trainable(self, train_layers: int | None) -> list[str]:
        """Text parameters only; with `train_layers` N, only the last N blocks and what comes after them."""
        names = [n for n, _ in self.module.named_parameters() if self._is_text(n)]
        blocks = {int(m.group(1)) for n in names if (m := _BLOCK.search(n))}
        first = 0 if train_layers is None else max(blocks, default=-1) + 1 - train_layers

        def wanted(name: str) -> bool:
            found = _BLOCK.search(name)
            if found:
                return int(found.group(1)) >= first
            return first <= 0 or "embed" not in name  # embeddings sit before the blocks; norms / projection after

        chosen = [n for n in names if wanted(n)]
        for name, param in self.module.named_parameters():
            param.requires_grad_(name in chosen)
        if not chosen:
            raise ValueError(f"{self.name!r}: train_layers={train_layers} leaves nothing to train")
        return chosen

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.module.parameters() if p.requires_grad]

    def embed(self, texts: list[str], frozen: bool = False) -> torch.Tensor:
        module = self.frozen if frozen else self.module
        if self.kind == "open_clip":
            out = module.encode_text(self._tokenizer(list(texts)).to(self.device))
        else:
            features = module.preprocess(list(texts))
            features = {k: v.to(self.device) if isinstance(v, torch.Tensor) else v for k, v in features.items()}
            out = module(features)["sentence_embedding"]
        out = out.float()
        return out / out.norm(dim=-1, keepdim=True).clamp_min(1e-12)

    def text_state(self) -> dict[str, torch.Tensor]:
        """Every text-tower weight (trained or not), as `TunedEncoder` loads them onto the base model."""
        return {k: v.detach().cpu().contiguous() for k, v in self.module.state_dict().items() if self._is_text(k)}

    def trainable_state(self) -> dict[str, torch.Tensor]:
        params = dict(self.module.named_parameters())
        return {k: params[k].detach().cpu().contiguous() for k in self.trainable}

    def load_trainable(self, state: dict[str, torch.Tensor]) -> None:
        params = dict(self.module.named_parameters())
        with torch.no_grad():
            for key, value in state.items():
                params[key].copy_(value.to(params[key].device))
