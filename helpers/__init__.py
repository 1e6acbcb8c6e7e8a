"""The tested code behind the diffusion-models notebooks, in layers.

Each module imports only from its own layer and those before it, never from a later one, not even
lazily inside a function (``tests/test_layers.py`` holds the package to ``LAYERS``):

* leaves: ``device`` (which device, reproducible noise, timing), ``paths`` (where files live, the
  checkpoint names, the shipped models), ``validate`` (the argument checks), ``stats``
  (bootstrap intervals).
* math: ``schedules``, ``diffusion`` (01, 03, 07), ``samplers`` (04, 05: the one sampler protocol
  and ``sample``), ``editing`` (13: SDEdit and inpainting), ``solvers`` (09), ``consistency`` (11), ``flow`` (flow matching), ``ema`` (06), ``toy`` (09),
  ``timesteps`` (03: importance sampling of t).
* networks: ``unet`` (02), ``autoencoder`` (10), ``text`` (13: the tokenizer), ``clip`` (13: a small CLIP and its
  contrastive loss), ``text_unet`` (13: the U-Net reading captions through the frozen CLIP).
* plumbing: ``config`` (the profiles and run settings), ``checkpoints``, ``distributed``, ``data``,
  ``latent``, ``viz``, ``captions`` (13: captions measured from the pixels).
* runs: ``runs`` (the one guarded loop), ``train_log``, ``training`` (03), ``distillation`` (11),
  ``autoencoder_training`` (10), ``clip_training`` (13).
* measuring: ``classifier``, ``metrics``, ``evaluation`` (06 onwards), ``budget`` (a profile's
  minutes per notebook on a GPU, estimated from FLOPs).
* programs: ``python -m helpers <command>`` (``cli``, ``__main__``, ``train``, ``sample``,
  ``distil``, ``autoencode``, ``bench``, ``pretrained``), ``reference`` and ``exercises``.
"""

LAYERS: dict[str, tuple[str, ...]] = {
    "leaves": ("device", "paths", "validate", "stats"),
    "math": ("schedules", "diffusion", "timesteps", "samplers", "editing", "solvers", "consistency", "flow", "ema", "toy"),
    "networks": ("unet", "autoencoder", "text", "clip", "text_unet"),
    "plumbing": ("config", "checkpoints", "distributed", "data", "latent", "viz", "captions"),
    "runs": ("runs", "train_log", "training", "distillation", "autoencoder_training", "clip_training"),
    "measuring": ("classifier", "metrics", "evaluation", "budget"),
    "programs": ("cli", "__main__", "train", "sample", "distil", "autoencode", "bench", "pretrained", "reference", "exercises"),
}
