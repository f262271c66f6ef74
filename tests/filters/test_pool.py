"""filters/pool.py's invariants: the pool grows only by a promoted (or admitted) run's examples, once per id;
a rejected run's batch is held apart with why, and joins only through a promoted run that re-admits it."""

from core.records import Example, read_examples, write_examples
from core.skills import load_skill
from core.workdir import pool_dir, run_dir as run_folder
from filters.pool import commit_run, read_pool, readmitted_examples, training_examples, trained_traffic


def _run(run_id: str, ids: list[str], source: str = "teacher") -> None:
    write_examples(run_folder("ticket-triage", run_id) / "accepted.jsonl",
                   [Example(id=i, skill="ticket-triage", input=f"ticket {i} about my invoice", output="billing",
                            source=source, meta={"traffic_id": f"t-{i}"} if source == "traffic" else {})
                    for i in ids])


def test_a_promoted_run_joins_once_and_a_rejected_one_is_held_until_a_promoted_run_readmits_it(skill_root):
    skill = load_skill("ticket-triage", "tiny_readmit", root=skill_root)
    rejected = {"promote": False, "gates": [{"name": "floor", "passed": False, "reasons": ["below 0.35"]}]}
    _run("r1", ["a", "b"])
    out = commit_run(skill, run_folder("ticket-triage", "r1"), {"promote": True})
    assert out["pool_size"] == 2 and out["held"] is None
    assert commit_run(skill, run_folder("ticket-triage", "r1"), {"promote": True})["pool_size"] == 2  # idempotent
    _run("r2", ["c"], source="traffic")
    out = commit_run(skill, run_folder("ticket-triage", "r2"), rejected)
    assert out["pool_size"] == 2 and out["held"]["reasons"] == ["below 0.35"]
    assert [e.id for e in read_examples(pool_dir("ticket-triage") / "held" / "r2.jsonl")] == ["c"]
    assert trained_traffic("ticket-triage") == set()  # held traffic was never trained on by a kept run
    # A later run trains with the held batch, and only its promotion pools it.
    _run("r3", ["d"])
    r3 = run_folder("ticket-triage", "r3")
    examples, _, held = training_examples(skill, r3)
    assert held == 1 and {e.id for e in examples} == {"a", "b", "c", "d"}
    assert [e.id for e in read_pool("ticket-triage")] == ["a", "b"]
    out = commit_run(skill, r3, {"promote": True})
    assert out["readmitted"] == {"runs": ["r2"], "examples": 1} and out["pool_size"] == 4
    assert trained_traffic("ticket-triage") == {"t-c"}
    assert not (pool_dir("ticket-triage") / "held" / "r2.json").exists()
    assert (pool_dir("ticket-triage") / "held" / "readmitted" / "r2.json").exists()
    assert readmitted_examples(skill, run_folder("ticket-triage", "r4")) == []  # nothing left to re-admit
