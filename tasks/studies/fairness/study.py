"""The fairness study as a `tasks.loop.Study`: a conditional VAE in the loop, a classifier of y on every generation.

Real data D_0: `draw_biased` rows (pixels..., y) with groups (y, s) at 9:1:1:9 (`bias`); the VAE is
conditioned on y only (`models.conditional.ConditionalVAE`), so whether the rare groups (s != y)
survive generation after generation is up to the method:

- mle, hyper_mle, ple: as in the image study (lambda = 0 for hyper_mle);
- upweight: mle with each point's loss weighted by 1 / (size of its (y, s) group in D_g);
- oversample: mle on N points redrawn from D_g with replacement, with probabilities 1 / group size
  (both baselines read s from the images with `attribute_of`; a group absent from D_g stays absent).

Metrics per seed and generation:
- share_y{y}_s{s}: share of each group in D_g, s read from the images; rare_ratio: share of the two
  rare groups divided by their share in D_0 (1: kept, 0: gone);
- for each downstream mode m (scratch, finetune, selective; `tasks.downstream`): acc_m, eo_m,
  eo_max_m, wga_m and acc_y{y}_s{s}_m of the classifier of y trained on D_g, on the balanced real
  test set (`tasks.fairness`);
- for hyper_mle and ple: fit_loss, penalty and the estimator response (`tasks.response`) to the
  rare groups' share: probes are real draws with s != y in PROBE_SHARES of the images, the
  statistic the rare share of `eval_samples` generated rows (s read from the images).
The reweighted training of H draws the shares of the four (y, s) groups of D_g.
The downstream classifiers of seed i use the same random numbers for every method and generation.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import torch

from models.classifier import Classifier, train_classifier
from models.conditional import ConditionalVAE, RowWeighted
from models.ple import Fitted, PLEConfig, fit_direct, sample_weights
from models.vae import PRESETS as VAE_PRESETS
from tasks.curation import Scores
from tasks.errors import ParamsError
from tasks.infra.device import default_device
from tasks.infra.paths import StudyPaths
from tasks.loop import Dataset, generator
from tasks.methods import HYPERNETWORK_METHODS, fit_method
from tasks.response import Probes, Responsive, probe_generator
from tasks.studies.base import StudyBase
from tasks.studies.fairness import attributes as ad
from tasks.studies.fairness.downstream import predict, probabilities, train_downstream
from tasks.studies.fairness.group_metrics import GROUPS, batched_group_metrics
from tasks.studies.fairness.params import FairnessParams
from tasks.studies.images.data import ImageSet, load_images, split, with_channels


PROBE_SHARES = (0.0, 0.1, 0.3, 0.5)


def group_of(rows: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
    """2 y + s of every row, s read from the image: rows (S, N, P + 1) -> (S, N)."""
    images, y = ad.split_rows(rows, image_shape)
    return 2 * y + ad.attribute_of(images.reshape(-1, *image_shape)).view(y.shape)


def balancing_weights(rows: torch.Tensor, image_shape: tuple[int, ...]) -> torch.Tensor:
    """1 / (size of the row's (y, s) group) within each seed, scaled to mean 1: rows (S, N, P + 1) -> (S, N)."""
    group = group_of(rows, image_shape)
    sizes = torch.nn.functional.one_hot(group, 4).sum(1)  # (S, 4)
    weights = 1.0 / sizes.gather(1, group).double()
    return (weights / weights.mean(1, keepdim=True)).float()


@dataclass(frozen=True)
class FairnessStudy(StudyBase, Responsive):
    """`train`: the real training split; `test`: the balanced real test set; `seed`: the global seed."""

    params: FairnessParams
    seed: int
    train: ImageSet
    test: ad.Groups
    device: torch.device
    experiment: str = "fairness"

    @property
    def config(self) -> dict:
        return self.params.model_dump(exclude={"methods"})

    @property
    def image_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    @property
    def event_size(self) -> int:
        """A row: the image's pixels, then y."""
        return self.train.images[0].numel() + 1

    @property
    def rare_share(self) -> float:
        """Share of the rare groups (s != y) in every real draw."""
        counts = ad.group_counts(self.n_samples, self.params.bias)
        return (counts[1] + counts[2]) / self.n_samples

    def make_generator(self) -> ConditionalVAE:
        counts = ad.group_counts(self.n_samples, self.params.bias)
        y_shares = ((counts[0] + counts[1]) / self.n_samples, (counts[2] + counts[3]) / self.n_samples)
        return ConditionalVAE(self.image_shape, VAE_PRESETS[self.params.preset], y_shares)

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        return torch.stack([ad.to_rows(ad.draw_biased(self.train, p.threshold, p.bias, n, generator))
                            for _ in range(self.seeds)])

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> Fitted:
        """mle, hyper_mle and ple as every study fits them (`tasks.methods`); upweight and oversample: mle
        on the rows weighted, or redrawn, by 1 / (size of their (y, s) group)."""
        x = ad.rows_to_float(data.values)
        if method not in ("upweight", "oversample"):
            groups = group_of(data.values, self.image_shape) if method in HYPERNETWORK_METHODS else None
            return fit_method(method, x, self.make_generator, self.params.hyper, self.params.ple, generator,
                              self.device, groups=groups)
        config = PLEConfig(**self.params.ple.model_dump())
        weights = balancing_weights(data.values, self.image_shape)
        if method == "upweight":
            fitted = fit_direct(lambda: RowWeighted(self.make_generator()), torch.cat([x, weights[..., None]], -1),
                                config, generator, self.device)
            return replace(fitted, estimate={name.removeprefix("base."): w for name, w in fitted.estimate.items()})
        index = torch.multinomial(weights.double(), x.shape[1], replacement=True, generator=generator)
        x = x[torch.arange(x.shape[0])[:, None], index]
        return fit_direct(self.make_generator, x, config, generator, self.device)

    def sample(self, model: Fitted, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        target = self.make_generator().to(self.device)
        return ad.rows_to_uint8(sample_weights(target, model.estimate, n, sampling_bias, generator))

    def hyper_input(self, values: torch.Tensor) -> torch.Tensor:
        return ad.rows_to_float(values)

    def probes(self) -> Probes:
        """Real draws of n_samples rows with the rare groups (s != y) at each of PROBE_SHARES."""
        p = self.params
        return Probes({"rare_share": PROBE_SHARES}, tuple(
            torch.stack([ad.to_rows(ad.draw_biased(self.train, p.threshold, 1 - share, p.n_samples,
                                                   probe_generator("fairness", k, i))) for i in range(self.seeds)])
            for k, share in enumerate(PROBE_SHARES)))

    def statistics(self, estimate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """rare_share: the share of eval_samples generated rows (a fixed draw) in the rare groups s != y."""
        rows = self.sample(Fitted(estimate), self.params.eval_samples, 1.0, probe_generator("fairness", "statistic"))
        shares = ad.group_shares(rows, self.image_shape)
        return {"rare_share": shares[:, 1] + shares[:, 2]}

    def classifier_data(self, rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(images (N, C, H, W) in [0, 1], y (N,)) of rows (N, P + 1)."""
        images, y = ad.split_rows(rows, self.image_shape)
        return with_channels(images), y

    @cached_property
    def real_data(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Every seed's D_0 (the loop's own draw) as classifier data."""
        rows = self.draw_real(self.n_samples, generator(self.seed, "real", 0))
        return [self.classifier_data(part) for part in rows]

    @cached_property
    def pretrained(self) -> list[Classifier]:
        """Per seed, the classifier of y trained on the real biased D_0: the start of fine-tuning."""
        d = self.params.downstream
        return [train_classifier(*data, 2, epochs=d.epochs, batch_size=d.batch_size, lr=d.lr,
                                 generator=generator(self.seed, "pretrain", i), device=self.device,
                                 features=d.features) for i, data in enumerate(self.real_data)]

    @property
    def verifier_groups(self) -> tuple[str, ...]:
        """The four (y, s) groups, index 2 y + s, named as in share_y{y}_s{s}."""
        return tuple(f"y{y}_s{s}" for y, s in GROUPS)

    def verify(self, values: torch.Tensor) -> Scores:
        """score: f_i(y | x), the probability that seed i's classifier of y pre-trained on its real D_0
        (`pretrained`, biased as D_0 is) gives the row's own label y; group: 2 y + s, s read from the image."""
        score = []
        for model, rows in zip(self.pretrained, values):
            images, y = self.classifier_data(rows)
            score.append(probabilities(model, images).gather(1, y[:, None])[:, 0])
        return Scores(torch.stack(score), group_of(values, self.image_shape), self.verifier_groups)

    def evaluate(self, model: Fitted, data: Dataset) -> dict[str, torch.Tensor]:
        shares = ad.group_shares(data.values, self.image_shape)
        metrics = {f"share_y{y}_s{s}": shares[:, i] for i, (y, s) in enumerate(GROUPS)}
        metrics["rare_ratio"] = (shares[:, 1] + shares[:, 2]) / self.rare_share
        balancing = balancing_weights(data.values, self.image_shape)
        test = with_channels(self.test.images)
        for mode in self.params.downstream.modes:
            predictions = torch.stack([
                predict(train_downstream(mode, self.params.downstream, self.classifier_data(rows), self.pretrained[i],
                                         self.real_data[i], balancing[i], generator(self.seed, "downstream", i),
                                         self.device), test)
                for i, rows in enumerate(data.values)])
            for name, values in batched_group_metrics(self.test.y, predictions, self.test.s).items():
                metrics[f"{name}_{mode}"] = torch.from_numpy(values)
        metrics.update(self.response_metrics(model))
        if model.ensemble is not None:
            metrics["fit_loss"] = model.curve.final_fit
            metrics["penalty"] = model.curve.final_penalty
        return metrics



def build(params, root: Path) -> list[FairnessStudy]:
    """The study with its real splits and balanced test set; a ParamsError when they do not fit the params."""
    section = params.fairness
    raw = StudyPaths(root, section.dataset).raw
    if section.dataset == "digits":
        train, test = split(load_images("digits", raw), section.test_fraction, generator(params.seed, "split", "fairness"))
    else:
        train, test = load_images(section.dataset, raw, train=True), load_images(section.dataset, raw, train=False)
    if len(ad.targets(train, section.threshold).unique()) < 2:
        raise ParamsError(f"fairness.threshold = {section.threshold} puts every {section.dataset} class on one side; "
                          f"choose a class between 1 and {int(train.labels.max())}")
    try:
        ad.draw_biased(train, section.threshold, section.bias, section.n_samples, generator(params.seed, "check"))
    except ValueError as exc:
        raise ParamsError(f"fairness.n_samples = {section.n_samples}: {exc}") from None
    return [FairnessStudy(section, params.seed, train, ad.balanced_test(test, section.threshold,
                          generator(params.seed, "test", "fairness")), default_device())]
