"""The adversarial core's shortcuts against the plain computation they replace."""

from __future__ import annotations

import pytest
import torch

from gendisc.models.adversarial import concat_passes
from gendisc.nets.layers import data_dependent_init
from gendisc.utils.build import build

# ssl_gan with the paper's MNIST discriminator, noise off: D is then deterministic
NOISE_OFF = [
    "model/net@model.discriminator=salimans_mlp",
    "model.discriminator.input_noise=0",
    "model.discriminator.hidden_noise=0",
]


def _d_loss_and_grads(model, batch, concat: bool) -> tuple[torch.Tensor, dict, list]:
    model.concat_d_pass_setting = concat
    model.discriminator.zero_grad()
    torch.manual_seed(7)  # the same generated batch in both computations
    loss, stats = model.discriminator_loss(batch, 0)
    loss.backward()
    grads = [p.grad.clone() for p in model.discriminator.parameters() if p.grad is not None]
    return loss.detach(), stats, grads


def test_concatenated_d_pass_gives_the_logits_and_gradients_of_separate_passes(make_cfg):
    cfg = make_cfg(["model=ssl_gan", *NOISE_OFF])
    datamodule, model = build(cfg)
    datamodule.setup("fit")
    batch = next(iter(datamodule.train_dataloader()))
    assert {"x", "y", "x_unl"} <= set(batch)
    data_dependent_init(model.discriminator, batch["x_unl"])
    model.train()
    assert model.concat_d_pass  # "auto": D has no batch-dependent layer

    loss_sep, stats_sep, grads_sep = _d_loss_and_grads(model, batch, concat=False)
    loss_cat, stats_cat, grads_cat = _d_loss_and_grads(model, batch, concat=True)
    torch.testing.assert_close(loss_cat, loss_sep, rtol=1e-5, atol=1e-6)
    for key in stats_sep:
        torch.testing.assert_close(stats_cat[key], stats_sep[key], rtol=1e-5, atol=1e-6)
    assert (
        len(grads_cat)
        == len(grads_sep)
        == sum(p.requires_grad for p in model.discriminator.parameters())
    )
    for g_cat, g_sep in zip(grads_cat, grads_sep, strict=True):
        torch.testing.assert_close(g_cat, g_sep, rtol=1e-4, atol=1e-6)

    # and the logits themselves, per batch
    net = model.discriminator
    inputs = [(batch["x"],), (batch["x_unl"],), (batch["x_unl"].flip(0)[:7],)]
    separate = concat_passes(net, inputs, concat=False)
    joined = concat_passes(net, inputs, concat=True)
    for a, b in zip(joined, separate, strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_concat_d_pass_true_is_refused_for_a_batch_dependent_discriminator(make_cfg):
    from gendisc.errors import ConfigError

    cfg = make_cfg(
        [
            "model=ssl_gan",
            "ablation=minibatch_discrimination",
            "model.adversarial.concat_d_pass=true",
        ]
    )
    _, model = build(cfg)
    assert model.concat_d_pass_setting is True
    with pytest.raises(ConfigError, match="batch-dependent"):
        _ = model.concat_d_pass
