"""What a gendisc model receives from the data and what it must provide: the model contract.

A model is a LightningModule named by ``conf/model/<name>.yaml`` (``_target_``) and built by
``gendisc.utils.build.build``:

Receives
  - its config's options as constructor arguments, plus three from the data:
    ``in_shape`` (C, H, W), ``num_classes`` and ``class_names``;
  - :class:`Batch` dicts in every step. Training: ``x``, ``y`` (a labeled batch) and, when the
    model asks for them with ``unlabeled_streams = N``, N unlabeled batches ``x_unl``,
    ``x_unl2``, ..., ``x_unl<N>``. Validation and test: ``x``, ``y``. Images are float32 in
    [-1, 1] on the model's device (``augment=`` has already transformed the training ``x``).

Provides
  - ``unlabeled_streams``: how many unlabeled batches each training step gets (0, 1, 2, ...);
  - ``training_step(batch, batch_idx)`` and ``configure_optimizers()`` (Lightning's);
  - ``classify(x) -> logits``: the class logits its validation and test metrics, reports and
    the generative metrics' classifier use; the shared base
    :class:`gendisc.models.evaluation.ClassifierEvaluation` implements evaluation from it
    (``val/*``, ``test/*``, ``test_results`` for the report: per-class figures, confusion
    matrix, class names), so a model that subclasses it writes only ``classify`` (default:
    ``forward``);
  - optionally ``sampler()`` (a ``gendisc.models.sampling.Sampler``): a generative model's
    images, for the sample grids and the generative metrics (``conf/callbacks/samples.yaml``,
    ``generative_metrics.yaml``).

Declares, optionally, as class attributes (read from ``model._target_`` when the config is
composed, so that a model option never changes a global setting; defaults in
``gendisc.utils.config.MODEL_DECLARATIONS``)
  - ``selection_metric``: the validation metric that selects its checkpoint, the default of
    ``optimized_metric`` (default ``"val/acc"``; ``None``: no selection, so ``test_ckpt``
    defaults to ``last``; the VAE's is ``"val/elbo"``);
  - ``generative_callbacks``: whether the sample grids and generative metrics run for it by
    default (default ``False``; the GAN, VAE and semi-supervised VAE say ``True``).

README "Add a model" walks through one file + one YAML; ``tests/test_add_model.py`` follows it.
"""

from __future__ import annotations

from typing import Any, Protocol, TypedDict, runtime_checkable

from torch import Tensor

__all__ = ["Batch", "GendiscModel", "missing_parts"]


class Batch(TypedDict, total=False):
    """One step's tensors, in training, validation and test alike (images in [-1, 1])."""

    x: Tensor  # labeled images (N, C, H, W)
    y: Tensor  # their labels (N,), int64
    x_unl: Tensor  # unlabeled images: training, unlabeled_streams >= 1
    x_unl2: Tensor  # a second unlabeled batch: unlabeled_streams >= 2 (x_unl3, ... beyond)


@runtime_checkable
class GendiscModel(Protocol):
    """The members every gendisc model has (see the module docstring for their meaning)."""

    unlabeled_streams: int
    num_classes: int
    class_names: list[str]
    test_results: dict[str, Any]

    def classify(self, x: Tensor) -> Tensor: ...

    def training_step(self, batch: Batch, batch_idx: int) -> Any: ...

    def configure_optimizers(self) -> Any: ...


def missing_parts(model: object) -> list[str]:
    """The members of :class:`GendiscModel` that ``model`` lacks (empty: it keeps the contract)."""
    names = ["unlabeled_streams", "num_classes", "class_names", "test_results", "classify"]
    return [name for name in names if not hasattr(model, name)]
