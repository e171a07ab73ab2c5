"""The toy world's data and its cache: the split never leaks, reference answers are right, and a partial or corrupt
cache is rebuilt, never used."""
import os
import random

import pytest

import toy_world


def test_train_and_heldout_questions_never_share_a_question():
    train = {q["question"] for q in toy_world.questions("train", 2000)}
    test = {q["question"] for q in toy_world.questions("test", 200)}
    assert len(train) == 2000 and len(test) == 200 and not train & test


def test_a_noise_free_solution_is_right_and_its_gold_is_the_last_sum():
    rng = random.Random(0)
    for _ in range(50):
        start, ops = toy_world.make_question(rng)
        text = toy_world.solution(start, ops)
        assert text.endswith(f"\\boxed{{{start + sum(ops)}}}")
        for step in text.split(";")[:-1]:
            lhs, rhs = step.split("=")
            assert eval(lhs) == int(rhs), step


def test_a_partial_or_corrupt_cache_is_rebuilt(tmp_path):
    path = toy_world.load_or_build(tmp_path, seed=0, steps=2, log=lambda *a: None)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(b"half a file")
    assert not toy_world.is_complete(path)
    built = []
    assert toy_world.load_or_build(tmp_path, seed=0, steps=2, log=built.append) == path
    assert toy_world.is_complete(path) and any("built" in line for line in built)
    assert [name for name in os.listdir(tmp_path) if ".tmp-" in name] == []  # no half-written folder left behind


@pytest.mark.slow
def test_greedy_errors_counts_what_the_scripts_own_greedy_rollout_and_grader_count(tmp_path):
    """The regime check against the plain reference: sept_mini's greedy rollout, graded by grading.py."""
    import grading
    import sept_mini as sm
    from plumbing import models
    path = toy_world.load_or_build(tmp_path, seed=0, steps=150, log=lambda *a: None)  # right on some, not all
    model, tokenizer = models.load_model(path, "full", "cpu")
    qs = toy_world.questions("train", 64, seed=0)
    answers = sm.rollout(model, tokenizer, [sm.build_prompt(tokenizer, q["question"], "system") for q in qs], 0.0, 48)
    reference = sum(not grading.grade(tokenizer.decode(a["answer_ids"], skip_special_tokens=True), q["answer"])
                    for a, q in zip(answers, qs))
    assert 0 < reference < 64  # a count that could be wrong both ways
    assert toy_world.greedy_errors(path, seed=0, n=64, batch_size=24) == reference
