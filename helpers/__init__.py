"""The tested code behind the diffusion-models notebooks, in layers.

Each module imports only from its own layer and those before it, never from a later one, not even
lazily inside a function (``tests/test_layers.py`` holds the package to ``LAYERS``):

* leaves: ``device`` (which device, reproducible noise, timing), ``paths`` (where files live, the
  checkpoint names, the shipped models), ``validate`` (the argument checks), ``stats``
  (bootstrap intervals).
* math: ``schedules``, ``diffusion`` (01, 03, 07), ``samplers`` (04, 05: the one sampler protocol
  and ``sample``), ``solvers`` (09), ``consistency`` (11), ``flow`` (flow matching), ``ema`` (06), ``toy`` (09),
  ``timesteps`` (03: importance sampling of t).
* networks: ``unet`` (02), ``autoencoder`` (10), ``clip`` (13: a small CLIP and its contrastive loss).
* plumbing: ``config`` (the profiles and run settings), ``checkpoints``, ``distributed``, ``data``,
  ``latent``, ``viz``, ``captions`` (13: captions measured from the pixels), ``text`` (13: the tokenizer).
* runs: ``runs`` (the one guarded loop), ``train_log``, ``training`` (03), ``distillation`` (11),
  ``autoencoder_training`` (10).
* measuring: ``classifier``, ``metrics``, ``evaluation`` (06 onwards).
* programs: ``python -m helpers <command>`` (``cli``, ``__main__``, ``train``, ``sample``,
  ``distil``, ``autoencode``, ``bench``, ``pretrained``), ``reference`` and ``exercises``.
"""

LAYERS: dict[str, tuple[str, ...]] = {
    "leaves": ("device", "paths", "validate", "stats"),
    "math": ("schedules", "diffusion", "timesteps", "samplers", "solvers", "consistency", "flow", "ema", "toy"),
    "networks": ("unet", "autoencoder", "clip"),
    "plumbing": ("config", "checkpoints", "distributed", "data", "latent", "viz", "captions", "text"),
    "runs": ("runs", "train_log", "training", "distillation", "autoencoder_training"),
    "measuring": ("classifier", "metrics", "evaluation"),
    "programs": ("cli", "__main__", "train", "sample", "distil", "autoencode", "bench", "pretrained", "reference", "exercises"),
}
