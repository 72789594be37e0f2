"""Reading ``torch.save`` files without running code from them.

Released ``.pth`` files are often whole mmengine / mmcv training checkpoints: besides
``state_dict`` they pickle ``meta``, ``message_hub`` (``mmengine.logging.HistoryBuffer``
objects), numpy arrays and scalars, optimizer and scheduler state. Plain
``torch.load(weights_only=True)`` refuses every class it does not know, and
``weights_only=False`` would import mmengine (not installed here) and run whatever the
pickle asks for.

:func:`safe_torch_load` stays on torch's own weights-only unpickler and only widens its
allow-list with ``torch.serialization.safe_globals``:

* data constructors that cannot run foreign code: numpy's array / scalar / dtype
  reconstruction (the entries torch's serialization docs list for numpy), ``frozenset``,
  ``slice``, ``range``, ``datetime`` values, and ``pathlib`` paths (rebuilt as *pure* paths,
  which never touch the file system);
* with ``foreign="stand_in"`` (files from the wild), every other global the pickle names,
  found statically by ``torch.serialization.get_unsafe_globals_in_checkpoint``, is mapped to
  a fresh inert :class:`ForeignObject` subclass. Its module is never imported. An ordinary
  object (pickle protocol 2: NEWOBJ + BUILD) becomes a stand-in instance that keeps its
  constructor arguments and state as plain data. CALLING a stand-in (REDUCE, the opcode a
  ``__reduce__`` payload uses to run ``os.system``, ``subprocess.run``, ``eval``, ...)
  raises :class:`~ovsam_ros.model.errors.UnsafeCheckpointError`: a data file never needs a
  call into foreign code, and nothing of it has run when the error is raised;
* globals from modules that only exist to run code (``os``, ``subprocess``, ``builtins``
  functions such as ``eval`` ...) are refused before anything is unpickled.

With ``foreign="refuse"`` (formats this package writes itself: model files, training
state) an unknown global is an error: our files never hold one, so one there means the
file is not ours or was tampered with.

:func:`read_checkpoint` adds ``.safetensors`` and clear not-found errors on top;
:func:`load_state_dict_file` keeps only the tensors under ``state_dict`` / ``model``.
"""

from __future__ import annotations

import datetime
import os
import pathlib
import pickle
import threading
from typing import Any, Callable, Dict, Iterable, List, Mapping, Optional, Tuple, Union

import torch

from .errors import CheckpointError, CheckpointNotFoundError, UnsafeCheckpointError

PathLike = Union[str, "os.PathLike[str]"]
StateDict = Dict[str, torch.Tensor]

# Modules whose globals can only mean "run something": refused up front, with a clear message.
# torch's weights-only unpickler blocks os/posix/nt/sys itself, with a less readable one.
# Anything else unknown becomes an inert stand-in, and calling one is refused anyway.
_CODE_MODULES = frozenset({
    "os", "posix", "nt", "sys", "subprocess", "builtins", "shutil", "importlib", "runpy", "pty",
    "socket", "code", "ctypes", "pickle", "_pickle", "marshal", "webbrowser",
    "commands", "popen2",  # torch maps some Python 2 names, e.g. subprocess.call -> commands.call
})


class ForeignObject:
    """Inert stand-in for an object of a class that was not imported.

    ``foreign_name`` is the class the pickle named, ``args`` what its ``__new__`` got and
    ``state`` what ``__setstate__`` / ``__dict__`` would have received (all plain data).
    """

    foreign_name = "?"

    def __new__(cls, *args: Any) -> "ForeignObject":
        inst = object.__new__(cls)
        inst.__dict__.update(args=args, state=None)
        return inst

    def __setstate__(self, state: Any) -> None:
        self.__dict__["state"] = state

    def __repr__(self) -> str:
        return f"<stand-in for {self.foreign_name}>"


class _RefusedCall(Exception):
    def __init__(self, name: str, args: Tuple[Any, ...]):
        super().__init__(name)
        self.name, self.call_args = name, args


class _StandInMeta(type):
    # NEWOBJ calls cls.__new__ directly; only REDUCE (a function call) goes through type.__call__.
    def __call__(cls, *args: Any, **kwargs: Any) -> Any:
        raise _RefusedCall(cls.foreign_name, args)


def _stand_in(name: str) -> type:
    short = name.rsplit(".", 1)[-1]
    return _StandInMeta(f"ForeignObject[{short}]", (ForeignObject,), {"foreign_name": name, "__module__": __name__})


def _data_constructors() -> List[Tuple[Callable[..., Any], str]]:
    """(object, pickled name) pairs that rebuild plain data and run no foreign code."""
    import numpy as np

    core = getattr(np, "_core", None) or np.core  # numpy 2 / numpy 1
    pairs: List[Tuple[Callable[..., Any], str]] = []
    for mod in ("numpy.core.multiarray", "numpy._core.multiarray"):  # files written under numpy 1 or 2
        pairs += [(core.multiarray.scalar, f"{mod}.scalar"), (core.multiarray._reconstruct, f"{mod}._reconstruct")]
    pairs += [(np.ndarray, "numpy.ndarray"), (np.dtype, "numpy.dtype")]
    dtypes = getattr(np, "dtypes", None)
    if dtypes is not None:
        pairs += [(getattr(dtypes, n), f"numpy.dtypes.{n}") for n in dir(dtypes) if n.endswith("DType")]
    pairs += [(frozenset, "builtins.frozenset"), (slice, "builtins.slice"), (range, "builtins.range")]
    pairs += [(getattr(datetime, n), f"datetime.{n}") for n in ("datetime", "date", "time", "timedelta", "timezone")]
    for pure, names in ((pathlib.PurePosixPath, ("PosixPath", "PurePosixPath")),
                        (pathlib.PureWindowsPath, ("WindowsPath", "PureWindowsPath"))):
        pairs += [(pure, f"{mod}.{n}") for mod in ("pathlib", "pathlib._local") for n in names]
    return pairs


_LOCK = threading.Lock()  # torch's safe-globals set is process-wide; keep one load's additions to itself


def _globals_in(path: str) -> Optional[List[str]]:
    """Globals the pickle names beyond torch's defaults, or None where a static scan is not
    possible (legacy non-zip files, opcodes torch's scanner does not know)."""
    try:
        return sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except (ValueError, pickle.UnpicklingError, RuntimeError, EOFError):
        return None


def _short_repr(args: Iterable[Any], limit: int = 120) -> str:
    text = ", ".join(repr(a) for a in args)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def safe_torch_load(path: PathLike, foreign: str = "stand_in") -> Any:
    """``torch.load`` on CPU that never runs code from the file (see the module docstring).

    ``foreign``: ``"stand_in"`` maps classes this package does not know to inert
    :class:`ForeignObject` subclasses; ``"refuse"`` raises for them. Raises
    :class:`UnsafeCheckpointError` for code-running content, :class:`CheckpointError` for
    anything else unreadable.
    """
    if foreign not in ("stand_in", "refuse"):
        raise ValueError(f"foreign must be 'stand_in' or 'refuse', got {foreign!r}")
    path = os.fspath(path)
    allowed = _data_constructors()
    known = {name for _, name in allowed}
    names = _globals_in(path)
    unknown = [n for n in (names or []) if n not in known]
    dangerous = [n for n in unknown if n.split(".", 1)[0] in _CODE_MODULES]
    if dangerous:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: its pickle references {', '.join(dangerous)}, which can only serve "
            "to run code while loading (a data file never needs it). Nothing from the file was executed.")
    if unknown and foreign == "refuse":
        raise UnsafeCheckpointError(
            f"{path}: holds Python objects besides tensors and plain data ({', '.join(unknown)}); "
            "files this package writes never do, so it is not one of ours or it was altered. "
            "Nothing from the file was executed.")
    stand_ins: Dict[str, type] = {n: _stand_in(n) for n in unknown} if foreign == "stand_in" else {}
    entries = allowed + [(cls, n) for n, cls in stand_ins.items()]
    try:
        with _LOCK, torch.serialization.safe_globals(entries):
            return torch.load(path, map_location="cpu", weights_only=True)
    except _RefusedCall as call:
        raise UnsafeCheckpointError(
            f"{path}: refused to load: its pickle calls {call.name}({_short_repr(call.call_args)}) to build an "
            "object, which would run code from outside torch/numpy; a checkpoint that holds only data never "
            "needs that (this is how malicious pickles run commands). Nothing from the file was executed."
        ) from None
    except pickle.UnpicklingError as err:
        detail = _weights_only_detail(str(err))
        raise UnsafeCheckpointError(
            f"{path}: refused to rebuild an object in its pickle: {detail}. Nothing from the file was "
            "executed; only tensors and plain data (dicts, lists, numbers, strings, numpy arrays) are read."
        ) from None
    except Exception as err:  # a truncated zip, not a torch file at all, ...
        raise CheckpointError(f"{path}: not a readable PyTorch checkpoint: {type(err).__name__}: "
                              f"{str(err).splitlines()[0] if str(err) else ''}") from err


def read_checkpoint(path: PathLike, foreign: str = "stand_in") -> Any:
    """The object in a weights file, read on CPU without running code from it.

    ``.safetensors`` files go through ``safetensors``; pickles through
    :func:`safe_torch_load` (torch's weights-only unpickler with
    numpy / plain-data constructors allowed; ``foreign="stand_in"`` turns classes this
    package does not know, e.g. mmengine's ``HistoryBuffer``, into inert stand-ins,
    ``"refuse"`` rejects them).
    """
    path = os.path.expanduser(os.fspath(path))
    if not os.path.exists(path):
        raise CheckpointNotFoundError(f"checkpoint file not found: {path}")
    if not os.path.isfile(path):
        raise CheckpointError(f"{path}: not a file")
    if path.endswith(".safetensors"):
        try:
            from safetensors.torch import load_file
        except ImportError as err:  # pragma: no cover - optional dependency
            raise CheckpointError(f"{path}: reading .safetensors needs the 'safetensors' package") from err
        try:
            return load_file(path, device="cpu")
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file: {err}") from err
    return safe_torch_load(path, foreign=foreign)


def extract_state_dict(obj: Any, path: PathLike) -> StateDict:
    """The tensor mapping inside a checkpoint (``state_dict`` / ``model`` / plain)."""
    if isinstance(obj, Mapping):
        for key in ("state_dict", "model"):
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{path}: expected a state dict, found {type(obj).__name__}")
    sd = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
    if not sd:
        raise CheckpointError(f"{path}: contains no tensors (keys: {_keys(obj)})")
    if all(k.startswith("module.") for k in sd):  # saved from DistributedDataParallel
        sd = {k[len("module.") :]: v for k, v in sd.items()}
    return sd


def load_state_dict_file(path: PathLike) -> StateDict:
    """The tensors of a weights file (under ``state_dict`` / ``model`` if present); every other
    entry (mmengine ``meta``, ``message_hub``, optimizer state, ...) is read inertly and dropped."""
    return extract_state_dict(read_checkpoint(path), path)


def _keys(obj: Mapping[Any, Any], limit: int = 10) -> str:
    keys = sorted(map(str, obj.keys()))
    return ", ".join(keys[:limit]) + (f", ... (+{len(keys) - limit} more)" if len(keys) > limit else "")


def _weights_only_detail(message: str) -> str:
    # torch wraps the unpickler's reason in a long generic text; keep the reason line.
    for line in message.splitlines():
        if "WeightsUnpickler error:" in line:
            return line.split("WeightsUnpickler error:", 1)[1].strip()
    return message.splitlines()[0] if message else "unsupported content"


__all__ = ["ForeignObject", "extract_state_dict", "load_state_dict_file", "read_checkpoint", "safe_torch_load"]
