"""The guidance against the reference code, transcribed here independently of ours, where they once differed.

References (read for their formulas): ScaleDreamer's stable_diffusion_asd_guidance.py (get_t_plus,
get_eps), threestudio's prompt_processors/base.py (get_text_embeddings_perp_neg) and
stable_diffusion_guidance.py (compute_grad_sds), threestudio's utils/ops.py (perpendicular_component,
shifted_expotional_decay). They run on a tiny random Stable Diffusion checkpoint: the UNet and the
DDPM scheduler are called directly through diffusers, never through our prior.
"""
import math

import pytest
import torch

from tests.sd_tiny import build_tiny_sd
from threestudio_like.data.cameras import make_cameras
from threestudio_like.guidance.asd import ASD, ASDConfig
from threestudio_like.guidance.base import GuidanceConfig
from threestudio_like.guidance.esd import ESD, ESDConfig
from threestudio_like.guidance.sds import SDS
from threestudio_like.guidance.vsd import VSD, VSDConfig
from threestudio_like.priors.stable_diffusion import StableDiffusionConfig, StableDiffusionPrior
from threestudio_like.prompts import Prompt

TEXT = "a red fox"
T = 1000
# threestudio's defaults (prompt_processors/base.py)
F_SB, F_FSB, F_FS, F_SF = (1, 0.5, -0.606), (1, 0.5, 0.967), (4, 0.5, -2.426), (4, 0.5, -2.426)


@pytest.fixture(scope="module")
def sd(tmp_path_factory):
    from diffusers import DDPMScheduler

    folder = build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")
    cfg = StableDiffusionConfig(pretrained_model_name_or_path=str(folder), vae_resolution=32, cache_dir=str(tmp_path_factory.mktemp("cache")))
    prior = StableDiffusionPrior(cfg, "cpu")
    scheduler = DDPMScheduler.from_pretrained(str(folder), subfolder="scheduler")
    return prior, scheduler


def cameras(elevation, azimuth):
    n = len(azimuth)
    return make_cameras(torch.tensor(elevation, dtype=torch.float32), torch.tensor(azimuth, dtype=torch.float32),
                        torch.full((n,), 2.5), torch.full((n,), 40.0), 16, 16)


# --- the references, transcribed --------------------------------------------------------------------
def ref_get_t_plus(t, min_step, plus_ratio, u):
    """ScaleDreamer's get_t_plus: the shift is clamped to [0, T − t − 1] *before* the random scale."""
    t_plus = plus_ratio * (t - min_step)
    t_plus = t_plus.clamp(torch.zeros_like(t), T - t - 1)
    t_plus = t_plus * u
    t_plus = t + t_plus.to(torch.long)
    return torch.clamp(t_plus, 1, max=T - 1)


def ref_perpendicular_component(x, y):
    eps = torch.ones_like(x[:, 0, 0, 0]) * 1e-6
    return x - (torch.mul(x, y).sum(dim=[1, 2, 3]) / torch.maximum(torch.mul(y, y).sum(dim=[1, 2, 3]), eps)).view(-1, 1, 1, 1) * y


def ref_decay(a, b, c, r):
    return a * torch.exp(-b * r) + c


def ref_direction(elevation, azimuth, front=45.0, back=45.0, overhead=60.0):
    """threestudio's direction rule: side unless a later rule (front, back, overhead) matches."""
    azi = (azimuth + 180) % 360 - 180
    name = "side"
    if -front < azi < front:
        name = "front"
    if azi > 180 - back or azi < -180 + back:
        name = "back"
    if elevation > overhead:
        name = "overhead"
    return name


def ref_perp_neg_embeddings(prior, elevations, azimuths):
    """threestudio's get_text_embeddings_perp_neg, with its layout: [pos (B), uncond (B), neg (2B,
    item by item: n1 of item 0, n2 of item 0, n1 of item 1, …)] and weights [B,2]."""
    emb = {v: prior.embeddings([f"{TEXT}, {v} view"])[0] for v in ("side", "front", "back", "overhead")}
    uncond = prior.embeddings([""])[0]
    pos, neg, weights, unconds = [], [], [], []
    for ele, azi in zip(elevations, azimuths):
        azi = torch.tensor((azi + 180) % 360 - 180)
        unconds.append(uncond)
        if ref_direction(ele, float(azi)) == "overhead":
            pos.append(emb["overhead"])
            neg += [uncond, uncond]
            weights += [0.0, 0.0]
        elif torch.abs(azi) < 90:
            r = 1 - torch.abs(azi) / 90
            pos.append(r * emb["front"] + (1 - r) * emb["side"])
            neg += [emb["front"], emb["side"]]
            weights += [-ref_decay(*F_FS, r), -ref_decay(*F_SF, 1 - r)]
        else:
            r = 2.0 - torch.abs(azi) / 90
            pos.append(r * emb["side"] + (1 - r) * emb["back"])
            neg += [emb["side"], emb["front"]]
            weights += [-ref_decay(*F_SB, r), -ref_decay(*F_FSB, r)]
    text_embeddings = torch.cat([torch.stack(pos), torch.stack(unconds), torch.stack(neg)])
    return text_embeddings, torch.as_tensor(weights).reshape(len(elevations), 2)


def unet(prior, x, t, emb):
    with torch.no_grad():
        return prior.unet(x, t, encoder_hidden_states=emb).sample


def ref_perp_neg_eps(prior, x_t, t, text_embeddings, weights, scale):
    """The guided prediction of threestudio's compute_grad_sds under Perp-Neg: the 4B batch as it
    builds it, negatives picked back with noise_pred_neg[i::2]."""
    B = len(x_t)
    noise_pred = unet(prior, torch.cat([x_t] * 4), torch.cat([t] * 4), text_embeddings)
    text, uncond, neg = noise_pred[:B], noise_pred[B:2 * B], noise_pred[2 * B:]
    e_pos = text - uncond
    accum = 0
    for i in range(weights.shape[-1]):
        accum += weights[:, i].view(-1, 1, 1, 1) * ref_perpendicular_component(neg[i::2] - uncond, e_pos)
    return uncond + scale * (e_pos + accum)


def ref_sds_perp_neg_grad(prior, scheduler, x, noise, t, elevations, azimuths, scale):
    """threestudio's SDS gradient under Perp-Neg, one camera at a time (its layout is right at B = 1)."""
    grads = []
    for b in range(len(x)):
        emb, w = ref_perp_neg_embeddings(prior, elevations[b:b + 1], azimuths[b:b + 1])
        x_t = scheduler.add_noise(x[b:b + 1], noise[b:b + 1], t[b:b + 1])
        eps = ref_perp_neg_eps(prior, x_t, t[b:b + 1], emb, w, scale)
        grads.append((1 - scheduler.alphas_cumprod[t[b]]) * (eps - noise[b:b + 1]))
    return torch.cat(grads)


def ref_asd_grad(prior, scheduler, x, noise, t, t_plus, elevations, azimuths, scale, guidance_perp_neg):
    """ScaleDreamer's ASD gradient with Perp-Neg (get_eps), one camera at a time: weights × −1 ×
    guidance_perp_neg, the second model at t⁺ on the same noise with the positive prompt, no CFG."""
    grads = []
    for b in range(len(x)):
        emb, w = ref_perp_neg_embeddings(prior, elevations[b:b + 1], azimuths[b:b + 1])
        w = w * -1 * guidance_perp_neg
        pos, uncond, neg = emb[0:1], emb[1:2], emb[2:4]
        x_t = scheduler.add_noise(x[b:b + 1], noise[b:b + 1], t[b:b + 1])
        x_plus = scheduler.add_noise(x[b:b + 1], noise[b:b + 1], t_plus[b:b + 1])
        pred = unet(prior, torch.cat([x_t] * 4 + [x_plus]), torch.cat([t[b:b + 1]] * 4 + [t_plus[b:b + 1]]),
                    torch.cat([pos, uncond, neg, pos]))
        text, unc, vd_neg, second = pred[0:1], pred[1:2], pred[2:4], pred[4:5]
        eps_pos = text - unc
        accum = 0
        for i in range(2):
            accum += w[:, i].view(-1, 1, 1, 1) * ref_perpendicular_component(vd_neg[i::2] - unc, eps_pos)
        noise_pred_p = (eps_pos + accum) * scale + unc
        grads.append((1 - scheduler.alphas_cumprod[t[b]]) * (noise_pred_p - second))
    return torch.cat(grads)


# --- ASD's shifted timestep -----------------------------------------------------------------------
def test_asd_t_plus_clamps_before_the_random_scale_near_T(sd):
    prior, _ = sd
    guidance = ASD(ASDConfig(min_step_percent=0.02, max_step_percent=0.98), prior)
    t = torch.tensor([20, 300, 700, 900, 950, 980, 990, 999] * 50)
    torch.manual_seed(0)
    ours = guidance.shifted(t)
    torch.manual_seed(0)
    expected = ref_get_t_plus(t, guidance.min_step, 0.1, torch.rand(t.shape))
    assert torch.equal(ours, expected)
    # at t = 980 the shift is at most T − 1 − t = 19 before u scales it: t⁺ spreads over [980, 998]
    near_T = ours[t == 980]
    assert near_T.max() <= 998 and (near_T == 999).float().mean() == 0 and near_T.unique().numel() > 5


# --- Perp-Neg -------------------------------------------------------------------------------------
ELEVATIONS = [10.0, 20.0, 75.0]  # the last is above the overhead threshold (60°)
AZIMUTHS = [30.0, 120.0, -150.0]


def test_sds_with_perp_neg_matches_threestudio_per_camera_and_overhead(sd):
    prior, scheduler = sd
    guidance = SDS(GuidanceConfig(guidance_scale=7.5, use_perp_neg=True), prior)
    cams = cameras(ELEVATIONS, AZIMUTHS)
    conds = guidance.conditions(Prompt(TEXT), cams)
    # above the threshold: the overhead prompt, no negatives
    assert torch.equal(conds.perp_neg.weights[2], torch.zeros(2))
    assert torch.allclose(conds.positive[2], prior.embeddings([f"{TEXT}, overhead view"])[0])
    gen = torch.Generator().manual_seed(0)
    x, noise = torch.randn(3, 4, 8, 8, generator=gen), torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([200, 500, 800])
    ours = guidance.weight(t, x) * (guidance.cfg_eps(guidance.add_noise(x, noise, t), t, conds, 7.5) - noise)
    expected = ref_sds_perp_neg_grad(prior, scheduler, x, noise, t, ELEVATIONS, AZIMUTHS, 7.5)
    assert torch.allclose(ours, expected, atol=1e-5), float((ours - expected).abs().max())


def test_threestudios_perp_neg_layout_mis_pairs_negatives_at_batch_above_one(sd):
    """Its negatives are laid out item by item (n1, n2 of item 0, then of item 1, …) but run on
    cat([x_t] * 4): for B > 1 a negative meets another item's latents and timestep. Per camera
    (B = 1) it is right, and that is what ours matches; batched, it is not."""
    prior, scheduler = sd
    elevations, azimuths = [10.0, 20.0], [30.0, 120.0]
    gen = torch.Generator().manual_seed(1)
    x, noise = torch.randn(2, 4, 8, 8, generator=gen), torch.randn(2, 4, 8, 8, generator=gen)
    t = torch.tensor([150, 850])
    per_camera = ref_sds_perp_neg_grad(prior, scheduler, x, noise, t, elevations, azimuths, 7.5)
    emb, w = ref_perp_neg_embeddings(prior, elevations, azimuths)
    x_t = scheduler.add_noise(x, noise, t)
    batched = (1 - scheduler.alphas_cumprod[t]).view(-1, 1, 1, 1) * (ref_perp_neg_eps(prior, x_t, t, emb, w, 7.5) - noise)
    assert not torch.allclose(batched, per_camera, atol=1e-3)
    guidance = SDS(GuidanceConfig(guidance_scale=7.5, use_perp_neg=True), prior)
    conds = guidance.conditions(Prompt(TEXT), cameras(elevations, azimuths))
    ours = guidance.weight(t, x) * (guidance.cfg_eps(guidance.add_noise(x, noise, t), t, conds, 7.5) - noise)
    assert torch.allclose(ours, per_camera, atol=1e-5)


def test_asd_with_perp_neg_gets_the_negatives_as_scaledreamer(sd):
    prior, scheduler = sd
    guidance = ASD(ASDConfig(min_step_percent=0.02, max_step_percent=0.98, use_perp_neg=True, perp_neg_scale=0.5), prior)
    cams = cameras(ELEVATIONS, AZIMUTHS)
    conds = guidance.conditions(Prompt(TEXT), cams)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(3, 4, 8, 8, generator=gen)
    t = torch.tensor([300, 600, 970])
    torch.manual_seed(5)
    ours = guidance.weight(t, x) * guidance.direction(x, t, conds)
    torch.manual_seed(5)  # the same draws: the noise, then u of t⁺
    noise = torch.randn_like(x)
    t_plus = ref_get_t_plus(t, guidance.min_step, 0.1, torch.rand(t.shape))
    expected = ref_asd_grad(prior, scheduler, x, noise, t, t_plus, ELEVATIONS, AZIMUTHS, 7.5, guidance_perp_neg=-0.5)
    assert torch.allclose(ours, expected, atol=1e-5), float((ours - expected).abs().max())
    # without the negatives (what ASD computed before) the gradient is another one
    plain = ASD(ASDConfig(min_step_percent=0.02, max_step_percent=0.98, use_perp_neg=True, perp_neg_scale=0.0), prior)
    without = plain.conditions(Prompt(TEXT), cams)
    torch.manual_seed(5)
    assert not torch.allclose(plain.weight(t, x) * plain.direction(x, t, without), expected, atol=1e-4)


# --- a NaN pixel in a VSD/ESD render ----------------------------------------------------------------
@pytest.mark.parametrize("cls, cfg", [(VSD, VSDConfig()), (ESD, ESDConfig())])
def test_a_nan_render_skips_the_step_and_never_reaches_the_render_memory(cls, cfg):
    from tests.guidance.test_guidance_family import B
    from threestudio_like.data.cameras import RandomCameraConfig, RandomCameraSampler
    from threestudio_like.priors.embedded import EmbeddedPrior, EmbeddedPriorConfig

    sampler = RandomCameraSampler(RandomCameraConfig(width=16, height=16, batch_size=B, camera_distance_range=[2.5, 2.5],
                                                     fovy_range=[40.0, 40.0], elevation_range=[-10.0, 60.0]))
    prior = EmbeddedPrior(EmbeddedPriorConfig(azimuth_step_deg=45.0, n_elevations=1, null_library=[]), "cpu", sampler)
    prior.prepare("a red ball")
    guidance, prompt = cls(cfg, prior), Prompt("a red ball")
    torch.manual_seed(0)
    rgb = torch.rand(B, 16, 16, 3)
    rgb[0, 3, 5, 1] = float("nan")
    rgb.requires_grad_(True)
    out = guidance(rgb, sampler.sample(), prompt)
    total = out[f"loss_{guidance.name}"] + out["loss_lora"]
    assert torch.isfinite(total) and total == 0 and out["skipped"] == 1
    total.backward()
    assert len(guidance.variational) == 0  # the bad render was never remembered
    # the next clean step is not skipped (before, every step was, while the render stayed in memory)
    for _ in range(2):
        out = guidance(torch.rand(B, 16, 16, 3, requires_grad=True), sampler.sample(), prompt)
        assert out["skipped"] == 1 and torch.isfinite(out["loss_lora"])  # the count stays at one and torch.isfinite(out["grad_norm"])
    assert torch.isfinite(guidance.variational.images).all() and len(guidance.variational) == 2 * B


def test_a_nan_render_leaves_the_lora_copy_and_its_adamw_untouched(sd):
    prior, _ = sd
    guidance = VSD(VSDConfig(), prior)  # the only LoRA copy made on this module's prior
    optimizer = guidance.make_optimizer()
    before = [p.detach().clone() for p in guidance.variational.trainable_parameters()]
    rgb = torch.rand(1, 16, 16, 3)
    rgb[0, 0, 0, 0] = float("nan")
    rgb.requires_grad_(True)
    out = guidance(rgb, cameras([10.0], [30.0]), Prompt(TEXT))
    total = out["loss_vsd"] + out["loss_lora"]
    assert torch.isfinite(total) and out["skipped"] == 1
    optimizer.zero_grad()
    total.backward()
    optimizer.step()
    after = guidance.variational.trainable_parameters()
    assert all(torch.isfinite(p).all() and torch.equal(p, q) for p, q in zip(after, before))
    assert not any(state for state in optimizer.state.values())  # AdamW never saw a gradient
    assert math.isnan(float(out["grad_norm"]))
