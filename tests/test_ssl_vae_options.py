"""model=ssl_vae's options grouped into model.m2, model.m1 and model.auxiliary: the old flat
names are refused with their new place where a user writes them (command line, a composed
config), and read into the groups where a checkpoint written before the change stores them
(run config and weights)."""

from __future__ import annotations

import copy
import sys

import hydra
import pytest
import torch
from lightning import Trainer
from omegaconf import OmegaConf

from gendisc.checkpoints import CONFIG_KEY, load_module
from gendisc.errors import ConfigError
from gendisc.models.ssl_vae import SSLVAEModule
from gendisc.train import main as train_main
from gendisc.train import train
from gendisc.utils.build import build
from gendisc.utils.config import (
    RENAMED_SSL_VAE_KEYS,
    RENAMED_SSL_VAE_STATE_PREFIXES,
    migrate_renamed_keys,
    renamed_override,
)


def flat_layout(model: dict) -> dict:
    """A model=ssl_vae config in the layout before the groups (the table read backwards)."""
    old = copy.deepcopy(model)
    groups = {group: old.pop(group) for group in ("m2", "m1", "auxiliary")}
    for old_key, place in RENAMED_SSL_VAE_KEYS.items():
        *path, leaf = place.split(".")
        node = groups
        for part in path:
            node = node[part]
        old[old_key] = node[leaf]
    return old


def leaves(node: dict, prefix: str = "") -> set[str]:
    if not isinstance(node, dict):
        return {prefix[:-1]}
    return set().union(*(leaves(value, f"{prefix}{key}.") for key, value in node.items()))


def test_the_table_places_every_option_of_the_groups(make_cfg):
    model = OmegaConf.to_container(make_cfg(["model=ssl_vae"]).model)
    groups = {group: model[group] for group in ("m2", "m1", "auxiliary")}
    assert leaves(groups) == set(RENAMED_SSL_VAE_KEYS.values())
    old = flat_layout(model)
    assert old["m1"] is None and old["auxiliary"] == "none" and old["latent_dim"] == 16


@pytest.mark.parametrize(
    "experiment", ["ssl_vae_digits", "ssl_vae_adgm_digits", "ssl_vae_sdgm_digits"]
)
def test_a_config_in_the_old_layout_migrates_and_builds(make_cfg, experiment):
    """A stored run config of the flat layout is read into the groups: the config of today,
    and the same module (same weights for the same seed)."""
    cfg = make_cfg([f"experiment={experiment}"])
    new = OmegaConf.to_container(cfg.model, resolve=True)
    old = flat_layout(new)
    assert "aux_dim" in old and not isinstance(old["auxiliary"], dict)
    done = migrate_renamed_keys(old)
    assert old == new
    assert "alpha_scale -> m2.alpha.scale" in done and "m1 -> m1.ckpt" in done
    _, built = build(cfg)
    torch.manual_seed(0)
    migrated = hydra.utils.instantiate(
        OmegaConf.create(old), in_shape=[1, 8, 8], num_classes=10, _convert_="all"
    )
    torch.manual_seed(0)
    again = hydra.utils.instantiate(cfg.model, in_shape=[1, 8, 8], num_classes=10, _convert_="all")
    assert isinstance(migrated, SSLVAEModule)
    assert migrated.auxiliary is None if experiment == "ssl_vae_digits" else migrated.auxiliary
    for key, value in again.state_dict().items():
        assert torch.equal(migrated.state_dict()[key], value), key
    assert built.state_dict().keys() == again.state_dict().keys()


def test_an_m1m2_config_in_the_old_layout_migrates():
    old = {
        "_target_": "gendisc.models.ssl_vae.SSLVAEModule",
        "m1": "/runs/m1/last.ckpt",
        "m1_features": "mean",
        "likelihood": "gaussian",
        "gaussian_variance": "decoded",
        "latent_dim": 50,
    }
    migrate_renamed_keys(old)
    assert old == {
        "_target_": "gendisc.models.ssl_vae.SSLVAEModule",
        "m1": {"ckpt": "/runs/m1/last.ckpt", "features": "mean"},
        "m2": {"likelihood": {"kind": "gaussian", "variance": "decoded"}, "latent_dim": 50},
    }
    # other modules keep their own options of the same names (model=vae's latent_dim)
    vae = {"_target_": "gendisc.models.vae.VAEModule", "latent_dim": 8, "likelihood": "gaussian"}
    assert migrate_renamed_keys(vae) == [] and vae["latent_dim"] == 8


def old_checkpoint(module: SSLVAEModule, cfg, path) -> None:
    """A checkpoint of ``module`` as the code before the groups wrote it: its run config in
    the flat layout, its weights under the old names."""
    trainer = Trainer(logger=False, enable_checkpointing=False, max_epochs=0)
    trainer.strategy.connect(module)
    checkpoint = trainer._checkpoint_connector.dump_checkpoint()
    config = OmegaConf.to_container(cfg, resolve=True)
    config["model"] = flat_layout(config["model"])
    checkpoint[CONFIG_KEY] = config
    renamed = {new: old for old, new in RENAMED_SSL_VAE_STATE_PREFIXES.items()}
    state = {}
    for key, value in checkpoint["state_dict"].items():
        new = next((prefix for prefix in renamed if key.startswith(prefix)), None)
        state[renamed[new] + key[len(new) :] if new else key] = value
    checkpoint["state_dict"] = state
    torch.save(checkpoint, path)


@pytest.mark.parametrize("experiment", ["ssl_vae_adgm_digits", "ssl_vae_sdgm_digits"])
def test_a_checkpoint_written_before_the_groups_still_loads(make_cfg, tmp_path, experiment):
    """gendisc-eval, gendisc-sample and a study's generator_ckpt read a checkpoint of the flat
    layout: options into their groups, weights renamed, the same classifier."""
    cfg = make_cfg([f"experiment={experiment}"])
    _, module = build(cfg)
    path = tmp_path / "old.ckpt"
    old_checkpoint(module.eval(), cfg, path)
    stored = torch.load(path, weights_only=True)
    assert stored[CONFIG_KEY]["model"]["aux_dim"] == 16
    assert any(key.startswith("aux_encoder.") for key in stored["state_dict"])
    loaded = load_module(path)
    assert loaded.auxiliary.kind == experiment.split("_")[2]
    for key, value in module.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.rand(4, 1, 8, 8) * 2 - 1
    torch.manual_seed(1)
    expected = module(x)
    torch.manual_seed(1)
    assert torch.equal(loaded(x), expected)


@pytest.mark.parametrize(
    "override, new",
    [
        ("+model.alpha_scale=0.2", "model.m2.alpha.scale"),
        ("+model.latent_dim=8", "model.m2.latent_dim"),
        ("+model.likelihood=gaussian", "model.m2.likelihood.kind"),
        ("model.m1=/runs/m1.ckpt", "model.m1.ckpt"),
        ("model.auxiliary=adgm", "model.auxiliary.kind"),
        ("+model.eval_samples=10", "model.auxiliary.eval_samples"),
    ],
)
def test_composed_config_with_an_old_name_is_refused(make_cfg, override, new):
    """An experiment file or an override that composes puts the old name in the config: the
    build (train and eval) refuses it, naming its new place."""
    old = override.lstrip("+").split("=")[0]
    cfg = make_cfg(["model=ssl_vae", override, "train=false", "test=false"])
    with pytest.raises(ConfigError, match=f"{old} was renamed .*: use {new}\\."):
        build(cfg)
    with pytest.raises(ConfigError, match=f"{old} was renamed"):
        train(cfg)


def test_command_line_old_names_are_refused_for_ssl_vae_only():
    """Before Hydra composes (its own error would only say the key is not in the config): the
    old name is refused where the command selects model=ssl_vae, by the model group, an
    experiment or a sweep's first value; model=vae keeps latent_dim and likelihood."""
    message = renamed_override(["model=ssl_vae", "model.latent_dim=8"])
    assert message == (
        "model.latent_dim was renamed (model=ssl_vae groups its options): use model.m2.latent_dim."
    )
    assert "model.auxiliary.dim" in renamed_override(
        ["experiment=ssl_vae_adgm_digits", "model.aux_dim=3"]
    )
    sweep = ["-m", "experiment=ssl_vae_digits,ssl_vae_m1m2_digits", "model.alpha=1.0"]
    assert "model.m2.alpha.value" in renamed_override(sweep)
    assert renamed_override(["model=vae", "model.latent_dim=8"]) is None
    assert renamed_override(["model=ssl_vae", "model.m2.latent_dim=8"]) is None


def test_gendisc_train_stops_before_composing(monkeypatch):
    """`gendisc-train model=ssl_vae model.gaussian_sigma=0.5` exits with the one line."""
    args = ["gendisc-train", "model=ssl_vae", "model.gaussian_sigma=0.5"]
    monkeypatch.setattr(sys, "argv", args)
    with pytest.raises(SystemExit, match=r"^Error: model\.gaussian_sigma was renamed .*: use "):
        train_main()
