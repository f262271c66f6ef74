"""A run killed halfway (SIGKILL, no clean-up) resumes: the re-run sends only what is not cached."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from teachers.base import Failure, Request
from teachers.cache import ResponseCache
from teachers.client import ClientSettings, Teacher
from teachers.http import OpenAIBackend

N = 60
CHILD = """
import sys
from teachers.base import Request
from teachers.cache import ResponseCache
from teachers.client import ClientSettings, Teacher
from teachers.http import OpenAIBackend
url, cache = sys.argv[1], sys.argv[2]
t = Teacher(OpenAIBackend(url, "fake"), ClientSettings(max_in_flight=4, flush_every=1), ResponseCache(cache))
t.run([Request(prompt=f"prompt {i}") for i in range(%d)])
""" % N


def test_killed_run_resumes_sending_only_missing_requests(fake_server, tmp_path):
    srv = fake_server(delay_s=0.05)
    cache_path = tmp_path / "teacher.sqlite"
    repo = Path(__file__).resolve().parents[2]
    proc = subprocess.Popen([sys.executable, "-c", CHILD, srv.base_url, str(cache_path)], cwd=repo,
                            env={**os.environ, "PYTHONPATH": str(repo)})
    deadline = time.time() + 60
    while srv.total < N // 2 and time.time() < deadline and proc.poll() is None:
        time.sleep(0.01)
    proc.send_signal(signal.SIGKILL)  # a crash: no finally blocks, no flush
    proc.wait()
    first = srv.total
    assert N // 2 <= first < N, "the child should be killed halfway"
    cache = ResponseCache(cache_path)
    cached = len(cache)
    assert cached >= first - 4  # at most the requests in flight were lost
    before = dict(srv.per_prompt)
    t = Teacher(OpenAIBackend(srv.base_url, "fake"), ClientSettings(max_in_flight=8), cache)
    out = t.run([Request(prompt=f"prompt {i}") for i in range(N)])
    assert all(not isinstance(o, Failure) for o in out)
    resent = srv.total - first
    assert resent == N - cached and t.report()["cache_hits"] == cached
    # only prompts whose answer was not stored were sent again
    again = {p for p, c in srv.per_prompt.items() if c > before.get(p, 0)}
    assert len(again) == resent
    # a third run sends nothing
    t = Teacher(OpenAIBackend(srv.base_url, "fake"), ClientSettings(), cache)
    t.run([Request(prompt=f"prompt {i}") for i in range(N)])
    assert srv.total == first + resent and t.report()["sent"] == 0
