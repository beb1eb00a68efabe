"""CleanseParams: every hyperparameter of a cleanse job, validated, with named presets.

The REST API embeds this model as a job's `params` field (its JSON schema is the API's), the CLI fills it from
flags and the benchmark from its grid, so it is the one place where ranges and defaults live.

Presets:
- "reference": the settings of the public ARGD code on CIFAR-10 (lr 0.1/0.01/0.001 for epochs 0-2/3-5/6-9,
  node weights 2000/5000/2000, all term weights 1, frozen random embedding, 10 epochs, batch 64, a 10-epoch
  teacher), so anyone can reproduce the paper's behaviour, including its loss of clean accuracy outside
  CIFAR-10.
- "default": our defaults, chosen by the defense benchmark (README, "Benchmark results"). A plainly
  fine-tuned teacher keeps the backdoor on global triggers (blend: teacher ASR 99.7 %), and a student
  distilled from it cannot be cleaner than it. So the teacher is made by feature-shift tuning (FST: a
  re-initialised head pushed away from the uploaded one, 10 epochs at lr 0.01 cosine, no weight decay),
  and the student, a copy of the uploaded model, is pulled off the backdoor's features the same way (FST
  head) while it learns the clean teacher's attention graph (node, edge and embedding terms) and its
  softened outputs (logit distillation, weight 1, temperature 4). The ARG term weights bring each term near
  the cross-entropy's magnitude (measured at the start of distillation, WRN-16-1, 28 px: cross-entropy
  0.05-0.2, raw node term 0.2-4, edge term 5e-4-2e-3, embedding term about 0.02; hence w_node = 0.1,
  w_edge = 100, w_emb = 5); the embedding is trainable. The reference lr-0.1 phase is not used: with
  distillation terms many times larger than the cross-entropy it wrecks clean accuracy (ARGD.md).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

Method = Literal["argd", "nad", "finetune", "fst", "ft-sam"]
TeacherSource = Literal["finetune", "fst", "sam", "fst-sam", "uploaded"]
HeadMode = Literal["keep", "fst"]
PRESETS = ("default", "reference")
#: Weight decay of SGD phases that do not follow FST (FST's paper tunes without weight decay).
DEFAULT_WEIGHT_DECAY = 5e-4
#: Label smoothing of sharpness-aware phases (FT-SAM's published setting).
SAM_LABEL_SMOOTHING = 0.1


@dataclass(frozen=True)
class Recipe:
    """How one training phase tunes its network: the pieces every method and teacher combine.

    `head`: "fst" re-initialises the classifier head and pushes it away from the original one
    (feature-shift tuning) with weight `fst_alpha` (with `fst_hinge`, only until orthogonal), "keep" tunes it
    from where it is. `sam_rho`: radius of
    adaptive SAM, 0 for plain SGD steps. `distil`: whether the phase learns from a teacher (attention terms
    and logit distillation).
    """

    head: HeadMode
    fst_alpha: float
    sam_rho: float
    label_smoothing: float
    weight_decay: float
    distil: bool
    fst_hinge: bool = False


class CleanseParams(BaseModel):
    """Hyperparameters of teacher fine-tuning and student distillation (ARGD, NAD or plain fine-tuning)."""

    model_config = ConfigDict(extra="forbid")

    method: Method = Field(
        "argd",
        description="argd: all ARG terms; nad: node term only; finetune: cross-entropy only; fst: "
        "feature-shift tuning (no teacher); ft-sam: fine-tuning with adaptive SAM (no teacher)",
    )
    teacher: TeacherSource = Field(
        "fst",
        description="How argd and nad make their teacher: finetune (cross-entropy), fst (feature-shift "
        "tuning), sam (adaptive SAM), fst-sam (feature-shift tuning with adaptive SAM steps), uploaded (a "
        "teacher model given with the job)",
    )
    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="Seed of data split, shuffling, augmentation and init"
    )

    # Student schedule.
    epochs: int = Field(10, ge=1, le=1000, description="Distillation epochs")
    batch_size: int = Field(64, ge=2, le=8192)
    lr: float = Field(0.01, gt=0, le=10, description="Initial (peak) learning rate of the student")
    lr_schedule: Literal["cosine", "step", "constant"] = Field(
        "cosine", description="cosine: per-step decay to 0; step: multiply by gamma at each milestone epoch"
    )
    milestones: list[int] = Field(
        default_factory=list, description="Epochs where a step schedule decays the lr"
    )
    gamma: float = Field(0.1, gt=0, le=1, description="Step-schedule decay factor")
    lr_per_epoch: list[float] | None = Field(
        None, description="Explicit lr for each epoch (length = epochs); overrides lr_schedule when set"
    )
    momentum: float = Field(0.9, ge=0, lt=1)
    nesterov: bool = True
    weight_decay: float | None = Field(
        None, ge=0, le=0.1, description="SGD weight decay; null = 0 in FST phases (as published), else 5e-4"
    )

    # Tuning pieces (FST, SAM) for the student of argd/nad; fst and ft-sam use them as their whole method.
    student_head: HeadMode = Field(
        "fst",
        description="keep: tune the student's classifier head from the uploaded one; fst: re-initialise it "
        "and push it away from the uploaded one (feature-shift tuning)",
    )
    student_sam: bool = Field(
        True,
        description="Tune the argd/nad student with adaptive SAM steps (2x passes): a flatter student keeps "
        "global triggers out",
    )
    fst_alpha: float = Field(
        0.2, ge=0, le=100, description="Weight of FST's head term alpha * <W, W0> (W0: the uploaded head)"
    )
    student_fst_alpha: float | None = Field(
        None,
        ge=0,
        le=100,
        description="FST head weight of the argd/nad student; null = fst_alpha (the teacher's and fst's)",
    )
    student_fst_hinge: bool = Field(
        False,
        description="Push each row of the argd/nad student's head only until it is orthogonal to the "
        "uploaded head's row, not towards its opposite",
    )
    sam_rho: float = Field(2.0, gt=0, le=100, description="Radius of adaptive SAM (FT-SAM: 2)")
    student_sam_rho: float | None = Field(
        0.5,
        gt=0,
        le=100,
        description="SAM radius of the argd/nad student (with student_sam); null = sam_rho (the teacher's "
        "and ft-sam's)",
    )
    label_smoothing: float | None = Field(
        None, ge=0, lt=1, description="Cross-entropy label smoothing; null = 0.1 in SAM phases, else 0"
    )
    w_logit: float = Field(
        1.0, ge=0, le=1e4, description="Weight of logit distillation (KL to the teacher's softened outputs)"
    )
    kd_temperature: float = Field(4.0, gt=0, le=100, description="Temperature of logit distillation")
    w_uploaded_logit: float = Field(
        0.0,
        ge=0,
        le=1e4,
        description="argd: weight of logit distillation from the uploaded model's own outputs on the clean "
        "subset (more clean accuracy, but it brings global triggers back); 0 off",
    )

    # Teacher.
    teacher_epochs: int = Field(
        10, ge=0, le=1000, description="Epochs of the teacher (0: use the uploaded model as is)"
    )
    teacher_lr: float = Field(0.01, gt=0, le=10)
    teacher_lr_schedule: Literal["cosine", "constant"] = "cosine"

    # Loss terms.
    beta: list[float] | None = Field(
        None, description="Node-loss weight per feature level (shallow to deep); null = architecture default"
    )
    w_node: float = Field(0.1, ge=0, le=1e6, description="Weight of the vertex (node) loss")
    w_edge: float = Field(100.0, ge=0, le=1e6, description="Weight of the edge loss")
    w_emb: float = Field(5.0, ge=0, le=1e8, description="Weight of the embedding loss")
    attention_p: float = Field(2.0, gt=0, le=8, description="Exponent p of the attention map sum_c |F_c|^p")
    embedding_trainable: bool = Field(
        True,
        description="Train the embedding projections with the student (false: frozen random, as released)",
    )
    embedding_dim: int = Field(128, ge=8, le=1024, description="Width of the query/key projections")

    # Augmentation (sizes at 32 px; null = scaled with the image size).
    crop_padding: int | None = Field(
        None, ge=0, le=64, description="Random-crop padding; null = 4 at 32 px, scaled"
    )
    flip: bool = Field(True, description="Random horizontal flip (turn off for digits and text)")
    cutout: int | None = Field(
        None, ge=0, le=256, description="Cutout square side; null = 3 at 32 px, scaled; 0 off"
    )

    # Model selection.
    val_fraction: float = Field(
        0.0, ge=0, le=0.5, description="Share of the clean subset held out for validation"
    )
    selection: Literal["last", "validation"] = Field(
        "last",
        description="Output epoch: the last one, or the best clean validation accuracy (needs val_fraction)",
    )

    # Execution.
    amp: Literal["auto", "bf16", "fp16", "off"] = Field(
        "auto", description="Mixed precision (auto: bf16/fp16 on CUDA)"
    )
    channels_last: bool = False
    eval_batch_size: int = Field(512, ge=1, le=65536)
    num_threads: int | None = Field(
        None, ge=1, le=256, description="CPU threads for torch (null: leave as is)"
    )

    @model_validator(mode="after")
    def _check(self) -> CleanseParams:
        if self.milestones != sorted(set(self.milestones)) or any(m < 1 for m in self.milestones):
            raise ValueError("milestones must be strictly increasing epochs >= 1")
        if self.lr_per_epoch is not None:
            if len(self.lr_per_epoch) != self.epochs:
                raise ValueError(
                    f"lr_per_epoch needs {self.epochs} values (one per epoch), got {len(self.lr_per_epoch)}"
                )
            if not all(math.isfinite(v) and 0 <= v <= 10 for v in self.lr_per_epoch):
                raise ValueError("lr_per_epoch values must be in [0, 10]")
        if self.beta is not None and (
            not self.beta or not all(math.isfinite(b) and 0 <= b <= 1e7 for b in self.beta)
        ):
            raise ValueError("beta must be a non-empty list of weights in [0, 1e7]")
        if self.selection == "validation" and self.val_fraction <= 0:
            raise ValueError("selection 'validation' needs val_fraction > 0")
        return self

    @classmethod
    def preset(cls, name: str = "default", **overrides: Any) -> CleanseParams:
        """A named preset ("default" or "reference") with `overrides` applied and validated."""
        if name == "default":
            base: dict[str, Any] = {}
        elif name == "reference":
            base = {
                "epochs": 10,
                "batch_size": 64,
                "lr": 0.1,
                "lr_schedule": "step",
                "milestones": [3, 6],
                "gamma": 0.1,
                "momentum": 0.9,
                "nesterov": True,
                "weight_decay": 1e-4,
                "teacher": "finetune",
                "student_head": "keep",
                "student_sam": False,
                "w_logit": 0.0,
                "teacher_epochs": 10,
                "teacher_lr": 0.01,
                "teacher_lr_schedule": "constant",
                "beta": [2000.0, 5000.0, 2000.0],
                "w_node": 1.0,
                "w_edge": 1.0,
                "w_emb": 1.0,
                "embedding_trainable": False,
                "embedding_dim": 128,
                "selection": "last",
                "val_fraction": 0.0,
            }
        else:
            raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
        return cls.model_validate({**base, **overrides})

    def effective_weights(self) -> dict[str, float]:
        """The distillation weights the method actually uses: nad keeps only the node term; finetune, fst
        and ft-sam learn from no teacher."""
        if self.method == "nad":
            return {"node": self.w_node, "edge": 0.0, "emb": 0.0, "logit": 0.0, "uploaded": 0.0}
        if self.method == "argd":
            return {
                "node": self.w_node,
                "edge": self.w_edge,
                "emb": self.w_emb,
                "logit": self.w_logit,
                "uploaded": self.w_uploaded_logit,
            }
        return {"node": 0.0, "edge": 0.0, "emb": 0.0, "logit": 0.0, "uploaded": 0.0}

    @property
    def needs_teacher(self) -> bool:
        """Whether the student phase learns from a teacher (argd and nad with any non-zero weight)."""
        return any(w > 0 for w in self.effective_weights().values())

    def recipe(self, phase: str) -> Recipe:
        """The pieces phase "teacher" or "distill" (the student) is made of; see `Recipe`."""
        alpha, hinge, rho = self.fst_alpha, False, self.sam_rho
        if phase == "teacher":
            head: HeadMode = "fst" if self.teacher in ("fst", "fst-sam") else "keep"
            sam, distil = self.teacher in ("sam", "fst-sam"), False
        elif self.method == "fst":
            head, sam, distil = "fst", False, False
        elif self.method == "ft-sam":
            head, sam, distil = "keep", True, False
        elif self.method == "finetune":
            head, sam, distil = "keep", False, False
        else:
            head, sam, distil = self.student_head, self.student_sam, self.needs_teacher
            if self.student_fst_alpha is not None:
                alpha = self.student_fst_alpha
            if self.student_sam_rho is not None:
                rho = self.student_sam_rho
            hinge = self.student_fst_hinge
        smoothing = self.label_smoothing
        if smoothing is None:
            smoothing = SAM_LABEL_SMOOTHING if sam else 0.0
        decay = self.weight_decay
        if decay is None:
            decay = 0.0 if head == "fst" else DEFAULT_WEIGHT_DECAY
        return Recipe(head, alpha, rho if sam else 0.0, smoothing, decay, distil, hinge)

    def teacher_problem(self, uploaded: bool) -> str | None:
        """Why this job's teacher setting cannot run with (`uploaded`) or without an uploaded teacher model;
        None when it can."""
        if uploaded and not self.needs_teacher:
            return f"method {self.method!r} learns from no teacher, so an uploaded teacher has no use"
        if uploaded and self.teacher != "uploaded":
            return (
                f"a teacher model was given but teacher is {self.teacher!r}; set teacher to 'uploaded' "
                "or leave the teacher model out"
            )
        if not uploaded and self.teacher == "uploaded" and self.needs_teacher:
            return "teacher 'uploaded' needs a teacher model (teacher_model_id, or --teacher FILE)"
        return None

    def lr_at(self, epoch: int, progress: float = 0.0) -> float:
        """Student lr at `epoch` (0-based) and `progress` in [0, 1) through it."""
        if self.lr_per_epoch is not None:
            return float(self.lr_per_epoch[epoch])
        return _scheduled(
            self.lr, self.lr_schedule, self.epochs, epoch, progress, self.milestones, self.gamma
        )

    def teacher_lr_at(self, epoch: int, progress: float = 0.0) -> float:
        """Teacher lr at `epoch` (0-based) and `progress` in [0, 1) through it."""
        return _scheduled(
            self.teacher_lr, self.teacher_lr_schedule, self.teacher_epochs, epoch, progress, [], 1.0
        )

    def augmentation_sizes(self, image_size: int) -> tuple[int, int]:
        """(crop padding, cutout side) for `image_size`, scaling the 32-px defaults (4 and 3) when unset."""
        padding = self.crop_padding if self.crop_padding is not None else scale_to_image(4, image_size)
        cutout = self.cutout if self.cutout is not None else scale_to_image(3, image_size)
        return padding, cutout


def scale_to_image(size_at_32: int, image_size: int) -> int:
    """A pixel size given for 32-px images, scaled to `image_size` (at least 1 when the original is >= 1)."""
    if size_at_32 <= 0:
        return 0
    return max(1, round(size_at_32 * image_size / 32))


def _scheduled(
    base: float, kind: str, epochs: int, epoch: int, progress: float, milestones: list[int], gamma: float
) -> float:
    if kind == "constant":
        return base
    if kind == "step":
        return base * gamma ** sum(1 for m in milestones if epoch >= m)
    t = (epoch + progress) / max(epochs, 1)
    return base * 0.5 * (1.0 + math.cos(math.pi * min(max(t, 0.0), 1.0)))
