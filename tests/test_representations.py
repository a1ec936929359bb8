"""Saturation, latents, probes, receptive fields and FLOPs of ptera.lab.representations."""

from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ptera.lab import DataLoaders, Learner, Saturation
from ptera.lab.models import Lenet5, SmallResNet
from ptera.lab.representations import (
    Covariance,
    computational_info,
    extract_latents,
    flops,
    intrinsic_dimensionality,
    load_manifest,
    receptive_field,
    rows_of,
    saturation,
    train_probes,
)


def small_cnn() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(1, 4, 3),  # 6x6 -> 4x4
        nn.ReLU(),
        nn.Conv2d(4, 5, 3, padding=1),
        nn.Flatten(),
        nn.Linear(5 * 4 * 4, 7),
        nn.ReLU(),
        nn.Linear(7, 3),
    )


def data(n: int = 300, seed: int = 1) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 6, 6, generator=g)
    return TensorDataset(x, (x.sum((1, 2, 3)) > 0).long() + (x[:, 0, 0, 0] > 1).long())


def activations(model: nn.Sequential, x: torch.Tensor) -> dict[str, np.ndarray]:
    """Each Conv2d/Linear output, computed by calling the layers one by one."""
    out = {}
    with torch.no_grad():
        for i, layer in enumerate(model):
            x = layer(x)
            if isinstance(layer, (nn.Conv2d, nn.Linear)):
                out[str(i)] = x.double().numpy()
    return out


def reference_rows(a: np.ndarray, conv_method: str) -> np.ndarray:
    if a.ndim == 2:
        return a
    return {
        "channelwise": lambda: a.transpose(0, 2, 3, 1).reshape(-1, a.shape[1]),
        "mean": lambda: a.mean((2, 3)),
        "max": lambda: a.max((2, 3)),
        "flatten": lambda: a.reshape(len(a), -1),
    }[conv_method]()


def reference(a: np.ndarray, delta: float, rule: str) -> tuple[int, float]:
    """(k, trace) by numpy in float64, from the definitions."""
    cov = np.cov(a, rowvar=False, bias=True).reshape(a.shape[1], a.shape[1])
    values = np.clip(np.sort(np.linalg.eigvalsh(cov))[::-1], 0, None)
    cum = np.cumsum(values) / values.sum()
    if rule == "textbook":
        k = int(np.argmax(cum >= delta)) + 1 if (cum >= delta).any() else len(cum)
    else:
        k = max(1, int((cum < delta).sum()))
    return k, float(np.trace(cov))


@pytest.mark.parametrize("rule", ["textbook", "delve"])
@pytest.mark.parametrize("conv_method", ["channelwise", "mean", "max", "flatten"])
@pytest.mark.parametrize("delta", [0.9, 0.99])
def test_saturation_equals_a_float64_reference(rule, conv_method, delta):
    model, ds = small_cnn(), data()
    got = saturation(model, ds, delta=delta, conv_method=conv_method, rule=rule)
    acts = activations(model, ds.tensors[0])
    assert list(got["layer"]) == ["0", "2", "4", "6"]
    for row in got.itertuples():
        rows = reference_rows(acts[row.layer], conv_method)
        k, trace = reference(rows, delta, rule)
        assert (row.dim, row.k) == (rows.shape[1], k), row.layer
        assert row.saturation == k / rows.shape[1]
        assert row.trace == pytest.approx(trace, rel=1e-9)


@pytest.mark.parametrize("conv_method", ["channelwise", "flatten"])
def test_streaming_over_batches_gives_the_one_batch_numbers(conv_method):
    model, ds = small_cnn(), data()
    whole = saturation(model, ds, batch_size=len(ds), conv_method=conv_method)
    streamed = saturation(model, DataLoader(ds, batch_size=64), conv_method=conv_method)
    assert list(whole["k"]) == list(streamed["k"])
    np.testing.assert_allclose(whole["trace"], streamed["trace"], rtol=1e-10)


def fit_with_saturation(epochs: int, lr: float, **options):
    model = small_cnn()
    train, valid = data(256, seed=1), data(128, seed=2)
    sat = Saturation(**options)
    snapshots = []

    class Snapshot:
        order = 50

        def after_epoch(self, learn):
            if not learn.training:
                snapshots.append({k: v.clone() for k, v in learn.model.state_dict().items()})

    dls = DataLoaders.from_datasets(train, valid, batch_size=64)
    learn = Learner(model, dls, nn.functional.cross_entropy, lr=lr, cbs=[sat, Snapshot()])
    learn.fit(epochs)
    return model, train, valid, sat, snapshots


def test_the_callback_matches_one_pass_on_the_same_weights():
    model, _, valid, sat, snapshots = fit_with_saturation(3, lr=0.1)
    history = sat.history
    assert list(history.columns) == ["epoch", "split", "layer", "dim", "k", "saturation", "trace"]
    assert len(history) == 3 * 2 * 4  # epochs x splits x layers
    for epoch, weights in enumerate(snapshots):
        model.load_state_dict(weights)
        expected = saturation(model, valid, batch_size=37)
        got = history[(history.epoch == epoch) & (history.split == "eval")]
        assert list(got["k"]) == list(expected["k"])
        np.testing.assert_allclose(got["trace"], expected["trace"], rtol=1e-9)


@pytest.mark.parametrize("buffer_elements", [1, 1000, 1 << 20])  # flush every batch ... once
@pytest.mark.parametrize("conv_method", ["channelwise", "max"])
def test_with_weights_held_still_the_train_numbers_are_a_pass_over_the_train_set(
    monkeypatch, buffer_elements, conv_method
):
    monkeypatch.setattr(Saturation, "buffer_elements", buffer_elements)
    model, train, _, sat, _ = fit_with_saturation(1, lr=0.0, rule="delve", conv_method=conv_method)
    history = sat.history
    got = history[history.split == "train"]
    expected = saturation(model, train, rule="delve", conv_method=conv_method)
    assert list(got["k"]) == list(expected["k"])
    np.testing.assert_allclose(got["trace"], expected["trace"], rtol=1e-9)


def test_an_in_place_activation_does_not_change_what_was_measured():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(inplace=True), nn.Flatten(), nn.Linear(64, 3))
    ds = data(128)
    sat = Saturation()
    dls = DataLoaders.from_datasets(ds, ds, batch_size=32)
    Learner(model, dls, nn.functional.cross_entropy, lr=0.0, cbs=[sat]).fit(1)
    conv = reference_rows(activations(model, ds.tensors[0])["0"], "channelwise")
    k, trace = reference(conv, 0.99, "textbook")
    history = sat.history
    conv_rows = history[history.layer == "0"]
    assert list(conv_rows.split) == ["train", "eval"]
    for row in conv_rows.itertuples():
        assert (row.k, row.trace) == (k, pytest.approx(trace, rel=1e-9))


def test_the_callback_registers_no_hook_and_writes_csv_and_plots(tmp_path):
    seen = []

    class NoHooks:
        def after_batch(self, learn):
            seen.append(
                any(m._forward_hooks or m._forward_pre_hooks for m in learn.model.modules())
            )

    model, train, valid = small_cnn(), data(128), data(64, seed=2)
    sat = Saturation(layers=["2", "6"])
    dls = DataLoaders.from_datasets(train, valid, batch_size=64)
    Learner(model, dls, nn.functional.cross_entropy, cbs=[sat, NoHooks()]).fit(2)
    assert seen and not any(seen)
    assert set(sat.history["layer"]) == {"2", "6"}
    sat.to_csv(tmp_path / "sat.csv")
    assert (tmp_path / "sat.csv").read_text().startswith("epoch,split,layer,dim,k,saturation,trace")
    paths = sat.plot(tmp_path, prefix="run-")
    assert [p.rsplit("/", 1)[1] for p in paths] == ["run-lsat_epoch0.png", "run-lsat_epoch1.png"]


def test_a_selector_names_a_layer():
    model, ds = small_cnn(), data(64)
    got = saturation(model, ds, layers=["Flatten(self) > #value as out"])
    assert list(got["dim"]) == [80]


@pytest.mark.parametrize(
    "options, message",
    [
        ({"delta": 0}, "delta must be a number in (0, 1]"),
        ({"delta": 1.5}, "delta must be a number in (0, 1]"),
        ({"conv_method": "median"}, "conv_method must be one of"),
        ({"rule": "paper"}, "rule must be one of"),
    ],
)
def test_bad_options_fail_when_built(options, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace("]", r"\]")):
        Saturation(**options)


@pytest.mark.parametrize(
    "layers, message",
    [
        (["nope"], "layer 'nope' is not a module of Sequential"),
        (["Linear(self) > #value"], "must capture the output `as out`"),
        ("0", "must be a list"),
    ],
)
def test_bad_layers_are_named(layers, message):
    with pytest.raises((ValueError, TypeError), match=message):
        saturation(small_cnn(), data(8), layers=layers)


@settings(max_examples=50, deadline=None)
@given(
    st.lists(st.floats(0, 10, allow_nan=False), min_size=1, max_size=12),
    st.floats(0.05, 1.0),
)
def test_k_is_the_first_index_reaching_delta(values, delta):
    values = sorted(values, reverse=True)
    ev = torch.tensor(values, dtype=torch.float64)
    k = intrinsic_dimensionality(ev, delta)
    kd = intrinsic_dimensionality(ev, delta, rule="delve")
    if sum(values) == 0:
        assert (k, kd) == (0, 1)
        return
    # cum_i in exact arithmetic; a fraction within rounding of delta may go either way
    total = sum(Fraction(v) for v in values)
    cum = [sum(Fraction(v) for v in values[: i + 1]) / total for i in range(len(values))]
    below = [c < delta - 1e-12 for c in cum]
    maybe_below = [c < delta + 1e-12 for c in cum]
    assert 1 <= k <= len(values) and 1 <= kd <= len(values)
    assert sum(below) + 1 <= k <= min(sum(maybe_below) + 1, len(values))
    assert max(1, sum(below)) <= kd <= max(1, sum(maybe_below))


@pytest.mark.parametrize(
    "values, delta, textbook, delve",
    [
        ([0.4, 0.3, 0.3], 0.5, 2, 1),  # cum .4 is .1 short of delta: delve still says 1
        ([0.6, 0.3, 0.1], 0.5, 1, 1),  # nothing below delta: delve's at least 1
        ([0.5, 0.2, 0.2, 0.1], 0.95, 4, 3),
        ([0.5, 0.2, 0.2, 0.1], 0.9, 3, 2),  # cum_3 = .9 reaches delta: not below it
        ([0.0, 0.0], 0.99, 0, 1),  # no variance
    ],
)
def test_k_by_rule(values, delta, textbook, delve):
    ev = torch.tensor(values, dtype=torch.float64)
    assert intrinsic_dimensionality(ev, delta) == textbook
    assert intrinsic_dimensionality(ev, delta, rule="delve") == delve


@pytest.mark.parametrize("conv_method", ["channelwise", "mean", "max", "flatten"])
def test_rule_delve_equals_the_delve_package_with_one_batch_a_pass(tmp_path, conv_method):
    """delve's tracker (forward hooks) and our callback (probes) on the same fit: with
    the whole split as one batch, delve's last-batch numbers are the pass's."""
    delve = pytest.importorskip("delve")
    from delve.writers import AbstractWriter

    class Keep(AbstractWriter):
        def __init__(self):
            self.values = {}

        def add_scalar(self, name, value, **kwargs):
            self.values[name] = value

        def add_scalars(self, prefix, value_dict, **kwargs):
            self.values.update(value_dict)

        def save(self):
            pass

        def close(self):
            pass

        def resume_from_saved_state(self, epoch):
            pass

    model, train, valid, writer = small_cnn(), data(256, seed=1), data(128, seed=2), Keep()
    tracker = delve.SaturationTracker(
        str(tmp_path), save_to=writer, modules=model, stats=["lsat", "idim", "trc"],
        conv_method=conv_method, device="cpu",
    )  # fmt: skip
    sat = Saturation(rule="delve", conv_method=conv_method)
    dls = DataLoaders.from_datasets(train, valid, batch_size=256)
    Learner(model, dls, nn.functional.cross_entropy, lr=0.5, cbs=[sat]).fit(1)
    tracker.add_saturations()
    assert len(sat.history) == 8
    for row in sat.history.itertuples():
        key = f"{row.split}-{{}}_{row.layer}"
        assert row.k == writer.values[key.format("intrinsic-dimensionality")], key
        assert row.saturation == writer.values[key.format("saturation")], key
        # delve averages in float32 before its float64 sums; we pool in float64
        rel = 1e-6 if conv_method == "mean" else 1e-9
        assert row.trace == pytest.approx(writer.values[key.format("covariance-trace")], rel=rel)


# -- latents and probes -----------------------------------------------------------------
@pytest.mark.parametrize(
    "downsampling, conv_shapes",
    [
        (4, [(300, 4 * 4 * 4), (300, 5 * 4 * 4)]),
        (2, [(300, 4 * 2 * 2), (300, 5 * 2 * 2)]),
        (None, [(300, 4 * 4 * 4), (300, 5 * 4 * 4)]),
        ("pixelwise", [(300 * 16, 4), (300 * 16, 5)]),
    ],
)
def test_extracted_latents_load_without_pickle(tmp_path, downsampling, conv_shapes):
    model, ds = small_cnn(), data()
    entry = extract_latents(model, ds, tmp_path, downsampling=downsampling, batch_size=64)
    assert list(entry["layers"]) == ["0", "2", "4", "6"]
    shapes = [
        np.load(tmp_path / e["file"], allow_pickle=False).shape for e in entry["layers"].values()
    ]
    assert shapes == [*conv_shapes, (300, 7), (300, 3)]
    labels = np.load(tmp_path / "train-labels.npy", allow_pickle=False)
    np.testing.assert_array_equal(labels, ds.tensors[1].numpy())
    # The rows are the layer's outputs, in data order.
    last = np.load(tmp_path / entry["layers"]["6"]["file"], allow_pickle=False)
    np.testing.assert_allclose(last, activations(model, ds.tensors[0])["6"], rtol=1e-5, atol=1e-6)
    manifest = load_manifest(tmp_path)
    assert manifest["splits"]["train"]["n"] == 300
    assert not list(tmp_path.glob("*.partial"))


def test_extraction_records_where_the_model_came_from(tmp_path):
    extract_latents(small_cnn(), data(32), tmp_path, checkpoint="run/model.pt", config={"a": 1})
    manifest = load_manifest(tmp_path)
    assert (manifest["checkpoint"], manifest["config"]) == ("run/model.pt", {"a": 1})


@pytest.mark.parametrize("downsampling", [0, -2, "pixel", 2.5])
def test_bad_downsampling_is_named(tmp_path, downsampling):
    with pytest.raises(ValueError, match="downsampling must be"):
        extract_latents(small_cnn(), data(8), tmp_path, downsampling=downsampling)


@pytest.fixture(scope="module")
def digit_latents(tmp_path_factory):
    from ptera.lab.data import digits

    folder = tmp_path_factory.mktemp("latents")
    torch.manual_seed(0)
    model, (train, test) = Lenet5(8), digits()
    extract_latents(model, train, folder, layers=["features.0", "classifier.5"], split="train")
    extract_latents(model, test, folder, layers=["features.0", "classifier.5"], split="eval")
    return folder


def test_probes_beat_chance_on_digits_and_a_rerun_refits_nothing(digit_latents):
    first = train_probes(digit_latents)
    assert list(first["layer"]) == ["features.0", "classifier.5"]
    assert first.attrs["fitted"] == ["features.0", "classifier.5"]
    assert (first["eval_accuracy"] > 0.3).all()  # chance is 0.1
    assert first["eval_accuracy"].iloc[0] > 0.8  # an untrained conv layer still separates digits
    again = train_probes(digit_latents)
    assert again.attrs["fitted"] == []
    assert again.equals(first)
    text = (digit_latents / "probe_performance.csv").read_text().splitlines()
    assert text[0] == "layer,train_accuracy,eval_accuracy,converged"
    assert [line.split(",")[0] for line in text[1:]] == ["features.0", "classifier.5"]


def test_probes_name_a_missing_split(tmp_path):
    extract_latents(small_cnn(), data(16), tmp_path)
    with pytest.raises(FileNotFoundError, match="no 'eval' latents"):
        train_probes(tmp_path)


# -- receptive fields and FLOPs ------------------------------------------------------
def known_chain() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(3, 4, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(4, 4, 3, stride=2, padding=1),
        nn.MaxPool2d(2),
        nn.Conv2d(4, 2, 3, dilation=2),
        nn.AvgPool2d(3, stride=1, padding=1),
    )


@pytest.mark.parametrize(
    "model, shape, expected",
    [
        # r += (k - 1) * dilation * jump; jump *= stride; by hand:
        (known_chain, (3, 32, 32), [(3, 1, 32), (5, 2, 16), (7, 4, 8), (23, 4, 4), (31, 4, 4)]),
        (lambda: Lenet5(8), (1, 8, 8), [(5, 1, 8), (6, 2, 4), (14, 2, 4), (16, 4, 2)]),
    ],
)
def test_receptive_fields_of_known_chains(model, shape, expected):
    got = receptive_field(model(), shape)
    assert list(zip(got.receptive_field, got.stride, got["size"])) == expected


def test_a_skip_connection_needs_noskip():
    with pytest.raises(ValueError, match="skip connection .* build it with noskip=True"):
        receptive_field(SmallResNet(16), (1, 16, 16))
    got = receptive_field(SmallResNet(16, noskip=True), (1, 16, 16))
    assert list(got.layer) == ["stem.0", *(f"blocks.{i}.body.{j}" for i in (0, 1) for j in (0, 3))]
    assert list(got.receptive_field) == [3, 5, 7, 9, 13]


def test_a_gradient_outside_the_analytic_field_is_an_error():
    class Shifted(nn.Module):  # a conv that reads its input rolled by 3 pixels: not a chain
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 1, 3, padding=1)

        def forward(self, x):
            return self.conv(torch.roll(x, 3, dims=2))

    with pytest.raises(ValueError, match="layer conv: its gradient reaches input rows"):
        receptive_field(Shifted(), (1, 12, 12))


@pytest.mark.parametrize(
    "model, shape, expected",
    [
        (lambda: nn.Linear(10, 5), (10,), 2 * 10 * 5),
        (lambda: nn.Conv2d(1, 2, 3), (1, 5, 5), 2 * 9 * (2 * 3 * 3)),
        (
            lambda: nn.Sequential(nn.Flatten(), nn.Linear(16, 4), nn.ReLU(), nn.Linear(4, 3)),
            (1, 4, 4),
            2 * (16 * 4 + 4 * 3),
        ),
    ],
)
def test_flops_per_inference(model, shape, expected):
    assert flops(model(), shape) == expected


def test_computational_info_counts_parameters_and_modules():
    info = computational_info(Lenet5(8), (1, 8, 8))
    assert info["parameters"] == sum(p.numel() for p in Lenet5(8).parameters())
    assert info["flops_per_inference"] == flops(Lenet5(8), (1, 8, 8)) > 0
    assert info["flops_by_module"]["Lenet5.features.0"] == 2 * 25 * 6 * 64


@settings(max_examples=30, deadline=None)
@given(st.lists(st.integers(1, 40), min_size=1, max_size=6), st.integers(0, 2**16))
def test_the_streamed_covariance_does_not_depend_on_the_batches(sizes, seed):
    g = torch.Generator().manual_seed(seed)
    maps = torch.randn(sum(sizes), 3, 2, 2, generator=g) * 5 + 2
    whole, streamed, as_rows = Covariance(), Covariance(), Covariance()
    whole.add(maps)
    for part in maps.split(sizes):
        streamed.add(part)
    as_rows.update(rows_of(maps))  # the rows built explicitly
    for other in (streamed, as_rows):
        assert other.n == whole.n == sum(sizes) * 4
        torch.testing.assert_close(other.matrix(), whole.matrix(), rtol=1e-12, atol=1e-12)


def test_pixelwise_latents_make_a_probe_per_position(tmp_path):
    model = small_cnn()
    extract_latents(model, data(64), tmp_path, downsampling="pixelwise", split="train")
    extract_latents(model, data(32, seed=3), tmp_path, downsampling="pixelwise", split="eval")
    frame = train_probes(tmp_path, max_iter=200)
    assert list(frame.layer) == ["0", "2", "4", "6"]
    manifest = load_manifest(tmp_path)
    assert manifest["splits"]["eval"]["layers"]["0"]["positions"] == 16
    assert frame.eval_accuracy.between(0, 1).all()


@pytest.mark.parametrize("width", [1, 6, 120])
def test_columns_give_the_same_sums_as_rows(width):
    rows = torch.randn(50, width, dtype=torch.float64) * 3 + 1
    by_rows, by_columns = Covariance(), Covariance()
    by_rows.update(rows)
    by_columns.update_columns(rows.T)
    by_columns.update_columns(rows.T[:, :0])  # an empty batch adds nothing
    assert by_columns.n == by_rows.n == 50
    torch.testing.assert_close(by_columns.matrix(), by_rows.matrix(), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "sizes",
    [
        [5, 5, 3],  # full batches and a last one
        [1, 2, 3, 4, 5, 6, 7, 8],  # more batch shapes than workspaces kept
        [40],  # larger than the workspace: in parts
    ],
)
@pytest.mark.parametrize(
    "features",
    [(7,), (3, 2, 5), (150,), (130, 1, 2)],  # rows, maps; over 64 values: in blocks
)
def test_batches_of_any_shapes_give_the_one_batch_sums(sizes, features):
    g = torch.Generator().manual_seed(len(sizes))
    shape = (sum(sizes), *features)
    x = torch.randn(*shape, generator=g) * 4 - 1
    per_sample = (features[0] + 1) * int(np.prod(features[1:]))  # with the ones
    whole, streamed = Covariance(), Covariance(max_elements=8 * per_sample)  # 40: in parts
    whole.add(x)
    for part in x.split(sizes):
        streamed.add(part)
    assert streamed.n == whole.n == len(rows_of(x))
    assert len(streamed._layouts) <= Covariance.max_shapes
    torch.testing.assert_close(streamed.matrix(), whole.matrix(), rtol=1e-12, atol=1e-12)
    rows = rows_of(x).numpy()
    np.testing.assert_allclose(whole.sum.numpy(), rows.sum(0), rtol=1e-12)
    np.testing.assert_allclose(whole.xtx.numpy(), rows.T @ rows, rtol=1e-12)


def test_an_output_that_requires_grad_builds_no_graph():
    x = torch.randn(10, 4, requires_grad=True)
    cov = Covariance()
    cov.add(x * 2)
    assert not cov.matrix().requires_grad and x.grad is None


def test_an_output_that_changes_size_within_a_pass_is_an_error():
    cov = Covariance()
    cov.add(torch.randn(8, 4))
    with pytest.raises(ValueError, match="rows of 5 values after rows of 4"):
        cov.add(torch.randn(8, 5))


def test_the_lr_finder_run_is_not_measured():
    sat = Saturation()
    dls = DataLoaders.from_datasets(data(64), data(32, seed=2), batch_size=16)
    learn = Learner(small_cnn(), dls, nn.functional.cross_entropy, lr=0.1, cbs=[sat])
    learn.lr_find(num_it=3)
    assert len(sat.history) == 0
    learn.fit(1)
    assert len(sat.history) == 2 * 4  # splits x layers


def test_reading_within_a_pass_then_adding_more_gives_the_whole_pass():
    x = torch.randn(56, 10, generator=torch.Generator().manual_seed(3)) * 2 + 1
    whole, streamed = Covariance(), Covariance()
    whole.add(x)
    parts = x.split(8)
    for part in parts[:4]:
        streamed.add(part)
    torch.testing.assert_close(streamed.matrix(), _cov(x[:32]), rtol=1e-10, atol=1e-12)
    for part in parts[4:]:
        streamed.add(part)
    assert streamed.n == 56
    torch.testing.assert_close(streamed.matrix(), whole.matrix(), rtol=1e-12, atol=1e-12)


def _cov(x: torch.Tensor) -> torch.Tensor:
    rows = x.double().numpy()
    return torch.from_numpy(np.cov(rows, rowvar=False, bias=True))


def test_a_wide_linear_layer_in_training_equals_the_reference():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(36, 100), nn.ReLU(), nn.Linear(100, 3))
    train, valid = data(200), data(70, seed=2)
    sat = Saturation(rule="delve")
    dls = DataLoaders.from_datasets(train, valid, batch_size=16)
    Learner(model, dls, nn.functional.cross_entropy, lr=0.0, cbs=[sat]).fit(1)
    history = sat.history
    for split, ds in (("train", train), ("eval", valid)):
        with torch.no_grad():
            rows = model[1](model[0](ds.tensors[0])).double().numpy()
        k, trace = reference(rows, 0.99, "delve")
        got = history[(history.split == split) & (history.layer == "1")].iloc[0]
        assert (got.dim, got.k) == (100, k)
        assert got.trace == pytest.approx(trace, rel=1e-9)
