"""Checks for the SePT exercises: each exercise against the project's reference implementation, on cases built to
catch this field's classic mistakes. A failing case prints the trap it catches, as a hint.

    python notebooks/exercises/check.py --start              # your own file: exercises.py, copied from stubs.py
    python notebooks/exercises/check.py last_boxed           # one exercise (last_boxed, pass_at_k, tau_sample_at,
    python notebooks/exercises/check.py all                  #   answer_loss, sept_round), or all five
    python notebooks/exercises/check.py all --reference      # the reference passes every case
    python notebooks/exercises/check.py --grade alice.py bob.py   # a class: each student's file, scored out of 5
    python -m pytest notebooks/exercises                     # the same checks as tests (EXERCISES=FILE: another file)

Students write in notebooks/exercises/exercises.py, their own copy of stubs.py (git ignores it; the first check
makes it if --start did not), so the project's own tests never see a student's work. From a notebook in
notebooks/: `from exercises import check; check.run("pass_at_k")`. Each check takes a few seconds on a CPU (the loss
and the round use a tiny random model, built here).
"""
import argparse
import copy
import importlib.util
import math
import os
import shutil
import sys
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path[:0] = [p for p in (ROOT, HERE) if p not in sys.path]

import torch  # noqa: E402

import eval_math  # noqa: E402
import grading  # noqa: E402
import sept_mini as sm  # noqa: E402
import toy_world  # noqa: E402
from plumbing import console  # noqa: E402

NAMES = ("last_boxed", "pass_at_k", "tau_sample_at", "answer_loss", "sept_round")
STUBS = os.path.join(HERE, "stubs.py")          # the exercises as shipped: never written in
STUDENT_FILE = os.path.join(HERE, "exercises.py")  # a student's own copy (git ignores it)


def start(path=STUDENT_FILE, log=print):
    """Copy the stubs to the student's file, unless it exists (a student's work is never overwritten)."""
    if os.path.exists(path):
        log(f"{os.path.relpath(path)} exists already: write your functions there")
        return path
    with open(STUBS) as f:
        text = f.read().replace("the stubs. Do not write in this file: your own copy is notebooks/exercises/"
                                "exercises.py.", "your file, copied from stubs.py. Write each function here.", 1)
    with open(path, "w") as f:
        f.write(text)
    log(f"wrote {os.path.relpath(path)} (a copy of the stubs): write your functions there")
    return path


def load(path):
    """A student's exercises file as a module, loaded afresh (a notebook sees each edit)."""
    name = "exercises_" + str(abs(hash(os.path.abspath(path))))
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Failed(AssertionError):
    """A case the function got wrong; the message names the case and the trap it catches."""


def case(name, hint, passed):
    """One case: `passed` is a function returning True when the answer is right. A raise counts as wrong, except
    NotImplementedError, which means the exercise is not written yet. The message shows the line that raised; a
    shape error is a slip in the code, not one of the traps, so it gets a hint about shapes instead of the case's."""
    try:
        ok = passed()
    except NotImplementedError:
        raise
    except Exception as e:
        frames = [f for f in traceback.extract_tb(e.__traceback__) if f.filename != __file__
                  and "site-packages" not in f.filename and os.sep + "torch" + os.sep not in f.filename]
        where = f"\n  at {os.path.basename(frames[-1].filename)} line {frames[-1].lineno}: {frames[-1].line}" \
            if frames else ""
        shapes = isinstance(e, (RuntimeError, IndexError, ValueError)) and any(
            word in str(e) for word in ("size", "shape", "dimension", "Dimension", "index"))
        if shapes:
            hint = ("a shape error in the code, not one of this field's traps: check the shapes at that line (logits "
                    "are (B, T, V), ids and masks (B, T)) and run it by hand on the case")
        raise Failed(f"case '{name}' raised {type(e).__name__}: {e}{where}\n  hint: {hint}") from None
    if not ok:
        raise Failed(f"case '{name}' is wrong\n  hint: {hint}")


def raises(exception, fn, *args):
    try:
        fn(*args)
    except exception:
        return True
    return False


# -----------------------------------------------------------------------------
# the reference implementations: the project's own functions, with the exercises' signatures

def reference_last_boxed(text):
    return grading.extract_answer(text)


def reference_answer_loss(model, rollouts, pad_id, tau_train):
    nll, n = sm.sept_loss(model, rollouts, pad_id, tau_train, "naive")
    return nll / n


def reference_sept_round(model, tokenizer, prompts, optimizer, tau_sample, tau_train, max_new_tokens):
    rollouts = sm.rollout(model, tokenizer, prompts, tau_sample, max_new_tokens)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    loss = reference_answer_loss(model, rollouts, tokenizer.pad_token_id, tau_train)
    loss.backward()
    optimizer.step()
    return loss.item()


REFERENCE = {"last_boxed": reference_last_boxed, "pass_at_k": eval_math.pass_at_k,
             "tau_sample_at": sm.tau_sample_at, "answer_loss": reference_answer_loss,
             "sept_round": reference_sept_round}


# -----------------------------------------------------------------------------
# the checks, easiest case first: the first wrong case is the one reported

def check_last_boxed(fn):
    ref = REFERENCE["last_boxed"]
    same = lambda text: (lambda: fn(text) == ref(text))  # noqa: E731
    case("one box", "return the text between the braces of \\boxed{...}, without the braces",
         same(r"Adding them up gives \boxed{42}."))
    case("nested braces", "count the braces: \\boxed{\\frac{1}{2}} closes at the brace that brings the depth back to "
         "0; a regex like \\\\boxed\\{(.*?)\\} stops at the first '}' and (.*) at the last one of the text",
         same(r"so $x = \boxed{\frac{1}{2}}$, and {y} is free"))
    case("two boxes", "take the LAST box: a model that corrects itself boxes twice, and the first box is the "
         "guess it threw away", same(r"First \boxed{3}. Wait, I dropped a sign: the total is \boxed{-4}."))
    case("no box", "no box means no answer: return None", lambda: fn("I think it is 7.") is None)
    case("cut off inside its box", "a response cut off inside its box (no closing brace) has no answer: return "
         "None", lambda: fn(r"We get \boxed{\frac{3}{4") is None)


def check_pass_at_k(fn):
    ref = REFERENCE["pass_at_k"]
    close = lambda n, c, k: (lambda: math.isclose(fn(n, c, k), ref(n, c, k), rel_tol=1e-9, abs_tol=1e-12))  # noqa
    case("pass@1", "pass@1 is the fraction of correct samples, c / n", close(10, 3, 1))
    case("pass@4 from 10 samples", "1 - (1 - c/n)^k is biased (it treats the n samples as drawn with replacement): "
         "use 1 - C(n-c, k) / C(n, k), the chance that k of the n samples, drawn without replacement, include a "
         "correct one", close(10, 3, 4))
    case("fewer than k wrong samples", "when n - c < k every set of k samples holds a correct one: pass@k is 1 "
         "(C(n-c, k) is 0)", close(10, 8, 4))
    case("2000 samples", "C(2000, 1000) has 600 digits and no float holds it: write the ratio C(n-c, k) / C(n, k) as "
         "a product of (n-c-i) / (n-i) for i < k", close(2000, 1000, 1000))
    case("k > n", "pass@k from fewer than k samples is not defined: raise ValueError", lambda: raises(ValueError, fn,
                                                                                                     4, 1, 8))


def check_tau_sample_at(fn):
    ref = REFERENCE["tau_sample_at"]
    same = lambda *a: (lambda: math.isclose(fn(*a), ref(*a), abs_tol=1e-9))  # noqa: E731
    case("no anneal", "anneal 'none' keeps tau_sample at its start value in every round",
         lambda: all(same(r, 30, 0.6, 1.0, "none")() for r in (1, 15, 30)))
    case("round 1", "rounds count from 1: round 1 samples at tau_start exactly", same(1, 30, 0.6, 1.0, "paper"))
    case("a third of the way", "the paper anneals linearly over the first TWO THIRDS of the rounds: after 10 of 30 "
         "rounds (round 11) tau_sample is half way from tau_start to tau_train", same(11, 30, 0.6, 1.0, "paper"))
    case("after two thirds", "once two thirds of the rounds are done tau_sample stays at tau_train (coupled), and is "
         "never above it", lambda: all(same(r, 30, 0.6, 1.0, "paper")() for r in (21, 25, 30)))
    case("100 rounds", "two thirds of 100 rounds is 66.7, not a whole number of rounds: compare the fraction of "
         "rounds done with 2/3, do not round 2 * rounds / 3", lambda: all(same(r, 100, 0.6, 1.0, "paper")()
                                                                          for r in range(1, 101)))


def value(x):
    return x.detach().item() if torch.is_tensor(x) else float(x)


def tiny_model(tokenizer, seed=0):
    """A random 2-layer Qwen2 over the toy tokenizer (pad == EOS, as in Qwen base models): built in milliseconds."""
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=64, max_position_embeddings=128,
                         eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    return Qwen2ForCausalLM(config).eval()


def check_answer_loss(fn):
    tokenizer = toy_world.build_tokenizer()
    model, pad = tiny_model(tokenizer), tokenizer.pad_token_id
    ids = lambda text: tokenizer.encode(text)  # noqa: E731

    def same(rollouts, tau):
        return lambda: math.isclose(value(fn(model, rollouts, pad, tau)), value(REFERENCE["answer_loss"](
            model, rollouts, pad, tau)), rel_tol=1e-4)
    one = [{"prompt_ids": ids("31+5-2:"), "answer_ids": ids("31+5=36;36-2=34;")}]  # cut off: no stop token
    n_answer = len(one[0]["answer_ids"])
    case("a mean, not a sum", "return the MEAN of -log p over the answer tokens (divide the sum by their number, "
         f"{n_answer} here): a sum grows with the answer's length", lambda: not math.isclose(
             value(fn(model, one, pad, 1.0)), n_answer * value(REFERENCE["answer_loss"](model, one, pad, 1.0)),
             rel_tol=1e-3))
    case("one answer", "score the answer tokens only, each by the logits one position before it (logits[:, t] "
         "predict token t+1): the prompt is not scored", same(one, 1.0))
    case("training temperature", "the temperature is missing: divide the logits by tau_train before the "
         "log-softmax (here tau_train = 0.5)", same(one, 0.5))
    stops = [{"prompt_ids": ids("31+5-2:"), "answer_ids": ids("31+5=36;36-2=34;\\boxed{34}") + [pad]}]
    case("answer ends with EOS, and pad == EOS", "the stop token must be scored: when pad == EOS (Qwen base models) "
         "a mask built from input_ids != pad_id drops it, and the model never learns to stop. Mark the answer by "
         "its position, not by token id", same(stops, 1.0))
    rows = [{"prompt_ids": ids("31+5-2:"), "answer_ids": ids("31+5=36;36-2=34;\\boxed{34}") + [pad]},
            {"prompt_ids": ids("61-20+3-9+4:"), "answer_ids": ids("61-20=41;") + [pad]}]
    case("two rows of different lengths", "each row must read prompt then answer with nothing between them (pad at "
         "the end of the row, never between prompt and answer as right-padded prompts would), leave the padding "
         "out of the loss, and take the mean over all answer tokens of the batch, not per row", same(rows, 0.7))
    case("trainable", "return a torch scalar computed from the model's logits (no .item(), no torch.no_grad()), so "
         "that backward() reaches the weights", lambda: fn(model, rows, pad, 1.0).requires_grad)


def check_sept_round(fn):
    tokenizer = toy_world.build_tokenizer()
    prompts = [sm.build_prompt(tokenizer, q["question"], "system") for q in toy_world.questions("train", 6)]
    tau_sample, tau_train, new_tokens = 0.5, 1.0, 12
    base = tiny_model(tokenizer, seed=1)
    calls = {"rollout": [], "sept_loss": []}
    rollout, sept_loss = sm.rollout, sm.sept_loss

    def spy_rollout(model, tok, prompts_, tau, *args, **kwargs):
        out = rollout(model, tok, prompts_, tau, *args, **kwargs)
        calls["rollout"].append((tau, len(prompts_), [r["answer_ids"] for r in out]))
        return out

    def spy_loss(model, rollouts, pad_id, tau, *args, **kwargs):
        calls["sept_loss"].append((tau, [r["answer_ids"] for r in rollouts]))
        return sept_loss(model, rollouts, pad_id, tau, *args, **kwargs)

    def two_rounds(round_fn, spy=False):
        model = copy.deepcopy(base)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.5)  # plain SGD: the weights show the gradient
        torch.manual_seed(0)
        if spy:
            sm.rollout, sm.sept_loss = spy_rollout, spy_loss
        try:
            losses = [round_fn(model, tokenizer, prompts, optimizer, tau_sample, tau_train, new_tokens)
                      for _ in range(2)]
        finally:
            sm.rollout, sm.sept_loss = rollout, sept_loss
        return model, losses

    def same_weights(a, b):
        return all(torch.allclose(p, q, atol=1e-5) for p, q in zip(a.parameters(), b.parameters()))

    expected, expected_losses = two_rounds(REFERENCE["sept_round"])
    got, losses = two_rounds(fn, spy=True)
    sampled = calls["rollout"]
    case("samples with sm.rollout", "sample the round's answers with sm.rollout (it puts the model in eval mode, "
         "so dropout is off, and pads prompts on the left)", lambda: len(sampled) == 2)
    case("sampling temperature", f"sample at tau_sample ({tau_sample} here), one answer per prompt: sampling at "
         "tau_train is the coupled ablation, which cannot sharpen the model",
         lambda: all(tau == tau_sample and n == len(prompts) for tau, n, _ in sampled))
    trained = calls["sept_loss"]
    if trained:  # the loss went through sm.sept_loss: what it was given shows the trap directly
        case("training temperature", f"the loss divides the logits by tau_train ({tau_train} here), not by "
             "tau_sample", lambda: all(tau == tau_train for tau, _ in trained))
        case("every sample, ungraded", "train on ALL of the round's own samples: SePT has no reward and no verifier, "
             "so nothing is graded, filtered or dropped", lambda: sorted(a for _, answers in trained for a in answers)
             == sorted(a for _, _, answers in sampled for a in answers))
    case("one update per round", "each round: optimizer.zero_grad() first (gradients add up across rounds "
         "otherwise), the token-mean loss over every answer token, backward(), one optimizer.step()",
         lambda: same_weights(got, expected))
    case("returns the loss", "return the round's loss as a float (loss.item())",
         lambda: all(isinstance(x, float) and math.isclose(x, y, rel_tol=1e-4) for x, y in zip(losses,
                                                                                              expected_losses)))


CHECKS = {"last_boxed": check_last_boxed, "pass_at_k": check_pass_at_k, "tau_sample_at": check_tau_sample_at,
          "answer_loss": check_answer_loss, "sept_round": check_sept_round}


def run(name, fn=None, reference=False, log=print, path=None):
    """Check one exercise (the function `name` from the student's file, or from `path`, or `fn`): True when every
    case passes. Prints one line when it passes, or the failing case and its hint."""
    console.quiet_libraries()
    if fn is None and reference:
        fn = REFERENCE[name]
    elif fn is None:
        fn = getattr(load(path or (STUDENT_FILE if os.path.exists(STUDENT_FILE) else start(log=log))), name)
    try:
        CHECKS[name](fn)
    except NotImplementedError:
        log(f"{name}: not written yet (it still raises NotImplementedError)")
        return False
    except Failed as e:
        log(f"{name}: FAILED {e}")
        return False
    log(f"{name}: every case passes")
    return True


def grade(paths, log=print):
    """Each file scored out of 5, one line each: {path: number of exercises whose every case passes}."""
    scores = {}
    for path in paths:
        lines = []
        passed = [name for name in NAMES if run(name, path=path, log=lines.append)]
        scores[path] = len(passed)
        log(f"{path}: {len(passed)}/{len(NAMES)}" + (f" ({', '.join(passed)})" if passed else ""))
    return scores


def main(argv=None):
    p = argparse.ArgumentParser(description="Check the SePT exercises in notebooks/exercises/exercises.py (your copy "
                                "of stubs.py).")
    p.add_argument("name", nargs="?", choices=[*NAMES, "all"], help="the exercise to check, or all")
    p.add_argument("--reference", action="store_true", help="check the project's reference implementations instead")
    p.add_argument("--file", default=None, help="check this file instead of notebooks/exercises/exercises.py")
    p.add_argument("--start", action="store_true", help="copy the stubs to notebooks/exercises/exercises.py (never "
                   "over an existing file)")
    p.add_argument("--grade", nargs="+", metavar="FILE", help="score each file out of 5 (a class's work)")
    args = p.parse_args(argv)
    if args.start:
        start()
        return 0
    if args.grade:
        scores = grade(args.grade)
        return 0 if all(score == len(NAMES) for score in scores.values()) else 1
    if not args.name:
        p.error("name an exercise (or all), or pass --start or --grade")
    results = [run(name, reference=args.reference, path=args.file)
               for name in (NAMES if args.name == "all" else [args.name])]
    return 0 if all(results) else 1


if __name__ == "__main__":
    sys.exit(main())
