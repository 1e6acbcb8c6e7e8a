import pytest
import torch

from helpers.diffusion import Diffusion
from helpers.samplers import Trajectory
from helpers.viz import ForwardProcessView, GridSweepView, TrajectoryView, centred_mean, grid_image, plot_unet_layout, prompt_widget, slider_widget

PNG = b"\x89PNG\r\n\x1a\n"


def test_forward_process_view_shows_q_sample_and_marks_alpha_bar():
    d = Diffusion.from_schedule("linear", 1000)
    x0, noise = torch.rand(4, 1, 8, 8) * 2 - 1, torch.randn(4, 1, 8, 8)
    view = ForwardProcessView(d, x0, noise)
    x_t, ab = view.frame(300)
    assert torch.equal(x_t, d.q_sample(x0, torch.full((4,), 300), noise)) and ab == d.alpha_bars[300].item()
    png = view.render(300)
    assert png.startswith(PNG)
    assert view.marker.get_data()[0][0] == 300 and view.marker.get_data()[1][0] == ab
    assert torch.allclose(torch.as_tensor(view.image.get_array()), torch.as_tensor(grid_image(x_t, nrow=4)))
    assert "t = 300" in view.ax_img.get_title()
    assert view.render(999) != png


def test_trajectory_view_draws_the_chosen_frame():
    traj = Trajectory()
    for i, t in enumerate([9, 4, 0]):
        traj({"i": i, "steps": 3, "t": t, "sigma": 0.5 * t, "x_t": torch.rand(2, 1, 8, 8), "x0": torch.rand(2, 1, 8, 8)})
    view = TrajectoryView(traj)
    assert len(view) == 3 and view.render(1).startswith(PNG)
    assert "t = 4" in view.ax_x.get_title() and "t = 4" in view.ax_x0.get_title()
    assert torch.allclose(torch.as_tensor(view.im_x0.get_array()), torch.as_tensor(grid_image(traj.x0[1])))


def test_grid_sweep_view_makes_each_value_once():
    calls = []

    def make(s):
        calls.append(s)
        return torch.full((4, 1, 4, 4), s / 10)

    view = GridSweepView(make, nrow=2, title=lambda s: f"s = {s}")
    a = view.render(1.0)
    view.render(3.0)
    assert view.render(1.0) == a and calls == [1.0, 3.0] and view.ax.get_title() == "s = 1.0"


def test_slider_widget_redraws_on_change():
    from ipywidgets import IntSlider

    slider = IntSlider(value=0, min=0, max=2)
    box = slider_widget(lambda v: PNG + bytes([v]), slider)
    image = box.children[1]
    assert image.value == PNG + b"\x00"
    slider.value = 2
    assert image.value == PNG + b"\x02"


def test_centred_mean_has_no_lag_and_averages_a_symmetric_window():
    line = [10.0 - 0.5 * i for i in range(30)]  # a falling loss curve
    assert centred_mean(line, 4) == pytest.approx(line)  # an EMA would sit above a falling line
    assert centred_mean([0.0, 0.0, 3.0, 0.0, 0.0], 1) == pytest.approx([0.0, 1.0, 1.0, 1.0, 0.0])
    assert centred_mean([0.0, 6.0, 0.0, 0.0, 0.0, 0.0], 2) == pytest.approx([0.0, 2.0, 1.2, 1.2, 0.0, 0.0])


def test_unet_layout_has_one_arc_per_skip_joining_equal_sizes_and_marks_attention():
    from matplotlib.colors import to_rgba

    from conftest import SMALL_UNET
    from helpers.unet import AttentionBlock, UNet

    model = UNet(**SMALL_UNET)
    ax = plot_unet_layout(model)
    arcs = [line for line in ax.lines if line.get_linestyle() == "--" and len(line.get_xdata())]
    assert len(arcs) == len(model.up)
    for arc in arcs:  # a skip only ever joins feature maps of one size
        assert arc.get_ydata()[0] == pytest.approx(arc.get_ydata()[-1])
    colours = ax.collections[0].get_facecolors()
    blocks = [*model.down, model.mid, *model.up]
    with_attention = sum(any(isinstance(m, AttentionBlock) for m in b) for b in blocks)
    assert sum(tuple(c) == to_rgba("tab:orange") for c in colours) == with_attention > 0


def test_prompt_widget_redraws_on_either_control_and_shows_a_refused_prompt():
    from ipywidgets import FloatSlider, Text

    def render(value):
        prompt, scale = value
        if "shiny" in prompt:
            raise ValueError("unknown word 'shiny'")
        return PNG + prompt.encode() + bytes([int(scale)])

    text, slider = Text(value="a bag", continuous_update=False), FloatSlider(value=1.0, min=0, max=5)
    _, _, image, message = prompt_widget(render, text, slider).children
    assert image.value == PNG + b"a bag\x01"
    slider.value = 3.0
    text.value = "a dark bag"
    assert image.value == PNG + b"a dark bag\x03" and message.value == ""
    text.value = "a shiny bag"
    assert image.value == PNG + b"a dark bag\x03" and "unknown word 'shiny'" in message.value
