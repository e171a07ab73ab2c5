"""Memory and speed, engineering a reader of the algorithm may skip: the plan (how many prompts per generate
call, how many tokens per forward/backward, gradient checkpointing, which sampler), the out-of-memory retry
that halves a step's size, and the merged sampler that samples from a plain copy of the LoRA policy."""
import dataclasses
import sys

import torch

from plumbing import UsageError
from plumbing.models import first_line

GPU_BUDGET_GB = 6.0  # so the defaults run on an 8 GB card; a smaller card gets 80% of its memory


@dataclasses.dataclass
class Plan:
    """How a round is cut to fit the device. Read by the loop; an out-of-memory retry changes it (changes)."""
    sampler: str               # 'fast' (a merged copy of the policy) or 'plain' (the training model itself)
    gen_batch_size: int        # prompts per generate call
    micro_batch_tokens: int    # padded tokens per forward/backward
    grad_checkpointing: bool
    static_cache: bool         # the fast sampler on CUDA: a preallocated KV cache, compiled forward
    text: str = ""             # the plan as one line, printed at the start
    changes: dict = dataclasses.field(default_factory=dict)  # flag -> size, since the last metrics row

    def as_flags(self):
        """The plan's values under the names of the flags they resolve (saved in config.json)."""
        return {"sampler": self.sampler, "gen_batch_size": self.gen_batch_size,
                "micro_batch_tokens": self.micro_batch_tokens, "grad_checkpointing": "on" if self.grad_checkpointing
                else "off"}

    def take_changes(self):
        changes, self.changes = self.changes, {}
        return changes


def plan_memory(args, model_path, world=1):
    """Resolve the flags left to 'auto' from the model's shape and the device, into a Plan.
    CUDA: gradient checkpointing on for real models, micro-batches of 8,192 tokens, and generation batches whose
    KV cache fits a quarter of the budget. CPU: no checkpointing, 16,384 tokens, 64 prompts (memory is rarely
    the limit there)."""
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(model_path)
    with torch.device("meta"):
        n_params = sum(p.numel() for p in AutoModelForCausalLM.from_config(config).parameters())
    text = config.get_text_config()
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // text.num_attention_heads
    cuda, dtype_bytes = args.device == "cuda", 2 if args.device == "cuda" else 4
    kv_heads = getattr(text, "num_key_value_heads", text.num_attention_heads)
    kv_per_token = 2 * text.num_hidden_layers * kv_heads * head_dim * dtype_bytes
    budget = min(GPU_BUDGET_GB, 0.8 * torch.cuda.get_device_properties(0).total_memory / 2 ** 30) if cuda else None
    merged_gb = n_params * dtype_bytes / 2 ** 30  # the fast sampler's copy of the policy
    sampler = args.sampler
    if sampler == "auto":
        fits = not cuda or merged_gb < 0.4 * budget  # a 0.5B model's 1 GB copy fits; a 7B model's 14 GB does not
        sampler = "fast" if args.finetune in ("lora", "qlora") and fits else "plain"
    checkpointing = args.grad_checkpointing
    if checkpointing == "auto":
        checkpointing = "on" if cuda and args.model != "toy" else "off"
    micro_batch_tokens = args.micro_batch_tokens or (8192 if cuda else 16384)
    seq_tokens = args.max_new_tokens + 512  # answer cap plus a generous prompt
    gen_batch_size = args.gen_batch_size
    if gen_batch_size is None:
        gen_batch_size = max(1, min(64, int(0.25 * budget * 2 ** 30 / (kv_per_token * seq_tokens)))) if cuda else 64
    weights_gb = n_params * (0.6 if args.finetune == "qlora" else dtype_bytes) / 2 ** 30
    kv_gb = gen_batch_size * seq_tokens * kv_per_token / 2 ** 30
    line = (f"plan: {n_params / 1e6:.0f}M parameters, {args.finetune}, sampler {sampler}, generation batches of "
            f"{gen_batch_size} prompts, micro-batches of {micro_batch_tokens} tokens, gradient checkpointing "
            f"{checkpointing}")
    if cuda:
        line += (f"; estimated GPU memory: weights {weights_gb:.1f} GB + sampler copy "
                 f"{merged_gb if sampler == 'fast' else 0:.1f} GB + KV cache {kv_gb:.1f} GB, budget {budget:.1f} GB")
    if world > 1:
        line += f"; {world} processes (torchrun), each with its share of every round"
    return Plan(sampler, gen_batch_size, micro_batch_tokens, checkpointing == "on",
                static_cache=sampler == "fast" and cuda, text=line)


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


class Policy:
    """What generate samples from: the merged copy (--sampler fast) or the trained model itself (plain), with the
    out-of-memory retry. The fast paths that only CUDA takes (the static KV cache with its compiled forward, the
    merged copy there) have never run in this project's tests; when one raises, sampling falls back to the path
    the tests cover, says so in one line, and stays there."""

    def __init__(self, model, plan, device):
        self.trained, self.plan, self.merged = model, plan, None
        if plan.sampler == "fast":
            try:
                self.merged = MergedSampler(model, torch.bfloat16 if device == "cuda" else torch.float32)
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
