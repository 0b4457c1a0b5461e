"""Parameters declared once: pydantic models whose fields give the CLI options, the job arguments and the pipeline's
defaults, and the one way user input becomes such a model (a refused value is one line naming its option).

:class:`PreprocessConfig` is here; training's :class:`cifarflow.train.config.TrainConfig` uses the same helpers.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Any, TypeVar, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from cifarflow.errors import InputError

M = TypeVar("M", bound=BaseModel)


def cli_option(name: str, value: Any) -> str:
    """How a field is given on the command line: ``batch_size`` -> ``--batch-size 0``."""
    return f"--{flag(name)} {value}"


def flag(name: str) -> str:
    """A field's option name without the dashes: ``batch_size`` -> ``batch-size``."""
    return name.replace("_", "-")


def parse(
    model: type[M],
    values: Mapping[str, Any],
    *,
    option: Callable[[str, Any], str] = cli_option,
    fixes: Mapping[str, str] | None = None,
) -> M:
    """A ``model`` from user input; a refused value is one :class:`InputError` naming its option."""
    try:
        return model.model_validate(dict(values))
    except ValidationError as exc:
        first = exc.errors()[0]
        name = str(first["loc"][0]) if first["loc"] else "config"
        raise InputError(
            f"{option(name, values.get(name))} is invalid: {first['msg'][0].lower()}{first['msg'][1:]}",
            (fixes or {}).get(name, "pass a value within the bound above"),
        ) from None


def defaults(model: type[BaseModel]) -> dict[str, Any]:
    """Every field's default (``None`` for required fields)."""
    return {name: field.default for name, field in model.model_fields.items()}


def choices(name: str, literal: Any) -> type[StrEnum]:
    """A ``StrEnum`` for the CLI from a ``Literal`` type, so the choices are declared once."""
    return StrEnum(name, {value: value for value in get_args(literal)})  # type: ignore[return-value]


def describe(model: type[BaseModel], name: str) -> str | None:
    """A field's description: the help text of its CLI option and of its pipeline parameter."""
    return model.model_fields[name].description


class PreprocessConfig(BaseModel):
    """What the Spark job computes besides the raw data (``partitions`` changes no row, only the read tasks)."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    val_fraction: float = Field(
        default=0.1, ge=0.0, le=0.5, description="Share of train held out, per class."
    )
    seed: int = Field(default=0, description="Seed of the train/val split.")
    partitions: int | None = Field(
        default=None, ge=1, description="Read tasks (binary records split to this; default: one per file)."
    )
    image_size: int | None = Field(
        default=None,
        ge=8,
        le=1024,
        description="Image folders: resize to NxN (shorter side, centre crop); default: their one size.",
    )
    strict: bool = Field(
        default=False, description="Image folders: stop at an undecodable file, not skip it."
    )


class PromoteConfig(BaseModel):
    """The promotion gate's thresholds (:func:`cifarflow.serve.promote.promote`): ``cifarflow promote``'s
    options and the pipeline's promote parameters."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    min_accuracy: float = Field(default=0.0, ge=0.0, le=1.0, description="Floor: never promote below it.")
    tolerance: float = Field(
        default=0.0, ge=0.0, le=1.0, description="Promote at the champion's accuracy minus this."
    )
    max_recall_drop: float = Field(
        default=0.10, ge=0.0, le=1.0, description="Largest fall of any class's recall."
    )


class DeployConfig(BaseModel):
    """What a deploy serves under which name (``cifarflow deploy``'s options, the pipeline's deploy
    parameters)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(default="cifarflow", min_length=1, description="Model name in the V2 protocol's URLs.")
    canary_percent: int = Field(
        default=100, ge=0, le=100, description="Traffic share of the new revision (100: all, no canary)."
    )

    @property
    def canary(self) -> int | None:
        """KServe's ``canaryTrafficPercent``: none when the new revision takes all traffic."""
        return None if self.canary_percent == 100 else self.canary_percent
