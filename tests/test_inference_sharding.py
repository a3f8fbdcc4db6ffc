"""``kner predict --devices``: worker processes per shard, merge in input order, resume after a crash.

Workers run on the CPU (``--devices cpu,cpu``): the same subprocess, shard-file and
merge path as GPUs, with a tiny 4-bit model and a random adapter.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

from helpers import run_app
from kner.data.splits import balance
from kner.errors import ConfigError, DataError, KnerError
from kner.inference import sharding
from kner.inference.devices import resolve_devices
from kner.inference.shard_files import MANIFEST_NAME, differences, model_fingerprint, scan_shards
from test_inference_cli import LLAMA2, write_qlora_folder

TEXTS = [
    "이순신은 조선 중기의 무신이다.",
    "",
    "삼성전자는 9일 서울 서초구 본사에서 주주총회를 열었다.",
    "한국은행은 올해 경제성장률을 2.1%로 내다봤다.",
    "세종대왕은 1443년 훈민정음을 창제하였다.",
    "부산 해운대에서 열린 국제영화제에는 20만 명이 다녀갔다.",
    "오에 겐자부로",
    "   ",
    "유엔 안전보장이사회는 지난달 뉴욕에서 긴급회의를 소집했다.",
    "손흥민이 토트넘과 2026년까지 재계약했다.",
    "서울 <특별시> 종로구",
    "KBS 뉴스 9시",
    "1945년 8월 15일 광복",
    "한글날은 10월 9일이다.",
    "대한민국의 수도는 서울이다.",
    "LG 트윈스가 잠실에서 이겼다.",
    "김연아는 피겨 스케이팅 선수다.",
    "제주도 한라산 국립공원",
    "네이버와 카카오가 손을 잡았다.",
    "어제 오후 3시에 회의가 열렸다.",
]
OPTS = ["--max-new-tokens", 10, "--no-progress", "--flush-every", 4]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """out/ (kner.json + adapter/ + tokenizer/ over a tiny 4-bit base): what `kner train` writes; in.txt; ref."""
    if not LLAMA2.is_dir():
        pytest.skip("LLaMA-2 tokenizer not available")
    root = tmp_path_factory.mktemp("kner_shard")
    write_qlora_folder(root)
    (root / "in.txt").write_text("\n".join(TEXTS) + "\n", encoding="utf-8")
    # The reference: the usual in-process path (no --gpus/--devices), one process.
    res = run_app("predict", "-m", root / "out", "-i", root / "in.txt", "-o", root / "ref.jsonl", *OPTS)
    assert res.exit_code == 0, res.output
    return root


def shard_lines(shard_dir: Path) -> list[dict]:
    return [
        json.loads(l)
        for p in sorted(shard_dir.glob("shard-*.jsonl"))
        for l in p.read_text(encoding="utf-8").splitlines()
        if l.strip()
    ]


@pytest.mark.slow
def test_two_shards_merge_to_the_single_process_output_and_restart_discards_stale_results(folders, tmp_path):
    ref = (folders / "ref.jsonl").read_text(encoding="utf-8")
    assert len(ref.splitlines()) == len(TEXTS)
    out = tmp_path / "preds.jsonl"
    # A stale folder from another input: refused without --restart (listing why), discarded with it.
    stale = tmp_path / "preds.jsonl.shards"
    stale.mkdir()
    (stale / MANIFEST_NAME).write_text(
        json.dumps({"format": 1, "input": {"digest": "x", "texts": 3}, "settings": {}, "runs": []}), encoding="utf-8"
    )
    (stale / "shard-00of01.jsonl").write_text(
        json.dumps({"index": 0, "run": 1, "example": {"id": "1", "text": "stale", "entities": []}}) + "\n",
        encoding="utf-8",
    )
    args = ["predict", "-m", folders / "out", "-i", folders / "in.txt", "-o", out, "--devices", "cpu,cpu", *OPTS]
    res = run_app(*args)
    assert isinstance(res.exception, KnerError) and "input changed" in str(res.exception)
    assert "--restart" in str(res.exception) and not out.exists()

    res = run_app(*args, "--restart")
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == ref  # same lines, same (input) order
    assert not stale.exists()  # merged, then removed
    assert "2 on cpu, cpu" in res.output and "resumed" not in res.output


@pytest.mark.slow
def test_crashed_shard_resumes_without_recomputing_and_a_changed_input_is_refused(folders, tmp_path, monkeypatch):
    ref = (folders / "ref.jsonl").read_text(encoding="utf-8")
    out = tmp_path / "preds.jsonl"
    shards = tmp_path / "preds.jsonl.shards"
    args = ["predict", "-m", folders / "out", "-i", folders / "in.txt", "-o", out, *OPTS]

    crashing = [sys.executable, str(Path(__file__).with_name("crashing_shard_worker.py")), "1:4"]
    monkeypatch.setattr(sharding, "WORKER_COMMAND", crashing)  # worker 1 dies after its first 4 results, mid-line
    res = run_app(*args, "--devices", "cpu,cpu")
    monkeypatch.undo()
    msg = str(res.exception)
    assert isinstance(res.exception, KnerError) and res.exit_code != 0, res.output
    assert "shard 1" in msg and "exited with code 3" in msg and "rerun" in msg and "after writing 4 of" in msg
    assert not out.exists()
    man = json.loads((shards / MANIFEST_NAME).read_text(encoding="utf-8"))
    sizes = [len(p) for p in man["layout"]["indices"]]
    assert len(sizes) == 2 and sum(sizes) == len(TEXTS)
    assert not (shards / "shard-01of02.jsonl").read_text(encoding="utf-8").endswith("\n")  # half a line
    complete0 = (shards / "shard-00of02.jsonl").read_text(encoding="utf-8").splitlines()
    assert len(complete0) == sizes[0]  # the other shard finished and kept its results
    finished = sizes[0] + 4

    # Another input on the same output: refused, nothing touched.
    changed = tmp_path / "changed.txt"
    changed.write_text("\n".join(TEXTS[:-1] + ["다른 문장"]) + "\n", encoding="utf-8")
    before = {p.name: p.read_bytes() for p in shards.iterdir()}
    res = run_app("predict", "-m", folders / "out", "-i", changed, "-o", out, "--devices", "cpu", *OPTS)
    assert isinstance(res.exception, KnerError) and "input changed" in str(res.exception)
    assert {p.name: p.read_bytes() for p in shards.iterdir()} == before

    # Same input and settings on one worker: only the missing texts are computed.
    res = run_app(*args, "--devices", "cpu", "--keep-shards")
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == ref
    assert f"resumed: {finished} of {len(TEXTS)}" in res.output and "half-written" in res.output
    lines = shard_lines(shards)
    assert sorted(r["index"] for r in lines) == list(range(len(TEXTS)))  # each exactly once
    assert sum(r["run"] == 1 for r in lines) == finished
    assert sum(r["run"] == 2 for r in lines) == len(TEXTS) - finished
    assert json.loads((shards / MANIFEST_NAME).read_text(encoding="utf-8"))["runs"][-1]["texts"] == [
        len(TEXTS) - finished
    ]

    # Everything finished and kept: a rerun computes nothing and writes the same output.
    res = run_app(*args, "--devices", "cpu,cpu")
    assert res.exit_code == 0, res.output
    assert out.read_text(encoding="utf-8") == ref and f"resumed: {len(TEXTS)} of" in res.output
    assert not shards.exists()


def test_balance_spreads_characters_and_keeps_input_order():
    weights = [100, 1, 1, 1, 50, 50, 0, 3]
    parts = balance(weights, 2)
    assert sorted(i for p in parts for i in p) == list(range(len(weights)))
    assert all(p == sorted(p) for p in parts)
    loads = [sum(weights[i] for i in p) for p in parts]
    assert max(loads) - min(loads) <= 3
    assert balance(weights, 3, indices=[1, 2]) == [[1], [2], []]


def test_scan_cuts_a_half_written_last_line_and_rejects_a_broken_one(tmp_path):
    good = json.dumps({"index": 1, "run": 1, "example": {"id": "2", "text": "a", "entities": []}}) + "\n"
    f = tmp_path / "shard-00of01.jsonl"
    f.write_text(good + '{"index": 0, "ru', encoding="utf-8")
    done, partial, dups = scan_shards(tmp_path, 3)
    assert list(done) == [1] and partial == 1 and dups == 0
    assert f.read_text(encoding="utf-8") == good  # truncated, ready to append to
    f.write_text(good + "not json\n" + good, encoding="utf-8")
    with pytest.raises(DataError) as err:
        scan_shards(tmp_path, 3)
    assert err.value.line == 2 and err.value.path == str(f)
    f.write_text(good.replace('"index": 1', '"index": 7'), encoding="utf-8")
    with pytest.raises(DataError):
        scan_shards(tmp_path, 3)


def test_device_lists():
    assert resolve_devices(devices="cpu,cpu") == ["cpu", "cpu"]
    for bad in [
        dict(gpus="2", devices="cpu"),
        dict(devices="tpu"),
        dict(devices="cpu,,cpu"),
        dict(gpus="0"),
        dict(gpus="many"),
    ]:
        with pytest.raises(ConfigError):
            resolve_devices(**bad)
    if torch.cuda.device_count() == 0:
        with pytest.raises(ConfigError):
            resolve_devices(gpus="all")
        with pytest.raises(ConfigError):
            resolve_devices(devices="0")


def test_settings_differences_name_what_changed(tmp_path):
    model = tmp_path / "m"
    (model / "adapter").mkdir(parents=True)
    (model / "adapter" / "adapter_model.safetensors").write_bytes(b"1234")
    old = {"settings": {"options": {"max_new_tokens": 10}, "fingerprint": model_fingerprint(str(model), None)}}
    assert differences(old, old) == []
    (model / "adapter" / "adapter_model.safetensors").write_bytes(b"12345")  # retrained in place
    new = {"settings": {"options": {"max_new_tokens": 12}, "fingerprint": model_fingerprint(str(model), None)}}
    assert differences(old, new) == ["model files changed", "settings.options.max_new_tokens: 10 -> 12"]
