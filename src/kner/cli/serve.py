"""``kner serve``: the HTTP extraction service (docs/serving.md)."""

from __future__ import annotations

import logging
import sys
import time
from pathlib import Path

import typer

from kner.cli import app, configure_logging
from kner.errors import ConfigError, KnerError
from kner.model.shape import parse_gib


@app.command()
def serve(
    model: str = typer.Option(
        ...,
        "--model",
        "-m",
        help="Output folder of `kner train`/`kner export`, or a base model (hub id or folder) with --adapter.",
    ),
    adapter: Path | None = typer.Option(None, help="LoRA adapter folder, when --model is a base model."),
    scheme: str | None = typer.Option(None, help="Label scheme of the adapter (with --adapter; default spacy19)."),
    host: str = typer.Option("127.0.0.1", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8000, help="Port to listen on."),
    name: str | None = typer.Option(None, help="Model name reported in answers (default: --model as given)."),
    max_text_chars: int = typer.Option(2000, help="Longest text accepted, in characters (413 beyond)."),
    max_texts: int = typer.Option(64, help="Most texts in one request (413 beyond)."),
    max_body_bytes: int = typer.Option(1_048_576, help="Largest request body in bytes (413 beyond)."),
    max_queue_texts: int = typer.Option(4096, help="Texts allowed to wait for the engine; requests beyond get 503."),
    timeout: float = typer.Option(300.0, help="Seconds a request may wait for its result (504 beyond; 0: no limit)."),
    constrain: bool = typer.Option(True, "--constrain/--no-constrain", help="Grammar-constrained decoding (default)."),
    batch_size: int | None = typer.Option(
        None, help="Most texts decoded at once (default: planned from free GPU memory)."
    ),
    max_memory: str | None = typer.Option(None, help="GPU memory the model may use, e.g. 15GiB (default: all free)."),
    max_chunk_tokens: int = typer.Option(384, help="Split texts longer than this many tokens."),
    max_new_tokens: int | None = typer.Option(None, help="Cap on generated tokens per text."),
    quantize: bool | None = typer.Option(
        None, "--quantize/--no-quantize", help="Override the 4-bit loading recorded in the model folder."
    ),
    dtype: str | None = typer.Option(None, help="Compute dtype override: auto, bf16, fp16, fp32."),
    log_level: str = typer.Option("info", help="uvicorn log level: critical, error, warning, info, debug."),
    allow_pickle: bool = typer.Option(
        False, "--allow-pickle", help="Also load pickled .bin weights (they can run code: only from sources you trust)."
    ),
) -> None:
    """Serve entity extraction over HTTP: POST /extract, GET /health, and a demo page at /."""
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as err:
        raise KnerError(
            f'kner serve needs FastAPI and uvicorn ({err.name} is missing): pip install "kner[serve]"'
        ) from None
    from kner.inference import Extractor
    from kner.serve import ServeSettings, create_app, port_problem

    # Settings are checked before the model loads: a typo should not cost a minute of loading.
    settings = ServeSettings(
        max_text_chars=max_text_chars,
        max_texts=max_texts,
        max_body_bytes=max_body_bytes,
        max_queue_texts=max_queue_texts,
        timeout_s=timeout or None,
    )
    if not 0 <= port < 65536:
        raise ConfigError(f"--port must be between 0 and 65535, not {port}")
    problem = port_problem(host, port)
    if problem is not None:
        raise ConfigError(problem)
    memory = parse_gib(max_memory)
    configure_logging(logging.WARNING, sys.stderr)
    typer.echo(f"loading {model} ...", err=True)
    ext = Extractor.load(
        model,
        adapter=adapter,
        scheme=scheme,
        quantize_4bit=quantize,
        compute_dtype=dtype,
        constrained=constrain,
        batch_size=batch_size,
        max_memory=memory,
        max_chunk_tokens=max_chunk_tokens,
        max_new_tokens=max_new_tokens,
        allow_pickle=allow_pickle,
    )
    # The first call builds the token table, the grammar and the prefix K/V (and, on a
    # GPU, initializes CUDA): pay for it here rather than in the first client's request.
    t0 = time.perf_counter()
    ext(["이순신은 조선 중기의 무신이다."])
    typer.echo(f"warm-up: {time.perf_counter() - t0:.1f} s", err=True)
    web = create_app(ext, settings, model_name=name or model)
    typer.echo(f"serving {name or model} on http://{host}:{port} (demo page at /, API at /extract)", err=True)
    uvicorn.run(web, host=host, port=port, log_level=log_level)
