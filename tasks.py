"""The heads: what each task predicts and in what units, how a network's outputs split into heads,
how each head is trained, how it is read as an era, how 05 reduces its 8 views, and the names of
the columns that carry all of this (05's features, 04's eval.csv). 04, 05, 06 and the reports ask
here; no other module spells a head's column.

    target       1 output: the era 0..3 itself
    onehot       4 outputs: the era one-hot (MSE, the recipe; --loss ce: class scores)
    sortingdate  1 output: the year, standardised with the fold's train-side mean and std
    word2vec     20 outputs: the material/technique embedding from 01 (objects without names masked)
    multi        one backbone with all four heads, their outputs side by side in TASKS order

Nothing here imports torch at module level: 06 and the reports read columns without it.
"""
from pathlib import Path

import numpy as np
import pandas as pd

from profiles import TASKS

TASK_DIMS = {"target": 1, "onehot": 4, "sortingdate": 1, "word2vec": 20}
TASK_DIMS["multi"] = sum(TASK_DIMS[t] for t in TASKS)
NETS = (*TASKS, "multi")
ERA_HEADS = ("target", "onehot", "sortingdate")       # the heads that imply an era (word2vec none)
N_CLASSES = 4
ERA_EDGES = (1600, 1700, 1800)          # target = number of edges strictly below sorting_date
STATS = ("mean", "max", "min", "var")   # the recipe's reductions over the 8 views


# -----------------------------------------------------------------------------
# Columns: one grammar, spelled here only.
def column(task, dim, stat="mean"):
    """05's feature column of one output of a head, reduced over the views: target_0_mean."""
    return f"{task}_{dim}_{stat}"


def onehot_columns(stat="mean"):
    return [column("onehot", c, stat) for c in range(N_CLASSES)]


def eval_column(task):
    """eval.csv's held-out era RMSE of one head: rmse_target."""
    return f"rmse_{task}"


def feature_columns(net):
    """Every feature column 05 writes for a network, in order."""
    return [column(t, d, s) for t, _ in heads(net) for d in range(TASK_DIMS[t]) for s in STATS]


# -----------------------------------------------------------------------------
# Outputs and heads
def heads(net):
    """[(task, slice of the network's outputs)]: the task's one head, or multi's four."""
    out, start = [], 0
    for t in (TASKS if net == "multi" else (net,)):
        out.append((t, slice(start, start + TASK_DIMS[t])))
        start += TASK_DIMS[t]
    return out


def head_targets(task, df, folds_dir, date_stats):
    """(y (N, D), w (N,)) of one head, in the space the network is trained in."""
    if task == "target":
        y = df[["target"]].to_numpy(np.float32)
    elif task == "onehot":
        y = np.eye(N_CLASSES, dtype=np.float32)[df["target"].to_numpy()]
    elif task == "sortingdate":
        y = ((df[["sorting_date"]].to_numpy(np.float32) - date_stats[0]) / date_stats[1])
    else:
        w2v = pd.read_csv(Path(folds_dir) / "word2vec.csv", dtype={"object_id": str}).set_index("object_id")
        y = w2v.loc[df["object_id"]].to_numpy(np.float32)
    w = (~np.isnan(y).any(axis=1)).astype(np.float32)       # word2vec: no names -> masked
    return np.nan_to_num(y), w


def head_losses(net, kind, out, y):
    """(N, heads) torch: each head's per-sample loss (MSE over its outputs, or onehot's CE)."""
    import torch
    import torch.nn.functional as F
    losses = []
    for t, cols in heads(net):
        if t == "onehot" and kind == "ce":
            losses.append(F.cross_entropy(out[:, cols], y[:, cols].argmax(1), reduction="none"))
        else:
            losses.append(((out[:, cols] - y[:, cols]) ** 2).mean(1))
    return torch.stack(losses, 1)


def in_units(net, outputs, config):
    """(N, 8, D) raw outputs (torch) -> each head's own units: the year de-standardised
    (sortingdate), the scores' softmax (onehot trained with --loss ce); the others as they are."""
    import torch
    parts = []
    for t, cols in heads(net):
        part = outputs[..., cols]
        if t == "sortingdate":
            part = part * config["date_std"] + config["date_mean"]
        if t == "onehot" and config.get("loss") == "ce":
            part = part.softmax(-1)
        parts.append(part)
    return torch.cat(parts, -1)


def reduce_views(net, outputs):
    """(N, 8, D) -> {column: (N,)}: mean, max, min, var over the views, per output dimension of
    each head."""
    cols = {}
    for t, span in heads(net):
        for d in range(TASK_DIMS[t]):
            v = outputs[:, :, span.start + d]
            for stat, values in zip(STATS, (v.mean(1), v.max(1), v.min(1), v.var(1))):
                cols[column(t, d, stat)] = values
    return cols


# -----------------------------------------------------------------------------
# Eras: what a head's output implies, continuous (numpy arrays or torch tensors alike)
def era_of_date(dates):
    """Map sorting_date to the era target 0..3 (<=1600, 1601-1700, 1701-1800, >=1801)."""
    return np.searchsorted(np.asarray(ERA_EDGES), np.asarray(dates, dtype=float), side="left")


def era_of_year(year):
    """A regressed year mapped linearly to the era: 1550 -> 0, 1650 -> 1 ... 1850 -> 3, clipped."""
    return ((year - 1550) / 100).clip(0, N_CLASSES - 1)


def class_probabilities(scores):
    """(N, 4) one-hot scores -> class probabilities: negatives clipped, then normalised."""
    prob = scores.clip(min=0)
    return prob / prob.sum(1)[:, None].clip(min=1e-6)


def era_of_scores(scores):
    """(N, 4) one-hot scores -> the expected class of their class_probabilities."""
    prob = class_probabilities(scores)
    return sum(c * prob[:, c] for c in range(N_CLASSES))


def era_prediction(task, kind, mean_out, date_stats):
    """The era (0..3, continuous) one head's TTA-mean output (in training units) implies, or None
    (word2vec)."""
    if task == "target":
        return mean_out[:, 0]
    if task == "onehot":        # ce scores are logits
        return era_of_scores(mean_out.softmax(1) if kind == "ce" else mean_out)
    if task == "sortingdate":
        return era_of_year(mean_out[:, 0] * date_stats[1] + date_stats[0])
    return None


def era_steps(scores):
    """(N, 4) one-hot scores -> (N, 3): P(era >= c) for c = 1, 2, 3 of their class_probabilities.
    Their sum is the expected class; a blend weighs each step on its own."""
    prob = class_probabilities(scores)
    return np.stack([prob[:, c:].sum(1) for c in range(1, N_CLASSES)], 1)


def step_columns():
    """06's blend inputs of onehot's P(era >= c), c = 1, 2, 3: onehot_ge1 ..."""
    return [f"onehot_ge{c}" for c in range(1, N_CLASSES)]


def onehot_steps(table):
    """{step column: P(era >= c)} of onehot's 8-view mean, from 05's feature columns of a table."""
    return dict(zip(step_columns(), era_steps(table[onehot_columns()].to_numpy()).T))


def head_eras(table):
    """{head: era} that each era head's 8-view mean implies, from 05's feature columns of a table:
    the target itself, onehot's expected class, sortingdate's year."""
    return {"target": table[column("target", 0)].to_numpy(), "onehot": era_of_scores(table[onehot_columns()].to_numpy()),
            "sortingdate": era_of_year(table[column("sortingdate", 0)].to_numpy())}


# The recipe's post-processing reads two heads' 8-view means directly: the target head's, and
# onehot's four scores. 06 keeps them in oof.csv under these names.
TTA_COLUMNS = ("target_tta", *(f"onehot_{c}" for c in range(N_CLASSES)))


def target_tta(table):
    return table[column("target", 0)].to_numpy()


def onehot_tta(table):
    return table[onehot_columns()].to_numpy()
