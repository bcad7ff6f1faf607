"""Train several runs of one sweep as members of one model, then test and report each one.

``gendisc-train -m ... hydra/launcher=members`` (``hydra_plugins/gendisc_members_launcher``)
gives this module the composed configs of a sweep's jobs. Jobs that differ only in ``seed``,
``data.data_seed``, ``data.labels_per_class`` and ``model.unlabeled_weight`` (the
labels-only arm, ``ablation=no_unlabeled``) train together (``gendisc.models.members``); each
is then tested and reported in its own run directory by the ordinary callbacks
(``metrics.json``, confusion matrix, generative metrics), as a single run would be.

Resuming (``GroupCheckpoint``, ``train_group``): a group saves its whole training state
(``MemberGroup.state_dict``) into ``<sweep dir>/members/group-<id>.ckpt`` after an epoch when
``every_s`` seconds have passed since the last save (0: every epoch) and when it has trained;
written to a temporary file and renamed, read with ``torch.load(weights_only=True)``. The same
sweep command with ``ckpt_path=last`` (as single runs resume) leaves the members that already
finished as they are (``resume.finished_run``) and continues the others from that checkpoint;
once every member is reported the checkpoint is removed (each member keeps its
``checkpoints/last.ckpt``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import hydra
import lightning as L
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from gendisc.callbacks.run_config import StoreRunConfig
from gendisc.callbacks.run_report import EvaluationReport
from gendisc.checkpoints import load_checkpoint
from gendisc.data.protocol import ALL_LABELS_VAL_SIZE, validation_setting
from gendisc.errors import ConfigError
from gendisc.models.members import MemberGroup, prepare_member
from gendisc.utils.build import build
from gendisc.utils.config import instantiate_list, register_resolvers
from gendisc.utils.resume import finished_run

__all__ = [
    "GROUP_CHECKPOINT_DIR",
    "MEMBER_KEYS",
    "GroupCheckpoint",
    "TrainedGroup",
    "build_group",
    "check_members",
    "fit_group",
    "group_jobs",
    "report_member",
    "train_group",
    "training_view",
]

log = logging.getLogger(__name__)

register_resolvers()

# the folder of a sweep directory that holds its groups' checkpoints
GROUP_CHECKPOINT_DIR = "members"
# settings that may change between a group's interruption and its resume
RESUMABLE_CHANGES = ("trainer.max_epochs", "trainer.max_steps")

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
    if cfgs[0].get("augment") and hydra.utils.instantiate(cfgs[0].augment).active:
        raise ConfigError(
            "members: augment= is not applied to members' batches; use augment=none, or drop "
            "hydra/launcher=members to train augmented runs one by one"
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


def fit_group(
    group: MemberGroup,
    cfg: DictConfig,
    time_limit_s: float | None = None,
    checkpoint: GroupCheckpoint | None = None,
) -> None:
    """Train the group for the schedule of ``cfg.trainer`` (max_epochs, limit_train_batches,
    max_steps), saving ``checkpoint`` when due after an epoch and once more at the end."""
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
        on_epoch_end=None if checkpoint is None else checkpoint.maybe_save,
    )
    if checkpoint is not None:
        checkpoint.save(group)


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
                "test_ckpt": "last",  # a member is tested with its weights after training
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


# --------------------------------------------------------------------------------- resuming
def _run_key(cfg: DictConfig, sweep_dir: Path) -> str:
    """A job's run directory, relative to the sweep directory when inside it."""
    run_dir = Path(str(cfg.paths.output_dir)).resolve()
    try:
        return run_dir.relative_to(sweep_dir.resolve()).as_posix()
    except ValueError:
        return run_dir.as_posix()


def _member_values(cfg: DictConfig) -> dict[str, Any]:
    return {key: OmegaConf.select(cfg, key) for key in MEMBER_KEYS}


def _view_json(cfg: DictConfig) -> dict[str, Any]:
    return json.loads(json.dumps(training_view(cfg), sort_keys=True, default=str))


class GroupCheckpoint:
    """The checkpoint file of one group of a sweep: ``<sweep dir>/members/group-<id>.ckpt``,
    ``<id>`` from the run directories of all the group's jobs (so the same sweep command finds
    it again). It holds ``MemberGroup.state_dict()`` and which runs (run directory, member
    settings) and training settings it belongs to; only tensors and plain values.

    Args:
        sweep_dir: the sweep's directory.
        cfgs: the configs of all the group's jobs (finished ones included).
        every_s: after an epoch, save when this many seconds have passed since the last save
            (0: after every epoch).
    """

    def __init__(self, sweep_dir: str | Path, cfgs: Sequence[DictConfig], every_s: float = 60.0):
        self.sweep_dir = Path(sweep_dir)
        runs = sorted(_run_key(cfg, self.sweep_dir) for cfg in cfgs)
        digest = hashlib.sha1(json.dumps(runs).encode()).hexdigest()[:12]
        self.path = self.sweep_dir / GROUP_CHECKPOINT_DIR / f"group-{digest}.ckpt"
        self.every_s = float(every_s)
        self.cfgs: list[DictConfig] = []  # the configs of the members being trained
        self.saved_epochs: int | None = None
        self._last_save = time.monotonic()

    def load(self, cfgs: Sequence[DictConfig]) -> tuple[dict[str, Any], list[int]] | None:
        """(the saved group state, the saved index of each of ``cfgs``), or None when the file
        does not exist or lacks one of these runs (the group then starts afresh). Raises
        ConfigError when it belongs to other training or member settings."""
        if not self.path.is_file():
            return None
        saved = load_checkpoint(self.path, "ckpt_path")
        meta, state = saved.get("members"), saved.get("group")
        if not isinstance(meta, dict) or not isinstance(state, dict):
            raise ConfigError(
                f"ckpt_path=last: {self.path} is not a members group checkpoint; move it away "
                "to start the group afresh"
            )
        runs = list(meta["runs"])
        keys = [_run_key(cfg, self.sweep_dir) for cfg in cfgs]
        missing = [key for key in keys if key not in runs]
        if missing:
            log.warning(
                "members: %s holds no state of %s; the group starts from scratch",
                self.path,
                ", ".join(missing),
            )
            return None
        view, saved_view = _view_json(cfgs[0]), meta["view"]
        changed = sorted(
            key
            for key in set(view) | set(saved_view)
            if view.get(key) != saved_view.get(key) and key not in RESUMABLE_CHANGES
        )
        indices = [runs.index(key) for key in keys]
        changed += sorted(
            f"{key} of {run}"
            for cfg, run, i in zip(cfgs, keys, indices, strict=True)
            for key, value in _member_values(cfg).items()
            if meta["members"][i].get(key) != value
        )
        if changed:
            raise ConfigError(
                f"ckpt_path=last: the group checkpoint {self.path} was trained with other "
                f"settings ({', '.join(changed[:8])}); resume with the sweep's own overrides, "
                "or move the file away to train the group afresh"
            )
        return state, indices

    def maybe_save(self, group: MemberGroup) -> None:
        """Save when ``every_s`` seconds have passed since the last save (``fit``'s epoch hook)."""
        if time.monotonic() - self._last_save >= self.every_s:
            self.save(group)

    def save(self, group: MemberGroup) -> None:
        """Write the group's state (of the members of ``self.cfgs``): a temporary file, renamed
        over the checkpoint, so an interruption never leaves half a file."""
        if self.saved_epochs == group.epochs:
            return
        if len(self.cfgs) != len(group.members):
            raise ValueError("GroupCheckpoint.cfgs must be the configs of the group's members")
        start = time.perf_counter()
        payload = {
            "members": {
                "runs": [_run_key(cfg, self.sweep_dir) for cfg in self.cfgs],
                "members": [_member_values(cfg) for cfg in self.cfgs],
                "view": _view_json(self.cfgs[0]),
            },
            "group": group.state_dict(),
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        temporary = self.path.with_name(self.path.name + ".tmp")
        torch.save(payload, temporary)
        os.replace(temporary, self.path)
        self.saved_epochs = group.epochs
        self._last_save = time.monotonic()
        log.info(
            "members: group checkpoint %s (epoch %d, step %d, %.1f s)",
            self.path,
            group.epochs,
            group.global_step,
            time.perf_counter() - start,
        )

    def remove(self) -> None:
        """Delete the checkpoint (every member is reported; each keeps its last.ckpt)."""
        for path in (self.path, self.path.with_name(self.path.name + ".tmp")):
            path.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            self.path.parent.rmdir()  # when no other group's checkpoint is left


def resuming(cfgs: Sequence[DictConfig]) -> bool:
    """Whether the jobs continue their group (``ckpt_path=last``, as single runs resume);
    ConfigError for another ``ckpt_path`` (members resume from their group checkpoint only)."""
    values = {str(cfg.get("ckpt_path")) for cfg in cfgs}
    if values == {"None"}:
        return False
    if values == {"last"}:
        return True
    raise ConfigError(
        f"members: ckpt_path={'/'.join(sorted(values))}: a group of members resumes from its own "
        "group checkpoint in the sweep directory, with ckpt_path=last and the sweep's "
        "hydra.sweep.dir; train from another checkpoint one run at a time (drop "
        "hydra/launcher=members)"
    )


@dataclass
class TrainedGroup:
    """What ``train_group`` did: ``finished`` (job index -> its metrics.json) were left as they
    were; ``todo`` (job indices) are the members of ``group``, in order, trained and unstacked
    into ``modules``; ``checkpoint`` to remove once they are all reported."""

    finished: dict[int, dict[str, Any]] = field(default_factory=dict)
    todo: list[int] = field(default_factory=list)
    group: MemberGroup | None = None
    modules: list[Any] = field(default_factory=list)
    checkpoint: GroupCheckpoint | None = None


def train_group(
    cfgs: Sequence[DictConfig],
    sweep_dir: str | Path,
    rng: str = "member",
    graphs: bool = False,
    checkpoint_every_s: float | None = 60.0,
    time_limit_s: float | None = None,
) -> TrainedGroup:
    """Train one group of a sweep's jobs, resumably (module docstring).

    With ``ckpt_path=last`` the jobs whose run already finished are left as they are and the
    others continue from the group checkpoint when there is one. ``checkpoint_every_s``: see
    ``GroupCheckpoint`` (None: no group checkpoint is written)."""
    resume = resuming(cfgs)
    result = TrainedGroup()
    checkpoint = (
        GroupCheckpoint(sweep_dir, cfgs, checkpoint_every_s)
        if checkpoint_every_s is not None
        else None
    )
    for index, cfg in enumerate(cfgs):
        metrics = finished_run(cfg) if resume else None
        if metrics is not None:
            result.finished[index] = metrics
        else:
            result.todo.append(index)
    if result.finished:
        names = ", ".join(Path(str(cfgs[i].paths.output_dir)).name for i in result.finished)
        left = "nothing to train" if not result.todo else f"{len(result.todo)} to train"
        log.info(
            f"members: {len(result.finished)} of {len(cfgs)} runs of the group already "
            f"finished, left as they are ({left}): {names}"
        )
    if not result.todo:
        return result
    todo_cfgs = [cfgs[i] for i in result.todo]
    saved = None
    if checkpoint is not None:
        checkpoint.cfgs = todo_cfgs
        if resume:
            saved = checkpoint.load(todo_cfgs)
            if saved is None and not checkpoint.path.is_file():
                log.info(
                    "members: no group checkpoint %s yet; training from scratch", checkpoint.path
                )
        elif checkpoint.path.is_file():
            log.warning(
                "members: %s holds an earlier state of this group; training from scratch "
                "(ckpt_path=last would continue it)",
                checkpoint.path,
            )
    group = build_group(todo_cfgs, rng=rng, graphs=graphs)
    if saved is not None:
        state, indices = saved
        group.load_state_dict(state, indices)
        if checkpoint is not None:
            checkpoint.saved_epochs = group.epochs
        log.info(
            f"members: resuming {len(todo_cfgs)} runs from {checkpoint.path if checkpoint else ''} "
            f"(epoch {group.epochs}, step {group.global_step})"
        )
    fit_group(group, cfgs[0], time_limit_s=time_limit_s, checkpoint=checkpoint)
    result.group = group
    result.modules = group.unstack()
    result.checkpoint = checkpoint
    return result
