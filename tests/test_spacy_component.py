"""The ``kner`` spaCy component: alignment modes, counters, extensions, saving, displaCy, bad texts.

Most tests put a fake extractor behind ``Extractor.load`` that returns known entities, so what
lands in ``doc.ents`` is decided by the test; two tests run a tiny random model end to end.
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import spacy
from spacy import displacy

from helpers import tiny_model_folder
from kner.baselines.component import KnerComponent
from kner.data.example import Entity
from kner.errors import ConfigError
from kner.inference import Extractor, Prediction

TEXT = "이순신은 조선의 장군이다."
# 이순신 ends inside the whitespace token 이순신은 (the particle 은); kiwi splits it off.
KNOWN = {
    TEXT: [Entity(0, 3, "PER", "이순신"), Entity(5, 7, "LOC", "조선")],
    # 이순신은 조선 crosses into the token 조선의: contract keeps 이순신은; it overlaps the other two.
    "이순신은 조선의 장군이다 했다": [
        Entity(0, 3, "PER", "이순신"),
        Entity(0, 7, "ORG", "이순신은 조선"),
        Entity(5, 8, "LOC", "조선의"),
    ],
    "서울 부산": [Entity(0, 2, "LOC", "서울"), Entity(3, 5, "LOC", "부산")],
}


class FakeExtractor:
    def __init__(self, path, **opts):
        self.path, self.opts = str(path), opts
        self.calls: list[list[str]] = []

    def predict(self, texts):
        self.calls.append(list(texts))
        if any("boom" in t for t in texts):
            raise RuntimeError("cannot take 'boom'")
        out = []
        for t in texts:
            # spaCy's own tokenizer already refuses what kner.textio.text_problem catches (a lone
            # surrogate), so a text the model cannot take is marked here by a word.
            why = "cannot read this one" if "bad" in t else None
            ents = [] if why else KNOWN.get(t, [])
            out.append(
                Prediction(
                    list(ents), outputs=[] if why else [" ".join(f"<{e.label}:{e.text}>" for e in ents)], error=why
                )
            )
        return out


@pytest.fixture
def fake(monkeypatch):
    made: list[FakeExtractor] = []

    def load(cls, path, **opts):
        made.append(FakeExtractor(path, **opts))
        return made[-1]

    monkeypatch.setattr(Extractor, "load", classmethod(load))
    return made


def blank(alignment_mode="expand", tokenizer=None, **cfg):
    if tokenizer:
        nlp = spacy.blank(
            "xx", config={"nlp": {"tokenizer": {"@tokenizers": "kner.KoreanTokenizer.v1", "mode": tokenizer}}}
        )
    else:
        nlp = spacy.blank("xx")
    nlp.add_pipe("kner", config={"model": "/models/kner-out", "alignment_mode": alignment_mode, **cfg})
    return nlp


def ents(doc):
    return [(e.text, e.label_, e.start, e.end) for e in doc.ents]


@pytest.mark.parametrize(
    "mode,expected,unaligned",
    [
        ("strict", [], 2),
        ("contract", [], 2),
        ("expand", [("이순신은", "PER", 0, 1), ("조선의", "LOC", 1, 2)], 0),
    ],
)
def test_alignment_modes_snap_to_whitespace_tokens(fake, mode, expected, unaligned):
    nlp = blank(mode)
    doc = nlp(TEXT)
    assert [t.text for t in doc] == ["이순신은", "조선의", "장군이다", "."]
    assert ents(doc) == expected
    assert doc._.kner_unaligned == unaligned
    assert doc._.kner_entities == [(0, 3, "PER"), (5, 7, "LOC")]  # what the model said, kept
    assert doc._.kner_tags == ["<PER:이순신> <LOC:조선>"]
    comp = nlp.get_pipe("kner")
    assert comp.stats["unaligned"] == unaligned and comp.stats["entities"] == 2
    assert comp.stats["snapped"] == (2 if mode == "expand" else 0) and comp.stats["aligned"] == 0


def test_contract_keeps_the_whole_tokens_inside_and_overlaps_are_counted(fake):
    text = "이순신은 조선의 장군이다 했다"
    doc = blank("contract")(text)
    # 이순신 and 조선의 ... : PER has no whole token inside; ORG contracts to 이순신은; LOC is exact.
    assert ents(doc) == [("이순신은", "ORG", 0, 1), ("조선의", "LOC", 1, 2)]
    assert doc._.kner_unaligned == 1 and doc._.kner_overlapping == 0
    doc = blank("expand")(text)
    # All three land on tokens; PER (이순신은) and ORG (이순신은 조선의) overlap LOC and each other:
    # filter_spans keeps the longest, and every span stays in doc.spans["kner"].
    assert ents(doc) == [("이순신은 조선의", "ORG", 0, 2)]
    assert [(s.text, s.label_) for s in doc.spans["kner"]] == [
        ("이순신은", "PER"),
        ("이순신은 조선의", "ORG"),
        ("조선의", "LOC"),
    ]
    assert doc._.kner_overlapping == 2 and doc._.kner_unaligned == 0


def test_kiwi_tokens_align_the_particle_case_exactly(fake):
    nlp = blank("strict", tokenizer="kiwi")
    doc = nlp(TEXT)
    assert [t.text for t in doc][:4] == ["이순신", "은", "조선", "의"]
    assert ents(doc) == [("이순신", "PER", 0, 1), ("조선", "LOC", 2, 3)]
    assert doc._.kner_unaligned == 0 and nlp.get_pipe("kner").stats["aligned"] == 2


def test_pipe_batches_by_the_component_setting_and_a_bad_text_is_counted(fake, caplog):
    nlp = blank("expand", batch_size=2)
    texts = ["서울 부산", "a bad text", TEXT, "없음", "boom", "서울 부산"]
    with caplog.at_level("WARNING", logger="kner.baselines.component"):
        docs = list(nlp.pipe(texts, batch_size=1000))
    ex = fake[0]
    # Batches of 2 whatever nlp.pipe's batch_size; the batch with "boom" is retried doc by doc.
    assert ex.calls == [texts[0:2], texts[2:4], texts[4:6], ["boom"], ["서울 부산"]]
    assert [len(d.ents) for d in docs] == [2, 0, 2, 0, 0, 2]
    assert docs[1]._.kner_error == "cannot read this one" and docs[1]._.kner_tags == []
    assert docs[4]._.kner_error == "RuntimeError: cannot take 'boom'"
    assert [d._.kner_error is None for d in docs] == [True, False, True, True, False, True]
    stats = nlp.get_pipe("kner").stats
    assert stats["docs"] == 6 and stats["failed"] == 2 and stats["entities"] == 6
    assert "a text of 10 characters got no entities: cannot read this one" in caplog.text
    # A failed doc keeps what another component had put in doc.ents.
    nlp2 = spacy.blank("xx")
    ruler = nlp2.add_pipe("entity_ruler")
    ruler.add_patterns([{"label": "X", "pattern": "서울"}])
    nlp2.add_pipe("kner", config={"model": "/m"})
    doc = nlp2("서울 bad")
    assert ents(doc) == [("서울", "X", 0, 1)] and doc._.kner_error == "cannot read this one"


def test_extractor_that_fails_on_every_text_raises(fake):
    nlp = blank()
    with pytest.raises(RuntimeError, match="boom"):
        list(nlp.pipe(["boom a", "boom b"]))


def test_config_is_checked_and_options_reach_the_loader(fake):
    nlp = spacy.blank("xx")
    with pytest.raises(ConfigError, match=r'config=\{"model": DIR\}'):
        nlp.add_pipe("kner")
    with pytest.raises(ConfigError, match="alignment_mode 'loose' is not one of strict, contract, expand"):
        nlp.add_pipe("kner", config={"model": "/m", "alignment_mode": "loose"})
    with pytest.raises(ConfigError, match="batch_size must be a positive"):
        nlp.add_pipe("kner", config={"model": "/m", "batch_size": 0})
    nlp.add_pipe("kner", config={"model": "/m", "options": {"max_new_tokens": 8, "quantize_4bit": False}})
    assert fake[-1].path == "/m" and fake[-1].opts == {"max_new_tokens": 8, "quantize_4bit": False}


def test_to_disk_and_load_keep_the_config_and_displacy_renders(fake, tmp_path):
    nlp = blank("expand", tokenizer="whitespace", batch_size=7)
    nlp.to_disk(tmp_path / "pipe")
    cfg = spacy.util.load_config(tmp_path / "pipe" / "config.cfg")
    assert cfg["components"]["kner"]["factory"] == "kner"
    assert cfg["components"]["kner"]["model"] == "/models/kner-out"
    # The model folder is referenced, not copied (kner's tokenizer has no state to save either).
    assert sorted(p.name for p in (tmp_path / "pipe").iterdir()) == ["config.cfg", "meta.json", "vocab"]
    back = spacy.load(tmp_path / "pipe")
    assert back.pipe_names == ["kner"] and fake[-1].path == "/models/kner-out"
    comp = back.get_pipe("kner")
    assert isinstance(comp, KnerComponent) and comp.batch_size == 7 and comp.alignment_mode == "expand"
    doc = back(TEXT)
    assert ents(doc) == [("이순신은", "PER", 0, 1), ("조선의", "LOC", 1, 2)]
    html = displacy.render(doc, style="ent")
    assert "이순신은" in html and "PER" in html and "LOC" in html
    # Docs keep the extensions through DocBin (msgpack gives lists back as tuples).
    from spacy.tokens import DocBin

    db = DocBin(store_user_data=True, docs=[doc])
    again = list(DocBin(store_user_data=True).from_bytes(db.to_bytes()).get_docs(back.vocab))[0]
    assert [tuple(e) for e in again._.kner_entities] == [(0, 3, "PER"), (5, 7, "LOC")]
    assert list(again._.kner_tags) == doc._.kner_tags and again._.kner_unaligned == 0


# -- a real model ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory):
    """A tiny random full model with a character tokenizer (kner.model.scratch), as `kner export` writes it."""
    texts = [TEXT + " 서울 부산 세종대왕은 한글을 만들었다"]
    return tiny_model_folder(tmp_path_factory.mktemp("kner_spacy") / "out", texts, seed=3)


TEXTS = [TEXT, "서울 부산", "세종대왕은 한글을 만들었다", ""]


def test_real_model_end_to_end_matches_the_extractor(model_folder):
    ex = Extractor.load(model_folder, max_new_tokens=24)
    preds = ex.predict(TEXTS)
    assert sum(len(p.entities) for p in preds) > 0, "the random model should say something"
    nlp = spacy.blank("xx", config={"nlp": {"tokenizer": {"@tokenizers": "kner.KoreanTokenizer.v1", "mode": "char"}}})
    nlp.add_pipe("kner", config={"model": str(model_folder), "options": {"max_new_tokens": 24}})
    docs = list(nlp.pipe(TEXTS))
    for doc, pred in zip(docs, preds):
        # Character tokens: every entity aligns exactly; doc.spans holds all of them.
        assert doc._.kner_tags == pred.outputs
        assert doc._.kner_entities == [(e.start, e.end, e.label) for e in pred.entities]
        assert [(s.start_char, s.end_char, s.label_) for s in doc.spans["kner"]] == doc._.kner_entities
        assert doc._.kner_unaligned == 0
        assert len(doc.ents) + doc._.kner_overlapping == len(pred.entities)
    assert nlp.get_pipe("kner").labels == tuple(ex.scheme.names)


@pytest.mark.slow  # a fresh interpreter loading spaCy, torch and transformers: about 10 s on 2 cores
def test_saved_pipeline_loads_through_the_entry_point_alone(model_folder, tmp_path):
    """A fresh interpreter that never imports kner: spacy.load finds the factory and the tokenizer."""
    nlp = spacy.blank("xx", config={"nlp": {"tokenizer": {"@tokenizers": "kner.KoreanTokenizer.v1", "mode": "char"}}})
    nlp.add_pipe("kner", config={"model": str(model_folder), "options": {"max_new_tokens": 24}})
    want = [[(e.start_char, e.end_char, e.label_) for e in doc.ents] for doc in nlp.pipe(TEXTS)]
    nlp.to_disk(tmp_path / "pipe")
    code = (
        "import json, sys, spacy\n"
        "assert 'kner' not in sys.modules\n"
        f"nlp = spacy.load({str(tmp_path / 'pipe')!r})\n"
        f"docs = nlp.pipe({TEXTS!r})\n"
        "print(json.dumps([[(e.start_char, e.end_char, e.label_) for e in d.ents] for d in docs]))\n"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    got = json.loads(res.stdout.strip().splitlines()[-1])
    assert got == [[list(e) for e in d] for d in want]
