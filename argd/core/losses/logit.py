"""Logit distillation (Hinton et al.): the student matches the teacher's softened class distribution.

Hard labels of a few thousand images say little beyond the class; the teacher's soft outputs also carry how
alike the classes are, which is what a student distilled from a clean teacher needs to keep its accuracy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def logit_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """`T^2 * KL(softmax(teacher / T) || softmax(student / T))`, averaged over the batch."""
    t = float(temperature)
    log_student = F.log_softmax(student.float() / t, dim=1)
    log_teacher = F.log_softmax(teacher.detach().float() / t, dim=1)
    return F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean") * (t * t)
