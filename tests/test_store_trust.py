"""Trust in a store: damage is found (verify), repaired (verify --repair + extract) to the uninterrupted result,
readers refuse a store whose records are damaged, one writer per store, and a full disk stops a run at once.

Each damage test builds the tiny train store twice (the store under test and an uninterrupted reference) and ends
by comparing every file of the two stores byte for byte: view chunks, array metadata, manifest, records.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import av
import numpy as np
import pandas as pd
import pytest

from cache_spec import manifest as mf
from cache_spec import store as st
from cache_spec.reader import ClipBatchLoader
from cache_spec.store import StoreError, StoreLockedError, StoreMismatchError, StoreWriteError, lock_store, open_store
from cache_spec.views import CONTEXT_MAP, ROI_POOLED
from pipeline.cli import run
from pipeline.config import extract_config
from stages.data.synth.writers import write_video
from stages.data.video import video_info
from stages.extract import ExtractConfig, _worker_task, extract
from tests.conftest import REPO, write_params

CHUNK = "views/context_map/00001/c/0/0/0/0"  # shard 1's chunk of the per-clip view [clips, C, H, W]
CRC = "[0-9a-f]{8}"


# ---- helpers ------------------------------------------------------------------------------------------------------
class Built:
    """The tiny train store under test, an uninterrupted reference of it, and the params file naming them."""

    def __init__(self, config: ExtractConfig, reference: Path, params: Path):
        self.config, self.reference, self.params = config, reference, params

    @property
    def path(self) -> Path:
        return self.config.out

    @property
    def args(self) -> str:
        """How the CLI's messages name this store."""
        return f" --split train --params {self.params}"


@pytest.fixture()
def built(tiny_params: dict, tmp_path: Path) -> Built:
    params = write_params(tiny_params, tmp_path / "params.yaml")
    config = extract_config(tiny_params, "train")
    reference = extract(replace(config, out=tmp_path / "reference" / "train.zarr")).store
    extract(config)
    return Built(config, reference, params)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_bit_equal(path: Path, reference: Path) -> None:
    """Every file of the two stores equal, byte for byte (so every view array and the manifest), and no leftovers."""
    got, want = _files(path), _files(reference)
    assert sorted(got) == sorted(want)
    assert [name for name in want if got[name] != want[name]] == []
    a, b = open_store(path), open_store(reference)
    for view in a.views:
        np.testing.assert_array_equal(a.read_view(view), b.read_view(view))
    assert a.clips.equals(b.clips) and a.boxes.equals(b.boxes)
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no lock, .creating or .old left


def cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    """The ``pipeline`` executable in-process: exit code, stdout, stderr (as a user sees them)."""
    capsys.readouterr()  # what came before (progress bars) is not this command's
    handler = signal.getsignal(signal.SIGINT)
    try:
        run(list(args))
        code = 0
    except SystemExit as exit_:
        code = int(exit_.code or 0)
    finally:
        signal.signal(signal.SIGINT, handler)
    out = capsys.readouterr()
    return code, out.out, out.err


def verify(capsys: pytest.CaptureFixture[str], built: Built, *extra: str) -> tuple[int, list[str]]:
    code, out, err = cli(capsys, "verify", "--split", "train", "--params", str(built.params), *extra)
    assert err == "", err
    return code, out.splitlines()


def _flip_bit(file: Path, offset: int) -> None:
    data = bytearray(file.read_bytes())
    data[offset] ^= 0x04
    file.write_bytes(bytes(data))


def _truncate(file: Path) -> None:
    file.write_bytes(file.read_bytes()[: file.stat().st_size // 2])


def _write_nan(file: Path) -> None:
    data = bytearray(file.read_bytes())
    data[0:2] = np.array([np.nan], dtype="<f2").tobytes()  # the first value of row 0
    file.write_bytes(bytes(data))


def _edit_fingerprint(path: Path) -> None:
    meta = json.loads((path / "zarr.json").read_text())
    meta["attributes"]["fingerprint"]["det_threshold"] = 0.25  # valid JSON, plausible, wrong
    (path / "zarr.json").write_text(json.dumps(meta, indent=2))


def _edit_record(path: Path) -> None:
    file = path / "done" / "00002.json"
    record = json.loads(file.read_text())
    record["failed_clips"] = [record["clips"][0]]  # would make a reader skip a good clip
    file.write_text(json.dumps(record))


def _edit_manifest(path: Path) -> None:
    """A well-formed manifest file with one coordinate changed: it reads fine, only checksums can tell."""
    boxes = pd.read_parquet(path / "manifest" / "boxes.parquet")
    boxes.loc[0, "x1"] += 0.01
    (path / "manifest" / "boxes.parquet").write_bytes(mf.parquet_bytes(boxes, mf.BOX_SCHEMA))


def _keep_only_zarr_json(path: Path) -> None:
    for item in path.iterdir():
        if item.name != "zarr.json":
            shutil.rmtree(item) if item.is_dir() else item.unlink()


# name -> (damage, verify's problem lines as regexes (the verdict follows), plain `extract` heals it unaided)
DAMAGES: dict[str, tuple[Callable[[Path], None], list[str], bool]] = {
    "bit flip in a chunk": (
        lambda p: _flip_bit(p / CHUNK, 1000),
        [rf"shard 1: {CHUNK} has checksum crc32c {CRC}, its record says {CRC} \(its bytes changed after writing\)"],
        False,
    ),
    "truncated chunk": (
        lambda p: _truncate(p / CHUNK),
        [rf"shard 1: {CHUNK} has 69120 bytes, its record says 138240 \(truncated or overwritten\)"],
        True,
    ),
    "deleted chunk": (lambda p: (p / CHUNK).unlink(), [rf"shard 1: {CHUNK} is missing"], True),
    "deleted record": (
        lambda p: (p / "done" / "00002.json").unlink(),
        [r"shard 2: not written \(no completion record\)"],
        True,
    ),
    "truncated record": (
        lambda p: _truncate(p / "done" / "00002.json"),
        [r"shard 2: completion record done/00002\.json is truncated or not JSON \(.+\)"],
        True,
    ),
    "edited record": (
        _edit_record,
        [r"shard 2: completion record done/00002\.json is damaged \(its own checksum does not match\)"],
        True,
    ),
    "corrupt manifest": (
        lambda p: _flip_bit(p / "manifest" / "boxes.parquet", 200),
        [
            rf"manifest/boxes\.parquet has checksum crc32c {CRC}, its completion records hold {CRC} \(it changed after "
            r"the shards were written\)",
            r"manifest breaks the row-space contract \(box_index must be 0\.\.n_boxes-1 in order\)",
        ],
        True,
    ),
    "edited manifest": (
        _edit_manifest,
        [
            rf"manifest/boxes\.parquet has checksum crc32c {CRC}, its completion records hold {CRC} \(it changed after "
            r"the shards were written\)",
            r"manifest has digest [0-9a-f]{16}, the fingerprint says [0-9a-f]{16} \(damaged or replaced\)",
        ],
        True,
    ),
    "deleted manifest": (
        lambda p: (p / "manifest" / "clips.parquet").unlink(),
        [r"manifest/clips\.parquet is missing"],
        True,
    ),
    "edited fingerprint": (
        _edit_fingerprint,
        [
            r"zarr\.json holds other attributes than those all 4 completion record\(s\) were written with \(the "
            r"fingerprint or attributes were edited or damaged\)"
        ],
        True,
    ),
    "deleted zarr.json": (lambda p: (p / "zarr.json").unlink(), [r"zarr\.json is missing"], True),
    "NaN in a chunk": (
        lambda p: _write_nan(p / CHUNK),
        [rf"shard 1: {CHUNK} has checksum crc32c {CRC}, its record says {CRC} \(its bytes changed after writing\)"],
        False,
    ),
    "only zarr.json left": (
        _keep_only_zarr_json,
        [r"manifest/clips\.parquet is missing", r"manifest/boxes\.parquet is missing"],
        True,
    ),
}
_NO_MANIFEST = "shard(s) intact, 0 damaged, of a total unknown without the manifest; manifest missing or damaged"
VERDICTS = {  # what the verdict says after "verdict: NOT OK: <store>: ", before the fix
    "bit flip in a chunk": "1 problem: 1 of 4 shards missing or damaged",
    "truncated chunk": "1 problem: 1 of 4 shards missing or damaged",
    "deleted chunk": "1 problem: 1 of 4 shards missing or damaged",
    "deleted record": "1 problem: 1 of 4 shards missing or damaged",
    "truncated record": "1 problem: 1 of 4 shards missing or damaged",
    "edited record": "1 problem: 1 of 4 shards missing or damaged",
    "corrupt manifest": f"2 problems: 4 {_NO_MANIFEST}",
    "edited manifest": f"2 problems: 4 {_NO_MANIFEST}",
    "deleted manifest": f"1 problem: 4 {_NO_MANIFEST}",
    "edited fingerprint": "1 problem: all 4 shards intact; zarr.json missing or damaged",
    "deleted zarr.json": "1 problem: all 4 shards intact; zarr.json missing or damaged",
    "NaN in a chunk": "1 problem: 1 of 4 shards missing or damaged",
    "only zarr.json left": f"2 problems: 0 {_NO_MANIFEST}",
}
_KEPT = "from params.yaml (shards whose checksums match are kept)"
_MANIFEST = f"rebuild manifest/boxes.parquet, manifest/clips.parquet {_KEPT}"
REPAIRS = {  # what `verify --repair` does (after the verdict), then the command it says to run next and why
    **{
        name: [
            f"repair: dropped the completion records and arrays of shard(s) {s}",
            f"re-extract exactly the dropped shard(s) {s}",
        ]
        for name, s in [("bit flip in a chunk", 1), ("truncated chunk", 1), ("deleted chunk", 1), ("NaN in a chunk", 1)]
        + [("deleted record", 2), ("truncated record", 2), ("edited record", 2)]
    },
    **{
        name: [
            "repair: deleted {path}/manifest/boxes.parquet",
            "repair: deleted {path}/manifest/clips.parquet",
            _MANIFEST,
        ]
        for name in ("corrupt manifest", "edited manifest")
    },
    "deleted manifest": [f"rebuild manifest/clips.parquet {_KEPT}"],
    "edited fingerprint": ["repair: deleted {path}/zarr.json", f"rebuild zarr.json {_KEPT}"],
    "deleted zarr.json": [f"rebuild zarr.json {_KEPT}"],
    "only zarr.json left": [_MANIFEST],
}


# ---- the corruption matrix ----------------------------------------------------------------------------------------
def test_an_intact_store_verifies_ok_and_says_so(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    code, lines = verify(capsys, built, "--values")
    assert (code, lines) == (
        0,
        [f"verdict: OK: {built.path}: 4/4 shards complete, every checksum matches, every value is finite"],
    )
    record = json.loads((built.path / "done" / "00001.json").read_text())
    assert set(record["files"]) == {
        "views/context_map/00001/zarr.json",
        CHUNK,
        "views/roi_pooled/00001/zarr.json",
        "views/roi_pooled/00001/c/0/0",
    }
    assert set(record["manifest"]) == {"clips.parquet", "boxes.parquet"} and record["checksum"] == "crc32c"


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_damage_is_reported_then_repair_and_extract_restore_the_uninterrupted_store(
    damage: str, built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    do_damage, expected, _ = DAMAGES[damage]
    do_damage(built.path)
    code, lines = verify(capsys, built)
    assert code == 1
    assert len(lines) == len(expected) + 1, lines
    for pattern, line in zip(expected, lines, strict=False):
        assert re.fullmatch(pattern, line), (pattern, line)
    fix = f"to fix: run `pipeline verify{built.args} --repair`, then `pipeline extract{built.args}`"
    assert lines[-1] == f"verdict: NOT OK: {built.path}: {VERDICTS[damage]}; {fix}"
    assert "shards complete" not in lines[-1]

    code, lines = verify(capsys, built, "--repair")
    *done, why = REPAIRS[damage]
    assert code == 1 and lines[len(expected) + 1 :] == [
        *(line.format(path=built.path) for line in done),
        f"next: run `pipeline extract{built.args}` to {why}",
    ]
    code, lines = verify(capsys, built)  # after the repair: only what extraction will redo or rebuild
    assert code == 1 and all(
        re.fullmatch(
            r"shard \d: not written \(no completion record\)|zarr\.json is missing|manifest/\w+\.parquet is "
            r"missing|verdict: .*",
            line,
        )
        for line in lines
    ), lines

    extract(built.config)
    assert verify(capsys, built)[0] == 0
    assert_bit_equal(built.path, built.reference)


@pytest.mark.parametrize("damage", [name for name, (_, _, unaided) in DAMAGES.items() if unaided])
def test_extract_alone_heals_the_damage_it_can_see_without_reading_every_chunk(damage: str, built: Built) -> None:
    DAMAGES[damage][0](built.path)
    extract(built.config)
    assert_bit_equal(built.path, built.reference)


def test_values_reports_a_nan_beside_the_checksum_it_broke(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    _write_nan(built.path / CHUNK)
    code, lines = verify(capsys, built, "--values")
    assert code == 1
    assert re.fullmatch(rf"shard 1: {CHUNK} has checksum crc32c {CRC}, its record says {CRC} .*", lines[0])
    assert lines[1] == f"shard 1: {CHUNK} holds 1 NaN/Inf value(s) (view context_map, first in row 0 of the shard)"
    assert lines[2].startswith(f"verdict: NOT OK: {built.path}: 2 problems: 1 of 4 shards missing or damaged;")


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            "truncated record",
            r"completion record .*done/00002\.json is truncated or not JSON \(.*\); run `pipeline "
            r"verify --split train --repair`, then `pipeline extract --split train`",
        ),
        (
            "edited fingerprint",
            r"completion record .*done/00000\.json was written with other attributes than "
            r"zarr\.json holds",
        ),
        (
            "corrupt manifest",
            r"its manifest is damaged \(box_index must be 0\.\.n_boxes-1 in order\); run `pipeline "
            r"extract --split train` to rewrite it from the data set",
        ),
        (
            "edited manifest",
            r"completion record .*done/00000\.json was written with another manifest than manifest/ "
            r"holds \(the manifest was damaged or replaced\)",
        ),
        ("deleted record", r"is incomplete: 1 of 4 shards missing"),
        ("deleted zarr.json", r"zarr\.json is missing; run the `pipeline extract` that wrote the store again"),
        ("deleted manifest", r"manifest/clips\.parquet is missing; run `pipeline extract --split train` to rewrite it"),
    ],
)
def test_a_reader_refuses_a_damaged_store_in_one_line_naming_the_file(damage: str, message: str, built: Built) -> None:
    DAMAGES[damage][0](built.path)
    with pytest.raises(StoreError, match=message) as caught:
        ClipBatchLoader(open_store(built.path), [ROI_POOLED])
    assert "\n" not in str(caught.value)


def test_a_truncated_record_is_one_line_from_every_command(built: Built, capsys: pytest.CaptureFixture[str]) -> None:
    _truncate(built.path / "done" / "00002.json")
    code, out, err = cli(capsys, "info", "--split", "train", "--params", str(built.params))
    assert code == 2 and out == ""
    record = built.path / "done" / "00002.json"
    assert re.fullmatch(
        rf"error: store {built.path}: completion record {record} is truncated or not JSON \(.+\); run `pipeline "
        r"verify --split train --repair`, then `pipeline extract --split train` \(-v shows the traceback\)\n",
        err,
    ), err


def test_a_shard_whose_clips_all_failed_has_its_chunks_and_stays_readable(
    tiny_params: dict, tiny_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """allow_missing with a video cut short: its shards are all zeros, and still written, recorded and verified."""
    data = tmp_path / "data"
    shutil.copytree(tiny_data, data)
    victim = sorted((data / "videos").glob("synth_train_*.mp4"))[1]
    _, fps, _, _ = video_info(victim)
    with av.open(str(victim)) as container:  # its first half second: every keyframe falls outside
        frames = zip(range(round(fps / 2)), container.decode(video=0), strict=False)
        head = [f.to_ndarray(format="rgb24") for _, f in frames]
    write_video(np.stack(head), victim, round(fps))
    tiny_params["paths"]["data"] = str(data)
    tiny_params["extract"].update(allow_missing=True, clips_per_shard=2)
    params = write_params(tiny_params, tmp_path / "params.yaml")
    config = extract_config(tiny_params, "train")
    reference = extract(replace(config, out=tmp_path / "reference" / "train.zarr")).store
    extract(config)
    store = open_store(config.out)
    failed = set(store.failed_clips().tolist())
    all_failed = [r.shard for r in store.shards if set(range(r.clip_start, r.clip_stop)) <= failed]
    assert all_failed, "the test needs a shard whose clips all failed"
    for shard in all_failed:
        for view in store.views:
            assert not store.read_shard(view, shard).any()  # zeros, read from a chunk file that exists
        chunk = config.out / "views" / CONTEXT_MAP / f"{shard:05d}" / "c" / "0" / "0" / "0" / "0"
        assert chunk.stat().st_size == 2 * np.prod(store.row_shape(CONTEXT_MAP)) * 2
    built = Built(config, reference, params)
    code, lines = verify(capsys, built)
    assert code == 1
    assert lines == [
        f"{len(failed)} clips of 1 videos failed and hold zeros (accepted with --allow-missing): {victim.stem}",
        f"verdict: NOT OK: {config.out}: 1 problem: all {store.num_shards} shards intact; {len(failed)} clips "
        "hold zeros (their videos failed; accepted with --allow-missing)",
    ]
    code, lines = verify(capsys, built, "--repair")
    assert lines[-1] == "repair: nothing to repair"
    extract(config)  # a rerun finds nothing to do
    assert_bit_equal(config.out, reference)
    chunk.unlink()  # what zarr did to an all-zero chunk: now a rerun sees it (by the record) and redoes the shard
    extract(config)
    loader = ClipBatchLoader(open_store(config.out), [ROI_POOLED], shuffle=False)
    assert not set(np.concatenate([b.clip_index for b in loader]).tolist()) & failed
    assert_bit_equal(config.out, reference)


def test_a_store_of_another_spec_version_says_delete_it_and_following_that_works(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    meta = json.loads((built.path / "zarr.json").read_text())
    meta["attributes"]["spec_version"] = "0.9"
    (built.path / "zarr.json").write_text(json.dumps(meta))
    for file in (built.path / "done").glob("*.json"):  # an older writer's records: no checksums
        record = json.loads(file.read_text())
        file.write_text(json.dumps({k: record[k] for k in st.RECORD_FIELDS}))
    message = (
        f"store {built.path} was written with cache spec version '0.9'; this code reads '1.0' and can neither read nor "
        f"resume it. Delete {built.path}, then run `pipeline extract --split train` to write it again"
    )
    with pytest.raises(StoreMismatchError) as caught:
        extract(built.config)
    assert str(caught.value) == message
    code, lines = verify(capsys, built)
    assert code == 1 and lines == [
        message,
        f"verdict: NOT OK: {built.path}: a store of cache spec version '0.9', which this code cannot read",
    ]
    shutil.rmtree(built.path)  # what the message says
    extract(built.config)
    assert_bit_equal(built.path, built.reference)


def test_a_lost_zarr_json_under_another_configuration_is_refused_naming_what_to_delete(built: Built) -> None:
    (built.path / "zarr.json").unlink()
    before = _files(built.path)
    with pytest.raises(StoreMismatchError) as caught:
        extract(replace(built.config, det_threshold=0.7))
    assert str(caught.value) == (
        f"store {built.path}: its zarr.json is missing, and its 4 finished shard(s) were written with another "
        f"configuration than the one asked for; restore the configuration that wrote it, or delete {built.path} to "
        "extract it afresh"
    )
    assert _files(built.path) == before


# ---- one writer per store -----------------------------------------------------------------------------------------
def test_a_second_extraction_is_refused_naming_the_holder_and_the_store_is_untouched(
    built: Built, capsys: pytest.CaptureFixture[str]
) -> None:
    (built.path / "done" / "00003.json").unlink()  # work left, which the refused run must not do
    before = _files(built.path)
    with lock_store(built.path) as lock:
        holder = f"pid {os.getpid()} on host {socket.gethostname()}"
        with pytest.raises(StoreLockedError, match=re.escape(holder)):
            extract(built.config)
        code, out, err = cli(capsys, "extract", "--split", "train", "--params", str(built.params))
        assert code == 2 and out == ""
        assert re.fullmatch(
            rf"error: store {built.path} is being written by another process \({re.escape(holder)}, since "
            rf"[0-9: -]+\); wait for it to finish, or stop it, then rerun \(its lock is {lock}\) \(-v shows the "
            r"traceback\)\n",
            err,
        ), err
        code, out, err = cli(capsys, "verify", "--split", "train", "--params", str(built.params), "--repair")
        assert code == 2 and "is being written by another process" in err  # a repair waits its turn too
    assert _files(built.path) == before
    extract(built.config)
    assert_bit_equal(built.path, built.reference)


def test_another_live_process_holding_the_lock_is_named(built: Built) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"from cache_spec.store import lock_store\nwith lock_store({str(built.path)!r}):\n"
            "    print('locked', flush=True)\n    input()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPO,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        with pytest.raises(StoreLockedError, match=rf"\(pid {holder.pid} on host {re.escape(socket.gethostname())}, "):
            extract(built.config)
    finally:
        holder.communicate("\n", timeout=30)
    extract(built.config)


def test_a_stale_lock_of_a_killed_process_is_taken_over(built: Built, caplog: pytest.LogCaptureFixture) -> None:
    script = textwrap.dedent(
        f"""
        import os, signal
        from cache_spec.store import lock_store
        with lock_store({str(built.path)!r}):
            os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    dead = subprocess.Popen([sys.executable, "-c", script], cwd=REPO)
    assert dead.wait(timeout=60) == -signal.SIGKILL
    lock = st.lock_path(built.path)
    assert json.loads(lock.read_text())["pid"] == dead.pid  # the kill left its lock file behind
    (built.path / "done" / "00001.json").unlink()
    with caplog.at_level(logging.WARNING, logger="cache_spec.store"):
        extract(built.config)
    host = re.escape(socket.gethostname())
    taken = (
        rf"store {built.path}: taking over the lock left by pid {dead.pid} on host {host}, since [0-9: -]+, "
        "which is no longer running"
    )
    assert any(re.fullmatch(taken, r.getMessage()) for r in caplog.records), [r.getMessage() for r in caplog.records]
    assert_bit_equal(built.path, built.reference)


def test_a_lock_file_naming_a_live_process_whose_lock_is_free_is_not_taken_over(built: Built) -> None:
    """Only the kernel's lock can free a live holder's claim: a free lock with a live pid means locks do not work."""
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        lock = st.lock_path(built.path)
        lock.write_text(json.dumps({"pid": sleeper.pid, "host": socket.gethostname(), "since": "2026-01-01 00:00:00"}))
        with pytest.raises(StoreLockedError) as caught:
            extract(built.config)
        assert str(caught.value) == (
            f"store {built.path}: its lock file {lock} names pid {sleeper.pid} on host {socket.gethostname()}, since "
            "2026-01-01 00:00:00, which is still running, yet the lock is free (does this file system support "
            f"locks?); if that process is not writing the store, delete {lock} and rerun"
        )
        assert lock.exists()
        lock.unlink()  # what the message says
        extract(built.config)
    finally:
        sleeper.kill()
        sleeper.wait()


def test_dask_workers_write_under_the_coordinators_lock(built: Built) -> None:
    """A worker's task never takes the store lock: it runs while the coordinator (here: this test) holds it."""
    (built.path / "done" / "00002.json").unlink()
    with lock_store(built.path):
        failures = _worker_task(built.config, [2])
    assert failures.shards_left == 0
    assert_bit_equal(built.path, built.reference)


# ---- disk full ----------------------------------------------------------------------------------------------------
class _Counting:
    """A tqdm stand-in that counts the clips done."""

    def __init__(self) -> None:
        self.n = 0

    def __call__(self, *args: object, **kwargs: object) -> _Counting:
        return self

    def __enter__(self) -> _Counting:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, k: int) -> None:
        self.n += k


def test_a_full_disk_stops_the_run_at_once_naming_the_path_and_a_rerun_resumes(
    tiny_params: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    params = write_params(tiny_params, tmp_path / "params.yaml")
    config = extract_config(tiny_params, "train")
    reference = extract(replace(config, out=tmp_path / "reference" / "train.zarr")).store
    real_write, calls, progress, at_failure = st._write_chunk, [], _Counting(), []

    def disk_full_on_third_chunk(path: Path, data: np.ndarray) -> dict:
        calls.append(path)
        if len(calls) == 3:  # shard 1's first chunk (each shard writes two)
            at_failure.append(progress.n)
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_write(path, data)

    monkeypatch.setattr(st, "_write_chunk", disk_full_on_third_chunk)
    with pytest.raises(StoreWriteError) as caught:
        extract(config, progress=progress)
    chunk = config.out / CHUNK
    assert re.fullmatch(
        rf"cannot write shard 1 of store {config.out}: No space left on device \(ENOSPC\) while writing {chunk} "
        r"\([0-9.]+ [KMGT]?i?B free on that disk\); nothing of that shard is kept\. Free some space \(or fix the "
        r"disk\) and rerun the same command: finished shards are kept",
        str(caught.value),
    ), str(caught.value)
    assert len(calls) == 3  # nothing written after the failed write
    assert progress.n - at_failure[0] <= config.batch_clips  # and no batch computed after the one in flight
    assert sorted(p.name for p in (config.out / "done").iterdir()) == ["00000.json"]  # no record for shard 1
    assert sorted(p.name for p in (config.out / "views" / CONTEXT_MAP).iterdir()) == ["00000", "zarr.json"]
    assert not st.lock_path(config.out).exists()
    assert open_store(config.out).verify() == [f"shard {s}: not written (no completion record)" for s in (1, 2, 3)]

    calls.clear()
    code, out, err = cli(capsys, "extract", "--split", "train", "--params", str(params))  # fails on its 3rd chunk
    message = err.split("\n")[-2]  # the last line, after the progress bar
    assert code == 2 and message.startswith(f"error: cannot write shard 2 of store {config.out}: No space left on")
    assert message.endswith("finished shards are kept (-v shows the traceback)") and err.endswith(message + "\n")

    monkeypatch.setattr(st, "_write_chunk", real_write)  # space freed
    extract(config)
    assert_bit_equal(config.out, reference)
