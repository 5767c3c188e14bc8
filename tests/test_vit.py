import pytest
import torch

from sslscale.checks import validate

from sslscale.config import Config
from sslscale.encoders import build_encoder, encoder_kwargs
from sslscale.encoders.vit import VIT_PRESETS, ViT, patchify, unpatchify
from sslscale.errors import SslscaleError
from sslscale.methods import build_method
from sslscale.training.export import load_encoder, save_encoder

TINY = dict(in_channels=3, image_size=16, patch_size=4, dim=32, depth=2, heads=2)


@pytest.fixture
def vit():
    torch.manual_seed(0)
    return ViT(**TINY).eval()


def test_shapes_and_contract(vit):
    x = torch.rand(5, 3, 16, 16)
    assert vit(x).shape == (5, 32) and vit.feature_dim == 32 and vit.num_patches == 16
    assert vit.forward_tokens(x).shape == (5, 17, 32)
    assert torch.allclose(vit(x), vit.forward_tokens(x)[:, 0])
    assert all(p.is_contiguous() for p in vit.parameters())
    assert vit(torch.rand(2, 3, 8, 8)).shape == (2, 32)  # a smaller (local) crop: 2x2 patches


def test_keep_idx_runs_only_the_kept_patches(vit):
    x = torch.rand(3, 3, 16, 16)
    all_idx = torch.arange(16).expand(3, -1)
    assert torch.allclose(vit.forward_tokens(x, all_idx), vit.forward_tokens(x), atol=1e-6)
    keep = torch.stack([torch.randperm(16)[:4] for _ in range(3)])  # (3, 4)
    out = vit.forward_tokens(x, keep)
    assert out.shape == (3, 5, 32)
    # hidden patches are never seen: changing their pixels changes nothing
    seen = torch.zeros(3, 16, 48, dtype=torch.bool).scatter_(1, keep[..., None].expand(-1, -1, 48), True)
    y = unpatchify(torch.where(seen, patchify(x, 4), torch.rand(3, 16, 48)), 4, 3)
    assert torch.allclose(vit.forward_tokens(y, keep), out, atol=1e-6)
    # tokens are permutation-equivariant: reordering keep_idx reorders the patch outputs, CLS unchanged
    perm = torch.tensor([2, 0, 3, 1])
    shuffled = vit.forward_tokens(x, keep[:, perm])
    assert torch.allclose(shuffled[:, 1:], out[:, 1:][:, perm], atol=1e-5)
    assert torch.allclose(shuffled[:, 0], out[:, 0], atol=1e-5)


def test_patchify_unpatchify_inverse():
    x = torch.rand(2, 3, 12, 12)
    patches = patchify(x, 4)
    assert patches.shape == (2, 9, 48)
    assert torch.equal(patches[0, 1], x[0, :, 0:4, 4:8].permute(1, 2, 0).reshape(-1))  # row-major, (p, p, C)
    assert torch.equal(unpatchify(patches, 4, 3), x)


def test_bad_sizes_are_one_line_errors():
    with pytest.raises(SslscaleError, match="model.patch_size=5 does not divide the image size 28"):
        ViT(in_channels=1, image_size=28, patch_size=5, dim=32, depth=1, heads=2)
    with pytest.raises(SslscaleError, match="model.heads"):
        ViT(in_channels=1, image_size=28, patch_size=4, dim=32, depth=1, heads=3)
    with pytest.raises(SslscaleError, match="divisible by 4"):
        ViT(**TINY)(torch.rand(1, 3, 10, 10))


def test_spec_round_trip_through_export(vit, tmp_path):
    path = save_encoder(vit, str(tmp_path / "vit.encoder.safetensors"))
    loaded = load_encoder(path)
    assert isinstance(loaded, ViT) and loaded.spec() == vit.spec() and vit.spec()["name"] == "vit"
    x = torch.rand(2, 3, 16, 16)
    assert torch.equal(loaded(x), vit(x))


def test_built_from_config():
    cfg = Config().override(["model.encoder=vit", "model.dim=32", "model.vit_depth=1", "model.heads=2",
                             "model.patch_size=7"])
    validate(cfg)
    enc = build_encoder("vit", in_channels=1, image_size=28, **encoder_kwargs(cfg.model))
    assert (enc.dim, enc.depth, enc.heads, enc.num_patches) == (32, 1, 2, 16)
    assert build_method(cfg, in_channels=1, image_size=28).encoder.spec() == enc.spec()
    assert encoder_kwargs(Config().model) == {"widths": (32, 64, 128), "depths": (1, 1, 1)}
    assert VIT_PRESETS["small"] == dict(dim=384, depth=12, heads=6)
    small = encoder_kwargs(cfg.override(["model.vit_preset=small"]).model)  # in place of dim, vit_depth, heads
    assert small == {"patch_size": 7, "dim": 384, "depth": 12, "heads": 6}
    assert build_encoder("vit", in_channels=1, image_size=28, **small).feature_dim == 384
    validate(cfg.override(["model.vit_preset=tiny", "model.heads=5"]))  # the preset's heads, not this one
    for bad, key in [("model.heads=5", "model.heads"), ("model.dim=30", "model.dim"),
                     ("model.patch_size=0", "model.patch_size"), ("model.vit_depth=0", "model.vit_depth")]:
        with pytest.raises(SslscaleError, match=key):
            validate(cfg.override([bad]))
