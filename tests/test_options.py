"""One definition per command: `train-student` / `train-nli` options and the flows' parameters come from the functions'
signatures (options.py), so their defaults, types and names cannot drift."""

from __future__ import annotations

from pathlib import Path

import pytest
import typer
from pydantic_core import to_jsonable_python
from typer.testing import CliRunner

from hierarcaps import options
from hierarcaps.cli import app
from hierarcaps.nli.command import train_nli_model
from hierarcaps.student.train import train_start

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = [
    (train_start, "train-student", "flows/student.py:train_student_flow"),
    (train_nli_model, "train-nli", "flows/nli.py:train_nli_flow"),
]


@pytest.mark.parametrize("fn, command, entrypoint", COMMANDS, ids=[c[1] for c in COMMANDS])
def test_cli_and_flow_defaults_are_the_functions(fn, command, entrypoint):
    from prefect.flows import load_flow_from_entrypoint

    names = [p.name for p in options.options(fn)]
    expected = options.defaults(fn)
    assert "out" in names and "out" not in expected and len(expected) == len(names) - 1
    cli = {p.name: p for p in typer.main.get_command(app).commands[command].params if p.name != "help"}
    assert list(cli) == names
    assert {name: cli[name].default for name in expected} == expected
    assert cli["out"].required and all(p.help for p in cli.values())
    flow = load_flow_from_entrypoint(str(ROOT / entrypoint))
    schema = flow.parameters
    assert list(schema.properties) == names and schema.required == ["out"]
    assert {name: schema.properties[name].get("default") for name in expected} == to_jsonable_python(expected)


def test_cli_passes_every_option_to_the_function(monkeypatch, tmp_path):
    import hierarcaps.student.train as train_module

    calls = []
    card = {"description": "d", "eval_loss": 1.0, "train_loss": 1.0, "seconds": 1.0, "adapter_sha256": "0" * 64}
    monkeypatch.setattr(train_module, "train_start", lambda **kwargs: calls.append(kwargs) or card)
    result = CliRunner().invoke(app, ["train-student", "-o", str(tmp_path / "s"), "--lr", "0.01", "--steps", "3"])
    assert result.exit_code == 0, result.output
    assert calls == [options.defaults(train_start) | {"out": tmp_path / "s", "learning_rate": 0.01, "steps": 3}]


def test_a_bad_value_names_the_option(tmp_path):
    from prefect.flows import load_flow_from_entrypoint

    flow = load_flow_from_entrypoint(str(ROOT / "flows" / "student.py:train_student_flow"))
    with pytest.raises(ValueError, match="steps='many'"):
        flow.fn(out=str(tmp_path), steps="many")
