"""sept_mini.py: SePT (Self-evolving Post-Training, arXiv 2510.18814) in one readable file.

A language model gets better at math by training on its own low-temperature samples: no reward,
no verifier, no teacher. Every round it samples answers at tau_sample, then does plain SFT on them
with the logits divided by tau_train. With tau_sample < tau_train this sharpens the model's own
preferences (docs/theory.md); with tau_sample = tau_train the expected gradient is zero.

    pip install torch==2.13.0 --index-url https://download.pytorch.org/whl/cpu   # CPU; with a GPU: no --index-url
    pip install -r requirements.txt -c constraints.txt
    python sept_mini.py                                  # the toy world on a laptop CPU, ~4 min
    python sept_mini.py --tau-sample 1.0                 # coupled temperatures: no gain
    python sept_mini.py --model Qwen2.5-0.5B             # QLoRA on one GPU (hub access needed)
    python sept_mini.py --model ./my-model --dataset questions.parquet --finetune lora
    python sept_mini.py --out runs/x --resume            # continue a killed run
    torchrun --nproc-per-node 8 sept_mini.py --model Qwen2.5-Math-1.5B   # data parallel, one GPU per process

Read it top to bottom: the temperature schedule, the prompt, sampling (rollout), the loss (the plain
reference and the fused version, side by side), one update, evaluation, and the loop (main), which is the
paper's Algorithm 1. Two rivals of SePT (EM-FT: entropy minimisation; GRPO: RL with a verifier) sit in the last
section, apart, and plug into the loop at one point, for the README's comparison. Everything that is
not the algorithm (flags and their checks, data files, model loading, torchrun, the run directory with its
checkpoints and metrics, the memory plan, the chunked loss kernels) is a call into the package plumbing/, which
a reader can skip.
Outputs land in --out: config.json, metrics.jsonl, samples.jsonl (two raw samples per round, special
tokens included), ckpt.pt, final/ (model or adapter).
"""
import contextlib
import math
import random

import torch
import torch.nn.functional as F

import grading
from plumbing import UsageError, cli, console, data, distributed, floatpath, memory, models, rundir
from plumbing.fused import fused_entropy_sum, fused_nll_sum  # the (tokens x V) logits, one chunk at a time
from plumbing.memory import micro_batches  # groups of rollouts within a token budget

REASONING_PROMPT = "Please reason step by step, and put your final answer within \\boxed{}."

# Seeds. Each round's sampling, each round's update and each evaluation draw from a stream of their own, seeded from
# --seed and the round alone: a resumed run draws exactly what an uninterrupted one would have drawn.
SEED_STRIDE = 100_003  # sampling stream of round r: --seed x SEED_STRIDE + r; seeds s and s + 1 never share a stream
UPDATE_OFFSET = 50_000  # the update of round r (dropout masks, if any): its sampling stream + UPDATE_OFFSET
EVAL_STRIDE = 7_919     # the evaluation at round r: --seed + EVAL_STRIDE x r (a prime: apart from the streams above)


# -----------------------------------------------------------------------------
# the temperature schedule (the one place that decides tau_sample)

def tau_sample_at(round_, rounds, tau_start, tau_train, anneal):
    """tau_sample for training round `round_` (1-based). 'paper': linear from tau_start to tau_train
    over the first two thirds of training, then equal to it (the paper's 3-epoch schedule, with 2 of
    annealing); 'none': constant."""
    if anneal == "none":
        return tau_start
    progress = (round_ - 1) / max(1, rounds)  # fraction of training done when this round starts
    return tau_start + (tau_train - tau_start) * min(1.0, progress / (2 / 3))


# -----------------------------------------------------------------------------
# the prompt (the one place that decides the template)

def build_prompt(tokenizer, question, style, demo=None):
    """'system': the paper's reasoning sentence as the system message (Qwen base and Qwen-Math models);
    'user': the model's own system prompt, the sentence appended to the question (instruct models).
    demo: a task's worked (question, answer), shown first as one earlier turn (a one-shot prompt).
    The toy tokenizer's template ignores the system turn."""
    if tokenizer.chat_template is None:
        shown = f"Question: {demo[0]}\nAnswer: {demo[1]}\n\n" if demo else ""
        return f"{REASONING_PROMPT}\n\n{shown}Question: {question}\nAnswer:"
    ask = (lambda q: f"{q}\n{REASONING_PROMPT}") if style == "user" else (lambda q: q)
    shown = [{"role": "user", "content": ask(demo[0])}, {"role": "assistant", "content": demo[1]}] if demo else []
    messages = shown + [{"role": "user", "content": ask(question)}]
    if style != "user":
        messages = [{"role": "system", "content": REASONING_PROMPT}] + messages
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# -----------------------------------------------------------------------------
# sampling

def generation_config(tau, max_new_tokens, stop_ids, pad_id, static_cache=False):
    """A complete sampling config. transformers fills every None field from the model's own
    generation_config (Qwen ships top_k=20, top_p=0.8, repetition_penalty=1.05) and then from global
    defaults (top_k=50), so each knob that changes the distribution is set to its neutral value."""
    from transformers import GenerationConfig
    return GenerationConfig(
        do_sample=tau > 0, temperature=tau if tau > 0 else 1.0, top_k=0, top_p=1.0, min_p=0.0, typical_p=1.0,
        epsilon_cutoff=0.0, eta_cutoff=0.0, repetition_penalty=1.0, encoder_repetition_penalty=1.0,
        no_repeat_ngram_size=0, min_length=0, min_new_tokens=0, num_beams=1, num_return_sequences=1,
        suppress_tokens=[], begin_suppress_tokens=[], max_new_tokens=max_new_tokens,
        eos_token_id=stop_ids, pad_token_id=pad_id, use_cache=True,
        # the fast sampler on CUDA: a preallocated cache, with which generate compiles the forward pass
        cache_implementation="static" if static_cache else None)


@torch.no_grad()
def rollout(model, tokenizer, prompts, tau, max_new_tokens, batch_size=64, stop_ids=None, desc=None,
            static_cache=False):
    """Sample one answer per prompt at temperature tau (0 = greedy) with HF generate.
    Returns a list of {prompt_ids, answer_ids, truncated, text, entropy}; answer_ids end with the stop token
    unless the answer was cut at max_new_tokens; entropy: mean over the answer's tokens, in nats, at tau 1."""
    stop_ids = stop_ids or models.stop_token_ids(model, tokenizer)
    config = generation_config(tau, max_new_tokens, stop_ids, tokenizer.pad_token_id, static_cache)
    was_training = model.training
    model.eval()  # LoRA dropout off: we sample from the model we train, not a noisier one
    tokenizer.padding_side = "left"  # right padding would put pad tokens between prompt and answer
    out = []
    for i in console.progress(range(0, len(prompts), batch_size), desc, inner=True):
        enc = tokenizer(prompts[i:i + batch_size], return_tensors="pt", padding=True, add_special_tokens=False,
                        pad_to_multiple_of=64 if static_cache else None)  # few prompt lengths: few compiled shapes
        enc = enc.to(model.device)
        entropy = rundir.TokenEntropy()  # the model's own entropy at tau 1 along its answers: a label-free signal
        gen = model.generate(**enc, generation_config=config, logits_processor=[entropy])  # (B, prompt + new tokens)
        for row, mask, step_entropy in zip(gen, enc.attention_mask, entropy.by_row()):
            prompt_ids = row[:enc.input_ids.shape[1]][mask.bool()].tolist()
            answer = row[enc.input_ids.shape[1]:].tolist()
            # cut at the FIRST stop token, and keep it: the model must learn to stop (pad may equal EOS)
            end = next((j for j, t in enumerate(answer) if t in stop_ids), None)
            answer = answer[:end + 1] if end is not None else answer
            out.append({"prompt_ids": prompt_ids, "answer_ids": answer, "truncated": end is None,
                        "text": tokenizer.decode(answer, skip_special_tokens=True),
                        "entropy": step_entropy[:len(answer)].mean().item()})
    model.train(was_training)
    return out


# -----------------------------------------------------------------------------
# the loss: -log pi(answer | prompt; tau_train), prompt masked, token mean

def training_batch(rollouts, pad_id):
    """Right-padded (prompt + answer) ids with labels on answer tokens only, EOS included.
    Right padding keeps every row's positions 0.. as they were when generate sampled it."""
    length = max(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in rollouts)
    input_ids = torch.full((len(rollouts), length), pad_id, dtype=torch.long)
    labels = torch.full((len(rollouts), length), -100, dtype=torch.long)
    attention_mask = torch.zeros((len(rollouts), length), dtype=torch.long)
    for i, r in enumerate(rollouts):
        p, a = len(r["prompt_ids"]), len(r["answer_ids"])
        input_ids[i, :p + a] = torch.tensor(r["prompt_ids"] + r["answer_ids"])
        labels[i, p:p + a] = torch.tensor(r["answer_ids"])  # by position, never by token id: pad may be EOS
        attention_mask[i, :p + a] = 1
    return input_ids, attention_mask, labels


def answer_nll_naive(model, input_ids, attention_mask, labels, tau_train):
    """The plain reference: (sum of -log pi(answer token | prefix; tau_train), number of answer tokens)."""
    targets = labels[:, 1:]  # (B, T-1): token t is predicted from position t-1
    mask = targets != -100
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    logp = F.log_softmax(logits.float() / tau_train, dim=-1)  # the full (B, T-1, V) twice over
    nll = -logp[mask].gather(1, targets[mask][:, None]).squeeze(1)  # (N,)
    return nll.sum(), int(mask.sum())


def answer_hidden(model, input_ids, attention_mask, labels):
    """(hidden states that predict answer tokens (N, H), those tokens (N,)): the decoder without its output layer."""
    targets = labels[:, 1:]  # (B, T-1): token t is predicted from position t-1
    hidden = model.get_decoder()(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    return hidden.last_hidden_state[:, :-1][targets != -100], targets[targets != -100]


def answer_nll_fused(model, input_ids, attention_mask, labels, tau_train):
    """The same sum, never holding the (tokens x V) logits: only answer positions reach the output layer,
    a chunk of them at a time (plumbing/fused.py)."""
    hidden, targets = answer_hidden(model, input_ids, attention_mask, labels)
    head = model.get_output_embeddings()
    return fused_nll_sum(hidden, head.weight, head.bias, targets, tau_train), len(targets)


def answer_nll(model, input_ids, attention_mask, labels, tau_train, loss_impl="fused"):
    """--loss fused (default) or naive: the same numbers (tests/test_loss.py), different memory."""
    impl = answer_nll_fused if loss_impl == "fused" else answer_nll_naive
    return impl(model, input_ids, attention_mask, labels, tau_train)


def sept_loss(model, rollouts, pad_id, tau_train, loss_impl="fused"):
    """SePT's loss on some rollouts (a micro-batch): (sum of -log pi(answer token | prefix; tau_train), tokens)."""
    input_ids, attention_mask, labels = (x.to(model.device) for x in training_batch(rollouts, pad_id))
    return answer_nll(model, input_ids, attention_mask, labels, tau_train, loss_impl)


# -----------------------------------------------------------------------------
# one update

def sept_update(model, optimizer, scheduler, rollouts, tau_train, pad_id, loss_impl, micro_batch_tokens, clip=1.0,
                ddp=None, loss=sept_loss, scaler=models.NO_LOSS_SCALING):
    """One optimizer update of SFT at tau_train on these rollouts: the token mean of `loss` over all their answer
    tokens, accumulated over micro-batches. Under torchrun each rank passes its own rollouts and `ddp` (the model
    and the loss wrapped by distributed.wrap_ddp): the mean is then over every rank's answer tokens, so the
    update equals a single process's on the union. Returns (loss, tokens processed here)."""
    model.train()
    optimizer.zero_grad(set_to_none=True)  # a retry after out-of-memory starts clean
    n_answer = distributed.global_sum(sum(len(r["answer_ids"]) for r in rollouts))  # all ranks' answer tokens
    scale = (distributed.ddp_world() if ddp else 1) / max(1, n_answer)  # DDP averages gradients over ranks: undo it
    forward = ddp or (lambda *batch: loss(model, *batch))
    groups = micro_batches(rollouts, micro_batch_tokens)
    total, n_tokens = 0.0, 0
    for i, group in enumerate(groups):
        # under DDP gradients are averaged once per update, in the last micro-batch's backward; ranks may
        # have different numbers of micro-batches (their answers differ in length)
        with ddp.no_sync() if ddp and i < len(groups) - 1 else contextlib.nullcontext():
            nll, _ = forward(group, pad_id, tau_train, loss_impl)
            scaler.scale(nll * scale).backward()  # fp16 only: scaled up so that its gradients do not underflow
        total += nll.item()
        n_tokens += sum(len(r["prompt_ids"]) + len(r["answer_ids"]) for r in group)
    total = distributed.global_sum(total)
    if not math.isfinite(total):  # a step on inf/nan gradients would destroy the weights: refuse it
        optimizer.zero_grad(set_to_none=True)
        raise FloatingPointError(f"loss {total / max(1, n_answer)}")
    scaler.unscale_(optimizer)  # fp16 only, as each scaler call here: the gradients back at their size, to clip
    torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], clip)
    scaler.step(optimizer)  # skipped when an fp16 gradient overflowed (counted in the metrics row)
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return total / max(1, n_answer), n_tokens


# -----------------------------------------------------------------------------
# evaluation inside the loop (eval_math.py does the full protocol)

def evaluate(model, tokenizer, questions, style, max_new_tokens, samples, batch_size, seed, static_cache=False):
    """Held-out pass@1 at tau = 1 (mean over `samples` draws per question) and greedy accuracy."""
    prompts = [build_prompt(tokenizer, q["question"], style, q.get("demo")) for q in questions]
    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(seed)  # evaluation neither uses nor disturbs the training run's randomness
        greedy = rollout(model, tokenizer, prompts, 0.0, max_new_tokens, batch_size, desc="eval greedy",
                         static_cache=static_cache)
        sampled = rollout(model, tokenizer, prompts * samples, 1.0, max_new_tokens, batch_size, desc="eval tau=1",
                          static_cache=static_cache)
    golds, own = [q["answer"] for q in questions], [grading.extract_answer(r["text"]) for r in greedy]  # own: no label
    return {"pass@1": sum(graded(sampled, golds * samples)) / len(sampled),
            "greedy": sum(graded(greedy, golds)) / len(greedy),
            "agreement": sum(graded(sampled, own * samples)) / len(sampled)}  # tau-1 samples that say greedy's


def graded(rollouts, golds):
    """1.0 where grading.py accepts the answer against the gold (None: nothing to match), else 0.0."""
    return [float(gold is not None and grading.grade(r["text"], gold)) for r, gold in zip(rollouts, golds)]


# -----------------------------------------------------------------------------
# the loop (Algorithm 1), and the three steps of a round it calls

def sample_round(sampler, tokenizer, pool, round_, args, stop_ids):
    """(tau_sample, rollouts): this rank's share of round `round_`'s questions, each answered --rollouts times;
    each rollout keeps its question (SePT never reads the answer key: a rival's reward may)."""
    tau = tau_sample_at(round_, args.rounds, args.tau_sample, args.tau_train, args.anneal)
    questions = distributed.rank_share(data.round_questions(pool, round_, args.prompts_per_round, args.seed))
    prompts = [build_prompt(tokenizer, q["question"], args.prompt_style, q.get("demo")) for q in questions]

    def draw(model, batch_size, static_cache):
        torch.manual_seed(args.seed * SEED_STRIDE + round_ + distributed.rank_seed())
        return rollout(model, tokenizer, prompts * args.rollouts, tau, args.max_new_tokens, batch_size, stop_ids,
                       desc=f"round {round_} sampling", static_cache=static_cache)
    rollouts = sampler.sample(draw, f"sampling round {round_}")
    for r, question in zip(rollouts, questions * args.rollouts):
        r["question"] = question
    return tau, rollouts


def train_round(model, optimizer, scheduler, loss, rollouts, round_, args, plan, pad_id, ddp, last_saved):
    """--updates-per-round updates of `loss` on the round's rollouts; (mean loss, tokens trained on by all ranks)."""
    torch.manual_seed(args.seed * SEED_STRIDE + round_ + UPDATE_OFFSET + distributed.rank_seed())
    random.Random(round_).shuffle(rollouts)  # rollouts of one question spread over the updates
    losses, n_tokens = [], 0
    for chunk in range(args.updates_per_round):
        part = rollouts[chunk::args.updates_per_round]
        update = lambda budget: sept_update(model, optimizer, scheduler, part, args.tau_train, pad_id, args.loss,
                                            budget, ddp=ddp, loss=loss, scaler=plan.scaler)
        try:  # under torchrun one rank cannot redo an update alone: no retry there
            mean, n = memory.halving_on_oom(update, plan, "micro_batch_tokens", f"in round {round_}'s update",
                                            retry=ddp is None)
        except FloatingPointError as e:
            raise UsageError(f"round {round_}: the training loss is not finite ({e}); stopped before that update, the "
                             f"checkpoint of round {last_saved} is kept: start again with a lower --lr") from None
        losses.append(mean)
        n_tokens += n
    return sum(losses) / len(losses), distributed.global_sum(n_tokens)


def evaluate_heldout(sampler, tokenizer, heldout, round_, args):
    """Held-out scores at round `round_`: each rank grades its share, weighted back together; rank 0 prints."""
    share = distributed.rank_share(heldout)
    scores = {"pass@1": 0.0, "greedy": 0.0}  # a rank with no share (more ranks than questions) adds nothing
    if share:
        seed = args.seed + EVAL_STRIDE * round_ + distributed.rank_seed()
        scores = sampler.sample(lambda model, batch, static_cache: evaluate(
            model, tokenizer, share, args.prompt_style, args.max_new_tokens, args.eval_samples, batch, seed,
            static_cache), "in evaluation")
    if distributed.ddp_world() > 1:
        scores = {k: distributed.global_sum(v * len(share)) / len(heldout) for k, v in scores.items()}
    console.report(f"round {round_:4d} | held-out pass@1 (tau=1) {100 * scores['pass@1']:5.1f} | "
                   f"greedy {100 * scores['greedy']:5.1f}")
    return scores


def main(argv=None):
    with console.one_line_errors("sept_mini.py"):  # bad input: one line and exit 2, before any work is done
        args = cli.parse_args(argv)
        console.quiet_libraries()
        torch.manual_seed(args.seed)
        rank, world = distributed.compute_init(args)  # under torchrun: this process is rank `rank` of `world`
        if args.finetune == "qlora":
            models.check_4bit(args.device)
        with distributed.rank_zero_first():  # one rank builds the toy base or fills the download cache
            model_path = models.resolve_model_path(args.model, args.cache_dir, args.seed)
            pool = data.training_pool(args)  # with answers where a rival grades them
            heldout = data.load_heldout(args.eval_dataset, args.eval_size, args.seed) if args.eval_every else []
        plan = memory.plan_memory(args, model_path, world)
        if rank == 0:
            print(plan.text)
        model, tokenizer = models.load_model(model_path, args.finetune, args.device, args.lora_rank,
                                             grad_checkpointing=plan.grad_checkpointing, dtype=args.dtype)
        stop_ids, pad_id = models.stop_token_ids(model, tokenizer), tokenizer.pad_token_id
        optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=args.lr,
                                      weight_decay=args.weight_decay, **floatpath.adamw_options())
        warmup = lambda step: min(1.0, (step + 1) / (args.warmup_steps + 1))  # then constant, as in the paper
        scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup)
        run = rundir.RunDir(args, model_path, world)  # --out: config, metrics, samples, checkpoints, final/
        if not run.resume(model, optimizer, scheduler):  # with --resume: the newest checkpoint; False if done
            distributed.compute_cleanup()
            return run.rows
        loss, prepare = objective(args, tokenizer)  # SePT's loss; the one point where a rival plugs in instead
        ddp = distributed.wrap_ddp(model, loss)  # None in a single process
        sampler = memory.Sampler(model, plan, args.device)  # what generate draws from: the model, or a merged copy
        run.open(plan)

        if run.start == 0 and args.eval_every:
            run.log({"round": 0, **evaluate_heldout(sampler, tokenizer, heldout, 0, args)})
        if args.offline and run.offline_data is None:  # the ablation: all data from the initial model, once
            rounds = console.progress(range(1, args.rounds + 1), "offline sampling")
            run.offline_data = distributed.gather_objects(
                {r: sample_round(sampler, tokenizer, pool, r, args, stop_ids) for r in rounds})

        for round_ in console.progress(range(run.start + 1, args.rounds + 1), "SePT rounds", total=args.rounds,
                                       initial=run.start):
            stats = rundir.RoundStats(args)  # lengths, speeds, seconds and memory, gathered beside the algorithm
            if args.offline:
                tau, rollouts = run.offline_data[rank][round_]
            else:  # sample at tau_sample from the current model...
                tau, rollouts = sample_round(sampler, tokenizer, pool, round_, args, stop_ids)
            rival_row = prepare(rollouts)  # {} for SePT, which grades nothing
            stats.sampled(rollouts)
            # ...then train on the samples at tau_train
            mean_loss, n_tokens = train_round(model, optimizer, scheduler, loss, rollouts, round_, args, plan, pad_id,
                                              ddp, run.last_saved)
            sampler.refresh()  # the sampler's copy takes the new weights
            stats.trained(n_tokens)
            run.log_samples(round_, rollouts[:2], tokenizer)
            row = {"round": round_, "tau_sample": round(tau, 4), "loss": mean_loss, "lr": scheduler.get_last_lr()[0],
                   **stats.row(), **rival_row}
            if args.eval_every and (round_ % args.eval_every == 0 or round_ == args.rounds):
                row.update(evaluate_heldout(sampler, tokenizer, heldout, round_, args))
            run.log({**row, **plan.take_changes()})  # what an out-of-memory retry changed, if anything
            run.save_if_due(round_, model, optimizer, scheduler)

        ddp = None  # DDP's reducer holds the process group: let it go first (else gloo may abort at exit)
        distributed.compute_cleanup()
        run.finish(model, tokenizer)  # rank 0: final/ and the before/after table
        return run.rows


# -----------------------------------------------------------------------------
# SePT's rivals (--objective): the same loop with another loss, for the comparison in the README. Not SePT.
# EM-FT minimises the entropy of the model's own distributions (no reward, like SePT); GRPO trains on the grader's
# reward (a verifier, which SePT does without). Each is a loss with sept_loss's signature, loss(model, rollouts,
# pad_id, tau_train, loss_impl) -> (sum over answer tokens, their number), and a step that prepares a round's
# rollouts for it; objective() hands main() the pair.

def objective(args, tokenizer):
    """(the loss every update minimises, prepare(rollouts) -> metrics of the round): the one point where a rival
    plugs into main(). SePT: its own loss, and nothing to prepare (it grades nothing)."""
    if args.objective == "emft":
        return emft_loss, lambda rollouts: {}
    if args.objective == "grpo":
        return grpo_loss, lambda rollouts: grpo_rewards(rollouts, args.rollouts)
    return sept_loss, lambda rollouts: {}


def answer_entropy_naive(model, input_ids, attention_mask, labels, tau_train):
    """EM-FT's loss (arXiv 2505.15134), plain: (sum over answer prefixes of the entropy of pi(. | prefix; tau_train),
    their number). Where SePT trains on the token it sampled, EM-FT sharpens each visited distribution towards its own
    mode, whichever token was sampled."""
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]  # (B, T-1, V)
    scaled = logits[labels[:, 1:] != -100].float() / tau_train  # (N, V)
    return -(F.softmax(scaled, dim=-1) * F.log_softmax(scaled, dim=-1)).sum(), len(scaled)


def answer_entropy_fused(model, input_ids, attention_mask, labels, tau_train):
    """The same sum, never holding the (tokens x V) logits: a chunk of answer positions at a time."""
    hidden, _ = answer_hidden(model, input_ids, attention_mask, labels)  # (N, H)
    head = model.get_output_embeddings()
    return fused_entropy_sum(hidden, head.weight, head.bias, tau_train), len(hidden)


def emft_loss(model, rollouts, pad_id, tau_train, loss_impl="fused"):
    """EM-FT's loss on some rollouts, --loss fused or naive as sept_loss."""
    input_ids, attention_mask, labels = (x.to(model.device) for x in training_batch(rollouts, pad_id))
    impl = answer_entropy_fused if loss_impl == "fused" else answer_entropy_naive
    return impl(model, input_ids, attention_mask, labels, tau_train)


def grpo_advantages(rewards, n_questions, eps=1e-6):
    """GRPO's group-normalised advantage (r - mean) / (std + eps) over the G answers to one question (std with
    Bessel's correction and eps = 1e-6, as verl). rewards come as rollout() returns `prompts * G`: answer g to
    question q at g * n_questions + q. A group whose rewards are all equal gets 0: it carries no signal."""
    r = torch.tensor(rewards, dtype=torch.float32).view(-1, n_questions)  # (G, Q)
    return ((r - r.mean(0)) / (r.std(0) + eps)).flatten().tolist()


def grpo_rewards(rollouts, group_size):
    """GRPO's step between sampling and training: each answer's reward from the grader and its advantage within
    its question's group of `group_size` answers. Returns the round's training reward and its share of flat groups
    (all rewards equal: no signal), over every rank."""
    n_questions = len(rollouts) // group_size
    rewards = graded(rollouts, [r["question"]["answer"] for r in rollouts])
    for i, (r, advantage) in enumerate(zip(rollouts, grpo_advantages(rewards, n_questions))):
        group = rewards[i % n_questions::n_questions]  # the rewards of this answer's question
        r.update(reward=rewards[i], advantage=advantage, flat_group=float(min(group) == max(group)))
    n_rollouts = distributed.global_sum(len(rollouts))
    return {k: distributed.global_sum(sum(r[k] for r in rollouts)) / n_rollouts for k in ("reward", "flat_group")}


def grpo_loss(model, rollouts, pad_id, tau_train, loss_impl="fused"):
    """GRPO's policy-gradient loss: SePT's NLL at tau_train with each answer's tokens weighted by its advantage.

    This is verl's recipe less three parts, each exact or harmless at this scale: (1) no ratio clipping: one
    update per round on fresh samples (--updates-per-round 1) makes the ratio pi/pi_old exactly 1, where the
    clipped objective's gradient is exactly advantage x grad log pi (with more updates per round the later ones
    are slightly off-policy and unclipped); (2) no KL penalty to the initial model (verl's coefficient is 0.001;
    DAPO and Dr. GRPO drop it); (3) token-mean normalisation over all the round's answer tokens, verl's default
    (the original GRPO averages per answer first, which weighs short answers' tokens more)."""
    input_ids, attention_mask, labels = (x.to(model.device) for x in training_batch(rollouts, pad_id))
    mask = labels[:, 1:] != -100  # (B, T-1): the answer positions
    advantages = torch.tensor([r["advantage"] for r in rollouts], device=model.device)[:, None].expand_as(mask)[mask]
    if loss_impl == "naive":
        logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits[:, :-1]
        logp = F.log_softmax(logits.float() / tau_train, dim=-1)  # (B, T-1, V)
        nll = -logp[mask].gather(1, labels[:, 1:][mask][:, None]).squeeze(1)  # (N,)
        return (nll * advantages).sum(), int(mask.sum())
    hidden, targets = answer_hidden(model, input_ids, attention_mask, labels)
    head = model.get_output_embeddings()
    return fused_nll_sum(hidden, head.weight, head.bias, targets, tau_train, weights=advantages), len(targets)


if __name__ == "__main__":
    main()
