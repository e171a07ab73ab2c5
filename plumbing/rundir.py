"""The run directory (--out): config.json, metrics.jsonl, samples.jsonl, the two newest checkpoints and final/.

Checkpoints are written atomically (a temporary file, fsynced, then renamed), the newest two kept, and each
carries the metrics rows so far: no kill at any moment and no single bad file loses the run, and --resume
continues it exactly. Under torchrun every rank restores the checkpoint; rank 0 alone writes.
"""
import json
import os
import random
import shutil
import sys
import time

import torch

import grading
from plumbing import UsageError
from plumbing.distributed import ddp_rank, global_sum
from plumbing.memory import peak_rss_gb
from plumbing.models import load_model, resolve_model_path, trainable_state

CHECKPOINTS = ("ckpt.pt", "ckpt.prev.pt")  # newest first
CHECKPOINT_EVERY_S = 60  # a real model's round takes minutes: none of them is lost to a kill (see save_if_due)
PLATEAU_SIGNAL = "agreement"  # --warn-plateau's signal: the share of tau-1 samples that give the greedy answer
PLATEAU_MARGIN = 0.05  # a new best must add 5% to the signal's move so far: creeping towards a limit is a plateau


class RoundStats:
    """A round's numbers besides the algorithm's own, over every rank: answer length, truncation, sampling and
    training speed, seconds, peak memory. sampled() after sampling, trained() after the update, then row()."""

    def __init__(self, args):
        self.args, self.t0 = args, time.time()

    def sampled(self, rollouts):
        self.answer_tokens, self.n_rollouts, self.n_truncated, self.entropy_sum, self.n_boxed = global_sum(
            sum(len(r["answer_ids"]) for r in rollouts), len(rollouts), sum(r["truncated"] for r in rollouts),
            sum(r["entropy"] * len(r["answer_ids"]) for r in rollouts), sum(grading.boxed(r["text"]) for r in rollouts))
        self.t1 = time.time()  # after the sums above, which wait for every rank: the round's sampling wall time

    def trained(self, n_tokens):
        self.n_tokens, self.t2 = n_tokens, time.time()

    def row(self):
        row = {"answer_len": self.answer_tokens / self.n_rollouts, "truncated": self.n_truncated / self.n_rollouts,
               # label-free signals of how sure the model has become: its entropy per answer token, boxed answers
               "entropy": self.entropy_sum / max(self.answer_tokens, 1), "boxed": self.n_boxed / self.n_rollouts,
               "gen_tokens_per_s": None if self.args.offline else self.answer_tokens / max(self.t1 - self.t0, 1e-9),
               "train_tokens_per_s": self.n_tokens / max(self.t2 - self.t1, 1e-9), "round_s": self.t2 - self.t0,
               "peak_rss_gb": peak_rss_gb()}  # this process's, so far: the plan's estimate is checked here
        if self.args.device == "cuda":
            row["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2 ** 30  # rank 0's, under torchrun
        return row


class TokenEntropy:
    """A logits processor for generate (any callable of (input_ids, scores) is one; transformers is not imported at
    start-up) that changes nothing and records each step's entropy (nats) of every row's next-token distribution at
    tau 1: generate runs custom processors before its temperature. by_row(): (B, steps)."""

    def __init__(self):
        self.steps = []

    def __call__(self, input_ids, scores):  # scores: (B, V)
        # softmax x log_softmax (not exp or log): the kernels the toy's pinned float path already uses
        p_log_p = torch.softmax(scores.float(), -1) * torch.log_softmax(scores.float(), -1)
        self.steps.append(-p_log_p.nan_to_num(0.0).sum(-1).cpu())  # 0 x log 0 = 0 where a token is banned
        return scores

    def by_row(self):
        return torch.stack(self.steps, 1)


class RunDir:
    """One run's folder: resume from it, then log rows and samples, save checkpoints, and finish."""

    def __init__(self, args, model_path, world):
        self.args, self.out, self.model_path, self.world = args, args.out, model_path, world
        self.main_rank = ddp_rank() == 0  # writes the run directory; every rank samples and trains its share
        self.metrics_path = os.path.join(self.out, "metrics.jsonl")
        self.samples_path = os.path.join(self.out, "samples.jsonl")
        self.start, self.last_saved, self.rows, self.offline_data = 0, 0, [], None
        self.plan, self.scaler_state = None, None  # set by open() and by resume()
        self.last_save_time = time.time()

    def resume(self, model, optimizer, scheduler):
        """With --resume, restore the newest usable checkpoint into model, optimizer and scheduler. Returns False
        when the run has already done all its rounds (nothing to do, nothing written)."""
        if not self.args.resume:
            return True
        state = load_checkpoint(self.out, model, optimizer, scheduler)
        if state is None:
            if self.main_rank:
                print(f"{self.out} has no checkpoint yet (killed before its first): starting it again from round 0",
                      file=sys.stderr)
            return True
        start, rounds = state["round"], self.args.rounds
        self.start = self.last_saved = start
        self.rows, self.offline_data = state["rows"], state["offline_data"]
        self.scaler_state = state.get("scaler")  # fp16's loss scale, restored into the plan by open()
        if isinstance(self.offline_data, dict):  # saved before runs could have several processes
            self.offline_data = [self.offline_data]
        if rounds < start:
            raise UsageError(f"--rounds {rounds} is below the {start} rounds this run has done: pass a larger --rounds")
        if rounds == start:
            if self.main_rank:
                print(f"{self.out} already finished its {start} rounds: add --rounds N (more than {start}) to "
                      "extend it")
            return False
        if self.offline_data is not None and len(self.offline_data) != self.world:
            raise UsageError(f"--resume: this --offline run was sampled by {len(self.offline_data)} processes: resume "
                             "it with as many")
        if self.main_rank:
            print(f"resumed {self.out} after round {start}" + (f", now running to round {rounds}" if start else ""))
        return True

    def open(self, plan):
        """Write config.json (the settings, with the plan's values), and metrics and samples as of the checkpoint:
        the rows of a killed round are redone."""
        self.plan = plan
        if self.scaler_state and plan.scaler.is_enabled():
            plan.scaler.load_state_dict(self.scaler_state)
        if not self.main_rank:
            return
        if self.args.overwrite and os.path.isdir(self.out):
            for name in ("config.json", "metrics.jsonl", "samples.jsonl", "final", *CHECKPOINTS):
                path = os.path.join(self.out, name)
                shutil.rmtree(path) if os.path.isdir(path) else os.path.exists(path) and os.remove(path)
        os.makedirs(self.out, exist_ok=True)
        config = {"args": {**vars(self.args), **plan.as_flags()}, "model_path": self.model_path,
                  "processes": self.world}
        write_atomic(os.path.join(self.out, "config.json"), json.dumps(config, indent=1))
        write_atomic(self.metrics_path, "".join(json.dumps(r) + "\n" for r in self.rows))
        samples = read_jsonl_rows(self.samples_path, self.start)
        write_atomic(self.samples_path, "".join(json.dumps(r) + "\n" for r in samples))

    def log(self, row):
        if self.args.warn_plateau:  # plateau_warning marks only the row where the turn is first seen, resumed or not
            row.update(plateau_warning(self.rows + [row], self.args.warn_plateau, self.main_rank))
        self.rows.append(row)
        if self.main_rank:
            with open(self.metrics_path, "a") as f:
                f.write(json.dumps(row) + "\n")

    def log_samples(self, round_, rollouts, tokenizer):
        """A few raw samples of each round, special tokens included: is the template right?"""
        if self.main_rank:
            with open(self.samples_path, "a") as f:
                for r in rollouts:
                    f.write(json.dumps({"round": round_, "prompt": tokenizer.decode(r["prompt_ids"]),
                                        "answer": tokenizer.decode(r["answer_ids"]), "truncated": r["truncated"]})
                            + "\n")

    def save_if_due(self, round_, model, optimizer, scheduler):
        """A checkpoint every --save-every rounds, after the last round, and after any round that ends a minute or
        more after the last checkpoint: with a real model on a CPU no finished round is lost to a kill."""
        due = round_ % self.args.save_every == 0 or round_ == self.args.rounds
        if self.main_rank and (due or time.time() - self.last_save_time >= CHECKPOINT_EVERY_S):
            save_checkpoint(self.out, model, optimizer, scheduler, round_, self.offline_data, self.rows,
                            self.plan.scaler.state_dict())
            self.last_saved, self.last_save_time = round_, time.time()

    def finish(self, model, tokenizer):
        """Save the final model (or adapter) and print the before/after table (rank 0)."""
        if not self.main_rank:
            return
        final = os.path.join(self.out, "final")
        model.save_pretrained(final)
        tokenizer.save_pretrained(final)
        evals = [r for r in self.rows if "pass@1" in r]
        if len(evals) >= 2:
            first, last = evals[0], evals[-1]
            print(f"\n{'held-out':<22}{'round ' + str(first['round']):>10}{'round ' + str(last['round']):>10}"
                  f"{'change':>9}")
            for key, name in (("pass@1", "pass@1 (tau=1)"), ("greedy", "greedy accuracy")):
                print(f"{name:<22}{100 * first[key]:>10.1f}{100 * last[key]:>10.1f}"
                      f"{100 * (last[key] - first[key]):>+9.1f}")
        print(f"\nsaved {final} ({'adapter' if self.args.finetune != 'full' else 'model'}); "
              f"metrics in {self.metrics_path}")


def turn(points, direction, patience, margin=0.0):
    """(round of the best point, round at which it is known) for a stream of (round, value) that stopped moving its
    way (direction +1: up, -1: down), or None while it still moves. A point is a new best when it beats the best so
    far by more than margin x the distance the stream has moved from its first point; the stream has turned once
    `patience` rounds pass without one. Causal: at each point it reads only the points so far, as a run would."""
    best = 0
    for i, (rnd, value) in enumerate(points[1:], 1):
        moved = abs(points[best][1] - points[0][1])
        if direction * (value - points[best][1]) > margin * moved:
            best = i
        elif rnd - points[best][0] >= patience:
            return points[best][0], rnd
    return None


def plateau_warning(rows, patience, say=True):
    """{"plateau": best round} in the row where agreement (no label read) is first seen to have stopped rising for
    `patience` rounds, with one printed line; {} otherwise. It warns and changes nothing: the run goes on."""
    points = [(r["round"], r[PLATEAU_SIGNAL]) for r in rows if r.get(PLATEAU_SIGNAL) is not None]
    turned = turn(points, +1, patience, PLATEAU_MARGIN)
    if turned is None or turned[1] != rows[-1]["round"]:  # not turned, or turned at an earlier row (resumed runs)
        return {}
    if say:
        print(f"round {turned[1]}: agreement (tau-1 samples that give the greedy answer; no label read) has not risen "
              f"for {patience} rounds since round {turned[0]}: score the model on labelled questions before going on; "
              "on a real model this came before a dip on one seed and a further rise on both (docs/real-models.md, "
              "'How long to train')", file=sys.stderr)
    return {"plateau": turned[0]}


def save_checkpoint(out, model, optimizer, scheduler, round_, offline_data, rows, scaler_state=None):
    """Everything a resumed run needs to continue exactly: weights being trained, optimizer, schedule,
    random states, the offline data (if any), the metrics rows so far and fp16's loss scale (if any)."""
    state = {"round": round_, "model": trainable_state(model), "optimizer": optimizer.state_dict(),
             "scheduler": scheduler.state_dict(), "offline_data": offline_data, "rows": rows, "scaler": scaler_state,
             "rng": {"python": random.getstate(), "torch": torch.get_rng_state(),
                     "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None}}
    path, prev = (os.path.join(out, name) for name in CHECKPOINTS)
    with open(path + ".tmp", "wb") as f:
        torch.save(state, f)
        f.flush()
        os.fsync(f.fileno())  # on disk before it replaces anything
    if os.path.exists(path):
        os.replace(path, prev)  # a kill between the two replaces leaves ckpt.prev.pt: still resumable
    os.replace(path + ".tmp", path)


def load_checkpoint(out, model, optimizer, scheduler):
    """The newest usable checkpoint's state (restored into model, optimizer, scheduler and the random
    generators), falling back to the previous one with a one-line note; None if the run never saved one."""
    problems = []
    for name in CHECKPOINTS:
        path = os.path.join(out, name)
        if not os.path.exists(path):
            problems.append(f"{name} missing")
            continue
        try:
            state = torch.load(path, map_location="cpu", weights_only=False)
            params = dict(model.named_parameters())
            wanted = trainable_state(model)
            if set(state["model"]) != set(wanted) or any(state["model"][k].shape != v.shape for k, v in wanted.items()):
                raise ValueError("weights do not match this model")
            rows = state["rows"]
            assert isinstance(state["round"], int) and all(r["round"] <= state["round"] for r in rows)
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except Exception as e:
            problems.append(f"{name} unreadable ({type(e).__name__})")
            continue
        with torch.no_grad():
            for k, v in state["model"].items():
                params[k].copy_(v)
        random.setstate(state["rng"]["python"])
        torch.set_rng_state(state["rng"]["torch"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if problems:
            print(f"warning: {problems[0]}: resuming from {name} (round {state['round']}) instead", file=sys.stderr)
        return state
    if any("unreadable" in p for p in problems):
        raise UsageError(f"--resume: no usable checkpoint in {out} ({'; '.join(problems)}): start the run again "
                         "with --overwrite")
    return None


def write_atomic(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def read_jsonl_rows(path, upto_round):
    """Rows of a jsonl file up to a round; unreadable lines (a kill mid-write) are dropped."""
    rows = []
    for line in open(path) if os.path.isfile(path) else []:
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict) and isinstance(row.get("round"), int) and row["round"] <= upto_round:
            rows.append(row)
    return rows


def final_model(spec, cache_dir):
    """(base model path, adapter path or None, the run's prompt style or None) for a model name, a model folder,
    or a sept_mini.py run directory (its final/ model or adapter)."""
    config = os.path.join(spec, "config.json")
    if os.path.isdir(spec) and os.path.isfile(config) and "args" in json.load(open(config)):
        run = json.load(open(config))
        final = os.path.join(spec, "final")
        if not os.path.isdir(final):
            raise UsageError(f"run {spec} has no final/ model yet: let it finish, or evaluate its base model")
        if run["args"]["finetune"] == "full":
            return final, None, run["args"]["prompt_style"]
        return run["model_path"], final, run["args"]["prompt_style"]
    return resolve_model_path(spec, cache_dir), None, None


def load_final_model(spec, cache_dir, device, dtype=None):
    """(model, tokenizer, the run's prompt style or None) for evaluation: final_model(spec), adapter applied."""
    base, adapter, style = final_model(spec, cache_dir)
    model, tokenizer = load_model(base, "none", device, dtype=dtype)
    if adapter:  # evaluated as training sampled it: the LoRA delta folded in at fp32, rounded once to the dtype.
        from peft import PeftModel  # peft's unmerged layers on a CPU in bf16: over 5x slower and 12+ GiB
        from plumbing.memory import MergedSampler
        model = MergedSampler(PeftModel.from_pretrained(model, adapter), model.dtype).model
    return model, tokenizer, style
