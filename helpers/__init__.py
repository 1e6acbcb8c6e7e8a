"""The tested code behind the diffusion-models notebooks.

Modules, in the order the notebooks meet them: ``device``, ``config``, ``data``, ``schedules``,
``diffusion`` (01); ``unet`` (02); ``training``, ``checkpoints`` (03); ``samplers`` (04, 05);
``ema``, ``classifier``, ``metrics`` (06); ``viz`` throughout. Command lines: ``python -m
helpers.train``, ``python -m helpers.sample``, ``python -m helpers.bench``.
"""
