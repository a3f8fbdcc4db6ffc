import shutil

import pytest

from kner.data import acquire
from kner.errors import KnerError


def test_modified_local_copy_is_rejected(tmp_path, datasets_dir):
    dst = tmp_path / "kmou" / "corpus"
    dst.mkdir(parents=True)
    src = datasets_dir / "kmou" / "corpus" / "00002_NER.txt"  # the fixture keeps it byte for byte
    shutil.copy(src, dst / src.name)
    with pytest.raises(KnerError, match="1283 of the 1284 files of kmou are missing"):
        acquire.locate("kmou", tmp_path)
    (dst / src.name).write_bytes(src.read_bytes() + b"\n")
    with pytest.raises(KnerError, match="00002_NER.txt: SHA-256.*modified"):
        acquire.verify_folder(acquire.SOURCES["kmou"], dst)


def test_offline_without_copy_says_where_to_put_files(tmp_path, monkeypatch):
    monkeypatch.delenv("KNER_DATA_DIR", raising=False)
    monkeypatch.setenv("KNER_CACHE_DIR", str(tmp_path / "cache"))
    with pytest.raises(KnerError) as err:
        acquire.locate("klp2016", download=False)
    assert "kmou/2016klp" in str(err.value) and "KNER_DATA_DIR" in str(err.value)


def test_download_verifies_and_caches(tmp_path, monkeypatch, datasets_dir):
    # A file:// "server" stands in for GitHub: same code path as a real download.
    served = tmp_path / "served"
    served.mkdir()
    for name, part in (("ner.train", "00002_NER.txt"), ("ner.dev", "00003_NER.txt")):
        shutil.copy(datasets_dir / "kmou" / "corpus" / part, served / name)
    pinned = {n: acquire.sha256(served / n) for n in ("ner.train", "ner.dev")}
    src = acquire.Source("t", "t/x", served.as_uri() + "/")
    monkeypatch.setattr(acquire.Source, "pinned", lambda self: pinned)
    out = acquire.fetch(src, tmp_path / "cache" / "t" / "x")
    assert sorted(p.name for p in out.iterdir()) == ["ner.dev", "ner.train"]
    pinned["ner.dev"] = "0" * 64
    (out / "ner.dev").unlink()
    with pytest.raises(KnerError, match="differs from the pinned"):
        acquire.fetch(src, out)
    assert not (out / "ner.dev").exists() and not (out / "ner.dev.part").exists()


def test_unpinned_files_are_recorded_then_checked(tmp_path, monkeypatch):
    served = tmp_path / "served"
    served.mkdir()
    (served / "a.tsv").write_text("x\n", encoding="utf-8")
    src = acquire.Source("u", "u", served.as_uri() + "/", files=("a.tsv",))
    out = acquire.fetch(src, tmp_path / "cache" / "u")
    assert "a.tsv" in (out / "SHA256SUMS").read_text()
    (out / "a.tsv").write_text("tampered\n", encoding="utf-8")
    with pytest.raises(KnerError, match="changed since it was downloaded"):
        acquire._verify_recorded(out)
