"""Training speed of pyrovae against plain PyTorch and a Pyro-tutorial-style loop, in one process.

For each batch size and hidden width, the loops train on the same Fashion-MNIST images,
epochs alternating (pyrovae, reference, ..., then the reverse order), and the medians are
reported. The reference runs twice: with torch's default Adam (what PyTorch's example
writes) and with the fused Adam that pyrovae uses. pyrovae and the reference get the data
already in memory on the device; the tutorial loop is what Pyro's VAE tutorial teaches: ``SVI.step`` per batch from
a ``DataLoader`` whose dataset converts every image with ``ToTensor``.

    python benchmarks/speed.py --images 10000 --rounds 3
"""

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import pyro
import pyro.distributions as dist
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference import ReferenceVAE, train_epoch  # noqa: E402

from pyrovae.config import Config  # noqa: E402
from pyrovae.data import load_dataset  # noqa: E402
from pyrovae.registry import build_vae  # noqa: E402
from pyrovae.train import Trainer  # noqa: E402


class TutorialImages(Dataset):
    """What torchvision's MNIST classes do per item: a PIL image, then the transform."""

    def __init__(self, images: torch.Tensor):
        from torchvision.transforms import ToTensor

        self.pixels = (images.squeeze(1) * 255).round().to(torch.uint8).numpy()
        self.transform = ToTensor()

    def __len__(self):
        return len(self.pixels)

    def __getitem__(self, index):
        from PIL import Image

        return self.transform(Image.fromarray(self.pixels[index], mode="L")), 0


class TutorialVAE(nn.Module):
    """Pyro's VAE tutorial: pyro.module, global parameters, SVI with pyro.optim.Adam."""

    def __init__(self, latent_dim, hidden):
        super().__init__()
        self.latent_dim = latent_dim
        self.encoder = nn.Sequential(nn.Linear(784, hidden), nn.ReLU())
        self.loc, self.scale = nn.Linear(hidden, latent_dim), nn.Linear(hidden, latent_dim)
        self.decoder = nn.Sequential(nn.Linear(latent_dim, hidden), nn.ReLU(), nn.Linear(hidden, 784))

    def model(self, x):
        pyro.module("decoder", self.decoder)
        with pyro.plate("data", x.shape[0]):
            z = pyro.sample("z", dist.Normal(x.new_zeros(self.latent_dim), 1.0).to_event(1))
            pyro.sample("x", dist.Bernoulli(logits=self.decoder(z)).to_event(1), obs=x)

    def guide(self, x):
        pyro.module("encoder", self.encoder)
        pyro.module("loc", self.loc)
        pyro.module("scale", self.scale)
        with pyro.plate("data", x.shape[0]):
            h = self.encoder(x)
            pyro.sample("z", dist.Normal(self.loc(h), nn.functional.softplus(self.scale(h)) + 1e-3).to_event(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=10000, help="training images per timed epoch")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", default="64,128,512,2048")
    parser.add_argument("--hidden", default="400,1024")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-tutorial", action="store_true")
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    data = load_dataset("fashion-mnist")
    data.train_images = data.train_images[: args.images]  # stored as bytes; pyrovae makes floats per batch
    images = data.train_images.to(device)  # the reference holds float32, as PyTorch's example does
    rows = []
    print(f"device: {name}; {args.images} images per epoch; medians of {args.rounds} alternated rounds", flush=True)
    for hidden in map(int, args.hidden.split(",")):
        for batch in map(int, args.batch_sizes.split(",")):
            torch.manual_seed(0)
            trainer = Trainer(build_vae(Config(hidden_dims=(hidden,))).to(device), data, batch_size=batch)
            reference = ReferenceVAE(hidden=hidden).to(device)
            ref_opt = torch.optim.Adam(reference.parameters(), lr=1e-3)
            fused = ReferenceVAE(hidden=hidden).to(device)
            fused_opt = torch.optim.Adam(fused.parameters(), lr=1e-3, fused=True)
            loops = {
                "pyrovae": lambda: trainer.run_epoch(progress=False).seconds,
                "reference": lambda: _timed(device, lambda: train_epoch(reference, ref_opt, images, batch)),
                "reference_fused": lambda: _timed(device, lambda: train_epoch(fused, fused_opt, images, batch)),
            }
            if not args.no_tutorial:
                loops["tutorial"] = _tutorial_loop(data.train_images, hidden, batch, device)
            for loop in loops.values():  # untimed: first epochs carry one-time costs
                loop()
            seconds = {k: [] for k in loops}
            for r in range(args.rounds):
                for key in (list(loops) if r % 2 == 0 else list(loops)[::-1]):
                    seconds[key].append(loops[key]())
            med = {k: statistics.median(v) for k, v in seconds.items()}
            row = {"hidden": hidden, "batch": batch, "device": name, "images": args.images,
                   **{f"{k}_seconds": v for k, v in med.items()},
                   "ratio": med["pyrovae"] / med["reference"],
                   "ratio_fused": med["pyrovae"] / med["reference_fused"],
                   "tutorial_over_pyrovae": med["tutorial"] / med["pyrovae"] if "tutorial" in med else None,
                   "peak_memory_mib": _peak_memory(device)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    print("\n| hidden | batch | pyrovae img/s | reference img/s | tutorial img/s | pyrovae / reference "
          "| pyrovae / reference with fused Adam | tutorial / pyrovae | s/epoch (60k) pyrovae | peak memory MiB |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        tutorial = f"{r['images'] / r['tutorial_seconds']:.0f}" if r.get("tutorial_seconds") else "-"
        slow = f"{r['tutorial_over_pyrovae']:.2f}x" if r["tutorial_over_pyrovae"] else "-"
        print(f"| {r['hidden']} | {r['batch']} | {r['images'] / r['pyrovae_seconds']:.0f} | "
              f"{r['images'] / r['reference_seconds']:.0f} | {tutorial} | {r['ratio']:.2f}x | "
              f"{r['ratio_fused']:.2f}x | {slow} | "
              f"{r['pyrovae_seconds'] * 60000 / r['images']:.1f} | {r['peak_memory_mib']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


def _timed(device, fn):
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start


def _tutorial_loop(images, hidden, batch, device):
    loader = DataLoader(TutorialImages(images), batch_size=batch, shuffle=True)
    vae = TutorialVAE(20, hidden).to(device)
    svi = pyro.infer.SVI(vae.model, vae.guide, pyro.optim.Adam({"lr": 1e-3}), pyro.infer.Trace_ELBO())

    def epoch():
        def run():
            for x, _ in loader:
                x = torch.bernoulli(x.view(len(x), -1).to(device))
                svi.step(x)
        return _timed(device, run)

    return epoch


def _peak_memory(device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the process so far, in MiB


if __name__ == "__main__":
    main()
