"""The numbers of the full corpora and the real tokenizers, pinned (they are quoted in the docs).

These need ``../shared`` (or ``$KNER_DATA_DIR``), which a user's clone does not have: the
whole module is skipped there, one skip. Every behaviour checked here is also checked on
the fixtures under tests/fixtures by the other test modules.
"""

from collections import Counter

import pytest

from conftest import REPO, SHARED

if not (SHARED / "kmou" / "corpus").is_dir():
    pytest.skip(f"the full corpora are not at {SHARED} (set KNER_DATA_DIR)", allow_module_level=True)

import corpora as datasets  # noqa: E402  (benchmarks/corpora.py)
from kner.data import acquire  # noqa: E402
from kner.data.example import validate  # noqa: E402
from kner.data.readers import read_dataset  # noqa: E402
from kner.data.schemes import Mapping, load_scheme, map_examples  # noqa: E402
from kner.data.splits import doc_of  # noqa: E402
from kner.model.loading import load_tokenizer  # noqa: E402
from test_inference_constrained import check_token_bytes  # noqa: E402
from test_readers import ents, kinds  # noqa: E402
from test_roundtrip import explained, failures  # noqa: E402

TOKENIZERS = REPO.parent / "shared" / "tokenizers"


def report(name, examples, bad):
    n = len(examples)
    print(
        f"\n{name}: {n - len(bad)}/{n} sentences round-trip exactly ({100 * (n - len(bad)) / n:.3f}%); "
        f"{len(bad)} exceptions, all an entity surface that occurs untagged earlier in the sentence"
    )


# ---- KMOU corpus, 2016klp, KLUE dev: what the readers make of them ---------------------------------


@pytest.fixture(scope="module")
def kmou(shared_datasets):
    return read_dataset("kmou", shared_datasets / "kmou" / "corpus")


def test_kmou_corpus_counts(kmou):
    assert kmou.files == 1284
    assert len(kmou.examples) == 21578 and kmou.skipped == 0
    assert sum(len(ex.entities) for ex in kmou.examples) == 72684
    assert len({ex.meta["doc"] for ex in kmou.examples}) == 1284
    assert len({ex.id for ex in kmou.examples}) == 21578
    assert kinds(kmou) == Counter({"bio-mismatch": 602, "whitespace-trimmed": 5})
    labels = Counter(e.label for ex in kmou.examples for e in ex.entities)
    assert labels["PER"] == 16755 and labels["TIM"] == 435 and set(labels) == set(load_scheme("kmou").names)
    for ex in kmou.examples:
        validate(ex)


def test_kmou_odd_sentences(kmou):
    by_id = {ex.id: ex for ex in kmou.examples}
    ex = by_id["10232_NER:13"]  # <<2>:NOH>: the entity is "<2>"
    assert ents(ex)[0] == ("NOH", "<2>", 0)
    ex = by_id["00105_NER:2"]  # 영화 <<트럼보:POH>>가
    assert "<트럼보>" in ex.text and ("POH", "트럼보") in [(e.label, e.text) for e in ex.entities]
    ex = by_id["00080_NER:1"]  # an unclosed literal '<'
    assert ex.text.startswith("최호열 기자 | honeypapa@donga.com <이 기사는 신동아")


def test_kmou_mapping_to_spacy19(kmou):
    mapped, rep = map_examples(kmou.examples, Mapping.load("kmou", "spacy19"))
    assert sum(rep.mapped.values()) == 72684 and not rep.dropped
    assert rep.mapped[("DUR", "DATE")] == 1440


def test_klp2016_counts(shared_datasets):
    res = read_dataset("klp2016", shared_datasets / "kmou" / "2016klp")
    assert res.files == 3 and len(res.examples) == 3660 and res.skipped == 0
    assert sum(len(ex.entities) for ex in res.examples) == 7779
    assert kinds(res) == Counter({"bio-mismatch": 12})


def test_klue_counts(shared_datasets):
    res = read_dataset("klue", shared_datasets / "klue-ner")
    assert res.files == 1 and len(res.examples) == 4000 and res.skipped == 0
    assert sum(len(ex.entities) for ex in res.examples) == 11460
    assert kinds(res) == Counter(
        {"bio-mismatch": 5, "whitespace-trimmed": 2, "malformed-tag": 1, "chars-mismatch": 1, "unparseable": 1}
    )


def test_real_corpora_round_trip(shared_datasets):
    """Every exception explained, their number pinned (docs/data.md)."""
    for name, fmt, folder, n_bad in [
        ("KMOU corpus", "kmou", "kmou/corpus", 71),
        ("KLUE dev (first 4,000)", "klue", "klue-ner", 9),
        ("KMOU 2016klp", "klp2016", "kmou/2016klp", 38),
    ]:
        res = read_dataset(fmt, shared_datasets / folder)
        bad = failures(res.examples, fmt)
        report(name, res.examples, bad)
        assert all(explained(ex, got) for ex, got in bad), name
        assert len(bad) == n_bad, name


# ---- the local copy and the default split --------------------------------------------------------


def test_local_copy_is_verified_against_pinned_digests(shared_datasets):
    folder = acquire.locate("kmou", shared_datasets)
    assert folder == shared_datasets / "kmou" / "corpus"
    assert acquire.verify_folder(acquire.SOURCES["kmou"], folder) == 1284


def test_default_kmou_split(shared_datasets):
    parts = datasets.default_kmou_split(shared_datasets)
    got = {k: (len({doc_of(e) for e in v}), len(v), sum(len(e.entities) for e in v)) for k, v in parts.items()}
    # The numbers in docs/data.md: every benchmark uses this split.
    assert got == {"train": (1030, 17262, 58459), "dev": (127, 2157, 6951), "test": (127, 2159, 7274)}
    parts["train"][0].entities.clear()  # callers get their own copies
    assert datasets.default_kmou_split(shared_datasets)["train"][0].entities


# ---- the real tokenizer files ----------------------------------------------------------------------


def test_real_sentencepiece_tokenizers():
    """The one test of the real tokenizer files (../shared/tokenizers): LLaMA-2 and Mistral."""
    from kner.model.prompt import PromptEncoder, PromptFormat

    found = [n for n in ("llama-2", "mistral-7b-v0.3") if (TOKENIZERS / n).is_dir()]
    if not found:
        pytest.skip(f"no real tokenizers at {TOKENIZERS}")
    for name in found:
        check_token_bytes(load_tokenizer(str(TOKENIZERS / name)))
    if "llama-2" in found:
        # 281 instruction tokens + BOS for the study's spacy19 prompt (the cost quoted in the docs).
        enc = PromptEncoder(load_tokenizer(str(TOKENIZERS / "llama-2")), PromptFormat(), load_scheme("spacy19"))
        assert len(enc.prefix_ids) == 282 and enc.prefix_ids[0] == 1
