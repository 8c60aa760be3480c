"""Starts `diffuse serve` on a free loopback port for the client tests, and stops it with SIGTERM."""

import os
import pathlib
import signal
import subprocess
import tempfile

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
MODEL = ROOT / "tests" / "fixtures" / "models" / "sd1"
SECOND_MODEL = ROOT / "tests" / "fixtures" / "models" / "sd2"
API_KEY = "client-test-key"


def diffuse_bin():
    explicit = os.environ.get("DIFFUSE_BIN")
    if explicit:
        return explicit
    target = os.environ.get("CARGO_TARGET_DIR", str(ROOT / "target"))
    return str(pathlib.Path(target) / "debug" / "diffuse")


class Served:
    def __init__(self, *extra):
        # The server logs a line per request: a file, unlike a pipe nobody reads, never fills up.
        self.log = tempfile.TemporaryFile(mode="w+")
        self.process = subprocess.Popen(
            [diffuse_bin(), "serve", "--model", f"sd1={MODEL}", "--port", "0", *extra],
            stdout=subprocess.PIPE,
            stderr=self.log,
            text=True,
        )
        line = self.process.stdout.readline()
        if "listening on " not in line:
            self.process.kill()
            raise RuntimeError(f"diffuse serve did not start: {line!r} {self.read_log()}")
        self.url = line.split("listening on ", 1)[1].strip()
        self.host, self.port = self.url.removeprefix("http://").rsplit(":", 1)

    def read_log(self):
        self.log.seek(0)
        return self.log.read()

    def stop(self):
        self.process.send_signal(signal.SIGTERM)
        code = self.process.wait(timeout=60)
        assert code == 0, f"diffuse serve exited with {code}: {self.read_log()}"


@pytest.fixture(scope="session")
def server():
    served = Served()
    yield served
    served.stop()


@pytest.fixture(scope="session")
def keyed_server():
    served = Served("--api-key", API_KEY)
    yield served
    served.stop()


@pytest.fixture(scope="session")
def two_model_server():
    served = Served("--model", f"sd2={SECOND_MODEL}")
    yield served
    served.stop()
