"""Each guidance method's config, end to end: 30 steps with the embedded prior, a checkpoint, a mesh."""
import pytest
import torch

from threestudio_like.cli import main
from threestudio_like.systems.checkpoint import load_checkpoint

QUICK = [
    "trainer.max_steps=30", "trainer.val_check_interval=30", "trainer.checkpoint_interval=30",
    "trainer.progress_bar=false", "trainer.test_at_end=false",
    "system.exporter.isosurface_resolution=48", "system.exporter.texture_size=64", "system.exporter.progress=false",
    "system.quality.enabled=false", "data.eval_width=32", "data.eval_height=32",  # the validation grid at 32²
]


@pytest.mark.parametrize("method", ["vsd", "esd", "asd", "csm"])
def test_config_trains_and_writes_a_mesh(root, tmp_path, method):
    code = main(["--config", str(root / "configs" / f"{method}-nerf.yaml"), "--train", f"exp_root_dir={tmp_path}", *QUICK])
    assert code == 0
    (run_dir,) = (tmp_path / f"{method}-nerf").iterdir()
    meshes = list(run_dir.glob("save/it30-export/model.obj"))
    assert meshes and meshes[0].stat().st_size > 0
    metrics = (run_dir / "metrics.csv").read_text()
    assert f"loss_{method}" in metrics.splitlines()[0]
    state = load_checkpoint(run_dir / "ckpts" / "last.ckpt")
    guidance_state = state["modules"]["guidance"]
    if method in ("vsd", "esd"):
        # ε_φ learns with the run, so it is part of the checkpoint: with the embedded prior's default
        # it is the memory of the last 64 renders (30 steps × 4 views seen)
        assert "loss_lora" in metrics.splitlines()[0]
        assert guidance_state["variational.images"].shape == (64, 3, 32, 32)
        assert "guidance" in state["optimizers"]
    else:
        assert guidance_state == {}  # nothing trainable, and the frozen prior is never saved


def test_vsd_with_the_small_unet_resumes_exactly(root, tmp_path):
    """ε_φ's weights and AdamW state go into the checkpoint: 10 + 10 resumed steps = 20 straight."""
    base = ["--config", str(root / "configs" / "vsd-nerf.yaml"), "--train", "system.prior.variational=unet",
            "trainer.progress_bar=false", "trainer.test_at_end=false", "trainer.export_at_end=false",
            "system.quality.enabled=false", "trainer.val_check_interval=1000", "trainer.checkpoint_interval=10",
            "data.eval_width=32", "data.eval_height=32"]
    assert main([*base, f"exp_root_dir={tmp_path / 'straight'}", "trainer.max_steps=20"]) == 0
    assert main([*base, f"exp_root_dir={tmp_path / 'split'}", "trainer.max_steps=10"]) == 0
    (split_dir,) = (tmp_path / "split" / "vsd-nerf").iterdir()
    ckpt = split_dir / "ckpts" / "last.ckpt"
    assert main([*base, f"exp_root_dir={tmp_path / 'split'}", "trainer.max_steps=20", f"resume={ckpt}"]) == 0
    (straight_dir,) = (tmp_path / "straight" / "vsd-nerf").iterdir()
    straight, resumed = load_checkpoint(straight_dir / "ckpts" / "last.ckpt"), load_checkpoint(ckpt)
    assert straight["step"] == resumed["step"] == 20
    assert resumed["optimizers"]["guidance"]["state"], "ε_φ's AdamW never stepped"
    for part in ("guidance", "geometry"):
        assert same(straight["modules"][part], resumed["modules"][part]), part


def same(a, b) -> bool:
    """Nested state dicts equal, tensors bit for bit."""
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if torch.is_tensor(a):
        return torch.is_tensor(b) and a.shape == b.shape and torch.equal(a, b)
    return a == b
