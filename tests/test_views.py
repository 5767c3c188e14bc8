import numpy as np

from sslscale.views import ViewSpec, augment, batch_views, view_rng

SPEC = ViewSpec(size=16, blur=0.5, grayscale=0.5)


def _images(n=4, c=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, 20, 20, c), dtype=np.uint8)


def test_views_are_a_function_of_seed_epoch_id():
    imgs, ids = _images(), np.arange(10, 14)
    a = batch_views(imgs, ids, seed=1, epoch=2, spec=SPEC)
    b = batch_views(imgs[::-1], ids[::-1], seed=1, epoch=2, spec=SPEC)  # re-ordered stream
    assert np.array_equal(a["view_0"], b["view_0"][::-1]) and np.array_equal(a["view_1"], b["view_1"][::-1])
    c = batch_views(imgs, ids, seed=1, epoch=3, spec=SPEC)
    assert not np.array_equal(a["view_0"], c["view_0"])


def test_shapes_dtypes_and_two_views_differ():
    out = batch_views(_images(c=1), np.arange(4), seed=0, epoch=0, spec=SPEC)
    assert out["view_0"].shape == (4, 1, 16, 16) and out["view_0"].dtype == np.uint8
    assert not np.array_equal(out["view_0"], out["view_1"])


def test_identity_spec_is_a_resize():
    img = _images(1)[0]
    spec = ViewSpec(size=20, crop_min_scale=1.0, flip=0.0, jitter=0.0, grayscale=0.0, blur=0.0)
    rng = view_rng(0, 0, 0, 0)
    out = augment(img, rng, spec)
    # a full-area crop can only be the whole image, resized to its own size: the identity
    assert np.array_equal(out, img.transpose(2, 0, 1))
