"""The `distill` CLI on real files (registry commands, skill validation)."""

import json

from flows.cli import main


def _publish(reg, tmp_path, n):
    adapter = tmp_path / f"adapter{n}"
    adapter.mkdir()
    (adapter / "adapter_model.safetensors").write_bytes(b"w" * (10 + n))
    (adapter / "adapter_config.json").write_text(json.dumps({"r": n}))
    return reg.publish("ticket-triage", adapter, metrics={"accuracy": 0.5}, lineage={"run_id": f"r{n}"},
                       routing={}, skill_spec={}, model_card="card")


def test_registry_commands(tmp_path, capsys):
    from registry import Registry

    root = tmp_path / "reg"
    reg = Registry(root)
    assert _publish(reg, tmp_path, 1) == 1 and _publish(reg, tmp_path, 2) == 2
    assert main(["registry", "list", "--root", str(root)]) == 0
    assert "versions=[1, 2]" in capsys.readouterr().out
    assert main(["registry", "path", "ticket-triage", "--root", str(root)]) == 0
    assert capsys.readouterr().out.strip().endswith("versions/2")
    assert main(["registry", "rollback", "ticket-triage", "--root", str(root)]) == 0
    assert reg.aliases("ticket-triage")["production"] == 1
    assert main(["registry", "promote", "ticket-triage", "2", "--root", str(root)]) == 0
    assert reg.aliases("ticket-triage")["production"] == 2
    capsys.readouterr()
    assert main(["registry", "show", "ticket-triage@1", "--root", str(root)]) == 0
    assert json.loads(capsys.readouterr().out)["lineage"]["run_id"] == "r1"
    assert main(["registry", "path", "nope", "--root", str(root)]) == 2
    assert "error: " in capsys.readouterr().err


def test_skills_lists_and_validates(skill_root, capsys):
    assert main(["skills"]) == 0
    out = capsys.readouterr().out
    row = next(line for line in out.splitlines() if line.startswith("ticket-triage "))
    assert row.split() == ["ticket-triage", "classification", "50", "100", "40", "0", "3", "*", "*", "*", "ok"]


def test_fresh_work_dir_gets_a_prefect_home(tmp_path, monkeypatch):
    """On a fresh clone .distill/ does not exist; Prefect would fail to create its home."""
    from flows.cli import _environment

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "new" / ".distill"))
    monkeypatch.delenv("PREFECT_HOME")
    _environment()
    import os

    assert os.environ["PREFECT_HOME"] == str(tmp_path / "new" / ".distill" / "prefect")
    assert (tmp_path / "new" / ".distill" / "prefect").is_dir()


# --- issue 16, item 5: a run id is one safe path part ----------------------------------------------

BAD_RUN_IDS = ["../../../x", "/tmp/abs", "a/b", "..", ".", ".hidden", "", "a\\b", "a\x00b", "run\n2", "-rf",
               "é", "x" * 129]


def test_distill_run_refuses_a_run_id_that_is_not_one_path_part(skill_root, tmp_path, monkeypatch, capsys):
    import os

    work = tmp_path / "deep" / "work"
    monkeypatch.setenv("DISTILL_HOME", str(work))
    for bad in ("../../../x", "/tmp/abs-run", "a/b", ".."):
        assert main(["run", "ticket-triage", "--run-id", bad, "--no-progress"]) == 2
        err = capsys.readouterr().err
        assert "run id" in err and "one folder name" in err, err
    # runs/ticket-triage/../../../x would be <tmp>/deep/x: nothing was written anywhere.
    assert not list(tmp_path.rglob("params.json")) and not (tmp_path / "deep" / "x").exists()
    assert not os.path.exists("/tmp/abs-run") and not (work / "runs").exists()


def test_every_model_that_takes_a_run_id_refuses_unsafe_ones():
    import pytest
    from pydantic import ValidationError

    from core.workdir import check_run_id, run_dir, runs_dir
    from flows.pipeline import RunParams
    from flows.scale import Shard
    from flows.stages import StageParams

    for bad in BAD_RUN_IDS:
        for build in (lambda r: RunParams(skill="ticket-triage", run_id=r),
                      lambda r: StageParams(skill="ticket-triage", run_id=r),
                      lambda r: Shard(skill="ticket-triage", run_id=r, seed=1)):
            with pytest.raises(ValidationError, match="one folder name"):
                build(bad)
        with pytest.raises(ValueError, match="one folder name"):
            run_dir("ticket-triage", bad)
    for good in ("20250101-030000", "r1", "a.b_c-d", "x" * 128):
        assert check_run_id(good) == good
        assert run_dir("ticket-triage", good).parent == runs_dir("ticket-triage")
        assert RunParams(skill="ticket-triage", run_id=good).run_id == good
