"""One float path for the toy world, so that every student's `python sept_mini.py` prints the same numbers.

A 0.42M-parameter model trained for 150 rounds amplifies the last bit of every sum: which kernels the math
libraries dispatch to (AVX2 or AVX-512, Intel's code or AMD's) and how many threads split a matrix product decide
which base model a seed builds and where its run ends. For the toy only, on an x86-64 CPU, this pins the path
before torch first computes anything:

    MKL_CBWR=AVX2,STRICT       MKL's strict conditional numerical reproducibility: its AVX2 code on any x86 CPU,
                               and matrix products that come out the same at any thread count (plain AVX2 holds
                               only at a fixed thread count on Intel CPUs)
    ATEN_CPU_CAPABILITY=avx2   torch's own vectorised kernels (softmax, norms, the fused AdamW) at AVX2
    ONEDNN_MAX_CPU_ISA=AVX2    oneDNN, where torch calls it

What the pin cannot reach is routed around. On a CPU torch sends exp, log, sqrt, sin and cos to MKL's vector math
library, whose last bits differ between Intel and AMD whatever MKL_CBWR says (an Intel Xeon and an AMD EPYC gave
other bits for exp and for AdamW's sqrt). So on the pinned path nothing of the toy calls them in float32:
AdamW runs fused (torch's own kernel, whose sqrt is the correctly rounded instruction), the losses take their
softmax from torch's softmax kernels (plumbing/fused.py), and the rotary embedding computes cos and sin in float64
and rounds them once (for every position the toy can reach, no rotary angle's cos or sin lies near a float32
rounding boundary: tests/test_floatpath.py checks it against 50-digit values). Matrix-vector products (one row)
also differ between vendors under the pin; the toy never computes one (its smallest product has 8 rows).
tests/test_floatpath.py records every kernel a short build and each arm's rounds call and keeps these out.

An AVX-512 CPU can run the AVX2 path; an AVX2-only CPU cannot run the AVX-512 one, so AVX2 is the path every
x86-64 laptop of the last decade shares. Real models are never pinned: their bf16 speed needs AVX-512.
The pin lasts for the process (torch reads these once). SEPT_FREE_FLOAT_PATH=1 turns it off.
Elsewhere (Apple silicon, other architectures, a GPU) the toy takes the machine's own path and its results
fall within the spread over seeds, not on the published digits.
"""
import os
import platform

PINNED_ENV = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
OFF_SWITCH = "SEPT_FREE_FLOAT_PATH"

status = "float path: not pinned"  # what the plan line says; set by pin_toy_float_path()
pinned = False                     # True once this process runs the toy on the pinned path


def cpu_vendor():
    """'Intel', 'AMD' or what the CPU calls itself: named in the plan line, so other digits have a visible cause."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("vendor_id"):
                    vendor = line.split(":", 1)[1].strip()
                    return {"GenuineIntel": "Intel", "AuthenticAMD": "AMD"}.get(vendor, vendor)
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def pin_toy_float_path(device="cpu"):
    """Pin the toy's float path (see the module docstring) and return a few words saying what holds."""
    global status, pinned
    import torch
    pinned = False
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
            pinned = True
            _round_rotary_once()
            status = (f"float path pinned: AVX2 kernels (MKL strict), any thread count, on this {cpu_vendor()} CPU "
                      f"({OFF_SWITCH}=1 frees it)")
        elif capability.startswith("AVX512"):
            status = (f"float path: NOT pinned (torch computed before the pin: run in a fresh process), {capability} "
                      f"kernels, {torch.get_num_threads()} threads")
        else:
            status = f"float path: not pinned ({capability} kernels: this CPU lacks AVX2)"
    return status


def adamw_options():
    """AdamW's keyword arguments: fused on the pinned path (torch's own kernel; the plain one takes its sqrt from
    MKL, whose bits differ between vendors), torch's default elsewhere."""
    return {"fused": True} if pinned else {}


def _round_rotary_once():
    """Qwen2's rotary cos and sin in float64, rounded once to the model's dtype (see the module docstring). The
    angles are transformers' own float32 ones, so the result is the correctly rounded cos and sin of them."""
    import warnings

    import torch
    warnings.filterwarnings("ignore", message="IProgress not found")  # tqdm.auto in Jupyter, as console.quiet_libraries
    from transformers.models.qwen2 import modeling_qwen2

    def forward(self, x, position_ids):
        freqs = position_ids[..., None].float() * self.inv_freq.to(device=x.device, dtype=torch.float)  # as transformers
        emb = torch.cat((freqs, freqs), dim=-1).double()
        return (emb.cos() * self.attention_scaling).to(x.dtype), (emb.sin() * self.attention_scaling).to(x.dtype)

    modeling_qwen2.Qwen2RotaryEmbedding.forward = forward
