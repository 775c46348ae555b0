"""Local optimizers that step the flat parameter buffer of :meth:`fedhpc.models.Layout.bind`.

They compute exactly what ``torch.optim.SGD`` (momentum, no dampening, no
weight decay) and ``torch.optim.Adam`` (no weight decay, no amsgrad) compute,
element for element, but in one pass over one buffer per step instead of a
loop over tensors. They also keep ``torch.optim`` out of the process: its
first optimizer imports TorchDynamo, about 0.9 s of every trainer rank's
start-up. :meth:`reset` starts a new client from zero state.
"""

from __future__ import annotations

import torch


class FlatSGD:
    """SGD with optional heavy-ball momentum."""

    def __init__(self, params: torch.Tensor, grads: torch.Tensor, lr: float, momentum: float = 0.0):
        self.params, self.grads, self.lr, self.momentum = params, grads, lr, momentum
        self.buf: torch.Tensor | None = None

    def reset(self) -> None:
        self.buf = None

    @torch.no_grad()
    def step(self) -> None:
        step = self.grads
        if self.momentum:
            if self.buf is None:
                self.buf = self.grads.clone()
            else:
                self.buf.mul_(self.momentum).add_(self.grads)
            step = self.buf
        self.params.add_(step, alpha=-self.lr)


class FlatAdam:
    """Adam with torch's defaults (betas 0.9 and 0.999, eps 1e-8) and its update formula."""

    def __init__(self, params: torch.Tensor, grads: torch.Tensor, lr: float, betas: tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8):
        self.params, self.grads, self.lr, self.betas, self.eps = params, grads, lr, betas, eps
        self.t = 0
        self.m, self.v = torch.zeros_like(params), torch.zeros_like(params)

    def reset(self) -> None:
        self.t = 0
        self.m.zero_()
        self.v.zero_()

    @torch.no_grad()
    def step(self) -> None:
        b1, b2 = self.betas
        self.t += 1
        self.m.lerp_(self.grads, 1 - b1)
        self.v.mul_(b2).addcmul_(self.grads, self.grads, value=1 - b2)
        denom = (self.v.sqrt() / (1 - b2**self.t) ** 0.5).add_(self.eps)
        self.params.addcdiv_(self.m, denom, value=-self.lr / (1 - b1**self.t))
