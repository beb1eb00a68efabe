"""One trainer for both phases of a job: making the teacher, and training the student (the cleansed model).

Each phase is a `Recipe` (`CleanseParams.recipe`) of the same small pieces:
- cross-entropy on the clean subset (with label smoothing in SAM phases);
- `Distillation` from a frozen teacher: the ARG attention terms (`ARGLoss`: node, edge, embedding) and
  logit distillation; ARGD, NAD and plain fine-tuning differ only in the weights
  (`CleanseParams.effective_weights`); optionally also logit distillation from the frozen uploaded model's
  own outputs on the clean subset (more clean accuracy, but those outputs carry a global trigger's
  response, so it is off by default: bench/RESULTS.md);
- FST's head (`ShiftedHead`): a re-initialised classifier head pushed away from the uploaded one;
- adaptive SAM steps (`AdaptiveSAM`) instead of plain SGD steps.
The loop is built for small clean subsets on a GPU:
- the data sit on the device as uint8 tensors; a batch is an index slice of a permutation drawn from a seeded
  device generator and is augmented there, in batch (no per-image Python, no DataLoader workers);
- the teacher runs in eval mode under `no_grad`; both networks' attention levels are read with `FeatureTap`;
- mixed precision on CUDA (bf16 where supported, else fp16 with a GradScaler), optional channels_last;
- losses are accumulated on the device and synced with the host at most about once a second (for progress)
  and once per epoch (for the history), never once per batch.

Resumability: the learning rate is a pure function of (epoch, position in epoch), so the "scheduler state" is
the epoch counter. `state_dict()` holds the model, the loss module (embedding), the optimiser, the grad
scaler, the device generator and the global RNG states, FST's original head, the history and the best-so-far
model; a trainer restored from it after epoch k continues exactly as the uninterrupted run would have, bit for
bit on CPU.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from argd.core.architectures import get_architecture
from argd.core.augment import Augmenter, Normalizer
from argd.core.checkpoint import cpu_state
from argd.core.data import ImageData
from argd.core.device import amp_dtype, autocast, make_grad_scaler, seeded_generator
from argd.core.errors import ArgdError, Cancelled, InvalidInput
from argd.core.features import FeatureTap, default_node_weights, resolve_feature_layers
from argd.core.head import ShiftedHead, find_head
from argd.core.losses import ARGLoss, EmbeddingLoss
from argd.core.losses.logit import logit_loss
from argd.core.metrics import predict
from argd.core.params import CleanseParams
from argd.core.sam import AdaptiveSAM
from argd.core.spec import ModelSpec

Phase = Literal["teacher", "distill"]
LOSS_NAMES = ("ce", "node", "edge", "emb", "logit", "uploaded", "head", "total")
#: Seconds between host syncs of the running losses for per-batch progress events.
PROGRESS_SYNC_SECONDS = 1.0
_PHASE_SEED_OFFSET = {"teacher": 1, "distill": 2}


@dataclass
class ProgressEvent:
    """One progress report: after every batch (cheap) and at the end of every epoch (with metrics).

    `epoch` and `batch` count from 1. Per-batch `losses` are running means of the current epoch, refreshed at
    most about once a second (empty before the first refresh); at the end of an epoch they are the epoch's
    means and `metrics` holds what was measured then (e.g. `val_acc`), otherwise `metrics` is None.
    """

    phase: str
    epoch: int
    epochs: int
    batch: int
    batches: int
    losses: dict[str, float] = field(default_factory=dict)
    metrics: dict[str, Any] | None = None
    end_of_epoch: bool = False


ProgressCallback = Callable[[ProgressEvent], None]


def no_terms(like: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every distillation term at zero (float32, on `like`'s device): what a phase without them reports."""
    zero = like.new_zeros((), dtype=torch.float32)
    return {"node": zero, "edge": zero, "emb": zero, "logit": zero, "uploaded": zero, "total": zero}


@dataclass
class Distillation:
    """Everything the student learns from frozen networks, in one place: the teacher, the tapped levels of
    both networks, the attention terms (None when only logits are distilled), the logit weight, and the
    uploaded model whose own clean outputs the student also matches (weight `w_uploaded`, 0: not used)."""

    teacher: nn.Module
    student_layers: list[str]
    teacher_layers: list[str]
    attention: ARGLoss | None
    w_logit: float
    temperature: float
    uploaded: nn.Module | None = None
    w_uploaded: float = 0.0
    student_tap: FeatureTap | None = None
    teacher_tap: FeatureTap | None = None

    def open(self, student: nn.Module) -> None:
        """Start recording both networks' attention levels (nothing when no attention term runs)."""
        if self.attention is not None:
            self.student_tap = FeatureTap(student, self.student_layers).__enter__()
            self.teacher_tap = FeatureTap(self.teacher, self.teacher_layers).__enter__()

    def close(self) -> None:
        for tap in (self.student_tap, self.teacher_tap):
            if tap is not None:
                tap.remove()
        self.student_tap = self.teacher_tap = None

    def targets(self, x: torch.Tensor) -> Targets:
        """The frozen networks' logits on a batch (the uploaded model's only when its weight is set)."""
        with torch.no_grad():
            teacher: torch.Tensor = self.teacher(x)
            uploaded = self.uploaded(x) if self.uploaded is not None and self.w_uploaded > 0 else None
        return Targets(teacher, uploaded)

    def terms(self, student_logits: torch.Tensor, targets: Targets) -> dict[str, torch.Tensor]:
        """Unweighted node, edge, emb, logit and uploaded-logit terms, and their weighted sum "total"."""
        out = no_terms(student_logits)
        if self.attention is not None:
            assert self.student_tap is not None and self.teacher_tap is not None
            out.update(self.attention(self.student_tap.features, self.teacher_tap.features))
            self.student_tap.clear()
        if self.w_logit > 0:
            out["logit"] = logit_loss(student_logits, targets.teacher, self.temperature)
            out["total"] = out["total"] + self.w_logit * out["logit"]
        if targets.uploaded is not None:
            out["uploaded"] = logit_loss(student_logits, targets.uploaded, self.temperature)
            out["total"] = out["total"] + self.w_uploaded * out["uploaded"]
        return out


@dataclass(frozen=True)
class Targets:
    """What the frozen networks answered on one batch: the teacher's logits and, where the student also
    matches the uploaded model, its logits."""

    teacher: torch.Tensor
    uploaded: torch.Tensor | None = None


def level_shapes(
    model: nn.Module, layers: list[str], spec: ModelSpec, device: torch.device
) -> list[tuple[int, int]]:
    """(H, W) of each tapped level, from one dummy forward in eval mode (batch-norm statistics untouched)."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), FeatureTap(model, layers) as tap:
            model(torch.zeros(2, spec.in_channels, spec.image_size, spec.image_size, device=device))
            return [(int(f.shape[-2]), int(f.shape[-1])) for f in tap.features]
    finally:
        model.train(was_training)


class Trainer:
    """Trains `model` in place for one phase; see the module docstring.

    `train` and `val` must already be on `device`. For phase "distill" with any non-zero term weight a
    `teacher` is required; it is put in eval mode with gradients off, and so is `uploaded` (the model as
    uploaded, needed when `w_uploaded_logit` is set). `feature_layers` default to
    `resolve_feature_layers(model, spec)`, `teacher_feature_layers` to the same names, `beta` to
    `params.beta` or the architecture's default node weights.
    """

    def __init__(
        self,
        model: nn.Module,
        train: ImageData,
        spec: ModelSpec,
        params: CleanseParams,
        *,
        phase: Phase,
        device: torch.device,
        teacher: nn.Module | None = None,
        feature_layers: list[str] | None = None,
        teacher_feature_layers: list[str] | None = None,
        teacher_spec: ModelSpec | None = None,
        uploaded: nn.Module | None = None,
        val: ImageData | None = None,
        progress: ProgressCallback | None = None,
        should_cancel: Callable[[], bool] | None = None,
        on_epoch_end: Callable[[Trainer], None] | None = None,
    ) -> None:
        if phase not in ("teacher", "distill"):
            raise ValueError(f"unknown phase {phase!r}")
        if len(train) < 2:
            raise InvalidInput(f"training needs at least 2 clean images, got {len(train)}")
        self.model, self.train_data, self.spec, self.params = model, train, spec, params
        self.phase, self.device, self.val = phase, device, val
        self.progress, self.should_cancel, self.on_epoch_end = progress, should_cancel, on_epoch_end
        self.epochs = params.teacher_epochs if phase == "teacher" else params.epochs
        self.batch_size = min(params.batch_size, len(train))
        self.batches = len(train) // self.batch_size + (1 if len(train) % self.batch_size >= 2 else 0)

        padding, cutout_size = params.augmentation_sizes(spec.image_size)
        self.augment = Augmenter(
            Normalizer.for_spec(spec, device), padding, params.flip, cutout_size, params.channels_last
        )
        self.amp_dtype = amp_dtype(device, params.amp)
        self.scaler = make_grad_scaler(device, self.amp_dtype)
        self.generator = seeded_generator(device, params.seed * 10 + _PHASE_SEED_OFFSET[phase])

        self.recipe = params.recipe(phase)
        self.distillation: Distillation | None = None
        if self.recipe.distil:
            if teacher is None:
                raise ValueError(f"method {params.method!r} distils from a teacher, but none was given")
            self.distillation = self._build_distillation(
                teacher.eval().requires_grad_(False), feature_layers, teacher_feature_layers, teacher_spec
            )
            w_uploaded = params.effective_weights()["uploaded"]
            if w_uploaded > 0:
                if uploaded is None:
                    raise ValueError("w_uploaded_logit is set, but the uploaded model was not given")
                self.distillation.uploaded = uploaded.eval().requires_grad_(False)
                self.distillation.w_uploaded = w_uploaded
        self.shifted_head: ShiftedHead | None = None
        if self.recipe.head == "fst":
            head = find_head(model, get_architecture(spec.architecture).head)
            self.shifted_head = ShiftedHead(head, self.recipe.fst_alpha, self.recipe.fst_hinge)
            self.shifted_head.reinitialise(self.generator)

        self.model.train()
        model_params = [p for p in self.model.parameters() if p.requires_grad]
        trainable = list(model_params)
        if self.distillation is not None and self.distillation.attention is not None:
            trainable += [p for p in self.distillation.attention.parameters() if p.requires_grad]
        self.optimizer = torch.optim.SGD(
            trainable,
            lr=self._lr(0, 0.0),
            momentum=params.momentum,
            nesterov=params.nesterov and params.momentum > 0,
            weight_decay=self.recipe.weight_decay,
        )
        self.sam = AdaptiveSAM(model_params, self.recipe.sam_rho) if self.recipe.sam_rho > 0 else None
        self.epoch = 0  # epochs completed
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] | None = None  # {"epoch", "val_acc", "model"} when selecting by validation

    # ------------------------------------------------------------------ construction helpers
    def _build_distillation(
        self,
        teacher: nn.Module,
        feature_layers: list[str] | None,
        teacher_feature_layers: list[str] | None,
        teacher_spec: ModelSpec | None,
    ) -> Distillation:
        params = self.params
        weights = params.effective_weights()
        if not any(weights[t] > 0 for t in ("node", "edge", "emb")):
            return Distillation(teacher, [], [], None, weights["logit"], params.kd_temperature)
        layers = list(feature_layers or resolve_feature_layers(self.model, self.spec))
        t_spec = teacher_spec or self.spec
        if teacher_feature_layers:
            teacher_layers = list(teacher_feature_layers)
        elif teacher_spec is not None:
            teacher_layers = resolve_feature_layers(teacher, t_spec)
        else:
            teacher_layers = list(layers)
        s_shapes = level_shapes(self.model, layers, self.spec, self.device)
        t_shapes = level_shapes(teacher, teacher_layers, t_spec, self.device)
        if (weights["node"] > 0 or weights["edge"] > 0) and len(s_shapes) != len(t_shapes):
            raise InvalidInput(
                f"student has {len(s_shapes)} attention levels and teacher {len(t_shapes)}: the node and "
                "edge losses need the same number of levels",
                details={"student_layers": layers, "teacher_layers": teacher_layers},
            )
        if weights["node"] > 0 and s_shapes != t_shapes:
            raise InvalidInput(
                f"student level resolutions {s_shapes} differ from the teacher's {t_shapes}: the node loss "
                "compares maps of the same resolution",
                details={"student": s_shapes, "teacher": t_shapes},
            )
        beta = (
            list(params.beta) if params.beta is not None else default_node_weights(self.spec, len(s_shapes))
        )
        if len(beta) != len(s_shapes):
            raise InvalidInput(
                f"beta has {len(beta)} node weights but the model has {len(s_shapes)} attention levels "
                f"({', '.join(layers)})",
                details={"beta": beta, "feature_layers": layers},
            )
        embedding = None
        if weights["emb"] > 0:
            embedding = EmbeddingLoss(
                s_shapes,
                t_shapes,
                dim=params.embedding_dim,
                trainable=params.embedding_trainable,
                seed=params.seed,
            ).to(self.device)
        attention = ARGLoss(
            beta,
            w_node=weights["node"],
            w_edge=weights["edge"],
            w_emb=weights["emb"],
            p=params.attention_p,
            embedding=embedding,
        )
        return Distillation(
            teacher, layers, teacher_layers, attention, weights["logit"], params.kd_temperature
        )

    @property
    def layers(self) -> list[str]:
        """The student's tapped attention levels (empty when no attention term runs)."""
        return list(self.distillation.student_layers) if self.distillation is not None else []

    @property
    def beta(self) -> list[float] | None:
        """The node weights used (None when no attention term runs)."""
        if self.distillation is None or self.distillation.attention is None:
            return None
        return list(self.distillation.attention.beta)

    @property
    def attention(self) -> ARGLoss | None:
        return self.distillation.attention if self.distillation is not None else None

    def _lr(self, epoch: int, progress: float) -> float:
        if self.phase == "teacher":
            return self.params.teacher_lr_at(epoch, progress)
        return self.params.lr_at(epoch, progress)

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue after the last completed epoch (CPU tensors, weights_only-safe)."""
        state: dict[str, Any] = {
            "phase": self.phase,
            "epoch": self.epoch,
            "epochs": self.epochs,
            "model": cpu_state(self.model),
            "loss_fn": cpu_state(self.attention) if self.attention is not None else None,
            "shifted_head": self.shifted_head.state_dict() if self.shifted_head is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "device_type": self.device.type,
            "generator": self.generator.get_state(),
            "cpu_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
            "history": [dict(h) for h in self.history],
            "best": self.best,
        }
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a `state_dict()` taken after some epoch of the same phase and settings."""
        if state.get("phase") != self.phase or state.get("epochs") != self.epochs:
            raise ArgdError(
                f"checkpoint is for phase {state.get('phase')!r} with {state.get('epochs')} epochs, "
                f"not {self.phase!r} with {self.epochs}",
                code="bad_checkpoint",
            )
        self.model.load_state_dict(state["model"])
        if self.attention is not None and state.get("loss_fn") is not None:
            self.attention.load_state_dict(state["loss_fn"])
        if self.shifted_head is not None and state.get("shifted_head") is not None:
            self.shifted_head.load_state_dict(state["shifted_head"])
        self.optimizer.load_state_dict(state["optimizer"])
        if self.scaler is not None and state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.epoch = int(state["epoch"])
        torch.set_rng_state(state["cpu_rng"])
        if state.get("device_type") == self.device.type:
            self.generator.set_state(state["generator"])
            if self.device.type == "cuda" and state.get("cuda_rng") is not None:
                torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        else:
            # A job resumed on another kind of device (e.g. GPU checkpoint, CPU worker): the generator states
            # are not interchangeable, so continue with a fresh, still deterministic, stream.
            self.generator.manual_seed(
                self.params.seed * 10 + _PHASE_SEED_OFFSET[self.phase] + 1000 * self.epoch
            )
        self.history = [dict(h) for h in state["history"]]
        self.best = state.get("best")

    # ------------------------------------------------------------------ training
    def fit(self) -> list[dict[str, Any]]:
        """Run the remaining epochs; returns the history. With selection "validation" the model ends with the
        weights of its best validation epoch."""
        self.model.train()
        if self.distillation is not None:
            self.distillation.open(self.model)
        try:
            while self.epoch < self.epochs:
                self._run_epoch()
                if self.on_epoch_end is not None:
                    self.on_epoch_end(self)
        finally:
            if self.distillation is not None:
                self.distillation.close()
        if self.params.selection == "validation" and self.best is not None:
            self.model.load_state_dict(self.best["model"])
        return self.history

    def _run_epoch(self) -> None:
        epoch, started = self.epoch, time.perf_counter()
        x_all, y_all = self.train_data.x, self.train_data.y
        order = torch.randperm(len(self.train_data), generator=self.generator, device=self.device)
        sums = torch.zeros(len(LOSS_NAMES), device=self.device)
        running: dict[str, float] = {}
        last_sync = time.monotonic()
        for batch in range(self.batches):
            if self.should_cancel is not None and self.should_cancel():
                raise Cancelled(f"cancelled during {self.phase} epoch {epoch + 1}, before batch {batch + 1}")
            for group in self.optimizer.param_groups:
                group["lr"] = self._lr(epoch, batch / self.batches)
            index = order[batch * self.batch_size : (batch + 1) * self.batch_size]
            x = self.augment(x_all[index], self.generator)
            losses = self._step(x, y_all[index])
            sums += losses
            if self.progress is not None:
                now = time.monotonic()
                if now - last_sync >= PROGRESS_SYNC_SECONDS:
                    running = dict(zip(LOSS_NAMES, (sums / (batch + 1)).tolist(), strict=True))
                    last_sync = now
                self.progress(
                    ProgressEvent(self.phase, epoch + 1, self.epochs, batch + 1, self.batches, dict(running))
                )
        means = dict(zip(LOSS_NAMES, (sums / self.batches).tolist(), strict=True))
        if not all(math.isfinite(v) for v in means.values()):
            raise ArgdError(
                f"{self.phase} training diverged in epoch {epoch + 1} (losses {means}); lower the learning "
                "rate or the distillation weights",
                code="diverged",
                details={"phase": self.phase, "epoch": epoch + 1},
            )
        record: dict[str, Any] = {
            "phase": self.phase,
            "epoch": epoch + 1,
            "losses": means,
            "lr": self._lr(epoch, 0.0),
        }
        metrics: dict[str, Any] = {}
        if self.val is not None and len(self.val) > 0:
            predictions = predict(
                self.model,
                self.val,
                self.spec,
                self.device,
                self.params.eval_batch_size,
                channels_last=self.params.channels_last,
            )
            val_acc = float((predictions == self.val.y.cpu()).float().mean())
            record["val_acc"] = metrics["val_acc"] = val_acc
            if self.params.selection == "validation" and (
                self.best is None or val_acc > self.best["val_acc"]
            ):
                self.best = {"epoch": epoch + 1, "val_acc": val_acc, "model": cpu_state(self.model)}
        record["seconds"] = metrics["seconds"] = time.perf_counter() - started
        self.history.append(record)
        self.epoch = epoch + 1
        if self.progress is not None:
            self.progress(
                ProgressEvent(
                    self.phase,
                    epoch + 1,
                    self.epochs,
                    self.batches,
                    self.batches,
                    means,
                    metrics,
                    end_of_epoch=True,
                )
            )

    def _step(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """One optimisation step (two passes with SAM); returns the detached LOSS_NAMES values of the first
        pass on the device."""
        with autocast(self.device, self.amp_dtype):
            targets = self.distillation.targets(x) if self.distillation is not None else None
            loss, values = self._loss(x, y, targets)
        if self.sam is None:
            self._backward(loss)
        else:
            self._backward(loss)
            scale = float(self.scaler.get_scale()) if self.scaler is not None else 1.0
            if not self.sam.ascend(scale):
                self._skip_step()
                return values.detach()
            with autocast(self.device, self.amp_dtype):
                perturbed, _ = self._loss(x, y, targets)
            self._backward(perturbed)
            self.sam.descend_from_original()
        self._apply_step()
        if self.distillation is not None and self.distillation.teacher_tap is not None:
            self.distillation.teacher_tap.clear()
        return values.detach()

    def _loss(
        self, x: torch.Tensor, y: torch.Tensor, targets: Targets | None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(total loss, stacked LOSS_NAMES values) of the student on one batch."""
        logits = self.model(x)
        ce = F.cross_entropy(logits.float(), y, label_smoothing=self.recipe.label_smoothing)
        zero = ce.new_zeros(())
        terms = no_terms(ce)
        if self.distillation is not None:
            assert targets is not None
            terms = self.distillation.terms(logits, targets)
        head = self.shifted_head.penalty() if self.shifted_head is not None else zero
        loss = ce + terms["total"] + head
        values = torch.stack(
            [ce, terms["node"], terms["edge"], terms["emb"], terms["logit"], terms["uploaded"], head, loss]
        )
        return loss, values

    def _backward(self, loss: torch.Tensor) -> None:
        torch.autograd.backward(self.scaler.scale(loss) if self.scaler is not None else loss)

    def _apply_step(self) -> None:
        """One optimiser step (through the AMP grad scaler when there is one), FST's renormalisation, and the
        gradients cleared for the next batch."""
        if self.scaler is not None:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            self.optimizer.step()
        if self.shifted_head is not None:
            self.shifted_head.renormalise()
        self.optimizer.zero_grad(set_to_none=True)

    def _skip_step(self) -> None:
        """Drop a step whose gradients overflowed (fp16): back the loss scale off, as the scaler would."""
        if self.scaler is not None:
            self.scaler.update(float(self.scaler.get_scale()) * self.scaler.get_backoff_factor())
        self.optimizer.zero_grad(set_to_none=True)
