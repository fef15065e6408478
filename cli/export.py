"""``pyrovae export``: a run's trained model as a folder to use and share."""

from pathlib import Path

import click

from pyrovae.cli.options import COMMON_STATUSES, checkpoint_option, emit, exit_statuses, json_option


@click.command(epilog=exit_statuses(*COMMON_STATUSES))
@click.argument("run", type=click.Path(file_okay=False))
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--overwrite", is_flag=True, help="Replace a model FOLDER already holds.")
@json_option
@checkpoint_option
def export(run, folder, overwrite, as_json, epoch):
    """Write RUN's model to FOLDER without its training state: config.json,
    model.safetensors (loading it runs no code) and a README.md model card, the layout of a
    Hugging Face model repository. pyrovae.load(FOLDER) and every command that takes a RUN
    (evaluate, sample, encode, reconstruct) read it back."""
    from pyrovae.exported import CARD_FILE, CONFIG_FILE, MODEL_FILE, export as export_model

    export_model(run, folder, epoch, overwrite=overwrite)
    files = [CONFIG_FILE, MODEL_FILE, CARD_FILE]
    size = (folder / MODEL_FILE).stat().st_size
    emit(as_json, {"run": str(run), "folder": str(folder), "files": files, "bytes": size},
         f"Wrote {folder}: {', '.join(files)} ({size / 1e6:.1f} MB of weights); load it with "
         f"pyrovae.load({str(folder)!r})")
