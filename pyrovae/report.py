"""One self-contained HTML page about a run: configuration, metrics and every figure.

Figures are embedded as base64 PNG, so the page needs no network and no other file.
"""

import base64
import html
import io
from pathlib import Path
from typing import Callable, Optional

from pyrovae.analysis import RunView, active_units, describe_activity
from pyrovae.checkpoint import atomic_write
from pyrovae.errors import PyroVAEError
from pyrovae.plots import DPI, PLOTS, kinds_for

__all__ = ["write_report", "CAPTIONS"]

CAPTIONS = {
    "curves": "ELBO per epoch on the training batches and the test set, and the test ELBO's two terms.",
    "reconstructions": "Test images and the mean of p(x|z) at the posterior mean of each image's code.",
    "samples": "Decoded draws from the prior p(z).",
    "evolution": "The same fixed z decoded after successive epochs.",
    "latent": "Posterior means of the test images, coloured and marked by label.",
    "manifold": "Images decoded over a regular grid in latent space.",
    "interpolate": "Decoded straight-line and spherical interpolations between pairs of test images.",
    "kl": "Mean KL per latent dimension; inactive units have collapsed to the prior.",
    "styles": "M2: each row decodes one z (a style) with every class in turn.",
    "levels": "Two levels of latents: each row keeps one upper-level z2 and redraws the lower level z1 along it.",
}

_STYLE = """
body { font-family: system-ui, sans-serif; max-width: 1200px; margin: 2em auto; padding: 0 1em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.92em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f2f2f2; } td.key { text-align: left; font-family: monospace; }
figure { margin: 1em 0 2.5em; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; margin-top: 0.4em; } .error { color: #a00; }
"""


def _png(figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=DPI)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def write_report(view: RunView, path=None, on_figure: Optional[Callable[[str], None]] = None) -> Path:
    """Write ``report.html`` (default: inside the run directory; for an exported model, whose
    folder is meant for upload, ``NAME-report.html`` in the current folder) and return its path."""
    from pyrovae.rundir import is_exported

    if not path:
        path = Path(f"{view.run_dir.resolve().name}-report.html") if is_exported(view.run_dir) else \
            view.run_dir / "report.html"
    path = Path(path)
    e = html.escape
    config_rows = "".join(f'<tr><td class="key">{e(k)}</td><td>{e(str(v))}</td></tr>'
                          for k, v in sorted(view.config.to_dict().items()))
    columns = ["epoch", "train_elbo", "test_elbo", "test_reconstruction", "test_kl", "seconds"]
    metric_rows = "".join(
        "<tr>" + "".join(f"<td>{getattr(m, c):.2f}</td>" if c != "epoch" else f"<td>{m.epoch}</td>" for c in columns)
        + "</tr>" for m in view.history)
    _, active = active_units(view.latents.loc)
    sections = []
    for kind in kinds_for(view.config):
        plot = PLOTS[kind]
        try:
            body = (f'<img id="figure-{kind}" alt="{e(kind)} figure" '
                    f'src="data:image/png;base64,{_png(plot(view))}">')
        except PyroVAEError as error:
            body = f'<p class="error">Not available: {e(str(error))}</p>'
        sections.append(f'<h2 id="{kind}">{e(kind)}</h2><figure>{body}<figcaption>{e(CAPTIONS[kind])}'
                        f"</figcaption></figure>")
        if on_figure is not None:
            on_figure(kind)
    last = view.history[-1] if view.history else None
    summary = (f"{len(view.history)} epochs on {e(view.config.dataset)}; "
               + (f"final test ELBO {last.test_elbo:.2f} nats per image; " if last else "")
               + f"latent code: {describe_activity(active, last.test_kl if last else None)} "
               f"(units evaluated on {len(view.images)} test images).")
    page = f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>pyrovae report: {e(view.run_dir.name)}</title>
<style>{_STYLE}</style></head>
<body>
<h1>pyrovae report: {e(view.run_dir.name)}</h1>
<p id="summary">{summary}</p>
<h2 id="configuration">configuration</h2><table>{config_rows}</table>
<h2 id="metrics">metrics per epoch (nats per image)</h2>
<table><tr>{''.join(f'<th>{c}</th>' for c in columns)}</tr>{metric_rows}</table>
{''.join(sections)}
<script>
window.addEventListener("load", function () {{
  var shown = Array.prototype.filter.call(document.images, function (i) {{ return i.complete && i.naturalWidth > 0; }});
  document.body.setAttribute("data-images-shown", String(shown.length));
}});
</script>
</body></html>
"""
    atomic_write(path, lambda f: f.write(page.encode("utf-8")))
    return path
