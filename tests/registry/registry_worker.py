"""Process target for the concurrency test (importable by a 'spawn' child)."""

from __future__ import annotations

from pathlib import Path


def publish_many(root: str, skill: str, adapter_dir: str, worker: int, count: int, start, queue) -> None:
    from registry import Registry

    reg = Registry(root)
    start.wait(timeout=60)
    got = []
    for i in range(count):
        got.append(
            reg.publish(
                skill,
                Path(adapter_dir),
                metrics={"worker": worker, "i": i},
                lineage={"run_id": f"w{worker}-{i}"},
                routing={"escalation_threshold": 0.5},
                skill_spec={"task_type": "classification"},
                model_card=lambda v: f"---\nlibrary_name: peft\n---\n# v{v}\n",
                reason=f"worker {worker} publish {i}",
            )
        )
    queue.put((worker, got))
