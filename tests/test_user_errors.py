"""What a new user runs into: every mistake is one `bittune: error:` line, no traceback, found
before any work, and nothing partial is left behind."""

import http.server
import os
import pathlib
import subprocess
import sys
import threading
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
# Never ask a metadata server: these tests run without credentials on purpose.
NO_CLOUD = {"NO_GCE_CHECK": "true", "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9"}  # fmt: skip


def bittune(*args, env=None, timeout=120):
    environment = {**os.environ, **NO_CLOUD, **(env or {})}
    environment = {k: v for k, v in environment.items() if v is not None}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", *args],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT, env=environment,
    )  # fmt: skip
    done.seconds = time.monotonic() - started
    return done


def one_error_line(done, *fragments):
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("bittune: error: "), done.stderr[-3000:]
    for fragment in fragments:
        assert fragment in lines[0]
    assert "Traceback" not in done.stderr


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from tests import imagegen

    root = tmp_path_factory.mktemp("tiny")
    imagegen.write_odd_folder(root)
    return root


@pytest.mark.parametrize("command", ["analyze", "preprocess", "train", "evaluate", "run"])
def test_an_output_under_a_regular_file(command, tiny_folder, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    output = str(blocker / "out")
    args = {
        "analyze": ["analyze", str(tiny_folder), "--output", output],
        "preprocess": ["preprocess", str(tiny_folder), "--analysis", str(tmp_path),
                       "--output", output],
        "train": ["train", "--data", str(tmp_path), "--output", output],
        "evaluate": ["evaluate", "--data", str(tmp_path), "--run", str(tmp_path),
                     "--output", output],
        "run": ["run", "--data", str(tiny_folder), "--output", output],
    }[command]  # fmt: skip
    done = bittune(*args)
    one_error_line(done, f"{blocker} is a file, not a folder")
    assert blocker.read_text() == "not a folder"


@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no one may write to: a read-only file system (as root, who may write
    anywhere else), or a folder without write permission."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.getuid() != 0:
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)],
                             capture_output=True, text=True)  # fmt: skip
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a read-only file system here: {mounted.stderr.strip()}")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_a_read_only_output_folder(tiny_folder, read_only_folder):
    done = bittune("analyze", str(tiny_folder), "--output", str(read_only_folder / "out"))
    one_error_line(done, f"cannot write to {read_only_folder / 'out'}", "read-only")
    done = bittune("preprocess", str(tiny_folder), "--analysis", str(tiny_folder),
                   "--output", str(read_only_folder))  # fmt: skip
    one_error_line(done, "read-only")
    assert list(read_only_folder.iterdir()) == []


def test_gs_without_credentials_fails_before_the_work(tiny_folder, tmp_path):
    unset = {"STORAGE_EMULATOR_HOST": None, "GOOGLE_APPLICATION_CREDENTIALS": None,
             "HOME": str(tmp_path), "CLOUDSDK_CONFIG": str(tmp_path / "gcloud")}  # fmt: skip
    done = bittune("analyze", str(tiny_folder), "--output", "gs://bucket/analysis", env=unset)
    one_error_line(done, "no Google Cloud credentials for gs:// paths")
    done = bittune("analyze", "gs://bucket/photos", "--output", str(tmp_path / "o"), env=unset)
    one_error_line(done, "no Google Cloud credentials")
    assert not (tmp_path / "o").exists()


def test_an_unreachable_storage_emulator_fails_in_seconds(tmp_path):
    done = bittune("analyze", "gs://bucket/photos", "--output", str(tmp_path / "o"),
                   env={"STORAGE_EMULATOR_HOST": "http://127.0.0.1:9"})  # fmt: skip
    one_error_line(done, "cannot connect to the storage emulator at "
                   "STORAGE_EMULATOR_HOST=http://127.0.0.1:9: connection refused")  # fmt: skip
    assert done.seconds < 60  # no five minutes of retries


class _Forbidden(http.server.BaseHTTPRequestHandler):
    def _deny(self):
        body = b'{"error": {"code": 403, "message": "caller lacks storage.objects.list"}}'
        self.send_response(403)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = _deny

    def log_message(self, *args):
        pass


def test_permission_denied_is_one_line_without_retries(tmp_path):
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Forbidden)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        done = bittune("analyze", "gs://bucket/photos", "--output", str(tmp_path / "o"),
                       env={"STORAGE_EMULATOR_HOST": url})  # fmt: skip
        one_error_line(done, "permission denied", "caller lacks storage.objects.list")
        assert done.seconds < 60
    finally:
        server.shutdown()


def test_a_missing_bucket_is_named_before_the_work(gcs, tiny_folder, tmp_path):
    done = bittune("analyze", str(tiny_folder), "--output", "gs://no-such-bucket/analysis",
                   env={"STORAGE_EMULATOR_HOST": gcs.server.url})  # fmt: skip
    one_error_line(done, "bucket no-such-bucket does not exist")
