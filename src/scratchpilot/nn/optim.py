"""Optimisers and learning-rate schedules.

An optimiser updates parameters in place from their gradients: ``step(pairs)`` with ``pairs`` a list of
``(param, grad, decays)`` tuples, ``decays`` saying whether L2 weight decay applies (weights yes,
biases no). Gradients are scratch space owned by the layers and may be overwritten here.
"""

from __future__ import annotations

import math

import numpy as np


class Schedule:
    """Learning-rate multiplier as a function of the epoch (0-based)."""

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError

    def config(self) -> dict:
        return {"type": type(self).__name__, **self.__dict__}


class StepDecay(Schedule):
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""

    def __init__(self, step_size: int = 10, gamma: float = 0.5) -> None:
        if step_size < 1:
            raise ValueError(f"StepDecay: step_size must be >= 1, got {step_size!r}")
        self.step_size, self.gamma = int(step_size), float(gamma)

    def __call__(self, epoch: int) -> float:
        return self.gamma ** (epoch // self.step_size)


class CosineDecay(Schedule):
    """Half a cosine from 1 down to ``min_factor`` over ``total_epochs`` (then stays there)."""

    def __init__(self, total_epochs: int, min_factor: float = 0.0) -> None:
        if total_epochs < 1:
            raise ValueError(f"CosineDecay: total_epochs must be >= 1, got {total_epochs!r}")
        self.total_epochs, self.min_factor = int(total_epochs), float(min_factor)

    def __call__(self, epoch: int) -> float:
        t = min(epoch, self.total_epochs) / self.total_epochs
        return self.min_factor + (1 - self.min_factor) * 0.5 * (1 + math.cos(math.pi * t))


class Optimizer:
    """Base class: holds the base learning rate, an optional schedule and L2 weight decay."""

    def __init__(self, lr: float, weight_decay: float = 0.0, schedule: Schedule | None = None) -> None:
        if not lr > 0:
            raise ValueError(f"{type(self).__name__}: learning rate must be > 0, got {lr!r}")
        if weight_decay < 0:
            raise ValueError(f"{type(self).__name__}: weight_decay must be >= 0, got {weight_decay!r}")
        self.base_lr = float(lr)
        self.lr = float(lr)
        self.weight_decay = float(weight_decay)
        self.schedule = schedule

    def start_epoch(self, epoch: int) -> None:
        """Set the learning rate for this epoch from the schedule."""
        self.lr = self.base_lr * (self.schedule(epoch) if self.schedule else 1.0)

    def _decayed(self, param, grad, decays):
        """L2 regularisation λ/2·‖W‖² adds λ·W to the gradient of the weights."""
        if decays and self.weight_decay:
            grad += self.weight_decay * param
        return grad

    def step(self, pairs) -> None:
        raise NotImplementedError

    def reset_state(self) -> None:
        """Forget per-parameter state (momentum, running moments): the parameters were regrouped."""

    def config(self) -> dict:
        cfg = {"type": type(self).__name__, "lr": self.base_lr, "weight_decay": self.weight_decay}
        if self.schedule is not None:
            cfg["schedule"] = self.schedule.config()
        return cfg


class SGD(Optimizer):
    """Stochastic gradient descent, optionally with (Nesterov) momentum.

    Plain:     w ← w − η·g
    Momentum:  v ← μ·v − η·g;  w ← w + v
    Nesterov:  v ← μ·v − η·g;  w ← w + μ·v − η·g   (the look-ahead form)
    """

    def __init__(self, lr: float = 0.1, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0, schedule: Schedule | None = None) -> None:
        super().__init__(lr, weight_decay, schedule)
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"SGD: momentum must be in [0, 1), got {momentum!r}")
        if nesterov and momentum == 0:
            raise ValueError("SGD: nesterov=True needs momentum > 0")
        self.momentum, self.nesterov = float(momentum), bool(nesterov)
        self._velocity: dict[int, np.ndarray] = {}

    def step(self, pairs) -> None:
        lr, mu = self.lr, self.momentum
        for param, grad, decays in pairs:
            grad = self._decayed(param, grad, decays)
            grad *= lr                      # grad now holds η·g (scratch space, overwritten next step)
            if mu == 0.0:
                param -= grad
                continue
            v = self._velocity.get(id(param))
            if v is None:
                v = self._velocity[id(param)] = np.zeros_like(param)
            v *= mu
            v -= grad
            if self.nesterov:
                param += mu * v
                param -= grad
            else:
                param += v

    def reset_state(self) -> None:
        self._velocity.clear()

    def config(self) -> dict:
        return {**super().config(), "momentum": self.momentum, "nesterov": self.nesterov}


class Adam(Optimizer):
    """Adam (Kingma & Ba 2015): running means of g and g², bias-corrected.

    m ← β1·m + (1−β1)·g;  v ← β2·v + (1−β2)·g²;  w ← w − η·m̂ / (√v̂ + ε),
    with m̂ = m/(1−β1^t) and v̂ = v/(1−β2^t).
    """

    def __init__(self, lr: float = 1e-3, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8,
                 weight_decay: float = 0.0, schedule: Schedule | None = None) -> None:
        super().__init__(lr, weight_decay, schedule)
        for name, b in (("beta1", beta1), ("beta2", beta2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"Adam: {name} must be in [0, 1), got {b!r}")
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)
        self._m: dict[int, np.ndarray] = {}
        self._v: dict[int, np.ndarray] = {}
        self.t = 0

    def step(self, pairs) -> None:
        self.t += 1
        b1, b2 = self.beta1, self.beta2
        # fold both bias corrections into one step size
        step_size = self.lr * math.sqrt(1 - b2 ** self.t) / (1 - b1 ** self.t)
        eps_hat = self.eps * math.sqrt(1 - b2 ** self.t)
        for param, grad, decays in pairs:
            grad = self._decayed(param, grad, decays)
            key = id(param)
            if key not in self._m:
                self._m[key] = np.zeros_like(param)
                self._v[key] = np.zeros_like(param)
            m, v = self._m[key], self._v[key]
            m *= b1
            m += (1 - b1) * grad
            v *= b2
            np.multiply(grad, grad, out=grad)
            grad *= (1 - b2)
            v += grad
            denom = np.sqrt(v)
            denom += eps_hat
            param -= step_size * m / denom

    def reset_state(self) -> None:
        self._m.clear()
        self._v.clear()
        self.t = 0

    def config(self) -> dict:
        return {**super().config(), "beta1": self.beta1, "beta2": self.beta2, "eps": self.eps}
