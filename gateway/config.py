"""The gateway's settings: one pydantic model, every field described (`distill gateway --help` shows the flags)."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class SkillOverride(_Strict):
    """Per-skill routing overrides."""

    escalation: Literal["threshold", "never", "always"] = Field(
        "threshold", description="threshold: keep valid answers at or above routing.json's threshold; never: keep every "
                                 "valid answer (invalid ones still go to the teacher); always: every request goes to the teacher.")
    target_error_rate: float | None = Field(
        None, gt=0.0, lt=1.0, description="Re-pick the threshold from routing.json's curve for this kept error rate "
                                          "(the target_error policy on a both-lanes curve; None: the published threshold).")
    policy: Literal["quality", "budget", "target_error"] | None = Field(
        None, description="Re-pick the routing point from routing.json's both-lanes curve with this policy (None: the "
                          "published point); see skill.yaml's routing block.")
    max_teacher_share: float | None = Field(None, ge=0.0, le=1.0, description="budget policy: the largest share of requests sent to the teacher (None: routing.json's).")
    verify_fraction: float | None = Field(None, ge=0.0, le=1.0, description="This skill's verify fraction (None: the gateway's).")

    def effective_policy(self, published: str | None) -> str | None:
        """The routing policy this override serves under: its `policy`, else target_error when it sets a
        target_error_rate, else budget when it sets a max_teacher_share, else `published` (routing.json's)."""
        return self.policy or ("target_error" if self.target_error_rate is not None else
                               "budget" if self.max_teacher_share is not None else published)


def default_traffic_url() -> str:
    """$DISTILL_TRAFFIC_URL, else sqlite:///<DISTILL_HOME>/traffic.db (DISTILL_HOME defaults to ./.distill): the
    store the pipeline's replay gate and refresh read by default (gates.replay.source: gateway)."""
    from core.workdir import traffic_url

    return traffic_url()


class GatewayConfig(_Strict):
    """Everything the gateway needs; defaults serve every skill of the default registry on loopback."""

    registry: str | None = Field(None, description="Registry folder or fsspec URL (None: DISTILL_REGISTRY or <DISTILL_HOME>/registry).")
    skills: list[str] | None = Field(None, description="Skills to serve (None: every skill in the registry). Only these can be addressed.")
    host: str = Field("127.0.0.1", description="Address to listen on.")
    port: int = Field(8080, ge=0, le=65535, description="Port to listen on (0: a free one).")
    backend: Literal["local", "openai"] = Field("local", description="local: transformers + PEFT in this process; openai: a vLLM server started with --lora-modules NAME@VERSION=FOLDER.")
    backend_url: str | None = Field(None, description="backend openai: the vLLM server's base URL (http://host:8000/v1).")
    backend_api_key_env: str | None = Field(None, description="backend openai: environment variable holding the server's key (never logged).")
    max_batch: int = Field(16, ge=1, le=256, description="Most requests of one skill decoded in one batch.")
    max_wait_ms: float = Field(5.0, ge=0.0, le=10_000, description="Longest a request waits for others to fill its batch, in milliseconds.")
    poll_s: float = Field(10.0, gt=0.0, description="Seconds between reads of the registry's aliases (hot swap on promote/rollback).")
    verify_fraction: float = Field(0.0, ge=0.0, le=1.0, description="Share of kept answers also sent to the teacher off the request path.")
    verify_queue: int = Field(1000, ge=1, description="Verify queue bound; overflow is counted and dropped, never waited on.")
    teacher_timeout_s: float = Field(30.0, gt=0.0, description="Longest an escalated request waits for the teacher before the SLM answer is returned as degraded (or a 503).")
    teachers: bool = Field(True, description="Open each skill's teacher (skill.yaml's teacher block under DISTILL_SEEDS_DIR); False: no escalation lane (degraded/503).")
    profile: str = Field("default", description="Skill profile applied when reading skill.yaml for the teacher block.")
    accept_teacher_answers: bool = Field(True, description="Write teacher-answered rows as accepted (reference_source llm): the refresh trains on them.")
    traffic_url: str | None = Field(None, description="SQLAlchemy URL of the traffic database (None: $DISTILL_TRAFFIC_URL, else sqlite under DISTILL_HOME; PostgreSQL: postgresql+psycopg://...).")
    traffic_table: str = Field("traffic_{skill}", pattern=r"^[A-Za-z_{}][A-Za-z0-9_{}]*$", description="Traffic table name; {skill} becomes the skill name with '-' as '_' (one table per skill, as gates.replay.table reads it).")
    traffic_queue: int = Field(10_000, ge=1, description="Traffic queue bound; rows beyond it are dropped and counted, a request never waits on the database.")
    traffic_batch: int = Field(256, ge=1, description="Most rows written in one transaction.")
    traffic_flush_ms: float = Field(200.0, ge=0.0, description="Longest a row waits before its batch is written, in milliseconds.")
    auth_tokens_env: str | None = Field(None, description="Environment variable with comma-separated bearer tokens; set: every /v1 call needs one.")
    max_input_chars: int = Field(8000, ge=1, description="Longest input (characters); longer gets 413 naming this limit.")
    max_inputs: int = Field(64, ge=1, description="Most inputs in one :predict call.")
    max_body_bytes: int = Field(1_000_000, ge=1, description="Largest request body in bytes; larger gets 413.")
    max_versions: int = Field(4, ge=0, description="Most versions loaded on demand at once (SKILL@N or SKILL@ALIAS other "
                                                   "than a production version); beyond it the least recently used idle one is unloaded.")
    drift: bool = Field(True, description="Watch each served skill's drift signals (skill.yaml's drift block) and emit the Prefect "
                                          "event distill.drift.detected when one leaves its band (needs PREFECT_API_URL; "
                                          "triggers are recorded in the traffic database either way).")
    # 100: a share estimated on 100 requests is within about 0.08 of the true one at 0.2 (95%), and a shift shows in it within a drift window.
    budget_window: int = Field(100, ge=0, le=100_000, description="Budget policy: the teacher share is held on live traffic over the last this many requests of a version (a valid answer below the threshold escalates only when it is among the weakest max_teacher_share of them; gateway/budget.py); 0: the published threshold alone.")
    overrides: dict[str, SkillOverride] = Field(default_factory=dict, description="Per-skill routing overrides, by skill name.")

    def table_for(self, skill: str) -> str:
        """The traffic table of `skill` (traffic_ticket_triage for ticket-triage)."""
        return self.traffic_table.format(skill=skill.replace("-", "_").replace(".", "_"))

    def override(self, skill: str) -> SkillOverride:
        return self.overrides.get(skill) or SkillOverride()
