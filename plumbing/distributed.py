"""torchrun: data parallel with one process per GPU (or per CPU process group, gloo, for the tests).

A plain `python sept_mini.py` never enters the process group: world size 1, rank 0, every helper here a
no-op or the identity. Under torchrun each rank samples and trains on its share of every round and DDP
averages the gradients; rank 0 alone writes the run directory and reports (the `main_rank` of the loop).
"""
import contextlib
import os

import torch

from plumbing import UsageError


def ddp_rank():
    import torch.distributed as dist
    return dist.get_rank() if dist.is_initialized() else int(os.environ.get("RANK", 0))


def ddp_world():
    import torch.distributed as dist
    return dist.get_world_size() if dist.is_initialized() else int(os.environ.get("WORLD_SIZE", 1))


def compute_init(args):
    """Set threads (CPU), pin the toy's float path (plumbing/floatpath.py), join torchrun's group (NCCL on CUDA,
    gloo on CPU) with one device per rank; return (rank, world). Alone: (0, 1) and no group."""
    if args.device == "cpu" and "OMP_NUM_THREADS" not in os.environ:
        torch.set_num_threads(os.cpu_count() or 1)
    if args.model == "toy":
        from plumbing import floatpath
        floatpath.pin_toy_float_path(args.device)  # before torch computes anything: every CPU then gets the same bits
    rank, world = ddp_rank(), ddp_world()
    if world > 1 and args.prompts_per_round // world * args.rollouts < args.updates_per_round:
        raise UsageError(f"--prompts-per-round {args.prompts_per_round} split over {world} processes leaves some with "
                         f"fewer answers than --updates-per-round {args.updates_per_round}: raise --prompts-per-round "
                         "or use fewer processes")
    if world == 1:
        return rank, world
    import torch.distributed as dist
    if args.device == "cuda":
        local_rank = int(os.environ["LOCAL_RANK"])
        if local_rank >= torch.cuda.device_count():
            raise UsageError(f"torchrun started more processes per node than this node has GPUs "
                             f"({torch.cuda.device_count()}): lower --nproc-per-node")
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if args.device == "cuda" else "gloo")
    dist.barrier()  # every rank has checked its input before rank 0 writes anything
    return rank, world


def compute_cleanup():
    """Leave the process group cleanly (no-op alone): no collective in flight, nothing left holding it."""
    import gc
    import torch.distributed as dist
    if not dist.is_initialized():
        return
    dist.barrier()
    gc.collect()  # DDP's reducer sits in reference cycles; collected now, not during interpreter shutdown
    dist.destroy_process_group()



def rank_seed(rank=None):
    """Each rank draws its own samples; rank 0 draws what a single process would."""
    return 1_000_003 * (ddp_rank() if rank is None else rank)


def rank_share(items, rank=None, world=None):
    """This rank's share of a list: every world-th item from its rank on. Disjoint, and together in order
    they are the list a single process would use."""
    rank, world = ddp_rank() if rank is None else rank, ddp_world() if world is None else world
    return items[rank::world]


def global_sum(*values):
    """Each number summed over all ranks, in one all-reduce (the numbers themselves in a single process).
    One number in, one number out; several in, a tuple out."""
    if ddp_world() > 1:
        import torch.distributed as dist
        t = torch.tensor([float(v) for v in values], dtype=torch.float64,
                         device="cuda" if dist.get_backend() == "nccl" else "cpu")
        dist.all_reduce(t)
        values = [type(v)(x) for v, x in zip(values, t.tolist())]
    return values[0] if len(values) == 1 else tuple(values)


def gather_objects(obj):
    """A list with every rank's obj, by rank ([obj] in a single process)."""
    if ddp_world() == 1:
        return [obj]
    import torch.distributed as dist
    out = [None] * ddp_world()
    dist.all_gather_object(out, obj)
    return out


@contextlib.contextmanager
def rank_zero_first():
    """Rank 0 runs the block first (it may build the toy base or fill a download cache), then the others. While
    they wait, rank 0 uses every core (torchrun gives each process one thread; the toy's pinned float path gives the
    same bits at any thread count)."""
    import torch.distributed as dist
    if not dist.is_initialized():
        yield
        return
    if dist.get_rank() != 0:
        dist.barrier()  # wait for rank 0
        yield
    else:
        threads = torch.get_num_threads()
        torch.set_num_threads(os.cpu_count() or 1)
        yield
        torch.set_num_threads(threads)
        dist.barrier()  # let the others go


class LossModule(torch.nn.Module):
    """A training loss as one module for DDP to wrap: a fused loss calls the decoder and the output layer
    directly, past model.forward, where DDP would not see it. forward(*batch) = loss(model, *batch), where a batch
    is (rollouts, pad_id, tau_train, loss_impl), as sept_mini.sept_loss takes it."""

    def __init__(self, model, loss):
        super().__init__()
        self.model, self.loss = model, loss

    def forward(self, *batch):
        return self.loss(self.model, *batch)


def wrap_ddp(model, loss):
    """The model for the update under torchrun (None alone). DDP copies rank 0's weights to every rank at the
    start; from then on every rank applies the same averaged gradient, so the weights stay equal."""
    if ddp_world() == 1:
        return None
    from torch.nn.parallel import DistributedDataParallel
    device_ids = [torch.cuda.current_device()] if model.device.type == "cuda" else None
    return DistributedDataParallel(LossModule(model, loss), device_ids=device_ids)
