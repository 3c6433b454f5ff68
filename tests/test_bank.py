"""Banks (cache_spec.bank): bank order, window retrieval against a brute-force filter, bytes and fingerprints."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cache_spec.bank import Bank, BankError, BankMismatchError, create_bank, open_bank
from cache_spec.errors import InputError
from cache_spec.store import StoreMismatchError

FP = {"store": "0123abcd", "head_checkpoint": "feedbeef"}


def _entries(videos: list[str], timestamps: list[float], clip_rows: list[int] | None = None) -> pd.DataFrame:
    n = len(videos)
    return pd.DataFrame(
        {
            "video_id": videos,
            "timestamp": np.asarray(timestamps, np.float64),
            "clip_row": np.arange(n) if clip_rows is None else clip_rows,
            "x1": np.linspace(0, 0.5, n),
            "y1": 0.1,
            "x2": 0.9,
            "y2": 0.8,
            "score": 0.5,
        }
    )


def _features(n: int, seed: int = 0, shape: tuple[int, ...] = (6,)) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, *shape)).astype(np.float16)


def _brute(bank: Bank, video: str, t: float, w: float, exclude: int | None) -> np.ndarray:
    e = bank.entries
    ts = e["timestamp"].to_numpy()
    keep = (e["video_id"].to_numpy() == video) & (ts >= t - w) & (ts <= t + w)
    if exclude is not None:
        keep &= e["clip_row"].to_numpy() != exclude
    return np.flatnonzero(keep)


@pytest.fixture
def bank(tmp_path: Path) -> Bank:
    # clips of video b at 0, 1, 2, 5 (two actors at 2), video a at 1.5 and 3; given out of order
    entries = _entries(
        ["b", "a", "b", "b", "b", "a", "b"],
        [2.0, 3.0, 0.0, 5.0, 1.0, 1.5, 2.0],
        [12, 2, 10, 13, 11, 1, 12],
    )
    return create_bank(tmp_path / "x.bank", "lfb", FP, entries, _features(7), chunk_bytes=24)


def test_entries_are_ordered_by_video_then_time(bank: Bank) -> None:
    assert bank.entries["video_id"].tolist() == ["a", "a", "b", "b", "b", "b", "b"]
    assert bank.entries["timestamp"].tolist() == [1.5, 3.0, 0.0, 1.0, 2.0, 2.0, 5.0]
    assert bank.entries["actor"].tolist() == [0, 0, 0, 0, 0, 1, 0]  # box order within clip 12
    assert bank.entries["entry_index"].tolist() == list(range(7))
    assert set(bank.entries["bank"]) == {"lfb"}
    assert bank.video_rows("b") == (2, 7) and bank.video_rows("zz") == (0, 0)


def test_windows_are_inclusive_and_per_video(bank: Bank) -> None:
    assert bank.window_rows("b", 1.0, 1.0).tolist() == [2, 3, 4, 5]  # t - w and t + w both included
    assert bank.window_rows("b", 3.5, 1.5).tolist() == [4, 5, 6]
    assert bank.window_rows("a", 2.0, 1.0).tolist() == [0, 1]  # never rows of video b at the same times
    assert bank.window_rows("b", 3.5, 0.25).tolist() == []  # a gap
    assert bank.window_rows("zz", 1.0, 100.0).tolist() == []  # an unknown video
    assert bank.window_rows("a", 2.25, 0.75).tolist() == [0, 1]  # fractional: 1.5 and 3.0 on the edges
    assert bank.window_rows("a", 2.25, 0.7).tolist() == []


def test_exclusion_drops_only_the_query_clip(bank: Bank) -> None:
    assert bank.window_rows("b", 2.0, 1.0, exclude_clip_row=12).tolist() == [3]  # both actors of clip 12 go
    assert bank.window_rows("b", 2.0, 1.0, exclude_clip_row=99).tolist() == [3, 4, 5]
    assert bank.window_rows("b", 5.0, 0.0, exclude_clip_row=13).tolist() == []


def test_batch_windows_group_rows_by_query(bank: Bank) -> None:
    rows, query = bank.windows(["b", "zz", "a", "b"], [1.0, 0.0, 3.0, 5.0], 1.0, [11, -1, -1, 13])
    assert rows.tolist() == [2, 4, 5, 1]
    assert query.tolist() == [0, 0, 0, 2]
    rows, query = bank.windows(["b", "a"], [1.0, 1.5], np.array([0.0, 10.0]))  # one half-width per query
    assert rows.tolist() == [3, 0, 1] and query.tolist() == [0, 1, 1]
    rows, query = bank.windows([], [], 1.0)
    assert rows.size == 0 and query.size == 0


def test_empty_bank(tmp_path: Path) -> None:
    empty = create_bank(tmp_path / "e.bank", "lfb", FP, _entries([], []), np.zeros((0, 6)))
    assert empty.num_entries == 0 and empty.window_rows("a", 0.0, 5.0).size == 0
    assert open_bank(tmp_path / "e.bank", FP).features(np.zeros(0, np.int64)).shape == (0, 6)


@pytest.mark.parametrize("budget", [0, 1 << 30])
def test_features_read_back_equal_the_input_rows(tmp_path: Path, budget: int) -> None:
    rng = np.random.default_rng(3)
    n = 101
    entries = _entries(list(rng.choice(["v1", "v2", "v3"], n)), list(rng.integers(0, 30, n) / 4))
    feats = _features(n, shape=(3, 4))
    create_bank(tmp_path / "f.bank", "acfb", FP, entries, feats, "float16", chunk_bytes=24 * 7)
    bank = open_bank(tmp_path / "f.bank", FP, kind="acfb", memory_budget_bytes=budget)
    assert bank.in_memory == bool(budget) and bank.chunk_rows == 7
    source = bank.entries["x1"].to_numpy()  # x1 is unique per input row: it names the input row of each entry
    input_row = np.searchsorted(entries["x1"].to_numpy(np.float32), source.astype(np.float32))
    rows = rng.permutation(np.concatenate([np.arange(n), [0, n - 1, 50]]))
    np.testing.assert_array_equal(bank.features(rows), feats[input_row[rows]])
    np.testing.assert_array_equal(np.concatenate([b for _, b in bank.iter_blocks(10)]), feats[input_row])
    with pytest.raises(IndexError):
        bank.features(np.array([n]))


def test_written_twice_is_bit_identical(tmp_path: Path) -> None:
    entries = _entries(["b", "a", "b", "a"], [3.0, 1.0, 0.5, 1.0])
    feats = _features(4)
    for name in ("one.bank", "two.bank"):
        create_bank(tmp_path / name, "lfb", FP, entries, feats, chunk_bytes=24)
    files = sorted(p.relative_to(tmp_path / "one.bank") for p in (tmp_path / "one.bank").rglob("*") if p.is_file())
    assert len(files) > 3 and files == sorted(
        p.relative_to(tmp_path / "two.bank") for p in (tmp_path / "two.bank").rglob("*") if p.is_file()
    )
    for rel in files:
        assert (tmp_path / "one.bank" / rel).read_bytes() == (tmp_path / "two.bank" / rel).read_bytes(), rel
    shuffled = create_bank(tmp_path / "three.bank", "lfb", FP, entries.iloc[[2, 0, 3, 1]], feats[[2, 0, 3, 1]])
    assert shuffled.entries.drop(columns="entry_index").equals(
        open_bank(tmp_path / "one.bank").entries.drop(columns="entry_index")
    )


def test_another_fingerprint_is_refused_naming_the_field(tmp_path: Path) -> None:
    create_bank(tmp_path / "x.bank", "acfb", FP, _entries(["a"], [1.0]), _features(1))
    with pytest.raises(BankMismatchError, match="head_checkpoint: bank has 'feedbeef', asked for 'other'") as err:
        open_bank(tmp_path / "x.bank", {**FP, "head_checkpoint": "other"})
    assert "store" not in str(err.value).split("(", 1)[1].split(":")[0]
    assert isinstance(err.value, StoreMismatchError) and isinstance(err.value, InputError)
    with pytest.raises(BankMismatchError, match="store: bank has '0123abcd'"):
        open_bank(tmp_path / "x.bank", {"store": "elsewhere"})
    with pytest.raises(BankMismatchError, match="'acfb' bank, asked for a 'lfb'"):
        open_bank(tmp_path / "x.bank", FP, kind="lfb")
    assert open_bank(tmp_path / "x.bank", dict(reversed(FP.items()))).num_entries == 1


def test_bad_input_and_damage_are_errors(tmp_path: Path) -> None:
    with pytest.raises(BankError, match="must name the store"):
        create_bank(tmp_path / "x.bank", "lfb", {}, _entries(["a"], [1.0]), _features(1))
    with pytest.raises(BankError, match="2 entries but features"):
        create_bank(tmp_path / "x.bank", "lfb", FP, _entries(["a", "a"], [1.0, 2.0]), _features(1))
    with pytest.raises(BankError, match="finite"):
        create_bank(tmp_path / "x.bank", "lfb", FP, _entries(["a"], [float("nan")]), _features(1))
    with pytest.raises(BankError, match="lack column"):
        create_bank(tmp_path / "x.bank", "lfb", FP, _entries(["a"], [1.0]).drop(columns="score"), _features(1))
    create_bank(tmp_path / "x.bank", "lfb", FP, _entries(["a"], [1.0]), _features(1))
    with pytest.raises(BankError, match="exists"):
        create_bank(tmp_path / "x.bank", "lfb", FP, _entries(["a"], [1.0]), _features(1))
    create_bank(tmp_path / "x.bank", "lfb", FP, _entries(["a"], [2.0]), _features(1), overwrite=True)
    assert not (tmp_path / "x.bank.partial").exists()
    manifest = tmp_path / "x.bank" / "manifest" / "entries.parquet"
    manifest.write_bytes(manifest.read_bytes() + b"\0")
    with pytest.raises(BankError, match="not the one written"):
        open_bank(tmp_path / "x.bank")
    with pytest.raises(BankError, match="missing or not a bank"):
        open_bank(tmp_path / "nothing.bank")


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    data=st.lists(
        st.tuples(st.sampled_from(["a", "b", "c"]), st.integers(0, 40), st.integers(0, 8)), min_size=0, max_size=40
    ),
    queries=st.lists(
        st.tuples(
            st.sampled_from(["a", "b", "c", "d"]),
            st.integers(-4, 44),
            st.integers(0, 12),
            st.one_of(st.none(), st.integers(0, 8)),
        ),
        min_size=1,
        max_size=8,
    ),
)
def test_windows_equal_a_brute_force_filter(tmp_path_factory: pytest.TempPathFactory, data, queries) -> None:
    # quarter seconds keep t - w and t + w exact, so the brute force and the binary search see the same edges
    videos = [v for v, _, _ in data]
    entries = _entries(videos, [q / 4 for _, q, _ in data], [c for _, _, c in data])
    path = tmp_path_factory.mktemp("h") / "h.bank"
    bank = create_bank(path, "lfb", FP, entries, _features(len(data)), chunk_bytes=36)
    qv = [v for v, _, _, _ in queries]
    qt = np.array([t / 4 for _, t, _, _ in queries])
    qw = np.array([w / 2 for _, _, w, _ in queries])
    qx = [-1 if x is None else x for _, _, _, x in queries]
    rows, query = bank.windows(qv, qt, qw, qx)
    for i, (v, t, w, x) in enumerate(zip(qv, qt, qw, qx, strict=True)):
        expected = _brute(bank, v, float(t), float(w), None if x < 0 else x)
        np.testing.assert_array_equal(rows[query == i], expected)
        np.testing.assert_array_equal(bank.window_rows(v, float(t), float(w), None if x < 0 else x), expected)
    assert np.all(np.diff(query) >= 0)
