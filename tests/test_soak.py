"""A long run of short epochs: memory stays flat and the run directory stays bounded."""

from pathlib import Path

import pytest

from pyrovae.config import Config
from pyrovae.run import train_run
from pyrovae.train import Callback

EPOCHS = 200


def rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    pytest.skip("no /proc/self/status on this system")


@pytest.mark.slow
def test_many_epochs_keep_memory_and_files_bounded(tmp_path, mnist5k):
    rss = []
    config = Config(dataset="mnist5k", latent_dim=8, hidden_dims=(64,), batch_size=500,
                    num_epochs=EPOCHS, keep_checkpoints=3)
    class Memory(Callback):
        def on_epoch_saved(self, run, metrics, pictures):
            rss.append(rss_mib())

    train_run(config, tmp_path / "run", progress=False, callbacks=[Memory()])
    assert len(rss) == EPOCHS
    # After warm-up, resident memory must not creep: 190 further epochs add under 25 MiB.
    assert max(rss[10:]) - rss[10] < 25, f"RSS grew from {rss[10]:.0f} to {max(rss[10:]):.0f} MiB"
    run = tmp_path / "run"
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["epoch_0198.pt", "epoch_0199.pt",
                                                                       "epoch_0200.pt"]
    assert not list(run.rglob(".*.tmp"))
    # Only the per-epoch pictures grow with the run, by design: two small PNGs an epoch and
    # the 16 samples of the evolution figure as 8-bit tensors.
    files = [p for p in run.rglob("*") if p.is_file()]
    assert len(files) == 4 + 3 + 3 * EPOCHS  # config, metrics, checkpoint.pt, .lock; 3 kept; pictures
    assert sum(p.stat().st_size for p in run.glob("samples/*.pt")) < EPOCHS * 16 * 1024
