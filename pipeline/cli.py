"""The `pipeline` command: every stage of the two-stage pipeline, configured by params.yaml."""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Annotated, Any

import typer

app = typer.Typer(
    help="Spatio-temporal action detection in two stages: extract backbone features once into a Zarr cache, "
    "then train and evaluate heads from the cache in minutes. Every command reads params.yaml.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

ParamsOption = Annotated[Path, typer.Option("--params", "-p", help="The params file (as dvc.yaml uses it).")]
DatasetOption = Annotated[
    str, typer.Option(help="Data set layout: ava (keyframes, AVA CSVs) or dense (per-frame tubes, dense/gt.pkl).")
]
AllowMissingOption = Annotated[
    bool,
    typer.Option(
        "--allow-missing",
        help="Go on when videos are missing or clips fail (listed, summarised); default: params allow_missing.",
    ),
]
log = logging.getLogger("pipeline")


@app.callback()
def main(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Debug logging.")] = False) -> None:
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    if not verbose:
        logging.getLogger("distributed").setLevel(logging.WARNING)  # dask's cluster chatter


@app.command()
def synth(
    params: ParamsOption = Path("params.yaml"),
    out: Annotated[Path | None, typer.Option(help="Output folder (default: paths.synth).")] = None,
) -> None:
    """Generate the embedded synthetic data set: AVA layout (videos, CSVs, label map) plus per-frame tubes."""
    from pipeline import config as cfg
    from stages.data.synth import generate

    p = cfg.load_params(params)
    counts = generate(cfg.synth_config(p), out or cfg.paths(p).synth)
    log.info("synthetic data set written: %s", counts)


@app.command()
def finetune(allow_missing: AllowMissingOption = False, params: ParamsOption = Path("params.yaml")) -> None:
    """Fine-tune the backbone end to end with the linear RoI head; writes the checkpoint extract loads."""
    from pipeline import config as cfg
    from stages.finetune import finetune as run

    config = cfg.finetune_config(cfg.load_params(params))
    metrics = run(replace(config, allow_missing=True) if allow_missing else config)
    log.info("fine-tuned backbone: %s", metrics)


@contextmanager
def _dask_client(workers: int, scheduler: str | None) -> Iterator[Any]:
    """A dask.distributed client for --scheduler or --workers, else None (work stays in this process)."""
    if not workers and not scheduler:
        yield None
        return
    from distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True) as cluster, Client(cluster) as client:
        log.info("dask dashboard: %s", client.dashboard_link)
        yield client


def _names(value: str | None) -> list[str] | None:
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@app.command()
def detect(
    split: Annotated[str, typer.Option(help="Which split's keyframes to detect people on.")] = "val",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Person boxes on every annotated keyframe with a Faster R-CNN checkpoint; writes an AVA predicted-box CSV.

    Resumable per video; corrupt videos are listed in a failures CSV beside the output.
    """
    from pipeline import config as cfg
    from stages.detect import detect as run

    summary = run(cfg.detect_config(cfg.load_params(params), split))
    log.info("detections: %s", summary.to_dict())


@app.command("evaluate-detections")
def evaluate_detections(
    split: Annotated[str, typer.Option(help="Which split to score.")] = "val",
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Person AP@0.5 and AR@100 of the boxes extract uses (extract.predicted_boxes) against the ground truth."""
    from pipeline import config as cfg
    from stages.data.ava import read_annotations, read_excluded_timestamps, read_predicted_boxes
    from stages.metrics.detection import evaluate_detections as score

    config = cfg.extract_config(cfg.load_params(params), split)
    layout = config.data
    boxes_path = config.predicted_boxes or layout.predicted_boxes_path(split)
    excluded_path = layout.excluded_timestamps_path(split)
    metrics = score(
        read_predicted_boxes(boxes_path),
        read_annotations(layout.annotations_path(split)),
        excluded=read_excluded_timestamps(excluded_path) if excluded_path.exists() else None,
    )
    typer.echo(json.dumps({"boxes": str(boxes_path), **metrics}, indent=2, default=float))


@app.command()
def extract(
    split: Annotated[str, typer.Option(help="Which split to extract (train, val, ...).")] = "train",
    heads: Annotated[
        str | None, typer.Option(help="Comma-separated heads whose views to store (default: params extract.heads).")
    ] = None,
    scale: Annotated[
        float | None, typer.Option(help="Test-time variant: input scale (own store, same row order).")
    ] = None,
    flip: Annotated[
        bool | None, typer.Option("--flip/--no-flip", help="Test-time variant: mirrored frames and boxes.")
    ] = None,
    dataset: DatasetOption = "ava",
    workers: Annotated[
        int, typer.Option(help="Spread shards over a local dask cluster of this many worker processes (0: no).")
    ] = 0,
    scheduler: Annotated[
        str | None, typer.Option(help="Address of a running dask.distributed scheduler to spread shards over.")
    ] = None,
    allow_missing: AllowMissingOption = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Stage one: run the backbone over every keyframe clip and write the feature store of one split.

    Resumable: finished shards are kept, so re-running after an interruption only does what is missing.
    Variants (--scale, --flip) go to their own store with the same manifest rows, so predictions average
    row by row.
    """
    from pipeline import config as cfg
    from stages.extract import extract as run

    config = cfg.extract_config(cfg.load_params(params), split, _names(heads), scale, flip, dataset)
    config = replace(config, allow_missing=True) if allow_missing else config
    with _dask_client(workers, scheduler) as client:
        summary = run(config, cluster=client)
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
def train_head(
    dataset: DatasetOption = "ava",
    resume: Annotated[
        bool,
        typer.Option(
            "--resume",
            help="Continue an interrupted run from resume.pt beside head.pt (saved after every epoch); the result "
            "equals an uninterrupted run. Refused if params or the store changed. Same as params train.resume: true.",
        ),
    ] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Stage two: train the head named in params.yaml from the train store (the backbone is never loaded).

    Checkpoints every epoch; a killed run continues with --resume. head.pt, metrics.json and curve.tsv are written
    atomically and carry the run's id.
    """
    from pipeline import config as cfg
    from stages.train import train

    config = cfg.train_config(cfg.load_params(params), dataset)
    result = train(replace(config, resume=True) if resume else config)
    log.info(
        "checkpoint %s (run %s): final loss %.4f, %.0f boxes/s",
        result.checkpoint,
        result.run_id,
        result.final_loss,
        result.boxes_per_second,
    )


@app.command()
def evaluate(dataset: DatasetOption = "ava", params: ParamsOption = Path("params.yaml")) -> None:
    """Score the trained head on the evaluation split.

    AVA: frame-mAP@0.5 overall, per category and per class. Dense: frame-mAP and video-mAP over MOC-linked tubes
    with the data set's protocol (params dense.protocol).
    """
    from pipeline import config as cfg
    from stages.evaluate import evaluate as run

    metrics = run(cfg.evaluate_config(cfg.load_params(params), dataset))
    typer.echo(json.dumps(metrics, indent=2))


@app.command("heads")
def list_heads() -> None:
    """List every head with the cache views it reads and its main options."""
    import inspect

    from heads import HEADS

    for name, cls in HEADS.items():
        signature = inspect.signature(cls.__init__)
        options = [
            f"{p.name}={p.default!r}" for p in signature.parameters.values() if p.default is not inspect.Parameter.empty
        ]
        typer.echo(f"{name:<10} views: {', '.join(cls.views)}")
        typer.echo(f"{'':<10} options: {', '.join(options) or '-'}")
        doc = (cls.__doc__ or "").strip().splitlines()
        if doc:
            typer.echo(f"{'':<10} {doc[0]}")


@app.command()
def ablate(
    heads: Annotated[str | None, typer.Option(help="Comma-separated heads (default: params ablate.heads).")] = None,
    seeds: Annotated[str | None, typer.Option(help="Comma-separated seeds, e.g. 0,1,2 (default: params).")] = None,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Train and evaluate several heads x seeds from one cache; write a papers-style table (Markdown + CSV)."""
    from pipeline import config as cfg
    from stages.ablate import ablate as run

    config = cfg.ablate_config(cfg.load_params(params), _names(heads), [int(s) for s in _names(seeds) or []])
    run(config)
    typer.echo((config.out_dir / "table.md").read_text())


@app.command()
def verify(
    split: Annotated[str, typer.Option(help="Which split's store to check.")] = "train",
    dataset: DatasetOption = "ava",
    scale: Annotated[float, typer.Option(help="The test-time variant store of this input scale.")] = 1.0,
    flip: Annotated[bool, typer.Option("--flip", help="The mirrored test-time variant store.")] = False,
    values: Annotated[
        bool, typer.Option("--values", help="Also read every value and report NaN/Inf (another full read).")
    ] = False,
    repair: Annotated[
        bool,
        typer.Option(
            "--repair",
            help="Drop the completion records and arrays of the bad shards, and delete a damaged zarr.json or "
            "manifest file, so that `pipeline extract` (same --split) then re-extracts exactly those shards and "
            "rebuilds the files from params.yaml. Refused while an extraction writes the store.",
        ),
    ] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Check a feature store: every completion record, checksum and array shape, and the manifest against the
    arrays; lists each problem (and accepted failed clips), then one verdict; exit code 1 on any problem.

    Reads every file of the store once. To fix what it finds: `pipeline verify --split S --repair`, then
    `pipeline extract --split S`, which re-extracts exactly the dropped shards (the result equals an uninterrupted
    run). Accepted failed clips (--allow-missing) are reported but not repaired: fix the videos and re-extract.
    """
    from cache_spec.store import repair_store, verify_store
    from pipeline import config as cfg

    path = cfg.store_path(cfg.load_params(params), split, scale, flip, dataset)
    args = (
        f" --split {split}"
        + ("" if dataset == "ava" else f" --dataset {dataset}")
        + ("" if scale == 1.0 else f" --scale {scale:g}")
        + (" --flip" if flip else "")
        + ("" if params == Path("params.yaml") else f" --params {params}")
    )
    if not path.is_dir():
        typer.echo(f"error: no feature store at {path}; run `pipeline extract{args}` first", err=True)
        raise typer.Exit(2)
    report = verify_store(path, values=values)
    for line in report.lines():
        typer.echo(line)
    typer.echo(report.verdict(args))
    if repair and (report.bad_shards or report.damaged_files):
        for action in repair_store(report):
            typer.echo(f"repair: {action}")
        shards = report.bad_shards
        rebuilt = [f for f in report.damaged_files if f == "zarr.json" or f.startswith("manifest/")]
        todo = []
        if shards:
            listed = ", ".join(map(str, shards[:10])) + (", ..." if len(shards) > 10 else "")
            todo.append(f"re-extract exactly the dropped shard(s) {listed}")
        if rebuilt:
            todo.append(f"rebuild {', '.join(rebuilt)} from params.yaml (shards whose checksums match are kept)")
        typer.echo(f"next: run `pipeline extract{args}` to " + " and ".join(todo or ["finish the store"]))
    elif repair:
        typer.echo("repair: nothing to repair")
    raise typer.Exit(0 if report.ok else 1)


@app.command("import-features")
def import_features(
    features: Annotated[
        Path, typer.Option(help="HDF5 file of per-box (and per-clip) features; layout in stages/data/hdf5.py.")
    ],
    split: Annotated[str, typer.Option(help="Which split's store to build from it (train, val, ...).")] = "train",
    dataset: DatasetOption = "ava",
    extractor: Annotated[
        str | None,
        typer.Option(
            help="Name of the model and weights that made the features, where the file has no "
            "`extractor` attribute; the train and val files of one extractor must carry the same name."
        ),
    ] = None,
    box_tolerance: Annotated[
        float | None, typer.Option(help="A file box matches a manifest box within this, per normalised coordinate.")
    ] = None,
    allow_extra: Annotated[
        bool, typer.Option("--allow-extra", help="Skip rows of videos the split does not have (a file of splits).")
    ] = False,
    allow_missing: AllowMissingOption = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Build a split's store from features another extractor wrote (PySlowFast, mmaction2), so heads train on them.

    The rows are the split's manifest, exactly as extract builds it; every manifest box must find its row of the
    same video and timestamp with a matching box (else an error naming the first missing one); file rows no box
    takes are reported. train-head and evaluate then read the store unchanged.
    """
    from pipeline import config as cfg
    from stages.import_features import import_features as run

    config = cfg.import_config(
        cfg.load_params(params), split, features, dataset, extractor, box_tolerance, allow_extra, allow_missing
    )
    summary = run(config)
    log.info(
        "%s: %d clips, %d boxes, views %s from %s (sha256 %s); %d shards written, %d already done; %d file rows unused",
        summary.store,
        summary.clips,
        summary.boxes,
        ", ".join(summary.views),
        features,
        summary.sha256[:16],
        summary.shards_written,
        summary.shards_skipped,
        summary.extra_rows,
    )


@app.command()
def export(
    out: Annotated[Path, typer.Option(help="The HDF5 file to write (the layout import-features reads).")],
    split: Annotated[str, typer.Option(help="Which split's store to export.")] = "train",
    views: Annotated[
        str | None, typer.Option(help="Comma-separated views, e.g. roi_pooled,context_map (default: every one).")
    ] = None,
    dataset: DatasetOption = "ava",
    scale: Annotated[float, typer.Option(help="The test-time variant store of this input scale.")] = 1.0,
    flip: Annotated[bool, typer.Option("--flip", help="The mirrored test-time variant store.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Write chosen views of a store to HDF5 (video_id, timestamp, box, features/<view>), for tools that read it."""
    from pipeline import config as cfg
    from stages.export import export as run

    summary = run(cfg.export_config(cfg.load_params(params), split, out, _names(views) or (), dataset, scale, flip))
    log.info("%s: %s of %d boxes and %d clips", summary.out, ", ".join(summary.views), summary.boxes, summary.clips)


@app.command("dense-eval")
def dense_eval(
    gt: Annotated[
        Path,
        typer.Option(
            "--gt",
            "-g",
            help="Ground truth: an ACT/MOC gt.pkl (MultiSports' GT, test-only files too; ACT's UCF101v2-GT.pkl, "
            "JHMDB-GT.pkl) or the corrected UCF101-24 pyannot.pkl (with --classes).",
        ),
    ],
    detections: Annotated[
        list[Path],
        typer.Option(
            "--detections",
            "-d",
            help="Repeatable: MultiSports/MOC frame_detections.pkl, MultiSports video_detections.pkl, a MOC "
            "inference folder (tubelets, <video>_tubes.pkl), or the project's tables (per-frame detections, "
            "tubes.parquet) as CSV/Parquet.",
        ),
    ],
    protocol: Annotated[
        str,
        typer.Option(help="multisports: evaluate_multisports.py's rules; act: ACT/MOC's ACT.py (UCF101-24, JHMDB)."),
    ],
    split: Annotated[int, typer.Option(min=1, help="Test split, 1-based as MOC's --split (JHMDB has 3).")] = 1,
    link: Annotated[
        bool, typer.Option("--link", help="No tube file: link the per-frame detections (MOC's linker) for video-mAP.")
    ] = False,
    classes: Annotated[
        Path | None, typer.Option(help="Class names of a pyannot.pkl ground truth (text lines, or a pickle).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
) -> None:
    """Dense frame-mAP and video-mAP of detection files: a drop-in for MultiSports' evaluate_multisports.py and
    MOC's ACT.py (frameAP, videoAP, videoAP_all), on their files or the project's.

    Frame detections give frame-mAP, tubes video-mAP (act: after ACT's 3D NMS); AP per class, then each mAP.
    """
    if protocol not in ("multisports", "act"):
        raise typer.BadParameter(f"{protocol!r} is not one of 'multisports', 'act'", param_hint="'--protocol'")
    from stages.metrics.dense import evaluate_dense_files, format_dense_report
    from stages.metrics.tubes import LinkParams

    report = evaluate_dense_files(gt, detections, protocol, split - 1, LinkParams() if link else None, classes)
    typer.echo(json.dumps(report, indent=2) if as_json else format_dense_report(report))


_VERBOSE = ("-v", "--verbose")


class Interrupted(BaseException):
    """Ctrl-C, raised past click (which would turn KeyboardInterrupt into exit code 1) to :func:`run`."""


def _on_sigint(signum: int, frame: object) -> None:
    raise Interrupted


def run(argv: list[str] | None = None) -> None:
    """The ``pipeline`` executable: the app, with the project's input errors as one line and exit code 2.

    ``-v`` is accepted anywhere on the line (typer only takes it before the command) and shows tracebacks.
    Ctrl-C exits with 130, the shell's code for SIGINT; stages keep what they finished, so a rerun resumes.
    """
    import signal

    from cache_spec.errors import InputError

    args = list(sys.argv[1:] if argv is None else argv)
    verbose = any(a in _VERBOSE for a in args)
    args = (["--verbose"] if verbose else []) + [a for a in args if a not in _VERBOSE]
    signal.signal(signal.SIGINT, _on_sigint)
    try:
        app(args=args, prog_name="pipeline")
    except Interrupted:
        typer.echo("interrupted: finished work is kept; run the same command again to resume", err=True)
        sys.exit(130)
    except (InputError, FileNotFoundError) as error:
        if verbose:
            raise
        text = " ".join(str(error).split()) or type(error).__name__
        prefix = "" if isinstance(error, InputError) else f"{type(error).__name__}: "
        typer.echo(f"error: {prefix}{text} (-v shows the traceback)", err=True)
        sys.exit(2)


@app.command()
def info(
    split: Annotated[str, typer.Option(help="Which split's store to describe.")],
    dataset: DatasetOption = "ava",
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
    params: ParamsOption = Path("params.yaml"),
) -> None:
    """Describe a feature store: views, rows, size on disk, shards done, failed videos and its fingerprint."""
    from cache_spec.store import format_info, open_store
    from pipeline import config as cfg

    path = cfg.store_path(cfg.load_params(params), split, dataset=dataset)
    if not (path / "zarr.json").exists():
        command = f"pipeline extract --split {split}" + ("" if dataset == "ava" else f" --dataset {dataset}")
        typer.echo(f"error: no feature store at {path}; run `{command}` first", err=True)
        raise typer.Exit(2)
    summary = open_store(path).info()
    typer.echo(json.dumps(summary, indent=2) if as_json else format_info(summary))


@app.command("ava-eval")
def ava_eval(
    labelmap: Annotated[
        Path, typer.Option("--labelmap", "--label-map", "-l", help="Label map (.pbtxt): the classes scored.")
    ],
    groundtruth: Annotated[Path, typer.Option("--groundtruth", "-g", help="Ground-truth CSV.")],
    detections: Annotated[Path, typer.Option("--detections", "-d", help="Detections CSV (..., action_id, score).")],
    exclusions: Annotated[
        Path | None, typer.Option("--exclusions", "-e", help="Excluded keyframes CSV (video_id,timestamp).")
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object, for machines.")] = False,
) -> None:
    """AVA frame-mAP@0.5 of a detection CSV: a drop-in for ActivityNet's get_ava_performance.py.

    Same inputs, same number: ids outside the label map are skipped (one warning), ground-truth rows of only
    video_id,timestamp mark keyframes without actors, detections on keyframes absent from the ground truth are
    ignored, at most 50 detections per keyframe count. Prints AP per class, mAP per category and the mAP.
    """
    from stages.metrics.ava import evaluate_files, format_report

    report = evaluate_files(labelmap, groundtruth, detections, exclusions)
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


if __name__ == "__main__":
    run()
