"""The pipeline's memory: which stage ran with which inputs, so a rerun skips what is done.

One JSON file, rewritten atomically after every stage. A stage is keyed by a hash of everything it reads (its config
and its upstream results); a changed input changes the key, and the stage runs again. A result is saved through its
``to_dict()`` and recalled through its type's ``from_dict()`` (:mod:`pipelines.stage_results`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

from pipelines.outputs import write_json_atomic


def stage_key(*inputs: Any) -> str:
    """A stable hash of JSON-able inputs or stage results (dict order does not matter)."""
    text = json.dumps([plain(i) for i in inputs], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def plain(result: Any) -> Any:
    """A stage's result as JSON values: its ``to_dict()`` when it has one; paths become strings."""
    value = result.to_dict() if hasattr(result, "to_dict") else result
    return json.loads(json.dumps(value, default=str))


class StageLedger:
    """Records finished stages in ``path``; ``force`` forgets them all."""

    def __init__(self, path: str | Path, *, force: bool = False) -> None:
        self.path = Path(path)
        saved = {} if force or not self.path.is_file() else json.loads(self.path.read_text())
        self.run_id: str | None = saved.get("run_id")
        self.stages: dict[str, dict[str, Any]] = saved.get("stages", {})
        self.skipped: list[str] = []

    def once(self, name: str, key: str, work: Callable[[], Any], kind: type | None = None) -> Any:
        """The result of stage ``name``: recalled when it finished with the same ``key``, else computed and saved.

        ``kind``: the stage's result type; its ``to_dict()`` is saved and its ``from_dict()`` reads a recalled result
        back (a None result stays None). Without it the result is a JSON-able value, saved as it is.
        """
        done = self.stages.get(name)
        if done and done.get("key") == key and done.get("finished"):
            self.skipped.append(name)
            saved = done["result"]
            return kind.from_dict(saved) if kind is not None and saved is not None else saved
        self.stages[name] = {"key": key, "finished": False}
        self.save()
        result = work()
        self.stages[name] = {"key": key, "finished": True, "result": plain(result)}
        self.save()
        return result

    def started_with(self, name: str, key: str) -> bool:
        """True when ``name`` was started with ``key`` and did not finish (its partial work may be continued)."""
        entry = self.stages.get(name, {})
        return entry.get("key") == key and not entry.get("finished")

    def save(self) -> None:
        write_json_atomic(self.path, {"run_id": self.run_id, "stages": self.stages})
