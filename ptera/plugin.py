"""The plugin contract: what an object that stands in for a selector implements and may call.

A *plugin* is any object with a method ``__ptera_rules__(emit, env)``. It goes
wherever a selector does in a listener: ``probing(plugin)``, ``using(name=plugin)``,
``@f.on(plugin)``, ``@learner.on(plugin)``. ``ptera.torch.Grad`` is one, written
on this module alone.

The contract:

* ``__ptera_rules__(emit, env)`` returns an iterable of rules (``Rule``), built
  with ``collecting_rule``. ``env`` is the mapping of names where the user made
  the probe or overlay (resolve the plugin's selectors in it).
* It is called when the probe is made, and when an overlay is first entered
  (and again once the set of decorated functions has changed). Keep it
  cheap and free of side effects: build rules, nothing else.
* ``emit(captures)`` takes a dict ``{name: Capture}``, one call per result the
  plugin produces. The probe or overlay that owns ``emit`` delivers it: a probe
  streams ``{name: capture.value}`` (the ``Capture`` objects with ``raw=True``),
  ``using`` collects it, ``on`` calls its listener with it. Its return value
  means nothing to a plugin.

Decisions:

* The protocol is a ``runtime_checkable`` ``typing.Protocol``: ``isinstance(x,
  Plugin)`` is the definition. ptera itself asks ``is_plugin(x)``, which answers
  the same (a test says so) some 200 times faster (0.1 us against 19 us on
  Python 3.11), since it is asked each time a probe is made.
* A plugin's rules collect: the rule's function gets every capture of the
  outermost matched call at once, when that call ends. That is all ``Grad``
  needs, and it keeps the engine's other rule kinds (immediate, intercepting)
  private, since only they can change a running program.
* Work that must wait for every rule of an exit goes through ``after_exit``;
  requests that one pass serves together (one backward pass for several ``Grad``
  requests) go through ``exit_batch``, which gives every rule of the exit the same
  list. Both belong to the exit: when it fails, its queued work goes with it.
* One result per value of one capture (``Grad``'s pairs) goes through
  ``emit_each``: it means the same as one ``emit`` per value, and lets the owner
  of ``emit`` skip building a ``Capture`` for each. ``each_sender(emit)`` looks
  that up once, for a plugin that sends on every call.
* ``ptera.torch``, ``ptera.lab`` and the experiments CLI reach the core only
  through the public names of ``ptera``, this module, ``ptera.torch`` and
  ``ptera.cli`` (``tests/test_plugin.py`` checks their imports); the lab
  composes its listeners and interventions with ``ptera.Effects``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol, runtime_checkable

from . import overlay as _overlay
from .capture import Capture, Rule
from .match import compile_selector
from .selector import Scope, select

__all__ = [
    "Capture",
    "Plugin",
    "Rule",
    "after_exit",
    "caller_env",
    "check_selector",
    "collecting_rule",
    "each_sender",
    "emit_each",
    "exit_batch",
    "is_plugin",
]


@runtime_checkable
class Plugin(Protocol):
    """An object that stands in for a selector: it builds its own rules (see the module)."""

    def __ptera_rules__(
        self, emit: Callable[[dict[str, Capture]], Any], env: Mapping[str, Any] | None
    ) -> Iterable[Rule]:
        """The rules that find this plugin's matches and pass its results to ``emit``."""
        ...


def is_plugin(obj: Any) -> bool:
    """Whether ``obj`` is a plugin: ``isinstance(obj, Plugin)``, at the cost of a ``hasattr``."""
    return hasattr(obj, "__ptera_rules__")


def collecting_rule(
    selector: str | Scope,
    env: Mapping[str, Any] | None,
    on_call: Callable[[dict[str, Capture]], Any],
) -> Rule:
    """A rule that calls ``on_call({name: Capture})`` with every capture of each
    outermost call that ``selector`` matches (focuses included), when that call ends."""
    sel = select(selector) if isinstance(selector, str) else selector
    return Rule(compile_selector(sel, env, collect=True), on_call, immediate=False, raw=True)


def emit_each(emit: Callable[[dict[str, Capture]], Any], name: str, names: list, values: Iterable):
    """``emit({name: Capture(name, [n], [v])})`` for each ``(n, v)`` of ``names`` and
    ``values`` (any iterable, read once), in order: one result per value. The same for
    every ``emit``, and faster for a listener that takes just ``name`` (it is called with
    each value)."""
    each_sender(emit)(name, names, values)


def each_sender(
    emit: Callable[[dict[str, Capture]], Any],
) -> Callable[[str, list, Iterable], None]:
    """``send(name, names, values)``, the same as ``emit_each(emit, name, names, values)``
    with the owner's fast path looked up once (build it with the plugin's rules)."""
    each = getattr(emit, "each", None)
    if each is not None:
        return each

    def send(name: str, names: list, values: Iterable) -> None:
        for n, v in zip(names, values):
            emit({name: Capture(name, [n], [v])})

    return send


def after_exit(call: Callable[[], Any]) -> None:
    """Run ``call()`` once the call now ending has passed its captures to every rule."""
    _overlay.after_exit(call)


# The engine's own method, not a wrapper: it runs on every call of a Grad listener.
# Its docstring says it all: the list of requests for ``serve`` in the call now
# ending, shared by all its rules; ``serve(requests)`` runs once after the exit.
# ``serve`` is the key (compared with ``==``, so a bound method works).
exit_batch = _overlay.exit_batch


def check_selector(selector: str | Scope, env: Mapping[str, Any] | None = None) -> Scope:
    """Parse ``selector`` and resolve the functions it names in ``env``, now: a typo
    raises ``SelectorError`` here instead of when the program runs. Returns the tree."""
    sel = select(selector) if isinstance(selector, str) else selector
    compile_selector(sel, env)
    return sel


def caller_env(skip: int = 1) -> Mapping[str, Any]:
    """The names (globals, then locals over them) where user code called into ptera.

    ``skip=1`` starts from the caller of the function that calls ``caller_env``;
    frames of ptera's own modules are passed over.
    """
    return _overlay.caller_env(skip + 1)
