"""Parse time of a selector, cold (first parse) and cached (parsed before).

Prints microseconds per parse; the cached case is a dict lookup.
"""

import statistics
import timeit

from ptera.selector import _parse, select

SELECTORS = [
    "f > x",
    "step{!!loss} >> $param:Parameter",
    "sumsquares(x, y as z) > square[$i] > rval",
    "/pkg.mod/Block.forward(!#enter, !!#exit)",
]


def cold(text: str) -> float:
    def run():
        _parse.cache_clear()
        select(text)

    return min(timeit.repeat(run, number=200, repeat=7)) / 200


def cached(text: str) -> float:
    select(text)
    return min(timeit.repeat(lambda: select(text), number=20000, repeat=7)) / 20000


def main():
    print(f"{'selector':45} {'cold':>10} {'cached':>10} {'ratio':>8}")
    ratios = []
    for text in SELECTORS:
        c, w = cold(text), cached(text)
        ratios.append(c / w)
        print(f"{text:45} {c * 1e6:8.1f}us {w * 1e6:8.3f}us {c / w:7.0f}x")
    print(f"median cold/cached ratio: {statistics.median(ratios):.0f}x")


if __name__ == "__main__":
    main()
