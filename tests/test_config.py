"""One schema for `kner run` and `kner train` configs: typos and wrong types stop before the first stage,
with the file, line and dotted key; `kner run --dry-run` says what each stage would do."""

import inspect
import json
from pathlib import Path

import pytest
import yaml

from helpers import run_kner
from kner.config import RunConfig, ScratchSection, SpacySection, TokenizerSection, load_run_config
from kner.data.example import Entity, Example, write_jsonl
from kner.errors import ConfigError
from kner.training.config import TrainConfig, looks_like_path

CONFIGS = sorted((Path(__file__).resolve().parents[1] / "configs").glob("*.yaml"))

# Line numbers matter: the tests below name them.
BASE = """\
seed: 13
data:
  format: jsonl
  path: data.jsonl
  scheme: spacy19
  limit: {train: 16, dev: 2, test: 2}
model:
  from_scratch: {arch: llama, hidden: 32, layers: 1, heads: 2, tokenizer: {vocab_size: 600}}
train:
  method: full
  lr: 1.0e-3
  epochs: 1
predict:
  constrained: true
baseline:
  spacy: {enabled: false}
report:
  sample: 5
"""


def _data(path: Path, n: int = 20) -> None:
    exs = []
    for i in range(n):
        text = f"김철수{i}는 서울에 산다."
        exs.append(
            Example(
                f"d{i}",
                text,
                [
                    Entity(0, len(f"김철수{i}"), "PER", f"김철수{i}"),
                    Entity(text.index("서울"), text.index("서울") + 2, "GPE", "서울"),
                ],
                {"doc": f"doc{i}"},
            )
        )
    write_jsonl(path, exs)


@pytest.fixture
def workdir(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    _data(tmp_path / "data.jsonl")
    return tmp_path


def kner(*args) -> tuple[int, str, str]:
    """The real entry point (`kner ...`) in-process: exit status, stdout, stderr."""
    res = run_kner(*args)
    return res.exit_code, res.stdout, res.stderr


def _config(workdir: Path, old: str = "", new: str = "") -> Path:
    assert old in BASE
    p = workdir / "cfg.yaml"
    p.write_text(BASE.replace(old, new, 1), encoding="utf-8")
    return p


@pytest.mark.parametrize(
    "old, new, error",
    [
        ("epochs: 1", "epochs: ten", "cfg.yaml:12: train.epochs: expected an integer, got 'ten'"),
        ("lr: 1.0e-3", "lr: 3.0e-3x", "cfg.yaml:11: train.lr: expected a number, got '3.0e-3x'"),
        ("  limit:", "  limitt:", "cfg.yaml:6: data.limitt: unknown key (did you mean 'limit'?)"),
        (
            "spacy: {enabled: false}",
            "spacy: {enabeld: false}",
            "cfg.yaml:16: baseline.spacy.enabeld: unknown key (did you mean 'enabled'?)",
        ),
        ("epochs: 1", "epoch: 1", "cfg.yaml:12: train.epoch: unknown key (did you mean 'epochs'?)"),
        ("limit: {train: 16", "limit: {tset: 16", "cfg.yaml:6: data.limit.tset: unknown key (did you mean 'test'?)"),
        (
            "tokenizer: {vocab_size",
            "tokenizer: {vocab_sise",
            "cfg.yaml:8: model.from_scratch.tokenizer.vocab_sise: unknown key (did you mean 'vocab_size'?)",
        ),
        ("method: full", "method: fulll", "cfg.yaml:10: train.method: expected 'qlora', 'lora' or 'full', got 'fulll'"),
        (
            "constrained: true",
            "constrained: maybe",
            "cfg.yaml:14: predict.constrained: expected true or false, got 'maybe'",
        ),
        (
            "  from_scratch:",
            "  base: ./my-model\n  from_scrat:",
            "cfg.yaml:9: model.from_scrat: unknown key (did you mean 'from_scratch'?)",
        ),
        (
            "model:\n  from_scratch: {arch: llama, hidden: 32, layers: 1, heads: 2, tokenizer: {vocab_size: 600}}",
            "model:\n  base: ./my-model",
            "cfg.yaml:8: model.base: model folder not found: ./my-model",
        ),
        (
            "epochs: 1",
            "epochs: 1\n  model: org/name",
            "cfg.yaml:13: train.model: set by kner run from model.base; remove it here",
        ),
        ("path: data.jsonl", "path: missing.jsonl", "cfg.yaml:4: data.path: no such file or folder: missing.jsonl"),
        ("scheme: spacy19", "scheme: spacy91", "cfg.yaml:5: data.scheme: unknown label scheme 'spacy91'"),
        ("seed: 13", "sed: 13", "cfg.yaml:1: sed: unknown key (did you mean 'seed'?)"),
    ],
)
def test_dry_run_names_the_bad_key_and_exits_2(workdir, old, new, error):
    code, out, err = kner("run", _config(workdir, old, new).name, "--dry-run")
    assert code == 2, out
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1 and err.startswith(f"error: {error}")
    assert not (workdir / "runs").exists()


def test_every_problem_is_on_the_one_line(workdir):
    p = _config(workdir, "epochs: 1", "epochs: ten\n  lora_rank: 8")
    with pytest.raises(ConfigError) as ex:
        load_run_config(p)
    assert str(ex.value) == (
        "cfg.yaml:12: train.epochs: expected an integer, got 'ten'; "
        "cfg.yaml:13: train.lora_rank: unknown key (did you mean 'lora_r'?)"
    ).replace("cfg.yaml", str(p))


def test_numbers_written_as_yaml_1_1_strings_are_numbers(workdir):
    p = _config(workdir, "lr: 1.0e-3", "lr: 2e-4")
    assert yaml.safe_load(p.read_text())["train"]["lr"] == "2e-4"  # what PyYAML hands us
    code, out, err = kner("run", p.name, "--dry-run")
    assert code == 0, err
    resolved = yaml.safe_load(out.split("\nstages (")[0])
    assert resolved["train"]["lr"] == 2e-4 and resolved["train"]["max_seq_len"] == 1024  # defaults filled in
    (workdir / "t.yaml").write_text("lr: 2e-4\nwarmup_ratio: '0.1'\n", encoding="utf-8")
    cfg = TrainConfig.load(workdir / "t.yaml", lora_r=8)
    assert (cfg.lr, cfg.warmup_ratio, cfg.lora_r) == (2e-4, 0.1, 8)


def test_kner_train_reads_the_same_schema(workdir):
    (workdir / "t.yaml").write_text("lr: 2e-4\nepoch: 3\nprompt: {templat: x}\n", encoding="utf-8")
    code, _, err = kner("train", "--config", "t.yaml")
    assert code == 2
    assert err.strip() == (
        "error: t.yaml:2: epoch: unknown key (did you mean 'epochs'?); "
        "t.yaml:3: prompt.templat: unknown key (did you mean 'template'?)"
    )
    code, _, err = kner("train", "--model", "./my-model", "--train", "data.jsonl")
    assert (code, err.strip()) == (2, "error: model folder not found: ./my-model")


def test_train_config_file_round_trips(tmp_path):
    cfg = TrainConfig(
        lr=1e-4,
        target_modules="q_proj, v_proj",
        prompt={"separator": "\n"},
        augment={"mention_replace": 0.5, "variants": 2},
    )
    assert cfg.target_modules == ["q_proj", "v_proj"]
    assert TrainConfig.load(cfg.save(tmp_path / "train_config.yaml")) == cfg


@pytest.mark.parametrize(
    "name, is_path",
    [
        ("./my-model", True),
        ("/abs/model", True),
        ("~/m", True),
        ("runs/x/train", True),
        ("Qwen/Qwen2.5-7B-Instruct", False),
        ("gpt2", False),
    ],
)
def test_what_counts_as_a_local_model_path(name, is_path):
    assert looks_like_path(name) is is_path


def test_yaml_and_file_errors(workdir):
    (workdir / "bad.yaml").write_text("data: [1, 2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml:2: invalid YAML"):
        load_run_config(workdir / "bad.yaml")
    (workdir / "list.yaml").write_text("- 1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a mapping"):
        load_run_config(workdir / "list.yaml")
    with pytest.raises(ConfigError, match="config file not found"):
        load_run_config(workdir / "missing.yaml")


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_shipped_configs_validate(path):
    from kner.data.schemes import Mapping, load_scheme

    cfg = load_run_config(path)
    scheme = load_scheme(cfg.data.target_scheme())
    mapping = Mapping.load(*cfg.data.mapping(), cfg.data.map_file)
    assert set(v for v in mapping.table.values() if v) <= set(scheme.names)
    # Stage keys hash what the file wrote: finished runs stay up to date with the typed schema.
    raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    for name in ("data", "model", "train", "predict", "baseline", "report"):
        assert json.dumps(cfg.given(name), sort_keys=True) == json.dumps(raw.get(name) or {}, sort_keys=True)


def test_section_defaults_are_the_functions_defaults():
    from kner.baselines.spacy_ner import train_spacy
    from kner.model.scratch import build_scratch_model, train_tokenizer

    for section, fn, skip in (
        (SpacySection, train_spacy, {"train", "dev", "out_dir"}),
        (ScratchSection, build_scratch_model, {"tokenizer", "extra"}),
        (TokenizerSection, train_tokenizer, {"texts", "extra_texts", "pieces"}),
    ):
        params = {n: p.default for n, p in inspect.signature(fn).parameters.items() if n not in skip}
        fields = {n: f.default for n, f in section.model_fields.items() if n in params}
        assert set(params) <= set(section.model_fields), section
        if section is SpacySection:
            del fields["seed"], params["seed"]  # None: the run's seed
        assert fields == params, section


@pytest.mark.slow  # imports transformers' config classes (torch): seconds on a busy machine
def test_scratch_architecture_settings_are_checked(workdir):
    ok = _config(workdir, "heads: 2,", "heads: 2, attention_dropout: 0.1,")
    assert load_run_config(ok).model.from_scratch.arch_settings()["attention_dropout"] == 0.1
    bad = _config(workdir, "heads: 2,", "heads: 2, attn_dropout: 0.1,")
    with pytest.raises(ConfigError, match=r"model.from_scratch.attn_dropout: unknown key .*'attention_dropout'"):
        load_run_config(bad)


def _stages(out: str) -> dict[str, str]:
    lines = out.split("\nstages (")[1].splitlines()[1:]
    return {ln.split()[0]: ln.split(None, 1)[1] for ln in lines if ln.strip()}


def test_dry_run_lists_stages_and_runs_nothing(workdir):
    from kner.pipeline import run

    p = _config(workdir)
    code, out, err = kner("run", p.name, "--dry-run", "-o", "out")
    assert code == 0, err
    assert _stages(out) == {
        "prepare": "would run",
        "train": "would run (after prepare)",
        "predict": "would run (after prepare, train)",
        "report": "would run (after prepare, predict)",
    }  # baseline: disabled
    assert not (workdir / "out").exists()

    assert [e["status"] for e in run(p, "out", stop_after="prepare")["stages"]] == ["ran"]
    _, out, _ = kner("run", p.name, "--dry-run", "-o", "out")
    assert _stages(out) == {
        "prepare": "up to date",
        "train": "would run",
        "predict": "would run (after train)",
        "report": "would run (after predict)",
    }
    _, out, _ = kner("run", p.name, "--dry-run", "-o", "out", "--force", "prepare")
    assert _stages(out)["prepare"] == "would run (forced)"
    _, out, _ = kner(
        "run",
        _config(workdir, "dev: 2", "dev: 1").name,
        "--dry-run",
        "-o",
        "out",
        "--stop-after",
        "train",
    )
    assert _stages(out) == {"prepare": "would run", "train": "would run (after prepare)"}
    assert sorted(f.name for f in (workdir / "out").iterdir()) == ["config.yaml", "prepare", "run.json"]


def test_run_config_schema_holds_every_section():
    assert set(RunConfig.model_fields) == {
        "name",
        "output_dir",
        "seed",
        "data",
        "model",
        "train",
        "predict",
        "baseline",
        "report",
    }
    assert RunConfig.model_fields["train"].annotation is TrainConfig  # kner train's schema, not a copy


def test_mapping_of_a_format_without_a_scheme_targets_the_scheme_prepare_writes():
    # jsonl has no label scheme of its own: map_from alone maps to the default target (spacy19),
    # the scheme prepare writes and train learns, not to "None".
    data = RunConfig.model_validate({"data": {"format": "jsonl", "path": "x.jsonl", "map_from": "kmou"}}).data
    assert data.target_scheme() == "spacy19"
    assert data.mapping() == ("kmou", "spacy19")
    assert RunConfig.model_validate({"data": {"format": "kmou"}}).data.mapping() is None
