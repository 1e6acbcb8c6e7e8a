"""Stable Diffusion's denoiser in miniature (notebook 13): a U-Net that reads a caption through a
frozen text encoder.

    model(z_t, t, ids) = UNet(z_t, t, context=(text_encoder(ids) token features, ids == padding))

The caption's token ids (``helpers.text.Tokenizer``) pass through the text encoder of a trained,
frozen ``helpers.clip.CLIP``; every cross-attention block of the U-Net (``UNet(context_dim=...)``)
attends to the per-token features, never to padding. The text encoder is part of the model, as
Stable Diffusion's pipeline carries CLIP's text encoder (and not its image encoder): the checkpoint
holds its weights and the vocabulary, and ``config['text_fingerprint']`` names it, so that a model
is never resumed or loaded around another one. The empty caption (the start token alone) is "no text": caption dropout
trains on it and classifier-free guidance (``helpers.samplers.TextGuided``) steers away from it.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from helpers.clip import TextEncoder
from helpers.device import fingerprint
from helpers.text import Tokenizer
from helpers.unet import UNet

__all__ = ["TextUNet"]


class TextUNet(nn.Module):
    """``model(x_t, t, ids)``: token ids [B, L] -> the U-Net's output, conditioned on the captions.

    ``unet``: a ``UNet``'s keyword arguments (``context_dim`` is the text encoder's width);
    ``text``: the ``TextEncoder``'s; ``tokenizer``: ``Tokenizer.state()``; ``text_fingerprint``:
    the trained encoder's (a checkpoint's weights must match it). Build one with ``around``."""

    def __init__(self, unet: dict[str, Any], text: dict[str, Any], tokenizer: dict[str, Any], text_fingerprint: str) -> None:
        super().__init__()
        self.tokenizer = Tokenizer.from_state(tokenizer)
        if text["vocab_size"] != len(self.tokenizer) or text["max_len"] != self.tokenizer.max_len:
            raise ValueError(f"the text encoder reads {text['vocab_size']} words in {text['max_len']} tokens, the tokenizer "
                             f"{len(self.tokenizer)} in {self.tokenizer.max_len}: build both from one caption set")  # fmt: skip
        self.text = TextEncoder(**text).requires_grad_(False)
        self.unet = UNet(**{**unet, "context_dim": self.text.width})
        self.config = {"unet": dict(unet), "text": dict(text), "tokenizer": dict(tokenizer), "text_fingerprint": text_fingerprint}
        self.register_buffer("null_ids", self.tokenizer.encode([""]), persistent=False)
        self.image_size, self.in_channels, self.num_classes = self.unet.image_size, self.unet.in_channels, None

    @classmethod
    def around(cls, text: TextEncoder, tokenizer: Tokenizer, **unet: Any) -> TextUNet:
        """A fresh U-Net (``UNet(**unet)``, with cross-attention) around a copy of the trained ``text`` encoder (a CLIP's ``.text``)."""
        model = cls(unet, text.config, tokenizer.state(), fingerprint(text))
        model.text.load_state_dict(text.state_dict())
        return model

    def check_text(self) -> None:
        """Raise ValueError unless the text encoder's weights are the ones ``config`` names (after loading a state)."""
        if fingerprint(self.text) != self.config["text_fingerprint"]:
            raise ValueError(f"its text encoder's weights (fingerprint {fingerprint(self.text)}) are not the encoder it names ({self.config['text_fingerprint']})")

    def train(self, mode: bool = True) -> TextUNet:
        """Train mode for the U-Net; the frozen text encoder stays in eval mode."""
        super().train(mode)
        self.text.eval()
        return self

    def forward(self, x: torch.Tensor, t: torch.Tensor, ids: torch.Tensor) -> torch.Tensor:
        if ids.ndim != 2 or len(ids) != len(x):
            raise ValueError(f"need one caption's token ids per image, [{len(x)}, L]; got shape {tuple(ids.shape)}")
        with torch.no_grad():  # frozen: no gradient flows into the text encoder
            tokens, _ = self.text(ids)
        return self.unet(x, t, context=(tokens, ids == 0))
