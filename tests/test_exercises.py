"""The course kit's exercises (notebooks/exercises/): the project's reference implementations pass every check,
the stubs fail as 'not written yet', each classic mistake, planted, fails with a hint that names its trap, and a
class's files are graded out of 5. The student's own file (exercises.py) is never read here: whatever a student wrote
there, this suite stays green."""
import math
import os
import re
import subprocess
import sys

import pytest
import torch

from conftest import ROOT

sys.path.insert(0, os.path.join(ROOT, "notebooks", "exercises"))
import check  # noqa: E402
import stubs  # noqa: E402  (the exercises as shipped; a student writes in a copy, exercises.py)

import sept_mini as sm  # noqa: E402


def outcome(name, fn):
    lines = []
    passed = check.run(name, fn, log=lines.append)
    return passed, "\n".join(lines)


@pytest.mark.parametrize("name", check.NAMES)
def test_the_reference_passes_every_case(name):
    assert outcome(name, check.REFERENCE[name]) == (True, f"{name}: every case passes")


@pytest.mark.parametrize("name", check.NAMES)
def test_each_stub_fails_as_not_written_yet(name):
    passed, message = outcome(name, getattr(stubs, name))
    assert not passed and "not written yet" in message


SOLVED = """import check
last_boxed, pass_at_k, tau_sample_at, answer_loss, sept_round = (check.REFERENCE[name] for name in check.NAMES)
"""


def test_a_class_is_graded_out_of_five(tmp_path):
    solved, stub = tmp_path / "solved.py", tmp_path / "stub.py"
    solved.write_text(SOLVED)
    stub.write_text(open(check.STUBS).read())
    lines = []
    assert check.grade([str(solved), str(stub)], log=lines.append) == {str(solved): 5, str(stub): 0}
    assert lines[0].startswith(f"{solved}: 5/5") and lines[1] == f"{stub}: 0/5"


def test_start_copies_the_stubs_once_and_never_over_a_students_work(tmp_path):
    mine = tmp_path / "exercises.py"
    check.start(str(mine), log=lambda line: None)
    assert "raise NotImplementedError" in mine.read_text() and "your file" in mine.read_text()
    mine.write_text("# my work\n")
    check.start(str(mine), log=lambda line: None)
    assert mine.read_text() == "# my work\n"


@pytest.mark.slow
def test_the_command_checks_one_exercise_and_fails_on_a_stub(tmp_path):
    script = os.path.join(ROOT, "notebooks", "exercises", "check.py")
    stub = tmp_path / "stub.py"
    stub.write_text(open(check.STUBS).read())
    done = subprocess.run([sys.executable, script, "pass_at_k", "--file", str(stub)], capture_output=True, text=True,
                          cwd=ROOT)
    assert done.returncode == 1 and "pass_at_k: not written yet" in done.stdout
    done = subprocess.run([sys.executable, script, "pass_at_k", "--reference"], capture_output=True, text=True)
    assert done.returncode == 0 and "pass_at_k: every case passes" in done.stdout


# -----------------------------------------------------------------------------
# planted mistakes: each must fail, and its hint must name the trap

def boxed_regex(text):
    found = re.findall(r"\\boxed\{(.*?)\}", text)
    return found[-1] if found else None


def boxes(text, keep_unclosed=False):
    out, i = [], text.find("\\boxed{")
    while i >= 0:
        start, depth, j = i + len("\\boxed{"), 1, i + len("\\boxed{")
        while j < len(text) and depth:
            depth += {"{": 1, "}": -1}.get(text[j], 0)
            j += 1
        if depth == 0:
            out.append(text[start:j - 1])
        elif keep_unclosed:
            out.append(text[start:])
        i = text.find("\\boxed{", j)
    return out


def boxed_first(text):
    found = boxes(text)
    return found[0] if found else None


def boxed_keeps_unclosed(text):
    found = boxes(text, keep_unclosed=True)
    return found[-1] if found else None


def pass_at_k_biased(n, c, k):
    return 1 - (1 - c / n) ** k


def pass_at_k_floats(n, c, k):
    if k > n:
        raise ValueError(k)
    return 1 - float(math.comb(n - c, k)) / float(math.comb(n, k))


def pass_at_k_unchecked(n, c, k):
    return 1.0 - math.prod((n - c - i) / (n - i) for i in range(k))


def tau_zero_based(round_, rounds, tau_start, tau_train, anneal):
    if anneal == "none":
        return tau_start
    return tau_start + (tau_train - tau_start) * min(1.0, round_ / rounds / (2 / 3))


def tau_over_all_rounds(round_, rounds, tau_start, tau_train, anneal):
    if anneal == "none":
        return tau_start
    return tau_start + (tau_train - tau_start) * (round_ - 1) / rounds


def tau_unclamped(round_, rounds, tau_start, tau_train, anneal):
    if anneal == "none":
        return tau_start
    return tau_start + (tau_train - tau_start) * ((round_ - 1) / rounds) / (2 / 3)


def tau_whole_rounds(round_, rounds, tau_start, tau_train, anneal):
    if anneal == "none":
        return tau_start
    return tau_start + (tau_train - tau_start) * min(1.0, (round_ - 1) / int(2 * rounds / 3))


def tau_always_annealed(round_, rounds, tau_start, tau_train, anneal):
    return sm.tau_sample_at(round_, rounds, tau_start, tau_train, "paper")


def loss_with(model, rollouts, pad_id, tau_train, temperature=True, mask_by_id=False, score_prompt=False,
              no_shift=False, pad_between=False, per_row=False, as_float=False, as_sum=False, flat_logits=False):
    """A plain answer loss with one classic mistake switched on."""
    width = max(len(r["prompt_ids"]) for r in rollouts)
    rows, masks = [], []
    for r in rollouts:
        prompt = r["prompt_ids"] + [pad_id] * (width - len(r["prompt_ids"])) if pad_between else r["prompt_ids"]
        rows.append(prompt + r["answer_ids"])
        masks.append([0] * (len(prompt) if not score_prompt else 1) + [1] * (len(r["answer_ids"]) + score_prompt * (
            len(prompt) - 1)))
    length = max(len(r) for r in rows)
    input_ids = torch.tensor([r + [pad_id] * (length - len(r)) for r in rows])
    scored = torch.tensor([m + [0] * (length - len(m)) for m in masks]).bool()
    attention = torch.tensor([[1] * len(r) + [0] * (length - len(r)) for r in rows])
    if pad_between:
        attention = (input_ids != pad_id).long()
    if mask_by_id:
        scored &= input_ids != pad_id
    logits = model(input_ids=input_ids, attention_mask=attention).logits / (tau_train if temperature else 1.0)
    if flat_logits:  # a shape slip: (B * T, V) logits gathered with (B, T) ids
        logits = logits.reshape(-1, logits.shape[-1])
    if no_shift:
        logp, targets, scored = logits.log_softmax(-1), input_ids, scored
    else:
        logp, targets, scored = logits[:, :-1].log_softmax(-1), input_ids[:, 1:], scored[:, 1:]
    nll = -logp.gather(2, targets[..., None]).squeeze(2) * scored
    loss = (nll.sum(1) / scored.sum(1)).mean() if per_row else nll.sum() if as_sum else nll.sum() / scored.sum()
    return loss.item() if as_float else loss


def planted_loss(**mistake):
    return lambda model, rollouts, pad_id, tau_train: loss_with(model, rollouts, pad_id, tau_train, **mistake)


def round_with(model, tokenizer, prompts, optimizer, tau_sample, tau_train, max_new_tokens, coupled=False,
               loss_at_sample_tau=False, drop_half=False, no_zero_grad=False, as_tensor=False):
    """A plain SePT round with one classic mistake switched on."""
    rollouts = sm.rollout(model, tokenizer, prompts, tau_train if coupled else tau_sample, max_new_tokens)
    rollouts = rollouts[:len(rollouts) // 2] if drop_half else rollouts
    model.train()
    if not no_zero_grad:
        optimizer.zero_grad()
    nll, n = sm.sept_loss(model, rollouts, tokenizer.pad_token_id, tau_sample if loss_at_sample_tau else tau_train)
    loss = nll / n
    loss.backward()
    optimizer.step()
    return loss.detach() if as_tensor else loss.item()


def planted_round(**mistake):
    return lambda *args: round_with(*args, **mistake)


PLANTED = {
    "last_boxed: lazy regex": ("last_boxed", boxed_regex, "count the braces"),
    "last_boxed: first box": ("last_boxed", boxed_first, "LAST box"),
    "last_boxed: keeps an unclosed box": ("last_boxed", boxed_keeps_unclosed, "cut off inside its box"),
    "pass_at_k: biased estimator": ("pass_at_k", pass_at_k_biased, "biased"),
    "pass_at_k: binomials as floats": ("pass_at_k", pass_at_k_floats, "no float holds it"),
    "pass_at_k: k > n accepted": ("pass_at_k", pass_at_k_unchecked, "raise ValueError"),
    "tau_sample_at: rounds from 0": ("tau_sample_at", tau_zero_based, "rounds count from 1"),
    "tau_sample_at: anneals over all rounds": ("tau_sample_at", tau_over_all_rounds, "TWO THIRDS"),
    "tau_sample_at: rises past tau_train": ("tau_sample_at", tau_unclamped, "never above it"),
    "tau_sample_at: two thirds rounded to whole rounds": ("tau_sample_at", tau_whole_rounds, "not a whole number"),
    "tau_sample_at: ignores 'none'": ("tau_sample_at", tau_always_annealed, "'none' keeps"),
    "answer_loss: temperature missing": ("answer_loss", planted_loss(temperature=False), "temperature is missing"),
    "answer_loss: EOS masked out with pad": ("answer_loss", planted_loss(mask_by_id=True), "stop token must be scored"),
    "answer_loss: the sum, not the mean": ("answer_loss", planted_loss(as_sum=True), "MEAN of -log p"),
    "answer_loss: a shape error": ("answer_loss", planted_loss(flat_logits=True), "check the shapes at that line"),
    "answer_loss: prompt scored": ("answer_loss", planted_loss(score_prompt=True), "prompt is not scored"),
    "answer_loss: no shift": ("answer_loss", planted_loss(no_shift=True), "one position before it"),
    "answer_loss: right-padded prompts": ("answer_loss", planted_loss(pad_between=True), "never between prompt"),
    "answer_loss: mean per row": ("answer_loss", planted_loss(per_row=True), "not per row"),
    "answer_loss: .item()": ("answer_loss", planted_loss(as_float=True), "no .item()"),
    "sept_round: coupled temperatures": ("sept_round", planted_round(coupled=True), "coupled ablation"),
    "sept_round: loss at tau_sample": ("sept_round", planted_round(loss_at_sample_tau=True), "not by tau_sample"),
    "sept_round: samples filtered": ("sept_round", planted_round(drop_half=True), "nothing is graded, filtered"),
    "sept_round: no zero_grad": ("sept_round", planted_round(no_zero_grad=True), "zero_grad"),
    "sept_round: returns a tensor": ("sept_round", planted_round(as_tensor=True), "as a float"),
}


def test_the_plain_loss_of_the_planted_mistakes_is_right_with_none_switched_on():
    """The planted mistakes differ from the reference by their mistake alone."""
    tokenizer = check.toy_world.build_tokenizer()
    model = check.tiny_model(tokenizer)
    rollouts = [{"prompt_ids": tokenizer.encode("31+5-2:"), "answer_ids": tokenizer.encode("31+5=36;") + [0]},
                {"prompt_ids": tokenizer.encode("61-20+3-9+4:"), "answer_ids": tokenizer.encode("61-20=41;42")}]
    assert torch.allclose(loss_with(model, rollouts, 0, 0.7), check.reference_answer_loss(model, rollouts, 0, 0.7))


@pytest.mark.parametrize("planted", PLANTED)
def test_a_planted_classic_mistake_fails_with_the_hint_that_names_its_trap(planted):
    name, fn, trap = PLANTED[planted]
    passed, message = outcome(name, fn)
    assert not passed and "FAILED" in message and trap in message, message
