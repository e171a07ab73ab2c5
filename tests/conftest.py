"""Shared fixtures: tiny random models that load in milliseconds, so every test runs on a CPU in seconds."""
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
torch.set_num_threads(2)

import toy_world  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
BENCHMARKS = os.path.join(SHARED, "data", "benchmarks")


def tiny_qwen(vocab_size, hidden=32, layers=2, tie=True, seed=0, **extra):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=4,
                         num_key_value_heads=2, intermediate_size=2 * hidden, max_position_embeddings=256,
                         tie_word_embeddings=tie, **extra)
    return Qwen2ForCausalLM(config)


@pytest.fixture(scope="session")
def toy_tokenizer():
    return toy_world.build_tokenizer()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, toy_tokenizer):
    """A folder holding a random 2-layer Qwen2 with the toy tokenizer (pad == eos, as in Qwen base)."""
    path = str(tmp_path_factory.mktemp("tiny-model"))
    model = tiny_qwen(len(toy_tokenizer), eos_token_id=toy_tokenizer.eos_token_id,
                      pad_token_id=toy_tokenizer.pad_token_id, bos_token_id=None)
    model.save_pretrained(path)
    toy_tokenizer.save_pretrained(path)
    return path
