import random
from pathlib import Path

import pytest

import corpora as datasets  # benchmarks/corpora.py
from kner.data import acquire
from kner.data.example import Entity, Example
from kner.data.splits import doc_of, parse_ratios, split_by_document
from kner.errors import ConfigError, KnerError


def corpus(n_docs=60, seed=0):
    rng = random.Random(seed)
    out = []
    for d in range(n_docs):
        for s in range(rng.randint(1, 30)):
            out.append(Example(f"d{d}:{s}", "서울", [Entity(0, 2, "LOC", "서울")], {"doc": f"d{d:03d}"}))
    return out


def test_no_document_in_two_splits_and_sizes_follow_ratios():
    exs = corpus()
    parts = split_by_document(exs)
    docs = [{doc_of(e) for e in part} for part in parts.values()]
    assert not (docs[0] & docs[1]) and not (docs[0] & docs[2]) and not (docs[1] & docs[2])
    assert sum(len(p) for p in parts.values()) == len(exs)
    n = len(exs)
    for name, r in zip(("train", "dev", "test"), (0.8, 0.1, 0.1)):
        assert abs(len(parts[name]) - r * n) <= 30  # at most one document off its target


def test_deterministic_and_independent_of_input_order():
    exs = corpus()
    a = split_by_document(exs, seed=13)
    shuffled = exs[:]
    random.Random(1).shuffle(shuffled)
    b = split_by_document(shuffled, seed=13)
    for name in a:
        assert {e.id for e in a[name]} == {e.id for e in b[name]}
        assert [doc_of(e) for e in a[name]] == [doc_of(e) for e in b[name]]
    c = split_by_document(exs, seed=14)
    assert {e.id for e in c["test"]} != {e.id for e in a["test"]}


def test_examples_without_doc_are_their_own_documents():
    exs = [Example(str(i), "가") for i in range(100)]
    parts = split_by_document(exs, (0.5, 0.25, 0.25))
    assert [len(parts[k]) for k in ("train", "dev", "test")] == [50, 25, 25]


@pytest.mark.parametrize("bad", ["0.8,0.1", "0.8,0.1,0.2", "a,b,c", (0.9, 0.2, -0.1)])
def test_bad_ratios(bad):
    with pytest.raises(ConfigError):
        parse_ratios(bad)


def test_default_kmou_split_on_the_fixture(datasets_dir, monkeypatch):
    # The fixture is 15 of the corpus's 1284 files, which acquire.locate refuses (the full split's
    # numbers: test_real_data.py); this stands in for it.
    monkeypatch.setattr(acquire, "locate", lambda name, root, download=True: Path(root) / "kmou" / "corpus")
    parts = datasets.default_kmou_split(datasets_dir)
    got = {k: (len({doc_of(e) for e in v}), len(v), sum(len(e.entities) for e in v)) for k, v in parts.items()}
    assert got == {"train": (12, 164, 514), "dev": (2, 29, 61), "test": (1, 13, 47)}
    parts["train"][0].entities.clear()  # callers get their own copies
    assert datasets.default_kmou_split(datasets_dir)["train"][0].entities


def test_data_dir_lookup(tmp_path, monkeypatch, datasets_dir):
    monkeypatch.setenv("KNER_DATA_DIR", str(datasets_dir))
    assert datasets.data_dir() == datasets_dir
    monkeypatch.setenv("KNER_DATA_DIR", str(tmp_path / "nowhere"))
    with pytest.raises(KnerError, match="KNER_DATA_DIR"):
        datasets.data_dir()
    monkeypatch.delenv("KNER_DATA_DIR")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(datasets, "_REPO", tmp_path / "repo")
    with pytest.raises(KnerError, match="kmou/corpus"):
        datasets.data_dir()
    (tmp_path / "shared" / "datasets").mkdir(parents=True)
    monkeypatch.chdir(tmp_path / "shared")  # cwd/../shared/datasets
    assert datasets.data_dir() == tmp_path / "shared" / "datasets"
