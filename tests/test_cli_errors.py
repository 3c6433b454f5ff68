"""Errors for people: the project's input errors print one line and exit 2; `-v` anywhere shows the traceback;
Ctrl-C during extraction exits 130 and the rerun resumes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from pipeline.cli import run
from pipeline.config import ParamsError
from tests.conftest import write_params


def _run(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    with pytest.raises(SystemExit) as exit_info:
        run(argv)
    return int(exit_info.value.code or 0), capsys.readouterr().err


def test_a_missing_params_file_is_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, err = _run(["train-head", "--params", str(tmp_path / "nope.yaml")], capsys)
    assert code == 2
    assert err == f"error: no params file at {tmp_path / 'nope.yaml'} (-v shows the traceback)\n"


def test_a_bad_section_is_one_line(tiny_params: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    tiny_params["backbon"] = tiny_params.pop("backbone")
    code, err = _run(["extract", "--params", str(write_params(tiny_params, tmp_path / "p.yaml"))], capsys)
    assert code == 2 and err.count("\n") == 1 and "unknown section(s) ['backbon']" in err


def test_verbose_after_the_command_shows_the_traceback(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="no params file"):
        run(["train-head", "--params", str(tmp_path / "nope.yaml"), "-v"])


def test_the_first_extract_without_a_checkpoint_says_what_to_do(
    tiny_params: dict, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    tiny_params["backbone"]["checkpoint"] = str(tmp_path / "runs" / "finetune" / "backbone.pt")
    code, err = _run(
        ["extract", "--split", "val", "--params", str(write_params(tiny_params, tmp_path / "p.yaml"))], capsys
    )
    assert code == 2 and err.count("\n") == 1
    assert "no such backbone checkpoint. Run `pipeline finetune` first" in err and "set it to null" in err


def test_ctrl_c_during_extract_exits_130_and_the_rerun_resumes(tiny_params: dict, tmp_path: Path) -> None:
    tiny_params["extract"].update(clips_per_shard=1, batch_clips=1)
    params = write_params(tiny_params, tmp_path / "params.yaml")
    command = [sys.executable, "-c", "from pipeline.cli import run; run()", "extract", "--split", "train"]
    command += ["--params", str(params)]
    done = Path(tiny_params["paths"]["cache"]) / "train.zarr" / "done"
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not (done.is_dir() and any(done.glob("*.json"))) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted: finished work is kept" in err and "terminate called" not in err
    finished = len(list(done.glob("*.json")))
    assert 0 < finished < 12  # interrupted mid-run: some shards kept, some left
    rerun = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert f"{finished} already done" in rerun.stderr
