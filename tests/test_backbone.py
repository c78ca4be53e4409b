"""Tests for the torch-free EfficientNet-Lite backbones (components/lib/modelling/backbone.py,
variants.py).

The ImageNet predictions on real photos are the end-to-end proof that the checkpoint reader,
the layout conversions, the architecture (each variant's scaling), the padding and the input
scaling are all right: a single mistake in any of them destroys the top-1 class.
"""

from __future__ import annotations

import collections
import pickle
import struct
import sys
import types
import zipfile
from pathlib import Path

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")
skimage_data = pytest.importorskip("skimage.data")
skimage_transform = pytest.importorskip("skimage.transform")

from components.lib.modelling import backbone  # noqa: E402
from components.lib.modelling.variants import (  # noqa: E402
    BACKBONES,
    BLOCK_ARGS,
    DEFAULT_BACKBONE,
    BackboneVariant,
    get_variant,
    input_size,
)

ESPRESSO = 967
CAT_CLASSES = {281, 282, 285}  # tabby, tiger cat, Egyptian Mau
LITE0 = "efficientnet-lite0"
# Trainable parameters (BatchNorm's moving statistics left out) of the reference EfficientNet-Lite
# PyTorch port (d-li14/efficientnet-lite.pytorch: 4.652M, 5.417M, 6.092M), and every element of
# the checkpoint but the num_batches_tracked counters (Keras' count_params).
PARAMETERS = {
    "efficientnet-lite0": (4_652_008, 4_694_024),
    "efficientnet-lite1": (5_416_680, 5_470_344),
    "efficientnet-lite2": (6_092_072, 6_150_168),
}


def _photo(name: str, size: int = 224) -> np.ndarray:
    """A scikit-image sample photo as a (1, size, size, 3) float batch in [0, 255]."""
    img = getattr(skimage_data, name)()
    img = skimage_transform.resize(img, (size, size), anti_aliasing=True, preserve_range=True)
    return img[None].astype("float32")


@pytest.fixture(scope="module")
def state() -> dict[str, np.ndarray]:
    return backbone.read_torch_legacy_state_dict(get_variant(LITE0).weights_path())


@pytest.fixture(
    scope="module",
    # Lite0 in the fast tier; the larger variants' weight packages in the slow one.
    params=[
        name if name == LITE0 else pytest.param(name, marks=pytest.mark.slow)
        for name, spec in BACKBONES.items()
        if isinstance(spec, BackboneVariant)
    ],
)
def classifier(request: pytest.FixtureRequest) -> keras.Model:
    """Each variant with its ImageNet head, at its native size."""
    return backbone.build_efficientnet_lite(request.param, include_top=True)


@pytest.fixture(scope="module")
def features_160() -> keras.Model:
    return backbone.build_efficientnet_lite(LITE0, (160, 160, 3))


# ------------------------------------------------------------------------- checkpoint reader


def test_state_dict_contents(state: dict[str, np.ndarray]) -> None:
    # 296 entries = 247 real tensors + 49 BatchNorm num_batches_tracked counters (one per BN).
    assert len(state) == 296
    counters = [k for k in state if k.endswith("num_batches_tracked")]
    assert len(counters) == 49
    assert all(state[k].dtype == np.int64 and state[k].shape == () for k in counters)
    assert next(iter(state)) == "_conv_stem.weight"
    assert state["_conv_stem.weight"].shape == (32, 3, 3, 3)
    assert state["_conv_stem.weight"].dtype == np.float32
    assert state["_fc.weight"].shape == (1000, 1280)
    # 4,694,073 counts every element of every entry: weights, biases, BN running mean/var and
    # the 49 scalar counters. Without the counters it is 4,694,024, which is what Keras counts.
    assert sum(v.size for v in state.values()) == 4_694_073
    assert sum(v.size for k, v in state.items() if k not in counters) == 4_694_024
    assert all(np.isfinite(v).all() for v in state.values())


def _write_fake_legacy_file(
    path: Path, tensors: dict[str, tuple[str, int, tuple[int, ...], tuple[int, ...]]], storages
) -> None:
    """Write a legacy torch file the way ``torch.save`` did before 1.6, without torch.

    ``tensors``: name -> (storage key, offset, size, stride); ``storages``: key -> 1-D array.
    Fake ``torch`` modules exist only while pickling so the globals get torch's names.
    """
    fake_torch = types.ModuleType("torch")
    fake_utils = types.ModuleType("torch._utils")

    def _rebuild_tensor_v2(*args):  # pragma: no cover - never called, only referenced
        raise AssertionError

    _rebuild_tensor_v2.__module__ = "torch._utils"
    _rebuild_tensor_v2.__qualname__ = "_rebuild_tensor_v2"
    fake_utils._rebuild_tensor_v2 = _rebuild_tensor_v2
    storage_types = {}
    for dtype, type_name in ((np.float32, "FloatStorage"), (np.int64, "LongStorage")):
        cls = type(type_name, (), {"__module__": "torch"})
        setattr(fake_torch, type_name, cls)
        storage_types[np.dtype(dtype)] = cls
    fake_torch._utils = fake_utils

    class Storage:
        def __init__(self, key: str, array: np.ndarray) -> None:
            self.key, self.array = key, array

    class Tensor:
        def __init__(self, storage, offset, size, stride) -> None:
            self.args = (storage, offset, size, stride, False, collections.OrderedDict())

        def __reduce__(self):
            return (_rebuild_tensor_v2, self.args)

    class LegacyPickler(pickle.Pickler):
        def persistent_id(self, obj):
            if isinstance(obj, Storage):
                cls = storage_types[obj.array.dtype]
                return ("storage", cls, obj.key, "cpu", obj.array.size, None)
            return None

    storage_objs = {k: Storage(k, np.asarray(a)) for k, a in storages.items()}
    state = collections.OrderedDict(
        (name, Tensor(storage_objs[key], off, size, stride))
        for name, (key, off, size, stride) in tensors.items()
    )
    saved = sys.modules.get("torch"), sys.modules.get("torch._utils")
    sys.modules["torch"], sys.modules["torch._utils"] = fake_torch, fake_utils
    try:
        with open(path, "wb") as fh:
            pickle.dump(0x1950A86A20F9469CFC6C, fh, protocol=2)
            pickle.dump(1001, fh, protocol=2)
            sys_info = {"protocol_version": 1001, "little_endian": True, "type_sizes": {}}
            pickle.dump(sys_info, fh, protocol=2)
            LegacyPickler(fh, protocol=2).dump(state)
            keys = sorted(storage_objs)
            pickle.dump(keys, fh, protocol=2)
            for key in keys:
                array = storage_objs[key].array
                fh.write(struct.pack("<q", array.size))
                fh.write(array.astype(array.dtype.newbyteorder("<")).tobytes())
    finally:
        for name, module in zip(("torch", "torch._utils"), saved, strict=True):
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module


def test_reader_honours_offsets_and_strides(tmp_path: Path) -> None:
    flat = np.arange(20, dtype=np.float32)
    path = tmp_path / "views.pth"
    _write_fake_legacy_file(
        path,
        {
            "plain": ("0", 0, (2, 3), (3, 1)),
            "offset": ("0", 5, (3, 2), (2, 1)),
            "transposed": ("0", 0, (3, 2), (1, 3)),  # a .t() view: not contiguous
            "strided": ("0", 1, (2, 2), (10, 3)),
            "counter": ("1", 0, (), ()),
        },
        {"0": flat, "1": np.array([7], dtype=np.int64)},
    )
    out = backbone.read_torch_legacy_state_dict(str(path))
    assert list(out) == ["plain", "offset", "transposed", "strided", "counter"]
    np.testing.assert_array_equal(out["plain"], flat[:6].reshape(2, 3))
    np.testing.assert_array_equal(out["offset"], flat[5:11].reshape(3, 2))
    np.testing.assert_array_equal(out["transposed"], flat[:6].reshape(2, 3).T)
    np.testing.assert_array_equal(out["strided"], [[1, 4], [11, 14]])
    assert out["counter"].dtype == np.int64 and out["counter"].item() == 7
    assert out["transposed"].flags.c_contiguous and out["transposed"].flags.owndata


def test_reader_rejects_view_past_storage(tmp_path: Path) -> None:
    path = tmp_path / "bad_view.pth"
    _write_fake_legacy_file(
        path, {"w": ("0", 4, (2, 3), (3, 1))}, {"0": np.zeros(6, dtype=np.float32)}
    )
    with pytest.raises(ValueError, match="runs past its storage"):
        backbone.read_torch_legacy_state_dict(str(path))


def test_reader_rejects_non_torch_file(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("definitely not a checkpoint\n")
    with pytest.raises(ValueError, match="not a legacy torch file"):
        backbone.read_torch_legacy_state_dict(str(path))


def test_reader_rejects_other_pickles(tmp_path: Path) -> None:
    path = tmp_path / "other.pkl"
    path.write_bytes(pickle.dumps({"a": 1}))
    with pytest.raises(ValueError, match="magic number"):
        backbone.read_torch_legacy_state_dict(str(path))


def test_reader_rejects_zip_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "new_format.pth"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"")
    with pytest.raises(ValueError, match="zip archive"):
        backbone.read_torch_legacy_state_dict(str(path))


def test_reader_rejects_truncated_file(tmp_path: Path) -> None:
    path = tmp_path / "truncated.pth"
    path.write_bytes(Path(get_variant(LITE0).weights_path()).read_bytes()[:1_000_000])
    with pytest.raises(ValueError, match="truncated"):
        backbone.read_torch_legacy_state_dict(str(path))


# ------------------------------------------------------------------------------- variants


def test_variants_scale_b0_as_the_reference_builder() -> None:
    """Repeats and channels of each stage: what the checkpoints hold (tensorflow/tpu
    efficientnet_lite_builder: Lite1 = depth 1.1, Lite2 = width 1.1 and depth 1.2, first and
    last stages and the stem fixed)."""
    lite0, lite1, lite2 = (get_variant(f"efficientnet-lite{n}") for n in range(3))
    assert lite0.stages == BLOCK_ARGS
    assert [stage[-1] for stage in lite1.stages] == [1, 3, 3, 4, 4, 5, 1]
    assert [stage[4] for stage in lite1.stages] == [16, 24, 40, 80, 112, 192, 320]
    assert [stage[-1] for stage in lite2.stages] == [1, 3, 3, 4, 4, 5, 1]
    assert [stage[4] for stage in lite2.stages] == [16, 24, 48, 88, 120, 208, 352]
    assert [stage[3] for stage in lite2.stages] == [32, 16, 24, 48, 88, 120, 208]
    assert (lite0.num_blocks, lite1.num_blocks, lite2.num_blocks) == (16, 21, 21)
    assert [v.native_image_size for v in (lite0, lite1, lite2)] == [224, 240, 260]
    assert DEFAULT_BACKBONE in BACKBONES


def test_image_size_defaults_to_the_backbones_native_size() -> None:
    assert input_size("efficientnet-lite1") == 240
    assert input_size("efficientnet-lite2", 0) == 260
    assert input_size("efficientnet-lite2", 160) == 160
    with pytest.raises(ValueError, match="native size"):
        input_size(LITE0, -1)
    assert input_size("mobilenet-v3-small") == 224
    with pytest.raises(ValueError, match="choose one of efficientnet-lite0, efficientnet-lite1"):
        input_size("efficientnet-b7")


# ---------------------------------------------------------------------------------- model


def _native_photo(classifier: keras.Model, name: str) -> np.ndarray:
    return _photo(name, classifier.input_shape[1])


def _predict(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """One eager call: for a single batch, faster than ``predict``'s traced loop."""
    return keras.ops.convert_to_numpy(model(batch, training=False))


def test_coffee_is_espresso(classifier: keras.Model) -> None:
    probs = _predict(classifier, _native_photo(classifier, "coffee"))[0]
    assert probs.shape == (1000,)
    assert np.isclose(probs.sum(), 1.0, atol=1e-4)
    assert int(np.argmax(probs)) == ESPRESSO
    assert probs[ESPRESSO] > 0.5


def test_chelsea_is_a_cat(classifier: keras.Model) -> None:
    probs = _predict(classifier, _native_photo(classifier, "chelsea"))[0]
    assert int(np.argmax(probs)) in CAT_CLASSES


def test_classifier_param_count(classifier: keras.Model) -> None:
    trainable, total = PARAMETERS[classifier.name.removesuffix("_imagenet").replace("_", "-")]
    assert sum(int(np.prod(w.shape)) for w in classifier.trainable_weights) == trainable
    assert classifier.count_params() == total  # every checkpoint element but the counters


def test_features_model_at_160(features_160: keras.Model) -> None:
    assert features_160.name == "efficientnet_lite0"
    assert features_160.output_shape == (None, backbone.FEATURE_DIM)
    feats = _predict(features_160, _photo("coffee", 160))
    assert feats.shape == (1, 1280)
    assert np.isfinite(feats).all()
    assert feats.min() >= 0.0 and feats.max() <= 6.0  # pooled ReLU6 activations
    assert feats.std() > 0.1  # loaded weights give an informative, non-constant embedding


@pytest.mark.parametrize("classifier", [LITE0], indirect=True)
def test_features_feed_the_imagenet_head(classifier: keras.Model) -> None:
    """The features model is exactly the classifier minus its head (same weights, same graph)."""
    features = backbone.build_efficientnet_lite(LITE0)
    x = _photo("chelsea")
    feats = _predict(features, x)
    kernel, bias = classifier.get_layer("predictions").get_weights()
    expected = _predict(classifier, x)
    np.testing.assert_allclose(tf.nn.softmax(feats @ kernel + bias).numpy(), expected, atol=1e-5)


def test_random_init_differs_from_imagenet(features_160: keras.Model) -> None:
    random = backbone.build_efficientnet_lite(LITE0, (160, 160, 3), weights=None)
    trained = features_160.get_layer("stem_conv").get_weights()[0]
    assert not np.allclose(random.get_layer("stem_conv").get_weights()[0], trained)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"input_shape": (16, 16, 3)}, ">= 32"),
        ({"input_shape": (224, 224, 1)}, r"\(height, width, 3\)"),
        ({"weights": "/some/file.h5"}, "'imagenet' or None"),
        ({"variant": "efficientnet-lite9"}, "unknown backbone 'efficientnet-lite9'"),
    ],
)
def test_build_rejects_bad_arguments(kwargs: dict, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        backbone.build_efficientnet_lite(**{"variant": LITE0, **kwargs})


def test_loader_fails_loudly(state: dict[str, np.ndarray]) -> None:
    lite0 = get_variant(LITE0)
    model = backbone.build_efficientnet_lite(LITE0, (64, 64, 3), weights=None)
    backbone._load_weights(model, lite0, state, include_top=False)  # the real thing loads

    extra = dict(state, **{"_blocks.16._bn1.weight": np.ones(320, np.float32)})
    with pytest.raises(ValueError, match="unused"):
        backbone._load_weights(model, lite0, extra, include_top=False)

    bad_shape = dict(state, **{"_bn0.weight": np.ones(33, np.float32)})
    with pytest.raises(ValueError, match="shape"):
        backbone._load_weights(model, lite0, bad_shape, include_top=False)

    missing = {k: v for k, v in state.items() if k != "_conv_head.weight"}
    with pytest.raises(ValueError, match="missing"):
        backbone._load_weights(model, lite0, missing, include_top=False)

    lite1 = backbone.build_efficientnet_lite("efficientnet-lite1", (64, 64, 3), weights=None)
    with pytest.raises(ValueError, match="efficientnet-lite1 weight loading failed"):
        backbone._load_weights(lite1, get_variant("efficientnet-lite1"), state, include_top=False)


# Keras' own .keras writer trips a numpy 2 DeprecationWarning per variable; not ours.
@pytest.mark.filterwarnings("ignore:__array__ implementation:DeprecationWarning")
@pytest.mark.slow
def test_exports_inside_a_larger_model(features_160: keras.Model, tmp_path: Path) -> None:
    """The backbone must survive SavedModel export as part of the transfer-learning model."""
    inputs = keras.Input((160, 160, 3))
    outputs = keras.layers.Dense(3, activation="softmax")(features_160(inputs))
    model = keras.Model(inputs, outputs)
    x = _photo("coffee", 160)
    expected = model.predict(x, verbose=0)

    export_dir = str(tmp_path / "saved_model")
    model.export(export_dir, verbose=False)
    reloaded = tf.saved_model.load(export_dir)
    np.testing.assert_allclose(reloaded.serve(tf.constant(x)).numpy(), expected, atol=1e-5)

    keras_path = str(tmp_path / "model.keras")
    model.save(keras_path)
    np.testing.assert_allclose(
        keras.models.load_model(keras_path).predict(x, verbose=0), expected, atol=1e-5
    )
