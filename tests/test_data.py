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
        assert len(re.findall(rf"(?:{gain}|{loss}) \d+", q["question"])) == 3
