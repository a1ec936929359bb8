"""Programs written for coleo's API, run against this ptera (coleo is not patched)."""

from coleo import Option, default, tooled


@tooled
def helper():
    # Be chatty
    verbose: Option & bool = default(False)
    return verbose


@tooled
def main():
    # Number of iterations
    # [alias: -n]
    n: Option & int = default(1000)
    # Who to greet
    # [metavar: NAME]
    name: Option = default("you")
    # A required float
    x: Option & float
    return n, name, x, helper()


class Commands:
    """Two subcommands."""

    def one():
        # First option
        a: Option & int = default(1)
        return ("one", a)

    def two():
        b: Option & str = default("x")
        return ("two", b)
