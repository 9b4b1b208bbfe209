"""Read resources from YAML and explain, field by field, why one is invalid."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from modelplane_operator.api.base import CelRuleError
from modelplane_operator.api.resources import Resource, UnknownKindError, parse_resource


@dataclass(frozen=True)
class Problem:
    """One thing wrong with a resource: where, what, and the rule it breaks."""

    field: str
    message: str
    rule: str | None = None

    def __str__(self) -> str:
        text = f"{self.field}: {self.message}" if self.field else self.message
        return f"{text} [rule: {self.rule}]" if self.rule else text


@dataclass(frozen=True)
class Checked:
    """The outcome of validating one YAML document."""

    source: str
    name: str
    resource: Resource | None
    problems: tuple[Problem, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def _field(loc: tuple[int | str, ...]) -> str:
    parts: list[str] = []
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        else:
            parts.append(f".{item}" if parts else str(item))
    return "".join(parts)


def problems_of(error: ValidationError) -> list[Problem]:
    """pydantic's errors as Problems that name the field (camelCase, as in YAML)."""
    problems = []
    for err in error.errors(include_url=False):
        loc = tuple(err["loc"])
        cause = (err.get("ctx") or {}).get("error")
        if isinstance(cause, CelRuleError):
            field = _field(loc)
            if cause.rule.field_path:
                field = f"{field}{cause.rule.field_path}" if field else cause.rule.field_path[1:]
            problems.append(Problem(field, cause.rule.message, cause.rule.rule))
        elif err["type"] == "extra_forbidden":
            problems.append(Problem(_field(loc), "unknown field (check its spelling)"))
        else:
            message = err["msg"].removeprefix("Value error, ")
            problems.append(Problem(_field(loc), message))
    return problems


def _describe(obj: dict[str, Any]) -> str:
    meta = obj.get("metadata") if isinstance(obj.get("metadata"), dict) else {}
    return f"{obj.get('kind', '?')}/{(meta or {}).get('name', '?')}"


def check_object(obj: Any, source: str) -> Checked:
    """Validate one parsed YAML document."""
    if not isinstance(obj, dict):
        return Checked(source, "?", None, (Problem("", "a resource must be a mapping"),))
    name = _describe(obj)
    try:
        return Checked(source, name, parse_resource(obj), ())
    except UnknownKindError as exc:
        return Checked(source, name, None, (Problem("", str(exc)),))
    except ValidationError as exc:
        return Checked(source, name, None, tuple(problems_of(exc)))


def check_file(path: Path) -> Iterator[Checked]:
    """Validate every document in a YAML file; a YAML syntax error is one problem."""
    try:
        documents = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
    except (OSError, yaml.YAMLError) as exc:
        yield Checked(str(path), "?", None, (Problem("", f"cannot read: {exc}"),))
        return
    if not documents:
        yield Checked(str(path), "?", None, (Problem("", "the file holds no resource"),))
    for doc in documents:
        yield check_object(doc, str(path))
