"""JobError: everything wrong with a job file, each problem tied to the field it concerns."""

from __future__ import annotations

from collections.abc import Sequence

from sfp_core import UserError


class JobError(UserError, ValueError):
    """A job file (or its --set overrides) cannot be used; `issues` are (field, problem) pairs."""

    def __init__(self, source: str, issues: Sequence[tuple[str, str]]):
        self.source = source
        self.issues = list(issues)
        super().__init__(self.render())

    def render(self) -> str:
        lines = [f"{self.source}: {len(self.issues)} problem{'s' if len(self.issues) != 1 else ''}"]
        lines += [f"  {field}: {problem}" if field else f"  {problem}" for field, problem in self.issues]
        return "\n".join(lines)
