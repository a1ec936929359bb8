"""Batched trials: trials that run the same code, trained together as one vmapped model.

``BatchedExecutor(max_trials=64)`` groups the trials of a run that differ only in
what can be stacked along a leading "trial" dimension, trains each group with
``torch.func.functional_call`` + ``vmap`` over the one (unchanged) model, and
writes every trial's metrics and checkpoints to the store exactly as the serial
path does. Trials that cannot join a group run through the ordinary path.

Decisions:

* A group shares the model, the optimizer's code path (class, ``nesterov``), the
  batch size, the resume point (the last committed epoch), and the code of its
  overlays (the same ``Tweak`` selectors and functions, the same windows). Its
  trials may differ in initial weights (``seed_weights``, ``PerturbWeights``,
  ``ReinitWeights``, any unwindowed ``start``), in batch order (``seed_shuffle``:
  each trial gathers its own batch indices) and in numeric optimizer
  hyperparameters (per-trial tensors, ``vectorized_optim``), windowed
  ``ChangeOptimizer`` and ``PerturbWeights`` included (per trial, at its steps).
* A ``Tweak`` that names the training loop (``one_batch > loss``) has no batched
  form (there is no per-trial loop to tweak): such a trial runs alone, and so
  does any trial of a windowed intervention of another kind, a training set
  other than a ``TensorDataset``, or an optimizer other than SGD/Adam/AdamW.
* An experiment with ``callbacks`` runs every trial alone, through the serial
  path, and says so in one line on stderr: a callback acts on one trial's
  ``Learner`` (its model, batches, loss), and a vmapped group has none; running
  it on unstacked copies after each step would not see the group's forward
  passes. Its numbers are then exactly the serial path's.
* A group's trial's numbers equal its serial numbers within float tolerance,
  not bit for bit (batched kernels sum in another order). Random draws inside
  the model (dropout) are ``randomness="different"`` per trial, seeded by the
  group's trials and the epoch: reproducible for the same group, but not the
  serial path's masks (which a control shares with its interventions).
* A group claims the leases of all its trials before it trains (``store.Leases``,
  one heartbeat thread) and releases them when it ends, fails or is interrupted.
  A trial another live process holds leaves the group and runs alone later
  (``run_trial`` waits for the lease, then finds it done); so does a trial
  whose resume point changed meanwhile or whose last checkpoint does not verify
  (it resumes from its last good epoch, with a warning, as a serial trial does),
  and an intervention whose control left the group.
* A trial that diverges (NaN/inf loss) does not touch the others: each trial's
  gradient is its own, its metrics are stored as NaN/inf as a serial trial's.
* Groups run one after another, each single-threaded like a serial trial; a
  group whose trials' controls are in another group waits for it (a cycle
  is broken by running the waiting trials alone afterwards). Per epoch, the
  controls of a group commit first (their interventions' metrics read them).
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable
from contextlib import ExitStack
from typing import Any

import torch
from torch.func import functional_call, stack_module_state, vmap
from torch.utils.data import BatchSampler, RandomSampler, TensorDataset

from ... import select
from .config import derive_seed
from .executors import Job
from .interventions import (
    ChangeOptimizer,
    Intervention,
    PerturbWeights,
    Tweak,
    hyperparameters_of,
    optimizer_defaults,
)
from .metrics import Metrics
from .store import Leases
from .trial import (
    EVAL_BATCH,
    Setup,
    TrialError,
    TrialPlan,
    TrialRun,
    build_model,
    commit,
    isolated,
    make_loader,
    resume_point,
    run_trial,
)
from .vectorized_optim import StackedOptimizer, code_path, supports

__all__ = ["BatchedExecutor", "plan_groups", "train_group", "why_alone"]

CALLBACKS_ALONE = (
    "the experiment's callbacks need a Learner per trial, which a vmapped group has not"
)

# The Learner's stages: a Tweak of them has no batched form.
LOOP = {"fit", "one_epoch", "one_batch", "split_batch", "backward", "step", "zero_grad"}


# -- grouping -------------------------------------------------------------------------
def why_alone(setup: Setup, plan: TrialPlan) -> str | None:
    """Why ``plan`` cannot join a group (``None``: it can)."""
    if setup.callbacks is not None:
        return CALLBACKS_ALONE
    if type(setup.train) is not TensorDataset:
        return "the training set is not a TensorDataset (batches are gathered per trial)"
    s = plan.settings
    full = optimizer_defaults(s["optimizer"], hyperparameters_of(s), None)
    why = supports(s["optimizer"], full)
    if why:
        return why
    for e in plan.effects:
        if isinstance(e, Tweak):
            why = _loop_selector(e)
        elif e.when is None:
            why = None if e.overlay() is None else f"{e.label()} is an overlay but not a Tweak"
        elif type(e) is PerturbWeights:
            why = None
        elif type(e) is ChangeOptimizer:
            why = _window_optimizer(s, full, e)
        else:
            why = f"{e.label()}: a windowed {type(e).__name__} has no batched form"
        if why:
            return why
    return None


def _loop_selector(e: Tweak) -> str | None:
    for text in e.params["values"]:
        for node in select(text).walk():
            fn = getattr(node, "fn", "")
            if fn is None or fn in LOOP or (fn or "").startswith("Learner"):
                return f"{e.label()}: {text!r} may name the training loop, which is not batched"
    return None


def _window_optimizer(settings: dict, full: dict, e: ChangeOptimizer) -> str | None:
    inside = {**full, **e.hyperparameters()}
    why = supports(settings["optimizer"], inside)
    if why:
        return why
    if code_path(settings["optimizer"], inside) != code_path(settings["optimizer"], full):
        return f"{e.label()} changes the optimizer's code path inside its windows"
    if settings["optimizer"] is torch.optim.SGD and (full.get("momentum", 0) == 0) != (
        inside.get("momentum", 0) == 0
    ):
        return f"{e.label()} turns momentum on or off (torch's buffer restarts; run alone)"
    return None


def group_key(setup: Setup, plan: TrialPlan, done: int) -> tuple:
    """Trials with equal keys (and no ``why_alone``) can share a group."""
    s = plan.settings
    full = optimizer_defaults(s["optimizer"], hyperparameters_of(s), None)
    overlays = [e.config() for e in plan.effects if isinstance(e, Tweak)]
    return (
        done,
        code_path(s["optimizer"], full),
        s["batch_size"],
        json.dumps(overlays, sort_keys=True),
    )


def plan_groups(
    setup: Setup, trials: list[str], epochs: dict[str, int], max_trials: int = 64
) -> list[list[str]]:
    """``trials`` split into groups (in order; a group of one runs the ordinary way).

    Within a group, controls come first.
    """
    by_key: dict[Any, list[str]] = {}
    alone: list[list[str]] = []
    for tid in trials:
        plan = setup.plans[tid]
        if why_alone(setup, plan):
            alone.append([tid])
        else:
            by_key.setdefault(group_key(setup, plan, epochs[tid]), []).append(tid)
    groups = []
    for members in by_key.values():
        for i in range(0, len(members), max_trials):
            chunk = members[i : i + max_trials]
            groups.append(sorted(chunk, key=lambda t: not setup.plans[t].is_control))
    return groups + alone


# -- training a group -----------------------------------------------------------------
class _Sums:
    """Per-trial sums of loss, correct predictions and samples over one split."""

    def __init__(self, n: int, device: Any):
        self.loss = torch.zeros(n, dtype=torch.float64, device=device)
        self.correct = torch.zeros(n, dtype=torch.float64, device=device)
        self.count = 0
        self.classified = True

    def add(self, loss: torch.Tensor, preds: torch.Tensor, targets: torch.Tensor) -> None:
        n = targets.shape[-1]
        self.loss += loss.detach().double() * n
        self.count += n
        # Same rule as the serial ``Running``: per trial, (batch, classes) scores.
        if self.classified and preds.dim() == 3 and targets.dim() == 2:
            if not targets.is_floating_point():
                self.correct += (preds.detach().argmax(-1) == targets).sum(-1).double()
                return
        self.classified = False

    def result(self, i: int, split: str, metrics: Metrics) -> dict:
        out = {}
        if self.count and metrics.loss:
            out[(split, "loss")] = float(self.loss[i]) / self.count
        if self.count and self.classified and metrics.accuracy:
            out[(split, "accuracy")] = float(self.correct[i]) / self.count
        return out


class _Committed:
    """What ``trial.commit`` reads of a run, for one trial of a group."""

    def __init__(self, plan: TrialPlan, model: torch.nn.Module, step: int, opt: Any):
        self.plan, self.model, self.step = plan, model, step
        self.learn = None if opt is None else _Learn(opt)


class _Learn:
    def __init__(self, opt: Any):
        self.opt = opt


class _OneTrialOpt:
    def __init__(self, stacked: StackedOptimizer, i: int, params: list):
        self.stacked, self.i, self.params = stacked, i, params

    def state_dict(self) -> dict:
        return self.stacked.state_dict(self.i, self.params)


class Group:
    """The live state of a group: stacked weights, optimizer, step, windows."""

    def __init__(self, setup: Setup, trials: list[str], randomness: str):
        self.setup, self.ids = setup, trials
        self.plans = [setup.plans[t] for t in trials]
        self.device = setup.device
        self.randomness = randomness
        s = self.plans[0].settings
        self.optimizer, self.batch_size = s["optimizer"], s["batch_size"]
        # Loads one trial's weights at a time (for metrics, checkpoints, actions).
        self.scratch = build_model(setup.model, None).to(self.device)
        self.step = 0

    # -- building -----------------------------------------------------------------------
    def start(self, done: int) -> dict[str, dict] | None:
        """Weights (fresh and acted on, or from epoch ``done``); epoch 0's results if fresh."""
        models, states = [], []
        for plan in self.plans:
            seed = derive_seed("weights", plan.settings["seed_weights"])
            model = build_model(self.setup.model, seed)
            if done >= 0:
                state = self.setup.store.load_checkpoint(plan.id, done)
                model.load_state_dict(state["model"])
                states.append(state)
            else:
                run = TrialRun(plan, model)
                for e in plan.effects:
                    if e.when is None:
                        e.start(run)
            models.append(model.to(self.device))
        params, buffers = stack_module_state(models)
        self.params = {k: v.detach().requires_grad_() for k, v in params.items()}
        self.buffers = buffers
        self.base = models[0]
        hypers = [
            optimizer_defaults(p.settings["optimizer"], hyperparameters_of(p.settings), None)
            for p in self.plans
        ]
        self.control_hypers = hypers
        self.opt = StackedOptimizer(self.optimizer, list(self.params.values()), hypers)
        scratch_params = list(self.scratch.parameters())
        for i, state in enumerate(states):
            if state.get("opt") is not None:
                self.opt.load_state_dict(i, scratch_params, state["opt"])
        steps = {st["step"] for st in states}
        if len(steps) > 1:
            raise RuntimeError(f"trials of one group stopped at different steps: {steps}")
        self.step = steps.pop() if steps else 0
        self.windowed = [
            (i, e) for i, plan in enumerate(self.plans) for e in plan.effects if e.when is not None
        ]
        self.inside = {(i, id(e)): _inside(e, self.step - 1) for i, e in self.windowed}
        if done >= 0:
            return None
        results = {}
        for split, data in (("train", self.setup.train), ("test", self.setup.test)):
            sums = self.evaluate(data)
            for i, plan in enumerate(self.plans):
                results.setdefault(plan.id, {}).update(sums.result(i, split, self.setup.metrics))
        return results

    # -- running ------------------------------------------------------------------------
    def _forward(self, params: dict, buffers: dict, x: torch.Tensor, y: torch.Tensor) -> Any:
        preds = functional_call(self.base, (params, buffers), (x,))
        return self.setup.loss_fn(preds, y), preds

    def evaluate(self, data: Any) -> _Sums:
        """Loss and accuracy of every trial on ``data`` (eval mode, no gradients)."""
        self.base.eval()
        sums = _Sums(len(self.plans), self.device)
        fn = vmap(self._forward, in_dims=(0, 0, None, None), randomness=self.randomness)
        with torch.no_grad():
            for xb, yb in make_loader(data, EVAL_BATCH):
                xb, yb = xb.to(self.device), yb.to(self.device)
                loss, preds = fn(self.params, self.buffers, xb, yb)
                sums.add(loss, preds, yb.expand(len(self.plans), *yb.shape))
        return sums

    def batches(self, epoch: int) -> list[torch.Tensor]:
        """Per step, the ``(trials, batch)`` indices of each trial's own batch order."""
        per_trial = []
        for plan in self.plans:
            g = torch.Generator().manual_seed(
                derive_seed("shuffle", plan.settings["seed_shuffle"], epoch)
            )
            sampler = BatchSampler(
                RandomSampler(self.setup.train, generator=g), self.batch_size, False
            )
            per_trial.append(list(sampler))
        return [torch.tensor(step) for step in zip(*per_trial)]

    def train_epoch(self, epoch: int, overlays: list) -> _Sums:
        x, y = (t.to(self.device) for t in self.setup.train.tensors)
        torch.manual_seed(derive_seed("batched-run", self.ids, epoch))
        self.base.train()
        fn = vmap(self._forward, in_dims=(0, 0, 0, 0), randomness=self.randomness)
        sums = _Sums(len(self.plans), self.device)
        params = list(self.params.values())
        for idx in self.batches(epoch):
            idx = idx.to(self.device)
            entered = self.windows(overlays)
            try:
                xb, yb = x[idx], y[idx]
                loss, preds = fn(self.params, self.buffers, xb, yb)
                loss.sum().backward()  # trials are independent: each gets its own gradient
                self.opt.step()
            finally:
                for overlay in reversed(entered):
                    overlay.__exit__(None, None, None)
            for p in params:
                p.grad = None
            sums.add(loss, preds, yb)
            self.step += 1
        return sums

    def windows(self, overlays: list) -> list:
        """Open and close per-trial windows at this step; enter the shared overlays."""
        for i, e in self.windowed:
            now = _inside(e, self.step)
            was = self.inside[(i, id(e))]
            if now != was:
                self.act(i, e, opening=now)
            self.inside[(i, id(e))] = now
        entered = []
        for e in overlays:  # the same windows for every trial of the group
            if _inside(e, self.step):
                overlay = e.overlay()
                overlay.__enter__()
                entered.append(overlay)
        return entered

    def act(self, i: int, e: Intervention, opening: bool) -> None:
        if isinstance(e, Tweak):
            return  # entered per batch, for the whole group
        if type(e) is ChangeOptimizer:
            if opening:
                self.opt.set(i, e.hyperparameters())
            else:
                control = self.control_hypers[i]
                self.opt.set(i, {k: control[k] for k in e.hyperparameters()})
            return
        if opening:  # an action on the weights: on one trial's copy, then back in the stack
            model = self.load(i)
            run = TrialRun(self.plans[i], model)
            run.step = self.step
            e.open(run)
            with torch.no_grad():
                for name, p in model.named_parameters():
                    self.params[name][i].copy_(p)

    def load(self, i: int) -> torch.nn.Module:
        """The scratch model holding trial ``i``'s weights and buffers now."""
        state = {k: v[i] for k, v in {**self.params, **self.buffers}.items()}
        self.scratch.load_state_dict(state)
        return self.scratch

    def commit(self, epoch: int, results: dict[str, dict]) -> None:
        """Each trial's metrics and checkpoint, as the serial path writes them."""
        for i, plan in enumerate(self.plans):
            model = self.load(i)
            opt = None if epoch == 0 else _OneTrialOpt(self.opt, i, list(model.parameters()))
            commit(self.setup, _Committed(plan, model, self.step, opt), epoch, results[plan.id])


def _inside(e: Intervention, step: int) -> bool:
    return any(s <= step < end for s, end in e.when)


def train_group(
    setup: Setup, trials: list[str], n_epochs: int, randomness: str = "different"
) -> int:
    """Bring a group of trials (equal resume points) to ``n_epochs``; returns epochs trained."""
    done = start = setup.store.epochs(trials)[trials[0]]
    group = Group(setup, trials, randomness)
    plans = group.plans
    try:
        with isolated(setup.device), ExitStack() as stack:
            always = [e for e in plans[0].effects if isinstance(e, Tweak) and e.when is None]
            windowed = [e for e in plans[0].effects if isinstance(e, Tweak) and e.when]
            for e in always:
                stack.enter_context(e.overlay())
            first = group.start(done)
            if first is not None:
                group.commit(0, first)
                done = 0
            for epoch in range(done + 1, n_epochs + 1):
                train = group.train_epoch(epoch, windowed)
                test = group.evaluate(setup.test)
                results = {}
                for i, plan in enumerate(plans):
                    results[plan.id] = {
                        **train.result(i, "train", setup.metrics),
                        **test.result(i, "test", setup.metrics),
                    }
                group.commit(epoch, results)
        return n_epochs - max(start, 0)
    except Exception as exc:
        error = traceback.format_exc()
        for tid in trials:
            setup.store.fail(tid, error)
        labels = ", ".join(p.label for p in plans[:3]) + (", ..." if len(plans) > 3 else "")
        raise TrialError(
            f"a batched group of {len(plans)} trials ({labels}) failed: {exc!r}"
        ) from exc


# -- the executor ---------------------------------------------------------------------
Done = Callable[[str, int], None] | None


class BatchedExecutor:
    """Run groups of up to ``max_trials`` stackable trials as one vmapped model each.

    Trials that cannot join a group (see ``why_alone``) run one by one in this
    process, as ``SerialExecutor`` runs them.
    """

    def __init__(self, max_trials: int = 64, randomness: str = "different"):
        if not isinstance(max_trials, int) or max_trials < 1:
            raise ValueError(f"max_trials must be a positive int, got {max_trials!r}")
        if randomness not in ("different", "same", "error"):
            raise ValueError(
                f"randomness must be 'different', 'same' or 'error', got {randomness!r}"
            )
        self.max_trials, self.randomness = max_trials, randomness

    def run(self, setup: Setup, jobs: list[Job], n_epochs: int, done: Done = None) -> dict:
        after = {j.id: j.after for j in jobs}
        epochs = setup.store.epochs(list(after))
        units = plan_groups(setup, list(after), epochs, self.max_trials)
        if setup.callbacks is not None and jobs:
            print(f"BatchedExecutor: {len(jobs)} trials run one by one: {CALLBACKS_ALONE}",
                  file=sys.stderr, flush=True)  # fmt: skip
        finished: set[str] = set()
        results: dict[str, int] = {}
        with Leases(setup.store) as leases:  # leaving it releases them, even on Ctrl-C
            while units:
                unit = _ready(units, after, finished)
                units.remove(unit)
                if len(unit) > 1:
                    unit = _claim(setup, unit, epochs, after, finished, leases, units)
                if len(unit) == 1:
                    trained = {unit[0]: run_trial(setup, unit[0], n_epochs)}
                elif unit:
                    try:
                        n = train_group(setup, unit, n_epochs, self.randomness)
                    finally:
                        for tid in unit:
                            leases.release(tid)
                    trained = dict.fromkeys(unit, n)
                else:
                    trained = {}
                for tid, n in trained.items():
                    finished.add(tid)
                    results[tid] = n
                    if done is not None:
                        done(tid, n)
        return results


def _claim(
    setup: Setup,
    unit: list[str],
    planned: dict[str, int],
    after: dict,
    finished: set,
    leases: Leases,
    units: list[list[str]],
) -> list[str]:
    """The trials of ``unit`` that can train as a group now, their leases claimed.

    The others (held by another live process, resumed elsewhere meanwhile, a
    damaged last checkpoint, a control that left) are appended to ``units`` to
    run alone, their leases released (``run_trial`` takes them); so are the
    trials of a group reduced to one.
    """
    store = setup.store
    claimed = [t for t in unit if leases.claim(t)]
    now = store.epochs(claimed)
    keep = []
    for tid in claimed:
        store.remove_leftovers(tid)
        resume, _ = resume_point(store, setup.plans[tid], now[tid])
        if now[tid] == planned[tid] and resume == now[tid]:
            keep.append(tid)
    while True:  # an intervention needs its control finished or in the group
        left = [t for t in keep if after[t] and after[t] not in finished and after[t] not in keep]
        if not left:
            break
        keep = [t for t in keep if t not in left]
    if len(keep) < 2:
        keep = []
    for tid in claimed:
        if tid not in keep:
            leases.release(tid)
    units.extend([t] for t in unit if t not in keep)
    return keep


def _ready(units: list[list[str]], after: dict, finished: set) -> list[str]:
    """The first unit whose trials' controls are finished or in it; breaks cycles."""

    def waiting(unit: list[str]) -> list[str]:
        return [t for t in unit if after[t] and after[t] not in finished and after[t] not in unit]

    for unit in units:
        if not waiting(unit):
            return unit
    # A cycle between groups: the waiting trials of a group leave it and run alone later.
    for k, unit in enumerate(units):
        blocked = waiting(unit)
        if len(blocked) < len(unit):
            units[k] = [t for t in unit if t not in blocked]
            units.extend([t] for t in blocked)
            return units[k]
    raise ValueError(f"trial {units[0][0]} waits for {after[units[0][0]]}, which was not scheduled")
