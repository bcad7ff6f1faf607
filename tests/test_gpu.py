"""CUDA checks (``pytest -m gpu``; skipped without a CUDA device): the batched nets, the
optimiser, the EMA and the members core on the GPU against the CPU or the single runs, and one
tiny single run of ssl_gan and of the classifier through ``gendisc.train`` on the GPU.

Run by ``make gpu-check`` (experiments/gpu_check/run.sh) on the GPU machine. float32 with
TF32 off: the GPU's products then differ from the CPU's by rounding only.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import lightning as L
import pytest
import torch
from omegaconf import DictConfig

from gendisc.checkpoints import load_checkpoint
from gendisc.members import build_group, fit_group
from gendisc.nets import SalimansMLPDiscriminator, SalimansMLPGenerator
from gendisc.nets.batched import BatchedSalimansD, BatchedSalimansG
from gendisc.nets.ema import ExponentialMovingAverage
from gendisc.nets.layers import mark_initialized
from gendisc.optim import AdamEpsInsideSqrt
from gendisc.train import train
from gendisc.utils.build import build

from .conftest import requires_mnist

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
CUDA = torch.device("cuda")


@pytest.fixture(autouse=True)
def _float32() -> None:
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False


def test_batched_nets_cuda_match_cpu() -> None:
    """Batched D and G (3 members): outputs and gradients on CUDA equal the CPU's."""
    torch.manual_seed(0)
    ds = [SalimansMLPDiscriminator() for _ in range(3)]
    gs = [SalimansMLPGenerator() for _ in range(3)]
    for net in ds + gs:
        mark_initialized(net)
    z, x = torch.rand(3, 64, 100), torch.rand(3, 64, 1, 28, 28) * 2 - 1
    noise: dict[tuple, torch.Tensor] = {}

    def run(device: torch.device) -> dict[str, torch.Tensor]:
        d, g = BatchedSalimansD(ds).to(device), BatchedSalimansG(gs).to(device)
        count = [0]

        def draws(shape: tuple[int, ...], kind: str) -> torch.Tensor:
            key = (count[0], shape)
            count[0] += 1
            noise.setdefault(key, torch.randn(3, *shape))
            return noise[key].to(device)

        fake = g(z.to(device))
        logits, feats = d(torch.cat([x.to(device).flatten(2), fake], 1), draws)
        loss = torch.logsumexp(logits, 2).mean(1).sum() + feats[-1].mean(1).square().sum()
        loss.backward()
        out = {"logits": logits, "fake": fake}
        for name, p in [*d.named_parameters(prefix="d"), *g.named_parameters(prefix="g")]:
            if p.grad is not None:
                out[name] = p.grad
        return {k: v.detach().cpu() for k, v in out.items()}

    cpu, gpu = run(torch.device("cpu")), run(CUDA)
    for key, value in cpu.items():
        torch.testing.assert_close(gpu[key], value, rtol=1e-3, atol=1e-4, msg=key)


def test_adam_and_ema_cuda_match_cpu() -> None:
    """AdamEpsInsideSqrt (eager and foreach) and the EMA: the same updates on CUDA."""
    torch.manual_seed(0)
    start = torch.randn(4, 50, 30)
    grads = [torch.randn(4, 50, 30) * 10.0 ** torch.randint(-6, 1, (4, 1, 1)) for _ in range(5)]
    results = []
    for device in ("cpu", "cuda"):
        p = torch.nn.Parameter(start.clone().to(device))
        opt = AdamEpsInsideSqrt([p], lr=0.003, betas=(0.5, 0.999))
        ema = ExponentialMovingAverage(torch.nn.ParameterList([p]), 0.999)
        for grad in grads:
            p.grad = grad.to(device)
            opt.step()
            ema.update(torch.nn.ParameterList([p]))
        results.append((p.detach().cpu(), ema.shadow[0].detach().cpu()))
    for a, b in zip(*results, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


TINY = [
    "experiment=salimans_mnist",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=0",
    "trainer.accelerator=gpu",
    "trainer.devices=1",
    "callbacks=none",
    "logger=[]",
    "model.adversarial.init_images=100",
    "data.batch_size=64",
    "data.unlabeled_batch_size=64",
]


@requires_mnist
def test_members_cuda_equal_separate_cuda_runs(make_cfg: Callable[..., DictConfig]) -> None:
    """Two members on CUDA (rng=member) against the two single runs on CUDA (Lightning):
    the same CUDA random streams, so the same losses and weights up to GPU rounding."""
    cfgs = [
        make_cfg([*TINY, f"seed={s}", f"data.data_seed={s}", f"data.labels_per_class={c}"], f"g{s}")
        for s, c in ((0, 10), (1, 2))
    ]
    group = build_group(cfgs, rng="member")
    assert group.device.type == "cuda" and group.fast_batches
    fit_group(group, cfgs[0])
    modules = group.unstack()
    for i, cfg in enumerate(cfgs):
        L.seed_everything(int(cfg.seed), workers=True, verbose=False)
        datamodule, single = build(cfg)
        trainer = L.Trainer(
            accelerator="gpu",
            devices=1,
            max_epochs=1,
            limit_train_batches=2,
            limit_val_batches=0,
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
        )
        trainer.fit(single, datamodule=datamodule)
        for key in ("train/d_loss", "train/g_loss"):
            expected = float(trainer.callback_metrics[key])
            assert group.members[i].stats[key] == pytest.approx(expected, rel=1e-3)
        ours, theirs = modules[i].state_dict(), single.state_dict()
        for key, value in theirs.items():
            if value.is_floating_point():
                torch.testing.assert_close(ours[key], value, rtol=1e-3, atol=1e-4, msg=key)


@requires_mnist
def test_members_shared_rng_on_cuda_trains(make_cfg: Callable[..., DictConfig]) -> None:
    """rng=shared on CUDA: 4 members, finite and different losses (independent members)."""
    cfgs = [
        make_cfg(
            [*TINY, "trainer.limit_train_batches=5", f"seed={s}", f"data.data_seed={s}"], f"s{s}"
        )
        for s in range(4)
    ]
    group = build_group(cfgs, rng="shared")
    fit_group(group, cfgs[0])
    losses = [m.stats["train/d_loss"] for m in group.members]
    assert all(math.isfinite(v) for v in losses) and len(set(losses)) == 4


@requires_mnist
@pytest.mark.parametrize("model", ["ssl_gan", "classifier"])
def test_single_run_on_cuda(model: str, make_cfg: Callable[..., DictConfig]) -> None:
    """gendisc.train on the GPU (one tiny run of each kind): a test report with the GPU's name."""
    cfg = make_cfg(
        [
            f"model={model}",
            "data=mnist",
            "data.labels_per_class=10",
            "data.val_size=500",
            "trainer=gpu",
            "trainer.max_epochs=1",
            "trainer.limit_train_batches=5",
            "logger=[]",
        ],
        name=model,
    )
    metrics = train(cfg)
    assert 0.0 <= metrics["test/acc"] <= 1.0
    assert metrics["run/device"] not in ("cpu", "unknown")


@requires_mnist
@pytest.mark.parametrize("rng", ["shared", "member"])
def test_members_cuda_graphs_equal_eager(rng: str, make_cfg: Callable[..., DictConfig]) -> None:
    """CUDA graphs (3 eager warm-up steps, then replays) against the same updates run eagerly
    with the same random streams (shared: a generator seeded with the first member's seed, the
    default one under graphs; member: each member's own): the same losses and weights."""
    if rng == "member" and not hasattr(torch.cuda.CUDAGraph, "register_generator_state"):
        pytest.skip("this torch cannot capture draws of a custom generator in a CUDA graph")
    cfgs = [
        make_cfg(
            [*TINY, "trainer.limit_train_batches=8", f"seed={s}", f"data.data_seed={s}"], f"c{s}"
        )
        for s in (0, 1)
    ]
    results = []
    for graphs in (False, True):
        group = build_group(cfgs, rng=rng, capturable=True, graphs=graphs)
        fit_group(group, cfgs[0])
        results.append((group, group.unstack()))
    (eager, eager_modules), (graphed, graphed_modules) = results
    assert graphed._graph is not None and graphed.global_step == 8
    for i in range(2):
        for key in ("train/d_loss", "train/g_loss"):
            assert graphed.members[i].stats[key] == pytest.approx(
                eager.members[i].stats[key], rel=1e-4
            )
        ours, theirs = graphed_modules[i].state_dict(), eager_modules[i].state_dict()
        for key, value in theirs.items():
            if value.is_floating_point():
                torch.testing.assert_close(ours[key], value, rtol=1e-4, atol=1e-5, msg=key)


@requires_mnist
@pytest.mark.parametrize("rng,graphs", [("shared", True), ("member", False)])
def test_members_cuda_resume_equals_uninterrupted(
    rng: str, graphs: bool, make_cfg: Callable[..., DictConfig], tmp_path: Path
) -> None:
    """A CUDA group saved after epoch 1 (``state_dict``, written and read back weights-only)
    and continued by a new group to epoch 3 ends with the losses and weights of the same group
    trained without a stop (the CUDA generators' states, the graphs captured anew)."""
    cfgs = [
        make_cfg(
            [*TINY, "trainer.limit_train_batches=4", f"seed={s}", f"data.data_seed={s}"], f"r{s}"
        )
        for s in (0, 1)
    ]
    whole = build_group(cfgs, rng=rng, capturable=True, graphs=graphs)
    whole.fit(3, steps_per_epoch=4)
    first = build_group(cfgs, rng=rng, capturable=True, graphs=graphs)
    first.fit(1, steps_per_epoch=4)
    torch.save(first.state_dict(), tmp_path / "group.ckpt")
    resumed = build_group(cfgs, rng=rng, capturable=True, graphs=graphs)
    resumed.load_state_dict(load_checkpoint(tmp_path / "group.ckpt", "test"))
    resumed.fit(3, steps_per_epoch=4)
    assert resumed.global_step == whole.global_step == 12
    for i, (ours, theirs) in enumerate(zip(resumed.unstack(), whole.unstack(), strict=True)):
        for key in ("train/d_loss", "train/g_loss"):
            assert resumed.members[i].stats[key] == pytest.approx(
                whole.members[i].stats[key], rel=1e-5
            )
        for key, value in theirs.state_dict().items():
            if value.is_floating_point():
                torch.testing.assert_close(
                    ours.state_dict()[key], value, rtol=1e-5, atol=1e-6, msg=key
                )
