"""The attacks the defense benchmark runs: the engine's registry, not a second list of names."""

from __future__ import annotations

from argd.core.attacks import ATTACKS

ALL_ATTACKS: tuple[str, ...] = tuple(ATTACKS)
# The --quick smoke run: one patch trigger, one blended trigger, one clean-label attack.
QUICK_ATTACKS: tuple[str, ...] = ("badnets", "blend", "sig")

if not set(QUICK_ATTACKS) <= set(ALL_ATTACKS):
    raise RuntimeError(
        f"QUICK_ATTACKS names attacks the engine lacks: {set(QUICK_ATTACKS) - set(ALL_ATTACKS)}"
    )
