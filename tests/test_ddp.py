"""Multi-process training (trainer=ddp_sim: 2 CPU processes) for every model config present.

One real multirun of ``gendisc-train trainer=ddp_sim seed=null`` over the models (DDP inside a
multirun: rank 1 of each job is started from the job's saved config; rank 0 chooses each job's
seed). A probe callback, added through the config, writes what each rank saw; the tests compare
ranks with each other and with the batches a single process would draw.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from lightning import Callback, LightningModule, Trainer

from gendisc.data import FewLabelDataModule
from gendisc.data.batches import TrainBatches
from gendisc.utils.config import PROJECT_ROOT
from tests.conftest import TINY_SWEEP_ARGS, run_gendisc, shared_data_dir

MODELS = ["classifier", "ssl_gan", "gan", "vae"]
STEPS = 2
# 1337 unlabeled images (val_size=100) in batches of 64: 20 single-process steps per epoch,
# 10 per rank with 2 ranks, so both draw the same permutations
DATA = {"val_size": 100, "batch_size": 64, "labels_per_class": 10, "data_seed": 0}


def _digest(*arrays: Any) -> str:
    """A short checksum of tensors / NumPy arrays."""
    digest = hashlib.sha256()
    for array in arrays:
        if isinstance(array, torch.Tensor):
            array = array.detach().cpu().numpy()
        digest.update(np.ascontiguousarray(array).tobytes())
    return digest.hexdigest()[:16]


class RankProbe(Callback):
    """Test helper: writes ``probe_rank<r>.json`` with what this rank trained on and ended with:
    its first batches, its generators at the start of each epoch (torch and NumPy) and the
    first latents its generator drew in each epoch (modules with a ``generator``)."""

    def __init__(self, output_dir: str) -> None:
        self.output_dir = Path(output_dir)
        self.batches: list[dict[str, Any]] = []
        self.generators: dict[str, str] = {}
        self.latents: dict[str, str] = {}

    def on_train_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        generator = getattr(pl_module, "generator", None)
        if isinstance(generator, torch.nn.Module):

            def first_latents(module: torch.nn.Module, inputs: tuple) -> None:
                epoch = str(trainer.current_epoch)
                if trainer.training and epoch not in self.latents:
                    self.latents[epoch] = _digest(inputs[0])

            generator.register_forward_pre_hook(first_latents)

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self.generators[str(trainer.current_epoch)] = _digest(
            torch.get_rng_state(), np.random.get_state()[1]
        )

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.current_epoch == 0 and batch_idx < STEPS:
            self.batches.append(_describe(batch))

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        loader = trainer.train_dataloader
        digest = hashlib.sha256()
        for name, tensor in sorted(pl_module.named_parameters()):
            digest.update(name.encode())
            digest.update(tensor.detach().cpu().double().numpy().tobytes())
        buffers = {name: _digest(tensor) for name, tensor in pl_module.named_buffers()}
        record = {
            "rank": trainer.global_rank,
            "world_size": trainer.world_size,
            "seed": loader.seed,
            "labeled_index": loader.labeled_index.tolist(),
            "batches": self.batches,
            "generators": self.generators,
            "latents": self.latents,
            "weights_digest": digest.hexdigest(),
            "buffers": buffers,
        }
        path = self.output_dir / f"probe_rank{trainer.global_rank}.json"
        path.write_text(json.dumps(record))


def _describe(batch: dict[str, torch.Tensor]) -> dict[str, Any]:
    """A batch as comparable numbers: labels, and a checksum of each image."""
    described: dict[str, Any] = {"y": batch["y"].tolist()}
    for key, value in batch.items():
        if key.startswith("x"):
            described[key] = [round(v, 3) for v in value.flatten(1).sum(1).tolist()]
    return described


def test_every_model_under_ddp_has_its_config():
    """A renamed or removed model config fails here at once, instead of skipping the DDP tests."""
    missing = [m for m in MODELS if not (PROJECT_ROOT / "conf" / "model" / f"{m}.yaml").is_file()]
    assert not missing, f"conf/model/<name>.yaml missing for {missing}: update MODELS"


@pytest.fixture(scope="module")
def ddp_sweep(tmp_path_factory: pytest.TempPathFactory) -> Path:
    sweep = tmp_path_factory.mktemp("ddp_sweep")
    run_gendisc(
        "-m",
        f"model={','.join(MODELS)}",
        "trainer=ddp_sim",
        "seed=null",
        "data=digits",
        *(f"data.{key}={value}" for key, value in DATA.items()),
        "trainer.max_epochs=1",
        f"trainer.limit_train_batches={STEPS}",
        "trainer.limit_val_batches=1",
        "++callbacks.generative_metrics=null",
        "++callbacks.samples=null",
        "+callbacks.probe._target_=tests.test_ddp.RankProbe",
        "+callbacks.probe.output_dir=${paths.output_dir}",
        f"hydra.sweep.dir={sweep}",
        cwd=PROJECT_ROOT,
        timeout=600,
    )
    return sweep


def _job_dir(sweep: Path, model: str) -> Path:
    return sweep / str(MODELS.index(model))


def _single_process_batches(seed: int, streams: int) -> list[dict[str, Any]]:
    """The first 2 * STEPS batches one process would draw in epoch 0 with the same seed."""
    data = FewLabelDataModule(dataset="digits", data_dir=str(shared_data_dir()), **DATA).load()
    batches = TrainBatches(
        data.train_images,
        data.train_labels,
        data.labeled_index,
        data.unlabeled_index,
        batch_size=DATA["batch_size"],
        unlabeled_batch_size=DATA["batch_size"],
        unlabeled_streams=streams,
        seed=seed,
        current_epoch=lambda: 0,
    )
    described = []
    for step, batch in enumerate(batches):
        if step == 2 * STEPS:
            break
        described.append(_describe(batch))
    return described


def _unlabeled_positions(seed: int, streams: int, rank: int) -> list[list[int]]:
    """Per unlabeled stream, the pool images rank ``rank`` of 2 draws in epoch 0 (read back by
    giving TrainBatches images whose pixel is their own index)."""
    data = FewLabelDataModule(dataset="digits", data_dir=str(shared_data_dir()), **DATA).load()
    count = len(data.train_labels)
    batches = TrainBatches(
        torch.arange(count).view(count, 1, 1, 1),
        data.train_labels,
        data.labeled_index,
        data.unlabeled_index,
        batch_size=DATA["batch_size"],
        unlabeled_batch_size=DATA["batch_size"],
        unlabeled_streams=streams,
        seed=seed,
        rank=rank,
        world_size=2,
        current_epoch=lambda: 0,
    )
    positions: list[list[int]] = [[] for _ in range(streams)]
    for batch in batches:
        for stream in range(streams):
            key = "x_unl" if stream == 0 else f"x_unl{stream + 1}"
            positions[stream] += ((batch[key].flatten() + 1) * 127.5).round().long().tolist()
    return positions


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_ddp_trains_each_model_on_sharded_batches(model, ddp_sweep):
    job = _job_dir(ddp_sweep, model)
    failure = job / "failure.json"
    assert not failure.exists(), json.loads(failure.read_text())["error"]
    probes = [json.loads((job / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
    assert [p["rank"] for p in probes] == [0, 1] and {p["world_size"] for p in probes} == {2}
    # the label protocol is the same on every rank
    assert probes[0]["labeled_index"] == probes[1]["labeled_index"]
    assert len(probes[0]["labeled_index"]) == 100
    # each rank draws its own shard: together they are the single-process batch sequence
    assert probes[0]["seed"] == probes[1]["seed"]
    streams = sum(1 for key in probes[0]["batches"][0] if key.startswith("x_unl"))
    single = _single_process_batches(probes[0]["seed"], streams)
    for step in range(STEPS):
        for rank in (0, 1):
            assert probes[rank]["batches"][step] == single[2 * step + rank], (step, rank)
    assert probes[0]["batches"][0]["y"] != probes[1]["batches"][0]["y"]
    # within an epoch the ranks' unlabeled shards do not overlap (nor repeat an image)
    if streams:
        shards = [_unlabeled_positions(probes[0]["seed"], streams, rank) for rank in (0, 1)]
        for stream in range(streams):
            first, second = shards[0][stream], shards[1][stream]
            assert len(first) == len(second) == 10 * DATA["batch_size"]  # 10 steps per rank
            assert len(set(first) | set(second)) == len(first) + len(second), stream
    # gradients were synchronised: every rank ends with the same weights; only batch-norm
    # running statistics (of each rank's own batches) may differ
    assert probes[0]["weights_digest"] == probes[1]["weights_digest"]
    assert all("running_" in name for name in differing_buffers(*probes))


def differing_buffers(first: dict[str, Any], second: dict[str, Any]) -> list[str]:
    """The buffers (batch-norm statistics, EMA counts, ...) whose values two probes disagree on."""
    assert first["buffers"].keys() == second["buffers"].keys()
    return [name for name, value in first["buffers"].items() if second["buffers"][name] != value]


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_ddp_ranks_draw_their_own_random_streams(model, ddp_sweep):
    # seed=null: rank 0 chose the seed, every rank used it for the data order, and metrics.json
    # records it; latents, noise and dropout masks come from each rank's own generators
    job = _job_dir(ddp_sweep, model)
    probes = [json.loads((job / f"probe_rank{r}.json").read_text()) for r in (0, 1)]
    metrics = json.loads((job / "metrics.json").read_text())
    assert metrics["seed"] == probes[0]["seed"] == probes[1]["seed"]
    assert probes[0]["generators"]["0"] != probes[1]["generators"]["0"]
    if model in ("ssl_gan", "gan"):
        assert probes[0]["latents"]["0"] != probes[1]["latents"]["0"]
    # the run's config (stored in checkpoints) holds the seed used, not null
    stored = torch.load(job / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    assert stored["gendisc_config"]["seed"] == metrics["seed"]
    states = stored["callbacks"]["RandomStateCheckpoint"]
    assert states["world_size"] == 2 and len(states["ranks"]) == 2
    assert not torch.equal(states["ranks"][0]["torch"], states["ranks"][1]["torch"])


@pytest.mark.slow
def test_each_job_of_a_sweep_with_seed_null_gets_its_own_seed(ddp_sweep):
    seeds = [
        json.loads((_job_dir(ddp_sweep, model) / "metrics.json").read_text())["seed"]
        for model in MODELS
    ]
    assert all(isinstance(seed, int) and 0 <= seed < 2**31 for seed in seeds)
    assert len(set(seeds)) == len(seeds)


@pytest.mark.slow
@pytest.mark.parametrize("model", MODELS)
def test_ddp_writes_one_report_with_metrics_over_all_ranks(model, ddp_sweep):
    job = _job_dir(ddp_sweep, model)
    assert [p.name for p in ddp_sweep.rglob("metrics.json") if p.parent == job] == ["metrics.json"]
    assert len(list(job.rglob("metrics.json"))) == 1
    assert len(list(job.rglob("confusion_matrix.png"))) == 1
    assert len(list(job.rglob("hparams.yaml"))) == 1  # one logger version, written once
    metrics = json.loads((job / "metrics.json").read_text())
    # test metrics are synced: the confusion matrix covers both ranks' halves of the test set
    matrix = torch.tensor(metrics["test/confusion_matrix"])
    assert matrix.sum() == metrics["data/test"] == 360
    assert metrics["test/acc"] == pytest.approx(matrix.trace().item() / 360, abs=1e-6)
    # images counted over both ranks: STEPS steps x 2 ranks x (labeled + unlabeled) batches
    assert metrics["train/images_seen"] % (STEPS * 2 * DATA["batch_size"]) == 0


@pytest.mark.slow
def test_failed_ddp_job_is_recorded_and_the_main_process_goes_on(tmp_path):
    # the failing job of conftest's tiny sweep under DDP: a NaN loss in epoch 1 on both ranks.
    # The worker rank records its error and exits quietly, so Lightning does not kill rank 0
    # (which would end the whole sweep): rank 0 records failure.json and the sweep ends normally.
    sweep = tmp_path / "sweep"
    failing = [arg.replace("1e30,1", "1e30") for arg in TINY_SWEEP_ARGS]
    run_gendisc(*failing, "trainer=ddp_sim", f"hydra.sweep.dir={sweep}", cwd=PROJECT_ROOT)
    for name in ("failure.json", "failure_rank1.json"):
        record = json.loads((sweep / "0" / name).read_text())
        assert record["error_type"] == "NonFiniteLossError", name
        assert "epoch 1" in record["error"]
    assert not (sweep / "0" / "metrics.json").exists()
    assert (sweep / "0" / "checkpoints" / "last.ckpt").is_file()
    assert (sweep / "multirun.yaml").is_file()


def test_in_process_multi_process_training_is_refused_clearly(make_cfg):
    from gendisc.errors import ConfigError
    from gendisc.train import train

    with pytest.raises(ConfigError, match="run it with gendisc-train"):
        train(make_cfg(["model=classifier", "trainer=ddp_sim", "debug=fdr"]))


def test_the_seed_used_is_the_configured_one_or_rank_zeros_or_the_checkpoints(
    make_cfg, monkeypatch, tmp_path
):
    from gendisc.errors import ConfigError
    from gendisc.utils import distributed

    for name in (distributed.DDP_RUN_DIR_ENV, distributed.DDP_SEED_ENV, "RANK", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    cfg = make_cfg(["seed=7"])
    assert distributed.resolve_seed(cfg) == 7 == cfg.seed
    # seed=null: a fresh seed, written into the config (loggers, checkpoints, metrics.json)
    chosen = [distributed.resolve_seed(make_cfg(["seed=null"])) for _ in range(3)]
    assert len(set(chosen)) == 3 and all(0 <= seed < 2**31 for seed in chosen)
    cfg = make_cfg(["seed=null"])
    seed = distributed.resolve_seed(cfg)
    assert cfg.seed == seed
    # a worker rank started by rank 0 takes rank 0's seed
    monkeypatch.setenv(distributed.DDP_RUN_DIR_ENV, str(tmp_path))
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv(distributed.DDP_SEED_ENV, "1234")
    assert distributed.resolve_seed(make_cfg(["seed=null"])) == 1234
    assert distributed.resolve_seed(make_cfg(["seed=5"])) == 5
    for name in (distributed.DDP_RUN_DIR_ENV, distributed.DDP_SEED_ENV, "LOCAL_RANK"):
        monkeypatch.delenv(name)
    # resuming with seed=null: the seed stored in the checkpoint
    torch.save({"gendisc_config": {"seed": 77}}, tmp_path / "old.ckpt")
    assert distributed.resolve_seed(make_cfg(["seed=null", f"ckpt_path={tmp_path}/old.ckpt"])) == 77
    with pytest.raises(ConfigError, match=r"seed=-1: give an integer from 0 to 4294967295"):
        distributed.resolve_seed(make_cfg(["seed=-1"]))
