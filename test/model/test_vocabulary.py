"""Vocabularies, prompt templates, CLIP text embeddings and their on-disk cache."""

from __future__ import annotations

import json
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from ovsam_ros.model.vocabulary import (
    SINGLE_TEMPLATES,
    VILD_TEMPLATES,
    VOCABULARY_DIR,
    OpenCLIPTextEncoder,
    TextEmbeddingCache,
    TextEmbeddings,
    Vocabulary,
    VocabularyWarning,
    check_truncation,
    clean_name,
    encode_vocabulary,
    file_identity,
    get_templates,
    classify_spec,
    load_vocabulary,
    name_prompts,
    split_synonyms,
)

open_clip = pytest.importorskip("open_clip")

TINY = "ovsam-test-tiny-text"
COCO_NOVEL = {"airplane", "bus", "cat", "dog", "cow", "elephant", "umbrella", "tie", "snowboard",
              "skateboard", "cup", "knife", "cake", "couch", "keyboard", "sink", "scissors"}


@pytest.fixture(scope="module")
def tiny_clip():
    """A randomly initialised open_clip CLIP with a 1-layer, 32-wide text tower (no weights)."""
    from open_clip import factory

    factory._MODEL_CONFIGS[TINY] = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    model = open_clip.create_model(TINY).eval()
    tokenizer = open_clip.get_tokenizer(TINY)
    return model, tokenizer


def _manual_embedding(model, tokenizer, synonym, templates):
    """Reference recipe by hand with open_clip's own encode_text on full 77-token prompts."""
    tokens = tokenizer([t.replace("{}", synonym) for t in templates])
    assert tokens.shape[1] == 77
    with torch.no_grad():
        feats = F.normalize(model.encode_text(tokens).float(), dim=-1)
    return F.normalize(feats.mean(dim=0), dim=-1)


# ------------------------------------------------------------------------------ names


def test_clean_and_split_follow_reference_recipe():
    assert clean_name("  Traffic_Light ") == "traffic light"
    assert clean_name("bat_(animal)") == "bat (animal)"
    assert split_synonyms("sofa/couch") == ["sofa", "couch"]
    assert split_synonyms("cup_or_mug") == ["cup", "mug"]
    assert split_synonyms("door_or_window, Gate / gate") == ["door", "window", "gate"]
    assert split_synonyms(" , / ") == []


def test_inline_lists():
    v = load_vocabulary("red cup, person, door handle")
    assert v.classes == ["red cup", "person", "door handle"]
    assert v.synonyms == [["red cup"], ["person"], ["door handle"]]
    assert v.split is None and v.name == "custom"
    v = load_vocabulary("sofa/couch, tv_or_television")
    assert v.synonyms == [["sofa", "couch"], ["tv", "television"]]
    # with ';' classes are separated by ';' and ',' separates synonyms
    v = load_vocabulary("sofa, couch; tv")
    assert v.classes == ["sofa", "tv"] and v.synonyms[0] == ["sofa", "couch"]
    assert load_vocabulary(["Cup", "door_handle"]).classes == ["cup", "door handle"]
    assert load_vocabulary("inline:person").classes == ["person"]
    assert load_vocabulary("INLINE:sofa/couch").synonyms == [["sofa", "couch"]]
    assert load_vocabulary("person,").classes == ["person"]  # a comma makes it a list


@pytest.mark.parametrize("spec, names", [
    ("lvsi", ["'lvis'"]), ("coco2", ["'coco'"]), ("COCO-BASEE", ["'coco_base'"]), ("red cup", []),
])
def test_a_single_unknown_name_is_an_error_listing_the_builtins(spec, names):
    # Before: "lvsi" became a one-class vocabulary and every mask was labeled "lvsi" (score 0.97).
    with pytest.raises(ValueError) as info:
        load_vocabulary(spec)
    message = str(info.value)
    assert f"unknown vocabulary {spec!r}" in message
    assert all(name in message for name in ("coco", "lvis", "imagenet21k", "lvis_rare"))
    assert "needs a comma" in message and f"'inline:{spec}'" in message
    for name in names:
        assert f"Did you mean {name}" in message


@pytest.mark.parametrize("spec", ["/tmp/nope/my_vocab", "~/no_such_dir/v", "./classes", "classes.json",
                                  "sofa/couch"])
def test_a_missing_path_is_file_not_found_not_a_class(spec, tmp_path):
    # Before: "/tmp/nope/my_vocab" gave the class "tmp" ('/' read as a synonym separator).
    with pytest.raises(FileNotFoundError, match="vocabulary file not found"):
        load_vocabulary(spec)
    with pytest.raises(FileNotFoundError, match="is a directory"):
        load_vocabulary(str(tmp_path))


def test_classify_spec_reads_no_file(tmp_path):
    path = tmp_path / "mine"  # an existing file without a suffix is still a file
    path.write_text("cup\nmug\n", encoding="utf-8")
    assert classify_spec(str(path)) == ("file", str(path))
    assert classify_spec(" LVIS ") == ("builtin", "lvis")
    assert classify_spec("cup; mug") == ("inline", "cup; mug")
    assert load_vocabulary(str(path)).classes == ["cup", "mug"]


def test_empty_vocabularies_raise_clear_errors(tmp_path):
    for spec in ["", "   ", " , ,, ", " ; ; "]:
        with pytest.raises(ValueError, match="empty|no class names"):
            load_vocabulary(spec)
    empty_txt = tmp_path / "empty.txt"
    empty_txt.write_text("\n  \n# only a comment\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_vocabulary(str(empty_txt))
    empty_json = tmp_path / "empty.json"
    empty_json.write_text(json.dumps({"classes": []}), encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_vocabulary(str(empty_json))
    with pytest.raises(ValueError, match="empty"):
        Vocabulary(name="x", version="", classes=[], synonyms=[])


def test_missing_file_names_it(tmp_path):
    missing = tmp_path / "no_such_classes.txt"
    with pytest.raises(FileNotFoundError, match="no_such_classes.txt"):
        load_vocabulary(str(missing))
    with pytest.raises(FileNotFoundError, match="nothing.json"):
        load_vocabulary(tmp_path / "nothing.json")


def test_txt_file_blank_lines_comments_synonyms_unicode(tmp_path):
    path = tmp_path / "robot_classes.txt"
    path.write_text("\ufeff# kitchen\nMug, cup\n\n  door_handle  \nÄpfel\n椅子\nsofa/couch\n", encoding="utf-8")
    v = load_vocabulary(str(path))
    assert v.name == "robot_classes"
    assert v.classes == ["mug", "door handle", "äpfel", "椅子", "sofa"]
    assert v.synonyms[0] == ["mug", "cup"] and v.synonyms[4] == ["sofa", "couch"]


def test_non_ascii_names_survive_and_tokenize(tiny_clip):
    _, tokenizer = tiny_clip
    v = load_vocabulary("café table, 椅子, niño")
    assert v.classes == ["café table", "椅子", "niño"]
    tokens = tokenizer(v.classes)
    assert ((tokens != 0).sum(dim=1) > 2).all()  # more than start/end tokens


def test_duplicates_are_merged_into_first_with_warning(tmp_path):
    with pytest.warns(VocabularyWarning, match="duplicate"):
        v = load_vocabulary("cup, person, Cup/mug, person")
    assert v.classes == ["cup", "person"]
    assert v.synonyms == [["cup", "mug"], ["person"]]
    path = tmp_path / "dup.json"
    path.write_text(json.dumps({"name": "d", "classes": [
        {"id": 7, "name": "cup", "split": "base"}, {"id": 9, "name": "CUP", "synonyms": ["cup", "beaker"],
                                                   "split": "novel"}]}), encoding="utf-8")
    with pytest.warns(VocabularyWarning):
        v = load_vocabulary(str(path))
    assert v.classes == ["cup"] and v.ids == [7] and v.split == ["base"] and v.synonyms == [["cup", "beaker"]]
    # no warning when there is nothing to merge
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_vocabulary("cup, mug")


def test_json_formats(tmp_path):
    ours = tmp_path / "ours.json"
    ours.write_text(json.dumps({"name": "mine", "version": "3", "classes": [
        {"id": 1, "name": "wiper", "synonyms": ["wiper_(for_windshield/screen)", "windscreen_wiper"],
         "split": "base"},
        {"id": 2, "name": "gripper", "split": "novel"},
        "tool_or_implement",
    ]}), encoding="utf-8")
    v = load_vocabulary(str(ours))
    assert (v.name, v.version) == ("mine", "3")
    # explicit synonym lists are cleaned, not split again on '/'
    assert v.synonyms[0] == ["wiper (for windshield/screen)", "windscreen wiper"]
    assert v.classes == ["wiper", "gripper", "tool"] and v.synonyms[2] == ["tool", "implement"]
    assert v.split == ["base", "novel", "unused"] and v.ids == [1, 2, None]

    coco_ann = tmp_path / "instances_val.json"
    coco_ann.write_text(json.dumps({"info": {"version": "1.0"}, "images": [], "annotations": [], "categories": [
        {"id": 3, "name": "car", "supercategory": "vehicle"},
        {"id": 1, "name": "person", "supercategory": "person"},
        {"id": 2, "name": "traffic_light", "supercategory": "outdoor"}]}), encoding="utf-8")
    v = load_vocabulary(str(coco_ann))
    assert v.classes == ["person", "traffic light", "car"] and v.ids == [1, 2, 3] and v.split is None

    lvis_ann = tmp_path / "lvis_like.json"
    lvis_ann.write_text(json.dumps({"categories": [
        {"id": 1, "name": "aerosol_can", "synonyms": ["aerosol_can", "spray_can"], "frequency": "c"},
        {"id": 2, "name": "applesauce", "synonyms": ["applesauce"], "frequency": "r"}]}), encoding="utf-8")
    v = load_vocabulary(str(lvis_ann))
    assert v.synonyms[0] == ["aerosol can", "spray can"] and v.split == ["base", "novel"]

    plain = tmp_path / "plain.json"
    plain.write_text(json.dumps(["cup", "door handle"]), encoding="utf-8")
    assert load_vocabulary(str(plain)).classes == ["cup", "door handle"]

    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="not valid JSON"):
        load_vocabulary(str(bad))


def test_json_round_trip_and_fingerprint(tmp_path):
    v = load_vocabulary("lvis").subset([0, 5, 161])
    path = tmp_path / "sub.json"
    v.save_json(path)
    w = load_vocabulary(str(path))
    assert w.classes == v.classes and w.synonyms == v.synonyms and w.split == v.split and w.ids == v.ids
    assert w.fingerprint() == v.fingerprint()
    assert load_vocabulary("coco").fingerprint() == load_vocabulary("coco").fingerprint()
    changed = Vocabulary(v.name, v.version, v.classes, [s + ["extra"] for s in v.synonyms], v.split, v.ids)
    assert changed.fingerprint() != v.fingerprint()
    assert len(v.fingerprint()) == 64


# ----------------------------------------------------------------------- built-ins


def test_coco_vocabulary_and_open_vocabulary_split():
    v = load_vocabulary("coco")
    assert len(v) == 80 and v.version == "2017"
    assert v.ids[0] == 1 and v.classes[0] == "person" and v.ids[-1] == 90 and v.classes[-1] == "toothbrush"
    assert len(set(v.ids)) == 80 and max(v.ids) == 90
    assert len(v.base_indices()) == 48 and len(v.novel_indices()) == 17 and len(v.unused_indices()) == 15
    assert {v.classes[i] for i in v.novel_indices()} == COCO_NOVEL
    base = {v.classes[i] for i in v.base_indices()}
    assert {"person", "train", "bear", "toaster", "toothbrush", "mouse"} <= base
    assert {"traffic light", "hair drier", "sports ball"} <= {v.classes[i] for i in v.unused_indices()}
    assert int(v.split_mask("base").sum()) == 48
    assert len(load_vocabulary("coco_base")) == 48
    assert set(load_vocabulary("COCO_NOVEL").classes) == COCO_NOVEL
    assert len(load_vocabulary("coco_ov")) == 65


def test_coco_synonyms_are_the_reference_lists():
    """Literal lists from HarborYuan/ovsam seg/datasets/coco_ins_ov.py (CocoOVDataset.METAINFO), split
    on ',' as its tools/gen_cls.py does; the display names stay COCO's category names."""
    v = load_vocabulary("coco")
    syn = {c: s for c, s in zip(v.classes, v.synonyms)}
    assert syn["person"] == ["person", "child", "girl", "boy", "woman", "man", "people", "children", "girls",
                             "boys", "women", "men", "lady", "guy", "ladies", "guys", "clothes"]
    assert syn["train"] == ["train", "trains", "locomotive", "locomotives", "freight train"]
    assert syn["cat"] == ["cat", "cats", "kitties", "kitty"]
    assert syn["orange"] == ["orange fruit"]  # the reference never encodes the bare word "orange"
    assert syn["remote"] == ["tv remote", "remote control"]
    assert syn["cell phone"] == ["cell phone", "mobile"]
    assert syn["couch"] == ["couch", "sofa", "sofas"]
    assert syn["dining table"] == ["dining table", "dining tables", "diningtable", "diningtables", "plate",
                                   "plates", "diningtable tablecloth"]
    assert syn["potted plant"] == ["potted plant", "potted plants", "pottedplant", "pottedplants", "planter",
                                   "planters"]
    assert syn["scissors"] == ["scissor", "scissors"]
    assert syn["wine glass"] == ["wine glass", "wine glasses", "wineglass"]
    assert syn["traffic light"] == ["traffic light"] and syn["sports ball"] == ["sports ball"]
    assert sum(s != [c] for c, s in zip(v.classes, v.synonyms)) == 53  # the count
    assert v.max_synonyms == 17 and sum(map(len, v.synonyms)) == 173
    assert all(v.find(c) == i for i, c in enumerate(v.classes))  # category names still find their class
    assert v.synonyms[v.find("sofa")] == syn["couch"]
    # names only: COCO's 80 category names (the reference's CLASSES_ORIGINAL), one text each
    names = load_vocabulary("coco", names_only=True)
    assert names.synonyms == [[c] for c in v.classes] and names.classes == v.classes and names.split == v.split
    assert load_vocabulary("coco_novel").synonyms[0] == ["airplane", "airplanes"]  # subsets keep the lists


def _reference_split_label(x: str) -> list:
    """A transcription of the reference's split_label (HarborYuan/ovsam tools/gen_cls.py)."""
    x = x.replace("_or_", ",").replace("/", ",").replace("_", " ").lower()
    return [part.strip() for part in x.split(",")]


def test_lvis_names_only_is_the_reference_text():
    """The reference encodes LVIS from mmdet's LVISV1Dataset classes (the LVIS `name` field) through
    split_label: one text per class, except 'tape_(sticky_cloth_or_paper)', which it cuts at '_or_'."""
    raw = json.loads((VOCABULARY_DIR / "lvis.json").read_text(encoding="utf-8"))["classes"]
    full = load_vocabulary("lvis")
    v = load_vocabulary("lvis", names_only=True)
    assert v.synonyms == [_reference_split_label(c["name"]) for c in raw]
    assert (v.classes, v.ids, v.split) == (full.classes, full.ids, full.split)
    several = [(c, s) for c, s in zip(v.classes, v.synonyms) if len(s) != 1]
    assert several == [("tape (sticky cloth or paper)", ["tape (sticky cloth", "paper)"])]
    syn = dict(zip(v.classes, v.synonyms))
    assert syn["aerosol can"] == ["aerosol can"] and full.synonyms[0] == ["aerosol can", "spray can"]
    assert syn["band aid"] == ["band aid"] and syn["bat (animal)"] == ["bat (animal)"]
    assert syn["windshield wiper"] == ["windshield wiper"]  # not its '/' synonym 'wiper (for windshield/screen)'
    assert name_prompts("tape_(sticky_cloth_or_paper)") == ["tape (sticky cloth", "paper)"]
    # the same from an already loaded vocabulary, a subset, and applied twice
    assert load_vocabulary(full, names_only=True).synonyms == v.synonyms
    assert v.names_only() is v
    rare = load_vocabulary("lvis_rare", names_only=True)
    assert len(rare) == 337 and rare.max_synonyms == 1
    assert load_vocabulary("lvis", names_only=True, max_synonyms=1).max_synonyms == 1
    # text entries have no separate name field: names only = their display name
    assert load_vocabulary("sofa/couch, tv", names_only=True).synonyms == [["sofa"], ["tv"]]


def test_synonym_options_are_checked():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(ValueError, match="max_synonyms"):
            load_vocabulary("coco", max_synonyms=bad)
    with pytest.raises(ValueError, match="names_only"):
        load_vocabulary("coco", names_only="no")


def test_lvis_vocabulary_counts_and_facts():
    raw = json.loads((VOCABULARY_DIR / "lvis.json").read_text(encoding="utf-8"))
    freq = [c["frequency"] for c in raw["classes"]]
    assert (len(freq), freq.count("r"), freq.count("c"), freq.count("f")) == (1203, 337, 461, 405)
    v = load_vocabulary("lvis")
    assert len(v) == 1203 and v.ids == list(range(1, 1204)) and v.version == "v1"
    assert len(v.novel_indices()) == 337 and len(v.base_indices()) == 866 and not v.unused_indices()
    assert v.synonyms[0] == ["aerosol can", "spray can"]
    i = v.find("bull")
    assert v.classes[i] == "bull" and v.synonyms[i] == ["horned cow"]
    assert v.split[v.find("applesauce")] == "novel" and v.split[v.find("person")] == "base"
    assert len(load_vocabulary("lvis_rare")) == 337 and len(load_vocabulary("lvis_base")) == 866
    assert load_vocabulary("lvis", max_synonyms=2).max_synonyms == 2


def test_imagenet21k_from_timm_lists():
    timm_data = pytest.importorskip("timm.data")
    try:
        timm_data.ImageNetInfo("imagenet-21k")
    except Exception as exc:  # pragma: no cover - depends on the timm install
        pytest.skip(f"timm ImageNet-21K lists unavailable: {exc}")
    v = load_vocabulary("imagenet21k")
    assert len(v) == 21843
    assert v.ids[0] == "n00004475" and v.classes[0] == "organism" and v.synonyms[0] == ["organism", "being"]
    assert all(isinstance(i, str) and i.startswith("n") for i in v.ids[:100])
    assert v.max_synonyms >= 10
    assert load_vocabulary("in21k", max_synonyms=3).max_synonyms == 3


# ----------------------------------------------------------------------- templates


def test_templates():
    assert len(VILD_TEMPLATES) == 14 and len(set(VILD_TEMPLATES)) == 14
    assert all(t.count("{}") == 1 for t in VILD_TEMPLATES)
    assert get_templates("vild") == VILD_TEMPLATES and get_templates("single") == SINGLE_TEMPLATES
    assert get_templates(["a {} here"]) == ("a {} here",)
    with pytest.raises(ValueError):
        get_templates(["no placeholder"])
    with pytest.raises(ValueError):
        get_templates("nonexistent")


# ------------------------------------------------------------------------ encoding


def test_embeddings_match_open_clip_by_hand_with_padding_and_mask(tiny_clip):
    model, tokenizer = tiny_clip
    vocab = Vocabulary("t", "", ["dog", "sofa", "cup"], [["dog"], ["sofa", "couch", "settee"], ["cup", "mug"]])
    templates = VILD_TEMPLATES[:5]
    emb = encode_vocabulary(model.encode_text, tokenizer, vocab, templates, batch_size=4, progress=False)
    assert emb.embeddings.shape == (3, 3, 32) and emb.embeddings.dtype == torch.float32
    assert emb.valid.tolist() == [[True, False, False], [True, True, True], [True, True, False]]
    assert torch.equal(emb.embeddings[~emb.valid], torch.zeros(3, 32))
    for c, syns in enumerate(vocab.synonyms):
        for s, syn in enumerate(syns):
            ref = _manual_embedding(model, tokenizer, syn, templates)
            assert torch.allclose(emb.embeddings[c, s], ref, atol=1e-5), (c, s)
    norms = emb.embeddings.norm(dim=-1)
    assert torch.allclose(norms[emb.valid], torch.ones(int(emb.valid.sum())), atol=1e-5)
    assert emb.templates == templates


def test_truncated_context_equals_full_context(tiny_clip):
    model, tokenizer = tiny_clip
    enc = OpenCLIPTextEncoder(model)
    assert enc.supports_truncation and enc.context_length == 77
    prompts = [t.replace("{}", n) for t in VILD_TEMPLATES for n in ("fire hydrant", "dog")]
    full = tokenizer(prompts)
    short_len = int((full != 0).sum(dim=1).max())
    assert short_len < 20
    with torch.no_grad():
        ref = model.encode_text(full)
        out = enc(full[:, :short_len])
        out_full = enc(full)
    assert torch.allclose(out, ref, atol=1e-5) and torch.allclose(out_full, ref, atol=1e-5)
    assert check_truncation(enc, tokenizer) < 1e-5

    seen_lengths = []

    def spy(tokens):
        seen_lengths.append(tokens.shape[1])
        return enc(tokens)

    spy.supports_truncation = True
    vocab = load_vocabulary("coco", names_only=True).subset(range(12))
    auto = encode_vocabulary(spy, tokenizer, vocab, "vild", batch_size=64, progress=False)
    plain = encode_vocabulary(model.encode_text, tokenizer, vocab, "vild", batch_size=64, progress=False)
    assert max(seen_lengths) < 20  # prompts were cut well below 77
    assert torch.allclose(auto.embeddings, plain.embeddings, atol=1e-5)
    fixed = encode_vocabulary(enc, tokenizer, vocab, "single", context_length=16, progress=False)
    assert fixed.embeddings.shape == (12, 1, 32)
    with pytest.raises(ValueError, match="too short"):
        encode_vocabulary(enc, tokenizer, vocab, "vild", context_length=4, progress=False)


def test_encoder_without_causal_text_tower_does_not_truncate():
    received = []

    class Plain(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def encode_text(self, tokens):
            received.append(tuple(tokens.shape))
            return torch.ones(tokens.shape[0], 4)

    def tokenizer(texts):  # CLIP-like: [SOT, word, EOT] then zero padding up to 77
        tokens = torch.zeros(len(texts), 77, dtype=torch.long)
        tokens[:, :3] = torch.tensor([49406, 320, 49407])
        return tokens

    enc = OpenCLIPTextEncoder(Plain())
    assert not enc.supports_truncation
    vocab = Vocabulary("p", "", ["a", "b"], [["a"], ["b"]])
    emb = encode_vocabulary(enc, tokenizer, vocab, "single", progress=False)
    assert emb.embeddings.shape == (2, 1, 4)
    # Without a causal text tower every prompt must reach the model at the full 77 tokens
    # (cutting to the 3 non-pad tokens would change a non-causal tower's output).
    assert received and all(length == 77 for _, length in received), received


def test_text_embeddings_save_load_and_device(tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    vocab = load_vocabulary("sofa/couch, cup")
    emb = encode_vocabulary(OpenCLIPTextEncoder(model), tokenizer, vocab, "single", progress=False, model_id=TINY)
    path = tmp_path / "emb.pt"
    emb.save(path)
    back = TextEmbeddings.load(path)
    assert torch.equal(back.embeddings, emb.embeddings) and torch.equal(back.valid, emb.valid)
    assert back.vocab.fingerprint() == vocab.fingerprint() and back.templates == SINGLE_TEMPLATES
    assert back.model_id == TINY
    half = emb.to("cpu", torch.float16)
    assert half.embeddings.dtype == torch.float16 and half.valid.dtype == torch.bool
    flat, mask = emb.flat()
    assert flat.shape == (4, 32) and mask.tolist() == [True, True, True, False]
    assert [p.name for p in tmp_path.iterdir()] == ["emb.pt"]  # no temporary files left


# --------------------------------------------------------------------------- cache


def test_cache_hits_keys_and_recovers_from_corruption(tiny_clip, tmp_path):
    model, tokenizer = tiny_clip
    enc = OpenCLIPTextEncoder(model)
    calls = {"n": 0}

    def counting(tokens):
        calls["n"] += 1
        return enc(tokens)

    vocab = load_vocabulary("coco_novel")
    cache = TextEmbeddingCache(tmp_path / "cache")

    def get(templates, weights="w1"):
        return cache.get_or_compute(
            lambda: encode_vocabulary(counting, tokenizer, vocab, templates, progress=False),
            model_id=TINY, weights_id=weights, vocab=vocab, templates=templates)

    first = get("single")
    n_first = calls["n"]
    assert n_first > 0
    second = get("single")
    assert calls["n"] == n_first  # served from disk, encoder not called
    assert torch.equal(first.embeddings, second.embeddings) and second.vocab is vocab

    key_single = TextEmbeddingCache.key(TINY, "w1", vocab, "single")
    assert key_single != TextEmbeddingCache.key(TINY, "w1", vocab, "vild")
    assert key_single != TextEmbeddingCache.key(TINY, "w2", vocab, "single")
    assert key_single != TextEmbeddingCache.key("other-model", "w1", vocab, "single")
    assert key_single != TextEmbeddingCache.key(TINY, "w1", load_vocabulary("coco_base"), "single")
    # names / synonyms are part of the key: no stale embeddings after a synonym-policy or list change
    assert key_single != TextEmbeddingCache.key(TINY, "w1", load_vocabulary("coco_novel", names_only=True), "single")
    assert key_single != TextEmbeddingCache.key(TINY, "w1", load_vocabulary("coco_novel", max_synonyms=1), "single")
    old_single_names = Vocabulary(vocab.name, vocab.version, vocab.classes, [[c] for c in vocab.classes],
                                  vocab.split, vocab.ids)  # the coco.json before the reference lists
    assert key_single != TextEmbeddingCache.key(TINY, "w1", old_single_names, "single")
    get(VILD_TEMPLATES[:2])
    assert calls["n"] > n_first  # different templates -> computed
    assert len(list((tmp_path / "cache").glob("*.pt"))) == 2

    path = cache.path(TINY, "w1", vocab, "single")
    path.write_bytes(b"definitely not a torch file")
    n_before = calls["n"]
    with pytest.warns(VocabularyWarning, match="unreadable"):
        third = get("single")
    assert calls["n"] > n_before
    assert torch.allclose(third.embeddings, first.embeddings, atol=1e-6)
    assert TextEmbeddings.load(path).num_classes == 17  # file rewritten and valid
    assert not list((tmp_path / "cache").glob("*.tmp"))


def test_file_identity(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"abc")
    assert file_identity(f).endswith(":3:" + str(f.stat().st_mtime_ns))
    assert file_identity(f, hash_content=True).startswith("sha256:")


def test_long_inline_list_is_not_taken_for_a_path():
    names = ", ".join(f"class {i}" for i in range(10_000))  # far beyond the 255-byte file-name limit
    vocab = load_vocabulary(names)
    assert len(vocab) == 10_000 and vocab.classes[9_999] == "class 9999"


# --------------------------------------------------------------------- not a regular file (#24 item 12)
def _returns_within(fn, seconds=10.0):
    """``fn()``'s exception (or None) from a daemon thread; fails the test if it is still running
    after ``seconds`` (a read blocked on a FIFO)."""
    import threading

    outcome = {}

    def target():
        try:
            fn()
        except BaseException as error:  # noqa: BLE001 - handed to the test
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(seconds)
    return thread.is_alive(), outcome.get("error")


def _release_fifo(path):
    """Unblock a reader stuck opening ``path`` (a FIFO): a writer opens and closes it."""
    import os

    try:
        os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    except OSError:
        pass


def _make(kind, tmp_path):
    import os
    import socket

    path = tmp_path / f"classes_{kind}.txt"
    if kind == "fifo":
        os.mkfifo(path)
    elif kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(path))
        sock.close()
    elif kind == "directory":
        path.mkdir()
    elif kind == "device":
        path.symlink_to("/dev/null")
    elif kind == "link_to_fifo":
        os.mkfifo(tmp_path / "real_fifo")
        path.symlink_to(tmp_path / "real_fifo")
    return path


_KIND_WORDS = {"fifo": "a named pipe (FIFO)", "socket": "a socket", "directory": "a directory",
               "device": "a character device", "link_to_fifo": "a named pipe (FIFO)"}


@pytest.mark.parametrize("kind", sorted(_KIND_WORDS))
@pytest.mark.parametrize("as_path", [False, True], ids=["string", "Path"])
def test_a_vocabulary_that_is_not_a_regular_file_says_what_it_is(kind, as_path, tmp_path):
    """Before: a FIFO, socket or device as vocabulary said 'vocabulary file not found' (it exists)."""
    from pathlib import Path

    path = _make(kind, tmp_path)
    spec = Path(path) if as_path else str(path)
    blocked, error = _returns_within(lambda: load_vocabulary(spec))
    if blocked:
        _release_fifo(path)
    assert not blocked, "reading the vocabulary blocked"
    assert isinstance(error, FileNotFoundError), error
    message = str(error)
    assert f"is {_KIND_WORDS[kind]}, not a regular file: {path}" in message
    assert "not found" not in message
    if not as_path:  # the node's parameter check reads no file and says the same
        with pytest.raises(FileNotFoundError, match=re.escape(_KIND_WORDS[kind])):
            classify_spec(str(path))


def test_a_fifo_swapped_in_after_the_check_is_refused_without_blocking(tmp_path, monkeypatch):
    """The file check and the read are separate steps: a FIFO put in the file's place between
    them must be refused on the opened descriptor, not waited on (a plain open() blocks until a
    writer comes)."""
    import os

    from ovsam_ros.model import vocabulary

    path = tmp_path / "classes.txt"
    os.mkfifo(path)
    monkeypatch.setattr(vocabulary, "_is_file", lambda text: True)  # the check saw a regular file
    blocked, error = _returns_within(lambda: load_vocabulary(str(path)), seconds=5.0)
    if blocked:
        _release_fifo(path)
    assert not blocked, "load_vocabulary blocked on a FIFO"
    assert isinstance(error, FileNotFoundError) and "a named pipe (FIFO)" in str(error)


def test_a_regular_file_still_loads_and_bad_bytes_name_the_file(tmp_path):
    path = tmp_path / "classes.txt"
    path.write_text("cup\ndoor handle\n", encoding="utf-8")
    assert load_vocabulary(str(path)).classes == ["cup", "door handle"]
    path.write_bytes(b"cup\n\xff\xfe\xfa\n")
    with pytest.raises(ValueError, match=f"{path} is not UTF-8 text"):
        load_vocabulary(str(path))
