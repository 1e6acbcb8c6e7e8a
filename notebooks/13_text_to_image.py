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
# # 13 · Text-to-image in miniature: a small CLIP, cross-attention and latent diffusion
#
# Stable Diffusion is three networks and an algorithm: a **text encoder** (CLIP's, frozen) turns the
# prompt into one feature vector per word; a **U-Net** denoises in the latent space of an
# **autoencoder** and reads the prompt through **cross-attention**; a **sampler** with
# classifier-free guidance runs the chain; the autoencoder's decoder turns the latent into pixels.
# The course has built three of these four parts: the U-Net (02), the sampler and guidance (04, 05, 08)
# and the autoencoder (10). This notebook adds the text encoder, trains a small CLIP by hand, joins the
# four, and measures how often the result does what its prompt says, including on combinations of
# words it never saw together. Then it edits real images with prompts.
#
# Fashion-MNIST has labels and no sentences, so the captions are made from the images: the class name
# and attributes measured from the pixels. The same measurements then score the samples: whether the
# model obeys "dark" is decided by the definition that wrote "dark" into its captions.
#
# The captions name Fashion-MNIST's classes, so under a CIFAR-10 profile (`gpu`, `full`) the notebook
# runs its `captions_profile`, `laptop`, on the same device, and still saves under its own profile's
# `artifacts/` folder. It needs `10_autoencoder.pt` (notebook 10;
# under `laptop` the shipped one in `pretrained/` is used when it is missing) and writes `13_clip.pt` and `13_text.pt`. The text model trains with the profile's
# U-Net recipe; the same run on the command line is
# `python -m helpers train --autoencoder <10_autoencoder.pt> --clip <13_clip.pt>`. Symbols are those of the
# [notation](../docs/notation.md) page; $c$ is a caption and $\varnothing$ the empty one.

# %%
import math
import time

import matplotlib.pyplot as plt
import torch

from helpers.captions import ATTRIBUTES, CLASS_WORDS, FOOTWEAR, CaptionMaker, read_prompt
from helpers.checkpoints import load_autoencoder, save_clip
from helpers.clip import CLIP, contrastive_loss
from helpers.config import TrainConfig, setup
from helpers.data import profile_dataset
from helpers.device import cpu_generator
from helpers.stats import bootstrap
from helpers.text import Tokenizer
from helpers.viz import plot_loss_curve, show_grid

notebook_start = time.perf_counter()
device, profile = setup(seed=0)
writes = profile  # what this notebook saves goes to this profile's folder, whatever scale it runs at
if profile.for_captions() is not profile:  # the captions name Fashion-MNIST's classes
    print(f"the {profile.name} profile trains on {profile.dataset}, which has no captions: this notebook runs the "
          f"{profile.for_captions().name} profile's Fashion-MNIST on {device} instead")  # fmt: skip
    profile = profile.for_captions()
ae = load_autoencoder(profile.require("autoencoder"), device)
data, test = profile_dataset(profile), profile_dataset(profile, train=False)
x_train, y_train = data.tensors()
x_test, y_test = test.tensors()
print(f"{len(x_train)} training and {len(x_test)} test images, {profile.image_size}x{profile.image_size}; autoencoder: latents {ae.latent_shape}")

# %% [markdown]
# ## Captions measured from the pixels
#
# `helpers.captions.measure` computes four numbers per image, on the object's pixels (those above 0.1
# in [0, 1]): **brightness** (their mean), **extent** (their share of the frame), **texture** (their mean
# |Laplacian|) and, for footwear, **facing** (whether the upper half, heel and shaft, lies right or left
# of the centre). Brightness, extent and texture are each split at the median of the class on the
# training images, so that within a class "dark" and "light" are equally common; facing is split at 0,
# left or right of the centre. A caption is a synonym of the class, two of its three attribute words and,
# for footwear, often the facing, in one of four templates, all chosen by a seeded generator per image. Three (class, word) pairs are **held out**: the word is dropped from every
# caption of that class, so the model never reads, say, "dark" beside "sneaker".

# %%
HELD_OUT = ((7, "dark"), (8, "small"), (4, "light"))  # a dark sneaker, a small bag, a light coat: never in a caption
maker = CaptionMaker.fit(x_train, y_train, held_out=HELD_OUT)
captions = maker.captions(x_train, y_train)
for c, word in HELD_OUT:
    assert not any(f" {word} " in f" {cap} " for cap, label in zip(captions, y_train.tolist()) if label == c)
words = maker.words(x_train, y_train)
print(f"held out: {', '.join(f'{w} + {CLASS_WORDS[c][0]}' for c, w in HELD_OUT)}; no training caption of those classes holds those words")
for c in FOOTWEAR:
    right = sum(w["facing"] == "facing right" for w, label in zip(words, y_train.tolist()) if label == c) / int((y_train == c).sum())
    print(f"{CLASS_WORDS[c][0]:<10} facing right in {right:.1%} of the training images")

fig, axes = plt.subplots(2, 6, figsize=(13, 5.2))
for ax, i in zip(axes.flat, range(12)):
    ax.imshow(x_train[i, 0], cmap="gray", vmin=-1, vmax=1)
    ax.set_title(captions[i].replace(" facing", "\nfacing").replace("photo of a ", "photo of a\n"), fontsize=9)
    ax.set_axis_off()
fig.suptitle(f"the first training images and their captions [{profile.name} profile]");

# %% [markdown]
# Brightness, extent and texture split every class in half by construction. Facing does not: the
# printed shares show that Fashion-MNIST's shoes almost all point left. A model can learn "facing
# right" only from those few images, a limit of the data that the obedience table below measures.
#
# ## Words to numbers
#
# A tokenizer maps each word to an integer. Here the vocabulary is closed, the few dozen words a
# caption can hold, so each word is one token (CLIP's tokenizer splits words into sub-word pieces instead).
# Id 0 is padding and id 1 a start token that begins every caption: the empty caption $\varnothing$,
# the "no text" of guidance, is the start token alone. A word outside the vocabulary is refused, never
# silently dropped.

# %%
tok = Tokenizer(maker.vocabulary(), max_len=1 + maker.longest())  # every word a caption can hold; the start token
ids = tok.encode(captions)
print(f"vocabulary: {len(tok)} tokens ({', '.join(tok.vocab)}); captions of at most {tok.max_len - 1} words")
print(f"{captions[0]!r} -> {ids[0].tolist()} -> {tok.decode(ids[:1])[0]!r}")
assert tok.decode(ids) == captions
try:
    tok.encode(["a shiny sneaker"])
except ValueError as err:
    print(f"refused: {err}"[:140] + " ...")

# %% [markdown]
# ## A small CLIP, by hand
#
# CLIP (Radford et al. 2021) trains an image encoder $f$ and a text encoder $g$ so that an image and its
# caption land close together on the unit sphere. For a batch of $N$ pairs, with $a_i = f(x_i)/\lVert f(x_i)\rVert$,
# $b_j = g(c_j)/\lVert g(c_j)\rVert$ and a learned temperature $\tau$, the logits are
# $\ell_{ij} = a_i\cdot b_j/\tau$ and the loss is the symmetric cross-entropy that picks each image's own
# caption among the $N$ and each caption's own image (InfoNCE, van den Oord et al. 2018):
#
# $$\mathcal L = \frac{1}{2N}\sum_{i=1}^N\Big[-\log\frac{e^{\ell_{ii}}}{\sum_j e^{\ell_{ij}}} - \log\frac{e^{\ell_{ii}}}{\sum_j e^{\ell_{ji}}}\Big].$$
#
# The text encoder is a two-layer transformer over the tokens that never attends to padding; its
# caption vector is the mean over the real tokens, projected. The image encoder is three stride-2
# convolutions. The loss written out, on one batch of the untrained CLIP, against `contrastive_loss`:

# %%
torch.manual_seed(0)
clip = CLIP(len(tok), tok.max_len).to(device)
batch = torch.arange(256) % len(x_train)
image_emb, text_emb = clip.image(x_train[batch].to(device)), clip.text(ids[batch].to(device))[1]
a, b = image_emb / image_emb.norm(dim=1, keepdim=True), text_emb / text_emb.norm(dim=1, keepdim=True)
logits = clip.logit_scale.exp() * a @ b.T  # l_ij: image i against caption j, divided by the temperature
image_to_text = -(logits.diag() - logits.logsumexp(dim=1))  # -log softmax over the captions, row i at its own
text_to_image = -(logits.diag() - logits.logsumexp(dim=0))  # -log softmax over the images, column j at its own
by_hand = (image_to_text.mean() + text_to_image.mean()) / 2
assert torch.allclose(by_hand, contrastive_loss(image_emb, text_emb, clip.logit_scale), atol=1e-5)
print(f"InfoNCE by hand {by_hand.item():.4f} == helpers.clip.contrastive_loss; log N = {math.log(len(batch)):.4f} (the loss of uniform guessing); "
      f"initial 1/tau = {clip.logit_scale.exp().item():.1f}")

# %% [markdown]
# The untrained loss can lie above $\log N$, the loss of uniform guessing: the initial $1/\tau$ (printed)
# magnifies random similarities into confident guesses, mostly wrong. Training draws random batches of
# 256 pairs for the profile's number of steps (`helpers.clip_training.train_clip`: AdamW, the learning
# rate warmed up over the first 5% of the steps, then a cosine decay):

# %%
from helpers.clip_training import train_clip

start = time.perf_counter()
clip_log = train_clip(clip, x_train, ids, profile.clip_steps, progress=False)
clip_minutes = (time.perf_counter() - start) / 60
clip_path = save_clip(writes.checkpoint("clip"), clip, tok, maker, history=clip_log, extra={"minutes": clip_minutes})
ax = plot_loss_curve(clip_log, title=f"CLIP training, {profile.clip_steps} steps of 256 pairs in {clip_minutes:.1f} minutes [{profile.name} profile]")
ax.axhline(math.log(256), color="gray", ls=":", label="log 256 (chance)")
ax.legend()
idx = torch.randint(0, len(captions), (256,), generator=cpu_generator(0))  # a batch like training's
cap, lab, true_words = [captions[i] for i in idx.tolist()], y_train[idx].tolist(), maker.words(x_train[idx], y_train[idx])
stated = [set(read_prompt(c)[1].values()) for c in cap]  # the attribute words each caption states
repeats = torch.tensor([cap.count(c) for c in cap], dtype=torch.float64).log().mean()
true_of = torch.tensor([sum(lab[j] == lab[i] and stated[j] <= set(true_words[i].values()) for j in range(len(cap))) for i in range(len(cap))],
                       dtype=torch.float64).log().mean()  # fmt: skip
assert repeats < clip_log[-1]["loss"] / 2, "the text below calls the floor of exact repeats small"
print(f"final loss {clip_log[-1]['loss']:.3f} (log 256 = {math.log(256):.3f}); saved {clip_path}")
print(f"in a batch of 256: {len(set(cap))} different captions; word-for-word repeats give a floor of {repeats:.2f} nats (the mean log of each "
      f"caption's count); counting every caption true of an image (its class, and every attribute word it states true), the mean log count is {true_of:.2f}")

# %% [markdown]
# The loss stays far above zero, and it should. Identical captions are identical inputs, so no CLIP can
# tell them apart: word-for-word repeats put a floor under the loss (printed; exercise 2 writes the loss
# that forgives them). That floor is less than half the final loss (checked in the cell). Most of the rest is that many other captions in a batch are
# just as true of an image (another template or synonym, its other attribute words), and InfoNCE
# counts those as wrong answers too; the second printed number counts them. What CLIP learned is
# measured on test images by **zero-shot classification**: the most similar of ten prompts "a {class}" gives the class,
# and of "a dark {class}" / "a light {class}" (with the true class) gives the brightness, and so on.

# %%
n_probe = min(2000, len(x_test))
x_probe, y_probe = x_test[:n_probe].to(device), y_test[:n_probe]
truth = maker.words(x_test[:n_probe], y_probe)


def zero_shot(keep, options):
    """For the probe images ``keep``, the index of the most similar of each one's ``options`` (prompts, k each)."""
    k = len(options[0])
    sims = clip.similarity(x_probe[keep], tok.encode([p for o in options for p in o]).to(device)).cpu()
    return torch.stack([sims[j, j * k:(j + 1) * k] for j in range(len(keep))]).argmax(1)


def interval_of(hits):
    """The share of hits in %, with its 95% bootstrap interval."""
    return bootstrap(lambda idx: float(hits[idx].float().mean()) * 100, len(hits), replicates=200)


def accuracy_line(name, hits, answers):
    """The accuracy with its interval, against always giving the most common true answer."""
    interval, majority = interval_of(hits), 100 * max(float((answers == a).float().mean()) for a in answers.unique())
    verdict = "above the majority answer" if interval.low > majority else "not above the majority answer"
    return f"{name:<12} {interval.estimate:5.1f}% [{interval.low:.1f}, {interval.high:.1f}]   majority answer {majority:5.1f}%: {verdict}"


everyone = list(range(n_probe))
zero_shot_hits = {"class": (zero_shot(everyone, [[f"a {names[0]}" for names in CLASS_WORDS]] * n_probe).eq(y_probe), y_probe)}
for attribute, (low, high) in ATTRIBUTES.items():
    keep = [i for i in everyone if attribute in truth[i]]
    nouns = [CLASS_WORDS[int(y_probe[i])][0] for i in keep]
    options = [[f"a {n} {low}", f"a {n} {high}"] if attribute == "facing" else [f"a {low} {n}", f"a {high} {n}"] for n in nouns]
    answers = torch.tensor([truth[i][attribute] == high for i in keep]).long()
    zero_shot_hits[attribute] = (zero_shot(keep, options).eq(answers), answers)
print(f"zero-shot on {n_probe} test images (95% bootstrap intervals), against always answering the commonest truth:")
for name, (hits, answers) in zero_shot_hits.items():
    print(accuracy_line(name, hits, answers))
clip.requires_grad_(False).eval();  # frozen from here on, as Stable Diffusion freezes CLIP

# %% [markdown]
# The control in each row is the score of always giving the commonest true answer: about 10% for the
# class and about half for the three median-split words, but for facing nearly all of it, since
# nearly every shoe faces left. The verdicts say which rows CLIP beats that control on.
#
# ## Cross-attention: how the U-Net reads the caption
#
# In self-attention (02) every pixel's query meets the keys of all pixels. In **cross-attention** the
# queries still come from the image's features $h$ at a resolution of the U-Net, but the keys and
# values come from the caption's token features $e_1, \dots, e_L$ (the text encoder's per-token output):
#
# $$\mathrm{out} = h + W_O\,\mathrm{softmax}\!\Big(\frac{QK^\top}{\sqrt{d_h}} + m\Big)V, \qquad Q = W_Q\,\mathrm{GN}(h),\; K = W_K e,\; V = W_V e,\qquad m = -\infty \text{ at padding tokens},$$
#
# with GroupNorm $\mathrm{GN}$ and $d_h = C$, the channels, for one head ($C/\text{heads}$ with several, as in 02).
#
# Each pixel gets a weighted mix of the words' values, the weights saying which words matter there.
# The course's `UNet(context_dim=...)` puts one such block after each self-attention block; here
# the text model attends at the two lowest resolutions of the latent U-Net (printed below; 10's latent
# model attended at the lowest only) and in its middle. One block
# by hand, single-headed, against the library's `CrossAttentionBlock` (its output projection is
# zero-initialised, so it is re-drawn to make the check mean something):

# %%
from helpers.unet import CrossAttentionBlock

block = CrossAttentionBlock(ch=32, context_dim=clip.text.width, groups=8).to(device)
torch.nn.init.normal_(block.proj.weight, std=0.2)
h = torch.randn(4, 32, 4, 4, device=device)
with torch.no_grad():
    e, _ = clip.text(ids[:4].to(device))  # token features [4, L, width]
    pad = ids[:4].to(device) == 0
    B, C, H, W = h.shape
    q = block.q(block.norm(h)).flatten(2).transpose(1, 2)  # [B, HW, C]: one query per position
    k, v = block.kv(e).chunk(2, dim=-1)  # [B, L, C] each: a key and a value per token
    scores = q @ k.transpose(1, 2) / math.sqrt(C)  # [B, HW, L]; d_h = C for one head
    weights = scores.masked_fill(pad[:, None, :], -math.inf).softmax(dim=-1)  # no attention to padding
    by_hand = h + block.proj((weights @ v).transpose(1, 2).reshape(B, C, H, W))
    assert torch.allclose(by_hand, block(h, e, pad), atol=1e-5)
    e_changed = e.clone()
    e_changed[pad] = 100.0  # whatever the padding positions hold
    assert torch.allclose(block(h, e_changed, pad), block(h, e, pad), atol=1e-5)
print("cross-attention by hand == helpers.unet.CrossAttentionBlock; whatever the padding tokens hold changes nothing")

# %% [markdown]
# ## The four parts, trained together
#
# The text model is the course's latent diffusion (10) with the caption in place of nothing: the
# training images become the autoencoder's scaled latents $z_0$, their captions become token ids, and
# `helpers.text_unet.TextUNet` runs the frozen text encoder on the ids and the U-Net on $(z_t, t)$ with
# the token features as context. The loss is 03's, $\lVert \varepsilon_\theta(z_t, t, c) - \varepsilon\rVert^2$ with
# min-SNR weighting; **caption dropout** replaces a caption by $\varnothing$ with probability 0.1, so one
# network also learns $\varepsilon_\theta(z_t, t, \varnothing)$, which guidance needs (08's label dropout, for text).
# Everything else is the profile's recipe, in the course's one `Trainer`.

# %%
from helpers.checkpoints import load_model
from helpers.latent import LatentDataset, encode_dataset, text_records, text_unet_config
from helpers.text_unet import TextUNet
from helpers.training import Trainer

start = time.perf_counter()
latents = encode_dataset(ae, data, progress=False)
train_set = LatentDataset(latents.latents, ids)
encode_minutes = (time.perf_counter() - start) / 60
torch.manual_seed(0)
model = TextUNet.around(clip.text, tok, **text_unet_config(profile.model, ae))
d = profile.diffusion()
parts = {"text encoder (CLIP's, frozen)": model.text, "U-Net (with cross-attention)": model.unet, "autoencoder (encoder: latents; decoder: samples)": ae}
for name, part in parts.items():
    print(f"{name:<48} {sum(p.numel() for p in part.parameters()):>9,} parameters")
print(f"sampler: DDIM with classifier-free guidance, no parameters; {len(train_set)} latents of shape {tuple(latents.latents.shape[1:])}, "
      f"encoded in {encode_minutes:.1f} minutes; cross-attention at {model.unet.config['attn_resolutions']} and the middle")

# %%
config = TrainConfig.from_profile(profile, sample_every=0, eval_every=0)
print(f"caption dropout p = {config.p_uncond}; {config.steps} steps of batch {config.batch_size}, the profile's recipe")
start = time.perf_counter()
trainer = Trainer(model, d, train_set, config, device, progress=False).train()
text_minutes = (time.perf_counter() - start) / 60
records = text_records(ae, profile.require("autoencoder"), clip_path, model.config["text_fingerprint"], maker.state())  # what sampling and resuming need
text_path = trainer.save(writes.checkpoint("text"), profile=profile.name, extra={**records, "minutes": text_minutes, "minutes_clip": clip_minutes})
ax = plot_loss_curve(trainer.history, title=f"text-conditioned latent U-Net, {trainer.step} steps in {text_minutes:.1f} minutes [{profile.name} profile]")
ax.set(yscale="log")
print(f"trained {trainer.step} steps in {text_minutes:.1f} minutes (+ {clip_minutes:.1f} for CLIP, {encode_minutes:.1f} to encode); saved {text_path}")
model, _, _ = load_model(text_path, device)  # the EMA weights, as a reader of the checkpoint gets them
assert model.config["text_fingerprint"] == trainer.model.config["text_fingerprint"]

# %% [markdown]
# ## Prompts
#
# Sampling is 10's latent DDIM with 08's guidance on the caption against the empty one,
# $\tilde\varepsilon = \varepsilon_\theta(z_t, t, \varnothing) + s\,[\varepsilon_\theta(z_t, t, c) - \varepsilon_\theta(z_t, t, \varnothing)]$
# (`helpers.samplers.TextGuided`), then the decoder. Eight prompts, eight samples each, without
# guidance ($s = 1$) and with it ($s = 3$), both panels from the same noise; the prompts printed below
# the figure pair words that training never paired:

# %%
from helpers.latent import draw_images
from helpers.samplers import DDIM, TextGuided

PROMPTS = ["a dark sneaker facing left", "a light plain dress", "a large patterned bag", "a small dark t-shirt",
           "a light trousers", "a photo of a dark ankle boot", "a dark sneaker", "a small bag"]  # fmt: skip
steps = min(20, d.T)


def draw(prompts, scale, seed=1):
    """Decoded samples, one per prompt, guided with scale s, from noise seeded ``seed``."""
    return draw_images(TextGuided(model, tok.encode(prompts).to(device), scale), d, ae, len(prompts), DDIM(steps), cpu_generator(seed))


fig, axes = plt.subplots(1, 2, figsize=(13, 6.2))
for ax, scale in zip(axes, (1.0, 3.0)):
    grid = draw([p for p in PROMPTS for _ in range(8)], scale)
    show_grid(grid, f"s = {scale:g}", nrow=8, ax=ax)
    ax.set_yticks([(i + 0.5) * (grid.shape[-1] + 1) for i in range(len(PROMPTS))], PROMPTS)
    ax.set_axis_on()
    ax.set_xticks([])
fig.suptitle(f"eight prompts, eight samples each, same noise; DDIM-{steps} [{profile.name} profile]")
fig.tight_layout()
unseen = [p for p in PROMPTS if any((read_prompt(p)[0], word) in HELD_OUT for word in read_prompt(p)[1].values())]
print(f"held-out combinations among them: {', '.join(repr(p) for p in unseen)}")

# %% [markdown]
# ## How often does it obey?
#
# For every class and every word that class can take, the prompt "a {word} {class}", with
# `per_prompt` samples each at guidance scales $s = 0$ (the empty caption: the model asked nothing),
# 1 and 3. Each sample is scored by the caption maker's own functions at the thresholds of the asked
# class: does the dark sneaker measure dark? The course's classifier gives the class accuracy. Words
# are scored separately on the combinations seen in training and the held-out ones.
#
# The **control** for a word is the prompt that names the class and not the word, "a {class}", from the
# same noise at the same $s$, scored for the same word: what the model draws for that class anyway.
# The rise from the control to the word's prompt is what the word does. (The $s = 0$ row is not a
# control for a word: asked nothing, the model draws any class, scored at another class's thresholds.)
#
# The autoencoder limits what any latent model can show: a word a decoded image cannot carry is not
# obeyed whatever the U-Net does. So the table also gives the autoencoder's **reconstruction rate**:
# of the test images that carry a word, the share whose reconstruction still carries it. Samples can
# exceed it (a guided sample may be an exaggerated example of the word); a rate far below the rest marks
# a word the decoder barely draws.

# %%
from helpers.classifier import load_or_train_classifier
from helpers.latent import decode

classifier, info = load_or_train_classifier(profile, device)
per_prompt = max(4, profile.sample.fid_samples // 32)
grid_prompts = [(c, name, word) for c, names in enumerate(CLASS_WORDS) for name, pair in ATTRIBUTES.items() for word in pair
                if name != "facing" or c in FOOTWEAR]  # fmt: skip
prompts = [f"a {word} {CLASS_WORDS[c][0]}" if name != "facing" else f"a {CLASS_WORDS[c][0]} {word}" for c, name, word in grid_prompts]
asked = [p for p in prompts for _ in range(per_prompt)]
class_only = [f"a {CLASS_WORDS[c][0]}" for c, _, _ in grid_prompts for _ in range(per_prompt)]  # the control prompts, row for row
labels = torch.tensor([c for c, _, _ in grid_prompts for _ in range(per_prompt)])
held = torch.tensor([(c, w) in HELD_OUT for c, _, w in grid_prompts for _ in range(per_prompt)])
SCALES = (0.0, 1.0, 3.0)


def sample_and_score(texts, scale):
    """Samples for ``texts`` (the same noise for the same row), whether each carries its row's asked word, and its class."""
    images = torch.cat([draw(texts[i:i + 256], scale, seed=10 + i) for i in range(0, len(texts), 256)])
    with torch.no_grad():
        predicted = torch.cat([classifier(b.to(device)).argmax(1).cpu() for b in images.split(512)])
    return torch.tensor([next(iter(o.values())) for o in maker.obeyed(images, asked)]), predicted.eq(labels)


start = time.perf_counter()
obey, class_hits = {}, {}
for scale in SCALES:
    obey[scale], class_hits[scale] = sample_and_score(asked, scale)
control, control_class = {}, {}
for scale in (1.0, 3.0):
    control[scale], control_class[scale] = sample_and_score(class_only, scale)
with torch.no_grad():
    recon = torch.cat([decode(ae, ae.encode(b.to(device)).mean * ae.scale_factor).cpu() for b in x_test[:n_probe].split(500)])
recon_words = maker.words(recon, y_probe)
print(f"{len(prompts)} prompts x {per_prompt} samples x {len(SCALES)} scales, and their class-only controls at s = 1 and 3, "
      f"in {(time.perf_counter() - start) / 60:.1f} minutes")

# %%
def share(hits):
    return f"{100 * float(hits.float().mean()):5.1f}" if len(hits) else "    -"


columns = [w for pair in ATTRIBUTES.values() for w in pair]
word_of = [w for _, _, w in grid_prompts for _ in range(per_prompt)]
is_word = {col: torch.tensor([w == col for w in word_of]) for col in columns}
rows = [(f"s = {scale:g}, {part}", obey[scale], class_hits[scale], mask) for scale in SCALES for part, mask in (("seen", ~held), ("held out", held))]
rows += [(f'control "a {{class}}", s = {scale:g}', control[scale], control_class[scale], ~held) for scale in (1.0, 3.0)]
print(f"share of samples that carry the asked word (%), {per_prompt} samples per prompt; held-out combinations apart")
print(f"{'':<28}" + "".join(f"{w:>13}" for w in columns) + f"{'class acc.':>12}")
for name, hits, klass, mask in rows:
    print(f"{name:<28}" + "".join(f"{share(hits[mask & is_word[col]]):>13}" for col in columns) + f"{share(klass[mask]):>12}")
reconstruction, carriers = {}, {}
for col in columns:
    attribute = next(a for a, pair in ATTRIBUTES.items() if col in pair)
    kept = [recon_words[i][attribute] == col for i in range(n_probe) if truth[i].get(attribute) == col]
    reconstruction[col], carriers[col] = (100 * sum(kept) / len(kept) if kept else None), len(kept)
print(f"{'reconstruction rate':<28}" + "".join(f"{c:>13.1f}" if c is not None else f"{'-':>13}" for c in reconstruction.values()))
print(f"{'  (test images with it)':<28}" + "".join(f"{n:>13}" for n in carriers.values()))
print(f"(reconstruction rate: of the {n_probe} test images above, those with the word, the share whose reconstruction still carries it; "
      f"classifier test accuracy on real images {info['test_accuracy']:.1%})")

# %%
def paired_rise(a, b, mask):
    """Points by which the share in ``a`` exceeds that in ``b`` on the rows of ``mask``, with its bootstrap interval."""
    a, b = a[mask].float(), b[mask].float()
    return bootstrap(lambda idx: float((a[idx] - b[idx]).mean()) * 100, int(mask.sum()), replicates=200)


held_words = sorted({w for _, w in HELD_OUT})
same_words = ~held & torch.stack([is_word[w] for w in held_words]).any(0)  # seen combinations of the held-out words
fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), layout="constrained")
for part, mask, marker in ((f"seen combinations of {', '.join(held_words)}", same_words, "o-"), ("held-out combinations", held, "s--")):
    ivs = [interval_of(obey[s][mask]) for s in SCALES]
    axes[0].errorbar(SCALES, [i.estimate for i in ivs], yerr=[[i.estimate - i.low for i in ivs], [i.high - i.estimate for i in ivs]], fmt=marker, capsize=3, label=part)
axes[0].set(title=f"the asked word ({', '.join(held_words)})", xlabel="guidance scale s", ylabel="% of samples with the word", xticks=SCALES)
axes[0].legend()
ivs = [interval_of(class_hits[s]) for s in SCALES]
axes[1].errorbar(SCALES, [i.estimate for i in ivs], yerr=[[i.estimate - i.low for i in ivs], [i.high - i.estimate for i in ivs]], fmt="o-", capsize=3)
axes[1].axhline(10, color="gray", ls=":", label="chance")
axes[1].set(title="the asked class (the course's classifier), all prompts", xlabel="guidance scale s", ylabel="% classified as asked", xticks=SCALES)
axes[1].legend()
fig.suptitle(f"obedience against guidance, 95% bootstrap intervals [{profile.name} profile]")
for part, mask in ((f"seen combinations of {', '.join(held_words)}", same_words), ("held-out combinations", held)):
    rise = paired_rise(obey[3.0], control[3.0], mask)
    verdict = "the words move the samples" if rise.low > 0 else "no effect detected"
    print(f"{part}, s = 3: {share(obey[3.0][mask])}% against the class-only control's {share(control[3.0][mask])}%, "
          f"rise {rise.estimate:+.1f} points [{rise.low:+.1f}, {rise.high:+.1f}] -> {verdict}")
for c, word in HELD_OUT:  # what a training caption that names the class and no such word says about the image
    attribute = next(a for a, pair in ATTRIBUTES.items() if word in pair)
    silent = [w[attribute] == word for w, text, label in zip(words, captions, y_train.tolist()) if label == c and attribute not in read_prompt(text)[1]]
    assert sum(silent) > len(silent) / 2, "the text below says these captions mostly belong to images with the held-out word"
    print(f"training captions of a {CLASS_WORDS[c][0]} that state no {attribute}: {len(silent)}, of images that are {word} {100 * sum(silent) / len(silent):.0f}%")

# %% [markdown]
# The **held-out rows** answer the question of composition: the model never saw "dark" with
# "sneaker", "small" with "bag" or "light" with "coat", and the comparison above says whether those
# words move the samples all the same. Their control is high, and the last printed lines say why: a
# training caption that names a sneaker but no brightness belongs, more often than not, to a dark
# sneaker, since a dark sneaker's caption never says "dark" (and likewise for the small bag and the
# light coat). So "a sneaker" alone already leans dark: the model learned what the silence meant.
#
# Word by word, seen combinations at $s = 3$ against the class-only control. A word can stay well short
# of 100% for two reasons the table tells apart: the decoder barely draws it (a low reconstruction rate),
# or the training captions almost never hold it; and a word the control already carries has no room to rise.

# %%
caption_share = {}
for col in columns:
    attribute = next(a for a, pair in ATTRIBUTES.items() if col in pair)
    has = [w[attribute] == col for w in words if attribute in w]
    caption_share[col] = sum(has) / max(1, len(has))
for col in columns:
    mask = is_word[col] & ~held
    rise = paired_rise(obey[3.0], control[3.0], mask)
    reasons = []
    if reconstruction[col] is not None and reconstruction[col] < 50:
        reasons.append(f"the decoder keeps it in only {reconstruction[col]:.0f}% of reconstructions")
    if caption_share[col] < 0.05:
        reasons.append(f"only {100 * caption_share[col]:.1f}% of the training images that can take it have it")
    if float(control[3.0][mask].float().mean()) >= 0.95:
        verdict = "no room to rise: the control already carries it"
    elif rise.low > 0:
        verdict = "obeyed: above the control" + (", but by well under all samples" if float(obey[3.0][mask].float().mean()) < 0.75 else "")
    else:
        verdict = "not obeyed: no rise over the control detected"
    print(f"{col:<13} {share(obey[3.0][mask])}% (control {share(control[3.0][mask])}%; rise {rise.estimate:+5.1f} [{rise.low:+.1f}, {rise.high:+.1f}]) -> {verdict}"
          + (f"; {'; '.join(reasons)}" if reasons else ""))

# %% [markdown]
# ## Quality and agreement with the caption
#
# FID measures whether samples look like the data; here the samples are drawn for the captions of
# test images, so that they are asked for what the test set holds. The **CLIP score** is
# $100\cdot\max(\cos(f(x), g(c)), 0)$ between a sample and its caption under our CLIP, as torchmetrics'
# `CLIPScore` defines it (Hessel et al. 2021 scale the cosine by 2.5 instead of 100), beside the same
# score of the real test images with their own captions. It is not an outside judge here: the model
# reads captions through this same CLIP's text encoder.

# %%
from helpers.evaluation import Evaluator
from helpers.metrics import extract_both, fid_interval, get_features

features = get_features(profile, device)
evaluator = Evaluator.for_profile(profile, d, features)
n_fid = evaluator.n
fid_captions = maker.captions(x_test[:n_fid], y_test[:n_fid], offset=len(x_train))
fid_ids = tok.encode(fid_captions).to(device)


def clip_scores(images, caption_ids):
    """Per image: 100 max(cos(f(x), g(c)), 0) with its own caption."""
    return 100 * torch.cat([clip.similarity(x.to(device), c).diag().clamp(min=0).cpu() for x, c in zip(images.split(256), caption_ids.split(256))])


quality, feats, per_image_clip = {}, {}, {}
for scale in SCALES:
    images = torch.cat([draw(fid_captions[i:i + 256], scale, seed=100 + i) for i in range(0, n_fid, 256)])
    quality[scale], feats[scale] = evaluator.score(images), extract_both(features, images)[0]
    per_image_clip[scale] = clip_scores(images, fid_ids)
    quality[scale].clip_score = float(per_image_clip[scale].mean())
real_clip = float(clip_scores(x_test[:n_fid], fid_ids).mean())  # the same captions, the real images
q = quality[1.0]
print(f"{q.n_fake} samples per scale for the captions of {n_fid} test images vs {q.n_real} real images, {q.features} features; real-data floor {q.floor}")
for scale in SCALES:
    print(f"s = {scale:g}: FID {quality[scale].fid:7.1f}   CLIP score {quality[scale].clip_score:5.1f}")
print(f"real test images with their own captions: CLIP score {real_clip:.1f}")
gap = fid_interval(evaluator.real, feats[3.0], feats[1.0], replicates=200)
print(f"FID(s = 3) - FID(s = 1) = {gap}: {'no difference detected' if not gap.excludes_zero else ('guidance costs fidelity' if gap.estimate > 0 else 'guidance improves FID')}")
rise = bootstrap(lambda idx: float((per_image_clip[3.0][idx] - per_image_clip[1.0][idx]).mean()), n_fid, replicates=200)
print(f"CLIP score (s = 3) - (s = 1), same captions and noise: {rise}: "
      f"{'no difference detected' if not rise.excludes_zero else ('closer to the captions' if rise.estimate > 0 else 'further from the captions')}")
real_scores = clip_scores(x_test[:n_fid], fid_ids)
short = bootstrap(lambda idx: float((per_image_clip[3.0][idx] - real_scores[idx]).mean()), n_fid, replicates=200)
print(f"CLIP score (s = 3) - real test images, same captions: {short}: "
      f"{'no difference detected' if not short.excludes_zero else ('samples above the real images' if short.estimate > 0 else 'samples below the real images')}")

# %% [markdown]
# In 08 guidance traded fidelity to the data for agreement with the class. Here the verdicts above say
# what raising $s$ from 1 to 3 does to each at this budget: to agreement with the caption (CLIP score),
# to fidelity (FID), and how close the guided samples come to the real images' own agreement.
#
# ## Editing real images
#
# **SDEdit** (Meng et al. 2022) edits an image with any diffusion model and no retraining: noise its
# latent to a middle timestep $t_0$ by the forward process, $z_{t_0} = \sqrt{\bar\alpha_{t_0}}\,z_0 + \sqrt{1-\bar\alpha_{t_0}}\,\varepsilon$,
# then run the sampler from $t_0$ under a new prompt. The strength $t_0/T$ chooses between the image
# (small: little noise, little change) and the prompt (large: 1 starts from almost pure noise). 05's DDIM
# inversion reaches a $z_{t_0}$ from which DDIM returns the image itself; SDEdit draws fresh noise
# instead, and the prompt decides what the chain makes of it. Below, light test sneakers edited with
# "a dark sneaker" (a held-out combination) at growing strength, measured over up to 64 of them: the
# share that turn dark, against the mean change of their pixels. Two controls: strength 0, the
# autoencoder's reconstruction alone, and the same edit under "a sneaker", which names no brightness
# (regenerating a light sneaker can darken it with any prompt).

# %%
from helpers.editing import Inpaint, SDEdit
from helpers.samplers import sample

light = [i for i in range(n_probe) if int(y_probe[i]) == 7 and truth[i]["brightness"] == "light"][:64]
z_light = ae.encode(x_test[light].to(device)).mean * ae.scale_factor
strengths = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def sdedit_sweep(prompt):
    """Edited images per strength (0: the reconstruction), and the share of them measured dark."""
    ids_ = tok.encode([prompt] * len(light)).to(device)
    out, dark = {}, []
    for strength in strengths:
        if strength == 0:  # encode and decode, no diffusion
            out[0.0] = decode(ae, z_light).cpu()
        else:
            edit = SDEdit(z_light, strength, steps=steps, clip_x0=False)
            z = sample(TextGuided(model, ids_, 3.0), d, (len(light), *ae.latent_shape), edit, cpu_generator(7), progress=False, clamp=False)
            out[strength] = decode(ae, z).cpu()
        dark.append(sum(w["brightness"] == "dark" for w in maker.words(out[strength], torch.full((len(light),), 7))) / len(light))
    return out, dark


edited, turned = sdedit_sweep("a dark sneaker")
_, turned_plain = sdedit_sweep("a sneaker")  # the same noise, no brightness asked
moved = [float((edited[strength] - x_test[light]).abs().mean()) for strength in strengths]

fig = plt.figure(figsize=(13, 4.6), layout="constrained")
left, right = fig.subfigures(1, 2, width_ratios=[1.6, 1])
axes = left.subplots(1, len(strengths) + 1)
show_grid(x_test[light[:6]], "original", nrow=1, ax=axes[0])
for ax, strength in zip(axes[1:], strengths):
    show_grid(edited[strength][:6], f"strength {strength:g}" if strength else "reconstructed", nrow=1, ax=ax)
left.suptitle('"a dark sneaker", s = 3, from light test sneakers')
ax = right.subplots()
ax.plot(strengths, [100 * t for t in turned], "o-", label='% dark, "a dark sneaker"')
ax.plot(strengths, [100 * t for t in turned_plain], "o:", color="tab:gray", label='% dark, "a sneaker" (control)')
ax.set(xlabel="SDEdit strength t0 / T (0: reconstruction)", ylabel="% measured dark", title=f"{len(light)} sneakers: obedience and change")
ax2 = ax.twinx()
ax2.plot(strengths, moved, "s--", color="tab:red", label="mean |edited - original|")
ax2.set_ylabel("mean absolute pixel change", color="tab:red")
lines = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
ax.legend(lines, [line.get_label() for line in lines], loc="center right")
print("strength: " + ", ".join(f"{s:g}: {100 * t:.0f}% dark (control {100 * c:.0f}%), change {m:.3f}" for s, t, c, m in zip(strengths, turned, turned_plain, moved)))
gaps = [t - c for t, c in zip(turned, turned_plain)]
widest = strengths[max(range(len(gaps)), key=gaps.__getitem__)]
print(f"the prompt's own effect (dark share minus the control's) is widest at strength {widest:g}: {100 * max(gaps):.0f} points; "
      f"at strength 1: {100 * gaps[-1]:.0f} points")
print(f"the originals: {sum(truth[i]['brightness'] == 'dark' for i in light)} of {len(light)} dark (all chosen light)")

# %% [markdown]
# The prompt's own effect is the gap between the two lines (printed). At small strengths the image
# holds and little changes; near strength 1 the edit starts from almost pure noise and "a sneaker"
# draws a dark sneaker by itself, the lean the held-out rows found; in between, the words decide.
#
# **Inpainting** regenerates part of an image and keeps the rest: after every DDIM step the kept part
# is replaced by the original noised to the same level, so the generated part is made to fit it
# (the replacement method, which RePaint, Lugmayr et al. 2022, builds on with resampling;
# `helpers.editing.Inpaint`). In latent space the mask is the latent's: here its upper half, under two prompts.

# %%
mask = torch.zeros(1, 1, *ae.latent_shape[1:], device=device)
mask[..., : ae.latent_shape[1] // 2, :] = 1  # regenerate the top half of the latent
originals = x_test[light[:6]]
z_orig = ae.encode(originals.to(device)).mean * ae.scale_factor
fig, axes = plt.subplots(1, 3, figsize=(12, 2.3))
show_grid(originals, "original (top half of the latent regenerated)", nrow=6, ax=axes[0])
for ax, prompt in zip(axes[1:], ("a dark sneaker", "a light ankle boot")):
    edit = Inpaint(z_orig, mask, steps=steps, clip_x0=False)
    z = sample(TextGuided(model, tok.encode([prompt] * 6).to(device), 3.0), d, (6, *ae.latent_shape), edit, cpu_generator(8), progress=False, clamp=False)
    show_grid(decode(ae, z).cpu(), f'"{prompt}"', nrow=6, ax=ax)
    kept = (z - z_orig)[..., ae.latent_shape[1] // 2:, :].abs().max().item()
    assert kept < 1e-5
    change = (decode(ae, z).cpu() - decode(ae, z_orig).cpu()).abs()
    half = originals.shape[-2] // 2
    print(f"{prompt!r}: kept half of the latent differs from the original's by at most {kept:.1e}; mean pixel change against the "
          f"reconstruction, top rows {change[..., :half, :].mean():.3f}, bottom rows {change[..., half:, :].mean():.3f}")
fig.suptitle(f"inpainting in latent space, s = 3 [{profile.name} profile]", y=1.04);

# %% [markdown]
# The kept half of the latent is the original's exactly. In pixels the bottom rows change too (the
# printed means), less than the top: each latent position shapes a patch of pixels around it, so the
# decoder carries the edit across the boundary.
#
# ## Try your own prompt
#
# Type a prompt (the vocabulary is printed above; a word outside it is refused with the list) and move
# the guidance scale. Samples are drawn from the same noise each time, so only the words and $s$ change
# them. The stored notebook shows the static strip under the widget.

# %% tags=["nbval-ignore-output"]
from ipywidgets import FloatSlider, Text

from helpers.viz import GridSweepView, prompt_widget

view = GridSweepView(lambda value: draw([value[0]] * 16, value[1], seed=3), nrow=8, title=lambda value: f'"{value[0]}", s = {value[1]:g}')
prompt_widget(view.render, Text(value="a dark sneaker facing left", description="prompt", continuous_update=False),
              FloatSlider(value=3.0, min=0.0, max=8.0, step=0.5, description="guidance s"))

# %%
fig, axes = plt.subplots(1, 4, figsize=(13, 2.6), layout="constrained")
for ax, scale in zip(axes, (0.0, 1.0, 3.0, 6.0)):
    show_grid(draw(["a dark sneaker facing left"] * 8, scale, seed=3), f"s = {scale:g}", nrow=4, ax=ax)
fig.suptitle(f'"a dark sneaker facing left" against the guidance scale, same noise [{profile.name} profile]');
c, wanted = read_prompt("a dark sneaker facing left")
print(f"the prompt asks for class {c} ({CLASS_WORDS[c][0]}) and {wanted}; (dark, sneaker) is held out of training")

# %% [markdown]
# ## Exercises
#
# **1. Cross-attention with several heads.** The cross-attention cell above wrote one head. Write the
# block for `block.heads` heads: take `q = block.q(block.norm(x))` and `k, v = block.kv(context).chunk(2, dim=-1)`
# as there, split the channels of each into `heads` groups of consecutive channels, attend within each
# group with its own softmax (scaled by $\sqrt{d_h}$, the group's width) with padding masked, put the heads
# back side by side, and return `x + block.proj(...)`. The check compares it with `CrossAttentionBlock`
# with 1, 2 and 4 heads.

# %%
def cross_attention(block, x, context, pad):
    """x [B, C, H, W], context [B, L, context_dim], pad [B, L] (True at padding) -> the block's output."""
    raise NotImplementedError  # your code here


# %%
from helpers.exercises import check

check(cross_attention)

# %% [markdown]
# **2. InfoNCE that knows about repeated captions.** In a batch, captions that are word for word the
# same as image $i$'s are not wrong answers for it. Write the symmetric loss in which row $i$'s term is
# $-\log$ of the softmax mass on **all** captions equal to $c_i$ (compare the token ids), and column $j$'s
# likewise over the images whose caption equals $c_j$. With all captions different it must equal
# `contrastive_loss`. (Then copy `train_clip`'s loop with this loss in place of `clip.loss` and train a
# CLIP with it: does zero-shot accuracy change?)

# %%
def contrastive_loss_with_duplicates(image_emb, text_emb, ids, logit_scale):
    """image_emb, text_emb [N, D]; ids [N, L] the captions' token ids; logit_scale = log(1 / temperature)."""
    raise NotImplementedError  # your code here


# %%
check(contrastive_loss_with_duplicates)

# %% [markdown]
# **3. SDEdit by hand.** `timesteps` is the descending list of code indices an edit visits (notation
# §1; the first is $t_0$). Noise `image` to `timesteps[0]` with `eps` by the forward process (for instance
# with `d.q_sample`, which takes a LongTensor of one timestep per image), then take unclipped DDIM steps
# ($\eta = 0$) from each timestep to the next and, from the last, to `t_prev = -1` ($\bar\alpha = 1$),
# calling `model(x, t)` with `t` a LongTensor of one timestep per image. `helpers.samplers.ddim_step(d, out, x, t, t_prev, clip_x0=False)`
# returns `(x_prev, x0_hat)`. The check runs it against `helpers.editing.SDEdit` on a random U-Net.

# %%
def sdedit_loop(model, d, image, timesteps, eps):
    """The edited x_0 from ``image`` [B, C, H, W]: forward to timesteps[0], then DDIM down."""
    raise NotImplementedError  # your code here


# %%
check(sdedit_loop)

# %%
print(f"this notebook ran in {(time.perf_counter() - notebook_start) / 60:.1f} minutes under profile {profile.name}")
