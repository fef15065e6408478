"""The scripts in examples/ run and produce sensible numbers."""

import runpy
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("script", sorted(p.name for p in EXAMPLES.glob("*.py")))
def test_example_runs(script, capsys):
    namespace = runpy.run_path(str(EXAMPLES / script))
    scores = namespace["main"](["--epochs", "2"])
    assert scores.log_likelihood >= scores.elbo - 0.5
    assert "after 2 epochs" in capsys.readouterr().out
