"""Backdoor attacks for benchmarking defenses and for the demo: they poison uint8 images of any shape.

`make_attack("badnets", target=0, rate=0.1, seed=0)` builds one by name; every attack offers `apply`,
`poison_train`, `poison_eval` and `target_for` (see `base.Attack` for the conventions: rate, all-to-one /
all-to-all, ASR). Trojan and CL take a clean model through `fit(model, data, spec=...)`.
"""

from __future__ import annotations

from typing import Any

from argd.core.attacks.badnets import BadNets
from argd.core.attacks.base import Attack, PoisonedTrainSet
from argd.core.attacks.blend import Blend
from argd.core.attacks.cl import CL
from argd.core.attacks.refool import Refool
from argd.core.attacks.sig import SIG
from argd.core.attacks.trojan import Trojan
from argd.core.attacks.wanet import WaNet
from argd.core.errors import InvalidInput

ATTACKS: dict[str, type[Attack]] = {cls.name: cls for cls in (BadNets, Trojan, Blend, CL, SIG, Refool, WaNet)}


def make_attack(name: str, **kw: Any) -> Attack:
    """Build the attack registered as `name` (case-insensitive) with keyword settings `kw`."""
    cls = ATTACKS.get(name.lower()) if isinstance(name, str) else None
    if cls is None:
        raise InvalidInput(
            f"unknown attack {name!r}; known: {', '.join(ATTACKS)}", details={"known": list(ATTACKS)}
        )
    try:
        return cls(**kw)
    except TypeError as exc:
        raise InvalidInput(f"bad settings for attack {name!r}: {exc}") from exc


__all__ = [
    "ATTACKS",
    "CL",
    "SIG",
    "Attack",
    "BadNets",
    "Blend",
    "PoisonedTrainSet",
    "Refool",
    "Trojan",
    "WaNet",
    "make_attack",
]
