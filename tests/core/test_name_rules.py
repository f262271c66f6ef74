"""Issue 35 (3): every name rule matches the whole string. `re.match("^...$")` let "r1\\n" through
(`$` matches before a final newline) and a run folder named "r1\\n" was made; each rule is tried
here with a trailing newline, a carriage return and an embedded NUL, and nothing is created on disk
for a refused name."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from pydantic import ValidationError

from core.names import NameRule

# What follows a good name in each probe: trailing newline / CR / CRLF / NUL / U+2028, and inside it.
TAILS = ["\n", "\r", "\r\n", "\x00", "\u2028", " "]


def variants(good: str) -> list[str]:
    return [good + t for t in TAILS] + [good[:1] + "\x00" + good[1:], good[:1] + "\n" + good[1:], "\n" + good]


def test_name_rule_is_whole_string():
    rule = NameRule(r"[a-z]+", "lowercase letters")
    assert rule.ok("abc") and rule.match("abc").group(0) == "abc"
    for bad in variants("abc") + [None, 3, b"abc", ""]:
        assert not rule.ok(bad), repr(bad)
    assert rule.problem("thing", "abc\n") == "thing 'abc\\n' is not allowed: use lowercase letters"
    assert rule.problem("thing", "abc") is None
    assert rule.regex.match("abc\n") is None and rule.regex.match("abcd1") is None  # .match is whole too


def test_exported_name_patterns_are_whole_string_with_match_too():
    from core.config import SKILL_NAME_RE
    from core.structured import FUNCTION_NAME_RE
    from registry.serving import VLLM_LORA_TENSOR

    for pattern, good in ((SKILL_NAME_RE, "ticket-triage"), (FUNCTION_NAME_RE, "get_weather"),
                          (VLLM_LORA_TENSOR, "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight")):
        assert pattern.match(good)
        for bad in variants(good) + [good + "/../x"]:
            assert not pattern.match(bad), (pattern.pattern, bad)


# ---- run ids -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", variants("r1"))
def test_run_id_with_a_trailing_newline_is_refused_everywhere_and_makes_no_folder(bad, tmp_path, monkeypatch):
    from core.workdir import check_run_id, run_dir, run_id_problem
    from flows.pipeline import RunParams
    from flows.scale import Shard
    from flows.stages import StageParams

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    assert check_run_id("r1") == "r1"
    assert "is not allowed" in run_id_problem(bad)
    with pytest.raises(ValueError, match="run id"):
        check_run_id(bad)
    with pytest.raises(ValueError, match="run id"):
        run_dir("ticket-triage", bad)
    with pytest.raises(ValidationError, match="run id"):
        RunParams(skill="ticket-triage", run_id=bad)
    with pytest.raises(ValidationError, match="run id"):
        StageParams(skill="ticket-triage", profile="default", run_id=bad)
    with pytest.raises(ValidationError, match="run id"):
        Shard(skill="ticket-triage", run_id=bad, seed=0)
    assert RunParams(skill="ticket-triage", run_id="r1").run_id == "r1"
    assert not (tmp_path / "home").exists() or not any((tmp_path / "home").rglob("*"))


# ---- skill names ---------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", variants("ticket-triage"))
def test_skill_name_with_a_trailing_newline_is_refused(bad, tmp_path, monkeypatch):
    from core.config import SkillConfig
    from core.skills import SkillError, check_skill_name, list_skills, skill_dir
    from core.workdir import pool_dir, runs_dir
    from flows.pipeline import RunParams
    from flows.scale import Shard
    from flows.stages import StageParams

    monkeypatch.setenv("DISTILL_HOME", str(tmp_path / "home"))
    with pytest.raises(SkillError, match="skill name"):
        check_skill_name(bad)
    with pytest.raises(SkillError):
        skill_dir(tmp_path / "seeds", bad)
    for where in (runs_dir, pool_dir):
        with pytest.raises(SkillError):
            where(bad)
    with pytest.raises(ValidationError, match="skill name"):
        SkillConfig(name=bad, task="classification", instruction="x", labels=["a", "b"])
    for params in (lambda: RunParams(skill=bad), lambda: StageParams(skill=bad, profile="default", run_id="r1"),
                   lambda: Shard(skill=bad, run_id="r1", seed=0)):
        with pytest.raises(ValidationError):
            params()
    assert not (tmp_path / "home").exists()


def test_a_folder_named_with_a_newline_is_not_listed_as_a_skill(tmp_path):
    from core.skills import list_skills

    for name in ("ticket-triage", "ticket-triage\n", "other\r"):
        (tmp_path / name).mkdir()
        (tmp_path / name / "skill.yaml").write_text("name: x\n")
    assert list_skills(tmp_path) == ["ticket-triage"]


# ---- registry: skill names, aliases, version folders, refs --------------------------------------------------------


def _adapter(tmp_path: Path) -> Path:
    d = tmp_path / "adapter"
    d.mkdir()
    (d / "adapter_model.safetensors").write_bytes(b"w")
    (d / "adapter_config.json").write_text(json.dumps({"r": 4}))
    return d


def _publish(reg, skill, adapter, alias="production"):
    return reg.publish(skill, adapter, metrics={}, lineage={"run_id": "r1"}, routing={}, skill_spec={},
                       model_card="card", alias=alias)


@pytest.mark.parametrize("bad", variants("intent"))
def test_registry_names_with_a_trailing_newline_are_refused_and_write_nothing(bad, tmp_path):
    from registry.store import Registry, RegistryError, is_skill_name, is_version_name, parse_ref

    reg = Registry(tmp_path / "registry")
    adapter = _adapter(tmp_path)
    assert not is_skill_name(bad)
    with pytest.raises(RegistryError, match="invalid skill name"):
        _publish(reg, bad, adapter)
    with pytest.raises(RegistryError, match="invalid alias name"):
        _publish(reg, "intent", adapter, alias=bad.replace("intent", "production"))
    with pytest.raises(RegistryError):
        parse_ref(bad)
    with pytest.raises(RegistryError):
        parse_ref(bad + "@1")
    assert not (tmp_path / "registry").exists() or not any((tmp_path / "registry").iterdir())
    for v in variants("3"):
        assert not is_version_name(v), repr(v)
        with pytest.raises(RegistryError):
            parse_ref(f"intent@{v}")
    assert parse_ref("intent@3") == ("intent", 3) and is_version_name("3")


def test_registry_listings_skip_names_with_a_newline(tmp_path):
    from registry.store import Registry

    reg = Registry(tmp_path / "registry")
    assert _publish(reg, "intent", _adapter(tmp_path)) == 1
    (tmp_path / "registry" / "intent" / "versions" / "2\n").mkdir()  # a hand-made folder: not a version
    (tmp_path / "registry" / "other\n" / "versions" / "1").mkdir(parents=True)
    assert reg.versions("intent") == [1] and reg.skills() == ["intent"]
    assert reg.aliases("intent") == {"production": 1}


# ---- function names, vLLM tensor names, table names, pools -------------------------------------------------------


@pytest.mark.parametrize("bad", variants("get_weather"))
def test_function_names_with_a_trailing_newline_are_refused(bad):
    from core.structured import check_tool

    tool = {"type": "function", "function": {"name": bad, "parameters": {"type": "object", "properties": {}}}}
    assert check_tool(tool)[0] == "invalid_tool"
    tool["function"]["name"] = "get_weather"
    assert check_tool(tool) is None


def test_vllm_tensor_names_match_whole():
    from registry.serving import vllm_tensor_problems

    good = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert vllm_tensor_problems([good]) == []
    assert len(vllm_tensor_problems([good + t for t in TAILS])) == len(TAILS)


@pytest.mark.parametrize("bad", variants("traffic"))
def test_table_and_pool_names_with_a_trailing_newline_are_refused(bad):
    from core.config import ReplayConfig
    from flows.pipeline import RunParams
    from gateway.config import GatewayConfig

    with pytest.raises(ValidationError):
        ReplayConfig(table=bad)
    with pytest.raises(ValidationError):
        GatewayConfig(traffic_table=bad + "_{skill}")
    with pytest.raises(ValidationError):
        GatewayConfig(traffic_table=bad)
    with pytest.raises(ValidationError):
        RunParams(skill="ticket-triage", stage_pool=bad)
    assert ReplayConfig(table="traffic").table == "traffic"
    assert RunParams(skill="ticket-triage", stage_pool="gpu-pool").stage_pool == "gpu-pool"
