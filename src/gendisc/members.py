"""Train several runs of one sweep as members of one model, then test and report each one.

``gendisc-train -m ... hydra/launcher=members`` (``hydra_plugins/gendisc_members_launcher``)
gives this module the composed configs of a sweep's jobs. Jobs that differ only in ``seed``,
``data.data_seed``, ``data.labels_per_class`` and ``model.unlabeled_weight`` (the
labels-only arm, ``ablation=no_unlabeled``) train together (``gendisc.models.members``); each
is then tested and reported in its own run directory by the ordinary callbacks
(``metrics.json``, confusion matrix, generative metrics), as a single run would be.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from gendisc.callbacks.run_config import StoreRunConfig
from gendisc.callbacks.run_report import EvaluationReport
from gendisc.data.protocol import ALL_LABELS_VAL_SIZE, validation_setting
from gendisc.errors import ConfigError
from gendisc.models.members import MemberGroup, prepare_member
from gendisc.utils.build import build
from gendisc.utils.config import instantiate_list, register_resolvers

__all__ = [
    "MEMBER_KEYS",
    "build_group",
    "check_members",
    "group_jobs",
    "report_member",
    "training_view",
]

register_resolvers()

# the settings members may differ in (everything else that shapes training must be equal)
MEMBER_KEYS = ("seed", "data.data_seed", "data.labels_per_class", "model.unlabeled_weight")
# the parts of a config that shape training (the rest: outputs, loggers, callbacks, tags)
TRAINING_SECTIONS = ("model", "data", "augment", "trainer", "seed", "threads")


def _flatten(container: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(container, dict):
        return {prefix: container}
    flat: dict[str, Any] = {}
    for key, item in container.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
    return flat


def training_view(cfg: DictConfig) -> dict[str, Any]:
    """The resolved settings of ``cfg`` that shape training, as ``{dotted key: value}``,
    without ``MEMBER_KEYS`` and the settings that name places (``${paths...}``, ``${hydra:...}``,
    or in a resolved config a path under the run's own directory)."""
    raw = _flatten(OmegaConf.to_container(cfg, resolve=False))
    try:
        output_dir = str(OmegaConf.select(cfg, "paths.output_dir") or "")
    except Exception:  # unresolvable outside a Hydra run: no resolved paths to recognise
        output_dir = ""
    view = {}
    for key, raw_value in raw.items():
        if not any(key == s or key.startswith(s + ".") for s in TRAINING_SECTIONS):
            continue
        if key in MEMBER_KEYS or any(p in str(raw_value) for p in ("${paths.", "${hydra:")):
            continue
        value = OmegaConf.select(cfg, key)
        if isinstance(value, DictConfig | ListConfig):
            value = OmegaConf.to_container(value, resolve=True)
        if isinstance(value, str) and output_dir and value.startswith(output_dir):
            continue
        view[key] = value
    return view


def group_jobs(cfgs: Sequence[DictConfig], max_members: int | None = None) -> list[list[int]]:
    """The jobs of a sweep in groups that can train as members of one model: equal
    ``training_view``s (so a sweep over a learning rate gives one group per rate), in sweep
    order, each of at most ``max_members`` jobs (null or 0: no limit)."""
    groups: dict[str, list[int]] = {}
    for index, cfg in enumerate(cfgs):
        key = json.dumps(training_view(cfg), sort_keys=True, default=str)
        groups.setdefault(key, []).append(index)
    size = max_members or max(len(cfgs), 1)
    return [g[i : i + size] for g in groups.values() for i in range(0, len(g), size)]


def check_members(cfgs: Sequence[DictConfig]) -> None:
    """Raise one ``ConfigError`` when the runs cannot be members of one model: they must differ
    only in ``MEMBER_KEYS``; the message names the keys that differ and what to do."""
    if not cfgs:
        raise ConfigError("members: no runs to train")
    views = [training_view(cfg) for cfg in cfgs]
    differing = sorted(
        key for key in set().union(*views) if any(v.get(key) != views[0].get(key) for v in views)
    )
    if differing:
        raise ConfigError(
            f"members: the runs differ in {', '.join(differing)}; runs trained as members of "
            f"one model may differ only in {', '.join(MEMBER_KEYS)}. Sweep the other settings "
            "in separate commands (each with hydra/launcher=members), or drop "
            "hydra/launcher=members"
        )
    model = cfgs[0].model.get("_target_", "")
    if not str(model).endswith("SSLGANModule"):
        raise ConfigError(
            f"members: model {model} is not supported; members train model=ssl_gan "
            "(e.g. experiment=salimans_mnist; ablation=no_unlabeled is its labels-only arm)"
        )


def member_device(cfg: DictConfig) -> torch.device:
    """The device of ``trainer.accelerator`` (cpu, gpu/cuda, or auto: CUDA when available)."""
    accelerator = str(cfg.trainer.get("accelerator", "auto"))
    if accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available()):
        return torch.device("cuda", torch.cuda.current_device())
    if accelerator not in ("cpu", "auto"):
        raise ConfigError(f"members: trainer.accelerator={accelerator}: use cpu or gpu")
    return torch.device("cpu")


def build_group(
    cfgs: Sequence[DictConfig], rng: str = "member", capturable: bool = False, graphs: bool = False
) -> MemberGroup:
    """Check the configs, then build each run exactly as ``gendisc.train`` does (seeded with
    its own ``seed``), prepare it (data-dependent init) and stack them into one group
    (``MemberGroup`` says what ``rng``, ``capturable`` and ``graphs`` do)."""
    check_members(cfgs)
    if str(cfgs[0].trainer.get("precision", "32-true")) not in ("32", "32-true"):
        raise ConfigError("members: train in float32 (trainer.precision=32-true)")
    if int(cfgs[0].trainer.get("devices", 1) or 1) != 1:
        raise ConfigError("members: one device per group (trainer.devices=1)")
    if cfgs[0].get("threads") is not None:
        torch.set_num_threads(int(cfgs[0].threads))
    device = member_device(cfgs[0])
    members = []
    for cfg in cfgs:
        seed = int(cfg.seed)
        L.seed_everything(seed, workers=True, verbose=False)
        datamodule, module = build(cfg)
        members.append(prepare_member(module, datamodule, seed, device))
    return MemberGroup(members, device=device, rng=rng, capturable=capturable, graphs=graphs)


def fit_group(group: MemberGroup, cfg: DictConfig, time_limit_s: float | None = None) -> None:
    """Train the group for the schedule of ``cfg.trainer`` (max_epochs, limit_train_batches,
    max_steps)."""
    trainer = cfg.trainer
    length = len(group.members[0].loader)
    limit = trainer.get("limit_train_batches")
    steps = length
    if isinstance(limit, int) and not isinstance(limit, bool):
        steps = min(limit, length)
    elif isinstance(limit, float):
        steps = max(1, int(length * limit))
    max_steps = trainer.get("max_steps")
    group.fit(
        int(trainer.get("max_epochs") or 1),
        steps_per_epoch=steps,
        max_steps=-1 if max_steps is None else int(max_steps),
        time_limit_s=time_limit_s,
    )


def _plain(value: Any) -> Any:
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def report_member(
    cfg: DictConfig, group: MemberGroup, index: int, module: L.LightningModule
) -> dict[str, Any]:
    """Test member ``index`` of a trained group with the run's own callbacks and loggers and
    write its report (``metrics.json`` in ``paths.output_dir``) and its last checkpoint."""
    member = group.members[index]
    resolved = OmegaConf.to_container(cfg, resolve=True)
    callbacks = [
        c
        for c in instantiate_list(cfg.get("callbacks"), "callbacks")
        if not isinstance(c, L.pytorch.callbacks.ModelCheckpoint)
    ]
    callbacks.append(StoreRunConfig(resolved))
    loggers = instantiate_list(cfg.get("logger"), "logger")
    trainer: L.Trainer = hydra.utils.instantiate(
        cfg.trainer, callbacks=callbacks, logger=loggers or False, enable_checkpointing=False
    )
    for logger in loggers:
        logger.log_hyperparams(resolved)
    size = len(group.members)
    for report in (c for c in callbacks if isinstance(c, EvaluationReport)):
        report.fit_seconds = group.seconds_per_member()
        report.train_images = group.train_images // size
        report.extra.update(member.stats)
        report.extra.update(
            {
                "members/size": size,
                "members/index": index,
                "members/rng": group.rng,
                "members/group_fit_s": round(group.fit_seconds, 3),
                "members/epochs": group.epochs,
                "members/global_step": group.global_step,
                "members/stopped_early": group.stopped_early,
                "epochs": group.epochs,
                "global_step": group.global_step,
            }
        )
    metrics: dict[str, Any] = {}
    val_size, _ = validation_setting(
        cfg.data.get("labels_per_class"),
        cfg.data.get("val_size"),
        cfg.data.get("val_per_class"),
        cfg.data.get("all_labels_val_size", ALL_LABELS_VAL_SIZE),
    )
    if val_size != 0:  # data.val_size=0: no validation set
        trainer.validate(module, datamodule=member.datamodule, verbose=False)
        validation = {
            k: _plain(v) for k, v in trainer.callback_metrics.items() if k.startswith("val/")
        }
        metrics.update(validation)
        for report in (c for c in callbacks if isinstance(c, EvaluationReport)):
            report.extra.update(validation)
    if cfg.get("test", True):
        trainer.test(module, datamodule=member.datamodule)
        metrics.update({k: _plain(v) for k, v in trainer.callback_metrics.items()})
        checkpoint = Path(cfg.paths.output_dir) / "checkpoints" / "last.ckpt"
        trainer.save_checkpoint(checkpoint)  # with the callbacks' entries: the run config
    for report in (c for c in callbacks if isinstance(c, EvaluationReport)):
        metrics.update(report.metrics)
    metrics.update(member.stats)
    return metrics
