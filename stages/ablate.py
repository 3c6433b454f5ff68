"""Head ablations from one cache: every head x seed trained and evaluated, summarised like the papers' tables."""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pandas as pd

from stages.evaluate import EvaluateConfig, evaluate
from stages.models.trained_head import atomic_outputs
from stages.train import TrainConfig, train

log = logging.getLogger(__name__)

METRICS = ("frame_map", "frame_map_pose", "frame_map_object", "frame_map_person")


@dataclass(frozen=True)
class AblateConfig:
    heads: Sequence[str]
    seeds: Sequence[int]
    out_dir: Path
    train: TrainConfig  # the base run; head, options, seed and output folder are replaced per run
    evaluate: EvaluateConfig
    options: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)  # per-head constructor options


def ablate(config: AblateConfig) -> pd.DataFrame:
    """Train and evaluate every (head, seed); write runs.csv, table.csv and table.md; return the table."""
    records = []
    prior: dict[str, float | None] = {}
    for head in config.heads:
        for seed in config.seeds:
            run_dir = Path(config.out_dir) / head / f"seed{seed}"
            trained = train(
                replace(
                    config.train, head=head, head_options=dict(config.options.get(head, {})), seed=seed, out_dir=run_dir
                )
            )
            metrics = evaluate(replace(config.evaluate, checkpoint=trained.checkpoint, out_dir=run_dir / "evaluate"))
            prior = metrics["prior_baseline"]
            records.append(
                {"head": head, "seed": seed, **{m: metrics.get(m) for m in METRICS}, "train_seconds": trained.seconds}
            )
            log.info("ablation %s seed %d: frame-mAP %s", head, seed, metrics.get("frame_map"))
    runs = pd.DataFrame(records)
    runs = pd.concat([runs, pd.DataFrame([{"head": "prior baseline", "seed": -1, **prior}])], ignore_index=True)
    table = summarise(runs)
    out = Path(config.out_dir)
    with atomic_outputs(out / "runs.csv", out / "table.csv", out / "table.md") as (runs_tmp, table_tmp, md_tmp):
        runs.to_csv(runs_tmp, index=False, float_format="%.6f")
        table.to_csv(table_tmp, index=False, float_format="%.6f")
        md_tmp.write_text(markdown(table, len(config.seeds)))
    return table


def summarise(runs: pd.DataFrame) -> pd.DataFrame:
    """Mean and spread (sample std) over seeds of each metric, one row per head, in the order heads ran."""
    grouped = runs.groupby("head", sort=False)
    table = grouped[list(METRICS)].mean().add_suffix("_mean")
    spread = grouped[list(METRICS)].std(ddof=1).add_suffix("_std")
    table = table.join(spread)
    table["seeds"] = grouped.size()
    return table.reset_index()


def markdown(table: pd.DataFrame, n_seeds: int) -> str:
    """A papers-style table in percent: mean ± std over seeds."""
    columns = [
        ("frame_map", "mAP"),
        ("frame_map_pose", "pose"),
        ("frame_map_object", "object"),
        ("frame_map_person", "person interaction"),
    ]
    lines = [
        f"Frame-mAP@0.5 (%), mean ± std over {n_seeds} seed(s)",
        "",
        "| head | " + " | ".join(title for _, title in columns) + " |",
        "|---|" + "---:|" * len(columns),
    ]
    for _, row in table.iterrows():
        cells = [_cell(row[f"{m}_mean"], row[f"{m}_std"]) for m, _ in columns]
        lines.append(f"| {row['head']} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _cell(mean: float | None, std: float | None) -> str:
    if mean is None or (isinstance(mean, float) and math.isnan(mean)):
        return "–"
    if std is None or math.isnan(std):
        return f"{100 * mean:.1f}"
    return f"{100 * mean:.1f} ± {100 * std:.1f}"
