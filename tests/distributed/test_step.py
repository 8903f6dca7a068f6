"""One distributed training step on integer rows (``feature_rows="codes"``) equals the step on
float rows through a model whose first ``input`` point is bypassed, and DDP learns which
parameters a step on integer rows leaves without a gradient; on a one-process gloo group
(every row is local, the collectives and DDP's all-reduce run)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from lorap_dist.config import ModelConfig, PromptConfig, TrainConfig
from lorap_dist.distributed.exchange import FeatureExchange
from lorap_dist.distributed.step import train_batch
from lorap_dist.distributed.worker import _has_unused_parameters
from lorap_dist.graph.gather import RowGather
from lorap_dist.graph.sampler import NeighborSampler
from lorap_dist.graph.storage import open_dataset
from lorap_dist.nn import build_model
from lorap_dist.optim import build_optimizer
from lorap_dist.quant import IdentityQuantizer, quantize_
from lorap_dist.quant.schemes.a2q import A2QConfig
from lorap_dist.quant.schemes.mixq import MixQConfig
from lorap_dist.quant.schemes.qat import QATConfig

#: The layer tests' tolerance (tests/nn/test_integer_rows.py).
ATOL = RTOL = 1e-5
#: (stored encoding, dist.exchange_bits): INT8 codes sent as stored, fp32 rows sent at INT4.
PAYLOADS = [("int8", None), ("fp32", 4)]
CPU = torch.device("cpu")


class Setup:
    """A one-part dataset's exchange, sampler and a batch of training seeds."""

    def __init__(self, path, payload_bits: int | None) -> None:
        self.dataset = open_dataset(path)
        self.part = self.dataset.part(0)
        self.exchange = FeatureExchange(
            self.dataset.partition_book,
            self.part.features,
            self.part.scales,
            payload_bits=payload_bits,
        )
        self.sampler = NeighborSampler(self.dataset.indptr, self.dataset.indices, [4, 4])
        self.own_seeds = self.part.split_ids("train")
        self.seeds = self.own_seeds[:24]
        self.labels = self.part.labels[self.seeds - self.part.start]
        self.degree = self.dataset.indptr.diff()

    def model(self, arch: str, scheme: object) -> nn.Module:
        torch.manual_seed(0)
        model = build_model(
            self.dataset.num_features,
            self.dataset.num_classes,
            ModelConfig(arch=arch, hidden=8, layers=2, dropout=0.3),
            PromptConfig(kind="lorap", k=3, r=2),
        )
        for module in model.modules():
            if hasattr(module, "p_b"):
                nn.init.normal_(module.p_b)  # a non-zero prompt
        quantize_(model, scheme, num_nodes=self.dataset.num_nodes)
        return model

    def train(
        self,
        model: nn.Module,
        feature_rows: str,
        steps: int = 1,
        find_unused: bool = False,
        rows: RowGather | None = None,
    ) -> torch.Tensor:
        """The totals of ``steps`` steps of one DDP wrapper and optimizer, summed."""
        ddp = DistributedDataParallel(model, find_unused_parameters=find_unused)
        optimizer = build_optimizer(model, TrainConfig(lr=0.01))
        torch.manual_seed(5)  # dropout draws the same masks in both runs
        generator = torch.Generator().manual_seed(1)
        totals = torch.zeros(3, dtype=torch.float64)
        for _ in range(steps):
            totals += train_batch(
                ddp,
                model,
                optimizer,
                self.sampler,
                self.exchange,
                self.seeds,
                self.labels,
                self.degree,
                generator,
                CPU,
                feature_rows=feature_rows,
                rows=rows,
            )
        return totals


@pytest.mark.parametrize("arch", ["sage", "gin"])
@pytest.mark.parametrize("payload", PAYLOADS, ids=[f"{e}-{b}" for e, b in PAYLOADS])
def test_a_step_on_codes_is_the_float_step_without_the_input_point(
    one_rank_group, wide_datasets, arch, payload
):
    encoding, payload_bits = payload
    setup = Setup(wide_datasets[encoding], payload_bits)
    model = setup.model(arch, QATConfig(bits=4))
    reference = copy.deepcopy(model)
    reference.convs[0].quantizers["input"] = IdentityQuantizer()

    totals = setup.train(model, "codes")
    expected = setup.train(reference, "float")

    torch.testing.assert_close(totals, expected, atol=ATOL, rtol=RTOL)  # loss, correct, seeds
    theirs = dict(reference.named_parameters())
    assert theirs.keys() == dict(model.named_parameters()).keys()
    for name, parameter in model.named_parameters():
        assert parameter.grad is not None, f"{name} got no gradient"
        torch.testing.assert_close(parameter.grad, theirs[name].grad, atol=ATOL, rtol=RTOL)
        torch.testing.assert_close(parameter, theirs[name], atol=ATOL, rtol=RTOL)  # stepped
    assert model.convs[0].lorap.p_b.grad.abs().sum() > 0


def test_a_step_on_codes_needs_an_integer_payload(one_rank_group, wide_datasets):
    setup = Setup(wide_datasets["fp32"], None)
    model = setup.model("sage", QATConfig(bits=4))
    with pytest.raises(ValueError, match="call fetch for float rows, or build the exchange"):
        setup.train(model, "codes")
    with pytest.raises(ValueError, match="feature_rows='ints' is not known"):
        setup.train(model, "ints")


@pytest.mark.parametrize(
    ("scheme", "unused_on_codes"),
    [(A2QConfig(bits=4), True), (MixQConfig(bits=4), False)],
    ids=["a2q", "mixq"],
)
def test_ddp_is_told_what_a_step_on_codes_leaves_unused(
    one_rank_group, wide_datasets, scheme, unused_on_codes
):
    """On integer rows the first layer's ``input`` point is never called: A2Q's parameters
    there get no gradient (DDP must look for unused parameters), MixQ's get one from its
    expected-bits penalty (DDP must not, or it counts them ready twice). Three steps of one
    DDP wrapper fail inside DDP if the probe tells it otherwise."""
    setup = Setup(wide_datasets["int8"], None)
    model = setup.model("sage", scheme)
    probe = [setup.part, setup.own_seeds, setup.degree, CPU]
    float_unused = _has_unused_parameters(model, setup.sampler, setup.exchange, *probe, "float")
    codes_unused = _has_unused_parameters(model, setup.sampler, setup.exchange, *probe, "codes")
    assert (float_unused, codes_unused) == (False, unused_on_codes)
    totals = setup.train(model, "codes", steps=3, find_unused=codes_unused)
    assert torch.isfinite(totals).all() and totals[2] == 3 * len(setup.seeds)
    if unused_on_codes:
        assert all(p.grad is None for p in model.convs[0].quantizers["input"].parameters())


def test_steps_on_rows_fetched_into_one_buffer_equal_steps_on_fresh_rows(
    one_rank_group, wide_datasets
):
    """``train_batch(rows=RowGather())``, as the worker runs it: every batch's rows are written
    over the last batch's; three steps end with the same totals and weights, bit for bit."""
    setup = Setup(wide_datasets["fp32"], None)
    fresh = setup.model("sage", QATConfig(bits=4))
    reused = copy.deepcopy(fresh)
    rows = RowGather()
    expected = setup.train(fresh, "float", steps=3)
    got = setup.train(reused, "float", steps=3, rows=rows)
    assert rows.buffer is not None  # the buffer was used
    assert torch.equal(got, expected)
    for (name, a), b in zip(fresh.state_dict().items(), reused.state_dict().values(), strict=True):
        assert torch.equal(a, b), name
