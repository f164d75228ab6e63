"""Optimizers beyond fixed-step gradient descent: ISTA with line search, heavy ball, Nesterov/FISTA, Adam,
L-BFGS (and mini-batch SGD from :mod:`pgd.optim.sgd`).  No MPI here: every global number comes from the
objective (``value_and_grad``, ``dot``), so all ranks compute identical steps.

State dictionaries (``state_dict()``; arrays are host NumPy copies, restored exactly by
``load_state_dict``).  Every optimizer stores ``name, lr, evaluations, params, loss``; in addition:

- ``gd``: ``step_size`` (the current line-search step).
- ``momentum``: ``velocity``.
- ``nesterov``: ``x`` (last proximal-gradient iterate; ``params`` is the extrapolated point where the
  objective was evaluated), ``t`` (FISTA sequence), ``restarts``.
- ``adam``: ``m``, ``v`` (moment averages), ``t`` (step count for the bias correction).
- ``sgd``: ``step`` (mini-batch steps taken), ``batch_evaluations`` (see :mod:`pgd.optim.sgd`).
- ``lbfgs``: ``s``, ``y`` (lists of curvature pairs, oldest first), ``line_search_evaluations``.
"""

from __future__ import annotations

import math

from pgd.optim.base import Optimizer
from pgd.optim.prox import Composite, ProximalMixin, host_copy, loss_resolution


class ProximalGradient(Composite):
    """``gd``: gradient descent, proximal (ISTA) with ``--l1``, optionally with Armijo backtracking.

    With ``--line-search`` the step ``t`` starts at ``--lr`` and is halved until the sufficient-decrease
    condition ``f(x⁺) ≤ f(x) + ∇f(x)·(x⁺−x) + ‖x⁺−x‖²/(2t)`` holds (Armijo with c = ½ for plain gradient
    steps; the standard condition for proximal steps), up to the loss's rounding
    (:func:`pgd.optim.prox.loss_resolution`); accepted steps are kept for the next iteration.
    """

    name = "gd"
    supports_l1 = True
    max_halvings = 60

    def __init__(self, objective, *, xp, lr: float, l1: float = 0.0, line_search: bool = False):
        super().__init__(objective, xp=xp, lr=lr, l1=l1)
        self.line_search = bool(line_search)
        self.fixed_step = not self.line_search
        self.resolution = loss_resolution(objective)
        self.step_size = self.lr

    def start(self, params) -> float:
        loss = super().start(params)
        self._trial = self.xp.empty_like(self.params)
        self._trial_grad = self.xp.empty_like(self.params)
        self._diff = self.xp.empty_like(self.params)
        return loss

    def step(self) -> float:
        xp = self.xp
        for _ in range(self.max_halvings):
            t = self.step_size
            xp.multiply(self.grad, -t, out=self._trial)
            self._trial += self.params
            self.prox(self._trial, t)
            smooth, total = self.evaluate_composite(self._trial, self._trial_grad)
            if not self.line_search:
                break
            xp.subtract(self._trial, self.params, out=self._diff)
            bound = (self.smooth + self.objective.dot(self.grad, self._diff)
                     + self.objective.dot(self._diff, self._diff) / (2 * t))
            if smooth <= bound + self.resolution * abs(self.smooth):
                break
            self.step_size = 0.5 * t
        else:
            self.stop_reason = "line search found no decrease (rounding level)"
            return self.loss
        self.params, self._trial = self._trial, self.params
        self.grad, self._trial_grad = self._trial_grad, self.grad
        self.smooth, self.loss = smooth, total
        return self.loss

    def summary(self) -> dict:
        return {"step_size": self.step_size} if self.line_search else {}

    def state_dict(self) -> dict:
        return self._save(super().state_dict(), step_size=self.step_size)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.step_size = float(state["step_size"])


class HeavyBall(ProximalMixin, Optimizer):
    """``momentum``: Polyak's heavy ball, ``v ← βv − lr·∇f``, ``x ← x + v`` (β = ``--momentum``)."""

    name = "momentum"

    def __init__(self, objective, *, xp, lr: float, l1: float = 0.0, momentum: float = 0.9):
        super().__init__(objective, xp=xp, lr=lr)
        self._setup_l1(l1)
        self.beta = float(momentum)

    def start(self, params) -> float:
        loss = super().start(params)
        self.velocity = self.xp.zeros_like(self.params)
        return loss

    def step(self) -> float:
        self.velocity *= self.beta
        self.velocity -= self.lr * self.grad
        self.params += self.velocity
        self.loss = self.evaluate(self.params, self.grad)
        return self.loss

    def state_dict(self) -> dict:
        return dict(super().state_dict(), velocity=host_copy(self.xp, self.velocity))

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.velocity[...] = self.xp.asarray(state["velocity"])


class Nesterov(Composite):
    """``nesterov``: accelerated gradient (FISTA with ``--l1``) with function-value restart.

    ``x⁺ = prox(y − lr·∇f(y))``, ``t⁺ = (1 + √(1 + 4t²))/2``, ``y⁺ = x⁺ + (t − 1)/t⁺ · (x⁺ − x)``.  The
    objective is evaluated at the extrapolated points ``y`` (``params``), once per step.  When ``F(y⁺)``
    rises above ``F(y)`` the momentum restarts (``t = 1``, ``y⁺ = x⁺``, one extra evaluation), which
    makes the method monotone on those steps and adaptive to strong convexity (O'Donoghue & Candès).
    """

    name = "nesterov"
    supports_l1 = True

    def start(self, params) -> float:
        loss = super().start(params)
        self.x = self.params.copy()
        self._next = self.xp.empty_like(self.params)
        self._y_grad = self.xp.empty_like(self.params)
        self.t = 1.0
        self.restarts = 0
        return loss

    def step(self) -> float:
        xp = self.xp
        # x⁺ into _next
        xp.multiply(self.grad, -self.lr, out=self._next)
        self._next += self.params
        self.prox(self._next, self.lr)
        t_next = 0.5 * (1.0 + math.sqrt(1.0 + 4.0 * self.t * self.t))
        coefficient = (self.t - 1.0) / t_next
        # y⁺ = x⁺ + c (x⁺ − x), written into x (x is no longer needed), then swap so x holds x⁺
        xp.subtract(self._next, self.x, out=self.x)
        self.x *= coefficient
        self.x += self._next
        self.x, self._next = self._next, self.x  # x = x⁺, _next = y⁺
        smooth, total = self.evaluate_composite(self._next, self._y_grad)
        if total > self.loss:
            self.restarts += 1
            t_next = 1.0
            self._next[...] = self.x
            smooth, total = self.evaluate_composite(self._next, self._y_grad)
        self.t = t_next
        self.params, self._next = self._next, self.params
        self.grad, self._y_grad = self._y_grad, self.grad
        self.smooth, self.loss = smooth, total
        return self.loss

    def summary(self) -> dict:
        return {"restarts": self.restarts}

    def state_dict(self) -> dict:
        return self._save(super().state_dict(), x=self.x, t=self.t, restarts=self.restarts)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.x[...] = self.xp.asarray(state["x"])
        self.t = float(state["t"])
        self.restarts = int(state["restarts"])


class Adam(ProximalMixin, Optimizer):
    """``adam``: ``m ← β₁m + (1−β₁)g``, ``v ← β₂v + (1−β₂)g²``,
    ``x ← x − lr·m̂/(√v̂ + ε)`` with ``m̂ = m/(1−β₁ᵗ)``, ``v̂ = v/(1−β₂ᵗ)`` (full-batch gradients)."""

    name = "adam"
    # A step moves each coordinate by about lr whatever the gradient's scale, so 1/L (a rate for the
    # gradient, 2.4e-6 on badly scaled data) is the wrong unit: --lr auto is a fixed distance instead.
    needs_lr = False
    auto_lr = 0.01

    def __init__(self, objective, *, xp, lr: float, l1: float = 0.0, beta1: float = 0.9, beta2: float = 0.999,
                 eps: float = 1e-8):
        super().__init__(objective, xp=xp, lr=lr)
        self._setup_l1(l1)
        self.beta1, self.beta2, self.eps = float(beta1), float(beta2), float(eps)

    def start(self, params) -> float:
        loss = super().start(params)
        self.m = self.xp.zeros_like(self.params)
        self.v = self.xp.zeros_like(self.params)
        self._work = self.xp.empty_like(self.params)
        self.t = 0
        return loss

    def step(self) -> float:
        xp, work = self.xp, self._work
        self.t += 1
        self.m *= self.beta1
        self.m += (1.0 - self.beta1) * self.grad
        self.v *= self.beta2
        xp.multiply(self.grad, self.grad, out=work)
        self.v += (1.0 - self.beta2) * work
        # work = sqrt(v / (1 − β₂ᵗ)) + ε ; step = lr/(1 − β₁ᵗ) · m / work
        xp.divide(self.v, 1.0 - self.beta2 ** self.t, out=work)
        xp.sqrt(work, out=work)
        work += self.eps
        xp.divide(self.m, work, out=work)
        work *= self.lr / (1.0 - self.beta1 ** self.t)
        self.params -= work
        self.loss = self.evaluate(self.params, self.grad)
        return self.loss

    def state_dict(self) -> dict:
        return dict(super().state_dict(), m=host_copy(self.xp, self.m), v=host_copy(self.xp, self.v), t=self.t)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.m[...] = self.xp.asarray(state["m"])
        self.v[...] = self.xp.asarray(state["v"])
        self.t = int(state["t"])


class LBFGS(ProximalMixin, Optimizer):
    """``lbfgs``: limited-memory BFGS (two-loop recursion, ``--memory`` pairs) with a strong-Wolfe line
    search (Nocedal & Wright, Algorithms 3.5/3.6, cubic interpolation; c₁ = 1e-4, c₂ = 0.9; the sufficient
    decrease is tested up to the loss's rounding, :func:`pgd.optim.prox.loss_resolution`).  Every trial
    point is a global evaluation.  The first step starts at ``1/‖∇f‖``, later ones at 1 with the usual
    ``sᵀy/yᵀy`` scaling.

    With ``--l1`` it is OWL-QN (Andrew & Gao, 2007): the quasi-Newton direction of the pseudo-gradient
    (the minimum-norm subgradient), projected onto the orthant it points into, and a backtracking
    Armijo search whose trial points are projected back onto that orthant; the curvature pairs use the
    smooth gradient only.  ``loss`` is then ``F = f + α Σ κ_j |p_j|`` (``smooth`` holds ``f``).

    Instrumented: ``wolfe_log`` holds ``(alpha, f0, g0·p, f1, g1·p)`` of every accepted step.
    """

    name = "lbfgs"
    needs_lr = False
    fixed_step = False
    supports_l1 = True
    c1, c2 = 1e-4, 0.9
    max_trials = 30

    def __init__(self, objective, *, xp, lr: float, l1: float = 0.0, memory: int = 10):
        super().__init__(objective, xp=xp, lr=lr)
        self._setup_l1(l1)
        self.memory = int(memory)
        self.resolution = loss_resolution(objective)
        self.wolfe_log = []
        self.line_search_evaluations = 0
        self.smooth = math.nan

    def start(self, params) -> float:
        self.smooth = super().start(params)
        self.s, self.y = [], []
        self._trial = self.xp.empty_like(self.params)
        self._trial_grad = self.xp.empty_like(self.params)
        self._direction = self.xp.empty_like(self.params)
        self._pseudo = self.xp.empty_like(self.params)
        self._l1_buffers()
        self.loss = self.smooth + self.l1_value(self.params)
        return self.loss

    def grad_norm(self) -> float:
        return self.composite_grad_norm()

    def _two_loop(self, gradient) -> None:
        """``_direction = −H·gradient`` from the stored pairs."""
        dot, q = self.objective.dot, self._direction
        q[...] = gradient
        alphas = []
        for s, y in zip(reversed(self.s), reversed(self.y)):
            rho = 1.0 / dot(y, s)
            alpha = rho * dot(s, q)
            alphas.append((alpha, rho))
            q -= alpha * y
        if self.s:
            q *= dot(self.s[-1], self.y[-1]) / dot(self.y[-1], self.y[-1])
        for (s, y), (alpha, rho) in zip(zip(self.s, self.y), reversed(alphas)):
            beta = rho * dot(y, q)
            q += (alpha - beta) * s
        q *= -1.0

    def _phi(self, alpha: float) -> tuple[float, float]:
        """Loss and directional derivative at ``params + alpha·direction`` (into the trial buffers)."""
        self.xp.multiply(self._direction, alpha, out=self._trial)
        self._trial += self.params
        self.line_search_evaluations += 1
        value = self.evaluate(self._trial, self._trial_grad)
        return value, self.objective.dot(self._trial_grad, self._direction)

    @staticmethod
    def _cubic(lo, f_lo, d_lo, hi, f_hi, d_hi) -> float:
        """Minimiser of the cubic through both ends, safeguarded to the middle 80 % (else bisection)."""
        width = hi - lo
        d1 = d_lo + d_hi - 3.0 * (f_lo - f_hi) / (lo - hi)
        radicand = d1 * d1 - d_lo * d_hi
        if radicand >= 0.0:
            d2 = math.copysign(math.sqrt(radicand), width)
            denominator = d_hi - d_lo + 2.0 * d2
            if denominator != 0.0:
                alpha = hi - width * (d_hi + d2 - d1) / denominator
                low, high = sorted((lo + 0.1 * width, hi - 0.1 * width))
                if low <= alpha <= high:
                    return alpha
        return lo + 0.5 * width

    def _line_search(self, f0: float, g0p: float, alpha: float):
        """A step satisfying the strong Wolfe conditions, or None; the trial buffers hold its point."""
        c1, c2 = self.c1, self.c2
        slack = self.resolution * abs(f0)  # Armijo up to the loss's rounding
        prev, f_prev, d_prev = 0.0, f0, g0p
        lo = hi = None
        for trial in range(self.max_trials):
            if lo is not None:
                alpha = self._cubic(*lo, *hi)
            f_a, d_a = self._phi(alpha)
            if lo is None:  # bracketing phase
                if f_a > f0 + c1 * alpha * g0p + slack or (trial > 0 and f_a >= f_prev):
                    lo, hi = (prev, f_prev, d_prev), (alpha, f_a, d_a)
                elif abs(d_a) <= -c2 * g0p:
                    return alpha, f_a, d_a
                elif d_a >= 0:
                    lo, hi = (alpha, f_a, d_a), (prev, f_prev, d_prev)
                else:
                    prev, f_prev, d_prev = alpha, f_a, d_a
                    alpha *= 2.0
                continue
            # zoom phase
            if f_a > f0 + c1 * alpha * g0p + slack or f_a >= lo[1] + slack:
                hi = (alpha, f_a, d_a)
            else:
                if abs(d_a) <= -c2 * g0p:
                    return alpha, f_a, d_a
                if d_a * (hi[0] - lo[0]) >= 0:
                    hi = lo
                lo = (alpha, f_a, d_a)
            if abs(hi[0] - lo[0]) <= 1e-16 * max(abs(lo[0]), 1.0):
                break
        return None

    def _remember(self) -> None:
        """Keep the curvature pair of the step from ``params`` to the trial point (smooth gradients)."""
        dot = self.objective.dot
        s = self._trial - self.params
        y = self._trial_grad - self.grad
        if dot(s, y) > 1e-12 * math.sqrt(dot(s, s) * dot(y, y)):
            self.s.append(s)
            self.y.append(y)
            if len(self.s) > self.memory:
                self.s.pop(0)
                self.y.pop(0)

    def _accept(self) -> None:
        self.params, self._trial = self._trial, self.params
        self.grad, self._trial_grad = self._trial_grad, self.grad

    def step(self) -> float:
        if self.l1:
            return self._orthant_step()
        dot = self.objective.dot
        self._two_loop(self.grad)
        g0p = dot(self.grad, self._direction)
        if not g0p < 0:  # not a descent direction: forget the curvature pairs
            self.s, self.y = [], []
            self._two_loop(self.grad)
            g0p = dot(self.grad, self._direction)
        alpha0 = 1.0 if self.s else min(1.0, 1.0 / math.sqrt(max(dot(self.grad, self.grad), 1e-300)))
        found = self._line_search(self.loss, g0p, alpha0)
        if found is None:
            self.stop_reason = "line search found no Wolfe step (rounding level)"
            return self.loss
        alpha, f_a, d_a = found
        self.wolfe_log.append((alpha, self.loss, g0p, f_a, d_a))
        self._remember()
        self._accept()
        self.loss = self.smooth = f_a
        return self.loss

    def _orthant_step(self) -> float:
        """One OWL-QN step (``--l1``)."""
        xp, dot = self.xp, self.objective.dot
        pseudo = self._pseudo
        pseudo[...] = self.composite_gradient(self.params, self.grad)
        self._two_loop(pseudo)
        direction = self._direction
        direction[direction * pseudo >= 0] = 0.0   # keep the signs of −pseudo-gradient
        if not dot(pseudo, direction) < 0:
            self.s, self.y = [], []
            xp.negative(pseudo, out=direction)
        orthant = xp.sign(self.params)
        free = orthant == 0
        orthant[free] = -xp.sign(pseudo)[free]
        penalised = self._kappa > 0
        norm = math.sqrt(max(dot(pseudo, pseudo), 1e-300))
        alpha = 1.0 if self.s else min(1.0, 1.0 / norm)
        slack = self.resolution * abs(self.loss)
        for _ in range(self.max_trials):
            xp.multiply(direction, alpha, out=self._trial)
            self._trial += self.params
            self._trial[penalised & (xp.sign(self._trial) != orthant)] = 0.0
            self.line_search_evaluations += 1
            smooth = self.evaluate(self._trial, self._trial_grad)
            total = smooth + self.l1_value(self._trial)
            if total <= self.loss + self.c1 * dot(pseudo, self._trial - self.params) + slack:
                break
            alpha *= 0.5
        else:
            self.stop_reason = "line search found no decrease (rounding level)"
            return self.loss
        self._remember()
        self._accept()
        self.smooth, self.loss = smooth, total
        return self.loss

    def summary(self) -> dict:
        return {"line_search_evaluations": self.line_search_evaluations}

    def state_dict(self) -> dict:
        return dict(super().state_dict(), s=[host_copy(self.xp, a) for a in self.s],
                    y=[host_copy(self.xp, a) for a in self.y], line_search_evaluations=self.line_search_evaluations)

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self.s = [self.xp.asarray(a).copy() for a in state["s"]]
        self.y = [self.xp.asarray(a).copy() for a in state["y"]]
        self.line_search_evaluations = int(state["line_search_evaluations"])
