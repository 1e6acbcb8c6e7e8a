"""Pictures: image grids, training curves, and the views behind the notebooks' sliders.

Each slider view is a plain object whose ``render(value)`` returns a PNG (bytes) of one frame;
``slider_widget`` wires it to an ipywidgets slider and an Image widget, so a frame replaces the
last in place (no flicker, no growing output) and needs no interactive matplotlib backend. The
``render`` functions are what ``tests/test_viz.py`` checks.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import torch
from matplotlib.figure import Figure
from torchvision.utils import make_grid, save_image

from helpers.diffusion import Diffusion
from helpers.unet import UNet, shape_table

__all__ = [
    "plot_unet_layout",
    "centred_mean",
    "grid_image",
    "show_grid",
    "save_grid",
    "render_png",
    "plot_loss_curve",
    "plot_bucket_losses",
    "ForwardProcessView",
    "TrajectoryView",
    "GridSweepView",
    "LiveLossPlot",
    "slider_widget",
    "prompt_widget",
]


def grid_image(x: torch.Tensor, nrow: int | None = None, padding: int = 1) -> np.ndarray:
    """Images [B, C, H, W] in [-1, 1] -> one grid image [H', W', C] in [0, 1] for ``imshow``."""
    nrow = nrow or max(1, int(len(x) ** 0.5))
    g = make_grid(((x.detach().float().cpu() + 1) / 2).clamp(0, 1), nrow=nrow, padding=padding, pad_value=1.0)
    return g.permute(1, 2, 0).numpy()


def show_grid(x: torch.Tensor, title: str, nrow: int | None = None, ax: Any = None) -> Any:
    """Draw a grid of images (in [-1, 1]) with a title; returns the axes."""
    if ax is None:
        _, ax = plt.subplots(figsize=(4, 4))
    ax.imshow(grid_image(x, nrow), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
    ax.set_title(title)
    ax.set_axis_off()
    return ax


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None) -> Path:
    """Save images in [-1, 1] as one PNG grid."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_image(((x.detach().float().cpu() + 1) / 2).clamp(0, 1), path, nrow=nrow or max(1, int(len(x) ** 0.5)), padding=1, pad_value=1.0)
    return path


def render_png(fig: Figure, dpi: int = 80) -> bytes:
    """The figure as PNG bytes (for an ipywidgets Image)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
    return buf.getvalue()


def centred_mean(values: Sequence[float], half_width: int) -> list[float]:
    """Mean of values[i - h .. i + h] at each i, with h = min(half_width, i, n - 1 - i).

    The window is symmetric everywhere, shrinking at the ends (the first and last values stay as
    they are), so the smoothed curve has no lag: a straight line comes back unchanged, where an
    exponential moving average trails behind a falling curve.
    """
    n, out = len(values), []
    for i in range(n):
        h = min(half_width, i, n - 1 - i)
        out.append(sum(values[i - h : i + h + 1]) / (2 * h + 1))
    return out


def plot_loss_curve(history: Sequence[dict[str, Any]], ax: Any = None, title: str = "training loss", half_width: int = 4) -> Any:
    """Loss per logged window (raw) and its centred geometric mean over up to 2 * half_width + 1
    windows (``centred_mean`` of the log-loss: the log scale the curve is drawn on) against step."""
    rows = [r for r in history if "loss" in r]
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    steps, losses = [r["step"] for r in rows], [r["loss"] for r in rows]
    ax.plot(steps, losses, alpha=0.4, label="raw (mean per log window)")
    smooth = [math.exp(v) for v in centred_mean([math.log(v) for v in losses], half_width)]
    ax.plot(steps, smooth, label=f"centred geometric mean of up to {2 * half_width + 1} windows")
    ax.set_yscale("log")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("loss")
    ax.set_title(title)
    ax.legend()
    return ax


def plot_unet_layout(model: UNet, ax: Any = None, title: str = "U-Net layout") -> Any:
    """The U-Net's blocks in forward order: the feature-map size each works at (y, log scale), output
    channels (labels), attention (orange) and the skip connections from the way down to the way up
    (dashed). A block ending in an upsampling is drawn at the size before it."""
    x = torch.zeros(1, model.in_channels, model.image_size, model.image_size)
    rows = shape_table(model, x, torch.zeros(1, dtype=torch.long))[1:-1]  # conv_in .. last up block
    names, chans = [n for n, _ in rows], [s[1] for _, s in rows]
    # a block that ends in an upsampling works at half its output's size: draw it there
    sides = [s[-1] // 2 if n.endswith("+up)") else s[-1] for n, s in rows]
    if ax is None:
        _, ax = plt.subplots(figsize=(max(6, 0.45 * len(rows)), 3.8))
    pos = list(range(len(rows)))
    ax.plot(pos, sides, color="0.75", zorder=1)
    n_skips = 1 + len(model.down)  # conv_in and every down block leave one; up block j eats number n_skips-1-j
    for j in range(len(model.up)):
        src, dst = n_skips - 1 - j, n_skips + 1 + j
        xs = np.linspace(src, dst, 40)
        bump = 1 - ((xs - (src + dst) / 2) / ((dst - src) / 2)) ** 2  # an arc, higher for longer skips
        ends = sides[src] ** ((dst - xs) / (dst - src)) * sides[dst] ** ((xs - src) / (dst - src))  # equal for a true skip
        ax.plot(xs, ends * 2 ** ((0.1 + 0.03 * (dst - src)) * bump), ls="--", lw=0.8, color="0.55", zorder=0)
    has_attn = ["attn" in n for n in names]
    ax.scatter(pos, sides, s=[12 + 2.5 * c for c in chans], c=["tab:orange" if a else "tab:blue" for a in has_attn], zorder=2)
    for i, (side, c) in enumerate(zip(sides, chans)):
        ax.annotate(str(c), (i, side), textcoords="offset points", xytext=(0, 9), ha="center", fontsize=8)
    ax.set_yscale("log", base=2)
    ax.set_yticks(sorted(set(sides)), [f"{s}x{s}" for s in sorted(set(sides))])
    ax.set_ylim(min(sides) / 1.6, max(sides) * 2.6)
    ax.set_xticks(pos, [n.split(" ")[0] for n in names], rotation=90, fontsize=8)
    ax.set(xlabel="block, in the order the forward pass runs", ylabel="feature-map size", title=title)
    ax.scatter([], [], c="tab:orange", label="with self-attention")
    ax.scatter([], [], c="tab:blue", label="convolutions only")
    ax.plot([], [], ls="--", color="0.55", label="skip connection")
    ax.legend(fontsize=8, loc="upper center", ncol=3)
    return ax


def plot_bucket_losses(values: Sequence[float | None], T: int, ax: Any = None, label: str | None = None, title: str = "loss by timestep") -> Any:
    """Mean loss per timestep bucket (t in [0, T/10), [T/10, 2T/10), ...) as a line over bucket centres."""
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 3.5))
    n = len(values)
    centres = [(i + 0.5) * T / n for i in range(n)]
    pairs = [(c, v) for c, v in zip(centres, values) if v is not None]
    ax.plot(*zip(*pairs), marker="o", label=label)
    ax.set_xlabel(f"timestep t (buckets of {T // n})")
    ax.set_ylabel("mean loss")
    ax.set_yscale("log")
    ax.set_title(title)
    if label:
        ax.legend()
    return ax


class ForwardProcessView:
    """Notebook 01's slider: a row of images noised to x_t, and alpha_bar(t) with t marked.

    The noise is fixed at construction, so scrubbing t shows one trajectory of q(x_t | x_0).
    """

    def __init__(self, d: Diffusion, x0: torch.Tensor, noise: torch.Tensor, title: str = "") -> None:
        self.d, self.x0, self.noise, self.title = d, x0, noise, title
        self.fig, (self.ax_img, self.ax_curve) = plt.subplots(1, 2, figsize=(10, 2.8), gridspec_kw={"width_ratios": [2.2, 1]})
        self.image = self.ax_img.imshow(grid_image(x0, nrow=len(x0)), cmap="gray", vmin=0, vmax=1)
        self.ax_img.set_axis_off()
        self.ax_curve.plot(range(d.T), d.alpha_bars.numpy(), label=r"$\bar\alpha_t$")
        self.ax_curve.plot(range(d.T), (1 - d.alpha_bars).numpy(), label=r"$1-\bar\alpha_t$")
        (self.marker,) = self.ax_curve.plot([0], [float(d.alpha_bars[0])], "o", color="k")
        self.ax_curve.set_xlabel("timestep t")
        self.ax_curve.set_ylabel("variance share")
        self.ax_curve.set_title("signal and noise variance")
        self.ax_curve.legend(loc="center right")
        plt.close(self.fig)  # drawn only through render()

    def frame(self, t: int) -> tuple[torch.Tensor, float]:
        """x_t of the fixed images and noise, and alpha_bar_t."""
        tt = torch.full((len(self.x0),), t, dtype=torch.long)
        return self.d.q_sample(self.x0, tt, self.noise), float(self.d.alpha_bars[t])

    def render(self, t: int) -> bytes:
        x_t, ab = self.frame(t)
        self.image.set_data(grid_image(x_t, nrow=len(x_t)))
        self.ax_img.set_title(rf"{self.title}$x_t$ at t = {t}:  $\sqrt{{\bar\alpha_t}}$ = {ab ** 0.5:.3f}, $\sqrt{{1-\bar\alpha_t}}$ = {(1 - ab) ** 0.5:.3f}")
        self.marker.set_data([t], [ab])
        return render_png(self.fig)


class TrajectoryView:
    """Notebook 04's slider: x_t and the predicted x_0 side by side at a recorded step of a trajectory."""

    def __init__(self, trajectory: Any, title: str = "") -> None:
        self.traj, self.title = trajectory, title
        self.fig, (self.ax_x, self.ax_x0) = plt.subplots(1, 2, figsize=(8, 4.2))
        self.im_x = self.ax_x.imshow(grid_image(trajectory.x_t[0]), cmap="gray", vmin=0, vmax=1)
        self.im_x0 = self.ax_x0.imshow(grid_image(trajectory.x0[0]), cmap="gray", vmin=0, vmax=1)
        for ax in (self.ax_x, self.ax_x0):
            ax.set_axis_off()
        plt.close(self.fig)

    def __len__(self) -> int:
        return len(self.traj.t)

    def render(self, k: int) -> bytes:
        """Frame ``k`` (0 = the first recorded step, at t = T-1)."""
        t = self.traj.t[k]
        self.im_x.set_data(grid_image(self.traj.x_t[k]))
        self.im_x0.set_data(grid_image(self.traj.x0[k]))
        self.ax_x.set_title(f"{self.title}$x_t$, t = {t:.3g}")  # a timestep (04) or a flow time in [0, 1] (12)
        self.ax_x0.set_title(rf"predicted $\hat x_0$ at t = {t:.3g}")
        return render_png(self.fig)


class GridSweepView:
    """Notebook 08's slider: a grid of samples for one value of a parameter (the guidance scale; in
    notebook 13 a (prompt, guidance scale) pair).

    ``make(value)`` produces the images; results are cached per value, so scrubbing back is instant.
    """

    def __init__(self, make: Callable[[float], torch.Tensor], nrow: int, title: Callable[[float], str]) -> None:
        self.make, self.nrow, self.title = make, nrow, title
        self.cache: dict[float, torch.Tensor] = {}
        self.fig, self.ax = plt.subplots(figsize=(5, 5))
        self.image = None
        self.ax.set_axis_off()
        plt.close(self.fig)

    def images(self, value: float) -> torch.Tensor:
        if value not in self.cache:
            self.cache[value] = self.make(value).cpu()
        return self.cache[value]

    def render(self, value: float) -> bytes:
        g = grid_image(self.images(value), nrow=self.nrow)
        if self.image is None:
            self.image = self.ax.imshow(g, cmap="gray", vmin=0, vmax=1)
        else:
            self.image.set_data(g)
        self.ax.set_title(self.title(value))
        return render_png(self.fig)


class LiveLossPlot:
    """A Trainer callback that redraws the loss curve in place in a notebook, at most every ``every`` rows."""

    def __init__(self, title: str = "training loss (live)", every: int = 1) -> None:
        from IPython.display import display
        from ipywidgets import Image

        self.title, self.every, self.calls = title, every, 0
        self.widget = Image(format="png")
        display(self.widget)

    def __call__(self, trainer: Any, row: dict[str, Any]) -> None:
        self.calls += 1
        if "loss" not in row or self.calls % self.every:
            return
        fig, ax = plt.subplots(figsize=(6, 3))
        plot_loss_curve(trainer.history, ax, title=f"{self.title}: step {trainer.step}")
        self.widget.value = render_png(fig)
        plt.close(fig)


def slider_widget(render: Callable[[Any], bytes], slider: Any) -> Any:
    """A VBox of ``slider`` and an Image that shows ``render(slider.value)``, redrawn on every change."""
    from ipywidgets import Image, VBox

    image = Image(value=render(slider.value), format="png")
    slider.observe(lambda change: setattr(image, "value", render(change["new"])), names="value")
    return VBox([slider, image])


def prompt_widget(render: Callable[[tuple[str, float]], bytes], text: Any, slider: Any) -> Any:
    """A VBox of a Text box, a slider and an Image showing ``render((text.value, slider.value))``,
    redrawn whenever the text's value changes (on Enter with ``continuous_update=False``, on every key
    otherwise) or the slider moves; a prompt ``render`` refuses (ValueError, e.g. an unknown word)
    leaves the last picture, or none, and shows the message below it."""
    from ipywidgets import HTML, Image, VBox

    image, message = Image(format="png"), HTML()

    def redraw(_: Any = None) -> None:
        try:
            image.value, message.value = render((text.value, slider.value)), ""
        except ValueError as err:
            message.value = f"<b>{err}</b>"

    redraw()
    text.observe(redraw, names="value")
    slider.observe(redraw, names="value")
    return VBox([text, slider, image, message])
