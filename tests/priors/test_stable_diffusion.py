"""The Stable Diffusion prior on a tiny random checkpoint, loaded through the real from_pretrained path."""
from __future__ import annotations

import json
import shutil

import pytest
import torch

from tests.sd_tiny import build_tiny_sd
from threestudio_like.data.cameras import orbit_cameras
from threestudio_like.diffusion import eps_from_v
from threestudio_like.guidance import perp_neg
from threestudio_like.guidance.base import GuidanceConfig
from threestudio_like.guidance.sds import SDS
from threestudio_like.priors.lora import LoRAVariationalUNet
from threestudio_like.priors.stable_diffusion import (
    LATENT_RGB_FACTORS, MissingWeightsError, StableDiffusionConfig, StableDiffusionPrior,
)
from threestudio_like.prompts import Prompt

TEXT = "a red ball"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp("sd") / "tiny-sd")


def make_prior(checkpoint, cache_dir, **overrides) -> StableDiffusionPrior:
    cfg = StableDiffusionConfig(pretrained_model_name_or_path=str(checkpoint), vae_resolution=32, cache_dir=str(cache_dir), **overrides)
    return StableDiffusionPrior(cfg, "cpu")


@pytest.fixture(scope="module")
def prior(checkpoint, tmp_path_factory):
    return make_prior(checkpoint, tmp_path_factory.mktemp("cache"))


def cameras(n=4, size=16):
    return orbit_cameras(n, 10.0, 2.5, 40.0, size, size)


def test_sds_steps_train_a_nerf_through_the_vae(prior):
    from threestudio_like.geometry.hashgrid import HashGridConfig
    from threestudio_like.geometry.nerf import ImplicitVolume, ImplicitVolumeConfig
    from threestudio_like.materials.plain_albedo import PlainAlbedo, PlainAlbedoConfig
    from threestudio_like.renderers.background import SolidColorBackground, SolidColorConfig
    from threestudio_like.renderers.volume import VolumeRenderer, VolumeRendererConfig

    torch.manual_seed(0)
    grid = HashGridConfig(n_levels=4, log2_hashmap_size=10, base_resolution=4, per_level_scale=1.5, start_level=4)
    geometry = ImplicitVolume(ImplicitVolumeConfig(pos_encoding=grid, mlp_neurons=16))
    renderer = VolumeRenderer(VolumeRendererConfig(num_samples_per_ray=16, grid_prune=False), radius=geometry.radius)
    material, background = PlainAlbedo(PlainAlbedoConfig()), SolidColorBackground(SolidColorConfig())
    guidance = SDS(GuidanceConfig(guidance_scale=7.5), prior)
    prompt = Prompt(TEXT)
    optimizer = torch.optim.Adam([g for g in geometry.parameter_groups()], lr=0.01)
    before = [p.detach().clone() for p in geometry.parameters()]
    cams = cameras(2)
    for _ in range(3):
        out = renderer.render(geometry, material, background, cams, training=True)
        terms = guidance(out["rgb"], cams, prompt)
        optimizer.zero_grad()
        terms["loss_sds"].backward()
        grads = [p.grad for p in geometry.parameters() if p.grad is not None]
        assert grads and all(torch.isfinite(g).all() for g in grads)
        assert sum(g.abs().sum() for g in grads) > 0
        assert torch.isfinite(terms["grad_norm"]) and terms["grad_norm"] > 0
        optimizer.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, geometry.parameters()))
    assert guidance.skipped_steps == 0


def test_latents_shapes_and_rgb_as_latents(checkpoint, tmp_path, prior):
    rgb = torch.rand(2, 3, 20, 20, requires_grad=True)
    latents = prior.encode_images(rgb)
    assert latents.shape == (2, 4, 16, 16) and latents.dtype == torch.float32  # 32² VAE input, factor 2
    latents.sum().backward()
    assert rgb.grad.abs().sum() > 0
    image = prior.decode_latents(latents.detach())
    assert image.shape == (2, 3, 32, 32) and 0 <= image.min() and image.max() <= 1

    cheap = make_prior(checkpoint, tmp_path, rgb_as_latents=True)
    small = torch.rand(2, 3, 16, 16)
    x = cheap.encode_images(small)
    assert x.shape == (2, 4, 16, 16)
    # the linear latent→RGB estimate of the latents gives the render back (2·rgb − 1)
    estimate = torch.einsum("blhw,lc->bchw", x, torch.tensor(LATENT_RGB_FACTORS))
    assert torch.allclose(estimate, small * 2 - 1, atol=1e-5)
    four = torch.randn(2, 4, 16, 16)
    assert torch.equal(cheap.encode_images(four), four)  # a 4-channel render is taken as the latents


def test_embedding_cache_hits_and_fresh_instance_reads_files(checkpoint, tmp_path):
    first = make_prior(checkpoint, tmp_path, text_encoder_placement="free")
    cams = cameras()
    cond = first.condition(TEXT, cams, cams.view_labels())
    assert first.cache.misses == 5 and first.cache.hits == 0  # plain + 4 view prompts, one batch
    assert first.text_encoder is None  # "free": released after encoding
    first.condition(TEXT, cams, None)
    first.null_condition("", cams)
    assert first.cache.misses == 6
    assert len(list(tmp_path.glob("*.safetensors"))) == 6

    second = make_prior(checkpoint, tmp_path, text_encoder_placement="free")
    again = second.condition(TEXT, cams, cams.view_labels())
    second.null_condition("", cams)
    assert second.cache.hits == 6 and second.cache.misses == 0
    assert second.text_encoder is None  # never loaded: everything came from the files
    assert torch.equal(cond, again)


def test_view_dependent_embeddings_differ_by_view(prior):
    cams = cameras()
    views = ["front", "side", "back", "overhead"]
    cond = prior.condition(TEXT, cams, views)
    assert cond.shape[0] == 4
    for i in range(4):
        for j in range(i + 1, 4):
            assert not torch.allclose(cond[i], cond[j])
    assert torch.equal(cond[0], prior.embeddings([f"{TEXT}, front view"])[0])
    plain = prior.condition(TEXT, cams, None)
    assert torch.equal(plain[0], plain[3]) and not torch.allclose(plain[0], cond[0])
    with pytest.raises(ValueError, match="unknown view label"):
        prior.condition(TEXT, cams, ["front", "top", "back", "side"])


@pytest.mark.parametrize("where", ["missing-folder", "empty-folder", "hub-id"])
def test_missing_weights_error_is_one_clear_line(tmp_path, where):
    name = {
        "missing-folder": str(tmp_path / "no-such-model"),
        "empty-folder": str(tmp_path),
        "hub-id": "nobody-here/no-such-model-xyz",
    }[where]
    cfg = StableDiffusionConfig(pretrained_model_name_or_path=name, local_files_only=True, cache_dir=str(tmp_path))
    with pytest.raises(MissingWeightsError) as info:
        StableDiffusionPrior(cfg, "cpu")
    message = str(info.value)
    assert isinstance(info.value, ValueError)
    assert "\n" not in message and repr(name) in message
    assert "system.prior_type=embedded" in message and "offline" in message


def test_v_prediction_is_converted_to_eps(checkpoint, tmp_path):
    folder = tmp_path / "tiny-sd-v"
    shutil.copytree(checkpoint, folder)
    config_file = folder / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config_file.write_text(json.dumps({**config, "prediction_type": "v_prediction"}))
    prior_v = make_prior(folder, tmp_path)
    assert prior_v.prediction_type == "v_prediction"
    cams = cameras(2)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([100, 800])
    cond = prior_v.condition(TEXT, cams)
    v = prior_v.unet_prediction(x_t, t, cond)
    ab = prior_v.alphas_cumprod[t].view(-1, 1, 1, 1)
    assert torch.allclose(prior_v.predict_noise(x_t, t, cond), ab.sqrt() * v + (1 - ab).sqrt() * x_t, atol=1e-6)
    # and the formula itself: with x_t = √ᾱ x0 + √(1−ᾱ) ε and v = √ᾱ ε − √(1−ᾱ) x0, it returns ε
    x0, eps = torch.randn(2, 4, 8, 8), torch.randn(2, 4, 8, 8)
    x_t = ab.sqrt() * x0 + (1 - ab).sqrt() * eps
    v = ab.sqrt() * eps - (1 - ab).sqrt() * x0
    assert torch.allclose(eps_from_v(v, x_t, ab), eps, atol=1e-5)


def test_perp_neg_reduces_to_plain_cfg_with_zero_weights(prior):
    zero = [0.0, 0.0, 0.0]
    cams = orbit_cameras(4, 10.0, 2.5, 40.0, 16, 16)  # azimuths 0, 90, 180, 270
    guidance = SDS(GuidanceConfig(use_perp_neg=True, perp_neg_f_sb=zero, perp_neg_f_fsb=zero, perp_neg_f_fs=zero, perp_neg_f_sf=zero), prior)
    x_t, t = torch.randn(4, 4, 8, 8), torch.tensor([50, 300, 600, 900])
    conds = guidance.conditions(Prompt(TEXT), cams)
    for i, view in enumerate(["front", "side", "back", "side"]):  # pure views at these azimuths
        assert torch.allclose(conds.positive[i], prior.embeddings([f"{TEXT}, {view} view"])[0], atol=1e-6)
    eps_y = prior.predict_noise(x_t, t, conds.positive)
    eps_0 = prior.predict_noise(x_t, t, conds.null)
    plain = eps_0 + 7.5 * (eps_y - eps_0)
    assert torch.allclose(guidance.cfg_eps(x_t, t, conds, 7.5), plain, atol=1e-4)
    # threestudio's weights do change the guided prediction (off the pure front view)
    default = SDS(GuidanceConfig(use_perp_neg=True), prior)
    assert not torch.allclose(default.cfg_eps(x_t, t, default.conditions(Prompt(TEXT), cams), 7.5), plain, atol=1e-3)


def test_perpendicular_component_and_weights():
    a, b = torch.randn(3, 4, 5, 5), torch.randn(3, 4, 5, 5)
    p = perp_neg.perpendicular_component(a, b)
    assert torch.allclose((p * b).sum(dim=(1, 2, 3)), torch.zeros(3), atol=1e-4)
    front_half, r, w = perp_neg.interpolation(torch.tensor([0.0, 45.0, 135.0, -180.0]), GuidanceConfig())
    assert front_half.tolist() == [True, True, False, False]
    assert torch.allclose(r, torch.tensor([1.0, 0.5, 0.5, 0.0]))
    # a pure front view puts (almost) no weight on the front negative: 4·e^−0.5 − 2.426 ≈ 0
    assert abs(w[0, 0].item()) < 1e-3


def test_lora_copy_starts_equal_trains_and_leaves_the_prior_alone(prior):
    torch.manual_seed(0)
    cams = cameras(2)
    cond = prior.condition(TEXT, cams, None)
    x_t, t = torch.randn(2, 4, 8, 8), torch.tensor([200, 700])
    base = prior.predict_noise(x_t, t, cond)
    variational = prior.variational_copy(rank=2)
    assert variational.prediction_type == "epsilon"
    camera = cams.flat_matrices()
    assert torch.allclose(variational(x_t, t, cond, camera), base, atol=1e-6)  # B = 0, camera MLP out = 0
    assert torch.allclose(variational(x_t, t, cond, None), base, atol=1e-6)
    params = variational.trainable_parameters()
    assert params and all(p.dtype == torch.float32 and p.requires_grad for p in params)
    assert all(k.startswith(("lora.", "camera_mlp.")) for k in variational.state_dict())

    optimizer = torch.optim.AdamW(params, lr=1e-2)
    target = torch.randn_like(x_t)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(variational(x_t, t, cond, camera), target)
        prior.predict_noise(x_t, t, cond)  # a prior pass between forward and backward (as in VSD)
        optimizer.zero_grad()
        loss.backward()
        assert all(p.grad is not None for p in params) and sum(p.grad.abs().sum() for p in params) > 0
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.allclose(variational(x_t, t, cond, camera), base, atol=1e-4)
    assert torch.allclose(prior.predict_noise(x_t, t, cond), base, atol=1e-6)  # adapters off for the prior
    with pytest.raises(ValueError, match="share_variational_unet"):
        prior.variational_copy(rank=2)


def test_private_lora_copy_and_half_precision_unet(checkpoint, tmp_path, prior):
    own = make_prior(checkpoint, tmp_path, share_variational_unet=False)
    variational = own.variational_copy(rank=2)
    assert not any("lora_" in name for name, _ in own.unet.named_parameters())
    assert variational.unet is not own.unet

    # the CUDA set-up on the CPU: a bfloat16 UNet keeps float32 adapters and still trains them
    unet = type(prior.unet).from_config(prior.unet.config).to(torch.bfloat16)
    half = LoRAVariationalUNet(unet, rank=2, prediction_type="epsilon", shared=True)
    assert all(p.dtype == torch.float32 for p in half.trainable_parameters())
    cond = prior.condition(TEXT, cameras(1), None)
    out = half(torch.randn(1, 4, 8, 8), torch.tensor([900]), cond, cameras(1).flat_matrices())
    out.square().mean().backward()
    assert out.dtype == torch.float32 and torch.isfinite(out).all()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 for p in half.trainable_parameters())


def test_vsd_trains_the_lora_copy_and_its_checkpoint_round_trips(checkpoint, tmp_path):
    from threestudio_like.guidance.vsd import VSD

    torch.manual_seed(0)
    guidance = VSD(VSD.Config(use_perp_neg=True), make_prior(checkpoint, tmp_path))
    optimizer = guidance.make_optimizer()
    prompt = Prompt(TEXT)
    cams = cameras(2)
    rgb = torch.rand(2, 16, 16, 3, requires_grad=True)
    terms = guidance(rgb, cams, prompt)
    sum(v for k, v in terms.items() if k.startswith("loss_")).backward()
    assert rgb.grad.abs().sum() > 0 and torch.isfinite(rgb.grad).all()
    optimizer.step()
    with torch.no_grad():  # move well away from the initial (base-equal) state, so a failed load shows
        for param in guidance.variational.trainable_parameters():
            param.add_(0.05 * torch.randn_like(param))
    state = guidance.state_dict()
    assert state and all(k.startswith(("variational.lora.", "variational.camera_mlp.")) for k in state)

    restored = VSD(VSD.Config(), make_prior(checkpoint, tmp_path))
    x_t, t, camera = torch.randn(2, 4, 8, 8), torch.tensor([100, 600]), cams.flat_matrices()
    cond = guidance.prior.condition(TEXT, cams, None)
    assert not torch.allclose(restored.variational(x_t, t, cond, camera), guidance.variational(x_t, t, cond, camera), atol=1e-3)
    restored.load_state_dict(state)
    assert torch.allclose(restored.variational(x_t, t, cond, camera), guidance.variational(x_t, t, cond, camera), atol=1e-5)
