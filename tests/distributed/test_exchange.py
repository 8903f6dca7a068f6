"""FeatureExchange on real 2- and 3-process gloo groups."""

from __future__ import annotations

import pytest
import torch

from lorap_dist.distributed.exchange import FeatureExchange
from lorap_dist.quant.integer import QuantizedRows, dequantize_rows, quantize_rows
from lorap_dist.testing.multiprocess import run_multiprocess

NUM_FEATURES = 5
# Uneven parts (one of them small) so the all_to_all splits differ per peer.
BOOKS = {2: [[0, 7], [7, 20]], 3: [[0, 7], [7, 9], [9, 20]]}


def full_matrix() -> torch.Tensor:
    return torch.randn(20, NUM_FEATURES, generator=torch.Generator().manual_seed(0))


def requests(rank: int) -> list[torch.Tensor]:
    """Per-rank request lists: repeats, unsorted, one empty round, then a round of all."""
    g = torch.Generator().manual_seed(rank + 1)
    return [
        torch.randint(0, 20, (13 + rank,), generator=g),
        torch.tensor([3, 3, 3, 19, 0, 19], dtype=torch.int64),
        torch.empty(0, dtype=torch.int64) if rank == 0 else torch.tensor([8, 1]),
        torch.arange(20).flip(0),
    ]


def _body(rank: int, world_size: int, variants: list[tuple[str, int | None]]) -> list[dict]:
    results: list = [_one_variant(rank, world_size, *variant) for variant in variants]
    results.append([_codes_variant(rank, world_size, *variant) for variant in CODE_VARIANTS])
    exchange = FeatureExchange(
        torch.tensor(BOOKS[world_size]), full_matrix()[slice(*BOOKS[world_size][rank])]
    )
    try:
        exchange.fetch(torch.tensor([20]))
        results.append("")
    except ValueError as exc:
        results.append(str(exc))
    return results


def make_exchange(
    rank: int, world_size: int, encoding: str, payload_bits: int | None
) -> FeatureExchange:
    book = torch.tensor(BOOKS[world_size])
    start, end = BOOKS[world_size][rank]
    full = full_matrix()
    if encoding == "int8":
        codes, scales = quantize_rows(full, bits=8)
        return FeatureExchange(book, codes[start:end], scales[start:end], payload_bits=payload_bits)
    return FeatureExchange(book, full[start:end], payload_bits=payload_bits)


def _one_variant(rank: int, world_size: int, encoding: str, payload_bits: int | None) -> dict:
    exchange = make_exchange(rank, world_size, encoding, payload_bits)
    outputs, sent, received = [], [], []
    for ids in requests(rank):
        outputs.append(exchange.fetch(ids))
        sent.append(exchange.bytes_sent)
        received.append(exchange.bytes_received)
    return {"outputs": outputs, "sent": sent, "received": received, "row_bytes": exchange.row_bytes}


def _codes_variant(
    rank: int, world_size: int, encoding: str, payload_bits: int | None
) -> list[tuple[QuantizedRows, torch.Tensor]]:
    """``(fetch_rows(ids), fetch(ids))`` of every request round."""
    exchange = make_exchange(rank, world_size, encoding, payload_bits)
    return [(exchange.fetch_rows(ids), exchange.fetch(ids)) for ids in requests(rank)]


def expected_rows(encoding: str, payload_bits: int | None) -> torch.Tensor:
    full = full_matrix()
    if encoding == "int8":
        full = dequantize_rows(*quantize_rows(full, bits=8))
    if payload_bits is not None:
        full = dequantize_rows(*quantize_rows(full, bits=payload_bits))
    return full


def expected_bytes(world_size: int, row_bytes: int) -> list[list[int]]:
    """Cumulative bytes each rank sends, from the formula in the module docstring."""
    ends = torch.tensor([e for _, e in BOOKS[world_size]])
    totals = [[0] * 4 for _ in range(world_size)]
    for round_ in range(4):
        asked = [
            torch.bincount(
                torch.searchsorted(ends, torch.unique(requests(r)[round_]), right=True),
                minlength=world_size,
            )
            for r in range(world_size)
        ]
        for r in range(world_size):
            ids_out = sum(int(asked[r][q]) for q in range(world_size) if q != r)
            rows_out = sum(int(asked[q][r]) for q in range(world_size) if q != r)
            step = 8 * (world_size - 1) + 4 * ids_out + row_bytes * rows_out
            totals[r][round_] = (totals[r][round_ - 1] if round_ else 0) + step
    return totals


VARIANTS = [("fp32", None), ("int8", None), ("int8", 4), ("fp32", 8), ("fp32", 4)]
CODE_VARIANTS = [v for v in VARIANTS if v != ("fp32", None)]


@pytest.fixture(scope="module", params=[2, 3], ids=["2ranks", "3ranks"])
def group_results(request):
    """One process group per world size runs every payload variant (spawning is slow)."""
    return request.param, run_multiprocess(_body, request.param, VARIANTS)


@pytest.mark.parametrize("variant", range(len(VARIANTS)), ids=[f"{e}-{b}" for e, b in VARIANTS])
def test_fetch_matches_full_matrix(group_results, variant):
    world_size, per_rank = group_results
    encoding, payload_bits = VARIANTS[variant]
    results = [r[variant] for r in per_rank]
    reference = expected_rows(encoding, payload_bits)
    for rank, result in enumerate(results):
        for ids, rows in zip(requests(rank), result["outputs"], strict=True):
            assert rows.shape == (len(ids), NUM_FEATURES)
            assert rows.dtype == torch.float32
            assert torch.equal(rows, reference[ids]), (rank, ids)
    row_bytes = results[0]["row_bytes"]
    assert (
        row_bytes
        == {
            None: 4 * NUM_FEATURES if encoding == "fp32" else NUM_FEATURES + 4,
            8: NUM_FEATURES + 4,
            4: 3 + 4,
        }[payload_bits]
    )
    sent = expected_bytes(world_size, row_bytes)
    assert [r["sent"] for r in results] == sent
    total_sent = sum(r["sent"][-1] for r in results)
    assert total_sent == sum(r["received"][-1] for r in results)


def assert_rows_are_the_fetched_codes(
    rows: QuantizedRows, fetched: torch.Tensor, ids: torch.Tensor, bits: int
) -> None:
    """``rows`` are codes of ``bits`` whose dequantization is ``fetched`` bit for bit."""
    assert rows.codes.dtype == torch.int8 and rows.codes.shape == (len(ids), NUM_FEATURES)
    assert rows.scales.dtype == torch.float32 and rows.scales.shape == (len(ids),)
    assert rows.bits == bits
    if len(ids):
        assert int(rows.codes.abs().max()) <= (1 << (bits - 1)) - 1
    assert torch.equal(rows.dequantize(), fetched)


@pytest.mark.parametrize(
    "variant", range(len(CODE_VARIANTS)), ids=[f"{e}-{b}" for e, b in CODE_VARIANTS]
)
def test_fetch_rows_dequantize_to_fetch(group_results, variant):
    _, per_rank = group_results
    encoding, payload_bits = CODE_VARIANTS[variant]
    for rank, result in enumerate(per_rank):
        for ids, (rows, fetched) in zip(requests(rank), result[-2][variant], strict=True):
            assert_rows_are_the_fetched_codes(rows, fetched, ids, payload_bits or 8)
            assert torch.equal(fetched, expected_rows(encoding, payload_bits)[ids])


def test_out_of_range_ids_are_refused(group_results):
    world_size, per_rank = group_results
    assert all("partition book covers [0, 20)" in r[-1] for r in per_rank)


@pytest.mark.parametrize(
    "variant", range(len(CODE_VARIANTS)), ids=[f"{e}-{b}" for e, b in CODE_VARIANTS]
)
def test_fetch_rows_on_one_rank(one_rank_group, variant):
    encoding, payload_bits = CODE_VARIANTS[variant]
    book = torch.tensor([[0, 20]])
    full = full_matrix()
    if encoding == "int8":
        exchange = FeatureExchange(book, *quantize_rows(full, bits=8), payload_bits=payload_bits)
    else:
        exchange = FeatureExchange(book, full, payload_bits=payload_bits)
    for ids in requests(0):
        rows = exchange.fetch_rows(ids)
        assert_rows_are_the_fetched_codes(rows, exchange.fetch(ids), ids, payload_bits or 8)
    assert exchange.rows_fetched == 2 * sum(len(ids) for ids in requests(0))
    if payload_bits == 4:  # the codes are the sender's INT4 re-quantization, unpacked
        x = full if encoding == "fp32" else dequantize_rows(*quantize_rows(full, bits=8))
        codes, scales = quantize_rows(x, bits=4)
        ids = torch.tensor([5, 0, 5])
        assert torch.equal(exchange.fetch_rows(ids).codes, codes[ids])
        assert torch.equal(exchange.fetch_rows(ids).scales, scales[ids])


def test_fetch_rows_of_an_fp32_payload_is_refused(one_rank_group):
    exchange = FeatureExchange(torch.tensor([[0, 20]]), full_matrix())
    with pytest.raises(ValueError, match="call fetch for float rows, or build the exchange"):
        exchange.fetch_rows(torch.tensor([1, 2]))
    with pytest.raises(ValueError, match=r"fetch_rows got global IDs in \[3, 20\]"):
        FeatureExchange(torch.tensor([[0, 20]]), full_matrix(), payload_bits=8).fetch_rows(
            torch.tensor([3, 20])
        )
