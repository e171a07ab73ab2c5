"""plumbing: everything the SePT scripts need that is not SePT.

Nothing in this package is about self-training, temperatures or math: it is the machinery any small
training script carries, kept out of sept_mini.py so that file reads as the algorithm (the way nanoGPT keeps
its configurator and nanochat its checkpoint manager apart). A student can skip all of it. It never imports
sept_mini.py. In the order sept_mini.main() uses it:

    cli.py          the flags, their checks and the defaults that depend on the model; defaults the tools share
    distributed.py  torchrun: join and leave the process group, each rank's share, sums over ranks, DDP
    data.py         questions from 'toy', a local file or the hub; each round's questions
    models.py       a model name, folder or hub id to a path; loading for full, LoRA and QLoRA training
    memory.py       the memory plan, the out-of-memory retry, and the merged (fast) sampler
    rundir.py       the run directory: config, metrics, samples, atomic checkpoints, resume
    console.py      progress output, quiet libraries, and the one-line error every tool ends with

Helpers raise UsageError for bad input, one line naming the fix; each tool's main turns it into
`prog: error: ...` and exit code 2 (console.one_line_errors), so a notebook calling a helper gets an
exception it can read, not a SystemExit.
"""


class UsageError(Exception):
    """Bad input or a state the user must fix: the message is one line that names the fix."""
