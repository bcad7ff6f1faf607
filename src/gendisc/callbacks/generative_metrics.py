"""Generative metrics at test time: FID, KID, IS, precision / recall / density / coverage,
class accuracy and CAS into metrics.json."""

from __future__ import annotations

import dataclasses
import logging
from pathlib import Path
from typing import Any

import torch
from lightning import Callback, LightningModule, Trainer

from gendisc.errors import ConfigError
from gendisc.metrics.generative import (
    EvaluatorConfig,
    distances_from_features,
    evaluate_images,
    inception_score,
    load_or_train_evaluator,
    prdc_from_features,
    quantize,
    score_samples,
)
from gendisc.models.sampling import Sampler, sampler_for

log = logging.getLogger(__name__)


def to_uint8_tensor(images: torch.Tensor) -> torch.Tensor:
    """Images in [-1, 1] -> uint8 0..255 (the storage format of the datasets)."""
    return ((images.clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class GenerativeMetrics(Callback):
    """Measures the generator of the tested module against the real test set and logs
    ``gen/fid``, ``gen/kid`` (+ ``gen/kid_std``), ``gen/is``, ``gen/precision``,
    ``gen/recall``, ``gen/density``, ``gen/coverage`` (with their settings ``gen/prdc_n``,
    ``gen/pr_k``, ``gen/dc_k``), for class-conditional models ``gen/class_acc`` and
    ``gen/cas``, and as references ``gen/evaluator_acc`` (the evaluator's test accuracy),
    ``gen/is_real`` (IS of the real test images) and ``gen/fid_real`` / ``gen/kid_real`` /
    ``gen/precision_real`` / ``gen/recall_real`` / ``gen/density_real`` /
    ``gen/coverage_real`` (real training images against the test images).

    The evaluator is trained on the datamodule's full training set on first use and cached in
    ``cache_dir``. Under ``trainer.fast_dev_run`` everything runs on a smoke budget (a few
    samples and steps, nothing cached): the keys exist, the values mean nothing.

    Args:
        cache_dir: folder of cached evaluators (``${paths.cache_dir}/evaluators``); null: none.
        num_samples: generated images for FID/KID/IS/class accuracy (null: as many as test
            images).
        kid_subset_size, kid_subsets: KID's subsets (the size is capped by the sample counts).
        is_splits: splits of the IS estimate.
        prdc_samples: real (test) and generated feature vectors, as many of each, for precision /
            recall / density / coverage (capped by both counts; 0: not computed).
        pr_k, dc_k: nearest neighbours that set the ball radii of precision / recall (3 in
            Kynkäänniemi et al. 2019) and of density / coverage (5 in Naeem et al. 2020).
        cas_samples: generated training images of the CAS classifier (0: no CAS); it has the
            evaluator's architecture and budget (``evaluator.epochs`` over these images).
        seed: seeds the samples (the metrics are reproducible for given weights).
        evaluator: fields of :class:`EvaluatorConfig` (channels, epochs, min_steps, batch_size,
            lr, ...).
        smoke_samples: sample count under fast_dev_run.
    """

    def __init__(
        self,
        cache_dir: str | None = None,
        num_samples: int | None = 10000,
        kid_subset_size: int = 1000,
        kid_subsets: int = 50,
        is_splits: int = 10,
        prdc_samples: int = 10000,
        pr_k: int = 3,
        dc_k: int = 5,
        cas_samples: int = 10000,
        seed: int = 0,
        evaluator: dict[str, Any] | None = None,
        smoke_samples: int = 64,
    ) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.num_samples = num_samples
        self.kid_subset_size = int(kid_subset_size)
        self.kid_subsets = int(kid_subsets)
        self.is_splits = int(is_splits)
        self.prdc_samples = int(prdc_samples)
        self.pr_k, self.dc_k = int(pr_k), int(dc_k)
        if self.prdc_samples < 0 or self.pr_k < 1 or self.dc_k < 1:
            raise ConfigError(
                f"callbacks.generative_metrics: prdc_samples={prdc_samples} must be >= 0 (0: off) "
                f"and pr_k={pr_k}, dc_k={dc_k} at least 1 (the papers use 3 and 5)."
            )
        self.cas_samples = int(cas_samples)
        self.seed = int(seed)
        self.evaluator_config = EvaluatorConfig(**dict(evaluator or {}))
        self.smoke_samples = int(smoke_samples)
        self.metrics: dict[str, float] = {}

    def on_test_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        try:
            sampler = sampler_for(pl_module)
        except ConfigError as error:
            log.warning("No generative metrics: %s", error)
            return
        if not trainer.is_global_zero:
            return
        self.metrics = self.measure(trainer.datamodule, sampler, smoke=bool(trainer.fast_dev_run))
        for key, value in self.metrics.items():
            pl_module.log(key, value, rank_zero_only=True)

    def measure(self, datamodule: Any, sampler: Sampler, smoke: bool = False) -> dict[str, float]:
        """Every metric of ``sampler`` on ``datamodule``'s data (``smoke``: tiny budget)."""
        device = sampler.device
        config, cache = self.evaluator_config, self.cache_dir
        num_samples = self.num_samples or len(datamodule.test_labels)
        cas_samples, is_splits, subsets = self.cas_samples, self.is_splits, self.kid_subsets
        if smoke:
            config = dataclasses.replace(config, min_steps=2, max_steps=2)
            cache, num_samples = None, self.smoke_samples
            cas_samples = min(cas_samples, self.smoke_samples)
            is_splits, subsets = 1, 2
        evaluator = load_or_train_evaluator(
            str(getattr(datamodule, "dataset", "data")),
            datamodule.train_images,
            datamodule.train_labels,
            datamodule.test_images,
            datamodule.test_labels,
            datamodule.num_classes,
            config,
            cache,
            device,
        )
        test_images, test_labels = datamodule.test_images, datamodule.test_labels
        if smoke:
            test_images, test_labels = test_images[:num_samples], test_labels[:num_samples]
        fork = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=fork), torch.inference_mode(False):
            torch.manual_seed(self.seed)
            fake, labels = sampler.sample(num_samples, seed=self.seed)
            fake = quantize(fake)
            cas_images = cas_labels = None
            if sampler.conditional and cas_samples > 0:
                images, cas_labels = sampler.sample(cas_samples, seed=self.seed + 1)
                cas_images = to_uint8_tensor(images)
            test_features, test_probs = evaluate_images(evaluator, test_images)
            scores = score_samples(
                evaluator,
                fake,
                labels,
                test_images,
                test_labels,
                datamodule.num_classes,
                is_splits=is_splits,
                kid_subsets=subsets,
                kid_subset_size=self.kid_subset_size,
                cas_images=cas_images,
                cas_labels=cas_labels,
                cas_config=config,
                real_features=test_features,
                prdc_samples=self.prdc_samples,
                pr_k=self.pr_k,
                dc_k=self.dc_k,
                seed=self.seed,
            )
            reference = self.real_reference(
                datamodule, evaluator, num_samples, test_features, test_probs, is_splits, subsets
            )
        scores.extra.update(reference)
        scores.extra["evaluator_acc"] = float(evaluator.test_acc)
        return scores.as_metrics()

    def real_reference(
        self,
        datamodule: Any,
        evaluator: Any,
        count: int,
        test_features: torch.Tensor,
        test_probs: torch.Tensor,
        is_splits: int,
        subsets: int,
    ) -> dict[str, float]:
        """The same metrics for real images: IS of the test set, FID/KID and precision /
        recall / density / coverage of ``count`` random training images against the test set
        (what a generator as good as the data reaches)."""
        generator = torch.Generator().manual_seed(self.seed)
        pick = torch.randperm(len(datamodule.train_labels), generator=generator)[:count]
        train = datamodule.train_images[pick.to(datamodule.train_images.device)]
        train_features, _ = evaluate_images(evaluator, train)
        distances = distances_from_features(
            test_features, train_features, subsets, self.kid_subset_size
        )
        reference = {
            "is_real": inception_score(test_probs, is_splits),
            "fid_real": distances["fid"],
            "kid_real": distances["kid"],
        }
        if self.prdc_samples > 0:
            prdc = prdc_from_features(
                test_features,
                train_features,
                self.prdc_samples,
                self.pr_k,
                self.dc_k,
                self.seed,
                next(evaluator.parameters()).device,
            )
            for name in ("precision", "recall", "density", "coverage"):
                reference[f"{name}_real"] = prdc[name]
        return reference
