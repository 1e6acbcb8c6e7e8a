import dataclasses
import time

import torch

import helpers.samplers as S
from helpers.bench import bench_sample, bench_train, peak_memory_mb, sampler_overhead
from helpers.config import PROFILES
from helpers.diffusion import Diffusion

from conftest import random_unet


def test_sampler_overhead_sees_time_spent_outside_the_network(monkeypatch):
    d = Diffusion.from_schedule("linear", 20)
    model = random_unet()
    fast = sampler_overhead(model, d, (2, 1, 16, 16), "ddim", 10, torch.device("cpu"))
    assert fast["total_s"] > 0 and fast["forward_s"] > 0
    real = S.ddim_step

    def slow_step(*args, **kwargs):
        time.sleep(0.02)
        return real(*args, **kwargs)

    monkeypatch.setattr(S, "ddim_step", slow_step)
    slow = sampler_overhead(model, d, (2, 1, 16, 16), "ddim", 10, torch.device("cpu"))
    assert slow["overhead"] > 0.3 > fast["overhead"]


def test_benchmarks_report_throughput_and_memory():
    smoke = PROFILES["smoke"]
    profile = dataclasses.replace(smoke, T=20, train=dataclasses.replace(smoke.train, batch_size=4))
    rows = bench_train(profile, torch.device("cpu"), steps=1, warmup=1, compile_=False)
    assert [(r["model"], r["mode"], r["precision"]) for r in rows] == [("ours", "eager", "fp32")]
    assert rows[0]["img_per_s"] > 0 and rows[0]["params"] == 280_177
    samplers = [r["sampler"] for r in bench_sample(profile, torch.device("cpu"), n=2)]
    assert samplers == ["DDPM-20", "DDIM-20"]
    mb, what = peak_memory_mb(torch.device("cpu"))
    assert mb > 0 and what == "process peak RSS"
