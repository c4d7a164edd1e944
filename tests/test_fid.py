"""Frechet distances against theory, the offline Inception paths, precision/recall, the minority ratio, the
reference classifier."""

from __future__ import annotations

import socket
import warnings

import numpy as np
import pytest
import torch
from pytorch_fid.inception import InceptionV3
from sklearn.datasets import load_digits

from models.classifier import accuracy, train_classifier
from models.ple import Fitted
from tasks.infra.checkpoints import load_classifier, save_classifier
from tasks.errors import CorruptDataError, InputUnavailableError
from tasks.loop import Dataset
from tasks.studies.images.fid import classifier_extractor, extract_features, frechet_distance, precision_recall
from tasks.studies.images.inception import (
    INCEPTION_WEIGHTS, fid_inception, inception_extractor, inception_weights_path, random_inception,
)
from tasks.studies.images.data import ImageSet
from tasks.studies.images.params import ImageParams
from tasks.studies.images.study import ImageStudy

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's 1797 8x8 digits as uint8 (N, 8, 8) in 0..255, and their labels."""
    data = load_digits()
    return torch.from_numpy(np.round(data.images * 255 / 16).astype(np.uint8)), torch.from_numpy(data.target)


@pytest.fixture(scope="module")
def split(digits) -> tuple[torch.Tensor, torch.Tensor]:
    perm = torch.randperm(len(digits[0]), generator=torch.Generator().manual_seed(0))
    return perm[:1300], perm[1300:]


def as_float(images: torch.Tensor) -> torch.Tensor:
    return images[:, None].float() / 255


@pytest.fixture(scope="module")
def classifier(digits, split):
    images, labels = digits
    return train_classifier(as_float(images[split[0]]), labels[split[0]], 10, epochs=15, batch_size=64, lr=3e-3,
                            generator=torch.Generator().manual_seed(0), device=CPU)


def closed_form(m1, s1, m2, s2) -> float:
    """|m1 - m2|^2 + tr(S1 + S2 - 2 (S1 S2)^(1/2)); tr (S1 S2)^(1/2) = sum of sqrt(eigenvalues of S1 S2),
    which are real and >= 0 (S1 S2 is similar to S1^(1/2) S2 S1^(1/2))."""
    root_trace = np.sqrt(np.linalg.eigvals(s1 @ s2).real.clip(0)).sum()
    return float(((m1 - m2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * root_trace)


def with_moments(z: np.ndarray, mean: np.ndarray, cov: np.ndarray) -> np.ndarray:
    """z re-coloured so that its sample mean and covariance (n - 1) are exactly `mean` and `cov`."""
    z = z - z.mean(axis=0)
    z = z @ np.linalg.inv(np.linalg.cholesky(np.cov(z, rowvar=False)).T)  # sample covariance I
    return mean + z @ np.linalg.cholesky(cov).T


@pytest.fixture(scope="module")
def gaussians():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 3, 3))
    return np.array([0.0, 1.0, -1.0]), a @ a.T + 0.5 * np.eye(3), np.array([1.0, 0.5, 0.0]), b @ b.T + 0.1 * np.eye(3)


def test_frechet_distance_equals_closed_form_on_exact_moments(gaussians):
    m1, s1, m2, s2 = gaussians
    rng = np.random.default_rng(1)
    a, b = with_moments(rng.normal(size=(50, 3)), m1, s1), with_moments(rng.normal(size=(80, 3)), m2, s2)
    assert frechet_distance(a, b) == pytest.approx(closed_form(m1, s1, m2, s2), rel=1e-9)


def test_frechet_distance_of_large_samples_approaches_closed_form(gaussians):
    m1, s1, m2, s2 = gaussians
    rng = np.random.default_rng(2)
    n = 100_000
    a, b = rng.multivariate_normal(m1, s1, n), rng.multivariate_normal(m2, s2, n)
    expected = closed_form(m1, s1, m2, s2)
    # The estimate's error is O(1/sqrt(n)): the mean term alone has standard deviation
    # 2 sqrt(d^T (S1 + S2) d / n) = 0.016 (d = m1 - m2); over 20 draws the whole estimate had standard
    # deviation 0.037 around the closed form's 8.76, and its bias is O(tr(S) / n). 2 % is 0.18, about 5 of them.
    assert frechet_distance(a, b) == pytest.approx(expected, rel=0.02)


def test_frechet_distance_of_a_set_with_itself_is_zero_and_of_two_draws_small():
    rng = np.random.default_rng(3)
    a, b, c = rng.normal(size=(3, 2000, 8))
    scale = np.trace(np.cov(a, rowvar=False))  # 8
    assert abs(frechet_distance(a, a)) < 1e-9 * scale  # sqrtm leaves round-off of either sign
    same = frechet_distance(b, c)  # sampling error only: O(d^2 / n), measured 0.019
    assert 0 < same < 0.01 * scale
    assert frechet_distance(b, c + 0.5) > 10 * same


def test_fid_classifier_grows_with_noise(digits, classifier):
    images = digits[0]
    features = lambda x: extract_features(classifier_extractor(classifier, CPU), x, device=CPU)  # noqa: E731
    noise = torch.randn(images.shape, generator=torch.Generator().manual_seed(0))
    noisy = [(images + sigma * noise).round().clamp(0, 255).to(torch.uint8) for sigma in (0, 8, 16, 32, 64, 128)]
    fids = [frechet_distance(features(images), features(x)) for x in noisy]
    assert abs(fids[0]) < 1e-6 and all(a < b for a, b in zip(fids, fids[1:])), fids


def test_extract_features_batches_match_one_pass_and_accept_channels(digits, classifier):
    images = digits[0][:300]
    one = extract_features(classifier_extractor(classifier, CPU), images, batch_size=1000, device=CPU)
    batched = extract_features(classifier_extractor(classifier, CPU), images[:, None], batch_size=64, device=CPU)
    assert one.dtype == np.float64 and one.shape == (300, 32)
    np.testing.assert_allclose(batched, one, rtol=1e-5, atol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        extract_features(classifier_extractor(classifier, CPU), images.float(), device=CPU)


LOCAL_HOSTS = {"localhost", "127.0.0.1", "::1"}


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
    """TORCH_HOME and torch hub's directory in an empty temporary folder (never the user's cache); a torch hub
    download or a connection to a non-local host fails the test, even where the caller catches the error."""
    attempts = []

    def refuse(what):
        attempts.append(what)
        raise AssertionError(f"network access attempted: {what}")

    def guarded_getaddrinfo(host, *args, **kwargs):
        if host not in LOCAL_HOSTS and host is not None:
            refuse(f"resolve {host}")
        return getaddrinfo(host, *args, **kwargs)

    def guarded_connect(sock, address):
        if sock.family in (socket.AF_INET, socket.AF_INET6) and address[0] not in LOCAL_HOSTS:
            refuse(f"connect {address}")
        return connect(sock, address)

    getaddrinfo, connect = socket.getaddrinfo, socket.socket.connect
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setattr(torch.hub, "_hub_dir", None)  # a set_dir elsewhere would win over TORCH_HOME
    monkeypatch.setattr(torch.hub, "download_url_to_file", lambda url, *args, **kwargs: refuse(f"download {url}"))
    monkeypatch.setattr(socket, "getaddrinfo", guarded_getaddrinfo)
    monkeypatch.setattr(socket.socket, "connect", guarded_connect)
    assert torch.hub.get_dir() == str(tmp_path / "hub")
    yield tmp_path
    assert not attempts, f"network access attempted: {attempts}"


def test_inception_extractor_without_weights_names_the_file_and_does_not_download(offline_hub):
    path = offline_hub / "hub" / "checkpoints" / INCEPTION_WEIGHTS
    assert inception_weights_path() == path
    with pytest.raises(InputUnavailableError) as error:
        inception_extractor(device=CPU)
    message = str(error.value)
    assert "\n" not in message and str(path) in message and "https://" in message
    assert not path.parent.exists()


def test_random_inception_gives_pool3_features_of_grey_images(offline_hub, digits):
    torch.manual_seed(0)
    features = extract_features(random_inception(CPU), digits[0][:4], device=CPU)
    assert features.shape == (4, 2048) and np.isfinite(features).all()
    assert features.std(axis=0).mean() > 0.01 * np.abs(features).mean()  # the images differ in feature space


def test_inception_extractor_loads_the_local_file_like_pytorch_fid(offline_hub, digits):
    torch.manual_seed(0)
    net = fid_inception()
    inception_weights_path().parent.mkdir(parents=True)
    torch.save(net.state_dict(), inception_weights_path())
    images = digits[0][:3]
    ours = extract_features(inception_extractor(device=CPU), images, device=CPU)
    elsewhere = offline_hub / "weights.pth"  # a file anywhere, under any name, gives the same network
    torch.save(net.state_dict(), elsewhere)
    hub = torch.hub.get_dir()
    np.testing.assert_array_equal(extract_features(inception_extractor(elsewhere, CPU), images, device=CPU), ours)
    assert torch.hub.get_dir() == hub  # the cache is pointed back where it was
    with torch.no_grad():  # pytorch-fid's own model reads the same file from torch hub's cache
        theirs = InceptionV3([3]).eval()(as_float(images).expand(-1, 3, -1, -1))[0].flatten(1).double().numpy()
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-6)


def test_precision_recall_of_identical_and_disjoint_sets():
    rng = np.random.default_rng(4)
    real = rng.normal(size=(300, 4))
    assert precision_recall(real, real.copy(), k=3) == (1.0, 1.0)
    assert precision_recall(real, real + 100, k=3) == (0.0, 0.0)
    two_modes = np.concatenate([real[:150], real[150:] + 100])
    assert precision_recall(real, two_modes, k=3)[0] == 0.5  # half the fakes far from the data
    assert precision_recall(two_modes, two_modes[:150], k=3) == (1.0, 0.5)  # one mode dropped
    with pytest.raises(ValueError, match="k=300"):
        precision_recall(real, real, k=300)


def test_precision_recall_by_hand_balls_reach_the_kth_nearest_other_point_boundary_included():
    """1-D hand case, k = 2: each ball's radius is the distance to the 2nd nearest other point of its own set.

    real 0, 1, 3, 6, 10: distances to the others 0: 1 3 6 10 | 1: 1 2 5 9 | 3: 2 3 3 7 | 6: 3 4 5 6 | 10: 4 7 9 10,
    radii (2nd) 3 2 3 4 7, balls [-3, 3] [-1, 3] [0, 6] [2, 10] [3, 17]: fakes -3 (on the boundary), -2, -1 are
    inside, -6 is not: precision 3/4.
    fake -6, -3, -2, -1: distances 6: 3 4 5 | -3: 1 2 3 | -2: 1 1 4 | -1: 1 2 5, radii 4 2 1 2, balls [-10, -2]
    [-5, -1] [-3, -1] [-3, 1]: reals 0 and 1 (on the boundary) inside, 3, 6, 10 not: recall 2/5.
    Every neighbour off by one changes both: the 1st neighbour (the point itself counted as one of the k)
    gives radii 1 1 2 3 4 | 3 1 1 1 and (1/4, 1/5); the 3rd gives 6 5 3 5 9 | 5 3 4 5 and (1, 3/5);
    open balls (< instead of <=) give (1/2, 1/5). Swapping the sets swaps the two numbers; the order of the
    points does not matter.
    """
    real, fake = np.array([[0.0], [1], [3], [6], [10]]), np.array([[-6.0], [-3], [-2], [-1]])
    assert precision_recall(real, fake, k=2) == (0.75, 0.4)
    assert precision_recall(fake, real, k=2) == (0.4, 0.75)  # the roles swap with the sets
    assert precision_recall(real[[3, 0, 4, 1, 2]], fake[[2, 0, 3, 1]], k=2) == (0.75, 0.4)  # in any order



def test_precision_recall_by_hand_with_the_nearest_neighbour_and_the_bounds_on_k():
    """The hand case above at k = 1: radii 1 1 2 3 4 | 3 1 1 1, so only the fake -1 lies in a real ball
    ([-1, 1]) and only the real 0 in a fake ball ([-2, 0]): (1/4, 1/5). k must lie in [1, n - 1]."""
    real, fake = np.array([[0.0], [1], [3], [6], [10]]), np.array([[-6.0], [-3], [-2], [-1]])
    assert precision_recall(real, fake, k=1) == (0.25, 0.2)
    for k in (0, 5):
        with pytest.raises(ValueError, match=f"k={k} for 5 samples"):
            precision_recall(real, fake, k=k)


def test_precision_recall_uses_five_neighbours_by_default():
    """Kynkaanniemi et al.'s k = 5, on data where k = 4 and k = 6 give other values."""
    real, fake = np.random.default_rng(4).normal(size=(2, 40, 3))
    default = precision_recall(real, fake)
    assert default == precision_recall(real, fake, k=5)
    assert default != precision_recall(real, fake, k=4) and default != precision_recall(real, fake, k=6)


def test_low_precision_features_give_the_float64_metrics():
    """Features in float32 or float16 are read in float64: precision/recall of the hand case in float32, and
    the FID of float16 features near 1000 (whose float16 mean would round to 1000), equal their float64 values."""
    real, fake = np.array([[0.0], [1], [3], [6], [10]]), np.array([[-6.0], [-3], [-2], [-1]])
    assert precision_recall(real.astype(np.float32), fake.astype(np.float32), k=2) == (0.75, 0.4)
    rng = np.random.default_rng(0)
    a, b = (rng.normal(size=(500, 4)) + 1000).astype(np.float16), (rng.normal(size=(500, 4)) + 1000.3).astype(np.float16)
    assert frechet_distance(a, b) == pytest.approx(frechet_distance(a.astype(np.float64), b.astype(np.float64)),
                                                   rel=1e-9)


def test_frechet_distance_silences_only_pytorch_fids_deprecated_sqrtm_argument():
    """scipy warns that pytorch-fid passes sqrtm's deprecated `disp`; frechet_distance filters that warning
    (and nothing wider), so a study's log stays clean."""
    from pytorch_fid.fid_score import calculate_frechet_distance

    a, b = np.random.default_rng(0).normal(size=(2, 200, 3))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DeprecationWarning, match="disp"):
            calculate_frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
        assert frechet_distance(a, b) > 0


class LabelledStudy(ImageStudy):
    """An image study whose samples are given label maps: the reference classifier reads an image's
    label from its first pixel, features are fixed random vectors, around (50, 50) for label 8 (the
    minority below); no generator, no classifier. The reference holds 40 images, 8 of them 8s."""

    def sample(self, model, n, sampling_bias, generator):
        return model.estimate

    def predict(self, images):
        return images[:, 0, 0].long()

    def features(self, images):
        return self.clustered(np.random.default_rng(int(images.sum())), self.predict(images))

    @property
    def reference_features(self):
        return self.clustered(np.random.default_rng(0), self.reference.labels), None

    @staticmethod
    def clustered(rng: np.random.Generator, labels: torch.Tensor) -> np.ndarray:
        return rng.normal(size=(len(labels), 2)) + 50.0 * (labels == 8).numpy()[:, None]

    def data_loss(self, model, x):
        return torch.zeros(len(x))


def test_minority_ratio_is_the_minority_share_over_its_real_share_and_share_other_the_off_class_share():
    """classes 3, 8, 6 at 0.5, 0.2, 0.3: the minority is 8 (the smallest proportion, neither the first class
    nor the smallest label), real share 0.2. Labels of 10 samples per seed and the expected ratios:
    seed 0: five 3s, three 8s, one 6, one 1 -> 0.3 / 0.2 = 1.5 (share_other 0.1); seed 1: six 3s, one 8,
    three 6s -> 0.1 / 0.2 = 0.5; seed 2: no 8 -> 0; seed 3: two 8s -> 0.2 / 0.2 = 1 (fair). The features of 8s
    lie apart: no sample reaches the 8s' real balls in seed 2 (minority_coverage 0), some in the others."""
    params = ImageParams(dataset="digits", classes=[3, 8, 6], proportions=[0.5, 0.2, 0.3], n_samples=10,
                         generations=1, seeds=4, eval_samples=10)
    assert params.minority == 8
    labels = torch.tensor([[3, 3, 3, 3, 3, 8, 8, 8, 6, 1], [3, 3, 3, 3, 3, 3, 8, 6, 6, 6],
                           [3, 3, 3, 3, 3, 6, 6, 6, 6, 6], [8, 8, 3, 3, 3, 3, 3, 6, 6, 6]], dtype=torch.uint8)
    images = labels[..., None, None].expand(-1, -1, 8, 8)
    metrics = labelled_study(params).evaluate(Fitted(images), Dataset(images, torch.ones(10, dtype=torch.bool)))
    assert metrics["minority_ratio"].tolist() == pytest.approx([1.5, 0.5, 0.0, 1.0], abs=1e-12)
    assert metrics["share_other"].tolist() == pytest.approx([0.1, 0.0, 0.0, 0.0], abs=1e-12)
    assert metrics["minority_coverage"][2] == 0 and (metrics["minority_coverage"][[0, 1, 3]] > 0).all()
    assert (metrics["coverage"] > metrics["minority_coverage"] * 8 / 40).all()  # majority balls reached too
    assert (metrics["density"] > 0).all() and ((metrics["vendi"] >= 1) & (metrics["vendi"] <= 2)).all()  # D = 2


def labelled_study(params: ImageParams) -> LabelledStudy:
    labels = torch.tensor([8] * 8 + [3, 6] * 16)
    reference = ImageSet(labels[:, None, None].expand(-1, 8, 8).to(torch.uint8), labels, "digits")
    return LabelledStudy(params=params, experiment="digits", train=None, reference=reference, classifier=None,
                         classifier_md5="", inception=None, device=CPU)


def test_classifier_learns_digits(digits, split, classifier):
    images, labels = digits
    assert accuracy(classifier, as_float(images[split[1]]), labels[split[1]]) > 0.95  # measured 0.99


def test_classifier_training_is_deterministic_for_a_generator(digits):
    images, labels = as_float(digits[0][:201]), digits[1][:201]  # a leftover batch of one: batch norm skips it
    models = [train_classifier(images, labels, 10, epochs=1, batch_size=50, lr=1e-3, features=16,
                               generator=torch.Generator().manual_seed(5), device=CPU) for _ in range(2)]
    assert models[0].config == {"channels": 1, "classes": 10, "features": 16}
    for a, b in zip(*(m.state_dict().values() for m in models)):
        assert torch.equal(a, b)


def test_classifier_save_load_round_trip_and_clear_errors(tmp_path, digits, classifier):
    path = tmp_path / "classifier.pt"
    save_classifier(classifier, path)
    assert [p.name for p in tmp_path.iterdir()] == ["classifier.pt"]
    save_classifier(classifier, tmp_path / "again.pt")  # same model, same bytes: DVC sees no change
    assert (tmp_path / "again.pt").read_bytes() == path.read_bytes()
    (tmp_path / "again.pt").unlink()
    x = as_float(digits[0][:50])
    with torch.no_grad():
        assert torch.equal(load_classifier(path)(x), classifier(x))
    with pytest.raises(InputUnavailableError, match="dvc repro") as missing:
        load_classifier(tmp_path / "absent.pt")
    assert str(tmp_path / "absent.pt") in str(missing.value)
    path.write_bytes(b"not a checkpoint")
    with pytest.raises(CorruptDataError, match="unreadable.*dvc repro") as broken:
        load_classifier(path)
    assert "\n" not in str(broken.value)
