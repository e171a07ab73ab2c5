"""Plotting and measuring helpers for the lesson notebooks: code a reader of a lesson need not follow."""
import matplotlib.pyplot as plt
import torch

import sept_mini as sm

ARM_COLORS = {"online": "tab:blue", "offline": "tab:orange", "online-0.6": "tab:cyan", "offline-0.6": "tab:olive", "coupled": "tab:gray", "inverted": "tab:red",
              "paper-anneal": "tab:green", "emft": "tab:purple", "grpo": "tab:brown"}


def curves(table, arms=("online", "offline", "online-0.6", "offline-0.6", "coupled", "inverted", "paper-anneal")):
    """Held-out pass@1 (tau=1) and greedy accuracy against round: mean over seeds, band = min..max."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8), sharex=True)
    for arm in [a for a in arms if a in table]:
        runs = list(table[arm].values())
        rounds = [p["round"] for p in runs[0]["curve"]]
        for ax, key in zip(axes, ("pass@1", "greedy")):
            per_seed = [[p[key] for p in run["curve"]] for run in runs]
            mean = [sum(v) / len(v) for v in zip(*per_seed)]
            ax.plot(rounds, mean, label=f"{arm} ({len(runs)} seeds)", color=ARM_COLORS.get(arm))
            ax.fill_between(rounds, [min(v) for v in zip(*per_seed)], [max(v) for v in zip(*per_seed)],
                            color=ARM_COLORS.get(arm), alpha=0.15)
    axes[0].set(title="held-out pass@1 at tau = 1", xlabel="round", ylabel="%")
    axes[1].set(title="held-out greedy accuracy", xlabel="round", ylim=(0, 102))
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    plt.show()


@torch.no_grad()
def margins(models, tokenizer, questions, answer_model, max_new_tokens=48):
    """Per-position logit margins (top-1 minus runner-up, at tau = 1) of each model in `models`, measured
    on the same token sequences: answer_model's greedy answers to the questions. Returns one 1-D tensor per model."""
    prompts = [sm.build_prompt(tokenizer, q["question"], "system") for q in questions]
    answers = sm.rollout(answer_model, tokenizer, prompts, 0.0, max_new_tokens)
    input_ids, attention_mask, labels = sm.training_batch(answers, tokenizer.pad_token_id)
    positions = labels[:, 1:] != -100  # the positions that predict answer tokens
    out = []
    for model in models:
        model.eval()
        logits = model(input_ids=input_ids, attention_mask=attention_mask).logits[:, :-1][positions]  # (N, V)
        top2 = logits.float().topk(2, dim=-1).values
        out.append(top2[:, 0] - top2[:, 1])
    return out


def margin_scatter(before, after, predicted_ratio, one_round=None):
    """Margins after vs before, one point per answer position, with the theory's lines."""
    fig, ax = plt.subplots(figsize=(5.2, 4.6))
    ax.scatter(before, after, s=4, alpha=0.3, label="after the SePT run")
    if one_round is not None:
        ax.scatter(before, one_round, s=4, alpha=0.3, color="tab:green", label="one fixed round of samples, many updates")
    top = float(max(before.max(), after.max()))
    ax.plot([0, top], [0, top], "k:", lw=1, label="no change")
    ax.plot([0, top / predicted_ratio], [0, top], "r--", lw=1.5,
            label=f"population optimum: x tau_t/tau_s = {predicted_ratio:.2f}")
    ax.set(xlabel="margin before (base model)", ylabel="margin after", title="logit margin, top-1 minus runner-up")
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def pass_at_k(base_results, sept_results, base_tau, label_base="base model", label_sept="SePT, tau = 1"):
    """pass@k against k (log scale) for the base model at its best-swept temperature and SePT at tau = 1."""
    pass_at_k_curves({f"{label_base}, best tau = {base_tau:g}": (base_results[base_tau], "tab:gray"),
                      label_sept: (sept_results[1.0], "tab:blue")})


def pass_at_k_curves(curves):
    """pass@k against k (log scale), one line per {label: (eval_math results at one temperature, color)}."""
    fig, ax = plt.subplots(figsize=(6, 3.8))
    for label, (results, color) in curves.items():
        row = results["toy"]
        ks = sorted(int(k.split("@")[1]) for k in row if k.startswith("pass@"))
        ax.plot(ks, [row[f"pass@{k}"] for k in ks], "o-", label=label, color=color)
    ax.set_xscale("log", base=2)
    ax.set(xlabel="k", ylabel="pass@k (%)", title="held-out pass@k", ylim=(0, 101))
    ax.legend(fontsize=8)
    fig.tight_layout()
    plt.show()


def one_round_to_optimum(base, tokenizer, questions, tau_sample, tau_train=1.0, updates=150, lr=1e-3, seed=0):
    """A copy of `base` trained on ONE fixed round of its own samples at tau_sample (many updates). Theorem 1's
    optimum, the old logits x tau_t/tau_s, is that of the model's own distribution sampled without end; a fixed finite
    round at a low tau_sample pushes towards one-hot margins instead, so this copy shows the direction, not x10."""
    import copy
    model = copy.deepcopy(base)
    prompts = [sm.build_prompt(tokenizer, q["question"], "system") for q in questions]
    torch.manual_seed(seed)
    data = sm.rollout(model, tokenizer, prompts, tau_sample, 48)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: 1.0)
    for _ in range(updates):
        sm.sept_update(model, optimizer, scheduler, data, tau_train, tokenizer.pad_token_id, "fused",
                       micro_batch_tokens=10 ** 6)
    return model.eval()
