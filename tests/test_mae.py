"""MAE: the loss against a reference formula written here (float64 loops), properties (visible patches do not count,
batch order), a forward+backward of the Method on a tiny ViT (the encoder sees only the visible patches), the view
layout it asks the stream for, and a short training run on a fixed batch."""
import numpy as np
import pytest
import torch

from sslscale.config import Config
from sslscale.data.modalities.image import ImageLayout
from sslscale.data.views import ViewSpec, batch_views, patch_masks, uniforms
from sslscale.encoders.resnet import ResNet
from sslscale.encoders.vit import ViT, patchify, unpatchify
from sslscale.errors import SslscaleError
from sslscale.methods.mae import MAE, decoder_heads, mae_loss


def reference_mae(pred, target, keep, eps=1e-6):
    """He et al. 2022, norm_pix_loss: each hidden patch's pixels normalised by their mean and unbiased variance,
    squared error averaged over pixels, then over all hidden patches of the batch."""
    pred, target, keep = pred.double().numpy(), target.double().numpy(), keep.numpy()
    total, count = 0.0, 0
    for i in range(pred.shape[0]):
        for j in range(pred.shape[1]):
            if j in set(keep[i].tolist()):
                continue
            t = target[i, j]
            m = sum(t) / len(t)
            v = sum((a - m) ** 2 for a in t) / (len(t) - 1)
            total += sum((pred[i, j, k] - (t[k] - m) / np.sqrt(v + eps)) ** 2 for k in range(len(t))) / len(t)
            count += 1
    return total / count


def _keep(n, num_patches, ratio, seed):
    return torch.as_tensor(patch_masks(uniforms(seed, 0, np.arange(n), 1, num_patches), ratio))


def _inputs(seed, n=6, length=16, p=12, ratio=0.75):
    g = torch.Generator().manual_seed(seed)
    target = torch.rand(n, length, p, generator=g)
    target[0, :] = 0.3  # flat patches: variance 0, the eps keeps it finite
    return torch.randn(n, length, p, generator=g), target, _keep(n, length, ratio, seed)


def _cfg(patch=2, **method):
    items = ["model.encoder=vit", f"model.patch_size={patch}", "model.dim=16", "model.vit_depth=1", "model.heads=2",
             "method.name=mae", "method.mae.decoder_dim=16", "method.mae.decoder_depth=1"]
    return Config().override(items + [f"method.mae.{k}={v}" for k, v in method.items()])


def _mae(cfg, channels=1):
    m = cfg.model
    encoder = ViT(in_channels=channels, image_size=8, patch_size=m.patch_size, dim=m.dim, depth=m.vit_depth,
                  heads=m.heads)
    return MAE(encoder, cfg.method.section("mae"))


def _batch(cfg, n=4, channels=1, seed=0):
    layout = MAE.views(cfg, {"image": 8})["image"]
    g = torch.Generator().manual_seed(seed)
    return {"view_0": torch.rand(n, channels, 8, 8, generator=g),
            "keep": _keep(n, layout.num_patches, layout.patch_mask_ratio, seed)}


@pytest.mark.parametrize("ratio", [0.75, 0.5])
def test_loss_matches_reference_formula(ratio):
    pred, target, keep = _inputs(0, ratio=ratio)
    loss = mae_loss(pred, target, keep)
    assert loss.dtype == torch.float32
    assert float(loss) == pytest.approx(reference_mae(pred, target, keep), rel=1e-5)
    assert float(mae_loss(pred.bfloat16(), target.bfloat16(), keep)) == pytest.approx(float(loss), rel=0.05)


def test_visible_patches_do_not_count():
    pred, target, keep = _inputs(1)
    loss = float(mae_loss(pred, target, keep))
    index = keep.unsqueeze(-1).expand(-1, -1, pred.shape[2])
    moved = pred.scatter_add(1, index, 5.0 * torch.randn(index.shape))  # every visible patch of every image
    assert float(mae_loss(moved, target, keep)) == pytest.approx(loss, rel=1e-6)
    hidden = next(j for j in range(pred.shape[1]) if j not in keep[2].tolist())
    moved[2, hidden] += 1.0
    assert float(mae_loss(moved, target, keep)) != pytest.approx(loss, rel=1e-4)


def test_invariant_to_batch_order():
    pred, target, keep = _inputs(2, n=8)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(3))
    assert float(mae_loss(pred[perm], target[perm], keep[perm])) == pytest.approx(float(mae_loss(pred, target, keep)),
                                                                                  rel=1e-6)


@pytest.mark.parametrize("patch,channels", [(2, 1), (4, 3)])
def test_forward_backward_and_the_encoder_sees_only_visible_patches(patch, channels):
    torch.manual_seed(0)
    cfg = _cfg(patch)
    method, batch = _mae(cfg, channels), _batch(cfg, channels=channels)
    out = method(batch)
    out["loss"].backward()
    assert torch.isfinite(out["loss"]) and out["loss"].dim() == 0
    assert out["embeddings"].shape == (4, 16) and not out["embeddings"].requires_grad
    for param in (method.encoder.patch_embed.weight, method.embed.weight, method.mask_token, method.pred.weight,
                  method.blocks[0].qkv.weight):
        assert param.grad is not None and torch.isfinite(param.grad).all() and param.grad.abs().sum() > 0
    # change only the hidden patches' pixels: the encoder output is the same, the loss (their target) is not
    patches = patchify(batch["view_0"], patch)
    index = batch["keep"].unsqueeze(-1).expand(-1, -1, patches.shape[2])
    changed = torch.rand_like(patches).scatter(1, index, patches.gather(1, index))  # new pixels where hidden
    with torch.no_grad():
        other = method({"view_0": unpatchify(changed, patch, channels), "keep": batch["keep"]})
    torch.testing.assert_close(other["embeddings"], out["embeddings"])
    assert float(other["loss"]) != pytest.approx(float(out["loss"].detach()), rel=1e-4)
    # the decoder knows where each mask token sits: two hidden patches of one image get different predictions
    with torch.no_grad():
        pred = method.decode(method.encoder.forward_tokens(batch["view_0"], batch["keep"]), batch["keep"])
    a, b = [j for j in range(pred.shape[1]) if j not in batch["keep"][0].tolist()][:2]
    assert not torch.allclose(pred[0, a], pred[0, b])


def test_bf16_forward_gives_a_float32_loss():
    torch.manual_seed(0)
    cfg = _cfg()
    method, batch = _mae(cfg).to(torch.bfloat16), _batch(cfg)
    out = method({"view_0": batch["view_0"].bfloat16(), "keep": batch["keep"]})
    assert out["loss"].dtype == torch.float32 and torch.isfinite(out["loss"])
    assert out["embeddings"].dtype == torch.bfloat16


@pytest.mark.parametrize("patch,expected", [(2, 16), (4, 4)])
def test_views_layout_feeds_the_stream(patch, expected):
    cfg = _cfg(patch, mask_ratio=0.75)
    layout = MAE.views(cfg, {"image": 8})["image"]
    assert layout == ImageLayout(n_views=1, patch_mask_ratio=0.75, num_patches=expected)
    images = np.random.default_rng(0).integers(0, 256, (3, 10, 10, 1), dtype=np.uint8)
    out = batch_views(images, np.arange(3), seed=0, epoch=0, spec=ViewSpec(size=8), **vars(layout))
    assert set(out) == {"view_0", "keep"} and out["keep"].shape == (3, expected // 4)
    method = _mae(cfg)  # and the Method takes that batch as the engine hands it over
    loss = method({"view_0": torch.as_tensor(out["view_0"]).float() / 255, "keep": torch.as_tensor(out["keep"])})
    assert torch.isfinite(loss["loss"])


def test_rejects_a_non_vit_encoder_and_picks_dividing_heads():
    cfg = _cfg()
    with pytest.raises(SslscaleError, match="MAE needs model.encoder=vit"):
        MAE(ResNet(in_channels=1, image_size=8, widths=(8,), depths=(1,)), cfg.method.section("mae"))
    assert [decoder_heads(d) for d in (512, 128, 100, 16)] == [16, 4, 2, 1]


def test_loss_falls_when_training_on_a_fixed_batch():
    """An optimisation sanity check (gradients flow end to end), not evidence of learned structure: this tiny model
    gets from its random start (~2.7) to about the zero-prediction level ((P - 1) / P = 0.75) in 30 steps."""
    torch.manual_seed(0)
    cfg = _cfg()
    method, batch = _mae(cfg), _batch(cfg, n=8)
    # smooth images without flat patches (a flat patch's normalised target is just 0)
    batch["view_0"] = torch.nn.functional.interpolate(batch["view_0"][:, :, :4, :4], size=8, mode="bilinear",
                                                      align_corners=True)
    opt = torch.optim.Adam(method.parameters(), lr=3e-3)
    losses = []
    for _ in range(30):
        loss = method(batch)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.5 * losses[0]
