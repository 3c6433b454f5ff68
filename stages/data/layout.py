"""Where a data set's files are and how its timestamps map to video frames (params ``dataset:``).

AVA's own release is used as distributed: ``ava_train_v2.2.csv``, ``ava_action_list_v2.2_for_activitynet_2019.pbtxt``,
``<video_id>.mkv`` / ``.webm`` / ``.mp4`` as YouTube served them, or PySlowFast's frame folders
(``frames/<id>/<id>_%06d.jpg`` at 30 fps), and keyframe timestamps in seconds of the *original movie* (902..1798)
while the 15-minute cuts start at 900 s: ``time_offset_s: 900``. AVA-Kinetics clips are cut from longer videos at
their own offsets: ``time_offsets: offsets.csv`` (``video_id,offset_s`` rows) overrides the global offset per video.

Every path comes from a template relative to the data root; a video id (which comes from a user's CSV) that would
resolve outside its folder is refused.
"""

from __future__ import annotations

import csv
import functools
import hashlib
import os
from dataclasses import dataclass
from pathlib import Path

from stages.data.video import VideoDecodeError, VideoSource

VIDEO_EXTENSIONS = (".mp4", ".mkv", ".webm", ".avi", ".mov", ".m4v")


class LayoutError(VideoDecodeError):
    """A path from the data set's files escapes its folder, or an offsets file is malformed."""


def plain_video_id(video_id: str, subfolders: bool = False) -> str:
    """``video_id`` if it is a plain file name; ids come from users' files and become file names, never paths.

    ``subfolders``: ``class/video`` ids (UCF101-24, JHMDB, MultiSports keep videos in class folders) are allowed,
    each part a plain name, so the id still cannot leave its folder.
    """
    parts = video_id.split("/") if subfolders else [video_id]
    if (
        not video_id
        or any(c in video_id for c in ("\\", "\0"))
        or (not subfolders and "/" in video_id)
        or Path(video_id).is_absolute()
        or any(part in ("", ".", "..") for part in parts)
    ):
        separators = "" if subfolders else "path separators, "
        raise LayoutError(f"video id {video_id!r} is not a plain name (no {separators}'..', backslashes or NUL)")
    return video_id


@dataclass(frozen=True)
class DataLayout:
    """A data set's files: ``{split}`` in a template is the split name, ``{video_id}`` the video id."""

    root: Path
    label_map: str = "label_map.pbtxt"
    annotations: str = "annotations/{split}.csv"
    predicted_boxes: str = "predicted_boxes_{split}.csv"
    excluded_timestamps: str = "excluded_timestamps_{split}.csv"
    videos: str = "videos"  # folder of <video_id><extension>, first match in ``extensions``
    extensions: tuple[str, ...] = VIDEO_EXTENSIONS
    frames: str | None = None  # frame folders, used where one exists: "frames/{video_id}/{video_id}_%06d.jpg"
    frame_rate: float = 30.0  # of the frame folders (PySlowFast's AVA frames: 30)
    time_offset_s: float = 0.0  # the timestamp of every video's first frame (AVA: 900)
    time_offsets: str | None = None  # CSV of video_id,offset_s overriding time_offset_s (AVA-Kinetics)
    follow_symlinks: bool = False  # let a link inside the data set point outside it (else refused)

    def path(self, template: str, split: str) -> Path:
        """A data-set file for ``split``, inside the root."""
        return self._inside(self.root, self.root / template.format(split=split), template)

    def label_map_path(self) -> Path:
        return self.path(self.label_map, "")

    def annotations_path(self, split: str) -> Path:
        return self.path(self.annotations, split)

    def predicted_boxes_path(self, split: str) -> Path:
        return self.path(self.predicted_boxes, split)

    def excluded_timestamps_path(self, split: str) -> Path:
        return self.path(self.excluded_timestamps, split)

    def video(self, video_id: str) -> VideoSource:
        """The source of one video: its frame folder if ``frames`` is set and it exists, else the first
        ``<id><ext>`` file that exists (so a data set may mix both)."""
        plain_video_id(video_id, subfolders=True)
        offset = self.offsets().get(video_id, self.time_offset_s)
        if self.frames is not None:
            pattern = self.root / self.frames.format(video_id=video_id)
            self._inside(self.root, pattern.parent, video_id)
            if pattern.parent.is_dir():
                return VideoSource(pattern, frame_rate=self.frame_rate, time_offset_s=offset)
        folder = self.root / self.videos
        for ext in self.extensions:
            candidate = self._inside(folder, folder / f"{video_id}{ext}", video_id)
            if candidate.is_file():
                return VideoSource(candidate, time_offset_s=offset)
        frames = "" if self.frames is None else f" and no frame folder {self.frames.format(video_id=video_id)}"
        raise VideoDecodeError(
            f"{folder}: no video file for {video_id!r} (looked for {', '.join(self.extensions)}){frames}"
        )

    def offsets(self) -> dict[str, float]:
        """Per-video time offsets from ``time_offsets`` (empty when not set)."""
        return {} if self.time_offsets is None else _read_offsets(self.path(self.time_offsets, ""))

    def offsets_digest(self) -> str | None:
        """What the per-video offsets are, for fingerprints (AVA-Kinetics has one per clip: too many to list)."""
        offsets = self.offsets()
        if not offsets:
            return None
        text = "\n".join(f"{video},{offset!r}" for video, offset in sorted(offsets.items()))
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    def _inside(self, folder: Path, path: Path, what: str) -> Path:
        """``path`` if it stays inside ``folder``; links out of it only with ``follow_symlinks``."""
        if not Path(os.path.normpath(path.absolute())).is_relative_to(Path(os.path.normpath(folder.absolute()))):
            raise LayoutError(f"{what!r} resolves to {path}, outside {folder}; refusing to read outside the data set")
        if not self.follow_symlinks and not path.resolve().is_relative_to(folder.resolve()):
            raise LayoutError(
                f"{path} is a link to {path.resolve()}, outside {folder}; refusing to follow it "
                "(set dataset.follow_symlinks: true if you trust the links)"
            )
        return path


@functools.cache
def _read_offsets(path: Path) -> dict[str, float]:
    offsets: dict[str, float] = {}
    with open(path, newline="") as f:
        for line, row in enumerate(csv.reader(f), start=1):
            if not row or (line == 1 and row[0] == "video_id"):
                continue
            try:
                video, offset = row[0], float(row[1])
            except (IndexError, ValueError):
                raise LayoutError(f"{path}:{line}: expected video_id,offset_s, got {row}") from None
            offsets[video] = offset
    return offsets
