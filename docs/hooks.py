"""mkdocs hooks: KaTeX fetched for offline pages, and the CLI reference generated from click.

KaTeX (the maths typesetter) is not vendored in the repository: the first build downloads
the pinned release from the npm registry, checks its SHA-512, keeps it in ``.cache/katex``
and copies its ``dist`` folder into the site, so the built pages typeset maths without a
network.
"""

import base64
import hashlib
import io
import shutil
import tarfile
import urllib.request
from pathlib import Path

import click

KATEX_VERSION = "0.16.22"
KATEX_URL = f"https://registry.npmjs.org/katex/-/katex-{KATEX_VERSION}.tgz"
KATEX_SHA512 = "XCHRdUw4lf3SKBaJe4EvgqIuWwkPSo9XoeO8GjQW94Bp7TWv9hNhzZjZ+OH9yf1UmLygb7DIT5GSFQiyt16zYg=="
ROOT = Path(__file__).resolve().parent.parent
CACHE = ROOT / ".cache" / f"katex-{KATEX_VERSION}"
MARKER = "<!-- cli-reference -->"


def _katex() -> Path:
    if (CACHE / "katex.min.js").is_file():
        return CACHE
    try:
        with urllib.request.urlopen(KATEX_URL, timeout=60) as response:
            payload = response.read()
    except OSError as e:
        raise SystemExit(f"Cannot download KaTeX {KATEX_VERSION} from {KATEX_URL} ({e}); "
                         "the docs need it once to typeset maths.") from None
    digest = base64.b64encode(hashlib.sha512(payload).digest()).decode()
    if digest != KATEX_SHA512:
        raise SystemExit(f"KaTeX download from {KATEX_URL} does not match its pinned SHA-512.")
    staging = CACHE.with_suffix(".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    with tarfile.open(fileobj=io.BytesIO(payload)) as archive:
        for member in archive.getmembers():
            if member.isfile() and member.name.startswith("package/dist/"):
                target = staging / member.name[len("package/dist/"):]
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_bytes(archive.extractfile(member).read())
    shutil.rmtree(CACHE, ignore_errors=True)
    staging.rename(CACHE)
    return CACHE


def on_post_build(config, **kwargs):
    shutil.copytree(_katex(), Path(config["site_dir"]) / "javascripts" / "katex", dirs_exist_ok=True)


def _help(command, name, parent=None) -> str:
    context = click.Context(command, info_name=name, parent=parent)
    text = f"## `{context.command_path}`\n\n```\n{command.get_help(context)}\n```\n\n"
    if isinstance(command, click.Group):
        for sub in command.list_commands(context):
            text += _help(command.get_command(context, sub), sub, context)
    return text


def on_page_markdown(markdown, page, **kwargs):
    if MARKER not in markdown:
        return markdown
    from pyrovae.cli import main

    return markdown.replace(MARKER, _help(main, "pyrovae"))
