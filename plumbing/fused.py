"""The training losses' fast path: the output layer and its softmax a chunk of tokens at a time, so the
(tokens x vocabulary) logits never exist at once (Qwen's vocabulary is 151,936: 16,384 answer tokens would take
10 GB in fp32). sept_mini.py keeps the plain references beside the calls (answer_nll_naive, answer_entropy_naive;
--loss naive switches back to them) and tests/test_loss.py holds the two equal."""
import torch
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint


class FusedLinearCrossEntropy(torch.autograd.Function):
    """Sum over N tokens of -log softmax((h W^T + b) / tau)[target], one chunk of tokens at a time.

    Never holds more than chunk x V logits. We compute each chunk's gradients already in the forward
    pass (the Liger-Kernel way) rather than recomputing the chunk's logits in backward: recomputing
    costs a 4th (N x H x V) matmul on top of the 3 both ways need, 33% more time, while keeping the
    gradients costs only grad_h (N x H) and grad_W (V x H, needed anyway when W is trained)."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, tau, chunk_size, weights):
        # hidden (N, H), weight (V, H), bias (V,) or None, targets (N,), weights (N,) or None (GRPO's advantages)
        need_h, need_w = hidden.requires_grad, weight.requires_grad
        need_b = bias is not None and bias.requires_grad
        grad_h = torch.empty_like(hidden) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        grad_b = torch.zeros(weight.shape[0], dtype=torch.float32, device=weight.device) if need_b else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for s in range(0, hidden.shape[0], chunk_size):
            h, t = hidden[s:s + chunk_size], targets[s:s + chunk_size]
            logits = F.linear(h, weight, bias).float().div_(tau)  # (C, V), fp32 whatever the weights are
            nll, probs = nll_and_softmax_(logits, t)  # (C,), and (C, V) in logits' own buffer
            w = None if weights is None else weights[s:s + chunk_size].float()[:, None]  # (C, 1)
            total += (nll if w is None else nll * w.squeeze(1)).sum()
            if need_h or need_w or need_b:
                grad = probs
                grad[torch.arange(len(t), device=t.device), t] -= 1.0
                grad.div_(tau) if w is None else grad.mul_(w / tau)  # d loss / d (h W^T + b): tau scales it too
                grad_lp = grad.to(weight.dtype)  # (C, V) in the weights' dtype (the same tensor in fp32)
                if need_h:
                    grad_h[s:s + chunk_size] = (grad_lp @ weight).to(hidden.dtype)
                if need_w:
                    if weight.dtype == torch.float32:
                        grad_w.addmm_(grad.T, h.float())  # in place: no (V, H) temporary
                    else:  # bf16/fp16: each chunk's matmul on the fast half-precision path, as naive's autograd
                        grad_w.add_(grad_lp.T @ h)  # does; the sum over chunks in fp32 (fp32 matmuls: ~10x slower)
                if need_b:
                    grad_b += grad.sum(0)
            logits = probs = grad = grad_lp = None  # free this chunk's (C, V) buffers before the next
        ctx.save_for_backward(grad_h, grad_w, grad_b)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        return total

    @staticmethod
    def backward(ctx, grad_out):
        grad_h, grad_w, grad_b = ctx.saved_tensors
        if grad_h is not None:
            grad_h = grad_h * grad_out
        if grad_w is not None:
            grad_w = grad_w.mul_(grad_out).to(ctx.dtypes[0])
        if grad_b is not None:
            grad_b = grad_b.mul_(grad_out).to(ctx.dtypes[1])
        return grad_h, grad_w, grad_b, None, None, None, None


def nll_and_softmax_(logits, targets, softmax_kernels=None):
    """(-log softmax(logits)[targets] (C,), softmax(logits) (C, V)), the softmax in logits' own buffer: one (C, V)
    buffer serves as logits, log-probabilities and probabilities. On a CPU through torch's log_softmax and softmax
    kernels, in place: torch's exp and log there are MKL's vector math, whose last bits differ between Intel and AMD
    (the toy's float path, plumbing/floatpath.py). Elsewhere exp_ and one log of the row sums, as measured on a GPU.
    softmax_kernels=True/False picks the route by hand (tests/test_loss.py holds both to the reference)."""
    if softmax_kernels if softmax_kernels is not None else logits.device.type == "cpu":
        torch.log_softmax(logits, dim=1, out=logits)
        nll = -logits.gather(1, targets[:, None]).squeeze(1)
        return nll, torch.softmax(logits, dim=1, out=logits)  # softmax of the log-probabilities: the probabilities
    target_logit = logits.gather(1, targets[:, None]).squeeze(1)
    row_max = logits.amax(dim=1, keepdim=True)
    probs = logits.sub_(row_max).exp_()
    sum_exp = probs.sum(dim=1, keepdim=True)
    return row_max.squeeze(1) + sum_exp.log().squeeze(1) - target_logit, probs.div_(sum_exp)


def fused_nll_sum(hidden, weight, bias, targets, tau, chunk_size=None, weights=None):
    """Summed tau-scaled NLL of targets given final hidden states (each token's times weights, if given), without
    [N x V] logits."""
    chunk_size = chunk_size or default_chunk_size(weight)
    if hidden.shape[0] == 0:
        return hidden.sum() * 0.0 + weight.sum() * 0.0  # keeps the graph (and DDP/optimizers) happy
    return FusedLinearCrossEntropy.apply(hidden, weight, bias, targets, tau, chunk_size, weights)


def default_chunk_size(weight):
    """Tokens per chunk. On CPU 16M logits (64 MB fp32) at a time: larger chunks only cost cache misses.
    On CUDA 128M logits (~0.5 GB fp32, 883 tokens at Qwen's 151,936): small chunks leave the GPU idle
    between matmuls; at about 1,000 tokens the fused loss ran at naive's speed with a frozen output
    layer on an H100 (bf16, N = 16,384), at 3% of naive's memory."""
    return max(1, (2 ** 27 if weight.is_cuda else 2 ** 24) // weight.shape[0])


def fused_entropy_sum(hidden, weight, bias, tau, chunk_size=None):
    """Summed entropy of softmax((h W^T + b) / tau) over the N rows of hidden (EM-FT's loss), without [N x V] logits.
    Simpler than the NLL's kernel, at one extra matmul: each chunk's forward runs under checkpoint, which keeps
    nothing, and backward recomputes the chunk, so one chunk's (C, V) buffers exist at a time."""
    chunk_size = chunk_size or default_chunk_size(weight)

    def chunk_entropy(h):  # (C, H) -> the summed entropy of its C next-token distributions
        scaled = F.linear(h, weight, bias).float() / tau  # (C, V)
        return -(F.softmax(scaled, dim=-1) * F.log_softmax(scaled, dim=-1)).sum()  # no exp(): see softmax_rows_
    total = hidden.sum() * 0.0 + weight.sum() * 0.0  # with no rows: zero, still in the graph (DDP, optimizers)
    for s in range(0, hidden.shape[0], chunk_size):
        total = total + checkpoint(chunk_entropy, hidden[s:s + chunk_size], use_reentrant=False)
    return total
