"""The README's Python examples are run as written, so they cannot rot."""

import math
import re
from pathlib import Path

import torch

README = Path(__file__).resolve().parent.parent / "README.md"


def test_readme_python_blocks_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the examples write runs/demo and my-vae
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert len(blocks) >= 2
    namespace = {}
    for block in blocks:  # later blocks build on earlier ones, as a reader would
        exec(compile(block, str(README), "exec"), namespace)
    assert math.isfinite(namespace["history"][-1].test_elbo)
    assert namespace["images"].shape == (16, 1, 28, 28)
    assert namespace["again"].shape == (8, 1, 28, 28) and namespace["codes"].shape == (8, 20)
    assert torch.equal(namespace["same"].decode(namespace["codes"]).mean, namespace["pictures"])
    # What the README tells users to plot can be turned into numpy as it is.
    for tensor in (namespace["pictures"], namespace["q"].mean, namespace["codes"], namespace["again"]):
        assert not tensor.requires_grad
        tensor.numpy()


def test_readme_test_command_is_what_ci_runs():
    ci = (README.parent / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]"' in README.read_text() and 'pip install -e ".[test]"' in ci
    assert "python -m pytest" in README.read_text() and "python -m pytest" in ci
