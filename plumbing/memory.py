"""Memory and speed, engineering a reader of the algorithm may skip: the plan (how many prompts per generate
call, how many tokens per forward/backward, gradient checkpointing, which sampler), the out-of-memory retry
that halves a step's size, and the merged sampler that samples from a plain copy of the LoRA policy."""
import dataclasses
import os
import sys

import torch

from plumbing import UsageError, cli
from plumbing.distributed import ddp_rank
from plumbing.models import TORCH_DTYPES, LossScaler, first_line

GPU_BUDGET_GB = 6.0  # so the defaults run on an 8 GB card; a smaller card gets 80% of its memory


@dataclasses.dataclass
class Plan:
    """How a round is cut to fit the device. Read by the loop; an out-of-memory retry changes it (changes)."""
    sampler: str               # 'fast' (a merged copy of the policy) or 'plain' (the training model itself)
    dtype: str                 # 'fp32', 'bf16' or 'fp16': the frozen weights, the computation, the sampler's copy
    gen_batch_size: int        # prompts per generate call
    micro_batch_tokens: int    # padded tokens per forward/backward
    grad_checkpointing: bool
    static_cache: bool         # the fast sampler on a GPU of compute capability 8.0+: a static KV cache, compiled forward
    text: str = ""             # the plan as one line, printed at the start
    changes: dict = dataclasses.field(default_factory=dict)  # flag -> size, since the last metrics row
    scaler: LossScaler = dataclasses.field(default_factory=LossScaler)  # fp16's loss scaling (disabled otherwise)

    def as_flags(self):
        """The plan's values under the names of the flags they resolve (saved in config.json)."""
        return {"sampler": self.sampler, "gen_batch_size": self.gen_batch_size,
                "micro_batch_tokens": self.micro_batch_tokens, "grad_checkpointing": "on" if self.grad_checkpointing
                else "off"}

    def take_changes(self):
        """What an out-of-memory retry changed since the last metrics row, and with fp16 the updates skipped."""
        changes, self.changes = self.changes, {}
        if self.scaler.is_enabled():
            changes["fp16_skipped_updates"], self.scaler.skipped = self.scaler.skipped, 0
        return changes


# What a LoRA update holds in memory on a CPU, measured with the real Qwen2.5-0.5B (fp32, peak resident memory of
# one update of 1,024 to 4,096 tokens, answers of 256 and 512 tokens; README "A real model on a CPU"): a part that
# grows with the micro-batch, in numbers per token and layer per (hidden + intermediate) width, and without
# checkpointing a part that does not, as a fraction of the weights' size. Attention added little at these lengths.
# Fitted before return_freed_memory() below; with it the same updates measure 0.2-0.75 of this: conservative.
ACTIVATIONS_PER_TOKEN = {False: 7.35, True: 2.6}  # gradient checkpointing off / on
UPDATE_FIXED = {False: 0.8, True: 0.0}  # x the weights' bytes
# bf16 does not halve them on a CPU: whole bf16 rounds (LoRA, 16 x 256 tokens) grew 2.5 GiB per 1,024 tokens of
# micro-batch, 1.3x two bytes a number (norms and softmax keep fp32 copies): counted as three bytes, which covers it.
ACTIVATION_BYTES = {"fp32": 4, "bf16": 3, "fp16": 3}
# On a CPU, larger micro-batches are slower, not faster: bf16 rounds of the 0.5B (LoRA, 16 x 256 tokens, 2 cores)
# took 159 s at 1,024 tokens, 174 s at 2,048 and 214 s at 4,096 (experiments/bench_round.py --micro-batches).
CPU_MICRO_BATCH_TOKENS = 1024
SMALL_MODEL_PARAMS = 10 ** 8  # below this, activations are small and one micro-batch per round is fastest
OVERHEAD_GB = 1.0     # Python, torch, the tokenizer, allocator slack
# glibc's mmap threshold (return_freed_memory), the largest that fits the budget: at 1 MiB every freed tensor goes
# back to the OS (least memory, most page faults); above it the heap keeps more and faults less. Bf16 rounds of the
# 0.5B (LoRA, 16 x 256 tokens, 1,024-token micro-batches, 2 cores): 1 MiB 159 s and 5.96 GiB, 8 MiB 7.15 GiB (its
# time not clean), 32 MiB 144 s and 7.95 GiB, 64 MiB 136 s and 9.08 GiB. The extra peak over 1 MiB, as a fraction
# of the weights' bytes (1.17 GiB there; one model measured, so a rough rule):
MMAP_THRESHOLDS_MB = {64: 2.7, 32: 1.7, 8: 1.0, 1: 0.0}


def return_freed_memory(threshold_mb=1):
    """On glibc (Linux), serve every block of threshold_mb or more with its own mapping, given back to the OS when
    freed. By default glibc raises that threshold after the first large frees, and tensors then come from a heap that
    fragments between sampling and training: one real round (Qwen2.5-0.5B, LoRA, fp32, 16 answers) peaked at
    10.0 GiB that way and at 5.9 GiB with a fixed 1 MiB. Returns whether it applied (not where the caller set
    glibc's own MALLOC_MMAP_THRESHOLD_, which is kept)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:  # glibc's own setting, read at startup: the caller chose
        return False
    try:
        import ctypes
        return ctypes.CDLL("libc.so.6").mallopt(-3, threshold_mb << 20) == 1  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc: macOS, musl, Windows
        return False


def update_gb(text_config, tokens, checkpointing, dtype_bytes):
    """The part of an update's memory that grows with its micro-batch (see ACTIVATIONS_PER_TOKEN), in GB."""
    c = text_config
    width = c.num_hidden_layers * (c.hidden_size + getattr(c, "intermediate_size", 4 * c.hidden_size))
    return tokens * ACTIVATIONS_PER_TOKEN[checkpointing] * width * dtype_bytes / 2 ** 30


def available_ram_gb():
    """Memory the OS can give this process now (Linux: MemAvailable), or None where it cannot tell."""
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) for line in f if line.startswith("MemAvailable:")) / 2 ** 20
    except (OSError, StopIteration):
        return None


def peak_rss_gb():
    """This process's peak resident memory so far: Linux and macOS (resource), Windows (its peak working set), else
    None, which the metrics row keeps as null ("not measured")."""
    try:
        import resource  # Unix only
    except ImportError:
        return _windows_peak_gb() if sys.platform == "win32" else None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2 ** (30 if sys.platform == "darwin" else 20)


def _windows_peak_gb():
    """PeakWorkingSetSize from the Win32 call GetProcessMemoryInfo, through ctypes (no new dependency)."""
    import ctypes
    from ctypes import wintypes

    class Counters(ctypes.Structure):
        _fields_ = [("cb", wintypes.DWORD), ("PageFaultCount", wintypes.DWORD)] + [
            (name, ctypes.c_size_t) for name in ("PeakWorkingSetSize", "WorkingSetSize", "QuotaPeakPagedPoolUsage",
                                                 "QuotaPagedPoolUsage", "QuotaPeakNonPagedPoolUsage",
                                                 "QuotaNonPagedPoolUsage", "PagefileUsage", "PeakPagefileUsage")]
    try:
        counters = Counters(cb=ctypes.sizeof(Counters))
        process = ctypes.windll.kernel32.GetCurrentProcess()
        if not ctypes.windll.psapi.GetProcessMemoryInfo(process, ctypes.byref(counters), counters.cb):
            return None
        return counters.PeakWorkingSetSize / 2 ** 30
    except (AttributeError, OSError):
        return None


def plan_memory(args, model_path, world=1):
    """Resolve the flags left to 'auto' from the model's shape and the device's memory, into a Plan.
    CUDA: gradient checkpointing on for real models, micro-batches of 8,192 tokens, and generation batches whose
    KV cache fits a quarter of the budget (min(6 GB, 80% of the card), or --memory-budget-gb). CPU: the budget is
    --memory-budget-gb or 80% of the free RAM, and the plan is the first of fast sampler without checkpointing, fast
    with, plain without, plain with, whose estimated peak fits 90% of it, at the largest micro-batch (16,384 tokens
    down to one answer) that does; a small model takes 16,384 tokens, no checkpointing and 64 prompts. On a CPU it
    also sets the allocator's mmap threshold, the largest of MMAP_THRESHOLDS_MB that still fits (return_freed_memory),
    which the estimate includes. A model of 100M parameters or more on a CPU takes micro-batches of at most 1,024
    tokens (CPU_MICRO_BATCH_TOKENS: fastest)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    cuda, dtype_bytes = args.device == "cuda", TORCH_DTYPES[args.dtype].itemsize
    kv_heads = getattr(text, "num_key_value_heads", text.num_attention_heads)
    kv_per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    if args.memory_budget_gb:
        budget = args.memory_budget_gb
    elif cuda:
        budget = min(GPU_BUDGET_GB, 0.8 * torch.cuda.get_device_properties(0).total_memory / 2 ** 30)
    else:
        budget = 0.8 * (available_ram_gb() or 16.0)
    merged_gb = n_params * dtype_bytes / 2 ** 30  # the fast sampler's copy of the policy
    weights_gb = n_params * (0.6 if args.finetune == "qlora" else dtype_bytes) / 2 ** 30
    seq_tokens = args.max_new_tokens + 512  # answer cap plus a generous prompt
    act_gb = lambda tokens, ckpt: update_gb(text, tokens, ckpt, ACTIVATION_BYTES[args.dtype])
    kv_gb = lambda prompts: prompts * seq_tokens * kv_per_token / 2 ** 30
    lora_ok = args.finetune in ("lora", "qlora")
    samplers = [args.sampler] if args.sampler != "auto" else ["fast", "plain"] if lora_ok else ["plain"]
    checkpointing = [args.grad_checkpointing == "on"] if args.grad_checkpointing != "auto" else [False, True]
    tokens = [args.micro_batch_tokens] if args.micro_batch_tokens else [16384 >> i for i in range(6)]
    tokens = [t for t in tokens if t >= min(seq_tokens, 1024)] or tokens[:1]
    if not cuda and not args.micro_batch_tokens and n_params >= SMALL_MODEL_PARAMS:
        tokens = [t for t in tokens if t <= CPU_MICRO_BATCH_TOKENS] or tokens[-1:]
    prompts = args.gen_batch_size or 64

    def peak(sampler, ckpt, micro):
        fixed = OVERHEAD_GB + weights_gb + (merged_gb if sampler == "fast" else 0)
        return fixed + max(kv_gb(prompts), UPDATE_FIXED[ckpt] * weights_gb + act_gb(micro, ckpt))  # act: activations

    if cuda:  # as planned so far (the estimates above are measured on CPU only)
        sampler = samplers[0] if args.sampler != "auto" else "fast" if lora_ok and merged_gb < 0.4 * budget else "plain"
        ckpt = checkpointing[0] if args.grad_checkpointing != "auto" else args.model != "toy"
        micro = args.micro_batch_tokens or 8192
        prompts = args.gen_batch_size or max(1, min(64, int(0.25 * budget * 2 ** 30 / (kv_per_token * seq_tokens))))
    else:
        fits = [(s, c, t) for s in samplers for c in checkpointing for t in tokens if peak(s, c, t) <= 0.9 * budget]
        sampler, ckpt, micro = fits[0] if fits else (samplers[-1], checkpointing[-1], tokens[-1])
        if not args.gen_batch_size:
            while prompts > 1 and peak(sampler, ckpt, micro) > 0.9 * budget and kv_gb(prompts) > act_gb(micro, ckpt):
                prompts //= 2
        heap_gb = lambda mb: MMAP_THRESHOLDS_MB[mb] * weights_gb  # what a larger threshold keeps in the heap
        mmap_mb = next((mb for mb in MMAP_THRESHOLDS_MB if peak(sampler, ckpt, micro) + heap_gb(mb) <= 0.9 * budget),
                       min(MMAP_THRESHOLDS_MB))
        return_freed_memory(mmap_mb)  # before the model is loaded: the estimate assumes it
    static_cache = sampler == "fast" and cuda and compiled_sampler_works()
    size = f"{n_params / 1e6:.2f}M" if n_params < 1e7 else f"{n_params / 1e6:.0f}M"
    line = (f"plan: {size} parameters, {args.finetune}, sampler {sampler}, generation batches of "
            f"{prompts} prompts, micro-batches of {micro} tokens, gradient checkpointing {'on' if ckpt else 'off'}")
    if args.model == "toy":  # memory is no question for 0.42M parameters; which float path runs is
        from plumbing import floatpath
        line += f", {args.dtype}; {floatpath.status}"
    elif cuda:
        line += (f", {cli.dtype_reason('cuda', args.dtype)}"
                 + ("" if static_cache or sampler != "fast" else ", dynamic KV cache (no compiled static cache below "
                    "compute capability 8.0)")
                 + f"; estimated GPU memory: weights {weights_gb:.1f} GB + sampler copy "
                 f"{merged_gb if sampler == 'fast' else 0:.1f} GB + KV cache {kv_gb(prompts):.1f} GB, budget "
                 f"{budget:.1f} GB")
    else:
        estimate = peak(sampler, ckpt, micro) + heap_gb(mmap_mb)
        line += (f", {args.dtype}, allocator threshold {mmap_mb} MiB; estimated peak memory {estimate:.1f} GB, budget "
                 f"{budget:.1f} GB")
        if estimate > 0.9 * budget and ddp_rank() == 0:
            print(f"warning: the estimated peak memory ({estimate:.1f} GB) exceeds the budget "
                  f"({budget:.1f} GB) even so: lower --max-new-tokens, use --finetune qlora, or free memory (a process "
                  "killed for memory resumes with --resume from its last checkpoint)", file=sys.stderr)
    if world > 1:
        line += f"; {world} processes (torchrun), each with its share of every round"
    return Plan(sampler, args.dtype, prompts, micro, ckpt, static_cache=static_cache, text=line,
                scaler=LossScaler(args.dtype, args.device))


def compiled_sampler_works(capability=None):
    """The static KV cache with its compiled forward only from compute capability 8.0: below it (a T4, a V100) Inductor
    refuses bf16, and transformers itself skips its static-cache compile tests on a T4. There the fast sampler keeps
    a dynamic cache (the fallback in Sampler stays for failures elsewhere)."""
    return (capability or cli.cuda_capability()) >= cli.NATIVE_BF16_CAPABILITY


def micro_batches(rollouts, max_tokens):
    """Consecutive groups of rollouts whose padded size (rows x longest row) stays within max_tokens, so
    memory is planned in tokens: answers run from 10 to 1,024 tokens. A row longer than the budget goes alone."""
    groups, current, longest = [], [], 0
    for r in rollouts:
        n = len(r["prompt_ids"]) + len(r["answer_ids"])
        if current and max(longest, n) * (len(current) + 1) > max_tokens:
            groups.append(current)
            current, longest = [], 0
        current.append(r)
        longest = max(longest, n)
    return groups + [current] if current else groups


def halving_on_oom(run, plan, field, what, retry=True):
    """run(plan.<field>), and on CUDA out-of-memory run with half of it, ... down to 1, each retry said in one
    line and kept in the plan. Stops with one line when even 1 does not fit (no checkpoint is written mid-round,
    so the last one is intact). retry=False (a step with collectives under torchrun, where one rank cannot redo
    it alone) stops at the first out-of-memory."""
    flag = "--" + field.replace("_", "-")
    while True:
        size = getattr(plan, field)
        try:
            return run(size)
        except torch.OutOfMemoryError:
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            if not retry:
                raise UsageError(f"out of GPU memory {what} with {flag} {size} (under torchrun a rank cannot retry "
                                 f"alone): pass {flag} {max(1, size // 2)} with --resume; the last checkpoint is "
                                 "intact") from None
            if size <= 1:
                raise UsageError(f"out of GPU memory {what} even with {flag} 1: lower --max-new-tokens, or use "
                                 "--finetune qlora or --sampler plain; the last checkpoint is intact, continue with "
                                 "--resume") from None
            setattr(plan, field, size // 2)
            plan.changes[field] = size // 2
            print(f"warning: out of GPU memory {what}: retrying with {flag} {size // 2}", file=sys.stderr)


class Sampler:
    """What generate samples from, which is not the policy itself but the trained model (--sampler plain) or a merged
    copy of it made for speed (--sampler fast), with the out-of-memory retry. The fast paths that only CUDA takes
    (the static KV cache with its compiled forward, the merged copy there) have never run in this project's tests;
    when one raises, sampling falls back to the path the tests cover, says so in one line, and stays there."""

    def __init__(self, model, plan, device):
        self.trained, self.plan, self.merged = model, plan, None
        if plan.sampler == "fast":
            try:
                self.merged = MergedSampler(model, TORCH_DTYPES[plan.dtype])
            except Exception as e:  # noqa: BLE001 - any failure of the fast path: take the reference path
                self.fall_back(e)

    @property
    def model(self):
        return self.merged.model if self.merged else self.trained

    def refresh(self):
        """After an update: the merged copy takes the new weights (the trained model has them already)."""
        if self.merged:
            self.merged.refresh()

    def sample(self, draw, what):
        """draw(model, batch_size, static_cache), halving the batch on out-of-memory, falling back on failure."""
        while True:
            try:
                return halving_on_oom(lambda size: draw(self.model, size, self.plan.static_cache), self.plan,
                                      "gen_batch_size", what)
            except (UsageError, torch.OutOfMemoryError, KeyboardInterrupt):
                raise
            except Exception as e:  # noqa: BLE001
                if not (self.plan.static_cache or self.merged):
                    raise  # the reference path itself failed: a real error
                self.fall_back(e)

    def fall_back(self, error):
        fast = "static KV cache" if self.plan.static_cache else "fast (merged) sampler"
        plain = "a dynamic KV cache" if self.plan.static_cache else "the trained model (--sampler plain)"
        print(f"warning: the {fast} failed ({type(error).__name__}: {first_line(error, 80)}): sampling with {plain} "
              "from now on", file=sys.stderr)
        if self.plan.static_cache:
            self.plan.static_cache = False
        else:
            self.merged, self.plan.sampler = None, "plain"


class MergedSampler:
    """The fast sampler: a plain copy of the policy for generate, its weights in the compute dtype with the
    current LoRA delta folded in (W = W0 + scaling * B A, NF4 weights dequantised), refreshed in place after
    each update so that compiled graphs and a static KV cache are reused. No peft wrapper, no per-step
    dequantisation, no dropout. --sampler plain samples with the training model itself (the reference)."""

    def __init__(self, peft_model, dtype):
        from transformers import AutoModelForCausalLM
        self.base = peft_model.get_base_model()
        self.model = AutoModelForCausalLM.from_config(self.base.config, dtype=dtype).to(self.base.device).eval()
        self.model.generation_config = self.base.generation_config
        self.lora_layers = [(n, m) for n, m in self.base.named_modules()
                            if hasattr(m, "lora_A") and "default" in m.lora_A]
        with torch.no_grad():  # everything, once; refresh() then redoes the LoRA layers after each update
            for name, param in self.model.named_parameters():
                module_name, kind = name.rsplit(".", 1)
                source = self.base.get_submodule(module_name)
                source = getattr(source, "base_layer", source)
                param.copy_(dense_weight(source) if kind == "weight" else getattr(source, kind))
        self.refresh()

    @torch.no_grad()
    def refresh(self):
        for name, module in self.lora_layers:
            # (out, r) @ (r, in): the LoRA delta, folded into the dense weight
            delta = module.lora_B["default"].weight.float() @ module.lora_A["default"].weight.float()
            merged = dense_weight(module.base_layer).float() + module.scaling["default"] * delta
            self.model.get_submodule(name).weight.copy_(merged)


def dense_weight(layer):
    """A linear layer's weight in full precision: 4-bit NF4 weights dequantised."""
    quant_state = getattr(layer.weight, "quant_state", None)
    if quant_state is None:
        return layer.weight
    import bitsandbytes.functional as bnbf
    return bnbf.dequantize_4bit(layer.weight.data, quant_state)
