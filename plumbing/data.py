"""Questions: from 'toy' (the embedded toy world), 'wordsum' (word problems made here, for real models), a local
.parquet/.jsonl/.json/.csv file (plain columns or verl format), or a hub dataset id; and which of them each round
takes. Every failure is one line."""
import hashlib
import json
import os
import random

from plumbing import UsageError

HUB_QUESTIONS = "agentica-org/DeepScaleR-Preview-Dataset"  # the paper's question pool (problem, answer)
HUB_EVAL = "HuggingFaceH4/MATH-500"
BENCHMARKS = {  # name -> (hub id, split, local file names tried under --data-dir)
    "math500": ("HuggingFaceH4/MATH-500", "test", ["math500"]),
    "amc23": ("math-ai/amc23", "test", ["amc23"]),
    "aime24": ("HuggingFaceH4/aime_2024", "train", ["aime24", "aime"]),
    "aime25": ("math-ai/aime25", "test", ["aime25"]),
    "minerva": ("math-ai/minervamath", "test", ["minerva", "minervamath"]),
    "olympiadbench": ("math-ai/olympiadbench", "test", ["olympiadbench"]),
}
QUESTION_COLUMNS = ("problem", "question", "prompt", "query", "input")
ANSWER_COLUMNS = ("answer", "final_answer", "ground_truth", "reward_model", "solution")  # first found wins


def training_pool(args):
    """A run's question pool: --dataset's train split, which must carry answers when the run's objective grades its
    samples (--objective grpo); SePT and EM-FT read questions only."""
    return load_questions(args.dataset, "train", seed=args.seed, need_answers=args.objective == "grpo")


def load_questions(spec, split="train", limit=None, seed=0, need_answers=False):
    """Questions as dicts {id, question, answer}; answer is None when the dataset has none, which `need_answers`
    (a reward from the grader: --objective grpo) refuses."""
    if spec == "toy":
        import toy_world
        return toy_world.questions("test" if split == "test" else "train", limit or 20000, seed)
    if spec == WORD_SUMS:
        return word_sums("test" if split == "test" else "train", limit or (512 if split == "test" else WORD_SUM_POOL))
    if spec == WORD_SUM_PROBE:  # training-split questions past the pool: for tuning, never trained on, never held out
        return word_sums("train", WORD_SUM_POOL + (limit or 64))[WORD_SUM_POOL:]
    rows = read_rows(spec, split)
    if not rows:
        raise UsageError(f"dataset '{spec}' is empty (no rows): pass a file with questions")
    columns = list(rows[0])
    qcol = next((c for c in QUESTION_COLUMNS if c in columns), None)
    acol = next((c for c in ANSWER_COLUMNS if c in columns), None)
    if qcol is None:
        raise UsageError(f"dataset '{spec}' has no question column (looked for {', '.join(QUESTION_COLUMNS)}; "
                         f"it has {', '.join(columns)})")
    out = []
    for i, row in enumerate(rows):
        q, a = row.get(qcol), row.get(acol) if acol else None
        if isinstance(q, list):  # verl: a list of chat messages; the question is the last user turn
            q = [m["content"] for m in q if isinstance(m, dict) and m.get("role") == "user"][-1:] or [None]
            q = q[0]
        if isinstance(a, dict):  # verl: reward_model = {ground_truth, style}
            a = a.get("ground_truth")
        if isinstance(a, list):  # OlympiadBench: several final answers
            a = ", ".join(map(str, a))
        if acol == "solution" and a is not None:  # a worked solution: its boxed answer is the gold
            import grading
            a = grading.extract_answer(a) or a
        if not isinstance(q, str) or not q.strip():
            raise UsageError(f"dataset '{spec}', row {i + 1}: the question ('{qcol}') is missing or empty: "
                             "fix or drop that row")
        if need_answers and (a is None or not str(a).strip()):
            where = "has no answer column" if acol is None else f"row {i + 1}: the answer ('{acol}') is empty"
            raise UsageError(f"dataset '{spec}' {where}, and --objective grpo rewards answers that match it: pass a "
                             f"dataset with answers (a column among {', '.join(ANSWER_COLUMNS)}), or use --objective "
                             "sept or emft")
        out.append({"id": str(row.get("id", i)), "question": q, "answer": None if a is None else str(a)})
    return out[:limit] if limit else out


# -----------------------------------------------------------------------------
# a short-answer task for real models, made here (no download): word problems of 2 steps of + and -, each shown
# with one worked example (a one-shot prompt): asked only to reason step by step, a 0.5B instruct model writes
# ~180-token solutions; with the example it answers in ~35 tokens (the screen is in docs/real-models.md)

WORD_SUMS, WORD_SUM_PROBE, WORD_SUM_POOL = "wordsum", "wordsum-probe", 8192
NAMES = ("Ana", "Ben", "Chen", "Dara", "Eli", "Farah", "Gus", "Hana", "Ivo", "Jun", "Kemal", "Lena", "Mateo", "Nia")
ITEMS = ("apples", "books", "marbles", "coins", "stamps", "pencils", "shells", "stickers", "cards", "beads")
GAINS = ("buys", "finds", "is given", "receives", "wins")
LOSSES = ("gives away", "sells", "loses", "uses", "trades away")
WORD_SUM_DEMO = ("Ivo has 40 shells. Ivo finds 12, then sells 7, then wins 30. How many shells does Ivo have now?",
                 "40 + 12 = 52. 52 - 7 = 45. 45 + 30 = 75. The answer is \\boxed{75}.")  # 3 steps: never a question


def word_sum(rng, steps=2):
    """One word problem and its answer: a name, a count of some item, then `steps` gains or losses."""
    name, item = rng.choice(NAMES), rng.choice(ITEMS)
    total = start = rng.randint(20, 99)
    events = []
    for _ in range(steps):
        amount = rng.randint(2, 49)
        gain = total - amount < 1 or rng.random() < 0.5  # never down to nothing
        total += amount if gain else -amount
        events.append(f"{rng.choice(GAINS if gain else LOSSES)} {amount}")
    text = (f"{name} has {start} {item}. {name} {events[0]}, then " + ", then ".join(events[1:]) +
            f". How many {item} does {name} have now?")
    return text, str(total)


def word_sums(split, n, seed=0):
    """n distinct word problems of one split, deterministic: the held-out split ('test') is the questions whose hash
    is 0 mod 4, so training and held-out questions never meet, whatever n or the order."""
    rng, out, seen = random.Random(f"wordsum-{seed}"), [], set()
    while len(out) < n:
        text, answer = word_sum(rng)
        heldout = int(hashlib.sha1(text.encode()).hexdigest(), 16) % 4 == 0
        if text not in seen and heldout == (split == "test"):
            seen.add(text)
            out.append({"id": f"wordsum-{split}-{len(out)}", "question": text, "answer": answer,
                        "demo": WORD_SUM_DEMO})
    return out


def read_rows(spec, split):
    """The rows of a local file or a hub dataset, as a list of dicts."""
    ext = os.path.splitext(spec)[1].lower()
    not_found = f"dataset file not found: {spec} (pass an existing .parquet/.jsonl file, 'toy', or a hub id)"
    if ext == ".jsonl":  # read by hand: a bad line gets its line number
        if not os.path.isfile(spec):
            raise UsageError(not_found)
        rows = []
        with open(spec, encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rows.append(json.loads(line))
                    except json.JSONDecodeError:
                        raise UsageError(f"dataset file {spec}, line {n}: not valid JSON "
                                         "(one JSON object per line expected)") from None
                    if not isinstance(rows[-1], dict):
                        raise UsageError(f"dataset file {spec}, line {n}: a JSON object with a question field expected")
        return rows
    if ext in (".parquet", ".json", ".csv"):
        if not os.path.isfile(spec):
            raise UsageError(not_found)
        if os.path.getsize(spec) == 0:
            raise UsageError(f"dataset file {spec} is empty (0 bytes): pass a file with questions")
        try:
            if ext == ".parquet":
                import pyarrow.parquet
                return pyarrow.parquet.read_table(spec).to_pylist()
            with open(spec, encoding="utf-8") as f:
                if ext == ".csv":
                    import csv
                    return list(csv.DictReader(f))
                rows = json.load(f)  # .json: a list of objects
                assert isinstance(rows, list) and all(isinstance(r, dict) for r in rows), "a list of objects expected"
                return rows
        except Exception as e:
            raise UsageError(f"could not read {spec} as {ext[1:]} ({type(e).__name__}): "
                             "check that the file is complete") from None
    if os.path.exists(spec) or spec.startswith((".", "/", "~")):
        raise UsageError(f"dataset '{spec}' is not a .parquet/.jsonl/.json/.csv file")
    check_hub_reachable(spec, "dataset", "a local .parquet or .jsonl file")
    import datasets
    datasets.disable_progress_bars()
    try:
        return datasets.load_dataset(spec, split=split).to_list()
    except Exception as e:
        raise UsageError(f"could not load dataset '{spec}' from the hub ({type(e).__name__}: unknown id or split "
                         f"'{split}'?): pass a local .parquet or .jsonl file") from None


def check_hub_reachable(repo_id, kind, instead):
    """Fail in a second, not after half a minute of retries, when the hub cannot be reached.
    A model or dataset already in the local hub cache needs no network."""
    import socket
    from urllib.parse import urlparse

    import huggingface_hub
    from huggingface_hub import constants
    repo_type = "dataset" if kind == "dataset" else "model"
    if huggingface_hub.try_to_load_from_cache(repo_id, "config.json" if kind == "model" else "README.md",
                                             repo_type=repo_type) is not None or constants.HF_HUB_OFFLINE:
        return  # cached (transformers/datasets will find it), or offline mode: the libraries answer at once
    host = urlparse(constants.ENDPOINT).hostname
    try:
        socket.getaddrinfo(host, 443)
    except OSError:
        raise UsageError(f"cannot reach {host} to fetch {kind} '{repo_id}' (no internet?): pass {instead}") from None


def load_heldout(spec, size, seed):
    """The held-out questions of the in-loop evaluation: they must have answers."""
    heldout = load_questions(spec, "test", size, seed=seed)
    if any(q["answer"] is None for q in heldout):
        raise UsageError(f"eval dataset '{spec}' has no answer column: pass one with answers, or --eval-every 0")
    return heldout


def round_questions(pool, round_, per_round, seed):
    """Round `round_`'s questions (1-based): consecutive slices of a seeded shuffle of the pool, epoch after
    epoch, so every question is seen once per epoch. Under torchrun each rank takes rank_share() of them."""
    picked, orders = [], {}
    for k in range((round_ - 1) * per_round, round_ * per_round):
        epoch, i = divmod(k, len(pool))
        if epoch not in orders:
            orders[epoch] = random.Random(seed * 1000 + epoch).sample(range(len(pool)), len(pool))
        picked.append(pool[orders[epoch][i]])
    return picked


TOY_TRAIN = "toy-train"  # the toy's training questions, as a benchmark: to choose a temperature without the held-out


def load_benchmark(name, data_dir, limit, seed=0):
    """A benchmark by name (local file under data_dir first, else the hub), 'toy', 'toy-train', or a file path."""
    if name in ("toy", WORD_SUMS, WORD_SUM_PROBE):
        return load_questions(name, "test", limit or 500, seed)
    if name == TOY_TRAIN:
        return load_questions("toy", "train", limit or 500, seed)
    if name in BENCHMARKS:
        hub_id, split, files = BENCHMARKS[name]
        for stem in files if data_dir else []:
            for ext in (".parquet", ".jsonl"):
                if os.path.isfile(os.path.join(data_dir, stem + ext)):
                    return load_questions(os.path.join(data_dir, stem + ext), limit=limit)
        return load_questions(hub_id, split, limit)
    if os.path.splitext(name)[1] in (".parquet", ".jsonl", ".json"):
        return load_questions(name, limit=limit)
    raise UsageError(f"unknown benchmark '{name}': use one of {', '.join(['toy', TOY_TRAIN, *BENCHMARKS])}, 'all', or a "
                     ".parquet/.jsonl path")
