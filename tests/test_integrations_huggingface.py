"""RWWCETrainer: one optimiser step with gradient accumulation equals one step on the whole batch.

The oracle is plain PyTorch: the same model, ``rwwce.RWWCELoss`` on the concatenated batch of 32
with its own reduction, one ``torch.optim.SGD`` step. The Trainer does 4 micro-batches of 8 and
one step; the parameters must agree. A tiny ``PreTrainedModel`` built from a config (no download).
"""

from __future__ import annotations

import copy
import os
from pathlib import Path

import numpy as np
import pytest
import torch

transformers = pytest.importorskip("transformers")
pytest.importorskip("accelerate")

import rwwce  # noqa: E402
from gloo_processes import run_processes  # noqa: E402
from rwwce.integrations.huggingface import RWWCETrainer, make_compute_metrics  # noqa: E402
from rwwce.metrics import real_world_cost  # noqa: E402

N, F, K, LR = 32, 6, 4, 0.5
FN = torch.tensor([1.0, 4.0, 0.5, 2.0])
FP = torch.tensor(
    [[0.0, 1.0, 3.0, 0.5], [2.0, 0.0, 1.0, 1.0], [4.0, 0.0, 0.0, 2.0], [1.0, 1.0, 1.0, 0.0]]
)


class TinyConfig(transformers.PretrainedConfig):
    model_type = "rwwce-tiny"

    def __init__(self, num_features: int = F, num_outputs: int = K, **kwargs):
        self.num_features = num_features
        self.num_outputs = num_outputs
        super().__init__(**kwargs)


class TinyModel(transformers.PreTrainedModel):
    config_class = TinyConfig

    def __init__(self, config: TinyConfig):
        super().__init__(config)
        self.hidden = torch.nn.Linear(config.num_features, 8)
        self.head = torch.nn.Linear(8, config.num_outputs)
        self.post_init()

    def _init_weights(self, module):  # keep PyTorch's seeded default initialisation
        pass

    def forward(self, features, labels=None):
        logits = self.head(torch.tanh(self.hidden(features)))
        if self.config.num_outputs == 1:
            logits = logits.squeeze(-1)
        return transformers.modeling_outputs.SequenceClassifierOutput(logits=logits)


class ListDataset(torch.utils.data.Dataset):
    def __init__(self, features, labels):
        self.features, self.labels = features, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"features": self.features[i], "labels": self.labels[i]}


def make_data(binary=False):
    g = torch.Generator().manual_seed(7)
    x = torch.randn(N, F, generator=g)
    if binary:
        return x, (torch.rand(N, generator=g) < 0.3).float()
    y = torch.randint(0, K, (N,), generator=g)
    y[[2, 3, 11, 30]] = -100  # ignored labels, unevenly spread over the micro-batches
    return x, y


def make_model(binary=False):
    torch.manual_seed(0)
    return TinyModel(TinyConfig(num_outputs=1 if binary else K))


def train_one_step(model, loss, x, y, tmp_path, accumulation=4, batch=8, **arguments):
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=batch,
        gradient_accumulation_steps=accumulation,
        max_steps=1,
        learning_rate=LR,
        optim="sgd",
        lr_scheduler_type="constant",
        weight_decay=0.0,
        max_grad_norm=0.0,
        warmup_steps=0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        dataloader_num_workers=0,
        disable_tqdm=True,
        seed=0,
        **arguments,
    )
    trainer = RWWCETrainer(model=model, args=args, train_dataset=ListDataset(x, y), loss=loss)
    result = trainer.train()
    return trainer, result


def one_sgd_step_arguments(tmp_path, **extra):
    """TrainingArguments for one plain SGD step of 4 accumulated micro-batches of 8 on the CPU."""
    return transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=4,
        max_steps=1,
        learning_rate=LR,
        optim="sgd",
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        **extra,
    )


def reference_step(model, loss, x, y):
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    value = loss(model(x).logits, y)
    value.backward()
    opt.step()
    return value.detach()


def params(model):
    return torch.cat([p.detach().flatten() for p in model.parameters()])


CASES = [
    ("mean", None),
    ("mean", FP),
    ("weighted_mean", None),
    ("weighted_mean", FP),
    ("sum", FP),
]


@pytest.mark.parametrize("reduction,fp", CASES)
def test_accumulated_step_equals_full_batch_step(tmp_path, reduction, fp):
    x, y = make_data()
    model = make_model()
    start = params(model)
    reference = copy.deepcopy(model)
    expected_loss = reference_step(reference, rwwce.RWWCELoss(FN, fp, reduction=reduction), x, y)

    _, result = train_one_step(model, rwwce.RWWCELoss(FN, fp, reduction=reduction), x, y, tmp_path)
    moved = params(reference) - start
    assert moved.abs().max() > 1e-3  # the step did something
    torch.testing.assert_close(params(model), params(reference), rtol=1e-5, atol=1e-6)
    # the Trainer reports the whole batch's loss for the step
    assert result.training_loss == pytest.approx(float(expected_loss), rel=1e-5)


# --- per-sample costs from the batch --------------------------------------------------------------


class CostDataset(ListDataset):
    """ListDataset with a ``sample_costs`` entry per sample (the model's forward does not take it:
    the default ``remove_unused_columns`` would drop it unless the Trainer keeps it)."""

    def __init__(self, features, labels, costs):
        super().__init__(features, labels)
        self.costs = costs

    def __getitem__(self, i):
        return {**super().__getitem__(i), "sample_costs": self.costs[i]}


def make_costs(shape, seed=11):
    """Per-sample cost rows: a heavy-tailed cost of missing the true class (an 'amount') and
    small costs of the other mistakes, so fn_i varies a lot between samples."""
    g = torch.Generator().manual_seed(seed)
    costs = torch.rand(*shape, K, generator=g) + 0.1
    amount = torch.distributions.Pareto(1.0, 1.5).sample(shape) * 2
    costs[..., 0] = amount  # predicting class 0 (say, 'legitimate') misses the amount
    return costs


def plain_step(model, x, y, costs, reduction):
    """One SGD step on the whole batch with the plain functional loss and its sample_costs."""
    opt = torch.optim.SGD(model.parameters(), lr=LR)
    logits = model(x).logits
    if logits.dim() == 3:  # (N, L, K) -> the loss's classes-second layout
        logits, costs = logits.movedim(-1, 1), costs.movedim(-1, 1)
    value = rwwce.real_world_weight_cross_entropy(
        logits, y, sample_costs=costs, reduction=reduction
    )
    value.backward()
    opt.step()
    return value.detach()


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean", "sum"])
def test_sample_costs_from_the_batch_accumulated_step_equals_full_batch_step(tmp_path, reduction):
    x, y = make_data()
    costs = make_costs((N,))
    model = make_model()
    start = params(model)
    reference = copy.deepcopy(model)
    expected_loss = plain_step(reference, x, y, costs, reduction)

    trainer = RWWCETrainer(
        model=model,
        args=one_sgd_step_arguments(tmp_path),
        train_dataset=CostDataset(x, y, costs),
        loss=rwwce.RWWCELoss(reduction=reduction),
    )
    result = trainer.train()
    assert (params(reference) - start).abs().max() > 1e-3
    torch.testing.assert_close(params(model), params(reference), rtol=1e-5, atol=1e-6)
    assert result.training_loss == pytest.approx(float(expected_loss), rel=1e-5)
    if reduction == "weighted_mean":  # the costs matter: without them the step differs
        without = make_model()
        reference_step(without, rwwce.RWWCELoss(reduction=reduction), x, y)
        assert not torch.allclose(params(without), params(reference), rtol=1e-4, atol=1e-6)


def test_sample_costs_for_token_classification_and_evaluation(tmp_path):
    """(N, L, K) logits with (N, L) labels and (N, L, K) costs; evaluate() uses them too."""
    g = torch.Generator().manual_seed(5)
    x = torch.randn(N, 3, F, generator=g)
    y = torch.randint(0, K, (N, 3), generator=g)
    y[torch.rand(N, 3, generator=g) < 0.25] = -100
    costs = make_costs((N, 3))
    model = make_model()
    reference = copy.deepcopy(model)
    plain_step(reference, x, y, costs, "weighted_mean")
    args = one_sgd_step_arguments(tmp_path, per_device_eval_batch_size=N)
    data = CostDataset(x, y, costs)
    trainer = RWWCETrainer(
        model=model,
        args=args,
        train_dataset=data,
        eval_dataset=data,
        loss=rwwce.RWWCELoss(reduction="weighted_mean"),
    )
    trainer.train()
    torch.testing.assert_close(params(model), params(reference), rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        expected = rwwce.real_world_weight_cross_entropy(
            model(x).logits.movedim(-1, 1),
            y,
            sample_costs=costs.movedim(-1, 1),
            reduction="weighted_mean",
        )
    assert trainer.evaluate()["eval_loss"] == pytest.approx(float(expected), rel=1e-5)


def test_bad_sample_costs_in_the_batch(tmp_path):
    x, y = make_data()
    costs = make_costs((N,))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=N, report_to=[], use_cpu=True
    )

    def evaluate(loss, data):
        return RWWCETrainer(model=make_model(), args=args, eval_dataset=data, loss=loss).evaluate()

    with pytest.raises(ValueError, match="sample_costs replaces fn_weight and fp_weight"):
        evaluate(rwwce.RWWCELoss(FN, FP), CostDataset(x, y, costs))
    with pytest.raises(ValueError, match=r"'sample_costs' must have shape \(32, 4\)"):
        evaluate(rwwce.RWWCELoss(), CostDataset(x, y, costs[:, :3]))
    xb, yb = make_data(binary=True)
    with pytest.raises(ValueError, match="needs a multi-class rwwce.RWWCELoss"):
        evaluate(rwwce.BinaryRWWCELoss(2.0, 1.0), CostDataset(xb, yb, costs))


class TokenDataset(torch.utils.data.Dataset):
    def __init__(self, input_ids, labels):
        self.input_ids, self.labels = input_ids, labels

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        return {"input_ids": self.input_ids[i], "labels": self.labels[i]}


def test_token_classification_with_tiny_bert(tmp_path):
    """(N, L, K) logits with (N, L) labels, padding ignored: a BERT built from a config."""
    config = transformers.BertConfig(
        vocab_size=30,
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        num_labels=K,
    )
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 30, (N, 5), generator=g)
    labels = torch.randint(0, K, (N, 5), generator=g)
    labels[torch.rand(N, 5, generator=g) < 0.3] = -100  # padding and sub-word tokens
    torch.manual_seed(0)
    model = transformers.BertForTokenClassification(config)
    reference = copy.deepcopy(model)
    loss = rwwce.RWWCELoss(FN, FP, reduction="weighted_mean")
    opt = torch.optim.SGD(reference.parameters(), lr=LR)
    loss(reference(input_ids=ids).logits.movedim(-1, 1), labels).backward()
    opt.step()
    args = one_sgd_step_arguments(tmp_path)
    trainer = RWWCETrainer(
        model=model, args=args, train_dataset=TokenDataset(ids, labels), loss=loss
    )
    trainer.train()
    torch.testing.assert_close(params(model), params(reference), rtol=1e-5, atol=1e-6)


def test_per_micro_batch_mean_would_be_wrong(tmp_path):
    """Averaging the micro-batches' own weighted means (what a plain Trainer with a
    per-batch loss does) is not the full-batch step: the test above has teeth."""
    x, y = make_data()
    loss = rwwce.RWWCELoss(FN, FP, reduction="weighted_mean")
    reference = make_model()
    reference_step(reference, loss, x, y)
    naive = make_model()
    opt = torch.optim.SGD(naive.parameters(), lr=LR)
    for rows in torch.arange(N).chunk(4):
        (loss(naive(x[rows]).logits, y[rows]) / 4).backward()
    opt.step()
    assert not torch.allclose(params(naive), params(reference), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "weighted_mean"])
def test_binary_loss(tmp_path, reduction):
    x, y = make_data(binary=True)
    loss = rwwce.BinaryRWWCELoss(fn_weight=5.0, fp_weight=0.5, reduction=reduction)
    model, reference = make_model(True), make_model(True)
    reference_step(reference, loss, x, y)
    train_one_step(model, rwwce.BinaryRWWCELoss(5.0, 0.5, reduction=reduction), x, y, tmp_path)
    torch.testing.assert_close(params(model), params(reference), rtol=1e-5, atol=1e-6)


def assert_evaluation_is_the_models(metrics, model, x, y, costs):
    """evaluate()'s cost and loss against the model's own logits on the whole batch."""
    with torch.no_grad():
        logits = model(x).logits
    keep = y != -100
    expected_cost = real_world_cost(y[keep], logits[keep].argmax(1), costs)
    assert metrics["eval_real_world_cost"] == pytest.approx(float(expected_cost))
    expected_loss = rwwce.RWWCELoss.from_costs(costs)(logits, y)
    assert metrics["eval_loss"] == pytest.approx(float(expected_loss), rel=1e-5)


def test_evaluate_reports_cost_and_batch_loss(tmp_path):
    x, y = make_data()
    costs = rwwce.CostMatrix.from_fn_fp(FN, FP)
    model = make_model()
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path), per_device_eval_batch_size=N, report_to=[], use_cpu=True
    )
    trainer = RWWCETrainer(
        model=model,
        args=args,
        eval_dataset=ListDataset(x, y),
        loss=rwwce.RWWCELoss.from_costs(costs),
        compute_metrics=make_compute_metrics(costs),
    )
    metrics = trainer.evaluate()
    assert_evaluation_is_the_models(metrics, model, x, y, costs)


class NoLabelsModel(TinyModel):
    """A model whose forward takes no labels: the loss lives in the Trainer."""

    def forward(self, features):
        return super().forward(features)


def test_a_model_that_takes_no_labels_trains_and_evaluates(tmp_path):
    x, y = make_data()
    costs = rwwce.CostMatrix.from_fn_fp(FN, FP)
    torch.manual_seed(0)
    model = NoLabelsModel(TinyConfig())
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        per_device_eval_batch_size=N,
        max_steps=2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = RWWCETrainer(
        model=model,
        args=args,
        train_dataset=ListDataset(x, y),
        eval_dataset=ListDataset(x, y),
        loss=rwwce.RWWCELoss.from_costs(costs),
        compute_metrics=make_compute_metrics(costs),
    )
    assert trainer.label_names == ["labels"]
    trainer.train()
    metrics = trainer.evaluate()
    assert_evaluation_is_the_models(metrics, model, x, y, costs)
    bad = transformers.TrainingArguments(
        output_dir=str(tmp_path), label_names=["target"], report_to=[], use_cpu=True
    )
    with pytest.raises(ValueError, match=r"label_names is \['target'\]; RWWCETrainer reads"):
        RWWCETrainer(model=model, args=bad, loss=rwwce.RWWCELoss.from_costs(costs))


def test_best_checkpoint_by_real_world_cost(tmp_path):
    """The documented set-up: evaluate every epoch, keep the model with the lowest cost."""
    x, y = make_data()
    costs = rwwce.CostMatrix.from_fn_fp(FN, FP)
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path),
        per_device_train_batch_size=8,
        gradient_accumulation_steps=2,
        num_train_epochs=3,
        learning_rate=0.05,
        optim="sgd",
        eval_strategy="epoch",
        save_strategy="epoch",
        load_best_model_at_end=True,
        metric_for_best_model="real_world_cost",
        greater_is_better=False,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = RWWCETrainer(
        model=make_model(),
        args=args,
        train_dataset=ListDataset(x, y),
        eval_dataset=ListDataset(x, y),
        loss=rwwce.RWWCELoss.from_costs(costs, reduction="weighted_mean"),
        compute_metrics=make_compute_metrics(costs),
    )
    trainer.train()
    evals = [
        h["eval_real_world_cost"] for h in trainer.state.log_history if "eval_real_world_cost" in h
    ]
    assert len(evals) == 3
    assert trainer.state.best_metric == pytest.approx(min(evals))
    assert trainer.evaluate()["eval_real_world_cost"] == pytest.approx(min(evals))


def test_compute_metrics_token_level_and_bayes():
    costs = [[0, 1], [20, 0]]
    logits = np.array([[[2.0, 0.0], [0.5, 0.0]], [[0.0, 1.0], [2.0, 0.0]]])  # (N=2, L=2, K=2)
    labels = np.array([[0, 1], [-100, 1]])
    metrics = make_compute_metrics(costs)((logits, labels))
    # argmax: tokens (0 -> 0), (1 -> 0), (1 -> 0): two missed positives out of three
    assert metrics["real_world_cost"] == pytest.approx(40 / 3)
    assert metrics["recall_1"] == 0.0 and metrics["accuracy"] == pytest.approx(1 / 3)
    bayes = make_compute_metrics(costs, decision="bayes")((logits, labels))
    # threshold 1/21 on p(1): every token predicted positive, one false alarm
    assert bayes["real_world_cost"] == pytest.approx(1 / 3)
    binary = make_compute_metrics(costs)((np.array([[-1.0], [2.0]]), np.array([1, 1])))
    assert binary["real_world_cost"] == pytest.approx(10.0)


def test_bad_arguments(tmp_path):
    args = transformers.TrainingArguments(output_dir=str(tmp_path), report_to=[], use_cpu=True)
    with pytest.raises(TypeError, match="loss must be"):
        RWWCETrainer(model=make_model(), args=args, loss=torch.nn.CrossEntropyLoss())
    with pytest.raises(ValueError, match="reduction='none'"):
        RWWCETrainer(model=make_model(), args=args, loss=rwwce.RWWCELoss(reduction="none"))
    with pytest.raises(ValueError, match="decision"):
        make_compute_metrics([[0, 1], [1, 0]], decision="best")


# ---------------------------------------------------------------------- two processes
def _ddp_worker(rank: int, world: int, port: int, out_dir: str, reduction: str) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        LOCAL_RANK=str(rank),
        WORLD_SIZE=str(world),
        OMP_NUM_THREADS="1",
    )
    x, y = make_data()
    model = make_model()
    # 2 processes x 2 accumulation steps x batches of 8: one step over all 32 samples; the
    # sampler deals the ignored labels unevenly over the ranks and micro-batches.
    trainer, _ = train_one_step(
        model,
        rwwce.RWWCELoss(FN, FP, reduction=reduction),
        x,
        y,
        Path(out_dir) / f"run{rank}",
        accumulation=2,
    )
    assert trainer.accelerator.num_processes == world
    torch.save(params(model), Path(out_dir) / f"rank{rank}.pt")
    if torch.distributed.is_initialized():
        torch.distributed.barrier()  # no rank tears the group down while another still uses it
        torch.distributed.destroy_process_group()


@pytest.mark.slow
@pytest.mark.skipif(
    not torch.distributed.is_available() or not torch.distributed.is_gloo_available(),
    reason="needs torch.distributed with gloo",
)
@pytest.mark.parametrize("reduction", ["weighted_mean"])
def test_two_processes_step_equals_full_batch_step(tmp_path, reduction):
    # In about 1 run in 30 on 2 busy cores the gloo processes had not exited after 120 s, though
    # the step takes under a second. What is checked here is the step: once both ranks have
    # written their parameters, a process that does not exit is ended and reported on stderr.
    run_processes(
        _ddp_worker,
        2,
        str(tmp_path),
        reduction,
        timeout_s=120,
        finished=lambda: all((tmp_path / f"rank{rank}.pt").exists() for rank in range(2)),
    )
    x, y = make_data()
    reference = make_model()
    reference_step(reference, rwwce.RWWCELoss(FN, FP, reduction=reduction), x, y)
    for rank in range(2):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        torch.testing.assert_close(got, params(reference), rtol=1e-5, atol=1e-6)


def test_torch_compile_training_equals_eager(tmp_path):
    """TrainingArguments(torch_compile=True): the compiled model's step with the RWWCE loss
    equals the eager reference step."""
    from torch._dynamo.utils import counters

    x, y = make_data()
    model = make_model()
    reference = copy.deepcopy(model)
    criterion = rwwce.RWWCELoss(FN, FP, reduction="weighted_mean")
    expected_loss = reference_step(
        reference, rwwce.RWWCELoss(FN, FP, reduction="weighted_mean"), x, y
    )
    torch._dynamo.reset()
    counters.clear()
    _, result = train_one_step(
        model,
        criterion,
        x,
        y,
        tmp_path,
        accumulation=1,
        batch=N,
        torch_compile=True,
        torch_compile_backend="aot_eager",
    )
    assert counters["stats"]["unique_graphs"] >= 1  # the model did run compiled
    torch.testing.assert_close(params(model), params(reference), rtol=1e-5, atol=1e-6)
    assert result.training_loss == pytest.approx(float(expected_loss), rel=1e-5)
