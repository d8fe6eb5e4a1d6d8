"""The shared bilevel (Meta-Weight-Net) step used by MW-Net and CurveNet, with SLMO.

One iteration (Shu et al., NeurIPS 2019, Algorithm 1, eqs. 3-5; PROTOCOL.md §4):

1. look-ahead (eq. 3): a virtual step of the classifier on the weighted training loss
   ``L_tr(theta; phi) = sum_i a_i(phi) l_i(theta)`` at the classifier's *current* learning rate,
   ``theta'(phi) = theta - lr * D(grad_theta L_tr)``, where ``a_i = w_i / B`` (unnormalised, the
   MW-Net noisy-label code and CurveNet) or ``a_i = w_i / sum_j w_j`` (normalised, the MW-Net
   long-tail code) and ``w_i = V(input_i; phi)`` is the weighting network's output;
2. meta loss (eq. 4): mean CE of the look-ahead classifier ``theta'`` on the next clean meta batch;
   one optimiser step of the weighting network on ``d meta / d phi``;
3. real step (eq. 5): the weights recomputed with the updated network under ``no_grad`` and one
   step of the real optimiser on ``sum_i a_i l_i``.

``D`` is the look-ahead kind:

``lookahead="sgd"``   plain SGD, ``D(g) = g`` (MW-Net's ``MetaModule.update_params``; no momentum,
                      no weight decay; notes/curvenet_mwnet.md §2.2).
``lookahead="full"``  the real optimiser's full step with its momentum buffers, Nesterov, dampening
                      and weight decay (CurveNet's ``higher.innerloop_ctx`` + ``DifferentiableSGD``,
                      which copies the momentum buffers; notes §2.2). The real optimiser must be
                      ``torch.optim.SGD``; its state is read, never written, by the look-ahead.

SLMO (CurveNet paper eq. 10; code ``froze``, notes §4): ``skip_layers = SL`` freezes, in the
look-ahead only, the first SL blocks of ``model.blocks()`` = [stem, layer1, layer2, layer3, fc]:
SL = 1 the stem, SL = 2 the stem and stage 1, SL = 3 the stem and stages 1-2. Frozen blocks get
no virtual update and no second-order backward, and their BatchNorms use running statistics in
the look-ahead and meta forwards. The real model is never frozen. SL = 0 is the full step.

How the weighting-net gradient is computed
------------------------------------------
Two implementations of the same quantity, selected by ``second_order``:

``"autograd"``  the textbook route (DESIGN.md's description): ``g =
    torch.autograd.grad(L_tr, theta, create_graph=True)``, ``theta' = theta - lr D(g)`` as
    tensors with a graph, the meta forward through ``torch.func.functional_call`` on ``theta'``,
    and ``d meta / d phi`` by a second-order backward.
``"jvp"`` (default)  an exact rewriting that needs no second-order graph. Since ``D`` is affine
    in ``g`` with slope ``k`` (1 for plain SGD; 1 + momentum for Nesterov; 1 - dampening, or 1 on
    the first step, for heavy ball), ``d theta' / d a_i = -lr k grad_theta l_i`` and therefore

        d meta / d a_i = -lr k <grad_theta' meta(theta'), grad_theta l_i(theta)> = -c_i,

    i.e. ``c`` is the Jacobian-vector product of the per-sample training losses at ``theta`` in
    the direction ``v = lr k grad meta(theta')``. It is computed in one forward-mode pass
    (``torch.autograd.forward_ad``), and ``d meta / d phi = (d a / d phi)^T (-c)`` is an ordinary
    backward through the weighting network. Cost per step: train forward, first-order backward,
    meta forward + backward, one forward-mode pass, and the real backward, which reuses the train
    forward when SL = 0 (the look-ahead forward and the real forward are then the same
    computation). About 1.5x cheaper than ``"autograd"`` on the small CNN (CPU, one step).
    Both paths agree to float64 precision (tests/test_meta.py) and match finite differences.

With SL > 0 the frozen bottom's features are computed once per batch under ``no_grad`` with its
BatchNorms in eval mode, and only the top (the remaining stages, ``model.head`` and ``fc``) runs
functionally, for the look-ahead, the meta forward and the JVP; the real step is then a separate
ordinary forward/backward of the whole model (train mode).

BatchNorm buffers: the look-ahead and meta forwards run on clones of the buffers (as ``higher``
clones them, notes §2.2), so the real model's running statistics are updated exactly once per
iteration, by the real forward.

Public API (for the methods and the timing benchmark)
-----------------------------------------------------
``step = MetaStep(model, optimizer, weight_net, weight_opt, weight_fn=None, *, lookahead="sgd",
skip_layers=0, normalize=False, second_order="jvp", precision="fp32")``, then ``step(x, y, idx,
x_meta, y_meta, lr=None, *, update_classifier=True) -> dict`` (``__call__``) with keys
``meta_loss`` (scalar tensor), ``loss`` (the real step's weighted loss), ``weights`` (the
recomputed raw weights w, shape (B,)), ``losses`` (the per-sample CE of the real forward,
detached). ``weight_fn(loss, y, idx) -> w`` maps the batch's detached per-sample CE, labels and
training-pool indices to raw weights (B,) that depend on ``weight_net``'s parameters; the default
is MW-Net's ``weight_net(loss[:, None])``.
``weight_opt=None`` leaves ``d meta / d phi`` in ``weight_net``'s ``.grad`` without stepping.
``meta_step(model, weight_net, batch, meta_batch, optimizer, weight_opt, ...)`` is a one-call
wrapper (fp32; tests use it). ``MetaStep.on_phase``, when set, is called with each phase's name (``PHASES``) as the
phase ends: bench.timing's clock, which reports where an iteration's time goes.
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable

import torch
import torch.autograd.forward_ad as fwAD
import torch.nn as nn
import torch.nn.functional as F
from torch.func import functional_call

from bench.capture import autocast, check_precision
from bench.errors import BenchError
from methods.jvp import Linearization, NotLinearizable, ce_tangent, is_linearizable

# torch's forward-mode AD loads its batch-norm decompositions with torch.jit.script on first use,
# which warns (a torch internal, not ours) in every run; silence exactly that message (a
# FutureWarning in torch 2.14, a DeprecationWarning in 2.11).
warnings.filterwarnings("ignore", message="`torch.jit.script` is deprecated")

LOOKAHEADS = ("sgd", "full")
# The step's phases, in order, as reported to ``MetaStep.on_phase`` (bench.timing's breakdown):
# "batch" (assembling the train and meta batches) only through ``MetaStep.on_plans``; "jvp" only
# with second_order="jvp"; "real_*" only with update_classifier=True; "real_forward"
# is a separate forward only with SL > 0 (with SL = 0 it is the weights' recomputation alone).
# The paper's "meta time" (notes/curvenet_mwnet.md §4) is meta_backward + jvp + weight_update.
PHASES = ("batch", "lookahead_forward", "lookahead_backward", "meta_forward", "meta_backward", "jvp", "weight_update",
          "real_forward", "real_backward")
META_TIME_PHASES = ("meta_backward", "jvp", "weight_update")
SECOND_ORDER = ("jvp", "autograd")
MAX_SKIP_LAYERS = 3

WeightFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


def check_options(lookahead: str, skip_layers: int, second_order: str = "jvp") -> None:
    """BenchError (one line) for an invalid look-ahead kind, SLMO depth or implementation."""
    if lookahead not in LOOKAHEADS:
        raise BenchError(f"unknown look-ahead {lookahead!r}; choose from {', '.join(LOOKAHEADS)}")
    if isinstance(skip_layers, bool) or not isinstance(skip_layers, int) or not 0 <= skip_layers <= MAX_SKIP_LAYERS:
        raise BenchError(f"skip_layers must be an integer in 0..{MAX_SKIP_LAYERS}, got {skip_layers!r}")
    if second_order not in SECOND_ORDER:
        raise BenchError(f"unknown second_order {second_order!r}; choose from {', '.join(SECOND_ORDER)}")


class TopOfNetwork(nn.Module):
    """The blocks above the SLMO cut: ``model.blocks()[skip:-1]``, ``model.head``, pooling, ``fc``.

    Shares its modules (and so its parameter and buffer names, e.g. ``layer3.0.weight``) with
    ``model``. ``TopOfNetwork(model, 0)(x) == model(x)`` for every :class:`bench.models.Backbone`.
    """

    def __init__(self, model: nn.Module, skip_layers: int):
        super().__init__()
        blocks = model.blocks()
        self._stages = [name for name, _ in blocks[skip_layers:-1]]
        for name, module in blocks[skip_layers:-1]:
            self.add_module(name, module)
        head = getattr(model, "head", None)
        self.add_module("head", nn.Identity() if head is None else head)
        fc_name, fc = blocks[-1]
        self._fc = fc_name
        self.add_module(fc_name, fc)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        for name in self._stages:
            h = getattr(self, name)(h)
        h = self.head(h)
        h = torch.flatten(F.adaptive_avg_pool2d(h, 1), 1) if h.dim() == 4 else h
        return getattr(self, self._fc)(h)


def default_weight_fn(weight_net: nn.Module) -> WeightFn:
    """MW-Net's input: each sample's current CE loss, detached (``vnet(cost_v.data)``)."""
    return lambda loss, y, idx: weight_net(loss.unsqueeze(1)).reshape(loss.shape)


class MetaStep:
    """One Meta-Weight-Net iteration on a classifier and a weighting network (module docstring).

    Parameters
    ----------
    model        the classifier (a :class:`bench.models.Backbone`; ``blocks()`` is used for SLMO), or
                 K runs' classifiers fused into one (bench/fused.py; ``model.runs`` = K): the
                 batches are then rows of the K runs, the weighting net fused as well, and the
                 step is each run's own step (per-run a_i, the sum of the runs' meta losses).
    optimizer    its real optimiser (``torch.optim.SGD`` for ``lookahead="full"``); the look-ahead
                 uses each param group's current ``lr`` unless ``lr`` is passed to the call.
    weight_net   the weighting network V(.; phi) (MW-Net's 1-100-1 net or CurveNet).
    weight_opt   its optimiser (Adam / SGD), or None to only compute ``d meta / d phi`` into
                 ``weight_net``'s ``.grad``.
    weight_fn    ``(loss, y, idx) -> w`` raw weights (B,); default :func:`default_weight_fn`.
    lookahead    "sgd" (MW-Net) or "full" (CurveNet).
    skip_layers  SLMO depth 0..3 (CurveNet eq. 10).
    normalize    weights normalised by their sum (MW-Net long-tail code) instead of divided by B.
    second_order "jvp" (default, exact and cheaper) or "autograd" (create_graph reference).
    precision    "fp32" or "bf16": the classifier's forward passes (training, look-ahead, meta,
                 forward-mode JVP, real) under bf16 autocast (bench/capture.py); the weighting
                 net, the losses it reads and every optimiser stay float32.
    """

    def __init__(self, model: nn.Module, optimizer: torch.optim.Optimizer, weight_net: nn.Module,
                 weight_opt: torch.optim.Optimizer | None, weight_fn: WeightFn | None = None, *,
                 lookahead: str = "sgd", skip_layers: int = 0, normalize: bool = False,
                 second_order: str = "jvp", precision: str = "fp32"):
        check_options(lookahead, skip_layers, second_order)
        check_precision(precision)
        if lookahead == "full" and not isinstance(optimizer, torch.optim.SGD):
            raise BenchError("lookahead='full' reproduces torch.optim.SGD's step; the classifier "
                             f"optimiser is {type(optimizer).__name__}")
        self.model = model
        self.runs = getattr(model, "runs", 1)  # K runs fused into one classifier (bench/fused.py)
        self.optimizer = optimizer
        self.weight_net = weight_net
        self.weight_opt = weight_opt
        self.weight_fn = weight_fn or default_weight_fn(weight_net)
        self.lookahead = lookahead
        self.skip_layers = skip_layers
        self.normalize = normalize
        self.second_order = second_order
        self.precision = precision
        self.bottom = [module for _, module in model.blocks()[:skip_layers]]
        self.top = TopOfNetwork(model, skip_layers)
        self.names = [name for name, p in self.top.named_parameters() if p.requires_grad]
        self.params = [p for p in self.top.parameters() if p.requires_grad]
        self.buffer_names = [name for name, _ in self.top.named_buffers()]
        group_of = {id(p): i for i, g in enumerate(optimizer.param_groups) for p in g["params"]}
        missing = [n for n, p in zip(self.names, self.params) if id(p) not in group_of]
        if missing:
            raise BenchError(f"the classifier optimiser does not hold {missing[0]!r}")
        # group *indices*: optimizer.load_state_dict (a resumed run) replaces the group dicts
        self.group_index = [group_of[id(p)] for p in self.params]
        if any(g.get("maximize", False) for g in self.groups):
            raise BenchError("the meta step does not support maximize=True optimisers")
        self.weight_params = [p for p in weight_net.parameters() if p.requires_grad]
        # how c = J t is computed: pushed through the saved activations (methods/jvp.py) where
        # the backbone allows it, else torch's forward-mode AD; both exact (tests/test_meta.py)
        self.on_phase: Callable[[str], None] | None = None  # bench.timing's clock: called at the end of each of PHASES
        self.jvp = "forward_ad"
        if second_order == "jvp" and is_linearizable(model):
            try:
                self.linearization = Linearization(self.top, self.names)
                self.jvp = "linearized"
            except NotLinearizable:
                pass

    @property
    def groups(self) -> list[dict]:
        """The optimiser's current param group of each look-ahead parameter."""
        return [self.optimizer.param_groups[i] for i in self.group_index]

    # ------------------------------------------------------------------ pieces
    def coefficients(self, w: torch.Tensor) -> torch.Tensor:
        """a_i such that the weighted loss is sum_i a_i l_i: w / B, or w / sum(w) when normalised
        (the long-tail code keeps w when the sum is 0). A fused classifier's rows (``runs`` = K,
        bench/fused.py) are K batches of B / K: each run's a_i are its own (the sum over runs of
        each run's loss gives each run its own gradient)."""
        if not self.normalize:
            return w / (w.shape[0] // self.runs)
        total = w.sum() if self.runs == 1 else w.view(-1, self.runs).sum(0).repeat(w.shape[0] // self.runs)
        return torch.where(total != 0, w / torch.where(total != 0, total, torch.ones_like(total)), w)

    def meta_losses(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Each run's mean CE on its meta rows (eq. 4), shape ``(runs,)``: one run's, or K fused
        runs' (rows n K + k are run k's)."""
        if self.runs == 1:
            return F.cross_entropy(logits, y).reshape(1)
        return F.cross_entropy(logits, y, reduction="none").view(-1, self.runs).mean(0)

    def meta_loss(self, logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The meta loss: mean CE on the meta batch (eq. 4); for K fused runs the sum of the K
        runs' means (each run's weighting net then gets its own gradient)."""
        return self.meta_losses(logits, y).sum()

    def _buffers(self) -> dict[str, torch.Tensor]:
        """Clones of the top's buffers: virtual forwards must not touch the real running stats."""
        return {name: b.clone() for name, b in self.top.named_buffers()}

    def bottom_features(self, x: torch.Tensor) -> torch.Tensor:
        """The frozen bottom's output under no_grad with its BatchNorms in eval mode (SLMO)."""
        if not self.bottom:
            return x
        modes = [m.training for m in self.bottom]
        with torch.no_grad(), self._autocast():
            for m in self.bottom:
                m.eval()
            try:
                for m in self.bottom:
                    x = m(x)
            finally:
                for m, mode in zip(self.bottom, modes):
                    m.train(mode)
        return x

    def _autocast(self):
        return autocast(next(iter(self.params)).device, self.precision) if self.params else contextlib.nullcontext()

    def _top_call(self, params: dict[str, torch.Tensor], h: torch.Tensor) -> torch.Tensor:
        with self._autocast():
            return self._full(functional_call(self.top, {**params, **self._buffers()}, (h,)))

    def _full(self, logits: torch.Tensor) -> torch.Tensor:
        """bf16 autocast's logits back to float32 for the losses; fp32 logits unchanged (any dtype)."""
        return logits.float() if self.precision == "bf16" else logits

    def _step_rules(self, lr: float | None):
        """Per parameter: (lr, slope k of D in g, decay, momentum, dampening, nesterov, buffer)."""
        rules = []
        state = self.optimizer.state
        for p, group in zip(self.params, self.groups):
            step_lr = group["lr"] if lr is None else lr
            if self.lookahead == "sgd":
                rules.append((step_lr, 1.0, 0.0, 0.0, 0.0, False, None))
                continue
            mu, damp = group.get("momentum", 0.0), group.get("dampening", 0.0)
            nesterov, wd = group.get("nesterov", False), group.get("weight_decay", 0.0)
            buf = state.get(p, {}).get("momentum_buffer") if mu else None
            if not mu:
                k = 1.0
            else:
                k_buf = 1.0 if buf is None else 1.0 - damp
                k = 1.0 + mu * k_buf if nesterov else k_buf
            rules.append((step_lr, k, wd, mu, damp, nesterov, buf))
        return rules

    @staticmethod
    def _direction(p, g, rule):
        """The SGD update direction D(g) of ``torch.optim.SGD`` (``_single_tensor_sgd``)."""
        _, _, wd, mu, damp, nesterov, buf = rule
        d = g + wd * p if wd else g
        if mu:
            b = d if buf is None else mu * buf + (1.0 - damp) * d
            d = d + mu * b if nesterov else b
        return d

    def lookahead_params(self, grads, lr: float | None = None, *, rules=None) -> dict[str, torch.Tensor]:
        """theta' = theta - lr D(g) for the top's parameters (the frozen bottom is not in it)."""
        rules = rules or self._step_rules(lr)
        return {name: p - rule[0] * self._direction(p, g, rule)
                for name, p, g, rule in zip(self.names, self.params, grads, rules)}

    # ------------------------------------------------------------------ the step
    def __call__(self, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, x_meta: torch.Tensor,
                 y_meta: torch.Tensor, lr: float | None = None, *, update_classifier: bool = True) -> dict:
        model = self.model
        shared = self.skip_layers == 0
        # 1. training forward for the look-ahead (with SL = 0 it is also the real forward)
        record = self.linearization.record() if self.jvp == "linearized" else contextlib.nullcontext()
        if shared:
            with self._autocast(), record:
                logits = self._full(model(x))
            h, h_meta = x, x_meta
        else:  # one no_grad pass of the frozen bottom over both batches (eval-mode BN: per sample)
            h, h_meta = self.bottom_features(torch.cat([x, x_meta])).split([len(x), len(x_meta)])
            with record:
                logits = self._top_call(dict(zip(self.names, self.params)), h)
        losses = F.cross_entropy(logits, y, reduction="none")
        w = self.weight_fn(losses.detach(), y, idx)
        a = self.coefficients(w)
        rules = self._step_rules(lr)
        self._phase_done("lookahead_forward")

        # 2. look-ahead, meta loss and d meta / d phi
        if self.second_order == "autograd":
            grads = torch.autograd.grad((a * losses).sum(), self.params, create_graph=True)
            virtual = self.lookahead_params(grads, rules=rules)
            self._phase_done("lookahead_backward")
            meta_losses = self.meta_losses(self._top_call(virtual, h_meta), y_meta)
            meta_loss = meta_losses.sum()
            self._phase_done("meta_forward")
            phi_grads = torch.autograd.grad(meta_loss, self.weight_params, retain_graph=shared, allow_unused=True)
            self._phase_done("meta_backward")
        else:
            grads = torch.autograd.grad(losses, self.params, grad_outputs=a.detach(), retain_graph=shared)
            with torch.no_grad():
                virtual = {n: t.requires_grad_() for n, t in self.lookahead_params(grads, rules=rules).items()}
            self._phase_done("lookahead_backward")
            meta_losses = self.meta_losses(self._top_call(virtual, h_meta), y_meta)
            meta_loss = meta_losses.sum()
            self._phase_done("meta_forward")
            v = torch.autograd.grad(meta_loss, list(virtual.values()))
            tangents = [rule[0] * rule[1] * vi for rule, vi in zip(rules, v)]
            self._phase_done("meta_backward")
            c = (self._jvp_linearized(logits, h, y, tangents) if self.jvp == "linearized"
                 else self._jvp_losses(h, y, tangents))
            self._phase_done("jvp")
            phi_grads = torch.autograd.grad(a, self.weight_params, grad_outputs=-c, allow_unused=True)
        for p, g in zip(self.weight_params, phi_grads):
            p.grad = None if g is None else g.detach()
        if self.weight_opt is not None:
            self.weight_opt.step()
        self._phase_done("weight_update")

        # 3. real step with the recomputed weights
        if not update_classifier:
            return dict(meta_loss=meta_loss.detach(), meta_losses=meta_losses.detach(), loss=None, weights=w.detach(),
                        losses=losses.detach())
        if not shared:
            with self._autocast():
                logits = self._full(model(x))
            losses = F.cross_entropy(logits, y, reduction="none")
        with torch.no_grad():
            w_new = self.weight_fn(losses.detach(), y, idx)
            a_new = self.coefficients(w_new)
        self._phase_done("real_forward")
        terms = a_new * losses  # each sample's part of the weighted loss
        loss = terms.sum()
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        self._phase_done("real_backward")
        return dict(meta_loss=meta_loss.detach(), meta_losses=meta_losses.detach(), loss=loss.detach(),
                    loss_terms=terms.detach(), weights=w_new, losses=losses.detach())

    def on_plans(self, train, meta_loader, weights_into: torch.Tensor | None = None) -> Callable:
        """This step as a function of a train and a meta batch plan (``bench.data.Plan``), as MW-Net
        and CurveNet capture it (bench/capture.py) and bench.timing times it: assemble both batches,
        step, return (weighted loss x B, meta loss, sum of the weights) for the epoch's sums (for K
        fused runs one such row per run, shape ``(K, 3)``, B each run's batch size).
        ``weights_into`` (one entry per training-pool sample) receives the recomputed weights.
        The step's arguments are the train plan's tensors then the meta plan's, as many of each
        (three: idx, offsets, flip; for fused runs, bench.timing, three per run)."""
        def step(*plans):
            half = len(plans) // 2
            x, y, idx = train.assemble(*plans[:half])
            xm, ym, _ = meta_loader.assemble(*plans[half:])
            self._phase_done("batch")
            out = self(x, y, idx, xm, ym)
            if weights_into is not None:
                weights_into[idx] = out["weights"]
            if self.runs == 1:
                return torch.stack([out["loss"] * len(y), out["meta_loss"], out["weights"].sum()])
            K = self.runs
            run_losses = out["loss_terms"].view(-1, K).sum(0)
            return torch.stack([run_losses * (len(y) // K), out["meta_losses"], out["weights"].view(-1, K).sum(0)], 1)
        return step

    def _phase_done(self, phase: str) -> None:
        if self.on_phase is not None:
            self.on_phase(phase)

    def _jvp_linearized(self, logits, h, y, tangents) -> torch.Tensor:
        """c = J t through the training forward's saved activations (methods/jvp.py)."""
        with self._autocast():
            dlogits = self.linearization.jvp(h, list(tangents))
        return ce_tangent(logits, y, dlogits).to(logits.dtype)

    def _jvp_losses(self, h: torch.Tensor, y: torch.Tensor, tangents) -> torch.Tensor:
        """d/de l_i(theta + e t) at e = 0 for the per-sample training losses (forward mode).

        Falls back to :meth:`_jvp_losses_reverse` if a layer has no forward-mode formula."""
        try:
            with fwAD.dual_level():
                dual = {n: fwAD.make_dual(p.detach(), t) for n, p, t in zip(self.names, self.params, tangents)}
                out = F.cross_entropy(self._top_call(dual, h), y, reduction="none")
                tangent = fwAD.unpack_dual(out).tangent
        except (NotImplementedError, RuntimeError) as exc:
            if "forward AD" not in str(exc):
                raise
            return self._jvp_losses_reverse(h, y, tangents)
        return torch.zeros_like(out) if tangent is None else tangent

    def _jvp_losses_reverse(self, h: torch.Tensor, y: torch.Tensor, tangents) -> torch.Tensor:
        """The same JVP by reverse-over-reverse: J t = d/du <t, J^T u> (slower, always available)."""
        with torch.enable_grad():
            out = F.cross_entropy(self._top_call(dict(zip(self.names, self.params)), h), y, reduction="none")
            u = torch.zeros_like(out, requires_grad=True)
            g = torch.autograd.grad(out, self.params, grad_outputs=u, create_graph=True)
            return torch.autograd.grad(g, u, grad_outputs=list(tangents))[0]

    # ------------------------------------------------------------------ for tests and figures
    def meta_loss_at(self, x, y, idx, x_meta, y_meta, lr: float | None = None) -> torch.Tensor:
        """The meta loss of the look-ahead classifier for the weighting net's current parameters,
        without any update (model, optimiser state, running statistics and weights untouched)."""
        saved = {n: b.clone() for n, b in self.model.named_buffers()}
        try:
            with torch.enable_grad():
                h = self.bottom_features(x)
                logits = self._top_call(dict(zip(self.names, self.params)), h)
                losses = F.cross_entropy(logits, y, reduction="none")
                a = self.coefficients(self.weight_fn(losses.detach(), y, idx)).detach()
                grads = torch.autograd.grad((a * losses).sum(), self.params)
            with torch.no_grad():
                virtual = self.lookahead_params(grads, lr)
                return self.meta_loss(self._top_call(virtual, self.bottom_features(x_meta)), y_meta)
        finally:
            with torch.no_grad():
                for n, b in self.model.named_buffers():
                    b.copy_(saved[n])


def meta_step(model: nn.Module, weight_net: nn.Module, batch, meta_batch, optimizer: torch.optim.Optimizer,
              weight_opt: torch.optim.Optimizer | None, *, weight_fn: WeightFn | None = None,
              lr: float | None = None, lookahead: str = "sgd", skip_layers: int = 0, normalize: bool = False,
              second_order: str = "jvp") -> dict:
    """One call of :class:`MetaStep` on ``batch = (x, y, idx)`` and ``meta_batch = (x, y[, idx])``.

    Builds the step each call (cheap); loops should keep one :class:`MetaStep`.
    """
    step = MetaStep(model, optimizer, weight_net, weight_opt, weight_fn, lookahead=lookahead,
                    skip_layers=skip_layers, normalize=normalize, second_order=second_order)
    x, y, idx = batch
    return step(x, y, idx, meta_batch[0], meta_batch[1], lr)
