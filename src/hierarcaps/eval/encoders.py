"""Text / image encoders behind one small interface, for the RE metrics.

    enc = load_encoder("ViT-B-32:openai")   # open_clip: aligned image and text towers -> precision, recall, d_corr
    enc = load_encoder("minilm")            # sentence-transformers, text only -> d_corr
    enc.encode_text(["a dog"])              # (n, d) float32, L2-normalised
    enc.encode_images([Path("x.jpg")])      # (m, d) or None for a text-only model
    enc.root()                              # normalised embedding of "" (the RE root)

Model names: `arch:pretrained` (open_clip, e.g. the paper's "ViT-B-32:openai", "ViT-L-14:openai"), an open_clip
model name without weights (a config registered with `open_clip.add_model_config`, random weights: tests),
`hf-hub:...` / `local-dir:...` (open_clip schemas), a folder written by `hierarcaps finetune` (card.json +
model.safetensors: its base model with the tuned text-tower weights), or else a sentence-transformers model
("minilm" = the packaged all-MiniLM-L6-v2, or a hub id / local dir). Prefix "open_clip:" or "st:" to force one kind.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path
from typing import Protocol

import numpy as np

from hierarcaps.engines.embed import OFFLINE_MODELS, resolve_device

log = logging.getLogger(__name__)

ALIGNED = frozenset({"precision", "recall", "d_corr"})  # image and text towers share one space
TEXT_ONLY = frozenset({"d_corr"})
TUNED_KIND = "hierarcaps-finetune"  # card.json "kind" of a `hierarcaps finetune` output folder
WHY_TEXT_ONLY = "text-only model: precision/recall need an image tower aligned with the text tower"


class Encoder(Protocol):
    name: str
    capabilities: frozenset[str]

    def encode_text(self, texts: list[str]) -> np.ndarray: ...

    def encode_images(self, paths: list[Path]) -> np.ndarray | None: ...

    def describe(self) -> dict: ...


def _normalise(x: np.ndarray) -> np.ndarray:
    x = np.asarray(x, dtype=np.float32)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def root(encoder: Encoder) -> np.ndarray:
    """The RE root: the normalised embedding of the empty string."""
    return encoder.encode_text([""])[0]


class OpenClipEncoder:
    """An open_clip model; `pretrained` None means random weights (a registered test config)."""

    def __init__(self, arch: str, pretrained: str | None = None, device: str = "auto", batch_size: int = 64):
        import open_clip
        import torch

        self.name = f"{arch}:{pretrained}" if pretrained else arch
        self.capabilities = ALIGNED
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self._torch = torch
        try:
            self.model, _, self.preprocess = open_clip.create_model_and_transforms(
                arch, pretrained=pretrained, device=self.device
            )
        except RuntimeError as err:  # unknown model / tag, or weights that cannot be fetched offline
            raise RuntimeError(f"open_clip model {self.name!r} could not be loaded: {err}") from err
        self.model.eval()
        self.tokenizer = open_clip.get_tokenizer(arch)
        self.arch, self.pretrained = arch, pretrained

    def encode_text(self, texts: list[str]) -> np.ndarray:
        out = []
        with self._torch.inference_mode():
            for start in range(0, len(texts), self.batch_size):
                tokens = self.tokenizer(list(texts[start : start + self.batch_size])).to(self.device)
                out.append(self.model.encode_text(tokens).float().cpu().numpy())
        return _normalise(np.concatenate(out)) if out else np.zeros((0, 0), np.float32)

    def encode_images(self, paths: list[Path]) -> np.ndarray:
        from PIL import Image

        out = []
        with self._torch.inference_mode():
            for start in range(0, len(paths), self.batch_size):
                batch = []
                for path in paths[start : start + self.batch_size]:
                    try:
                        with Image.open(path) as img:
                            batch.append(self.preprocess(img.convert("RGB")))
                    except OSError as err:
                        raise ValueError(f"{path}: not a readable image: {err}") from None
                pixels = self._torch.stack(batch).to(self.device)
                out.append(self.model.encode_image(pixels).float().cpu().numpy())
        return _normalise(np.concatenate(out))

    def describe(self) -> dict:
        return {"name": self.name, "kind": "open_clip", "arch": self.arch, "pretrained": self.pretrained,
                "random_weights": self.pretrained is None, "device": self.device}


class SentenceEncoder:
    """A sentence-transformers text model: only the text tower, so only d_corr."""

    def __init__(self, name: str = "minilm", device: str = "auto", batch_size: int = 128):
        from hierarcaps.engines.embed import load_sentence_model

        self.name = name
        self.capabilities = TEXT_ONLY
        self.device = resolve_device(device)
        self.batch_size = batch_size
        self.model = load_sentence_model(name, self.device)

    def encode_text(self, texts: list[str]) -> np.ndarray:
        emb = self.model.encode(list(texts), batch_size=self.batch_size, convert_to_numpy=True,
                                normalize_embeddings=True, show_progress_bar=False)
        return _normalise(emb)

    def encode_images(self, paths: list[Path]) -> None:
        return None

    def describe(self) -> dict:
        hub = {"minilm": "sentence-transformers/all-MiniLM-L6-v2"}.get(self.name, self.name)
        return {"name": self.name, "kind": "sentence-transformers", "model": hub,
                "packaged": self.name in OFFLINE_MODELS, "device": self.device}


def _is_open_clip(name: str) -> tuple[str, str | None] | None:
    """(arch, pretrained) if `name` names an open_clip model, else None."""
    import open_clip

    if name.startswith(("hf-hub:", "local-dir:")):
        return name, None
    arch, _, tag = name.partition(":")
    if arch in open_clip.list_models():
        return arch, tag or None
    return None


class TunedEncoder:
    """A base encoder whose text tower carries the weights of a `hierarcaps finetune` folder."""

    def __init__(self, folder: Path, device: str = "auto"):
        from safetensors.torch import load_file

        card = json.loads((folder / "card.json").read_text())
        if card.get("kind") != TUNED_KIND:
            raise ValueError(f"{folder}/card.json: kind {card.get('kind')!r}, expected {TUNED_KIND!r}")
        self.base = load_encoder(card["base_model"], device)
        if isinstance(self.base, SentenceEncoder):
            self.base.model = copy.deepcopy(self.base.model)  # the base is cached and shared: never load into it
        module = self.base.model
        state = load_file(folder / "model.safetensors", device=str(next(module.parameters()).device))
        unexpected = module.load_state_dict(state, strict=False).unexpected_keys
        if unexpected:
            raise ValueError(f"{folder}/model.safetensors: {len(unexpected)} weight(s) not in {card['base_model']!r}, e.g. {unexpected[0]}")
        module.eval()
        self.name, self.card = str(folder), card
        self.capabilities = self.base.capabilities  # only the text tower moved: an image tower stays aligned with it

    def encode_text(self, texts: list[str]) -> np.ndarray:
        return self.base.encode_text(texts)

    def encode_images(self, paths: list[Path]) -> np.ndarray | None:
        return self.base.encode_images(paths)

    def describe(self) -> dict:
        keys = ("base_model", "data", "hyperparameters", "steps", "weights_sha256")
        return {**self.base.describe(), "name": self.name, "tuned": {k: self.card.get(k) for k in keys}}


def load_encoder(name: str, device: str = "auto") -> Encoder:
    """Build the encoder a model name refers to (see the module docstring)."""
    if (Path(name) / "card.json").is_file():
        return TunedEncoder(Path(name), device)
    if name.startswith("st:"):
        return SentenceEncoder(name[3:], device)
    if name.startswith("open_clip:"):
        found = _is_open_clip(name[len("open_clip:"):])
        if found is None:
            raise ValueError(f"{name!r}: not an open_clip model; see open_clip.list_models()")
        return OpenClipEncoder(*found, device=device)
    if name not in OFFLINE_MODELS:
        found = _is_open_clip(name)
        if found is not None:
            return OpenClipEncoder(*found, device=device)
    return SentenceEncoder(name, device)
