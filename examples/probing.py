"""Look inside a small program without editing it: probes, overrides, a global probe.

Run with `python examples/probing.py` (`make demo` runs `examples/mlp.py`).
"""

from ptera import global_probe, probing, tooled


@tooled
def square(x):
    rval = x * x
    return rval


@tooled
def sumsquares(xs):
    total = 0
    for x in xs:
        total = total + square(x)
    return total


def main():
    # Stream every value of `rval` in `square`, when called from `sumsquares`.
    with probing("sumsquares > square(x) > rval") as probe:
        probe.print("square({x}) = {rval}")
        probe["rval"].max().print("largest square: {}")
        result = sumsquares([1, 2, 3])
    print("sum of squares:", result)

    # Replace a value deep inside, for the duration of the block only.
    with probing("square(x) > rval", overridable=True) as probe:
        probe.where(x=2).override(0)
        print("with square(2) forced to 0:", sumsquares([1, 2, 3]))
    print("and back to normal:", sumsquares([1, 2, 3]))

    # A global probe sees every thread until it is deactivated.
    gp = global_probe("sumsquares > total")
    totals = gp["total"].accum()
    sumsquares([4, 5])
    gp.deactivate()
    print("running totals:", totals)


if __name__ == "__main__":
    main()
