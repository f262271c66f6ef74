"""Small skill folders of every task type, written into a test's tmp_path."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

WEATHER = {"type": "function", "function": {
    "name": "get_weather", "description": "Current weather for a city.",
    "parameters": {"type": "object", "properties": {
        "city": {"type": "string"},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "days": {"type": "integer", "minimum": 1},
        "tags": {"type": "array", "items": {"type": "string"}}},
        "required": ["city"]}}}
SEND = {"type": "function", "function": {
    "name": "send_email", "description": "Send an email.",
    "parameters": {"type": "object", "properties": {"to": {"type": "string"}, "body": {"type": "string"}},
                   "required": ["to", "body"]}}}

EXTRACT_SCHEMA = {"type": "object",
                  "properties": {"person": {"type": ["string", "null"]},
                                 "amount": {"type": ["number", "null"], "minimum": 0},
                                 "date": {"type": ["string", "null"], "description": "YYYY-MM-DD"}},
                  "required": ["person", "amount", "date"], "additionalProperties": False}


def call_input(request: str, *tools: dict) -> dict:
    return {"request": request, "tools": list(tools or (WEATHER, SEND))}


def config(task: str, name: str | None = None, **extra) -> dict:
    cfg = {"name": name or f"my-{task.replace('_', '-')}", "task": task, "instruction": f"Do the {task} task."}
    if task == "classification":
        cfg.update(labels=["yes", "no"], input_name="Question", output_name="Answer")
    elif task == "extraction":
        cfg.update(output_schema=EXTRACT_SCHEMA, input_name="Message", output_name="JSON")
    elif task == "function_call":
        cfg.update(input_name="Request", output_name="Call")
    cfg.update(extra)
    return cfg


def rows(task: str, kind: str, n: int = 3) -> list[dict]:
    """n valid rows of a seeds or eval file (distinct inputs per kind)."""
    out = []
    for i in range(n):
        tag = f"{kind} item {i}"
        if task == "classification":
            out.append({"id": f"{kind}-{i}", "input": f"is this {tag} fine", "output": "yes" if i % 2 else "no"})
        elif task == "extraction":
            out.append({"id": f"{kind}-{i}", "input": f"Ana paid {i + 1} EUR for {tag}.",
                        "output": {"person": "Ana", "amount": i + 1, "date": None}})
        elif task == "function_call":
            city = f"City{kind}{i}"
            answer = ({"name": "get_weather", "arguments": {"city": [city, f"{city}, X"], "unit": ["celsius", ""]}}
                      if kind == "eval" else {"name": "get_weather", "arguments": {"city": city, "unit": "celsius"}})
            out.append({"id": f"{kind}-{i}", "input": call_input(f"weather in {city} in celsius?"), "output": answer})
        else:
            out.append({"id": f"{kind}-{i}", "input": f"say hi to {tag}", "output": f"Hi {tag}!"})
    return out


def traffic(task: str, n: int = 2) -> list[dict]:
    out = []
    for r in rows(task, "traffic", n):
        ref = r["output"]
        out.append({"id": r["id"], "timestamp": f"2026-01-0{len(out) + 1}T00:00:00Z", "request": r["input"],
                    "reference": ref, "reference_source": "llm", "accepted": True})
    return out


def write_jsonl(path: Path, items: list) -> None:
    path.write_text("".join((x if isinstance(x, str) else json.dumps(x)) + "\n" for x in items))


def make_skill(root: Path, task: str, name: str | None = None, cfg: dict | None = None,
               seeds: list | None = None, evals: list | None = None, traffic_rows: list | None = None) -> Path:
    cfg = cfg or config(task, name)
    folder = root / cfg["name"]
    folder.mkdir(parents=True)
    (folder / "skill.yaml").write_text(yaml.safe_dump(cfg, sort_keys=False))
    write_jsonl(folder / "seeds.jsonl", rows(task, "seeds") if seeds is None else seeds)
    write_jsonl(folder / "eval.jsonl", rows(task, "eval") if evals is None else evals)
    write_jsonl(folder / "traffic.jsonl", traffic(task) if traffic_rows is None else traffic_rows)
    return folder
