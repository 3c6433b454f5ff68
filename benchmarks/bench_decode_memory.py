"""Peak memory of decoding clips from a 3840x2160 video, with and without scaling down while decoding.

Each variant runs in its own process (peak RSS is per process); the ratio is printed side by side.
Run: ``python benchmarks/bench_decode_memory.py``
"""

from __future__ import annotations

import subprocess
import sys
import tempfile
from pathlib import Path

import av
import numpy as np

HEIGHT, WIDTH, FPS, SECONDS = 2160, 3840, 30, 3

_CHILD = """
import resource, sys
from dataclasses import replace
from stages.data.video import ClipSampling, iter_keyframe_clips
sampling = replace(ClipSampling(), max_decode_side=int(sys.argv[2]))
clips = sum(1 for _ in iter_keyframe_clips(sys.argv[1], [1.0, 1.5, 2.0], sampling))
print(clips, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _write_4k(path: Path) -> None:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (HEIGHT // 8, WIDTH // 8, 3), dtype=np.uint8).repeat(8, axis=0).repeat(8, axis=1)
    with av.open(str(path), "w") as out:
        stream = out.add_stream("libx264", rate=FPS, options={"preset": "ultrafast"})
        stream.height, stream.width, stream.pix_fmt = HEIGHT, WIDTH, "yuv420p"
        for i in range(FPS * SECONDS):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 8 * i, axis=1), format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)


def _peak_mb(video: Path, max_side: int) -> float:
    out = subprocess.run([sys.executable, "-c", _CHILD, str(video), str(max_side)], capture_output=True, text=True)
    out.check_returncode()
    clips, kb = out.stdout.split()
    assert int(clips) == 3
    return int(kb) / 1024


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "4k.mp4"
        _write_4k(video)
        full = _peak_mb(video, 10**6)
        bounded = _peak_mb(video, 1280)
    print(
        f"3840x2160, 3 clips of 16 frames: full-size decode {full:.0f} MB peak RSS, max_decode_side=1280 "
        f"{bounded:.0f} MB ({full / bounded:.2f}x less)"
    )


if __name__ == "__main__":
    main()
