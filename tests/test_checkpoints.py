"""Tests for gendisc.checkpoints: weights-only loading of every module's real checkpoints, one
clear error for a missing, corrupt or unsafe file, and each entry point reading its file once."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import torch

import gendisc.checkpoints as checkpoints
from gendisc.checkpoints import CONFIG_KEY, load_checkpoint, load_module, module_from_checkpoint
from gendisc.errors import ConfigError
from gendisc.eval import evaluate
from gendisc.sample import sample
from gendisc.train import train
from tests.conftest import TINY_GENERATIVE, compose_config, gendisc_command, single_thread_env

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.val_size=100"]


class NotATensor:
    """A custom class: a file holding one needs arbitrary unpickling."""

    def __init__(self) -> None:
        self.value = 1


def _bad_files(tmp_path: Path) -> dict[str, Path]:
    good = tmp_path / "good.ckpt"
    torch.save({"state_dict": {"w": torch.ones(3)}, "epoch": 0}, good)
    truncated = tmp_path / "truncated.ckpt"
    truncated.write_bytes(good.read_bytes()[:200])
    garbage = tmp_path / "garbage.ckpt"
    garbage.write_bytes(b"this is not a checkpoint")
    unsafe = tmp_path / "unsafe.ckpt"
    torch.save({"state_dict": {}, "extra": NotATensor()}, unsafe)
    return {
        "missing": tmp_path / "missing.ckpt",
        "truncated": truncated,
        "garbage": garbage,
        "unsafe": unsafe,
    }


EXPECTED = {
    "missing": "no such file",
    "truncated": "cannot read this checkpoint",
    "garbage": "cannot read this checkpoint",
    "unsafe": "not written by this gendisc version",
}


@pytest.mark.parametrize("kind", sorted(EXPECTED))
def test_bad_checkpoint_gives_one_error_naming_file_and_setting(kind, tmp_path):
    path = _bad_files(tmp_path)[kind]
    with pytest.raises(ConfigError, match=EXPECTED[kind]) as info:
        load_checkpoint(path, "model.generator_ckpt")
    assert f"model.generator_ckpt={path}" in str(info.value)
    if kind == "unsafe":
        assert "NotATensor" in str(info.value)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["missing", "truncated", "unsafe"])
def test_eval_cli_refuses_bad_checkpoint_with_one_line(kind, tmp_path):
    path = _bad_files(tmp_path)[kind]
    command = gendisc_command(
        f"ckpt_path={path}", f"hydra.run.dir={tmp_path / 'eval'}", module="gendisc.eval"
    )
    command = [arg for arg in command if not arg.startswith("callbacks.")]  # eval has none
    result = subprocess.run(
        command, capture_output=True, text=True, env=single_thread_env(), timeout=120
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert f"error: ckpt_path={path}: " in result.stderr
    assert EXPECTED[kind] in result.stderr


def test_a_bare_state_dict_is_no_checkpoint_for_sampling(tmp_path):
    path = tmp_path / "bare.pt"
    torch.save({"w": torch.ones(2)}, path)
    assert checkpoints.read_checkpoint_state(path)["w"].tolist() == [1.0, 1.0]
    with pytest.raises(ConfigError, match="holds no gendisc config"):
        load_module(path)
    torch.save([torch.ones(1)], path)
    with pytest.raises(ConfigError, match="not a checkpoint"):
        load_checkpoint(path, "ckpt_path")


def _assert_loads_weights_only(ckpt: Path) -> None:
    """A real checkpoint loads with weights_only=True and rebuilds its module exactly."""
    checkpoint = load_checkpoint(ckpt, "ckpt_path")
    assert CONFIG_KEY in checkpoint and checkpoint["state_dict"]
    torch.load(ckpt, map_location="cpu", weights_only=True)  # nothing allow-listed on the side
    module = module_from_checkpoint(checkpoint, ckpt)
    own = module.state_dict()
    assert own.keys() == checkpoint["state_dict"].keys()
    for key, value in checkpoint["state_dict"].items():
        assert torch.equal(own[key], value), key


@pytest.mark.parametrize("model", ["classifier", "ssl_gan"])
def test_real_checkpoints_load_weights_only(model, make_cfg, tmp_path):
    train(make_cfg([f"model={model}", *TINY]))
    for ckpt in (tmp_path / "run" / "checkpoints").glob("*.ckpt"):
        _assert_loads_weights_only(ckpt)


def test_generator_checkpoints_load_weights_only(tiny_cgan_run, tiny_cvae_run, make_cfg, tmp_path):
    for run, _ in (tiny_cgan_run, tiny_cvae_run):
        _assert_loads_weights_only(run / "checkpoints" / "last.ckpt")
    generator = tiny_cgan_run[0] / "checkpoints" / "last.ckpt"
    overrides = ["model=augmented_classifier", f"model.generator_ckpt={generator}"]
    train(make_cfg([*overrides, *TINY_GENERATIVE, "trainer.max_epochs=1"]))
    _assert_loads_weights_only(tmp_path / "run" / "checkpoints" / "last.ckpt")


def _count_reads(monkeypatch: pytest.MonkeyPatch, ckpt: Path) -> list[Path]:
    reads: list[Path] = []
    real_load = torch.load

    def counting_load(file, *args, **kwargs):
        if Path(str(file)).resolve() == ckpt.resolve():
            reads.append(ckpt)
        return real_load(file, *args, **kwargs)

    monkeypatch.setattr(torch, "load", counting_load)
    return reads


def test_eval_and_sample_read_the_checkpoint_once(tiny_cgan_run, monkeypatch, tmp_path):
    run, metrics = tiny_cgan_run
    best = next(p for p in (run / "checkpoints").glob("*.ckpt") if p.name != "last.ckpt")
    reads = _count_reads(monkeypatch, best)
    cfg = compose_config([f"ckpt_path={best}", "n=10"], tmp_path / "sample", config_name="sample")
    assert sample(cfg)["npz"].is_file()
    assert len(reads) == 1
    reads.clear()
    cfg = compose_config(
        [f"ckpt_path={best}", "generative_metrics=false"], tmp_path / "eval", config_name="eval"
    )
    result = evaluate(cfg)
    assert len(reads) == 1
    assert result["test/acc"] == pytest.approx(metrics["test/acc"])  # the run tested its best
