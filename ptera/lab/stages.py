"""The stage machinery of the Learner: events, their callbacks, and what a stage raises.

A stage (``fit``, ``epoch``, ``batch``, ``backward``, ``step``) runs as
``before_<stage>``, its body, ``after_cancel_<stage>`` if a callback or the body
raised ``Cancel<Stage>Exception``, then ``after_<stage>`` and ``cleanup_<stage>``.
``Stages`` is the mixin that gives a learner ``run_stage``, ``callback`` and the
``cbs`` property; the learner only assigns its callbacks to ``cbs``.

Decisions:

* One helper, ``run_stage``, runs every stage, so every event in ``STAGES`` is
  fired, and fired the same way. ``after_`` and ``cleanup_`` always run (also when
  another error propagates), each for every callback even when one raises.
* The body's error is the one a stage raises; a closing callback's error is a
  note on it (an error beats a cancel: a cancel is control flow). A cancel raised
  while a stage closes is dropped when its stage has already ended, so ``fit``
  never lets a ``Cancel*Exception`` out of its close.
* The methods of each event are looked up and sorted by ``order`` once per set of
  callbacks, not once per event: stages run several times a batch. ``cbs`` is a
  ``CallbackList``, a list that empties that cache when it changes (a list
  assigned to ``cbs`` becomes one), so a stage looks its events up in one dict.
  It also checks each callback added (``check_callback``), by ``add_cb`` or by
  any list method, so a misspelled stage method never goes unnoticed.
* A stage that no callback listens to runs its body directly (still catching its
  own cancel): ``backward`` and ``step`` usually have none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from .callbacks import (
    STAGES,
    WHENS,
    CancelBackwardException,
    CancelBatchException,
    CancelEpochException,
    CancelFitException,
    CancelStepException,
    check_callback,
)

__all__ = ["CallbackList", "Stages"]

_CANCEL = {
    "fit": CancelFitException,
    "epoch": CancelEpochException,
    "batch": CancelBatchException,
    "backward": CancelBackwardException,
    "step": CancelStepException,
}
_CANCELS = tuple(_CANCEL.values())
_DEPTH = {"fit": 0, "epoch": 1, "batch": 2, "backward": 3, "step": 3}
# The cancels that a stage's end makes moot: its own and those of stages inside it.
_ENDED_WITH = {
    stage: tuple(_CANCEL[s] for s, d in _DEPTH.items() if d >= depth)
    for stage, depth in _DEPTH.items()
}


class CallbackList(list):
    """A learner's callbacks: a list that checks what is added to it (``check_callback``:
    a misspelled stage method is a ``TypeError``, however the callback comes in) and
    empties its ``events`` cache (each stage's method lists) whenever it changes, so
    a callback added or removed, even in the middle of a fit, is seen from the next
    stage on."""

    def __init__(self, cbs: Any = ()):
        super().__init__(_checked(cbs))
        self.events: dict[str, tuple] = {}

    # Additions are checked; every change empties the cache (a new dict, not clear():
    # unpickling appends before __setstate__ has set the attribute).
    def append(self, cb: Any) -> None:
        self.events = {}
        super().append(check_callback(cb))

    def insert(self, index: Any, cb: Any) -> None:
        self.events = {}
        super().insert(index, check_callback(cb))

    def extend(self, cbs: Any) -> None:
        self.events = {}
        super().extend(_checked(cbs))

    def __iadd__(self, cbs: Any) -> CallbackList:
        self.events = {}
        return super().__iadd__(_checked(cbs))

    def __setitem__(self, index: Any, value: Any) -> None:
        self.events = {}
        value = _checked(value) if isinstance(index, slice) else check_callback(value)
        super().__setitem__(index, value)

    # Copies and pickles leave the cache (bound methods of the old callbacks) behind.
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "events"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.events = {}


def _checked(cbs: Any) -> list:
    return [check_callback(cb) for cb in cbs]


def _changes(name: str) -> Callable:
    method = getattr(list, name)

    def changed(self, *args, **kwargs):
        self.events = {}
        return method(self, *args, **kwargs)

    changed.__name__ = changed.__qualname__ = name
    changed.__doc__ = method.__doc__
    return changed


for _name in ("remove", "pop", "clear", "sort", "reverse", "__delitem__", "__imul__"):
    setattr(CallbackList, _name, _changes(_name))


class Stages:
    """Runs stages and fires events on the callbacks in ``self.cbs``.

    Working state: ``_cbs``, the ``CallbackList`` behind ``cbs``, whose ``events``
    maps a stage to its four method lists, its cancel class and whether it has
    any method at all.
    """

    _cbs: CallbackList

    @property
    def cbs(self) -> CallbackList:
        """The callback objects, a list (``add_cb`` and ``remove_cb`` change it)."""
        return self._cbs

    @cbs.setter
    def cbs(self, cbs: Any) -> None:
        self._cbs = cbs if isinstance(cbs, CallbackList) else CallbackList(cbs)

    def callback(self, event: str) -> None:
        """Call ``event`` (``"before_fit"``, ...) on every callback that has it, in ``order``.

        For ``after_*`` and ``cleanup_*`` events every callback runs even if an
        earlier one raised; the first error is raised at the end.
        """
        methods = self._methods(event)
        if not event.startswith(("after_", "cleanup_")):
            for method in methods:
                method(self)
            return
        errors = self._call_all(methods, None)
        if errors:
            raise errors[0][1]

    def _methods(self, event: str) -> list:
        stage, when = _split_event(event)
        return self._events(stage)[WHENS.index(when)]

    def _events(self, stage: str) -> tuple:
        """``(before, after_cancel, after, cleanup, cancel class, quiet)`` of ``stage``."""
        got = self._cbs.events.get(stage)
        if got is None:
            ordered = sorted(self._cbs, key=lambda c: getattr(c, "order", 0))
            lists = [
                [m for m in (getattr(cb, f"{when}_{stage}", None) for cb in ordered) if m]
                for when in WHENS
            ]
            got = (*lists, _CANCEL[stage], not any(lists))
            self._cbs.events[stage] = got
        return got

    def _call_all(self, methods: list, errors: list | None) -> list | None:
        for method in methods:
            try:
                method(self)
            except Exception as exc:
                errors = errors or []
                errors.append((method, exc))
        return errors

    def run_stage(self, stage: str, body: Callable, *args: Any) -> Any:
        """Run ``body(*args)`` as ``stage``, with its four events around it.

        ``before_<stage>`` callbacks and the body run first; ``after_cancel_<stage>``
        if either raised ``Cancel<Stage>Exception``; then ``after_<stage>`` and
        ``cleanup_<stage>``, always, each for every callback. The body's own error
        is the one raised; errors of closing callbacks are added to it as notes
        (or raised, the first one, when the body succeeded). A cancel raised while
        closing a stage that is not inside the one it cancels has nothing left to
        cancel and is dropped, so no ``Cancel*Exception`` escapes ``fit``.
        """
        events = self._cbs.events.get(stage) or self._events(stage)
        before, cancelled, after, cleanup, cancel, quiet = events
        if quiet:
            try:
                return body(*args)
            except cancel:
                return None
        error = late = result = None
        try:
            for method in before:
                method(self)
            result = body(*args)
        except cancel:
            late = self._call_all(cancelled, late)
        except BaseException as exc:
            error = exc
        if after:
            late = self._call_all(after, late)
        if cleanup:
            late = self._call_all(cleanup, late)
        if late:
            error = _settle(stage, error, late)
        if error is not None:
            raise error
        return result


def _split_event(event: str) -> tuple[str, str]:
    when, _, stage = event.rpartition("_")
    if when not in WHENS or stage not in _CANCEL:
        raise ValueError(f"unknown event {event!r}; the events are {', '.join(STAGES)}")
    return stage, when


def _settle(stage: str, error: BaseException | None, late: list) -> BaseException | None:
    """The one exception a stage raises, given its body's and its closing callbacks'."""
    late = [(m, e) for m, e in late if not isinstance(e, _ENDED_WITH[stage])]
    if not late:
        return error
    raised = [e for e in (error, *(e for _, e in late)) if e is not None]
    # An error beats a cancel: a cancel is control flow, an error is news.
    chosen = next((e for e in raised if not isinstance(e, _CANCELS)), raised[0])
    for method, exc in late:
        if exc is not chosen:
            name = getattr(method, "__qualname__", repr(method))
            chosen.add_note(f"while the {stage} stage ended, {name} also raised {exc!r}")
    if error is not None and error is not chosen:
        chosen.add_note(f"raised while the {stage} stage ended on {error!r}")
    return chosen
