"""The toy's float path is pinned (plumbing/floatpath.py): a short toy build and a few SePT rounds, each in a fresh
process as a student would start them, compute the same bits at 1, 2 and 4 threads and with the instruction set
left free or held to AVX2 by hand (what a CPU without AVX-512 runs); none of them calls a kernel whose bits depend
on the CPU's vendor. These hold on any x86-64 CPU. Hashes of the results are recorded per CPU kind (vendor and
instruction set) and asserted only on the kind they were verified on; elsewhere the test says what it compared."""
import hashlib
import json
import os
import platform
import sys

import pytest

import toy_world
from conftest import side_by_side

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
X86 = platform.machine().lower() in ("x86_64", "amd64")
HELD_TO_AVX2 = {"MKL_CBWR": "AVX2,STRICT", "ATEN_CPU_CAPABILITY": "avx2"}


def has_avx512():
    try:
        with open("/proc/cpuinfo") as f:
            return "avx512f" in f.read()
    except OSError:
        return False


def clean_env(threads, extra_env=None):
    env = {k: v for k, v in os.environ.items() if k not in ("MKL_CBWR", "ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA")}
    # PASSIVE: idle OpenMP threads sleep instead of spinning, which 4 threads on a 2-core machine would otherwise
    # do at every tiny op (it schedules, never computes: the bits are the same)
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads), OMP_WAIT_POLICY="PASSIVE",
               **(extra_env or {}))
    return env


# Runs scripts one after another in ONE fresh process, each as `python SCRIPT ARGS` would run it: a student's
# fresh start, for the price of one interpreter (a second start of torch costs more than the toy work here).
SCRIPTS = r"""
import json, runpy, sys
sys.path.insert(0, ".")
for argv in json.loads(sys.argv[1]):
    sys.argv = argv
    try:
        runpy.run_path(argv[0], run_name="__main__")
    except SystemExit as e:
        if e.code:
            raise
"""


def scripts_command(*argvs):
    return [sys.executable, "-c", SCRIPTS, json.dumps(argvs)]


def short_run_argv(cache, out, *flags):
    """sept_mini.py for 3 rounds of 32 questions on the cached short toy base."""
    return ["sept_mini.py", "--cache-dir", str(cache), "--out", str(out), "--rounds", "3", "--prompts-per-round", "32",
            "--eval-every", "3", "--eval-size", "32", "--save-every", "100", *flags]


def metrics_hash(out):
    """The hash of a run's metrics rows, less what differs between any two runs (times, memory)."""
    rows = [json.loads(line) for line in open(os.path.join(out, "metrics.jsonl"))]
    rows = [{k: v for k, v in r.items() if not (k.endswith("_s") or k.startswith("peak_"))} for r in rows]
    return hashlib.sha256(json.dumps(rows, sort_keys=True).encode()).hexdigest()


def fingerprints(folder, configs, arms_on_the_first_base):
    """{(threads, extra_env or None): (the toy base's weights hash, the run's metrics hash, the plan line)}: for each
    configuration, in its own fresh process, `python toy_world.py --steps 30` (a short base), then 3 rounds of
    `python sept_mini.py` on it; the first configuration's process then runs each of arms_on_the_first_base
    {name: flags} on its base (into folder/arm-NAME). Two processes at a time (the pinned path computes the same bits
    under any load, and most of each process is one-threaded start-up); the first, longest, starts first."""
    commands = {}
    for i, (threads, extra_env) in enumerate(configs):
        cache, out = folder / f"cache-{i}", folder / f"run-{i}"
        build = ["toy_world.py", "--steps", "30", "--cache-dir", str(cache)]
        arms = [short_run_argv(cache, folder / f"arm-{arm}", *flags)
                for arm, flags in (arms_on_the_first_base.items() if i == 0 else [])]
        commands[threads, extra_env] = (scripts_command(build, short_run_argv(cache, out), *arms),
                                        clean_env(threads, dict(extra_env or ())))
    done = side_by_side(commands)
    result = {}
    for i, key in enumerate(configs):
        code, stdout, stderr = done[key]
        assert code == 0, (key, stderr[-2000:])
        cache, out = folder / f"cache-{i}", folder / f"run-{i}"
        base = next(line for line in stdout.splitlines() if line.startswith(str(cache)))
        weights = hashlib.sha256(open(os.path.join(base, "model.safetensors"), "rb").read()).hexdigest()
        plan = next(line for line in stdout.splitlines() if line.startswith("plan:"))
        result[key] = (weights, metrics_hash(out), plan)
    return result


AVX2 = tuple(HELD_TO_AVX2.items())
FREE = (("SEPT_FREE_FLOAT_PATH", "1"),)


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return tmp_path_factory.mktemp("floatpath")


@pytest.fixture(scope="module")
def runs(folder):
    """Every configuration the tests below compare; the rivals run on the first one's base, after its default run."""
    rivals = {arm: flags for arm, flags in ARMS.items() if flags}
    configs = [(2, None), (1, None), (4, None), (2, AVX2)] + ([(4, FREE)] if has_avx512() else [])
    found = fingerprints(folder, configs, rivals)
    found["rivals"] = {"sept": found[2, None][1], **{arm: metrics_hash(folder / f"arm-{arm}") for arm in rivals}}
    return found


@pytest.mark.slow
@pytest.mark.skipif(not X86, reason="the pinned path is x86-64's AVX2 path")
def test_toy_float_path_is_the_same_at_any_thread_count_and_instruction_set(runs):
    reference = runs[2, None]
    assert "0.42M parameters" in reference[2] and "float path pinned" in reference[2], reference[2]
    assert "budget" not in reference[2]  # no memory budget for a 0.42M-parameter model
    for threads, env in ((1, None), (4, None), (2, AVX2)):
        assert runs[threads, env][:2] == reference[:2], (threads, env)


@pytest.mark.slow
@pytest.mark.skipif(not (X86 and has_avx512()), reason="only an AVX-512 CPU has another path to drift to")
def test_freeing_the_float_path_changes_the_bits_on_avx512(runs):
    """The control: the test above would see a drift, because without the pin this CPU computes other bits."""
    pinned, free = runs[4, None], runs[4, FREE]
    assert "float path: free" in free[2]
    assert free[0] != pinned[0]


def test_real_models_are_never_pinned(monkeypatch):
    """Only --model toy pins: a real model's bf16 speed needs the CPU's own AVX-512 kernels."""
    from plumbing import distributed, floatpath
    called = []
    monkeypatch.setattr(floatpath, "pin_toy_float_path", lambda device: called.append(device))
    args = type("Args", (), {"device": "cpu", "model": "./some-folder", "prompts_per_round": 8, "rollouts": 1,
                             "updates_per_round": 1})()
    distributed.compute_init(args)
    assert called == []
    args.model = "toy"
    distributed.compute_init(args)
    assert called == ["cpu"]


def test_the_off_switch_frees_the_path(monkeypatch):
    from plumbing import floatpath
    monkeypatch.setenv(floatpath.OFF_SWITCH, "1")
    monkeypatch.setattr(floatpath, "status", floatpath.status)
    assert floatpath.pin_toy_float_path("cpu").startswith("float path: free")
    assert "pinned" not in floatpath.status


# The metrics of 3-round runs on the short toy base, on the pinned path, by the CPU kind they were verified on:
# (vendor, instruction set) -> {arm: hash}. Recorded with requirements.txt's libraries (constraints.txt): a new torch
# or transformers may move the last bits and needs these recorded again. A refactor of the story script must leave
# every digit where it was. Recorded again when the pin became vendor-independent (MKL strict, fused AdamW, softmax
# kernels, rotary cos/sin rounded once); a kind is added here only from a run on that kind.
RECORDED = {  # rows with the label-free signals (entropy, boxed, agreement); without them, the former hashes
    ("AMD", "AVX512"): {
        "sept": "d7e9d9674a7e4e2b698bd4aeaa836fb798784d3598ea7ebd48911415d205cdd2",
        "offline": "a4fb3b06ae0e91e0b8ba8f7d7a0da9aa87d1c516088b86cb02285f8a42f5c76d",
        "emft": "95e71e30014ab77e5a2b799ac3e954981bf587479101a02cf74b37d2aa5ccd79",
        "grpo": "d9573d2bac861a7d757d9ce0b03bf2808c8db5fbeec184176223620d24e9e322",
    },
}
ARMS = {"sept": [], "offline": ["--offline"], "emft": ["--objective", "emft", "--lr", "2e-5"],
        "grpo": ["--objective", "grpo", "--rollouts", "4", "--prompts-per-round", "8", "--lr", "2e-4"]}


def cpu_kind():
    """(vendor, instruction set): the kind a recorded hash is verified on."""
    from plumbing import floatpath
    return floatpath.cpu_vendor(), "AVX512" if has_avx512() else "AVX2"


def comparisons(kind):
    """What the slow tests below compare on a CPU of this kind: what must hold on every x86-64 CPU, and the recorded
    hashes only where they were verified."""
    always = ["1 thread = 2 threads", "4 threads = 2 threads", "instruction set held to AVX2 = left to the pin",
              "the pin reaches every process (plan line)"]
    if kind in RECORDED:
        return always + [f"recorded metrics of {', '.join(RECORDED[kind])} (recorded on {' '.join(kind)})"]
    return always


def test_a_cpu_kind_without_recorded_hashes_compares_what_holds_everywhere(monkeypatch):
    """A student's CPU of another vendor or kind: no recorded hash is asserted, every invariant still is."""
    unknown = ("HygonGenuine", "AVX2")
    assert unknown not in RECORDED
    compared = comparisons(unknown)
    assert not any("recorded" in c for c in compared)
    assert "1 thread = 2 threads" in compared and "instruction set held to AVX2 = left to the pin" in compared
    assert any("recorded metrics" in c for c in comparisons(next(iter(RECORDED))))


@pytest.mark.slow
@pytest.mark.skipif(not X86, reason="recorded on the pinned x86-64 path")
def test_the_default_run_and_each_rival_keep_their_recorded_metrics(runs):
    kind = cpu_kind()
    print(f"CPU kind {kind}: compared " + "; ".join(comparisons(kind)))  # shown with -s, and in the CI log on failure
    assert set(runs["rivals"]) == set(ARMS)
    if kind in RECORDED:
        assert runs["rivals"] == RECORDED[kind]  # the default run (sept) and each rival
    else:  # no hash verified on this kind: the invariants of the test above are what holds here
        assert runs[1, None][1] == runs[2, None][1] == runs[4, None][1]


# Which kernels the toy may call on the pinned path. torch sends these to MKL's vector math library, whose last bits
# differ between Intel and AMD; a matrix-vector product (a single row or column) is MKL's gemv, which strict CNR does
# not make vendor-independent. float64 cos and sin are the rotary table, rounded once (checked below).
VECTOR_MATH = {"exp", "exp_", "log", "log_", "log2", "log10", "log1p", "expm1", "sqrt", "sqrt_", "sin", "cos", "tan",
               "tanh", "erf", "erfc", "erfinv", "acos", "asin", "atan", "_foreach_sqrt", "_foreach_exp", "_foreach_log"}
RECORD_KERNELS = r"""
import collections, json, sys
sys.path.insert(0, ".")
import torch
from torch.utils._python_dispatch import TorchDispatchMode
seen = collections.Counter()
class Record(TorchDispatchMode):
    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        tensors = [a for a in args if isinstance(a, torch.Tensor)]
        if name in ("mm", "addmm", "bmm", "baddbmm", "mv", "addmv", "dot"):  # by the smallest side of a matrix
            matrices = [t for t in tensors if t.dim() >= 2]
            seen[f"{name} side {min(min(t.shape[-2:]) for t in matrices) if matrices else 1}"] += 1
        else:
            seen[f"{name} {tensors[0].dtype if tensors else ''}"] += 1
        return func(*args, **(kwargs or {}))
Record().__enter__()  # for the scripts below, run as SCRIPTS runs them
""" + SCRIPTS + """
print("KERNELS", json.dumps(sorted(seen)))
"""


@pytest.mark.slow
@pytest.mark.skipif(not X86, reason="the pinned path is x86-64's AVX2 path")
def test_the_toy_calls_no_kernel_whose_bits_depend_on_the_vendor(tmp_path):
    cache = tmp_path / "cache"
    argvs = [["toy_world.py", "--steps", "3", "--cache-dir", str(cache)]] + [
        ["sept_mini.py", "--cache-dir", str(cache), "--out", str(tmp_path / arm), "--rounds", "1", "--eval-every", "0",
         "--prompts-per-round", "8", *flags] for arm, flags in ARMS.items()]  # evaluation samples as rounds do
    argv = [sys.executable, "-c", RECORD_KERNELS, json.dumps(argvs)]
    code, stdout, stderr = side_by_side({"record": (argv, clean_env(2))})["record"]
    assert code == 0, stderr[-2000:]
    assert "float path pinned" in stdout
    kernels = json.loads(next(line for line in stdout.splitlines() if line.startswith("KERNELS"))[8:])
    assert "_fused_adamw_ " in kernels and "addmm side 8" in kernels  # the recording sees the toy's work
    float32_vector_math = [k for k in kernels if k.split()[0] in VECTOR_MATH and not k.endswith("float64")]
    assert float32_vector_math == []
    assert {k for k in kernels if k.split()[0] in VECTOR_MATH} <= {"cos torch.float64", "sin torch.float64"}
    assert [k for k in kernels if k.endswith(" side 1") or k.split()[0] in ("mv", "addmv", "dot")] == []


def test_rotary_cos_and_sin_round_the_same_from_any_float64_library():
    """The toy's rotary cos and sin are float64 values rounded once to float32 (plumbing/floatpath.py). A float64
    library (MKL's on Intel or on AMD) errs by about 2^-52 relatively; for every angle the toy can reach, the exact
    value lies at least 2^-40 from a float32 rounding boundary, so every library rounds it to the same float."""
    import mpmath
    import numpy as np
    import torch
    config = toy_world.build_model(toy_world.build_tokenizer()).config
    dim = config.hidden_size // config.num_attention_heads
    inv_freq = 1.0 / (config.rope_parameters["rope_theta"] ** (torch.arange(0, dim, 2, dtype=torch.float) / dim))
    angles = (torch.arange(config.max_position_embeddings)[:, None].float() * inv_freq).flatten().unique()
    mpmath.mp.dps = 40
    closest = 1.0
    for angle in angles.tolist():
        for f in (mpmath.cos, mpmath.sin):
            exact = f(mpmath.mpf(angle))
            if exact == 0:
                continue
            nearest = np.float32(float(exact))
            neighbours = (np.nextafter(nearest, np.float32(-np.inf)), np.nextafter(nearest, np.float32(np.inf)))
            boundaries = [(mpmath.mpf(float(nearest)) + mpmath.mpf(float(n))) / 2 for n in neighbours]
            closest = min(closest, float(min(abs(exact - b) for b in boundaries) / abs(exact)))
    assert closest > 2.0 ** -40, closest
