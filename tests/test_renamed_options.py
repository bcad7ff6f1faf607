"""One option name per idea across the adversarial modules; the old names are refused with the
name to use, wherever they come from (command line, a composed config, a stored run config, a
checkpoint to resume)."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from gendisc.checkpoints import CONFIG_KEY, load_module
from gendisc.errors import ConfigError, gendisc_cause
from gendisc.train import train
from gendisc.utils.build import build
from gendisc.utils.config import RENAMED_MODEL_KEYS
from tests.conftest import single_thread_env

# old name -> a new name its error must mention
NEW_NAME = {
    "ema_decay": "model.g_ema_decay",
    "feature_matching": "model.generator_objective=feature_matching",
    "generator_steps": "model.g_steps_per_d_step",
}


def test_the_table_is_what_the_tests_check():
    assert set(RENAMED_MODEL_KEYS) == set(NEW_NAME)
    assert "model.d_ema_decay" in RENAMED_MODEL_KEYS["ema_decay"]


@pytest.mark.parametrize("old", sorted(NEW_NAME))
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


def test_stored_run_config_and_saved_options_with_an_old_name_are_refused(tmp_path):
    """A checkpoint written before the rename: loading it (gendisc-eval, gendisc-sample, a
    generator checkpoint) or resuming from it names the file and the new option."""
    path = tmp_path / "old.ckpt"
    old_config = {"model": {"_target_": "gendisc.models.gan.GANModule", "ema_decay": 0.99}}
    torch.save({CONFIG_KEY: old_config, "state_dict": {}, "hyper_parameters": {}}, path)
    with pytest.raises(ConfigError, match=rf"ckpt_path={path} .*model.ema_decay was renamed"):
        load_module(path)


def test_resuming_from_saved_options_with_an_old_name_is_refused(make_cfg):
    _, model = build(make_cfg(["model=ssl_gan"]))
    old = {"hyper_parameters": {"generator_steps": 1, "ema_decay": 0.9999}, "state_dict": {}}
    with pytest.raises(ConfigError, match=r"ckpt_path .*model.ema_decay was renamed"):
        model.on_load_checkpoint(old)


def test_one_name_per_idea_in_gan_and_ssl_gan(make_cfg):
    """The same option names in both modules, with the same meaning."""
    _, gan = build(make_cfg(["model=gan"]))
    _, ssl = build(make_cfg(["model=ssl_gan", "model.g_ema_decay=0.9"]))
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
