"""Generative metrics that need no downloaded weights.

An in-domain *evaluator* stands in for Inception: a small :class:`ConvNet` trained on a
dataset's full training set (all labels), trained once and cached with its test accuracy.
On it:

- FID and KID: torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` on the
  evaluator's penultimate features (computed once per image set and handed to torchmetrics
  through a pass-through ``feature`` module);
- an Inception-Score-style score ``exp(E_x KL(p(y | x) || p(y)))`` of its softmax;
- class accuracy of a conditional generator: the fraction of samples of class k that the
  evaluator assigns to k;
- CAS (classification accuracy score, Ravuri & Vinyals 2019): a fresh classifier of the same
  architecture trained on generated images only, tested on the real test set;
- improved precision and recall (Kynkäänniemi et al. 2019, k = 3) and density and coverage
  (Naeem et al. 2020, k = 5) on k-nearest-neighbour balls of the same features, hand-written
  here because no maintained library among the dependencies provides them.

Values are comparable with each other (same dataset, same evaluator), never with published
Inception-based numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import math
import os
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.image.fid import FrechetInceptionDistance
from torchmetrics.image.kid import KernelInceptionDistance

from gendisc.checkpoints import load_checkpoint
from gendisc.data.batches import to_unit_range
from gendisc.errors import ConfigError
from gendisc.nets.classifiers import ConvNet

log = logging.getLogger(__name__)

CACHE_VERSION = 1


@dataclass
class EvaluatorConfig:
    """Architecture and training budget of the evaluator (and of the CAS classifier): ``epochs``
    passes over the training images, at least ``min_steps`` and at most ``max_steps`` steps."""

    channels: tuple[int, ...] = (16, 32, 64)
    epochs: float = 2.0
    min_steps: int = 200
    max_steps: int | None = None
    batch_size: int = 128
    lr: float = 0.002
    weight_decay: float = 0.0005
    dropout: float = 0.1
    seed: int = 0

    def __post_init__(self) -> None:
        self.channels = tuple(int(c) for c in self.channels)

    def steps_for(self, n: int) -> int:
        """Training steps for ``n`` images."""
        steps = max(self.min_steps, math.ceil(self.epochs * n / self.batch_size))
        return min(steps, self.max_steps) if self.max_steps is not None else steps


class Evaluator(nn.Module):
    """A trained classifier whose ``forward`` returns its penultimate features (the input of
    torchmetrics' FID/KID), with ``logits(x)`` and ``num_features``. Always in eval mode."""

    def __init__(self, net: ConvNet, info: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.net = net
        self.num_features = int(net.feature_dim)
        self.info = dict(info or {})
        self.eval()
        self.requires_grad_(False)

    def train(self, mode: bool = True) -> Evaluator:
        return super().train(False)  # batch norm and dropout stay in inference mode

    @property
    def test_acc(self) -> float | None:
        return self.info.get("test_acc")

    def forward(self, x: Tensor) -> Tensor:
        return self.net.forward_features(x)[-1]

    def logits(self, x: Tensor) -> Tensor:
        return self.net(x)


def _as_float(images: Tensor) -> Tensor:
    return to_unit_range(images) if images.dtype == torch.uint8 else images.float()


def quantize(images: Tensor) -> Tensor:
    """Images in [-1, 1] rounded to the 256 levels of a saved 8-bit image."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round() / 127.5 - 1


def train_classifier(
    images: Tensor,
    labels: Tensor,
    num_classes: int,
    config: EvaluatorConfig,
    device: torch.device | str = "cpu",
    steps: int | None = None,
) -> ConvNet:
    """A ConvNet trained on (``images`` uint8 or float in [-1, 1], ``labels``) for ``steps``
    (default: ``config.steps_for(len(labels))``) minibatch steps of AdamW with cosine decay;
    seeded by ``config.seed``, without touching the global random state. In eval mode."""
    device = torch.device(device)
    steps = config.steps_for(len(labels)) if steps is None else steps
    fork = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork), torch.inference_mode(False), torch.enable_grad():
        torch.manual_seed(config.seed)
        net = ConvNet(
            tuple(images.shape[1:]),
            num_classes,
            channels=config.channels,
            dropout=config.dropout,
            batch_norm=True,
        ).to(device)
        optimizer = torch.optim.AdamW(
            net.parameters(), lr=config.lr, weight_decay=config.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(steps, 1))
        rng = torch.Generator().manual_seed(config.seed)
        n = len(labels)
        batch = min(config.batch_size, n)
        net.train()
        for _ in range(steps):
            index = torch.randint(n, (batch,), generator=rng).to(labels.device)
            x = _as_float(images[index]).to(device)
            y = labels[index].to(device)
            loss = F.cross_entropy(net(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            scheduler.step()
    return net.eval()


@torch.no_grad()
def predict_logits(net: nn.Module, images: Tensor, batch_size: int = 1000) -> Tensor:
    """Logits of ``net`` (eval mode) for uint8 or float images, batch by batch, on the net's
    device; returned on the CPU."""
    device = next(net.parameters()).device
    outputs = [
        net(_as_float(images[i : i + batch_size]).to(device)).float().cpu()
        for i in range(0, len(images), batch_size)
    ]
    return torch.cat(outputs)


def accuracy(net: nn.Module, images: Tensor, labels: Tensor, batch_size: int = 1000) -> float:
    """Fraction of ``images`` that ``net`` assigns to ``labels``."""
    was_training = net.training
    net.eval()
    try:
        predictions = predict_logits(net, images, batch_size).argmax(1)
    finally:
        net.train(was_training)
    return (predictions == labels.cpu()).float().mean().item()


def _fingerprint(images: Tensor, labels: Tensor) -> str:
    """A short hash of the training data, so a cached evaluator is reused only for it."""
    step = max(1, len(images) // 512)
    digest = hashlib.sha1()
    digest.update(str(tuple(images.shape)).encode())
    digest.update(labels.cpu().numpy().tobytes())
    digest.update(images[::step].cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def evaluator_key(
    name: str, images: Tensor, labels: Tensor, num_classes: int, config: EvaluatorConfig
) -> str:
    """Cache file stem: dataset name + hash of (data, number of classes, config, version)."""
    digest = hashlib.sha1()
    for part in (
        _fingerprint(images, labels),
        str(num_classes),
        json.dumps(dataclasses.asdict(config), sort_keys=True),
        str(CACHE_VERSION),
    ):
        digest.update(part.encode())
    return f"{name}-{digest.hexdigest()[:12]}"


def load_or_train_evaluator(
    name: str,
    train_images: Tensor,
    train_labels: Tensor,
    test_images: Tensor,
    test_labels: Tensor,
    num_classes: int,
    config: EvaluatorConfig,
    cache_dir: str | Path | None,
    device: torch.device | str = "cpu",
) -> Evaluator:
    """The cached evaluator for this training data and config, or a freshly trained one
    (saved to ``cache_dir`` as ``<key>.pt`` with ``<key>.json`` holding its test accuracy;
    ``cache_dir=None``: not cached)."""
    in_shape = tuple(train_images.shape[1:])
    key = evaluator_key(name, train_images, train_labels, num_classes, config)
    path = Path(cache_dir) / f"{key}.pt" if cache_dir is not None else None

    def build() -> ConvNet:
        return ConvNet(in_shape, num_classes, channels=config.channels, dropout=config.dropout).to(
            device
        )

    if path is not None and path.is_file():
        stored = load_checkpoint(path, "callbacks.generative_metrics.cache_dir")
        net = build()
        net.load_state_dict(stored["state_dict"])
        log.info("Evaluator %s loaded (test accuracy %.4f)", path, stored["info"]["test_acc"])
        return Evaluator(net, stored["info"])
    started = time.perf_counter()
    net = train_classifier(train_images, train_labels, num_classes, config, device)
    info = {
        "dataset": name,
        "test_acc": accuracy(net, test_images, test_labels),
        "train_images": len(train_labels),
        "test_images": len(test_labels),
        "in_shape": list(in_shape),
        "num_classes": num_classes,
        "train_seconds": round(time.perf_counter() - started, 2),
        "config": dataclasses.asdict(config),
    }
    log.info("Evaluator for %s trained: test accuracy %.4f", name, info["test_acc"])
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.cpu() for k, v in net.state_dict().items()}
        temporary = path.with_suffix(f".tmp{os.getpid()}")
        torch.save({"state_dict": state, "info": info}, temporary)
        os.replace(temporary, path)  # atomic: concurrent runs never read half a file
        path.with_suffix(".json").write_text(json.dumps(info, indent=2))
    return Evaluator(net, info)


def inception_score(probs: Tensor, splits: int = 1) -> float:
    """exp(E_x KL(p(y | x) || p(y))) of class probabilities (N, K), p(y) = the mean over the
    split; averaged over ``splits`` equal consecutive splits."""
    probs = probs.double().clamp_min(1e-12)
    splits = max(1, min(splits, len(probs)))
    scores = []
    for part in probs.chunk(splits):
        marginal = part.mean(dim=0, keepdim=True)
        kl = (part * (part.log() - marginal.log())).sum(dim=1).mean()
        scores.append(kl.exp())
    return torch.stack(scores).mean().item()


class _Precomputed(nn.Module):
    """The ``feature`` module handed to torchmetrics: the evaluator's features are computed
    once per image set (:func:`evaluate_images`) and passed through unchanged."""

    def __init__(self, num_features: int) -> None:
        super().__init__()
        self.num_features = int(num_features)

    def forward(self, features: Tensor) -> Tensor:
        return features


@torch.no_grad()
def evaluate_images(
    evaluator: Evaluator, images: Tensor, batch_size: int = 1000
) -> tuple[Tensor, Tensor]:
    """The evaluator's penultimate features (float64) and class probabilities of ``images``
    (uint8 or float in [-1, 1]) from one pass, on the CPU."""
    device = next(evaluator.parameters()).device
    features, probs = [], []
    for i in range(0, len(images), batch_size):
        logits, hidden = evaluator.net.forward_with_features(
            _as_float(images[i : i + batch_size]).to(device)
        )
        features.append(hidden[-1].double().cpu())
        probs.append(logits.float().softmax(dim=1).cpu())
    return torch.cat(features), torch.cat(probs)


def knn_radii(features: Tensor, k: int, chunk_size: int = 1024) -> Tensor:
    """Distance of each row of ``features`` (N, D) to its ``k``-th nearest other row, computed
    ``chunk_size`` rows at a time (memory O(chunk_size * N))."""
    return _knn_radii(features, (k,), chunk_size)[0]


def _knn_radii(features: Tensor, ks: tuple[int, ...], chunk_size: int) -> list[Tensor]:
    """:func:`knn_radii` for several ``ks`` from one pass over the distances."""
    n = len(features)
    if not all(1 <= k < n for k in ks):
        raise ConfigError(
            f"k={max(ks)} nearest neighbours need more than k feature vectors (got {n}): lower "
            f"callbacks.generative_metrics.pr_k / dc_k or raise the sample counts."
        )
    radii: list[list[Tensor]] = [[] for _ in ks]
    for rows in features.split(chunk_size):
        # the max(ks) + 1 smallest distances include the row's distance to itself (0)
        nearest = torch.cdist(rows, features).topk(max(ks) + 1, dim=1, largest=False).values
        for out, k in zip(radii, ks, strict=True):
            out.append(nearest[:, k])
    return [torch.cat(out) for out in radii]


def precision_recall_density_coverage(
    real: Tensor,
    fake: Tensor,
    pr_k: int = 3,
    dc_k: int = 5,
    chunk_size: int = 1024,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """Improved precision / recall (Kynkäänniemi et al. 2019) and density / coverage (Naeem et
    al. 2020) of feature sets ``real`` (N, D) and ``fake`` (M, D).

    A set's manifold is the union of closed balls around its vectors, each with the radius of the
    vector's ``k``-th nearest neighbour in its own set. precision: share of fake vectors inside
    the real manifold (k = ``pr_k``); recall: share of real vectors inside the fake manifold;
    density: ``(1 / (k M)) sum_j sum_i 1[fake_j in ball_i]`` over the real balls of k = ``dc_k``
    (can exceed 1); coverage: share of real balls (k = ``dc_k``) holding at least one fake
    vector. Distances in float64 with ``torch.cdist``, ``chunk_size`` rows at a time, on
    ``device`` (default: that of ``real``).
    """
    device = real.device if device is None else torch.device(device)
    real, fake = real.to(device, torch.float64), fake.to(device, torch.float64)
    real_pr, real_dc = _knn_radii(real, (pr_k, dc_k), chunk_size)
    fake_pr = knn_radii(fake, pr_k, chunk_size)
    fake_in_real = torch.zeros(len(fake), dtype=torch.bool, device=device)
    real_in_fake = torch.zeros(len(real), dtype=torch.bool, device=device)
    covered = torch.zeros(len(real), dtype=torch.bool, device=device)
    inside = torch.zeros((), dtype=torch.int64, device=device)
    for start in range(0, len(real), chunk_size):
        stop = start + chunk_size
        distances = torch.cdist(real[start:stop], fake)  # (rows of real, M)
        fake_in_real |= (distances <= real_pr[start:stop, None]).any(dim=0)
        real_in_fake[start:stop] = (distances <= fake_pr[None, :]).any(dim=1)
        in_balls = distances <= real_dc[start:stop, None]
        inside += in_balls.sum()
        covered[start:stop] = in_balls.any(dim=1)
    return {
        "precision": fake_in_real.double().mean().item(),
        "recall": real_in_fake.double().mean().item(),
        "density": inside.item() / (dc_k * len(fake)),
        "coverage": covered.double().mean().item(),
    }


def prdc_from_features(
    real: Tensor,
    fake: Tensor,
    samples: int | None = 10000,
    pr_k: int = 3,
    dc_k: int = 5,
    seed: int = 0,
    device: torch.device | str | None = None,
) -> dict[str, float]:
    """:func:`precision_recall_density_coverage` on equal-sized sets: ``n = min(samples,
    len(real), len(fake))`` vectors of each (a seeded random subset of a larger set); the
    result also holds ``prdc_n`` (that ``n``), ``pr_k`` and ``dc_k``."""
    n = min(len(real), len(fake), samples if samples is not None else len(real))
    generator = torch.Generator().manual_seed(seed)

    def subset(features: Tensor) -> Tensor:
        if len(features) == n:
            return features
        return features[torch.randperm(len(features), generator=generator)[:n]]

    values = precision_recall_density_coverage(
        subset(real), subset(fake), pr_k, dc_k, device=device
    )
    return {**values, "prdc_n": float(n), "pr_k": float(pr_k), "dc_k": float(dc_k)}


def distances_from_features(
    real: Tensor, fake: Tensor, kid_subsets: int = 50, kid_subset_size: int = 1000
) -> dict[str, float]:
    """FID and KID (mean, std over subsets; subset size capped by the set sizes) between two
    sets of evaluator features, with torchmetrics' FID and KID."""
    identity = _Precomputed(real.shape[1])
    subset = max(2, min(kid_subset_size, len(real), len(fake)))
    fid = FrechetInceptionDistance(feature=identity, reset_real_features=True)
    with warnings.catch_warnings():  # it keeps every feature: a few MB here
        warnings.filterwarnings("ignore", message=".*will save all extracted features.*")
        kid = KernelInceptionDistance(
            feature=identity, subsets=kid_subsets, subset_size=subset, reset_real_features=True
        )
    for metric in (fid, kid):
        metric.update(real, real=True)
        metric.update(fake, real=False)
    kid_mean, kid_std = kid.compute()
    return {"fid": fid.compute().item(), "kid": kid_mean.item(), "kid_std": kid_std.item()}


def feature_distances(
    evaluator: Evaluator,
    real: Tensor,
    fake: Tensor,
    kid_subsets: int = 50,
    kid_subset_size: int = 1000,
) -> dict[str, float]:
    """FID and KID of two image sets on the evaluator's features."""
    real_features, _ = evaluate_images(evaluator, real)
    fake_features, _ = evaluate_images(evaluator, fake)
    return distances_from_features(real_features, fake_features, kid_subsets, kid_subset_size)


@dataclass
class GenerativeScores:
    """What :func:`score_samples` measures (``None`` where it does not apply)."""

    fid: float
    kid: float
    kid_std: float
    inception_score: float
    class_acc: float | None = None
    cas: float | None = None
    precision: float | None = None
    recall: float | None = None
    density: float | None = None
    coverage: float | None = None
    extra: dict[str, float] = field(default_factory=dict)

    def as_metrics(self, prefix: str = "gen/") -> dict[str, float]:
        values = {
            "fid": self.fid,
            "kid": self.kid,
            "kid_std": self.kid_std,
            "is": self.inception_score,
            "class_acc": self.class_acc,
            "cas": self.cas,
            "precision": self.precision,
            "recall": self.recall,
            "density": self.density,
            "coverage": self.coverage,
            **self.extra,
        }
        return {f"{prefix}{k}": v for k, v in values.items() if v is not None and math.isfinite(v)}


def score_samples(
    evaluator: Evaluator,
    fake: Tensor,
    fake_labels: Tensor | None,
    real_test: Tensor,
    test_labels: Tensor,
    num_classes: int,
    is_splits: int = 10,
    kid_subsets: int = 50,
    kid_subset_size: int = 1000,
    cas_images: Tensor | None = None,
    cas_labels: Tensor | None = None,
    cas_config: EvaluatorConfig | None = None,
    real_features: Tensor | None = None,
    prdc_samples: int | None = 10000,
    pr_k: int = 3,
    dc_k: int = 5,
    seed: int = 0,
) -> GenerativeScores:
    """Every metric of generated images ``fake`` (and, for CAS, a generated training set
    ``cas_images``/``cas_labels``) against the real test set (whose evaluator features may be
    given, to compute them once). Precision / recall / density / coverage use ``prdc_samples``
    of each set at most (equal sizes, see :func:`prdc_from_features`; 0: not computed), with
    their sample count and k in ``extra``."""
    if real_features is None:
        real_features, _ = evaluate_images(evaluator, real_test)
    fake_features, probs = evaluate_images(evaluator, fake)
    distances = distances_from_features(real_features, fake_features, kid_subsets, kid_subset_size)
    scores = GenerativeScores(
        fid=distances["fid"],
        kid=distances["kid"],
        kid_std=distances["kid_std"],
        inception_score=inception_score(probs, is_splits),
    )
    if prdc_samples != 0:
        device = next(evaluator.parameters()).device
        prdc = prdc_from_features(
            real_features, fake_features, prdc_samples, pr_k, dc_k, seed, device
        )
        for name in ("precision", "recall", "density", "coverage"):
            setattr(scores, name, prdc.pop(name))
        scores.extra.update(prdc)
    if fake_labels is not None:
        scores.class_acc = (probs.argmax(1) == fake_labels.cpu()).float().mean().item()
    if cas_images is not None and cas_labels is not None and len(cas_labels) > 0:
        device = next(evaluator.parameters()).device
        config = cas_config or EvaluatorConfig()
        net = train_classifier(cas_images, cas_labels, num_classes, config, device)
        scores.cas = accuracy(net, real_test, test_labels)
    return scores
