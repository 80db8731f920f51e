import pytest
import torch

from threestudio_like.data.cameras import orbit_cameras
from threestudio_like.guidance.base import GuidanceConfig
from threestudio_like.guidance.sds import SDS
from threestudio_like.prompts import Prompt
from tests.stand_ins import LinearPrior


def setup(**cfg):
    prior = LinearPrior()
    guidance = SDS(GuidanceConfig(**cfg), prior)
    prompt = Prompt("a red ball")
    cameras = orbit_cameras(2, 10.0, 2.5, 40.0, 8, 8)
    rgb = torch.rand(2, 8, 8, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    return prior, guidance, prompt, cameras, rgb


def test_sds_gradient_is_weighted_cfg_residual():
    prior, guidance, prompt, cameras, rgb = setup(guidance_scale=7.5)
    torch.manual_seed(0)
    out = guidance(rgb, cameras, prompt)
    out["loss_sds"].backward()

    # by hand, with the same random draws in the same order
    torch.manual_seed(0)
    x = rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    x = x.contiguous()  # the guidance draws its noise on a contiguous x (randn_like follows the layout)
    t = torch.randint(guidance.min_step, guidance.max_step + 1, (2,))
    noise = torch.randn_like(x)
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    x_t = ab.sqrt() * x + (1 - ab).sqrt() * noise
    views = cameras.view_labels()
    cond = torch.tensor([0.7 if v == "front" else 0.5 for v in views]).view(-1, 1, 1, 1)
    scale = 1 + t.view(-1, 1, 1, 1) / 1000
    eps_y = 0.3 * x_t + cond * scale
    eps_0 = 0.3 * x_t - 0.25 * scale
    g = (1 - ab) * (eps_0 + 7.5 * (eps_y - eps_0) - noise)
    # d loss / d x = g / B, and x = 2 rgb − 1
    expected = (2 * g / 2).permute(0, 2, 3, 1)
    assert torch.allclose(rgb.grad, expected, atol=1e-5)
    assert out["grad_norm"] == pytest.approx(g.norm().item(), rel=1e-5)


def test_non_finite_gradient_skips_the_step():
    prior, guidance, prompt, cameras, rgb = setup()
    prior.a = float("nan")
    out = guidance(rgb, cameras, prompt)
    out["loss_sds"].backward()
    assert guidance.skipped_steps == 1 and out["skipped"] == 1
    assert torch.count_nonzero(rgb.grad) == 0


def test_grad_clip_and_timestep_annealing():
    prior, guidance, prompt, cameras, rgb = setup(grad_clip=0.01, max_step_percent=[0, 0.98, 0.5, 100])
    guidance.update_step(100, 200)
    assert guidance.max_step == 500
    torch.manual_seed(0)
    out = guidance(rgb, cameras, prompt)
    assert out["t"] <= 500
    out["loss_sds"].backward()
    # the clipped g is at most 0.01; d/d rgb = 2 g / B
    assert rgb.grad.abs().max() <= 0.01 + 1e-7


def test_linear_time_schedule_anneals_from_max_to_min():
    prior, guidance, prompt, cameras, rgb = setup(time_schedule="linear")
    guidance.update_step(0, 100)
    t0 = guidance.sample_timesteps(2, torch.device("cpu"))
    guidance.update_step(100, 100)
    t1 = guidance.sample_timesteps(2, torch.device("cpu"))
    assert t0.tolist() == [980, 980] and t1.tolist() == [20, 20]


@pytest.mark.parametrize("weighting", ["sds", "uniform", "fantasia3d"])
def test_weightings(weighting):
    prior, guidance, *_ = setup(weighting=weighting)
    t = torch.tensor([100, 900])
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    expected = {"sds": 1 - ab, "uniform": torch.ones_like(ab), "fantasia3d": ab.sqrt() * (1 - ab)}[weighting]
    assert torch.allclose(guidance.weight(t, torch.zeros(2, 3, 4, 4)), expected)
