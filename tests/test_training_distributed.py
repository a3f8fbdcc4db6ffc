"""Data-parallel training (kner.training.distributed) on CPU: 2 processes over gloo equal 1 process.

The 2-process runs are real launches (``torch.distributed.run``, what ``torchrun``
is): once through the ``kner train`` command line, once through this file run as
a script (see ``_worker`` at the bottom), killed mid-step and resumed. The
reference is one process in the test itself, with the same global
``examples_per_step``. No dropout, fp32: the runs must agree to float summation
order (1e-5).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from kner.data.example import write_jsonl
from kner.training import distributed as dist
from kner.training.config import TrainConfig

HERE = Path(__file__).resolve()
KILLED = 17  # exit status of a worker killed on purpose


# ---------------------------------------------------------------------------
# The split of a step (pure, no processes).


class _Ex:
    def __init__(self, index, length):
        self.index, self.length = index, length


def test_step_shares_cover_the_step_once_and_balance_tokens():
    exs = [_Ex(i, n) for i, n in enumerate([300, 250, 420, 260, 390, 280, 310, 305, 270])]
    shares = dist.split_step(exs, 2)
    assert sorted(e.index for s in shares for e in s) == list(range(9))
    loads = [sum(e.length for e in s) for s in shares]
    assert abs(loads[0] - loads[1]) <= max(e.length for e in exs)  # greedy: off by at most one example
    assert [len(s) for s in shares] in ([5, 4], [4, 5])
    # The same on every rank, whatever order the step lists its examples in.
    assert [[e.index for e in s] for s in dist.split_step(exs[::-1], 2)] == [[e.index for e in s] for s in shares]
    assert [e.index for e in dist.share_of_step(exs, 1, 2)] == [e.index for e in shares[1]]
    # Fewer examples than ranks: a rank may get nothing.
    assert [len(s) for s in dist.split_step(exs[:1], 2)] == [1, 0]


def test_without_a_process_group_everything_is_a_no_op():
    assert not dist.active() and dist.is_main() and dist.rank_info().world_size == 1
    exs = [_Ex(0, 5), _Ex(1, 7)]
    assert dist.share_of_step(exs) == exs
    p = torch.nn.Parameter(torch.ones(3))
    p.grad = torch.full((3,), 2.0)
    dist.all_reduce_grads([p])
    assert p.grad.tolist() == [2.0, 2.0, 2.0]
    assert dist.all_reduce_sum([1.5, 2]) == [1.5, 2] and dist.gather_objects(1) is None


# ---------------------------------------------------------------------------
# Two processes against one.


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    from test_training_support import kmou_examples, tiny_model_dir

    root = tmp_path_factory.mktemp("ddp")
    exs = [e for e in kmou_examples(4) if len(e.text) < 90]
    write_jsonl(root / "train.jsonl", exs[:24])
    write_jsonl(root / "dev.jsonl", exs[24:29])
    return {"root": root, "model": tiny_model_dir(root / "model")}


def _cfg(setup, out, **kw) -> TrainConfig:
    d = dict(
        model=str(setup["model"]),
        train=str(setup["root"] / "train.jsonl"),
        dev=str(setup["root"] / "dev.jsonl"),
        scheme="kmou",
        output=str(out),
        examples_per_step=6,
        max_steps=4,
        lr=5e-3,
        lora_dropout=0.0,
        save_every=2,
        progress=False,
        tensorboard=False,
        seed=7,
    )
    d.update(kw)
    return TrainConfig(**d)


def _launch(args: list[str], timeout: int = 180) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *args]
    env = {
        **os.environ,
        "OMP_NUM_THREADS": "1",
        "PYTHONPATH": os.pathsep.join([str(HERE.parent), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
    }
    # A session of its own, so a hung launch is killed with its workers, not just the launcher.
    proc = subprocess.Popen(
        cmd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        cwd=HERE.parents[1],
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
        pytest.fail(f"launch timed out after {timeout} s: {stderr[-3000:]}")
    return subprocess.CompletedProcess(cmd, proc.returncode, stdout, stderr)


def _run_workers(spec: dict, tmp: Path) -> subprocess.CompletedProcess:
    path = tmp / f"spec-{len(list(tmp.glob('spec-*')))}.json"
    path.write_text(json.dumps(spec))
    return _launch([str(HERE), str(path)])


def _steps(out: Path) -> list[dict]:
    return [r for r in map(json.loads, (out / "log.jsonl").read_text().splitlines()) if "loss" in r]


def _weights(out: Path, sub: str = "adapter") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    return load_file(str(next((out / sub).glob("*.safetensors"))))


def _assert_same_run(got: Path, ref: Path, steps=None, weights: bool = True):
    ref_steps = {r["step"]: r for r in _steps(ref)}
    got_steps = _steps(got)
    assert [r["step"] for r in got_steps] == (steps or sorted(ref_steps))  # rank 0 alone logs: no duplicates
    for r in got_steps:
        want = ref_steps[r["step"]]
        assert r["loss"] == pytest.approx(want["loss"], abs=1e-5), r["step"]
        assert r["grad_norm"] == pytest.approx(want["grad_norm"], rel=1e-4), r["step"]
        assert (r["examples"], r["tokens"], r["answer_tokens"]) == (
            want["examples"],
            want["tokens"],
            want["answer_tokens"],
        )
    if weights:
        a, b = _weights(ref), _weights(got)
        assert a.keys() == b.keys()
        for k in a:
            torch.testing.assert_close(b[k], a[k], atol=1e-5, rtol=1e-4, msg=k)


@pytest.fixture(scope="module")
def reference(setup):
    """One process, the same global steps (6 examples a step): the run both launches must repeat."""
    from kner.training.recipe import train

    return train(_cfg(setup, setup["root"] / "ref"))


@pytest.mark.slow
def test_kner_train_under_torchrun_equals_one_process(setup, reference, tmp_path):
    """``torchrun --nproc_per_node 2 $(which kner) train ...``: qlora (bitsandbytes NF4 on CPU), gloo."""
    cfg = _cfg(setup, tmp_path / "ddp")
    cfg.save(tmp_path / "train.yaml")
    kner = Path(sys.executable).parent / "kner"
    res = _launch([str(kner), "train", "--config", str(tmp_path / "train.yaml"), "--no-progress"])
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp_path / "ddp"
    _assert_same_run(out, reference)
    metrics, ref_metrics = (json.loads((o / "metrics.json").read_text()) for o in (out, reference))
    assert metrics["dev"]["dev_loss"] == pytest.approx(ref_metrics["dev"]["dev_loss"], abs=1e-5)
    assert metrics["dev"]["dev_answer_tokens"] == ref_metrics["dev"]["dev_answer_tokens"]
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert sum(r.get("event") == "start" for r in log) == 1
    # Each rank ran its own micro-batches: at least one each, for every step.
    assert all(r["micro_batches"] >= 2 for r in _steps(out))
    states = torch.load(out / "checkpoints" / "step-0000002" / "states.pt", weights_only=False)
    assert len(states["rng_ranks"]) == 2


@pytest.fixture(scope="module")
def killed_run(setup, tmp_path_factory):
    """LoRA, 2 processes, a token budget of about one example a micro-batch; both ranks are
    killed (os._exit, no clean-up) in step 3, after the step-2 checkpoint."""
    tmp = tmp_path_factory.mktemp("killed")
    cfg = _cfg(setup, tmp / "run", method="lora", batch_tokens=400, optimizer="adamw")
    res = _run_workers({"config": cfg.to_dict(), "kill_at_step": 3}, tmp)
    assert res.returncode != 0 and f"exitcode  : {KILLED}" in res.stderr, res.stderr[-3000:]
    return tmp, cfg


@pytest.fixture(scope="module")
def lora_reference(setup):
    from kner.training.recipe import train

    return train(_cfg(setup, setup["root"] / "ref-lora", method="lora", optimizer="adamw"))


@pytest.mark.slow
def test_gradient_accumulation_under_two_processes_equals_one_process(killed_run, lora_reference):
    tmp, _ = killed_run
    out = tmp / "run"
    # Before the kill: steps 1 and 2, each cut into several micro-batches per rank.
    _assert_same_run(out, lora_reference, steps=[1, 2], weights=False)
    assert all(r["micro_batches"] >= 4 for r in _steps(out))
    ref_mb = {r["step"]: r["micro_batches"] for r in _steps(lora_reference)}
    assert all(r["micro_batches"] > ref_mb[r["step"]] for r in _steps(out))


@pytest.mark.slow
def test_killed_two_process_run_resumes_exactly(killed_run, lora_reference):
    tmp, cfg = killed_run
    res = _run_workers({"config": cfg.replace(resume=True).to_dict()}, tmp)
    assert res.returncode == 0, res.stderr[-3000:]
    out = tmp / "run"
    _assert_same_run(out, lora_reference)  # every step's loss and the final weights
    log = [json.loads(l) for l in (out / "log.jsonl").read_text().splitlines()]
    assert any(r.get("event") == "resume" and r["step"] == 2 for r in log)


@pytest.mark.slow
def test_resume_restores_each_ranks_dropout_stream(setup, tmp_path):
    """With LoRA dropout every rank draws its own masks: a run crashed in step 3 and resumed
    (in the same processes, a new process group) repeats the uninterrupted 2-process run."""
    cfg = _cfg(setup, tmp_path / "whole", method="lora", optimizer="adamw", lora_dropout=0.3, dev=None)
    res = _run_workers({"config": cfg.to_dict(), "crash_and_resume": str(tmp_path / "crashed")}, tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    _assert_same_run(tmp_path / "crashed", tmp_path / "whole")
    states = torch.load(tmp_path / "crashed" / "checkpoints" / "step-0000002" / "states.pt", weights_only=False)
    r0, r1 = states["rng_ranks"]
    assert not torch.equal(r0["torch"], r1["torch"])  # the streams differ, so each rank needs its own


# ---------------------------------------------------------------------------
# Run as a script under torch.distributed.run: one rank of a test launch.


class _Crash(Exception):
    pass


def _die_at_step(step: int, how) -> None:
    """Every rank dies at the same step, after computing its share, before the update."""
    real = dist.all_reduce_grads
    calls = {"n": 0}

    def dying(params, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == step:
            dist.all_reduce_grads = real
            how()
        return real(params, *args, **kwargs)

    dist.all_reduce_grads = dying


def _exit_now():
    sys.stdout.flush()
    os._exit(KILLED)  # like SIGKILL: no clean-up, no finally


def _raise():
    raise _Crash()


def _worker(spec_path: str) -> None:
    import logging

    from kner.training.recipe import train

    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = json.loads(Path(spec_path).read_text())
    cfg = TrainConfig(**spec["config"])
    if spec.get("kill_at_step"):
        _die_at_step(spec["kill_at_step"], _exit_now)
    if spec.get("crash_and_resume"):
        train(cfg)
        crashed = cfg.replace(output=spec["crash_and_resume"])
        _die_at_step(3, _raise)
        try:
            train(crashed)
        except _Crash:
            pass
        train(crashed.replace(resume=True))
        return
    train(cfg)


if __name__ == "__main__":
    _worker(sys.argv[1])
