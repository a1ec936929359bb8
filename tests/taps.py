"""A helper module in 1.4's style: it builds selectors for its callers with
``select(pattern, skip_frames=1)``, so names resolve in the test that calls it."""

from contextlib import contextmanager

from ptera import BaseOverlay, Immediate, select


@contextmanager
def tapping(pattern, skip_frames=1):
    results = []

    def listener(captures):
        results.append({name: cap.value for name, cap in captures.items()})

    with BaseOverlay(Immediate(select(pattern, skip_frames=skip_frames), listener)):
        yield results
