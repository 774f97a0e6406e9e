"""One definition per command (img2dataset's habit): the function a command runs declares its options as keyword
arguments whose annotation carries the help,

    steps: Annotated[int, Opt("optimizer steps")] = 480,

and the typer command (`cli.py`) and the Prefect flow (`flows/`) are generated from that signature, so a default, a type
or a help text stands in one place. Parameters without an `Opt` (e.g. a config object for tests) are not exposed.

Both callers bind their arguments to the signature (defaults filled in, values coerced to the annotated type, so a
flow's "runs/x" arrives as a Path) and look the function up by module and name at each call, as an import would.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Callable, Optional, get_args

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Opt:
    help: str
    flags: tuple[str, ...] = ()  # CLI names; default: --name-with-dashes


def options(fn: Callable) -> list[inspect.Parameter]:
    """The parameters of `fn` that carry an `Opt`, keyword-only, annotated `Annotated[type, Opt(...)]`."""
    hints = typing.get_type_hints(fn, include_extras=True)
    found = []
    for param in inspect.signature(fn).parameters.values():
        if _opt(hints.get(param.name)) is not None:
            found.append(param.replace(annotation=hints[param.name], kind=inspect.Parameter.KEYWORD_ONLY))
    return found


def defaults(fn: Callable) -> dict[str, Any]:
    return {p.name: p.default for p in options(fn) if p.default is not inspect.Parameter.empty}


def _opt(hint: Any) -> Opt | None:
    return next((m for m in getattr(hint, "__metadata__", ()) if isinstance(m, Opt)), None)


def _type(param: inspect.Parameter) -> Any:
    return get_args(param.annotation)[0]


def _caller(fn: Callable) -> Callable[..., Any]:
    """Call `fn` (looked up anew) with every option bound: defaults filled in, values coerced to their types."""
    from pydantic import TypeAdapter, ValidationError

    params = options(fn)
    signature = inspect.Signature(params)
    adapters = {p.name: TypeAdapter(_type(p)) for p in params}
    module, name = fn.__module__, fn.__name__

    def call(**kwargs: Any) -> Any:
        bound = signature.bind(**kwargs)
        bound.apply_defaults()
        values = {}
        for key, value in bound.arguments.items():
            try:
                values[key] = adapters[key].validate_python(value)
            except ValidationError as err:
                raise ValueError(f"{key}={value!r}: {err.errors()[0]['msg']}") from None
        return getattr(importlib.import_module(module), name)(**values)

    return call


def _signed(wrapper: Callable, params: list[inspect.Parameter], doc: str | None) -> Callable:
    wrapper.__signature__ = inspect.Signature(params)
    wrapper.__annotations__ = {p.name: p.annotation for p in params}
    wrapper.__doc__ = doc
    return wrapper


def typer_command(fn: Callable, handle: Callable[[Callable[[], Any], dict], None], doc: str) -> Callable:
    """A function for `app.command(...)`: `fn`'s options as typer options; `handle(run, args)` calls `run()` and
    reports (args: the options as given)."""
    import typer

    params = []
    for p in options(fn):
        flags = _opt(p.annotation).flags or ("--" + p.name.replace("_", "-"),)
        kind = _type(p)
        if type(None) in get_args(kind):  # `Path | None` -> Optional[Path], the union typer reads
            kind = Optional[next(a for a in get_args(kind) if a is not type(None))]
        params.append(p.replace(annotation=Annotated[kind, typer.Option(*flags, help=_opt(p.annotation).help)]))
    call = _caller(fn)

    def command(**kwargs: Any) -> None:
        handle(lambda: call(**kwargs), kwargs)

    return _signed(command, params, doc)


def prefect_flow(fn: Callable, name: str, description: str, summary: Callable[[Any], str]):
    """A Prefect flow with `fn`'s options as its parameters; it logs `summary(result)` and returns the result."""
    from prefect import flow, get_run_logger
    from prefect.exceptions import MissingContextError

    params = [p.replace(annotation=_type(p)) for p in options(fn)]
    call = _caller(fn)

    def run(**kwargs: Any) -> Any:
        result = call(**kwargs)
        try:
            logger = get_run_logger()
        except MissingContextError:  # called as a plain function (flow.fn)
            logger = log
        logger.info("%s", summary(result))
        return result

    run.__name__ = run.__qualname__ = name.replace("-", "_")
    return flow(name=name, description=description)(_signed(run, params, fn.__doc__))
