"""Shared fixtures: a tiny synthetic data set in the AVA layout and params that point at it."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from stages.data.synth import SynthConfig, generate

REPO = Path(__file__).resolve().parents[1]
TINY_SYNTH = SynthConfig(seed=3, num_videos_train=3, num_videos_val=2, duration_s=5)


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five short videos (3 train, 2 val) with annotations, detections and a label map."""
    out = tmp_path_factory.mktemp("synth")
    generate(TINY_SYNTH, out)
    return out


@pytest.fixture()
def tiny_params(tiny_data: Path, tmp_path: Path) -> dict:
    """The project's params.yaml, redirected to the tiny data set and made small enough for tests."""
    params = copy.deepcopy(yaml.safe_load((REPO / "params.yaml").read_text()))
    params["paths"] = {"data": str(tiny_data), "cache": str(tmp_path / "cache"), "runs": str(tmp_path / "runs")}
    params["backbone"]["checkpoint"] = None
    params["extract"].update(clips_per_shard=3, batch_clips=2, threads=1, heads=["linear"], views=["context_map"])
    params["train"].update(epochs=3, device="cpu")
    params["evaluate"]["device"] = "cpu"
    params["finetune"].update(epochs=1, device="cpu", threads=1)
    return params


def write_params(params: dict, path: Path) -> Path:
    path.write_text(yaml.safe_dump(params))
    return path


def cut_video(path: Path, seconds: float) -> None:
    """Rewrite a video as its first ``seconds``: same size (so the manifest is unchanged), later keyframes outside."""
    import av
    import numpy as np

    from stages.data.synth.writers import write_video
    from stages.data.video import video_info

    fps = video_info(path)[1]
    with av.open(str(path)) as container:
        frames = zip(range(round(fps * seconds)), container.decode(video=0), strict=False)
        head = [f.to_ndarray(format="rgb24") for _, f in frames]
    write_video(np.stack(head), path, round(fps))
