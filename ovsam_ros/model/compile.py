"""Launch-overhead removal for serving on a GPU: ``torch.compile`` (CUDA graphs) with a persistent cache.

``compile_model(model, "reduce-overhead", cache_dir, device)`` compiles the image path at its
fixed input size (CLIP CNN, SAM2CLIP, FPN: static shapes, one CUDA graph each) and the prompt
decoder (dynamic prompt count; CUDA-graph trees record one graph per count seen). Inductor's
FX-graph and autotuning caches go to ``cache_dir``, and the compiled artefacts are saved there
as one "mega-cache" file after the first frame, so a node restart with a warm cache skips
compilation and autotuning.

The CUDA-graph modes (``reduce-overhead``, ``max-autotune``) only act on a CUDA device: elsewhere
they do nothing and say so (CPU runs and CI are unaffected). The inductor-only modes (``default``,
``max-autotune-no-cudagraphs``) compile on the CPU too (fused C++ kernels; slow to compile, which is
what the persistent cache is for). Outputs of CUDA-graph functions live in memory the next replay overwrites, so
the wrappers hand back clones (one device copy per call; cheap next to the launches saved).
"""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch.utils._pytree import tree_map

log = logging.getLogger(__name__)

#: Accepted ``compile`` settings (model YAML ``predictor.compile``, node parameter via the YAML).
COMPILE_MODES = ("off", "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
#: Modes that capture CUDA graphs: only meaningful on a CUDA device.
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")
_MEGA_CACHE = "ovsam_compile_artifacts.bin"
#: ``compile_cache_dir`` value meaning "the user's cache": ``$XDG_CACHE_HOME/ovsam_ros/compile``
#: (``~/.cache/ovsam_ros/compile`` when XDG_CACHE_HOME is unset or empty).
DEFAULT_CACHE = "default"


def default_compile_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/ovsam_ros/compile``, or ``~/.cache/ovsam_ros/compile`` (XDG base directory spec)."""
    base = os.environ.get("XDG_CACHE_HOME", "")
    root = Path(base) if base and os.path.isabs(base) else Path.home() / ".cache"  # relative: ignored, per spec
    return root / "ovsam_ros" / "compile"


def resolve_compile_cache_dir(value: Optional[Union[str, Path]]) -> Optional[Path]:
    """A ``compile_cache_dir`` setting -> directory: ``default`` = :func:`default_compile_cache_dir`,
    ``None`` / ``""`` / ``off`` = no persistent cache, anything else a path (``~`` and ``$VARS`` expanded)."""
    if value is None or value is False or str(value).strip() in ("", "off", "none", "null"):
        return None
    if str(value) == DEFAULT_CACHE:
        return default_compile_cache_dir()
    return Path(os.path.expandvars(os.path.expanduser(str(value))))


def check_compile_mode(mode: Optional[str]) -> str:
    mode = "off" if mode in (None, False, "", "none") else str(mode)
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {mode!r}")
    return mode


def _clone_outputs(fn: Callable[..., Any]) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        return tree_map(lambda t: t.clone() if isinstance(t, torch.Tensor) else t, fn(*args, **kwargs))

    return call


class CompileCache:
    """Inductor's on-disk caches in ``directory`` plus the saved mega-cache artefacts."""

    def __init__(self, directory: Union[str, Path]) -> None:
        self.directory = Path(os.path.expanduser(str(directory)))
        self.directory.mkdir(parents=True, exist_ok=True)
        self.saved = False
        # Inductor's own caches (generated code, compiled C++/Triton kernels) live under the same
        # directory: one place to keep or delete, and not torch's default /tmp/torchinductor_<user>,
        # which a reboot empties (a "warm" restart would then rebuild every kernel). A directory
        # the user chose (environment) is kept. Torch writes its default into the environment
        # the first time anything asks for the cache dir, so that value counts as unset.
        from torch._inductor.runtime.cache_dir_utils import default_cache_dir

        current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
        if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
            os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(self.directory / "inductor")
        os.environ.setdefault("TRITON_CACHE_DIR", str(self.directory / "triton"))
        import torch._inductor.config as inductor_config

        inductor_config.fx_graph_cache = True
        inductor_config.autotune_local_cache = True
        self.loaded = self._load()

    def _load(self) -> bool:
        path = self.directory / _MEGA_CACHE
        if not path.is_file():
            return False
        try:
            info = torch.compiler.load_cache_artifacts(path.read_bytes())
        except Exception as error:  # a stale or foreign cache only costs a recompilation
            info, reason = None, str(error)
        else:
            reason = "unreadable (torch logged why)"
        if info is None:
            log.warning("compile cache %s not usable (%s): compiling from scratch", path, reason)
            return False
        log.info("compile cache: loaded %s", path)
        return True

    def save(self) -> Optional[Path]:
        """Write the artefacts compiled so far (after the first frame); returns the file."""
        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is None:
            return None
        data, _info = artifacts
        path = self.directory / _MEGA_CACHE
        tmp = path.with_suffix(".tmp")
        tmp.write_bytes(data)
        tmp.replace(path)
        self.saved = True
        return path


def compile_model(model: Any, mode: str, cache_dir: Optional[Union[str, Path]], device: torch.device) -> Optional[CompileCache]:
    """Compile ``model``'s image path and decoder in place; returns the cache (or None).

    CUDA-graph modes compile on CUDA only (elsewhere: logged, nothing done, returns None).
    ``cache_dir``: a directory, or ``default`` (the user's cache), or None (no persistent cache)."""
    mode = check_compile_mode(mode)
    if mode == "off":
        return None
    cuda = torch.device(device).type == "cuda"
    if mode in CUDA_GRAPH_MODES and not cuda:
        log.info("compile=%s ignored on %s: CUDA graphs only exist on a GPU (compile=default compiles for "
                 "the CPU)", mode, device)
        return None
    directory = resolve_compile_cache_dir(cache_dir)
    cache = CompileCache(directory) if directory is not None else None
    graphs = mode in CUDA_GRAPH_MODES

    def wrap(fn: Callable[..., Any], dynamic: bool) -> Callable[..., Any]:
        compiled = torch.compile(fn, mode=mode, dynamic=dynamic, fullgraph=False)
        return _clone_outputs(compiled) if graphs else compiled

    model.backbone.forward = wrap(model.backbone.forward, False)
    model.sam2clip.forward = wrap(model.sam2clip.forward, False)
    model.clip2sam.fpn.forward = wrap(model.clip2sam.fpn.forward, False)
    model.decoder.forward = wrap(model.decoder.forward, True)
    model._compile_mode = mode
    return cache
