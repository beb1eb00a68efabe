"""The retuning attack (Min et al., NeurIPS 2024, "superficial safety"): does a cleansed model relearn its
backdoor from a handful of poisoned images?

A defense can hide a backdoor instead of removing it: the trigger's path survives, merely switched off, and a
few steps on a few poisoned images switch it back on. The attack fine-tunes the cleansed model for 5 epochs at
lr 0.01 (no weight decay) on the clean subset with 5 triggered images labelled as the target mixed in, then
measures the ASR again. The same attack on the clean model (which never had a backdoor) is the floor: what
five images teach any model from scratch.

The five images are triggered test images (non-target classes) taken out of the evaluation set, so the ASR
after the attack is measured on images the attack did not train on. They carry the very trigger the victim
was trained with (including Trojan's fitted patch and CL's stamps), which a re-built training poison could
not promise for every attack. No defense sees them: the attack runs after the cleanse.
"""

from __future__ import annotations

import copy
import time
from collections.abc import Callable

import torch
from torch import nn

from argd.core.data import ImageData
from argd.core.metrics import evaluate
from argd.core.params import CleanseParams
from argd.core.spec import ModelSpec
from argd.core.trainer import Trainer

RETUNE_IMAGES = 5
RETUNE_EPOCHS = 5
RETUNE_LR = 0.01

#: The attack bound to one row's data: cleansed model -> {"asr", "seconds"}.
Retune = Callable[[nn.Module], dict[str, float | None]]


def split_retune_images(
    eval_set: ImageData, target: int, seed: int, count: int = RETUNE_IMAGES
) -> tuple[ImageData, ImageData]:
    """(the attack's `count` triggered images relabelled `target`, the rest of the evaluation set)."""
    order = torch.randperm(len(eval_set), generator=torch.Generator().manual_seed(seed + 31))
    chosen, rest = order[:count].sort().values, order[count:].sort().values
    attack = eval_set.subset(chosen)
    return ImageData(attack.x, torch.full_like(attack.y, target)), eval_set.subset(rest)


def retune_asr(
    model: nn.Module,
    spec: ModelSpec,
    clean: ImageData,
    poison: ImageData,
    remaining: ImageData,
    target: int,
    device: torch.device,
    seed: int,
) -> dict[str, float | None]:
    """Run the attack on a copy of `model`; returns {"asr", "seconds"} (ASR on `remaining`)."""
    started = time.perf_counter()
    params = CleanseParams(
        seed=seed,
        teacher="finetune",
        teacher_epochs=RETUNE_EPOCHS,
        teacher_lr=RETUNE_LR,
        teacher_lr_schedule="constant",
        weight_decay=0.0,
    )
    data = ImageData(torch.cat([clean.x, poison.x]).to(device), torch.cat([clean.y, poison.y]).to(device))
    attacked = copy.deepcopy(model).to(device)
    Trainer(attacked, data, spec, params, phase="teacher", device=device).fit()
    metrics = evaluate(attacked, spec, device, poisoned=remaining, target_label=target)
    return {"asr": metrics["asr"], "seconds": time.perf_counter() - started}
