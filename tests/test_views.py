import numpy as np

from sslscale.views import ViewSpec, augment, batch_views, multi_crop, patch_mask, solarize, view_rng

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


def test_solarize_inverts_bright_pixels_only():
    img = np.array([0, 100, 127, 128, 200, 255], np.uint8).reshape(1, 6, 1)
    out = solarize(img, view_rng(0, 0, 0, 0), p=1.0)
    assert out.ravel().tolist() == [0, 100, 127, 127, 55, 0] and out.dtype == np.uint8
    assert solarize(img, view_rng(0, 0, 0, 0), p=0.0) is img


def test_multi_crop_shapes_and_determinism():
    img = _images(1)[0]
    g, loc = multi_crop(img, 1, 2, 7, SPEC, n_global=2, n_local=3, local_size=8, local_scale=(0.05, 0.3))
    assert [v.shape for v in g] == [(3, 16, 16)] * 2 and [v.shape for v in loc] == [(3, 8, 8)] * 3
    g2, loc2 = multi_crop(img, 1, 2, 7, SPEC, n_global=2, n_local=3, local_size=8, local_scale=(0.05, 0.3))
    assert all(np.array_equal(a, b) for a, b in zip(g + loc, g2 + loc2))
    assert not np.array_equal(loc[0], loc[1]) and not np.array_equal(loc[1], loc[2])


def test_batch_views_local_crops_and_mask():
    imgs, ids = _images(), np.arange(10, 14)
    spec = ViewSpec(size=16, solarize=0.5)
    plain = batch_views(imgs, ids, seed=1, epoch=2, spec=spec)
    out = batch_views(imgs, ids, seed=1, epoch=2, spec=spec, n_local=2, local_size=8, mask_ratio=0.75,
                      num_patches=16)
    assert sorted(out) == ["keep", "local_0", "local_1", "view_0", "view_1"]
    assert out["local_1"].shape == (4, 3, 8, 8) and out["local_1"].dtype == np.uint8
    assert np.array_equal(out["view_0"], plain["view_0"]) and np.array_equal(out["view_1"], plain["view_1"])
    assert not np.array_equal(out["local_0"], out["local_1"])
    assert out["keep"].shape == (4, 4) and out["keep"].dtype == np.int64
    again = batch_views(imgs[::-1], ids[::-1], seed=1, epoch=2, spec=spec, n_local=2, local_size=8,
                        mask_ratio=0.75, num_patches=16)  # re-ordered stream
    assert all(np.array_equal(out[k], again[k][::-1]) for k in out)
    assert batch_views(imgs[:0], ids[:0], seed=0, epoch=0, spec=spec, n_local=1)["local_0"].shape == (0, 3, 8, 8)


def test_patch_mask_keeps_exactly_the_right_count():
    for num, ratio in [(49, 0.75), (16, 0.5), (10, 0.0), (64, 0.9)]:
        keep = patch_mask(view_rng(0, 0, 0, 3), num, ratio)
        assert len(keep) == round(num * (1 - ratio)) and len(set(keep.tolist())) == len(keep)
        assert keep.min() >= 0 and keep.max() < num and np.all(np.diff(keep) > 0)
    a, b = patch_mask(view_rng(0, 0, 0, 3), 49, 0.75), patch_mask(view_rng(0, 0, 1, 3), 49, 0.75)
    assert np.array_equal(a, patch_mask(view_rng(0, 0, 0, 3), 49, 0.75)) and not np.array_equal(a, b)


def _rows(images, epochs, corrupt=()):
    """make_views' input: {id, epoch, image (PNG bytes), shard}, with the rows in `corrupt` not decodable."""
    from sslscale.corpus import _encode_png as encode_image

    raw = np.empty(len(images), dtype=object)
    raw[:] = [b"not a png" if i in corrupt else encode_image(img) for i, img in enumerate(images)]
    return {"id": np.arange(len(images), dtype=np.int64), "epoch": np.asarray(epochs, np.int64), "image": raw,
            "shard": np.full(len(images), "train-000000.tar", dtype=object)}


def test_stream_rows_carry_the_fields_each_method_layout_asks_for(tmp_path):
    from sslscale.stream import make_views, row_bytes

    imgs = _images(n=5, c=1)
    spec = ViewSpec(size=20)
    dino = {"n_views": 2, "n_local": 3, "local_size": 8, "local_scale": (0.05, 0.3)}
    mae = {"n_views": 1, "mask_ratio": 0.75, "num_patches": 25}
    for layout, fields in [(None, {"view_0": (1, 20, 20), "view_1": (1, 20, 20)}),
                           (dino, {"view_0": (1, 20, 20), "view_1": (1, 20, 20), "local_0": (1, 8, 8),
                                   "local_2": (1, 8, 8)}),
                           (mae, {"view_0": (1, 20, 20), "keep": (6,)})]:
        out = make_views(_rows(imgs, [0, 0, 1, 1, 1], corrupt={3}), seed=0, spec=spec, channels=1,
                         on_error="skip", skip_dir=str(tmp_path), layout=layout)
        assert list(out["id"]) == [0, 1, 2, 4]  # the corrupt row is left out (and recorded)
        for key, shape in fields.items():
            assert out[key].shape == (4, *shape), key
        # rows straddling two epochs get each epoch's views: the same as a batch of that epoch alone
        alone = batch_views(imgs[[2, 4]], np.array([2, 4]), seed=0, epoch=1, spec=spec, **(layout or {}))
        assert all(np.array_equal(out[k][2:], alone[k]) for k in alone)
        assert row_bytes(layout or {}, 20, 1) >= sum(v[0].nbytes for k, v in out.items() if k not in ("id", "epoch"))
    empty = make_views(_rows(imgs[:1], [0], corrupt={0}), seed=0, spec=spec, channels=1, on_error="skip",
                       skip_dir=str(tmp_path), layout=dino)
    assert empty["id"].shape == (0,) and empty["local_1"].shape == (0, 1, 8, 8)
