"""Generator training throughput (images per second) of the image studies against a plain PyTorch loop.

For each study (the VAE of `digits`, the GAN of `digits_gan`, the diffusion model of
`digits_diffusion`): same model (the study's preset and process settings), same data (digits 3 and 6
at 9:1, n from params.yaml), same batch size, Adam steps, learning rate and betas; throughput =
seeds x steps x batch size / wall time.

1. plain: one `nn.Module` per seed trained in a Python loop, no Prefect, MLflow or DVC; a GAN takes
   one critic step (generator frozen) and one generator step per step, as the engine does;
2. engine: `models.ple.fit_direct`, every seed in one vectorised (vmap) training, as method mle;
3. flow: the same fit as a Prefect task inside a flow (a temporary Prefect server);
4. hyper_mle and ple: the hypernetwork methods through the engine, for scale (on halves of the data:
   the reweighted draws need the classifier's groups, and a step costs the same however it is drawn).

    python benchmarks/generator_training.py [--steps 200] [--studies digits digits_gan digits_diffusion]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import replace
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")

from prefect import flow, task  # noqa: E402
from prefect.cache_policies import NO_CACHE  # noqa: E402

from models.hypernet import HyperConfig, emitted_names  # noqa: E402
from models.ple import PLEConfig, fit_direct, fit_ensemble  # noqa: E402
from tasks.loop import generator, real_dataset  # noqa: E402
from tasks.studies import load_params  # noqa: E402
from tasks.studies.images.data import to_float  # noqa: E402
from tasks.studies.images.study import ImageStudy, real_splits  # noqa: E402


def plain_loop(make, x: torch.Tensor, config: PLEConfig, batch: int) -> None:
    """The textbook loop: for each seed, a generator, Adam and random minibatches (and a critic step first)."""
    for seed, data in enumerate(x):
        torch.manual_seed(seed)
        model = make()
        own = emitted_names(model)
        mine = [p for n, p in model.named_parameters() if n in own]
        rival = [p for n, p in model.named_parameters() if n not in own]
        optimizer = torch.optim.Adam(mine, lr=config.lr, betas=model.betas)
        critic = torch.optim.Adam(rival, lr=config.lr, betas=model.betas) if rival else None
        noise = torch.Generator().manual_seed(seed)
        for _ in range(config.steps):
            index = torch.randperm(len(data))[:batch]
            draw = model.noise(batch, noise)
            if critic is not None:
                frozen(mine, True)
                descend(critic, model.adversary_loss(data[index], draw))
                frozen(mine, False)
            descend(optimizer, model.nll(data[index], draw))


def frozen(parameters: list[torch.Tensor], yes: bool) -> None:
    for p in parameters:
        p.requires_grad_(not yes)


def descend(optimizer: torch.optim.Optimizer, loss: torch.Tensor) -> None:
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def benchmark(params, name: str, steps_per_fit: int) -> None:
    section = getattr(params, name)
    section = section.model_copy(update={"ple": section.ple.model_copy(update={"steps": steps_per_fit})})
    config = PLEConfig(**{**section.ple.model_dump(), "training": "halves"})  # a step costs the same however drawn
    train, test = real_splits(section, params.seed, ROOT / "data" / "raw", name)
    study = ImageStudy(section, name, train, test, None, "", None, torch.device("cpu"))
    real = study.draw_real(section.n_samples, generator(params.seed, "real", 0))
    x = to_float(real)
    batch = max(2, round(config.batch_fraction * section.n_samples))
    images = section.seeds * config.steps * batch
    make = study.make_generator
    hyper = HyperConfig(**section.hyper.model_dump())

    @task(name="fit", cache_policy=NO_CACHE)
    def fit_task():
        return study.fit(real_dataset(real), "mle", generator(params.seed, "fit", "mle", 0))

    @flow(name="benchmark-fit")
    def in_flow() -> float:
        return timed(fit_task)

    rows = {
        "plain PyTorch loop": timed(lambda: plain_loop(make, x, config, batch)),
        "engine, mle (vmap over seeds)": timed(lambda: fit_direct(make, x, config, torch.Generator())),
        "Prefect task fit, mle": in_flow(),
        "engine, hyper_mle": timed(lambda: fit_ensemble(make, x, hyper, replace(config, lam=0.0), torch.Generator())),
        "engine, ple": timed(lambda: fit_ensemble(make, x, hyper, config, torch.Generator())),
    }
    base = rows["plain PyTorch loop"]
    print(f"{name}: {section.generator} '{section.preset}' on digits {section.classes} at {section.proportions}: "
          f"{section.seeds} seeds x {config.steps} steps x batch {batch} = {images:,} images")
    for row, seconds in rows.items():
        print(f"  {row:32s} {seconds:7.2f} s  {images / seconds:9,.0f} images/s  {base / seconds:5.2f} x plain")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--studies", nargs="+", default=["digits", "digits_gan", "digits_diffusion"])
    args = parser.parse_args()
    torch.set_num_threads(2)
    params = load_params(ROOT / "params.yaml")
    for name in args.studies:
        benchmark(params, name, args.steps)


if __name__ == "__main__":
    main()
