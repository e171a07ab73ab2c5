"""Five SePT exercises: the stubs. Do not write in this file: your own copy is notebooks/exercises/exercises.py.

    python notebooks/exercises/check.py --start        # copies these stubs to exercises.py, your file (once)
    python notebooks/exercises/check.py pass_at_k      # one exercise: passes, or names the trap you fell into
    python notebooks/exercises/check.py all            # all five
    python notebooks/exercises/check.py all --reference    # the project's own functions pass them all

Each function replaces a `raise NotImplementedError`. The checks compare what you return with the project's
reference implementation (named in each docstring: read it only after you tried) on cases built to catch the
classic mistakes of this field. Suggested order: last_boxed, pass_at_k, tau_sample_at, answer_loss, sept_round.
Your exercises.py is yours alone (git ignores it): the project's tests never read it, whatever is in it.
"""
import math  # noqa: F401  (you may want it)

import torch  # noqa: F401
import torch.nn.functional as F  # noqa: F401

import sept_mini as sm  # noqa: F401  (sept_round uses sm.rollout and sm.sept_loss)


def last_boxed(text):
    """The final answer of a model's response: the content of its LAST \\boxed{...}, or None when it has no
    complete box.

        last_boxed(r"so x = \\boxed{\\frac{1}{2}}.")      -> r"\\frac{1}{2}"
        last_boxed(r"\\boxed{3}... no wait: \\boxed{4}")   -> "4"
        last_boxed(r"the answer is \\boxed{12")           -> None   (cut off inside its box)

    Reference: grading.extract_answer (which also reads \\fbox, lists of boxes and "the answer is" sentences)."""
    raise NotImplementedError


def pass_at_k(n, c, k):
    """The unbiased estimate of pass@k (the chance that at least one of k samples is correct) from n samples
    of one question, c of them correct. Raise ValueError when k > n.

        pass_at_k(10, 3, 1) -> 0.3

    Reference: eval_math.pass_at_k (Chen et al. 2021, the Codex paper)."""
    raise NotImplementedError


def tau_sample_at(round_, rounds, tau_start, tau_train, anneal):
    """The sampling temperature of training round `round_` (rounds count from 1 to `rounds`).

    anneal 'none': tau_start in every round.
    anneal 'paper': starts at tau_start in round 1 and rises linearly, reaching tau_train when two thirds of the
    rounds are done; from then on it stays at tau_train.

    Reference: sept_mini.tau_sample_at."""
    raise NotImplementedError


def answer_loss(model, rollouts, pad_id, tau_train):
    """SePT's training loss on a batch of the model's own samples: the mean, over every answer token of the
    batch, of -log pi(token | everything before it), where pi is the model's next-token distribution at
    temperature tau_train (softmax of logits / tau_train). Return a torch scalar that backward() can train.

    rollouts: a list of {"prompt_ids": [...], "answer_ids": [...]} (lists of token ids, of any lengths); an
    answer ends with the stop token unless it was cut off. pad_id: the tokenizer's pad token id, which may be
    the stop token itself (as in Qwen base models). model(input_ids=..., attention_mask=...).logits has
    shape (B, T, V).

    Reference: sept_mini.training_batch and sept_mini.answer_nll_naive (sept_mini.sept_loss returns the sum and
    the token count)."""
    raise NotImplementedError


def sept_round(model, tokenizer, prompts, optimizer, tau_sample, tau_train, max_new_tokens):
    """One round of SePT (Algorithm 1 of the paper): the model answers `prompts` once each at tau_sample, then
    takes ONE optimizer update of the token-mean SePT loss on those answers at tau_train. Returns that loss as
    a float.

    Use sm.rollout(model, tokenizer, prompts, tau, max_new_tokens) to sample (it returns the rollouts that
    answer_loss takes) and sm.sept_loss(model, rollouts, pad_id, tau_train) for the loss (it returns the sum
    over answer tokens and their number), or your own answer_loss.

    Reference: sept_mini.sample_round and sept_mini.train_round (with their seeds, schedules and micro-batches)."""
    raise NotImplementedError
