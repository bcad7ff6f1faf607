"""Config helpers: resolvers, printing the composed tree, instantiating lists of objects."""

from __future__ import annotations

import os
import re
import secrets
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import hydra
import rich.syntax
import rich.tree
from lightning.pytorch.utilities import rank_zero_only
from omegaconf import DictConfig, OmegaConf
from rich.console import Console

from gendisc.errors import ConfigError, gendisc_cause

PROJECT_ROOT = Path(__file__).resolve().parents[3]


def _unique_run_id() -> str:
    """Process id plus random hex: distinct even for jobs started in the same second."""
    return f"{os.getpid()}-{secrets.token_hex(3)}"


# metric names whose last recognised word (after the last "/", split on "_", "-", ".") is one
# of these are minimised / maximised; any name containing "loss" is minimised
MINIMISED = frozenset({"loss", "error", "err", "fid", "kid", "nll", "bpd"})
MAXIMISED = frozenset(
    {"acc", "accuracy", "f1", "precision", "recall", "auc", "auroc", "elbo", "is", "cas"}
)
MODES = ("min", "max")


def derived_mode(metric: str) -> str | None:
    """'min' or 'max' from a metric's name (``val/loss`` -> min, ``val/acc`` -> max), else None.

    The last word of the name that is known decides (``val/acc_raw`` -> max).
    """
    name = str(metric).lower()
    if "loss" in name:
        return "min"
    for word in reversed(re.split(r"[_\-.]", name.rsplit("/", 1)[-1])):
        if word in MINIMISED:
            return "min"
        if word in MAXIMISED:
            return "max"
    return None


def optimized_mode(metric: str | None, mode: str | None = None) -> str:
    """Whether ``optimized_metric`` is minimised or maximised: 'min' or 'max'.

    ``mode`` (``optimized_mode``) null: derived from the metric's name (``derived_mode``); a
    name that says neither is a ConfigError asking for ``optimized_mode``. An explicit mode is
    checked against the name (``optimized_mode=max`` with ``val/loss`` is refused). Without a
    metric nothing is monitored: the explicit mode, else 'max' (which also keeps the state key of
    callbacks.model_checkpoint apart from that of last_checkpoint, Lightning's 'min').
    """
    if mode is not None and str(mode).lower() not in MODES:
        raise ConfigError(f"optimized_mode={mode}: use min, max or null (derived from the name).")
    mode = None if mode is None else str(mode).lower()
    if metric is None:
        return mode or "max"
    derived = derived_mode(metric)
    if mode is None:
        if derived is None:
            raise ConfigError(
                f"optimized_metric={metric}: cannot tell from its name whether it is minimised "
                "or maximised; set optimized_mode=min or optimized_mode=max."
            )
        return derived
    if derived is not None and derived != mode:
        raise ConfigError(
            f"optimized_mode={mode} contradicts optimized_metric={metric}, which is "
            f"{'minimised' if derived == 'min' else 'maximised'}: set optimized_mode={derived} "
            "or optimized_mode=null."
        )
    return mode


def sweep_direction(metric: str | None, mode: str | None = None) -> str:
    """The Optuna direction of ``optimized_metric``: 'minimize' or 'maximize'."""
    return "minimize" if optimized_mode(metric, mode) == "min" else "maximize"


# what a model declares for itself, as class attributes (gendisc.models.contract), and the
# value for a model that declares nothing
MODEL_DECLARATIONS: dict[str, Any] = {"selection_metric": "val/acc", "generative_callbacks": False}


def model_declares(target: str, name: str) -> Any:
    """The class attribute ``name`` of the model class ``target`` (``model._target_``), or its
    default in :data:`MODEL_DECLARATIONS`: ``${model_declares:${model._target_},selection_metric}``
    gives ``optimized_metric``'s default, ``generative_callbacks`` whether the sample and
    generative-metric callbacks run. Composed configs only: stored run configs are resolved (and
    one holding an interpolation is refused, gendisc.trusted)."""
    if name not in MODEL_DECLARATIONS:
        raise ConfigError(f"model_declares: {name} is not one of {sorted(MODEL_DECLARATIONS)}.")
    try:
        cls = hydra.utils.get_class(str(target))
    except Exception as error:
        raise ConfigError(f"model._target_={target}: cannot import it ({error}).") from error
    return getattr(cls, name, MODEL_DECLARATIONS[name])


def best_or_last(metric: str | None) -> str:
    """``test_ckpt``'s default: the checkpoint selected on ``metric``, or the last one when
    nothing is selected (``optimized_metric=null``, e.g. ``model=gan``)."""
    return "last" if metric is None else "best"


# options that moved into a sub-config of the adversarial modules
ADVERSARIAL_KEYS = (
    "g_steps_per_d_step",
    "d_steps_per_g_step",
    "feature_layer",
    "feature_norm",
    "init_images",
    "d_ema_decay",
    "g_ema_decay",
    "lr_decay_epochs",
    "concat_d_pass",
)
REGULARIZER_KEYS = (
    "historical_averaging",
    "real_target",
    "instance_noise",
    "instance_noise_anneal_epochs",
)

# model options renamed so that one idea has one name in every module: old name -> what to use.
# An old name a user writes (command line, composed config) is refused with its successor; a
# checkpoint written before the rename is read with its options and weights renamed.
RENAMED_MODEL_KEYS = {
    "ema_decay": (
        "model.adversarial.g_ema_decay (moving average of G's weights, for samples: model=gan's "
        "ema_decay) or model.adversarial.d_ema_decay (of D's weights, for evaluation: "
        "model=ssl_gan's ema_decay)"
    ),
    "feature_matching": (
        "model.generator_objective=feature_matching (G's loss; false was the adversarial loss: "
        "model.generator_objective=${model.loss}, the default)"
    ),
    "generator_steps": "model.adversarial.g_steps_per_d_step (G updates per D update)",
    # the adversarial core's options, one sub-config of every adversarial module
    **{
        name: f"model.adversarial.{name} (conf/model/adversarial/default.yaml)"
        for name in ADVERSARIAL_KEYS
    },
    # model=gan's regularizers of the game, one sub-config
    **{name: f"model.regularizers.{name} (conf/model/gan.yaml)" for name in REGULARIZER_KEYS},
    # fine-tuning options, one sub-config since ssl_gan's discriminator has them too
    **{
        name: f"model.finetune.{name} (conf/model/finetune/default.yaml)"
        for name in ("freeze_backbone", "unfreeze_epoch", "backbone_lr_scale")
    },
}
# a classifier net's minibatch-discrimination options before they became one setting
OLD_MINIBATCH_KEYS = {
    "mbd_kernels": "kernels",
    "mbd_dim": "dim",
    "mbd_reference_size": "reference_size",
}

# old top-level model option -> its place in a sub-config (read from a stored config)
MOVED_MODEL_KEYS = {
    "freeze_backbone": ("finetune", "freeze_backbone"),
    "unfreeze_epoch": ("finetune", "unfreeze_epoch"),
    "backbone_lr_scale": ("finetune", "backbone_lr_scale"),
    **{name: ("adversarial", name) for name in ADVERSARIAL_KEYS},
    **{name: ("regularizers", name) for name in REGULARIZER_KEYS},
}


def _renamed_message(old: str, where: str) -> str:
    return f"{where}model.{old} was renamed: use {RENAMED_MODEL_KEYS[old]}."


def _minibatch_message(net: str, old: str) -> str:
    return (
        f"model.{net}.{old} was renamed: use model.{net}.minibatch_discrimination="
        f"{{{OLD_MINIBATCH_KEYS[old]}: ...}} (null: off, true: the paper's options; "
        "gendisc/nets/classifiers.py)."
    )


def check_renamed_keys(model: Mapping[str, Any] | None, where: str = "") -> None:
    """Refuse a model config holding a renamed option (what a user wrote: an override or an
    experiment file): one ConfigError naming the option to use. ``where`` prefixes the message."""
    for old in RENAMED_MODEL_KEYS:
        if model is not None and old in model:
            raise ConfigError(_renamed_message(old, where))
    for name, net in (model or {}).items():
        for old in OLD_MINIBATCH_KEYS:
            if isinstance(net, Mapping) and old in net:
                raise ConfigError(where + _minibatch_message(name, old))
    old_ssl_vae = _old_ssl_vae_keys(model) if _is_ssl_vae(model and model.get("_target_")) else []
    if old_ssl_vae:
        raise ConfigError(_ssl_vae_message(old_ssl_vae[0], where))


def migrate_renamed_keys(model: dict[str, Any], module: str | None = None) -> list[str]:
    """Rewrite, in place, the renamed options of a model config stored before the rename (a
    checkpoint's run config or saved hyper-parameters) to their new names, which the module
    class decides (``module``, else the config's ``_target_``); returns what was rewritten
    (``old -> new``). Stored runs stay readable; what users write is refused instead."""
    module = str(module or model.get("_target_") or "")
    ema = "d_ema_decay" if module.endswith("SSLGANModule") else "g_ema_decay"
    done = []
    if "ema_decay" in model:
        model[ema] = model.pop("ema_decay")
        done.append(f"ema_decay -> {ema}")
    if "generator_steps" in model:
        model["g_steps_per_d_step"] = model.pop("generator_steps")
        done.append("generator_steps -> g_steps_per_d_step")
    if "feature_matching" in model:
        if model.pop("feature_matching"):
            model["generator_objective"] = "feature_matching"
        done.append("feature_matching -> generator_objective")
    for old, (section, new) in MOVED_MODEL_KEYS.items():
        if old in model:
            model.setdefault(section, {})[new] = model.pop(old)
            done.append(f"{old} -> {section}.{new}")
    for name, net in model.items():
        if isinstance(net, dict) and any(old in net for old in OLD_MINIBATCH_KEYS):
            options = {new: net.pop(old) for old, new in OLD_MINIBATCH_KEYS.items() if old in net}
            net["minibatch_discrimination"] = (
                options if net.get("minibatch_discrimination") else None
            )
            done.append(f"{name}.mbd_* -> {name}.minibatch_discrimination")
    if _is_ssl_vae(module):
        done += migrate_ssl_vae_keys(model)
    return done


# state_dict prefixes renamed with the options (ssl_gan's D average was ``ema``)
RENAMED_STATE_PREFIXES = {"ema.": "d_ema."}


def migrate_state_dict(
    state: dict[str, Any], prefixes: Mapping[str, str] = RENAMED_STATE_PREFIXES
) -> None:
    """Rename, in place, the state_dict keys of a checkpoint written before the rename
    (``prefixes``: old prefix -> new prefix)."""
    for key in list(state):
        for old, new in prefixes.items():
            if key.startswith(old):
                state[new + key[len(old) :]] = state.pop(key)


def renamed_override(args: Sequence[str]) -> str | None:
    """The message for the first command-line override that sets a renamed model option
    (``model.ema_decay=...``, ``+model.ema_decay=...``, ``~model.ema_decay``), else None.
    Checked before Hydra composes, whose own error would not name the new option."""
    for arg in args:
        key = arg.lstrip("+~").split("=", 1)[0]
        old = key.removeprefix("model.")
        if key.startswith("model.") and old in RENAMED_MODEL_KEYS:
            return _renamed_message(old, "")
        net, _, option = old.rpartition(".")
        if key.startswith("model.") and net and option in OLD_MINIBATCH_KEYS:
            return _minibatch_message(net, option)
        # module-specific (model=vae keeps latent_dim, ...): the model the others select
        others = [other for other in args if other != arg]
        if (
            key.startswith("model.")
            and old in RENAMED_SSL_VAE_KEYS
            and _is_ssl_vae(_model_target(others))
        ):
            return _ssl_vae_message(old, "")
    return None


# ------------------------------------------------------------------------------------------
# model=ssl_vae (SSLVAEModule) only: its flat options grouped into the sub-configs m2, m1 and
# auxiliary. Old flat name -> its place (model.<place>). ``m1`` and ``auxiliary`` name both an
# old option (a checkpoint path, a kind) and a new group: a value that is not a mapping is the
# old option. Kept apart from RENAMED_MODEL_KEYS, which holds the renames of every module.
RENAMED_SSL_VAE_KEYS = {
    "latent_dim": "m2.latent_dim",
    "likelihood": "m2.likelihood.kind",
    "binarize": "m2.likelihood.binarize",
    "gaussian_sigma": "m2.likelihood.sigma",
    "gaussian_variance": "m2.likelihood.variance",
    "alpha_scale": "m2.alpha.scale",
    "alpha": "m2.alpha.value",
    "mc_samples": "m2.mc_samples",
    "m1": "m1.ckpt",
    "m1_features": "m1.features",
    "auxiliary": "auxiliary.kind",
    "aux_dim": "auxiliary.dim",
    "eval_samples": "auxiliary.eval_samples",
}
_SSL_VAE_GROUPS = ("m1", "auxiliary")
# state_dict prefixes renamed with them
RENAMED_SSL_VAE_STATE_PREFIXES = {
    "aux_encoder.": "auxiliary.posterior.",
    "aux_decoder.": "auxiliary.prior.",
    "m1_encoder.": "m1.encoder.",
    "m1_decoder.": "m1.decoder.",
}


def _is_ssl_vae(module: object) -> bool:
    return str(module or "").endswith("SSLVAEModule")


def _old_ssl_vae_keys(model: Mapping[str, Any]) -> list[str]:
    """The old flat options an SSLVAEModule config holds, in the table's order."""
    return [
        old
        for old in RENAMED_SSL_VAE_KEYS
        if old in model and not (old in _SSL_VAE_GROUPS and isinstance(model[old], Mapping))
    ]


def _ssl_vae_message(old: str, where: str) -> str:
    return (
        f"{where}model.{old} was renamed (model=ssl_vae groups its options): use "
        f"model.{RENAMED_SSL_VAE_KEYS[old]}."
    )


def migrate_ssl_vae_keys(model: dict[str, Any]) -> list[str]:
    """Move, in place, the old flat options of a stored SSLVAEModule config into its groups
    (``alpha_scale: 0.1`` -> ``m2: {alpha: {scale: 0.1}}``); returns ``old -> new`` for each."""
    done = []
    for old in _old_ssl_vae_keys(model):  # m1 / auxiliary before the options moved into them
        value = model.pop(old)
        new = RENAMED_SSL_VAE_KEYS[old]
        *groups, leaf = new.split(".")
        node = model
        for group in groups:
            node = node.setdefault(group, {})
        node[leaf] = value
        done.append(f"{old} -> {new}")
    return done


def _model_target(args: Sequence[str]) -> str | None:
    """The model ``_target_`` that the command-line overrides ``args`` compose to (a sweep:
    its first value), or None when they do not compose."""
    from hydra import compose, initialize_config_dir
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        overrides = []
        parsed = OverridesParser.create().parse_overrides([a for a in args if a[:1] != "-"])
        for override in parsed:
            if override.key_or_group.startswith("hydra"):
                continue
            if override.is_sweep_override():
                first = next(iter(override.sweep_string_iterator()))
                overrides.append(f"{override.get_key_element()}={first}")
            else:
                overrides.append(str(override.input_line))
        with initialize_config_dir(str(PROJECT_ROOT / "conf"), version_base="1.3"):
            model = compose("train", overrides=overrides).get("model")
        return None if model is None else str(model.get("_target_"))
    except Exception:  # the overrides do not compose: Hydra reports why when the run starts
        return None


def slurm_gpus(accelerator: str, devices: Any) -> int:
    """Resolver ``slurm_gpus``: GPUs per node for the SLURM launcher (``trainer.devices``, or 0)."""
    if str(accelerator) not in ("gpu", "cuda", "auto"):
        return 0
    if isinstance(devices, int) and devices > 0:
        return devices
    raise ConfigError(
        f"trainer.devices={devices}: with hydra/launcher=slurm give a GPU count per node "
        "(e.g. trainer.devices=4), so SLURM can reserve them."
    )


def slurm_tasks(devices: Any) -> int:
    """Resolver ``slurm_tasks``: one SLURM task per device (Lightning uses SLURM's ranks)."""
    if isinstance(devices, int) and devices > 0:
        return devices
    raise ConfigError(
        f"trainer.devices={devices}: with hydra/launcher=slurm give a device count per node "
        "(e.g. trainer.devices=4): SLURM starts one task per device."
    )


def register_resolvers() -> None:
    """Resolvers used by the configs (``run_id`` is cached per config so a run keeps one id;
    ``monitor_mode`` / ``sweep_direction`` give optimized_metric's min/max, see
    ``optimized_mode``)."""
    if not OmegaConf.has_resolver("run_id"):
        OmegaConf.register_new_resolver("run_id", _unique_run_id, use_cache=True)
    if not OmegaConf.has_resolver("project_root"):
        OmegaConf.register_new_resolver("project_root", lambda: str(PROJECT_ROOT))
    if not OmegaConf.has_resolver("data_dir"):
        OmegaConf.register_new_resolver(
            "data_dir", lambda: os.environ.get("GENDISC_DATA_DIR") or str(PROJECT_ROOT / "data")
        )
    if not OmegaConf.has_resolver("if_null"):  # ${if_null:${a},b}: a, or b when a is null
        OmegaConf.register_new_resolver(
            "if_null", lambda value, fallback: fallback if value is None else value
        )
    if not OmegaConf.has_resolver("unless_set"):  # ${unless_set:${a},b}: b, or null when a is set
        OmegaConf.register_new_resolver(
            "unless_set", lambda value, default: default if value is None else None
        )
    if not OmegaConf.has_resolver("slurm_gpus"):
        OmegaConf.register_new_resolver("slurm_gpus", slurm_gpus)
    if not OmegaConf.has_resolver("slurm_tasks"):
        OmegaConf.register_new_resolver("slurm_tasks", slurm_tasks)
    register_mode_resolvers()


def register_mode_resolvers() -> None:
    """``${monitor_mode:${optimized_metric},${optimized_mode}}`` (checkpoint / early-stopping
    mode), ``${sweep_direction:...}`` (Optuna's direction), ``${model_declares:...}`` and
    ``${best_or_last:...}`` (a model's own defaults); registered on import of this module too,
    so that composing the configs (tests, notebooks) resolves them."""
    if not OmegaConf.has_resolver("monitor_mode"):
        OmegaConf.register_new_resolver("monitor_mode", optimized_mode)
    if not OmegaConf.has_resolver("sweep_direction"):
        OmegaConf.register_new_resolver("sweep_direction", sweep_direction)
    if not OmegaConf.has_resolver("model_declares"):
        OmegaConf.register_new_resolver("model_declares", model_declares)
    if not OmegaConf.has_resolver("best_or_last"):
        OmegaConf.register_new_resolver("best_or_last", best_or_last)


def _branch_yaml(value: DictConfig) -> str:
    """A config branch as resolved YAML; unresolved when a setting is invalid (a GendiscError in
    a resolver): the run reports that error itself, as one clear message (failure.json)."""
    try:
        return OmegaConf.to_yaml(value, resolve=True)
    except Exception as error:
        if gendisc_cause(error) is None:
            raise
        return OmegaConf.to_yaml(value, resolve=False)


@rank_zero_only
def print_config_tree(cfg: DictConfig, save_to: Path | None = None) -> None:
    """Print the composed config as a tree (one branch per top-level group) and save it."""
    tree = rich.tree.Tree("CONFIG", guide_style="dim")
    first = ["data", "model", "trainer", "callbacks", "logger", "paths", "extras"]
    keys = [k for k in first if k in cfg] + [k for k in cfg if k not in first]
    for key in keys:
        branch = tree.add(str(key), guide_style="dim")
        value = cfg[key]
        text = _branch_yaml(value) if isinstance(value, DictConfig) else str(value)
        branch.add(rich.syntax.Syntax(text, "yaml", theme="ansi_dark"))
    Console().print(tree)
    if save_to is not None:
        save_to.parent.mkdir(parents=True, exist_ok=True)
        with open(save_to, "w") as file:
            Console(file=file, width=120).print(tree)


def instantiate_list(group: DictConfig | None, what: str) -> list[Any]:
    """Instantiate every entry of a config group that has a ``_target_`` (callbacks, loggers);
    an entry with ``enabled: false`` is left out (``enabled`` is not passed on)."""
    objects: list[Any] = []
    if not group:
        return objects
    for name, entry in group.items():
        if isinstance(entry, DictConfig) and "_target_" in entry:
            if "enabled" in entry:
                if not entry.enabled:
                    continue
                entry = OmegaConf.to_container(entry, resolve=True)
                entry.pop("enabled")
            try:
                objects.append(hydra.utils.instantiate(entry))
            except Exception as error:
                raise ConfigError(f"{what}.{name}: could not be created: {error}") from error
    return objects


register_mode_resolvers()
