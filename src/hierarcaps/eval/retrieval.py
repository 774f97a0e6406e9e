"""Image retrieval with semantic RSMs on a set of captioned images, and the semantic-RSM paper's JSD experiment.

Every image is a query; the others are ranked by similarity (ties keep index order).
- mAP, tier 1 (tier 2): relevant = the images whose tier-1 (tier-2) caption equals the query's (case and spacing
  ignored). Queries with no relevant image are left out; their count is reported.
- F1@k, after Wald et al. (NeurIPS 2024), who score a retrieved image by the F1 overlap of its object set with the
  query's: F1(q, r) = 2 |O_q & O_r| / (|O_q| + |O_r|), averaged over the top k retrieved images and then over the
  queries. COCO object labels are not in HierarCaps, so an image's object set here is the content words of its
  tier-1 and tier-2 captions (lower-cased, stop words dropped, a plural "s" stripped).
- JSD: Pearson correlation, over all pairs i < j, between the similarity and the Jensen-Shannon divergence (bits)
  of the classifier's predicted class probabilities. A similarity that agrees with the classifier correlates
  negatively; the paper reports semantic RSMs closer to it than the plain (spatially aligned) ones.
- Matching quality: each method's summed matched score over the exact (optimal) one.
"""

from __future__ import annotations

import logging
import re
import time
from pathlib import Path

import numpy as np

from hierarcaps.config import ValidateConfig
from hierarcaps.engines.embed import resolve_device
from hierarcaps.eval import srsm
from hierarcaps.eval.image_tokens import encode_image_tokens

log = logging.getLogger(__name__)

F1_KS = (1, 5, 10)
STOPWORDS = frozenset(
    "a an the and or of in on at to with without by for from into onto over under near next top up down out off "
    "is are was were be being been it its this that these those there their his her he she they them some two "
    "three four five several many few one very while as has have having who which what other another each".split()
)


def normalise_caption(text: str) -> str:
    return " ".join(text.lower().replace(".", " ").split())


def content_words(text: str) -> set[str]:
    words = set()
    for word in re.findall(r"[a-z]+", text.lower()):
        if len(word) < 2 or word in STOPWORDS:
            continue
        if len(word) > 3 and word.endswith("s") and not word.endswith("ss"):
            word = word[:-1]  # crude plural folding: "dogs" and "dog" are one object
        words.add(word)
    return words


def object_sets(hierarchies: list[list[str]]) -> list[set[str]]:
    return [content_words(" ".join(h[:2])) for h in hierarchies]


def rankings(sim: np.ndarray) -> np.ndarray:
    """(N, N-1): for each query the other images, most similar first."""
    n = len(sim)
    masked = np.array(sim, dtype=np.float64)
    np.fill_diagonal(masked, -np.inf)
    order = np.argsort(-masked, axis=1, kind="stable")
    return order[:, : n - 1]


def _relevance(order: np.ndarray, labels: list[str]) -> np.ndarray:
    codes = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True)[1]
    return codes[order] == codes[:, None]


def mean_average_precision(sim: np.ndarray, labels: list[str]) -> tuple[float, int]:
    """(mAP over queries with at least one relevant image, number of such queries)."""
    rel = _relevance(rankings(sim), labels)
    hits = rel.sum(axis=1)
    queries = hits > 0
    if not queries.any():
        return float("nan"), 0
    precision = np.cumsum(rel, axis=1) / np.arange(1, rel.shape[1] + 1)
    ap = (precision * rel).sum(axis=1)[queries] / hits[queries]
    return float(ap.mean()), int(queries.sum())


def pr_curve(sim: np.ndarray, labels: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Precision and recall at every cut-off k = 1..N-1, averaged over queries with a relevant image."""
    rel = _relevance(rankings(sim), labels)
    hits = rel.sum(axis=1)
    rel = rel[hits > 0]
    if len(rel) == 0:
        return np.zeros(0), np.zeros(0)
    found = np.cumsum(rel, axis=1)
    precision = (found / np.arange(1, rel.shape[1] + 1)).mean(axis=0)
    recall = (found / hits[hits > 0, None]).mean(axis=0)
    return precision, recall


def f1_at_k(sim: np.ndarray, objects: list[set[str]], ks=F1_KS) -> dict[str, float]:
    order = rankings(sim)
    n = len(objects)
    out = {}
    for k in ks:
        k_eff = min(k, n - 1)
        if k_eff < 1:
            out[f"f1@{k}"] = float("nan")
            continue
        scores = []
        for q in range(n):
            for r in order[q, :k_eff]:
                total = len(objects[q]) + len(objects[r])
                scores.append(2 * len(objects[q] & objects[r]) / total if total else 0.0)
        out[f"f1@{k}"] = float(np.mean(scores))
    return out


def jsd_matrix(probs: np.ndarray, chunk: int = 16) -> np.ndarray:
    """(N, N) Jensen-Shannon divergence in bits between the rows of `probs` (each a distribution)."""
    p = np.asarray(probs, dtype=np.float64)
    p = p / p.sum(axis=1, keepdims=True)

    def entropy(x: np.ndarray, axis: int = -1) -> np.ndarray:
        return -np.sum(np.where(x > 0, x * np.log2(np.where(x > 0, x, 1.0)), 0.0), axis=axis)

    own = entropy(p)
    out = np.empty((len(p), len(p)))
    for start in range(0, len(p), chunk):
        mix = (p[start : start + chunk, None, :] + p[None, :, :]) / 2
        out[start : start + chunk] = entropy(mix) - (own[start : start + chunk, None] + own[None, :]) / 2
    np.fill_diagonal(out, 0.0)
    return np.maximum(out, 0.0)


def pearson_upper(a: np.ndarray, b: np.ndarray) -> float:
    upper = np.triu_indices(len(a), k=1)
    x, y = a[upper], b[upper]
    if x.size < 2 or x.std() == 0 or y.std() == 0:
        return float("nan")
    return float(np.corrcoef(x, y)[0, 1])


def similarity_metrics(sim, tier1, tier2, objects, jsd) -> dict[str, float]:
    map1, _ = mean_average_precision(sim, tier1)
    map2, _ = mean_average_precision(sim, tier2)
    out = {"map_tier1": map1, "map_tier2": map2, **f1_at_k(sim, objects)}
    if jsd is not None:
        out["jsd_pearson"] = pearson_upper(sim, jsd)
    return out


def encoder_name(cfg: ValidateConfig) -> str:
    """`clip` means the profile's first open_clip model; other names pass through."""
    if cfg.image_encoder == "clip":
        if not cfg.clip_models:
            raise ValueError("validate.image_encoder = 'clip' needs validate.clip_models (e.g. 'ViT-B-32:openai')")
        return f"clip:{cfg.clip_models[0]}"
    return cfg.image_encoder


def run_retrieval(images: list[Path], hierarchies: list[list[str]], profile_cfg: ValidateConfig,
                  device: str) -> dict:
    """Semantic-RSM retrieval on `images` captioned by `hierarchies` (tiers generic -> specific).

    Returns a JSON-able dict, plus key "arrays": {"rsm": {name: (N, N)}, "pr_curves": {name: (precision, recall)},
    "tier1": labels} for the plots. Names are "semantic-METHOD-KERNEL" and "plain-KERNEL"."""
    cfg = profile_cfg
    if len(images) != len(hierarchies):
        raise ValueError(f"{len(images)} images but {len(hierarchies)} hierarchies")
    for n, tiers in enumerate(hierarchies):
        if len(tiers) < 2:
            raise ValueError(f"hierarchy {n} (image {images[n]}) has {len(tiers)} tier(s); retrieval needs 2")
    for method in cfg.srsm_methods:
        srsm.check_names(method)
    for kernel in cfg.srsm_kernels:
        srsm.check_names(kernel=kernel)
    if cfg.max_images is not None:
        images, hierarchies = images[: cfg.max_images], hierarchies[: cfg.max_images]
    if len(images) < 2:
        raise ValueError(f"retrieval needs at least 2 images, got {len(images)}")
    device = resolve_device(device if device != "auto" else cfg.device)
    encoder = encoder_name(cfg)

    encoded = encode_image_tokens(images, encoder, device=device)
    tokens = encoded.tokens
    log.info("retrieval: %d images, tokens %s from %s (%d cached, %.1f s)", len(images), tokens.shape[1:],
             encoder, encoded.cached, encoded.seconds)
    tier1 = [normalise_caption(h[0]) for h in hierarchies]
    tier2 = [normalise_caption(h[1]) for h in hierarchies]
    objects = object_sets(hierarchies)
    jsd = jsd_matrix(encoded.probs) if encoded.probs is not None else None

    methods = list(dict.fromkeys(["exact", *cfg.srsm_methods]))  # exact is the quality reference
    scores, seconds = srsm.matching_scores(tokens, methods, device=device)
    quality = srsm.matching_quality(scores, scores["exact"])
    started = time.perf_counter()
    plain = srsm.plain_scores(tokens, device=device)
    plain_seconds = time.perf_counter() - started
    sq_norms = srsm.squared_norms(tokens)

    rsm, curves = {}, {}
    semantic = {}
    for method in methods:
        entry = {"seconds": seconds["gemm"] + seconds[method], "gemm_seconds": seconds["gemm"],
                 "match_seconds": seconds[method], "matching_quality": quality[method],
                 "requested": method in cfg.srsm_methods, "kernels": {}}
        for kernel in cfg.srsm_kernels:
            sim = srsm.apply_kernel(scores[method], sq_norms, kernel)
            name = f"semantic-{method}-{kernel}"
            rsm[name], curves[name] = sim, pr_curve(sim, tier1)
            entry["kernels"][kernel] = similarity_metrics(sim, tier1, tier2, objects, jsd)
        semantic[method] = entry
        log.info("semantic %s: %.1f s, quality %.5f, %s", method, entry["seconds"], quality[method]["ratio"],
                 {k: round(v["map_tier1"], 4) for k, v in entry["kernels"].items()})
    plain_entry = {"seconds": plain_seconds, "kernels": {}}
    for kernel in cfg.srsm_kernels:
        sim = srsm.apply_kernel(plain, sq_norms, kernel)
        name = f"plain-{kernel}"
        rsm[name], curves[name] = sim, pr_curve(sim, tier1)
        plain_entry["kernels"][kernel] = similarity_metrics(sim, tier1, tier2, objects, jsd)

    return {
        "encoder": encoder,
        "images": len(images),
        "tokens_shape": list(tokens.shape[1:]),
        "encode_seconds": round(encoded.seconds, 2),
        "cached_images": encoded.cached,
        "device": device,
        "queries_with_relevant": {"tier1": mean_average_precision(np.eye(len(images)), tier1)[1],
                                  "tier2": mean_average_precision(np.eye(len(images)), tier2)[1]},
        "chance_map_tier1": _chance_map(tier1),
        "f1_ks": list(F1_KS),
        "jsd": "Pearson(similarity, JSD of class probabilities) over pairs i<j; negative = agrees"
        if jsd is not None else f"skipped: {encoder} has no classifier head",
        "semantic": semantic,
        "plain": plain_entry,
        "arrays": {"rsm": rsm, "pr_curves": curves, "tier1": tier1},
    }


def _chance_map(labels: list[str]) -> float:
    """Expected AP of a random ranking is about the share of relevant images: a floor to read mAP against."""
    _, codes, counts = np.unique(np.asarray(labels, dtype=str), return_inverse=True, return_counts=True)
    relevant = counts[codes] - 1
    queries = relevant > 0
    return float((relevant[queries] / (len(labels) - 1)).mean()) if queries.any() else float("nan")
