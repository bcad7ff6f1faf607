"""A checkpoint from someone else cannot touch your files: every entry point that reads a
checkpoint refuses one whose stored config names an untrusted ``_target_`` (gendisc.trusted),
before anything is built, and leaves the victim file and the run directory untouched."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from gendisc.checkpoints import CONFIG_KEY, load_checkpoint, load_module
from gendisc.errors import ConfigError, gendisc_cause
from gendisc.eval import evaluate
from gendisc.sample import sample
from gendisc.train import train
from gendisc.trusted import (
    TRUSTED_ENV,
    UntrustedConfigError,
    check_trusted,
    conf_targets,
    is_trusted,
    targets,
)
from gendisc.utils.config import PROJECT_ROOT
from tests.conftest import compose_config, gendisc_command, single_thread_env

TINY = ["trainer.max_epochs=1", "trainer.limit_train_batches=2", "data.val_size=100"]
VICTIM_TEXT = "precious results\n"
NO_GENERATIVE_CALLBACKS = ["callbacks.generative_metrics=null", "callbacks.samples=null"]


# ------------------------------------------------------------------------------ the allowlist
def test_every_target_of_conf_is_trusted_and_found():
    found = conf_targets()
    assert "gendisc.models.ssl_gan.SSLGANModule" in found
    assert "torch.optim.Adam" in found
    assert "lightning.pytorch.loggers.csv_logs.CSVLogger" in found
    assert all(is_trusted(target) for target in found)


@pytest.mark.parametrize(
    "target",
    [
        "torch.optim.SGD",  # optimisers and schedulers not named in conf/
        "torch.optim.lr_scheduler.OneCycleLR",
        "torch.nn.ReLU",
        "torchmetrics.classification.MulticlassAccuracy",
        "lightning.pytorch.callbacks.LearningRateMonitor",
        "gendisc.nets.layers.MinibatchDiscrimination",  # gendisc's own classes
        "gendisc.models.classifier.ClassifierModule",
    ],
)
def test_classes_of_the_trusted_families_are_trusted(target):
    assert is_trusted(target)


@pytest.mark.parametrize(
    "target",
    [
        "builtins.open",
        "builtins.exec",
        "os.system",
        "subprocess.run",
        "shutil.rmtree",
        "pathlib.Path.write_text",
        "torch.save",  # a function, even in a trusted package
        "gendisc.utils.failures.record_failure",  # gendisc's own function that writes a file
        "gendisc.nets",  # a module, not a class
        "gendisc.no_such_module.Thing",
        "torch.optim.NoSuchOptimizer",
        "evil_plugin.Optimizer",
        " torch.optim.Adam",  # spaced: not the name it looks like
        "",
        None,
        42,
    ],
)
def test_anything_else_is_not_trusted(target):
    assert not is_trusted(target)


def test_user_can_trust_their_own_targets(monkeypatch):
    assert not is_trusted("mylab.models.Net")
    monkeypatch.setenv(TRUSTED_ENV, "other.Thing, mylab.models.")
    assert is_trusted("mylab.models.Net") and is_trusted("other.Thing")
    assert not is_trusted("other.ThingElse") and not is_trusted("mylab.Net")


def test_targets_are_found_at_any_depth_with_their_keys():
    config = {
        "_target_": "a.A",
        "x": {"y": [1, {"_target_": "b.B", "_partial_": True}, [{"_target_": "c.C"}]]},
        "z": {"_args_": [{"_target_": "d.D"}]},
    }
    assert list(targets(config)) == [
        ("<root>", "a.A"),
        ("x.y[1]", "b.B"),
        ("x.y[2][0]", "c.C"),
        ("z._args_[0]", "d.D"),
    ]


def test_a_stored_interpolation_is_refused():
    hidden = "${oc.decode:'{_target_: builtins.open, file: x, mode: w}'}"
    with pytest.raises(UntrustedConfigError, match=r"interpolation model\.optimizer\.lr="):
        check_trusted({"model": {"optimizer": {"lr": hidden}}}, "ckpt_path=f.ckpt")


# --------------------------------------------------------------------- crafted checkpoints
def _open(victim: Path) -> dict[str, Any]:
    return {"_target_": "builtins.open", "file": str(victim), "mode": "w"}


# name -> (how the stored model config is changed, the key and target the error must name)
CRAFTS: dict[str, tuple[Callable[[dict, Path], None], str]] = {
    "open": (
        lambda model, victim: model["optimizer"].update(lr=_open(victim)),
        "model.optimizer.lr._target_='builtins.open'",
    ),
    "nested": (
        lambda model, victim: model["optimizer"].update(betas={"a": {"b": _open(victim)}}),
        "model.optimizer.betas.a.b._target_='builtins.open'",
    ),
    "partial": (
        lambda model, victim: model.update(optimizer={**_open(victim), "_partial_": True}),
        "model.optimizer._target_='builtins.open'",
    ),
    "list": (
        lambda model, victim: model["optimizer"].update(betas=[0.9, _open(victim)]),
        "model.optimizer.betas[1]._target_='builtins.open'",
    ),
    "unknown_module": (
        lambda model, victim: model["optimizer"].update(_target_="evil_plugin.Optimizer"),
        "model.optimizer._target_='evil_plugin.Optimizer'",
    ),
}


def craft(source: Path, kind: str, victim: Path, folder: Path) -> Path:
    """A copy of the real checkpoint ``source`` whose stored run config is changed by
    ``CRAFTS[kind]``, saved as someone could (weights-only loadable: plain values only)."""
    checkpoint = torch.load(source, map_location="cpu", weights_only=True)
    CRAFTS[kind][0](checkpoint[CONFIG_KEY]["model"], victim)
    path = folder / f"crafted_{kind}.ckpt"
    torch.save(checkpoint, path)
    return path


@pytest.fixture(scope="module")
def tiny_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """last.ckpt of a tiny classifier and of a tiny conditional VAE (the generator kind that
    gendisc-sample, model.m1.ckpt and model.generator_ckpt read)."""
    runs = {}
    for name, overrides in {
        "classifier": ["model=classifier"],
        "vae": ["model=vae", *NO_GENERATIVE_CALLBACKS],
    }.items():
        run = tmp_path_factory.mktemp(name)
        train(compose_config([*overrides, *TINY, "test=false"], run))
        runs[name] = run / "checkpoints" / "last.ckpt"
    return runs


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    path = tmp_path / "victim.txt"
    path.write_text(VICTIM_TEXT)
    return path


def _refused(call: Callable[[], Any], kind: str, path: Path, setting: str) -> None:
    with pytest.raises(Exception) as info:
        call()
    cause = gendisc_cause(info.value)
    assert isinstance(cause, UntrustedConfigError), info.value
    message = str(cause)
    assert f"{setting}={path}" in message
    assert CRAFTS[kind][1] in message
    assert "Nothing was built" in message


def _untouched(victim: Path, run_dir: Path) -> None:
    assert victim.read_text() == VICTIM_TEXT
    assert not run_dir.exists() or not any(run_dir.iterdir()), sorted(run_dir.rglob("*"))


@pytest.mark.parametrize("kind", sorted(CRAFTS))
def test_eval_refuses_a_crafted_checkpoint(kind, tiny_runs, victim, tmp_path):
    path = craft(tiny_runs["classifier"], kind, victim, tmp_path)
    run_dir = tmp_path / "eval"
    cfg = compose_config([f"ckpt_path={path}"], run_dir, config_name="eval")
    _refused(lambda: evaluate(cfg), kind, path, "ckpt_path")
    _untouched(victim, run_dir)


@pytest.mark.parametrize("kind", sorted(CRAFTS))
def test_sample_refuses_a_crafted_checkpoint(kind, tiny_runs, victim, tmp_path):
    path = craft(tiny_runs["vae"], kind, victim, tmp_path)
    run_dir = tmp_path / "sample"
    cfg = compose_config([f"ckpt_path={path}", "n=10"], run_dir, config_name="sample")
    _refused(lambda: sample(cfg), kind, path, "ckpt_path")
    _untouched(victim, run_dir)


# the training options whose checkpoint's config is built from, and the model they belong to
READERS = {
    "model.m1.ckpt": ["model=ssl_vae", "model.m2.likelihood.kind=gaussian"],
    "model.generator_ckpt": ["model=augmented_classifier"],
}
# the options that use only a checkpoint's tensors and training state (nothing built from it)
WEIGHTS_ONLY = {
    "model.init_from": ["model=classifier"],
    "ckpt_path": ["model=vae", *NO_GENERATIVE_CALLBACKS, "trainer.max_epochs=2"],
}


@pytest.mark.parametrize("setting", sorted(READERS))
@pytest.mark.parametrize("kind", sorted(CRAFTS))
def test_training_refuses_a_crafted_checkpoint(kind, setting, tiny_runs, victim, tmp_path):
    path = craft(tiny_runs["vae"], kind, victim, tmp_path)
    run_dir = tmp_path / "run"
    cfg = compose_config([*READERS[setting], *TINY, f"{setting}={path}"], run_dir)
    _refused(lambda: train(cfg), kind, path, setting)
    _untouched(victim, run_dir)


@pytest.mark.parametrize("setting", sorted(WEIGHTS_ONLY))
@pytest.mark.parametrize("kind", ["open", "partial", "list"])
def test_weights_only_readers_never_build_a_crafted_config(
    kind, setting, tiny_runs, victim, tmp_path
):
    """Resuming and init_from read the file's tensors and training state only: a crafted
    config in it builds nothing (the victim is untouched) and the run trains as asked."""
    source = tiny_runs["classifier" if setting == "model.init_from" else "vae"]
    path = craft(source, kind, victim, tmp_path)
    cfg = compose_config([*WEIGHTS_ONLY[setting], *TINY, f"{setting}={path}"], tmp_path / "run")
    metrics = train(cfg)
    assert victim.read_text() == VICTIM_TEXT
    assert metrics["epochs"] == cfg.trainer.max_epochs


@pytest.mark.slow
def test_gendisc_report_never_builds_a_stored_config(tiny_sweep, victim, tmp_path, capsys):
    """gendisc-report reads run configs as YAML data (safe_load) and instantiates nothing."""
    from gendisc.report.cli import main as report_main

    job = next(p for p in sorted(tiny_sweep.iterdir()) if (p / "metrics.json").is_file())
    config = job / ".hydra" / "config.yaml"
    original = config.read_text()
    try:
        config.write_text(
            original + f"\nevil:\n  _target_: builtins.open\n  file: {victim}\n  mode: w\n"
        )
        report_main([str(tiny_sweep), "--out", str(tmp_path / "report")])
    finally:
        config.write_text(original)
    assert victim.read_text() == VICTIM_TEXT
    assert (tmp_path / "report").is_dir()


def test_the_real_checkpoints_are_trusted(tiny_runs):
    for path in tiny_runs.values():
        module = load_module(path)
        assert module is not None
        check_trusted(load_checkpoint(path, "ckpt_path")[CONFIG_KEY], f"ckpt_path={path}")


def test_user_trusted_target_is_built_from_a_file(tiny_runs, tmp_path, monkeypatch):
    """GENDISC_TRUSTED_TARGETS opens the door for a class the user trusts (here a torch class
    outside the families, built as the optimiser's betas)."""
    checkpoint = torch.load(tiny_runs["classifier"], map_location="cpu", weights_only=True)
    checkpoint[CONFIG_KEY]["model"]["optimizer"]["betas"] = {
        "_target_": "builtins.tuple",
        "_args_": [[0.5, 0.999]],
    }
    path = tmp_path / "own.ckpt"
    torch.save(checkpoint, path)
    with pytest.raises(UntrustedConfigError, match=r"builtins\.tuple"):
        load_module(path)
    monkeypatch.setenv(TRUSTED_ENV, "builtins.tuple")
    module = load_module(path)
    optimizer = module.configure_optimizers()
    optimizer = optimizer["optimizer"] if isinstance(optimizer, dict) else optimizer
    assert optimizer.param_groups[0]["betas"] == (0.5, 0.999)


def test_untrusted_error_is_a_config_error():
    """Entry points turn it into their one-line error, sweeps into a failure record."""
    with pytest.raises(ConfigError, match=r"x: its stored config names <root>\._target_='os"):
        check_trusted({"_target_": "os.system"}, "x")


@pytest.mark.slow
@pytest.mark.parametrize("entry", ["eval", "train"])
def test_cli_refuses_a_crafted_checkpoint_with_one_line(entry, tiny_runs, victim, tmp_path):
    """As a user runs it: one line, no traceback, the victim unchanged, and the run directory
    holds Hydra's own files and (gendisc-train) the failure record only."""
    source = tiny_runs["classifier" if entry == "eval" else "vae"]
    path = craft(source, "open", victim, tmp_path)
    run_dir = tmp_path / "cli_run"
    if entry == "eval":
        args = [f"ckpt_path={path}", f"hydra.run.dir={run_dir}"]
        command = [
            a for a in gendisc_command(*args, module="gendisc.eval") if "callbacks." not in a
        ]
    else:
        args = [*READERS["model.m1.ckpt"], f"model.m1.ckpt={path}", f"hydra.run.dir={run_dir}"]
        command = gendisc_command(*args)
    result = subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=single_thread_env(),
        timeout=180,
        cwd=PROJECT_ROOT,
    )
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr[-2000:]
    assert CRAFTS["open"][1] in result.stderr
    assert victim.read_text() == VICTIM_TEXT
    written = {p.relative_to(run_dir).parts[0] for p in run_dir.rglob("*")}
    assert written <= {".hydra", f"{'eval' if entry == 'eval' else 'train'}.log", "failure.json"}
    if entry == "train":
        record = json.loads((run_dir / "failure.json").read_text())
        assert record["error_type"] == "UntrustedConfigError"


def test_eval_attaches_no_other_callback_from_the_file(tiny_runs, tmp_path):
    """EvaluationReport is trusted (conf/ names it), but as the stored generative-metrics
    callback it would write metrics.json where the file says: gendisc-eval refuses it."""
    elsewhere = tmp_path / "elsewhere"
    checkpoint = torch.load(tiny_runs["vae"], map_location="cpu", weights_only=True)
    checkpoint[CONFIG_KEY]["callbacks"]["generative_metrics"] = {
        "_target_": "gendisc.callbacks.run_report.EvaluationReport",
        "output_dir": str(elsewhere),
    }
    path = tmp_path / "report_elsewhere.ckpt"
    torch.save(checkpoint, path)
    cfg = compose_config([f"ckpt_path={path}"], tmp_path / "eval", config_name="eval")
    with pytest.raises(UntrustedConfigError, match="generative_metrics=false"):
        evaluate(cfg)
    assert not elsewhere.exists()


def test_eval_uses_this_machines_evaluator_cache(tmp_path):
    from omegaconf import OmegaConf

    from gendisc.eval import GENERATIVE_METRICS, generative_metrics_callbacks

    run_cfg = OmegaConf.create(
        {"callbacks": {"generative_metrics": {"_target_": GENERATIVE_METRICS, "cache_dir": "/x"}}}
    )
    cfg = compose_config(["ckpt_path=f.ckpt"], tmp_path / "eval", config_name="eval")
    (callback,) = generative_metrics_callbacks(run_cfg, cfg)
    assert callback.cache_dir == Path(cfg.paths.cache_dir) / "evaluators"
