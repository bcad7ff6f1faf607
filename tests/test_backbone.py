"""torchvision and timm models as gendisc classifier nets (model/net=backbone): input adaptation,
pretrained weights from a file and through the libraries' download (mocked: no network here),
fine-tuning, and a few steps of every module that takes a classifier net."""

from __future__ import annotations

import math
from urllib.error import URLError

import pytest
import timm
import torch
import torchvision.models as tv_models

from gendisc.errors import ConfigError
from gendisc.nets.backbone import IMAGENET_MEAN, Backbone
from gendisc.train import train

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.val_size=100"]
BACKBONE = ["model/net=backbone", "model.net.name=resnet18"]


def test_input_adaptation_is_explicit():
    net = Backbone((1, 8, 8), 10, name="resnet18", min_size=32)
    x = torch.full((2, 1, 8, 8), -1.0)  # black images in gendisc's range
    adapted = net.adapt(x)
    assert adapted.shape == (2, 3, 32, 32)  # grey to 3 channels, upsampled to min_size
    for c, mean in enumerate(IMAGENET_MEAN):  # 0 in [0, 1], normalised by the weights' mean/std
        assert adapted[:, c].mean().item() == pytest.approx(-mean / net.std[0, c, 0, 0].item())
    sized = Backbone((3, 32, 32), 4, name="resnet18", input_size=48, normalize=False)
    out = sized.adapt(torch.zeros(1, 3, 32, 32))
    assert out.shape == (1, 3, 48, 48) and torch.allclose(out, torch.full_like(out, 0.5))


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_k_logits_and_pooled_features(source):
    net = Backbone((1, 28, 28), 10, name="resnet18", source=source)
    logits, features = net.forward_with_features(torch.rand(3, 1, 28, 28) * 2 - 1)
    assert logits.shape == (3, 10) and features[-1].shape == (3, 512)
    heads = [name for name, _ in net.named_parameters() if not name.startswith("model.")]
    assert heads == ["head.weight", "head.bias"]  # the library's own classifier is gone


def test_unknown_names_are_refused():
    with pytest.raises(ConfigError, match="not a torchvision model"):
        Backbone((1, 8, 8), 10, name="resnet_nope")
    with pytest.raises(ConfigError, match="not a timm model"):
        Backbone((1, 8, 8), 10, name="resnet_nope", source="timm")
    with pytest.raises(ConfigError, match="choose one of"):
        Backbone((1, 8, 8), 10, source="keras")


@pytest.mark.parametrize("source", ["torchvision", "timm"])
def test_pretrained_file_loads_the_trunk(source, tmp_path):
    """A library state dict saved by the test (its classifier included) fills model.*."""
    torch.manual_seed(1)
    if source == "torchvision":
        library = tv_models.get_model("resnet18", weights=None)
    else:
        library = timm.create_model("resnet18", pretrained=False)
    path = tmp_path / "resnet18.pth"
    torch.save(library.state_dict(), path)
    torch.manual_seed(2)
    net = Backbone((3, 32, 32), 5, name="resnet18", source=source, pretrained=str(path))
    for key, value in net.model.state_dict().items():
        assert torch.equal(value, library.state_dict()[key]), key


def test_pretrained_gendisc_checkpoint_and_bad_files(make_cfg, tmp_path):
    train(make_cfg(["model=classifier", *BACKBONE, *TINY, "test=false"], name="source"))
    ckpt = tmp_path / "source" / "checkpoints" / "last.ckpt"
    state = torch.load(ckpt, weights_only=True)["state_dict"]
    net = Backbone((1, 8, 8), 3, name="resnet18", pretrained=str(ckpt))
    assert torch.equal(net.model.conv1.weight, state["net.model.conv1.weight"])
    other = Backbone((1, 8, 8), 3, name="mobilenet_v3_small")
    wrong = tmp_path / "wrong.pth"
    torch.save(other.state_dict(), wrong)
    with pytest.raises(ConfigError, match="no weight matches"):
        Backbone((1, 8, 8), 3, name="resnet18", pretrained=str(wrong))
    with pytest.raises(ConfigError, match="no such file"):
        Backbone((1, 8, 8), 3, name="resnet18", pretrained=str(tmp_path / "missing.pth"))


def test_pretrained_true_goes_through_torchvisions_download(monkeypatch):
    """Mocked download: the weights the library would fetch reach the trunk; offline, one error
    that suggests a file."""
    reference = tv_models.get_model("resnet18", weights=None).state_dict()
    urls = []

    def fake_download(url, *args, **kwargs):
        urls.append(url)
        return reference

    monkeypatch.setattr(tv_models._api, "load_state_dict_from_url", fake_download)
    net = Backbone((3, 32, 32), 10, name="resnet18", pretrained=True)
    assert urls == [tv_models.ResNet18_Weights.DEFAULT.url]
    assert torch.equal(net.model.conv1.weight, reference["conv1.weight"])
    expected = tv_models.ResNet18_Weights.DEFAULT.transforms().mean
    assert net.mean.flatten().tolist() == pytest.approx(list(expected))

    def offline(url, *args, **kwargs):
        raise URLError("no network")

    monkeypatch.setattr(tv_models._api, "load_state_dict_from_url", offline)
    with pytest.raises(ConfigError, match=r"model.net.pretrained=<weights"):
        Backbone((3, 32, 32), 10, name="resnet18", pretrained=True)


def test_pretrained_true_goes_through_timms_download(monkeypatch):
    import timm.models._builder as builder

    reference = timm.create_model("resnet18", pretrained=False).state_dict()
    calls = []

    def fake_hub(*args, **kwargs):
        calls.append(args)
        return reference

    monkeypatch.setattr(builder, "load_state_dict_from_hf", fake_hub)
    net = Backbone((3, 32, 32), 10, name="resnet18", source="timm", pretrained="true")
    assert calls and torch.equal(net.model.conv1.weight, reference["conv1.weight"])

    def offline(*args, **kwargs):
        raise OSError("offline")

    monkeypatch.setattr(builder, "load_state_dict_from_hf", offline)
    with pytest.raises(ConfigError, match="timm could not fetch"):
        Backbone((3, 32, 32), 10, name="resnet18", source="timm", pretrained=True)


@pytest.mark.slow
def test_every_module_with_a_classifier_net_trains_with_a_backbone(make_cfg, tmp_path):
    """classifier (torchvision and timm), ssl_gan's discriminator, augmented_classifier."""
    metrics = train(make_cfg(["model=classifier", *BACKBONE, *TINY], name="classifier"))
    assert 0 <= metrics["test/acc"] <= 1
    timm_net = ["model/net=backbone", "model.net.source=timm", "model.net.name=resnet18"]
    assert math.isfinite(train(make_cfg(["model=classifier", *timm_net, *TINY]))["test/loss"])
    ssl_gan = [
        "model=ssl_gan",
        "model/net@model.discriminator=backbone",
        "model.discriminator.name=resnet18",
        *TINY,
    ]
    metrics = train(make_cfg(ssl_gan, name="ssl_gan"))
    assert math.isfinite(metrics["train/g_loss"])  # feature matching on the pooled features
    generator = ["model=gan", *TINY, "test=false", "~callbacks.generative_metrics"]
    train(make_cfg([*generator, "~callbacks.samples"], name="generator"))
    ckpt = tmp_path / "generator" / "checkpoints" / "last.ckpt"
    augmented = ["model=augmented_classifier", *BACKBONE, f"model.generator_ckpt={ckpt}", *TINY]
    assert 0 <= train(make_cfg(augmented, name="augmented"))["test/acc"] <= 1


FINE_TUNED = {  # model -> (module class, its net's attribute, the net's options, D's lr)
    "classifier": ("gendisc.models.classifier.ClassifierModule", "net", BACKBONE, 1e-3),
    "ssl_gan": (
        "gendisc.models.ssl_gan.SSLGANModule",
        "discriminator",
        ["model/net@model.discriminator=backbone", "model.discriminator.name=resnet18"],
        3e-3,
    ),
}


@pytest.mark.parametrize("model", list(FINE_TUNED))
def test_fine_tuning_freezes_then_unfreezes_the_trunk(model, make_cfg, tmp_path, monkeypatch):
    """model=classifier's net and model=ssl_gan's discriminator: epoch 0 trains the head only
    (the trunk's weights and batch-norm statistics stay), epoch 1 the whole net, the trunk at
    a tenth of the rate throughout."""
    import importlib

    path, attribute, net_options, lr = FINE_TUNED[model]
    module_name, class_name = path.rsplit(".", 1)
    module_class = getattr(importlib.import_module(module_name), class_name)
    seen = []
    original = module_class.on_train_epoch_start

    def spy(self):
        original(self)
        trunk = getattr(self, attribute).model
        seen.append(
            {
                "epoch": self.current_epoch,
                "grad": trunk.conv1.weight.requires_grad,
                "bn_training": trunk.bn1.training,
                "lrs": [group["lr"] for group in self.trainer.optimizers[0].param_groups],
                "conv1": trunk.conv1.weight.detach().clone(),
                "bn_mean": trunk.bn1.running_mean.clone(),
            }
        )

    monkeypatch.setattr(module_class, "on_train_epoch_start", spy)
    options = [
        "model.finetune.freeze_backbone=true",
        "model.finetune.unfreeze_epoch=1",
        "model.finetune.backbone_lr_scale=0.1",
    ]
    if model == "classifier":
        options.append("model.scheduler=null")
    else:
        options += ["model.adversarial.d_ema_decay=null", "model.adversarial.init_images=0"]
    cfg = make_cfg([f"model={model}", *net_options, *options, *TINY, "trainer.max_epochs=2"])
    metrics = train(cfg)
    first, second = seen
    assert (first["epoch"], first["grad"], first["bn_training"]) == (0, False, False)
    assert (second["epoch"], second["grad"], second["bn_training"]) == (1, True, True)
    # epoch 0 trained the head only: the trunk's weights and batch-norm statistics are unchanged
    assert torch.equal(first["conv1"], second["conv1"])
    assert torch.equal(first["bn_mean"], second["bn_mean"])
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    trained = state["state_dict"][f"{attribute}.model.conv1.weight"]
    assert not torch.equal(trained, second["conv1"])  # epoch 1 trained it
    assert first["lrs"] == pytest.approx([lr, lr / 10]) and second["lrs"] == first["lrs"]
    if model == "ssl_gan":
        assert math.isfinite(metrics["train/g_loss"])  # G trained against the frozen trunk


def test_unfreeze_epoch_needs_a_frozen_backbone(make_cfg):
    from gendisc.utils.build import build

    with pytest.raises(Exception, match=r"model\.finetune\.freeze_backbone=true"):
        build(make_cfg(["model=classifier", "model.finetune.unfreeze_epoch=2"]))
