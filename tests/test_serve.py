"""``kner serve``: a real uvicorn server on a free port, real HTTP requests.

Most tests use a fake extractor (a plain callable, called once per request) that
records its calls and can be held inside a call (``gate``): while it is held,
requests pile up in the queue, so what waits is decided by the test, not by
timing. The real tiny model's tests hold the engine inside a forward the same way
(``HeldHook``), so requests join a running engine by construction.
"""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.parse

import pytest

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
httpx = pytest.importorskip("httpx")

from helpers import kner_command, kner_process, run_app, save_full_model  # noqa: E402
from kner.data.example import Entity  # noqa: E402
from kner.errors import KnerError  # noqa: E402
from kner.serve import BackgroundServer, ServeSettings, create_app  # noqa: E402


def fake_entities(text: str) -> list[Entity]:
    """Every word is an entity: CARDINAL if it is all digits, else PER."""
    return [
        Entity(m.start(), m.end(), "CARDINAL" if m.group().isdigit() else "PER", m.group())
        for m in re.finditer(r"\S+", text)
    ]


class FakeExtractor:
    def __init__(self):
        self.calls: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()

    def __call__(self, texts):
        self.calls.append(list(texts))
        assert self.gate.wait(30), "test never opened the gate"
        if any("boom" in t for t in texts):
            raise RuntimeError("cannot read 'boom'")
        if "drop one" in texts:
            return [fake_entities(t) for t in texts][:-1]
        return [fake_entities(t) for t in texts]


def wait_for(cond, what: str, timeout: float = 20.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def health(url: str) -> dict:
    r = httpx.get(url + "/health", timeout=10)
    assert r.status_code == 200
    return r.json()


def post(url: str, payload, results: dict | None = None, key=None, **kw):
    r = httpx.post(url + "/extract", json=payload, timeout=30, **kw)
    if results is not None:
        results[key] = r
    return r


def in_thread(fn, *args) -> threading.Thread:
    t = threading.Thread(target=fn, args=args, daemon=True)
    t.start()
    return t


def hold_extractor(fake: FakeExtractor, url: str) -> tuple[threading.Thread, dict]:
    """Send one request and keep the extractor busy with it until ``fake.gate`` opens."""
    fake.gate.clear()
    out: dict = {}
    t = in_thread(post, url, {"text": "warm up"}, out, "warm")
    wait_for(lambda: health(url)["busy"], "the extractor to be busy")
    return t, out


@pytest.fixture
def fake():
    return FakeExtractor()


def test_concurrent_requests_each_get_their_own_results(fake):
    with BackgroundServer(create_app(fake, ServeSettings(), model_name="fake", scheme="spacy19")) as srv:
        warm, out = hold_extractor(fake, srv.url)
        payloads = {i: {"texts": [f"요청{i} 이순신", f"{i} 서울 {i * 11}"]} for i in range(8)}
        threads = [in_thread(post, srv.url, payloads[i], out, i) for i in range(8)]
        wait_for(lambda: health(srv.url)["queue_depth"] == 8, "8 queued requests")
        h = health(srv.url)
        assert h["busy"] and h["running_texts"] == 1 and h["queued_texts"] == 16
        fake.gate.set()
        for t in [warm, *threads]:
            t.join(30)
        assert out["warm"].status_code == 200
        for i, payload in payloads.items():
            r = out[i]
            assert r.status_code == 200, r.text
            body = r.json()
            assert body["model"] == "fake" and body["elapsed_ms"] >= 0
            assert [res["text"] for res in body["results"]] == payload["texts"]  # own texts, in order
            for res in body["results"]:
                assert res["entities"] == [e.to_dict() for e in fake_entities(res["text"])]
        # A plain callable is called once per request, in arrival order.
        assert fake.calls[0] == ["warm up"]
        assert sorted(map(tuple, fake.calls[1:])) == sorted(tuple(p["texts"]) for p in payloads.values())
        h = health(srv.url)
        assert h["requests_served"] == 9 and h["texts_served"] == 17 and h["queue_depth"] == 0
        assert not h["busy"] and h["running_texts"] == 0
        assert h["batching"]["requests"] == 9 and h["batching"]["texts"] == 17


def test_extractor_errors_fail_only_their_request(fake):
    with BackgroundServer(create_app(fake, ServeSettings(), model_name="fake")) as srv:
        warm, out = hold_extractor(fake, srv.url)
        good = in_thread(post, srv.url, {"texts": ["이순신 장군"]}, out, "good")
        wait_for(lambda: health(srv.url)["queue_depth"] == 1, "the good request to queue")
        bad = in_thread(post, srv.url, {"texts": ["boom 123"]}, out, "bad")
        wait_for(lambda: health(srv.url)["queue_depth"] == 2, "the bad request to queue")
        fake.gate.set()
        for t in (warm, good, bad):
            t.join(30)
        assert out["good"].status_code == 200
        assert out["good"].json()["results"][0]["entities"][0]["text"] == "이순신"
        assert out["bad"].status_code == 500
        assert out["bad"].json() == {"error": "extraction failed: RuntimeError: cannot read 'boom'"}
        assert fake.calls == [["warm up"], ["이순신 장군"], ["boom 123"]]

        r = post(srv.url, {"texts": ["a", "drop one"]})
        assert r.status_code == 500 and "returned 1 results for 2 texts" in r.json()["error"]
        assert post(srv.url, {"text": "still alive"}).status_code == 200
        h = health(srv.url)
        assert h["requests_failed"] == 2 and h["batching"]["failed_requests"] == 2


def test_limits_answer_4xx_naming_the_limit(fake):
    settings = ServeSettings(max_text_chars=10, max_texts=3, max_body_bytes=2000)
    with BackgroundServer(create_app(fake, settings, model_name="fake", scheme="spacy19")) as srv:
        r = post(srv.url, {"texts": ["짧은 글", "열한 글자가 넘는 문장이다"]})
        assert r.status_code == 413
        assert r.json() == {
            "error": "texts[1] has 14 characters; max_text_chars is 10",
            "limit": "max_text_chars",
            "max": 10,
            "index": 1,
            "value": 14,
        }
        r = post(srv.url, {"texts": ["a", "b", "c", "d"]})
        assert r.status_code == 413 and r.json()["limit"] == "max_texts" and r.json()["value"] == 4
        r = post(srv.url, {"text": "x" * 3000})
        assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"
        # A chunked upload declares no size: it is counted while read.
        chunks = iter([b'{"texts": ["', b"y" * 1500, b"y" * 1500, b'"]}'])
        r = httpx.post(srv.url + "/extract", content=chunks, headers={"content-type": "application/json"}, timeout=30)
        assert r.status_code == 413 and r.json()["limit"] == "max_body_bytes"

        for payload, status, fragment in [
            ({"texts": ["a", 3]}, 422, "texts[1] must be a string, not a number"),
            ({"texts": "abc"}, 422, '"texts" must be a list'),
            ({"text": None}, 422, '"text" must be a string, not null'),
            ({"text": "a", "texts": ["b"]}, 422, "not both"),
            ({}, 422, 'missing "texts"'),
            (["a"], 422, "JSON object"),
        ]:
            r = post(srv.url, payload)
            assert r.status_code == status and fragment in r.json()["error"], (payload, r.text)
        r = httpx.post(srv.url + "/extract", content=b'{"texts": [', timeout=10)
        assert r.status_code == 400 and "not valid JSON" in r.json()["error"]
        assert r.json().get("index") is None
        assert post(srv.url, {"texts": ["a", 3]}).json()["index"] == 1

        # Empty and blank texts: answered in place, without calling the extractor.
        r = post(srv.url, {"texts": ["", "  ", "12 서울"]})
        assert r.status_code == 200
        assert r.json()["results"] == [
            {"text": "", "entities": []},
            {"text": "  ", "entities": []},
            {
                "text": "12 서울",
                "entities": [
                    {"start": 0, "end": 2, "label": "CARDINAL", "text": "12"},
                    {"start": 3, "end": 5, "label": "PER", "text": "서울"},
                ],
            },
        ]
        assert post(srv.url, {"text": ""}).json()["results"] == [{"text": "", "entities": []}]
        assert post(srv.url, {"texts": []}).json()["results"] == []
        assert fake.calls == [["12 서울"]]

        h = health(srv.url)
        assert h["status"] == "ok" and h["model"] == "fake" and h["scheme"] == "spacy19"
        assert h["labels"][0] == "PER" and len(h["labels"]) == 19
        assert h["limits"]["max_text_chars"] == 10 and h["limits"]["max_texts"] == 3
        assert h["requests_rejected"] == 12 and h["requests_served"] == 3 and h["requests_failed"] == 0


def test_full_queue_answers_503(fake):
    with BackgroundServer(create_app(fake, ServeSettings(max_queue_texts=2))) as srv:
        warm, out = hold_extractor(fake, srv.url)
        waiting = in_thread(post, srv.url, {"texts": ["a", "b"]}, out, "waiting")
        wait_for(lambda: health(srv.url)["queued_texts"] == 2, "two queued texts")
        r = post(srv.url, {"text": "c"})
        assert r.status_code == 503 and r.json()["limit"] == "max_queue_texts"
        assert "2 texts are already waiting" in r.json()["error"]
        fake.gate.set()
        for t in (warm, waiting):
            t.join(30)
        assert out["warm"].status_code == 200 and out["waiting"].status_code == 200
        assert fake.calls == [["warm up"], ["a", "b"]]


def test_timeout_answers_504_and_drops_the_work(fake):
    with BackgroundServer(create_app(fake, ServeSettings(timeout_s=0.5))) as srv:
        warm, out = hold_extractor(fake, srv.url)
        waiting = in_thread(post, srv.url, {"texts": ["a", "b"]}, out, "waiting")
        # The extractor is held past both requests' timeout_s: 504 for each, and the
        # queued one leaves the queue instead of being run for nobody.
        for t in (warm, waiting):
            t.join(30)
        assert out["warm"].status_code == 504 and out["waiting"].status_code == 504
        assert out["waiting"].json()["limit"] == "timeout_s" and "0.5 s" in out["waiting"].json()["error"]
        assert health(srv.url)["queued_texts"] == 0
        fake.gate.set()
        assert post(srv.url, {"text": "d"}).status_code == 200
        assert fake.calls == [["warm up"], ["d"]]
        h = health(srv.url)
        assert h["batching"]["cancelled_requests"] == 2 and h["requests_failed"] == 2


def test_demo_page_and_render(fake):
    with BackgroundServer(create_app(fake, ServeSettings(max_texts=3), model_name="fake", scheme="spacy19")) as srv:
        r = httpx.get(srv.url + "/", timeout=10)
        assert r.status_code == 200 and "<textarea" in r.text and "<mark" not in r.text
        r = httpx.post(srv.url + "/", data={"text": "이순신 <b>\n\n2024"}, timeout=30)
        assert r.status_code == 200
        assert r.text.count('<mark class="entity"') == 3 and "&lt;b&gt;" in r.text and "<b>" not in r.text
        assert "CARDINAL</span>" in r.text
        r = httpx.post(srv.url + "/render", json={"text": "서울"}, timeout=30)
        assert r.status_code == 200 and r.text.startswith("<p") and "PER</span>" in r.text
        r = httpx.post(srv.url + "/", data={"text": "a\nb\nc\nd"}, timeout=30)
        assert r.status_code == 413 and "max_texts is 3" in r.text and "<textarea" in r.text


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def test_demo_page_in_headless_chromium(fake, tmp_path):
    browser = chromium()
    if browser is None:
        pytest.skip("chromium is not installed")
    with BackgroundServer(create_app(fake, ServeSettings(), model_name="fake", scheme="spacy19")) as srv:
        url = srv.url + "/?" + urllib.parse.urlencode({"text": "이순신 1592"})
        proc = subprocess.run(
            [
                browser,
                "--headless",
                "--no-sandbox",
                "--disable-gpu",
                "--no-first-run",
                f"--user-data-dir={tmp_path / 'profile'}",
                "--dump-dom",
                url,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    dom = proc.stdout
    assert proc.returncode == 0, proc.stderr[-2000:]
    marks = re.findall(r'<mark class="entity"[^>]*>\s*(\S+)\s*<span[^>]*>(\w+)</span>', dom)
    assert marks == [("이순신", "PER"), ("1592", "CARDINAL")], dom[-3000:]
    assert "<textarea" in dom


# -- a real (tiny, random) model ------------------------------------------------------------


@pytest.fixture(scope="module")
def model_folder(tmp_path_factory, llama_dir):
    """What `kner export` writes: kner.json + model/ (16/32-bit weights) + tokenizer/ (LLaMA-2-style)."""
    import torch

    from kner.model.loading import build_model_from_config, load_tokenizer, tiny_config

    tok = load_tokenizer(str(llama_dir))
    torch.manual_seed(0)
    model = build_model_from_config(
        tiny_config("llama", vocab_size=len(tok), hidden=32, intermediate=64, layers=1, heads=2, kv_heads=1)
    )
    return save_full_model(tmp_path_factory.mktemp("kner_serve") / "out", model, tok)


from test_inference_decoding import tag_bias  # noqa: E402

TEXTS = [
    "이순신은 조선 중기의 무신이다.",
    "오에 겐자부로는 일본 현대문학의 초석을 놓은 작가",
    "서울 <특별시> : 12\\3",
    "1592년 4월 13일",
    "a b",
    "대한민국 국회는 여의도에 있다.",
]


LONG = "세종대왕은 조선의 네 번째 임금이다. " * 3  # 112 tokens: split into pieces by max_chunk_tokens=48


class HeldHook:
    """The tag bias, held inside a forward while ``gate`` is closed: requests sent meanwhile wait in the
    inbox, and join the rows already decoding when it opens. ``max_rows``: injected out of memory."""

    def __init__(self, ex, max_rows: int | None = None):
        self.bias, self.max_rows = tag_bias(ex), max_rows
        self.gate, self.entered = threading.Event(), threading.Event()
        self.gate.set()
        self.rows: list[int] = []

    def __call__(self, logits):
        import torch

        self.entered.set()
        assert self.gate.wait(60), "test never opened the gate"
        if self.max_rows is not None and logits.shape[0] > self.max_rows:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected)")
        self.rows.append(logits.shape[0])
        return self.bias(logits)


def serve_joining(ex, hook, requests: dict) -> dict:
    """Request 0 first, held in the engine; the others queue meanwhile, then all run. Returns key -> response."""
    out: dict = {}
    with BackgroundServer(create_app(ex, ServeSettings(), model_name="tiny")) as srv:
        hook.gate.clear()
        hook.entered.clear()
        first = in_thread(post, srv.url, requests[0], out, 0)
        assert hook.entered.wait(30)
        rest = [in_thread(post, srv.url, requests[k], out, k) for k in list(requests)[1:]]
        wait_for(lambda: health(srv.url)["queue_depth"] == len(rest), "the other requests to queue")
        hook.gate.set()
        for t in [first, *rest]:
            t.join(120)
        out["health"] = health(srv.url)
    return out


def entity_dicts(preds) -> list[list[dict]]:
    return [[e.to_dict() for e in p.entities] for p in preds]


def test_real_model_requests_join_the_running_engine_and_equal_predict(model_folder):
    from kner.inference import Extractor

    ex = Extractor.load(model_folder, max_new_tokens=16, batch_size=8, max_chunk_tokens=48)
    hook = ex.config.logits_hook = HeldHook(ex)
    texts = [*TEXTS, LONG]
    want = dict(zip(texts, entity_dicts(ex.predict(texts))))  # the batch API over the same engine
    assert ex.last_stats.split_texts == 1 and sum(map(len, want.values())) > 0  # the bias made it write tags
    requests = {0: {"texts": [LONG]}, 1: {"texts": TEXTS[:3]}, 2: {"texts": ["", TEXTS[3]]}, 3: {"texts": TEXTS[4:]}}
    hook.rows.clear()
    out = serve_joining(ex, hook, requests)
    for k, payload in requests.items():
        r = out[k]
        assert r.status_code == 200, r.text
        for text, res in zip(payload["texts"], r.json()["results"]):
            assert res["text"] == text
            assert res["entities"] == want.get(text, [])
            assert all(text[e["start"] : e["end"]] == e["text"] for e in res["entities"])
    b = out["health"]["batching"]
    assert b["requests"] == 4 and b["texts"] == 7 and b["decode_steps"] > 0  # the blank text never queues
    # The long text's pieces were decoding when the other requests arrived: they shared its steps.
    assert b["most_rows"] > len(ex.predict([LONG])[0].outputs)


def test_real_model_out_of_memory_halves_the_rows_and_keeps_the_answers(model_folder):
    from kner.inference import Extractor

    ex = Extractor.load(model_folder, max_new_tokens=16, batch_size=8, max_chunk_tokens=48)
    hook = ex.config.logits_hook = HeldHook(ex)
    texts = [*TEXTS, LONG]
    want = dict(zip(texts, entity_dicts(ex.predict(texts))))
    hook.max_rows = 2  # from now on, a forward over more than 2 rows runs out of memory
    hook.rows.clear()
    requests = {0: {"texts": [LONG]}, 1: {"texts": TEXTS[:3]}, 2: {"texts": TEXTS[3:]}}
    out = serve_joining(ex, hook, requests)
    for k, payload in requests.items():
        assert out[k].status_code == 200, out[k].text
        assert [res["entities"] for res in out[k].json()["results"]] == [want[t] for t in payload["texts"]]
    assert ex._batch_cap == 2 and max(hook.rows) == 2  # 8 -> 4 -> 2 rows, as predict does


def test_engine_feed_adds_rows_while_decoding_and_drops_given_up_ones(model_folder):
    """The engine alone: B joins A's run and is answered first; C is given up mid-decode."""
    from kner.inference import Extractor
    from kner.inference.engine import EngineStats, GreedyChooser, Request

    ex = Extractor.load(model_folder, ignore_eos=True)
    enc, p = ex.encoder, len(ex.prefix_ids)
    a, b, c = (enc.prompt_ids(t).input_ids[p:] for t in TEXTS[:3])
    prefix = ex._prefix(p)
    plan = ex._plan([len(a) + 12] * 4, len(a), p)

    def run(requests, feed=None):
        done: dict[int, list[int]] = {}
        stats = EngineStats()
        ex._engine(prefix, plan).run(requests, GreedyChooser(len(ex.tokenizer)), done.__setitem__, feed, stats)
        return done, stats

    want, _ = run([Request(0, a, 12), Request(1, b, 3), Request(2, c, 10)])

    class Feed:
        calls = 0

        def more(self, idle):
            self.calls += 1
            return [Request(1, b, 3), Request(2, c, 10)] if self.calls == 3 else None

        def dropped(self):
            return {2} if self.calls == 5 else set()

    got, stats = run([Request(0, a, 12)], Feed())
    assert list(got) == [1, 0]  # B, admitted after A's second step with a budget of 3, finished first
    assert got == {0: want[0], 1: want[1]}  # what a run with all of them from the start decodes
    assert stats.dropped == 1 and stats.peak_rows == 3 and stats.new_tokens == 15


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_kner_serve_command(model_folder, tmp_path):
    port = free_port()
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    log = (tmp_path / "serve.log").open("w")
    proc = subprocess.Popen(
        kner_command(
            "serve",
            "--model",
            model_folder,
            "--port",
            port,
            "--name",
            "tiny",
            "--max-new-tokens",
            8,
            "--max-text-chars",
            50,
            "--log-level",
            "warning",
        ),
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:

        def up():
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            try:
                return httpx.get(url + "/health", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_for(up, "kner serve to start", timeout=120)
        h = health(url)
        assert h["model"] == "tiny" and h["scheme"] == "spacy19" and h["limits"]["max_text_chars"] == 50
        r = post(url, {"texts": TEXTS[:2] + [""]})
        assert r.status_code == 200 and r.json()["model"] == "tiny"
        for text, res in zip(TEXTS[:2] + [""], r.json()["results"]):
            assert res["text"] == text
            assert all(text[e["start"] : e["end"]] == e["text"] for e in res["entities"])
        assert post(url, {"text": "x" * 51}).status_code == 413
    finally:
        proc.terminate()
        proc.wait(30)
        log.close()
    logged = (tmp_path / "serve.log").read_text()
    assert "warm-up:" in logged and f"serving tiny on http://127.0.0.1:{port}" in logged


def test_kner_serve_refuses_a_busy_port_before_loading_the_model(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        # The model folder does not exist: the port is checked first, so that is never reported.
        proc = kner_process("serve", "--model", tmp_path / "none", "--port", port, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines() == [
        f"error: port {port} on 127.0.0.1 is already in use (another kner serve?); pick another with --port"
    ]


def test_missing_fastapi_is_a_user_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "uvicorn", None)  # import uvicorn -> ImportError
    res = run_app("serve", "--model", "whatever")
    assert isinstance(res.exception, KnerError)
    assert 'pip install "kner[serve]"' in str(res.exception)


def test_loadtest_reports_throughput_and_latency(fake):
    from loadtest import run as loadtest

    with BackgroundServer(create_app(fake, ServeSettings())) as srv:
        rep = loadtest(srv.url, [f"문장 {i}" for i in range(20)], clients=4, texts_per_request=2)
    assert rep["requests"] == 10 and rep["texts"] == 20 and rep["statuses"] == {200: 10} and rep["entities"] == 40
    assert rep["requests_per_s"] > 0 and 0 < rep["latency_ms"]["p50"] <= rep["latency_ms"]["p95"]
    assert sum(map(len, fake.calls)) == 20
