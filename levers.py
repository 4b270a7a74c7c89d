"""The training levers of the book's tuning appendix, each one recipe key that lib reads (lib.train, or
lib.Net for weight_std). Two are in the reported recipe (lib.RECIPE): Muon and the identity (Dirac)
initialisation; the others are measured as experiments, and with their defaults lib does not use them.

- optimizer="Muon": the conv weights that feed a norm get the fast CIFAR-10 trainers' Muon step
  (each weight rescaled to norm sqrt(out channels), then a Nesterov momentum update orthogonalised by
  Newton-Schulz iterations, at its own peak LR `muon_lr`); everything else keeps SGD-Nesterov.
- whiten="trainable" | "frozen": C1's filters start as the leading whitening directions of the
  training images' 3x3 patches (eigenvectors of their covariance over sqrt(eigenvalue)).
- dirac=True: every 3x3 conv with as many outputs as inputs starts as the identity.
- flip="alternate": each image is flipped at random in the first epoch, then on alternate epochs.
- ema > 0: the weights' exponential moving average is evaluated and saved instead (WeightAverage).
- weight_std=True: every 3x3 conv standardizes its filters in each forward pass (StandardizedConv2d).
- bn_ghost=n: BatchNorm computes its training statistics over sub-batches of n images (GhostBatchNorm2d),
  which adds the noise of small-batch statistics without changing the batch size, learning rate or steps.
- bn_frozen=True: from the first epoch after the warm-up, BatchNorm trains with its running averages
  (freeze_batch_norm): no batch noise, and no gradient through the statistics, for the rest of training.
"""
from __future__ import annotations

import copy

import torch
import torch.nn as nn
import torch.nn.functional as F


def newton_schulz(g: torch.Tensor, steps: int = 5) -> torch.Tensor:
    """The orthogonal factor of g (rows x cols), approximately: the quintic Newton-Schulz iteration
    of the fast CIFAR-10 and GPT trainers."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g / (g.norm() + 1e-7)
    tall = x.size(0) > x.size(1)
    x = x.T if tall else x
    for _ in range(steps):
        m = x @ x.T
        x = a * x + (b * m + c * m @ m) @ x
    return x.T if tall else x


class ConvMuon(torch.optim.Optimizer):
    """Muon for conv weights that feed a normalization, which makes them scale-invariant."""

    def __init__(self, params, lr: float, momentum: float = 0.6, steps: int = 5):
        super().__init__(params, dict(lr=lr, momentum=momentum, steps=steps))

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:                       # a frozen first layer
                    continue
                buf = self.state[p].setdefault("momentum", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(p.grad)
                update = p.grad.add(buf, alpha=group["momentum"])                 # Nesterov
                p.mul_(len(p) ** 0.5 / p.norm())              # the norm is free: put it back to sqrt(out)
                p.sub_(newton_schulz(update.reshape(len(p), -1).float(), group["steps"]).view_as(p).to(p.dtype),
                       alpha=group["lr"])


class Optimizers:
    """Two optimizers stepped as one; each param group may carry `lr_scale` (its peak over the SGD peak)."""

    def __init__(self, *optimizers):
        self.optimizers = optimizers
        self.param_groups = [g for o in optimizers for g in o.param_groups]

    def zero_grad(self, set_to_none: bool = True):
        for o in self.optimizers:
            o.zero_grad(set_to_none=set_to_none)

    def step(self):
        for o in self.optimizers:
            o.step()


def muon_optimizer(model: nn.Module, lr: float, recipe: dict, sgd: torch.optim.Optimizer) -> Optimizers:
    """ConvMuon for the 3x3 convs (each feeds a norm), `sgd` (already built over every parameter) for the
    rest: the Muon weights are taken out of its groups."""
    convs = [m[0].weight for m in model.modules() if isinstance(m, nn.Sequential) and len(m) == 3
             and isinstance(m[0], nn.Conv2d) and m[0].kernel_size == (3, 3)]
    ids = {id(p) for p in convs}
    for g in sgd.param_groups:
        g["params"] = [p for p in g["params"] if id(p) not in ids]
    muon = ConvMuon(convs, lr=recipe["muon_lr"] * lr / recipe["peak_lr"])
    muon.param_groups[0]["lr_scale"] = recipe["muon_lr"] / recipe["peak_lr"]
    return Optimizers(sgd, muon)


@torch.no_grad()
def whitening_filters(x: torch.Tensor, n: int, eps: float = 1e-2) -> torch.Tensor:
    """n 3x3 filters (n, C, 3, 3) that whiten the 3x3 patches of normalized images x: the leading
    eigenvectors of the patches' covariance, each divided by the square root of its eigenvalue."""
    patches = F.unfold(x.float(), 3).transpose(1, 2).reshape(-1, x.size(1) * 9)
    patches = patches - patches.mean(0)
    eigval, eigvec = torch.linalg.eigh(patches.T @ patches / len(patches))
    top = eigval.argsort(descending=True)[:n]
    return (eigvec[:, top].T / (eigval[top] + eps).sqrt()[:, None]).reshape(n, x.size(1), 3, 3)


@torch.no_grad()
def initialise(model: nn.Module, recipe: dict, train_sample: torch.Tensor) -> None:
    """Apply the recipe's `whiten` and `dirac` to a freshly built model (no random numbers drawn)."""
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3)]
    if recipe["dirac"]:
        for conv in convs[1:]:
            if conv.in_channels == conv.out_channels:
                nn.init.dirac_(conv.weight)
    if recipe["whiten"] != "off":
        first = convs[0]
        first.weight.copy_(whitening_filters(train_sample, first.out_channels).to(first.weight))
        first.weight.requires_grad_(recipe["whiten"] == "trainable")


def alternating_flip(x: torch.Tensor, first_flip: torch.Tensor, epoch: int) -> torch.Tensor:
    """Flip the images whose `first_flip` is set in odd epochs (1, 3, ...), the others in even ones."""
    flip = first_flip ^ (epoch % 2 == 0)
    return torch.where(flip[:, None, None, None], x.flip(3), x)


class StandardizedConv2d(nn.Conv2d):
    """Weight Standardization (Qiao et al. 2019): in every forward pass each output filter's weights are
    standardized (zero mean, unit variance over input channels x kernel); no extra parameters."""
    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.var(dim=(1, 2, 3), unbiased=False, keepdim=True) + 1e-5).sqrt()
        return self._conv_forward(x, w, self.bias)


class GhostBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm whose training statistics come from consecutive sub-batches of `ghost` images ("ghost
    batches", Hoffer et al. 2017); in eval mode it is plain BatchNorm with the running averages, and its
    parameters and buffers are BatchNorm2d's, so a saved model loads into either."""

    def __init__(self, channels: int, ghost: int):
        super().__init__(channels)
        self.ghost = ghost

    def forward(self, x):
        if not self.training or x.size(0) <= self.ghost:
            return super().forward(x)
        return torch.cat([super(GhostBatchNorm2d, self).forward(part) for part in x.split(self.ghost)])


def freeze_batch_norm(model: nn.Module) -> None:
    """Put every BatchNorm layer in eval mode inside a model in training mode: it normalizes with its
    running averages (now fixed), while its gamma and beta keep learning."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()


class WeightAverage:
    """An exponential moving average of the weights (and BN's running statistics), updated after every
    step; with the recipe's `ema`, it is what gets evaluated, reported and returned."""

    def __init__(self, model: nn.Module, decay: float):
        self.model, self.decay = copy.deepcopy(model), decay
        pairs = [(a, b) for a, b in zip(self.model.state_dict().values(), model.state_dict().values())
                 if a.is_floating_point()]
        self.averaged, self.live = [a for a, _ in pairs], [b for _, b in pairs]

    def update(self) -> None:
        torch._foreach_lerp_(self.averaged, self.live, 1.0 - self.decay)

    def final(self, live_model: nn.Module) -> nn.Module:
        """The averaged model, with the live model's counters and other non-float buffers."""
        self.model.load_state_dict({**live_model.state_dict(), **{k: v for k, v in self.model.state_dict().items()
                                                                  if v.is_floating_point()}})
        return self.model
