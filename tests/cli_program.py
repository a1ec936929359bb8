"""A small program with hyperparameters in several functions, for the auto_cli tests."""

from ptera import Override, Recurrence, default, ptera, tag


@ptera
def scale(x):
    # Multiplier applied by every layer
    T: tag.HyperParameter & float = default(1.0)
    return x * T


@ptera
def chain(x):
    h = Recurrence()
    h[0] = x
    for i in range(2):
        h[i + 1] = scale(h[i])
    return h[2]


@ptera
def main():
    """Compute something configurable."""
    # Number of iterations
    # [alias: -n]
    n: tag.HyperParameter & int = default(3)
    # Name to greet
    name: tag.HyperParameter = default("world")
    # Shout the greeting
    loud: tag.HyperParameter & bool = default(False)
    # A required rate
    rate: tag.HyperParameter & float
    fixed: tag.HyperParameter = 7
    forced: tag.HyperParameter & int = Override(2)
    greeting = f"hello {name}" + ("!" if loud else "")
    return n, greeting, rate, fixed, forced, chain(1.0)


@ptera
def lazy():
    rate: tag.HyperParameter & float
    return 1


@ptera
def label():
    n = "sample"  # a plain local that shares its name with main's option `n`
    return n
