"""train-head resumes a stopped or killed run bit for bit, writes its outputs atomically with the run's id, and
refuses what cannot be trained or read: 0 epochs, a truncated head.pt, a resume file of other settings (issue 10)."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch

import stages.train as train_module
from cache_spec.errors import InputError
from pipeline.cli import run
from pipeline.config import ParamsError, evaluate_config, extract_config, train_config
from stages.evaluate import evaluate
from stages.extract import extract
from stages.models.trained_head import RESUME_FILE, HeadCheckpointError, load_head, open_head
from stages.train import ResumeError, TrainConfig, train
from tests.conftest import write_params

EPOCHS = 5
SILENT = {"progress": lambda iterable, **_: iterable}


@pytest.fixture()
def train_store(tiny_params: dict) -> dict:
    """The tiny train store, with small batches so an epoch has several optimiser steps."""
    tiny_params["train"].update(epochs=EPOCHS, batch_clips=2)
    extract(extract_config(tiny_params, "train"))
    return tiny_params


@pytest.fixture()
def stores(train_store: dict) -> dict:
    extract(extract_config(train_store, "val"))
    return train_store


class Stop(Exception):
    """An injected interruption (what Ctrl-C or an error does to the training loop)."""


def _head(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def _curve(out_dir: Path) -> pd.DataFrame:
    return pd.read_csv(out_dir / "curve.tsv", sep="\t")


def _metrics(out_dir: Path) -> dict[str, Any]:
    return json.loads((out_dir / "metrics.json").read_text())


def assert_same_training(out_dir: Path, reference: Path) -> None:
    """Bit-for-bit the same weights (torch.equal on every tensor), loss curve and training metrics."""
    got, want = _head(out_dir / "head.pt")["state_dict"], _head(reference / "head.pt")["state_dict"]
    assert list(got) == list(want)
    unequal = [name for name in want if not torch.equal(got[name], want[name])]
    assert unequal == [], f"tensors differ from the uninterrupted run: {unequal}"
    columns = ["epoch", "loss", "lr"]
    pd.testing.assert_frame_equal(_curve(out_dir)[columns], _curve(reference)[columns], check_exact=True)
    training = ("final_loss", "epochs", "train_boxes")  # seconds, boxes/s and the run id are not the training's
    assert {k: _metrics(out_dir)[k] for k in training} == {k: _metrics(reference)[k] for k in training}


def assert_one_run(out_dir: Path) -> str:
    """head.pt, metrics.json and curve.tsv record the same run id; returns it."""
    run_id = _head(out_dir / "head.pt")["run_id"]
    assert isinstance(run_id, str) and run_id
    assert _metrics(out_dir)["run_id"] == run_id
    assert set(_curve(out_dir)["run_id"]) == {run_id}
    return run_id


def _stop_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int) -> None:
    """Raise right after the resume file of ``epoch`` was written."""
    save = train_module.save_resume

    def save_then_stop(path: Path, state: dict[str, Any]) -> None:
        save(path, state)
        if state["epoch"] == epoch:
            raise Stop(f"stopped after epoch {epoch}")

    monkeypatch.setattr(train_module, "save_resume", save_then_stop)


def _stop_at_batch(monkeypatch: pytest.MonkeyPatch, batch: int) -> None:
    """Raise inside an epoch, after optimiser steps the resume file does not hold."""
    to_tensors, calls = train_module.to_tensors, [0]

    def count_then_stop(*args: Any) -> Any:
        calls[0] += 1
        if calls[0] == batch:
            raise Stop(f"stopped at batch {batch}")
        return to_tensors(*args)

    monkeypatch.setattr(train_module, "to_tensors", count_then_stop)


# ---- (a) stop in process, resume: the same head as an uninterrupted run ------------------------------------------


@pytest.mark.parametrize(
    ("head", "where", "memory_budget_mb"),
    [
        ("linear", "after epoch 2", 2048),
        ("linear", "mid-epoch", 2048),
        ("acrn", "mid-epoch", 2048),
        ("linear", "mid-epoch", 0),  # streamed from the shards: shard-order shuffles resume too
    ],
)
def test_a_stopped_run_resumes_bit_for_bit(
    train_store: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, head: str, where: str, memory_budget_mb: int
) -> None:
    train_store["head"]["name"] = head
    train_store["train"]["memory_budget_mb"] = memory_budget_mb
    config = train_config(train_store)
    reference = replace(config, out_dir=tmp_path / "reference")
    reference_result = train(reference, **SILENT)
    with monkeypatch.context() as patch:
        if where == "after epoch 2":
            _stop_after_epoch(patch, 2)
        else:
            _stop_at_batch(patch, 15)  # a few batches into epoch 3 (up to 6 batches an epoch) or later
        with pytest.raises(Stop):
            train(config, **SILENT)
    resume = config.out_dir / RESUME_FILE
    saved = torch.load(resume, map_location="cpu", weights_only=True)
    assert 1 <= saved["epoch"] < EPOCHS and len(saved["curve"]) == saved["epoch"]
    assert not (config.out_dir / "head.pt").exists()  # nothing final was written by the stopped run
    torch.manual_seed(1234)  # whatever happened to the global RNG since, the resume file's states are used
    result = train(replace(config, resume=True), **SILENT)
    assert result.resumed_at_epoch == saved["epoch"]
    assert result.final_loss == reference_result.final_loss
    assert_same_training(config.out_dir, reference.out_dir)
    assert assert_one_run(config.out_dir) == saved["run_id"] != assert_one_run(reference.out_dir)
    assert not resume.exists()  # a finished run leaves no resume file behind


def test_the_resume_test_sees_a_missing_rng_state(train_store: dict, tmp_path: Path, monkeypatch) -> None:
    """The equality above is not vacuous: resuming without the saved RNG states trains another head."""
    config = train_config(train_store)
    train(replace(config, out_dir=tmp_path / "reference"), **SILENT)
    with monkeypatch.context() as patch:
        _stop_after_epoch(patch, 2)
        with pytest.raises(Stop):
            train(config, **SILENT)
    monkeypatch.setattr(train_module, "set_rng_states", lambda states, device: None)
    train(replace(config, resume=True), **SILENT)
    with pytest.raises(AssertionError, match="tensors differ"):
        assert_same_training(config.out_dir, tmp_path / "reference")


def test_resume_refuses_other_settings_naming_the_field(train_store: dict, monkeypatch) -> None:
    config = train_config(train_store)
    _stop_after_epoch(monkeypatch, 1)
    with pytest.raises(Stop):
        train(config, **SILENT)
    resume = config.out_dir / RESUME_FILE
    with pytest.raises(ResumeError) as caught:
        train(replace(config, resume=True, lr=0.002), **SILENT)
    message = str(caught.value)
    assert isinstance(caught.value, InputError) and "\n" not in message
    assert f"cannot resume from {resume}: it was made with other settings (resume file -> now: lr 0.001 -> 0.002)" in (
        message
    )
    assert "train without --resume (params train.resume: false) to start over" in message
    with pytest.raises(ResumeError, match=r"\(resume file -> now: epochs 5 -> 6\)"):
        train(replace(config, resume=True, epochs=6), **SILENT)
    # a store of other features (here: the fingerprint the file records, edited) is named by its field
    state = torch.load(resume, weights_only=True)
    recorded = json.loads(state["fingerprint"])
    recorded["store"]["weights"] = "other-weights"
    torch.save({**state, "fingerprint": json.dumps(recorded)}, resume)
    with pytest.raises(ResumeError, match=r'now: store.weights "other-weights" -> "random-init\(seed=0\)"\)'):
        train(replace(config, resume=True), **SILENT)


def test_an_unreadable_resume_file_is_one_line(train_store: dict) -> None:
    config = train_config(train_store)
    config.out_dir.mkdir(parents=True)
    (config.out_dir / RESUME_FILE).write_bytes(b"PK\x03\x04 cut short")
    with pytest.raises(ResumeError, match=r"resume file .*resume.pt cannot be read \(RuntimeError: .*\); delete it"):
        train(replace(config, resume=True), **SILENT)


def test_resume_without_a_resume_file_trains_from_epoch_0(train_store: dict, tmp_path: Path, caplog) -> None:
    config = train_config(train_store)
    train(replace(config, out_dir=tmp_path / "reference"), **SILENT)
    with caplog.at_level("WARNING", logger="stages.train"):
        result = train(replace(config, resume=True), **SILENT)
    assert result.resumed_at_epoch == 0
    assert any("no resume file at" in r.getMessage() for r in caplog.records)
    assert_same_training(config.out_dir, tmp_path / "reference")


# ---- (b) a real SIGKILL, then `pipeline train-head --resume` -----------------------------------------------------


def test_a_killed_train_head_resumes_to_the_uninterrupted_head(train_store: dict, tmp_path: Path) -> None:
    epochs = 300  # ~1 s of training after the first resume file: time to kill it well before the end
    train_store["train"]["epochs"] = epochs
    params = write_params(train_store, tmp_path / "params.yaml")
    config = train_config(train_store)
    resume = config.out_dir / RESUME_FILE
    command = [sys.executable, "-c", "from pipeline.cli import run; run()", "train-head", "--params", str(params)]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # CPU sums depend on the thread count: the reference's below
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 120
    while not resume.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
    os.kill(proc.pid, signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == -signal.SIGKILL, err[-2000:]
    killed_at = torch.load(resume, map_location="cpu", weights_only=True)["epoch"]
    assert 1 <= killed_at < epochs and not (config.out_dir / "head.pt").exists()

    resumed = subprocess.run([*command, "--resume"], capture_output=True, text=True, timeout=300, env=env)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"after epoch {killed_at} of {epochs}" in resumed.stderr and "torch threads" not in resumed.stderr
    reference = replace(config, out_dir=tmp_path / "reference")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train(reference, **SILENT)
    finally:
        torch.set_num_threads(threads)
    assert_same_training(config.out_dir, reference.out_dir)
    assert assert_one_run(config.out_dir) != assert_one_run(reference.out_dir)
    assert not resume.exists()


# ---- (c) an empty or truncated head.pt: one line naming the file and the fix ------------------------------------


def test_an_empty_or_truncated_head_is_an_input_error_naming_file_and_fix(train_store: dict) -> None:
    checkpoint = train(train_config(train_store), **SILENT).checkpoint
    data = checkpoint.read_bytes()
    for size in (len(data) // 2, len(data) - 1, 10, 1):
        checkpoint.write_bytes(data[:size])
        with pytest.raises(HeadCheckpointError) as caught:
            load_head(checkpoint)
        message = str(caught.value)
        assert isinstance(caught.value, InputError) and "\n" not in message
        assert message.startswith(f"head checkpoint {checkpoint} is truncated or corrupt ({size} bytes; torch.load: ")
        assert message.endswith("retrain it: `pipeline train-head` (or `dvc repro`)")
    checkpoint.write_bytes(b"")
    with pytest.raises(HeadCheckpointError, match=r"is empty \(0 bytes; its save was cut short\): retrain it"):
        load_head(checkpoint)
    (checkpoint.parent / RESUME_FILE).write_bytes(b"")  # an interrupted run to finish: the fix says so
    finish = "finish the interrupted training with `pipeline train-head --resume`, or retrain: `pipeline train-head`"
    with pytest.raises(HeadCheckpointError, match=re.escape(finish)):
        load_head(checkpoint)
    torch.save({"state_dict": {}}, checkpoint)
    with pytest.raises(HeadCheckpointError, match="is not a head checkpoint written by `pipeline train-head`"):
        load_head(checkpoint)
    checkpoint.unlink()
    with pytest.raises(HeadCheckpointError, match=rf"no trained head at .*head.pt; {re.escape(finish)}$"):
        load_head(checkpoint)
    (checkpoint.parent / RESUME_FILE).unlink()
    with pytest.raises(HeadCheckpointError, match=r"no trained head at .*head.pt; train one: `pipeline train-head`"):
        load_head(checkpoint)


def test_cli_evaluate_with_an_empty_head_prints_one_line_not_aborted(
    stores: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    checkpoint = evaluate_config(stores).checkpoint
    checkpoint.parent.mkdir(parents=True)
    checkpoint.write_bytes(b"")
    params = write_params(stores, tmp_path / "params.yaml")
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_info:
        run(["evaluate", "--params", str(params)])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2
    assert err == (
        f"error: head checkpoint {checkpoint} is empty (0 bytes; its save was cut short): retrain it: "
        "`pipeline train-head` (or `dvc repro`) (-v shows the traceback)\n"
    )


# ---- (d) a kill during the save keeps the old outputs; outputs record their run ---------------------------------


def test_a_failure_while_saving_keeps_the_previous_outputs_whole(train_store: dict, monkeypatch) -> None:
    config = train_config(train_store)
    first = train(config, **SILENT)
    before = {name: (config.out_dir / name).read_bytes() for name in ("head.pt", "metrics.json", "curve.tsv")}
    real_save = torch.save
    written: list[Path] = []

    def save_half_then_die(obj: Any, f: Any, *args: Any, **kwargs: Any) -> None:
        """torch.save that dies half-way through writing head.pt's temporary file (a kill, a full disk)."""
        if not Path(f).name.startswith(".head."):
            return real_save(obj, f, *args, **kwargs)
        real_save(obj, f, *args, **kwargs)
        Path(f).write_bytes(Path(f).read_bytes()[: Path(f).stat().st_size // 2])
        written.append(Path(f))
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", save_half_then_die)
    with pytest.raises(OSError, match="No space left"):
        train(replace(config, seed=1), **SILENT)
    assert written and written[0].parent == config.out_dir and written[0].name != "head.pt"
    after = {name: (config.out_dir / name).read_bytes() for name in before}
    assert after == before  # head.pt, metrics.json and curve.tsv of the first run, untouched
    assert sorted(p.name for p in config.out_dir.iterdir()) == ["curve.tsv", "head.pt", "metrics.json", RESUME_FILE]
    assert assert_one_run(config.out_dir) == first.run_id
    load_head(config.out_dir / "head.pt")  # still loads
    monkeypatch.setattr(torch, "save", real_save)
    # the failed run's last epoch was kept: --resume writes its outputs without training again
    result = train(replace(config, seed=1, resume=True), **SILENT)
    assert result.resumed_at_epoch == EPOCHS and assert_one_run(config.out_dir) == result.run_id != first.run_id


def test_evaluate_records_the_run_id_of_the_head_it_scored(stores: dict) -> None:
    trained = train(train_config(stores), **SILENT)
    assert open_head(trained.checkpoint).run_id == trained.run_id == assert_one_run(trained.checkpoint.parent)
    config = evaluate_config(stores)
    metrics = evaluate(config)
    assert metrics["head_run_id"] == trained.run_id == _metrics(config.out_dir)["head_run_id"]
    assert not [p.name for p in config.out_dir.iterdir() if ".tmp" in p.name]


# ---- (e) 0 epochs is refused before anything is written ----------------------------------------------------------


@pytest.mark.parametrize("epochs", [0, -3])
def test_zero_or_negative_epochs_are_refused(tiny_params: dict, tmp_path: Path, epochs: int, capsys) -> None:
    message = f"epochs must be at least 1, got {epochs} (0 epochs would write an untrained head)"
    with pytest.raises(ValueError, match=rf"^{re.escape(message)}$"):
        TrainConfig(store=tmp_path, label_map=tmp_path, out_dir=tmp_path, epochs=epochs)
    tiny_params["train"]["epochs"] = epochs
    with pytest.raises(ParamsError, match=rf"^params train: {re.escape(message)}$"):
        train_config(tiny_params)
    params = write_params(tiny_params, tmp_path / "params.yaml")
    with pytest.raises(SystemExit) as exit_info:
        run(["train-head", "--params", str(params)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == f"error: params train: {message} (-v shows the traceback)\n"
    assert not Path(tiny_params["paths"]["runs"]).exists()
