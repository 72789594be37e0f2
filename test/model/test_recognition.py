"""Open-vocabulary classification: cosine logits, top-k labels and the CLIP ensemble."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from ovsam_ros.model.recognition import DEFAULT_LOGIT_SCALE, RecognitionHead, class_logits, ensemble, topk_labels
from ovsam_ros.model.vocabulary import TextEmbeddings, Vocabulary, encode_vocabulary, load_vocabulary


def _fake_text(num_classes: int, dim: int = 64, max_syn: int = 2, seed: int = 0) -> TextEmbeddings:
    g = torch.Generator().manual_seed(seed)
    emb = F.normalize(torch.randn(num_classes, max_syn, dim, generator=g), dim=-1)
    valid = torch.ones(num_classes, max_syn, dtype=torch.bool)
    valid[::2, 1:] = False  # every other class has a single synonym
    emb = emb * valid.unsqueeze(-1)
    names = [f"class {i}" for i in range(num_classes)]
    synonyms = [[n] if i % 2 == 0 else [n, f"alias {i}"] for i, n in enumerate(names)]
    vocab = Vocabulary("fake", "", names, synonyms)
    return TextEmbeddings(emb, valid, vocab)


class _CountMatmuls:
    """Counts matrix-multiply kernels dispatched inside the block."""

    def __enter__(self):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                if func.overloadpacket.__name__ in {"mm", "addmm", "bmm", "baddbmm", "matmul", "dot", "mv"}:
                    counter.count += 1
                return func(*args, **(kwargs or {}))

        self.count = 0
        self._mode = Mode()
        self._mode.__enter__()
        return self

    def __exit__(self, *exc):
        self._mode.__exit__(*exc)


def test_logit_scale_is_the_references_exp_4_6052():
    """The reference head: logit_scale = torch.tensor(4.6052, float32); logits = logit_scale.exp() * cos."""
    reference = torch.tensor(4.6052, dtype=torch.float32).exp()
    assert DEFAULT_LOGIT_SCALE == pytest.approx(math.exp(4.6052), rel=1e-6)  # 100.00298 by hand (float64)
    assert DEFAULT_LOGIT_SCALE == float(reference) and DEFAULT_LOGIT_SCALE != 100.0
    text = _fake_text(3, dim=8)
    region = text.embeddings[0, 0] * 2.5  # any norm: class 0's own text direction
    logits = class_logits(region[None], text)
    by_hand = [max(float(F.cosine_similarity(region, text.embeddings[c, k], dim=0)) for k in range(2)
                   if text.valid[c, k]) * math.exp(4.6052) for c in range(3)]
    assert logits[0, :3].tolist() == pytest.approx(by_hand, abs=1e-4)
    assert logits[0, 0].item() == pytest.approx(100.003, abs=1e-3)


def test_21k_vocabulary_one_matmul_picks_the_right_class():
    text = _fake_text(21843, dim=64)
    target = 12345
    regions = torch.stack([text.embeddings[target, 1] * 3.7, text.embeddings[7, 0] * 0.2])
    with _CountMatmuls() as counter:
        logits = class_logits(regions, text)
    assert counter.count == 1
    assert logits.shape == (2, 21844) and logits.dtype == torch.float32
    assert logits.argmax(dim=1).tolist() == [target, 7]
    assert logits[0, target].item() == pytest.approx(math.exp(4.6052), abs=1e-4)
    assert torch.all(logits[:, -1] == 0)
    labels = topk_labels(logits, text.vocab, k=3)
    assert labels[0][0][:2] == (target, f"class {target}")


def test_max_over_valid_synonyms_and_scale():
    emb = torch.zeros(3, 2, 4)
    emb[0, 0] = torch.tensor([1.0, 0, 0, 0])
    emb[0, 1] = torch.tensor([0, 1.0, 0, 0])
    emb[1, 0] = torch.tensor([0, 0, 1.0, 0])
    emb[1, 1] = torch.tensor([0, 1.0, 0, 0])  # identical to the region but INVALID: must be ignored
    emb[2, 0] = F.normalize(torch.tensor([0, 1.0, 1.0, 0]), dim=0)
    valid = torch.tensor([[True, True], [True, False], [True, False]])
    text = TextEmbeddings(emb, valid, Vocabulary("v", "", ["a", "b", "c"], [["a", "a2"], ["b"], ["c"]]))
    region = torch.tensor([[0, 2.0, 0, 0]])
    logits = class_logits(region, text, logit_scale=100.0)
    assert logits[0, 0].item() == pytest.approx(100.0)  # second synonym of "a" matches
    assert logits[0, 1].item() == pytest.approx(0.0)  # masked synonym ignored
    assert logits[0, 2].item() == pytest.approx(100.0 / math.sqrt(2), rel=1e-6)
    assert logits[0, 3].item() == 0.0
    no_bg = class_logits(region, text, logit_scale=10.0, with_background=False)
    assert no_bg.shape == (1, 3) and no_bg[0, 0].item() == pytest.approx(10.0)


def test_matches_direct_cosine_computation():
    text = _fake_text(50, dim=16, max_syn=3, seed=1)
    regions = torch.randn(9, 16)
    sims = F.normalize(regions, dim=-1) @ text.embeddings.reshape(-1, 16).t()
    sims = sims.view(9, 50, 3).masked_fill(~text.valid, -float("inf")).amax(-1) * math.exp(4.6052)
    assert torch.allclose(class_logits(regions, text, with_background=False), sims, atol=1e-4)
    half = class_logits(regions.half(), text.to(dtype=torch.float16), with_background=False)
    assert half.dtype == torch.float32 and torch.allclose(half, sims, atol=0.2)


def test_topk_labels_scores():
    text = _fake_text(30, dim=8, seed=2)
    logits = class_logits(torch.randn(4, 8), text)
    probs = logits.softmax(-1)
    labels = topk_labels(logits, text.vocab, k=5)
    assert len(labels) == 4
    for row, lab in enumerate(labels):
        assert len(lab) == 5
        scores = [s for _, _, s in lab]
        assert scores == sorted(scores, reverse=True)
        assert sum(scores) <= 1.0 + 1e-6
        assert all(0.0 <= s <= 1.0 for s in scores)
        for idx, name, score in lab:
            assert idx < 30 and name == text.vocab.classes[idx]
            assert score == pytest.approx(probs[row, idx].item(), rel=1e-5)
    # all classes + background sum to one
    everything = topk_labels(logits, text.vocab, k=100, exclude_background=False)
    assert len(everything[0]) == 31 and sum(s for *_, s in everything[0]) == pytest.approx(1.0, abs=1e-5)
    assert any(name == "background" and idx == 30 for idx, name, _ in everything[0])
    assert len(topk_labels(logits[:, :30], text.vocab, k=3)[0]) == 3  # logits without background
    with pytest.raises(ValueError):
        topk_labels(logits[:, :10], text.vocab)


def test_non_finite_regions_give_background_only():
    text = _fake_text(10, dim=8, seed=3)
    regions = torch.randn(4, 8)
    regions[1, 3] = float("nan")
    regions[2, 0] = float("inf")
    regions[3] = 0.0
    logits = class_logits(regions, text)
    assert torch.isfinite(logits[0]).all()
    for row in (1, 2):
        assert torch.isinf(logits[row, :10]).all() and (logits[row, :10] < 0).all()
        assert logits[row, 10].item() == 0.0
        assert logits[row].softmax(-1)[10].item() == 1.0
    assert torch.all(logits[3] == 0)  # zero vector: no evidence for any class
    labels = topk_labels(logits, text.vocab, k=3)
    assert labels[1] == [] and labels[2] == [] and len(labels[0]) == 3
    no_bg = class_logits(regions, text, with_background=False)
    assert topk_labels(no_bg, text.vocab)[1] == []


def test_ensemble_follows_reference_geometric_mean():
    torch.manual_seed(0)
    learned, clip = torch.randn(5, 7), torch.randn(5, 7)  # 6 classes + background
    base = torch.tensor([True, True, False, True, False, False])
    out = ensemble(learned, clip, base, alpha=0.1, beta=0.9)
    q, p = learned.softmax(-1), clip.softmax(-1)
    seen = torch.cat([base, torch.tensor([True])]).float()  # background counts as seen
    ref = (q ** 0.9 * p ** 0.1).log() * seen + (q ** 0.1 * p ** 0.9).log() * (1 - seen)
    assert torch.allclose(out, ref, atol=1e-5)
    # rows marked invalid use the learned classifier alone
    valid = torch.tensor([True, False, True, True, False])
    out_v = ensemble(learned, clip, base, valid=valid)
    assert torch.allclose(out_v[1], learned[1].log_softmax(-1), atol=1e-6)
    assert torch.allclose(out_v[0], ref[0], atol=1e-5)
    # ignored classes can never be chosen
    ignore = torch.tensor([False, False, False, False, False, True])
    out_i = ensemble(learned, clip, base, ignore_mask=ignore)
    assert torch.isinf(out_i[:, 5]).all()
    vocab = Vocabulary("e", "", list("abcdef"), [[c] for c in "abcdef"])
    assert all(idx != 5 for row in topk_labels(out_i, vocab, k=6) for idx, *_ in row)
    # learned -inf (e.g. an excluded class) with zero weight does not produce NaN
    learned_inf = learned.clone()
    learned_inf[:, 2] = -float("inf")
    assert not torch.isnan(ensemble(learned_inf, clip, base, valid=torch.zeros(5, dtype=torch.bool))).any()


def test_recognition_head_module():
    text = _fake_text(20, dim=8, seed=4)
    head = RecognitionHead(text)
    regions = torch.randn(3, 8)
    assert torch.equal(head(regions), class_logits(regions, text))
    assert "text_embeddings" not in head.state_dict()
    other = _fake_text(5, dim=8, seed=5)
    head.set_text(other)
    assert head(regions).shape == (3, 6) and head.vocab is other.vocab
    assert len(head.topk(regions, k=2)[0]) == 2
    with pytest.raises(RuntimeError):
        RecognitionHead()(regions)


def test_end_to_end_with_tiny_open_clip():
    open_clip = pytest.importorskip("open_clip")
    from open_clip import factory

    name = "ovsam-test-tiny-text-rec"
    factory._MODEL_CONFIGS[name] = {
        "embed_dim": 32,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
    }
    torch.manual_seed(0)
    model = open_clip.create_model(name).eval()
    vocab = load_vocabulary("coco")
    text = encode_vocabulary(model.encode_text, open_clip.get_tokenizer(name), vocab, "single", progress=False)
    dog = vocab.find("dog")
    labels = topk_labels(class_logits(text.embeddings[dog, :1] * 5, text), vocab, k=1)
    assert labels[0][0][:2] == (dog, "dog")

    # A region that comes from an IMAGE through CLIP's image tower (not a class's own text embedding): its top-3
    # labels and scores equal the rule written out by hand from open_clip's encoders: each synonym's prompt
    # encoded alone, cosine x exp(4.6052), max over the class's synonyms, softmax with a background logit 0.
    from ovsam_ros.model.vocabulary import get_templates

    image = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        regions = model.encode_image(image)
        template = get_templates("single")[0]
        tok = open_clip.get_tokenizer(name)
        hand = torch.full((2, len(vocab)), -torch.inf)
        for c, synonyms in enumerate(vocab.synonyms):
            t = F.normalize(model.encode_text(tok([template.format(s) for s in synonyms])), dim=-1)
            hand[:, c] = (F.normalize(regions, dim=-1) @ t.t()).amax(dim=1) * math.exp(4.6052)
    probs = torch.cat([hand, torch.zeros(2, 1)], dim=1).softmax(dim=-1)[:, :-1]
    assert max(len(s) for s in vocab.synonyms) > 1  # the max over synonyms is exercised
    got = topk_labels(class_logits(regions, text), vocab, k=3)
    for row, p in zip(got, probs):
        want = p.topk(3)
        assert [c for c, _, _ in row] == want.indices.tolist()
        assert [name for _, name, _ in row] == [vocab.classes[i] for i in want.indices.tolist()]
        assert [sc for _, _, sc in row] == pytest.approx(want.values.tolist(), rel=1e-4, abs=1e-7)
    assert got[0][0][0] != got[1][0][0] or got[0][0][2] != pytest.approx(got[1][0][2])  # the two images differ
