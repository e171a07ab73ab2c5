"""Models: a name, folder or hub id to a local path; loading for full, LoRA or QLoRA training (with the
quirks of 4-bit NF4 on CPU and GPU); and the tokens that end an answer."""
import os
import sys

import torch

from plumbing import UsageError
from plumbing.data import check_hub_reachable
from plumbing.distributed import ddp_rank


def first_line(e, width):
    return str(e).splitlines()[0][:width] if str(e) else ""


def resolve_model_path(name, cache_dir, seed=0):
    """'toy' -> the cached toy model of this build seed (built on first use); a folder stays;
    'Qwen2.5-0.5B' -> 'Qwen/Qwen2.5-0.5B'. A hub id is checked (its config fetched) before anything heavy."""
    if name == "toy":
        import toy_world
        return toy_world.load_or_build(cache_dir, seed)
    if os.path.isdir(os.path.expanduser(name)):
        path = os.path.expanduser(name)
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise UsageError(f"model folder {path} has no config.json: pass a folder saved with save_pretrained, "
                             "'toy', or a hub id")
        return path
    if name.startswith((".", "/", "~")) or name.count("/") > 1 or os.path.exists(name):
        raise UsageError(f"model folder not found: {name} (pass an existing folder, 'toy', or a hub id such as "
                         "Qwen/Qwen2.5-0.5B)")
    if "/" not in name and name.lower().startswith("qwen"):
        name = "Qwen/" + name
    check_hub_reachable(name, "model", "a local model folder (or 'toy')")
    from transformers import AutoConfig
    try:
        AutoConfig.from_pretrained(name)
    except Exception as e:
        raise UsageError(f"could not load model '{name}' ({type(e).__name__}: unknown id?): pass a hub id such as "
                         "Qwen/Qwen2.5-0.5B, a local folder, or 'toy'") from None
    return name


def check_4bit(device):
    """QLoRA needs bitsandbytes able to quantize to NF4 on this device; fail early and plainly if not."""
    try:
        import bitsandbytes.functional as bnbf
        bnbf.quantize_4bit(torch.randn(64, 64, device=device), quant_type="nf4")
    except Exception as e:
        raise UsageError(f"--finetune qlora needs bitsandbytes 4-bit support on {device} ({type(e).__name__}: "
                         f"{first_line(e, 80)}); use --finetune lora or install bitsandbytes>=0.45") from None
    if device == "cpu" and ddp_rank() == 0:
        print("note: 4-bit on a CPU runs through bitsandbytes' slow CPU kernels (it saves memory, not time); "
              "--finetune lora is faster where the weights fit", file=sys.stderr)


def layers_kept_out_of_4bit(path):
    """Linear layers that stay in 16/32-bit under QLoRA: the output layer (as transformers does by
    default) and every layer whose in_features is not a multiple of 64. bitsandbytes quantizes in
    blocks of 64 inputs, and its CPU kernel (on AVX512-BF16 CPUs) cannot repack other widths.
    Returns (names, unfit) where unfit lists (name, in_features) of the odd-width layers."""
    from transformers import AutoConfig, AutoModelForCausalLM
    with torch.device("meta"):  # the shapes only: no memory, no weights read
        skeleton = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(path))
    head = skeleton.get_output_embeddings()
    linears = [(n, m) for n, m in skeleton.named_modules() if isinstance(m, torch.nn.Linear)]
    unfit = [(n, m.in_features) for n, m in linears if m is not head and m.in_features % 64]
    return [n for n, m in linears if m is head] + [n for n, _ in unfit], unfit


TORCH_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


class LossScaler(torch.amp.GradScaler):
    """fp16 training needs loss scaling (its small gradients underflow without it): torch's GradScaler, which skips an
    update whose gradients overflowed and halves its scale. For any other dtype it is disabled and passes everything
    through. It counts the updates it skipped (the metrics rows' fp16_skipped_updates)."""

    def __init__(self, dtype="fp32", device="cpu"):
        super().__init__(device, enabled=dtype == "fp16")
        self.skipped = 0

    def update(self, new_scale=None):
        scale = self.get_scale()
        super().update(new_scale)
        self.skipped += int(self.is_enabled() and self.get_scale() < scale)  # the scale backs off only on overflow


NO_LOSS_SCALING = LossScaler()


def load_model(path, finetune, device, lora_rank=16, lora_dropout=0.05, grad_checkpointing=False, dtype=None):
    """(model, tokenizer). finetune: 'full' (fp32 weights, all trained), 'lora', 'qlora' (4-bit NF4
    base + LoRA), or 'none' (as stored, for evaluation). dtype: of the frozen weights and the computation
    ('fp32', 'bf16' or 'fp16'; default bf16 for LoRA/QLoRA on CUDA, else fp32; cli.native_dtype is the rule the
    scripts pass); LoRA weights are fp32 whatever it is."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        dtype = dtype or ("bf16" if device == "cuda" and finetune != "full" else "fp32")
        kwargs = {"dtype": TORCH_DTYPES[dtype]}
        if finetune == "qlora":
            from transformers import BitsAndBytesConfig
            skip, unfit = layers_kept_out_of_4bit(path)
            if unfit and ddp_rank() == 0:
                print(f"note: {len(unfit)} linear layers have in_features not a multiple of 64 (e.g. {unfit[0][0]}, "
                      f"{unfit[0][1]}): kept out of 4-bit, trained with LoRA on full-precision weights",
                      file=sys.stderr)
            kwargs["quantization_config"] = BitsAndBytesConfig(
                load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
                bnb_4bit_compute_dtype=kwargs["dtype"], llm_int8_skip_modules=skip if unfit else None)
            kwargs["device_map"] = {"": torch.cuda.current_device() if device == "cuda" else device}  # this rank's GPU
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except Exception as e:
        raise UsageError(f"could not load model '{path}' ({type(e).__name__}: {first_line(e, 100)}): "
                         "pass a folder saved with save_pretrained, a hub id, or 'toy'") from None
    if finetune != "qlora":
        model.to(device)
    for module in model.modules():
        # bitsandbytes 0.50 on AVX512-BF16 CPUs repacks 4-bit weights for an inference-only kernel on the
        # first no-grad forward (our sampling); training then runs through that kernel and fails. Keep
        # the one layout that both sampling and training support.
        if hasattr(module, "support_avx512bf16_for_cpu"):
            module.support_avx512bf16_for_cpu = False
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    gc_kwargs = {"use_reentrant": False}  # the reentrant variant gives zero LoRA grads when inputs are frozen
    if finetune == "qlora":
        from peft import prepare_model_for_kbit_training
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=grad_checkpointing,
                                                gradient_checkpointing_kwargs=gc_kwargs)
    elif grad_checkpointing and hasattr(model, "activation_checkpointing_enable"):  # transformers 5's name for it
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=gc_kwargs)
    elif grad_checkpointing:  # older transformers
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=gc_kwargs)
    if finetune in ("lora", "qlora"):
        from peft import LoraConfig, get_peft_model
        config = LoraConfig(r=lora_rank, lora_alpha=2 * lora_rank, lora_dropout=lora_dropout,
                            target_modules="all-linear", task_type="CAUSAL_LM")
        model = get_peft_model(model, config, autocast_adapter_dtype=True)  # LoRA weights (and AdamW state) in fp32
    return model, tokenizer


def stop_token_ids(model, tokenizer):
    """Every token that ends an answer: the tokenizer's EOS, the model's configured EOS ids, and the
    chat template's end-of-turn token (Qwen base models end a chat turn with <|im_end|>)."""
    ids = {tokenizer.eos_token_id}
    configured = getattr(model.generation_config, "eos_token_id", None)
    ids.update(configured if isinstance(configured, list) else [configured])
    if "<|im_end|>" in tokenizer.get_vocab():
        ids.add(tokenizer.convert_tokens_to_ids("<|im_end|>"))
    return sorted(i for i in ids if i is not None)


def trainable_state(model):
    """The weights being trained, on CPU: what a checkpoint keeps."""
    return {k: v.detach().cpu() for k, v in model.named_parameters() if v.requires_grad}
