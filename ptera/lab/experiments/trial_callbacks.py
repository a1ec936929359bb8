"""Learner callbacks of a trial: built fresh per trial, their numbers committed per epoch.

``Experiment(..., callbacks=factory)``: ``factory()`` returns a callback (or a list
of them) for one trial; the trial's ``Learner`` runs them. A callback that has an
``epoch_metrics()`` method commits numbers with each epoch: after the epoch's
training and evaluation passes (every callback's ``after_epoch`` has run), the
trial calls it once and stores what it returns in the same transaction as the
epoch's loss, accuracy and checkpoint.

Decisions:

* ``epoch_metrics()`` returns a mapping of names to numbers; a name is a string
  (its rows have the split ``""``, as registered metrics) or a ``(split, name)``
  pair. One callback may return many numbers (a saturation tracker: every layer x
  split x field). Two sources of the same name in one epoch are an error naming
  it, never one silently overwriting the other.
* The factory is called in the worker that runs the trial, once per training
  session: a trial resumed after a crash gets fresh callbacks, and the numbers of
  its finished epochs are the store's, never recomputed. A process or Ray worker
  receives the factory pickled (by cloudpickle): a top-level function, a class,
  or a ``functools.partial`` of one is safest.
* The factory is part of the trial's identity (``config.normalize``: a partial's
  arguments included), so a tracker with other options is another trial.
* A callback's ``order`` must be below ``COMMIT_ORDER``: the epoch is committed
  after every callback's ``after_epoch``, so numbers it closes there are in it.
* The factory is called once when the experiment is built, to check what it
  returns (a bad factory fails before any training).
* Epoch 0 (the model before training) is evaluated by a plain loop, not the
  Learner: callbacks record nothing for it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from ..callbacks import check_callback
from .metrics import metric_value

__all__ = ["COMMIT_ORDER", "epoch_numbers", "make_callbacks"]

COMMIT_ORDER = 1_000_000  # the trial commits an epoch after every callback closed it


def make_callbacks(factory: Callable | None) -> list:
    """The callbacks ``factory()`` returns (one, or a list or tuple), each checked."""
    if factory is None:
        return []
    made = factory()
    items = list(made) if isinstance(made, (list, tuple)) else [made]
    for cb in items:
        try:
            check_callback(cb)
        except TypeError as exc:
            raise TypeError(f"callbacks={_name(factory)} returned a bad callback: {exc}") from None
        if getattr(cb, "order", 0) >= COMMIT_ORDER:
            raise ValueError(
                f"callbacks={_name(factory)} returned {type(cb).__name__} with order"
                f" {cb.order}: a trial's callbacks must come before its commit (order < {COMMIT_ORDER})"
            )
    return items


def epoch_numbers(callbacks: list, taken: Mapping | None = None) -> dict[tuple[str, str], float]:
    """What the callbacks' ``epoch_metrics()`` return, as ``{(split, name): value}``.

    ``taken``: numbers already recorded for the epoch (loss, accuracy), which a
    callback may not overwrite.
    """
    out: dict[tuple[str, str], float] = {}
    owner: dict[tuple[str, str], str] = {key: "the trial" for key in taken or {}}
    for cb in callbacks:
        method = getattr(cb, "epoch_metrics", None)
        if method is None:
            continue
        who = type(cb).__name__
        numbers = method()
        if not isinstance(numbers, Mapping):
            raise TypeError(
                f"{who}.epoch_metrics() returned {type(numbers).__name__}; expected a dict of"
                " names (or (split, name) pairs) to numbers"
            )
        for key, value in numbers.items():
            split, name = _key(key, who)
            if (split, name) in owner:
                shown = f"{split}/{name}" if split else name
                raise ValueError(
                    f"{who}.epoch_metrics() records {shown!r}, which {owner[(split, name)]}"
                    " also records"
                )
            owner[(split, name)] = who
            out[(split, name)] = metric_value(name, value)
    return out


def _key(key: Any, who: str) -> tuple[str, str]:
    if isinstance(key, str) and key:
        return "", key
    if isinstance(key, tuple) and len(key) == 2 and all(isinstance(k, str) for k in key) and key[1]:
        return key
    raise TypeError(
        f"{who}.epoch_metrics() returned the key {key!r}; a key is a name or a"
        " (split, name) pair of strings"
    )


def _name(factory: Any) -> str:
    return getattr(factory, "__qualname__", None) or repr(factory)
