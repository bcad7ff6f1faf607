"""Benchmark: ssl_gan under gendisc against a naive plain-PyTorch loop of the same step.

One step of ``experiment=salimans_mnist`` (Salimans et al. 2016, MNIST): D's forward and backward
on 100 labeled, 100 unlabeled and 100 generated images and its Adam step, the moving average of
D's weights, then one G step through the frozen D (feature matching against a second unlabeled
batch). Measured in one process, in interleaved rounds (A B C D A B C D ...), medians reported:

- A ``framework``: the real composed config (``experiment=salimans_mnist``, default settings)
  run by Lightning's ``Trainer.fit`` with ``limit_train_batches``; the time from the start of
  the first step after the warm-up to the end of the last step (Lightning's loop and the data
  batches included, set-up excluded);
- B ``framework bf16``: the same with ``trainer.precision=bf16-mixed``;
- C ``naive``: the loop a user would write in plain PyTorch: separate D passes, torch's own
  weight-norm parametrization, ``torch.optim.Adam``, a per-parameter EMA loop, float32;
- D the machine's matrix-product rates in float32 and bfloat16, timed on the GEMMs of one step
  (this model's shapes and layouts), which give the step's matmul floor and each variant's share;
- E (CPU) one more ``framework`` fit that times only its matrix products and Gaussian draws
  (``OpClock``): the step by op, and the ratio those two alone would allow.

F (``--members 1,2,4``, experiments/bench_members.py) N runs trained as one model (members):
run-steps per second for each N next to the framework's (separate runs, one at a time).

The last four lines are ``bf16_epoch_s``, ``epoch_s``, ``naive_epoch_s`` (seconds per 600-step
epoch) and ``ratio`` (epoch_s / naive_epoch_s); ``nan`` when a variant was skipped or failed.

    make bench                                   # or: .venv/bin/python experiments/bench_ssl_gan.py
    make bench ARGS="--steps 50 --rounds 3 --threads 1"
    python experiments/bench_ssl_gan.py --device cuda    # on a GPU machine

It uses only the installed ``gendisc``'s configs and its ``build`` / Trainer interface, so it
also benchmarks another checkout: ``PYTHONPATH=<checkout>/src python experiments/bench_ssl_gan.py``.
"""

from __future__ import annotations

import argparse
import itertools
import logging
import math
import os
import platform
import resource
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

import hydra
import lightning as L
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from lightning import Callback
from omegaconf import DictConfig
from torch import Tensor, nn
from torch.nn.utils.parametrizations import weight_norm
from torch.utils._python_dispatch import TorchDispatchMode

try:
    from gendisc.utils.build import build
except (
    ModuleNotFoundError
):  # checkouts before 2026-12-02 (PYTHONPATH=<old checkout>/src) had it here
    from gendisc.train import build
from gendisc.utils.config import PROJECT_ROOT, register_resolvers

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA_DIR = os.environ.get("GENDISC_DATA_DIR") or str(ROOT.parent / "shared" / "data")
EPOCH_STEPS = 600  # the paper's MNIST epoch: 60k unlabeled images in batches of 100

# the paper's MNIST nets (REFERENCE.md section 1), for the naive loop and the FLOP count
D_WIDTHS = (784, 1000, 500, 250, 250, 250, 10)
G_WIDTHS = (100, 500, 500, 784)
BATCH = 100


# ------------------------------------------------------------------------------- framework
def compose_cfg(overrides: Sequence[str] = (), data_dir: str = DEFAULT_DATA_DIR) -> DictConfig:
    """The composed ``experiment=salimans_mnist`` config of the imported gendisc's ``conf/``."""
    register_resolvers()
    out = Path(tempfile.gettempdir()) / "gendisc-bench"
    with initialize_config_dir(config_dir=str(PROJECT_ROOT / "conf"), version_base="1.3"):
        return compose(
            config_name="train",
            overrides=[
                "experiment=salimans_mnist",
                f"paths.data_dir={data_dir}",
                f"paths.output_dir={out}",
                *overrides,
            ],
        )


class StepTimer(Callback):
    """Wall time from the start of batch ``warmup`` to the end of the last batch of the fit."""

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.start = self.end = math.nan
        self.steps = 0

    @staticmethod
    def _sync(pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize(pl_module.device)

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self._sync(pl_module)
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self._sync(pl_module)
            self.end = time.perf_counter()
            self.steps = batch_idx + 1 - self.warmup

    def seconds_per_step(self) -> float:
        return (self.end - self.start) / self.steps if self.steps else math.nan


def make_trainer(cfg: DictConfig, batches: int, callbacks: list[Callback]) -> L.Trainer:
    """The configured Trainer (accelerator, precision, ...) for one epoch of ``batches`` steps,
    without validation, logger, checkpoints or progress bar."""
    return hydra.utils.instantiate(
        cfg.trainer,
        max_epochs=1,
        min_epochs=1,
        max_steps=-1,
        limit_train_batches=batches,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        logger=False,
        callbacks=callbacks,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )


class Framework:
    """gendisc's module and datamodule from one composed config, fitted again each round."""

    def __init__(self, cfg: DictConfig) -> None:
        self.cfg = cfg
        L.seed_everything(cfg.seed, verbose=False)
        self.datamodule, self.model = build(cfg)

    def fit(self, steps: int, warmup: int, callbacks: list[Callback]) -> None:
        """One ``Trainer.fit`` of ``warmup + steps`` training steps with ``callbacks``."""
        trainer = make_trainer(self.cfg, steps + warmup, callbacks)
        trainer.fit(self.model, datamodule=self.datamodule)

    def __call__(self, steps: int, warmup: int) -> float:
        """Seconds per step of ``steps`` steps after ``warmup`` untimed ones."""
        timer = StepTimer(warmup)
        self.fit(steps, warmup, [timer])
        return timer.seconds_per_step()


# ---------------------------------------------------------------------------- step breakdown
MATMUL_OPS = {torch.ops.aten.mm.default, torch.ops.aten.addmm.default, torch.ops.aten.bmm.default}
NOISE_OPS = {torch.ops.aten.normal_.default, torch.ops.aten.randn.default}


class OpClock(TorchDispatchMode):
    """Wall time and FLOPs of the matrix products and the Gaussian draws run under it (CPU).

    Only those calls are timed, each around its own kernel, so the Python dispatch this mode
    adds to every other op does not enter the figures; the rest of the step is taken from an
    uninstrumented timing."""

    def __init__(self) -> None:
        super().__init__()
        self.seconds = {"matmul": 0.0, "noise": 0.0}
        self.flops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kind = "matmul" if func in MATMUL_OPS else "noise" if func in NOISE_OPS else None
        if kind is None:
            return func(*args, **(kwargs or {}))
        start = time.perf_counter()
        out = func(*args, **(kwargs or {}))
        self.seconds[kind] += time.perf_counter() - start
        if kind == "matmul":
            a, b = args[-2], args[-1]  # addmm(bias, a, b), mm(a, b), bmm(a, b)
            self.flops += 2 * a.numel() * b.shape[-1]
        return out


class StepsUnder(Callback):
    """Runs a context manager (``OpClock``, ``torch.profiler.profile``...) from the start of
    batch ``warmup`` to the end of the fit's last batch, and times those steps (wall)."""

    def __init__(self, warmup: int, context: AbstractContextManager) -> None:
        self.warmup = warmup
        self.context = context
        self.steps = 0
        self.start = self.end = math.nan
        self.active = False

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == self.warmup:
            self.context.__enter__()
            self.active = True
            self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= self.warmup:
            self.steps = batch_idx + 1 - self.warmup
            if batch_idx + 1 == trainer.num_training_batches:
                self.end = time.perf_counter()
                self.stop()

    def stop(self) -> None:
        """Leave the context (once; also when the fit stopped early)."""
        if self.active:
            self.context.__exit__(None, None, None)
            self.active = False


def step_breakdown(framework: Framework, steps: int, warmup: int) -> dict[str, float]:
    """Seconds per step in the matrix products and in the Gaussian draws of ``framework``'s
    step, and the products' achieved GFLOP/s (one extra fit of ``steps`` steps, CPU)."""
    clock = OpClock()
    callback = StepsUnder(warmup, clock)
    try:
        framework.fit(steps, warmup, [callback])
    finally:
        callback.stop()
    n = max(callback.steps, 1)
    matmul_s = clock.seconds["matmul"] / n
    return {
        "matmul_s": matmul_s,
        "noise_s": clock.seconds["noise"] / n,
        "matmul_gflops": clock.flops / n / matmul_s / 1e9 if matmul_s else math.nan,
    }


# ----------------------------------------------------------------------------- naive loop
def _wn_linear(n_in: int, n_out: int, train_scale: bool = True, bias: bool = True) -> nn.Module:
    layer = nn.Linear(n_in, n_out, bias=bias)
    nn.init.normal_(layer.weight, std=0.1)
    if bias:
        nn.init.zeros_(layer.bias)
    layer = weight_norm(layer)
    layer.parametrizations.weight.original0.requires_grad_(train_scale)
    return layer


class NaiveD(nn.Module):
    """784-1000-500-250-250-250-10, weight norm, ReLU, Gaussian noise; returns logits and the
    last hidden features."""

    def __init__(self, input_noise: float = 0.6, hidden_noise: float = 0.5) -> None:
        super().__init__()
        self.input_noise, self.hidden_noise = input_noise, hidden_noise
        pairs = _layers(D_WIDTHS[:-1])
        self.hidden = nn.ModuleList(_wn_linear(a, b, train_scale=False) for a, b in pairs)
        self.head = _wn_linear(D_WIDTHS[-2], D_WIDTHS[-1])

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        h = x.flatten(1)
        h = h + self.input_noise * torch.randn_like(h)
        for layer in self.hidden:
            h = F.relu(layer(h))
            h = h + self.hidden_noise * torch.randn_like(h)
        return self.head(h), h


class NaiveG(nn.Module):
    """z (100-d U(0,1)) -> [dense 500, batch norm, softplus] x 2 -> weight-norm dense 784,
    2 * sigmoid - 1."""

    def __init__(self) -> None:
        super().__init__()
        a, b, c, d = G_WIDTHS
        self.net = nn.Sequential(
            nn.Linear(a, b, bias=False),
            nn.BatchNorm1d(b),
            nn.Softplus(),
            nn.Linear(b, c, bias=False),
            nn.BatchNorm1d(c),
            nn.Softplus(),
            _wn_linear(c, d),
        )

    def forward(self, n: int, device: torch.device) -> Tensor:
        z = torch.rand(n, G_WIDTHS[0], device=device)
        return (2 * torch.sigmoid(self.net(z)) - 1).view(n, 1, 28, 28)


@torch.no_grad()
def _naive_data_init(d: NaiveD, x: Tensor) -> None:
    """Data-dependent init of D's weight-norm layers: unit variance, zero mean per unit."""
    h = x.flatten(1)
    for layer in [*d.hidden, d.head]:
        t = layer(h)
        mean, std = t.mean(0), t.std(0) + 1e-6
        layer.parametrizations.weight.original0.div_(std.unsqueeze(1))
        layer.bias.copy_(-mean / std)
        h = F.relu(layer(h))


class Naive:
    """The plain-PyTorch loop on MNIST's training images, float32."""

    def __init__(self, cfg: DictConfig, device: torch.device) -> None:
        torch.manual_seed(cfg.seed)
        datamodule, _ = build(cfg)  # only for the images (uint8) and the labeled set
        self.device = device
        self.images = datamodule.train_images.to(device)
        self.labels = datamodule.train_labels.to(device)
        self.labeled = datamodule.labeled_index.to(device)
        self.pool = datamodule.unlabeled_index.to(device)
        self.d, self.g = NaiveD().to(device), NaiveG().to(device)
        _naive_data_init(self.d, self._images(self.pool[:500]))
        self.d_params = [p for p in self.d.parameters() if p.requires_grad]
        self.ema = [p.detach().clone() for p in self.d.parameters()]
        self.d_opt = torch.optim.Adam(self.d_params, lr=0.003, betas=(0.5, 0.999))
        self.g_opt = torch.optim.Adam(self.g.parameters(), lr=0.003, betas=(0.5, 0.999))

    def _images(self, index: Tensor) -> Tensor:
        return self.images[index].float() / 127.5 - 1

    def step(self) -> None:
        lab = self.labeled[torch.randint(len(self.labeled), (BATCH,), device=self.device)]
        unl = self.pool[torch.randint(len(self.pool), (BATCH,), device=self.device)]
        unl2 = self.pool[torch.randint(len(self.pool), (BATCH,), device=self.device)]
        x_lab, y_lab = self._images(lab), self.labels[lab]
        x_unl, x_unl2 = self._images(unl), self._images(unl2)

        with torch.no_grad():
            fake = self.g(BATCH, self.device)
        logits_lab, _ = self.d(x_lab)
        logits_unl, _ = self.d(x_unl)
        logits_fake, _ = self.d(fake)
        lse_unl, lse_fake = logits_unl.logsumexp(1), logits_fake.logsumexp(1)
        loss_unl = 0.5 * (
            -lse_unl.mean() + F.softplus(lse_unl).mean() + F.softplus(lse_fake).mean()
        )
        d_loss = F.cross_entropy(logits_lab, y_lab) + loss_unl
        self.d_opt.zero_grad()
        d_loss.backward()
        self.d_opt.step()
        with torch.no_grad():
            for avg, p in zip(self.ema, self.d.parameters(), strict=True):
                avg.mul_(0.9999).add_(p, alpha=1e-4)

        for p in self.d_params:
            p.requires_grad_(False)
        _, fake_features = self.d(self.g(BATCH, self.device))
        with torch.no_grad():
            _, real_features = self.d(x_unl2)
        g_loss = (fake_features.mean(0) - real_features.mean(0)).square().mean()
        self.g_opt.zero_grad()
        g_loss.backward()
        self.g_opt.step()
        for p in self.d_params:
            p.requires_grad_(True)

    def __call__(self, steps: int, warmup: int) -> float:
        self.d.train()
        self.g.train()
        start = math.nan
        for i in range(steps + warmup):
            if i == warmup:
                _sync(self.device)
                start = time.perf_counter()
            self.step()
        _sync(self.device)
        return (time.perf_counter() - start) / steps


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------ FLOPs and rates
@dataclass(frozen=True)
class Gemm:
    """One matrix product of a dense layer (N examples, ``n_in`` -> ``n_out``): the forward
    x @ W^T, the input gradient dy @ W or the weight gradient dy^T @ x."""

    kind: str  # forward | grad_input | grad_weight
    n: int
    n_in: int
    n_out: int

    @property
    def flops(self) -> int:
        return 2 * self.n * self.n_in * self.n_out


def _layers(widths: Sequence[int]) -> list[tuple[int, int]]:
    return list(itertools.pairwise(widths))


def step_gemms(batch: int = BATCH) -> dict[str, list[Gemm]]:
    """The matrix products of one step, by part, counted from the layer shapes.

    D step: G's forward (no grad) on ``batch`` latents; D's forward on 3 * ``batch`` images
    (labeled, unlabeled, generated; one pass of 300 rows, the same FLOPs as three of 100) and its
    backward: weight gradients of every layer, input gradients of every layer but the first.
    G step: G's forward, D's forward on the generated and on the second unlabeled batch
    (features, no grad), the backward through the frozen D's hidden layers (input gradients
    only; the head is not in the loss) and G's backward (weight gradients of every layer, input
    gradients of every layer but the first).
    """
    d, g = _layers(D_WIDTHS), _layers(G_WIDTHS)
    n3 = 3 * batch
    d_step = [Gemm("forward", batch, a, b) for a, b in g]
    d_step += [Gemm("forward", n3, a, b) for a, b in d]
    d_step += [Gemm("grad_weight", n3, a, b) for a, b in d]
    d_step += [Gemm("grad_input", n3, a, b) for a, b in d[1:]]
    g_step = [Gemm("forward", batch, a, b) for a, b in g]
    g_step += [Gemm("forward", batch, a, b) for a, b in d] * 2
    g_step += [Gemm("grad_input", batch, a, b) for a, b in d[:-1]]
    g_step += [Gemm("grad_weight", batch, a, b) for a, b in g]
    g_step += [Gemm("grad_input", batch, a, b) for a, b in g[1:]]
    return {"D step": d_step, "G step": g_step}


def gemm_seconds(
    gemms: list[Gemm], dtype: torch.dtype, device: torch.device, budget_s: float = 1.0
) -> float:
    """Median wall time of one pass over ``gemms`` (each done as autograd does it), from
    passes repeated for about ``budget_s`` seconds (3 to 20 passes)."""
    calls: list[Callable[[], Tensor]] = []
    for gm in gemms:
        x = torch.randn(gm.n, gm.n_in, device=device, dtype=dtype)
        w = torch.randn(gm.n_out, gm.n_in, device=device, dtype=dtype)
        dy = torch.randn(gm.n, gm.n_out, device=device, dtype=dtype)
        if gm.kind == "forward":
            calls.append(lambda x=x, w=w: F.linear(x, w))
        elif gm.kind == "grad_input":
            calls.append(lambda dy=dy, w=w: dy @ w)
        else:
            calls.append(lambda dy=dy, x=x: dy.t() @ x)
    for call in calls:  # warm-up
        call()
    times: list[float] = []
    while len(times) < 20 and (len(times) < 3 or sum(times) < budget_s):
        _sync(device)
        start = time.perf_counter()
        for call in calls:
            call()
        _sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def native_bf16(device: torch.device) -> bool:
    """Whether bfloat16 matrix products run natively (CUDA, or a CPU with AVX512-BF16/AMX)."""
    if device.type == "cuda":
        return True
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# ----------------------------------------------------------------------------------- main
@dataclass
class Variant:
    name: str
    run: Callable[[int, int], float] | None
    times: list[float] = field(default_factory=list)
    error: str = ""
    peak_mb: float = math.nan


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _fmt(seconds: float) -> str:
    return "nan" if math.isnan(seconds) else f"{seconds:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=100, help="timed steps per round")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds per variant")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--data-dir", default=DEFAULT_DATA_DIR)
    parser.add_argument("--skip-naive", action="store_true")
    parser.add_argument("--skip-bf16", action="store_true")
    parser.add_argument(
        "--bf16-steps",
        type=int,
        default=None,
        help="timed steps of the bf16 variant (default: --steps; a tenth of it, at least 10, "
        "where bf16 matrix products are emulated: a CPU without AVX512-BF16/AMX)",
    )
    parser.add_argument("--skip-rates", action="store_true", help="no matmul-rate timing")
    parser.add_argument(
        "--skip-breakdown", action="store_true", help="no timing of the step's products and noise"
    )
    parser.add_argument(
        "--members",
        default="1,2,4",
        help="group sizes for the members section (N runs as one model; '' skips it)",
    )
    parser.add_argument("--members-steps", type=int, default=20, help="timed steps per round")
    parser.add_argument(
        "--members-rng", default="member", help="members' random streams: member, shared or both"
    )
    parser.add_argument("overrides", nargs="*", help="extra config overrides for the framework")
    args = parser.parse_args()
    for name in ("lightning.pytorch", "lightning.fabric"):  # no per-fit banners
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.steps < 1 or args.rounds < 1 or args.warmup < 1:
        parser.error("--steps, --rounds and --warmup must be >= 1")
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        parser.error("--device cuda: torch sees no CUDA device")

    base = [f"trainer.accelerator={'gpu' if device.type == 'cuda' else 'cpu'}", *args.overrides]
    cfg = compose_cfg(base, args.data_dir)
    variants = [Variant("framework", Framework(cfg))]
    bf16 = Variant("framework bf16", None)
    if args.skip_bf16:
        bf16.error = "skipped (--skip-bf16)"
    else:
        bf16.run = Framework(compose_cfg([*base, "trainer.precision=bf16-mixed"], args.data_dir))
    variants.append(bf16)
    bf16_steps = args.bf16_steps or (
        args.steps if native_bf16(device) else min(args.steps, max(10, args.steps // 10))
    )
    steps_of = {"framework bf16": bf16_steps}
    naive = Variant("naive", None if args.skip_naive else Naive(cfg, device))
    naive.error = "skipped (--skip-naive)" if args.skip_naive else ""
    variants.append(naive)

    parts = step_gemms()
    gemms = [gm for part in parts.values() for gm in part]
    flops = sum(gm.flops for gm in gemms)
    rate_times: dict[torch.dtype, list[float]] = {torch.float32: [], torch.bfloat16: []}

    for _ in range(args.rounds):
        for variant in variants:
            if variant.run is None:
                continue
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            try:
                steps = steps_of.get(variant.name, args.steps)
                variant.times.append(variant.run(steps, args.warmup))
            except Exception as error:  # reported, and the variant is dropped
                variant.error = f"{type(error).__name__}: {error}".splitlines()[0][:300]
                variant.run = None
                continue
            if device.type == "cuda":
                peak = torch.cuda.max_memory_allocated(device) / 2**20
                variant.peak_mb = max(peak, 0 if math.isnan(variant.peak_mb) else variant.peak_mb)
        if not args.skip_rates:
            for dtype, times in rate_times.items():
                times.append(gemm_seconds(gemms, dtype, device))

    members = []
    if args.members:
        from bench_members import bench_members

        members = bench_members(
            [int(n) for n in args.members.split(",")],
            lambda overrides: compose_cfg([*base, *overrides], args.data_dir),
            steps=args.members_steps,
            warmup=args.warmup,
            rounds=min(args.rounds, 3),
            rngs=args.members_rng.split(","),
        )

    breakdown = None
    if not args.skip_breakdown and device.type == "cpu" and variants[0].run is not None:
        breakdown = step_breakdown(variants[0].run, args.steps, args.warmup)

    threads = torch.get_num_threads()
    print(
        f"machine: {os.cpu_count()} cores ({cpu_model()}), torch {torch.__version__}, "
        f"{threads} threads, device {device}"
        + (f" ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "")
    )
    print(
        f"step: experiment=salimans_mnist, D on {BATCH} labeled + {BATCH} unlabeled + {BATCH} "
        f"generated images, G through D against a second unlabeled batch; {args.steps} timed "
        f"steps after {args.warmup} warm-up steps x {args.rounds} interleaved rounds, medians"
    )
    if bf16_steps != args.steps and bf16.times:
        print(
            f"bf16: {bf16_steps} timed steps per round"
            + ("" if native_bf16(device) else " (no native bf16 matrix products on this CPU)")
        )
    by_part = ", ".join(
        f"{name} {sum(gm.flops for gm in part) / 1e9:.3f}" for name, part in parts.items()
    )
    print(f"matmul work per step: {flops / 1e9:.3f} GFLOP ({by_part})")
    rates = {
        dtype: flops / statistics.median(times) / 1e9 if times else math.nan
        for dtype, times in rate_times.items()
    }
    rate_of = {"framework": rates[torch.float32], "framework bf16": rates[torch.bfloat16]}
    rate_of["naive"] = rates[torch.float32]
    if not args.skip_rates:
        print(
            "matmul rate in this step's shapes: "
            + ", ".join(
                f"{name} {rate:.1f} GFLOP/s (floor {EPOCH_STEPS * flops / rate / 1e9:.1f} s/epoch)"
                for name, rate in (
                    ("float32", rates[torch.float32]),
                    ("bf16", rates[torch.bfloat16]),
                )
            )
        )
    print(
        f"{'variant':<16}{'steps/s':>9}{'s/epoch':>9}{'GFLOP/s':>9}{'of rate':>9}  rounds (s/epoch)"
    )
    epoch_s: dict[str, float] = {}
    for variant in variants:
        if not variant.times:
            epoch_s[variant.name] = math.nan
            print(f"{variant.name:<16}  not measured: {variant.error}")
            continue
        per_step = statistics.median(variant.times)
        epoch_s[variant.name] = EPOCH_STEPS * per_step
        achieved = flops / per_step / 1e9
        share = achieved / rate_of[variant.name]
        rounds = " ".join(f"{EPOCH_STEPS * t:.1f}" for t in variant.times)
        share_text = "-" if math.isnan(share) else f"{100 * share:.0f}%"
        print(
            f"{variant.name:<16}{1 / per_step:>9.2f}{EPOCH_STEPS * per_step:>9.2f}"
            f"{achieved:>9.1f}{share_text:>9}  {rounds}"
        )
        if variant.error:
            print(f"{'':<16}  failed in a later round: {variant.error}")
    if breakdown is not None and not math.isnan(epoch_s["framework"]):
        per_step = epoch_s["framework"] / EPOCH_STEPS
        matmul_s, noise_s = breakdown["matmul_s"], breakdown["noise_s"]
        rest_s = per_step - matmul_s - noise_s
        print(
            f"framework step (float32, one more fit of {args.steps} steps, by op): matrix "
            f"products {1000 * matmul_s:.1f} ms at {breakdown['matmul_gflops']:.1f} GFLOP/s, "
            f"Gaussian noise {1000 * noise_s:.1f} ms, the rest {1000 * rest_s:.1f} ms "
            f"(of the median {1000 * per_step:.1f} ms)"
        )
        if not math.isnan(epoch_s["naive"]):
            floor = EPOCH_STEPS * (matmul_s + noise_s) / epoch_s["naive"]
            print(f"ratio with the rest at zero (products and noise alone): {floor:.3f}")
    host_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if device.type == "cuda":
        gpu = ", ".join(f"{v.name} {v.peak_mb:.0f} MB" for v in variants if v.times)
        print(f"peak memory: GPU {gpu}; host RSS {host_mb:.0f} MB (whole process)")
    else:
        print(f"peak memory: host RSS {host_mb:.0f} MB (whole process, all variants)")
    if members:
        from bench_members import print_members

        print_members(members, epoch_s["framework"] / EPOCH_STEPS, args.members_steps)
    fw, fw16, nv = epoch_s["framework"], epoch_s["framework bf16"], epoch_s["naive"]
    if not bf16.times:
        print(f"bf16-mixed not measured: {bf16.error}")
    print(f"bf16 / naive: {fw16 / nv:.3f}")
    print(f"bf16_epoch_s: {_fmt(fw16)}")
    print(f"epoch_s: {_fmt(fw)}")
    print(f"naive_epoch_s: {_fmt(nv)}")
    print(f"ratio: {fw / nv:.3f}")


if __name__ == "__main__":
    main()
