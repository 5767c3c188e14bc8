"""Rotation prediction and the denoising autoencoder: rotations against numpy's rot90, the rotation loss against a
float64 cross-entropy written here, batch order, the denoising loss against numpy, the corruption's determinism
(a function of (step, rank, micro-batch) only), the decoder's output shape, a
forward and backward on both encoders, and a few optimizer steps lowering each loss."""
import numpy as np
import pytest
import torch

from sslscale.config import Config
from sslscale.data.modalities import ImageLayout
from sslscale.encoders import build_encoder
from sslscale.methods import denoising_ae
from sslscale.methods.denoising_ae import ConvDecoder, DenoisingAE, corrupt, denoising_loss
from sslscale.methods.rotation import Rotation, rotate_all

ENCODERS = {
    "resnet": dict(widths=(8, 16), depths=(1, 1)),
    "vit": dict(patch_size=4, dim=16, depth=1, heads=2),
}


def _encoder(name, image_size=8, seed=0):
    torch.manual_seed(seed)
    return build_encoder(name, in_channels=1, image_size=image_size, **ENCODERS[name])


def _cfg(name="rotation", *items):
    return Config().override([f"method.name={name}", *items]).set_for_methods(proj_hidden=16).method.section(name)


def _images(n=6, size=8, seed=0, channels=1):
    return torch.rand(n, channels, size, size, generator=torch.Generator().manual_seed(seed))


def reference_cross_entropy(logits, labels):
    """-log softmax(logits_i)_{y_i}, averaged, with a float64 log-sum-exp."""
    z = logits.double().numpy()
    m = z.max(axis=1, keepdims=True)
    lse = m[:, 0] + np.log(np.exp(z - m).sum(axis=1))
    return float(np.mean(lse - z[np.arange(len(z)), labels.numpy()]))


# --- rotation -------------------------------------------------------------------------------------------------------

def test_rotate_all_matches_numpy_rot90_and_labels_each_block():
    x = _images(n=3, size=5, channels=2)
    x4, labels = rotate_all(x)
    assert x4.shape == (12, 2, 5, 5) and labels.dtype == torch.long
    assert labels.tolist() == [0] * 3 + [1] * 3 + [2] * 3 + [3] * 3
    blocks = x4.split(3)
    for k in range(4):
        np.testing.assert_array_equal(blocks[k].numpy(), np.rot90(x.numpy(), k, axes=(2, 3)))
        np.testing.assert_array_equal(torch.rot90(blocks[k], 1, dims=(2, 3)).numpy(), blocks[(k + 1) % 4].numpy())
    # counter-clockwise: the top-right pixel moves to the top-left
    x4, _ = rotate_all(torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2))
    assert x4[1, 0].tolist() == [[2.0, 4.0], [1.0, 3.0]]


@pytest.mark.parametrize("encoder", ENCODERS)
def test_rotation_loss_matches_reference_cross_entropy(encoder):
    method = Rotation(_encoder(encoder), _cfg()).train()
    x = _images()
    out = method({"view_0": x})
    x4, labels = rotate_all(x)
    with torch.no_grad():  # train mode: BatchNorm uses the batch statistics, so the same logits again
        h = method.encoder(x4)
        logits = method.head(h)
    assert float(out["loss"].detach()) == pytest.approx(reference_cross_entropy(logits, labels), rel=1e-5)
    assert float(out["rotation_acc"]) == pytest.approx(float((logits.argmax(1) == labels).double().mean()))
    assert out["embeddings"].shape == (6, method.encoder.feature_dim) and not out["embeddings"].requires_grad
    torch.testing.assert_close(out["embeddings"], h[:6])  # the unrotated block
    assert Rotation.views(None, {"image": 8}) == {"image": ImageLayout(n_views=1)}


@pytest.mark.parametrize("encoder", ENCODERS)
def test_rotation_loss_is_invariant_to_batch_order(encoder):
    method = Rotation(_encoder(encoder), _cfg()).train()
    x = _images(n=8, seed=1)
    perm = torch.randperm(8, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        a, b = method({"view_0": x})["loss"], method({"view_0": x[perm]})["loss"]
    assert float(b) == pytest.approx(float(a), rel=1e-5)


def _assert_trains(method, x):
    out = method({"view_0": x})
    assert out["loss"].dim() == 0 and torch.isfinite(out["loss"])
    out["loss"].backward()
    for name, p in method.encoder.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all(), name
    assert any(p.grad.abs().sum() > 0 for p in method.encoder.parameters())
    return out


@pytest.mark.parametrize("encoder", ENCODERS)
def test_rotation_forward_backward(encoder):
    out = _assert_trains(Rotation(_encoder(encoder), _cfg()).train(), _images())
    assert 0.0 <= float(out["rotation_acc"]) <= 1.0


# --- denoising autoencoder ------------------------------------------------------------------------------------------

def test_denoising_loss_matches_numpy_reference():
    g = torch.Generator().manual_seed(0)
    recon, clean = torch.rand(4, 3, 5, 5, generator=g), torch.rand(4, 3, 5, 5, generator=g)
    expected = float(((recon.double().numpy() - clean.double().numpy()) ** 2).mean())
    assert float(denoising_loss(recon, clean)) == pytest.approx(expected, rel=1e-6)
    loss = denoising_loss(recon.bfloat16(), clean.bfloat16())
    assert loss.dtype == torch.float32
    assert float(denoising_loss(clean, clean)) == 0.0


def test_corrupt_adds_clamped_gaussian_noise_of_the_given_std():
    x = torch.full((64, 1, 16, 16), 0.5)
    noisy = corrupt(x, 0.1, seed=3)
    assert noisy.shape == x.shape and noisy.dtype == x.dtype
    assert float((noisy - x).std()) == pytest.approx(0.1, rel=0.05)  # clamping at 5 sigma changes nothing
    assert float(corrupt(x, 3.0, seed=3).min()) == 0.0 and float(corrupt(x, 3.0, seed=3).max()) == 1.0
    torch.testing.assert_close(corrupt(x, 0.1, seed=3), noisy)
    assert corrupt(x.bfloat16(), 0.1, seed=3).dtype == torch.bfloat16


def _encoder_inputs(method, x, step=0):
    """What the encoder receives in method's forward on view x at `step`."""
    seen = []
    handle = method.encoder.register_forward_pre_hook(lambda _, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        method({"view_0": x}, step)
    handle.remove()
    return seen[0]


def test_noise_depends_only_on_the_step_rank_and_micro_batch(monkeypatch):
    x = _images()
    a, b = (DenoisingAE(_encoder("resnet", seed=seed), _cfg("denoising_ae")) for seed in (0, 1))
    torch.manual_seed(123)
    noisy = _encoder_inputs(a, x, 5)
    torch.manual_seed(456)  # the global RNG plays no part
    torch.testing.assert_close(_encoder_inputs(b, x, 5), noisy, rtol=0, atol=0)
    assert not torch.equal(noisy, x)
    assert not torch.equal(_encoder_inputs(b, x, 5), noisy)  # the next micro-batch of the same step
    assert not torch.equal(_encoder_inputs(b, x, 6), noisy)  # the next step
    torch.testing.assert_close(_encoder_inputs(b, x, 5), noisy, rtol=0, atol=0)  # step 5 again: its first micro
    rank0 = _encoder_inputs(a, x, 7)
    monkeypatch.setattr(denoising_ae.dist, "rank", lambda: 1)
    assert not torch.equal(_encoder_inputs(b, x, 7), rank0)  # another worker


def test_a_checkpoint_from_before_the_loop_owned_the_step_still_loads():
    a = DenoisingAE(_encoder("vit"), _cfg("denoising_ae"))
    state = {**a.state_dict(), "steps_done": torch.tensor(41)}  # what older checkpoints carry
    resumed = DenoisingAE(_encoder("vit", seed=7), _cfg("denoising_ae"))
    resumed.load_state_dict(state)  # strict, as DeepSpeed loads
    assert all(torch.equal(v, resumed.state_dict()[k]) for k, v in a.state_dict().items())


def test_zero_noise_feeds_the_clean_view():
    x = _images()
    method = DenoisingAE(_encoder("resnet"), _cfg("denoising_ae", "method.denoising_ae.noise_std=0"))
    torch.testing.assert_close(_encoder_inputs(method, x), x, rtol=0, atol=0)
    assert DenoisingAE.views(None, {"image": 8}) == {"image": ImageLayout(n_views=1)}


@pytest.mark.parametrize("size", [8, 9, 28, 30, 32])
@pytest.mark.parametrize("channels", [1, 3])
def test_decoder_output_has_the_image_shape(size, channels):
    with torch.no_grad():
        y = ConvDecoder(16, channels, size)(torch.randn(3, 16))
    assert y.shape == (3, channels, size, size) and 0 < float(y.min()) and float(y.max()) < 1


@pytest.mark.parametrize("encoder,size", [("resnet", 8), ("vit", 8), ("resnet", 28), ("vit", 28)])
def test_denoising_forward_backward(encoder, size):
    method = DenoisingAE(_encoder(encoder, image_size=size), _cfg("denoising_ae")).train()
    x = _images(size=size)
    out = _assert_trains(method, x)
    assert out["embeddings"].shape == (6, method.encoder.feature_dim) and not out["embeddings"].requires_grad
    assert method.decoder(method.encoder(x)).shape == x.shape
    assert all(p.grad is not None for p in method.decoder.parameters())


# --- a few optimizer steps ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, cls", [("rotation", Rotation), ("denoising_ae", DenoisingAE)])
def test_a_few_adam_steps_lower_the_loss(name, cls):
    method = cls(_encoder("resnet"), _cfg(name)).train()
    x = _images(n=8, seed=4)
    optimizer = torch.optim.Adam(method.parameters(), lr=3e-3)
    losses = []
    for step in range(30):
        loss = method({"view_0": x})["loss"]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        method.after_step(step + 1)
        losses.append(float(loss.detach()))
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5])
