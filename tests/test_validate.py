"""Argument and data checks (rwwce._validate) as users meet them through the public functions."""

import warnings

import pytest
import torch
import torch.nn.functional as F

import rwwce

rce = rwwce.real_world_weight_cross_entropy
brwce = rwwce.binary_real_world_weight_cross_entropy


@pytest.mark.parametrize("value", [True, False])
def test_label_smoothing_rejects_bools(value):
    with pytest.raises(TypeError, match="label_smoothing must be a float in \\[0, 1\\]; got"):
        rce(torch.randn(2, 3), torch.tensor([0, 1]), label_smoothing=value)
    with pytest.raises(TypeError, match="label_smoothing"):
        rwwce.RWWCELoss(label_smoothing=value)


@pytest.mark.parametrize("name", ["fn_weight", "fp_weight", "sample_weight"])
def test_a_weight_on_another_device_is_an_error_naming_both(name):
    # The 'meta' device stands in for an accelerator: a CPU weight is never copied silently.
    x = torch.randn(4, 3, device="meta")
    target = torch.zeros(4, dtype=torch.long, device="meta")
    weights = {
        "fn_weight": torch.ones(3),
        "fp_weight": torch.ones(3),
        "sample_weight": torch.ones(4),
    }
    with pytest.raises(ValueError, match=f"{name} is on cpu but the input is on meta"):
        rce(x, target, **{name: weights[name]}, validate=False)


def test_binary_weight_on_another_device_is_an_error():
    x = torch.randn(4, device="meta")
    with pytest.raises(ValueError, match="fn_weight is on cpu but the input is on meta"):
        brwce(x, torch.zeros(4, device="meta"), fn_weight=torch.ones(4), validate=False)


def test_numbers_and_cpu_scalars_are_passed_as_scalars_not_copied():
    # As in PyTorch, a 0-dim CPU tensor or a number works with an input on any device.
    x = torch.randn(4, device="meta")
    out = brwce(
        x,
        torch.zeros(4, device="meta"),
        fn_weight=torch.tensor(2.0),
        fp_weight=3.0,
        validate=False,
        reduction="none",
    )
    assert out.device.type == "meta" and out.shape == (4,)


def test_numbers_and_lists_are_still_welcome_as_weights():
    x, t = torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    expected = F.cross_entropy(x, t, weight=torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(rce(x, t, [1.0, 2.0, 3.0], reduction="weighted_mean"), expected)


def test_nan_and_posinf_logits_are_named():
    x = torch.randn(5, 3)
    x[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or \+inf; got nan at index \(3, 1\)"):
        rce(x, torch.tensor([0, 1, 2, 0, 1]))
    x[3, 1] = float("inf")
    with pytest.raises(ValueError, match=r"got inf at index \(3, 1\)"):
        rce(x, torch.tensor([0, 1, 2, 0, 1]), reduction="none")
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        brwce(torch.tensor([0.0, float("nan")]), torch.tensor([1.0, 0.0]))
    # In an ignored row too: its gradient would be NaN (as in PyTorch), so the CPU check says so.
    x = torch.randn(3, 4)
    x[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"got nan at index \(1, 2\)"):
        rce(x, torch.tensor([0, -100, 3]))


def test_an_infinite_loss_from_a_masked_target_class_is_not_an_input_error():
    # -inf at the target class: the loss is +inf, as F.cross_entropy says; nothing to diagnose.
    x = torch.tensor([[float("-inf"), 0.0, 1.0]])
    loss = rce(x, torch.tensor([0]))
    assert loss == F.cross_entropy(x, torch.tensor([0])) == float("inf")


def test_probabilities_outside_the_unit_interval_are_rejected():
    with pytest.raises(ValueError, match=r"input_type='probs' needs values in \[0, 1\]; got 1.5"):
        rce(torch.tensor([[1.5, -0.5]]), torch.tensor([0]), input_type="probs")
    with pytest.raises(ValueError, match=r"\[0, 1\]; got nan"):
        rce(torch.tensor([[float("nan"), 0.5]]), torch.tensor([0]), input_type="probs")


def test_softmax_output_warning_looks_at_a_sample_of_rows():
    probs = torch.softmax(torch.randn(1000, 5), dim=1)
    with pytest.warns(UserWarning, match="looks like probabilities"):
        rce(probs, torch.zeros(1000, dtype=torch.long))
    segmentation = torch.softmax(torch.randn(2, 4, 30, 30), dim=1)
    with pytest.warns(UserWarning, match="looks like probabilities"):
        rce(segmentation, torch.zeros(2, 30, 30, dtype=torch.long))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rce(torch.randn(1000, 5), torch.zeros(1000, dtype=torch.long))


def test_target_range_with_and_without_ignored_targets():
    x = torch.randn(4, 3)
    rce(x, torch.tensor([0, -100, 2, 1]))  # ignored targets pass
    for bad, shown in (([0, -100, 3, 1], "got 3 at index 2"), ([0, -1, 2, 1], "got -1 at index 1")):
        with pytest.raises(IndexError, match=shown):
            rce(x, torch.tensor(bad))
    with pytest.raises(IndexError, match="got 5 at index 0"):
        rce(x, torch.tensor([5, 0, 0, 0]), ignore_index=5 + 1)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_soft_targets_are_accepted_like_cross_entropy(dtype):
    """Soft targets rounded to bfloat16 sum to 1 only within its rounding (2**-8 per row): the
    check accepts them, as F.cross_entropy does, and the loss equals the float32 loss of the
    same rounded target."""
    gen = torch.Generator().manual_seed(1)
    logits = torch.randn(64, 10, generator=gen)
    target = torch.softmax(torch.randn(64, 10, generator=gen) * 3, dim=1).to(dtype)
    off = (target.double().sum(dim=1) - 1).abs().max()
    if dtype == torch.bfloat16:
        assert off > 1e-3  # the old fixed tolerance rejected this batch
    F.cross_entropy(logits, target.float())  # PyTorch's own loss takes them
    loss = rce(logits, target)
    torch.testing.assert_close(loss, rce(logits, target.float(), validate=False))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
def test_soft_target_tolerance_follows_the_dtype_but_still_catches_unnormalised_rows(dtype):
    logits = torch.randn(3, 4)
    eps = torch.finfo(dtype).eps
    tolerance = max(1e-3, 2 * eps)
    near = torch.tensor([[0.25, 0.25, 0.25, 0.25]] * 3, dtype=torch.float64)
    near[1, 0] += 0.9 * tolerance
    rce(logits, near.to(dtype))  # within the dtype's tolerance
    far = near.clone()
    far[2, 1] += 0.1  # sums to 1.1: not rounding
    with pytest.raises(ValueError, match=r"row 2 sums to 1\.(1|09).*normalise each row") as info:
        rce(logits, far.to(dtype))
    assert "integer" not in str(info.value)  # a distribution: no hint at class indices
    assert str(dtype) in str(info.value)


def test_whole_number_soft_targets_get_the_multi_hot_hint():
    with pytest.raises(ValueError, match="sums to 2.*multi-hot labels.*binary_real_world"):
        rce(torch.randn(2, 3), torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 0.0]]))


@pytest.mark.parametrize(
    "call",
    [
        lambda p, t: rce(p, t),
        lambda p, t: rwwce.RWWCELoss()(p, t),
        lambda p, t: rwwce.RWWCELoss(validate=True).forward(p, t),
        lambda p, t: rwwce.loss_breakdown(p, t),
        lambda p, t: brwce(p.reshape(-1), (t[:, None] == torch.arange(4)).float().reshape(-1)),
        lambda p, t: rwwce.BinaryRWWCELoss()(p, (t[:, None] == torch.arange(4)).float()),
    ],
    ids=["function", "module", "forward", "loss_breakdown", "binary", "binary_module"],
)
def test_the_probabilities_warning_points_at_the_callers_line(call):
    # Through nn.Module.__call__ and rwwce's own frames alike: the warning names this file.
    probs = torch.softmax(3 * torch.randn(64, 4, generator=torch.Generator().manual_seed(0)), 1)
    target = torch.arange(64) % 4
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        call(probs, target)
    caught = [w for w in record if "looks like probabilities" in str(w.message)]
    assert len(caught) == 1
    assert caught[0].filename == __file__
    assert caught[0].category is UserWarning


# --- sigmoid output passed as binary logits -------------------------------------------------------


def test_sigmoid_output_warning_for_the_binary_loss():
    g = torch.Generator().manual_seed(0)
    logits = 3 * torch.randn(256, generator=g)
    target = (torch.rand(256, generator=g) < 0.3).float()
    with pytest.warns(UserWarning, match=r"looks like probabilities.*before the sigmoid") as record:
        brwce(logits.sigmoid(), target)
    assert record[0].filename == __file__  # points at the caller's line
    with pytest.warns(UserWarning, match="looks like probabilities"):
        rwwce.BinaryRWWCELoss(fn_weight=5.0)(logits.sigmoid().reshape(64, 4), target.reshape(64, 4))
    with pytest.warns(UserWarning, match="looks like probabilities"):  # strided: rows sampled
        brwce(logits.sigmoid().reshape(16, 16).t(), target.reshape(16, 16))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        brwce(logits, target)  # real logits
        brwce(logits.sigmoid(), target, input_type="probs")
        brwce(logits.sigmoid(), target, validate=False)
        brwce(torch.tensor([0.2, 0.9, 0.4]), torch.tensor([0.0, 1.0, 1.0]))  # too few to tell
        # logits of a model near its initialisation: a narrow band, inside [0, 1] by chance
        brwce(torch.zeros(256), target)
        brwce(0.05 * torch.randn(256, generator=g) + 0.3, target)
    with pytest.warns(UserWarning, match="looks like probabilities"):  # 0/1 labels as input
        brwce(target, target)


# --- PyTorch's keyword names ------------------------------------------------------------------


@pytest.mark.parametrize(
    "call, match",
    [
        (lambda: rce(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), weight=torch.ones(3)),
         r"real_world_weight_cross_entropy\(\) got PyTorch's keyword argument weight=; in rwwce write fn_weight=w \(and reduction='weighted_mean'"),
        (lambda: rce(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), size_average=False),
         r"keyword argument size_average=; in rwwce write reduction="),
        (lambda: rwwce.RWWCELoss(weight=torch.ones(3)), r"RWWCELoss\(\) got PyTorch's keyword argument weight=; in rwwce write fn_weight=w"),
        (lambda: rwwce.RWWCELoss(reduce=False), r"RWWCELoss\(\) .* reduce=; in rwwce write reduction="),
        (lambda: brwce(torch.randn(4), torch.ones(4), pos_weight=torch.tensor(3.0)),
         r"binary_real_world_weight_cross_entropy\(\) got PyTorch's keyword argument pos_weight=; in rwwce write fn_weight=pw"),
        (lambda: rwwce.BinaryRWWCELoss(weight=torch.ones(4)), r"BinaryRWWCELoss\(\) .* weight=; in rwwce write fn_weight=w \* pw, fp_weight=w for"),
        (lambda: rwwce.BinaryRWWCELoss(pos_weight=2.0), r"BinaryRWWCELoss\(\) .* pos_weight=; in rwwce write fn_weight=pw"),
        (lambda: rwwce.loss_breakdown(torch.randn(4, 3), torch.tensor([0, 1, 2, 0]), weight=torch.ones(3)),
         r"loss_breakdown\(\) .* weight=; in rwwce write fn_weight=w"),
    ],
)  # fmt: skip
def test_pytorch_keyword_names_name_the_rwwce_argument(call, match):
    with pytest.raises(TypeError, match=match):
        call()


def test_the_suggested_arguments_are_pytorchs():
    # The translations the messages give, against PyTorch itself.
    g = torch.Generator().manual_seed(1)
    x, t, w = (
        torch.randn(16, 4, generator=g),
        torch.randint(0, 4, (16,), generator=g),
        torch.rand(4, generator=g) + 0.5,
    )
    torch.testing.assert_close(
        rce(x, t, fn_weight=w, reduction="weighted_mean"), F.cross_entropy(x, t, weight=w)
    )
    z, y = torch.randn(16, generator=g), (torch.rand(16, generator=g) < 0.5).float()
    ew, pw = torch.rand(16, generator=g) + 0.5, torch.tensor(3.0)
    expected = F.binary_cross_entropy_with_logits(z, y, weight=ew, pos_weight=pw)
    torch.testing.assert_close(brwce(z, y, fn_weight=ew * pw, fp_weight=ew), expected)
    torch.testing.assert_close(brwce(z, y, fn_weight=pw, sample_weight=ew), expected)
    torch.testing.assert_close(
        rce(x, t, fn_weight=w, reduction="sum"), F.cross_entropy(x, t, weight=w, reduction="sum")
    )


def test_keyword_hints_keep_signatures_and_compile_without_graph_breaks():
    import inspect

    for public, wrapped in (
        (rce, rce.__wrapped__),
        (brwce, brwce.__wrapped__),
        (rwwce.RWWCELoss, rwwce.RWWCELoss.__init__.__wrapped__),
        (rwwce.BinaryRWWCELoss, rwwce.BinaryRWWCELoss.__init__.__wrapped__),
    ):
        params = list(inspect.signature(public).parameters)
        assert params == [p for p in inspect.signature(wrapped).parameters if p != "self"]
        assert "fn_weight" in params and "weight" not in params
    x, t = torch.randn(8, 5), torch.randint(0, 5, (8,))
    w = torch.rand(5) + 0.5

    def breaks(fn):
        torch._dynamo.reset()
        return torch._dynamo.explain(fn)(x).graph_break_count

    assert breaks(lambda z: rce(z, t, w, validate=False)) == 0
    # The binary loss's own breaks (weights given as numbers) are not the wrapper's.
    y = (t > 2).float()
    assert breaks(lambda z: brwce(z[:, 0], y, validate=False)) == breaks(
        lambda z: brwce.__wrapped__(z[:, 0], y, validate=False)
    )
    module = rwwce.RWWCELoss(w, validate=False)
    compiled = torch.compile(module, backend="aot_eager", fullgraph=True)
    torch.testing.assert_close(compiled(x, t), module(x, t))


def test_an_unbatched_call_is_checked_in_the_callers_shapes():
    """An unbatched (K,) input: a class index of shape () or (1,) (as F.cross_entropy accepts),
    probabilities of shape (K,); errors name the shapes the caller passed, not (1, K)."""
    z = torch.randn(4)
    for target in (torch.tensor(2), torch.tensor([2])):
        torch.testing.assert_close(rce(z, target), F.cross_entropy(z, target))
    with pytest.raises(
        ValueError, match=r"shape \(\) for an unbatched input of shape \(4,\); got \(6,\)"
    ):
        rce(z, torch.randint(0, 4, (6,)))
    with pytest.raises(ValueError, match=r"the input's shape \(4,\); got \(5,\)"):
        rce(z, torch.softmax(torch.randn(5), 0))
    with pytest.raises(TypeError, match="one class index but has dtype torch.float32"):
        rce(z, torch.tensor(2.0))
    with pytest.raises(ValueError, match=r"one number \(shape \(\) or \(1,\)\); got shape \(5,\)"):
        rce(z, torch.tensor(2), sample_weight=torch.ones(5))
    with pytest.raises(ValueError, match=r"sample_costs must have the input's shape \(4,\)"):
        rce(z, torch.tensor(2), sample_costs=[1.0, 0.0, 2.0])
    torch.testing.assert_close(
        rce(z, torch.tensor(2), sample_weight=3.0), 3 * rce(z, torch.tensor(2))
    )


def test_sample_weight_shape_error_names_each_accepted_shape_once():
    with pytest.raises(ValueError, match=r"sample_weight must have shape \(6,\); got \(5,\)"):
        rce(torch.randn(6, 4), torch.randint(0, 4, (6,)), sample_weight=torch.ones(5))
    with pytest.raises(ValueError, match=r"shape \(6,\) or \(6, 2\); got \(5,\)"):
        rce(torch.randn(6, 4, 2), torch.randint(0, 4, (6, 2)), sample_weight=torch.ones(5))
