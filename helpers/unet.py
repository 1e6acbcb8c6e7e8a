"""The denoising U-Net of DDPM (Ho et al. 2020, appendix B), optionally class-conditional.

A PixelCNN++-style U-Net: residual blocks at each resolution, self-attention at chosen
resolutions, the timestep fed to every residual block through a sinusoidal embedding and an MLP.
With ``ch=128, ch_mult=(1, 2, 2, 2), num_res_blocks=2, attn_resolutions=(16,), dropout=0.1`` on
32x32 RGB images it is the paper's 35.7M-parameter CIFAR-10 model.

Class conditioning (for classifier-free guidance, Ho & Salimans 2022) adds a learned class
embedding to the timestep embedding. Ids run 0..num_classes-1, and the extra id ``num_classes``
means "no label".

Text conditioning (``context_dim``) adds a cross-attention block after each self-attention block:
queries from the image features, keys and values from a caption's token features (Rombach et al.
2022, sec. 3.3), so that each position of the image can read the words it needs.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

__all__ = ["UNet", "ResBlock", "AttentionBlock", "CrossAttentionBlock", "timestep_embedding", "shape_table"]


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10_000.0) -> torch.Tensor:
    """Sinusoidal embedding of (integer or real) timesteps, shape [B] -> [B, dim].

    emb[:, i] = sin(t * w_i), emb[:, half + i] = cos(t * w_i), w_i = max_period^(-i / (half - 1)),
    the transformer's position encoding (Vaswani et al. 2017, sec. 3.5) as DDPM uses it.
    """
    if dim < 4:
        raise ValueError(f"the embedding needs at least 4 dimensions, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=t.device, dtype=torch.float32) / (half - 1))
    args = t.float()[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, dim % 2))


def _zero(module: nn.Module) -> nn.Module:
    """Zero a layer's parameters so that its block starts as the identity (residual branch = 0)."""
    for p in module.parameters():
        nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm -> SiLU -> conv, + projected timestep embedding, GroupNorm -> SiLU -> dropout -> conv.

    The second convolution starts at zero, so at initialisation the block is its skip path. A 1x1
    convolution matches channels on the skip path when they change.
    """

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int) -> None:
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1))
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        h = self.conv1(F.silu(self.norm1(x)))
        h = h + self.emb_proj(F.silu(emb))[:, :, None, None]
        h = self.conv2(self.dropout(F.silu(self.norm2(h))))
        return self.skip(x) + h


class AttentionBlock(nn.Module):
    """Self-attention over the H*W positions: x + proj(softmax(q k^T / sqrt(d)) v), q, k, v by 1x1 convs."""

    def __init__(self, ch: int, groups: int, heads: int = 1) -> None:
        super().__init__()
        if ch % heads:
            raise ValueError(f"{ch} channels do not split into {heads} attention heads")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.qkv = nn.Conv2d(ch, 3 * ch, 1)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, w = x.shape[-2:]
        q, k, v = rearrange(self.qkv(self.norm(x)), "b (three n d) h w -> three b n (h w) d", three=3, n=self.heads)
        out = F.scaled_dot_product_attention(q, k, v)
        return x + self.proj(rearrange(out, "b n (h w) d -> b (n d) h w", h=h, w=w))


class CrossAttentionBlock(nn.Module):
    """x + proj(softmax(q k^T / sqrt(d) + mask) v) with q from the image (GroupNorm, 1x1 conv) and k, v
    from the caption's tokens [B, L, context_dim] (linear maps); padding tokens get no attention."""

    def __init__(self, ch: int, context_dim: int, groups: int, heads: int = 1) -> None:
        super().__init__()
        if ch % heads:
            raise ValueError(f"{ch} channels do not split into {heads} attention heads")
        self.heads = heads
        self.norm = nn.GroupNorm(groups, ch)
        self.q = nn.Conv2d(ch, ch, 1)
        self.kv = nn.Linear(context_dim, 2 * ch)
        self.proj = _zero(nn.Conv2d(ch, ch, 1))

    def forward(self, x: torch.Tensor, context: torch.Tensor, pad: torch.Tensor) -> torch.Tensor:
        """x [B, C, H, W]; context [B, L, context_dim]; pad [B, L], True at padding tokens."""
        h, w = x.shape[-2:]
        q = rearrange(self.q(self.norm(x)), "b (n d) h w -> b n (h w) d", n=self.heads)
        k, v = rearrange(self.kv(context), "b l (two n d) -> two b n l d", two=2, n=self.heads)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, None, :])
        return x + self.proj(rearrange(out, "b n (h w) d -> b (n d) h w", h=h, w=w))


class Downsample(nn.Module):
    """Halve the resolution with a stride-2 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """Double the resolution: nearest-neighbour upsampling, then a 3x3 convolution."""

    def __init__(self, ch: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(ch, ch, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class EmbedSequential(nn.Sequential):
    """A sequence of layers where residual blocks also receive the timestep embedding and
    cross-attention blocks the caption (its token features and padding mask)."""

    def forward(self, x: torch.Tensor, emb: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor] | None = None) -> torch.Tensor:  # type: ignore[override]
        for layer in self:
            if isinstance(layer, ResBlock):
                x = layer(x, emb)
            elif isinstance(layer, CrossAttentionBlock):
                x = layer(x, *context)
            else:
                x = layer(x)
        return x


class UNet(nn.Module):
    """eps/x0/v-predicting U-Net: ``UNet(...)(x_t, t, y=None)`` has the shape of ``x_t``.

    Args:
        image_size: side of the square input images.
        in_channels: image channels (1 for Fashion-MNIST, 3 for CIFAR-10); the output has as many.
        ch: base width; level i has ``ch * ch_mult[i]`` channels.
        ch_mult: width multiplier per resolution level; each level after the first halves the size.
        num_res_blocks: residual blocks per level on the way down (one more on the way up).
        attn_resolutions: image sides at which self-attention follows each residual block.
        dropout: dropout rate inside residual blocks.
        norm_groups: GroupNorm groups (32 in DDPM); must divide every width.
        num_classes: if set, the model is class-conditional with ids 0..num_classes-1 and the
            "no label" id ``num_classes``.
        attn_heads: attention heads (1 in DDPM).
        context_dim: if set, the model is text-conditional: cross-attention to a caption's token
            features of this width follows every self-attention block.
    """

    def __init__(
        self,
        image_size: int = 32,
        in_channels: int = 3,
        ch: int = 128,
        ch_mult: tuple[int, ...] = (1, 2, 2, 2),
        num_res_blocks: int = 2,
        attn_resolutions: tuple[int, ...] = (16,),
        dropout: float = 0.1,
        norm_groups: int = 32,
        num_classes: int | None = None,
        attn_heads: int = 1,
        context_dim: int | None = None,
    ) -> None:
        super().__init__()
        ch_mult, attn_resolutions = tuple(ch_mult), tuple(attn_resolutions)
        levels = len(ch_mult)
        if image_size % 2 ** (levels - 1):
            raise ValueError(
                f"image_size {image_size} cannot be halved {levels - 1} times (ch_mult has {levels} levels); "
                f"use a size divisible by {2 ** (levels - 1)} or fewer levels"
            )
        sides = [image_size // 2**i for i in range(levels)]
        unreachable = sorted(set(attn_resolutions) - set(sides))
        if unreachable:
            raise ValueError(f"attention at resolution {unreachable} is never reached; the levels have sides {sides}")
        bad = [ch * m for m in ch_mult if (ch * m) % norm_groups]
        if bad:
            raise ValueError(f"norm_groups={norm_groups} does not divide the widths {bad}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive integer or None, got {num_classes}")
        if context_dim is not None and context_dim < 1:
            raise ValueError(f"context_dim must be a positive integer or None, got {context_dim}")
        self.config = dict(
            image_size=image_size,
            in_channels=in_channels,
            ch=ch,
            ch_mult=ch_mult,
            num_res_blocks=num_res_blocks,
            attn_resolutions=attn_resolutions,
            dropout=dropout,
            norm_groups=norm_groups,
            num_classes=num_classes,
            attn_heads=attn_heads,
        )
        if context_dim is not None:  # recorded only when set: a checkpoint of another model keeps its config
            self.config["context_dim"] = context_dim
        self.image_size, self.in_channels, self.num_classes, self.context_dim = image_size, in_channels, num_classes, context_dim
        emb_dim = 4 * ch

        def res(i: int, o: int) -> ResBlock:
            return ResBlock(i, o, emb_dim, dropout, norm_groups)

        def attn(c: int) -> list[nn.Module]:
            """Self-attention, then (for a text model) cross-attention to the caption."""
            blocks: list[nn.Module] = [AttentionBlock(c, norm_groups, attn_heads)]
            if context_dim is not None:
                blocks.append(CrossAttentionBlock(c, context_dim, norm_groups, attn_heads))
            return blocks

        self.ch = ch
        self.time_mlp = nn.Sequential(nn.Linear(ch, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_emb = nn.Embedding(num_classes + 1, emb_dim) if num_classes is not None else None
        self.conv_in = nn.Conv2d(in_channels, ch, 3, padding=1)

        # Down path: every block's output is kept as a skip connection for the up path.
        self.down = nn.ModuleList()
        skips, cur = [ch], ch
        for level, mult in enumerate(ch_mult):
            for _ in range(num_res_blocks):
                block = EmbedSequential(res(cur, ch * mult))
                cur = ch * mult
                if sides[level] in attn_resolutions:
                    block.extend(attn(cur))
                self.down.append(block)
                skips.append(cur)
            if level < levels - 1:
                self.down.append(EmbedSequential(Downsample(cur)))
                skips.append(cur)

        self.mid = EmbedSequential(res(cur, cur), *attn(cur), res(cur, cur))

        # Up path: one more block per level than on the way down, each eating one skip.
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(ch_mult))):
            for i in range(num_res_blocks + 1):
                block = EmbedSequential(res(cur + skips.pop(), ch * mult))
                cur = ch * mult
                if sides[level] in attn_resolutions:
                    block.extend(attn(cur))
                if level > 0 and i == num_res_blocks:
                    block.append(Upsample(cur))
                self.up.append(block)

        self.out = nn.Sequential(nn.GroupNorm(norm_groups, cur), nn.SiLU(), _zero(nn.Conv2d(cur, in_channels, 3, padding=1)))

    def _check_inputs(self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None) -> None:
        expected = (self.in_channels, self.image_size, self.image_size)
        if x.ndim != 4 or tuple(x.shape[1:]) != expected:
            raise ValueError(f"the U-Net expects images of shape [B, {', '.join(map(str, expected))}], got {tuple(x.shape)}")
        if t.shape != (x.shape[0],):
            raise ValueError(f"t must have shape [{x.shape[0]}] (one timestep per image), got {tuple(t.shape)}")
        if y is None:
            return
        if self.num_classes is None:
            raise ValueError("class labels were given to an unconditional U-Net (built with num_classes=None)")
        if y.shape != (x.shape[0],):
            raise ValueError(f"y must have shape [{x.shape[0]}] (one class id per image), got {tuple(y.shape)}")
        if y.dtype.is_floating_point:
            raise TypeError(f"y must hold integer class ids, got dtype {y.dtype}")
        # values are checked on the CPU only: reading them from a GPU would stall every forward pass
        on_cpu = y.device.type == "cpu" and not torch.compiler.is_compiling()
        if on_cpu and y.numel() and (int(y.min()) < 0 or int(y.max()) > self.num_classes):
            raise ValueError(
                f"class ids must lie in 0..{self.num_classes - 1} (or {self.num_classes} for 'no label'), "
                f"got {int(y.min())}..{int(y.max())}"
            )

    def forward(
        self, x: torch.Tensor, t: torch.Tensor, y: torch.Tensor | None = None, context: tuple[torch.Tensor, torch.Tensor] | None = None
    ) -> torch.Tensor:
        """Predict the target from x_t [B, C, H, W] at timesteps t [B]; y [B] class ids (optional);
        ``context`` (a text model's, required there): (token features [B, L, context_dim], padding mask [B, L])."""
        self._check_inputs(x, t, y)
        self._check_context(x, context)
        emb = self.time_mlp(timestep_embedding(t, self.ch))
        if self.class_emb is not None:
            if y is None:  # a conditional model asked without labels samples unconditionally
                y = torch.full_like(t, self.num_classes, dtype=torch.long)
            emb = emb + self.class_emb(y)

        h = self.conv_in(x)
        hs = [h]
        for block in self.down:
            h = block(h, emb, context)
            hs.append(h)
        h = self.mid(h, emb, context)
        for block in self.up:
            h = block(torch.cat([h, hs.pop()], dim=1), emb, context)
        return self.out(h)

    def _check_context(self, x: torch.Tensor, context: tuple[torch.Tensor, torch.Tensor] | None) -> None:
        if self.context_dim is None:
            if context is not None:
                raise ValueError("a caption was given to a U-Net without text conditioning (built with context_dim=None)")
            return
        if context is None:
            raise ValueError("this U-Net is text-conditional: pass context=(token features, padding mask), the empty caption's for no text")
        tokens, pad = context
        if tokens.ndim != 3 or tokens.shape[0] != x.shape[0] or tokens.shape[2] != self.context_dim:
            raise ValueError(f"token features must have shape [{x.shape[0]}, L, {self.context_dim}], got {tuple(tokens.shape)}")
        if pad.shape != tokens.shape[:2] or pad.dtype != torch.bool:
            raise ValueError(f"the padding mask must be a bool tensor of shape {tuple(tokens.shape[:2])}, got {pad.dtype} {tuple(pad.shape)}")
        if pad.device.type == "cpu" and bool(pad.all(1).any()):  # a caption of padding alone would attend to nothing (NaN)
            raise ValueError("every caption needs at least one token that is not padding (helpers.text puts a start token first)")


def shape_table(model: UNet, x: torch.Tensor, t: torch.Tensor) -> list[tuple[str, tuple[int, ...]]]:
    """(block name, output shape) for every top-level block of ``model`` on input (x, t), in order."""
    rows: list[tuple[str, tuple[int, ...]]] = [("input", tuple(x.shape))]
    named = [("conv_in", model.conv_in)]
    named += [(f"down.{i} ({_kinds(b)})", b) for i, b in enumerate(model.down)]
    named += [("mid (" + _kinds(model.mid) + ")", model.mid)]
    named += [(f"up.{i} ({_kinds(b)})", b) for i, b in enumerate(model.up)]
    named += [("out", model.out)]
    hooks = [m.register_forward_hook(lambda m, i, o, name=name: rows.append((name, tuple(o.shape)))) for name, m in named]
    try:
        with torch.no_grad():
            model(x, t)
    finally:
        for h in hooks:
            h.remove()
    return rows


def _kinds(block: nn.Module) -> str:
    names = {"ResBlock": "res", "AttentionBlock": "attn", "CrossAttentionBlock": "xattn", "Downsample": "down", "Upsample": "up"}
    return "+".join(names.get(type(m).__name__, type(m).__name__) for m in block)
