"""`hierarcaps`: one command, thin over the package's functions (the Prefect flows call the same ones)."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer
from rich.console import Console
from rich.logging import RichHandler

from hierarcaps import options
from hierarcaps.nli.command import train_nli_model
from hierarcaps.stages import STAGES
from hierarcaps.student.train import train_start

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build and validate HierarCaps-style caption hierarchies.")
console = Console(stderr=True)
# Tables go to stdout; when it is a pipe or a log file, don't squeeze them into 80 columns.
out_console = Console(width=None if sys.stdout.isatty() else 200)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="offline | small | paper, or a .toml path")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config value: section.key=value (repeatable)")]
ExecutorOpt = Annotated[Optional[str], typer.Option("--executor", help="where shards run: local | ray (default: runner.executor)")]
RayAddressOpt = Annotated[Optional[str], typer.Option("--ray-address", help="Ray cluster to use, e.g. HOST:6379 (runner.ray.address)")]


def _overrides(items: list[str] | None, executor: str | None = None, ray_address: str | None = None) -> dict:
    """--set items, plus --executor / --ray-address as the runner settings they stand for."""
    from hierarcaps.config import parse_override

    overrides = dict(parse_override(i) for i in items or [])
    if executor is not None:
        overrides["runner.executor"] = executor
    if ray_address is not None:
        overrides["runner.ray.address"] = ray_address
    return overrides


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(message)s",
        handlers=[RichHandler(console=console, show_path=False)],
    )


def _progress():
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description:>9}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)


def _run_with_progress(fn, **kwargs) -> dict:
    with _progress() as progress:
        bars: dict[str, int] = {}

        def on_progress(stage: str, done: int, total: int) -> None:
            if stage not in bars:
                bars[stage] = progress.add_task(stage, total=total or None)
            progress.update(bars[stage], completed=done, total=total or None)

        return fn(on_progress=on_progress, **kwargs)


def _fail(err: Exception) -> None:
    console.print(f"[bold red]error:[/] {err}")
    raise typer.Exit(1)


EXPECTED_ERRORS: tuple[type[Exception], ...] = (ValueError, RuntimeError, FileNotFoundError)


@app.command()
def build(
    input: Annotated[Path, typer.Option("--input", "-i", help="captions: parquet, CSV or JSONL with a 'caption' column")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory, e.g. runs/demo")],
    profile: ProfileOpt = "offline",
    set_: SetOpt = None,
    stages: Annotated[Optional[str], typer.Option(help="comma-separated subset, e.g. input,seed (run in build order)")] = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Run input -> seed -> augment -> distill -> generate -> filter; finished stages are reused."""
    from hierarcaps import pipeline, summary

    try:
        manifests = _run_with_progress(pipeline.build, input=input, out=out, profile=profile,
                                       overrides=_overrides(set_, executor, ray_address), stages=stages)
    except EXPECTED_ERRORS as err:
        _fail(err)
    out_console.print(summary.to_rich_table(summary.summary_rows(manifests, out)))
    _print_notes(manifests)


def _print_notes(manifests: dict[str, dict]) -> None:
    notes = [m.get("note") for m in manifests.values() if m.get("note")]
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


@app.command("stage")
def stage_cmd(
    name: Annotated[str, typer.Argument(help="a stage: " + " | ".join(STAGES))],
    out: Annotated[Path, typer.Option("--out", "-o")],
    profile: ProfileOpt = "offline",
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="caption file (stage 'input' only)")] = None,
    set_: SetOpt = None,
    executor: ExecutorOpt = None,
    ray_address: RayAddressOpt = None,
) -> None:
    """Run (or rerun) one stage on a run directory; upstream stages must be finished."""
    from hierarcaps import pipeline, summary

    try:
        manifest = _run_with_progress(pipeline.run_stage, name=name, run_dir=out, profile=profile, source=input,
                                      overrides=_overrides(set_, executor, ray_address))
    except EXPECTED_ERRORS as err:
        _fail(err)
    out_console.print(summary.to_rich_table(summary.summary_rows({name: manifest}, out)))
    _print_notes({name: manifest})


@app.command()
def profiles() -> None:
    """List the profiles and what each runs."""
    from hierarcaps.config import available_profiles, load_profile

    for name in available_profiles():
        console.print(f"[bold]{name}[/]: {load_profile(name).description}")


@app.command("show-config")
def show_config(profile: ProfileOpt = "offline", set_: SetOpt = None) -> None:
    """Print the resolved config of a profile (after --set overrides) as JSON."""
    from hierarcaps.config import load_profile

    try:
        resolved = load_profile(profile, _overrides(set_))
    except EXPECTED_ERRORS as err:
        _fail(err)
    sys.stdout.write(json.dumps(resolved.model_dump(mode="json", by_alias=True), indent=2) + "\n")


# --- filter commands ---


@app.command("filter")
def filter_cmd(
    input: Annotated[Path, typer.Option("--input", "-i", help="HierarCaps CSV (positive,negative,image_url or id,captions,image_url) or hierarchy parquet")],
    out: Annotated[Path, typer.Option("--out", "-o", help="run directory, e.g. runs/refilter")],
    profile: ProfileOpt = "offline",
    set_: SetOpt = None,
    write_csv: Annotated[Optional[Path], typer.Option("--write-csv", help="also write the accepted rows as an official HierarCaps CSV")] = None,
) -> None:
    """Re-filter existing HierarCaps data with this profile's checks and NLI model; print each check's accept rate."""
    from rich.table import Table

    from hierarcaps import inputs, summary
    from hierarcaps.pipeline import filter_file
    from hierarcaps.stages.refilter import REPORT, accepted_rows

    try:
        report = _run_with_progress(filter_file, input=input, out=out, profile=profile, overrides=_overrides(set_))
        if write_csv is not None:
            inputs.write_hierarchies_csv(accepted_rows(out), write_csv)
    except EXPECTED_ERRORS as err:
        _fail(err)
    table = Table(title=f"accept rate per check ({report['nli_model']})")
    table.add_column("check", overflow="fold")
    table.add_column("kind")
    for column in ("checked", "passed", "accept rate"):
        table.add_column(column, justify="right")
    for check in report["checks"]:
        rate = "-" if check["accept_rate"] is None else f"{check['accept_rate']:.1%}"
        table.add_row(check["check"], check["kind"], str(check["checked"]), str(check["passed"]), rate)
    Console().print(table)
    Console().print(summary.to_rich_table(summary.summary_rows(report["manifests"], out), title="hierarcaps filter"))
    console.print(f"report: {out / 'filter' / REPORT}" + (f"; accepted rows: {write_csv}" if write_csv else ""))
    _print_notes(report["manifests"])


# --- train-nli commands ---


def _report_train_nli(run, args: dict) -> None:
    try:
        card = run()
    except EXPECTED_ERRORS as err:
        _fail(err)
    th = card["thresholds"]
    if args["backend"] == "minilm-nli":
        dev = card["dev"]
        for source, entry in dev["by_source"].items():
            console.print(f"  {source:>18} (n={entry['n']}): {entry['accuracy']:.3f}")
        console.print(f"dev accuracy {dev['accuracy']:.4f}; temperature {card['temperature']}; thresholds entail {th['entail']} "
                      f"contradict {th['contradict']}; {card['training']['train_seconds']:.0f} s of training")
    else:
        metrics = card["dev_metrics"]
        console.print(f"[yellow]note:[/] {card['description']}")
        for name, entry in metrics["per_type"].items():
            console.print(f"  {name:>17} ({entry['label']}, n={entry['n']}): {entry['accuracy']:.3f}")
        console.print(
            f"dev pair accuracy {metrics['accuracy']:.4f}; temperature {card['temperature']}; thresholds entail {th['entail']} "
            f"contradict {th['contradict']} joint {th.get('joint')} (dev: originals kept {th['dev_originals_kept']:.1%}, semantic errors rejected "
            f"{th['dev_semantic_rejected']:.1%}); {card['timing_s']['total']:.0f} s"
        )
    out, backend = args["out"], args["backend"]
    console.print(f"artifact: {out} (weights sha256 {card['weights_sha256'][:16]}...); use: --set filter.nli.backend={backend} --set filter.nli.model={out}")


# options and defaults: the arguments of nli/command.train_nli_model, which the train-nli flow shares (options.py)
app.command("train-nli")(options.typer_command(train_nli_model, _report_train_nli, (
    "Train an offline NLI model: the minilm-nli cross-encoder (human NLI labels + caption-hierarchy pairs) or the "
    "minilm-head stand-in; use it with --set filter.nli.model=OUT (and filter.nli.backend).")))


@app.command("nli")
def nli_cmd(
    input: Annotated[Path, typer.Option("--input", "-i", help="pairs: CSV, TSV, JSONL or parquet with columns premise, hypothesis")],
    out: Annotated[Path, typer.Option("--out", "-o", help="scored parquet: the input columns + entailment, neutral, contradiction, label")],
    profile: ProfileOpt = "offline",
    set_: SetOpt = None,
) -> None:
    """Score premise / hypothesis pairs with the profile's NLI back-end (filter.nli), e.g. to see why a row was rejected."""
    from hierarcaps.pipeline import score_nli

    try:
        summary = score_nli(input, out, profile, _overrides(set_))
    except EXPECTED_ERRORS as err:
        _fail(err)
    counts = ", ".join(f"{label} {n}" for label, n in summary["labels"].items())
    console.print(f"{summary['rows']} pairs scored by {summary['model']} ({counts}) -> {out}")


def _report_train_student(run, args: dict) -> None:
    try:
        card = run()
    except EXPECTED_ERRORS as err:
        _fail(err)
    console.print(f"[yellow]note:[/] {card['description']}")
    console.print(f"eval loss {card['eval_loss']:.3f}, train loss {card['train_loss']:.3f}, {card['seconds']:.0f} s; "
                  f"adapter sha256 {card['adapter_sha256'][:16]}...; use: --set distill.student.start={args['out']}")


# options and defaults: the arguments of student/train.train_start, which the train-student flow shares (options.py)
app.command("train-student")(options.typer_command(train_start, _report_train_student,
                                                   "Train the offline student's shipped start (SmolLM2-135M + LoRA) on the development share."))


# --- validate commands ---


@app.command("validate")
def validate_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="test-set folder (CSV + images/), a HierarCaps CSV, or a run dir")],
    out: Annotated[Path, typer.Option("--out", "-o", help="report folder (report.json, report.md, plots)")],
    model: Annotated[Optional[list[str]], typer.Option("--model", "-m", help="minilm | ARCH:TAG (open_clip) | ...; repeatable; default: the profile's")] = None,
    profile: ProfileOpt = "offline",
    set_: SetOpt = None,
    max_images: Annotated[Optional[int], typer.Option("--max-images", help="only the first N images (and their rows)")] = None,
    device: Annotated[str, typer.Option(help="auto | cpu | cuda")] = "auto",
) -> None:
    """Score models on hierarchies (RE metrics, image retrieval) and write a report with plots."""
    from hierarcaps.eval.validate import validate

    try:
        result = validate(data, out, profile=profile, overrides=_overrides(set_), models=model, device=device, max_images=max_images)
    except EXPECTED_ERRORS as err:
        _fail(err)
    for name, entry in result["models"].items():
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in entry.get("metrics", {}).items()) or f"failed: {entry.get('error')}"
        console.print(f"[bold]{name}[/]: {metrics}")
    console.print(f"report: {out / 'report.md'} ({result['seconds']:.0f} s)")


@app.command("verify")
def verify_cmd(run: Annotated[Path, typer.Argument(help="run directory, e.g. runs/demo")]) -> None:
    """Check every stage's shards and markers against their recorded sha256; print each bad file; exit 1 if any."""
    from hierarcaps.shards import verify_run

    checked, problems = verify_run(run)
    if not checked:
        _fail(FileNotFoundError(f"{run}: no stage manifest found; is it a run directory?"))
    for problem in problems:
        out_console.print(f"[red]bad:[/] {problem}", soft_wrap=True)
    console.print(f"{len(checked)} stage(s) checked ({', '.join(checked)}): "
                  + (f"[bold red]{len(problems)} problem(s)[/]" if problems else "every shard verified"))
    if problems:
        raise typer.Exit(1)


# --- finetune commands ---


@app.command("finetune")
def finetune_cmd(
    data: Annotated[str, typer.Option("--data", "-d", help="run dir (its filter shards), release folder, or HierarCaps CSV / .csv.gz")],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder (model.safetensors + card.json); a rerun resumes")],
    model: Annotated[Optional[str], typer.Option("--model", "-m", help="minilm | ARCH:TAG (open_clip text tower); default: the profile's")] = None,
    profile: ProfileOpt = "offline",
    set_: SetOpt = None,
) -> None:
    """Radial Embedding fine-tuning of a text encoder on hierarchies (the HierarCaps objective); validate it with --model OUT."""
    from hierarcaps import pipeline

    try:
        card = _run_with_progress(pipeline.finetune, data=data, out=out, profile=profile, overrides=_overrides(set_), model=model)
    except EXPECTED_ERRORS as err:
        _fail(err)
    last = card["losses"]["per_epoch"][-1] if card["losses"]["per_epoch"] else {}
    console.print(f"fine-tuned {card['base_model']} for {card['steps']['total']} steps in {card['timing_s']['train']:.0f} s; "
                  f"last epoch loss {last.get('total', float('nan')):.4f}")
    dev = card["dev"]
    if dev.get("rows"):
        for metric in ("d_corr", "tier4_to_tier3_top1"):
            console.print(f"  dev {metric}: {dev['base'][metric]:.4f} -> {dev['tuned'][metric]:.4f}")
        console.print(f"  dev cosine to the frozen encoder: {dev['tuned']['cosine_to_frozen']:.4f} ({dev['rows']} rows)")
    console.print(f"model: {out} (use: hierarcaps validate --model {card['base_model']} --model {out} ...)")


# --- release commands ---


@app.command("publish")
def publish_cmd(
    run: Annotated[Path, typer.Argument(help="run directory, e.g. runs/demo")],
    to: Annotated[Path, typer.Option("--to", help="release folder to write (upload it as is)")],
    stage: Annotated[str, typer.Option(help="stage whose shards are released")] = "filter",
    include_rejects: Annotated[bool, typer.Option("--include-rejects", help="also release the rejects shards")] = False,
    license: Annotated[str, typer.Option(help="license id for the dataset card")] = "cc-by-4.0",
) -> None:
    """Write a release: verified shards, manifest.json (sha256 per file), dataset card and HierarCaps CSV."""
    from hierarcaps import release, shards

    try:
        out = release.publish(run, to, stage=stage, include_rejects=include_rejects, license=license)
    except EXPECTED_ERRORS as err:
        _fail(err)
    totals = json.loads((out / "manifest.json").read_text())["totals"]
    console.print(f"published {totals['rows']} rows in {totals['shards']} shard(s) to {out}")
    console.print(f"manifest.json sha256 {shards.sha256_file(out / 'manifest.json')} (pin it with download --manifest-sha256)", soft_wrap=True)


@app.command("download")
def download_cmd(
    source: Annotated[str, typer.Argument(help="official:test | official:test-expanded | official:train (the public HierarCaps "
                                          "release; test with its 1,000 images), or a release URL, local release folder, or "
                                          "Hugging Face dataset repo id")],
    to: Annotated[Path, typer.Option("--to", help="folder to download into; a rerun resumes")],
    workers: Annotated[Optional[int], typer.Option(min=1, help="files fetched in parallel (default: 4; official: download.workers)")] = None,
    manifest_sha256: Annotated[Optional[str], typer.Option(help="refuse the release unless manifest.json has this sha256")] = None,
    profile: ProfileOpt = "offline",
    set_: SetOpt = None,
) -> None:
    """Fetch a release or the official HierarCaps files in parallel (resumable), verify every file's sha256 and size,
    refuse any mismatch. Official sources read --set download.official_base=URL / download.coco_base=URL (a mirror)."""
    from hierarcaps import official, release
    from hierarcaps.config import load_profile

    if logging.getLogger().level > logging.DEBUG:
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one INFO line per request drowns the progress bar
    name = official.parse(source)
    try:
        if name is None:
            if set_:
                raise ValueError("--set applies to official:... sources only (download.official_base, download.coco_base)")
            out = release.download(source, to, workers=workers or 4, manifest_sha256=manifest_sha256)
            console.print(f"downloaded and verified {source} into {out}")
            return
        if manifest_sha256:
            raise ValueError(f"--manifest-sha256 is for releases; {source}'s files are pinned in hierarcaps/official.py")
        overrides = _overrides(set_) | ({"download.workers": workers} if workers else {})
        got = official.download_official(name, to, load_profile(profile, overrides).download)
    except EXPECTED_ERRORS as err:
        _fail(err)
    images = f" + {got['images']} images in {official.IMAGES}/" if got["images"] else ""
    recorded = f"; sha256 recorded at first download: {', '.join(got['recorded'])} ({to / official.LOCK})" if got["recorded"] else ""
    console.print(f"{source}: {', '.join(got['files'])}{images} in {to}, every sha256 checked{recorded}", soft_wrap=True)


# --- viewer commands ---


@app.command("view")
def view_cmd(
    source: Annotated[Path, typer.Argument(help="run folder, release folder, review kit, or HierarCaps CSV / .csv.gz (or a folder with one CSV + images/)")],
    out: Annotated[Path, typer.Option("--out", "-o", help="site folder to write (an earlier site there is replaced whole)")],
    stage: Annotated[Optional[str], typer.Option(help="a run's stage to show (default: the last finished, i.e. filter)")] = None,
    images: Annotated[Optional[list[Path]], typer.Option("--images", help="another folder holding the images, named as in image_url (repeatable)")] = None,
    copy_images: Annotated[bool, typer.Option("--copy-images", help="copy the local images into the site (default: relative links)")] = False,
    remote_images: Annotated[bool, typer.Option("--remote-images/--no-remote-images", help="show rows without a local image from their URL (else a link only)")] = True,
) -> None:
    """Write a static site (open SITE/index.html from disk; no server) showing each row's image beside its tiers, with
    reject reasons and NLI scores; for a review kit, a page to mark verdicts and download the labels file."""
    from hierarcaps import view

    try:
        site = view.build_site(source, out, stage=stage, images=images or [], copy_images=copy_images, remote_images=remote_images)
    except EXPECTED_ERRORS as err:
        _fail(err)
    counts = site["counts"]
    console.print(f"{site['rows']} rows ({counts['accepted']} accepted, {counts['rejected']} rejected; images: "
                  f"{counts['images_local']} local, {counts['images_remote']} by URL) in {site['chunks']} chunk(s), "
                  f"{site['bytes'] / 1e6:.1f} MB", soft_wrap=True)
    console.print(f"open: {Path(site['index']).as_uri()}", soft_wrap=True)


# --- prefect commands ---


@app.command()
def serve(
    name: Annotated[str, typer.Option("--name", help="which deployments of prefect.yaml to serve: offline | small | paper")] = "offline",
    project_dir: Annotated[Path, typer.Option("--project-dir", help="the hierarcaps repo (holds prefect.yaml)")] = Path("."),
) -> None:
    """Serve prefect.yaml's deployments (e.g. build-hierarcaps/offline) from this process: no work pool or worker."""
    from hierarcaps import orchestration

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per API call otherwise
    try:
        orchestration.serve(project_dir, name)
    except EXPECTED_ERRORS as err:
        _fail(err)


# --- review commands ---

review_app = typer.Typer(no_args_is_help=True, help="Blind review kit: a shuffled sheet with the source hidden, and its scores (docs/review.md).")


@review_app.command("sample")
def review_sample_cmd(
    run: Annotated[Path, typer.Argument(help="run directory (its accepted filter rows), or a HierarCaps CSV / .csv.gz")],
    out: Annotated[Path, typer.Option("--out", "-o", help="kit folder to write (sheet.md/.json/.csv, brief.md, key.json)")],
    n: Annotated[int, typer.Option("--n", help="rows to draw from each source")] = 40,
    compare: Annotated[Optional[Path], typer.Option("--compare", help="second source: a run directory or a HierarCaps CSV / .csv.gz")] = None,
    seed: Annotated[int, typer.Option(help="seeds the draw, the shuffle and the ids")] = 0,
    force: Annotated[bool, typer.Option("--force", help="replace --out if it exists")] = False,
) -> None:
    """Write a blind review sheet (rows shuffled, source hidden) and, apart, the key that says where each row came from."""
    from hierarcaps import review

    try:
        key = review.sample(run, out, n=n, compare=compare, seed=seed, force=force)
    except EXPECTED_ERRORS as err:
        _fail(err)
    drawn = ", ".join(f"{s['sampled']} from {name} ({s['path']})" for name, s in key["sources"].items())
    shared = f"; {key['shared_used']} of {key['shared_captions']} shared captions" if key["shared_captions"] is not None else ""
    console.print(f"wrote {len(key['rows'])} items to {out}: {drawn}; rule: {key['rule']}{shared}", soft_wrap=True)
    console.print(f"give each reviewer {out / review.BRIEF_FILE} and {out / review.SHEET_MD} only; keep {out / review.KEY} apart; "
                  f"then: hierarcaps review score {out} --labels A.json --labels B.json", soft_wrap=True)


@review_app.command("score")
def review_score_cmd(
    review_dir: Annotated[Path, typer.Argument(help="kit folder written by `hierarcaps review sample`")],
    labels: Annotated[list[Path], typer.Option("--labels", "-l", help="a reviewer's labels JSON (docs/review.md); repeat for agreement")],
    json_out: Annotated[Optional[Path], typer.Option("--json", help="also write the scores as JSON here")] = None,
) -> None:
    """Shares valid per source (positive, negative tiers 1-4, whole rows) and agreement between reviewers (Cohen's kappa)."""
    from hierarcaps import review

    try:
        result = review.score(review_dir, labels, json_out=json_out)
    except EXPECTED_ERRORS as err:
        _fail(err)
    for table in review.score_tables(result):
        out_console.print(table)
    if json_out is not None:
        console.print(f"scores: {json_out}")


app.add_typer(review_app, name="review")


if __name__ == "__main__":
    app()
