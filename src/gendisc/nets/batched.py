"""Several independent copies ("members") of the Salimans et al. MNIST nets as one module.

Every parameter has a leading member dimension N and every dense layer is one batched matrix
product (``torch.baddbmm`` / ``torch.bmm``) over inputs of shape (N, B, features): member i's
outputs depend only on member i's parameters and inputs, so N members compute exactly what N
separate nets compute (float rounding aside), in a fixed number of kernels whatever N is. One
optimiser over the stacked tensors is N independent optimisers when its update is element-wise
(``torch.optim.Adam``, ``gendisc.optim.AdamEpsInsideSqrt``).

``BatchedSalimansD.stack(nets)`` / ``BatchedSalimansG.stack(nets)`` copy N built (and
data-initialised) nets into one batched module; ``unstack_into(nets)`` copies member i back into
``nets[i]`` (parameters and buffers: the generator's batch-norm statistics), so the ordinary
single-run modules evaluate, test and save each member.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from gendisc.errors import ConfigError
from gendisc.nets.classifiers import SalimansMLPDiscriminator
from gendisc.nets.generators import SalimansMLPGenerator
from gendisc.nets.layers import WeightNormLinear

__all__ = ["BatchedSalimansD", "BatchedSalimansG", "Draws", "stack_parameter"]

# the random draws of a pass: draws(shape without the member dimension, kind) -> (N, *shape),
# kind "noise" (standard normal) or "latent" (the generator's latent distribution)
Draws = Callable[[tuple[int, ...], str], Tensor]


def stack_parameter(tensors: Sequence[Tensor], requires_grad: bool = True) -> nn.Parameter:
    """The tensors stacked along a new leading member dimension, as one parameter."""
    return nn.Parameter(torch.stack([t.detach() for t in tensors]).clone(), requires_grad)


class _BatchedWeightNormDense(torch.autograd.Function):
    """``gendisc.nets.layers._WeightNormDense`` with a leading member dimension: y = (x v^T) * s
    + b, s = g / ||v||, with the same hand-written gradients (the same arithmetic as a single
    run's layer, member by member):

        dL/dh = dL/dy * s,  dL/dx = dL/dh v,  dL/db = sum_n dL/dy,
        q = sum_n dL/dy * h,  dL/dg = q / ||v||,  dL/dv = dL/dh^T x - (q g / ||v||^3) v.

    x (N, B, in), v (N, out, in), g and b (N, out); ``norm`` (N, out) is ||v||, a constant."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, v: Tensor, g: Tensor, bias: Tensor, norm: Tensor) -> Tensor:
        scale = g / norm
        h = torch.bmm(x, v.transpose(1, 2))
        ctx.save_for_backward(x, v, h, g, norm, scale)
        return torch.addcmul(bias.unsqueeze(1), h, scale.unsqueeze(1))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_y: Tensor) -> tuple[Tensor | None, ...]:
        x, v, h, g, norm, scale = ctx.saved_tensors
        need_x, need_v, need_g, need_b = ctx.needs_input_grad[:4]
        grad_x = grad_v = grad_g = grad_b = None
        grad_h = grad_y * scale.unsqueeze(1)
        if need_x:
            grad_x = torch.bmm(grad_h, v)
        if need_v or need_g:
            q = (grad_y * h).sum(1)
            if need_g:
                grad_g = q / norm
            if need_v:
                grad_v = torch.bmm(grad_h.transpose(1, 2), x)
                grad_v.addcmul_(v, (-q * g / norm**3).unsqueeze(2))
        if need_b:
            grad_b = grad_y.sum(1)
        return grad_x, grad_v, grad_g, grad_b, None


class BatchedWeightNormDense(nn.Module):
    """N weight-normalised dense layers ``y = (x v^T) * g / ||v|| + b``: v (N, out, in),
    g (N, out), b (N, out); inputs (N, B, in)."""

    def __init__(self, layers: Sequence[WeightNormLinear]) -> None:
        super().__init__()
        first = layers[0]
        self.v = stack_parameter([m.v for m in layers])
        self.g = stack_parameter([m.g for m in layers], requires_grad=first.g.requires_grad)
        self.bias = stack_parameter([m.bias for m in layers])

    @torch.no_grad()
    def norm(self) -> Tensor:
        """||v|| per member and output unit, (N, out), a constant for autograd (the gradient
        through it is written out): computed once per pass group, as ``weight_norm_once``."""
        return torch.linalg.vector_norm(self.v, dim=2).clamp_min(1e-12)

    def forward(self, x: Tensor, norm: Tensor | None = None) -> Tensor:
        norm = self.norm() if norm is None else norm
        return _BatchedWeightNormDense.apply(x, self.v, self.g, self.bias, norm)

    @torch.no_grad()
    def unstack_into(self, layers: Sequence[WeightNormLinear]) -> None:
        for i, layer in enumerate(layers):
            layer.v.copy_(self.v[i])
            layer.g.copy_(self.g[i])
            layer.bias.copy_(self.bias[i])


class BatchedSalimansD(nn.Module):
    """N ``SalimansMLPDiscriminator`` (no minibatch discrimination, no dropout) as one module.

    ``forward(x, draws)`` takes images (N, B, ...) and returns the logits (N, B, K) and the
    hidden features (each (N, B, width)); in training mode the Gaussian noise comes from
    ``draws(shape, "noise")`` (standard normal, (N, *shape)), so the caller decides whose random
    stream each member's noise is drawn from.
    """

    def __init__(self, nets: Sequence[SalimansMLPDiscriminator]) -> None:
        super().__init__()
        first = nets[0]
        if first.minibatch_disc is not None:
            raise ConfigError(
                "members: the batched discriminator has no minibatch discrimination; train "
                "model.discriminator.minibatch_discrimination=true runs one at a time"
            )
        if any(block[3].p for block in first.body):
            raise ConfigError("members: the batched discriminator has no dropout; use dropout 0")
        self.input_sigma = first.input_noise.sigma
        self.hidden_sigma = [block[2].sigma for block in first.body]
        self.hidden = nn.ModuleList(
            BatchedWeightNormDense([net.body[k][0] for net in nets]) for k in range(len(first.body))
        )
        self.head = BatchedWeightNormDense([net.head for net in nets])

    @property
    def layers(self) -> list[BatchedWeightNormDense]:
        return [*self.hidden, self.head]

    def norms(self) -> list[Tensor]:
        """Every layer's ||v||, to share between the passes of one update."""
        return [layer.norm() for layer in self.layers]

    def forward(
        self, x: Tensor, draws: Draws | None = None, norms: Sequence[Tensor] | None = None
    ) -> tuple[Tensor, list[Tensor]]:
        norms = norms if norms is not None else self.norms()
        h = x.flatten(2)
        noisy = self.training and draws is not None
        if noisy and self.input_sigma:
            h = torch.add(h, draws(tuple(h.shape[1:]), "noise"), alpha=self.input_sigma)
        features = []
        for layer, norm, sigma in zip(self.hidden, norms, self.hidden_sigma, strict=False):
            h = F.relu(layer(h, norm))
            if noisy and sigma:
                h = torch.add(h, draws(tuple(h.shape[1:]), "noise"), alpha=sigma)
            features.append(h)
        return self.head(h, norms[-1]), features

    @torch.no_grad()
    def unstack_into(self, nets: Sequence[SalimansMLPDiscriminator]) -> None:
        """Member i's weights into ``nets[i]``."""
        for k, layer in enumerate(self.hidden):
            layer.unstack_into([net.body[k][0] for net in nets])
        self.head.unstack_into([net.head for net in nets])


class _BatchedNorm(nn.Module):
    """Per-member batch norm without scale (the paper's generator): statistics over each
    member's batch (dim 1), running statistics (N, F) with the momentum of ``nn.BatchNorm1d``,
    then the learned shift."""

    running_mean: Tensor
    running_var: Tensor
    num_batches_tracked: Tensor

    def __init__(self, norms: Sequence[nn.BatchNorm1d], shifts: Sequence[nn.Module]) -> None:
        super().__init__()
        first = norms[0]
        self.eps, self.momentum = first.eps, first.momentum
        self.register_buffer("running_mean", torch.stack([n.running_mean for n in norms]).clone())
        self.register_buffer("running_var", torch.stack([n.running_var for n in norms]).clone())
        self.register_buffer("num_batches_tracked", first.num_batches_tracked.clone())
        self.shift = stack_parameter([s.bias for s in shifts])

    def forward(self, x: Tensor) -> Tensor:
        # (N, B, F) -> (B, N * F): one batch-norm kernel whose columns are (member, feature),
        # the arithmetic of N separate batch norms (the running statistics update in place)
        n, b, f = x.shape
        flat = x.transpose(0, 1).reshape(b, n * f)
        if self.training:
            self.num_batches_tracked += 1
        out = F.batch_norm(
            flat,
            self.running_mean.view(-1),
            self.running_var.view(-1),
            training=self.training,
            momentum=self.momentum,
            eps=self.eps,
        )
        # contiguous (N, B, F): the element-wise ops after it then run the same vectorised loops
        # as a single run's (a strided layout changes which elements take the scalar tail)
        return out.view(b, n, f).transpose(0, 1).contiguous() + self.shift.unsqueeze(1)


def _kind(layer: nn.Module) -> str:
    """A generator layer's role: linear (no bias), norm (batch norm without scale), shift (a
    learned bias alone), softplus, weight_norm, or other."""
    if isinstance(layer, WeightNormLinear):
        return "weight_norm"
    if isinstance(layer, nn.Linear) and layer.bias is None:
        return "linear"
    if isinstance(layer, nn.BatchNorm1d) and not layer.affine and layer.momentum is not None:
        return "norm"
    if isinstance(layer, nn.Softplus) and layer.beta == 1 and layer.threshold == 20:
        return "softplus"
    if [name for name, _ in layer.named_parameters()] == ["bias"] and not list(layer.children()):
        return "shift"
    return "other"


class BatchedSalimansG(nn.Module):
    """N ``SalimansMLPGenerator`` (batch norm without scale, no VBN, unconditional) as one
    module: ``forward(z)`` maps latents (N, B, latent_dim) to images (N, B, C*H*W) in [-1, 1]."""

    def __init__(self, nets: Sequence[SalimansMLPGenerator]) -> None:
        super().__init__()
        first = nets[0]
        if first.virtual_batch_norm or first.conditional:
            raise ConfigError(
                "members: the batched generator has neither virtual batch norm nor class "
                "conditioning; train such runs one at a time"
            )
        layers = list(first.net)
        kinds = [_kind(m) for m in layers]
        expected = ["linear", "norm", "shift", "softplus"] * (len(layers) // 4)
        if kinds[:-1] != expected or kinds[-1] != "weight_norm":
            raise ConfigError(
                "members: the batched generator needs model.generator.bn_scale=false "
                "(the paper's generator)"
            )
        self.latent_dim = first.latent_dim
        self.latent_distribution = first.latent_distribution
        self.out_shape = first.out_shape
        self.dense = nn.ParameterList()
        self.norms = nn.ModuleList()
        for k in range(0, len(layers) - 1, 4):
            self.dense.append(stack_parameter([net.net[k].weight for net in nets]))
            self.norms.append(
                _BatchedNorm([net.net[k + 1] for net in nets], [net.net[k + 2] for net in nets])
            )
        self.out = BatchedWeightNormDense([net.net[len(layers) - 1] for net in nets])

    def forward(self, z: Tensor) -> Tensor:
        h = z
        for weight, norm in zip(self.dense, self.norms, strict=True):
            h = F.softplus(norm(torch.bmm(h, weight.transpose(1, 2))))
        return 2.0 * torch.sigmoid(self.out(h)) - 1.0

    @torch.no_grad()
    def unstack_into(self, nets: Sequence[SalimansMLPGenerator]) -> None:
        """Member i's weights and batch-norm statistics into ``nets[i]``."""
        last = len(nets[0].net) - 1
        for j, (weight, norm) in enumerate(zip(self.dense, self.norms, strict=True)):
            for i, net in enumerate(nets):
                net.net[4 * j].weight.copy_(weight[i])
                bn, shift = net.net[4 * j + 1], net.net[4 * j + 2]
                bn.running_mean.copy_(norm.running_mean[i])
                bn.running_var.copy_(norm.running_var[i])
                bn.num_batches_tracked.copy_(norm.num_batches_tracked)
                shift.bias.copy_(norm.shift[i])
        self.out.unstack_into([net.net[last] for net in nets])
