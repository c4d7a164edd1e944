"""PLE engine costs, measured in one run.

1. Wall time of one PLE fit (hypernetwork, the gmm study's settings) against one EM fit on the
   same data: the paper's 1-D mixture (weights 0.8/0.2, means 0/2, unit variances), one seed.
2. Parameter counts for the paper's MNIST VAE (`models.vae` preset `paper`: MLP
   784-1024-1024-1024-32 encoder and decoder, batch norm): generator, hypernetwork with the chunked head, and a plain linear head per tensor
   (counted, not built: it would not fit in memory), as ratios to the generator.

    python benchmarks/ple_engine.py [--n 200 --repeats 3]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from models.gmm import GMMGenerator, Mixture, em  # noqa: E402
from models.hypernet import HyperConfig, HyperNetwork, parameter_count  # noqa: E402
from models.ple import HyperEnsemble, PLEConfig  # noqa: E402
from models.vae import PRESETS, VAE  # noqa: E402
from tasks.studies import load_params  # noqa: E402


def best_of(repeats: int, fn) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    gmm = load_params(Path(__file__).resolve().parent.parent / "params.yaml").gmm
    t = lambda v: torch.tensor(v, dtype=torch.float64)[None]  # noqa: E731
    truth = Mixture(t([0.8, 0.2]), t([[0.0], [2.0]]), t([[1.0], [1.0]]))
    x = truth.sample(args.n, 1.0, torch.Generator().manual_seed(0))
    config = PLEConfig(**gmm.ple.model_dump())

    def ple_fit() -> None:
        ensemble = HyperEnsemble(lambda: HyperNetwork(GMMGenerator(2, 1), 1, HyperConfig(**gmm.hyper.model_dump())), 1)
        ensemble.train(x.float(), config, torch.Generator().manual_seed(1))

    em_time = best_of(args.repeats, lambda: em(x, 2))
    ple_time = best_of(args.repeats, ple_fit)
    print(f"one fit of the 1-D mixture, n={args.n}, 1 seed ({config.steps} Adam steps for PLE)")
    print(f"  EM  : {em_time * 1000:9.1f} ms")
    print(f"  PLE : {ple_time * 1000:9.1f} ms   ({ple_time / em_time:.0f} x EM)")

    vae = VAE((28, 28), PRESETS["paper"])
    generator = parameter_count(vae)
    hyper = HyperNetwork(vae, 784, HyperConfig(hidden=64, chunk=4096, embed=32))
    chunked = parameter_count(hyper)
    trunk = parameter_count(hyper.encoder) + parameter_count(hyper.post)
    linear = trunk + sum((64 + 1) * p.numel() for p in vae.parameters())  # Linear(64, numel) per tensor
    print("MLP VAE 784-1024-1024-1024-32 (encoder and decoder), hypernetwork width 64")
    print(f"  generator parameters             : {generator:>13,}")
    print(f"  hypernetwork, chunked head (4096): {chunked:>13,}   ratio {chunked / generator:.2f}")
    print(f"  hypernetwork, linear head        : {linear:>13,}   ratio {linear / generator:.1f}")


if __name__ == "__main__":
    main()
