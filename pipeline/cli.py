"""The `pipeline` command: every stage of the two-stage pipeline, configured by params.yaml."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Annotated

import typer

from pipeline import config as cfg

app = typer.Typer(
    help="Spatio-temporal action detection in two stages: extract backbone features once into a Zarr cache, "
    "then train and evaluate heads from the cache in minutes. Every command reads params.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="The params file (as dvc.yaml uses it).")]
log = logging.getLogger("pipeline")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


@app.command()
def synth(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Output folder (default: paths.data).")] = None,
) -> None:
    """Generate the embedded synthetic data set in the AVA layout (videos, CSVs, label map)."""
    from stages.synth import generate

    p = cfg.load_params(params)
    counts = generate(cfg.synth_config(p), out or Path(p["paths"]["data"]))
    log.info("synthetic data set written: %s", counts)


@app.command()
def finetune(params: ParamsOption = Path("params.yaml")) -> None:
    """Fine-tune the backbone end to end with the linear RoI head; writes the checkpoint extract loads."""
    from stages.finetune import finetune as run

    metrics = run(cfg.finetune_config(cfg.load_params(params)))
    log.info("fine-tuned backbone: %s", metrics)


@app.command()
def extract(
    split: Annotated[str, typer.Option(help="Which split to extract (train, val, ...).")] = "train",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Stage one: run the backbone over every keyframe clip and write the feature store of one split.

    Resumable: finished shards are kept, so re-running after an interruption only does what is missing.
    """
    from stages.extract import extract as run

    summary = run(cfg.extract_config(cfg.load_params(params), split))
    log.info(
        "%s: %d clips, %d boxes; %d shards written, %d already done; %d failed videos",
        summary.store,
        summary.clips,
        summary.boxes,
        summary.shards_written,
        summary.shards_skipped,
        len(summary.failed_videos),
    )


@app.command("train-head")
def train_head(params: ParamsOption = Path("params.yaml")) -> None:
    """Stage two: train the head named in params.yaml from the train store (the backbone is never loaded)."""
    from stages.train import train

    result = train(cfg.train_config(cfg.load_params(params)))
    log.info(
        "checkpoint %s: final loss %.4f, %.0f boxes/s", result.checkpoint, result.final_loss, result.boxes_per_second
    )


@app.command()
def evaluate(params: ParamsOption = Path("params.yaml")) -> None:
    """Score the trained head on the evaluation split: AVA frame-mAP@0.5, per class and per category."""
    from stages.evaluate import evaluate as run

    metrics = run(cfg.evaluate_config(cfg.load_params(params)))
    typer.echo(json.dumps(metrics, indent=2))


@app.command()
def verify(
    split: Annotated[str, typer.Option(help="Which split's store to check.")] = "train",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Check a feature store: list shards that are missing or unreadable (exit code 1 if any)."""
    from cache_spec.store import open_store

    store = open_store(cfg.store_path(cfg.load_params(params), split))
    problems = store.verify()
    for problem in problems:
        typer.echo(problem)
    typer.echo(f"{store.path}: {store.num_shards - len(store.missing_shards())}/{store.num_shards} shards complete")
    raise typer.Exit(1 if problems else 0)


if __name__ == "__main__":
    app()
