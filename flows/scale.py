"""Scale-out: teacher expansion and filtering of several shards at once on a cluster task runner.

The tasks are the pipeline's own (`expand`, `filter_candidates`), unchanged; a shard is one
run folder of one skill (several skills, or one skill split over seeds). The flow submits
them to its task runner: Dask (`prefect-dask`) here, Ray (`prefect-ray`) the same way:

    from flows.scale import Shard, expand_and_filter_many, on_dask
    on_dask(n_workers=2)([Shard(skill="ticket-triage", run_id="a", seed=1), ...])
    # Ray: expand_and_filter_many.with_options(task_runner=RayTaskRunner(address="ray://<head>:10001"))

Needs a real Prefect API (PREFECT_API_URL): cluster workers cannot reach an ephemeral server.
Workers must share the work dir (DISTILL_HOME) and, to share one dedup index while they
filter, `filters.redis_url`. `commit_shard` appends a shard's accepted examples to the pool
and its signatures to the index, as the end of a pipeline run does.
"""

from __future__ import annotations

from pathlib import Path

from prefect import flow
from pydantic import BaseModel, Field, field_validator

from core.records import Example, read_examples
from core.skills import Skill, load_skill
from core.workdir import check_run_id, run_dir as run_folder

# One thread per worker process: the tasks run torch/tokenizers, which use the cores themselves.
DASK_DEFAULTS = {"processes": True, "threads_per_worker": 1}


class Shard(BaseModel):
    """One unit of scale-out work: expansion + filtering into one run folder."""

    skill: str = Field(description="Skill folder name under seeds/.", pattern=r"^[A-Za-z0-9_-]+$")
    profile: str = Field("default", description="Named overrides from the skill file.")
    run_id: str = Field(description="Run folder name (one per shard).")

    @field_validator("run_id")
    @classmethod
    def _run_id(cls, v: str) -> str:
        return check_run_id(v)
    seed: int = Field(ge=0, le=2**31 - 1, description="Teacher sampling seed; shards of one skill use different ones.")


def prepare(shard: Shard) -> tuple[Skill, str, Path, list[Example]]:
    """What the two tasks need, as in distill_skill: the skill, the teacher path, the run folder, the replay hold-out."""
    from eval_gates.replay import replay_items as sample_replay
    from filters.pool import trained_traffic
    from flows.pipeline import provision_models

    skill = load_skill(shard.skill, shard.profile)
    run_dir = run_folder(skill.name, shard.run_id)
    run_dir.mkdir(parents=True, exist_ok=True)
    replay, _ = sample_replay(skill, trained_traffic(skill.name))
    return skill, provision_models.fn(skill).teacher, run_dir, replay


@flow(name="expand-and-filter-many")
def expand_and_filter_many(jobs: list[Shard], expand_stage: bool = True) -> list[dict]:
    """Teacher expansion then filtering of every shard, submitted to this flow's task runner; the
    filtering of a shard waits only for its own expansion. `expand_stage=False`: filter the shards'
    existing generated.jsonl again (e.g. after other shards were committed). Returns per shard:
    run_dir, expansion (None when not run), filter."""
    from flows.pipeline import expand, filter_candidates

    prepared = [prepare(j) for j in jobs]
    expanded = [expand.submit(skill, teacher, run_dir, j.seed, replay_items=replay) if expand_stage else None
                for j, (skill, teacher, run_dir, replay) in zip(jobs, prepared)]
    filtered = [filter_candidates.submit(skill, run_dir, replay, wait_for=[e] if e is not None else None)
                for (skill, _, run_dir, replay), e in zip(prepared, expanded)]
    return [{"run_dir": str(p[2]), "expansion": e.result() if e is not None else None, "filter": f.result()}
            for p, e, f in zip(prepared, expanded, filtered)]


def on_dask(n_workers: int = 2, address: str | None = None, **cluster_kwargs):
    """expand_and_filter_many on Dask: a LocalCluster of `n_workers` processes, or the cluster at `address`."""
    from prefect_dask import DaskTaskRunner

    runner = (DaskTaskRunner(address=address) if address else
              DaskTaskRunner(cluster_kwargs={**DASK_DEFAULTS, "n_workers": n_workers, **cluster_kwargs}))
    return expand_and_filter_many.with_options(task_runner=runner)


def commit_shard(shard: Shard) -> dict:
    """Append a filtered shard to the skill's pool and dedup index (what the end of a successful run does)."""
    from filters import commit_index
    from filters.pool import append_pool

    skill = load_skill(shard.skill, shard.profile)
    run_dir = run_folder(skill.name, shard.run_id)
    pool = append_pool(skill.name, read_examples(run_dir / "accepted.jsonl"))
    return {"pool": pool, "index": commit_index(skill.name, skill.config.filters, run_dir)}
