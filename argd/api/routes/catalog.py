"""`/v1/architectures` and `/v1/presets`: the read-only catalogue a client builds its forms from.

The web console picks a model's architecture and a job's starting parameters from these, so it needs no
private endpoint and no copy of the registry; a script can use them to check a spec before uploading.
"""

from __future__ import annotations

from fastapi import APIRouter

from argd.api.deps import PrincipalDep
from argd.api.errors import problem_responses
from argd.api.schemas import ArchitectureKwarg, ArchitectureList, ArchitectureOut, PresetList, PresetOut
from argd.core.params import PRESETS, CleanseParams

router = APIRouter(prefix="/v1", tags=["catalog"])

PRESET_DESCRIPTIONS = {
    "default": "The defaults chosen by the defense benchmark (an FST teacher, the student with the FST "
    "head, the ARG terms and logit distillation)",
    "reference": "The ARGD paper's setting (fine-tuned teacher, lr 0.1 step schedule, node weights "
    "2000/5000/2000), kept to reproduce its behaviour",
}


@router.get(
    "/architectures",
    operation_id="listArchitectures",
    summary="List the architectures a model spec may name",
    response_model=ArchitectureList,
    responses=problem_responses(401),
)
def list_architectures(principal: PrincipalDep) -> ArchitectureList:
    """The allowlisted registry: ids, families, accepted `arch_kwargs` and default attention levels."""
    from argd.core.architectures import ARCHITECTURES  # torch: loaded on first use, as uploads do

    items = [
        ArchitectureOut(
            id=info.id,
            family=info.family,
            description=info.description,
            arch_kwargs=[
                ArchitectureKwarg(name=name, type=kwarg.type.__name__, help=kwarg.help)
                for name, kwarg in sorted(info.kwargs.items())
            ],
            feature_layers=info.feature_layers,
        )
        for info in ARCHITECTURES.values()
    ]
    return ArchitectureList(items=items)


@router.get(
    "/presets",
    operation_id="listPresets",
    summary="List the parameter presets",
    response_model=PresetList,
    responses=problem_responses(401),
)
def list_presets(principal: PrincipalDep) -> PresetList:
    """Each named preset with every parameter filled in (`params` of a job accepts any subset)."""
    return PresetList(
        items=[
            PresetOut(
                name=name,
                description=PRESET_DESCRIPTIONS.get(name, name),
                params=CleanseParams.preset(name).model_dump(mode="json"),
            )
            for name in PRESETS
        ]
    )
