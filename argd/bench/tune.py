"""`argd bench tune`: run the defense benchmark over a grid of settings and tabulate what each one gives.

This is how the engine's defaults are chosen: every grid entry is a set of CleanseParams overrides applied
to ALL defenses (so fine-tuning and NAD always share ARGD's schedule), on the same cached backdoored models,
clean subsets and seed. Identical defense runs across entries are done once (the memo of
`run_defense_benchmark`). The summary (`tune.md`, `tune.json`) lists, per entry, ARGD / NAD / fine-tuning ACC
and ASR on every attack, their means, and ARGD's weighted term magnitudes beside the cross-entropy.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path
from typing import Any

from argd.bench.defense import ABLATIONS, DefenseConfig, run_defense_benchmark
from argd.bench.report import summarise, write_json

#: name -> (what it tests, CleanseParams overrides). "default" is the preset as it stands.
GRID: dict[str, tuple[str, dict[str, Any]]] = {
    "default": ("the preset as is", {}),
    "lr-constant": ("constant lr instead of cosine", {"lr_schedule": "constant"}),
    "lr-step-reference": (
        "reference schedule: lr 0.1 / 0.01 / 0.001 at epochs 0 / 3 / 6",
        {"lr": 0.1, "lr_schedule": "step", "milestones": [3, 6], "gamma": 0.1},
    ),
    "lr-x2": ("peak lr doubled (cosine)", {"lr_scale": 2.0}),
    "lr-x0.5": ("peak lr halved (cosine)", {"lr_scale": 0.5}),
    "teacher-10": ("10 teacher epochs instead of 5", {"teacher_epochs": 10}),
    "node-x0.3": ("node weight x0.3", {"w_node_scale": 0.3}),
    "node-x3": ("node weight x3", {"w_node_scale": 3.0}),
    "node-x10": ("node weight x10", {"w_node_scale": 10.0}),
    "edge-x4": ("edge weight x4", {"w_edge_scale": 4.0}),
    "emb-x4": ("embedding weight x4", {"w_emb_scale": 4.0}),
    "emb-frozen": ("embedding frozen at its random init", {"embedding_trainable": False}),
    "teacher-lr-0.02": ("teacher peak lr 0.02 (cosine)", {"teacher_lr": 0.02}),
    "teacher-lr-0.05": ("teacher peak lr 0.05 (cosine)", {"teacher_lr": 0.05}),
    "teacher-lr-0.1": ("teacher peak lr 0.1 (cosine)", {"teacher_lr": 0.1}),
    "teacher-lr-0.1-e10": (
        "teacher peak lr 0.1, 10 teacher epochs",
        {"teacher_lr": 0.1, "teacher_epochs": 10},
    ),
    "teacher-lr-0.1-lr-x2": (
        "teacher peak lr 0.1 and student peak lr x2",
        {"teacher_lr": 0.1, "lr_scale": 2.0},
    ),
    "lr-0.03-edge-x0.1": ("peak lr 0.03 (cosine), edge weight x0.1", {"lr": 0.03, "w_edge_scale": 0.1}),
    "lr-0.03-edge-x0.3": ("peak lr 0.03 (cosine), edge weight x0.3", {"lr": 0.03, "w_edge_scale": 0.3}),
    "lr-0.03-teacher-lr-0.03": ("student and teacher peak lr 0.03", {"lr": 0.03, "teacher_lr": 0.03}),
    # The recipe of the default (FST teacher, FST head on the student, logit distillation), one piece off.
    "teacher-finetune": ABLATIONS["teacher-finetune"],
    "keep-head": ABLATIONS["keep-head"],
    "no-logit": ABLATIONS["no-logit"],
    "no-attention": ABLATIONS["no-attention"],
    "keep-head-no-logit": (
        "student keeps its head, no logit distillation (ARG terms alone on an FST teacher)",
        {"student_head": "keep", "w_logit": 0.0},
    ),
    "logit-x2": ("logit distillation weight 2", {"w_logit": 2.0}),
    "student-sam": (
        "the student tuned with adaptive SAM steps, rho 2",
        {"student_sam": True, "student_sam_rho": 2.0},
    ),
    "no-student-sam": ABLATIONS["no-student-sam"],
    "fst-alpha-0.1": ("FST head weight 0.1 (teacher and student)", {"fst_alpha": 0.1}),
    "student-alpha-0.05": ("student FST head weight 0.05 (teacher 0.2)", {"student_fst_alpha": 0.05}),
    "student-alpha-0.02": ("student FST head weight 0.02 (teacher 0.2)", {"student_fst_alpha": 0.02}),
    "student-alpha-0": ("student head re-initialised, not pushed (teacher 0.2)", {"student_fst_alpha": 0.0}),
    "epochs-15": ("15 student epochs", {"epochs": 15}),
    "teacher-20": ("20 FST teacher epochs", {"teacher_epochs": 20}),
    "uploaded-logit": (
        "the student also matches the uploaded model's own clean outputs (weight 1)",
        {"w_uploaded_logit": 1.0},
    ),
    "uploaded-logit-only": (
        "the student's logit distillation from the uploaded model instead of the teacher",
        {"w_uploaded_logit": 1.0, "w_logit": 0.0},
    ),
    "hinge": (
        "the student's head pushed only until orthogonal to the uploaded one",
        {"student_fst_hinge": True},
    ),
    "hinge-uploaded-logit": (
        "hinged student head, and logit distillation from the uploaded model too",
        {"student_fst_hinge": True, "w_uploaded_logit": 1.0},
    ),
    "teacher-fst-sam": ("FST teacher tuned with adaptive SAM steps (rho 2)", {"teacher": "fst-sam"}),
    "teacher-fst-sam-rho-0.5": (
        "FST teacher tuned with adaptive SAM steps, rho 0.5",
        {"teacher": "fst-sam", "sam_rho": 0.5},
    ),
    "student-sam-rho-0.5": (
        "the student tuned with adaptive SAM steps, rho 0.5",
        {"student_sam": True, "student_sam_rho": 0.5},
    ),
    "student-sam-rho-1": (
        "the student tuned with adaptive SAM steps, rho 1",
        {"student_sam": True, "student_sam_rho": 1.0},
    ),
}


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.2f}"


def tune_markdown(rows: dict[str, dict[str, Any]]) -> str:
    """One line per grid entry: ARGD, NAD and fine-tuning ACC / ASR per attack and the means."""
    attacks: list[str] = []
    for row in rows.values():
        attacks += [a for a in row["attacks"] if a not in attacks]
    head = ["Setting", "Overrides"]
    for attack in attacks:
        head += [f"{attack} ARGD", f"{attack} NAD", f"{attack} FT"]
    head += ["mean ARGD", "mean NAD", "mean FT", "ARGD terms (ce/node/edge/emb, epoch 1)"]
    lines = [
        "| " + " | ".join(head) + " |",
        "|" + "|".join(["---", "---"] + ["---:"] * (len(head) - 2)) + "|",
    ]
    for name, row in rows.items():
        cells = [name, ", ".join(f"{k}={v}" for k, v in row["overrides"].items()) or "–"]
        for attack in attacks:
            defenses = row["attacks"].get(attack, {})
            for method in ("argd", "nad", "finetune"):
                m = defenses.get(method)
                cells.append(f"{_pct(m['acc'])} / {_pct(m['asr'])}" if m else "–")
        for method in ("argd", "nad", "finetune"):
            m = row["summary"].get(method, {})
            cells.append(f"{_pct(m.get('acc'))} / {_pct(m.get('asr'))}")
        scales = [
            d["argd"]["term_scales"].get("first_epoch", {}) for d in row["attacks"].values() if "argd" in d
        ]
        if scales:
            mean = {k: sum(s[k] for s in scales) / len(scales) for k in ("ce", "node", "edge", "emb")}
            cells.append("/".join(f"{mean[k]:.3g}" for k in ("ce", "node", "edge", "emb")))
        else:
            cells.append("–")
        lines.append("| " + " | ".join(cells) + " |")
    return "Cells are clean ACC / ASR in %.\n\n" + "\n".join(lines) + "\n"


def run_tune(config: DefenseConfig, names: list[str]) -> dict[str, Any]:
    """Run `run_defense_benchmark` once per grid entry (into `config.out/<name>`) and write the summary."""
    unknown = [n for n in names if n not in GRID]
    if unknown:
        from argd.core.errors import InvalidInput

        raise InvalidInput(f"unknown grid entr(ies) {', '.join(unknown)}; known: {', '.join(GRID)}")
    memo: dict[str, Any] = {}
    rows: dict[str, dict[str, Any]] = {}
    started = time.perf_counter()
    for name in names:
        description, overrides = GRID[name]
        print(f"=== tune {name}: {description}", flush=True)
        entry = copy.deepcopy(config)
        entry.overrides = {**config.overrides, **overrides}
        entry.out = config.out / name
        results = run_defense_benchmark(entry, memo=memo)
        rows[name] = {
            "description": description,
            "overrides": overrides,
            "summary": summarise(results),
            "attacks": {
                attack: {
                    method: {k: d[k] for k in ("acc", "asr", "ra", "der", "term_scales", "seconds")}
                    for method, d in row["defenses"].items()
                }
                | {"before": {k: row["backdoor"][k] for k in ("acc", "asr")}}
                for attack, row in results["attacks"].items()
            },
        }
        config.out.mkdir(parents=True, exist_ok=True)
        (config.out / "tune.md").write_text(tune_markdown(rows))
        write_json({"base_overrides": config.overrides, "rows": rows}, config.out / "tune.json")
    print(f"tune done in {time.perf_counter() - started:.0f}s: {Path(config.out) / 'tune.md'}", flush=True)
    return rows
