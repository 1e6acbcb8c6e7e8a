# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Solutions to the exercises of 08 · Classifier-free guidance

# %%
import torch


def guided_ddim_sample(model, d, x_T, y, s, timesteps):
    """Guided DDIM, eta = 0, no clipping: at each t, the guided eps from one doubled batch, then
    x_prev = sqrt(ab_prev) x0_hat + sqrt(1 - ab_prev) eps (Song et al. 2021, eq. 12 at sigma = 0)."""
    x = x_T
    null = torch.full_like(y, model.num_classes)
    for t, t_prev in zip(timesteps, [*timesteps[1:], -1]):
        tt = torch.full((len(x),), t, dtype=torch.long)
        eps_cond, eps_uncond = model(torch.cat([x, x]), torch.cat([tt, tt]), torch.cat([y, null])).chunk(2)
        eps = eps_uncond + s * (eps_cond - eps_uncond)
        ab = d.alpha_bars[t].float()
        ab_prev = d.alpha_bars[t_prev].float() if t_prev >= 0 else torch.tensor(1.0)
        x0 = (x - (1 - ab).sqrt() * eps) / ab.sqrt()
        x = ab_prev.sqrt() * x0 + (1 - ab_prev).sqrt() * eps
    return x


def guidance_on_the_ring():
    """(-1, +1): from s = 1 to s = 3 the class-0 samples draw together, and their mean moves *out*,
    past the component's centre, away from the ring's centre.

    Why. With exact scores, s = 1 samples the component itself (spread about its std, mean at its
    centre mu_0 at radius 2). The guided prediction adds (s - 1) times the class direction
    eps(x, y) - eps(x, null), proportional to -grad log p(y | x). At high noise the mixture looks like
    one broad blob around the origin while the component is a narrower blob around mu_0, so
    grad log p(y | x) points from the origin towards and past mu_0: guidance pushes every sample
    outwards, away from the other classes. Late, near mu_0, p(y | x) is close to 1 and flat, so
    nothing pulls the samples back. The same difference of a narrow and a broad Gaussian score is a
    stronger pull towards the mean than the component's own score, so the spread shrinks. Guidance
    therefore does not sample p(x) p(y | x)^s, whose mass would stay around mu_0: it exaggerates
    what tells the class apart from the others (Chidambaram et al. 2024, "What does guidance do?")
    -- on images, the saturated, over-typical samples of large s."""
    return (-1, 1)
