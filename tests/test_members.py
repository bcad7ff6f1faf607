"""Members (issue 25): N runs trained as one model equal N separate runs.

The separate runs are the real ones: the composed config, ``build`` seeded as ``gendisc.train``
seeds it, and Lightning's ``Trainer.fit`` of ``SSLGANModule``. The members are the same configs
through ``gendisc.members.build_group``. With ``rng=member`` every member draws the same random
numbers as its run, so losses and weights agree to float rounding.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import pytest
import torch
from omegaconf import DictConfig

from gendisc.checkpoints import load_run_config
from gendisc.errors import ConfigError
from gendisc.members import (
    GroupCheckpoint,
    build_group,
    check_members,
    fit_group,
    report_member,
    train_group,
)
from gendisc.models.members import MemberGroup
from gendisc.optim import AdamEpsInsideSqrt
from gendisc.utils.build import build

from .conftest import (
    PROJECT_ROOT,
    gendisc_command,
    requires_mnist,
    run_gendisc,
    single_thread_env,
)

STEPS = 4
# tiny budget: STEPS steps of one epoch, no validation, no callbacks or loggers
TINY = [
    "experiment=salimans_mnist",
    "trainer.max_epochs=1",
    f"trainer.limit_train_batches={STEPS}",
    "trainer.limit_val_batches=0",
    "trainer.accelerator=cpu",
    "callbacks=none",
    "logger=[]",
    "model.adversarial.init_images=100",
    "threads=1",
    # batches of 64: every element-wise loop then spans a multiple of 32 elements, so CPU
    # kernels never take their scalar tail (whose last-bit rounding differs from the vector
    # path's) and a member's arithmetic is bit for bit its run's (with batches of 100 the runs
    # agree to rounding, which a ReLU gate or Adam's first steps can amplify)
    "data.batch_size=64",
    "data.unlabeled_batch_size=64",
]
RUNS = [  # (seed, data_seed, labels_per_class, ablation)
    (0, 0, 10, None),
    (1, 2, 2, None),
    (3, 1, 10, "no_unlabeled"),
]


def _overrides(seed: int, data_seed: int, lpc: int, ablation: str | None) -> list[str]:
    extra = [f"ablation={ablation}"] if ablation else []
    return [
        *TINY,
        f"seed={seed}",
        f"data.data_seed={data_seed}",
        f"data.labels_per_class={lpc}",
        *extra,
    ]


def separate_run(cfg: DictConfig) -> tuple[L.LightningModule, dict[str, float]]:
    """The single run: seeded and built as ``gendisc.train`` does, fitted by Lightning."""
    L.seed_everything(int(cfg.seed), workers=True, verbose=False)
    datamodule, model = build(cfg)
    trainer = L.Trainer(
        accelerator="cpu",
        max_epochs=1,
        limit_train_batches=STEPS,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(model, datamodule=datamodule)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith("train/")}
    return model, metrics


def _assert_same_weights(a: torch.nn.Module, b: torch.nn.Module, what: str) -> None:
    ours, theirs = a.state_dict(), b.state_dict()
    assert ours.keys() == theirs.keys()
    for key, value in theirs.items():
        if value.is_floating_point():
            torch.testing.assert_close(ours[key], value, rtol=2e-4, atol=2e-5, msg=f"{what}.{key}")
        else:
            assert torch.equal(ours[key], value), f"{what}.{key}"


@requires_mnist
@pytest.mark.slow
def test_members_equal_separate_runs(make_cfg: Callable[..., DictConfig]) -> None:
    """Three members (two label counts, two data seeds, the labels-only arm) after STEPS
    steps: every member's losses, weights, EMA and batch-norm statistics equal its run's."""
    cfgs = [make_cfg(_overrides(*run), name=f"run{i}") for i, run in enumerate(RUNS)]
    group = build_group(cfgs, rng="member")
    fit_group(group, cfgs[0])
    assert group.global_step == STEPS
    modules = group.unstack()
    for i, cfg in enumerate(cfgs):
        single, metrics = separate_run(cfg)
        for key in ("train/d_loss", "train/g_loss", "train/loss_lab", "train/loss_unl"):
            assert group.members[i].stats[key] == pytest.approx(metrics[key], rel=1e-4, abs=1e-6)
        _assert_same_weights(modules[i].discriminator, single.discriminator, f"member {i} D")
        _assert_same_weights(modules[i].generator, single.generator, f"member {i} G")
        _assert_same_weights(modules[i].d_ema, single.d_ema, f"member {i} EMA")


def test_stacked_adam_is_independent_adams() -> None:
    """One AdamEpsInsideSqrt over stacked tensors is N AdamEpsInsideSqrt over the slices."""
    torch.manual_seed(0)
    stacked = torch.nn.Parameter(torch.randn(3, 4, 5))
    singles = [torch.nn.Parameter(stacked[i].detach().clone()) for i in range(3)]
    opt = AdamEpsInsideSqrt([stacked], lr=0.01, betas=(0.5, 0.999))
    opts = [AdamEpsInsideSqrt([p], lr=0.01, betas=(0.5, 0.999)) for p in singles]
    for _ in range(4):
        grads = torch.randn(3, 4, 5) * torch.tensor([1.0, 1e-3, 1e3]).view(3, 1, 1)
        stacked.grad = grads.clone()
        opt.step()
        for i, (p, o) in enumerate(zip(singles, opts, strict=True)):
            p.grad = grads[i].clone()
            o.step()
    for i, p in enumerate(singles):
        torch.testing.assert_close(stacked[i].detach(), p.detach(), rtol=0, atol=0)


@requires_mnist
def test_members_refuse_other_differences(make_cfg: Callable[..., DictConfig]) -> None:
    """Runs that differ in anything but the member keys get one ConfigError naming it."""
    a = make_cfg([*TINY, "seed=0"], name="a")
    b = make_cfg([*TINY, "seed=1", "model.d_optimizer.lr=0.001"], name="b")
    with pytest.raises(ConfigError, match=r"differ in model\.d_optimizer\.lr.*may differ only"):
        check_members([a, b])
    c = make_cfg([*TINY, "seed=2", "data.val_size=500", "trainer.max_epochs=2"], name="c")
    with pytest.raises(ConfigError, match=r"differ in data\.val_size, trainer\.max_epochs;"):
        check_members([a, c])
    check_members([a, make_cfg([*TINY, "seed=5", "ablation=no_unlabeled"], name="d")])
    augmented = [make_cfg([*TINY, f"seed={s}", "augment=translate"], name=f"t{s}") for s in (0, 1)]
    with pytest.raises(ConfigError, match=r"augment= is not applied to members"):
        check_members(augmented)


@requires_mnist
def test_capturable_members_refuse_lr_decay(make_cfg: Callable[..., DictConfig]) -> None:
    """Capturable updates keep the learning rates fixed: a decay is refused, not ignored."""
    cfg = make_cfg([*TINY, "model.adversarial.lr_decay_epochs=2"], name="decay")
    with pytest.raises(ConfigError, match="lr_decay_epochs=0"):
        build_group([cfg], capturable=True)


@requires_mnist
def test_members_refuse_batch_dependent_d(make_cfg: Callable[..., DictConfig]) -> None:
    """Minibatch discrimination (not batched here) is refused with what to do."""
    cfg = make_cfg([*TINY, "model.discriminator.minibatch_discrimination=true"], name="mbd")
    with pytest.raises(ConfigError, match="minibatch discrimination"):
        build_group([cfg])


@requires_mnist
@pytest.mark.slow
def test_member_reports_like_a_run(make_cfg: Callable[..., DictConfig], tmp_path: Path) -> None:
    """Each member writes its own metrics.json (test accuracy, its seeds, its cost share, the
    group) and a checkpoint, through the run's own report callback."""
    overrides = [o for o in TINY if not o.startswith("callbacks=")] + ["callbacks=report"]
    overrides += ["~callbacks.generative_metrics", "~callbacks.samples"]
    cfgs = [
        make_cfg([*overrides, f"seed={s}", f"data.data_seed={s}"], name=f"m{s}") for s in (4, 5)
    ]
    group: MemberGroup = build_group(cfgs)
    fit_group(group, cfgs[0])
    modules = group.unstack()
    for i, cfg in enumerate(cfgs):
        report_member(cfg, group, i, modules[i])
        metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
        assert metrics["seed"] == cfg.seed and metrics["data_seed"] == cfg.data.data_seed
        assert metrics["members/size"] == 2 and metrics["members/index"] == i
        assert metrics["global_step"] == STEPS and metrics["epochs"] == 1
        assert 0.0 <= metrics["test/acc"] <= 1.0 and metrics["data/test"] == 10000
        checkpoint = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        assert load_run_config(checkpoint).data.data_seed == cfg.data.data_seed


@requires_mnist
@pytest.mark.slow
@pytest.mark.parametrize(
    ("validation", "val_images"),
    [(["data.val_size=null"], 100), (["data.val_size=0"], 0)],  # the default: 10 per class
)
def test_a_member_validates_unless_val_size_is_0(
    make_cfg: Callable[..., DictConfig], validation: list[str], val_images: int
) -> None:
    """A member reports val/* after training on the default validation (neither data.val_size
    nor data.val_per_class set: 10 per class here), and none with data.val_size=0."""
    overrides = [o for o in TINY if not o.startswith(("callbacks=", "trainer.limit_val"))]
    overrides += ["callbacks=report", "~callbacks.generative_metrics", "~callbacks.samples"]
    cfg = make_cfg([*overrides, *validation, "trainer.limit_val_batches=1"])
    group: MemberGroup = build_group([cfg])
    fit_group(group, cfg)
    report_member(cfg, group, 0, group.unstack()[0])
    metrics = json.loads((Path(cfg.paths.output_dir) / "metrics.json").read_text())
    assert metrics["data/val"] == val_images
    assert ("val/acc" in metrics) == (val_images > 0)


@requires_mnist
@pytest.mark.slow
def test_members_launcher_sweep(tmp_path: Path) -> None:
    """``gendisc-train -m ... hydra/launcher=members``: the table's jobs (two label counts and
    the labels-only arm) train as one group; each job has its own directory, .hydra/ files and
    metrics.json, and a job of another learning rate forms a second group."""
    sweep = tmp_path / "sweep"
    run_gendisc(
        "-m",
        "experiment=salimans_mnist_table",
        "hydra/launcher=members",
        "data.labels_per_class=2,10",
        "data.data_seed=0",
        "model.unlabeled_weight=1.0,0.0",  # the labels-only arm (ablation=no_unlabeled)
        "model.d_optimizer.lr=0.003,0.001",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "~callbacks.generative_metrics",
        "~callbacks.samples",
        "logger=[]",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        "hydra.sweep.subdir=${hydra.job.num}",
        cwd=PROJECT_ROOT,
    )
    runs = {p.parent.name: json.loads(p.read_text()) for p in sweep.glob("*/metrics.json")}
    assert len(runs) == 8, sorted(runs)
    assert {m["members/size"] for m in runs.values()} == {4}
    assert all((sweep / name / ".hydra" / "overrides.yaml").is_file() for name in runs)
    assert all(m["global_step"] == 2 and 0 <= m["val/acc"] <= 1 for m in runs.values())


@requires_mnist
def test_fast_batches_are_the_loaders_batches(make_cfg: Callable[..., DictConfig]) -> None:
    """The group's one-gather batches (fast path) are exactly each member's loader batches."""
    cfgs = [
        make_cfg([*TINY, f"seed={s}", f"data.data_seed={s}", f"data.labels_per_class={c}"], f"b{s}")
        for s, c in ((0, 2), (1, 10))
    ]
    group = build_group(cfgs)
    assert group.fast_batches
    fast = list(group.batches(3))
    group.fast_batches = False
    for member in group.members:
        member.loader.epochs_started = 0
    slow = list(group.batches(3))
    assert (
        [sorted(b) for b in fast]
        == [sorted(b) for b in slow]
        == [["x", "x_unl", "x_unl2", "y"]] * 3
    )
    for a, b in zip(fast, slow, strict=True):
        for key in a:
            assert torch.equal(a[key], b[key]), key


@requires_mnist
def test_capturable_updates_equal_the_optimizers(make_cfg: Callable[..., DictConfig]) -> None:
    """The CUDA-graph-ready updates (Adam and EMA with device-tensor scalars) give the same
    losses and weights as AdamEpsInsideSqrt and ExponentialMovingAverage (CPU, eager)."""
    cfgs = [make_cfg([*TINY, f"seed={s}", f"data.data_seed={s}"], f"c{s}") for s in (0, 1)]
    results = []
    for capturable in (False, True):
        group = build_group(cfgs, rng="member", capturable=capturable)
        fit_group(group, cfgs[0])
        modules = group.unstack()
        results.append(([m.stats["train/g_loss"] for m in group.members], modules))
    (losses, eager), (tensor_losses, tensor) = results
    assert tensor_losses == pytest.approx(losses, rel=1e-5)
    for a, b in zip(tensor, eager, strict=True):
        _assert_same_weights(a, b, "capturable")
        assert int(a.d_ema.num_updates) == int(b.d_ema.num_updates) == STEPS


@requires_mnist
@pytest.mark.slow
def test_members_launcher_records_a_group_failure(tmp_path: Path) -> None:
    """A group that cannot train (CUDA graphs asked for on the CPU) records the ConfigError in
    each of its jobs' failure.json; the sweep itself ends normally."""
    sweep = tmp_path / "sweep"
    run_gendisc(
        "-m",
        "experiment=salimans_mnist",
        "hydra/launcher=members",
        "hydra.launcher.graphs=true",
        "trainer.accelerator=cpu",
        "data.data_seed=0,1",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=1",
        "~callbacks.generative_metrics",
        "~callbacks.samples",
        "logger=[]",
        f"paths.log_dir={tmp_path}",
        f"hydra.sweep.dir={sweep}",
        cwd=PROJECT_ROOT,
    )
    failures = [json.loads(p.read_text()) for p in sorted(sweep.glob("*/failure.json"))]
    assert len(failures) == 2
    assert all(
        f["error_type"] == "ConfigError" and "need a CUDA device" in f["error"] for f in failures
    )
    assert not list(sweep.glob("*/metrics.json"))


# ------------------------------------------------------------------------- kill and resume
# digits (8x8 images, the Salimans MLPs sized to them): a group of two members, 3 epochs of 3
# steps, a checkpoint after every epoch, each member reported (test/acc) as a run
DIGITS = [
    "experiment=salimans_mnist",
    "data=digits",
    "data.val_size=100",
    "data.batch_size=32",
    "data.unlabeled_batch_size=32",
    "model.adversarial.init_images=100",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=3",
    "trainer.accelerator=cpu",
    "~callbacks.generative_metrics",
    "~callbacks.samples",
    "logger=[]",
    "threads=1",
]
# keys of metrics.json that differ between two runs of the same training (time, memory, code)
VOLATILE = ("time/", "mem/", "run/", "members/group_fit_s")


class Interrupted(Exception):
    """Stands for a kill right after a group checkpoint was written."""


def _interrupt_after(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    save = GroupCheckpoint.save

    def save_then_stop(self: GroupCheckpoint, group: MemberGroup) -> None:
        save(self, group)
        if group.epochs >= epoch:
            raise Interrupted

    monkeypatch.setattr(GroupCheckpoint, "save", save_then_stop)


def _member_cfgs(make_cfg: Callable[..., DictConfig], sweep: str) -> list[DictConfig]:
    overrides = [*DIGITS, "callbacks=report", "ckpt_path=last"]
    return [
        make_cfg([*overrides, f"seed={s}", f"data.data_seed={s}"], name=f"{sweep}/{s}")
        for s in (0, 1)
    ]


def test_group_resumes_exactly_and_skips_finished_members(
    make_cfg: Callable[..., DictConfig],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A group stopped after its epoch-1 checkpoint and trained again with ckpt_path=last ends
    with the weights, EMA and statistics of an uninterrupted group; once member 0 is reported
    the next call trains member 1 only (from the checkpoint: no step), and once both are
    reported it trains nothing."""
    caplog.set_level(logging.INFO, logger="gendisc.members")
    reference = train_group(_member_cfgs(make_cfg, "ref"), tmp_path / "ref", checkpoint_every_s=0)
    assert reference.group is not None and reference.group.epochs == 3

    cfgs = _member_cfgs(make_cfg, "sweep")
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(Interrupted):
            train_group(cfgs, tmp_path / "sweep", checkpoint_every_s=0)
    checkpoint = GroupCheckpoint(tmp_path / "sweep", cfgs)
    saved = torch.load(checkpoint.path, map_location="cpu", weights_only=True)
    assert saved["group"]["epochs"] == 1 and saved["members"]["runs"] == ["0", "1"]
    assert not list(checkpoint.path.parent.glob("*.tmp"))

    resumed = train_group(cfgs, tmp_path / "sweep", checkpoint_every_s=0)
    assert "resuming 2 runs" in caplog.text and "(epoch 1, step 3)" in caplog.text
    assert resumed.group is not None and resumed.group.global_step == 9
    for i in range(2):
        assert resumed.group.members[i].stats == reference.group.members[i].stats
        _assert_same_weights(resumed.modules[i], reference.modules[i], f"member {i}")
    assert torch.load(checkpoint.path, weights_only=True)["group"]["epochs"] == 3

    # member 0 reported (finished); the same call again: member 1 only, loaded, not trained
    report_member(cfgs[0], resumed.group, 0, resumed.modules[0])
    caplog.clear()
    again = train_group(cfgs, tmp_path / "sweep", checkpoint_every_s=0)
    assert list(again.finished) == [0] and again.todo == [1]
    assert "1 of 2 runs of the group already finished" in caplog.text
    assert again.group is not None and len(again.group.members) == 1
    assert again.group.global_step == 9 and again.group.epochs == 3
    assert again.group.members[0].stats == reference.group.members[1].stats
    _assert_same_weights(again.modules[0], reference.modules[1], "member 1 alone")

    report_member(cfgs[1], again.group, 0, again.modules[0])
    caplog.clear()
    done = train_group(cfgs, tmp_path / "sweep", checkpoint_every_s=0)
    assert sorted(done.finished) == [0, 1] and done.todo == [] and done.group is None
    assert "2 of 2 runs of the group already finished" in caplog.text
    assert (
        done.finished[1]["test/acc"]
        == json.loads((Path(cfgs[1].paths.output_dir) / "metrics.json").read_text())["test/acc"]
    )


def test_group_checkpoint_refuses_other_settings(
    make_cfg: Callable[..., DictConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Resuming with other training settings is one ConfigError that names them; without
    ckpt_path=last the group starts afresh; ckpt_path=<file> is refused."""
    cfgs = _member_cfgs(make_cfg, "sweep")
    with monkeypatch.context() as patch:
        _interrupt_after(patch, 1)
        with pytest.raises(Interrupted):
            train_group(cfgs, tmp_path / "sweep", checkpoint_every_s=0)
    other = [
        make_cfg(
            [
                *DIGITS,
                "callbacks=none",
                "ckpt_path=last",
                f"seed={s}",
                f"data.data_seed={s}",
                "model.d_optimizer.lr=0.001",
            ],
            name=f"sweep/{s}",
        )
        for s in (0, 1)
    ]
    with pytest.raises(ConfigError, match=r"other settings \(model\.d_optimizer\.lr\)"):
        train_group(other, tmp_path / "sweep", checkpoint_every_s=0)
    fresh = [
        make_cfg(
            [*DIGITS, "callbacks=none", "trainer.max_epochs=1", f"seed={s}", f"data.data_seed={s}"],
            name=f"sweep/{s}",
        )
        for s in (0, 1)
    ]
    trained = train_group(fresh, tmp_path / "sweep", checkpoint_every_s=None)
    assert trained.group is not None and trained.group.global_step == 3
    elsewhere = [
        make_cfg([*DIGITS, f"ckpt_path={tmp_path}/x.ckpt", f"seed={s}"], name=f"o/{s}")
        for s in (0, 1)
    ]
    with pytest.raises(ConfigError, match="resumes from its own group checkpoint"):
        train_group(elsewhere, tmp_path / "o")


def _metrics(run_dir: Path) -> dict[str, Any]:
    metrics = json.loads((run_dir / "metrics.json").read_text())
    return {k: v for k, v in metrics.items() if not k.startswith(VOLATILE)}


def _sweep_args(sweep: Path) -> list[str]:
    return [
        "-m",
        *DIGITS,
        "hydra/launcher=members",
        "hydra.launcher.checkpoint_every_s=0",
        "data.data_seed=0,1",
        "ckpt_path=last",
        f"paths.log_dir={sweep.parent}",
        f"hydra.sweep.dir={sweep}",
    ]


@pytest.mark.slow
def test_members_sweep_killed_resumes_like_an_uninterrupted_one(tmp_path: Path) -> None:
    """``gendisc-train -m ... hydra/launcher=members ckpt_path=last`` SIGKILLed right after its
    epoch-1 group checkpoint, then the same command: every member's metrics.json equals the
    uninterrupted sweep's and the group checkpoint is gone; the command once more trains
    nothing and says so."""
    killed, reference = tmp_path / "killed", tmp_path / "reference"
    process = subprocess.run(
        gendisc_command(*_sweep_args(killed), module="tests.test_members"),
        cwd=PROJECT_ROOT,
        env={**single_thread_env(), "KILL_AFTER_GROUP_EPOCH": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert process.returncode == -signal.SIGKILL, process.stderr[-3000:]
    checkpoints = list((killed / "members").glob("group-*.ckpt"))
    assert len(checkpoints) == 1 and not list(killed.glob("*/metrics.json"))
    assert torch.load(checkpoints[0], weights_only=True)["group"]["epochs"] == 1

    resumed = run_gendisc(*_sweep_args(killed), cwd=PROJECT_ROOT)
    assert "members: resuming 2 runs" in resumed.stdout + resumed.stderr
    run_gendisc(*_sweep_args(reference), cwd=PROJECT_ROOT)
    assert not (killed / "members").exists() and not (reference / "members").exists()
    for job in ("0", "1"):
        ours, theirs = _metrics(killed / job), _metrics(reference / job)
        assert ours.keys() == theirs.keys() and ours["epochs"] == 3
        for key, value in theirs.items():
            if isinstance(value, float):
                assert ours[key] == pytest.approx(value, rel=1e-6, abs=1e-9), key
            else:
                assert ours[key] == value, key

    written = (killed / "0" / "metrics.json").stat().st_mtime_ns
    again = run_gendisc(*_sweep_args(killed), cwd=PROJECT_ROOT)
    assert "members: 2 of 2 runs of the group already finished" in again.stdout + again.stderr
    assert (killed / "0" / "metrics.json").stat().st_mtime_ns == written


def _kill_after_group_checkpoint(epoch: int) -> None:
    """Test helper: SIGKILL this process right after it writes the group checkpoint of
    ``epoch`` (a crash, not an exit: nothing after it runs)."""
    save = GroupCheckpoint.save

    def save_then_kill(self: GroupCheckpoint, group: MemberGroup) -> None:
        save(self, group)
        if group.epochs >= epoch:
            os.kill(os.getpid(), signal.SIGKILL)

    GroupCheckpoint.save = save_then_kill  # type: ignore[method-assign]


if __name__ == "__main__":  # KILL_AFTER_GROUP_EPOCH=1 python -m tests.test_members <args>
    from gendisc.train import main

    _kill_after_group_checkpoint(int(os.environ["KILL_AFTER_GROUP_EPOCH"]))
    main()
