"""Tags in annotations, and selectors that filter on them."""

import linecache
import warnings
from pathlib import Path

import pytest

from ptera import (
    ABSENT,
    AnnotationWarning,
    SelectorError,
    Tag,
    TagSet,
    UnmatchedSelectorWarning,
    cat,
    match_tag,
    probing,
    tag,
    tooled,
)


class Parameter(float):
    """Stands in for torch.nn.Parameter: matched by class name or subclass."""


class Special(Parameter):
    pass


@tooled
def model(x):
    w: Parameter = Parameter(2.0)
    s: Special = Special(3.0)
    lr: tag.HyperParameter = 0.1
    n: tag.HyperParameter & int = 4
    plain = 5
    return x * w * s * lr * n * plain


def test_tags_are_unique_per_name_and_combine():
    assert tag.Foo is tag.Foo
    assert Tag("Foo") == tag.Foo
    both = tag.A & int
    assert isinstance(both, TagSet) and both.members == {tag.A, int}
    assert (int & tag.A) == both
    assert match_tag(tag.A, both) and match_tag(tag.A, tag.A)
    assert not match_tag(tag.B, both)


@pytest.mark.parametrize(
    "selector, names",
    [
        ("model > $p:Parameter", ["w", "s"]),
        ("model > $p:Special", ["s"]),
        ("model > $h:HyperParameter", ["lr", "n"]),
        ("model > $t:tests.test_tags.Parameter", ["w", "s"]),
    ],
)
def test_tag_filters(selector, names):
    with probing(selector, raw=True).values() as values:
        model(1)
    assert [v[next(iter(v))].names[0] for v in values] == names


def test_tag_object_from_env():
    with probing("model > $h:##T", raw=True, env={"##T": tag.HyperParameter}).values() as values:
        model(1)
    assert [v["h"].names[0] for v in values] == ["lr", "n"]


def test_cat_and_plus_are_older_spellings_of_tag_and_ampersand():
    assert cat is tag and cat.Learnable is tag.Learnable
    assert tag.A + tag.B == tag.A & tag.B
    assert tag.A + tag.B + int == tag.A & tag.B & int == int + (tag.A + tag.B)


@tooled
def older(x):
    W: cat.Learnable + cat.WeightMatrix = Parameter(2.0)
    b: cat.Learnable = Parameter(1.0)
    return x * W + b


@pytest.mark.parametrize(
    "selector, names",
    [
        ("older > $p:WeightMatrix", ["W"]),
        ("older > $p:Learnable", ["W", "b"]),
    ],
)
def test_plus_annotations_filter_like_ampersand(selector, names):
    with probing(selector, raw=True).values() as values:
        older(1)
    assert [v["p"].names[0] for v in values] == names


def test_a_type_filter_reads_annotations_not_values():
    # `W` holds a Parameter but is annotated with tags only: nothing can pass
    with pytest.warns(UnmatchedSelectorWarning, match="no variable annotated with the tag"):
        with probing("older > $p:Parameter").values() as got:
            older(1)
    assert got == []
    with pytest.raises(SelectorError, match="no variable 'W' annotated with the tag or type"):
        probing("older > W:Parameter")


@tooled
def cheese(x) -> tag.Fromage:
    a = x * x
    return a


@tooled
def dessert(x) -> "tag.Fromage & tag.Sucre":
    a = x + 1
    return a


@tooled
def bread(x) -> int:
    a = x - 1
    return a


@tooled
def meal(x):
    return cheese(x) + dessert(x) + bread(x)


@pytest.mark.parametrize(
    "selector, values",
    [
        # `*:Tag(...)`: any function whose return annotation has the tag (1.4's spelling)
        ("*:tag.Fromage(!a)", [4, 3]),
        ("*:Fromage > a", [4, 3]),
        ("*:@Sucre{!a}", [3]),  # a string annotation, evaluated in the function's module
        ("*:int > a", [1]),
        ("meal > *:Fromage > a", [4, 3]),
        ("meal >> *:Fromage > a", [4, 3]),  # (not `bread`, which `>>` also reaches)
    ],
)
def test_a_function_tag_filter_reads_return_annotations(selector, values):
    with probing(selector).values() as got:
        meal(2)
    assert [v for d in got for v in d.values()] == values


def test_a_function_tag_no_function_has_warns():
    with pytest.warns(UnmatchedSelectorWarning, match="no decorated function returns"):
        with probing("*:tag.Xylophone(!a)").values() as got:
            meal(2)
    assert got == []


@pytest.mark.parametrize("selector, values", [("*:Fromage > a", [2, 3]), ("*:tag.Bleu > a", [3])])
def test_a_quoted_return_annotation_under_future_annotations(selector, values):
    from tests.future_returns import platter

    with probing(selector).values() as got:
        platter(1)
    assert [d["a"] for d in got] == values


def test_a_star_tag_without_brackets_is_a_variables_filter():
    with pytest.warns(UnmatchedSelectorWarning, match="no variable annotated with the tag"):
        with probing("meal > *:Fruit").values() as got:
            meal(2)
    assert got == []


def define_with(annotation_text):
    """A new instrumented function whose local ``W`` has the given annotation."""
    namespace = {"tooled": tooled, "tag": tag}
    source = f"@tooled\ndef typo(x):\n    W: {annotation_text}\n    return x\n"
    path = Path(__file__).parent / "_annotation_cases.py"
    code = compile(source, str(path), "exec")
    linecache.cache[str(path)] = (len(source), None, source.splitlines(True), str(path))
    exec(code, namespace)
    return namespace["typo"]


@pytest.mark.parametrize(
    "annotation, error",
    [
        ("tag.Learnable + Parmeter", "NameError: name 'Parmeter' is not defined"),
        ("tag.Learnable & 1 / 0", "ZeroDivisionError: division by zero"),
        ("tag.nope.deeper", "AttributeError"),
    ],
)
def test_an_annotation_that_fails_is_a_warning_naming_variable_place_and_error(annotation, error):
    with pytest.warns(AnnotationWarning) as record:
        fn = define_with(annotation)
    assert len(record) == 1  # once per instrumentation
    message = str(record[0].message)
    for part in [
        "in typo,",
        f"`W: {annotation}`",
        "_annotation_cases.py:3",
        error,
        "tag and type filters",
    ]:
        assert part in message, part
    assert record[0].filename.endswith("_annotation_cases.py") and record[0].lineno == 3
    assert fn.__ptera_info__["W"]["annotation"] is ABSENT


def test_annotations_that_evaluate_give_no_warning():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        fn = define_with("tag.Learnable + tag.WeightMatrix")
    assert fn.__ptera_info__["W"]["annotation"] == tag.Learnable & tag.WeightMatrix
