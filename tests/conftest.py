"""Shared fixtures: tiny random models that load in milliseconds, so every test runs on a CPU in seconds."""
import os
import sys

import pytest
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "experiments")]  # the card's files; the experiment and benchmark scripts
torch.set_num_threads(2)

import toy_world  # noqa: E402

SHARED = os.path.join(os.path.dirname(__file__), "..", "..", "shared")
BENCHMARKS = os.path.join(SHARED, "data", "benchmarks")


def pytest_configure(config):
    config.addinivalue_line("markers", "slow: subprocesses, kills, torchrun, notebook execution or long runs; the "
                            "fast tier is `python -m pytest -q tests -m 'not slow'`")
    # Deprecations inside the libraries, not in this project's calls (which use the new names): peft asks
    # transformers 5 for `is_gradient_checkpointing`, and a library imports torch.jit.script_method on first use.
    config.addinivalue_line("filterwarnings", "ignore:`is_gradient_checkpointing` is deprecated:FutureWarning")
    config.addinivalue_line("filterwarnings", "ignore:`gradient_checkpointing_enable` is deprecated:FutureWarning")
    config.addinivalue_line("filterwarnings", "ignore:`torch.jit.script_method` is deprecated:DeprecationWarning")


def side_by_side(commands, at_once=2):
    """Run {key: (argv, env)} as subprocesses, at most at_once at a time (one per core: more only contend), and
    return {key: (returncode, stdout, stderr)}. For tests whose subprocesses are mostly one-threaded start-up."""
    import subprocess
    import tempfile
    import time
    waiting, running, done = list(commands.items()), {}, {}
    while waiting or running:
        while waiting and len(running) < at_once:
            key, (argv, env) = waiting.pop(0)
            out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")  # files: a pipe could fill and block
            running[key] = (subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=err), out, err)
        for key, (process, out, err) in list(running.items()):
            if process.poll() is not None:
                out.seek(0), err.seek(0)
                done[key] = (process.returncode, out.read(), err.read())
                out.close(), err.close()
                del running[key]
        time.sleep(0.05)
    return done


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


def save_tiny_model(path, tokenizer, hidden):
    model = tiny_qwen(len(tokenizer), hidden=hidden, eos_token_id=tokenizer.eos_token_id,
                      pad_token_id=tokenizer.pad_token_id, bos_token_id=None)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, toy_tokenizer):
    """A folder holding a random 2-layer Qwen2 with the toy tokenizer (pad == eos, as in Qwen base).
    Hidden 64: every linear layer's in_features is a multiple of 64, as bitsandbytes' 4-bit CPU
    kernels on AVX512-BF16 machines need (real Qwen shapes are too)."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-model"), toy_tokenizer, hidden=64)


@pytest.fixture(scope="session")
def odd_width_model_dir(tmp_path_factory, toy_tokenizer):
    """Hidden 32: attention and MLP-input layers have in_features 32, which 4-bit NF4 cannot take everywhere."""
    return save_tiny_model(tmp_path_factory.mktemp("odd-model"), toy_tokenizer, hidden=32)


def comparable(rows):
    """Metrics rows without what differs between any two runs (speeds, seconds, peak memory)."""
    return [{k: v for k, v in r.items() if not (k.endswith("_s") or k.startswith("peak_"))} for r in rows]


@pytest.fixture(scope="session")
def qwen05_shape(tmp_path_factory):
    """A folder with Qwen2.5-0.5B's config only: the plan reads shapes, never weights."""
    from transformers import Qwen2Config
    path = tmp_path_factory.mktemp("qwen05-shape")
    Qwen2Config(vocab_size=151936, hidden_size=896, intermediate_size=4864, num_hidden_layers=24,
                num_attention_heads=14, num_key_value_heads=2, tie_word_embeddings=False).save_pretrained(path)
    return str(path)
