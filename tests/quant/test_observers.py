"""Range observers: update rules, per-row reduction, training-only updates, state_dict."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.quant import EMAObserver, MinMaxObserver, PercentileObserver
from lorap_dist.quant.observers import tail_quantiles, values_at_ranks


def _batches(n: int, shape=(8, 5), seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(shape, generator=gen) * (i + 1) for i in range(n)]


@pytest.mark.parametrize("per_row", [False, True])
def test_minmax_keeps_running_extremes(per_row):
    observer = MinMaxObserver(per_row=per_row)
    batches = _batches(3)
    for x in batches:
        observer(x)
    stacked = torch.stack(batches)  # [3, 8, 5]
    dims = (0, 2) if per_row else (0, 1, 2)
    assert torch.equal(observer.min_val, stacked.amin(dim=dims))
    assert torch.equal(observer.max_val, stacked.amax(dim=dims))


@pytest.mark.parametrize("per_row", [False, True])
@pytest.mark.parametrize("momentum", [0.01, 0.3, 1.0])
def test_ema_starts_at_the_first_batch_then_averages(per_row, momentum):
    observer = EMAObserver(momentum=momentum, per_row=per_row)
    first, second, third = _batches(3, seed=1)

    def batch_range(x):
        return (x.amin(dim=1), x.amax(dim=1)) if per_row else (x.min(), x.max())

    observer(first)
    expected_min, expected_max = batch_range(first)
    assert torch.equal(observer.min_val, expected_min)
    for x in (second, third):
        observer(x)
        lo, hi = batch_range(x)
        expected_min = (1 - momentum) * expected_min + momentum * lo
        expected_max = (1 - momentum) * expected_max + momentum * hi
    assert torch.equal(observer.min_val, expected_min)
    assert torch.equal(observer.max_val, expected_max)
    if momentum == 1.0:
        assert torch.equal(observer.max_val, hi)  # keeps only the latest batch


@pytest.mark.parametrize("percentile", [0.001, 0.01, 0.2])
@pytest.mark.parametrize("shape", [(1000,), (30, 7, 11)])
def test_percentile_per_tensor_matches_torch_quantile(percentile, shape):
    x = torch.randn(shape, generator=torch.Generator().manual_seed(2)).exp()
    observer = PercentileObserver(percentile=percentile)
    observer(x)
    q = torch.tensor([percentile, 1 - percentile])
    lo, hi = torch.quantile(x.reshape(-1), q)
    assert torch.equal(observer.min_val, lo)
    assert torch.equal(observer.max_val, hi)
    assert x.min() < lo < hi < x.max()  # the tails were clipped


def test_percentile_per_row_matches_torch_quantile():
    x = torch.randn(6, 4, 50, generator=torch.Generator().manual_seed(3))
    observer = PercentileObserver(percentile=0.05, per_row=True)
    observer(x)
    lo, hi = torch.quantile(x.reshape(6, -1), torch.tensor([0.05, 0.95]), dim=1)
    assert observer.min_val.shape == (6,)
    assert torch.equal(observer.min_val, lo)
    assert torch.equal(observer.max_val, hi)


def test_percentile_averages_batches_with_momentum():
    first, second = _batches(2, seed=4)
    observer = PercentileObserver(percentile=0.1, momentum=0.25)
    observer(first)
    observer(second)
    q = torch.tensor([0.1, 0.9])
    lo1, hi1 = torch.quantile(first.reshape(-1), q)
    lo2, hi2 = torch.quantile(second.reshape(-1), q)
    assert torch.allclose(observer.min_val, 0.75 * lo1 + 0.25 * lo2)
    assert torch.allclose(observer.max_val, 0.75 * hi1 + 0.25 * hi2)


def test_percentile_subsamples_to_max_samples():
    x = torch.linspace(0, 1, 100_001)
    torch.manual_seed(0)
    observer = PercentileObserver(percentile=0.25, max_samples=2000)
    observer(x)
    # 2000 draws estimate the quartiles of a uniform grid to well within 0.05 ...
    assert abs(float(observer.min_val) - 0.25) < 0.05
    assert abs(float(observer.max_val) - 0.75) < 0.05
    # ... but not exactly: the estimate came from a subsample, not all 100001 values.
    assert float(observer.min_val) != float(torch.quantile(x, 0.25))


def test_observers_do_not_update_in_eval_mode():
    observer = MinMaxObserver()
    observer(torch.tensor([-1.0, 2.0]))
    observer.eval()
    returned = observer(torch.tensor([-5.0, 9.0]))
    assert torch.equal(returned, torch.tensor([-5.0, 9.0]))
    assert (float(observer.min_val), float(observer.max_val)) == (-1.0, 2.0)
    fresh = EMAObserver().eval()
    fresh(torch.ones(3))
    assert not fresh.initialized


def test_observer_ignores_gradients_and_input_dtype():
    x = torch.tensor([[-1.5, 2.0], [0.5, 3.0]], dtype=torch.float16, requires_grad=True)
    observer = MinMaxObserver(per_row=True)
    observer(x)
    assert observer.min_val.dtype == torch.float32
    assert not observer.min_val.requires_grad
    assert observer.max_val.tolist() == [2.0, 3.0]


@pytest.mark.parametrize("per_row", [False, True])
def test_state_dict_round_trips_into_a_fresh_observer(per_row):
    observer = EMAObserver(momentum=0.5, per_row=per_row)
    for x in _batches(2, seed=5):
        observer(x)
    state = observer.state_dict()
    assert set(state) == {"min_val", "max_val"}
    fresh = EMAObserver(momentum=0.5, per_row=per_row)
    assert not fresh.initialized
    fresh.load_state_dict(state)
    assert torch.equal(fresh.min_val, observer.min_val)
    assert torch.equal(fresh.max_val, observer.max_val)


def test_per_row_observer_rejects_a_changed_row_count():
    observer = MinMaxObserver(per_row=True)
    observer(torch.randn(4, 3))
    with pytest.raises(ValueError, match="same number of rows"):
        observer(torch.randn(5, 3))


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: EMAObserver(momentum=0.0), "momentum=0.0"),
        (lambda: EMAObserver(momentum=1.5), "momentum=1.5"),
        (lambda: PercentileObserver(percentile=0.5), "percentile=0.5"),
        (lambda: PercentileObserver(max_samples=0), "max_samples=0"),
    ],
)
def test_invalid_arguments_are_named(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_repr_names_the_settings():
    assert "percentile=0.01" in repr(PercentileObserver(percentile=0.01))
    assert "momentum=0.2, per_row=True" in repr(EMAObserver(momentum=0.2, per_row=True))


@pytest.mark.parametrize("make", [MinMaxObserver, lambda: EMAObserver(momentum=0.3)])
def test_observe_range_folds_like_observing_the_tensor(make):
    gen = torch.Generator().manual_seed(3)
    from_tensor, from_range = make(), make()
    for _ in range(3):
        x = torch.randn(40, 7, generator=gen) * 2
        from_tensor(x)
        from_range.observe_range(*torch.aminmax(x))
        assert torch.equal(from_range.min_val, from_tensor.min_val)
        assert torch.equal(from_range.max_val, from_tensor.max_val)
    from_range.eval()
    from_range.observe_range(torch.tensor(-100.0), torch.tensor([100.0]))
    assert torch.equal(from_range.max_val, from_tensor.max_val)


@pytest.mark.parametrize(
    "observer", [PercentileObserver(), MinMaxObserver(per_row=True)], ids=["percentile", "per_row"]
)
def test_observe_range_refuses_observers_that_need_the_values(observer):
    assert not observer.range_from_extremes or observer.per_row
    with pytest.raises(ValueError, match="cannot observe a range"):
        observer.observe_range(torch.tensor(0.0), torch.tensor(1.0))


@pytest.mark.parametrize("p", [0.0, 0.001, 0.01, 0.37, 0.5])
@pytest.mark.parametrize(
    "kind", ["signed", "sparse", "rectified", "zeros", "constant", "one", "ties"]
)
def test_tail_quantiles_equal_torch_quantile_bit_for_bit(p, kind):
    g = torch.Generator().manual_seed(5)
    x = torch.randn(4099, generator=g)
    if kind == "sparse":  # bag-of-words: 1% non-zeros, all positive
        x = x.abs() * (torch.rand(4099, generator=g) < 0.01)
    elif kind == "rectified":
        x = x.relu()
    elif kind == "zeros":
        x = torch.zeros(4099)
    elif kind == "constant":
        x = torch.full((4099,), -0.25)
    elif kind == "one":
        x = x[:1]
    elif kind == "ties":
        x = torch.randint(-3, 4, (4099,), generator=g).float()
    lo, hi = tail_quantiles(x, p)
    expected = torch.quantile(x, torch.tensor([p, 1 - p]))
    assert torch.equal(torch.stack([lo, hi]), expected)
    rows = x.reshape(1, -1).repeat(3, 1)
    rows[1] = -rows[1]
    lo, hi = tail_quantiles(rows, p)
    expected = torch.quantile(rows, torch.tensor([p, 1 - p]), dim=-1)
    assert torch.equal(torch.stack([lo, hi]), expected)


def test_tail_quantiles_with_nan_answer_nan_like_torch_quantile():
    x = torch.randn(100)
    x[7] = float("nan")
    lo, hi = tail_quantiles(x, 0.01)
    assert lo.isnan() and hi.isnan()


def test_tail_quantiles_are_exact_beyond_torch_quantiles_size_limit():
    n = (1 << 24) + 3  # torch.quantile refuses this many
    x = torch.rand(n, generator=torch.Generator().manual_seed(6)) - 0.5
    lo, hi = tail_quantiles(x, 0.25)
    ordered = x.sort().values
    rank = torch.tensor(0.25) * (n - 1)  # float32, as torch.quantile computes it
    below, weight = int(rank), rank - int(rank)
    expected = torch.lerp(ordered[below], ordered[int(rank.ceil())], weight)
    assert torch.equal(lo, expected)
    assert hi > lo


@pytest.mark.parametrize(
    "kind", ["random", "ascending", "descending", "ties", "rectified", "periodic", "one_outlier"]
)
@pytest.mark.parametrize("share", [0.0005, 0.01, 0.1])
def test_values_at_ranks_near_the_ends_are_exact_whatever_the_order(kind, share):
    """The strided sample only places a threshold; a bad one falls back to a full selection."""
    n = 200_003
    g = torch.Generator().manual_seed(7)
    x = torch.rand(n, generator=g)
    if kind == "ascending":
        x = x.sort().values
    elif kind == "descending":
        x = x.sort(descending=True).values
    elif kind == "ties":
        x = torch.randint(0, 5, (n,), generator=g).float()
    elif kind == "rectified":  # the low ranks fall in a block of zeros
        x = (x - 0.5).relu()
    elif kind == "periodic":  # period equal to the sample's stride: the sample sees one value
        x = (torch.arange(n) % (n // 4096) == 0).float() * -1.0 + 2.0
    elif kind == "one_outlier":
        x = torch.zeros(n) + 1.0
        x[n // 2] = 1e6
    ordered = x.sort().values
    low = int(share * (n - 1))
    high = n - 2 - low
    for ranks in ([low, low + 1], [high, high + 1]):
        got = values_at_ranks(x, ranks)
        assert [float(v) for v in got] == [float(ordered[r]) for r in ranks], ranks


@pytest.mark.parametrize("kind", ["signed", "rectified", "sorted"])
def test_tail_quantiles_of_long_tensors_equal_torch_quantile_bit_for_bit(kind):
    x = torch.randn(150_001, generator=torch.Generator().manual_seed(8))
    if kind == "rectified":
        x = x.relu()
    elif kind == "sorted":
        x = x.sort().values
    for p in (0.001, 0.01, 0.1):
        expected = torch.quantile(x, torch.tensor([p, 1 - p]))
        assert torch.equal(torch.stack(tail_quantiles(x, p)), expected), p


@pytest.mark.parametrize("per_row", [False, True])
def test_a_current_range_observer_evaluates_on_the_range_of_the_tensor_it_is_given(per_row):
    from lorap_dist.quant import CurrentRangeObserver

    obs = CurrentRangeObserver(per_row=per_row)
    before = torch.tensor([[-1.0, 0.5], [0.25, 2.0]])
    obs.range_of(before)  # training: stored, as an EMA with momentum 1
    stored = (obs.min_val.clone(), obs.max_val.clone())
    after = before * 1.5  # the optimizer's step moved the weights
    obs.eval()
    lo, hi = obs.range_of(after)
    assert torch.equal(torch.stack([lo, hi]), torch.stack(obs.batch_range(after)))
    assert torch.equal(obs.min_val, stored[0]) and torch.equal(obs.max_val, stored[1])
    plain = EMAObserver(momentum=1.0, per_row=per_row)  # node points keep the stored range
    plain.range_of(before)
    plain.eval()
    assert torch.equal(plain.range_of(after)[1], stored[1])


def test_a_current_range_observer_takes_a_sparse_tensors_range_from_its_nonzeros():
    from lorap_dist.quant import CurrentRangeObserver

    obs = CurrentRangeObserver()
    obs.range_of_nonzeros(torch.tensor([0.5, -1.0]), numel=10)
    obs.eval()
    lo, hi = obs.range_of_nonzeros(torch.tensor([3.0, 1.0]), numel=10)
    assert (float(lo), float(hi)) == (0.0, 3.0)  # the zeros are in its range
    assert (float(obs.min_val), float(obs.max_val)) == (-1.0, 0.5)
