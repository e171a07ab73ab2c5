"""The word-sum task for real models (plumbing/data.py): made here, deterministic, and split with no overlap."""
import re

from plumbing import data
import grading


def test_word_sums_are_deterministic_and_the_split_is_disjoint():
    train, heldout = data.word_sums("train", 4000), data.word_sums("test", 512)
    assert train == data.word_sums("train", 4000) and heldout[:256] == data.word_sums("test", 256)
    assert len({q["question"] for q in train}) == 4000 and len({q["question"] for q in heldout}) == 512
    assert not {q["question"] for q in train} & {q["question"] for q in heldout}
    assert data.load_questions("wordsum", "test", 300) == heldout[:300]  # what --eval-dataset wordsum reads
    assert data.load_benchmark("wordsum", None, 256) == heldout[:256]    # and eval_math --benchmark wordsum


def test_each_word_sum_answer_is_its_story_worked_out():
    gain, loss = "|".join(data.GAINS), "|".join(data.LOSSES)
    for q in data.word_sums("train", 500) + data.word_sums("test", 100):
        total = int(re.search(r"has (\d+) ", q["question"]).group(1))
        for verb, amount in re.findall(rf"({gain}|{loss}) (\d+)", q["question"]):
            total += int(amount) if verb in data.GAINS else -int(amount)
            assert total >= 1
        assert str(total) == q["answer"] and grading.grade(f"\\boxed{{{total}}}", q["answer"])
        assert len(re.findall(rf"(?:{gain}|{loss}) \d+", q["question"])) == 2
        assert q["demo"] == data.WORD_SUM_DEMO  # every question carries the task's one worked example


def test_the_worked_example_is_right_and_never_a_question():
    question, answer = data.WORD_SUM_DEMO
    assert grading.grade(answer, "75") and "40 + 12 = 52. 52 - 7 = 45. 45 + 30 = 75" in answer
    everything = data.word_sums("train", data.WORD_SUM_POOL + 64) + data.word_sums("test", 512)
    assert question not in {q["question"] for q in everything}


def test_the_probe_is_training_split_questions_outside_the_training_pool():
    probe = data.load_questions(data.WORD_SUM_PROBE, "test", 48)
    pool = {q["question"] for q in data.load_questions(data.WORD_SUMS, "train")}
    heldout = {q["question"] for q in data.word_sums("test", 512)}
    assert len(probe) == 48 and len(pool) == data.WORD_SUM_POOL
    assert not {q["question"] for q in probe} & (pool | heldout)
    assert probe == data.load_benchmark(data.WORD_SUM_PROBE, None, 48)
