"""Class vocabularies and their CLIP text embeddings (pure PyTorch, no ROS).

A :class:`Vocabulary` is an ordered list of classes; each class has a display
name and one or more synonyms (the strings that are actually put through the
CLIP text tower). Built-in vocabularies:

* ``coco`` (80 classes; ``coco_base`` 48, ``coco_novel`` 17, ``coco_ov`` the 65
  base+novel classes of the open-vocabulary COCO split),
* ``lvis`` (LVIS v1, 1203 classes; ``lvis_base`` 866, ``lvis_novel`` the 337
  rare classes),
* ``imagenet21k`` (21,843 WordNet synsets; built at run time from the synset and
  lemma lists that ``timm`` ships, nothing is downloaded),
* ``shapes`` (the synthetic world of the bundled demo model: 6 colours x 6 shapes;
  ``shapes_base`` 30, ``shapes_novel`` the 6 held-out colour-shape pairs).

Users can also pass a ``.txt`` file (one class per line, synonyms separated by
``,``), a ``.json`` file (this package's format, a COCO/LVIS annotation file's
``categories``, or a plain list) or an inline string such as
``"red cup, person, door handle"`` (``"inline:cup"`` for one class). A single
unknown word or a missing path is an error, never a one-class vocabulary.
See :func:`load_vocabulary`.

Text embeddings follow the reference recipe: every synonym is put into every
prompt template, each CLIP text feature is L2-normalised, the features are
averaged over the templates and renormalised. The result is stored as
``[classes, max_synonyms, dim]`` with zero padding and a boolean mask
(:class:`TextEmbeddings`). :class:`TextEmbeddingCache` keeps them on disk,
keyed by model, weights, vocabulary and templates, because encoding 20K+ names
with a large text tower takes minutes on a CPU.

Short class-name prompts need far fewer than CLIP's 77 tokens. CLIP text towers
use a causal attention mask and read the feature at the end-of-text token, so
the padding after that token never influences the result: cutting the context
to the longest prompt of a batch gives the same embedding, several times
faster. :class:`OpenCLIPTextEncoder` implements that for open_clip models and
:func:`check_truncation` measures it on a real model.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import os
import re
import stat
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from ovsam_ros.files import atomic_write

__all__ = [
    "BACKGROUND_NAME",
    "BUILTIN_VOCABULARIES",
    "INLINE_PREFIX",
    "SINGLE_TEMPLATES",
    "SPLITS",
    "TEMPLATE_SETS",
    "VILD_TEMPLATES",
    "VOCABULARY_DIR",
    "OpenCLIPTextEncoder",
    "TextEmbeddingCache",
    "TextEmbeddings",
    "Vocabulary",
    "VocabularyWarning",
    "builtin_names",
    "classes_seen_in_training",
    "check_synonym_options",
    "check_truncation",
    "classify_spec",
    "clean_name",
    "encode_vocabulary",
    "file_identity",
    "get_templates",
    "load_vocabulary",
    "looks_like_path",
    "name_prompts",
    "split_synonyms",
    "unknown_vocabulary_error",
]

#: Directory holding the shipped class-list files (``coco.json``, ``lvis.json``).
VOCABULARY_DIR = Path(__file__).resolve().parents[1] / "data" / "vocabularies"

#: Allowed values of :attr:`Vocabulary.split`.
SPLITS = ("base", "novel", "unused")

#: Name used for the extra "no object" column appended by the classifier.
BACKGROUND_NAME = "background"

#: The 14 ViLD prompt templates (the set used by ViLD-style open-vocabulary
#: detectors and segmenters, and by the OVSAM reference for its classifiers).
VILD_TEMPLATES: Tuple[str, ...] = (
    "a photo of a {}.",
    "This is a photo of a {}",
    "There is a {} in the scene",
    "There is the {} in the scene",
    "a photo of a {} in the scene",
    "a photo of a small {}.",
    "a photo of a medium {}.",
    "a photo of a large {}.",
    "This is a photo of a small {}.",
    "This is a photo of a medium {}.",
    "This is a photo of a large {}.",
    "There is a small {} in the scene.",
    "There is a medium {} in the scene.",
    "There is a large {} in the scene.",
)

#: One template: 14x cheaper to encode, slightly less accurate.
SINGLE_TEMPLATES: Tuple[str, ...] = ("a photo of a {}.",)

TEMPLATE_SETS: Dict[str, Tuple[str, ...]] = {"vild": VILD_TEMPLATES, "single": SINGLE_TEMPLATES}

# Built-in vocabulary names -> (source, splits kept or None for all).
BUILTIN_VOCABULARIES: Dict[str, Tuple[str, Optional[Tuple[str, ...]]]] = {
    "coco": ("coco", None),
    "coco_base": ("coco", ("base",)),
    "coco_novel": ("coco", ("novel",)),
    "coco_ov": ("coco", ("base", "novel")),
    "lvis": ("lvis", None),
    "lvis_base": ("lvis", ("base",)),
    "lvis_novel": ("lvis", ("novel",)),
    "lvis_rare": ("lvis", ("novel",)),
    "imagenet21k": ("imagenet21k", None),
    "in21k": ("imagenet21k", None),
    "imagenet_21k": ("imagenet21k", None),
    # the synthetic world of the bundled demo model (training/synthetic.py --world shapes)
    "shapes": ("shapes", None),
    "shapes_base": ("shapes", ("base",)),
    "shapes_novel": ("shapes", ("novel",)),
}

_SYNONYM_SEPARATORS = re.compile(r",|/|_or_")

#: Prefix that marks a string as an inline class list even without a comma ("inline:cup").
INLINE_PREFIX = "inline:"
_CLASS_SEPARATORS = (",", ";", "\n")


class VocabularyWarning(UserWarning):
    """A vocabulary was repaired (duplicates merged, empty entries dropped) or a cache redone."""


# --------------------------------------------------------------------------------------
# Names
# --------------------------------------------------------------------------------------


def clean_name(text: str) -> str:
    """Reference clean-up of one class name: ``_`` -> space, whitespace collapsed, lowercase.

    Non-ASCII characters are kept (CLIP's byte-level BPE encodes any unicode text).
    """
    return " ".join(str(text).replace("_", " ").split()).lower()


def split_synonyms(text: str) -> List[str]:
    """Split a free-text class entry into cleaned synonyms.

    Separators are ``,``, ``/`` and ``_or_`` (the reference recipe), e.g.
    ``"sofa/couch"`` -> ``["sofa", "couch"]`` and ``"cup_or_mug"`` -> ``["cup", "mug"]``.
    Empty parts and repeated synonyms are dropped; order is kept.
    """
    return _unique(clean_name(part) for part in _SYNONYM_SEPARATORS.split(str(text)))


def name_prompts(name: str) -> List[str]:
    """The texts the reference encodes for one raw class string (its ``split_label``).

    The :func:`split_synonyms` rule on the name as the dataset writes it: LVIS
    ``"tape_(sticky_cloth_or_paper)"`` becomes ``["tape (sticky cloth", "paper)"]``, because
    the reference splits on ``_or_`` before it turns ``_`` into spaces. Every other LVIS v1
    name gives exactly one text.
    """
    return split_synonyms(name)


def _unique(items: Iterable[str]) -> List[str]:
    seen = set()
    out = []
    for item in items:
        if item and item not in seen:
            seen.add(item)
            out.append(item)
    return out


# --------------------------------------------------------------------------------------
# Vocabulary
# --------------------------------------------------------------------------------------


@dataclass
class Vocabulary:
    """An ordered class list.

    Attributes:
        name: short identifier (``"coco"``, ``"lvis"``, ``"custom"``, a file stem ...).
        version: free-form version string of the source (``"v1"``, ``"2017"``, ``""``).
        classes: display name of every class (index = class index).
        synonyms: for every class, the non-empty list of strings fed to the text tower.
        split: optional per-class ``"base"`` / ``"novel"`` / ``"unused"`` (open-vocabulary
            protocol: base = seen in training, novel = held out, unused = neither).
        ids: optional per-class identifier of the source dataset (COCO category id,
            LVIS id, WordNet synset ``"n01440764"`` ...).
        raw_names: optional per-class name exactly as the source wrote it (a JSON entry's
            ``name``, e.g. LVIS ``"tape_(sticky_cloth_or_paper)"``); only :meth:`names_only`
            reads it. Not part of :meth:`to_dict` or :meth:`fingerprint` (what is encoded is
            the synonyms).
    """

    name: str
    version: str
    classes: List[str]
    synonyms: List[List[str]]
    split: Optional[List[str]] = None
    ids: Optional[List[Union[int, str]]] = None
    raw_names: Optional[List[Optional[str]]] = None

    def __post_init__(self) -> None:
        self.classes = [str(c) for c in self.classes]
        self.synonyms = [[str(s) for s in syns] for syns in self.synonyms]
        if not self.classes:
            raise ValueError(f"vocabulary '{self.name}' is empty: it needs at least one class name")
        if len(self.synonyms) != len(self.classes):
            raise ValueError(
                f"vocabulary '{self.name}': {len(self.classes)} classes but {len(self.synonyms)} synonym lists")
        for cls, syns in zip(self.classes, self.synonyms):
            if not syns or any(not s for s in syns):
                raise ValueError(f"vocabulary '{self.name}': class '{cls}' needs non-empty synonyms, got {syns}")
        if self.split is not None:
            self.split = [str(s) for s in self.split]
            if len(self.split) != len(self.classes):
                raise ValueError(f"vocabulary '{self.name}': split has {len(self.split)} entries, "
                                 f"expected {len(self.classes)}")
            bad = sorted(set(self.split) - set(SPLITS))
            if bad:
                raise ValueError(f"vocabulary '{self.name}': unknown split values {bad}; allowed {SPLITS}")
        if self.ids is not None:
            self.ids = list(self.ids)
            if len(self.ids) != len(self.classes):
                raise ValueError(f"vocabulary '{self.name}': ids has {len(self.ids)} entries, "
                                 f"expected {len(self.classes)}")
        if self.raw_names is not None:
            self.raw_names = [None if n is None else str(n) for n in self.raw_names]
            if len(self.raw_names) != len(self.classes):
                raise ValueError(f"vocabulary '{self.name}': raw_names has {len(self.raw_names)} entries, "
                                 f"expected {len(self.classes)}")

    # -- construction -------------------------------------------------------------------

    @classmethod
    def from_names(cls, names: Sequence[str], name: str = "custom", version: str = "") -> "Vocabulary":
        """Vocabulary from free-text entries (each entry may hold ``,`` / ``/`` / ``_or_`` synonyms).

        Empty entries are skipped; duplicate classes are merged (see :meth:`merge_duplicates`).
        """
        classes, synonyms = [], []
        for entry in names:
            syns = split_synonyms(entry)
            if syns:
                classes.append(syns[0])
                synonyms.append(syns)
        return cls(name=name, version=version, classes=classes, synonyms=synonyms).merge_duplicates()

    @classmethod
    def from_dict(cls, data: Dict[str, Any], name: Optional[str] = None) -> "Vocabulary":
        """Parse this package's JSON format (see :meth:`to_dict`); entries may also be plain strings.

        Explicit synonym lists are only cleaned (not split again), so LVIS synonyms such as
        ``wiper_(for_windshield/screen)`` stay whole. Duplicate classes are merged.
        """
        entries = data.get("classes")
        if not isinstance(entries, list):
            raise ValueError("vocabulary JSON needs a 'classes' list")
        vocab = _from_entries(entries, name=name or str(data.get("name") or "custom"),
                              version=str(data.get("version") or ""))
        return vocab.merge_duplicates()

    @classmethod
    def from_saved(cls, data: Dict[str, Any]) -> "Vocabulary":
        """Exact inverse of :meth:`to_dict` (no re-cleaning, no merging): a vocabulary stored in a
        text-embedding file or a stage-2 checkpoint."""
        return _vocab_from_state(data)

    def to_dict(self) -> Dict[str, Any]:
        """This package's JSON format: ``{"name", "version", "classes": [{"id", "name", "synonyms", "split"}]}``."""
        classes = []
        for i, (cls_name, syns) in enumerate(zip(self.classes, self.synonyms)):
            entry: Dict[str, Any] = {}
            if self.ids is not None:
                entry["id"] = self.ids[i]
            entry["name"] = cls_name
            entry["synonyms"] = list(syns)
            if self.split is not None:
                entry["split"] = self.split[i]
            classes.append(entry)
        return {"name": self.name, "version": self.version, "classes": classes}

    def save_json(self, path: Union[str, Path]) -> None:
        """Write :meth:`to_dict` as UTF-8 JSON (atomically)."""
        text = json.dumps(self.to_dict(), ensure_ascii=False, indent=1)
        data = text.encode("utf-8")
        atomic_write(Path(path), lambda fh: fh.write(data))

    # -- queries ------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.classes)

    @property
    def max_synonyms(self) -> int:
        return max(len(s) for s in self.synonyms)

    def indices(self, kind: str) -> List[int]:
        """Class indices of one split kind (``"base"``, ``"novel"`` or ``"unused"``).

        Without a split every class counts as novel (nothing is known to have been seen in
        training), which matches the reference ensemble's default of trusting CLIP on all
        classes. The classes of a training / evaluation annotation file are never split-less:
        :func:`classes_seen_in_training` makes every class of a file without splits ``base``.
        """
        if kind not in SPLITS:
            raise ValueError(f"unknown split kind '{kind}'; allowed {SPLITS}")
        if self.split is None:
            return list(range(len(self))) if kind == "novel" else []
        return [i for i, s in enumerate(self.split) if s == kind]

    def base_indices(self) -> List[int]:
        return self.indices("base")

    def novel_indices(self) -> List[int]:
        return self.indices("novel")

    def unused_indices(self) -> List[int]:
        return self.indices("unused")

    def split_mask(self, kind: str) -> torch.Tensor:
        """Boolean ``[C]`` mask of :meth:`indices` (e.g. the ``base_mask`` of the ensemble)."""
        mask = torch.zeros(len(self), dtype=torch.bool)
        idx = self.indices(kind)
        if idx:
            mask[torch.tensor(idx)] = True
        return mask

    def find(self, text: str) -> Optional[int]:
        """Index of the first class whose display name or a synonym equals ``clean_name(text)``."""
        key = clean_name(text)
        for i, (cls_name, syns) in enumerate(zip(self.classes, self.synonyms)):
            if key == cls_name or key in syns:
                return i
        return None

    def fingerprint(self) -> str:
        """Stable sha256 (hex) over name, class names and synonyms (what the text embeddings depend on)."""
        payload = json.dumps({"name": self.name, "classes": self.classes, "synonyms": self.synonyms},
                             ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    # -- derived vocabularies -------------------------------------------------------------

    def subset(self, indices: Sequence[int], name: Optional[str] = None) -> "Vocabulary":
        """New vocabulary with the given classes (in the given order)."""
        idx = [int(i) for i in indices]
        return Vocabulary(
            name=name or self.name,
            version=self.version,
            classes=[self.classes[i] for i in idx],
            synonyms=[list(self.synonyms[i]) for i in idx],
            split=None if self.split is None else [self.split[i] for i in idx],
            ids=None if self.ids is None else [self.ids[i] for i in idx],
            raw_names=None if self.raw_names is None else [self.raw_names[i] for i in idx],
        )

    def with_max_synonyms(self, max_synonyms: Optional[int]) -> "Vocabulary":
        """Keep at most ``max_synonyms`` synonyms per class (memory: embeddings are ``[C, S_max, D]``)."""
        if max_synonyms is None or self.max_synonyms <= max_synonyms:
            return self
        if max_synonyms < 1:
            raise ValueError("max_synonyms must be >= 1")
        return self._with_synonyms([list(s[:max_synonyms]) for s in self.synonyms])

    def names_only(self) -> "Vocabulary":
        """Every class named by its name alone, as the reference builds its LVIS text embeddings.

        The texts are the reference's split of the class's raw name (:func:`name_prompts`):
        one text per class, except where the raw name holds a separator (LVIS
        ``"tape_(sticky_cloth_or_paper)"`` gives ``"tape (sticky cloth"`` and ``"paper)"``,
        as in the reference). A class without a raw name keeps its display name. Applying it
        twice changes nothing."""
        raw = self.raw_names or [None] * len(self)
        synonyms = [name_prompts(r) or [c] if r else [c] for c, r in zip(self.classes, raw)]
        return self if synonyms == self.synonyms else self._with_synonyms(synonyms)

    def _with_synonyms(self, synonyms: List[List[str]]) -> "Vocabulary":
        return Vocabulary(name=self.name, version=self.version, classes=list(self.classes), synonyms=synonyms,
                          split=None if self.split is None else list(self.split),
                          ids=None if self.ids is None else list(self.ids),
                          raw_names=None if self.raw_names is None else list(self.raw_names))

    def merge_duplicates(self) -> "Vocabulary":
        """Merge classes with the same display name: the first one is kept, the later ones'
        synonyms are appended to it (without repeats), and a :class:`VocabularyWarning` lists them.
        Repeated synonyms inside a class are dropped silently."""
        first: Dict[str, int] = {}
        classes: List[str] = []
        synonyms: List[List[str]] = []
        split: Optional[List[str]] = None if self.split is None else []
        ids: Optional[List[Union[int, str]]] = None if self.ids is None else []
        raw_names: Optional[List[Optional[str]]] = None if self.raw_names is None else []
        dropped: List[str] = []
        for i, cls_name in enumerate(self.classes):
            if cls_name in first:
                j = first[cls_name]
                synonyms[j] = _unique(synonyms[j] + self.synonyms[i])
                dropped.append(cls_name)
                continue
            first[cls_name] = len(classes)
            classes.append(cls_name)
            synonyms.append(_unique(self.synonyms[i]))
            if split is not None:
                split.append(self.split[i])
            if ids is not None:
                ids.append(self.ids[i])
            if raw_names is not None:
                raw_names.append(self.raw_names[i])
        if dropped:
            shown = ", ".join(repr(d) for d in _unique(dropped)[:10])
            warnings.warn(f"vocabulary '{self.name}': merged {len(dropped)} duplicate class name(s) into their "
                          f"first occurrence: {shown}", VocabularyWarning, stacklevel=2)
        elif all(len(a) == len(b) for a, b in zip(synonyms, self.synonyms)):
            return self
        return Vocabulary(name=self.name, version=self.version, classes=classes, synonyms=synonyms,
                          split=split, ids=ids, raw_names=raw_names)


def _from_entries(entries: Sequence[Any], name: str, version: str) -> Vocabulary:
    """Classes from JSON-like entries: strings, or dicts with name / synonyms / id / split / frequency."""
    classes: List[str] = []
    synonyms: List[List[str]] = []
    splits: List[Optional[str]] = []
    ids: List[Any] = []
    raw_names: List[Optional[str]] = []
    for entry in entries:
        if isinstance(entry, str):
            syns = split_synonyms(entry)
            display = syns[0] if syns else ""
            entry = {}
        elif isinstance(entry, dict):
            raw_syns = entry.get("synonyms")
            raw_name = entry.get("name")
            if isinstance(raw_syns, str):
                raw_syns = [raw_syns]
            if raw_syns:
                syns = _unique(clean_name(s) for s in raw_syns)
                display = clean_name(raw_name) if raw_name else (syns[0] if syns else "")
            else:
                syns = split_synonyms(raw_name or "")
                display = syns[0] if syns else ""
        else:
            raise ValueError(f"vocabulary '{name}': cannot read class entry {entry!r}")
        if not syns or not display:
            continue
        classes.append(display)
        synonyms.append(syns)
        raw_name = entry.get("name")
        raw_names.append(raw_name if isinstance(raw_name, str) and raw_name.strip() else None)
        ids.append(entry.get("id"))
        split = entry.get("split")
        if split is None and entry.get("frequency") is not None:
            split = "novel" if entry["frequency"] == "r" else "base"
        splits.append(split)
    if not classes:
        raise ValueError(f"vocabulary '{name}' is empty: no usable class names found")
    return Vocabulary(
        name=name, version=version, classes=classes, synonyms=synonyms,
        split=None if all(s is None for s in splits) else [s or "unused" for s in splits],
        ids=None if all(i is None for i in ids) else ids,
        raw_names=None if all(n is None for n in raw_names) else raw_names,
    )


def classes_seen_in_training(vocab: Vocabulary, origin: str,
                             logger: Optional[logging.Logger] = None) -> Vocabulary:
    """THE rule for the classes of an annotation file without a base/novel split (a plain COCO
    file: no ``split`` key, no LVIS ``frequency``): every class is ``base``, i.e. seen in
    training. Stage 2 trains on every class of such a file, and ``ovsam-evaluate`` (data
    loading, base/novel metrics, the CLIP ensemble's alpha for base classes) and a stage-2
    checkpoint's stored vocabulary use the same split. Says so once (a warning of ``logger``);
    a vocabulary with a split is returned unchanged."""
    if vocab.split is not None:
        return vocab
    (logger or logging.getLogger(__name__)).warning(
        "%s: vocabulary '%s' has no base/novel split: all %d class(es) count as base (seen in training) "
        "for training, evaluation metrics and the CLIP ensemble; give each category a 'split' "
        "(base | novel | unused) to hold classes out", origin, vocab.name, len(vocab))
    return Vocabulary(name=vocab.name, version=vocab.version, classes=list(vocab.classes),
                      synonyms=[list(s) for s in vocab.synonyms], split=["base"] * len(vocab),
                      ids=None if vocab.ids is None else list(vocab.ids),
                      raw_names=None if vocab.raw_names is None else list(vocab.raw_names))


# --------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------

VocabularySpec = Union[str, Path, Vocabulary, Sequence[str]]


def load_vocabulary(spec: VocabularySpec, max_synonyms: Optional[int] = None,
                    names_only: bool = False) -> Vocabulary:
    """Load a vocabulary.

    ``spec`` may be:

    * a built-in name (case-insensitive): ``coco``, ``coco_base``, ``coco_novel``, ``coco_ov``,
      ``lvis``, ``lvis_base``, ``lvis_novel`` (= ``lvis_rare``), ``imagenet21k`` (= ``in21k``),
    * a path to a ``.txt`` file: one class per line, synonyms separated by ``,`` / ``/`` /
      ``_or_``; blank lines and lines starting with ``#`` are skipped,
    * a path to a ``.json`` file: this package's format (``{"classes": [...]}``), a COCO or
      LVIS annotation file (its ``"categories"``; LVIS ``synonyms`` and ``frequency`` are used,
      rare = novel), or a plain JSON list of names,
    * an inline string: classes separated by ``,`` (``"red cup, person, door handle"``),
      synonyms inside a class by ``/`` or ``_or_`` (``"sofa/couch, tv"``). If the string
      contains ``;`` then ``;`` separates classes and ``,`` separates synonyms. A list
      without a separator needs the ``inline:`` prefix (``"inline:red cup"``,
      ``"inline:sofa/couch"``): a lone word that is not a built-in name is an error, not a
      one-class vocabulary (see :func:`classify_spec`),
    * a list of names, or a :class:`Vocabulary` (returned unchanged).

    Names are cleaned with :func:`clean_name`. Duplicate class names are merged into the first
    occurrence with a :class:`VocabularyWarning`. ``max_synonyms`` caps the synonyms per class.
    ``names_only`` names every class by its name alone (:meth:`Vocabulary.names_only`), as the
    reference does for LVIS: a JSON entry's ``synonyms`` are ignored and its raw ``name`` is
    split like the reference splits class strings; text entries keep their display name.

    Raises:
        ValueError: the vocabulary would be empty, the spec cannot be parsed, or it is a single
            name that is not built in (the message lists the built-ins and the inline forms).
        FileNotFoundError: the spec looks like a path and no such file exists.
    """
    check_synonym_options(max_synonyms, names_only)
    vocab = _load(spec)
    if names_only:
        vocab = vocab.names_only()
    return vocab.with_max_synonyms(max_synonyms)


def check_synonym_options(max_synonyms: Optional[int], names_only: bool) -> None:
    """ValueError unless ``max_synonyms`` is None or a whole number >= 1 and ``names_only`` a bool
    (a YAML ``names_only: "no"`` string must not read as true)."""
    if max_synonyms is not None and (isinstance(max_synonyms, bool) or not isinstance(max_synonyms, int)
                                     or max_synonyms < 1):
        raise ValueError(f"max_synonyms must be a whole number >= 1, or null for all synonyms; got {max_synonyms!r}")
    if not isinstance(names_only, bool):
        raise ValueError(f"names_only must be true or false, got {names_only!r}")


def _load(spec: VocabularySpec) -> Vocabulary:
    if isinstance(spec, Vocabulary):
        return spec
    if isinstance(spec, Path):
        return _load_file(spec)
    if not isinstance(spec, str):
        return Vocabulary.from_names(list(spec), name="custom")
    kind, value = classify_spec(spec)
    if kind == "builtin":
        source, keep = BUILTIN_VOCABULARIES[value]
        vocab = _load_imagenet21k() if source == "imagenet21k" else _load_shipped(source)
        if keep is not None:
            vocab = vocab.subset([i for i, s in enumerate(vocab.split) if s in keep], name=value)
        return vocab
    if kind == "file":
        return _load_file(Path(value))
    return _parse_inline(value)


def classify_spec(spec: str) -> Tuple[str, str]:
    """What a vocabulary string means, without reading any file: ``("builtin", name)``,
    ``("file", expanded path)`` or ``("inline", class list text)``.

    The rules (documented in :func:`load_vocabulary`) leave no guesses: a string is a
    built-in name, an existing file, an explicit ``inline:`` list, or a list with a class
    separator (``,`` ``;`` or a newline). A single entry that is none of these is an error,
    because reading a typo (``lvsi``) or a missing path (``/tmp/nope/my_vocab``) as a
    one-class vocabulary labels every mask with it at a high score.

    Raises:
        FileNotFoundError: ``spec`` looks like a path (has ``/``, starts with ``~`` or ``.``,
            or ends in ``.txt`` / ``.json``) and no such file exists.
        ValueError: empty, or a single unknown name (the message lists the built-ins).
    """
    text = str(spec).strip()
    if not text:
        raise ValueError("empty vocabulary specification: give a built-in name "
                         f"({', '.join(builtin_names())}), a .txt/.json path or class names")
    if text[:len(INLINE_PREFIX)].lower() == INLINE_PREFIX:
        body = text[len(INLINE_PREFIX):]
        if not body.strip():
            raise ValueError(f"vocabulary {text!r} contains no class names after '{INLINE_PREFIX}'")
        return "inline", body
    key = text.lower().replace("-", "_")
    if key in BUILTIN_VOCABULARIES:
        return "builtin", key
    if _is_file(text):
        return "file", os.path.expanduser(text)
    kind = non_file_kind(os.path.expanduser(text))
    if kind is None and any(sep in text for sep in _CLASS_SEPARATORS):
        return "inline", text
    if kind is not None or looks_like_path(text):
        path = os.path.expanduser(text)
        what = f"is {kind}, not a regular file" if kind else "not found"
        bare = not text.startswith(("/", "~", ".")) and not text.lower().endswith((".txt", ".json"))
        hint = f" (a single class with synonyms is written '{INLINE_PREFIX}{text}')" if bare else ""
        raise FileNotFoundError(f"vocabulary file {what}: {path}{hint}")
    raise unknown_vocabulary_error(text)


#: What :func:`non_file_kind` calls each kind of file-system entry that is not a regular file.
_FILE_KINDS = ((stat.S_ISDIR, "a directory"), (stat.S_ISFIFO, "a named pipe (FIFO)"), (stat.S_ISSOCK, "a socket"),
               (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"))


def _kind_of_mode(mode: int) -> Optional[str]:
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _FILE_KINDS if test(mode)), "not a regular file")


def non_file_kind(path: Union[str, Path]) -> Optional[str]:
    """What ``path`` is when it exists but is not a regular file ("a directory", "a named pipe
    (FIFO)", "a socket", "a character device", ...); None for a regular file or no entry at all.
    Only ``stat`` (which follows symlinks): nothing is opened, so a FIFO never blocks."""
    try:
        return _kind_of_mode(os.stat(path).st_mode)
    except (OSError, ValueError):  # missing, a name too long, a NUL byte
        return None


def read_regular_file(path: Path, what: str = "vocabulary file") -> bytes:
    """The bytes of ``path``, which must be a regular file. Opened without blocking and checked on
    the open descriptor: a FIFO, socket or device put in the file's place after any earlier check
    is refused (FileNotFoundError saying what it is), never read or waited on."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise FileNotFoundError(f"{what} not found: {path}") from None
    except OSError:  # a socket (ENXIO), a directory on some systems, no permission
        kind = non_file_kind(path)
        if kind is not None:
            raise FileNotFoundError(f"{what} is {kind}, not a regular file: {path}") from None
        raise
    try:
        kind = _kind_of_mode(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    if kind is not None:
        os.close(fd)
        raise FileNotFoundError(f"{what} is {kind}, not a regular file: {path}")
    with os.fdopen(fd, "rb") as fh:
        return fh.read()  # O_NONBLOCK does not apply to regular files


def unknown_vocabulary_error(text: str) -> ValueError:
    """The error for a lone name that is not built in: lists the built-ins, suggests the
    closest one and shows both inline forms."""
    text = str(text).strip()
    close = difflib.get_close_matches(text.lower().replace("-", "_"), builtin_names(), n=3, cutoff=0.6)
    hint = f" Did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    return ValueError(
        f"unknown vocabulary {text!r}: not a built-in name and not a file.{hint} "
        f"Built-in vocabularies: {', '.join(builtin_names())}. "
        f"An inline class list needs a comma ('{text}, person'), or the '{INLINE_PREFIX}' prefix for "
        f"a single class ('{INLINE_PREFIX}{text}').")


def builtin_names() -> List[str]:
    """The built-in vocabulary names (aliases included), sorted."""
    return sorted(BUILTIN_VOCABULARIES)


def looks_like_path(text: str) -> bool:
    """True for strings a user means as a file path (``/`` or ``\\``, leading ``~`` / ``.``,
    a vocabulary file suffix)."""
    text = text.strip()
    return ("/" in text or "\\" in text or text.startswith(("~", "."))
            or text.lower().endswith((".txt", ".json")))


def _is_file(text: str) -> bool:
    # A long inline class list is not a path; is_file() raises "File name too long" for it.
    try:
        return Path(os.path.expanduser(text)).is_file()
    except (OSError, ValueError):
        return False


def _parse_inline(text: str) -> Vocabulary:
    if ";" in text:
        entries = [e for e in text.split(";")]
        classes, synonyms = [], []
        for entry in entries:
            syns = split_synonyms(entry)
            if syns:
                classes.append(syns[0])
                synonyms.append(syns)
        if not classes:
            raise ValueError(f"vocabulary {text!r} contains no class names")
        return Vocabulary(name="custom", version="", classes=classes, synonyms=synonyms).merge_duplicates()
    names = [e for e in re.split(r"[,\n]", text)]
    if not any(split_synonyms(n) for n in names):
        raise ValueError(f"vocabulary {text!r} contains no class names")
    return Vocabulary.from_names(names, name="custom")


def _load_file(path: Path) -> Vocabulary:
    path = Path(os.path.expanduser(str(path)))
    suffix = path.suffix.lower()
    data = read_regular_file(path)
    try:
        raw = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ValueError(f"vocabulary file {path} is not UTF-8 text: {exc}") from None
    if suffix == ".json":
        try:
            data = json.loads(raw)
        except json.JSONDecodeError as exc:
            raise ValueError(f"vocabulary file {path} is not valid JSON: {exc}") from exc
        return _from_json(data, default_name=path.stem, origin=str(path))
    lines = [ln.strip() for ln in raw.splitlines()]
    lines = [ln for ln in lines if ln and not ln.startswith("#")]
    if not lines:
        raise ValueError(f"vocabulary file {path} is empty: it lists no class names")
    return _from_lines(lines, name=path.stem, origin=str(path))


def _from_lines(lines: Sequence[str], name: str, origin: str) -> Vocabulary:
    classes, synonyms = [], []
    for line in lines:
        syns = split_synonyms(line)
        if syns:
            classes.append(syns[0])
            synonyms.append(syns)
    if not classes:
        raise ValueError(f"vocabulary {origin} is empty: it lists no class names")
    return Vocabulary(name=name, version="", classes=classes, synonyms=synonyms).merge_duplicates()


def _from_json(data: Any, default_name: str, origin: str) -> Vocabulary:
    if isinstance(data, dict) and isinstance(data.get("classes"), list):
        if not data["classes"]:
            raise ValueError(f"vocabulary {origin} is empty: 'classes' has no entries")
        return Vocabulary.from_dict(data, name=str(data.get("name") or default_name))
    if isinstance(data, dict) and isinstance(data.get("categories"), list):
        cats = data["categories"]
        if not cats:
            raise ValueError(f"vocabulary {origin} is empty: 'categories' has no entries")
        cats = sorted(cats, key=lambda c: c.get("id", 0)) if all(isinstance(c, dict) for c in cats) else cats
        version = ""
        info = data.get("info")
        if isinstance(info, dict) and info.get("version") is not None:
            version = str(info["version"])
        return _from_entries(cats, name=default_name, version=version).merge_duplicates()
    if isinstance(data, list):
        if not data:
            raise ValueError(f"vocabulary {origin} is empty: the JSON list has no entries")
        return _from_entries(data, name=default_name, version="").merge_duplicates()
    raise ValueError(f"vocabulary {origin}: expected a 'classes' list, a COCO/LVIS 'categories' list "
                     "or a JSON list of names")


def _load_shipped(name: str) -> Vocabulary:
    path = VOCABULARY_DIR / f"{name}.json"
    if not path.is_file():
        raise FileNotFoundError(f"shipped vocabulary file missing: {path} (is package data installed?)")
    data = json.loads(path.read_text(encoding="utf-8"))
    return Vocabulary.from_dict(data, name=name)


def _load_imagenet21k() -> Vocabulary:
    """ImageNet-21K (fall 2011, Google's 21,843-class list) from timm's offline synset/lemma files.

    Display name = first lemma, synonyms = all lemmas, ids = WordNet synset ids. Different
    synsets can share a lemma ("crane" the bird and the machine): such classes are kept
    separate (indices follow timm's / the checkpoints' class order), they are just
    indistinguishable by text.
    """
    try:
        from timm.data import ImageNetInfo
    except ImportError as exc:  # pragma: no cover - timm is a dependency
        raise ImportError("the imagenet21k vocabulary needs timm (it ships the synset and lemma lists)") from exc
    try:
        info = ImageNetInfo("imagenet-21k")
    except (AssertionError, FileNotFoundError, OSError) as exc:
        raise FileNotFoundError(f"timm's ImageNet-21K synset/lemma lists are not available: {exc}") from exc
    synsets = list(info.label_names())
    lemmas = info.label_descriptions(detailed=False)
    classes, synonyms = [], []
    for synset, lemma in zip(synsets, lemmas):
        syns = _unique(clean_name(part) for part in str(lemma).split(","))
        if not syns:
            syns = [synset]
        classes.append(syns[0])
        synonyms.append(syns)
    return Vocabulary(name="imagenet21k", version="fall11", classes=classes, synonyms=synonyms, ids=synsets)


# --------------------------------------------------------------------------------------
# Templates
# --------------------------------------------------------------------------------------


def get_templates(spec: Union[str, Sequence[str]] = "vild") -> Tuple[str, ...]:
    """Prompt templates: ``"vild"`` (14), ``"single"`` (1) or an explicit list of ``{}`` strings."""
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key in TEMPLATE_SETS:
            return TEMPLATE_SETS[key]
        if "{}" not in spec:
            raise ValueError(f"unknown template set '{spec}'; use {sorted(TEMPLATE_SETS)} or a list of '{{}}' strings")
        spec = [spec]
    templates = tuple(str(t) for t in spec)
    if not templates:
        raise ValueError("at least one prompt template is needed")
    for t in templates:
        if t.count("{}") != 1:
            raise ValueError(f"prompt template {t!r} must contain exactly one '{{}}'")
    return templates


def _fill(template: str, name: str) -> str:
    return template.replace("{}", name)


# --------------------------------------------------------------------------------------
# Text encoders
# --------------------------------------------------------------------------------------


class OpenCLIPTextEncoder:
    """``tokens [B, L] -> features [B, D]`` for an open_clip model, for any ``L`` up to its context.

    open_clip's own ``encode_text`` adds the full ``[77, D]`` positional embedding and the
    ``77x77`` causal mask, so it only accepts full-length tokens. This wrapper runs the same
    modules but slices the positional embedding and the causal mask to ``L``. Because the
    mask is causal and the feature is read at the end-of-text token (``argmax`` / ``eos``
    pooling), the tokens after it cannot change the result: a context cut to the longest
    prompt gives the same embedding as 77 (see :func:`check_truncation`).

    ``supports_truncation`` is False (and the wrapper falls back to ``model.encode_text``)
    for towers where that does not hold: no causal mask, ``first``/``last`` pooling, a CoCa
    class token, padding masks, or HF text towers.
    """

    pad_id = 0

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self._tower, self._pool_type, self._eos_id = self._find_tower(model)
        causal = self._tower is not None and getattr(self._tower, "attn_mask", None) is not None
        self.supports_truncation = bool(causal and self._pool_type in ("argmax", "eos"))
        tower = self._tower if self._tower is not None else getattr(model, "text", model)
        pos = getattr(tower, "positional_embedding", None)
        self.context_length = int(pos.shape[0]) if isinstance(pos, torch.Tensor) else None

    @staticmethod
    def _find_tower(model):
        needed = ("token_embedding", "positional_embedding", "transformer", "ln_final")
        if all(hasattr(model, a) for a in needed):
            return model, getattr(model, "text_pool_type", "argmax"), getattr(model, "text_eos_id", None)
        text = getattr(model, "text", None)
        if (text is not None and all(hasattr(text, a) for a in needed)
                and getattr(text, "cls_emb", None) is None and not getattr(text, "use_pad_mask", False)):
            return text, getattr(text, "pool_type", "argmax"), getattr(text, "eos_id", None)
        return None, None, None

    @property
    def device(self) -> torch.device:
        try:
            return next(self.model.parameters()).device
        except StopIteration:  # pragma: no cover
            return torch.device("cpu")

    def __call__(self, tokens: torch.Tensor) -> torch.Tensor:
        if not self.supports_truncation:
            return self.model.encode_text(tokens)
        from open_clip.transformer import text_global_pool

        tower = self._tower
        length = tokens.shape[1]
        if self.context_length is not None and length > self.context_length:
            raise ValueError(f"{length} tokens exceed the text tower's context length {self.context_length}")
        transformer = tower.transformer
        cast_dtype = transformer.get_cast_dtype() if hasattr(transformer, "get_cast_dtype") else None
        x = tower.token_embedding(tokens)
        if cast_dtype is not None:
            x = x.to(cast_dtype)
        x = x + tower.positional_embedding[:length].to(x.dtype)
        attn_mask = tower.attn_mask[:length, :length]
        x = transformer(x, attn_mask=attn_mask)
        x = tower.ln_final(x)
        x = text_global_pool(x, tokens, self._pool_type, eos_token_id=self._eos_id)
        proj = getattr(tower, "text_projection", None)
        if proj is not None:
            x = proj(x) if isinstance(proj, torch.nn.Module) else x @ proj
        return x


def _needed_length(tokens: torch.Tensor, pad_id: int = 0) -> int:
    """Shortest context holding every row of ``tokens`` (position of the last non-pad token + 1)."""
    positions = torch.arange(1, tokens.shape[1] + 1, device=tokens.device)
    last = ((tokens != pad_id).long() * positions).amax(dim=1)
    return max(1, int(last.max().item()))


def _tokenize(tokenizer: Callable, prompts: List[str], encode_text: Callable,
              context_length: Optional[int]) -> torch.Tensor:
    tokens = tokenizer(prompts)
    if not isinstance(tokens, torch.Tensor):
        tokens = torch.as_tensor(tokens)
    pad_id = getattr(encode_text, "pad_id", 0)
    if context_length is None:
        if getattr(encode_text, "supports_truncation", False):
            tokens = tokens[:, :_needed_length(tokens, pad_id)]
        return tokens
    needed = _needed_length(tokens, pad_id)
    if needed > context_length:
        raise ValueError(f"context_length={context_length} is too short: a prompt needs {needed} tokens")
    if context_length <= tokens.shape[1]:
        return tokens[:, :context_length]
    return F.pad(tokens, (0, context_length - tokens.shape[1]), value=pad_id)


def check_truncation(encode_text: Callable, tokenizer: Callable, prompts: Optional[Sequence[str]] = None) -> float:
    """Largest absolute difference between normalised embeddings of the same prompts encoded
    with a minimal context and with the tokenizer's full context. ~1e-6 in float32 means
    truncation is exact for this model; use it once at start-up on a new model."""
    prompts = list(prompts or ["a photo of a dog.", "There is a large fire hydrant in the scene.",
                               "This is a photo of a cellular telephone", "a photo of a t-shirt."])
    full = tokenizer(prompts)
    short = full[:, :_needed_length(full, getattr(encode_text, "pad_id", 0))]
    device = getattr(encode_text, "device", torch.device("cpu"))
    with torch.no_grad():
        a = F.normalize(encode_text(full.to(device)).float(), dim=-1)
        b = F.normalize(encode_text(short.to(device)).float(), dim=-1)
    return float((a - b).abs().max().item())


# --------------------------------------------------------------------------------------
# Text embeddings
# --------------------------------------------------------------------------------------

_FORMAT = "ovsam_ros.text_embeddings"
_FORMAT_VERSION = 1


@dataclass
class TextEmbeddings:
    """Per-class text embeddings: ``embeddings [C, S, D]`` (unit vectors, zero padded) and
    ``valid [C, S]`` (True where a synonym exists). Every class has at least one valid slot."""

    embeddings: torch.Tensor
    valid: torch.Tensor
    vocab: Vocabulary
    templates: Tuple[str, ...] = ()
    model_id: Optional[str] = None
    meta: Dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.templates = tuple(self.templates)
        if self.embeddings.dim() != 3:
            raise ValueError(f"embeddings must be [C, S, D], got {tuple(self.embeddings.shape)}")
        if self.valid.shape != self.embeddings.shape[:2]:
            raise ValueError(f"valid {tuple(self.valid.shape)} does not match embeddings "
                             f"{tuple(self.embeddings.shape)}")
        if self.valid.dtype != torch.bool:
            self.valid = self.valid.bool()
        if self.embeddings.shape[0] != len(self.vocab):
            raise ValueError(f"{self.embeddings.shape[0]} embedding rows for a vocabulary of {len(self.vocab)}")
        if not bool(self.valid.any(dim=1).all()):
            raise ValueError("every class needs at least one valid synonym embedding")

    @property
    def num_classes(self) -> int:
        return int(self.embeddings.shape[0])

    @property
    def num_synonyms(self) -> int:
        return int(self.embeddings.shape[1])

    @property
    def dim(self) -> int:
        return int(self.embeddings.shape[2])

    @property
    def device(self) -> torch.device:
        return self.embeddings.device

    def to(self, device: Union[str, torch.device, None] = None,
           dtype: Optional[torch.dtype] = None) -> "TextEmbeddings":
        """Copy on another device and/or floating dtype (the mask stays bool)."""
        return TextEmbeddings(self.embeddings.to(device=device, dtype=dtype), self.valid.to(device=device),
                              self.vocab, self.templates, self.model_id, dict(self.meta))

    def flat(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``([C*S, D], [C*S])`` views, class-major (row ``c*S + s``)."""
        return self.embeddings.reshape(-1, self.dim), self.valid.reshape(-1)

    def state_dict(self) -> Dict[str, Any]:
        return {
            "format": _FORMAT, "format_version": _FORMAT_VERSION,
            "embeddings": self.embeddings.detach().cpu(), "valid": self.valid.detach().cpu(),
            "vocab": self.vocab.to_dict(), "vocab_fingerprint": self.vocab.fingerprint(),
            "templates": list(self.templates), "model_id": self.model_id, "meta": dict(self.meta),
        }

    @classmethod
    def from_state_dict(cls, state: Dict[str, Any]) -> "TextEmbeddings":
        if not isinstance(state, dict) or state.get("format") != _FORMAT:
            raise ValueError("not an ovsam_ros text-embedding file")
        if int(state.get("format_version", -1)) != _FORMAT_VERSION:
            raise ValueError(f"unsupported text-embedding format version {state.get('format_version')}")
        vd = state["vocab"]
        vocab = _vocab_from_state(vd)
        if state.get("vocab_fingerprint") not in (None, vocab.fingerprint()):
            raise ValueError("text-embedding file is inconsistent: vocabulary fingerprint mismatch")
        return cls(state["embeddings"], state["valid"], vocab, tuple(state.get("templates") or ()),
                   state.get("model_id"), dict(state.get("meta") or {}))

    def save(self, path: Union[str, Path]) -> None:
        """Write a ``.pt`` file atomically (temporary file + ``os.replace``)."""
        state = self.state_dict()
        atomic_write(Path(path), lambda fh: torch.save(state, fh))

    @classmethod
    def load(cls, path: Union[str, Path], map_location: Union[str, torch.device] = "cpu") -> "TextEmbeddings":
        state = torch.load(str(path), map_location=map_location, weights_only=True)
        return cls.from_state_dict(state)


def _vocab_from_state(vd: Dict[str, Any]) -> Vocabulary:
    """Exact inverse of :meth:`Vocabulary.to_dict` (no re-cleaning, no merging)."""
    entries = vd["classes"]
    return Vocabulary(
        name=vd.get("name", "custom"), version=vd.get("version", ""),
        classes=[e["name"] for e in entries], synonyms=[list(e["synonyms"]) for e in entries],
        split=[e["split"] for e in entries] if entries and "split" in entries[0] else None,
        ids=[e["id"] for e in entries] if entries and "id" in entries[0] else None,
    )


#: Prompts per text-tower call of :func:`encode_vocabulary` (the benchmark times one such batch).
ENCODE_BATCH_SIZE = 256


def encode_vocabulary(
    encode_text: Callable[[torch.Tensor], torch.Tensor],
    tokenizer: Callable[[List[str]], torch.Tensor],
    vocab: Vocabulary,
    templates: Union[str, Sequence[str]] = VILD_TEMPLATES,
    batch_size: int = ENCODE_BATCH_SIZE,
    device: Union[str, torch.device, None] = None,
    context_length: Optional[int] = None,
    progress: bool = True,
    model_id: Optional[str] = None,
) -> TextEmbeddings:
    """CLIP text embeddings of every synonym of every class.

    For each synonym: every template -> ``encode_text`` -> L2-normalise -> mean over the
    templates -> L2-normalise (the reference recipe). Identical synonyms are encoded once.

    Args:
        encode_text: ``tokens [B, L] -> features [B, D]``, e.g. ``open_clip_model.encode_text``
            or :class:`OpenCLIPTextEncoder` (which allows shortened contexts).
        tokenizer: ``list[str] -> LongTensor [B, L]`` (e.g. ``open_clip.get_tokenizer(name)``).
        vocab: the classes.
        templates: ``"vild"`` (14), ``"single"`` or a list of ``{}`` templates.
        batch_size: prompts per ``encode_text`` call.
        device: where tokens go; default ``encode_text.device`` if it has one, else CPU.
        context_length: ``None`` = automatic: each batch is cut to its longest prompt when
            ``encode_text.supports_truncation`` is true, otherwise the tokenizer's length is
            kept. An int fixes the length (padded or cut; ValueError if a prompt needs more).
        progress: show a tqdm bar when there are many batches.
        model_id: stored with the result (informational).

    Returns:
        :class:`TextEmbeddings` on the CPU, float32.
    """
    templates = get_templates(templates)
    if batch_size < 1:
        raise ValueError("batch_size must be >= 1")
    if device is None:
        device = getattr(encode_text, "device", None) or torch.device("cpu")
    device = torch.device(device)

    # unique synonyms, grouped by length so that automatic truncation wastes little padding
    unique: Dict[str, int] = {}
    for syns in vocab.synonyms:
        for s in syns:
            unique.setdefault(s, len(unique))
    names = list(unique)
    order = sorted(range(len(names)), key=lambda i: (len(names[i]), i))
    per_batch = max(1, batch_size // len(templates))
    batches = [order[i:i + per_batch] for i in range(0, len(order), per_batch)]

    bar = None
    if progress and len(batches) >= 8:
        try:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(names), desc=f"encoding '{vocab.name}'", unit="name", leave=False)
        except ImportError:  # pragma: no cover
            bar = None

    features: Optional[torch.Tensor] = None
    with torch.no_grad():
        for batch in batches:
            prompts = [_fill(t, names[i]) for i in batch for t in templates]
            tokens = _tokenize(tokenizer, prompts, encode_text, context_length).to(device)
            feats = encode_text(tokens)
            feats = F.normalize(feats.float(), dim=-1)
            feats = F.normalize(feats.view(len(batch), len(templates), -1).mean(dim=1), dim=-1).cpu()
            if features is None:
                features = torch.zeros(len(names), feats.shape[-1], dtype=torch.float32)
            features[torch.tensor(batch)] = feats
            if bar is not None:
                bar.update(len(batch))
    if bar is not None:
        bar.close()
    assert features is not None

    num_classes, max_syn, dim = len(vocab), vocab.max_synonyms, features.shape[-1]
    index = torch.zeros(num_classes, max_syn, dtype=torch.long)
    valid = torch.zeros(num_classes, max_syn, dtype=torch.bool)
    for c, syns in enumerate(vocab.synonyms):
        index[c, :len(syns)] = torch.tensor([unique[s] for s in syns])
        valid[c, :len(syns)] = True
    embeddings = features[index.view(-1)].view(num_classes, max_syn, dim)
    embeddings = embeddings * valid.unsqueeze(-1)
    return TextEmbeddings(embeddings, valid, vocab, templates, model_id)


# --------------------------------------------------------------------------------------
# Cache
# --------------------------------------------------------------------------------------


def file_identity(path: Union[str, Path], hash_content: bool = False) -> str:
    """Identity string of a weights file for cache keys: ``name:size:mtime`` (cheap), or the
    sha256 of its content with ``hash_content=True`` (robust to copies/touches, slower)."""
    path = Path(path)
    st = path.stat()
    if not hash_content:
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return f"sha256:{digest.hexdigest()}"


class TextEmbeddingCache:
    """On-disk get-or-compute store for :class:`TextEmbeddings`.

    Key = sha256(model id, weights identity, vocabulary fingerprint, templates). Files are
    written atomically; an unreadable or mismatching file is recomputed (with a
    :class:`VocabularyWarning`) and overwritten.
    """

    def __init__(self, root: Union[str, Path]):
        self.root = Path(os.path.expanduser(str(root)))

    @staticmethod
    def key(model_id: str, weights_id: str, vocab: Vocabulary, templates: Union[str, Sequence[str]]) -> str:
        payload = json.dumps({
            "format": _FORMAT_VERSION, "model": str(model_id), "weights": str(weights_id),
            "vocab": vocab.fingerprint(), "templates": list(get_templates(templates)),
        }, ensure_ascii=False, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(payload.encode("utf-8")).hexdigest()

    def path(self, model_id: str, weights_id: str, vocab: Vocabulary,
             templates: Union[str, Sequence[str]]) -> Path:
        stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", vocab.name)[:40] or "vocab"
        return self.root / f"{stem}-{self.key(model_id, weights_id, vocab, templates)[:32]}.pt"

    def get(self, model_id: str, weights_id: str, vocab: Vocabulary,
            templates: Union[str, Sequence[str]]) -> Optional[TextEmbeddings]:
        """The cached embeddings, or None when absent or unusable (a warning says why)."""
        path = self.path(model_id, weights_id, vocab, templates)
        if not path.is_file():
            return None
        try:
            emb = TextEmbeddings.load(path)
        except Exception as exc:  # corrupt, truncated, foreign file ...
            warnings.warn(f"text-embedding cache file {path} is unreadable ({type(exc).__name__}: {exc}); "
                          "recomputing", VocabularyWarning, stacklevel=2)
            return None
        if (emb.vocab.fingerprint() != vocab.fingerprint() or emb.templates != get_templates(templates)
                or emb.num_classes != len(vocab)):
            warnings.warn(f"text-embedding cache file {path} does not match the request; recomputing",
                          VocabularyWarning, stacklevel=2)
            return None
        return TextEmbeddings(emb.embeddings, emb.valid, vocab, emb.templates, emb.model_id, emb.meta)

    def put(self, model_id: str, weights_id: str, emb: TextEmbeddings) -> Path:
        path = self.path(model_id, weights_id, emb.vocab, emb.templates)
        self.root.mkdir(parents=True, exist_ok=True)
        emb.save(path)
        return path

    def get_or_compute(self, compute: Callable[[], TextEmbeddings], *, model_id: str, weights_id: str,
                       vocab: Vocabulary, templates: Union[str, Sequence[str]] = VILD_TEMPLATES) -> TextEmbeddings:
        """Cached embeddings if present, else ``compute()`` (which must encode ``vocab`` with
        ``templates``), stored before being returned."""
        cached = self.get(model_id, weights_id, vocab, templates)
        if cached is not None:
            return cached
        emb = compute()
        if emb.vocab.fingerprint() != vocab.fingerprint() or emb.templates != get_templates(templates):
            raise ValueError("compute() returned embeddings for a different vocabulary or template set")
        self.put(model_id, weights_id, emb)
        return emb
