"""The validate report: `report.json` (everything measured), `report.md` (readable, citable) and PNG plots.

Plots are drawn with matplotlib's Agg backend (no display needed); each plot is skipped when its data is absent
(e.g. no aligned image-text model -> no P/R-across-thresholds plot).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from hierarcaps import shards

log = logging.getLogger(__name__)

CITATION = (
    'S. Alper and H. Averbuch-Elor, "Emergent Visual-Semantic Hierarchies in Image-Text Representations", ECCV 2024 '
    "(HierarCaps; RE metrics as in its released evaluation code)."
)
MAX_HEATMAPS = 6
MAX_PR_CURVES = 8
HEATMAP_IMAGES = 300


def jsonable(obj: Any) -> Any:
    """numpy scalars/arrays and paths -> plain JSON values, recursively."""
    if isinstance(obj, dict):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


# ---------------------------------------------------------------- plots


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)  # files only: works on headless machines
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def plot_radii(path: Path, radii_by_model: dict[str, np.ndarray]) -> Path:
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(radii_by_model), figsize=(4.2 * len(radii_by_model), 3.6), squeeze=False)
    for ax, (name, r) in zip(axes[0], radii_by_model.items()):
        ax.violinplot([r[:, t] for t in range(r.shape[1])], showmedians=True)
        ax.set_xticks(range(1, r.shape[1] + 1), [f"tier {t + 1}" for t in range(r.shape[1])])
        ax.set_title(name, fontsize=9)
        ax.set_ylabel("radius ||e - root||")
    fig.suptitle("Text radius by tier (generic -> specific)", fontsize=10)
    return _save(fig, path)


def plot_re_curves(path: Path, curves_by_model: dict) -> Path:
    plt = _pyplot()
    fig, (ax_p, ax_r) = plt.subplots(1, 2, figsize=(9, 3.6))
    for name, curves in curves_by_model.items():
        span = np.ptp(curves.thresholds) or 1.0
        x = (curves.thresholds - curves.thresholds[0]) / span  # radii scales differ between models
        ax_p.plot(x, curves.precision, label=name)
        ax_r.plot(x, curves.recall, label=name)
    for ax, label in ((ax_p, "precision"), (ax_r, "recall")):
        ax.set_xlabel("radius threshold (0 = min, 1 = max radius)")
        ax.set_ylabel(f"RE {label} (preds up to threshold)")
        ax.set_ylim(0, 1)
        ax.grid(alpha=0.3)
    ax_r.legend(fontsize=8)
    return _save(fig, path)


def tier_order(labels: list[str]) -> np.ndarray:
    """Indices that group equal tier-1 labels, largest class first (ties by label)."""
    labels = np.asarray(labels, dtype=object).astype(str)
    classes, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    class_rank = np.empty(len(classes), int)
    class_rank[np.lexsort((classes, -counts))] = np.arange(len(classes))
    return np.argsort(class_rank[inverse], kind="stable")


def heatmap_rows(labels: list[str] | None, n: int, limit: int = HEATMAP_IMAGES) -> tuple[np.ndarray, str]:
    """Which images a heatmap shows, in tier-1 class order, and a caption saying which.

    With many images most tier-1 classes are singletons (491 classes over the 1K test set), so a full matrix shows
    no blocks; large sets show the images of the largest classes (size >= 2), up to `limit` of them."""
    if labels is None or len(labels) != n:
        return np.arange(min(n, limit)), "images in data order"
    order = tier_order(labels)
    if n <= limit:
        return order, "images sorted by tier-1 class, largest first"
    codes, counts = np.unique(np.asarray(labels, dtype=object).astype(str), return_inverse=True, return_counts=True)[1:]
    shared = order[counts[codes[order]] >= 2][:limit]
    chosen = shared if len(shared) >= 2 else order[:limit]
    return chosen, f"{len(chosen)} of {n} images, largest tier-1 classes first"


def _featured(names: list[str], limit: int, only_featured: bool = False) -> list[str]:
    """Plain and exact-semantic similarities first (the comparison the report is about), then the rest."""
    first = [n for n in names if "plain" in n or "exact" in n]
    rest = [] if only_featured and first else [n for n in names if n not in first]
    return (first + rest)[:limit]


def plot_rsm(path: Path, rsms: dict[str, np.ndarray], tier1: list[str] | None) -> Path:
    plt = _pyplot()
    items = [(name, rsms[name]) for name in _featured(list(rsms), MAX_HEATMAPS)]
    cols = min(3, len(items))
    rows = -(-len(items) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.8 * rows), squeeze=False)
    order, caption = heatmap_rows(tier1, len(items[0][1]))
    for ax, (name, rsm) in zip(axes.ravel(), items):
        shown = np.asarray(rsm, float)[np.ix_(order, order)]
        np.fill_diagonal(shown, np.nan)  # self-similarity would swamp the colour scale
        off = shown[np.isfinite(shown)]
        low, high = np.percentile(off, [1, 99]) if off.size else (0.0, 1.0)
        image = ax.imshow(shown, cmap="viridis", interpolation="antialiased", vmin=low, vmax=high)
        ax.set_title(name, fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
        fig.colorbar(image, ax=ax, fraction=0.046)
    for ax in axes.ravel()[len(items):]:
        ax.axis("off")
    fig.suptitle(f"Image similarity (diagonal hidden): {caption}", fontsize=10)
    return _save(fig, path)


def plot_retrieval_pr(path: Path, pr_curves: dict) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 4.2))
    for name in _featured(list(pr_curves), MAX_PR_CURVES, only_featured=True):
        precision, recall = pr_curves[name]
        ax.plot(np.asarray(recall), np.asarray(precision), label=name, lw=1.2, ls="--" if "plain" in name else "-")
    ax.set_xlabel("recall")
    ax.set_ylabel("precision")
    ax.set_xlim(0, 1)
    ax.set_ylim(bottom=0)  # precision is often far below 1: let the top follow the data
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title("Image retrieval precision-recall (relevant = same tier-1 caption)", fontsize=9)
    return _save(fig, path)


def make_plots(out: Path, model_arrays: dict[str, dict], retrieval_arrays: dict) -> list[Path]:
    """Draw every plot whose data exists; a failing plot is logged and skipped, never fatal."""
    jobs = []
    radii = {k: v["radii"] for k, v in model_arrays.items() if v.get("radii") is not None}
    curves = {k: v["curves"] for k, v in model_arrays.items() if v.get("curves") is not None}
    if radii:
        jobs.append((plot_radii, out / "radius_by_tier.png", radii))
    if curves:
        jobs.append((plot_re_curves, out / "re_pr_thresholds.png", curves))
    if retrieval_arrays.get("rsm"):
        jobs.append((plot_rsm, out / "rsm_heatmaps.png", retrieval_arrays["rsm"], retrieval_arrays.get("tier1")))
    if retrieval_arrays.get("pr_curves"):
        jobs.append((plot_retrieval_pr, out / "retrieval_pr.png", retrieval_arrays["pr_curves"]))
    made = []
    for fn, path, *args in jobs:
        try:
            made.append(fn(path, *args))
        except (ValueError, TypeError, IndexError, KeyError) as err:  # odd shapes from a caller: report, go on
            log.warning("plot %s skipped: %s", path.name, err)
    return made


# ---------------------------------------------------------------- markdown


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    if value is None:
        return "—"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(_fmt(v) for v in row) + " |" for row in rows]


def _scalars(d: dict) -> bool:
    return all(not isinstance(v, (dict, list)) for v in d.values())


def _dict_section(d: dict, level: int = 3) -> list[str]:
    """Render a nested dict of metrics: a dict of flat dicts becomes a table, scalars become a list."""
    lines = [f"- {k}: {_fmt(v)}" for k, v in d.items() if not isinstance(v, (dict, list))]
    nested = {k: v for k, v in d.items() if isinstance(v, dict)}
    flat = {k: v for k, v in nested.items() if v and _scalars(v)}
    if flat:
        columns = list(dict.fromkeys(c for v in flat.values() for c in v))
        lines += [""] + _table(["", *columns], [[k, *(v.get(c) for c in columns)] for k, v in flat.items()])
    for key, value in nested.items():
        if key not in flat:
            lines += ["", f"{'#' * level} {key}", ""] + _dict_section(value, level + 1)
    return lines


def _retrieval_section(retrieval: dict) -> list[str]:
    """One row per (method, kernel) when the result has retrieval.py's shape; any other dict is rendered generically."""
    if "skipped" in retrieval:
        return [f"Skipped: {retrieval['skipped']}"]
    if not isinstance(retrieval.get("semantic"), dict) or not isinstance(retrieval.get("plain"), dict):
        return _dict_section(retrieval)
    scalars = {k: v for k, v in retrieval.items() if not isinstance(v, (dict, list))}
    lines = [f"- {k}: {_fmt(v)}" for k, v in scalars.items()]
    if isinstance(retrieval.get("queries_with_relevant"), dict):
        lines.append(f"- queries with a relevant image: {retrieval['queries_with_relevant']}")
    entries = [(f"semantic {method}", e) for method, e in retrieval["semantic"].items()] + [("plain", retrieval["plain"])]
    metrics = list(dict.fromkeys(m for _, e in entries for k in e.get("kernels", {}).values() for m in k))
    rows = []
    for label, entry in entries:
        ratio = (entry.get("matching_quality") or {}).get("ratio")
        for kernel, values in entry.get("kernels", {}).items():
            rows.append([label, kernel, *(values.get(m) for m in metrics), ratio, entry.get("seconds")])
    lines += ["", *_table(["similarity", "kernel", *metrics, "matching / optimal", "seconds"], rows)]
    lines += ["", "mAP: relevant = same tier-1 (tier-2) caption; f1@k: overlap of content-word object sets of the "
              "query and the top-k images; jsd_pearson: correlation of similarity with the JSD of classifier "
              "probabilities (negative = agrees); seconds include the shared token inner products."]
    return lines


def render_markdown(report: dict) -> str:
    data = report["data"]
    lines = [
        "# HierarCaps validation report",
        "",
        f"Created {report['created']} by hierarcaps {report['hierarcaps_version']} (profile `{report['profile']}`, "
        f"device `{report['device']}`, {report['seconds']:.0f} s).",
        "",
        "## Data",
        "",
        f"- source: `{data['source']}` ({data['kind']})",
        f"- hierarchy rows: {data['rows']}; images: {data['images'] or 'none (text-only metrics)'}"
        + (f"; limited to the first {data['max_images']}" if data.get("max_images") else ""),
        "",
        "## RE metrics (HierarCaps)",
        "",
        f"Radius = ||e - root||, root = embedding of the empty string; {report['re_steps']} radius thresholds. "
        "precision / recall: hierarchical retrieval of each image's texts across thresholds; d_corr: mean Kendall "
        "tau between the radius order of a hierarchy's four tiers and 1..4 (1 = radii grow from generic to specific). "
        "tier-4 -> tier-3 top-1: each row's tier-4 text finds its own tier-3 text among all rows' tier-3 texts (cosine), "
        "a check that a fine-tuned encoder still retrieves.",
        "",
    ]
    rows, notes = [], []
    for name, entry in report["models"].items():
        if "error" in entry:
            notes.append(f"- `{name}` failed: {entry['error']}")
            continue
        m = entry["metrics"]
        rows.append([f"`{name}`", entry["model"].get("kind"), m.get("precision"), m.get("recall"), m.get("d_corr"),
                     m.get("tier4_to_tier3_top1"), f"{entry['seconds']:.1f}"])
        if entry["model"].get("tuned"):
            notes.append(f"- `{name}`: fine-tuned from `{entry['model']['tuned']['base_model']}` by `hierarcaps finetune`")
        by_reason: dict[str, list[str]] = {}
        for metric, why in entry.get("absent", {}).items():
            by_reason.setdefault(why, []).append(metric)
        notes += [f"- `{name}`: no {' / '.join(metrics)}: {why}" for why, metrics in by_reason.items()]
        if entry["model"].get("random_weights"):
            notes.append(f"- `{name}` has random weights (a test model): its numbers mean nothing")
    lines += _table(["model", "kind", "precision", "recall", "d_corr", "tier-4 -> tier-3 top-1", "seconds"], rows)
    pairs = {name: e["d_corr_by_tier_pair"] for name, e in report["models"].items() if e.get("d_corr_by_tier_pair")}
    if pairs:
        columns = list(next(iter(pairs.values())))
        lines += ["", "d_corr by tier pair (mean sign of r_j - r_i; d_corr is their mean):", ""]
        lines += _table(["model", *columns], [[f"`{n}`", *(p.get(c) for c in columns)] for n, p in pairs.items()])
    if notes:
        lines += ["", *sorted(set(notes), key=notes.index)]
    lines += ["", "## Image retrieval (semantic RSM)", ""]
    lines += _retrieval_section(report.get("retrieval") or {})
    if report.get("plots"):
        lines += ["", "## Plots", ""] + [f"![{p}]({p})" for p in report["plots"]]
    lines += [
        "",
        "## Notes",
        "",
        "- Offline models are stand-ins: all-MiniLM-L6-v2 is a text-only sentence encoder (d_corr only), and the "
        "offline image encoder for retrieval is EfficientNet-Lite0, not CLIP. Compare numbers with the paper only "
        "for the paper profile's CLIP models.",
        "- Differences from the released evaluation: float64 instead of float32, stable ordering of tied radii.",
        "",
        "## Cite",
        "",
        f"- {CITATION}",
        "",
    ]
    return "\n".join(lines)


def write_report(out: Path, report: dict) -> str:
    """Write report.json and report.md into `out`; return the Markdown."""
    report = jsonable(report)
    markdown = render_markdown(report)
    shards.atomic_write_json(out / "report.json", report)
    shards.atomic_write_bytes(out / "report.md", markdown.encode("utf-8"))
    return markdown
