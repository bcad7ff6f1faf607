"""Special layers: Gaussian noise, minibatch discrimination, weight normalisation with
data-dependent initialisation, and virtual batch normalisation (Salimans et al. 2016)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendisc.errors import ConfigError

__all__ = [
    "GaussianNoise",
    "MinibatchDiscrimination",
    "VirtualBatchNorm",
    "WeightNormConv2d",
    "WeightNormConvTranspose2d",
    "WeightNormLinear",
    "activation_layer",
    "as_shape",
    "data_dependent_init",
    "has_batch_dependent_layers",
    "mark_initialized",
    "needs_data_init",
    "weight_norm_once",
]


def as_shape(shape: Sequence[int]) -> tuple[int, ...]:
    """Convert a shape given as list/tuple/ListConfig into a tuple of ints."""
    return tuple(int(v) for v in shape)


_ACTIVATIONS = {
    "relu": lambda: nn.ReLU(),
    "leaky_relu": lambda: nn.LeakyReLU(0.2),
    "elu": lambda: nn.ELU(),
    "gelu": lambda: nn.GELU(),
    "silu": lambda: nn.SiLU(),
    "softplus": lambda: nn.Softplus(),
    "tanh": lambda: nn.Tanh(),
}


def activation_layer(name: str) -> nn.Module:
    """A fresh activation module by name (``leaky_relu`` uses slope 0.2, as in the paper)."""
    try:
        return _ACTIVATIONS[name]()
    except KeyError:
        raise ConfigError(
            f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}"
        ) from None


class GaussianNoise(nn.Module):
    """Add N(0, sigma^2) noise in training mode; identity in eval mode or when sigma == 0."""

    def __init__(self, sigma: float) -> None:
        super().__init__()
        if sigma < 0:
            raise ConfigError(f"GaussianNoise sigma must be >= 0, got {sigma}")
        self.sigma = float(sigma)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.sigma == 0:
            return x
        # drawn in float32 and cast for lower precisions: torch's CPU generator is slower in bf16
        noise = torch.randn(
            x.shape, device=x.device, dtype=torch.promote_types(x.dtype, torch.float32)
        )
        return torch.add(x, noise.to(x.dtype), alpha=self.sigma)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"


class _DataInitModule(nn.Module):
    """A layer with a data-dependent init: the ``initialized`` buffer (False until the init ran,
    saved in the state dict) and a Python-side cache of it, so that a forward needs no device
    sync. Subclasses call ``_setup_init`` in ``__init__`` and ``_mark_initialized`` after the
    init."""

    initialized: Tensor
    data_init: bool
    _init_seen: bool

    def _setup_init(self, data_init: bool) -> None:
        """Register ``initialized`` (True when ``data_init`` is off: nothing to wait for)."""
        self.data_init = bool(data_init)
        self.register_buffer("initialized", torch.tensor(not self.data_init))
        self._init_seen = False  # Python-side cache to avoid a device sync per forward

    def is_initialized(self) -> bool:
        """Whether the data-dependent init has run (or is off, or was loaded)."""
        if not self._init_seen:
            self._init_seen = bool(self.initialized)
        return self._init_seen

    def reset_initialization(self) -> None:
        """Mark the layer uninitialised so that its next initialising forward re-runs the init."""
        self.initialized.fill_(False)
        self._init_seen = False

    def _mark_initialized(self) -> None:
        self.initialized.fill_(True)
        self._init_seen = True

    def _load_from_state_dict(self, *args: Any, **kwargs: Any) -> None:
        super()._load_from_state_dict(*args, **kwargs)
        self._init_seen = False


class MinibatchDiscrimination(_DataInitModule):
    """Minibatch discrimination (Salimans et al. 2016, section 3.2) with the parametrisation,
    bias and data-dependent init of the authors' ``MinibatchLayer``.

    For features f (N, A): M_i = f_i W in R^{B x C} with
    W[a, b, c] = theta[a, b, c] * exp(s[b, c]) / ||theta[:, b, c]||_2,
    c_b(i, j) = exp(-||M_{i,b} - M_{j,b}||_1) and o(x_i)_b = sum_{j != i} c_b(i, j) + bias_b.
    Returns ``cat([f, o], dim=1)`` of width A + B.

    The paper gives only the formula; as in the authors' code, each (kernel, dimension) column of
    theta (~ N(0, ``init_std``^2), 0.05) is normalised over the inputs and scaled by exp of a
    learned log scale s (init 0), so the distance scale is one parameter per column rather than
    the norm of a large tensor, and each kernel has a bias (init -1). Data-dependent init (the
    authors' ``init=True`` pass), on the first training forward while the ``initialized``
    buffer is False: with d_b the mean over i of min_{j != i} ||M_{i,b} - M_{j,b}||_1 on the
    batch, s[b, :] -= log(d_b / 2), which rescales the distances so that an example's nearest
    neighbour lies at distance 2 on average (c about exp(-2), neither 0 nor 1, where the
    gradient is useful), then bias_b = -mean_i sum_{j != i} c_b(i, j), which centres o on
    that batch. ``data_init=False``: no init (s = 0, bias = -1).

    ``forward(f, reference=r)`` compares each row of f with the rows of r (features of a fixed
    reference batch) instead of with the other rows of f: o(x_i)_b = sum_j c_b(i, r_j) + bias_b
    (no self term to drop); the owning net uses this in eval mode so that an example's output
    does not depend on its evaluation batch. ``reference_shape`` (n, *input shape) adds the
    buffers ``reference`` (n reference inputs of the owning net, filled by its
    ``set_minibatch_reference``) and ``reference_set``; the layer only stores them, so that
    they live, load and transfer with the layer.
    """

    initialized: Tensor
    reference: Tensor
    reference_set: Tensor

    def __init__(
        self,
        in_features: int,
        num_kernels: int = 100,
        kernel_dim: int = 5,
        init_std: float = 0.05,
        data_init: bool = True,
        reference_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        self.in_features = int(in_features)
        self.num_kernels = int(num_kernels)
        self.kernel_dim = int(kernel_dim)
        if min(self.in_features, self.num_kernels, self.kernel_dim) < 1:
            raise ConfigError(
                "minibatch discrimination needs kernels >= 1 and dim >= 1, got "
                f"minibatch_discrimination.kernels={num_kernels}, .dim={kernel_dim}"
            )
        self.out_features = self.in_features + self.num_kernels
        self.theta = nn.Parameter(
            torch.randn(self.in_features, self.num_kernels, self.kernel_dim) * init_std
        )
        self.log_weight_scale = nn.Parameter(torch.zeros(self.num_kernels, self.kernel_dim))
        self.bias = nn.Parameter(torch.full((self.num_kernels,), -1.0))
        self._setup_init(data_init)
        if reference_shape is not None:
            shape = as_shape(reference_shape)
            self.register_buffer("reference", torch.zeros(shape))
            self.register_buffer("reference_set", torch.tensor(False))

    @property
    def weight(self) -> Tensor:
        """The effective W (A, B, C): theta normalised per column, times exp(log_weight_scale)."""
        norm = torch.linalg.vector_norm(self.theta, dim=0, keepdim=True).clamp_min(1e-12)
        return self.theta * (self.log_weight_scale.exp().unsqueeze(0) / norm)

    def _project(self, f: Tensor, weight: Tensor) -> Tensor:
        """(B, N, C): M_{i,b} for every kernel b and example i."""
        m = (f @ weight.flatten(1)).view(f.shape[0], self.num_kernels, self.kernel_dim)
        return m.transpose(0, 1)

    @torch.no_grad()
    def _initialize(self, f: Tensor) -> None:
        n = f.shape[0]
        if n < 2:
            raise ValueError(
                "minibatch discrimination's data-dependent init needs a batch of at least 2 "
                f"examples, got {n}"
            )
        m = self._project(f, self.weight)
        dist = torch.cdist(m, m, p=1.0)  # (B, N, N)
        eye = torch.eye(n, dtype=torch.bool, device=f.device)
        half_mean_min = 0.5 * dist.masked_fill(eye, float("inf")).amin(dim=2).mean(dim=1)
        half_mean_min = half_mean_min.clamp_min(1e-8)  # (B,)
        self.log_weight_scale.sub_(half_mean_min.log().unsqueeze(1))
        c = torch.exp(-dist / half_mean_min.view(-1, 1, 1)).masked_fill(eye, 0.0)
        self.bias.copy_(-c.sum(dim=2).mean(dim=1))
        self._mark_initialized()

    def forward(self, f: Tensor, reference: Tensor | None = None) -> Tensor:
        if reference is None and self.training and not self.is_initialized():
            self._initialize(f)
        weight = self.weight
        m = self._project(f, weight)  # (B, N, C)
        if reference is None:
            dist = torch.cdist(m, m, p=1.0)  # (B, N, N): L1 distances per kernel
            eye = torch.eye(f.shape[0], dtype=torch.bool, device=f.device)
            c = torch.exp(-dist).masked_fill(eye, 0.0)
        else:
            c = torch.exp(-torch.cdist(m, self._project(reference, weight), p=1.0))  # (B, N, R)
        o = c.sum(dim=2).transpose(0, 1) + self.bias  # (N, B)
        return torch.cat([f, o], dim=1)

    def extra_repr(self) -> str:
        return (
            f"in_features={self.in_features}, num_kernels={self.num_kernels}, "
            f"kernel_dim={self.kernel_dim}"
        )


class _WeightNormBase(_DataInitModule):
    """Weight normalisation w = g * v / ||v|| (one norm per output unit) with bias b.

    Data-dependent init (Salimans & Kingma 2016): while the ``initialized`` buffer is False,
    ``forward`` computes t = the pre-activation with g = 1, b = 0 on the incoming batch, sets
    g = init_scale / std(t) and b = -mean(t) * g per unit (statistics over the batch and, for
    convolutions, spatial positions), marks the layer initialised and returns the normalised
    output. ``train_scale=False`` freezes g after the init (the authors' hidden layers).
    ``data_init=False`` skips the data-dependent init (g = 1, b = 0).
    """

    _out_dim: int  # dimension of v indexing output units
    v: nn.Parameter
    g: nn.Parameter
    bias: nn.Parameter
    initialized: Tensor

    def _setup(
        self,
        v_shape: tuple[int, ...],
        out_dim: int,
        init_scale: float,
        weight_init_std: float,
        train_scale: bool,
        data_init: bool,
    ) -> None:
        self._out_dim = out_dim
        n_out = v_shape[out_dim]
        self.init_scale = float(init_scale)
        self.v = nn.Parameter(torch.randn(v_shape) * weight_init_std)
        self.g = nn.Parameter(torch.ones(n_out), requires_grad=train_scale)
        self.bias = nn.Parameter(torch.zeros(n_out))
        self._setup_init(data_init)
        self._prepared: Any = None  # set by ``weight_norm_once``
        self._cache_depth = 0

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        raise NotImplementedError

    def _prepare(self) -> Any:
        """What ``_forward_with`` needs from g and v: the effective weight (overridden for dense
        layers). ``weight_norm_once`` computes it once for several passes."""
        return self.weight

    def _forward_with(self, x: Tensor, prepared: Any) -> Tensor:
        """The layer's output from its input and ``_prepare()``'s result."""
        return self._op(x, prepared, self.bias)

    def _unit_view(self, t: Tensor) -> Tensor:
        shape = [1] * self.v.dim()
        shape[self._out_dim] = -1
        return t.view(shape)

    def direction(self) -> Tensor:
        """v / ||v||, normalised per output unit."""
        dims = [d for d in range(self.v.dim()) if d != self._out_dim]
        return self.v / torch.linalg.vector_norm(self.v, dim=dims, keepdim=True).clamp_min(1e-12)

    @property
    def weight(self) -> Tensor:
        """The effective weight g * v / ||v||."""
        return self.direction() * self._unit_view(self.g)

    @torch.no_grad()
    def _initialize(self, x: Tensor) -> None:
        t = self._op(x, self.direction(), None)
        dims = [0, *range(2, t.dim())]
        mean = t.mean(dim=dims)
        std = t.std(dim=dims, unbiased=False).clamp_min(1e-8)
        g = self.init_scale / std
        self.g.copy_(g)
        self.bias.copy_(-mean * g)
        self._mark_initialized()

    def forward(self, x: Tensor) -> Tensor:
        if not self.is_initialized():
            self._initialize(x)
        prepared = self._prepared if self._prepared is not None else self._prepare()
        return self._forward_with(x, prepared)


def _compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype of x's matrix products: autocast's where it is on for x's device."""
    device = x.device.type
    if torch.is_autocast_enabled(device):
        return torch.get_autocast_dtype(device)
    return x.dtype


class _WeightNormDense(torch.autograd.Function):
    """y = (x v^T) * s + b with s = g / ||v||: the weight-norm dense layer with its gradients
    written out. Hand-written because autograd's version of the same maths takes several extra
    passes over the weight matrix (the norm's backward, the sum of two gradient terms):

        dL/dh = dL/dy * s,  dL/dx = dL/dh v,  dL/db = sum_n dL/dy,
        q = sum_n dL/dy * h,  dL/dg = q / ||v||,  dL/dv = dL/dh^T x - (q g / ||v||^3) v.

    ``norm`` is ||v|| and ``vc`` is v in the products' dtype, both computed by the caller
    (``weight_norm_once`` reuses them across passes). Under autocast x and v are used in its
    dtype (bf16) for the forward and backward products; v's gradient is in v's dtype."""

    @staticmethod
    def forward(
        ctx: Any, x: Tensor, v: Tensor, g: Tensor, bias: Tensor, norm: Tensor, vc: Tensor
    ) -> Tensor:
        dtype = _compute_dtype(x)
        xc = x.to(dtype)
        vc = vc if vc.dtype == dtype else v.to(dtype)
        scale = g / norm
        h = xc @ vc.t()
        ctx.save_for_backward(xc, vc, v, h, g, norm, scale)
        ctx.x_dtype = x.dtype
        return torch.addcmul(bias.to(dtype), h, scale.to(dtype))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        xc, vc, v, h, g, norm, scale = ctx.saved_tensors
        need_x, need_v, need_g, need_b = ctx.needs_input_grad[:4]
        grad_y = grad_y.to(h.dtype)
        grad_x = grad_v = grad_g = grad_b = None
        grad_h = grad_y * scale.to(h.dtype)
        if need_x:
            grad_x = (grad_h @ vc).to(ctx.x_dtype)
        if need_v or need_g:
            q = (grad_y * h).sum(0, dtype=norm.dtype)
            if need_g:
                grad_g = q / norm
            if need_v:
                grad_v = (grad_h.t() @ xc).to(v.dtype)
                grad_v.addcmul_(v, (-q * g / norm**3).unsqueeze(1))
        if need_b:
            grad_b = grad_y.sum(0, dtype=norm.dtype)
        return grad_x, grad_v, grad_g, grad_b, None, None


class WeightNormLinear(_WeightNormBase):
    """Weight-normalised dense layer; v ~ N(0, weight_init_std^2) (0.1 as in the MNIST code)."""

    def __init__(
        self,
        in_features: int,
        out_features: int,
        init_scale: float = 1.0,
        weight_init_std: float = 0.1,
        train_scale: bool = True,
        data_init: bool = True,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features = int(in_features), int(out_features)
        self._setup(
            (self.out_features, self.in_features),
            0,
            init_scale,
            weight_init_std,
            train_scale,
            data_init,
        )

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.linear(x, weight, bias)

    @torch.no_grad()
    def _prepare(self) -> tuple[Tensor, Tensor]:
        """||v|| per output unit and v in the products' dtype (autocast's when it is on),
        constants for autograd: ``_WeightNormDense`` differentiates through them analytically."""
        norm = torch.linalg.vector_norm(self.v, dim=1).clamp_min(1e-12)
        return norm, self.v.to(_compute_dtype(self.v))

    def _forward_with(self, x: Tensor, prepared: tuple[Tensor, Tensor]) -> Tensor:
        lead = x.shape[:-1]
        norm, vc = prepared
        y = _WeightNormDense.apply(
            x.reshape(-1, self.in_features), self.v, self.g, self.bias, norm, vc
        )
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return f"{self.in_features}, {self.out_features}, init_scale={self.init_scale}"


class _WeightNormConv(_WeightNormBase):
    """Shared by the weight-normalised 2-d convolutions: sizes, v ~ N(0, weight_init_std^2)
    (0.05 as in the CIFAR code) of shape (out, in, k, k), or (in, out, k, k) for transposed
    ones (``_transposed``; their norm is per output channel, v's dimension 1)."""

    _transposed = False

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        init_scale: float = 1.0,
        weight_init_std: float = 0.05,
        train_scale: bool = True,
        data_init: bool = True,
    ) -> None:
        super().__init__()
        self.in_channels, self.out_channels = int(in_channels), int(out_channels)
        self.kernel_size, self.stride, self.padding = int(kernel_size), int(stride), int(padding)
        k = self.kernel_size
        channels = (self.out_channels, self.in_channels)
        self._setup(
            (*(channels[::-1] if self._transposed else channels), k, k),
            int(self._transposed),
            init_scale,
            weight_init_std,
            train_scale,
            data_init,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
            f"stride={self.stride}, padding={self.padding}, init_scale={self.init_scale}"
        )


class WeightNormConv2d(_WeightNormConv):
    """Weight-normalised 2-d convolution; v ~ N(0, weight_init_std^2) (0.05 as in the CIFAR code)."""

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv2d(x, weight, bias, stride=self.stride, padding=self.padding)


class WeightNormConvTranspose2d(_WeightNormConv):
    """Weight-normalised transposed convolution (v has shape (in, out, k, k); norm per output
    channel), as the last layer of the paper's CIFAR-10 generator."""

    _transposed = True

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        output_padding: int = 0,
        init_scale: float = 1.0,
        weight_init_std: float = 0.05,
        train_scale: bool = True,
        data_init: bool = True,
    ) -> None:
        super().__init__(
            in_channels,
            out_channels,
            kernel_size,
            stride,
            padding,
            init_scale=init_scale,
            weight_init_std=weight_init_std,
            train_scale=train_scale,
            data_init=data_init,
        )
        self.output_padding = int(output_padding)

    def _op(self, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:
        return F.conv_transpose2d(
            x,
            weight,
            bias,
            stride=self.stride,
            padding=self.padding,
            output_padding=self.output_padding,
        )


def _weight_norm_layers(net: nn.Module) -> list[tuple[str, _DataInitModule]]:
    """(name, layer) for every layer of ``net`` with a data-dependent init: the weight-norm
    layers and minibatch discrimination (each has ``initialized``, ``data_init``,
    ``reset_initialization()`` and initialises on a training forward while uninitialised)."""
    return [(n, m) for n, m in net.named_modules() if isinstance(m, _DataInitModule)]


@contextmanager
def weight_norm_once(net: nn.Module) -> Iterator[None]:
    """Inside the block, each initialised weight-norm layer of ``net`` computes its normalised
    weight (``g * v / ||v||``, or the scale ``g / ||v||`` for dense layers) once and reuses it in
    every forward pass (one autograd node whose gradient sums over the passes: the same maths as
    recomputing it per pass). Do not step an optimiser of ``net`` inside the block. Nested
    blocks reuse the outer block's weights."""
    layers = [
        layer
        for _, layer in _weight_norm_layers(net)
        if isinstance(layer, _WeightNormBase) and layer.is_initialized()
    ]
    for layer in layers:
        if layer._cache_depth == 0:
            layer._prepared = layer._prepare()
        layer._cache_depth += 1
    try:
        yield
    finally:
        for layer in layers:
            layer._cache_depth -= 1
            if layer._cache_depth == 0:
                layer._prepared = None


def has_batch_dependent_layers(net: nn.Module) -> bool:
    """Whether an example's output depends on the other examples of its batch in training mode
    (batch norm, virtual batch norm, minibatch discrimination)."""
    kinds = (nn.modules.batchnorm._BatchNorm, VirtualBatchNorm, MinibatchDiscrimination)
    return any(isinstance(m, kinds) for m in net.modules())


def data_dependent_init(net: nn.Module, batch: Tensor, *args: Any, **kwargs: Any) -> None:
    """(Re-)initialise every layer of ``net`` with a data-dependent init (weight norm, minibatch
    discrimination) from one batch.

    Marks the layers built with ``data_init=True`` uninitialised, runs ``net(batch, *args,
    **kwargs)`` once under ``no_grad`` in train mode (so the layers initialise in order, each
    on the output of the already initialised layers below), restores the previous mode and
    raises ``RuntimeError`` if a layer was not reached. Batch-norm running statistics see this
    batch once, as in any training-mode forward.
    """
    layers = _weight_norm_layers(net)
    for _, layer in layers:
        if layer.data_init:
            layer.reset_initialization()
    was_training = net.training
    net.train()
    try:
        with torch.no_grad():
            net(batch, *args, **kwargs)
    finally:
        net.train(was_training)
    missing = [name for name, layer in layers if not bool(layer.initialized)]
    if missing:
        raise RuntimeError(f"data-init layers not reached by the init forward pass: {missing}")


def needs_data_init(net: nn.Module) -> bool:
    """Whether some layer of ``net`` (weight norm, minibatch discrimination) still waits for
    its data-dependent init (False after the init, and after loading a checkpoint that had it)."""
    return any(
        layer.data_init and not bool(layer.initialized) for _, layer in _weight_norm_layers(net)
    )


def mark_initialized(net: nn.Module) -> None:
    """Mark every data-init layer of ``net`` (weight norm, minibatch discrimination)
    initialised, e.g. before loading weights or to skip the init (their initial values)."""
    for _, layer in _weight_norm_layers(net):
        layer._mark_initialized()


class VirtualBatchNorm(nn.Module):
    """Virtual batch normalisation (Salimans et al. 2016, section 3.4) for (N, F) or (N, C, H, W).

    Design: a single forward over ``cat([x_ref, x])``; ``ref_size`` says how many leading rows
    are the fixed reference batch. Reference statistics (mean, mean of squares per feature;
    over rows and spatial positions) come from those rows in the same pass, so gradients flow
    through them. The reference rows are normalised with the reference statistics alone; every
    other example i with mean_i = w * mu_i + (1 - w) * mu_ref and
    meansq_i = w * sq_i + (1 - w) * sq_ref, w = 1 / (ref_size + 1), where mu_i, sq_i are the
    example's own per-channel mean / mean square (over spatial positions; the value itself for
    (N, F)). Examples never see one another. Output = gamma * (x - mean) / sqrt(var + eps) + beta.
    """

    def __init__(self, num_features: int, eps: float = 1e-5, affine: bool = True) -> None:
        super().__init__()
        self.num_features, self.eps = int(num_features), float(eps)
        self.affine = affine
        if affine:
            self.weight = nn.Parameter(torch.ones(self.num_features))
            self.bias = nn.Parameter(torch.zeros(self.num_features))
        else:
            self.register_parameter("weight", None)
            self.register_parameter("bias", None)

    def forward(self, x: Tensor, ref_size: int | None = None) -> Tensor:
        if ref_size is None or not 0 < ref_size <= x.shape[0]:
            raise ValueError(
                "VirtualBatchNorm needs ref_size in [1, batch size]: call it on "
                f"cat([reference_batch, batch]); got ref_size={ref_size}, batch {x.shape[0]}"
            )
        spatial = list(range(2, x.dim()))
        ref, rest = x[:ref_size], x[ref_size:]
        mu_ref = ref.mean(dim=[0, *spatial], keepdim=True)
        sq_ref = ref.square().mean(dim=[0, *spatial], keepdim=True)
        var_ref = (sq_ref - mu_ref.square()).clamp_min(0)
        outs = [(ref - mu_ref) * torch.rsqrt(var_ref + self.eps)]
        if rest.shape[0] > 0:
            w = 1.0 / (ref_size + 1)
            mu_i = rest.mean(dim=spatial, keepdim=True) if spatial else rest
            sq_i = rest.square().mean(dim=spatial, keepdim=True) if spatial else rest.square()
            mu = w * mu_i + (1 - w) * mu_ref
            var = (w * sq_i + (1 - w) * sq_ref - mu.square()).clamp_min(0)
            outs.append((rest - mu) * torch.rsqrt(var + self.eps))
        out = torch.cat(outs, dim=0)
        if self.affine:
            shape = [1, -1] + [1] * len(spatial)
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out

    def extra_repr(self) -> str:
        return f"{self.num_features}, eps={self.eps}, affine={self.affine}"
