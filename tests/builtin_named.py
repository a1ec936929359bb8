"""A decorated function named like a builtin, defined away from the tests that probe it."""

from ptera import tooled


@tooled
def sum(values):  # noqa: A001 (named like the builtin on purpose)
    total = 0
    for v in values:
        total = total + v
    return total
