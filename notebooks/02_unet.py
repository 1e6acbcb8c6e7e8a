# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3 (ipykernel)
#     language: python
#     name: python3
# ---

# %% [markdown]
# # 02 · The U-Net
#
# The network $\varepsilon_\theta(x_t, t)$ takes a noisy image and its timestep and returns a
# tensor of the image's shape: the noise it believes was added. DDPM (Ho et al. 2020, appendix B)
# uses a U-Net (Ronneberger et al. 2015) in the style of PixelCNN++: residual blocks at four
# resolutions, self-attention at 16×16, skip connections from the way down to the way up, and the
# timestep fed into every residual block. This notebook builds each piece, checks it against the
# tested version in `helpers.unet`, and saves the model configuration that notebook 03 trains. It
# needs nothing from an earlier notebook. Symbols are as on the [notation](../docs/notation.md)
# page; timesteps $t$ are the code's index $0, \dots, T-1$ ($t = 0$ is $x_1$).

# %%
import json
import math
import time

import matplotlib.pyplot as plt
import torch
import torch.nn.functional as F

from helpers.config import PROFILES, setup

notebook_start = time.perf_counter()
device, profile = setup(seed=0)

# %% [markdown]
# ## The timestep embedding
#
# The network must know how noisy its input is. The integer $t$ becomes a vector by the
# transformer's sinusoidal position encoding (Vaswani et al. 2017) of width $d_{\text{emb}}$: for
# $i = 0 \dots d_{\text{emb}}/2 - 1$,
#
# $$\mathrm{emb}(t)_i = \sin(t\,\omega_i),\quad \mathrm{emb}(t)_{d_{\text{emb}}/2+i} = \cos(t\,\omega_i),\qquad \omega_i = 10000^{-i/(d_{\text{emb}}/2-1)}.$$
#
# Low $i$ oscillate fast (telling neighbouring steps apart), high $i$ slowly (telling early from
# late). An MLP then maps it to the width the residual blocks use (written out further down).

# %%
def embed(t: torch.Tensor, dim: int) -> torch.Tensor:
    half = dim // 2
    omega = torch.exp(-math.log(10000) * torch.arange(half) / (half - 1))  # 10000^(-i/(half-1))
    angles = t[:, None].float() * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1)


from helpers.unet import timestep_embedding

t = torch.arange(1000)
assert torch.allclose(embed(t, 128), timestep_embedding(t, 128), atol=1e-6)

fig, ax = plt.subplots(figsize=(7, 3.5))
im = ax.imshow(timestep_embedding(t, 128).T, aspect="auto", cmap="RdBu", vmin=-1, vmax=1)
ax.set(title=r"sinusoidal timestep embedding ($d_{\mathrm{emb}}$ = 128)", xlabel="timestep t", ylabel="embedding dimension i")
fig.colorbar(im, ax=ax, label="value");

# %% [markdown]
# ## The residual block
#
# Each block normalises, applies SiLU and a 3×3 convolution; adds a learned projection of the
# timestep embedding (one value per channel, broadcast over the image); then normalises,
# applies SiLU, dropout and a second convolution. The input is added back, through a 1×1
# convolution when the channel count changes:
#
# $$h = \mathrm{conv}_2\Big(\mathrm{drop}\big(\mathrm{SiLU}(\mathrm{GN}(\mathrm{conv}_1(\mathrm{SiLU}(\mathrm{GN}(x))) + W\,\mathrm{SiLU}(e)))\big)\Big),\qquad \mathrm{out} = \mathrm{skip}(x) + h.$$
#
# GroupNorm (not BatchNorm) keeps each image independent of the others in its batch. The second
# convolution starts at **zero**, so at initialisation every block is its skip path and the deep
# network starts as a shallow one.

# %%
from helpers.unet import ResBlock

torch.manual_seed(0)
block = ResBlock(in_ch=32, out_ch=64, emb_dim=128, dropout=0.0, groups=8)
x = torch.randn(2, 32, 16, 16)
emb = torch.randn(2, 128)

h = block.conv1(F.silu(block.norm1(x)))
h = h + block.emb_proj(F.silu(emb))[:, :, None, None]
h = block.conv2(block.dropout(F.silu(block.norm2(h))))
by_hand = block.skip(x) + h

assert torch.allclose(block(x, emb), by_hand)
assert torch.equal(block(x, emb), block.skip(x)), "zero-initialised conv2: the block starts as its skip path"

# %% [markdown]
# ## Self-attention
#
# Convolutions see a 3×3 neighbourhood; attention lets every position look at every other.
# On the $HW$ positions of a feature map, after GroupNorm, 1×1 convolutions give queries, keys
# and values, and
#
# $$\mathrm{out} = x + W_o\,\mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_h}}\Big) V,$$
#
# with $d_h$ the channels per attention head (here all $C = 64$ channels, one head).
#
# The tested block calls PyTorch's fused `scaled_dot_product_attention`; the explicit softmax
# gives the same numbers.

# %%
from helpers.unet import AttentionBlock

attn = AttentionBlock(ch=64, groups=8, heads=1)
torch.nn.init.normal_(attn.proj.weight, std=0.1)  # it starts at zero too; make it visible
x = torch.randn(2, 64, 8, 8)

q, k, v = attn.qkv(attn.norm(x)).flatten(2).chunk(3, dim=1)  # each [B, C, HW]
weights = torch.softmax(q.transpose(1, 2) @ k / math.sqrt(64), dim=-1)  # [B, HW, HW]
by_hand = x + attn.proj((v @ weights.transpose(1, 2)).reshape(x.shape))

assert torch.allclose(attn(x), by_hand, atol=1e-5)

# %% [markdown]
# ## The remaining layers: time MLP, input, resampling, output
#
# Five small pieces connect the blocks above into a network. Here they are on this course's laptop
# model (1×28×28 images, base width $\mathrm{ch} = 24$), each written with `torch.nn.functional`
# and the model's own weights, and asserted equal to the layer in `helpers.unet`:
#
# * **Time MLP**: $e = W_2\,\mathrm{SiLU}(W_1\,\mathrm{emb}(t) + b_1) + b_2$, from the sinusoidal
#   embedding of width $d_{\text{emb}} = \mathrm{ch}$ to $4\,\mathrm{ch}$; every residual block then
#   applies its own SiLU and projection $W$ to $e$.
# * **Input convolution**: 3×3, padding 1, from the image's channels to $\mathrm{ch}$, same size.
# * **Downsampling**: a 3×3 convolution with stride 2 and padding 1, so a side $H$ becomes
#   $\lfloor (H + 2 - 3)/2 \rfloor + 1 = \lceil H/2 \rceil$.
# * **Upsampling**: nearest neighbour (each pixel becomes a 2×2 block), then a 3×3 convolution.
# * **Output head**: GroupNorm, SiLU and a 3×3 convolution back to the image's channels. GroupNorm
#   standardises each image's channels in groups (mean 0, variance 1 over a group's channels and
#   pixels), then scales and shifts each channel by its learned `weight` and `bias`.

# %%
from helpers.unet import Downsample, Upsample, UNet


def group_norm(z, groups, weight, bias, eps=1e-5):
    """GroupNorm by hand: standardise over each group of channels and all pixels, then scale and shift per channel."""
    g = z.reshape(z.shape[0], groups, -1)
    g = (g - g.mean(-1, keepdim=True)) / (g.var(-1, unbiased=False, keepdim=True) + eps).sqrt()
    return g.reshape(z.shape) * weight[:, None, None] + bias[:, None, None]


torch.manual_seed(0)
small = UNet(**PROFILES["laptop"].model)
torch.nn.init.normal_(small.out[-1].weight, std=0.1)  # the last convolution starts at zero; make it speak
x, t = torch.randn(2, 1, 28, 28), torch.tensor([10, 900])

first, _, second = small.time_mlp  # Linear(ch, 4 ch), SiLU, Linear(4 ch, 4 ch)
e = F.linear(F.silu(F.linear(embed(t, small.ch), first.weight, first.bias)), second.weight, second.bias)
assert torch.allclose(e, small.time_mlp(timestep_embedding(t, small.ch)), atol=1e-5)

h = F.conv2d(x, small.conv_in.weight, small.conv_in.bias, padding=1)
assert torch.allclose(h, small.conv_in(x))

down = next(m for m in small.modules() if isinstance(m, Downsample))  # the first: 24 channels at 28×28
h_down = F.conv2d(h, down.conv.weight, down.conv.bias, stride=2, padding=1)
assert torch.allclose(h_down, down(h), atol=1e-6)

up = next(m for m in small.modules() if isinstance(m, Upsample))  # the first: at the coarsest level, 7×7
h_coarse = torch.randn(2, up.conv.in_channels, 7, 7)
doubled = h_coarse.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)  # nearest neighbour
h_up = F.conv2d(doubled, up.conv.weight, up.conv.bias, padding=1)
assert torch.allclose(h_up, up(h_coarse), atol=1e-6)

norm, _, conv = small.out
h_last = torch.randn(2, norm.num_channels, 28, 28)  # what the last up block hands the head
out = F.conv2d(F.silu(group_norm(h_last, norm.num_groups, norm.weight, norm.bias, norm.eps)), conv.weight, conv.bias, padding=1)
assert torch.allclose(out, small.out(h_last), atol=1e-5)

print(f"{'time MLP':<13} {str(tuple(t.shape)):>16} -> {tuple(embed(t, small.ch).shape)} -> {tuple(e.shape)}")
for name, before, after in (("input conv", x, h), ("downsampling", h, h_down), ("upsampling", h_coarse, h_up), ("output head", h_last, out)):
    print(f"{name:<13} {str(tuple(before.shape)):>16} -> {tuple(after.shape)}")

# %% [markdown]
# ## The whole U-Net
#
# Down: a 3×3 convolution, then per level `num_res_blocks` residual blocks (with attention at the
# chosen resolutions) and, except at the last level, a stride-2 convolution. Middle: residual,
# attention, residual. Up: per level one more residual block than on the way down, each
# concatenating the matching output from the way down, and, except at the last level, a
# nearest-neighbour upsampling. The DDPM CIFAR-10 model, layer by layer:

# %%
# NBVAL_CHECK_OUTPUT
from helpers.unet import shape_table

full = UNet(**PROFILES["full"].model)
for name, shape in shape_table(full, torch.randn(1, 3, 32, 32), torch.tensor([500])):
    print(f"{name:<26} {str(shape):>20}")

# %% [markdown]
# The forward pass is short enough to write out. The timestep embedding goes through a small MLP;
# the first convolution and every block on the way down keep their outputs on a stack; on the way up every block first
# concatenates the newest entry of the stack to its input along the channels. Residual blocks
# take the embedding, attention and resampling do not:

# %%
def run(block, h, emb):
    for layer in block:
        h = layer(h, emb) if isinstance(layer, ResBlock) else layer(h)
    return h


def unet_forward(model, x, t):
    emb = model.time_mlp(timestep_embedding(t, model.ch))
    h = model.conv_in(x)
    skips = [h]
    for block in model.down:  # a residual block (+ attention), or a stride-2 convolution
        h = run(block, h, emb)
        skips.append(h)
    h = run(model.mid, h, emb)  # residual, attention, residual
    for block in model.up:  # a residual block (+ attention, + upsampling), each eating one skip
        h = run(block, torch.cat([h, skips.pop()], dim=1), emb)
    return model.out(h)


with torch.no_grad():  # the laptop model and inputs of the cell before
    assert torch.allclose(unet_forward(small, x, t), small(x, t), atol=1e-5)

# %% [markdown]
# Drawn in the order the forward pass runs, the same network is a "U": down to the coarsest
# feature map and back up, with every skip connection bridging the U at one size. The arcs are
# coloured in turn (at the two smallest sizes they crowd together); the list printed with the
# figure names every pair, as the stack of the forward pass makes them (the last one pushed is the first one
# popped).

# %%
from helpers.viz import plot_unet_layout

ax = plot_unet_layout(full, title="the DDPM CIFAR-10 U-Net (full profile): output channels above each block")
ax.figure.set_size_inches(13, 4.6)
arcs = [line for line in ax.get_lines() if line.get_linestyle() == "--" and len(line.get_xdata()) > 2]
assert len(arcs) == len(full.up)  # one arc per up block, drawn from up.0 outwards
for j, arc in enumerate(arcs):
    arc.set(color=plt.cm.tab10(j % 10), lw=1.6)
names = ["conv_in"] + [f"down.{i}" for i in range(len(full.down))]  # the stack, in the order it is pushed
print("skip pairs: " + ", ".join(f"up.{j} <- {names[-1 - j]}" for j in range(len(full.up))))

# %% [markdown]
# The four profiles build the same architecture at different sizes. The full one is the DDPM
# paper's 35.7 million parameters; the gpu one, a CUDA GPU's default, is the same layout at three
# quarters of the width, which a training step pays for quadratically:

# %%
# NBVAL_CHECK_OUTPUT
from helpers.budget import flops  # torch's FLOP counter on the meta device: two per multiply-add

rows = [f"{'profile':<8} {'parameters':>12}  image    ch  ch_mult       blocks  attention  GFLOPs/image (forward + backward)"]
for name, p in PROFILES.items():
    m = p.model
    n = sum(q.numel() for q in UNet(**m).parameters())
    rows.append(f"{name:<8} {n:>12,}  {m['in_channels']}x{m['image_size']}x{m['image_size']:<3} {m['ch']:>3}  "
                f"{str(m['ch_mult']):<13} {m['num_res_blocks']:>6}  {str(m['attn_resolutions']):<9}  {flops(p, 'pixel', True) / 1e9:.2f}")
print("\n".join(rows))
ratio = flops(PROFILES["gpu"], "pixel", True) / flops(PROFILES["full"], "pixel", True)
width = PROFILES["gpu"].unet["ch"] / PROFILES["full"].unet["ch"]
print(f"gpu / full: {ratio:.3f} of the FLOPs at {width:.2f} of the width ({width:.2f}^2 = {width**2:.4f})")
assert abs(ratio - width**2) < 0.01, "the cost no longer scales with the square of the width: reread the text above"

# %% [markdown]
# ## A forward pass on real images
#
# Noise a batch of real images to random timesteps and run this profile's model. Untrained, its
# output is exactly zero: the last convolution is zero-initialised too, so training starts from
# "predict no noise" rather than from random outputs.

# %%
from helpers.data import profile_dataset
from helpers.diffusion import Diffusion

d = Diffusion.from_schedule(profile.schedule, profile.T)
model = UNet(**profile.model).to(device)
x0 = profile_dataset(profile).tensors()[0][:16].to(device)
t = torch.randint(0, d.T, (16,), generator=torch.Generator().manual_seed(0))
x_t = d.q_sample(x0, t, torch.randn_like(x0))
with torch.no_grad():
    out = model(x_t, t.to(device))
print(f"input {tuple(x_t.shape)} -> output {tuple(out.shape)}; all zeros: {bool((out == 0).all())}")
assert out.shape == x_t.shape and (out == 0).all()
for name, shape in shape_table(model, x_t, t.to(device)):
    print(f"  {name:<26} {str(shape):>18}")

# %% [markdown]
# ## Save the model configuration
#
# Notebook 03 builds its model from this file, so that what is trained is what was shown here.

# %%
config_path = profile.checkpoint("unet_config")
config_path.parent.mkdir(parents=True, exist_ok=True)
config_path.write_text(json.dumps(model.config, indent=2))
print(f"saved {config_path}; next: 03 · training")

# %% [markdown]
# ## Exercises
#
# Each exercise is a function to write. The cell after it checks your function against
# `helpers` and prints ✓, what is wrong, or "not done yet". The solutions are in
# `notebooks/solutions/02_unet.py`.
#
# **1. Count the parameters of a residual block.** From the equation above: two GroupNorms (a
# scale and a shift per channel), two 3×3 convolutions with bias, the linear map $W$ of the
# embedding, and a 1×1 skip convolution when the width changes.

# %%
def resblock_parameters(in_ch, out_ch, emb_dim):
    """The number of parameters of ResBlock(in_ch, out_ch, emb_dim)."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(resblock_parameters)

# %% [markdown]
# **2. Attention with several heads.** Split the $C$ channels of $Q$, $K$ and $V$ into
# `attn.heads` groups of $d_h = C/\text{heads}$, attend within each group with scale $1/\sqrt{d_h}$, and
# put the groups back together before the output projection. Use the block's own layers
# (`attn.norm`, `attn.qkv`, `attn.proj`) as the single-head version above does.

# %%
def multihead_attention(attn, x):
    """AttentionBlock's output on x [B, C, H, W] with attn.heads heads."""
    raise NotImplementedError  # your code here


# %%
check(multihead_attention)

# %% [markdown]
# **3. Trace the channels through the U.** Every up block concatenates $h$, arriving from below,
# with the newest entry of the skip stack. Without building a model, return for each up block in
# order (`up.0`, `up.1`, ...) the triple (channels of $h$ from below, channels of the skip, side
# of both) for a `UNet(image_size, in_channels, ch, ch_mult, num_res_blocks)`. Follow
# `unet_forward`: what conv_in and each down block push, what the middle and each up block
# output, and where the side changes. The check runs U-Nets of other shapes than the ones above.

# %%
def up_block_channels(image_size, ch, ch_mult, num_res_blocks):
    """[(channels from below, channels of the skip, side)] for each up block, in order."""
    raise NotImplementedError  # your code here


# %%
check(up_block_channels)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
