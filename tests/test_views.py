from dataclasses import replace

import numpy as np

from sslscale.data.views import SLOTS, ViewSpec, batch_views, patch_masks, uniforms

SPEC = ViewSpec(size=16, blur=0.5, grayscale=0.5)
PLAIN = dict(crop_min_scale=1.0, flip=0.0, jitter=0.0, grayscale=0.0, blur=0.0)  # a full-area crop, nothing else


def _images(n=4, c=3, seed=0, side=20):
    return np.random.default_rng(seed).integers(0, 256, (n, side, side, c), dtype=np.uint8)


def test_views_are_a_function_of_seed_epoch_id():
    imgs, ids = _images(), np.arange(10, 14)
    a = batch_views(imgs, ids, seed=1, epoch=2, spec=SPEC)
    b = batch_views(imgs[::-1], ids[::-1], seed=1, epoch=2, spec=SPEC)  # re-ordered stream
    assert np.array_equal(a["view_0"], b["view_0"][::-1]) and np.array_equal(a["view_1"], b["view_1"][::-1])
    c = batch_views(imgs, ids, seed=1, epoch=3, spec=SPEC)
    assert not np.array_equal(a["view_0"], c["view_0"])


def test_a_batch_is_its_images_alone():
    """Vectorised over the batch (and chunked), yet each image's views are what it would get on its own."""
    imgs, ids = _images(n=7, side=40), np.arange(100, 107)
    spec = ViewSpec(size=32, blur=0.5, solarize=0.5)
    whole = batch_views(imgs, ids, seed=3, epoch=1, spec=spec, n_local=1, local_size=12)
    for i in range(7):
        alone = batch_views(imgs[i : i + 1], ids[i : i + 1], seed=3, epoch=1, spec=spec, n_local=1, local_size=12)
        assert all(np.array_equal(whole[k][i : i + 1], alone[k]) for k in whole)


def test_a_blurred_view_does_not_depend_on_its_chunk():
    """At 96-128 px a chunk holds several images with sigmas up to 1.1 px: each keeps its own kernel."""
    imgs, ids = _images(n=24, side=140), np.arange(24)
    for size in (96, 128):
        spec = ViewSpec(size=size, blur=1.0)
        whole = batch_views(imgs, ids, seed=0, epoch=0, spec=spec)["view_0"]
        alone = [batch_views(imgs[i : i + 1], ids[i : i + 1], seed=0, epoch=0, spec=spec)["view_0"] for i in range(24)]
        assert np.array_equal(whole, np.concatenate(alone)), size


def test_uniforms_are_uniform_and_independent():
    u = uniforms(0, 0, np.arange(2000), 0, SLOTS)
    assert u.shape == (2000, SLOTS) and u.min() >= 0 and u.max() < 1
    assert abs(u.mean() - 0.5) < 0.01 and abs(u.std() - np.sqrt(1 / 12)) < 0.01
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.1  # slots of one view
    assert abs(np.corrcoef(u[:, 0], uniforms(0, 0, np.arange(2000), 1, 1)[:, 0])[0, 1]) < 0.1  # views
    assert abs(np.corrcoef(u[:, 0], uniforms(0, 1, np.arange(2000), 0, 1)[:, 0])[0, 1]) < 0.1  # epochs
    assert abs(np.corrcoef(u[:, 0], uniforms(1, 0, np.arange(2000), 0, 1)[:, 0])[0, 1]) < 0.1  # seeds
    assert np.array_equal(uniforms(5, 6, np.array([7, 8]), 9, 4)[1], uniforms(5, 6, np.array([8]), 9, 4)[0])


def test_shapes_dtypes_and_two_views_differ():
    out = batch_views(_images(c=1), np.arange(4), seed=0, epoch=0, spec=SPEC)
    assert out["view_0"].shape == (4, 1, 16, 16) and out["view_0"].dtype == np.uint8
    assert not np.array_equal(out["view_0"], out["view_1"])


def test_a_full_area_crop_at_the_same_size_is_the_image_and_a_flip_mirrors_it():
    imgs = _images(3)
    out = batch_views(imgs, np.arange(3), seed=0, epoch=0, spec=ViewSpec(size=20, **PLAIN))["view_0"]
    assert np.array_equal(out, imgs.transpose(0, 3, 1, 2))
    flipped = batch_views(imgs, np.arange(3), seed=0, epoch=0, spec=ViewSpec(size=20, **{**PLAIN, "flip": 1.0}))
    assert np.array_equal(flipped["view_0"], imgs.transpose(0, 3, 1, 2)[..., ::-1])


def test_crops_keep_area_and_aspect_in_range():
    """A bright square on black: its size in a view tells the crop's scale (upscaled by size / crop side)."""
    img = np.zeros((1, 64, 64, 1), np.uint8)
    img[0, 16:48, 16:48] = 255
    spec = ViewSpec(size=64, **{**PLAIN, "crop_min_scale": 0.3})
    for sid in range(40):
        view = batch_views(img, np.array([sid]), seed=0, epoch=0, spec=spec)["view_0"][0, 0]
        bright = view > 127
        rows, cols = bright.any(axis=1).sum(), bright.any(axis=0).sum()
        if 0 < rows < 64 and 0 < cols < 64:  # the square lies wholly inside the crop
            # square side 32 source px seen as rows x cols view px: crop side = 32 * 64 / seen
            crop_h, crop_w = 32 * 64 / rows, 32 * 64 / cols
            assert 0.3 * 64 * 64 * 0.8 <= crop_h * crop_w <= 64 * 64 * 1.2
            assert 3 / 4 * 0.8 <= crop_w / crop_h <= 4 / 3 * 1.25


def test_grayscale_jitter_and_solarize():
    imgs = _images(8, side=16)
    gray = batch_views(imgs, np.arange(8), seed=0, epoch=0,
                       spec=ViewSpec(size=16, **{**PLAIN, "grayscale": 1.0}))["view_0"]
    assert np.array_equal(gray[:, 0], gray[:, 1]) and np.array_equal(gray[:, 1], gray[:, 2])
    bright = np.full((8, 16, 16, 3), 100, np.uint8)
    jit = batch_views(bright, np.arange(8), seed=0, epoch=0,
                      spec=ViewSpec(size=16, **{**PLAIN, "jitter": 0.4, "jitter_prob": 1.0}))["view_0"]
    assert 100 * 0.6 - 1 <= jit.min() and jit.max() <= 100 * 1.4 + 1 and len(np.unique(jit)) > 1
    ramp = np.arange(256, dtype=np.uint8).reshape(1, 16, 16, 1)
    sol = batch_views(ramp, np.arange(1), seed=0, epoch=0,
                      spec=ViewSpec(size=16, **{**PLAIN, "solarize": 1.0}))["view_0"].ravel()
    assert np.array_equal(sol, np.where(ramp.ravel() >= 128, 255 - ramp.ravel(), ramp.ravel()))


def test_each_view_may_have_its_own_strengths():
    """per_view: BYOL's asymmetric views. Each view is the view its own spec gives, drawn from the same uniforms
    (a function of its index), so a view without overrides is unchanged; a local view takes its overrides too."""
    imgs, ids = _images(6, side=16), np.arange(6)
    spec = ViewSpec(size=16, **PLAIN)
    plain = batch_views(imgs, ids, seed=2, epoch=0, spec=spec, n_local=1, local_size=8)
    own = batch_views(imgs, ids, seed=2, epoch=0, spec=spec, n_local=1, local_size=8,
                      per_view=({}, {"solarize": 1.0}, {"grayscale": 1.0}))
    solar = batch_views(imgs, ids, seed=2, epoch=0, spec=replace(spec, solarize=1.0))
    assert np.array_equal(own["view_0"], plain["view_0"]) and np.array_equal(own["view_1"], solar["view_1"])
    assert not np.array_equal(own["view_1"], plain["view_1"])
    assert np.array_equal(own["local_0"][:, 0], own["local_0"][:, 2]) and not np.array_equal(own["local_0"],
                                                                                             plain["local_0"])


def test_blur_sigma_is_at_most_two_pixels_at_224():
    """SimCLR's blur: sigma in [0.1, 2.0] px at 224 px. A single bright pixel spreads over ~6 sigma at most."""
    img = np.zeros((1, 224, 224, 1), np.uint8)
    img[0, 112, 112] = 255
    spec = ViewSpec(size=224, **{**PLAIN, "blur": 1.0})
    for sid in range(10):
        view = batch_views(img, np.array([sid]), seed=0, epoch=0, spec=spec)["view_0"][0, 0].astype(float)
        assert view.sum() > 0 and np.count_nonzero(view[112] > 0) <= 13  # radius 3 sigma <= 6 px
        assert np.isclose(view.sum(), 255, rtol=0.1)  # a blur moves light, it does not make or lose it


def test_batch_views_local_crops_and_mask():
    imgs, ids = _images(), np.arange(10, 14)
    spec = ViewSpec(size=16, solarize=0.5)
    plain = batch_views(imgs, ids, seed=1, epoch=2, spec=spec)
    out = batch_views(imgs, ids, seed=1, epoch=2, spec=spec, n_local=2, local_size=8, patch_mask_ratio=0.75,
                      num_patches=16)
    assert sorted(out) == ["keep", "local_0", "local_1", "view_0", "view_1"]
    assert out["local_1"].shape == (4, 3, 8, 8) and out["local_1"].dtype == np.uint8
    assert np.array_equal(out["view_0"], plain["view_0"]) and np.array_equal(out["view_1"], plain["view_1"])
    assert not np.array_equal(out["local_0"], out["local_1"])
    assert out["keep"].shape == (4, 4) and out["keep"].dtype == np.int64
    again = batch_views(imgs[::-1], ids[::-1], seed=1, epoch=2, spec=spec, n_local=2, local_size=8,
                        patch_mask_ratio=0.75, num_patches=16)  # re-ordered stream
    assert all(np.array_equal(out[k], again[k][::-1]) for k in out)
    assert batch_views(imgs[:0], ids[:0], seed=0, epoch=0, spec=spec, n_local=1)["local_0"].shape == (0, 3, 8, 8)


def test_patch_masks_keep_exactly_the_right_count():
    for num, ratio in [(49, 0.75), (16, 0.5), (10, 0.0), (64, 0.9)]:
        keep = patch_masks(uniforms(0, 0, np.arange(5), 3, num), ratio)
        assert keep.shape == (5, round(num * (1 - ratio)))
        assert all(len(set(row.tolist())) == len(row) for row in keep)
        assert keep.min() >= 0 and keep.max() < num and np.all(np.diff(keep, axis=1) > 0)
    a = patch_masks(uniforms(0, 0, np.arange(2), 3, 49), 0.75)
    assert np.array_equal(a, patch_masks(uniforms(0, 0, np.arange(2), 3, 49), 0.75)) and not np.array_equal(a[0], a[1])
def _rows(images, epochs, corrupt=()):
    """make_views' input: {id, epoch, raw (PNG bytes), shard}, with the rows in `corrupt` not decodable."""
    from sslscale.data.modalities import Image

    encode_image = Image("image", {"kind": "image", "shape": list(images.shape[1:])}).encode

    raw = np.empty(len(images), dtype=object)
    for i, img in enumerate(images):  # one tuple of member bytes per record
        raw[i] = (b"not a png" if i in corrupt else encode_image(img),)
    return {"id": np.arange(len(images), dtype=np.int64), "epoch": np.asarray(epochs, np.int64), "raw": raw,
            "shard": np.full(len(images), "train-000000.tar", dtype=object)}


def test_stream_rows_carry_the_fields_each_method_layout_asks_for(tmp_path):
    from sslscale.data.modalities import Image, ImageLayout
    from sslscale.data.stream import Part, make_views, row_bytes

    imgs = _images(n=5, c=1)
    spec = ViewSpec(size=20)
    field = Image("image", {"kind": "image", "encoding": "png", "shape": [20, 20, 1], "dtype": "uint8"})
    dino = ImageLayout(n_views=2, n_local=3, local_size=8, local_scale=(0.05, 0.3))
    mae = ImageLayout(n_views=1, patch_mask_ratio=0.75, num_patches=25)
    for layout, fields in [(ImageLayout(), {"view_0": (1, 20, 20), "view_1": (1, 20, 20)}),
                           (dino, {"view_0": (1, 20, 20), "view_1": (1, 20, 20), "local_0": (1, 8, 8),
                                   "local_2": (1, 8, 8)}),
                           (mae, {"view_0": (1, 20, 20), "keep": (6,)})]:
        parts = [Part(field, layout, {"spec": spec})]
        out = make_views(_rows(imgs, [1] * 5, corrupt={3}), seed=0, parts=parts, on_error="skip",
                         skip_dir=str(tmp_path))
        assert list(out["id"]) == [0, 1, 2, 4]  # the corrupt row is left out (and recorded)
        for key, shape in fields.items():
            assert out[key].shape == (4, *shape), key
        # the block's views are those of its epoch: the same as batch_views on the good images alone
        alone = batch_views(imgs[[0, 1, 2, 4]], np.array([0, 1, 2, 4]), seed=0, epoch=1, spec=spec, **vars(layout))
        assert all(np.array_equal(out[k], alone[k]) for k in alone) and list(alone) == list(layout.fields())
        assert row_bytes(parts) >= sum(v[0].nbytes for k, v in out.items() if k not in ("id", "epoch"))
    empty = make_views(_rows(imgs[:1], [0], corrupt={0}), seed=0, parts=[Part(field, dino, {"spec": spec})],
                       on_error="skip", skip_dir=str(tmp_path))
    assert empty["id"].shape == (0,) and empty["local_1"].shape == (0, 1, 8, 8)
