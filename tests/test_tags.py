"""Tags in annotations, and selectors that filter on them."""

import pytest

from ptera import Tag, TagSet, match_tag, probing, tag, tooled


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
