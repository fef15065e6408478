import base64
import io
import re
import shutil
import subprocess
from html.parser import HTMLParser

import numpy as np
import pytest
from PIL import Image

from pyrovae.analysis import RunView
from pyrovae.config import Config
from pyrovae.plots import kinds_for
from pyrovae.report import write_report

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
HEADLESS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync"]


class _Collector(HTMLParser):
    def __init__(self):
        super().__init__()
        self.images, self.ids, self.tables = [], set(), 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if "id" in attrs:
            self.ids.add(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        if tag == "table":
            self.tables += 1


@pytest.fixture(scope="module")
def report(trained_run, tmp_path_factory):
    return write_report(RunView(trained_run, num_images=300), tmp_path_factory.mktemp("report") / "report.html")


def test_report_parses_and_embeds_every_figure(report):
    text = report.read_text()
    parser = _Collector()
    parser.feed(text)
    assert parser.tables == 2  # configuration and metrics
    assert {f"figure-{kind}" for kind in kinds_for(Config())} <= {image["id"] for image in parser.images}
    assert set(kinds_for(Config())) <= parser.ids
    for image in parser.images:
        assert image["src"].startswith("data:image/png;base64,")
        png = Image.open(io.BytesIO(base64.b64decode(image["src"].split(",", 1)[1])))
        assert png.format == "PNG" and png.size[0] > 300
    assert not re.search(r'(src|href)="(https?:)?//', text), "the page must need no network"
    assert re.search(r"latent code: \d+ of 4 units active .*; the code carries [\d.]+ nats per image", text)
    assert "<td>2</td>" in text  # the second epoch's row


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_report_renders_every_figure_in_a_real_browser(report, tmp_path):
    dom = subprocess.run([CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'profile1'}",
                          "--virtual-time-budget=10000", "--dump-dom", report.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert f'data-images-shown="{len(kinds_for(Config()))}"' in dom.stdout, dom.stderr[-2000:]
    screenshot = tmp_path / "report.png"
    subprocess.run([CHROMIUM, *HEADLESS, f"--user-data-dir={tmp_path / 'profile2'}", "--window-size=1280,3000",
                    "--hide-scrollbars", f"--screenshot={screenshot}", report.as_uri()],
                   capture_output=True, timeout=120)
    pixels = np.asarray(Image.open(screenshot).convert("L"), dtype=float)
    assert pixels.shape == (3000, 1280) and pixels.std() > 20
    # Well down the page, past the tables, the figures are drawn (dark pixels of digits and axes).
    assert (pixels[1500:] < 100).mean() > 0.01
