"""rwwce.modules: buffers, repr, first-call validation, parity with the functions."""

import pytest
import torch
import torch.nn.functional as F

import rwwce
from rwwce import _validate


def test_weights_are_buffers_that_move_and_save():
    fn = torch.tensor([1.0, 2.0, 3.0])
    fp = torch.tensor([[0.0, 1.0, 2.0], [1.0, 0.0, 1.0], [5.0, 1.0, 0.0]])
    criterion = rwwce.RWWCELoss(fn, fp)
    assert set(criterion.state_dict()) == {"fn_weight", "fp_weight"}
    # a dtype change of the module does not reach the cost buffers (see the test below)
    assert criterion.to(torch.float64).fp_weight.dtype == torch.float32
    restored = rwwce.RWWCELoss(torch.ones(3), torch.ones(3, 3) - torch.eye(3))
    restored.load_state_dict(rwwce.RWWCELoss(fn, fp).state_dict())
    assert torch.equal(restored.fp_weight, fp)
    fn[0] = 100.0  # the module keeps its own copy
    assert restored.fn_weight[0] == 1.0 and rwwce.RWWCELoss(torch.ones(3)).fn_weight[0] == 1.0


COSTS = [[0.0, 1.0, 2001.0], [1e5, 0.0, 3.0], [7.0, 2.0, 0.0]]


def _casts():
    return {
        "half": lambda m: m.half(),
        "bfloat16": lambda m: m.bfloat16(),
        "double": lambda m: m.double(),
        "float": lambda m: m.float(),
        "to(cpu, float16)": lambda m: m.to("cpu", torch.float16),
        "to(bfloat16)": lambda m: m.to(torch.bfloat16),
        "to(dtype=float16)": lambda m: m.to(dtype=torch.float16),
    }


@pytest.mark.parametrize("cast", list(_casts()))
@pytest.mark.parametrize("given", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_dtype_casts_of_a_parent_module_keep_the_cost_buffers(cast, given):
    """Mixed-precision recipes cast whole models: float16 would turn a cost of 1e5 into inf and
    bfloat16 rounds 2001 to 2000. The buffers keep their dtype and exact values; the model's own
    parameters are cast as usual; the loss still runs."""
    costs = torch.tensor(COSTS, dtype=given)
    criterion = rwwce.RWWCELoss.from_costs(costs)
    binary = rwwce.BinaryRWWCELoss.from_costs(costs[:2, :2])
    expected = {
        name: buffer.clone()
        for module in (criterion, binary)
        for name, buffer in module.named_buffers(prefix=type(module).__name__)
    }
    assert all(b.dtype == given for b in expected.values())
    model = torch.nn.ModuleDict(
        {"head": torch.nn.Linear(4, 3), "RWWCELoss": criterion, "BinaryRWWCELoss": binary}
    )
    _casts()[cast](model)
    for name, buffer in model.named_buffers():
        assert buffer.dtype == given, (name, buffer.dtype)
        assert torch.equal(buffer, expected[name]), name
    x = torch.randn(5, 4).to(model["head"].weight.dtype)
    logits = model["head"](x)
    loss = model["RWWCELoss"](logits, torch.tensor([1, 0, 2, 1, 0]))
    assert torch.isfinite(loss)
    reference = rwwce.RWWCELoss.from_costs(costs)(logits, torch.tensor([1, 0, 2, 1, 0]))
    torch.testing.assert_close(loss, reference)
    bin_loss = model["BinaryRWWCELoss"](logits[:, 0], torch.tensor([1.0, 0, 1, 1, 0]))
    assert torch.isfinite(bin_loss)


def test_device_moves_still_move_the_cost_buffers():
    """The dtype is kept, the device is not: a move to 'meta' (standing in for an accelerator)
    with a dtype moves the buffers and leaves their dtype."""
    criterion = rwwce.RWWCELoss.from_costs(COSTS)
    moved = criterion.to("meta", torch.float16)
    assert moved is criterion
    for buffer in (criterion.fn_weight, criterion.fp_weight):
        assert buffer.device.type == "meta" and buffer.dtype == torch.float32
    binary = rwwce.BinaryRWWCELoss(2001.0, 100.0).to("meta").half()
    assert binary.fn_weight.device.type == "meta" and binary.fn_weight.dtype == torch.float32


@pytest.mark.parametrize("given", [torch.float32, torch.float64], ids=["f32", "f64"])
def test_state_dict_round_trip_after_a_half_cast(given):
    criterion = rwwce.RWWCELoss.from_costs(torch.tensor(COSTS, dtype=given)).half()
    state = criterion.state_dict()
    assert {k: v.dtype for k, v in state.items()} == {"fn_weight": given, "fp_weight": given}
    restored = rwwce.RWWCELoss(torch.ones(3, dtype=given), torch.zeros(3, 3, dtype=given))
    restored.bfloat16().load_state_dict(state)
    for name, value in state.items():
        assert getattr(restored, name).dtype == given
        assert torch.equal(getattr(restored, name), value)


def test_from_costs_keeps_float64():
    """fn = min off-diagonal cost per row and FP = C - fn (CostMatrix.loss_weights' rule), at
    float64 precision for float64 costs (a tensor or a NumPy array); float32 otherwise."""
    import numpy as np

    costs = torch.tensor(COSTS, dtype=torch.float64)
    costs[0, 1] = 1.0 + 2**-40  # lost in float32
    for given in (costs, costs.numpy()):
        criterion = rwwce.RWWCELoss.from_costs(given)
        assert criterion.fn_weight.dtype == criterion.fp_weight.dtype == torch.float64
        assert criterion.fn_weight[0].item() == 1.0 + 2**-40
        fp_row = torch.tensor([0.0, 0.0, 2001 - (1 + 2**-40)], dtype=torch.float64)
        assert torch.equal(criterion.fp_weight[0], fp_row)
    assert rwwce.RWWCELoss.from_costs(COSTS).fn_weight.dtype == torch.float32
    assert rwwce.RWWCELoss.from_costs(np.array(COSTS, dtype=np.float32)).fn_weight.dtype == (
        torch.float32
    )
    binary = rwwce.BinaryRWWCELoss.from_costs(costs[:2, :2])
    assert binary.fp_weight.dtype == torch.float64 and binary.fp_weight.item() == 1.0 + 2**-40


def test_module_matches_function():
    x = torch.randn(6, 4, 2, requires_grad=True)
    target = torch.randint(0, 4, (6, 2))
    fn = torch.rand(4) + 0.5
    fp = torch.rand(4) * 2
    sample_weight = torch.rand(6)
    options = dict(reduction="weighted_mean", label_smoothing=0.1, ignore_index=3)
    module_loss = rwwce.RWWCELoss(fn, fp, **options)(x, target, sample_weight)
    function_loss = rwwce.real_world_weight_cross_entropy(
        x, target, fn, fp, sample_weight=sample_weight, **options
    )
    torch.testing.assert_close(module_loss, function_loss)


def test_module_without_fp_is_weighted_cross_entropy():
    x = torch.randn(10, 5)
    target = torch.randint(0, 5, (10,))
    weight = torch.rand(5) + 0.1
    torch.testing.assert_close(
        rwwce.RWWCELoss(weight, reduction="weighted_mean")(x, target),
        torch.nn.CrossEntropyLoss(weight=weight)(x, target),
    )


def test_binary_module_matches_bce_with_logits():
    x = torch.randn(12, 3)
    target = torch.randint(0, 2, (12, 3)).float()
    pos_weight = torch.tensor([1.0, 4.0, 9.0])
    torch.testing.assert_close(
        rwwce.BinaryRWWCELoss(pos_weight, 1.0)(x, target),
        F.binary_cross_entropy_with_logits(x, target, pos_weight=pos_weight),
    )


def test_repr_is_readable():
    criterion = rwwce.RWWCELoss(torch.tensor([1.0, 2.0]), torch.tensor([[0.0, 3.0], [1.0, 0.0]]))
    assert repr(criterion) == (
        "RWWCELoss(fn_weight=[1, 2], fp_weight=[[0, 3], [1, 0]], reduction='mean')"
    )
    large = rwwce.RWWCELoss(fp_weight=torch.linspace(0, 4, 100), label_smoothing=0.1)
    assert "fp_weight=<(100,) in [0, 4]>" in repr(large) and "label_smoothing=0.1" in repr(large)
    assert repr(rwwce.BinaryRWWCELoss(2000, 100)) == (
        "BinaryRWWCELoss(fn_weight=2000, fp_weight=100, reduction='mean')"
    )


def test_data_checks_follow_the_function_rule(monkeypatch):
    """CPU: every call (as the function does); validate=False never; validate=True always."""
    calls = []
    real_check = _validate.check_class_targets
    monkeypatch.setattr(
        _validate, "check_class_targets", lambda *a: calls.append(1) or real_check(*a)
    )
    x, target = torch.randn(4, 3), torch.tensor([0, 1, 2, 0])
    criterion = rwwce.RWWCELoss(torch.ones(3))
    for _ in range(3):
        criterion(x, target)
    assert len(calls) == 3
    never = rwwce.RWWCELoss(torch.ones(3), validate=False)
    for _ in range(2):
        never(x, target)
    assert len(calls) == 3


def test_on_an_accelerator_the_module_checks_its_first_call_only(device, monkeypatch):
    calls = []
    real_check = _validate.check_class_targets
    monkeypatch.setattr(
        _validate, "check_class_targets", lambda *a: calls.append(1) or real_check(*a)
    )
    criterion = rwwce.RWWCELoss(torch.ones(3)).to(device)
    x, target = torch.randn(4, 3, device=device), torch.tensor([0, 1, 2, 0], device=device)
    for _ in range(3):
        criterion(x, target)
    assert len(calls) == (3 if device.type == "cpu" else 1)


def test_module_keeps_checking_cpu_data_after_its_first_call():
    criterion = rwwce.RWWCELoss(torch.ones(4))
    x = torch.randn(3, 4)
    criterion(x, torch.tensor([0, 1, 2]))
    with pytest.raises(IndexError, match=r"class indices in \[0, 4\).*got 7 at index 1"):
        criterion(x, torch.tensor([0, 7, 1]))
    with pytest.raises(ValueError, match="NaN"):
        criterion(torch.tensor([[float("nan"), 0.0, 0.0, 0.0]] * 3), torch.tensor([0, 1, 1]))
    probs = torch.softmax(torch.randn(3, 4), dim=1)
    for _ in range(2):  # every call, not only the first
        with pytest.warns(UserWarning, match="looks like probabilities"):
            criterion(probs, torch.tensor([0, 1, 2]))
    binary = rwwce.BinaryRWWCELoss(2.0, 1.0)
    binary(torch.randn(4), torch.tensor([0.0, 1.0, 1.0, 0.0]))
    with pytest.raises(ValueError, match=r"target must be in \[0, 1\]"):
        binary(torch.randn(4), torch.tensor([0.0, 2.0, 1.0, 0.0]))


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((torch.tensor([1.0, -2.0]),), {}, "fn_weight must be non-negative"),
        ((None, torch.ones(2, 2)), {}, "zero diagonal"),
        ((torch.ones(3), torch.ones(2)), {}, "fn_weight has 3 classes but fp_weight has 2"),
        ((torch.ones(2, 3),), {}, r"fn_weight must have shape \(K,\) or \(K, K\)"),
        ((torch.tensor([[1.0, 2.0], [0.0, 1.0]]),), {}, "must be diagonal"),
        ((), {"reduction": "mean_per_class"}, "reduction must be one of"),
        ((), {"label_smoothing": -0.1}, "label_smoothing"),
    ],
)
def test_bad_construction_raises(args, kwargs, match):
    with pytest.raises(ValueError, match=match):
        rwwce.RWWCELoss(*args, **kwargs)


def test_binary_bad_construction_raises():
    with pytest.raises(ValueError, match="fp_weight must be finite"):
        rwwce.BinaryRWWCELoss(1.0, float("nan"))
    with pytest.raises(ValueError, match="input_type must be one of"):
        rwwce.BinaryRWWCELoss(input_type="sigmoid")


def test_from_costs_reproduces_every_mistake_cost():
    costs = [[0.0, 1.0, 5.0], [2.0, 0.0, 2.0], [20.0, 30.0, 0.0]]
    criterion = rwwce.RWWCELoss.from_costs(costs)
    assert criterion.fn_weight.tolist() == [1.0, 2.0, 20.0]
    assert criterion.fp_weight.tolist() == [[0.0, 0.0, 4.0], [0.0, 0.0, 0.0], [0.0, 10.0, 0.0]]
    binary = rwwce.BinaryRWWCELoss.from_costs([[0.0, 100.0], [2000.0, 0.0]])
    assert binary.fn_weight.item() == 2000.0 and binary.fp_weight.item() == 100.0


def test_lightning_fit_of_a_compiled_module_equals_eager(tmp_path):
    """Lightning with ``torch.compile(model)``: the compiled forward computes RWWCELoss; three SGD
    steps give the parameters of the same steps taken eagerly."""
    L = pytest.importorskip("lightning")
    from torch._dynamo.utils import counters

    class Classifier(L.LightningModule):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.net = torch.nn.Linear(6, 4)
            self.criterion = rwwce.RWWCELoss.from_costs(
                [[0, 1, 5, 1], [2, 0, 1, 1], [9, 1, 0, 3], [1, 1, 1, 0]]
            )

        def forward(self, x, y):
            return self.criterion(self.net(x), y)

        def training_step(self, batch, batch_idx):
            return self(*batch)

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.5)

    gen = torch.Generator().manual_seed(3)
    data = torch.utils.data.TensorDataset(
        torch.randn(24, 6, generator=gen), torch.randint(0, 4, (24,), generator=gen)
    )

    def fit(module):
        trainer = L.Trainer(
            max_steps=3,
            accelerator="cpu",
            logger=False,
            enable_checkpointing=False,
            enable_progress_bar=False,
            enable_model_summary=False,
            default_root_dir=tmp_path,
        )
        trainer.fit(module, torch.utils.data.DataLoader(data, batch_size=8))

    eager = Classifier()
    fit(eager)
    compiled = Classifier()
    torch._dynamo.reset()
    counters.clear()
    fit(torch.compile(compiled, backend="aot_eager", dynamic=True))
    assert counters["stats"]["unique_graphs"] >= 1
    for a, b in zip(compiled.parameters(), eager.parameters(), strict=True):
        torch.testing.assert_close(a, b)
    assert not torch.equal(eager.net.weight, Classifier().net.weight)  # the steps did something
