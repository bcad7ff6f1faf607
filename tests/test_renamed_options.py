"""One option name per idea across the adversarial modules; the old names are refused with the
name to use where a user writes them (command line, a composed config), and read under their new
names where a checkpoint written before the rename stores them (run config, saved options,
weights)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch
from lightning import Trainer
from omegaconf import OmegaConf

from gendisc.checkpoints import CONFIG_KEY, load_module
from gendisc.errors import ConfigError, gendisc_cause
from gendisc.train import train
from gendisc.utils.build import build
from gendisc.utils.config import (
    ADVERSARIAL_KEYS,
    REGULARIZER_KEYS,
    RENAMED_MODEL_KEYS,
    migrate_renamed_keys,
)
from tests.conftest import single_thread_env

# old name -> a new name its error must mention
NEW_NAME = {
    "ema_decay": "model.adversarial.g_ema_decay",
    "feature_matching": "model.generator_objective=feature_matching",
    "generator_steps": "model.adversarial.g_steps_per_d_step",
    "freeze_backbone": "model.finetune.freeze_backbone",
    "unfreeze_epoch": "model.finetune.unfreeze_epoch",
    "backbone_lr_scale": "model.finetune.backbone_lr_scale",
    **{name: f"model.adversarial.{name}" for name in ADVERSARIAL_KEYS},
    **{name: f"model.regularizers.{name}" for name in REGULARIZER_KEYS},
}
# one old name of each kind, for the (slow) command-line check
ON_THE_COMMAND_LINE = ["ema_decay", "feature_matching", "d_ema_decay", "real_target"]


def test_the_table_is_what_the_tests_check():
    assert set(RENAMED_MODEL_KEYS) == set(NEW_NAME)
    assert "model.adversarial.d_ema_decay" in RENAMED_MODEL_KEYS["ema_decay"]


@pytest.mark.slow
@pytest.mark.parametrize("old", ON_THE_COMMAND_LINE)
def test_command_line_old_name_is_refused_naming_the_new_one(tmp_path, old):
    """`gendisc-train model=gan model.<old>=...` stops before Hydra composes (whose own error
    would only say the key is not in the config), with one line naming the replacement."""
    result = subprocess.run(
        [sys.executable, "-m", "gendisc.train", "model=gan", f"model.{old}=1"],
        cwd=tmp_path,
        env=single_thread_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode != 0
    assert f"model.{old} was renamed: use" in result.stderr
    assert NEW_NAME[old] in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("model", ["gan", "ssl_gan"])
@pytest.mark.parametrize("old", sorted(NEW_NAME))
def test_composed_config_with_an_old_name_is_refused(make_cfg, model, old):
    """An experiment file or a `+model.<old>=` override adds the key to the composed config:
    the build (train and eval) refuses it before the model is built."""
    cfg = make_cfg([f"model={model}", f"+model.{old}=1", "train=false", "test=false"])
    with pytest.raises(ConfigError, match=f"model.{old} was renamed: use .*{NEW_NAME[old]}"):
        build(cfg)
    with pytest.raises(ConfigError, match=f"model.{old} was renamed"):
        train(cfg)


def old_checkpoint(model, path, rename: dict[str, str], state_prefix: tuple[str, str] | None):
    """A checkpoint of ``model`` as the code before the rename wrote it: its run config and
    saved options under the old names, its weights under the old prefix."""
    trainer = Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(model)
    checkpoint = trainer._checkpoint_connector.dump_checkpoint()
    config = OmegaConf.to_container(model.run_cfg, resolve=True)
    for new, old in rename.items():  # new: a dotted path (section.option), old: top level
        for options in (config["model"], checkpoint["hyper_parameters"]):
            *sections, name = new.split(".")
            holder = options
            for section in sections:
                holder = holder[section]
            options[old] = holder.pop(name)
    checkpoint[CONFIG_KEY] = config
    if state_prefix:
        new, old = state_prefix
        checkpoint["state_dict"] = {
            (old + k[len(new) :] if k.startswith(new) else k): v
            for k, v in checkpoint["state_dict"].items()
        }
    torch.save(checkpoint, path)


@pytest.mark.parametrize(
    "model, rename, prefix",
    [
        ("gan", {"adversarial.g_ema_decay": "ema_decay"}, None),
        (
            "ssl_gan",
            {
                "adversarial.d_ema_decay": "ema_decay",
                "adversarial.g_steps_per_d_step": "generator_steps",
                "adversarial.init_images": "init_images",  # written before the sub-config
            },
            ("d_ema.", "ema."),
        ),
    ],
)
def test_a_checkpoint_written_before_the_rename_still_loads(
    make_cfg, tmp_path, model, rename, prefix
):
    """gendisc-eval, gendisc-sample and a study's generator_ckpt read a checkpoint of the old
    names: options and weights renamed on reading, the same weights loaded."""
    cfg = make_cfg([f"model={model}"])
    _, module = build(cfg)
    module.run_cfg = cfg
    path = tmp_path / "old.ckpt"
    old_checkpoint(module, path, rename, prefix)
    stored = torch.load(path, weights_only=True)
    assert all(old in stored[CONFIG_KEY]["model"] for old in rename.values())
    loaded = load_module(path)
    assert loaded.adversarial == module.adversarial
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    assert (loaded.d_ema is not None) == (module.d_ema is not None)


def test_a_classifier_checkpoint_with_top_level_fine_tuning_options_still_loads(make_cfg, tmp_path):
    """Written before the fine-tuning options moved into model.finetune: read with them moved."""
    cfg = make_cfg(["model=classifier", "model.finetune.freeze_backbone=true"])
    _, module = build(cfg)
    module.run_cfg = cfg
    path = tmp_path / "old.ckpt"
    old_checkpoint(module, path, {}, None)
    stored = torch.load(path, weights_only=True)
    for where in (stored[CONFIG_KEY]["model"], stored["hyper_parameters"]):
        where.update(where.pop("finetune"))  # the old layout: top-level options
    torch.save(stored, path)
    loaded = load_module(path)
    assert loaded.finetune.freeze_backbone and loaded.finetune.frozen
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key


def test_migration_moves_options_into_their_sub_config():
    stored = {"_target_": "gendisc.models.classifier.ClassifierModule", "unfreeze_epoch": 3}
    stored.update(freeze_backbone=True, backbone_lr_scale=0.5)
    assert migrate_renamed_keys(stored) == [
        "freeze_backbone -> finetune.freeze_backbone",
        "unfreeze_epoch -> finetune.unfreeze_epoch",
        "backbone_lr_scale -> finetune.backbone_lr_scale",
    ]
    assert stored == {
        "_target_": "gendisc.models.classifier.ClassifierModule",
        "finetune": {"freeze_backbone": True, "unfreeze_epoch": 3, "backbone_lr_scale": 0.5},
    }


def test_old_minibatch_options_are_refused_and_migrated(make_cfg):
    """The four minibatch-discrimination options of a net became one setting: typed, the old
    ones name it; stored, they are read as it."""
    from gendisc.utils.config import renamed_override

    message = renamed_override(["model.discriminator.mbd_kernels=50"])
    assert "model.discriminator.minibatch_discrimination={kernels: ...}" in message
    cfg = make_cfg(["model=ssl_gan", "+model.discriminator.mbd_dim=3"])
    with pytest.raises(ConfigError, match=r"model\.discriminator\.mbd_dim was renamed"):
        build(cfg)
    stored = {
        "_target_": "gendisc.models.ssl_gan.SSLGANModule",
        "discriminator": {"minibatch_discrimination": True, "mbd_kernels": 50, "mbd_dim": 5},
        "generator": {"latent_dim": 100},
    }
    assert migrate_renamed_keys(stored) == [
        "discriminator.mbd_* -> discriminator.minibatch_discrimination"
    ]
    assert stored["discriminator"] == {"minibatch_discrimination": {"kernels": 50, "dim": 5}}
    off = {"net": {"minibatch_discrimination": False, "mbd_kernels": 100}}
    migrate_renamed_keys(off)
    assert off == {"net": {"minibatch_discrimination": None}}


def test_migration_reads_feature_matching_as_the_generator_objective():
    config = {"_target_": "gendisc.models.gan.GANModule", "feature_matching": True, "loss": "hinge"}
    assert migrate_renamed_keys(config) == ["feature_matching -> generator_objective"]
    assert config == {
        "_target_": "gendisc.models.gan.GANModule",
        "generator_objective": "feature_matching",
        "loss": "hinge",
    }
    off = {"feature_matching": False, "ema_decay": 0.99}
    assert migrate_renamed_keys(off, "GANModule") == [
        "ema_decay -> g_ema_decay",
        "feature_matching -> generator_objective",
        "g_ema_decay -> adversarial.g_ema_decay",
    ]
    assert off == {"adversarial": {"g_ema_decay": 0.99}}  # the adversarial loss: the default


def test_one_name_per_idea_in_gan_and_ssl_gan(make_cfg):
    """The same option names in both modules, with the same meaning."""
    _, gan = build(make_cfg(["model=gan"]))
    _, ssl = build(make_cfg(["model=ssl_gan", "model.adversarial.g_ema_decay=0.9"]))
    for model in (gan, ssl):
        assert model.g_steps_per_d_step == 1 and model.d_steps_per_g_step == 1
        assert model.feature_layer == -1 and model.feature_norm == "l2"
    # G's EMA: sampled in both; D's EMA: evaluated (ssl_gan)
    assert gan.g_ema is not None and gan.d_ema is None
    assert ssl.g_ema is not None and ssl.d_ema is not None
    for model in (gan, ssl):
        assert any(net is model.g_ema.shadow for net in model.sampler().nets)
        assert [net for _, net in model.emas()] == [
            net
            for net, ema in ((model.discriminator, model.d_ema), (model.generator, model.g_ema))
            if ema is not None
        ]
    # G's loss: gan's default follows D's loss family; feature matching by the same name
    assert gan.generator_objective == "non_saturating"
    _, hinge = build(make_cfg(["model=gan", "model.loss=hinge"]))
    assert hinge.loss == "hinge" and hinge.generator_objective == "hinge"
    _, fm = build(make_cfg(["model=gan", "model.generator_objective=feature_matching"]))
    assert fm.loss == "non_saturating" and fm.generator_objective == "feature_matching"
    assert ssl.generator_objective == "feature_matching"
    # Hydra wraps the module's ConfigError when it instantiates
    with pytest.raises(Exception) as info:
        build(make_cfg(["model=ssl_gan", "model.generator_objective=hinge"]))
    assert isinstance(gendisc_cause(info.value), ConfigError)
    assert "model.generator_objective='hinge'" in str(gendisc_cause(info.value))
