"""A small CLIP (Radford et al. 2021), trained by hand on a laptop CPU for notebook 13.

Two encoders map an image and a caption to unit vectors in one space; training pulls each image
towards its own caption and away from the other captions of the batch with the symmetric InfoNCE
loss (Radford et al. 2021, fig. 3; van den Oord et al. 2018):

    logits = exp(l) * normalize(image_emb) @ normalize(text_emb)^T                 [N, N]
    loss   = (cross_entropy(logits, arange(N)) + cross_entropy(logits^T, arange(N))) / 2

with a learned temperature l (initialised at log(1 / 0.07), capped at log 100 as in the paper). The
text encoder is a small transformer over the tokens of ``helpers.text.Tokenizer``; its per-token
outputs are what a text-conditioned U-Net cross-attends to, as Stable Diffusion reads CLIP's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TextEncoder", "ImageEncoder", "CLIP", "contrastive_loss"]


class TextEncoder(nn.Module):
    """Token ids [N, L] (0 = padding) -> (token features [N, L, width], caption embedding [N, dim]).

    Token and learned position embeddings, ``layers`` pre-norm transformer layers that never attend
    to padding, a final LayerNorm; the caption embedding is the mean over its real tokens, projected.
    """

    def __init__(self, vocab_size: int, max_len: int, width: int = 64, layers: int = 2, heads: int = 4, dim: int = 64) -> None:
        super().__init__()
        self.config = dict(vocab_size=vocab_size, max_len=max_len, width=width, layers=layers, heads=heads, dim=dim)
        self.max_len, self.width = max_len, width
        self.token = nn.Embedding(vocab_size, width, padding_idx=0)
        self.position = nn.Parameter(torch.randn(max_len, width) * 0.02)
        layer = nn.TransformerEncoderLayer(width, heads, 4 * width, dropout=0.0, batch_first=True, norm_first=True)
        self.transformer = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.proj = nn.Linear(width, dim, bias=False)

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if ids.shape[1] > self.max_len:
            raise ValueError(f"captions of {ids.shape[1]} tokens; this encoder takes at most {self.max_len}")
        pad = ids == 0
        h = self.token(ids) + self.position[: ids.shape[1]]
        h = self.norm(self.transformer(h, src_key_padding_mask=pad))
        keep = (~pad).unsqueeze(-1).to(h.dtype)
        pooled = (h * keep).sum(1) / keep.sum(1).clamp(min=1)
        return h, self.proj(pooled)


class ImageEncoder(nn.Module):
    """Images [N, C, H, W] -> embeddings [N, dim]: three stride-2 convolutions, a global mean, a projection."""

    def __init__(self, in_channels: int = 1, width: int = 32, dim: int = 64) -> None:
        super().__init__()
        chans = (in_channels, width, 2 * width, 4 * width)
        layers: list[nn.Module] = []
        for a, b in zip(chans, chans[1:]):
            layers += [nn.Conv2d(a, b, 3, stride=2, padding=1), nn.GroupNorm(8, b), nn.SiLU()]
        self.net = nn.Sequential(*layers)
        self.proj = nn.Linear(chans[-1], dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.net(x).mean((2, 3)))


def contrastive_loss(image_emb: torch.Tensor, text_emb: torch.Tensor, logit_scale: torch.Tensor) -> torch.Tensor:
    """The symmetric InfoNCE loss of N matching (image, caption) pairs, row i with row i (module docstring)."""
    if image_emb.shape != text_emb.shape:
        raise ValueError(f"need one caption per image: embeddings {tuple(image_emb.shape)} and {tuple(text_emb.shape)}")
    logits = logit_scale.exp() * F.normalize(image_emb, dim=-1) @ F.normalize(text_emb, dim=-1).T
    labels = torch.arange(len(logits), device=logits.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


class CLIP(nn.Module):
    """The two encoders and the learned temperature."""

    MAX_LOGIT_SCALE = math.log(100.0)

    def __init__(self, vocab_size: int, max_len: int, in_channels: int = 1, dim: int = 64) -> None:
        super().__init__()
        self.config = dict(vocab_size=vocab_size, max_len=max_len, in_channels=in_channels, dim=dim)
        self.text = TextEncoder(vocab_size, max_len, dim=dim)
        self.image = ImageEncoder(in_channels, dim=dim)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def loss(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        return contrastive_loss(self.image(images), self.text(ids)[1], self.logit_scale.clamp(max=self.MAX_LOGIT_SCALE))

    @torch.no_grad()
    def similarity(self, images: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        """Cosine similarities [N_images, N_captions] (CLIP score is 100 x the matching pair's, clipped at 0)."""
        return F.normalize(self.image(images), dim=-1) @ F.normalize(self.text(ids)[1], dim=-1).T
