"""The embedded default dataset: written once, whole, even when runs start together."""

from __future__ import annotations

import os
import pathlib
import subprocess
import sys

from components.bit.datasets import materialize_digits

WRITE = (
    "import sys; from components.bit.datasets import materialize_digits as m; print(m(sys.argv[1]))"
)


def test_runs_started_together_each_get_the_whole_folder(tmp_path):
    root = tmp_path / "digits"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", WRITE, str(root)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(3)
    ]
    outputs = [w.communicate(timeout=300)[0].strip() for w in writers]
    assert [w.returncode for w in writers] == [0, 0, 0]
    assert outputs == [str(root)] * 3
    assert len(list(root.glob("*/*.png"))) == 1797
    assert sorted(p.name for p in tmp_path.iterdir()) == ["digits"]  # no partial copy left
    mode = root.stat().st_mode & 0o777
    assert mode == 0o777 & ~_umask()  # readable by others (the Docker steps' user), as mkdir


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_an_incomplete_folder_is_written_again(tmp_path):
    root = tmp_path / "digits"
    (root / "3").mkdir(parents=True)
    (root / "3" / "0003.png").write_bytes(b"half a png")  # a crash mid-write, no marker
    assert materialize_digits(str(root)) == str(root)
    assert len(list(root.glob("*/*.png"))) == 1797
    assert (root / "3" / "0003.png").read_bytes().startswith(b"\x89PNG")
    assert pathlib.Path(materialize_digits(str(root))) == root  # then reused as it is
