"""`validate()`: benchmark image-text models on a set of hierarchies and write a report (JSON, Markdown, PNG plots).

    validate("../shared/data/hierarcaps_test", Path("reports/test"))        # the curated 1K test set + images
    validate("runs/demo", Path("reports/demo"))                              # a built run: d_corr only (no images)

Per model: the RE metrics of the HierarCaps paper (precision / recall need aligned image and text towers, d_corr only
a text tower; the report says which each model produced and why not the others). When images exist, also the
semantic-RSM image retrieval of `hierarcaps.eval.retrieval` (another module; skipped with a note if missing).
The CLI (`hierarcaps validate`) and the Prefect flow are thin callers of this function.
"""

from __future__ import annotations

import importlib
import logging
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import numpy as np
import pyarrow as pa
import pyarrow.csv as pacsv

from hierarcaps import __version__, schema, shards
from hierarcaps.config import Profile, ValidateConfig, load_profile
from hierarcaps.engines.embed import resolve_device
from hierarcaps.eval import report as report_mod
from hierarcaps.eval.encoders import WHY_TEXT_ONLY, load_encoder, root
from hierarcaps.eval.radial import re_metrics, radii
from hierarcaps.eval.text_metrics import embed_rows, text_scores

log = logging.getLogger(__name__)

RE_STEPS = 50  # thresholds, as in the paper's evaluation


@dataclass
class EvalData:
    """Hierarchy rows, the images they describe (None: text only), and where they came from."""

    source: str
    kind: str  # "csv" | "run"
    texts: np.ndarray  # (n, 4) object
    image_of_row: np.ndarray  # (n,) int, -1 where there are no images
    images: list[Path] | None  # unique images in order of first appearance

    @property
    def hierarchy_per_image(self) -> list[list[str]]:
        first_row = {}
        for row, image in enumerate(self.image_of_row):
            first_row.setdefault(int(image), row)
        return [list(self.texts[first_row[i]]) for i in range(len(self.images or []))]


# ---------------------------------------------------------------- data


def _read_csv_rows(path: Path) -> tuple[list[list[str]], list[str | None]]:
    try:
        table = pacsv.read_csv(path, convert_options=pacsv.ConvertOptions(strings_can_be_null=False))
    except (pa.ArrowInvalid, OSError) as err:
        raise ValueError(f"{path}: not a readable CSV: {err}") from None
    column = next((c for c in ("captions", "positive") if c in table.column_names), None)
    if column is None:
        raise ValueError(f"{path}: needs a 'captions' (or 'positive') column of tiers joined by ' => '")
    urls = table.column("image_url").to_pylist() if "image_url" in table.column_names else [None] * table.num_rows
    tiers = []
    for row, text in enumerate(table.column(column).to_pylist()):
        parts = schema.split_tiers(text or "")
        if len(parts) != schema.TIERS or not all(parts):
            raise ValueError(f"{path}: data row {row}: expected {schema.TIERS} non-empty tiers joined by '=>', got {text!r}")
        tiers.append(parts)
    return tiers, urls


def _read_run(run_dir: Path) -> tuple[list[list[str]], list[str | None]]:
    stage_dir = run_dir / "filter"
    try:
        paths = shards.output_shards(stage_dir)
    except shards.ShardError as err:
        raise ValueError(f"{run_dir}: not a finished run ({err})") from None
    tiers, urls = [], []
    for path in paths:
        table = shards.read_table(path, columns=["positive", "image_url"])
        tiers += [list(p) for p in table.column("positive").to_pylist()]
        urls += table.column("image_url").to_pylist()
    return tiers, urls


def _image_file(images_dir: Path, url: str | None) -> Path | None:
    return images_dir / Path(urlparse(url).path).name if url else None


def load_data(data: str | Path, max_images: int | None = None) -> EvalData:
    """Rows and images from a folder (a CSV + images/), a HierarCaps CSV, or a built run directory."""
    path = Path(data)
    if not path.exists():
        raise FileNotFoundError(f"validate data {path} does not exist (a test-set folder, a CSV, or a run directory)")
    if path.is_dir() and (path / "filter").is_dir():
        kind, (tiers, urls), images_dir = "run", _read_run(path), None
    else:
        csv_path = path
        if path.is_dir():
            found = sorted(path.glob("*.csv")) + sorted(path.glob("*.csv.gz"))
            if len(found) != 1:
                raise ValueError(f"{path}: expected one hierarchy CSV (or a run directory with filter/), found {len(found)}")
            csv_path = found[0]
        kind, (tiers, urls) = "csv", _read_csv_rows(csv_path)
        images_dir = csv_path.parent / "images"
        images_dir = images_dir if images_dir.is_dir() else None
    if not tiers:
        raise ValueError(f"{path}: no hierarchy rows")
    texts = np.array(tiers, dtype=object)
    if images_dir is None:
        keep = slice(None) if max_images is None else slice(0, max_images)  # text only: the first N rows
        return EvalData(str(path), kind, texts[keep], np.full(len(texts[keep]), -1), None)

    files = [_image_file(images_dir, u) for u in urls]
    missing = [(row, f) for row, f in enumerate(files) if f is None or not f.exists()]
    if missing:
        row, file = missing[0]
        raise ValueError(f"{path}: {len(missing)} row(s) name no image file in {images_dir}, e.g. data row {row} -> {file}")
    index: dict[Path, int] = {}
    image_of_row = np.array([index.setdefault(f, len(index)) for f in files])
    keep_rows = np.ones(len(files), bool) if max_images is None else image_of_row < max_images
    images = list(index)[: max_images]
    return EvalData(str(path), kind, texts[keep_rows], image_of_row[keep_rows], images)


# ---------------------------------------------------------------- models


def _score_model(name: str, data: EvalData, device: str) -> tuple[dict, dict]:
    """(report entry, arrays for plots) for one model."""
    started = time.perf_counter()
    encoder = load_encoder(name, device)
    text_emb = embed_rows(data.texts, encoder.encode_text)
    origin = root(encoder)
    can_pr = "precision" in encoder.capabilities and data.images is not None
    image_emb = encoder.encode_images(data.images) if can_pr else None
    metrics = re_metrics(data.texts, text_emb, image_emb, data.image_of_row, origin, steps=RE_STEPS, return_curves=True)
    curves = metrics.pop("curves", None)
    checks = text_scores(data.texts, text_emb, origin)
    metrics["tier4_to_tier3_top1"] = checks["tier4_to_tier3_top1"]
    absent = {}
    if "precision" not in encoder.capabilities:
        absent = {"precision": WHY_TEXT_ONLY, "recall": WHY_TEXT_ONLY}
    elif data.images is None:
        absent = {m: "the data has no images" for m in ("precision", "recall")}
    row_radii = radii(text_emb, origin)
    entry = {
        "model": encoder.describe(),
        "capabilities": sorted(encoder.capabilities),
        "metrics": metrics,
        "absent": absent,
        "d_corr_by_tier_pair": checks["d_corr_by_tier_pair"],
        "radius_by_tier": {"mean": row_radii.mean(axis=0).tolist(), "std": row_radii.std(axis=0).tolist()},
        "seconds": round(time.perf_counter() - started, 2),
    }
    log.info("%s: %s (%.1f s)", name, ", ".join(f"{k}={v:.4f}" for k, v in metrics.items()), entry["seconds"])
    return entry, {"radii": row_radii, "curves": curves}


def _run_retrieval(data: EvalData, cfg: ValidateConfig, device: str) -> tuple[dict, dict]:
    if data.images is None:
        return {"skipped": "the data has no images"}, {}
    try:
        module = importlib.import_module("hierarcaps.eval.retrieval")
        run = module.run_retrieval
    except (ImportError, AttributeError) as err:
        log.warning("image retrieval skipped: %s", err)
        return {"skipped": f"hierarcaps.eval.retrieval.run_retrieval is not available ({err})"}, {}
    started = time.perf_counter()
    try:
        result = dict(run(data.images, data.hierarchy_per_image, cfg, device))
    except (ImportError, RuntimeError, ValueError, OSError) as err:  # keep the RE results: report, don't die
        log.exception("image retrieval failed")
        return {"skipped": f"image retrieval failed: {type(err).__name__}: {err}"}, {}
    arrays = result.pop("arrays", {}) or {}
    result.setdefault("seconds", round(time.perf_counter() - started, 2))
    return result, arrays


# ---------------------------------------------------------------- the entry point


def validate(
    data: str | Path,
    out: Path | None = None,
    profile: str | Profile = "offline",
    overrides: dict[str, Any] | None = None,
    models: list[str] | None = None,
    device: str = "auto",
    max_images: int | None = None,
) -> dict:
    """Score `models` (default: the profile's text model + CLIP models) on `data`; write report.json/.md + plots.

    `out` defaults to `<data>/validate` when `data` is a run directory. Returns the report (as in report.json) plus
    "markdown": the text of report.md (the Prefect flow publishes it as an artifact).
    """
    started = time.perf_counter()
    prof = profile if isinstance(profile, Profile) else load_profile(profile, overrides)
    if out is None:
        if not (Path(data) / "filter").is_dir():
            raise ValueError(f"validate {data}: give an output folder (out), needed unless data is a run directory")
        out = Path(data) / "validate"
    cfg = prof.validate_
    device = resolve_device(cfg.device if device == "auto" else device)
    max_images = cfg.max_images if max_images is None else max_images
    loaded = load_data(data, max_images)
    names = list(models) if models else [cfg.text_model, *cfg.clip_models]
    log.info("validate: %d rows, %s images from %s on %s", len(loaded.texts),
             len(loaded.images) if loaded.images is not None else "no", loaded.source, device)

    model_entries, model_arrays = {}, {}
    for name in names:
        try:
            model_entries[name], model_arrays[name] = _score_model(name, loaded, device)
        except (RuntimeError, ValueError, FileNotFoundError, OSError) as err:
            log.error("model %s failed: %s", name, err)
            model_entries[name] = {"error": str(err)}
    if names and all("error" in e for e in model_entries.values()):
        raise RuntimeError(f"no model could be scored: {'; '.join(e['error'] for e in model_entries.values())}")

    retrieval, retrieval_arrays = _run_retrieval(loaded, cfg, device)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    plots = report_mod.make_plots(out, model_arrays, retrieval_arrays)
    result = {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "hierarcaps_version": __version__,
        "profile": prof.name,
        "device": device,
        "data": {
            "source": loaded.source,
            "kind": loaded.kind,
            "rows": int(len(loaded.texts)),
            "images": len(loaded.images) if loaded.images is not None else 0,
            "max_images": max_images,
        },
        "re_steps": RE_STEPS,
        "models": model_entries,
        "retrieval": retrieval,
        "plots": [p.name for p in plots],
        "seconds": round(time.perf_counter() - started, 2),
    }
    markdown = report_mod.write_report(out, result)
    return {**result, "markdown": markdown}
