"""The documentation: every Python block runs, the site builds with mkdocs --strict, and a
real browser typesets its maths."""

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DOCS = sorted((ROOT / "docs").glob("*.md"))


def _python_blocks(path: Path):
    return re.findall(r"```python\n(.*?)```", path.read_text(), flags=re.S)


def test_every_page_is_in_the_site_navigation():
    nav = (ROOT / "mkdocs.yml").read_text()
    assert {p.name for p in DOCS} == set(re.findall(r"\b([\w-]+\.md)\b", nav))


@pytest.mark.parametrize("page", [p.name for p in DOCS if _python_blocks(p)])
def test_python_blocks_of_the_page_run(page, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # snippets that write files write them here
    namespace = {"__name__": f"docs_{page}"}
    for block in _python_blocks(ROOT / "docs" / page):  # later blocks build on earlier ones
        exec(compile(block, str(ROOT / "docs" / page), "exec"), namespace)


def test_the_pages_with_the_maths_have_checked_snippets():
    assert len(_python_blocks(ROOT / "docs" / "mistakes.md")) >= 10


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    out = tmp_path_factory.mktemp("site")
    result = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
                            cwd=ROOT, capture_output=True, text=True, timeout=600,
                            env={**__import__("os").environ, "NO_MKDOCS_2_WARNING": "1"})
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def test_site_builds_strictly_with_the_cli_and_api_references(site):
    cli = (site / "cli" / "index.html").read_text()
    for command in ("pyrovae train", "pyrovae evaluate", "pyrovae sample", "pyrovae plot", "pyrovae report",
                    "pyrovae encode", "pyrovae reconstruct"):
        assert command in cli
    assert "--classifier-weight" in cli and "--z-dim" in cli
    api = (site / "api" / "index.html").read_text()
    for name in ("IAFGuide", "VampPrior", "M2_ELBO", "ShardedSampling", "log_likelihood", "DiscretizedLogistic",
                 "load_images", "images_for_model", "bits_per_dim"):
        assert name in api
    assert (site / "javascripts" / "katex" / "katex.min.js").is_file()
    assert 'class="arithmatex"' in (site / "elbo" / "index.html").read_text()


@pytest.mark.skipif(shutil.which("chromium") is None, reason="needs Debian's chromium (installed by .ci/run)")
def test_browser_typesets_the_maths(site, tmp_path):
    page = site / "elbo" / "index.html"
    command = ["chromium", "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
               f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=10000"]
    dom = subprocess.run(command + ["--dump-dom", page.as_uri()], capture_output=True, text=True, timeout=120)
    typeset = re.search(r'data-math-typeset="(\d+)"', dom.stdout)
    assert typeset and int(typeset.group(1)) > 40, dom.stderr[-2000:]
    assert 'class="katex-error"' not in dom.stdout
    shot = tmp_path / "elbo.png"
    subprocess.run(command + ["--window-size=1200,1600", f"--screenshot={shot}", page.as_uri()],
                   capture_output=True, timeout=120)
    from PIL import Image

    import numpy as np

    image = np.asarray(Image.open(shot).convert("L"), float)
    assert image.std() > 20  # a page with text and formulas, not a blank window
