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
* Nothing is imported: with ``torch._dynamo`` not loaded, or loaded but with no
  frame converted yet (``torch.optim`` loads it), nothing is compiled and the
  stance is left alone. If something gets compiled while an overlay is active
  (``torch.compile`` first called inside the block), it may hold instrumented
  code, so Dynamo's caches are reset when the last overlay ends.
* Idle cost is zero: nothing here runs unless an overlay starts or ends. A
  selfless object's overlay stays installed between calls, but the stance
  follows its calls only (``overlay.Resident``), so an object kept alive does
  not keep compiled code elsewhere eager.
* An object call made while nothing is compiled is not counted at all (no
  lock, ~0.6 us less a call): it asks ``nothing_compiled()`` again when it
  ends, and if ``torch.compile`` was first used meanwhile, ``compiled_meanwhile``
  drops what was compiled, now or when the last counted overlay ends.
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


def nothing_compiled() -> bool:
    """Whether Dynamo has converted no frame yet in this process (an unknown counter
    counts as something compiled)."""
    convert = sys.modules.get("torch._dynamo.convert_frame")
    return convert is None or getattr(convert, "FRAME_COUNTER", 1) == 0


def overlay_started() -> None:
    """An overlay became active (called under the engine's lock)."""
    _s.active += 1
    if _s.prior is not None:
        return
    frames = sys.modules.get("torch._dynamo.eval_frame")
    if frames is None or nothing_compiled():
        # Nothing compiled yet (Dynamo is loaded by any torch.optim step): no stance
        # to set, which costs ~4 us a call; what gets compiled meanwhile is dropped
        # when the last overlay ends.
        _s.unguarded = True
        return
    try:
        _s.prior = frames._set_stance(frames.DynamoStance(_EAGER))
    except RuntimeError:  # inside a compiled region: torch forbids it
        pass


def compiled_meanwhile() -> None:
    """Something was compiled during an overlay that was not counted (it started with
    nothing compiled): Dynamo's caches go now, or when the last counted overlay ends
    (called under the engine's lock)."""
    if _s.active > 0:
        _s.unguarded = True
        return
    sys.modules["torch._dynamo"].reset()


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
        if frames is not None and not nothing_compiled():
            sys.modules["torch._dynamo"].reset()
