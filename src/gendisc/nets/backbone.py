"""A torchvision or timm model as a gendisc classifier net (``model/net=backbone``).

The library model is built without its classification layer, so it maps images to pooled
features; gendisc's own head (and, when asked, minibatch discrimination) sits on top, as on
every gendisc classifier net. So a backbone serves wherever a classifier net does: the
classifier, ssl_gan's discriminator (K logits, the implicit fake logit, feature matching on the
pooled features) and the classifier of augmented_classifier; its trunk is ``model.*``, its head
``head.*`` (what ``model.finetune.freeze_backbone`` keeps training).

Input adaptation, explicit: gendisc's images in [-1, 1] are mapped to [0, 1], grayscale images
repeated to the 3 channels the libraries' models expect, resized on the device (bilinear) to
``input_size`` (null: as they are, but at least ``min_size`` pixels a side), and normalised
with the mean and std the weights were trained with (``normalize``; ImageNet's for weights-free
torchvision models, timm's pretrained config otherwise).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import torch
import torch.nn.functional as F
import torchvision.models as models
from torch import Tensor, nn

from gendisc.checkpoints import read_checkpoint_state
from gendisc.errors import ConfigError
from gendisc.nets.classifiers import ClassifierNet, MinibatchSetting
from gendisc.nets.weights import match_weights

log = logging.getLogger(__name__)

__all__ = ["SOURCES", "Backbone"]

SOURCES = ("torchvision", "timm")
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
PRETRAINED_SETTING = "model.net.pretrained"


def _offline_error(name: str, source: str, error: BaseException) -> ConfigError:
    return ConfigError(
        f"{PRETRAINED_SETTING}=true: {source} could not fetch the published weights of {name} "
        f"({type(error).__name__}: {str(error)[:120]}). Without a network, download them "
        f"elsewhere and give the file: {PRETRAINED_SETTING}=<weights .pth/.ckpt>."
    )


def _last_linear(model: nn.Module) -> tuple[nn.Module, str, nn.Linear]:
    """The parent, attribute name and module of the last ``nn.Linear`` of a torchvision
    classifier (its classification layer: ``fc``, ``classifier[-1]``, ``heads.head``, ...)."""
    found = None
    for parent in model.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.Linear):
                found = (parent, name, child)
    if found is None:
        raise ConfigError("model.net: this torchvision model has no linear classification layer.")
    return found


def build_torchvision(name: str, pretrained: bool) -> tuple[nn.Module, int, tuple, tuple]:
    """A torchvision model without its classification layer, its feature size, mean and std."""
    if name not in models.list_models():
        raise ConfigError(
            f"model.net.name={name}: not a torchvision model; e.g. resnet18, resnet50, "
            f"mobilenet_v3_small, efficientnet_b0, convnext_tiny (torchvision.models.list_models())."
        )
    weights = models.get_model_weights(name).DEFAULT if pretrained else None
    try:
        model = models.get_model(name, weights=weights)  # the library's download and hash check
    except Exception as error:  # no network: URLError; a damaged download: RuntimeError
        raise _offline_error(name, "torchvision", error) from error
    parent, attribute, linear = _last_linear(model)
    setattr(parent, attribute, nn.Identity())
    mean, std = IMAGENET_MEAN, IMAGENET_STD
    if weights is not None:
        transform = weights.transforms()
        mean, std = tuple(transform.mean), tuple(transform.std)
    return model, linear.in_features, mean, std


def build_timm(name: str, pretrained: bool) -> tuple[nn.Module, int, tuple, tuple]:
    """A timm model without its classifier (``num_classes=0``), its feature size, mean, std.
    timm is imported here: it is an optional dependency (``pip install gendisc[timm]``)."""
    try:
        import timm
    except ImportError as error:
        raise ConfigError(
            "model.net.source=timm needs timm: pip install timm (make setup installs it)."
        ) from error

    if not timm.is_model(name):
        raise ConfigError(
            f"model.net.name={name}: not a timm model; e.g. resnet18, efficientnet_b0, "
            "convnext_atto, vit_tiny_patch16_224 (timm.list_models())."
        )
    try:
        model = timm.create_model(name, pretrained=pretrained, num_classes=0)
    except Exception as error:  # the hub client's network errors are of several types
        if not pretrained:
            raise
        raise _offline_error(name, "timm", error) from error
    config = model.pretrained_cfg
    return model, int(model.num_features), tuple(config["mean"]), tuple(config["std"])


BUILDERS = {"torchvision": build_torchvision, "timm": build_timm}


class Backbone(ClassifierNet):
    """A torchvision.models or timm model (by ``name``) as a K-class classifier net.

    Args:
        in_shape, num_classes: filled in from the data.
        name: the model's name in its library (``resnet18``, ``efficientnet_b0``, ...).
        source: ``torchvision`` or ``timm``.
        pretrained: false (random init), true (the library's published weights, through its
            own download with its checks; offline a clear error) or the path of a state dict or
            gendisc checkpoint (read weights-only; matched by name and shape, leading owner
            names such as ``net.``, ``discriminator.`` or ``model.`` ignored).
        input_size: side the images are resized to (null: kept, but at least ``min_size``).
        min_size: smallest side fed to the model (small images are upsampled).
        normalize: normalise with the weights' mean and std.
        minibatch_discrimination: as in every gendisc classifier net (null, true or
            {kernels, dim, reference_size}: ``gendisc.nets.classifiers.minibatch_options``).
    """

    def __init__(
        self,
        in_shape: Sequence[int],
        num_classes: int,
        name: str = "resnet18",
        source: Literal["torchvision", "timm"] = "torchvision",
        pretrained: bool | str = False,
        input_size: int | None = None,
        min_size: int = 32,
        normalize: bool = True,
        minibatch_discrimination: MinibatchSetting = None,
    ) -> None:
        super().__init__()
        if source not in SOURCES:
            raise ConfigError(f"model.net.source={source!r}: choose one of {list(SOURCES)}.")
        self.in_shape = tuple(int(v) for v in in_shape)
        if len(self.in_shape) != 3 or self.in_shape[0] not in (1, 3):
            raise ConfigError(
                f"model.net=backbone needs images of 1 or 3 channels (C, H, W), got {self.in_shape}."
            )
        self.name, self.source = name, source
        self.input_size = int(input_size) if input_size else None
        self.min_size = int(min_size)
        from_library = pretrained is True or str(pretrained).lower() == "true"
        self.model, feature_dim, mean, std = BUILDERS[source](name, from_library)
        self.normalize = bool(normalize)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self._build_head(feature_dim, num_classes, minibatch_discrimination)
        if pretrained and not from_library and str(pretrained).lower() != "false":
            self.load_pretrained(pretrained)

    def load_pretrained(self, path: str | Path) -> None:
        """Copy the trunk weights of a state dict or gendisc checkpoint file into ``model.*``."""
        state = read_checkpoint_state(path, PRETRAINED_SETTING)
        own = self.model.state_dict()
        update, shape_mismatch, missing = match_weights(own, state)
        if not update:
            raise ConfigError(
                f"{PRETRAINED_SETTING}={path}: no weight matches {self.source}'s {self.name} by "
                f"name and shape (it has e.g. {list(own)[:3]}; the file has e.g. "
                f"{list(state)[:3]}). Give weights of the same model."
            )
        if shape_mismatch:
            raise ConfigError(
                f"{PRETRAINED_SETTING}={path}: {len(shape_mismatch)} weights of {self.name} have "
                f"another shape in the file (e.g. {shape_mismatch[:3]}): another variant?"
            )
        self.model.load_state_dict(update, strict=False)
        log.info(
            "%s=%s: %d of %d trunk tensors loaded%s",
            PRETRAINED_SETTING,
            path,
            len(update),
            len(own),
            f"; not in the file, kept initial: {missing[:5]}" if missing else "",
        )

    def adapt(self, x: Tensor) -> Tensor:
        """gendisc images in [-1, 1] -> the model's input (channels, size, normalisation)."""
        x = (x + 1.0) / 2.0
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        size = self.input_size or max(self.min_size, *x.shape[-2:])
        if tuple(x.shape[-2:]) != (size, size):
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)
        if self.normalize:
            x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
        return x

    def forward_features(self, x: Tensor) -> list[Tensor]:
        """The pooled features (one entry: the layer feature matching uses)."""
        return [self.model(self.adapt(x)).flatten(1)]

    def extra_repr(self) -> str:
        return f"name={self.name}, source={self.source}"
