"""The catalogue of method families: one list that validation, ``ltlib methods``, the app, the
benchmarks and the conformance tests all iterate.

A family is a registry plus the config fields that choose its entry (``loss``) and its parameters
(``loss_params``). ``toggle`` marks the families a user toggles as "the method" (the app's Lab, the
method tables); the others (dataset, model, norm) set the run up.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from ltlib import losses, mixing, optim, samplers, schedules
from ltlib.data import DATASETS
from ltlib.models import MODELS, NORMS
from ltlib.registry import Entry, Registry

if TYPE_CHECKING:
    from ltlib.config import Config


@dataclass(frozen=True)
class Family:
    name: str
    registry: Registry
    toggle: bool

    @property
    def params_field(self) -> str:
        return f"{self.name}_params"


FAMILIES: tuple[Family, ...] = (
    Family("dataset", DATASETS, toggle=False),
    Family("model", MODELS, toggle=False),
    Family("norm", NORMS, toggle=False),
    Family("loss", losses.LOSSES, toggle=True),
    Family("sampler", samplers.SAMPLERS, toggle=True),
    Family("mixing", mixing.MIXING, toggle=True),
    Family("schedule", schedules.SCHEDULES, toggle=True),
    Family("optimizer", optim.OPTIMIZERS, toggle=True),
)
METHOD_FAMILIES: tuple[Family, ...] = tuple(f for f in FAMILIES if f.toggle)
# What a dataset can offer a method: the traits a dataset entry declares when it provides them.
DATA_TRAITS = ("images", "domains")


def family(name: str) -> Family:
    for f in FAMILIES:
        if f.name == name:
            return f
    raise ValueError(f"unknown family {name!r}; families: {', '.join(f.name for f in FAMILIES)}")


def chosen(cfg: Config) -> list[tuple[Family, Entry, dict[str, Any]]]:
    """The entry and parameters the config picks in each family (the model only when not "auto")."""
    out = []
    for f in FAMILIES:
        name = getattr(cfg, f.name)
        if f.name == "model" and name == "auto":
            continue
        out.append((f, f.registry.get(name), getattr(cfg, f.params_field)))
    return out


def unmet_data_needs(entry: Entry, data_traits: frozenset[str] | set[str]) -> list[str]:
    """What ``entry`` needs of the data (images, domains) that a dataset with ``data_traits`` lacks."""
    return [t for t in DATA_TRAITS if t in entry.traits and t not in data_traits]


def check_data_needs(cfg: Config, data_traits: frozenset[str] | set[str]) -> None:
    """Raise ``ValueError`` when a chosen method needs images or domains that the dataset lacks."""
    for f, entry, _ in chosen(cfg):
        missing = unmet_data_needs(entry, data_traits) if f.toggle else []
        if "images" in missing:
            raise ValueError(f"{f.name} {entry.name!r} needs images; dataset {cfg.dataset!r} has feature vectors")
        if missing:
            raise ValueError(f"{entry.name} needs a dataset with domains, e.g. digits-domains (dataset {cfg.dataset!r} has none)")


def eager_reason(cfg: Config) -> str | None:
    """Why the config's methods cannot run in the captured graph step (None when they all can)."""
    for f, entry, _ in chosen(cfg):
        if entry.eager:
            return f"{f.name} {entry.name!r} {entry.eager}"
    return None
