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

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Build and validate HierarCaps-style caption hierarchies.")
console = Console(stderr=True)

ProfileOpt = Annotated[str, typer.Option("--profile", "-p", help="offline | small | paper, or a .toml path")]
SetOpt = Annotated[Optional[list[str]], typer.Option("--set", help="override a config value: section.key=value (repeatable)")]


def _overrides(items: list[str] | None) -> dict:
    from hierarcaps.config import parse_override

    return dict(parse_override(i) for i in items or [])


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
    stages: Annotated[Optional[str], typer.Option(help="comma-separated subset, e.g. input,seed")] = None,
) -> None:
    """Run input -> seed -> augment -> distill -> generate -> filter; finished stages are reused."""
    from hierarcaps import pipeline, summary

    chosen = tuple(s.strip() for s in stages.split(",")) if stages else pipeline.BUILD_STAGES
    try:
        manifests = _run_with_progress(pipeline.build, input=input, out=out, profile=profile, overrides=_overrides(set_), stages=chosen)
    except EXPECTED_ERRORS as err:
        _fail(err)
    Console().print(summary.to_rich_table(summary.summary_rows(manifests, out)))
    _print_notes(manifests)


def _print_notes(manifests: dict[str, dict]) -> None:
    notes = [m.get("note") for m in manifests.values() if m.get("note")]
    for note in notes:
        console.print(f"[yellow]note:[/] {note}")


@app.command("stage")
def stage_cmd(
    name: Annotated[str, typer.Argument(help="input | seed | augment | distill | generate | filter")],
    out: Annotated[Path, typer.Option("--out", "-o")],
    profile: ProfileOpt = "offline",
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="caption file (stage 'input' only)")] = None,
    set_: SetOpt = None,
) -> None:
    """Run (or rerun) one stage on a run directory; upstream stages must be finished."""
    from hierarcaps import pipeline, summary

    try:
        manifest = _run_with_progress(pipeline.run_stage, name=name, run_dir=out, profile=profile, source=input, overrides=_overrides(set_))
    except EXPECTED_ERRORS as err:
        _fail(err)
    Console().print(summary.to_rich_table(summary.summary_rows({name: manifest}, out)))
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

# --- train-nli commands ---

# --- validate commands ---

# --- release commands ---

# --- prefect commands ---


if __name__ == "__main__":
    app()
