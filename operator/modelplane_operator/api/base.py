"""The base of every API model: camelCase YAML, unknown fields refused, CEL rules.

A cross-field rule is declared once, as a `CelRule`: its CEL expression goes into the
CRD (`x-kubernetes-validations`, checked by the API server at `kubectl apply`) and its
Python predicate runs when the model is validated (`modelplane validate`, the operator).
Both report the same message, and an integration test holds the two to each other on
`examples/invalid/`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, model_validator
from pydantic.alias_generators import to_camel

CEL_KEY = "x-kubernetes-validations"


@dataclass(frozen=True)
class CelRule:
    """A cross-field rule, enforced by the API server (CEL) and by Python alike.

    `check` receives the validated model and returns True when the rule holds.
    `field_path` (a JSONPath relative to the model, e.g. ".max") makes both sides point
    at the offending field rather than the whole object.
    """

    rule: str
    message: str
    check: Callable[[Any], bool]
    field_path: str | None = None

    def to_schema(self) -> dict[str, str]:
        entry = {"rule": self.rule, "message": self.message}
        if self.field_path:
            entry["fieldPath"] = self.field_path
        return entry


class CelRuleError(ValueError):
    """A cross-field rule does not hold; carries the rule so errors can name it."""

    def __init__(self, rule: CelRule) -> None:
        super().__init__(rule.message)
        self.rule = rule


def _add_cel_rules(schema: dict[str, Any], cls: type[ApiModel]) -> None:
    rules = cls.__dict__.get("cel_rules", ())
    if rules:
        schema[CEL_KEY] = [rule.to_schema() for rule in rules]


class ApiModel(BaseModel):
    """Base for every spec and status model."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        validate_by_name=True,
        validate_by_alias=True,
        serialize_by_alias=True,
        extra="forbid",
        use_attribute_docstrings=True,
        json_schema_extra=_add_cel_rules,
    )

    cel_rules: ClassVar[tuple[CelRule, ...]] = ()

    @model_validator(mode="after")
    def _check_cel_rules(self) -> Self:
        for rule in type(self).__dict__.get("cel_rules", ()):
            if not rule.check(self):
                raise CelRuleError(rule)
        return self


class StatusModel(ApiModel):
    """Base for status models: the operator writes them, so unknown fields are kept.

    A newer operator may add status fields; an older reader must not fail on them.
    """

    model_config = ConfigDict(extra="ignore")
