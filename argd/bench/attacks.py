"""The attacks the defense benchmark runs: the engine's registry, not a second list of names."""

from __future__ import annotations

from argd.core.attacks import ATTACKS

ALL_ATTACKS: tuple[str, ...] = tuple(ATTACKS)
# The --quick smoke run: one local (patch) and one global (blended) trigger; the clean-label attacks need
# more training than a smoke run gives to implant reliably.
QUICK_ATTACKS: tuple[str, ...] = ("badnets", "blend")

if not set(QUICK_ATTACKS) <= set(ALL_ATTACKS):
    raise RuntimeError(
        f"QUICK_ATTACKS names attacks the engine lacks: {set(QUICK_ATTACKS) - set(ALL_ATTACKS)}"
    )
