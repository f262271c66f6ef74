"""Issue 35 (4): labels, answers, seeds and traffic references compare after one normalisation
(core.text.label_form: NFC and a full case fold) in the parser, the metric, the readers and the
gateway's teacher lane; the answer is always the label as declared in skill.yaml. A label declared
`facturación` in NFD and answered in NFC parsed to None before."""

from __future__ import annotations

import json
import unicodedata

import pytest

from core.records import Example
from core.tasks import get_task
from core.text import label_form
from tests.core.skillkit import config, make_skill, write_jsonl


def nfc(s: str) -> str:
    return unicodedata.normalize("NFC", s)


def nfd(s: str) -> str:
    return unicodedata.normalize("NFD", s)


FACT = "facturación"
assert nfc(FACT) != nfd(FACT)


def skill_cfg(labels, task="classification"):
    from core.config import SkillConfig

    return SkillConfig.model_validate(config(task, labels=list(labels)))


# (declared in skill.yaml, answered) pairs: other bytes, the same label.
SAME = [
    (nfd(FACT), nfc(FACT)), (nfc(FACT), nfd(FACT)),  # NFD declared / NFC answered, and the reverse
    (nfc(FACT), nfd(FACT).upper()), (nfd("Crème brûlée"), nfc("CRÈME BRÛLÉE")),
    ("STRASSE", "straße"), ("straße", "STRASSE"),  # German sharp s folds to ss
    ("ΟΔΟΣ", "οδος"), ("οδος", "ΟΔΟΣ"), ("ὈΔΌΣ", nfd("ὀδός")),  # Greek: final sigma; accents decomposed
    ("İSTANBUL", "İstanbul"), ("İstanbul", "i̇stanbul"),  # Turkish dotted capital I (its fold keeps the dot)
    ("Ꭰ", "ꭰ"),  # Cherokee: lowercase folds to uppercase
]


@pytest.mark.parametrize("declared, answered", SAME)
def test_the_parser_returns_the_declared_label_whatever_form_the_answer_has(declared, answered):
    cfg = skill_cfg([declared, "soporte"])
    task = get_task(cfg)
    assert answered != declared and label_form(answered) == label_form(declared)
    assert task.parse_output(answered) == declared  # the label as declared, byte for byte
    assert task.parse_output(f" {answered}. because the card was charged twice") == declared
    assert task.output_problem(answered) is None
    assert task.canonical_output(answered) == declared


@pytest.mark.parametrize("declared, answered", SAME)
def test_the_metric_compares_gold_and_prediction_by_one_form(declared, answered):
    cfg = skill_cfg([declared, "soporte"])
    task = get_task(cfg)
    gold = Example(id="1", skill="s", input="x", output=answered, source="human")  # a gold written in the other form
    assert task.score(gold, declared) == {"accuracy": 1.0, "valid": 1.0}
    assert task.score(gold, answered) == {"accuracy": 1.0, "valid": 1.0}
    assert task.score(gold, "soporte") == {"accuracy": 0.0, "valid": 1.0}
    assert task.error(gold, answered) is None and task.slice_of(gold) == declared
    agg = task.aggregate([task.score(gold, answered)], [gold], [answered])
    assert agg["accuracy"] == 1.0 and agg["per_label_recall"][declared] == 1.0
    assert agg["confusion"] == {declared: {declared: 1}, "soporte": {}}


def test_other_words_stay_other_labels():
    cfg = skill_cfg([nfc(FACT), "facturacion", "KAPI", "kapı"])  # accents and the dotless ı still count
    task = get_task(cfg)
    assert task.parse_output(nfd(FACT)) == nfc(FACT)
    assert task.parse_output("FACTURACION") == "facturacion"
    assert task.parse_output("kapi") == "KAPI" and task.parse_output("KAPı") == "kapı"
    assert task.parse_output("factura") is None


@pytest.mark.parametrize("labels, key", [
    ([nfc(FACT), nfd(FACT)], nfc(FACT)),
    (["STRASSE", "straße"], "strasse"),
    (["ΟΔΟΣ", "οδος"], "οδοσ"),
    (["Billing", "billing"], "billing"),
    (["feature_request", "Feature Request"], "feature request"),
])
def test_two_labels_with_one_key_are_refused_at_load_naming_the_key(labels, key):
    from core.config import SkillConfig

    for task in ("classification", "multi_label"):
        with pytest.raises(ValueError, match=f"key {key!r}") as e:
            SkillConfig.model_validate(config(task, labels=labels))
        assert "labels:" in str(e.value) and "rename one" in str(e.value)


def test_a_label_spanning_two_lines_for_the_parser_is_refused():
    from core.config import SkillConfig

    for sep in ("\u2028", "\x85", "\r", "\x1c"):
        with pytest.raises(ValueError, match="single line"):
            SkillConfig.model_validate(config("classification", labels=[f"bill{sep}ing", "bug"]))


def test_multi_label_items_compare_by_one_form():
    declared = [nfd(FACT), "STRASSE", "soporte"]
    cfg = skill_cfg(declared, task="multi_label")
    task = get_task(cfg)
    answer = f"{nfc(FACT).upper()}, straße"
    assert task.parse_output(answer) == f"{nfd(FACT)}, STRASSE"
    gold = Example(id="1", skill="s", input="x", output=f"{nfc(FACT)}, strasse", source="human")
    assert task.canonical_output(gold.output) == f"{nfd(FACT)}, STRASSE"
    assert task.score(gold, task.parse_output(answer))["subset_accuracy"] == 1.0
    assert task.output_problem(f"{nfc(FACT)}, straße") is None
    assert task.output_problem(f"straße, {nfc(FACT)}")[0] == "not_canonical"  # order still counts


# ---- seeds, eval and traffic readers ------------------------------------------------------------------------------


def _skill_folder(tmp_path, declared):
    rows = lambda kind: [{"id": f"{kind}-{i}", "input": f"{kind} ticket number {i} about my invoice",
                          "output": out} for i, out in enumerate([nfc(FACT), nfd(FACT).upper(), "soporte", "SOPORTE"])]
    traffic = [{"id": f"t-{i}", "timestamp": f"2026-01-0{i + 1}T00:00:00Z", "request": f"traffic ticket {i}",
                "reference": ref, "reference_source": "human", "accepted": True}
               for i, ref in enumerate([nfc(FACT), nfd(FACT), "Soporte"])]
    cfg = config("classification", labels=[declared, "soporte"])
    return make_skill(tmp_path, "classification", cfg=cfg, seeds=rows("seeds"), evals=rows("eval"),
                      traffic_rows=traffic)


@pytest.mark.parametrize("declared", [nfd(FACT), nfc(FACT)])
def test_seeds_eval_and_traffic_give_the_declared_label(tmp_path, declared):
    from core.skills import load_skill, scan_traffic, validate_all
    from eval_gates.replay import read_traffic_jsonl

    folder = _skill_folder(tmp_path, declared)
    skill = load_skill(folder.name, root=tmp_path)
    for examples in (skill.seeds, skill.eval_set):
        assert [e.output for e in examples] == [declared, declared, "soporte", "soporte"]
    assert scan_traffic(folder / "traffic.jsonl", skill.config) == (3, [])
    log = read_traffic_jsonl(skill.traffic_path(), skill.config)
    assert [r.reference for r in log] == [declared, declared, "soporte"] and not log.skipped
    assert all(r.ok for r in validate_all(tmp_path))


def test_the_quality_filter_and_slice_floors_use_the_same_form():
    from core.config import FilterConfig, GateConfig
    from eval_gates.gates import _slices_for
    from filters.quality import QualityFilter

    ex = Example(id="x", skill="s", input="I was charged twice for my plan", output=nfc(FACT), source="teacher")
    assert QualityFilter(FilterConfig(), labels=[nfd(FACT), "soporte"]).check(ex) is None
    assert QualityFilter(FilterConfig(), labels=["otra", "soporte"]).check(ex)[0] == "not_a_label"
    floors = GateConfig(slice_floor={nfc(FACT): 0.5, "*": 0.1}).slice_floor
    assert _slices_for(floors, [nfd(FACT), "soporte"]) == {nfd(FACT): 0.5, "soporte": 0.1}


# ---- the gateway's teacher lane and verify lane -------------------------------------------------------------------


def test_the_gateway_teacher_lane_answers_with_the_declared_label(tmp_path):
    from core.skills import load_skill
    from gateway.teacher_lane import TeacherLane
    from teachers.fakeserver import FakeOpenAIServer

    declared = nfd(FACT)
    server = FakeOpenAIServer(answer=lambda prompt, body: " " + nfc(FACT).upper()).start()
    try:
        folder = _skill_folder(tmp_path, declared)
        path = folder / "skill.yaml"
        import yaml

        cfg = yaml.safe_load(path.read_text())
        cfg["teacher"] = {"backend": "openai", "model": "fake", "base_url": server.base_url, "cache": False,
                          "max_retries": 0}
        # The label answerer: the teacher's written answer is what is normalised (a label set's default
        # answerer scores the labels instead, where no text comes back).
        cfg.setdefault("expansion", {})["strategies"] = ["self_instruct", "label"]
        cfg.setdefault("filters", {}).pop("target_precision", None)
        path.write_text(yaml.safe_dump(cfg, allow_unicode=True))
        skill = load_skill(folder.name, root=tmp_path)
        lane = TeacherLane(skill)
        try:
            got = lane.submit("ticket about my invoice").result(timeout=60)
        finally:
            lane.close()
        assert got.answer == declared and got.error is None
        # The verify lane's agreement (GatewayService._verify_agree): the task's own score.
        task = get_task(skill.config)
        teacher_says = Example(id="v", skill=skill.name, input="x", output=got.raw.strip(), source="traffic")
        assert task.is_correct(task.score(teacher_says, nfc(FACT)))
    finally:
        server.stop()
