"""End-to-end fine-tuning writes a backbone checkpoint that extraction loads (and refuses a wrong one)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
import torch

from pipeline.config import extract_config, finetune_config
from stages.finetune import finetune
from stages.models.backbones import BackboneConfig, load_backbone
from stages.models.checkpoints import CheckpointError
from stages.models.slowfast import SlowFast, SlowFastConfig


def test_finetuned_checkpoint_changes_the_weights_and_loads_into_extract(tiny_params, tmp_path):
    tiny_params["backbone"]["checkpoint"] = str(tmp_path / "ft" / "backbone.pt")
    config = finetune_config(tiny_params)
    metrics = finetune(config)
    assert metrics["epochs"] == 1 and metrics["clips"] > 0
    assert json.loads((tmp_path / "ft" / "metrics.json").read_text())["final_loss"] == metrics["final_loss"]
    tuned, digest = load_backbone(extract_config(tiny_params, "train").backbone)
    initial, _ = load_backbone(BackboneConfig(preset="small", seed=config.backbone.seed))
    assert len(digest) == 16
    changed = [k for k, v in tuned.state_dict().items() if not torch.equal(v, initial.state_dict()[k])]
    assert any(k.endswith("s1.pathway0_stem.conv.weight") for k in changed)


def test_checkpoint_of_another_architecture_is_refused(tmp_path):
    other = SlowFast(replace(SlowFastConfig.small(), width=16))
    path = tmp_path / "other.pt"
    torch.save({"model_state": other.state_dict()}, path)
    with pytest.raises(
        CheckpointError,
        match=r"190 shape mismatches(.|\n)*s1\.pathway0_stem\.conv\.weight: checkpoint \(16, 3, 1, 7, 7\)",
    ):
        load_backbone(BackboneConfig(preset="small", checkpoint=path))


def test_clips_that_fail_stop_finetuning_unless_allowed(tiny_params, tiny_data, tmp_path):
    """Nothing silent: fine-tuning on fewer clips than the data set has is a choice the user makes by name."""
    import shutil

    from stages.data.video import ClipsFailedError
    from tests.conftest import cut_video

    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    cut_video(sorted((data / "videos").glob("synth_train_*.mp4"))[0], 0.5)  # its later keyframes lie outside it
    tiny_params["paths"]["data"] = str(data)
    tiny_params["backbone"]["checkpoint"] = str(tmp_path / "ft" / "backbone.pt")
    with pytest.raises(ClipsFailedError, match=r"\d+ of \d+ clips could not be decoded .*--allow-missing"):
        finetune(finetune_config(tiny_params))
    assert not (tmp_path / "ft" / "backbone.pt").exists()
    tiny_params["finetune"]["allow_missing"] = True
    metrics = finetune(finetune_config(tiny_params))
    assert 0 < metrics["clips"] and (tmp_path / "ft" / "backbone.pt").exists()
