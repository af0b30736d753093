"""No secret reaches a log line, even while the database is away and errors pile up."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from tests.conftest import free_port
from tests.e2e.conftest import ROOT, process_env

pytestmark = pytest.mark.e2e
PASSWORD = "pw-Xq7-never-log-me"
SECRET_KEY = "sk-never-log-me-either-0123456789"


@pytest.mark.parametrize("command", [["relay"], ["worker", "archiver"]])
def test_a_database_password_never_reaches_the_logs(settings, command):
    gone = f"postgresql://pressroom:{PASSWORD}@127.0.0.1:{free_port()}/pressroom"
    env = process_env(settings) | {"DATABASE_URL": gone, "SECRET_KEY": SECRET_KEY}
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.cli", *command],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )
    time.sleep(6)  # long enough to fail, retry and log it several times
    proc.terminate()
    try:
        out, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
    text = out.decode(errors="replace")
    assert text.strip(), "the process logged nothing at all"
    assert PASSWORD not in text
    assert SECRET_KEY not in text
