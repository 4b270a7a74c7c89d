"""The training step replayed as a CUDA graph: lib.train uses it on a CUDA device (with SGD-Nesterov).

The network is so small that on a GPU launching a step's many small kernels one by one from Python,
not the arithmetic, sets the pace (bench/gpu_runs.py); a replay launches them all at once. The CPU path
of lib.train does not use this module. It imports nothing of the project: lib.train hands it the loss
(lib.forward_loss) and what that takes (a lib.LossSetup), so lib can import it without a cycle.
"""
from __future__ import annotations

import copy

import torch


def sgd_nesterov_(opt: torch.optim.SGD, bufs: list[torch.Tensor], lr: torch.Tensor) -> None:
    """One step of torch.optim.SGD(nesterov=True) over `opt`'s parameter groups, with the learning rate
    in a device tensor so that a CUDA graph can replay the step under a changing schedule (SGD itself
    reads the LR as a Python number, fixed at capture). `bufs` are the momentum buffers, zero at first."""
    i = 0
    for group in opt.param_groups:
        params = group["params"]
        grads, b = [p.grad for p in params], bufs[i:i + len(params)]
        i += len(params)
        if group["weight_decay"]:
            grads = torch._foreach_add(grads, params, alpha=group["weight_decay"])
        torch._foreach_mul_(b, group["momentum"])
        torch._foreach_add_(b, grads)
        update = torch._foreach_add(grads, b, alpha=group["momentum"])
        torch._foreach_mul_(update, lr)
        torch._foreach_sub_(params, update)


class CudaGraphStep:
    """The whole training step (normalize, forward, loss, backward, update, the epoch's running sums),
    captured once as a CUDA graph and replayed for every full batch; a last, smaller batch runs eagerly.
    forward_loss(model, x_uint8, y, setup) -> (logits, loss) is the step's forward pass (lib.forward_loss,
    with `setup` a lib.LossSetup)."""

    def __init__(self, model, opt, sample_x, sample_y, sums, setup, forward_loss):
        self.model, self.opt, self.sums, self.setup, self.forward_loss = model, opt, sums, setup, forward_loss
        self.params = [p for g in opt.param_groups for p in g["params"]]
        self.bufs = [torch.zeros_like(p) for p in self.params]
        self.lr = torch.zeros((), device=sample_x.device)
        self.x, self.y = sample_x.clone(), sample_y.clone()       # static inputs, refilled each step
        # Warm up on a side stream (cuDNN chooses its kernels, autograd builds its state) at LR 0, then
        # put back what the warm-up changed (BN running averages, momentum, sums): the run is the same.
        saved = copy.deepcopy(model.state_dict())
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(3):
                self._step(self.x, self.y)
        torch.cuda.current_stream().wait_stream(side)
        model.load_state_dict(saved)
        for t in self.bufs + list(sums):
            t.zero_()
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self._step(self.x, self.y)

    def _step(self, x, y):
        for p in self.params:
            p.grad = None
        logits, loss = self.forward_loss(self.model, x, y, self.setup)
        loss.backward()
        with torch.no_grad():
            sgd_nesterov_(self.opt, self.bufs, self.lr)
            self.sums[0].add_(loss.detach() * len(y))
            self.sums[1].add_((logits.argmax(1) == y).sum())

    def __call__(self, model, opt, x, y, lr: float, setup, sums) -> None:   # lib.train_step's signature
        self.lr.fill_(lr)
        if len(y) == len(self.y):
            self.x.copy_(x)
            self.y.copy_(y)
            self.graph.replay()
        else:
            self._step(x, y)
