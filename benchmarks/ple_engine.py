"""PLE engine costs per hypernetwork head, measured in one run.

1. Size: for the paper's MNIST VAE (`models.vae` preset `paper`, 28x28 images, MLP 784-1024x3-32
   with batch norm), the generator's parameter count P and, per head, the hypernetwork's count
   and its ratio to P. The heads are lowrank with rank 8 and rank 16 and linear, all with
   hidden 256. The linear head is not built (h P weights: 6 GB in float32, 24 GB with gradients
   and Adam's state): its count is worked out as h P + P (bases) + the encoder and post MLPs.
   Target: lowrank stays at most 2 x P.
2. Time: one PLE fit (`fit_ensemble`, lam > 0, reweighted training on random groups) against
   one MLE fit (`fit_direct`) on the same data, with the same seeds, steps and batch size, as a
   ratio per head. The data are random 8x8 uint8 images scaled to [0, 1], and the model is the
   `small` preset. With --paper-steps > 0, the same is timed for the paper VAE on 28x28 images,
   one seed, lowrank heads only. Times are CPU seconds of this process on `--threads` torch
   threads (default 1): with one thread that is the wall time on an idle machine, and unlike wall
   time it leaves out the time other programs hold the cores. Each fit runs `--repeats` times,
   interleaved with the others, and keeps its shortest time.

    .venv/bin/python benchmarks/ple_engine.py [--seeds 4 --steps 50 --paper-steps 20 --repeats 2 --threads 1]
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.hypernet import HyperConfig, HyperNetwork, parameter_count  # noqa: E402
from models.ple import PLEConfig, fit_direct, fit_ensemble  # noqa: E402
from models.vae import PRESETS, VAE  # noqa: E402

HEADS = {
    "lowrank r=8": HyperConfig(hidden=256, head="lowrank", rank=8),
    "lowrank r=16": HyperConfig(hidden=256, head="lowrank", rank=16),
    "linear": HyperConfig(hidden=256, head="linear"),
}


def linear_count(target: torch.nn.Module, pixels: int, config: HyperConfig) -> int:
    """Parameters of the linear head, counted without building it: h P (heads) + P (bases) + MLPs."""
    trunk = HyperNetwork(torch.nn.Linear(1, 1), pixels, config)  # the same encoder and post MLPs
    mlps = parameter_count(trunk.encoder) + parameter_count(trunk.post)
    size = parameter_count(target)
    return config.hidden * size + size + mlps


def sizes() -> None:
    vae = VAE((28, 28), PRESETS["paper"])
    size = parameter_count(vae)
    print(f"paper VAE 784-1024x3-32 (batch norm): generator P = {size:,}")
    for name, config in HEADS.items():
        if config.head == "linear":
            count, note = linear_count(vae, 784, config), "  (counted analytically, not built)"
        else:
            count, note = parameter_count(HyperNetwork(vae, 784, config)), ""
        print(f"  hypernetwork {name:13s} h={config.hidden}: {count:>15,}  {count / size:7.2f} x P{note}")


def best_of(repeats: int, fits: dict) -> dict[str, float]:
    """The shortest of `repeats` CPU times of every fit, the fits interleaved."""
    best = dict.fromkeys(fits, math.inf)
    for _ in range(repeats):
        for name, fit in fits.items():
            start = time.process_time()
            fit()
            best[name] = min(best[name], time.process_time() - start)
    return best


def times(preset: str, shape: tuple[int, int], seeds: int, steps: int, heads: list[str], repeats: int) -> None:
    """Time one MLE fit and one PLE fit per head on the same random images (n = 500, batch 100)."""
    data = torch.Generator().manual_seed(0)
    x = torch.randint(256, (seeds, 500, *shape), generator=data, dtype=torch.uint8).float() / 255
    groups = torch.randint(2, (seeds, 500), generator=data)
    config = PLEConfig(lam=1.0, steps=steps, lr=1e-3, batch_fraction=0.2, training="reweighted")
    make = lambda: VAE(shape, PRESETS[preset])  # noqa: E731
    fit_direct(make, x, replace(config, steps=1), torch.Generator())  # warm-up
    fits = {"MLE (fit_direct)": lambda: fit_direct(make, x, config, torch.Generator().manual_seed(1))}
    for name in heads:
        fits[f"PLE {name} (lam 1, reweighted)"] = lambda name=name: fit_ensemble(
            make, x, HEADS[name], config, torch.Generator().manual_seed(1), groups=groups)
    best = best_of(repeats, fits)
    mle = best["MLE (fit_direct)"]
    print(f"VAE '{preset}' (P = {parameter_count(make()):,}) on random {shape[0]}x{shape[1]} images: {seeds} seed(s) "
          f"x {steps} steps x batch 100, CPU s, best of {repeats}")
    for name, seconds in best.items():
        print(f"  {name:36s} {seconds:8.2f} s  {seconds / mle:6.1f} x MLE")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=4)
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--paper-steps", type=int, default=20, help="steps of the paper VAE timing (0: skip)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    sizes()
    times("small", (8, 8), args.seeds, args.steps, list(HEADS), args.repeats)
    if args.paper_steps:  # the linear head of the paper VAE would not fit in memory
        times("paper", (28, 28), 1, args.paper_steps, ["lowrank r=8", "lowrank r=16"], args.repeats)


if __name__ == "__main__":
    main()
