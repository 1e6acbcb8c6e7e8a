"""Text-to-image (notebook 13): the U-Net reading captions through a frozen CLIP, caption dropout in the
Trainer, checkpoints that hold the CLIP and refuse another, SDEdit and inpainting against the exact
denoiser of Gaussian data, prompts read for scoring, and the command line (train --clip, sample --prompt)."""

import pytest
import torch

from helpers.captions import CaptionMaker, read_prompt
from helpers.checkpoints import CheckpointError, load_model, save_clip
from helpers.clip import CLIP
from helpers.config import TrainConfig
from helpers.device import cpu_generator
from helpers.diffusion import Diffusion
from helpers.editing import Inpaint, SDEdit
from helpers.latent import LatentDataset
from helpers.samplers import DDIM, sample
from helpers.text import Tokenizer
from helpers.text_unet import TextUNet
from helpers.training import Trainer

from test_samplers_analytic import MU, S, GaussianDenoiser

CAPTIONS = ["a dark bag", "a light sneaker facing left", "a small dress", "patterned shirt"]
UNET = dict(image_size=8, in_channels=2, ch=8, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, norm_groups=4)


def text_model(seed: int = 0) -> tuple[TextUNet, Tokenizer]:
    torch.manual_seed(seed)
    tok = Tokenizer.from_texts(CAPTIONS, max_len=9)  # room for padding after the longest caption
    return TextUNet.around(CLIP(len(tok), tok.max_len, dim=8).text, tok, **UNET), tok


def trainer(model: TextUNet, tok: Tokenizer, **settings) -> Trainer:
    data = LatentDataset(torch.randn(16, 2, 8, 8), tok.encode(CAPTIONS * 4))
    config = TrainConfig(steps=2, batch_size=8, lr=1e-3, log_every=1, sample_every=0, eval_every=0, warmup_steps=0, ema_decay=0.9, **settings)
    return Trainer(model, Diffusion.from_schedule("linear", 100), data, config, progress=False)


def test_training_moves_the_unet_and_never_the_frozen_text_encoder():
    model, tok = text_model()
    clip_before = {k: v.clone() for k, v in model.text.state_dict().items()}
    unet_before = {k: v.clone() for k, v in model.unet.state_dict().items()}
    run = trainer(model, tok).train()
    assert run.step == 2 and not model.text.training, "the text encoder stays in eval mode while the U-Net trains"
    assert all(torch.equal(v, clip_before[k]) for k, v in model.text.state_dict().items())
    assert any(not torch.equal(v, unet_before[k]) for k, v in model.unet.state_dict().items())


def test_the_text_model_reads_only_the_real_tokens():
    """The same captions with fewer padding tokens give the same output: padding is masked in every cross-attention."""
    model, tok = text_model()
    with torch.no_grad():
        for p in model.unet.parameters():  # zero-initialised layers re-drawn, so that the output depends on the caption
            p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(p.numel())) * 0.2)
    model.eval()
    x, t, ids = torch.randn(4, 2, 8, 8), torch.tensor([1, 20, 50, 99]), tok.encode(CAPTIONS)
    longest = int((ids != 0).sum(1).max())
    with torch.no_grad():
        full, short = model(x, t, ids), model(x, t, ids[:, :longest])
        assert not torch.allclose(full, model(x, t, ids.flip(0)), atol=1e-4), "the output depends on the caption"
    assert ids.shape[1] > longest and torch.allclose(full, short, atol=1e-5)


@pytest.mark.parametrize("p_uncond", [0.0, 0.5])
def test_caption_dropout_replaces_a_caption_by_the_empty_one(p_uncond):
    model, tok = text_model()
    seen = []
    model.text.register_forward_pre_hook(lambda module, args: seen.append(args[0].clone()))
    trainer(model, tok, p_uncond=p_uncond).train()
    ids = torch.cat(seen)
    empty = (ids == tok.encode([""])).all(1)
    captions = (ids[:, None] == tok.encode(CAPTIONS)[None]).all(-1).any(1)
    assert bool((empty ^ captions).all()), "each row is a caption of the data or the empty caption, whole"
    assert int(empty.sum()) == 0 if p_uncond == 0 else 0 < int(empty.sum()) < len(ids)


@pytest.mark.parametrize("every", [{"sample_every": 1}, {"eval_every": 1}])
def test_a_text_model_refuses_grids_and_evaluations_without_a_caption(every):
    model, tok = text_model()
    data = LatentDataset(torch.randn(8, 2, 8, 8), tok.encode(CAPTIONS * 2))
    config = TrainConfig(steps=1, batch_size=8, lr=1e-3, **{"sample_every": 0, "eval_every": 0, **every})
    with pytest.raises(ValueError, match="a text model needs one"):
        Trainer(model, Diffusion.from_schedule("linear", 100), data, config, evaluator=lambda m: {}, progress=False)


def test_a_text_model_refuses_a_dataset_of_class_labels():
    """Class ids [B] would broadcast against the empty caption's ids in caption dropout and train on nonsense."""
    model, tok = text_model()
    config = TrainConfig(steps=1, batch_size=9, lr=1e-3)
    with pytest.raises(ValueError, match=r"token ids \[9\]\) pairs; this dataset's labels are int"):
        Trainer(model, Diffusion.from_schedule("linear", 100), LatentDataset(torch.randn(18, 2, 8, 8), torch.arange(18) % 10), config, progress=False)


def test_the_checkpoint_holds_the_clip_and_refuses_another(tmp_path):
    model, tok = text_model()
    run = trainer(model, tok).train()
    path = run.save(tmp_path / "text.pt")
    loaded, _, _ = load_model(path)
    x, t, ids = torch.randn(4, 2, 8, 8), torch.tensor([1, 20, 50, 99]), tok.encode(CAPTIONS)
    with torch.no_grad(), run.ema.averaged(model):
        assert torch.allclose(loaded(x, t, ids), model.eval()(x, t, ids), atol=1e-6)
    other, _ = text_model(seed=1)  # the same U-Net settings around another CLIP
    with pytest.raises(CheckpointError, match="text_fingerprint"):
        trainer(other, tok).load(path)
    state = torch.load(path, weights_only=True)
    state["ema"]["shadow"]["text.position"] += 1.0  # the weights a sampler gets
    torch.save(state, tmp_path / "edited.pt")
    with pytest.raises(CheckpointError, match="are not the encoder it names"):
        load_model(tmp_path / "edited.pt")


def test_sdedit_follows_the_exact_ode_from_the_noised_image():
    """For N(MU, S^2) data the probability-flow ODE keeps the standardised value (x_t - a MU) / sqrt(a^2 S^2 + 1 - a^2)
    constant, so SDEdit of y at t_0 ends at MU + S (a y + sqrt(1 - a^2) eps - a MU) / sqrt(a^2 S^2 + 1 - a^2), a = sqrt(ab_{t_0})."""
    d = Diffusion.from_schedule("linear", 1000)
    y = torch.tensor([0.9, -0.8, 0.1, 0.4]).view(1, 1, 2, 2).expand(64, -1, -1, -1)
    eps = torch.randn(64, 1, 2, 2, generator=cpu_generator(0))
    for strength in (0.3, 0.7):
        edit = SDEdit(y, strength, steps=1000, clip_x0=False)
        a = d.alpha_bars[edit.start(d.T)].sqrt().float()
        exact = MU + S * (a * y + (1 - a**2).sqrt() * eps - a * MU) / (a**2 * S**2 + 1 - a**2).sqrt()
        out = sample(GaussianDenoiser(d), d, eps.clone(), edit, progress=False, clamp=False)
        assert torch.allclose(out.double(), exact, atol=1e-2), (strength, (out - exact).abs().max())  # DDIM's error here: 0.005
        assert edit.timesteps(d.T)[0] == round(strength * 1000) - 1 and len(edit.timesteps(d.T)) == round(strength * 1000)
    with pytest.raises(ValueError, match="strength must lie in"):
        SDEdit(y, 0.0)


def test_inpainting_keeps_the_image_and_generates_the_masked_pixels_as_plain_sampling_does():
    """The exact denoiser treats pixels independently, so the masked pixels come out as DDIM's own from the
    same noise; the kept pixels end as the image, and on the way carry the forward process's noise level."""
    d = Diffusion.from_schedule("linear", 1000)
    n, image = 4000, torch.tensor([0.9, -0.8, 0.1, 0.4]).view(1, 1, 2, 2)
    mask = torch.tensor([1.0, 0.0, 0.0, 1.0]).view(1, 1, 2, 2)
    seen = {}

    def record(step):
        if step["t"] in (699, 299):
            seen[step["t"]] = step["x_t"].double()

    noise = torch.randn(n, 1, 2, 2, generator=cpu_generator(0))
    edit = Inpaint(image.expand(n, -1, -1, -1), mask, steps=10)
    out = sample(GaussianDenoiser(d), d, noise.clone(), edit, cpu_generator(1), callback=record, progress=False)
    plain = sample(GaussianDenoiser(d), d, noise.clone(), DDIM(10), progress=False)
    keep = mask.expand(n, -1, -1, -1) == 0
    assert torch.equal(out[keep], image.expand(n, -1, -1, -1)[keep]) and torch.allclose(out[~keep], plain[~keep], atol=1e-6)
    for t, x_t in seen.items():  # the kept pixels at t: sqrt(ab_t) y + sqrt(1 - ab_t) z
        a = d.alpha_bars[t].sqrt()
        z = ((x_t - a * image) / (1 - a**2).sqrt())[keep]
        assert abs(float(z.mean())) < 0.05 and abs(float(z.std()) - 1) < 0.05, (t, float(z.mean()), float(z.std()))
    with pytest.raises(ValueError, match="does not fit images"):
        Inpaint(image, torch.ones(1, 1, 3, 3))
    with pytest.raises(ValueError, match=r"noise of shape \(4, 1, 2, 2\) for images of shape \(1, 1, 2, 2\)"):
        sample(GaussianDenoiser(d), d, noise[:4], Inpaint(image, mask, steps=2), progress=False)


def test_prompts_are_read_for_the_words_they_ask_and_samples_scored_by_them():
    assert read_prompt("a photo of a dark ankle boot facing left") == (9, {"brightness": "dark", "facing": "facing left"})
    assert read_prompt("a boot") == (9, {})
    for bad, message in [("a dark bag facing left", "only footwear"), ("a bag and a dress", "names 2 classes"), ("a light dark coat", "both words")]:
        with pytest.raises(ValueError, match=message):
            read_prompt(bad)
    square = torch.full((2, 1, 8, 8), -1.0)
    square[:, :, 2:6, 2:6] = torch.tensor([-0.6, 0.8]).view(2, 1, 1, 1)  # a dark and a light square
    maker = CaptionMaker({"brightness": [0.5] * 10, "extent": [0.3] * 10, "texture": [1.0] * 10, "facing": [0.0] * 10})
    assert maker.obeyed(square, ["a dark bag", "a dark small bag"]) == [{"brightness": True}, {"brightness": False, "extent": True}]


def test_text_to_image_trains_and_samples_from_the_command_line(tmp_path, data_env, capsys):
    from helpers import sample as sample_cli
    from helpers import train as train_cli
    from helpers.autoencoder import Autoencoder
    from helpers.checkpoints import save_autoencoder
    from helpers.config import get_profile
    from helpers.data import profile_dataset

    x, y = profile_dataset(get_profile("smoke")).tensors()
    ae = Autoencoder(image_size=16, ch=16)
    ae.measure_scale(x[:256])
    ae_path = save_autoencoder(tmp_path / "ae.pt", ae)
    maker = CaptionMaker.fit(x, y)
    tok = Tokenizer.from_texts(maker.captions(x, y))
    torch.manual_seed(0)
    clip_path = save_clip(tmp_path / "clip.pt", CLIP(len(tok), tok.max_len, dim=8), tok, maker)
    other_path = save_clip(tmp_path / "other.pt", CLIP(len(tok), tok.max_len, dim=8), tok, maker)
    ckpt, out = tmp_path / "text.pt", tmp_path / "grid.png"
    common = ["--profile", "smoke", "--out", str(ckpt), "--no-progress", "--batch-size", "8", "--lr-decay", "none", "--autoencoder", str(ae_path)]
    assert train_cli.main(common[:-2] + ["--steps", "1", "--clip", str(clip_path)]) == 2
    assert "give --autoencoder too" in capsys.readouterr().err
    assert train_cli.main(common + ["--steps", "2", "--clip", str(clip_path)]) == 0
    assert train_cli.main(common + ["--steps", "3", "--resume", "--clip", str(other_path)]) == 2
    assert "was not trained around the text encoder" in capsys.readouterr().err
    assert train_cli.main(common + ["--steps", "3", "--resume"]) == 2
    assert "is a text-to-image model; resume it with --clip" in capsys.readouterr().err
    latent_ckpt = tmp_path / "latent.pt"
    assert train_cli.main(common[:3] + [str(latent_ckpt)] + common[4:] + ["--steps", "1"]) == 0
    assert train_cli.main(common[:3] + [str(latent_ckpt)] + common[4:] + ["--steps", "2", "--resume", "--clip", str(clip_path)]) == 2
    assert "is not a text-to-image model; leave out --clip" in capsys.readouterr().err
    assert train_cli.main(common + ["--steps", "3", "--resume", "--clip", str(clip_path)]) == 0

    base = ["--checkpoint", str(ckpt), "--n", "4", "--sampler", "ddim", "--steps", "3", "--out", str(out)]
    assert sample_cli.main(base) == 2
    assert "holds a text-to-image model: give --prompt" in capsys.readouterr().err
    assert sample_cli.main(base + ["--prompt", "a shiny bag"]) == 2
    assert "unknown word 'shiny'" in capsys.readouterr().err
    assert sample_cli.main(base + ["--prompt", "a dark bag", "--guidance-scale", "3"]) == 0
    assert out.read_bytes().startswith(b"\x89PNG")
