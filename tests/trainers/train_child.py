"""Run one tiny training in a child process (tests/trainers/test_resume.py kills it halfway).

    python tests/trainers/train_child.py SKILL_ROOT MODEL OUT_DIR STEP_SLEEP_S

Each step end writes the step number to OUT_DIR/progress.txt and then sleeps, so the
parent can SIGKILL the run at a known step. Prints the TrainResult as one JSON line.
"""

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.trainers.resume_setup import config_and_data  # noqa: E402
from trainers.qlora import train_adapter  # noqa: E402


def main() -> None:
    root, model, out, pause = sys.argv[1], sys.argv[2], Path(sys.argv[3]), float(sys.argv[4])
    cfg, train, val = config_and_data(Path(root))
    out.mkdir(parents=True, exist_ok=True)
    seen: list[int] = []

    def progress(step: int, total: int, logs: dict) -> None:
        if not logs and step not in seen:
            seen.append(step)
            (out / "progress.txt").write_text(str(step))
            time.sleep(pause)

    res = train_adapter(model, cfg, train, val, out, progress=progress)
    d = res.to_dict()
    d["steps_run_here"] = seen
    print(json.dumps(d, default=str))


if __name__ == "__main__":
    main()
