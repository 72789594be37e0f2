"""Which weight files a model needs (the keys and paths of its YAML, as the loader reads them), and
the model YAML that reads them from another folder (``ovsam weights download --dir``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

#: First line of a YAML written by ``--dir``: only such a file is ever overwritten.
WRITTEN_MARK = "# Written by `ovsam weights download"


@dataclass
class ModelFiles:
    model: str  # as the user named it
    config: Path  # the model YAML (or checkpoint) it resolves to
    files: list[tuple[str, Path]]  # (YAML key, path the loader reads)
    backend: str = "torch"


def model_files(model: str) -> ModelFiles:
    """The weight files ``model`` (a bundled name, a YAML or checkpoint path) loads, by the loader's
    own rules (:meth:`ovsam_ros.loading.ModelSpec.weight_fields`: ``~``, ``$VARS``, paths relative to
    the YAML's folder, ``ovsam_ros://`` package files)."""
    from ovsam_ros.loading import load_specs, resolve_config_path

    config = resolve_config_path(model)
    spec, _ = load_specs(config)
    fields = spec.weight_fields() if spec.backend == "torch" else [
        (k, p) for k, p in spec.weight_fields() if k == "clip_weights"]  # ONNX graphs come from `ovsam export`
    return ModelFiles(model, config, [(key, Path(path)) for key, path in fields], spec.backend)


def in_folder(files: list[tuple[str, Path]], folder: Path) -> list[tuple[str, Path]]:
    """The same files under ``folder`` (by file name)."""
    return [(key, folder / path.name) for key, path in files]


def write_model_yaml(plan: ModelFiles, folder: Path, command: str) -> tuple[Path, bool]:
    """``folder/<model>.yaml``: the model's YAML with its weight paths in ``folder`` and its other
    relative paths made absolute (the copy lives elsewhere). Returns (path, written); an existing
    file not written by this command is left alone."""
    from ovsam_ros.loading import MODEL_PATH_FIELDS, PREDICTOR_PATH_FIELDS, load_specs

    target = folder / f"{plan.config.stem}.yaml"
    if target.exists():
        try:
            first = target.read_text(encoding="utf-8").split("\n", 1)[0]
        except OSError:
            first = ""
        if not first.startswith(WRITTEN_MARK):
            return target, False
    data = yaml.safe_load(plan.config.read_text(encoding="utf-8")) or {}
    model_spec, predictor_spec = load_specs(plan.config)
    model, predictor = data.setdefault("model", {}) or {}, data.get("predictor") or {}
    for section, spec, names in ((model, model_spec, MODEL_PATH_FIELDS), (predictor, predictor_spec, PREDICTOR_PATH_FIELDS)):
        for name in names:
            if section.get(name):
                section[name] = getattr(spec, name)
    if predictor.get("vocabulary"):
        predictor["vocabulary"] = predictor_spec.vocabulary
    for key, path in in_folder(plan.files, folder):
        model[key] = str(path.resolve())
    data["model"] = model
    if predictor:
        data["predictor"] = predictor
    body = yaml.safe_dump(data, sort_keys=False)
    folder.mkdir(parents=True, exist_ok=True)
    target.write_text(f"{WRITTEN_MARK}` ({command}): {plan.config}\n# with its weight files in this folder.\n{body}",
                      encoding="utf-8")
    return target, True
