"""VSD, ESD, ASD, CSM and ISM against their formulas, computed by hand on an analytic prior."""
import copy
import math

import pytest
import torch
from torch import nn

from threestudio_like.config import ConfigError, load_config, parse_structured
from threestudio_like.data.cameras import orbit_cameras
from threestudio_like.guidance.asd import ASD, ASDConfig
from threestudio_like.guidance.csm import CSM, CSMConfig
from threestudio_like.guidance.ism import ISM, ISMConfig
from threestudio_like.guidance.esd import ESD, ESDConfig
from threestudio_like.guidance.vsd import VSD, VSDConfig
from threestudio_like.priors.base import VariationalScore
from threestudio_like.priors.variational import CameraUNet, RenderMemory
from threestudio_like.prompts import Prompt
from tests.stand_ins import LinearPrior

B, H = 2, 8


class LinearVariational(VariationalScore):
    """ε_φ = w·x_t + cond + (camera · u): analytic, trainable, and sensitive to cond and camera."""

    prediction_type = "epsilon"

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(0.2))
        self.u = nn.Parameter(torch.linspace(-0.1, 0.1, 16))

    def forward(self, x_t, t, cond, camera=None):
        camera = torch.zeros(len(x_t), 16) if camera is None else camera
        return self.w * x_t + cond + (camera @ self.u).view(-1, 1, 1, 1)

    def trainable_parameters(self):
        return list(self.parameters())


class VariationalPrior(LinearPrior):
    """The analytic prior, with a variational copy of our choosing."""

    def __init__(self, make=LinearVariational) -> None:
        super().__init__()
        self.make = make

    def variational_copy(self, rank):
        return self.make()


def setup(cls, cfg, make=LinearVariational):
    prior = VariationalPrior(make)
    torch.manual_seed(123)  # the same initial ε_φ for every guidance built here
    guidance = cls(cfg, prior)
    prompt = Prompt("a red ball")
    # views 0° (front) and 180° (back): view-dependent and plain prompts differ for the first
    cameras = orbit_cameras(B, 10.0, 2.5, 40.0, H, H)
    rgb = torch.rand(B, H, H, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    return prior, guidance, prompt, cameras, rgb


def run(guidance, prompt, cameras, rgb, seed=0):
    """The gradient the guidance puts on x = 2 rgb − 1, as [B,C,h,w], and its outputs."""
    torch.manual_seed(seed)
    out = guidance(rgb, cameras, prompt)
    out[f"loss_{guidance.name}"].backward()
    # d loss / d x = g / B (the target trick divides by the batch), and d x / d rgb = 2
    return (rgb.grad * B / 2).permute(0, 3, 1, 2), out


def by_hand(prior, rgb, cameras, guidance, seed=0):
    """Replays the draws: x, t, ε, x_t, t/T-scale, the view-dependent cond, ᾱ_t."""
    torch.manual_seed(seed)
    x = rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    x = x.contiguous()  # the guidance draws its noise on a contiguous x (randn_like follows the layout)
    t = torch.randint(guidance.min_step, guidance.max_step + 1, (B,))
    noise = torch.randn_like(x)
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    return x, t, noise, ab


def prior_eps(x_t, t, cond_value):
    """LinearPrior by hand: 0.3 x_t + cond (1 + t/T)."""
    return 0.3 * x_t + cond_value * (1 + t.view(-1, 1, 1, 1) / 1000)


def view_cond(cameras):
    return torch.tensor([0.7 if v == "front" else 0.5 for v in cameras.view_labels()]).view(-1, 1, 1, 1)


# --- VSD / ESD ---------------------------------------------------------------------------------
@pytest.mark.parametrize("s_phi", [1.0, 2.0])
def test_vsd_gradient_matches_formula(s_phi):
    prior, guidance, prompt, cameras, rgb = setup(VSD, VSDConfig(guidance_scale=7.5, guidance_scale_lora=s_phi))
    g, out = run(guidance, prompt, cameras, rgb)

    x, t, noise, ab = by_hand(prior, rgb, cameras, guidance)
    x_t = ab.sqrt() * x + (1 - ab).sqrt() * noise  # the same ε for the prior and ε_φ
    eps_s = prior_eps(x_t, t, -0.25) + 7.5 * (prior_eps(x_t, t, view_cond(cameras)) - prior_eps(x_t, t, -0.25))
    phi = guidance.variational
    with torch.no_grad():
        # ε_φ sees the view-independent prompt (0.5) and the flattened camera matrices
        eps_c = phi.w * x_t + 0.5 + (cameras.flat_matrices() @ phi.u).view(-1, 1, 1, 1)
        eps_0 = phi.w * x_t + 0.5
    expected = (1 - ab) * (eps_s - (eps_0 + s_phi * (eps_c - eps_0)))
    assert torch.allclose(g, expected, atol=1e-5)
    assert out["loss_lora"].requires_grad and out["loss_lora"].item() > 0


def test_esd_is_camera_cfg_on_eps_phi():
    lam = 0.3
    prior, guidance, prompt, cameras, rgb = setup(ESD, ESDConfig(guidance_scale=7.5, lambda_entropy=lam))
    g, out = run(guidance, prompt, cameras, rgb)
    assert "loss_esd" in out and "loss_lora" in out

    x, t, noise, ab = by_hand(prior, rgb, cameras, guidance)
    x_t = ab.sqrt() * x + (1 - ab).sqrt() * noise
    eps_s = prior_eps(x_t, t, -0.25) + 7.5 * (prior_eps(x_t, t, view_cond(cameras)) - prior_eps(x_t, t, -0.25))
    phi = guidance.variational
    with torch.no_grad():
        eps_c = phi.w * x_t + 0.5 + (cameras.flat_matrices() @ phi.u).view(-1, 1, 1, 1)
        eps_0 = phi.w * x_t + 0.5
    expected = (1 - ab) * (eps_s - (lam * eps_0 + (1 - lam) * eps_c))
    assert torch.allclose(g, expected, atol=1e-5)


@pytest.mark.parametrize("make", [LinearVariational, lambda: CameraUNet(block_out_channels=(8, 16), sample_size=H, norm_num_groups=4)])
def test_esd_with_lambda_zero_is_vsd(make):
    results = []
    for cls, cfg in [(VSD, VSDConfig()), (ESD, ESDConfig(lambda_entropy=0.0))]:
        prior, guidance, prompt, cameras, rgb = setup(cls, cfg, make)
        g, out = run(guidance, prompt, cameras, rgb, seed=7)
        out["loss_lora"].backward()
        lora_grads = [p.grad.clone() for p in guidance.variational.trainable_parameters()]
        results.append((g, out["loss_lora"].detach(), lora_grads))
    (g_vsd, l_vsd, grads_vsd), (g_esd, l_esd, grads_esd) = results
    assert torch.equal(g_vsd, g_esd) and torch.equal(l_vsd, l_esd)
    assert all(torch.equal(a, b) for a, b in zip(grads_vsd, grads_esd))


def test_esd_rejects_guidance_scale_lora():
    with pytest.raises(ConfigError, match="lambda_entropy"):
        parse_structured(ESDConfig, {"guidance_scale_lora": 0.5}, "system.guidance")


def test_vsd_own_loss_falls_on_fixed_renders():
    """ε_φ (the embedded prior's small UNet, default optimizer) learns the renders it is shown."""
    make = lambda: CameraUNet(block_out_channels=(8, 16), sample_size=16, norm_num_groups=4)  # noqa: E731
    prior = VariationalPrior(make)
    torch.manual_seed(0)
    guidance = VSD(VSDConfig(lora_n_timestamp_samples=2, lora_lr=1e-3), prior)
    optimizer = guidance.make_optimizer()
    assert optimizer.defaults["lr"] == 1e-3 and optimizer.defaults["betas"] == (0.9, 0.99) and optimizer.defaults["eps"] == 1e-15
    prompt = Prompt("a red ball")
    cameras = orbit_cameras(4, 10.0, 2.5, 40.0, 16, 16)
    # four fixed "renders": smooth colour ramps, a different one per view
    ramp = torch.linspace(0, 1, 16)
    rgb = torch.stack([torch.stack([ramp[:, None].expand(16, 16) * (k + 1) / 4, ramp[None].expand(16, 16), torch.full((16, 16), k / 4)], -1) for k in range(4)])
    losses = []
    for _ in range(60):
        out = guidance(rgb, cameras, prompt)
        optimizer.zero_grad()
        out["loss_lora"].backward()
        optimizer.step()
        losses.append(out["loss_lora"].item())
    first, last = sum(losses[:8]) / 8, sum(losses[-8:]) / 8
    assert last < 0.6 * first, (first, last)


def test_vsd_checkpoint_resumes_exactly():
    """ε_φ's weights are in the guidance's state_dict and its optimizer state restores: same next steps."""
    def steps(guidance, optimizer, n, seed):
        torch.manual_seed(seed)
        for _ in range(n):
            out = guidance(rgb, cameras, prompt)
            optimizer.zero_grad()
            out["loss_lora"].backward()
            optimizer.step()
        return [p.detach().clone() for p in guidance.variational.trainable_parameters()]

    prior, guidance, prompt, cameras, rgb = setup(VSD, VSDConfig(lora_lr=1e-2))
    assert set(guidance.state_dict()) == {"variational.w", "variational.u"}  # the prior is not saved
    optimizer = guidance.make_optimizer()
    steps(guidance, optimizer, 3, seed=1)
    saved = copy.deepcopy((guidance.state_dict(), optimizer.state_dict()))  # as written to disk
    straight = steps(guidance, optimizer, 3, seed=2)

    _, resumed, *_ = setup(VSD, VSDConfig(lora_lr=1e-2))
    resumed.load_state_dict(saved[0])
    resumed_optimizer = resumed.make_optimizer()
    resumed_optimizer.load_state_dict(saved[1])
    again = steps(resumed, resumed_optimizer, 3, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(straight, again))


# --- ASD ---------------------------------------------------------------------------------------
def test_asd_with_rho_zero_is_scaled_classifier_term():
    prior, guidance, prompt, cameras, rgb = setup(ASD, ASDConfig(guidance_scale=7.5, plus_ratio=0.0))
    g, _ = run(guidance, prompt, cameras, rgb)
    x, t, noise, ab = by_hand(prior, rgb, cameras, guidance)
    x_t = ab.sqrt() * x + (1 - ab).sqrt() * noise
    eps_y, eps_0 = prior_eps(x_t, t, view_cond(cameras)), prior_eps(x_t, t, -0.25)
    assert torch.allclose(g, (7.5 - 1) * (1 - ab) * (eps_y - eps_0), atol=1e-5)


def test_asd_shifted_timestep_and_gradient():
    prior, guidance, prompt, cameras, rgb = setup(ASD, ASDConfig(guidance_scale=7.5, plus_ratio=0.3))
    guidance.update_step(10000, 25000)  # t_min, t_max mid-anneal: the shift uses the current t_min
    g, _ = run(guidance, prompt, cameras, rgb)
    x, t, noise, ab = by_hand(prior, rgb, cameras, guidance)
    u = torch.rand(B)  # drawn after ε
    t_plus = (t + (0.3 * (t - guidance.min_step) * u).floor().long()).clamp(1, 999)
    ab_plus = prior.alphas_cumprod[t_plus].view(-1, 1, 1, 1)
    x_t, x_plus = ab.sqrt() * x + (1 - ab).sqrt() * noise, ab_plus.sqrt() * x + (1 - ab_plus).sqrt() * noise
    eps_s = prior_eps(x_t, t, -0.25) + 7.5 * (prior_eps(x_t, t, view_cond(cameras)) - prior_eps(x_t, t, -0.25))
    expected = (1 - ab) * (eps_s - prior_eps(x_plus, t_plus, view_cond(cameras)))  # w at t, not t⁺
    assert (t_plus >= t).all() and (t_plus > t).any()
    assert torch.allclose(g, expected, atol=1e-5)


# --- CSM / ISM ---------------------------------------------------------------------------------
def invert_by_hand(prior, x, t, delta_t=50, stride=200, seed=0):
    """LucidDreamer's inversion, one item at a time, with the null prompt (−0.25)."""
    noise = torch.randn(x.shape, generator=torch.Generator().manual_seed(seed))
    ab = lambda k: float(prior.alphas_cumprod[k])  # noqa: E731
    outs, eps_s_all = [], []
    for i in range(len(x)):
        ti = int(t[i])
        s = max(ti - delta_t, 0)
        cur = 0
        xc = math.sqrt(ab(0)) * x[i] + math.sqrt(1 - ab(0)) * noise[i]

        def up(xc, k, nxt):
            eps = 0.3 * xc - 0.25 * (1 + k / 1000)
            x0 = (xc - math.sqrt(1 - ab(k)) * eps) / math.sqrt(ab(k))
            return math.sqrt(ab(nxt)) * x0 + math.sqrt(1 - ab(nxt)) * eps, eps

        while cur < s:
            nxt = min(cur + stride, s)
            xc, _ = up(xc, cur, nxt)
            cur = nxt
        x_t, eps_s = up(xc, s, ti)
        outs.append(x_t)
        eps_s_all.append(eps_s)
    return torch.stack(outs), torch.stack(eps_s_all)


def test_csm_gradient_matches_formula():
    prior, guidance, prompt, cameras, rgb = setup(CSM, CSMConfig(guidance_scale=7.5))
    g, _ = run(guidance, prompt, cameras, rgb)
    x, t, _, ab = by_hand(prior, rgb, cameras, guidance)
    x_t, _ = invert_by_hand(prior, x, t)
    expected = (1 - ab) * 7.5 * (prior_eps(x_t, t, view_cond(cameras)) - prior_eps(x_t, t, -0.25))
    assert torch.allclose(g, expected, atol=1e-5)


def test_ism_gradient_matches_formula():
    prior, guidance, prompt, cameras, rgb = setup(ISM, ISMConfig(guidance_scale=7.5, delta_t=50))
    assert guidance.cfg.weighting == "ism"
    g, _ = run(guidance, prompt, cameras, rgb)
    x, t, _, ab = by_hand(prior, rgb, cameras, guidance)
    x_t, eps_s = invert_by_hand(prior, x, t)
    eps_cfg = prior_eps(x_t, t, -0.25) + 7.5 * (prior_eps(x_t, t, view_cond(cameras)) - prior_eps(x_t, t, -0.25))
    expected = ((1 - ab) / ab).sqrt() * (eps_cfg - eps_s)
    assert torch.allclose(g, expected, atol=1e-5)


def test_csm_inversion_is_deterministic_and_not_random_noise():
    prior, guidance, prompt, cameras, rgb = setup(CSM, CSMConfig())
    x = rgb.detach().permute(0, 3, 1, 2) * 2 - 1
    t = torch.tensor([400, 900])
    torch.manual_seed(0)
    conds = guidance.conditions(prompt, cameras)
    a, _ = guidance.invert(x, t, conds)
    torch.manual_seed(1)  # a different global seed changes nothing
    b, _ = guidance.invert(x, t, conds)
    assert torch.equal(a, b)
    ab = prior.alphas_cumprod[t].view(-1, 1, 1, 1)
    implied = (a - ab.sqrt() * x) / (1 - ab).sqrt()  # the noise the inversion put into x_t
    random = torch.randn_like(x)
    assert (implied - random).abs().mean() > 0.3
    # and the strided schedule is what is run: ⌈s/200⌉ + 1 prior calls for the largest t
    calls = []
    original = prior.predict_noise
    prior.predict_noise = lambda *args: calls.append(len(args[0])) or original(*args)
    guidance.invert(x, t, conds)
    assert len(calls) == math.ceil((900 - 50) / 200) + 1


# --- the training-free variational model ---------------------------------------------------------
def test_render_memory_is_the_exact_denoiser_of_its_renders():
    memory = RenderMemory(capacity=3, camera_sigma_deg=10.0)
    cameras = orbit_cameras(4, 10.0, 2.5, 40.0, H, H)
    images = torch.rand(4, 3, H, H) * 2 - 1
    memory.observe(images[:2], cameras[:2].flat_matrices())
    t = torch.tensor([300])
    ab = memory.alphas_cumprod[t].view(-1, 1, 1, 1)
    noise = torch.randn(1, 3, H, H)
    x_t = ab.sqrt() * images[1:2] + (1 - ab).sqrt() * noise
    # the camera of image 1 picks image 1 out: ε̂ is the true noise
    eps = memory(x_t, t, None, cameras[1:2].flat_matrices())
    assert torch.allclose(eps, noise, atol=1e-4)
    memory.observe(images[2:], cameras[2:].flat_matrices())
    assert len(memory) == 3 and torch.equal(memory.images[0], images[1])  # the oldest was forgotten
    restored = RenderMemory(capacity=3)
    restored.load_state_dict(memory.state_dict())
    assert torch.equal(restored(x_t, t, None, None), memory(x_t, t, None, None))
    assert "alphas_cumprod" not in memory.state_dict()
    memory.observe(torch.zeros(1, 3, 2 * H, 2 * H), cameras[:1].flat_matrices())  # a new render size
    assert len(memory) == 1  # renders of the old size are forgotten


# --- configs -----------------------------------------------------------------------------------
@pytest.mark.parametrize("method", ["vsd", "asd", "esd", "csm"])
def test_method_configs_parse_and_differ_from_sds_only_in_guidance(root, method):
    cfg = load_config(root / "configs" / f"{method}-nerf.yaml")
    sds = load_config(root / "configs" / "sds-nerf.yaml")
    assert cfg.system.guidance_type == method
    assert type(cfg.system.guidance).__name__.lower().startswith(method)
    for part in ("geometry", "renderer", "prior", "background", "material", "prompt_processor", "optimizer"):
        assert getattr(cfg.system, part) == getattr(sds.system, part), part
    assert cfg.data == sds.data and cfg.trainer == sds.trainer


# --- the real embedded prior ----------------------------------------------------------------------
@pytest.fixture(scope="module")
def embedded():
    from threestudio_like.data.cameras import RandomCameraConfig, RandomCameraSampler
    from threestudio_like.priors.embedded import EmbeddedPrior, EmbeddedPriorConfig

    sampler = RandomCameraSampler(RandomCameraConfig(
        width=16, height=16, batch_size=B, camera_distance_range=[2.5, 2.5], fovy_range=[40.0, 40.0], elevation_range=[-10.0, 60.0],
    ))
    prior = EmbeddedPrior(EmbeddedPriorConfig(azimuth_step_deg=30.0, n_elevations=2, null_library=["a blue cube"]), "cpu", sampler)
    prompt = Prompt("a red ball on a blue box")
    prior.prepare(prompt.text)
    return prior, prompt, sampler


def test_embedded_prior_offers_both_variational_models(embedded):
    from threestudio_like.priors.embedded import EmbeddedPrior, EmbeddedPriorConfig

    prior, _, sampler = embedded
    assert isinstance(prior.variational_copy(4), RenderMemory)
    unet_prior = EmbeddedPrior(EmbeddedPriorConfig(variational="unet", null_library=[]), "cpu", sampler)
    assert isinstance(unet_prior.variational_copy(4), CameraUNet)
    with pytest.raises(ConfigError, match="variational"):
        parse_structured(EmbeddedPriorConfig, {"variational": "lora"}, "system.prior")


@pytest.mark.parametrize("cls, cfg", [(VSD, VSDConfig()), (ESD, ESDConfig()), (ASD, ASDConfig()), (CSM, CSMConfig()), (ISM, ISMConfig())])
def test_methods_on_the_embedded_prior(embedded, cls, cfg):
    """Two steps each: finite gradients, non-zero except CSM's; VSD/ESD's memory fills with the renders.

    CSM keeps only ε_y − ε_∅, which is exactly zero on the embedded prior wherever the conditional
    and the null posteriors pick the same reference (the null set contains the scene's own).
    """
    prior, prompt, sampler = embedded
    guidance = cls(cfg, prior)
    torch.manual_seed(0)
    for _ in range(2):
        cameras = sampler.sample()
        rgb = torch.rand(B, 16, 16, 3).requires_grad_(True)
        out = guidance(rgb, cameras, prompt)
        out[f"loss_{guidance.name}"].backward()
        assert torch.isfinite(rgb.grad).all() and out["skipped"] == 0
        assert cls is CSM or rgb.grad.abs().sum() > 0
    if cls in (VSD, ESD):
        assert len(guidance.variational) == 2 * B and "variational.images" in guidance.state_dict()


def test_vsd_with_memory_matches_formula_on_the_embedded_prior(embedded):
    prior, prompt, sampler = embedded
    guidance = VSD(VSDConfig(), prior)
    cameras = sampler.sample(torch.Generator().manual_seed(3))
    earlier = torch.rand(B, 3, 16, 16) * 2 - 1
    guidance.variational.observe(earlier, cameras.flat_matrices())
    rgb = torch.rand(B, 16, 16, 3, generator=torch.Generator().manual_seed(1)).requires_grad_(True)
    g, _ = run(guidance, prompt, cameras, rgb)
    x, t, noise, ab = by_hand(prior, rgb, cameras, guidance)
    x_t = ab.sqrt() * x + (1 - ab).sqrt() * noise
    eps_y = prior.predict_noise(x_t, t, prior.condition(prompt.text, cameras, prompt.views(cameras)))
    eps_0 = prior.predict_noise(x_t, t, prior.null_condition("", cameras))
    # ε_φ by hand: the exact denoiser of the remembered renders, weighted by the camera kernel
    d2 = ((x_t[:, None] - ab.sqrt()[:, None] * earlier[None]) ** 2).flatten(2).sum(-1)  # [B,N]
    logits = -d2 / (2 * (1 - ab.view(-1, 1))) + guidance.variational.log_camera_weights(cameras.flat_matrices())[:, :B]  # the step's own renders came after
    x0 = torch.einsum("bn,nchw->bchw", torch.softmax(logits, -1), earlier)
    eps_phi = (x_t - ab.sqrt() * x0) / (1 - ab).sqrt()
    expected = (1 - ab) * (eps_0 + 7.5 * (eps_y - eps_0) - eps_phi)
    assert torch.allclose(g, expected, atol=1e-4)


def test_vsd_converts_a_v_predicting_copy_to_eps(tmp_path):
    """With Stable Diffusion 2.1-style v-prediction, ε_φ's v becomes ε as the prior's own does, and
    its loss targets v. The LoRA copy starts equal to the prior, so at step 0 the two ε agree."""
    from tests.sd_tiny import build_tiny_sd
    from threestudio_like.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior

    folder = build_tiny_sd(tmp_path / "sd", prediction_type="v_prediction")
    prior = StableDiffusionPrior(StableDiffusionConfig(pretrained_model_name_or_path=str(folder), vae_resolution=32, cache_dir=str(tmp_path / "cache")), "cpu")
    guidance = VSD(VSDConfig(), prior)
    assert guidance.variational.prediction_type == "v_prediction"
    cameras = orbit_cameras(B, 10.0, 2.5, 40.0, 16, 16)
    cond = prior.condition("a red ball", cameras, None)
    x0, noise, t = torch.randn(B, 4, 8, 8), torch.randn(B, 4, 8, 8), torch.tensor([100, 700])
    x_t = guidance.add_noise(x0, noise, t)
    with torch.no_grad():
        eps_phi = guidance.variational_eps(x_t, t, cond, cameras.flat_matrices())
        assert torch.allclose(eps_phi, prior.predict_noise(x_t, t, cond), atol=1e-4)
    torch.manual_seed(0)
    loss = guidance.extra_losses(x0, guidance.conditions(Prompt("a red ball"), cameras))["loss_lora"]
    # by hand, same draws: camera dropout, t' over the full range, fresh noise; the target is v
    torch.manual_seed(0)
    x = x0
    keep = torch.rand(B, 1) >= 0.1
    t2 = torch.randint(0, 1000, (B,))
    n2 = torch.randn_like(x)
    ab2 = guidance.alpha_bar(t2, x)
    with torch.no_grad():
        pred = guidance.variational(ab2.sqrt() * x + (1 - ab2).sqrt() * n2, t2, cond, cameras.flat_matrices() * keep)
    assert loss.item() == pytest.approx(((pred - (ab2.sqrt() * n2 - (1 - ab2).sqrt() * x)) ** 2).mean().item(), rel=1e-4)
