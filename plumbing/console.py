"""Output: progress that reads well in a terminal, in Jupyter and in a log file; quiet libraries; and the
one-line error with exit code 2 that every tool ends with on bad input."""
import contextlib
import sys
import time

from plumbing import UsageError
from plumbing.distributed import ddp_rank


@contextlib.contextmanager
def one_line_errors(prog):
    """A UsageError raised inside becomes `prog: error: message` on stderr and exit code 2."""
    try:
        yield
    except UsageError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        sys.exit(2)


def quiet_libraries():
    """A first screen without library messages a user cannot act on: our generation config is explicit on purpose,
    a failed hub load is reported in one line, transformers' renamed gradient-checkpointing API (called by peft) is
    not ours to fix, bitsandbytes on AVX512-BF16 CPUs logs at import that an optional kernel package is absent, and
    tqdm.auto (imported by the libraries) warns in Jupyter without ipywidgets, where progress() falls back anyway."""
    import logging
    import warnings
    warnings.filterwarnings("ignore", message="IProgress not found")  # before transformers imports tqdm.auto

    import huggingface_hub
    import transformers
    logging.getLogger("bitsandbytes").setLevel(logging.ERROR)  # before bitsandbytes is first imported (by peft)
    warnings.filterwarnings("ignore", message=r".*(is_gradient_checkpointing|gradient_checkpointing_enable)",
                            category=FutureWarning)
    # fp16's loss scaler skips an update whose gradients overflowed (counted in the metrics row) while the schedule
    # advances, which torch reports as a misordered call: the skip is ours, on purpose
    warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`")
    transformers.utils.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()  # 'Loading weights' bars: instant for small models
    huggingface_hub.utils.logging.set_verbosity_error()
    if not sys.stderr.isatty():
        huggingface_hub.utils.disable_progress_bars()


def progress(iterable, desc, total=None, initial=0, inner=False):
    """One progress display per phase, readable wherever it lands: tqdm bars in a terminal; in Jupyter
    the outer loops only (an inner bar per generate call would add an output each), as widgets, or as plain lines
    where ipywidgets is missing; in a log file (stderr redirected) plain lines at most every 30 s, with no escape
    codes and no inner bars."""
    total = len(iterable) if total is None else total
    if desc is None or (inner and not sys.stderr.isatty()) or ddp_rank() != 0:  # under torchrun, rank 0 reports
        return iterable
    if "ipykernel" in sys.modules:  # Jupyter: widget bars (tqdm.auto) with ipywidgets; without it, text bars would
        try:                        # store every update in the notebook, so plain lines instead
            import ipywidgets  # noqa: F401
            from tqdm.auto import tqdm
        except ImportError:
            return _plain_progress(iterable, desc, total, initial)
        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=not inner)
    if sys.stderr.isatty():
        from tqdm import tqdm
        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=not inner)
    return _plain_progress(iterable, desc, total, initial)


def _plain_progress(iterable, desc, total, initial, every_s=30.0):
    t0 = last = time.time()
    for n, item in enumerate(iterable, initial + 1):
        yield item
        if time.time() - last >= every_s or n == total:
            print(f"{desc}: {n}/{total} ({time.time() - t0:.0f}s)", file=sys.stderr, flush=True)
            last = time.time()


def report(line):
    """A line for the reader on stdout, from rank 0 only, written so that it does not break a progress bar."""
    if ddp_rank() == 0:
        from tqdm import tqdm
        tqdm.write(line)
