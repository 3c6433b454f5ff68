"""No stage deletes or overwrites a user's data set: `dvc repro` with paths pointing at one leaves it byte-identical."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.data.synth import SynthConfig, generate
from stages.data.synth.writers import MARKER, SynthOutputError

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _user_data(root: Path) -> Path:
    """A small data set in AVA's layout, as a researcher would keep it (the bytes need not be real video)."""
    data = root / "mydata"
    (data / "videos").mkdir(parents=True)
    (data / "annotations").mkdir()
    (data / "videos" / "-5KQ66BBWC4.mkv").write_bytes(os.urandom(4096))
    (data / "annotations" / "ava_train_v2.2.csv").write_text("-5KQ66BBWC4,0902,0.077,0.151,0.283,0.811,80,1\n")
    (data / "ava_action_list_v2.2_for_activitynet_2019.pbtxt").write_text('item {\n  name: "talk to"\n  id: 79\n}\n')
    return data


def _state(folder: Path) -> dict[str, tuple[str, int]]:
    return {
        str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest(), p.stat().st_mtime_ns)
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _project(tmp_path: Path, paths: dict[str, str]) -> Path:
    project = tmp_path / "project"
    for name in ("stages", "heads", "cache_spec", "pipeline"):
        shutil.copytree(ROOT / name, project / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "dvc.yaml", project)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["synth"].update(num_videos_train=1, num_videos_val=1, duration_s=3)
    params["paths"].update(paths)
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return project


def _dvc(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run([str(BIN / "dvc"), *args], cwd=project, env=env, capture_output=True, text=True)


def test_dvc_repro_with_a_user_data_set_leaves_it_untouched(tmp_path: Path) -> None:
    project = _project(tmp_path, {"data": "mydata"})
    data = _user_data(project)
    before = _state(data)
    assert _dvc(project, "init", "--no-scm", "-q").returncode == 0
    result = _dvc(project, "repro", "synth")
    assert result.returncode == 0, result.stdout + result.stderr
    assert _state(data) == before  # bytes and modification times
    assert (project / "data" / "synth" / MARKER).is_file()


def test_synth_pointed_at_a_user_data_set_refuses_and_deletes_nothing(tmp_path: Path) -> None:
    project = _project(tmp_path, {"data": "mydata", "synth": "mydata"})
    data = _user_data(project)
    before = _state(data)
    assert _dvc(project, "init", "--no-scm", "-q").returncode == 0
    result = _dvc(project, "repro", "synth")
    assert result.returncode != 0
    assert "is not a synthetic data set" in result.stdout + result.stderr
    assert _state(data) == before


def test_a_rerun_replaces_exactly_its_own_files(tmp_path: Path) -> None:
    out = tmp_path / "synth"
    small = SynthConfig(num_videos_train=2, num_videos_val=1, duration_s=3)
    generate(small, out)
    generate(SynthConfig(num_videos_train=1, num_videos_val=1, duration_s=3), out)
    assert sorted(p.name for p in (out / "videos").iterdir()) == ["synth_train_000.mp4", "synth_val_000.mp4"]
    (out / "notes.txt").write_text("mine")  # a file the user put there is not the generator's to delete
    generate(small, out)
    assert (out / "notes.txt").read_text() == "mine"
    with pytest.raises(SynthOutputError, match="not a synthetic data set"):
        generate(small, _user_data(tmp_path))
