"""Token-level costs in a language model: the fused linear + RWWCE loss with a per-token FP vector.

A tiny causal language model (GPT-2 architecture from a ``transformers`` config, random init, no
download) learns a synthetic language: a Markov chain over a vocabulary in which a chosen set of
"penalised" tokens (think: slurs, leaked identifiers, a competitor's name) follows many contexts
with some probability. Two arms, same data, same initialisation, same steps:

1. **plain CE**: ``F.cross_entropy(lm_head(hidden), next_tokens)`` on materialised logits;
2. **RWWCE, FP on the penalised tokens**: ``rwwce.LinearRWWCELoss(fp_weight=v)`` with
   v[j] = ``--penalty`` for the penalised tokens and 0 elsewhere, called on the hidden states and
   ``lm_head.weight``, so the (rows, vocabulary) logits are never held. Its FP term,
   ``-sum_{j != t} v_j log(1 - p_j)``, is token-level unlikelihood training: probability put on a
   penalised token where it is not the next token costs ``v_j``, while the penalised tokens are
   still learned where they are the target (the term skips j = t).

It reports, on held-out text (mean and standard deviation over seeds): how often the penalised
tokens are the arg-max prediction and how often a sample would pick them (the expected share,
sum of their probabilities), their share among the true next tokens, the held-out cross-entropy on
all tokens and on the other tokens (the price paid), and the peak extra memory of the loss's
forward+backward on one training batch (each loss in a fresh process; CPU: resident memory,
CUDA: the allocator's peak). Run::

    python examples/token_costs_lm.py                      # 3 seeds, 300 steps
    python examples/token_costs_lm.py --seeds 5 --penalty 4

Needs ``transformers`` (``pip install 'rwwce[hf]'``).
"""

from __future__ import annotations

import argparse
import multiprocessing
import statistics

import torch
import torch.nn.functional as F

import rwwce

ARMS = ("plain CE", "RWWCE, FP on penalised tokens")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3, help="training runs per arm")
    parser.add_argument("--steps", type=int, default=300, help="optimiser steps per run")
    parser.add_argument("--vocab", type=int, default=4096, help="vocabulary size")
    parser.add_argument("--penalised", type=int, default=32, help="number of penalised tokens")
    parser.add_argument("--penalty", type=float, default=2.0, help="FP weight of each")
    parser.add_argument("--seq-len", type=int, default=64, help="tokens per sequence")
    parser.add_argument("--batch", type=int, default=32, help="sequences per step")
    parser.add_argument("--train-seqs", type=int, default=2000, help="training sequences")
    parser.add_argument("--test-seqs", type=int, default=200, help="held-out sequences")
    parser.add_argument("--hidden", type=int, default=64, help="model width")
    parser.add_argument("--layers", type=int, default=2, help="transformer blocks")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurement")
    return parser


# --- the synthetic language -----------------------------------------------------------------------


def make_language(vocab: int, penalised: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """A sparse Markov chain (each token has 16 likely successors) in which the penalised tokens
    (the last ``penalised`` ids) follow a quarter of all tokens with probability 0.15 each.

    Returns the (V, V) transition matrix and the (V,) boolean mask of penalised tokens.
    """
    gen = torch.Generator().manual_seed(seed)
    transitions = torch.zeros(vocab, vocab)
    successors = torch.randint(0, vocab - penalised, (vocab, 16), generator=gen)
    weights = torch.rand(vocab, 16, generator=gen) ** 3  # a few strong successors per token
    transitions.scatter_add_(1, successors, weights)
    is_penalised = torch.zeros(vocab, dtype=torch.bool)
    is_penalised[vocab - penalised :] = True
    leads_to_penalised = torch.rand(vocab, generator=gen) < 0.25
    chosen = torch.randint(vocab - penalised, vocab, (vocab,), generator=gen)
    transitions *= torch.where(leads_to_penalised, 0.85, 1.0).unsqueeze(1)
    transitions[leads_to_penalised, chosen[leads_to_penalised]] += 0.15
    return transitions / transitions.sum(dim=1, keepdim=True), is_penalised


def sample_text(transitions: torch.Tensor, sequences: int, length: int, seed: int) -> torch.Tensor:
    """(sequences, length) token ids drawn from the chain, from uniform first tokens."""
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.empty(sequences, length, dtype=torch.long)
    tokens[:, 0] = torch.randint(0, transitions.shape[0], (sequences,), generator=gen)
    for position in range(1, length):
        tokens[:, position] = torch.multinomial(
            transitions[tokens[:, position - 1]], 1, generator=gen
        )[:, 0]
    return tokens


# --- model, losses, training ------------------------------------------------------------------------


def make_model(args, seed: int):
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    config = GPT2Config(
        vocab_size=args.vocab,
        n_positions=args.seq_len,
        n_embd=args.hidden,
        n_layer=args.layers,
        n_head=4 if args.hidden % 4 == 0 else 1,
        resid_pdrop=0.0,
        embd_pdrop=0.0,
        attn_pdrop=0.0,
        bos_token_id=0,
        eos_token_id=0,
    )
    return GPT2LMHeadModel(config).to(args.device)


def fp_vector(is_penalised: torch.Tensor, penalty: float) -> torch.Tensor:
    return torch.where(is_penalised, penalty, 0.0)


def make_loss(arm: str, fp: torch.Tensor):
    """loss(hidden (B, T, H), head weight (V, H), next tokens (B, T)) for an arm."""
    if arm == ARMS[0]:
        return lambda hidden, weight, target: F.cross_entropy(
            F.linear(hidden, weight).flatten(0, 1), target.flatten()
        )
    criterion = rwwce.LinearRWWCELoss(fp_weight=fp)
    return lambda hidden, weight, target: criterion(hidden, weight, target)


def train(arm: str, args, text: torch.Tensor, fp: torch.Tensor, seed: int):
    model = make_model(args, seed)
    loss_fn = make_loss(arm, fp.to(args.device))
    optimiser = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    gen = torch.Generator().manual_seed(seed)
    model.train()
    for _ in range(args.steps):
        batch = text[torch.randint(0, text.shape[0], (args.batch,), generator=gen)].to(args.device)
        hidden = model.transformer(batch[:, :-1]).last_hidden_state
        loss = loss_fn(hidden, model.lm_head.weight, batch[:, 1:])
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()
    return model


@torch.no_grad()
def evaluate(model, text: torch.Tensor, is_penalised: torch.Tensor, device: str) -> dict:
    """Held-out rates (teacher forcing: each position predicted from the true context)."""
    model.eval()
    argmax_hits = expected_hits = nll_all = nll_other = others = rows = 0.0
    mask = is_penalised.to(device)
    for batch in text.to(device).split(64):
        logits = model(batch[:, :-1]).logits.flatten(0, 1).float()
        target = batch[:, 1:].flatten()
        log_p = torch.log_softmax(logits, dim=1)
        nll = -log_p.gather(1, target.unsqueeze(1)).squeeze(1)
        argmax_hits += mask[logits.argmax(dim=1)].sum().item()
        expected_hits += log_p[:, mask].exp().sum().item()
        other = ~mask[target]
        nll_all += nll.sum().item()
        nll_other += nll[other].sum().item()
        others += other.sum().item()
        rows += target.numel()
    return {
        "argmax_share": argmax_hits / rows,
        "sampled_share": expected_hits / rows,
        "ce": nll_all / rows,
        "ce_other_tokens": nll_other / others,
    }


# --- memory of one loss call ----------------------------------------------------------------------


def loss_peak_bytes(arm: str, args, fp: torch.Tensor) -> int:
    """Peak extra memory of one forward+backward of the arm's loss on a training batch's shape,
    measured in a fresh process on the CPU (resident memory) or by the CUDA allocator."""
    shape = (args.batch, args.seq_len - 1, args.hidden, args.vocab)
    if args.device.startswith("cuda"):
        return _loss_peak_bytes(arm, shape, fp, args.device)
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        return pool.apply(_loss_peak_bytes, (arm, shape, fp, "cpu"))


def _loss_peak_bytes(arm: str, shape: tuple, fp: torch.Tensor, device: str) -> int:
    batch, length, hidden_size, vocab = shape
    loss_fn = make_loss(arm, fp.to(device))

    def inputs(rows):
        hidden = torch.randn(rows, length, hidden_size, device=device, requires_grad=True)
        weight = torch.randn(vocab, hidden_size, device=device, requires_grad=True)
        return hidden, weight, torch.randint(0, vocab, (rows, length), device=device)

    loss_fn(*inputs(1)).backward()  # load every code path before measuring
    hidden, weight, target = inputs(batch)
    if device.startswith("cuda"):
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
        loss_fn(hidden, weight, target).backward()
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated() - base
    _reset_peak_rss()  # the peak of importing torch must not count
    before = _rss_bytes("VmRSS")
    loss_fn(hidden, weight, target).backward()
    return _rss_bytes("VmHWM") - before


def _reset_peak_rss() -> None:
    """Linux: writing 5 to clear_refs resets the peak resident memory (VmHWM) to the current."""
    with open("/proc/self/clear_refs", "w") as clear_refs:
        clear_refs.write("5")


def _rss_bytes(field: str) -> int:
    """VmRSS (now) or VmHWM (peak since the last reset) of this process, in bytes."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


# --- report -----------------------------------------------------------------------------------------


def summarise(values: list[float], scale: float = 1.0, digits: int = 2) -> str:
    mean = statistics.fmean(values) * scale
    if len(values) < 2:
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {statistics.stdev(values) * scale:.{digits}f}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    transitions, is_penalised = make_language(args.vocab, args.penalised)
    train_text = sample_text(transitions, args.train_seqs, args.seq_len, seed=1)
    test_text = sample_text(transitions, args.test_seqs, args.seq_len, seed=2)
    data_share = is_penalised[test_text[:, 1:]].float().mean().item()
    fp = fp_vector(is_penalised, args.penalty)

    results = {arm: [] for arm in ARMS}
    for seed in range(args.seeds):
        for arm in ARMS:
            model = train(arm, args, train_text, fp, seed)
            results[arm].append(evaluate(model, test_text, is_penalised, args.device))
    memory = {arm: None if args.no_memory else loss_peak_bytes(arm, args, fp) for arm in ARMS}

    rows = args.batch * (args.seq_len - 1)
    print(
        f"vocabulary {args.vocab}, {args.penalised} penalised tokens (FP weight {args.penalty:g}), "
        f"{args.steps} steps of {args.batch} x {args.seq_len} tokens, {args.layers} blocks of "
        f"width {args.hidden}, {args.seeds} seed(s); penalised share of the held-out next tokens: "
        f"{100 * data_share:.2f}%\n"
    )
    print(
        "| arm | penalised as arg-max % | penalised sampled % | held-out CE | CE, other tokens "
        f"| loss peak extra MiB ({rows} x {args.vocab} logits) |"
    )
    print("|---|---|---|---|---|---|")
    for arm in ARMS:
        runs = results[arm]
        peak = "-" if memory[arm] is None else f"{memory[arm] / 2**20:.1f}"
        print(
            f"| {arm} | {summarise([r['argmax_share'] for r in runs], 100)} "
            f"| {summarise([r['sampled_share'] for r in runs], 100)} "
            f"| {summarise([r['ce'] for r in runs], digits=3)} "
            f"| {summarise([r['ce_other_tokens'] for r in runs], digits=3)} | {peak} |"
        )
    fewer = sum(
        rw["sampled_share"] < ce["sampled_share"]
        for ce, rw in zip(results[ARMS[0]], results[ARMS[1]], strict=True)
    )
    print(
        f"\nRWWCE samples the penalised tokens less often than plain CE in {fewer} of {args.seeds} seed(s)."
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
