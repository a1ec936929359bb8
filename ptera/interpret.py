"""1.4's ``ptera.interpret``: the ``Immediate`` and ``Total`` handlers.

They are defined with the engine (``overlay.py``); this module keeps the import
path that 1.4 programs and coleo use. As in 1.4, ``Immediate(selector, trigger)``
listens, ``Immediate(selector, intercept=fn)`` replaces the focus with
``fn(captures)``, and ``Total(selector, close, trigger=None, intercept=None)`` calls
``close(captures)`` once each match is complete. Captures are ``Capture`` objects.
"""

from .capture import Capture
from .overlay import Immediate, Total

__all__ = ["Capture", "Immediate", "Total"]
