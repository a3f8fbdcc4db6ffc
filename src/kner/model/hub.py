"""The Hugging Face Hub: weights kner agrees to load, a repo id as a model folder, the model card, pushing.

A Hub repo written by ``kner export --hub`` is a kner model folder with everything
at the top, so the Hub and peft/transformers read it as they read any repo::

    README.md                     # model card: YAML metadata (model-index with the scores) + usage
    kner.json                     # adapter_dir / model_dir / tokenizer_dir are "."
    adapter_config.json  adapter_model.safetensors      # an adapter, or
    config.json  model*.safetensors                     # merged or fully fine-tuned weights
    tokenizer.json  tokenizer_config.json ...

Pickled weights (``pytorch_model.bin``, ``adapter_model.bin``, ``*.pt``) run code
when loaded; kner loads safetensors only unless the caller passes ``allow_pickle``.

huggingface_hub is imported inside the functions: kner.model.loading imports this
module and kner.config imports loading, which must stay fast.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from kner.errors import KnerError
from kner.textio import read_text

# What snapshot_download skips unless pickles are allowed (also TF/Flax/ONNX copies kner never reads).
PICKLE_PATTERNS = ("*.bin", "*.pt", "*.pth", "*.pkl", "*.ckpt")
UNUSED_PATTERNS = ("*.h5", "*.msgpack", "*.onnx", "*.ot", "*.gguf")
PICKLE_HINT = "pass --allow-pickle to load it if you trust its source"
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# -- weights kner agrees to load ---------------------------------------------------------------------------


def pickled_weights(folder: Path) -> list[Path]:
    return sorted({p for pat in PICKLE_PATTERNS for p in folder.glob(pat) if p.is_file()})


def require_safetensors(folder: str | Path, allow_pickle: bool = False) -> None:
    """Refuse a folder whose weights exist only as pickles (naming the file and ``--allow-pickle``)."""
    folder = Path(folder)
    if allow_pickle or not folder.is_dir() or any(folder.glob("*.safetensors")):
        return
    pickles = pickled_weights(folder)
    if pickles:
        raise KnerError(
            f"{pickles[0]}: pickled weights, which can run arbitrary code when loaded; kner loads safetensors "
            f"only: {PICKLE_HINT}"
        )


# -- a repo id as a model folder --------------------------------------------------------------------------


def looks_like_repo_id(name: str | Path) -> bool:
    """``org/name`` that is no local path (a folder or file of that name wins)."""
    s = str(name)
    return not Path(s).exists() and bool(_REPO_ID.match(s)) and ".." not in s


def _unreachable(repo_id: str) -> str:
    from huggingface_hub import constants  # noqa: PLC0415  lazy: see the module docstring

    why = "offline mode is on (HF_HUB_OFFLINE=1)" if constants.is_offline_mode() else "the Hub cannot be reached"
    return (
        f"{repo_id}: not in the Hugging Face cache ({constants.HF_HUB_CACHE}) and {why}; download it once "
        f"with network access (`hf download {repo_id}`) or pass a local folder"
    )


def fetch(repo_id: str, *, revision: str | None = None, allow_pickle: bool = False) -> Path | None:
    """The local snapshot of a kner repo on the Hub (downloaded, or from the cache when offline); None
    when the repo has no ``kner.json``: a plain base model, which transformers loads by its id."""
    from huggingface_hub import hf_hub_download, snapshot_download, try_to_load_from_cache  # noqa: PLC0415  lazy
    from huggingface_hub.errors import (  # noqa: PLC0415  lazy: see the module docstring
        EntryNotFoundError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    from kner.model.artifacts import MANIFEST  # noqa: PLC0415  lazy: artifacts imports loading, which imports this

    try:
        hf_hub_download(repo_id, MANIFEST, revision=revision)
    except LocalEntryNotFoundError:  # offline or unreachable, and no kner.json cached
        if isinstance(try_to_load_from_cache(repo_id, "config.json", revision=revision), str):
            return None  # a base model in the cache
        raise KnerError(_unreachable(repo_id)) from None
    except EntryNotFoundError:
        return None
    except RevisionNotFoundError:
        raise KnerError(f"{repo_id}: no revision {revision!r} on the Hub") from None
    except RepositoryNotFoundError:
        raise KnerError(
            f"{repo_id}: no such model repo on the Hub, or it is private or gated (log in with `hf auth login`)"
        ) from None
    except HfHubHTTPError as err:
        raise KnerError(f"{repo_id}: {str(err).splitlines()[0]}") from None
    ignore = list(UNUSED_PATTERNS) + ([] if allow_pickle else list(PICKLE_PATTERNS))
    try:
        folder = Path(snapshot_download(repo_id, revision=revision, ignore_patterns=ignore))
    except LocalEntryNotFoundError:
        raise KnerError(_unreachable(repo_id)) from None
    if not allow_pickle and not any(folder.rglob("*.safetensors")):
        raise KnerError(f"{repo_id}: no safetensors weights (pickled ones are not downloaded); {PICKLE_HINT}")
    return folder


def refuse_remote_code(repo_id: str, trust_remote_code: bool) -> None:
    """A repo's kner.json cannot switch on running the repo's own Python code."""
    if trust_remote_code:
        raise KnerError(
            f"{repo_id}: its kner.json asks to run the repo's own Python code (trust_remote_code); "
            f"download it (`hf download {repo_id} --local-dir DIR`), read the code, and load DIR"
        )


# -- evaluation scores for the card -------------------------------------------------------------------------


@dataclass
class Scores:
    """Micro and per-label scores of one system, as `kner evaluate` writes them (``metrics.json``)."""

    micro: dict[str, float]
    per_label: dict[str, dict[str, Any]]
    source: Path
    n_sentences: int | None = None
    system: str | None = None
    run: dict[str, Any] = field(default_factory=dict)  # the run config, when from a `kner run` folder


def run_config(run_dir: Path) -> dict[str, Any]:
    p = run_dir / "config.yaml"
    if not p.is_file():
        return {}
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return raw if isinstance(raw, dict) else {}


def find_scores_file(model_dir: Path) -> Path | None:
    """In a `kner run` output folder (MODEL is its train/): the report, else ``kner evaluate``'s metrics."""
    run = model_dir.resolve().parent
    if model_dir.resolve().name != "train":
        return None
    for p in (run / "report" / "report.json", run / "predict" / "metrics.json"):
        if p.is_file():
            return p
    return None


def read_scores(path: str | Path, system: str | None = None, run: dict | None = None) -> Scores:
    """Scores from a ``metrics.json`` (`kner evaluate`) or a ``report.json`` (`kner run`, `kner compare`:
    ``system``, else the run's predict.name, else its only system other than spacy)."""
    path = Path(path)
    try:
        data = json.loads(read_text(path))
    except FileNotFoundError:
        raise KnerError(f"{path}: file not found") from None
    except json.JSONDecodeError as err:
        raise KnerError(f"{path}:{err.lineno}: not JSON ({err.msg})") from None
    run = run or {}
    if isinstance(data, dict) and isinstance(data.get("systems"), dict):
        systems = data["systems"]
        want = system or (run.get("predict") or {}).get("name") or ("llm" if run else None)
        if want is None:
            others = [s for s in systems if s != "spacy"]
            want = others[0] if len(others) == 1 else None
        if want not in systems:
            raise KnerError(
                f"{path}: pick the system to publish with --system ({', '.join(systems) or 'none in the file'})"
            )
        data, system = systems[want], want
    if not isinstance(data, dict) or not isinstance(data.get("micro"), dict) or "f1" not in data["micro"]:
        raise KnerError(f"{path}: no micro scores; pass the metrics.json of `kner evaluate` or a report.json")
    per = data.get("per_label") or {}
    return Scores(
        micro={k: data["micro"][k] for k in ("precision", "recall", "f1") if k in data["micro"]},
        per_label={k: v for k, v in per.items() if isinstance(v, dict) and "f1" in v},
        source=path,
        n_sentences=data.get("n_sentences"),
        system=system,
        run=run,
    )


# -- the model card -----------------------------------------------------------------------------------------

# kner's dataset names with a Hub dataset of the same corpus.
HUB_DATASETS = {"klue": "klue/klue"}


@dataclass
class CardInfo:
    model_name: str
    method: str
    scheme: str
    labels: list[str]
    adapter: bool
    base_model: str | None = None
    license: str = "other"
    language: list[str] = field(default_factory=lambda: ["ko"])
    datasets: list[str] = field(default_factory=list)
    tags: list[str] = field(default_factory=list)
    repo_id: str | None = None
    dataset_name: str | None = None  # the evaluation set, for the model-index
    split: str = "test"


def eval_results(info: CardInfo, scores: Scores) -> list:
    """The model-index entries: micro precision/recall/F1, then each label's F1 (labels with no gold
    and no predicted entity have no score and are left out)."""
    from huggingface_hub import EvalResult  # noqa: PLC0415  lazy: see the module docstring

    ds_name = info.dataset_name or (info.datasets[0] if info.datasets else "custom")
    ds_type = info.datasets[0] if info.datasets else ds_name
    common: dict[str, Any] = dict(
        task_type="token-classification",
        task_name="Named Entity Recognition",
        dataset_type=ds_type,
        dataset_name=ds_name,
        dataset_split=info.split,
    )
    out = [
        EvalResult(metric_type=k, metric_name=f"micro {k.title() if k != 'f1' else 'F1'}", metric_value=v, **common)
        for k, v in scores.micro.items()
    ]
    for lab, s in scores.per_label.items():
        if s.get("support", 1) or s.get("predicted", 1):
            out.append(
                EvalResult(metric_type="f1", metric_name=f"{lab} F1", metric_config=lab, metric_value=s["f1"], **common)
            )
    return out


def _pct(x: float | None) -> str:
    return "" if x is None else f"{100 * x:.2f}"


def card_text(info: CardInfo, scores: Scores | None) -> str:
    """README.md: YAML metadata (``huggingface_hub.ModelCardData``) and a body saying how to use the model."""
    from huggingface_hub import ModelCard, ModelCardData  # noqa: PLC0415  lazy: see the module docstring

    tags = ["kner", "ner", "named-entity-recognition", "korean", info.method]
    tags += [t for t in info.tags if t not in tags]
    data = ModelCardData(
        language=info.language,
        license=info.license,
        base_model=info.base_model,
        datasets=info.datasets or None,
        library_name="peft" if info.adapter else "transformers",
        tags=tags,
        model_name=info.model_name,
        eval_results=eval_results(info, scores) if scores is not None else None,
    )
    repo = info.repo_id or f"YOUR-NAME/{info.model_name}"
    what = (
        f"A {info.method.upper()} adapter for [{info.base_model}](https://huggingface.co/{info.base_model})"
        if info.adapter and info.base_model
        else f"A {info.method.upper()} adapter"
        if info.adapter
        else "A causal language model"
    )
    body = [
        f"# {info.model_name}",
        "",
        f"{what} that extracts named entities from Korean text, trained with "
        f"kner (`pip install kner`). It writes each entity as a tag, "
        f"`<LABEL>text</LABEL>`, and kner's constrained decoding keeps every entity a span of the input.",
        "",
        f"Label scheme `{info.scheme}`: {', '.join(f'`{x}`' for x in info.labels)}.",
        "",
        "## Use",
        "",
        "```bash",
        "pip install kner",
        f"kner predict --model {repo} --input texts.txt --output preds.jsonl",
        "```",
        "",
        "```python",
        "from kner.inference import Extractor",
        "",
        f'ex = Extractor.load("{repo}")',
        'ex(["이순신은 조선의 장군이다."])',
        "```",
        "",
        "The weights are safetensors; `kner.json` says how the base model is loaded and how prompts are "
        "built, so predictions match the evaluation below.",
    ]
    if scores is not None:
        src = f"`{scores.source.name}`" + (f", system `{scores.system}`" if scores.system else "")
        n = f"{scores.n_sentences} sentences of the " if scores.n_sentences else "the "
        body += [
            "",
            "## Evaluation",
            "",
            f"Exact-span scores (%) on {n}{info.split} split of {info.dataset_name or 'the evaluation set'} ({src}).",
            "",
            "| | precision | recall | F1 | gold entities |",
            "|---|---:|---:|---:|---:|",
            f"| **micro** | {_pct(scores.micro.get('precision'))} | {_pct(scores.micro.get('recall'))} | "
            f"{_pct(scores.micro.get('f1'))} | |",
        ]
        for lab, s in scores.per_label.items():
            body.append(
                f"| {lab} | {_pct(s.get('precision'))} | {_pct(s.get('recall'))} | {_pct(s.get('f1'))} | "
                f"{s.get('support', '')} |"
            )
    text = f"---\n{data.to_yaml()}\n---\n\n" + "\n".join(body) + "\n"
    ModelCard(text)  # parses it back: a card the Hub would reject is not written
    return text


# -- pushing -------------------------------------------------------------------------------------------------


def push(folder: str | Path, repo_id: str, *, private: bool = False, message: str | None = None) -> str:
    """Upload a ``kner export --hub`` folder to ``repo_id`` (created if missing); returns the commit URL."""
    import httpx  # noqa: PLC0415  lazy: see the module docstring
    from huggingface_hub import HfApi, constants  # noqa: PLC0415  lazy: see the module docstring
    from huggingface_hub.errors import HfHubHTTPError, HFValidationError, LocalTokenNotFoundError  # noqa: PLC0415  lazy

    from kner.model.artifacts import MANIFEST  # noqa: PLC0415  lazy: artifacts imports loading, which imports this

    folder = Path(folder)
    missing = [n for n in (MANIFEST, "README.md") if not (folder / n).is_file()]
    if missing:
        raise KnerError(f"{folder}: not a Hub folder (no {', '.join(missing)}); write one with `kner export --hub`")
    require_safetensors(folder)
    if constants.is_offline_mode():
        raise KnerError(f"cannot push to {repo_id}: offline mode is on (HF_HUB_OFFLINE=1); unset it and run again")
    api = HfApi()
    try:
        api.create_repo(repo_id, private=private, exist_ok=True)
        info = api.upload_folder(
            repo_id=repo_id, folder_path=folder, commit_message=message or f"kner export of {folder.name}"
        )
    except HFValidationError as err:
        raise KnerError(f"{repo_id}: not a repo id ({str(err).splitlines()[0]})") from None
    except LocalTokenNotFoundError:
        raise KnerError(f"cannot push to {repo_id}: not logged in (run `hf auth login` or set HF_TOKEN)") from None
    except HfHubHTTPError as err:
        code = err.response.status_code if err.response is not None else None
        why = {401: "not logged in (run `hf auth login` or set HF_TOKEN)", 403: "no write access"}.get(
            code, str(err).splitlines()[0]
        )
        raise KnerError(f"cannot push to {repo_id}: {why}") from None
    except (httpx.HTTPError, OSError) as err:
        raise KnerError(f"cannot push to {repo_id}: the Hub cannot be reached ({type(err).__name__})") from None
    return str(getattr(info, "commit_url", info))
