"""Mixup batches: the mixing coefficient drawn per batch or per example, the mixed inputs and the mixed loss."""
import scipy.special
import torch


def mixup_loss(loss_fn, logits, y_a, y_b, mix):
    """Mean of mix * loss(y_a) + (1 - mix) * loss(y_b); mix is a scalar or one value per sample."""
    mix = torch.as_tensor(mix, dtype=logits.dtype, device=logits.device)
    return (mix * loss_fn(logits, y_a) + (1 - mix) * loss_fn(logits, y_b)).mean()


MIX_PER = ("batch", "sample")


def mix_batch(x, y, alpha, gen, mix_per="batch"):
    """Mixup of a batch with a random partner permutation: returns (x_mixed, y_a, y_b, mix),
    mix ~ Beta(alpha, alpha), one value for the whole batch (mix_per "batch": the original mixup
    code and timm, a 0-dim tensor) or one per sample ("sample"); float32 on x's device. Draws come
    from the CPU torch.Generator `gen` (the training loop's, checkpointed with the run), so they
    are reproducible on any device."""
    n = len(x)
    perm = torch.randperm(n, generator=gen).to(x.device)
    u = torch.rand(1 if mix_per == "batch" else n, generator=gen, dtype=torch.float64).numpy()
    mix = torch.as_tensor(scipy.special.betaincinv(alpha, alpha, u), dtype=torch.float32, device=x.device)
    mix = mix[0] if mix_per == "batch" else mix
    mix_x = mix.view(-1, *([1] * (x.dim() - 1))).to(x.dtype)
    return mix_x * x + (1 - mix_x) * x[perm], y, y[perm], mix
