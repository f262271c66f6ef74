from pathlib import Path

from core.prompting import format_prompt, parse_output, template_spec
from core.skills import load_skill

CFG = load_skill("ticket-triage", root=Path(__file__).resolve().parents[2] / "seeds").config


def test_prompt_is_the_bundled_template():
    spec = template_spec(CFG)
    assert format_prompt(CFG, "my  invoice\nis wrong") == spec["prompt_template"].format(input="my invoice is wrong")


def test_few_shot_prompt_ends_with_the_question():
    p = format_prompt(CFG, "app crashes", [("charged twice", "billing")])
    assert p.endswith("Ticket: app crashes\nTeam:")
    assert "Ticket: charged twice\nTeam: billing\n\n" in p


def test_parse_is_lenient_but_strict_on_labels():
    assert parse_output(CFG, " billing\nTicket: x") == "billing"
    assert parse_output(CFG, "`Bug`.") == "bug"
    assert parse_output(CFG, " feature request") == "feature_request"
    assert parse_output(CFG, " sales") is None
    assert parse_output(CFG, "") is None
