"""RowGather: a batch's feature rows written into one buffer kept across batches."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.graph.gather import RowGather


def source(rows: int = 50, width: int = 6, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    gen = torch.Generator().manual_seed(0)
    return (torch.randn(rows, width, generator=gen) * 20).to(dtype)


def ids_of(n: int, high: int = 50, seed: int = 1) -> torch.Tensor:
    return torch.randint(0, high, (n,), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("dtype", [torch.float32, torch.int8, torch.float16])
def test_rows_equal_index_select_for_batches_of_every_size(dtype):
    x, gather = source(dtype=dtype), RowGather()
    for seed, n in enumerate([10, 4, 12, 13, 0, 30, 1]):  # growing, shrinking, empty
        ids = ids_of(n, seed=seed)
        rows = gather(x, ids)
        assert rows.shape == (n, 6) and rows.dtype == dtype
        assert torch.equal(rows, x.index_select(0, ids))


def test_the_buffer_is_reused_while_batches_fit_and_grows_with_slack():
    x, gather = source(), RowGather(slack=1.5)
    first = gather(x, ids_of(10))
    assert gather.buffer.shape == (15, 6)  # 1.5 x the batch that made it
    again = gather(x, ids_of(15, seed=2))  # fits: the same memory
    assert again.data_ptr() == first.data_ptr() and gather.buffer.shape == (15, 6)
    gather(x, ids_of(16, seed=3))  # does not fit: a new buffer, 1.5 x 16
    assert gather.buffer.shape == (24, 6)


def test_a_new_dtype_or_row_shape_gets_its_own_buffer():
    gather = RowGather()
    gather(source(), ids_of(8))
    codes = gather(source(dtype=torch.int8), ids_of(8))
    assert codes.dtype == torch.int8 and gather.buffer.dtype == torch.int8
    wide = source(width=9)
    assert torch.equal(gather(wide, ids_of(8)), wide.index_select(0, ids_of(8)))


def test_the_next_call_overwrites_the_rows_it_returned():
    x, gather = source(), RowGather()
    first = gather(x, ids_of(8, seed=1))
    kept = first.clone()
    gather(x, ids_of(8, seed=2))
    assert not torch.equal(first, kept)  # a view of the buffer: the documented contract


def test_autograd_refuses_the_backward_of_a_step_whose_rows_were_overwritten():
    x, gather = source(), RowGather()
    w = torch.randn(6, 3, requires_grad=True)
    loss = (gather(x, ids_of(8, seed=1)) @ w).square().sum()  # saves the rows for backward
    gather(x, ids_of(8, seed=2))
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        loss.backward()


def test_a_source_that_requires_grad_gets_its_gradient():
    x = source().requires_grad_()
    ids = torch.tensor([3, 3, 7])
    RowGather()(x, ids).sum().backward()
    expected = torch.zeros_like(x)
    expected[3], expected[7] = 2.0, 1.0
    assert torch.equal(x.grad, expected)


def test_slack_below_one_is_refused():
    with pytest.raises(ValueError, match="slack=0.5 must be at least 1"):
        RowGather(slack=0.5)
