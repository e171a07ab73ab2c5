"""One float path for the toy world, so that every student's `python sept_mini.py` prints the same numbers.

A 0.42M-parameter model trained for 150 rounds amplifies the last bit of every sum: which kernels the math
libraries dispatch to (AVX2 or AVX-512) and how many threads split a matrix product decide which base model
a seed builds and where its run ends. For the toy only, on an x86-64 CPU, this pins the instruction set before
torch first computes anything:

    MKL_CBWR=AVX2              MKL's conditional numerical reproducibility: its AVX2 code path on any x86 CPU,
                               and matrix products that come out the same at any thread count
    ATEN_CPU_CAPABILITY=avx2   torch's own vectorised kernels (softmax, norms, AdamW) at AVX2
    ONEDNN_MAX_CPU_ISA=AVX2    oneDNN, where torch calls it

With these, 1, 2 and 4 threads compute the same bits (tests/test_floatpath.py), so the thread count stays free
and a laptop keeps its cores. Without MKL_CBWR, 4 threads already split MKL's products differently.

An AVX-512 CPU can run the AVX2 path; an AVX2-only CPU cannot run the AVX-512 one, so AVX2 is the path every
x86-64 laptop of the last decade shares. Real models are never pinned: their bf16 speed needs AVX-512.
The pin lasts for the process (torch reads these once). SEPT_FREE_FLOAT_PATH=1 turns it off.
Elsewhere (Apple silicon, other architectures, a GPU) the toy takes the machine's own path and its results
fall within the spread over seeds, not on the published digits.
"""
import os
import platform

PINNED_ENV = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
OFF_SWITCH = "SEPT_FREE_FLOAT_PATH"

status = "float path: not pinned"  # what the plan line says; set by pin_toy_float_path()


def pin_toy_float_path(device="cpu"):
    """Pin the toy's float path (see the module docstring) and return a few words saying what holds."""
    global status
    import torch
    if os.environ.get(OFF_SWITCH) == "1":
        status = f"float path: free ({OFF_SWITCH}=1)"
    elif device != "cpu":
        status = f"float path: {device}'s own, not pinned"
    elif platform.machine().lower() not in ("x86_64", "amd64"):
        status = f"float path: not pinned on {platform.machine()} (results within the seeds' spread)"
    else:
        os.environ.update(PINNED_ENV)  # read lazily, at torch's and MKL's first computation
        capability = torch.backends.cpu.get_cpu_capability()
        if capability == "AVX2":
            status = f"float path pinned: AVX2 kernels, any thread count ({OFF_SWITCH}=1 frees it)"
        elif capability.startswith("AVX512"):
            status = (f"float path: NOT pinned (torch computed before the pin: run in a fresh process), {capability} "
                      f"kernels, {torch.get_num_threads()} threads")
        else:
            status = f"float path: not pinned ({capability} kernels: this CPU lacks AVX2)"
    return status
