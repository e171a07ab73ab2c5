"""plan_cards.py: the plan `python sept_mini.py --model Qwen2.5-0.5B` makes on the GPUs students have, and an estimated
time a round. Nothing downloads and no GPU is needed: each card is faked by its memory and compute capability, and
the plan reads Qwen2.5-0.5B's shape only.

    python experiments/plan_cards.py

The time is an ESTIMATE, not a measurement: the only GPU figure this project has is one lent H200 (12.8 s for the
default QLoRA round of 64 x 1,024 tokens, random weights of Qwen2.5-0.5B's shape, bf16, compiled static-cache
sampler; docs/real-models.md), scaled by the ratio of memory bandwidths (sampling, most of a round, is bound by it).
Cards below compute capability 8.0 also lose the compiled sampler and compute in fp16: expect more than the estimate.
"""
import argparse
import os
import sys
import tempfile
from unittest import mock

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the project root

import torch  # noqa: E402

from plumbing import cli, memory  # noqa: E402

H200_ROUND_S, H200_BANDWIDTH_GBS = 12.8, 4800  # measured round; the card's published memory bandwidth
CARDS = [  # name, memory (GB), compute capability, published memory bandwidth (GB/s)
    ("RTX 4060 8 GB", 8, (8, 9), 272),
    ("RTX 3070 8 GB", 8, (8, 6), 448),
    ("RTX 3060 12 GB", 12, (8, 6), 360),
    ("T4 15 GB (Colab, Kaggle)", 15, (7, 5), 320),
    ("A100 80 GB", 80, (8, 0), 2039),
]


def qwen05_shape(folder):
    from transformers import Qwen2Config
    Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24, num_attention_heads=14,
                num_key_value_heads=2, tie_word_embeddings=True).save_pretrained(folder)
    return folder


def card_plan(folder, memory_gb, capability):
    """The plan sept_mini.py makes for Qwen2.5-0.5B's defaults on a card of this memory and compute capability."""
    args = argparse.Namespace(device="cuda", dtype=cli.native_dtype("cuda", capability), finetune="qlora",
                              memory_budget_gb=min(memory.GPU_BUDGET_GB, 0.8 * memory_gb), sampler="auto",
                              grad_checkpointing="auto", micro_batch_tokens=None, gen_batch_size=None,
                              max_new_tokens=1024, model=folder)
    with mock.patch.object(cli, "cuda_capability", lambda: capability), \
            mock.patch.object(torch.cuda, "is_available", lambda: True):
        return memory.plan_memory(args, folder)


def main():
    argparse.ArgumentParser(description=__doc__.split("\n")[0]).parse_args()
    with tempfile.TemporaryDirectory() as folder:
        qwen05_shape(folder)
        for name, memory_gb, capability, bandwidth in CARDS:
            plan = card_plan(folder, memory_gb, capability)
            estimate = H200_ROUND_S * H200_BANDWIDTH_GBS / bandwidth
            print(f"{name}: {plan.text}\n  estimated {estimate / 60:.1f} min a round, {estimate * 100 / 3600:.1f} h for "
                  f"the default 100 rounds (H200's measured {H200_ROUND_S} s x {H200_BANDWIDTH_GBS} / {bandwidth} GB/s;"
                  f" an estimate, not a measurement)")


if __name__ == "__main__":
    main()
