"""What the book and the README print, computed from the run artifacts: the summary of the reported
runs, the findings (short statements with the numbers they rest on), and the figures and tables, in
one style.
"""
from __future__ import annotations

import math
import statistics

import torch

import lib

# =============================================================================================
# Summary
# =============================================================================================

def main_runs(seed: int = 0) -> dict[str, dict]:
    """The run of each norm that the book reports on (seed 0), keyed by norm; refuses a missing one."""
    return {norm: dict(lib.read_json(lib.ROOT / "runs" / f"{norm}-s{seed}" / "metrics.json"), run=f"{norm}-s{seed}")
            for norm in lib.NORMS}


def seed_runs(m: dict) -> list[dict]:
    """Every run of m's norm trained like m (same data, epochs, batch, groups and recipe): its error bars."""
    same = lambda r: (r["n_train"], r["n_test"], r["epochs"], r["batch_size"], r.get("groups"), lib.recorded_recipe(r))
    return [r for r in lib.load_metrics(f"{m['norm']}-s[0-9]*") if same(r) == same(m)]


def summary_rows() -> list[dict]:
    """One row per norm: the seed-0 run's final accuracies, and mean/std of final test accuracy (and the
    mean with flip TTA) over every run of that norm trained like seed 0, so a half-finished change of
    recipe never mixes into the error bars. The book's and the README's tables both come from here."""
    rows = []
    for norm, m in main_runs().items():
        seeds = seed_runs(m)
        accs = [r["final_test_acc"] for r in seeds]
        rows.append({
            "norm": norm, "model": lib.NORM_NAMES[norm], "params": m["params"],
            "train_acc": m["final_train_acc"], "test_acc": m["final_test_acc"],
            "test_acc_tta": m["final_test_acc_tta"], "minutes": m["seconds"] / 60,
            "seeds": len(accs), "test_mean": statistics.mean(accs),
            "test_std": statistics.stdev(accs) if len(accs) > 1 else float("nan"),
            "tta_mean": statistics.mean(r["final_test_acc_tta"] for r in seeds),
            "full": (m["n_train"], m["n_test"], m["epochs"]) == (lib.FULL_TRAIN, lib.FULL_TEST, lib.MAX_EPOCHS),
            "data": m["data"], "device": m["device"],
        })
    return rows


def per_class_accuracy(cm: torch.Tensor) -> list[float]:
    """Accuracy in % of each class, from a confusion matrix (lib.confusion_matrix)."""
    return (100.0 * cm.diag().float() / cm.sum(1).clamp_min(1).float()).tolist()


def seed_spread(rows) -> float:
    """The largest seed-to-seed standard deviation of final test accuracy (nan if no row has two seeds)."""
    return max((r["test_std"] for r in rows if r["seeds"] > 1), default=float("nan"))


def mean_std_text(row: dict) -> str:
    """'82.36 ± 0.27' over a row's seeds (or the seed-0 number alone)."""
    return f"{row['test_mean']:.2f} ± {row['test_std']:.2f}" if row["seeds"] > 1 else f"{row['test_acc']:.2f}"


# =============================================================================================
# Findings
# =============================================================================================
# The short statements the results chapter and the README both print, computed once, here, from
# the run artifacts: each is a dict with a `title`, a `text` and the `value` it rests on.

def findings() -> list[dict]:
    rows = {r["norm"]: r for r in summary_rows()}
    runs = main_runs()
    cms = {n: lib.confusion_matrix(**lib.load_predictions(f"runs/{m['run']}")) for n, m in runs.items()}
    order = sorted(rows, key=lambda n: -rows[n]["test_mean"])
    best, worst = order[0], order[-1]
    spread = seed_spread(rows.values())
    gap = rows[best]["test_mean"] - rows[worst]["test_mean"]
    lowest = order[-2:]                                 # the two behind the best, higher first
    diff = abs(rows[lowest[0]]["test_mean"] - rows[lowest[1]]["test_mean"])
    seeds = min(r["seeds"] for r in rows.values())
    out = [dict(title="Ranking", value=gap, text=" > ".join(f"{n.upper()} {mean_std_text(rows[n])} %" for n in order)
                + " (final test accuracy, " + (f"mean ± std over {seeds} seeds): " if seeds > 1 else "seed 0): ")
                + f"{best.upper()} leads {worst.upper()} by {gap:.2f} points; {lowest[0].upper()} and "
                f"{lowest[1].upper()} differ by {diff:.2f}" + ("." if math.isnan(spread) else
                f", {'below' if diff < 2 * spread else 'above'} twice the largest seed-to-seed std ({2 * spread:.2f})."))]
    lead = {e: runs["bn"]["history"][e]["test_acc"] - max(runs[n]["history"][e]["test_acc"] for n in ("gn", "ln"))
            for e in (0, -1)}
    out.append(dict(title="Early epochs", value=lead[0], text=f"after one epoch BN's test accuracy is {lead[0]:+.1f} points "
                    f"from the better of GN and LN, after the last {lead[-1]:+.1f} (seed 0)."))
    pairs = {n: (cm + cm.T).triu(1) for n, cm in cms.items()}       # confusions between two classes, both ways
    top = {n: divmod(int(p.argmax()), len(lib.CLASSES)) for n, p in pairs.items()}
    names = {n: f"{lib.CLASSES[a]} ↔ {lib.CLASSES[b]}" for n, (a, b) in top.items()}
    out.append(dict(title="Most confused pair", value=min(int(pairs[n].max()) for n in cms), text=(
        f"for every norm, {names['bn']}: " if len(set(names.values())) == 1 else "per norm: ")
        + ", ".join(f"{n.upper()} {'' if len(set(names.values())) == 1 else names[n] + ' '}{int(pairs[n].max())}"
                    for n in cms) + " test images go from one of the two to the other (seed 0)."))
    sweep = lib.read_jsons(lib.ROOT / "runs" / "sweep-batch", "*-s*.json")
    accs = {}
    for p in sweep:
        accs.setdefault(p["batch_size"], {}).setdefault(p["norm"], []).append(p["final_test_acc"])
    done = sorted(b for b, by_norm in accs.items() if set(by_norm) == set(lib.NORMS))    # every norm has run
    if len(done) > 1:
        small, large = done[0], done[-1]
        change = {n: statistics.mean(accs[small][n]) - statistics.mean(accs[large][n]) for n in lib.NORMS}
        bn_most = change["bn"] < min(change["gn"], change["ln"]) and change["bn"] < 0
        out.append(dict(title="Small batches", value=change["bn"], text=f"in shorter runs ({sweep[0]['budget']['n_train']:,} "
                        f"images, {sweep[0]['budget']['epochs']} epochs), going from batch {large} to batch {small} "
                        "changes test accuracy by " + ", ".join(f"{n.upper()} {change[n]:+.2f}" for n in lib.NORMS)
                        + (" points: BN, whose statistics come from the batch, loses by far the most." if bn_most
                           else " points.")))
    rob = lib.read_jsons(lib.ROOT / "runs" / "robustness")
    if {r["norm"] for r in rob} == set(lib.NORMS):
        avg = lambda norm, get: statistics.mean(get(r) for r in rob if r["norm"] == norm)
        logit = max(r["max_logit_change_scale_2"] for r in rob if r["norm"] != "bn")
        out.append(dict(title="Contrast", value=logit, text=f"doubling the input changes GN's and LN's logits by at "
                        f"most {logit:.1e} (they are invariant to its scale by construction); at four times the "
                        f"contrast BN falls from {avg('bn', lambda r: r['clean_acc']):.2f} % to "
                        f"{avg('bn', lambda r: r['scale']['4.0']):.2f} % (mean of {sum(r['norm'] == 'bn' for r in rob)} seeds)."))
        changed = {n: avg(n, lambda r: r["batch"]["2"]["changed"]) for n in lib.NORMS}
        out.append(dict(title="Batch companions", value=changed["bn"], text="evaluated with batch statistics in batches "
                        f"of 2, BN changes {changed['bn']:.1f} % of its predictions when only an image's companion "
                        f"changes (GN {changed['gn']:.1f} %, LN {changed['ln']:.1f} %), and in one-class batches it "
                        f"falls to {avg('bn', lambda r: r['one_class_batches_acc']):.2f} %."))
    return out


# =============================================================================================
# Figures
# =============================================================================================

COLORS = {"bn": "#1f77b4", "gn": "#2ca02c", "ln": "#d62728"}


def style():
    """One look for every figure in the book."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(context="notebook", style="whitegrid", font_scale=1.15)   # legible in a phone's column
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def plot_curves(runs: list[dict], title: str = "", seeds: dict[str, list[dict]] | None = None, last: int = 6):
    """Loss and accuracy per epoch, train (dashed) and test (solid), one colour per norm; with `seeds`
    (norm -> runs), a third panel zooms into the last epochs' test accuracy with the band over seeds."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    fig = plt.figure(figsize=(10, 7.6 if seeds else 4))
    grid = fig.add_gridspec(2 if seeds else 1, 2)
    axes = [fig.add_subplot(grid[0, 0]), fig.add_subplot(grid[0, 1])] + ([fig.add_subplot(grid[1, :])] if seeds else [])
    for m in runs:
        ep = [h["epoch"] for h in m["history"]]
        c, label = COLORS.get(m["norm"]), m["norm"].upper()
        for ax, key in zip(axes, ("loss", "acc")):
            ax.plot(ep, [h[f"train_{key}"] for h in m["history"]], "--", color=c, label=f"{label} train")
            ax.plot(ep, [h[f"test_{key}"] for h in m["history"]], "-", color=c, label=f"{label} test")
    for norm, group in (seeds or {}).items():
        ep = [h["epoch"] for h in group[0]["history"]][-last:]
        acc = torch.tensor([[h["test_acc"] for h in r["history"][-last:]] for r in group])
        axes[2].fill_between(ep, acc.min(0).values, acc.max(0).values, color=COLORS[norm], alpha=0.2)
        axes[2].plot(ep, acc.mean(0), "o-", color=COLORS[norm], label=f"{norm.upper()} (mean, {len(group)} seeds)")
    for ax in axes:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes[0].set(xlabel="epoch", ylabel="cross-entropy (label smoothing 0.1)", title="Loss")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    axes[1].legend(ncol=len(runs), fontsize=8, loc="lower right")
    if seeds:
        axes[2].set(xlabel="epoch", ylabel="test accuracy (%)", title=f"Test accuracy, last {last} epochs (band: seeds)")
        axes[2].legend(fontsize=8, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return fig


def plot_answer(rows: list[dict], sweep: list[dict]):
    """The book's key figure: final test accuracy per norm (every seed, mean ± std), beside test accuracy
    against batch size from the batch sweep (mean over its seeds)."""
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(1, 2, figsize=(8, 3.3), gridspec_kw=dict(width_ratios=(1, 1.4)))   # phone-legible
    for i, r in enumerate(rows):
        accs = [m["final_test_acc"] for m in seed_runs(main_runs()[r["norm"]])]
        left.errorbar(i, r["test_mean"], yerr=r["test_std"], fmt="o", ms=9, capsize=6, color=COLORS[r["norm"]])
        left.scatter([i + 0.18] * len(accs), accs, s=14, color=COLORS[r["norm"]], alpha=0.6)
    left.set_xticks(range(len(rows)), [r["norm"].upper() for r in rows])
    left.set(ylabel="test accuracy (%)", xlim=(-0.5, len(rows) - 0.5),
             title=f"20 epochs: mean ± std, dots: {min(r['seeds'] for r in rows)} seeds", xlabel="")
    for norm in lib.NORMS:
        points = sorted((p["batch_size"], p["final_test_acc"]) for p in sweep if p["norm"] == norm)
        batches = sorted({b for b, _ in points})
        means = [statistics.mean(a for b2, a in points if b2 == b) for b in batches]
        right.plot(batches, means, "o-", color=COLORS[norm])
        right.annotate(norm.upper(), (batches[-1], means[-1]), xytext=(6, 0), textcoords="offset points",
                       va="center", color=COLORS[norm], fontweight="bold")      # labels at the lines' ends
    right.set_xscale("log", base=2)
    right.set_xticks(batches, [str(b) for b in batches])
    right.set(xlabel="batch size", ylabel="", title="Shorter runs, by batch size")
    fig.tight_layout()
    return fig


def plot_misclassified(x_uint8: torch.Tensor, mistakes: list[dict], title: str = ""):
    """A 5x2 grid (5 columns, 2 rows) of misclassified images, each with true, predicted, confidence."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(2, 5, figsize=(10, 5.4))
    for ax, m in zip(axes.flat, mistakes):
        ax.imshow(x_uint8[m["index"]].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"true: {m['true']}\npred: {m['pred']} ({100 * m['confidence']:.0f}%)", fontsize=11)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title, fontsize=13)
    fig.tight_layout()
    return fig


def plot_confusion(cm: torch.Tensor, title: str = "", ax=None):
    """Row-normalised confusion matrix in % (each row: where that class's test images went)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(6.4, 5.6))
    pct = 100.0 * cm.float() / cm.sum(1, keepdim=True).clamp_min(1).float()
    sns.heatmap(pct.numpy(), annot=True, fmt=".0f", cmap="Blues", cbar=False, ax=ax, vmax=30,
                xticklabels=lib.CLASSES, yticklabels=lib.CLASSES, annot_kws={"fontsize": 10})
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return ax


def save_figure(fig, name: str) -> None:
    """Save to book/figures/<name>.png (atomically); the README and the book show these files."""
    lib.atomic_write(lib.ROOT / "book" / "figures" / f"{name}.png", lambda f: fig.savefig(f, format="png"))


def table(df, formats: dict | None = None, precision: int = 2):
    """A DataFrame as the book shows it: one format per column (floats to `precision` decimals unless
    `formats` says otherwise), and the `dataframe` class that the book's stylesheet pads and scrolls."""
    import pandas as pd
    fmt = {c: f"{{:,.{precision}f}}" for c in df.columns if pd.api.types.is_float_dtype(df[c])}
    fmt.update(formats or {})
    text = [f"td.col{j}, th.col{j}" for j, c in enumerate(df.columns) if not pd.api.types.is_numeric_dtype(df.iloc[:, j])]
    return (df.style.format(fmt, na_rep="—").hide(axis="index", names=True).set_table_attributes('class="dataframe"')
            .set_table_styles([dict(selector=", ".join(text), props="text-align: left")] if text else []))
