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
