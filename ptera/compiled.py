"""Overlays under ``torch.compile``: compiled regions run eagerly while one is active.

Dynamo traces a module's ``forward`` once and reuses the graph while its guards
hold; it does not guard on the code object that ptera swaps in and out, so a
graph traced before a probe ignores the probe, and one traced inside a block keeps
the block's changes after it. So while any overlay is active (in any thread), the
compiler's stance is ``force_eager``: compiled callables run their Python code,
which is the instrumented code, and nothing is compiled from it. When the last
overlay ends, the previous stance comes back and the graphs compiled before the
block run again.

Decisions:

* Process-wide, like the stance itself: a probe in one thread makes compiled
  code in every thread run eagerly (correct, slower) until it ends.
* Nothing is imported: with ``torch._dynamo`` not loaded, nothing is compiled yet.
  If it gets loaded while an overlay is active (``torch.compile`` first called
  inside the block), whatever it compiled then may hold instrumented code, so
  Dynamo's caches are reset when the last overlay ends.
* Idle cost is zero: nothing here runs unless an overlay starts or ends. A
  selfless object's overlay stays installed between calls, but the stance
  follows its calls only (``overlay.Resident``), so an object kept alive does
  not keep compiled code elsewhere eager.
* An overlay started inside a region Dynamo is tracing cannot change the stance
  (torch forbids it); that case is left as torch handles it.
"""

from __future__ import annotations

import sys
from typing import Any

_EAGER = "force_eager"


class _Stance:
    active = 0  # overlays active in the process
    prior: Any = None  # the stance to restore, once we set ours
    unguarded = False  # an overlay started while Dynamo was not loaded


_s = _Stance()


def overlay_started() -> None:
    """An overlay became active (called under the engine's lock)."""
    _s.active += 1
    if _s.prior is not None:
        return
    frames = sys.modules.get("torch._dynamo.eval_frame")
    if frames is None:
        _s.unguarded = True
        return
    try:
        _s.prior = frames._set_stance(frames.DynamoStance(_EAGER))
    except RuntimeError:  # inside a compiled region: torch forbids it
        pass


def overlay_ended() -> None:
    """An overlay ended; the last one restores the compiler's stance."""
    _s.active -= 1
    if _s.active > 0:
        return
    frames = sys.modules.get("torch._dynamo.eval_frame")
    if _s.prior is not None:
        prior, _s.prior = _s.prior, None
        try:
            frames._set_stance(prior)
        except RuntimeError:
            _s.prior = prior
    if _s.unguarded:
        _s.unguarded = False
        if frames is not None:
            sys.modules["torch._dynamo"].reset()
