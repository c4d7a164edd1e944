"""An image study (the PLE paper's MNIST VAE) as a `tasks.loop.Study`; generator: VAE, GMMN, GAN or
diffusion model.

Real data: the training split of `dataset`, restricted to `classes` in `proportions` (the
paper: digits 3 and 6 at 9:1); every real draw D_0 holds exactly round(n p_c) images of class c.
Datasets hold uint8 images (S, N, *image shape); the generator sees them scaled to [0, 1] and
its samples are quantised back to uint8, so what is stored is exactly what the next model fits.

Metrics per seed, each from `eval_samples` generated images drawn with a fixed seed:
- fid_classifier: Frechet distance between reference-classifier features of the samples and of
  the held-out real images of the same classes in the same proportions (`reference`);
- fid_inception: the same on Inception pool3 features, when enabled and its weights are present;
- minority_ratio: share of samples the reference classifier labels as the minority class,
  divided by the minority's share of the real data (1: fair); share_other: share labelled as a
  class outside `classes`;
- in classifier feature space, k = 5 (`tasks.diversity`): precision and recall; density and coverage
  of the held-out real images' k-NN balls; minority_coverage, the coverage of the minority class's
  real images alone; vendi, the Vendi score of the samples (cosine kernel);
- data_loss: the generator's fit loss on its own training data D_g, one fixed noise draw
  (negative ELBO in nats per image for the VAE, MMD^2 for the GMMN, the generator's adversarial
  loss under its own critic for the GAN, the denoising loss per image for the diffusion model);
- for hyper_mle and ple: the final fit and penalty terms and the estimator response
  (`tasks.response`) to the minority share: probes are real draws with the minority at
  PROBE_SHARES (the other classes keep their ratios), the statistic the share of `eval_samples`
  generated images the reference classifier labels as the minority.
The reweighted training of H draws the shares of the classes the reference classifier reads in D_g.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from torch.func import functional_call, vmap

from models.classifier import Classifier
from models import diffusion, gan, gmmn, vae
from models.ple import Fitted, Generative, sample_weights
from tasks.curation import Scores
from tasks.diversity import KNNBalls, vendi_score
from tasks.errors import InputUnavailableError, ParamsError
from tasks.infra import checkpoints, storage
from tasks.infra.device import default_device
from tasks.infra.paths import StudyPaths
from tasks.loop import Dataset, generator
from tasks.methods import HYPERNETWORK_METHODS, fit_method
from tasks.response import Probes, Responsive, probe_generator
from tasks.studies.base import StudyBase
from tasks.studies.images import fid
from tasks.studies.images.data import ImageSet, class_pools, draw_imbalanced, load_images, split, to_float, to_uint8
from tasks.studies.images.params import ImageParams

GENERATORS = {"vae": (vae.VAE, vae.PRESETS), "gmmn": (gmmn.GMMN, gmmn.PRESETS), "gan": (gan.GAN, gan.PRESETS),
              "diffusion": (diffusion.Diffusion, diffusion.PRESETS)}
EVAL_SEED = 0  # the same generated images are scored for every method and generation
NEIGHBOURS = 5  # k of the k-NN balls (Kynkaanniemi et al., Naeem et al.)
PROBE_SHARES = (0.1, 0.2, 0.3, 0.5)


def make_generator(params: ImageParams, event_shape: tuple[int, ...], study: str = "") -> Generative:
    """The generator's preset, with the section's process settings (gan, diffusion) laid over it;
    ParamsError when the preset cannot make images of this shape."""
    kind, presets = GENERATORS[params.generator]
    process = getattr(params, params.generator, None)
    config = presets[params.preset]
    try:
        return kind(event_shape, replace(config, **process.model_dump()) if process else config)
    except ValueError as exc:
        raise ParamsError(f"{study or params.dataset}.preset = {params.preset}: {exc}; choose another preset") from None


def reference_size(test: ImageSet, classes: list[int], proportions: list[float]) -> int:
    """The largest n whose round(n p_c) images of every class c the held-out split can supply."""
    counts = [int((test.labels == c).sum()) for c in classes]
    return min(math.floor(count / p) for count, p in zip(counts, proportions))


@dataclass(frozen=True)
class ImageStudy(StudyBase, Responsive):
    """`train`: the real training split; `reference`: held-out real images at the study's proportions."""

    params: ImageParams
    experiment: str
    train: ImageSet
    reference: ImageSet
    classifier: Classifier
    classifier_md5: str
    inception: Callable[[torch.Tensor], torch.Tensor] | None
    device: torch.device

    @property
    def config(self) -> dict:
        """The settings that decide the numbers (the process section of another generator does not)."""
        unused = {"gan", "diffusion"} - {self.params.generator}
        settings = self.params.model_dump(exclude={"methods", "eval_samples", "fid_inception", *unused})
        return {**settings, "classifier_md5": self.classifier_md5}

    @property
    def event_shape(self) -> tuple[int, ...]:
        return tuple(self.train.images.shape[1:])

    @property
    def event_size(self) -> int:
        return self.train.images[0].numel()

    def make_generator(self) -> Generative:
        return make_generator(self.params, self.event_shape)

    def draw_real(self, n: int, generator: torch.Generator) -> torch.Tensor:
        p = self.params
        return torch.stack([draw_imbalanced(self.train, p.classes, p.proportions, n, generator).images
                            for _ in range(self.seeds)])

    def fit(self, data: Dataset, method: str, generator: torch.Generator) -> Fitted:
        """The generator's own loss for mle; hypernetworks with lambda = 0 (hyper_mle) or lam (ple)."""
        groups = None
        if method in HYPERNETWORK_METHODS:
            groups = torch.stack([self.predict(images) for images in data.values])
        return fit_method(method, to_float(data.values), self.make_generator, self.params.hyper, self.params.ple,
                          generator, self.device, groups=groups)

    def hyper_input(self, values: torch.Tensor) -> torch.Tensor:
        return to_float(values)

    def probes(self) -> Probes:
        """Real draws of n_samples images with the minority at each of PROBE_SHARES."""
        p = self.params
        others = [(c, q) for c, q in zip(p.classes, p.proportions) if c != p.minority]
        total = sum(q for _, q in others)
        datasets = []
        for k, share in enumerate(PROBE_SHARES):
            proportions = [share if c == p.minority else (1 - share) * q / total for c, q in zip(p.classes,
                                                                                                p.proportions)]
            try:
                datasets.append(torch.stack([draw_imbalanced(self.train, p.classes, proportions, p.n_samples,
                                                             probe_generator(self.experiment, k, i)).images
                                             for i in range(self.seeds)]))
            except ValueError as exc:
                raise ParamsError(f"{self.experiment}.n_samples = {p.n_samples}: the response probe with minority "
                                  f"share {share}: {exc}") from None
        return Probes({"minority_share": PROBE_SHARES}, tuple(datasets))

    def statistics(self, estimate: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """minority_share: the share of eval_samples generated images (a fixed draw) the reference
        classifier labels as the minority."""
        images = self.sample(Fitted(estimate), self.params.eval_samples, 1.0, probe_generator("images", "statistic"))
        return {"minority_share": torch.stack([(self.predict(part) == self.params.minority).double().mean()
                                               for part in images])}

    def sample(self, model: Fitted, n: int, sampling_bias: float, generator: torch.Generator) -> torch.Tensor:
        return to_uint8(sample_weights(self.make_generator().to(self.device), model.estimate, n, sampling_bias,
                                       generator))

    def features(self, images: torch.Tensor) -> np.ndarray:
        return fid.extract_features(fid.classifier_extractor(self.classifier), images, device=self.device)

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        """The reference classifier's logits (N, classes) of uint8 images (N, *image), float64."""
        return torch.from_numpy(fid.extract_features(self.classifier, images, device=self.device))

    def predict(self, images: torch.Tensor) -> torch.Tensor:
        """The reference classifier's labels of uint8 images."""
        return self.logits(images).argmax(1)

    @property
    def verifier_groups(self) -> tuple[str, ...]:
        """The study's classes, then "other" for a label outside them."""
        return (*map(str, self.params.classes), "other")

    def verify(self, values: torch.Tensor) -> Scores:
        """score: the reference classifier's confidence max_c softmax(f(x))_c in its label c; group: the index
        of c in `classes`, len(classes) ("other") when c is not one of them."""
        probabilities = self.logits(values.flatten(0, 1)).softmax(-1).view(*values.shape[:2], -1)
        score, label = probabilities.max(-1)
        match = label[..., None] == torch.tensor(self.params.classes)  # (S, N, classes)
        return Scores(score, torch.where(match.any(-1), match.long().argmax(-1), len(self.params.classes)),
                      self.verifier_groups)

    @cached_property
    def reference_features(self) -> tuple[np.ndarray, np.ndarray | None]:
        """Classifier (and Inception, when enabled) features of the held-out real images."""
        images = self.reference.images
        inception = fid.extract_features(self.inception, images, device=self.device) if self.inception else None
        return self.features(images), inception

    @cached_property
    def reference_balls(self) -> KNNBalls:
        """The k-NN balls of the held-out real images' classifier features."""
        return KNNBalls(self.reference_features[0], NEIGHBOURS)

    def evaluate(self, model: Fitted, data: Dataset) -> dict[str, torch.Tensor]:
        p = self.params
        samples = self.sample(model, p.eval_samples, 1.0, torch.Generator().manual_seed(EVAL_SEED))
        real, real_inception = self.reference_features
        balls, minority = self.reference_balls, self.reference.labels == p.minority
        minority_share = p.proportions[p.classes.index(p.minority)]
        rows: dict[str, list[float]] = {}
        for images in samples:
            feats = self.features(images)
            labels = self.predict(images)
            precision, recall = fid.precision_recall(real, feats, k=NEIGHBOURS)
            values = {
                "fid_classifier": fid.frechet_distance(real, feats),
                "minority_ratio": float((labels == p.minority).double().mean()) / minority_share,
                "share_other": float((~torch.isin(labels, torch.tensor(p.classes))).double().mean()),
                "precision": precision, "recall": recall,
                "density": balls.density(feats), "coverage": balls.coverage(feats),
                "minority_coverage": balls.coverage(feats, among=minority), "vendi": float(vendi_score(feats)),
            }
            if real_inception is not None:
                values["fid_inception"] = fid.frechet_distance(
                    real_inception, fid.extract_features(self.inception, images, device=self.device))
            for name, value in values.items():
                rows.setdefault(name, []).append(value)
        metrics = {name: torch.tensor(values, dtype=torch.float64) for name, values in rows.items()}
        metrics["data_loss"] = self.data_loss(model, to_float(data.values))
        metrics.update(self.response_metrics(model))
        if model.ensemble is not None:
            metrics["fit_loss"] = model.curve.final_fit
            metrics["penalty"] = model.curve.final_penalty
        return metrics

    def data_loss(self, model: Fitted, x: torch.Tensor) -> torch.Tensor:
        """The fit loss of every seed's model on its data x (S, n, *event), one fixed noise draw."""
        target = self.make_generator().to(self.device)
        noise = torch.stack([target.noise(x.shape[1], torch.Generator().manual_seed(EVAL_SEED))] * x.shape[0])
        with torch.no_grad():
            return vmap(lambda w, xs, e: functional_call(target, w, (xs, e), {"op": "nll"}), randomness="error")(
                model.estimate, x.to(self.device), noise.to(self.device)).double().cpu()


def section_of(params, study: str) -> ImageParams:
    """The study's params section; ParamsError when params.yaml has none."""
    section = getattr(params, study, None)
    if not isinstance(section, ImageParams):
        raise ParamsError(f"params has no image study '{study}'; add a '{study}:' section like 'digits:'")
    return section


def real_splits(params: ImageParams, seed: int, raw_dir: Path, study: str) -> tuple[ImageSet, ImageSet]:
    """(training, held-out) real images: the official splits of mnist and cifar10; for digits a
    split stratified by class with `test_fraction` held out, fixed by the global seed.

    ParamsError when a class is absent or the training split cannot supply n_samples images."""
    if params.dataset == "digits":
        train, test = split(load_images("digits", raw_dir), params.test_fraction, generator(seed, "split", "digits"))
    else:
        train, test = load_images(params.dataset, raw_dir, train=True), load_images(params.dataset, raw_dir, False)
    try:
        class_pools(train, params.classes)
    except ValueError as exc:
        raise ParamsError(f"{study}.classes = {params.classes}: {exc}") from None
    try:
        draw_imbalanced(train, params.classes, params.proportions, params.n_samples, torch.Generator())
    except ValueError as exc:
        raise ParamsError(f"{study}.n_samples = {params.n_samples}: {exc}") from None
    return train, test


def shared_split(params, study: str, classifier: str) -> None:
    """A study scored by another study's classifier splits the data as that one does (ParamsError otherwise)."""
    section, owner = section_of(params, study), getattr(params, classifier, None)
    if owner is None:
        raise ParamsError(f"{study} is scored by the reference classifier of {classifier}; add a '{classifier}:' "
                          f"section to params (its classifier settings train it)")
    for key in ("dataset", "test_fraction"):
        if getattr(section, key) != getattr(owner, key):
            raise ParamsError(f"{study}.{key} = {getattr(section, key)} but {classifier}.{key} = "
                              f"{getattr(owner, key)}; {study} uses the classifier of {classifier}: make them equal")


def build(params, root: Path, study: str, classifier: str) -> list[ImageStudy]:
    """The study with its data, held-out reference set and the reference classifier of the study
    `classifier` (its own or its dataset's); every input checked first."""
    section, paths = section_of(params, study), StudyPaths(root, study)
    shared_split(params, study, classifier)
    train, test = real_splits(section, params.seed, paths.raw, study)
    with torch.random.fork_rng():  # a preset that fits the images; no draw of the global generator
        make_generator(section, tuple(train.images.shape[1:]), study)
    size = reference_size(test, section.classes, section.proportions)
    reference = draw_imbalanced(test, section.classes, section.proportions, size,
                                generator(params.seed, "reference", classifier))
    weights = StudyPaths(root, classifier).classifier
    if not weights.exists():
        raise InputUnavailableError(
            f"{weights} is missing; train it with `dvc repro classifier_{classifier}` "
            f"(or python -m flows.classifier {classifier})")
    inception = None
    if section.fid_inception:
        from tasks.studies.images import inception as pool3  # pytorch-fid's network: seconds to import

        try:
            inception = pool3.inception_extractor(device=default_device())
        except InputUnavailableError as exc:
            print(f"fid_inception skipped: {exc}")  # a Prefect log line inside the flow (log_prints)
    return [ImageStudy(section, study, train, reference, checkpoints.load_classifier(weights),
                       storage.md5(weights), inception, default_device())]
