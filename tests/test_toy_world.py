"""The toy world's data and its cache: the split never leaks, a partial cache is rebuilt, and a short build (a
notebook's fast setting, a test) never stands in for the default base model."""
import os
import random

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


def test_a_short_build_never_stands_in_for_the_default(tmp_path):
    assert toy_world.cache_path(tmp_path, 0, 100) != toy_world.cache_path(tmp_path, 0)
    assert toy_world.cache_path(tmp_path, 0, toy_world.PRETRAIN_STEPS) == toy_world.cache_path(tmp_path, 0)
    short = toy_world.load_or_build(tmp_path, seed=0, steps=2, log=lambda *a: None)
    assert short == toy_world.cache_path(tmp_path, 0, 2) and toy_world.is_complete(short)
    assert not os.path.exists(toy_world.cache_path(tmp_path, 0))  # the default would be built, not reused


def test_a_partial_or_corrupt_cache_is_rebuilt(tmp_path):
    path = toy_world.load_or_build(tmp_path, seed=0, steps=2, log=lambda *a: None)
    with open(os.path.join(path, "model.safetensors"), "wb") as f:
        f.write(b"half a file")
    assert not toy_world.is_complete(path)
    built = []
    assert toy_world.load_or_build(tmp_path, seed=0, steps=2, log=built.append) == path
    assert toy_world.is_complete(path) and any("built" in line for line in built)
    assert [name for name in os.listdir(tmp_path) if ".tmp-" in name] == []  # no half-written folder left behind
