"""Interventions: what differs between one trial and another.

An intervention changes a trial's *settings* (which optimizer, batch size, seeds),
acts on its model once (perturb or re-draw the weights), or is an *overlay* of
ptera tweaks and rewrites on any variable the training runs through. None of them
touches the model's code: the model is deep-copied per trial and overlays end with it.

Decisions:

* ``make_variations(**grid)`` is the product of the grid's values: a scalar is one
  value; a tuple, list or range are alternatives; a function (not a class) is
  called with the control's value of that parameter and returns the alternatives
  (``momentum=lambda m: (m * 1.01, m * 0.99)``). Functions are resolved per
  variation, so the grid is a ``Family`` until the experiment expands it.
* ``when=((start, end), ...)`` are training-step windows, ``start <= step < end``.
  A windowed change holds inside its windows and the control setting returns
  after each; a one-shot action (``PerturbWeights``) fires when a window opens.
  ``when`` is one setting of the intervention, not a grid axis.
* Settings changes without ``when`` are folded into the trial's settings, so a
  trial's identity is what it runs, not how the grid spelled it
  (``ReinitWeights(seed_weights=0)`` is the default trial).
"""

from __future__ import annotations

import difflib
import inspect
import itertools
import sys
from collections.abc import Callable, Iterable, Mapping
from typing import Any, ClassVar

import torch

from ... import Effects, select
from ...plugin import caller_env, check_selector
from . import imports
from .config import derive_seed, normalize

__all__ = [
    "ChangeOptimizer",
    "ChangeTrainLoader",
    "Family",
    "Intervention",
    "PerturbWeights",
    "ReinitWeights",
    "Tweak",
]

REQUIRED = object()


class Intervention:
    """Base class: one change to a trial, with optional step windows (``when``)."""

    parameters: ClassVar[dict[str, Any]] = {}  # name -> default (REQUIRED: must be given)
    aliases: ClassVar[dict[str, str]] = {}
    windowable: ClassVar[bool] = True

    def __init__(self, when: Iterable | None = None, **params: Any):
        self.params = self._check(params)
        self.when = _windows(when, type(self).__name__) if when is not None else None
        if self.when is not None and not self.windowable:
            raise TypeError(f"{type(self).__name__} cannot take when=: {self.why_not_windowed}")

    why_not_windowed = ""

    @classmethod
    def _canonical(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        """``params`` by their canonical names; an unknown name is an error."""
        out = {}
        for name, value in params.items():
            name = cls.aliases.get(name, name)
            if name not in cls.parameters and not cls._open_parameters():
                raise TypeError(_unknown(cls, name))
            out[name] = value
        return out

    @classmethod
    def _check(cls, params: Mapping[str, Any]) -> dict[str, Any]:
        out = cls._canonical(params)
        for name, default in cls.parameters.items():
            if name not in out:
                if default is REQUIRED:
                    raise TypeError(f"{cls.__name__} needs {name}=")
                out[name] = default
        if not out:
            raise TypeError(f"{cls.__name__}() changes nothing: give at least one parameter")
        return out

    @classmethod
    def _open_parameters(cls) -> bool:
        return False

    @classmethod
    def make_variations(cls, when: Iterable | None = None, **grid: Any) -> Family:
        """The product of ``grid``'s alternatives, as one ``Family`` of interventions."""
        checked = cls._canonical(grid)
        if not checked:
            raise TypeError(f"{cls.__name__}.make_variations() needs at least one parameter")
        when = _windows(when, cls.__name__) if when is not None else None
        family = Family(cls, checked, when)
        family.expand({})  # an empty axis or a bad value fails here, before any training
        return family

    # -- what the trial runner asks ------------------------------------------------
    def settings(self) -> dict[str, Any]:
        """Settings this changes for the whole trial (folded into the trial's config)."""
        return {}

    def is_effect(self) -> bool:
        """Whether it acts while the trial runs (and so is part of the config as itself)."""
        return self.when is not None

    def start(self, run: Any) -> None:
        """Act once, after the model is built and before anything is measured."""

    def open(self, run: Any) -> None:
        """A window opens (``run.step`` is its first step)."""
        self.start(run)

    def close(self, run: Any) -> None:
        """A window closes: the control setting returns."""

    def overlay(self) -> Effects | None:
        """Tweaks and rewrites active for the whole trial (or, windowed, per batch)."""
        return None

    def validate(self, settings: Mapping[str, Any]) -> None:
        """Raise a clear error now if this cannot run on a trial with ``settings``."""

    @classmethod
    def control_value(cls, name: str, control: Mapping[str, Any]) -> Any:
        """The control's value of ``name``, given to a function in ``make_variations``."""
        return control[name]

    # -- identity ------------------------------------------------------------------
    def columns(self) -> dict[str, Any]:
        """Its parameters as the columns of ``Experiment.results()`` (and ``when``)."""
        return {**self.params, **({"when": self.when} if self.when else {})}

    def config(self) -> dict[str, Any]:
        out = {"type": type(self).__name__, **{k: normalize(v) for k, v in self.params.items()}}
        if self.when is not None:
            out["when"] = [list(w) for w in self.when]
        return out

    def label(self) -> str:
        parts = [f"{k}={short(v)}" for k, v in self.params.items()]
        if self.when is not None:
            parts.append("when=" + windows_text(self.when))
        return f"{type(self).__name__}({', '.join(parts)})"

    def __repr__(self) -> str:
        return self.label()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.config() == self.config()

    def __hash__(self) -> int:
        return hash(repr(self.config()))


class Family:
    """The interventions of one ``make_variations`` call, expanded per variation."""

    def __init__(self, cls: type[Intervention], grid: dict[str, Any], when: tuple | None):
        self.cls, self.grid, self.when = cls, grid, when

    def expand(self, control: Mapping[str, Any]) -> list[Intervention]:
        """Interventions for a variation whose settings are ``control``."""
        axes = []
        for name, value in self.grid.items():
            values = _alternatives(self.cls, name, value, control)
            if not values:
                raise ValueError(
                    f"{self.cls.__name__}.make_variations: {name} has no values (an empty grid)"
                )
            axes.append([(name, v) for v in values])
        if not control and any(_is_function(self.cls, n, v) for n, v in self.grid.items()):
            return []  # alternatives depend on the control: built per variation
        return [self.cls(when=self.when, **dict(combo)) for combo in itertools.product(*axes)]

    def __repr__(self) -> str:
        return f"{self.cls.__name__}.make_variations({', '.join(self.grid)})"


def _is_function(cls: type, name: str, value: Any) -> bool:
    return callable(value) and not isinstance(value, type) and not _is_value(cls, name, value)


def _alternatives(cls: type, name: str, value: Any, control: Mapping[str, Any]) -> list:
    if _is_function(cls, name, value):
        if not control:  # checked again per variation; the control value is not known yet
            return [None]
        base = cls.control_value(name, control)
        result = value(base)
        return list(result) if _is_many(result) else [result]
    return list(value) if _is_many(value) else [value]


def _is_value(cls: type, name: str, value: Any) -> bool:
    # An optimizer given as a factory function is a value, not a function of one.
    return name == "optimizer" and cls is ChangeOptimizer


def _is_many(value: Any) -> bool:
    return isinstance(value, (tuple, list, range)) or inspect.isgenerator(value)


def _windows(when: Iterable, owner: str) -> tuple[tuple[int, int], ...]:
    try:
        windows = tuple((int(s), int(e)) for s, e in when)
    except (TypeError, ValueError):
        raise TypeError(
            f"{owner}: when= takes step windows ((start, end), ...), got {when!r}"
        ) from None
    for s, e in windows:
        if not 0 <= s < e:
            raise ValueError(f"{owner}: window ({s}, {e}) is empty or negative")
    return windows


def windows_text(when: tuple[tuple[int, int], ...]) -> str:
    """``((0, 100), (500, 600))`` as ``0-100,500-600`` (labels and result cells)."""
    return ",".join(f"{s}-{e}" for s, e in when)


def _unknown(cls: type, name: str) -> str:
    known = list(cls.parameters) + list(cls.aliases)
    close = difflib.get_close_matches(name, known, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    return f"{cls.__name__} has no parameter {name!r} (parameters: {', '.join(known)}){hint}"


def short(value: Any) -> str:
    """A value as a label or column shows it: a class by name, a float in ``%g``."""
    if isinstance(value, type):
        return value.__name__
    if isinstance(value, float):
        return f"{value:g}"
    return repr(value) if isinstance(value, str) else str(value)


# -- the interventions ----------------------------------------------------------------
class ReinitWeights(Intervention):
    """Draw the initial weights with another seed (``seed_weights``)."""

    parameters = {"seed_weights": REQUIRED}
    windowable = False
    why_not_windowed = "initial weights are drawn once (use PerturbWeights mid-training)"

    def settings(self) -> dict[str, Any]:
        return {"seed_weights": self.params["seed_weights"]}


class PerturbWeights(Intervention):
    """Add ``epsilon`` x N(0, 1) noise (drawn from ``seed_weights``) to every parameter.

    Without ``when`` the noise is added to the initial weights; with it, when each
    window opens.
    """

    parameters = {"epsilon": REQUIRED, "seed_weights": 0}

    def is_effect(self) -> bool:
        return True

    def start(self, run: Any) -> None:
        generator = torch.Generator().manual_seed(
            derive_seed("perturb", self.params["seed_weights"], run.step)
        )
        eps = float(self.params["epsilon"])
        with torch.no_grad():
            for p in run.model.parameters():
                noise = torch.randn(p.shape, generator=generator, dtype=p.dtype)
                p.add_(noise.to(p.device), alpha=eps)

    @classmethod
    def control_value(cls, name: str, control: Mapping[str, Any]) -> Any:
        if name == "seed_weights":
            return control["seed_weights"]
        raise TypeError(f"PerturbWeights.{name}: the control has no {name} to vary; give values")


class ChangeOptimizer(Intervention):
    """Another optimizer class and/or hyperparameters (``lr``, ``momentum``, ...).

    Windowed, only hyperparameters may change: they hold inside the windows and
    the control's values return after each.
    """

    parameters = {"optimizer": None}

    @classmethod
    def _open_parameters(cls) -> bool:
        return True

    def __init__(self, when: Iterable | None = None, **params: Any):
        super().__init__(when=when, **params)
        if isinstance(self.params["optimizer"], str):
            self.params["optimizer"] = import_object(self.params["optimizer"])
        if self.params["optimizer"] is None:
            del self.params["optimizer"]
            if not self.params:
                raise TypeError(
                    "ChangeOptimizer() changes nothing: give optimizer= or hyperparameters"
                )
        if self.when is not None and "optimizer" in self.params:
            raise TypeError(
                "ChangeOptimizer: with when=, change hyperparameters only (the optimizer's"
                " state cannot move between classes mid-training)"
            )

    def hyperparameters(self) -> dict[str, Any]:
        return {k: v for k, v in self.params.items() if k != "optimizer"}

    def settings(self) -> dict[str, Any]:
        if self.when is not None:
            return {}
        out = {f"hyper.{k}": v for k, v in self.hyperparameters().items()}
        if "optimizer" in self.params:
            out["optimizer"] = self.params["optimizer"]
        return out

    def validate(self, settings: Mapping[str, Any]) -> None:
        # Only a windowed change reaches here (an unwindowed one is in ``settings``,
        # which the experiment checks): its values must suit the trial's optimizer.
        optimizer_defaults(
            settings["optimizer"], {**hyperparameters_of(settings), **self.hyperparameters()}, self
        )

    def open(self, run: Any) -> None:
        for group in run.optimizer.param_groups:
            group.update(self.hyperparameters())

    def close(self, run: Any) -> None:
        control = run.control_hyperparameters
        for group in run.optimizer.param_groups:
            group.update({k: control[k] for k in self.hyperparameters()})

    @classmethod
    def control_value(cls, name: str, control: Mapping[str, Any]) -> Any:
        if name == "optimizer":
            return control["optimizer"]
        hyper = hyperparameters_of(control)
        if name in hyper:
            return hyper[name]
        defaults = optimizer_defaults(control["optimizer"], hyper, None)
        if name not in defaults:
            raise TypeError(f"ChangeOptimizer: {_name(control['optimizer'])} has no {name} to vary")
        return defaults[name]


class ChangeTrainLoader(Intervention):
    """Another batch size and/or batch order (``seed_shuffle``) for the training data."""

    parameters = {"batch_size": None, "seed_shuffle": None}
    aliases = {"batch_order_seed_weights": "seed_shuffle"}  # the seed README's other spelling
    windowable = False
    why_not_windowed = "the loader is built once per epoch"

    def __init__(self, when: Iterable | None = None, **params: Any):
        super().__init__(when=when, **params)
        self.params = {k: v for k, v in self.params.items() if v is not None}
        if not self.params:
            raise TypeError(
                "ChangeTrainLoader() changes nothing: give batch_size= or seed_shuffle="
            )
        size = self.params.get("batch_size")
        if size is not None and (not isinstance(size, int) or size < 1):
            raise ValueError(f"ChangeTrainLoader: batch_size must be a positive int, got {size!r}")

    def settings(self) -> dict[str, Any]:
        return dict(self.params)


class Tweak(Intervention):
    """Tweak (a value) or rewrite (a function) any ptera selector during the trial.

    ``Tweak({"Linear > input": lambda input: input * 0.9, "layer[1] > T": 10.0})``:
    a function is a rewrite and receives the selector's captures by name. Windowed,
    the overlay is active on the training batches inside the windows.
    """

    def __init__(self, values: Mapping[str, Any] | None = None, when: Iterable | None = None):
        if not isinstance(values, Mapping) or not values:
            raise TypeError(
                'Tweak needs a mapping {selector: value or function}, e.g. {"f > x": 0}'
            )
        self.params = {"values": dict(values)}
        self.when = _windows(when, "Tweak") if when is not None else None
        self._env_module = _caller_module()
        self._env: dict | None = None
        self._overlay: Effects | None = None
        for text in values:
            sel = select(text)
            if sel.focus is None:
                raise ValueError(f"Tweak: selector {text!r} needs a focus (mark it with '!')")

    @classmethod
    def make_variations(cls, values: Mapping[str, Any] | None = None, when: Iterable | None = None):
        """One ``Tweak`` per combination of the alternatives (tuples, lists, ranges) given."""
        if not isinstance(values, Mapping) or not values:
            raise TypeError("Tweak.make_variations needs values={selector: alternatives}")
        axes = [[(s, x) for x in (v if _is_many(v) else [v])] for s, v in values.items()]
        for s, axis in zip(values, axes):
            if not axis:
                raise ValueError(f"Tweak.make_variations: {s!r} has no values (an empty grid)")
        module = _caller_module()
        out = []
        for combo in itertools.product(*axes):
            t = cls(dict(combo), when=when)
            t._env_module = module
            out.append(t)
        return out

    def is_effect(self) -> bool:
        return True

    def env(self) -> dict:
        if self._env is None:
            module = sys.modules.get(self._env_module or "")
            self._env = dict(vars(module)) if module is not None else {}
        return self._env

    def validate(self, settings: Mapping[str, Any]) -> None:
        """A selector that names nothing fails here, before any training."""
        for text in self.params["values"]:
            check_selector(text, self.env())

    def overlay(self) -> Effects:
        if self._overlay is not None:
            return self._overlay
        tweaks = {s: v for s, v in self.params["values"].items() if not callable(v)}
        rewrites = {s: v for s, v in self.params["values"].items() if callable(v)}
        overlay = Effects()
        if tweaks:
            overlay = overlay.tweak(tweaks, env=self.env())
        if rewrites:
            overlay = overlay.rewrite(rewrites, env=self.env())
        self._overlay = overlay
        return overlay

    def columns(self) -> dict[str, Any]:
        """One column per selector."""
        return {**self.params["values"], **({"when": self.when} if self.when else {})}

    def label(self) -> str:
        parts = [f"{s}: {_short_fn(v)}" for s, v in self.params["values"].items()]
        when = "" if self.when is None else ", when=" + windows_text(self.when)
        return f"Tweak({'; '.join(parts)}{when})"

    def __getstate__(self) -> dict:
        # The caller's globals are rebuilt from the module name where the trial runs.
        return {**self.__dict__, "_env": None, "_overlay": None}


def _short_fn(value: Any) -> str:
    if callable(value):
        return getattr(value, "__name__", "fn")
    return short(value)


def _caller_module() -> str | None:
    env = caller_env(1)
    return env.get("__name__")


# -- optimizers -------------------------------------------------------------------------
def hyperparameters_of(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k[6:]: v for k, v in settings.items() if k.startswith("hyper.")}


def optimizer_defaults(
    optimizer: Callable, hyperparameters: Mapping[str, Any], who: Any
) -> dict[str, Any]:
    """The optimizer's full hyperparameters with ``hyperparameters`` applied, checked."""
    probe = [torch.zeros(1, requires_grad=True)]
    try:
        opt = optimizer(probe, **hyperparameters)
    except TypeError as exc:
        accepted = [p for p in inspect.signature(optimizer).parameters if p != "params"]
        where = f"{who.label()}: " if who is not None else ""
        raise TypeError(
            f"{where}{_name(optimizer)} does not accept {sorted(hyperparameters)}"
            f" ({exc}); its options: {', '.join(accepted)}"
        ) from None
    except ValueError as exc:
        where = f"{who.label()}: " if who is not None else ""
        raise ValueError(f"{where}{_name(optimizer)}: {exc}") from None
    return dict(opt.defaults)


def _name(obj: Any) -> str:
    return getattr(obj, "__name__", repr(obj))


def registered_names() -> dict[str, Any]:
    """Names a config may use without an import path: torch's optimizers and losses."""
    import torch.nn.functional as F

    names: dict[str, Any] = {
        name: obj
        for name, obj in vars(torch.optim).items()
        if isinstance(obj, type)
        and issubclass(obj, torch.optim.Optimizer)
        and obj is not torch.optim.Optimizer
    }
    for name in vars(F):
        if name.endswith("_loss") or name in (
            "cross_entropy",
            "binary_cross_entropy",
            "binary_cross_entropy_with_logits",
        ):
            names[name] = getattr(F, name)
    return names


def import_object(path: str) -> Any:
    """A registered name (``"Adam"``, ``"cross_entropy"``) or ``"package.module:attr"``.

    Nothing else is resolved: a config names code only by an explicit import path.
    """
    return imports.import_object(path, registered_names())
