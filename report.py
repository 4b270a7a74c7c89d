"""What the book and the README print, computed from the run artifacts: the summary of the reported
runs, the findings (short statements with the numbers they rest on), and the figures and tables, in
one style.
"""
from __future__ import annotations

import dataclasses
import json
import math
import statistics
import textwrap

import torch

import lib

# =============================================================================================
# Summary
# =============================================================================================

# Loading. These functions read files: main_runs, reported, predictions, model_records and robustness_runs
# here; sweep, diverged, validation_runs, plans_table and the sections that name their plan folder (weight_std,
# ceiling) further down; answer loads all the landing page needs at once. Every other function computes from
# what they return, so a page reads each run once and a test can hand any function made-up runs.

def missing_run(norm: str, seed: int) -> lib.NormbookError:
    return lib.NormbookError(f"{lib.ROOT / 'runs' / f'{norm}-s{seed}' / 'metrics.json'} is missing: "
                             f"train it with `make run NORM={norm}`")


def main_runs(seed: int = 0) -> dict[str, dict]:
    """The run of each norm that the book reports on (seed 0), keyed by norm, each verified and checked against
    its predictions and its folder's name when read (lib.load_metrics); refuses a missing one."""
    runs = {}
    for norm in lib.NORMS:
        found = lib.load_metrics(f"{norm}-s{seed}")
        if not found:
            raise missing_run(norm, seed)
        runs[norm] = found[0]
    return runs


@dataclasses.dataclass(frozen=True)
class Reported:
    """The reported runs: each norm's seed-0 run (main), every run of that norm trained like it (seeds, seed 0
    first: its error bars), and the runs left out of the error bars, each with what differs (left_out)."""
    main: dict[str, dict]
    seeds: dict[str, list[dict]]
    left_out: list[str]


def reported() -> Reported:
    """Every saved run of the three norms, read and verified once (lib.load_metrics), sorted into Reported."""
    main, seeds, left_out = {}, {}, []
    names = ("data", "training images", "test images", "epochs", "batch size", "groups", "recipe", "precision")
    for norm in lib.NORMS:
        runs = sorted(lib.load_metrics(f"{norm}-s[0-9]*"), key=lambda r: r["seed"])
        if not runs or runs[0]["seed"] != 0:
            raise missing_run(norm, 0)
        main[norm] = runs[0]
        seeds[norm] = [r for r in runs if trained_like(r) == trained_like(runs[0])]
        for r in runs:
            differ = [n for n, a, b in zip(names, trained_like(r), trained_like(runs[0])) if a != b]
            left_out += [f"{norm}-s{r['seed']} ({', '.join(differ)})"] if differ else []
    return Reported(main, seeds, left_out)


def predictions(runs: dict[str, dict]) -> dict[str, dict]:
    """norm -> the test-set predictions of its run in `runs` (predictions.pt: probs and labels)."""
    return {n: lib.load_predictions(f"runs/{m['run']}") for n, m in runs.items()}


def model_records(folder: str) -> list[dict]:
    """The records of runs/<folder>/ (robustness, fit): one per saved model, <norm>-s<seed>.json, each holding
    that norm and seed; a stray or renamed file is refused in one line, naming it."""
    out = []
    for path in sorted((lib.ROOT / "runs" / folder).glob("*.json")):
        r = lib.read_json(path)
        if path.stem != f"{r.get('norm')}-s{r.get('seed')}" or r.get("norm") not in lib.NORMS:
            raise lib.NormbookError(f"{path} is not a record of a saved model (<norm>-s<seed>.json holding that norm "
                                    "and seed): remove it, or run `make robustness`")
        out.append(r)
    return out


def trained_like(r: dict) -> tuple:
    """What makes two runs of a norm comparable seed to seed: data, epochs, batch, groups, recipe and
    precision (bf16 and fp32 runs land differently, so they are never averaged together)."""
    return (r["data"], r["n_train"], r["n_test"], r["epochs"], r["batch_size"], r.get("groups"),
            tuple(sorted(lib.recorded_recipe(r).items(), key=str)), r["precision"])


def summary_rows(rep: Reported) -> list[dict]:
    """One row per norm: the seed-0 run's final accuracies, and mean/std of final test accuracy (and the
    mean with flip TTA) over every run of that norm trained like seed 0, so a half-finished change of
    recipe never mixes into the error bars. The book's and the README's tables both come from here."""
    rows = []
    for norm, m in rep.main.items():
        seeds = rep.seeds[norm]
        accs = [r["final_test_acc"] for r in seeds]
        rows.append({
            "norm": norm, "model": lib.NORM_NAMES[norm], "params": m["params"],
            "train_acc": m["final_train_acc"], "test_acc": m["final_test_acc"],
            "test_acc_tta": m["final_test_acc_tta"], "minutes": m["seconds"] / 60,
            "seeds": len(accs), "test_accs": accs, "test_mean": statistics.mean(accs),
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


def pooled_seed_noise(rows) -> float:
    """The seed-to-seed standard deviation of one run's final test accuracy, pooled over the norms' rows."""
    variances = [r["test_std"] ** 2 for r in rows if r["seeds"] > 1]
    return math.sqrt(statistics.mean(variances)) if variances else float("nan")


def mean_std_text(row: dict) -> str:
    """'82.36 ± 0.27' over a row's seeds, unbroken (no-break spaces) (or the seed-0 number alone)."""
    return f"{row['test_mean']:.2f}\u00a0±\u00a0{row['test_std']:.2f}" if row["seeds"] > 1 else f"{row['test_acc']:.2f}"


def level(a: dict, b: dict, spread: float) -> bool:
    """Two summary rows are level when their mean test accuracies differ by less than twice the spread."""
    return abs(a["test_mean"] - b["test_mean"]) < 2 * spread


def most_confused(cm: torch.Tensor) -> tuple[int, int, int]:
    """(class a, class b, images): the pair of classes most often taken for each other, both ways."""
    pairs = (cm + cm.T).triu(1)
    a, b = divmod(int(pairs.argmax()), len(lib.CLASSES))
    return a, b, int(pairs.max())


def run_settings(norm_name: str, epochs: int, batch_size: int, seed: int, precision: str, device: str, data: str,
                 out_dir: str, main_setting: bool):
    """A run page's settings, once, as a small table (precision: the one it trains in, lib.trains_in)."""
    import pandas as pd
    rows = {"norm": norm_name, "epochs": epochs, "batch size": batch_size, "seed": seed, "precision": precision,
            "device": device, "data": data, "artifacts": f"{out_dir}/" + ("" if main_setting else
                                                                         " (not trained like the reported runs)")}
    return pd.DataFrame({"setting": list(rows), "value": [str(v) for v in rows.values()]}).set_index("setting")


def norm_sentence(norm: str, groups: int | str | None = None) -> str:
    """What this run's normalization averages over, in the network's own widths: what sets the run pages apart."""
    if norm == "bn":
        return ("**BatchNorm** normalizes each channel with the mean and variance over the batch's images and "
                "positions while training, and with running averages of them at test time.")
    if norm == "ln":
        return ("**LayerNorm** normalizes each image on its own, over all its channels and positions: one mean and "
                "variance per image and layer (in the summary below: `GroupNorm` with `num_groups` 1).")
    widths = sorted(set(lib.WIDTHS.values()))
    per_group = [lib.group_count(groups if groups is not None else lib.GN_GROUPS, c) for c in widths]
    return (f"**GroupNorm** normalizes each image on its own, over groups of channels and their positions: "
            + and_join(f"{c // g} channels per group at width {c}" for c, g in zip(widths, per_group))
            + f" ({and_join(sorted(set(per_group)))} groups).")


def recipe_parts(recipe: dict) -> dict[str, str]:
    """A recipe's optimizer, schedule and initialisation in words (the landing page's setup table, the run
    pages): what a reader needs to know to repeat the training."""
    sgd = (f"AdamW (β₁ {recipe['momentum']:g})" if recipe["optimizer"] == "AdamW" else
           f"SGD with Nesterov momentum {recipe['momentum']:g}")
    muon = recipe["optimizer"] == "Muon"
    decayed = "the 1x1 convolutions' weights (the Muon step holds the 3x3 weights at a fixed norm)" if muon else "the conv weights"
    start = ["every 3x3 convolution with as many outputs as inputs starts as the identity"] if recipe["dirac"] else []
    start += [f"C1 starts as a whitening of the images' 3x3 patches ({recipe['whiten']})"] if recipe["whiten"] != "off" else []
    return {"optimizer": f"Muon (peak LR {recipe['muon_lr']:g}) for the 3x3 convolutions' weights, {sgd} for the rest"
                         if muon else sgd,
            "schedule": f"one-cycle to a peak LR of {recipe['peak_lr']:g} at batch {recipe['lr_batch']}; weight decay "
                        f"{recipe['weight_decay']:g} on {decayed}; label smoothing {recipe['label_smoothing']:g}",
            "initialisation": "; ".join(start) if start else "PyTorch's default (Kaiming uniform)"}


def optimizer_words(recipe: dict) -> str:
    """recipe_parts in one sentence."""
    return "; ".join(f"{k}: {v}" for k, v in recipe_parts(recipe).items())


def training_note(metrics: dict, tuning_page: str = "../tuning", performance_page: str = "../performance") -> str:
    """A run page's line on how it was trained: the recipe (or how it differs from the reported runs'), and
    its wall time, with what the time does and does not measure."""
    recipe = metrics["recipe"]
    changed = {k: v for k, v in recipe.items() if lib.RECIPE.get(k) != v}
    text = (f"Trained with the recipe of every reported run ([listed in the tuning appendix]({tuning_page})): "
            f"{optimizer_words(lib.recorded_recipe(metrics))}." if not changed
            else "The recipe of the reported runs except " + ", ".join(f"{k} = {v}" for k, v in changed.items()) + ".")
    return text + (f" It took {metrics['seconds'] / 60:.1f} min ({metrics['images_per_s']:.0f} images/s, "
                   f"{metrics['precision']}, memory layout {metrics['memory_format']}, the faster for this norm on this "
                   f"device; the arithmetic is the same): the wall time of this run on a machine that other work may have shared; "
                   f"[the performance appendix]({performance_page}) measures speed.")


def history_table(metrics: dict):
    """A run's per-epoch numbers, with names a reader can read."""
    import pandas as pd
    return pd.DataFrame(metrics["history"]).set_index("epoch").rename(columns={
        "train_loss": "train loss", "train_acc": "train acc. (%)", "test_loss": "test loss",
        "test_acc": "test acc. (%)", "lr_end": "learning rate at the end", "seconds": "elapsed (s)"})


# =============================================================================================
# The theory and network chapters
# =============================================================================================

NORM_AXES = {   # which entries of an N x C x (H, W) tensor share one mean and variance, drawn for the first sample/channel
    "BatchNorm\n(per channel, over N, H, W)": (slice(None), slice(0, 1)),
    "LayerNorm\n(per sample, over C, H, W)": (slice(0, 1), slice(None)),
    "GroupNorm, here 4 groups\n(per sample and group)": (slice(0, 1), slice(0, 2)),
    "InstanceNorm\n(per sample and channel)": (slice(0, 1), slice(0, 1)),
}


def plot_norm_axes(narrow: bool = False):
    """Four cubes (x: batch N, y: channels C, z: the spatial positions H, W flattened), the entries that share
    one set of statistics in blue: a row of four for a desktop column, two by two for a phone's."""
    import matplotlib.pyplot as plt
    import numpy as np
    n, c, hw = 6, 8, 5
    fig = plt.figure(figsize=(PHONE_IN - 0.3, 4.0) if narrow else (9, 3.0))
    for i, (title, (samples, channels)) in enumerate(NORM_AXES.items()):
        ax = fig.add_subplot(2, 2, i + 1, projection="3d") if narrow else fig.add_subplot(1, 4, i + 1, projection="3d")
        mask = np.zeros((n, c, hw), bool)
        mask[samples, channels, :] = True
        colors = np.where(mask[..., None], [0.12, 0.47, 0.71, 1.0], [0.93, 0.93, 0.93, 1.0])
        ax.voxels(np.ones(mask.shape, bool), facecolors=colors, edgecolor=(0.35, 0.35, 0.35, 0.6), linewidth=0.4)
        ax.set_xlabel("N", labelpad=-14) if narrow else ax.set_xlabel("N (batch)", labelpad=-12)
        ax.set_ylabel("C", labelpad=-14) if narrow else ax.set_ylabel("C (channels)", labelpad=-12)
        ax.set_zlabel("H, W", labelpad=-14 if narrow else -12)
        ax.set_xticks([]), ax.set_yticks([]), ax.set_zticks([])
        ax.set_title(title.split("\n")[0].replace(", here ", "\n(") + ")" * (", here " in title) if narrow else title,
                     fontsize=MIN_PT if narrow else 11)
        ax.view_init(elev=22, azim=-58)
        ax.set_box_aspect(mask.shape, zoom=0.8 if narrow else 0.9)     # narrow: room for the labels between cubes
    fig.tight_layout()
    return fig


def norm_input(norm: str, data, images: int = 64):
    """What C2's norm layer receives in the trained seed-0 model of `norm` for the first test images, and
    that layer: the input to the from-scratch normalizations of the theory chapter."""
    model, m = lib.load_run(f"runs/{norm}-s0")
    first, (conv, layer) = model.flat()[0], model.flat()[1][:2]           # C1; C2's conv and norm
    x = lib.normalize(data.test_x[:images], torch.tensor(m["mean"]), torch.tensor(m["std"]))
    with torch.no_grad():
        return conv(first(x)), layer


def norm_table():
    """Per norm (a column each): what it normalizes over, its learnable and running parameters, how many
    statistics one forward pass computes at batch 128 and 1, and whether training and evaluation agree."""
    import pandas as pd
    over = {"bn": "N, H, W (per channel)", "gn": "C/G, H, W (per sample, group)", "ln": "C, H, W (per sample)"}
    columns = {}
    for norm in lib.NORMS:
        model = lib.build_model(norm)
        norms = [m for m in model.modules() if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
        counts = {"learnable γ, β": sum(p.numel() for m in norms for p in m.parameters()),
                  "running averages (buffers)": sum(b.numel() for name, b in model.named_buffers() if "running" in name),
                  "statistics per forward, batch 128": lib.norm_statistics(model, 128),
                  "statistics per forward, batch 1": lib.norm_statistics(model, 1)}
        columns[short_name(norm)] = {"normalized over": over[norm], **{k: f"{v:,}" for k, v in counts.items()},
                                     "same in train and eval": "no" if norm == "bn" else "yes",
                                     "total parameters": f"{lib.count_params(model):,}"}
    return pd.DataFrame(columns)


def network_numbers(models: dict, runs: dict[str, dict]) -> dict:
    """What the network chapter's prose quotes: each model's parameter count, the budget, and whether the
    reported runs used the shortcuts and which activation."""
    recipes = [lib.recorded_recipe(m) for m in runs.values()]
    used = {r["shortcuts"] for r in recipes}
    return {**{f"params_{norm}": f"{lib.count_params(m):,}" for norm, m in models.items()},
            "budget": f"{lib.MAX_PARAMS:,}",
            "shortcuts_used": "the shortcuts" if used == {True} else "no shortcuts" if used == {False} else
            "the shortcuts in some runs",
            "activation_used": " or ".join(sorted({lib.ACTIVATION_NAMES[r["activation"]] for r in recipes}))}


def widths_table():
    import pandas as pd
    return pd.DataFrame({"output channels": lib.WIDTHS}).T


def model_summaries(models: dict, batch_size: int = 128) -> dict[str, str]:
    """torchinfo's summary of each model: layers, output shapes, parameters and multiply-adds."""
    from torchinfo import summary
    return {norm: str(summary(model, input_size=(batch_size, 3, 32, 32), depth=3, verbose=0,
                              col_names=("output_size", "num_params", "mult_adds"), col_width=14))
            for norm, model in models.items()}


def describe_norm(layer) -> str:
    """A norm layer in a few words: 'BatchNorm, 16 channels', 'GroupNorm, 8 groups of 2 channels'."""
    if isinstance(layer, torch.nn.BatchNorm2d):
        return f"{layer.num_features} channels, over the batch"
    size = layer.num_channels // layer.num_groups
    return f"{layer.num_groups} group{'s' if layer.num_groups > 1 else ''} of {size} channel{'s' if size > 1 else ''}"


def norm_layers_table(models: dict, summaries: dict[str, str]):
    """The norm layer after each 3x3 conv, per model; refuses summaries that differ elsewhere than in
    the norm layers (the one difference between the three models)."""
    import pandas as pd
    for norm in models:
        other = [a for a, b in zip(summaries["bn"].splitlines(), summaries[norm].splitlines()) if a != b]
        if any("BatchNorm2d" not in line for line in other):
            raise lib.NormbookError(f"the {norm} model differs from the bn model elsewhere than in its norm layers")
    convs = [name for name in lib.LAYERS if name.startswith("C")]
    layers = {lib.NORM_NAMES[n].split(" ")[0]: [describe_norm(m) for m in model.modules()
                                                if isinstance(m, (torch.nn.BatchNorm2d, torch.nn.GroupNorm))]
              for n, model in models.items()}
    return pd.DataFrame(layers, index=[f"after {c}" for c in convs])


def receptive_field_table(model):
    import pandas as pd
    rf = pd.DataFrame(lib.receptive_field_table(model)).set_index("layer")
    rf["channels"] = rf["channels"].map(lambda c: "–" if pd.isna(c) else f"{int(c)}")
    return rf


# =============================================================================================
# The results chapter: the three seed-0 models side by side
# =============================================================================================

def measured_on(rep: Reported) -> str:
    """Where the reported runs come from, and which runs the error bars leave out."""
    runs, out = rep.main, rep.left_out
    return (f"Measured on: **{'; '.join(sorted({m['data'] for m in runs.values()}))}**, on "
            f"{'; '.join(sorted({m['device'] for m in runs.values()}))}. The offline copy is "
            "JPEG-compressed, so its accuracies can sit slightly below those on the official files."
            + (f" Left out of the means and error bars, as not trained like seed 0: {', '.join(out)}." if out else ""))


def accuracy_table(rows: list[dict]):
    """Final accuracies per norm: mean ± std over seeds, and the seed-0 run's test, train and flip-TTA accuracy."""
    import pandas as pd
    return pd.DataFrame([{
        "model": r["model"], f"test acc. (%), mean ± std of {r['seeds']} seeds": mean_std_text(r),
        "test acc. (%), seed 0": r["test_acc"], "train acc. (%), seed 0": r["train_acc"],
        "flip TTA (%), seed 0": r["test_acc_tta"], "parameters": f"{r['params']:,}"} for r in rows]).set_index("model")


def results_numbers(rows: list[dict], cms: dict[str, torch.Tensor]) -> dict:
    """What the results page's prose quotes: each norm's mean ± std, whether GN and LN are level, and the
    most confused pair(s) of classes."""
    main = {r["norm"]: r for r in rows}
    pairs = {most_confused(cm)[:2] for cm in cms.values()}
    return {**{f"{r['norm']}_mean": mean_std_text(r) for r in rows},
            "gn_ln": "GN and LN are level within twice the seed-to-seed spread" if level(main["gn"], main["ln"], seed_spread(rows))
            else "GN and LN differ by more than twice the seed-to-seed spread",
            "top_pair": " and ".join(sorted(f"{lib.CLASSES[a]} ↔ {lib.CLASSES[b]}" for a, b in pairs))}


def misclassified_figure(norm: str, test_x: torch.Tensor, prediction: dict, narrow: bool = False):
    """The 5x2 grid of one model's ten most confident mistakes over the whole test set."""
    return plot_misclassified(test_x, lib.misclassified(prediction["probs"], prediction["labels"]),
                              title=f"{lib.NORM_NAMES[norm]}: its 10 most confident mistakes", narrow=narrow)


def agreement(predictions: dict[str, dict]) -> dict:
    """Which test images all three models get right or wrong, and those only one gets right: the numbers
    and the sentence the page prints."""
    labels = predictions["bn"]["labels"]
    if not all(torch.equal(p["labels"], labels) for p in predictions.values()):
        raise lib.NormbookError("the runs' predictions are over different test images")
    right = torch.stack([predictions[n]["probs"].argmax(1) for n in lib.NORMS]) == labels
    only = {n: int((right[i] & ~right[[j for j in range(len(lib.NORMS)) if j != i]].any(0)).sum())
            for i, n in enumerate(lib.NORMS)}
    all_right, all_wrong = int(right.all(0).sum()), int((~right).all(0).sum())
    text = (f"All three are right on {all_right:,} of the {len(labels):,} test images and all three wrong on "
            f"{all_wrong:,}. On the rest they disagree; images that **only one** norm gets right: "
            + ", ".join(f"{n.upper()} {only[n]}" for n in lib.NORMS) + ".")
    return dict(text=text, numbers=dict(all_right=f"{all_right:,}", all_wrong=f"{all_wrong:,}"))


def plot_disagreements(test_x: torch.Tensor, predictions: dict[str, dict], k: int = 10, narrow: bool = False):
    """The k test images on which the three make three different predictions, most confident first."""
    import matplotlib.pyplot as plt
    labels = predictions["bn"]["labels"]
    preds = torch.stack([predictions[n]["probs"].argmax(1) for n in lib.NORMS])
    differ = ((preds[0] != preds[1]) & (preds[1] != preds[2]) & (preds[0] != preds[2])).nonzero().flatten()
    confidence = torch.stack([predictions[n]["probs"].max(1).values for n in lib.NORMS]).min(0).values
    chosen = differ[confidence[differ].argsort(descending=True)][:k]
    fig, axes = plt.subplots(5, 2, figsize=(PHONE_IN - 0.35, 11)) if narrow else plt.subplots(2, 5, figsize=(10, 6))
    for ax, i in zip(axes.flat, chosen.tolist()):
        ax.imshow(test_x[i].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"true: {lib.CLASSES[labels[i]]}\n" + "\n".join(
            f"{n.upper()}: {lib.CLASSES[preds[j, i]]}" for j, n in enumerate(lib.NORMS)), fontsize=MIN_PT if narrow else 10)
    for ax in axes.flat:
        ax.axis("off")
    fig.suptitle("Images on which BN, GN and LN\nmake three different predictions" if narrow else
                 "Test images on which BN, GN and LN make three different predictions", fontsize=10.5 if narrow else 12)
    fig.tight_layout()
    return fig


def confusion_figure(norm: str, cm: torch.Tensor, narrow: bool = False, seed: int = 0):
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(PHONE_IN - 0.2, 3.9) if narrow else (6.4, 5.6))
    plot_confusion(cm, title=f"{lib.NORM_NAMES[norm]} (seed {seed})", ax=ax, narrow=narrow)
    fig.tight_layout()
    return fig


def per_class_table(cms: dict[str, torch.Tensor]):
    """Per-class test accuracy (%), one row per class, one column per norm."""
    import pandas as pd
    return pd.DataFrame({n.upper(): per_class_accuracy(cm) for n, cm in cms.items()}, index=lib.CLASSES)


def plot_per_class(per_class, narrow: bool = False):
    """Per-class test accuracy, one bar per norm (narrow: horizontal bars, classes down the side)."""
    import matplotlib.pyplot as plt
    colors = [COLORS[c.lower()] for c in per_class.columns]
    lo = max(0, per_class.values.min() - 10)
    if narrow:
        fig, ax = plt.subplots(figsize=(PHONE_IN, 6.2))
        per_class.iloc[::-1].plot.barh(ax=ax, color=colors, width=0.8)
        ax.set(xlabel="test accuracy (%)", xlim=(lo, 100), title="Per-class test accuracy")
        ax.legend(loc="lower center", ncol=3, bbox_to_anchor=(0.5, 1.04), frameon=False, handlelength=1.2)
    else:
        fig, ax = plt.subplots(figsize=(10, 4.2))
        per_class.plot.bar(ax=ax, color=colors, width=0.8)
        ax.set(ylabel="test accuracy (%)", ylim=(lo, 100), title="Per-class test accuracy")
        ax.legend(loc="lower center", ncol=3, bbox_to_anchor=(0.5, 1.08), frameon=False)
    fig.tight_layout()
    return fig


def accuracy_range(rows) -> float:
    """How far apart the three norms' mean test accuracies are (points): the best minus the worst."""
    means = [r["test_mean"] for r in rows]
    return max(means) - min(means)


def findings_list(findings: list[dict]) -> str:
    return "\n".join(f"{i}. **{f['title']}**: {f['text']}" for i, f in enumerate(findings, 1))


# =============================================================================================
# Findings
# =============================================================================================
# The short statements the results chapter and the README both print, computed once, here, from
# the run artifacts: each is a dict with a `title`, a `text` and the `value` it rests on.

def findings(rep: Reported, cms: dict[str, torch.Tensor], runs_b: list[dict], rob: list[dict]) -> list[dict]:
    """From the reported runs, the confusion matrices of their seed-0 runs, the batch-size sweep (sweep) and
    runs/robustness/'s records (model_records)."""
    rows = {r["norm"]: r for r in summary_rows(rep)}
    runs = rep.main
    order = sorted(rows, key=lambda n: -rows[n]["test_mean"])
    best, worst = order[0], order[-1]
    spread = seed_spread(rows.values())
    gap = accuracy_range(rows.values())
    lowest = order[-2:]                                 # the two behind the best, higher first
    diff = abs(rows[lowest[0]]["test_mean"] - rows[lowest[1]]["test_mean"])
    seeds = min(r["seeds"] for r in rows.values())
    out = [dict(title="Ranking", value=gap, text=" > ".join(f"{n.upper()} {mean_std_text(rows[n])} %" for n in order)
                + " (final test accuracy, " + (f"mean ± std over {seeds} seeds): " if seeds > 1 else "seed 0): ")
                + f"{best.upper()} leads {worst.upper()} by {gap:.2f} points; {lowest[0].upper()} and "
                f"{lowest[1].upper()} differ by {diff:.2f}" + ("." if math.isnan(spread) else
                f", {'below' if level(rows[lowest[0]], rows[lowest[1]], spread) else 'above'} twice the largest seed-to-seed "
                f"std (2 × {spread:.2f} = {2 * spread:.2f})."))]
    lead = {e: runs["bn"]["history"][e]["test_acc"] - max(runs[n]["history"][e]["test_acc"] for n in ("gn", "ln"))
            for e in (0, -1)}
    versus = lambda d: f"{abs(d):.1f} points {'above' if d >= 0 else 'below'}"
    out.append(dict(title="Early epochs", value=lead[0], text=f"after one epoch BN's test accuracy is {versus(lead[0])} "
                    f"the better of GN and LN, after the last {versus(lead[-1])} (seed 0)."))
    top = {n: most_confused(cm) for n, cm in cms.items()}
    names = {n: f"{lib.CLASSES[a]} ↔ {lib.CLASSES[b]}" for n, (a, b, _) in top.items()}
    out.append(dict(title="Most confused pair", value=min(t[2] for t in top.values()), text=(
        f"for every norm, {names['bn']}: " if len(set(names.values())) == 1 else "per norm: ")
        + ", ".join(f"{n.upper()} {'' if len(set(names.values())) == 1 else names[n] + ' '}{top[n][2]}"
                    for n in cms) + " test images go from one of the two to the other (seed 0)."))
    batch = batch_summary(runs_b)
    if not batch["done"]:
        raise lib.NormbookError(f"{BATCH_SWEEP} holds no batch size trained for every norm: run `make sweeps`")
    worst, r = batch["worst"], runs_b[0]
    out.append(dict(title="Small batches", value=worst["bn"]["change_change"], text=(
        f"in the batch-size sweep ({recipe_words(runs_b, runs['bn'])}, on {r['n_train']:,} images for {r['epochs']} epochs, "
        f"paired by seed), going from batch 128 to batch {batch['done'][0]} changes test accuracy by " + ", ".join(
            f"{n.upper()} {worst[n]['change_change']:+.2f}" for n in lib.NORMS) + " points"
        + "; " + (f"BN falls behind the better of GN and LN at batch {', '.join(map(str, batch['behind']))}."
                  if batch["behind"] else "BN is never behind the better of GN and LN beyond the seed noise."))))
    if {r["norm"] for r in rob} != set(lib.NORMS):
        raise lib.NormbookError("runs/robustness/ lacks a norm: run `make robustness`")
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
# Where GN's and LN's lines coincide (as under a change of contrast), the dashed LN line on top shows both.
LINES = {"bn": dict(marker="o", ls="-"), "gn": dict(marker="s", ls="-"), "ln": dict(marker="^", ls="--")}


MIN_PT = 9            # no text in a figure is smaller: in a phone design it renders as large as the page's small print
PHONE_IN = 3.2        # the width of a phone design in inches: 9 pt there is 14 px in a 358 px column
PHONE_RC = {"font.size": 10, "axes.titlesize": 10.5, "axes.labelsize": 10, "xtick.labelsize": 9, "ytick.labelsize": 9,
            "legend.fontsize": 9, "legend.title_fontsize": 9, "figure.titlesize": 11}


def style():
    """One look for every figure in the book."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    sns.set_theme(context="notebook", style="whitegrid", font_scale=1.15)
    plt.rcParams.update({"figure.dpi": 110, "savefig.dpi": 150, "savefig.bbox": "tight"})


def plot_curves(runs: list[dict], title: str = "", seeds: dict[str, list[dict]] | None = None, last: int = 6,
                narrow: bool = False):
    """Loss and accuracy per epoch, train (dashed) and test (solid), one colour per norm; with `seeds`
    (norm -> runs), a third panel zooms into the last epochs' test accuracy with the band over seeds.
    narrow: the panels stacked, one legend below them."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator
    panels = 3 if seeds else 2
    if narrow:
        fig, axes = plt.subplots(panels, 1, figsize=(PHONE_IN, 2.5 * panels + 0.9))
        axes = list(axes)
    else:
        fig = plt.figure(figsize=(7.6, 6.6 if seeds else 3.4))       # the column's width: text at its size
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
    axes[0].set(xlabel="epoch", ylabel="cross-entropy", title="Loss" if narrow else "Loss (label smoothing 0.1)")
    axes[1].set(xlabel="epoch", ylabel="accuracy (%)", title="Accuracy")
    if seeds:
        axes[2].set(xlabel="epoch", ylabel="test accuracy (%)",
                    title=f"Test accuracy, last {last} epochs" + ("\n" if narrow else " ") + "(band: seeds)")
    if narrow:
        fig.legend(*axes[1].get_legend_handles_labels(), loc="lower center", ncol=len(runs), frameon=False,
                   handlelength=1.6, columnspacing=0.8)
    else:
        axes[1].legend(ncol=len(runs) if len(runs) < 3 else 2, fontsize=10, loc="lower right")
        if seeds:
            axes[2].legend(fontsize=10, loc="lower right")
    if title:
        fig.suptitle(title)
    fig.tight_layout(rect=(0, 0.75 / (2.5 * panels + 0.9), 1, 1) if narrow else (0, 0, 1, 1))
    return fig


def plot_answer(rows: list[dict], batch: dict, narrow: bool = False):
    """The book's key figure: final test accuracy per norm (every seed, mean ± std), beside each norm's
    test accuracy against batch size in the batch-size sweep (draw_batch_accuracy). narrow: the two
    panels stacked, for a phone's column."""
    import matplotlib.pyplot as plt
    fig, (left, right) = plt.subplots(2 if narrow else 1, 1 if narrow else 2, figsize=(PHONE_IN, 6.4) if narrow else (9, 3.6),
                                      gridspec_kw=dict(height_ratios=(1, 1.2)) if narrow else dict(width_ratios=(1, 1.5)))
    for i, r in enumerate(rows):
        accs = r["test_accs"]
        left.errorbar(i, r["test_mean"], yerr=r["test_std"], fmt="o", ms=9, capsize=6, color=COLORS[r["norm"]])
        left.scatter([i + 0.18] * len(accs), accs, s=14, color=COLORS[r["norm"]], alpha=0.6)
    left.set_xticks(range(len(rows)), [r["norm"].upper() for r in rows])
    left.set(ylabel="test accuracy (%)", xlim=(-0.5, len(rows) - 0.5), xlabel="",
             title=f"Batch 128, 20 epochs ({min(r['seeds'] for r in rows)} seeds)")
    draw_batch_accuracy(batch, right, narrow=narrow)
    right.set_title("Smaller batches (shorter budget)")
    fig.tight_layout()
    return fig


def draw_batch_accuracy(batch: dict, ax, control: dict | None = None, narrow: bool = False) -> None:
    """Test accuracy against batch size on `ax` (mean over seeds, bars: lowest to highest seed, each line
    labelled at its end); with `control` (step_control's runs: norm -> point), hollow markers at batch 128
    for twice the epochs."""
    for norm in lib.NORMS:
        pts = [r for r in batch["rows"] if r["norm"] == norm and r["n"]]
        ax.errorbar([r["batch"] for r in pts], [r["mean"] for r in pts], yerr=[[r["mean"] - r["lo"] for r in pts],
                    [r["hi"] - r["mean"] for r in pts]], fmt="o-", capsize=3, color=COLORS[norm])
        if pts:
            ax.annotate(norm.upper(), (pts[0]["batch"], pts[0]["mean"]), xytext=(-7, 0), textcoords="offset points",
                        ha="right", va="center", color=COLORS[norm], fontweight="bold")
        if control and control[norm]["n"]:
            ax.plot([128 * 1.15], [control[norm]["mean"]], "D", mfc="none", color=COLORS[norm], ms=8)
    ax.set_xscale("log", base=2)
    ax.set_xticks(BATCHES, [str(b) for b in BATCHES])
    ax.set_xlim(BATCHES[0] / (3 if narrow else 2.2), BATCHES[-1] * 1.5)
    ax.set(xlabel="batch size", ylabel="test accuracy (%)")


def plot_batch_sweep(batch: dict, control: dict | None = None, narrow: bool = False):
    """The batch-size sweep's figure (draw_batch_accuracy, with the step-count control)."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(PHONE_IN, 3.4) if narrow else (5.2, 4.2))
    draw_batch_accuracy(batch, ax, control, narrow)
    ax.set_title("Test accuracy by batch size" + ("\n(◇: batch 128, twice the epochs)" if control else ""))
    fig.tight_layout()
    return fig


def plot_bn_noise(ghosts: list[dict], frozen: dict, narrow: bool = False):
    """BN's change from batch 128 when its statistics come from n images: ghost batches inside batch 128,
    and real batches of n; the frozen-statistics run as a line across, if it finished."""
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(PHONE_IN, 3.6) if narrow else (5.2, 4.2))
    series = {}
    for key in ("ghost_change", "batch_change"):
        pts = [(g["images"], g[key]) for g in ghosts if g[key]["n"] or g["images"] == 128]
        series[key] = ([n for n, _ in pts], [0.0 if n == 128 else p["change"] for n, p in pts],
                       [[0.0 if n == 128 else p["change"] - p["lo"] for n, p in pts],
                        [0.0 if n == 128 else p["hi"] - p["change"] for n, p in pts]])
    labels = {"ghost_change": "ghost batch in batch 128", "batch_change": "real batch" if narrow else "real batch (LR scaled)"}
    for key, (x, y, err) in series.items():
        ax.errorbar(x, y, yerr=err, fmt="o-" if key == "ghost_change" else "s--", capsize=3, color=COLORS["bn"],
                    alpha=1 if key == "ghost_change" else 0.55, label=labels[key])
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.2), frameon=False,   # below the axes: it crosses no line
              fontsize=MIN_PT if narrow else 10)
    if frozen["n"]:
        ax.axhline(frozen["change"], color="0.35", ls=":", lw=1.5)
        ax.annotate("frozen after warm-up" if narrow else "statistics frozen after warm-up", (ghosts[0]["images"], frozen["change"]),
                    xytext=(0, 4), textcoords="offset points", fontsize=MIN_PT if narrow else 10, color="0.35")
    ax.axhline(0, color="0.5", lw=0.8)
    lo, hi = ax.get_ylim()
    ax.set_ylim(lo - 0.05 * (hi - lo), hi + 0.05 * (hi - lo))
    ax.set_xscale("log", base=2)
    xs = [g["images"] for g in ghosts]
    ax.set_xticks(xs, [str(n) for n in xs])
    ax.set(xlabel="images in BatchNorm's statistics", ylabel="change from batch 128" + ("" if narrow else " (points)"),
           title="BatchNorm: noisier statistics")
    fig.tight_layout()
    return fig


def plot_group_sweep(rows: list[dict], narrow: bool = False):
    """GroupNorm's test accuracy per group count, by channels per group (mean, bars: seeds)."""
    import matplotlib.pyplot as plt
    labels = {"1": "1\nLN", "C/4": "C/4", "C/2": "C/2", "C/1": "C/1\nIN"}
    pts = [r for r in rows if r["n"]]
    fig, ax = plt.subplots(figsize=(PHONE_IN, 3.3) if narrow else (5.2, 4.0))
    ax.errorbar(range(len(pts)), [r["mean"] for r in pts], yerr=[[r["mean"] - r["lo"] for r in pts],
                [r["hi"] - r["mean"] for r in pts]], fmt="o-", capsize=3, color=COLORS["gn"])
    ax.set_xticks(range(len(pts)), [labels.get(r["groups"], r["groups"]) for r in pts])
    ax.set(xlabel="groups G" + ("" if narrow else " (fewer channels per group →)"), ylabel="test accuracy (%)",
           title="GroupNorm by group count")
    fig.tight_layout()
    return fig


def smallest_text_pt(fig) -> float:
    """The size in points of the smallest text a figure shows (titles, labels, ticks, legends, annotations)."""
    import matplotlib.text
    fig.canvas.draw()                                 # ticks and their labels exist only once drawn
    sizes = [t.get_fontsize() for t in fig.findobj(matplotlib.text.Text)
             if t.get_visible() and t.get_text().strip() and t.get_figure() is not None]
    return min(sizes, default=float("inf"))


def png_bytes(fig, name: str) -> bytes:
    """The figure as PNG, with its smallest text size recorded (metadata MinFontPt, which the browser test
    reads); refuses a figure with text below MIN_PT."""
    import io
    pt = smallest_text_pt(fig)
    if pt < MIN_PT:
        raise lib.NormbookError(f"figure {name} has text at {pt:g} pt, below the {MIN_PT} pt a phone's column needs")
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"MinFontPt": f"{pt:g}"})
    return buf.getvalue()


def picture(draw, alt: str, name: str = "figure"):
    """A figure in its two designs, as an HTML <picture> that picks the one that fits the screen, and the
    PNG bytes of both ('wide', 'narrow'); nothing is saved (figure() saves them)."""
    import base64
    import matplotlib.pyplot as plt
    from IPython.display import HTML
    wide = draw(narrow=False)
    png = {"wide": png_bytes(wide, name)}
    with plt.rc_context(PHONE_RC):
        narrow = draw(narrow=True)
        png["narrow"] = png_bytes(narrow, f"{name} (phone)")
    plt.close(wide)
    plt.close(narrow)
    uri = {k: "data:image/png;base64," + base64.b64encode(v).decode() for k, v in png.items()}
    return HTML(f'<picture class="responsive"><source media="(max-width: 640px)" srcset="{uri["narrow"]}">'
                f'<img src="{uri["wide"]}" alt="{alt}" style="max-width: 100%; height: auto"></picture>'), png


def figure(name: str, draw, alt: str):
    """A figure in two designs: draw(narrow=False) for a desktop column, saved as figures_dir()/<name>.png
    (the README shows it), and draw(narrow=True) for a phone's, PHONE_IN wide, saved as <name>_phone.png;
    the page shows the one that fits the screen (picture)."""
    html, png = picture(draw, alt, name)
    for key, data in ((name, png["wide"]), (f"{name}_phone", png["narrow"])):
        lib.atomic_write(figures_dir() / f"{key}.png", lambda f, data=data: f.write(data))
    return html


def plot_misclassified(x_uint8: torch.Tensor, mistakes: list[dict], title: str = "", narrow: bool = False):
    """A 5x2 grid (5 columns, 2 rows; narrow: 2 columns, 5 rows) of misclassified images, each with its
    true class, the prediction and the model's confidence in it."""
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(5, 2, figsize=(PHONE_IN, 9.2)) if narrow else plt.subplots(2, 5, figsize=(10, 5.4))
    for ax, m in zip(axes.flat, mistakes):
        ax.imshow(x_uint8[m["index"]].permute(1, 2, 0).numpy(), interpolation="nearest")
        ax.set_title(f"true: {m['true']}\npred: {m['pred']} ({100 * m['confidence']:.0f}%)", fontsize=MIN_PT if narrow else 11)
    for ax in axes.flat:
        ax.axis("off")
    if title:
        fig.suptitle(title.replace(": ", ":\n") if narrow else title, fontsize=10.5 if narrow else 13)
    fig.tight_layout()
    return fig


def plot_confusion(cm: torch.Tensor, title: str = "", ax=None, narrow: bool = False):
    """Row-normalised confusion matrix in % (each row: where that class's test images went)."""
    import matplotlib.pyplot as plt
    import seaborn as sns
    if ax is None:
        _, ax = plt.subplots(figsize=(PHONE_IN - 0.2, 3.9) if narrow else (6.4, 5.6))
    pct = 100.0 * cm.float() / cm.sum(1, keepdim=True).clamp_min(1).float()
    sns.heatmap(pct.numpy(), annot=True, fmt=".0f", cmap="Blues", cbar=False, ax=ax, vmax=30,
                xticklabels=lib.CLASSES, yticklabels=lib.CLASSES, annot_kws={"fontsize": MIN_PT if narrow else 10})
    ax.set(xlabel="predicted", ylabel="true", title=title)
    return ax


def figures_dir():
    """book/figures/, where the README and the book find the figures; NORMBOOK_FIGURES names another folder
    (the chapter tests write theirs into a temporary one)."""
    import os
    from pathlib import Path
    return Path(os.environ.get("NORMBOOK_FIGURES") or lib.ROOT / "book" / "figures")


def save_figure(fig, name: str) -> None:
    """Save one design of a figure to figures_dir()/<name>.png, atomically (figure() saves both)."""
    data = png_bytes(fig, name)
    lib.atomic_write(figures_dir() / f"{name}.png", lambda f: f.write(data))


def table(df, formats: dict | None = None, precision: int = 2):
    """A DataFrame as the book shows it: one format per column (floats to `precision` decimals and integers
    with thousands separators unless `formats` says otherwise), and the `dataframe` class that the book's stylesheet pads and scrolls."""
    import pandas as pd
    fmt = {c: f"{{:,.{precision}f}}" if pd.api.types.is_float_dtype(df[c]) else "{:,}"
           for c in df.columns if pd.api.types.is_float_dtype(df[c]) or pd.api.types.is_integer_dtype(df[c])}
    fmt.update(formats or {})
    text = [f"td.col{j}, th.col{j}" for j, c in enumerate(df.columns) if not pd.api.types.is_numeric_dtype(df.iloc[:, j])]
    if df.index.name and not isinstance(df.columns, pd.MultiIndex):
        df = df.rename_axis(columns=df.index.name)          # the index's name heads its column (the corner cell)
    return (df.style.format(fmt, na_rep="—").hide(axis="index", names=True).set_table_attributes('class="dataframe"')
            .set_table_styles([dict(selector=", ".join(text), props="text-align: left")] if text else []))


# =============================================================================================
# Why they differ: shifted inputs, batch companions, training dynamics, Weight Standardization
# =============================================================================================
# runs/robustness/ holds one record per saved model (robustness.py); the seed-0 runs carry a trace of
# their layers (lib.Tracer). Each function returns what one section of the why chapter prints.

SHORT = {"bn": "BN", "gn": "GN", "ln": "LN"}          # narrow column headers: a phone shows all three


def glue_all(numbers: dict) -> None:
    """Glue every value of `numbers` (name -> text) for the page's prose, without displaying it."""
    from myst_nb import glue
    for name, value in numbers.items():
        glue(name, value, display=False)


def robustness_runs() -> list[dict]:
    """Every record in runs/robustness/, by norm and seed; refuses an empty folder."""
    rob = sorted(model_records("robustness"), key=lambda r: (r["norm"], r["seed"]))
    if not rob:
        raise lib.NormbookError("no results in runs/robustness/: run `make robustness` first")
    return rob


def robustness_source(rob: list[dict]) -> str:
    counts = ", ".join(f"{short_name(n)} {sum(r['norm'] == n for r in rob)} seeds" for n in lib.NORMS)
    return (f"The measurements of section 1 are computed from `runs/robustness/` (one file per saved model: {counts}), "
            f"on the test set (data: {rob[0]['data']}), in each run's own precision "
            f"({', '.join(sorted({r['precision'] for r in rob}))}). Bands and ranges span the seeds; lines are their mean.")


def seed_stats(rob: list[dict], column: str) -> dict:
    """'mean', 'min', 'max' over seeds of a column holding a dict per run: a DataFrame each (row: the dict's
    key, column: norm)."""
    import pandas as pd
    frames = {n: pd.DataFrame([r[column] for r in rob if r["norm"] == n]) for n in lib.NORMS}
    return {stat: pd.DataFrame({n: getattr(f, stat)() for n, f in frames.items()}) for stat in ("mean", "min", "max")}


def _mean_over(rob: list[dict], norm: str, get) -> float:
    return statistics.mean(get(r) for r in rob if r["norm"] == norm)


def plot_shifted_inputs(rob: list[dict], narrow: bool = False):
    """Accuracy when the input is multiplied by a (contrast) and when a brightness is added (mean over seeds,
    band: lowest to highest seed); narrow: the two panels stacked."""
    import matplotlib.pyplot as plt
    scale, bright = seed_stats(rob, "scale"), seed_stats(rob, "brightness")
    fig, axes = plt.subplots(2, 1, figsize=(PHONE_IN, 6.0)) if narrow else plt.subplots(1, 2, figsize=(7.6, 3.4))
    for ax, stats in zip(axes, (scale, bright)):
        x = [float(a) for a in stats["mean"].index]
        for n in lib.NORMS:
            ax.plot(x, stats["mean"][n], color=COLORS[n], label=short_name(n), **LINES[n])
            ax.fill_between(x, stats["min"][n], stats["max"][n], color=COLORS[n], alpha=0.2)
    x = [float(a) for a in scale["mean"].index]
    axes[0].set_xscale("log", base=2)
    axes[0].set_xticks(x, [f"{a:g}" for a in x])
    axes[0].set(xlabel="input multiplied by a", ylabel="test accuracy (%)", title="Contrast")
    axes[0].legend(fontsize=MIN_PT if narrow else 10)
    axes[1].set(xlabel="brightness added to the raw image\n([0, 1] units)", title="Brightness",
                ylabel="test accuracy (%)" if narrow else "")      # side by side, the left axis names both
    fig.tight_layout()
    return fig


def shifted_inputs(rob: list[dict]) -> dict:
    """Section 1a: the table of accuracy by contrast factor a with the largest logit change when the input
    doubles, and the numbers the prose quotes."""
    scale = seed_stats(rob, "scale")
    invariance = {n: max(r["max_logit_change_scale_2"] for r in rob if r["norm"] == n) for n in lib.NORMS}
    table = scale["mean"].T.rename(columns=lambda a: f"a = {float(a):g}")
    table["largest logit change, a = 1 → 2"] = [invariance[n] for n in table.index]
    table.index = [short_name(n) for n in table.index]
    numbers = dict(bn_scale_4=f"{scale['mean'].loc['4.0', 'bn']:.1f}", bn_scale_025=f"{scale['mean'].loc['0.25', 'bn']:.1f}",
                   gnln_logit=f"{max(invariance['gn'], invariance['ln']):.1e}", bn_logit=f"{invariance['bn']:.1f}")
    return dict(table=table, numbers=numbers)


def plot_corruptions(rob: list[dict], narrow: bool = False):
    """Accuracy under each corruption against its severity (mean over seeds): 2 x 3 panels (narrow: 3 x 2)."""
    import matplotlib.pyplot as plt
    import robustness
    corr = seed_stats(rob, "corruptions")["mean"]
    fig, axes = plt.subplots(3, 2, figsize=(PHONE_IN, 7.4), sharey=True) if narrow else \
        plt.subplots(2, 3, figsize=(7.6, 5.6), sharey=True)
    for ax, name in zip(axes.flat, robustness.CORRUPTIONS):
        for n in lib.NORMS:
            ax.plot(robustness.SEVERITIES, [corr.loc[f"{name}/{s}", n] for s in robustness.SEVERITIES],
                    color=COLORS[n], label=SHORT[n] if narrow else short_name(n), ms=4 if narrow else 6, **LINES[n])
        ax.set(title=name, xticks=robustness.SEVERITIES)
    for ax in axes[-1]:
        ax.set_xlabel("severity")
    for ax in axes[:, 0]:
        ax.set_ylabel("accuracy (%)" if narrow else "test accuracy (%)")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="lower center", ncol=len(lib.NORMS), frameon=False)
    fig.tight_layout(rect=(0, 0.05 if narrow else 0.06, 1, 1))
    return fig


def corruptions(rob: list[dict]) -> dict:
    """Section 1b: accuracy per corruption averaged over the severities (table, with the mean corruption
    accuracy and clean accuracy), and the numbers quoted."""
    import pandas as pd
    import robustness
    corr, names = seed_stats(rob, "corruptions")["mean"], list(robustness.CORRUPTIONS)
    table = pd.DataFrame({short_name(n): [corr.loc[[f"{c}/{s}" for s in robustness.SEVERITIES], n].mean() for c in names]
                          for n in lib.NORMS}, index=names)
    table.loc["mean corruption accuracy"] = table.mean()
    table.loc["clean"] = [_mean_over(rob, n, lambda r: r["clean_acc"]) for n in lib.NORMS]
    numbers = dict(mca=", ".join(f"{k} {v:.2f} %" for k, v in table.loc["mean corruption accuracy"].items()),
                   contrast_sev5=", ".join(f"{short_name(n)} {corr.loc['contrast/5', n]:.1f} %" for n in lib.NORMS))
    return dict(table=table, numbers=numbers)


def adabn(rob: list[dict]) -> dict:
    """Section 1c: BN per corruption before and after recomputing its statistics on the shifted images
    (AdaBN), beside the better of GN and LN; and the numbers quoted."""
    import pandas as pd
    import robustness
    names = list(robustness.CORRUPTIONS)
    mean_of = lambda n, column: pd.DataFrame([r[column] for r in rob if r["norm"] == n]).mean()
    per_corruption = lambda series, c: series[[f"{c}/{s}" for s in robustness.SEVERITIES]].mean()
    before, after = mean_of("bn", "corruptions"), mean_of("bn", "corruptions_recalibrated")
    others = {n: mean_of(n, "corruptions") for n in ("gn", "ln")}
    table = pd.DataFrame({"BN": [per_corruption(before, c) for c in names],
                          "BN + AdaBN": [per_corruption(after, c) for c in names],
                          "better of GN and LN": [max(per_corruption(others[n], c) for n in others) for c in names]},
                         index=names)
    clean = {n: _mean_over(rob, n, lambda r: r["clean_acc"]) for n in lib.NORMS}
    losses = [clean[n] - per_corruption(others[n], c) for n in others for c in names]
    lost, back = clean["bn"] - before.mean(), after.mean() - before.mean()
    numbers = dict(adabn_wins=f"{int((table['BN + AdaBN'] > table['better of GN and LN']).sum())} of the {len(names)}",
                   gnln_corr_loss=f"{min(losses):.1f} to {max(losses):.1f}", bn_lost=f"{lost:.2f}",
                   bn_back=f"{back:+.2f}", bn_back_share=f"{100 * back / lost:.0f}", bn_after=f"{after.mean():.2f}")
    return dict(table=table, numbers=numbers)


def batch_companions(rob: list[dict]) -> dict:
    """Section 1d: accuracy with batch statistics, and the share of predictions that change when only an
    image's batch companions change, by evaluation batch size (tables: batch x norm); the numbers quoted."""
    import pandas as pd
    import robustness
    def by_batch(key):
        t = pd.DataFrame({SHORT[n]: [statistics.mean(r["batch"][str(b)][key] for r in rob if r["norm"] == n)
                                     for b in robustness.BATCH_SIZES] for n in lib.NORMS}, index=robustness.BATCH_SIZES)
        t.index.name = "batch size"
        return t
    acc, changed = by_batch("acc"), by_batch("changed")
    one_class = {n: _mean_over(rob, n, lambda r: r["one_class_batches_acc"]) for n in lib.NORMS}
    clean = {n: _mean_over(rob, n, lambda r: r["clean_acc"]) for n in lib.NORMS}
    same = all(abs(one_class[n] - clean[n]) < 1e-9 for n in ("gn", "ln"))
    most = changed[["GN", "LN"]].values.max()
    numbers = dict(
        bn_b1=f"{acc.loc[1, 'BN']:.2f}", bn_b128=f"{acc.loc[128, 'BN']:.2f}",
        bn_changed_b2=f"{changed.loc[2, 'BN']:.1f}", bn_changed_b128=f"{changed.loc[128, 'BN']:.1f}",
        gnln_changed="none" if most == 0 else f"at most {most:.2f} %", bn_one_class=f"{one_class['bn']:.2f}",
        gnln_acc_spread=f"{max(acc[c].max() - acc[c].min() for c in ('GN', 'LN')):.2f}", bn_clean=f"{clean['bn']:.2f}",
        gnln_one_class=("exactly their usual accuracy, " if same else "against their usual ") + ", ".join(
            f"{short_name(n)} {one_class[n]:.2f} %" + ("" if same else f" (usually {clean[n]:.2f} %)") for n in ("gn", "ln")))
    changed = changed.drop(index=1, errors="ignore")          # one image alone has no companions to change
    return dict(accuracy=acc, changed=changed, numbers=numbers)


def traces(runs: dict[str, dict]) -> dict[str, dict]:
    """norm -> the layer trace of its seed-0 run, with `epoch` (the trace's steps in epochs) and the run's
    `recipe` added."""
    if any("rotation" not in m.get("trace", {}).get("layers", {}).get("C1", {}) for m in runs.values()):
        raise lib.NormbookError("the seed-0 runs have no trace of each step's rotation: retrain them with `make runs`")
    import numpy as np
    return {n: dict(m["trace"], epoch=np.array(m["trace"]["step"]) / math.ceil(m["n_train"] / m["batch_size"]),
                    recipe=lib.recorded_recipe(m)) for n, m in runs.items()}


def rotation_degrees(trace: dict, layer: str):
    """The angle, in degrees, by which each traced step turned one conv weight."""
    import numpy as np
    return np.degrees(np.array(trace["layers"][layer]["rotation"]))


STAGE_COLORS = ("#E69F00", "#0072B2", "#CC79A7")   # Okabe-Ito: told apart with any colour vision
STAGE_LINES = ("-", "--", ":")                     # the first, second and third conv of a stage


def layer_styles(layers: list[str]) -> dict[str, dict]:
    """A colour per stage (the convs between two pools) and a line style per conv within it, so that eight
    lines stay distinguishable: C1 C2 | C3 C4 C5 | C7 C8 C9."""
    stage, position, out = 0, 0, {}
    for name in lib.LAYERS:
        if name.startswith("P"):
            stage, position = stage + 1, 0
        elif name in layers:
            out[name] = dict(color=STAGE_COLORS[stage], ls=STAGE_LINES[position])
            position += 1
    return out


def plain_log_ticks(ax) -> None:
    """Readable log-axis ticks: over less than two decades plain numbers with 2 and 5 between the powers of
    ten (0.2, 0.5, 1, 2); over more, the powers of ten alone (10⁻⁴)."""
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
    lo, hi = ax.get_ylim()
    if math.log10(hi / lo) < 2:
        ax.yaxis.set_major_locator(LogLocator(subs=(1, 2, 5)))
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: f"$10^{{{round(math.log10(v))}}}$"))
    ax.yaxis.set_minor_formatter(NullFormatter())


def plot_trace(traced: dict[str, dict], key: str, ylabel: str, title: str, log: bool = False, smooth: int = 1,
               narrow: bool = False):
    """One panel per norm (narrow: stacked), one line per norm layer (layer_styles) of a traced quantity over
    training; key 'rotation' is drawn in degrees; smooth: a running mean over that many trace points (a
    gradient's norm jumps from step to step)."""
    import matplotlib.pyplot as plt
    import numpy as np
    layers = list(traced["bn"]["layers"])
    styles = layer_styles(layers)
    fig, axes = plt.subplots(3, 1, figsize=(PHONE_IN, 7.6), sharex=True, sharey=True) if narrow else \
        plt.subplots(1, 3, figsize=(7.6, 3.4), sharey=True)
    for ax, n in zip(axes, lib.NORMS):
        t = traced[n]
        for name in layers:
            y = rotation_degrees(t, name) if key == "rotation" else np.array(t["layers"][name][key])
            y = np.convolve(y, np.ones(smooth) / smooth, mode="valid")
            ax.plot(t["epoch"][smooth - 1:], y, label=name, lw=1.3, **styles[name])
        ax.set(title=short_name(n))
        if log:
            ax.set_yscale("log")
    if log:
        plain_log_ticks(axes[0])                     # the axes share y
    for ax in ([axes[-1]] if narrow else axes):
        ax.set_xlabel("epoch")
    for ax in (axes if narrow else [axes[0]]):
        ax.set_ylabel(ylabel)
    handles, labels = axes[0].get_legend_handles_labels()
    if narrow:                                       # three columns, one per stage (its colour)
        by_stage = [[(h, l) for h, l in zip(handles, labels) if styles[l]["color"] == c] for c in STAGE_COLORS]
        blank = (plt.Line2D([], [], alpha=0), "")
        handles, labels = zip(*[entry for stage in by_stage for entry in stage + [blank] * (3 - len(stage))])
    fig.legend(handles, labels, loc="lower center", ncol=3 if narrow else len(layers), frameon=False, handlelength=2.2, columnspacing=0.9, fontsize=MIN_PT if narrow else 10)
    fig.suptitle(textwrap.fill(title, 36) if narrow else title)
    fig.tight_layout(rect=(0, 0.09 if narrow else 0.07, 1, 1))
    return fig


def trace_text(traced: dict[str, dict]) -> str:
    """Section 2's findings from the traces: weight norms, gradient shrinkage, the angle each step turns a
    weight, and the scale of the norms' inputs at the end, as a Markdown list; what the optimizer does to the
    weights' norms is said for the optimizer the runs record."""
    import numpy as np
    layers = list(traced["bn"]["layers"])
    at = lambda n, key, i: np.mean([traced[n]["layers"][name][key][i] for name in layers])
    w_ratio = {n: at(n, "weight_norm", -1) / at(n, "weight_norm", 0) for n in lib.NORMS}
    g_ratio = {n: at(n, "grad_norm", -1) / at(n, "grad_norm", 0) for n in lib.NORMS}
    turn = {n: np.mean([rotation_degrees(traced[n], name) for name in layers], axis=0).max() for n in lib.NORMS}
    act_end = {n: (min(traced[n]["layers"][l]["act_std_mean"][-1] for l in layers),
                   max(traced[n]["layers"][l]["act_std_mean"][-1] for l in layers)) for n in lib.NORMS}
    each = lambda values, fmt: ", ".join(f"{short_name(n)} {values[n]:{fmt}}" for n in lib.NORMS)
    muon = all(t["recipe"]["optimizer"] == "Muon" for t in traced.values())
    invariant = ("A weight followed by a normalization is *scale-invariant*: multiplying it by a constant changes "
                 "nothing downstream, and its gradient is orthogonal to it, so only its direction matters. ")
    drift = ("every step lengthens such a weight while weight decay shortens it, and a longer weight turns the same "
             "learning rate into a smaller rotation of its direction: the effective learning rate is lr / ‖w‖² "
             "([van Laarhoven, 2017](https://arxiv.org/abs/1706.05350); [Zhang et al., 2019](https://arxiv.org/abs/1810.12281))")
    ratio = "(mean over layers, last trace point over first)"
    if muon:
        # Muon's step is about the same size whatever the gradient: the angle follows its learning rate.
        follows = {n: np.median([r / (lr * t["recipe"]["muon_lr"] / t["recipe"]["peak_lr"]) for name in layers
                                 for r, lr in zip(t["layers"][name]["rotation"], t["lr"]) if lr > 0])
                   for n, t in traced.items()}
        weights = (f"The Muon step, as in airbench, rescales every 3x3 conv weight to norm √(its output channels) before it "
                   f"moves it: over training their norms change by "
                   f"a factor of {each(w_ratio, '.2f')} {ratio}. " + invariant + "Under SGD alone " + drift
                   + "; Muon takes that drift away.")
        pull = "with the norm held fixed, that is the change of the pull on each weight's direction itself."
        angle = ("; Muon's orthogonalised update has about the same size whatever the gradient, so the angle tracks "
                 f"Muon's learning rate: over the trace points it is a median {each(follows, '.2f')} × that rate (in radians)")
    else:
        weights = (f"Over training the conv weights' norms change by a factor of {each(w_ratio, '.2f')} {ratio}. "
                   + invariant + "So " + drift + ".")
        pull = ("so the pull on each weight's direction is ‖gradient‖ × ‖w‖, and that changes by about "
                f"{each({n: g_ratio[n] * w_ratio[n] for n in lib.NORMS}, '.2g')}: had the weights not grown, their "
                "gradients would have grown by that much.")
        angle = "; it is about lr × ‖gradient‖ / ‖w‖, the effective learning rate times that pull"
    return "\n".join(f"- {s}" for s in [
        weights,
        f"The gradient reaching the conv weights changes by a factor of {each(g_ratio, '.2g')} over training {ratio}. "
        "For a scale-invariant weight the gradient is inversely proportional to ‖w‖; " + pull,
        f"At its largest a step turns a conv weight by {each(turn, '.2f')} degrees (mean over layers)" + angle
        + "; all fall to zero with the one-cycle schedule.",
        "At the end of training the norm inputs' scale ranges, over the eight layers, from "
        + "; ".join(f"{short_name(n)} {lo:.2g} to {hi:.2g}" for n, (lo, hi) in act_end.items())
        + ". The norm removes this scale, so the network is free to let it drift; it is the *direction* of "
        "each weight that the training moves."])


def trace_takeaway(traced: dict[str, dict]) -> str:
    """The chapter's takeaway on what the optimizer does to a scale-invariant weight."""
    if all(t["recipe"]["optimizer"] == "Muon" for t in traced.values()):
        return ("only its direction matters, and the Muon step holds its norm fixed, so the angle each step turns it follows "
                "Muon's learning rate, whatever the norm")
    return "its norm drifts, and the effective learning rate lr / ‖w‖² is what the schedule really controls"


def finished_plan(folder: str, earlier: str) -> str:
    """`folder` once its plan holds every run (diverged ones included), else `earlier`: an experiment retrained
    in the reported recipe replaces the earlier one only when complete, never by a part of it."""
    import experiments
    return folder if (lib.ROOT / folder / "plan.json").exists() and not experiments.missing(folder) else earlier


WEIGHT_STD = finished_plan("runs/weight-std-muon", earlier="runs/weight-std")


def weight_std(reported: dict, folder: str = WEIGHT_STD, noise_from: str = "runs/tune") -> dict:
    """Section 3: Weight Standardization's paired change per norm on the validation split (table), the
    paragraph that says where its runs are and what cleared the noise, and the takeaway."""
    import experiments
    import pandas as pd
    runs = experiments.load_results(folder)
    sigma, threshold = experiments.noise_threshold(noise_from)
    changes = [r for r in runs if r.get("tuning") == "weight std" and r.get("delta") is not None]
    rows, deltas = [], {}
    for n in lib.NORMS:
        mine = sorted((r for r in changes if r["norm"] == n), key=lambda r: r["seed"])
        deltas[n] = [r["delta"] for r in mine]
        bar = threshold / math.sqrt(max(len(mine), 1))
        mean = statistics.mean(deltas[n]) if mine else float("nan")
        rows.append({"norm": short_name(n),
                     "change per seed " + "/".join(str(r["seed"]) for r in mine): ", ".join(f"{d:+.2f}" for d in deltas[n]) or "—",
                     "mean change (points)": mean, "± threshold": bar,
                     "verdict": "no runs" if not mine else "clear gain" if mean > bar else
                     "clear loss" if mean < -bar else "within noise"})
    table = pd.DataFrame(rows).set_index("norm")
    planned = len(experiments.planned(folder))
    done = planned - len(experiments.missing(folder))
    n_ws = sum(r.get("tuning") == "weight std" for r in runs)
    text = ((f"The {planned} runs" if done == planned else f"{done} of the {planned} runs")
            + f" ({n_ws} with Weight Standardization, {done - n_ws} without) are in `{folder}/`. "
            "The threshold is two standard deviations of a mean of that many paired differences, from the "
            f"validation noise of the tuning appendix. Recipe: {recipe_words(runs, reported, varied=('weight_std',))}. "
            f"Data: {runs[0]['data']}; device: {runs[0]['device']}. ")
    gains = list(table[table.verdict == "clear gain"].index)
    if not changes:
        text += "No run with Weight Standardization is in the folder."
    elif gains:
        text += "It clears the noise as a gain for: " + ", ".join(gains) + "."
    else:
        text += ("It clears the noise as a gain for no norm." if done == planned else
                 f"With {done} of its {planned} runs measured, it clears the noise as a gain for no norm.")
    for n in lib.NORMS:
        d = deltas[n]
        if len(d) > 1 and table.verdict[short_name(n)] == "within noise" and (min(d) >= 0.1 or max(d) <= -0.1):
            text += (f" {short_name(n)} {'gains' if statistics.mean(d) > 0 else 'loses'} in each of "
                     f"its {len(d)} seeds ({min(d):+.2f} to {max(d):+.2f}), but its mean stays inside the threshold: "
                     "a hint, not a result.")
    counts = sorted({len(d) for d in deltas.values()})
    takeaway = (("its mean change is within the validation noise for every norm (" if set(table.verdict) == {"within noise"}
                 else "its verdicts per norm: " + "; ".join(f"{n} {v}" for n, v in table.verdict.items()) + " (")
                + ", ".join(f"{n} {r['mean change (points)']:+.2f}" for n, r in table.iterrows()) + " points, "
                + (f"{counts[0]} seeds each)" if len(counts) == 1 else f"{counts[0]} to {counts[-1]} seeds)"))
    return dict(table=table, text=text, numbers=dict(ws_takeaway=takeaway))


# =============================================================================================
# The performance appendix: bench/results.json (make bench) and bench/gpu_runs.json
# =============================================================================================

def bench_source(bench: dict, reported: dict) -> str:
    """Where and how bench/results.json was measured, and in which recipe against `reported` (a run's record)."""
    p = bench["pipelines"][0]
    precision = p["lib_setting"].split(",")[0]          # as the timed training run recorded it
    return (f"Measured on **{p['device']}** ({p['threads']} threads, clock {p['clock_ghz']} GHz), PyTorch {p['torch']}, "
            f"batch size {p['batch_size']}, {p['images_timed']:,} training images timed per pipeline and norm, "
            f"lib.py's runs in {recipe_words([bench], reported)} (optimizer: "
            f"{recipe_parts(lib.recorded_recipe(bench))['optimizer']}; the tutorial-style loop takes a plain SGD step); every "
            f"training step on this CPU runs in {precision}: the first table times both precisions, the "
            f"others {precision} alone.")


def options_table(bench: dict) -> dict:
    """The bare step's speed-up per memory layout and precision and norm, with images/s; and the fastest
    option per norm."""
    import pandas as pd
    opt = pd.DataFrame(bench["options"])
    opt["option"] = opt["layout"] + " + " + opt["precision"]
    speedup = opt.pivot(index="option", columns="norm", values="speedup")[list(lib.NORMS)].rename(columns=str.upper)
    ips = opt.pivot(index="option", columns="norm", values="images_per_s")[list(lib.NORMS)]
    ips.columns = [f"{c.upper()} img/s" for c in ips.columns]
    best = opt.loc[opt.groupby("norm")["images_per_s"].idxmax()].set_index("norm")
    text = "Fastest option per norm: " + "; ".join(
        f"**{n.upper()}** {best.loc[n, 'option']} ({best.loc[n, 'speedup']:.2f}x)" for n in lib.NORMS) + "."
    return dict(table=speedup.join(ips), formats={c: "{:.0f}" for c in ips.columns}, text=text)


def group_norm_kernel(bench: dict) -> dict:
    """GroupNorm's implementations and layouts against PyTorch's NCHW kernel."""
    import pandas as pd
    gn = pd.DataFrame(bench["group_norm"])
    base = gn[(gn.implementation == "PyTorch GroupNorm") & (gn.layout == "NCHW")]["images_per_s"].iloc[0]
    gn["vs PyTorch NCHW"] = gn["images_per_s"] / base
    top = gn.loc[gn["images_per_s"].idxmax()]
    text = (f"Fastest: **{top.implementation}, {top.layout}** ({top.images_per_s:.0f} img/s, "
            f"{top['vs PyTorch NCHW']:.2f}x PyTorch's NCHW kernel, which the report uses).")
    return dict(table=gn.set_index(["implementation", "layout"]), text=text,
                formats={"images_per_s": "{:.0f}", "vs PyTorch NCHW": "{:.2f}x"})


def activation_cost(bench: dict) -> dict:
    """The bare step's images/s per activation and norm, and its speed relative to ReLU."""
    import pandas as pd
    act = pd.DataFrame(bench["activations"])
    act["norm"] = act["norm"].str.upper()
    order = [n.upper() for n in lib.NORMS]
    ratio = act.pivot(index="activation", columns="norm", values="vs_relu")[order]
    ratio.columns = [f"{c} vs ReLU" for c in ratio.columns]
    ips = act.pivot(index="activation", columns="norm", values="images_per_s")[order]
    ips.columns = [f"{c} img/s" for c in ips.columns]
    chosen = act[act.activation == lib.RECIPE["activation"]]
    text = (f"The bare step with the recipe's activation, {lib.ACTIVATION_NAMES[lib.RECIPE['activation']]}, relative "
            "to the same step with ReLU: " + ", ".join(f"{r.norm} {r.vs_relu:.2f}x" for r in chosen.itertuples()) + ".")
    return dict(table=ips.join(ratio), text=text,
                formats={**{c: "{:.0f}" for c in ips.columns}, **{c: "{:.2f}x" for c in ratio.columns}})


def compile_cost(bench: dict, seeds: dict[str, list[dict]]) -> dict:
    """torch.compile's speed-up of the bare step and its compile time; and what a whole run would gain:
    its training time (median over seeds: one run's time can include a stall) sped up by the step's
    speed-up, against one compile (a lower bound: evaluation and the smaller last batch compile more)."""
    import pandas as pd
    comp = pd.DataFrame(bench["compiled"])
    comp["norm"] = comp["norm"].str.upper()
    train_s = {n.upper(): statistics.median(r["train_seconds"] for r in runs) for n, runs in seeds.items()}
    saved = {r.norm: train_s[r.norm] * (1 - 1 / r.speedup) for r in comp.itertuples()}
    net = [f"{r.norm} ({saved[r.norm] - r.compile_seconds:.0f} s a run)" for r in comp.itertuples()
           if saved[r.norm] > r.compile_seconds]
    text = ("For a whole 20-epoch run (its training time from `metrics.json`, median over seeds), the step's speed-up "
            "would save (+) or cost (−) " + ", ".join(f"{r.norm} {saved[r.norm]:+.0f} s against {r.compile_seconds:.0f} s "
                                                      "of compiling" for r in comp.itertuples())
            + (": a net gain only for " + ", ".join(net) if net else ": no net gain for any norm")
            + ", before the further compiles of evaluation and of the last, smaller batch. The report's training "
            "does not compile.")
    table = comp.set_index("norm").rename(columns={
        "eager_images_per_s": "eager (img/s)", "compiled_images_per_s": "compiled (img/s)",
        "speedup": "compiled vs eager", "compile_seconds": "compiling (s)"})
    return dict(table=table, text=text, formats={"eager (img/s)": "{:.0f}", "compiled (img/s)": "{:.0f}",
                                                 "compiled vs eager": "{:.2f}x", "compiling (s)": "{:.0f}"})


def pipelines_table(bench: dict) -> dict:
    """The whole input pipeline and step of lib.py against a tutorial-style DataLoader loop, per norm."""
    import pandas as pd
    pipe = pd.DataFrame(bench["pipelines"]).set_index("norm")[[
        "lib_images_per_s", "tutorial_images_per_s", "ratio", "gflops", "peak_fp32_gflops", "fraction_of_fp32_peak",
        "lib_setting"]]
    pipe.index = [n.upper() for n in pipe.index]
    pipe.columns = ["lib.py (img/s)", "tutorial-style (img/s)", "ratio", "GFLOP/s", "fp32 peak (GFLOP/s)",
                    "fraction of peak", "lib.py setting"]
    return dict(table=pipe, formats={"lib.py (img/s)": "{:.0f}", "tutorial-style (img/s)": "{:.0f}",
                                     "fraction of peak": "{:.0%}"})


def whole_runs(rep: Reported) -> dict:
    """The wall time of every full run of each norm, and the report's total (the sum of each norm's median)."""
    import pandas as pd
    runs, seeds = rep.main, rep.seeds
    table = pd.DataFrame([{"model": lib.NORM_NAMES[n], **{f"seed {r['seed']} (min)": r["seconds"] / 60 for r in seeds[n]},
                           "precision": m["precision"], "layout": m["memory_format"], "device": m["device"]}
                          for n, m in runs.items()]).set_index("model")
    total = sum(statistics.median(r["seconds"] for r in seeds[n]) for n in runs) / 60
    text = (f"The three models take about **{total:.0f} minutes** together (the sum of each norm's median run), one "
            "after the other on the same machine. These are wall-clock times: a run whose time stands out shared the "
            "two cores with other work for part of it.")
    return dict(table=table, text=text)


def gpu_runs(gpu: dict, tune_runs: list[dict]) -> dict:
    """bench/gpu_runs.json: the three models trained on a GPU eagerly and with CUDA graphs; where their recipe
    differs from the reported one, say so and what the difference costs on the same GPU (paired runs of
    `tune_runs` by norm and seed)."""
    import pandas as pd
    rows = [{"mode": mode, "model": lib.NORM_NAMES[r["norm"]], "wall time (s)": r["wall_seconds"],
             "training (s)": r["train_seconds"], "training img/s": r["train_images_per_s"],
             "final test accuracy (%)": r["final_test_acc"]}
            for mode, res in gpu["modes"].items() for r in res["runs"]]
    then = lib.recorded_recipe(gpu["modes"]["cuda graphs"]["runs"][0])
    changed = {k: v for k, v in then.items() if lib.RECIPE.get(k) != v}
    note = ""
    if changed:
        note = "These runs used a recipe that differs from the reported runs': " + ", ".join(
            f"{k} = {v} where the reported runs have {lib.RECIPE[k]}" for k, v in changed.items()) + ". "
        if set(changed) == {"activation"}:
            secs = {(t["norm"], t["seed"], lib.recorded_recipe(t)["activation"]): t["seconds"]
                    for t in tune_runs if t["device"] == gpu["device"]}
            old, new = changed["activation"], lib.RECIPE["activation"]
            ratios = [secs[n, s, new] / v for (n, s, a), v in secs.items() if a == old and (n, s, new) in secs]
            if ratios:
                note += (f"On the same GPU a run with {new} took {statistics.mean(ratios) - 1:+.1%} the time of one "
                         f"with {old} (mean of {len(ratios)} pairs of runs, same norm and seed). ")
    total = {mode: res["total_wall_seconds"] for mode, res in gpu["modes"].items()}
    gap = max(abs(a["final_test_acc"] - b["final_test_acc"])
              for a, b in zip(gpu["modes"]["cuda graphs"]["runs"], gpu["modes"]["eager"]["runs"]))
    text = (f"Measured on **{gpu['device']}** (PyTorch {gpu['torch']}), data: {gpu['modes']['eager']['runs'][0]['data']}. "
            f"All three runs: **{total['cuda graphs']:.1f} s with CUDA graphs**, {total['eager']:.1f} s eager "
            f"({total['eager'] / total['cuda graphs']:.1f}x); the wall time includes CUDA start-up in the first run. "
            f"Final test accuracies of the two modes differ by at most {gap:.2f} points (one seed each; the two "
            "modes run different kernels, whose rounding differences grow over the run). " + note)
    return dict(table=pd.DataFrame(rows).set_index(["mode", "model"]), text=text,
                formats={"wall time (s)": "{:.1f}", "training (s)": "{:.1f}", "training img/s": "{:.0f}"})


# =============================================================================================
# The reproducibility appendix
# =============================================================================================

def data_table(runs: list[dict]):
    """Per run: its data, how many images, and the per-channel mean and std it normalized with."""
    import pandas as pd
    return pd.DataFrame([{"run": m["run"], "data": m["data"], "train / test images": f"{m['n_train']:,} / {m['n_test']:,}",
                          "mean (R, G, B)": ", ".join(f"{v:.4f}" for v in m["mean"]),
                          "std (R, G, B)": ", ".join(f"{v:.4f}" for v in m["std"])} for m in runs]).set_index("run")


def runs_table(runs: list[dict]):
    """Per run (its seed in its name): how it was trained (epochs, batch, precision, device, torch), its time and
    final test accuracy, and whether it carries a layer trace."""
    import pandas as pd
    return pd.DataFrame([{"run": m["run"], "epochs": m["epochs"], "batch": m["batch_size"],
                          "precision": m["precision"], "device": m["device"], "torch": m["torch"], "minutes": m["seconds"] / 60, "traced": "trace" in m,
                          "final test acc. (%)": m["final_test_acc"]} for m in runs]).set_index("run")


def environment() -> str:
    """The Python, package and machine versions this page was executed with."""
    import platform
    from importlib.metadata import version
    lines = [f"{'Python':<11} {platform.python_version()}"]
    lines += [f"{p:<11} {version(p)}" for p in ("torch", "torchvision", "jupyter-book", "myst-nb", "papermill",
                                               "matplotlib", "seaborn", "torchinfo", "numpy", "pandas")]
    lines.append(f"{'machine':<11} {platform.machine()} {platform.processor() or ''} {torch.get_num_threads()} threads")
    return "\n".join(lines)


# =============================================================================================
# The tuning appendix: every experiment on the validation split, the lever stages, the ceiling
# =============================================================================================

RECIPE_WORDS = {   # what each recipe setting means, for a reader
    "optimizer": "optimizer", "momentum": "momentum", "peak_lr": "peak learning rate (one-cycle)",
    "lr_batch": "batch size the peak learning rate is set for (scaled linearly)", "warmup": "share of steps warming up",
    "weight_decay": "weight decay (conv weights)", "label_smoothing": "label smoothing",
    "translate": "random translation (pixels)", "flip": "random horizontal flip", "shortcuts": "identity shortcuts",
    "activation": "activation", "cutout": "cutout (pixels; 0: off)", "ema": "weight averaging decay (0: off)",
    "widths": "widths", "weight_std": "Weight Standardization", "bn_ghost": "BN ghost batch (0: the whole batch)",
    "bn_frozen": "BN statistics frozen after warm-up", "muon_lr": "Muon's peak LR (with optimizer Muon)",
    "whiten": "whitened first layer", "dirac": "identity (Dirac) initialisation"}
SETTING_WORDS = {   # settings that read better as a phrase than as "name value"
    ("optimizer", "SGD-Nesterov"): "SGD-Nesterov for every weight", ("dirac", False): "Kaiming initialisation"}
LEVER_WORDS = {("optimizer", "Muon"): "**Muon** for the 3x3 conv weights", ("dirac", True): "**identity initialisation**"}
LEVERS = ("muon lr 0.05", "whiten trainable", "whiten frozen", "dirac init", "alternating flip")


def recipe_words(runs: list[dict], reported: dict, varied=("bn_ghost", "bn_frozen")) -> str:
    """'the reported recipe', or the reported recipe with each setting the runs hold otherwise, in words: a
    claim about an experiment stays true when the recipe changes. `varied`: settings the experiment varies on
    purpose, not counted as a difference. Muon's learning rate counts only at the batch it is given for (lr_batch):
    elsewhere a batch sweep scales it by its rule, which sweep_budget states."""
    ours = lib.recorded_recipe(reported)
    scaled = lambda r, k: k == "muon_lr" and r.get("batch_size", ours["lr_batch"]) != ours["lr_batch"]
    differ = {k: lib.recorded_recipe(r)[k] for r in runs for k in lib.RECIPE
              if k not in varied and not scaled(r, k) and lib.recorded_recipe(r)[k] != ours[k]}
    def say(k, x):
        if (k, x) in SETTING_WORDS:
            return SETTING_WORDS[k, x]
        return f"{RECIPE_WORDS.get(k, k)} {'on' if x is True else 'off' if x is False else x}"
    return "the reported recipe" if not differ else "a recipe with " + and_join(
        say(k, x) for k, x in differ.items()) + ", the rest as in the reported runs"


def evidence_recipes(sources: dict[str, list[dict]], reported: dict) -> str:
    """One sentence per recipe, other than the reported one, that some of the evidence was measured in:
    `sources` maps what a reader calls the evidence ("the group-count sweep") to its runs' records."""
    by_recipe = {}
    for name, runs in sources.items():
        words = recipe_words(runs, reported)
        if runs and words != "the reported recipe":
            by_recipe.setdefault(words, []).append(name)
    return " ".join(f"{and_join(names)[0].upper()}{and_join(names)[1:]} come{'s' if len(names) == 1 else ''} from {words}."
                    for words, names in by_recipe.items())


def validation_runs() -> dict:
    """Every run of the experiments on the validation split (with `folder`), their plans, and the noise:
    sigma (one run's seed-to-seed std) and threshold (two std of a difference of two single runs)."""
    import experiments
    folders = [f for f in experiments.plan_dirs() if "holdout" in experiments.load_plan(f)["data"]]
    sigma, threshold = experiments.noise_threshold("runs/tune")
    return dict(plans={f.name: experiments.load_plan(f) for f in folders}, sigma=sigma, threshold=threshold,
                runs=[dict(r, folder=f.name) for f in folders for r in experiments.load_results(f)])


def distinct_runs(runs: list[dict]) -> int:
    """How many trainings the records are: a run copied into another plan (experiments.adopt_runs, byte for
    byte) is counted once, whatever the plan calls it there."""
    named = {"folder", "variant", "tuning", "delta"}
    return len({json.dumps({k: x for k, x in r.items() if k not in named}, sort_keys=True) for r in runs})


def tuning_numbers(v: dict) -> dict:
    import experiments
    devices = sorted({r["device"].split(",")[0] for r in v["runs"]})
    experiments_held = {r["folder"] for r in v["runs"]}
    return dict(muon_lr=f"{v['plans'][experiments.SCREEN]['variants'][experiments.MUON]['muon_lr']:g}",
                sigma=f"{v['sigma']:.2f}", threshold=f"{v['threshold']:.2f}",
                threshold_diff=f"{math.sqrt(2) * v['sigma']:.2f}", screen_bar=f"{math.sqrt(2) * v['sigma']:.2f}",
                source=f"Data: {v['runs'][0]['data']}; {distinct_runs(v['runs'])} runs in the {len(experiments_held)} experiments "
                       f"on this split, on {' and '.join(devices)}.")


def describe_change(change: dict) -> str:
    """'peak_lr = 0.2'; a change of widths as the layers it widens or narrows: 'widths: C1 C2 24'."""
    def widths(w: dict) -> str:
        by_width = {}
        for layer, c in w.items():
            if lib.WIDTHS.get(layer) != c:
                by_width.setdefault(c, []).append(layer)
        return "widths: " + "; ".join(f"{' '.join(layers)} {c}" for c, layers in by_width.items())
    return ", ".join(widths(v) if k == "widths" else f"{k} = {v}" for k, v in change.items())


def started_from(recipe: dict) -> str:
    """The recipe a change was made to, in the few settings that the experiments changed along the way."""
    return ", ".join([lib.ACTIVATION_NAMES[recipe["activation"]], "shortcuts" if recipe["shortcuts"] else "no shortcuts",
                      "Muon" if recipe["optimizer"] == "Muon" else "SGD"] + (["identity init"] if recipe["dirac"] else []))


def tried_table(v: dict, skip=("levers-screen", "levers-confirm")):
    """Every one-setting change (outside the lever stages): its mean gain over its paired baselines, the
    noise bar for that many runs, the verdict, and where it was measured."""
    import pandas as pd
    rows, groups = [], {}
    for r in v["runs"]:
        if r["tuning"] != "recipe" and r["folder"] not in skip:
            groups.setdefault((r["folder"], r["tuning"]), []).append(r)
    for (folder, name), runs in groups.items():
        plan, deltas = v["plans"][folder], [r["delta"] for r in runs if r["delta"] is not None]
        mean, bar = statistics.mean(deltas) if deltas else float("nan"), v["threshold"] / math.sqrt(max(len(deltas), 1))
        rows.append({"change": name, "mean gain": mean, "± threshold": bar,
                     "verdict": "clear gain" if mean > bar else "clear loss" if mean < -bar else "within noise",
                     "runs": len(deltas),
                     "device": plan["device"].upper().replace("CUDA", "GPU"),
                     "started from": started_from({**lib.RECIPE, **plan["baseline"]}),
                     "setting": describe_change(plan["variants"][name])})
    return pd.DataFrame(rows).set_index("change")


def plot_first_changes(v: dict, narrow: bool = False):
    """The first experiment's changes run by run, against the band of the noise (narrow: each bar's name
    written above it, so the bars keep the column's width)."""
    import matplotlib.pyplot as plt
    first = sorted((r for r in v["runs"] if r["folder"] == "tune" and r["tuning"] != "recipe"), key=lambda r: r["delta"])
    names = [f"{r['norm'].upper()} · {r['tuning']}" + (f" (seed {r['seed']})" if r["seed"] else "") for r in first]
    fig, ax = plt.subplots(figsize=(PHONE_IN, 0.9 + 0.42 * len(first)) if narrow else (7.6, 0.8 + 0.3 * len(first)))
    ax.axvspan(-v["threshold"], v["threshold"], color="0.9", zorder=0)
    ax.barh(range(len(first)), [r["delta"] for r in first], color=[COLORS[r["norm"]] for r in first],
            height=0.45 if narrow else 0.8)
    ax.axvline(0, color="0.3", lw=0.8)
    if narrow:
        ax.set_yticks([])
        lo = min(min(r["delta"] for r in first), -v["threshold"]) - 0.3
        ax.set_xlim(lo, max(max(r["delta"] for r in first), v["threshold"]) + 0.3)
        for i, name in enumerate(names):
            ax.text(lo + 0.05, i + 0.3, name, fontsize=MIN_PT, va="bottom")
        ax.set_ylim(-0.6, len(first) - 0.1)
    else:
        ax.set_yticks(range(len(first)), names)
    ax.set(xlabel="validation accuracy minus\nthe baseline's (points)" if narrow else
           "validation accuracy minus the baseline's (points)",
           title=f"First changes (ReLU, no shortcuts),\nrun by run; grey: within noise (±{v['threshold']:.2f})" if narrow else
           f"First changes (ReLU, no shortcuts), run by run\ngrey: within noise (±{v['threshold']:.2f})")
    fig.tight_layout()
    return fig


def kept_text(v: dict, tried, reported: dict) -> str:
    """What was adopted into the recipe of the reported runs (`reported`, one run's record), what else was
    measured on it, and a clear gain left out, and why."""
    first_base = next(r for r in v["runs"] if r["folder"] == "tune" and r["tuning"] == "recipe")
    adopted = {k: val for k, val in lib.recorded_recipe(reported).items() if lib.recorded_recipe(first_base).get(k) != val}
    settings = [describe_change({k: val}) for k, val in adopted.items()]
    kept = tried[tried.setting.isin(settings)]
    today = tried[tried["started from"] == started_from({**lib.RECIPE, "optimizer": "SGD-Nesterov", "dirac": False})]
    best = today["mean gain"].idxmax()
    others = tried[(tried.verdict == "clear gain") & ~tried.setting.isin(settings)]
    levers = {k: x for k, x in adopted.items() if describe_change({k: x}) not in set(kept.setting) and k != "muon_lr"}
    return "\n".join(f"- {line}" for line in [
        "Adopted, each a clear gain on average over its runs: " + "; ".join(
            f"**{name}** ({r.setting}, {r.device}: {r['mean gain']:+.2f} over {r.runs} runs)" for name, r in kept.iterrows()) + ".",
        f"On the recipe with both, {len(today)} further changes were measured; the largest mean gain is *{best}*, "
        f"{today.loc[best, 'mean gain']:+.2f} over {today.loc[best, 'runs']} run{'s' if today.loc[best, 'runs'] > 1 else ''}, "
        f"against a threshold of ±{today.loc[best, '± threshold']:.2f}: "
        + ("a clear gain." if today.loc[best, "verdict"] == "clear gain" else "none clears the noise as a gain."),
        *[f"A clear gain not adopted: *{name}* ({r['mean gain']:+.2f}, {r.device}), because another value of the same "
          "setting, the one in the recipe, gained more." for name, r in others.iterrows()],
        *([f"Adopted last, together, from the levers of the fast CIFAR-10 trainers below: " + and_join(
            LEVER_WORDS.get((k, x), describe_change({k: x})) for k, x in levers.items()) + "."] if levers else [])])


def recipe_table(reported: dict):
    """The recipe of the reported runs (`reported`, one run's record), one setting a row, in words."""
    import pandas as pd
    recipe = lib.recorded_recipe(reported)
    muon = recipe["optimizer"] == "Muon"
    names = dict(RECIPE_WORDS, **({"peak_lr": "peak learning rate (one-cycle) of the weights SGD-Nesterov moves",
                                   "weight_decay": "weight decay (1x1 conv weights)",
                                   "muon_lr": "Muon's peak learning rate (3x3 conv weights)"} if muon else {}))
    value = lambda k, x: "the widths of the network chapter" if k == "widths" and x is None else \
        lib.ACTIVATION_NAMES.get(x, x) if k == "activation" else "yes" if x is True else "no" if x is False else \
        recipe_parts(recipe)["optimizer"] if k == "optimizer" else x
    return pd.DataFrame([{"setting": names.get(k, k), "value": str(value(k, x))} for k, x in recipe.items()
                         if k not in ("bn_ghost", "bn_frozen", "muon_lr") or (x and (k != "muon_lr" or muon))]
                        ).set_index("setting")


def lever_stages(v: dict, reported: dict) -> dict:
    """The levers of the fast CIFAR-10 trainers, screened and confirmed: per lever and norm the mean gain over
    its seeds (with the range), the verdict, and the decision on the recipe, as a table and a paragraph; the
    paragraph says how the runs without a lever and the reported runs (`reported`, one run's record) relate."""
    import experiments
    import pandas as pd
    screen_bar = math.sqrt(2) * v["sigma"]
    runs = [r for r in v["runs"] if r["folder"] in (experiments.SCREEN, experiments.CONFIRM)]
    deltas = {}
    for r in runs:                                      # the confirmation copies the screen's seed-0 runs: count once
        if r["tuning"] != "recipe" and r["delta"] is not None:
            deltas.setdefault(r["tuning"], {}).setdefault(r["norm"], {})[r["seed"]] = r["delta"]
    rows, adopt = [], None
    for lever in [*LEVERS, *(l for l in deltas if l not in LEVERS)]:
        per_norm = deltas.get(lever, {})
        if not per_norm:
            continue
        row = {"lever": lever}
        verdicts = {}
        for n in lib.NORMS:
            d = list(per_norm.get(n, {}).values())
            if not d:
                row[SHORT[n]] = "—"
                continue
            mean, bar = statistics.mean(d), v["threshold"] / math.sqrt(len(d))
            row[SHORT[n]] = f"{mean:+.2f}" + (f" ({min(d):+.2f}\u00a0to\u00a0{max(d):+.2f})" if len(d) > 1 else "")
            verdicts[n] = ("gain" if mean > bar else "loss" if mean < -bar else "within noise") if len(d) >= 3 else \
                "passes the screen" if mean >= screen_bar else "below the screen's bar"
        seeds = {n: len(per_norm.get(n, {})) for n in lib.NORMS}
        row["runs"] = sum(seeds.values())
        if min(seeds.values()) >= 3:
            same = {}                                            # "BN and GN gain; LN within noise": short on a phone
            for n, x in verdicts.items():
                same.setdefault(x, []).append(SHORT[n])
            row["verdict"] = "all within noise" if list(same) == ["within noise"] else \
                "; ".join(f"{and_join(ns)} {x}" for x, ns in same.items())
        elif max(seeds.values()) == 1 and lever in LEVERS:        # the screen: seed 0
            passed = [SHORT[n] for n, x in verdicts.items() if x == "passes the screen"]
            row["verdict"] = (f"screened for {and_join(SHORT[n] for n in lib.NORMS if n in verdicts)}"
                              if len(verdicts) < len(lib.NORMS) else
                              f"passes the screen ({', '.join(passed)})" if passed else "stops at the screen")
        else:                                                    # the confirmation, with fewer than 3 seeds
            row["verdict"] = (("passed the screen; " if lever in LEVERS else "") + "seeds measured: "
                              + ", ".join(f"{SHORT[n]} {k}" for n, k in seeds.items()) + " of 3")
        if lever == experiments.COMBINED and min(seeds.values()) >= 3:
            gains = sum(x == "gain" for x in verdicts.values())
            adopt = gains >= 2 and "loss" not in verdicts.values()
        rows.append(row)
    table = pd.DataFrame(rows).set_index("lever") if rows else pd.DataFrame()
    baselines = [r for r in runs if r["tuning"] == "recipe"]
    without = f" ({recipe_words(baselines, reported)})" if baselines else ""
    text = ("The screen is one run per norm at seed 0, each against the run of the same norm and seed without the "
            f"lever{without}. A lever passes the screen when its gain reaches {screen_bar:.2f} points for at "
            "least one norm (one standard deviation of the difference of two single runs: a lenient bar, so that a real "
            f"gain is rarely lost); it is then measured at seeds 0–2 and judged by its mean against ±{v['threshold']:.2f}/√3. ")
    bracket = [l for l in deltas if l.startswith("muon lr") and l not in LEVERS]
    if bracket:
        screened = next(l for l in LEVERS if l.startswith("muon lr")).removeprefix("muon lr ")
        text += (f"Muon's peak learning rate is also tried on both sides of the screened {screened}: "
                 + and_join(f"*{l}*" for l in bracket) + ", each against the same runs without Muon as the other rows. ")
        text += bracket_verdict(deltas, f"muon lr {screened}", bracket, v["threshold"], lib.recorded_recipe(reported).get("muon_lr"))
    if adopt is None:
        text += ("The recipe of the reported runs is the one without these levers: no combination of them is shown "
                 "below at three seeds with a gain beyond noise for two norms.")
    elif adopt:
        combined = next(lib.recorded_recipe(r) for r in runs if r["tuning"] == experiments.COMBINED)
        text += ("The combination of the levers that passed gains beyond noise for at least two norms and hurts none: "
                 + ("the reported runs are trained with it." if combined == lib.recorded_recipe(reported) else
                    "it is adopted, and the reported runs are not trained with it."))
    else:
        text += ("The combination of the levers that passed does not gain beyond noise for two norms without hurting "
                 "one, so the recipe is unchanged.")
    return dict(table=table, text=text, adopt=adopt)


def bracket_verdict(deltas: dict, screened: str, bracket: list[str], threshold: float, reported_lr) -> str:
    """A sentence on each neighbour of the screened learning rate that is measured at 3 seeds for every norm:
    its gain over the screened rate per norm (the mean over seeds of the difference of the two runs, which share
    their baseline), judged against threshold/sqrt(seeds), and the Muon LR of the reported runs; empty while
    the screened rate or every neighbour lacks seeds."""
    done = lambda lever: all(len(deltas.get(lever, {}).get(n, {})) >= 3 for n in lib.NORMS)
    if not done(screened) or not (complete := [l for l in bracket if done(l)]):
        return ""
    rate = screened.removeprefix("muon lr ")
    parts, judged, seeds = [], [], set()
    for lever in complete:
        over = {}
        for n in lib.NORMS:
            common = deltas[lever][n].keys() & deltas[screened][n].keys()
            seeds.add(len(common))
            over[n] = statistics.mean(deltas[lever][n][s] - deltas[screened][n][s] for s in common), threshold / math.sqrt(len(common))
        parts.append(f"*{lever}* " + ", ".join(f"{SHORT[n]}\u00a0{d:+.2f}" for n, (d, _) in over.items()))
        for word, beyond in (("gains", lambda d, bar: d > bar), ("loses", lambda d, bar: d < -bar)):
            if ns := [SHORT[n] for n, (d, bar) in over.items() if beyond(d, bar)]:
                judged.append(f"*{lever}* {word} for {and_join(ns)}")
    n = min(seeds)
    verdict = "Beyond noise, " + "; ".join(judged) if judged else (
        f"{'Neither' if len(complete) == 2 else 'None' if len(complete) > 2 else 'It does not'} differ"
        f"{'s' if len(complete) > 1 else ''} from {rate} beyond noise for any norm")
    return (f"Seed by seed against the screened {rate} (the mean of {n} differences, in points, clear beyond "
            f"±{threshold / math.sqrt(n):.2f}): " + "; ".join(parts) + f". {verdict}. "
            f"The reported runs train Muon at {reported_lr}. ")


def ceiling(main: dict[str, dict], sigma: float = float("nan")) -> dict:
    """The recipe trained past the 20-epoch budget (runs/ceiling/, seed 0, test set): test and train accuracy
    per norm and epoch count beside the reference points, a paragraph, and ("lead") how BN's lead over GN and
    LN at the longest complete epoch count compares with 20 epochs, judged against the noise of two single
    runs whose seed-to-seed standard deviation is sigma."""
    import experiments
    import pandas as pd
    runs = {(r["norm"], r["epochs"]): r for r in experiments.load_results("runs/ceiling")}
    plan = experiments.load_plan("runs/ceiling")
    epochs = sorted({experiments.settings(plan, name)["epochs"] for name in plan["variants"]})
    get = lambda n, e, key: runs[n, e][key] if (n, e) in runs else float("nan")
    table = pd.DataFrame([{"norm": short_name(n), "reference point": experiments.TARGETS[n],
                           "20 epochs": main[n]["final_test_acc"], **{f"{e} epochs": get(n, e, "final_test_acc") for e in epochs},
                           **{f"train, {e} epochs": get(n, e, "final_train_acc") for e in epochs}}
                          for n in lib.NORMS]).set_index("norm")
    if not runs:
        return dict(table=table, text="No run of this kind is in `runs/ceiling/`.", lead="")
    done = [e for e in epochs if all((n, e) in runs for n in lib.NORMS)]
    acc = lambda n, e: runs[n, e]["final_test_acc"]
    change = lambda e, n: acc(n, e) - main[n]["final_test_acc"]
    text = ""
    for e in done:
        met = [n for n in lib.NORMS if acc(n, e) >= experiments.TARGETS[n]]
        missed = [n for n in lib.NORMS if n not in met]
        short = (f"{and_join(n.upper() for n in missed)} "
                 f"{and_join(f'{experiments.TARGETS[n] - acc(n, e):.2f}' for n in missed)} points below "
                 f"{'its' if len(missed) == 1 else 'theirs'}" if missed else "")
        reached = (f"{and_join(n.upper() for n in met)} at or above {'its' if len(met) == 1 else 'their'} reference "
                   f"point{'s' if len(met) > 1 else ''}" + (f"; {short}" if short else "") if met else
                   f"none at its reference point: {short}")
        text += (f" At {e} epochs the recipe reaches " + ", ".join(f"{n.upper()} {acc(n, e):.2f}\u00a0%" for n in lib.NORMS)
                 + f" ({reached}), {min(change(e, n) for n in lib.NORMS):+.2f} to {max(change(e, n) for n in lib.NORMS):+.2f} "
                 "points against 20 epochs.")
    for e in epochs:
        if e not in done and (some := [n for n in lib.NORMS if (n, e) in runs]):
            reached = and_join(f"{n.upper()} reaches {acc(n, e):.2f}\u00a0% ({change(e, n):+.2f} points "
                               f"against 20 epochs; reference point {experiments.TARGETS[n]:.0f}\u00a0%)" for n in some)
            text += f" At {e} epochs {reached}; {and_join(n.upper() for n in lib.NORMS if n not in some)}: no run of that length."
    lead = ""
    if done:
        e, others, bar = done[-1], ("gn", "ln"), noise_bar(sigma, 1)
        ahead = {n: acc("bn", e) - acc(n, e) for n in others}
        judged = {"ahead of": [n for n in others if ahead[n] > bar], "level with": [n for n in others if abs(ahead[n]) <= bar],
                  "behind": [n for n in others if ahead[n] < -bar]}
        lead = (f"BN's lead over GN and LN is {ahead['gn']:+.2f} and {ahead['ln']:+.2f} points at {e} epochs, against "
                f"{main['bn']['final_test_acc'] - main['gn']['final_test_acc']:+.2f} and "
                f"{main['bn']['final_test_acc'] - main['ln']['final_test_acc']:+.2f} at 20 epochs (seed 0)")
        if bar == bar:
            lead += (f": against the noise of the difference of two single runs (±{bar:.2f} points, from the reported "
                     "runs' seeds), BN ends " + and_join(f"{word} {and_join(n.upper() for n in ns)}"
                                                         for word, ns in judged.items() if ns))
        lead += "."
        text += " " + lead
    first = next(iter(runs.values()))
    text += f" Data: {first['data']}; device: {first['device']}; seed 0; test set."
    return dict(table=table, text=text.strip(), lead=lead)


def targets_numbers(rows: list[dict]) -> dict:
    """The reference points beside the reported runs' mean test accuracy, which of them the runs reach, and
    how far train accuracy (augmented batches, seed 0) stands above test accuracy."""
    import experiments
    main = {r["norm"]: r for r in rows}
    met = [n for n, t in experiments.TARGETS.items() if main[n]["test_mean"] >= t]
    missed = [n for n in experiments.TARGETS if n not in met]
    gaps = [main[n]["train_acc"] - main[n]["test_acc"] for n in lib.NORMS]
    return dict(targets="; ".join(f"{short_name(n)} {t:.0f} % (the reported runs: {main[n]['test_mean']:.2f} %)"
                                  for n, t in experiments.TARGETS.items()),
                targets_verdict=("None of the three reaches its reference point" if not met else
                                 f"{and_join(n.upper() for n in met)} reach{'es' if len(met) == 1 else ''} "
                                 f"{'its' if len(met) == 1 else 'their'} reference point"
                                 + (f", {and_join(n.upper() for n in missed)} not" if missed else ""))
                + " within 20 epochs and 50,000 parameters.",
                train_gap=f"{min(gaps):.1f} to {max(gaps):.1f}")


def plans_table():
    """Every experiment that holds runs: its folder, its question, where it ran and how many runs it holds."""
    import experiments
    import pandas as pd
    held = {f: len(experiments.planned(f)) - len(experiments.missing(f)) for f in experiments.plan_dirs()}
    return pd.DataFrame([{"folder": f"runs/{f.name}/", "question": experiments.load_plan(f)["title"],
                          "device": experiments.load_plan(f)["device"].upper(), "runs": n}
                         for f, n in held.items() if n]).set_index("folder")


# =============================================================================================
# Batch size, group count, and why BN leads
# =============================================================================================
# Two sweep plans (experiments.py) on a reduced budget: the batch-size sweep (batch 2-128 for every norm, a
# step-count control, BN with ghost batches and with frozen statistics) and the group-count sweep, each read
# from its retraining in the reported recipe once complete (finished_plan); and a control for Muon's
# learning-rate rule at batch 8. Every comparison pairs runs of the same seed; `noise` says what is signal.

BATCH_SWEEP = finished_plan("runs/batch-size-muon", earlier="runs/batch-size")
GROUP_SWEEP = finished_plan("runs/group-count-muon", earlier="runs/group-count")
LR_RULE = "runs/muon-lr-rule"                # Muon's LR at batch 8: scaled linearly with the batch, or by its root
ROOT_RULE = "batch 8, Muon LR by square root"
BATCHES = (2, 4, 8, 16, 32, 64, 128)
GROUPS = ("1", "2", "4", "C/4", "8", "C/2", "C/1")          # by channels per group, most first
GHOSTS = (4, 16, 32)


def sweep(folder: str) -> list[dict]:
    """A sweep's finished runs (each with its plan `variant`); refuses runs of mixed precision, whose
    accuracies are not comparable point to point."""
    import experiments
    runs = experiments.load_results(folder)
    precisions = sorted({r["precision"] for r in runs})
    if len(precisions) > 1:
        raise lib.NormbookError(f"{folder} mixes precisions {precisions}: retrain its runs in one")
    return runs


def diverged(folder: str) -> list[dict]:
    """A sweep's runs whose loss became non-finite (their records say when)."""
    import experiments
    return experiments.diverged_runs(folder)


def accs(runs: list[dict], norm: str, variant: str) -> dict[int, float]:
    """seed -> final test accuracy of one point of a sweep."""
    return {r["seed"]: r["final_test_acc"] for r in runs if (r["norm"], r["variant"]) == (norm, variant)}


def point_variance(runs: list[dict], norm: str, variant: str) -> float:
    """The variance of one point's accuracy between its seeds (nan with fewer than two)."""
    v = list(accs(runs, norm, variant).values())
    return statistics.variance(v) if len(v) > 1 else float("nan")


def noise(runs: list[dict]) -> float:
    """The seed-to-seed standard deviation of one run, typical of the sweep: the median over its points with two
    or more seeds of their variance, each divided by the median of chi²(df) / df (Wilson–Hilferty), so that the
    median estimates σ². A median, not a mean, so that one unstable point (Instance Norm's seeds can lie points
    apart) does not set the bar for every other comparison; `paired` judges that point by its own spread."""
    points = {(r["norm"], r["variant"]) for r in runs}
    scaled = [point_variance(runs, *p) / (1 - 2 / (9 * df)) ** 3
              for p in points if (df := len(accs(runs, *p)) - 1) >= 1]
    return math.sqrt(statistics.median(scaled)) if scaled else float("nan")


def noise_bar(sigma: float, n: int) -> float:
    """Two standard deviations of a mean of n paired differences of single runs, each of std sigma."""
    return 2 * math.sqrt(2 / max(n, 1)) * sigma


def verdict(change: float, bar: float) -> str:
    """'gain', 'loss' or 'within noise': a change counts only beyond its noise bar."""
    return "gain" if change > bar else "loss" if change < -bar else "within noise"


def paired(runs: list[dict], norm: str, variant: str, reference: str, ref_norm: str | None = None) -> dict:
    """Accuracy of (norm, variant) minus that of (ref_norm or norm, reference) at the same seed: the mean
    change, its lowest and highest seed, the seed count, the noise bar and the verdict."""
    a, b = accs(runs, norm, variant), accs(runs, ref_norm or norm, reference)
    changes = [a[s] - b[s] for s in sorted(a.keys() & b.keys())]
    if not changes:
        return dict(change=float("nan"), lo=float("nan"), hi=float("nan"), n=0, bar=float("nan"), verdict="not run")
    own = [v for v in (point_variance(runs, norm, variant), point_variance(runs, ref_norm or norm, reference))
           if not math.isnan(v)]                      # a point whose seeds scatter more is judged by its own spread
    sigma = math.sqrt(max(noise(runs) ** 2, statistics.mean(own) if own else 0.0))
    change, bar = statistics.mean(changes), noise_bar(sigma, len(changes))
    return dict(change=change, lo=min(changes), hi=max(changes), n=len(changes), bar=bar, verdict=verdict(change, bar))


def point(runs: list[dict], norm: str, variant: str) -> dict:
    """Mean, lowest and highest seed of one point, and its seed count (nan where it has not run)."""
    v = list(accs(runs, norm, variant).values())
    return dict(mean=statistics.mean(v) if v else float("nan"), lo=min(v, default=float("nan")),
                hi=max(v, default=float("nan")), n=len(v))


def batch_rows(runs: list[dict]) -> list[dict]:
    """One row per norm and batch size: accuracy, and the paired change from the same norm at batch 128."""
    return [dict(norm=n, batch=b, **point(runs, n, f"batch {b}"),
                 **{f"change_{k}": v for k, v in paired(runs, n, f"batch {b}", "batch 128").items()})
            for n in lib.NORMS for b in BATCHES]


def bn_lead(runs: list[dict], variant: str) -> dict:
    """BN against the better of GN and LN at one point, paired by seed (paired's fields, plus `other`)."""
    other = max(("gn", "ln"), key=lambda n: point(runs, n, variant)["mean"])
    return dict(paired(runs, "bn", variant, variant, ref_norm=other), other=other)


def batch_summary(runs: list[dict]) -> dict:
    """What the batch sweep says, chosen from the numbers: each norm at the smallest batch size (`worst`, with
    its paired change from batch 128) and at its best one; BN's
    lead over the better of GN and LN at each batch size; the smallest batch from which BN is never behind
    beyond noise, and the batch sizes at which it is."""
    rows = batch_rows(runs)
    done = [b for b in BATCHES if all(r["n"] for r in rows if r["batch"] == b)]
    # each norm at the smallest batch size, and at its best one
    worst = {n: next(r for r in rows if (r["norm"], r["batch"]) == (n, done[0])) for n in lib.NORMS} if done else {}
    best = {n: max((r for r in rows if r["norm"] == n and r["batch"] in done), key=lambda r: r["mean"])
            for n in lib.NORMS} if done else {}
    lead = {b: bn_lead(runs, f"batch {b}") for b in done}
    behind = [b for b in done if lead[b]["verdict"] == "loss"]
    fine = [b for b in done if all(lead[c]["verdict"] != "loss" for c in done if c >= b)]
    return dict(rows=rows, done=done, worst=worst, best=best, lead=lead, behind=behind, bn_fine_from=min(fine, default=None),
                sigma=noise(runs), seeds=min((r["n"] for r in rows if r["batch"] in done), default=0))


def step_control(runs: list[dict]) -> dict:
    """The control for step count: per norm, batch 128 for twice the epochs (as many steps as batch 64)
    against batch 64, and against batch 128; and whether the norms' order at batch 128 survives the
    longer budget."""
    out = {n: dict(vs_64=paired(runs, n, "batch 128 for 20 epochs", "batch 64"),
                   vs_128=paired(runs, n, "batch 128 for 20 epochs", "batch 128")) for n in lib.NORMS}
    order = lambda v: sorted(lib.NORMS, key=lambda n: -point(runs, n, v)["mean"])
    return dict(per_norm=out, order_10=order("batch 128"), order_20=order("batch 128 for 20 epochs"),
                points={n: point(runs, n, "batch 128 for 20 epochs") for n in lib.NORMS})


def ghost_rows(runs: list[dict]) -> list[dict]:
    """BN's statistics from n images, two ways, each paired with BN at batch 128: a ghost batch of n inside
    batch 128 (same steps and learning rate), and a real batch of n (its own steps and learning rate)."""
    rows = []
    for n in sorted(set(GHOSTS) | {128}):
        ghost = "batch 128" if n == 128 else f"batch 128 with BN statistics of {n}"
        rows.append(dict(images=n, ghost=point(runs, "bn", ghost), ghost_change=paired(runs, "bn", ghost, "batch 128"),
                         batch=point(runs, "bn", f"batch {n}"),
                         batch_change=paired(runs, "bn", f"batch {n}", "batch 128")))
    return rows


def fit_rows(fits: list[dict]) -> list[dict]:
    """Per norm, means over the reported runs' seeds (the records of runs/fit/, robustness.fit): accuracy and
    plain cross-entropy on the clean training images and on the test images, in eval mode; and the gap."""
    out = []
    for norm in lib.NORMS:
        mine = [f for f in fits if f["norm"] == norm]
        if not mine:
            raise lib.NormbookError(f"runs/fit/ holds no {norm} run: run `make robustness`")
        mean = lambda key: statistics.mean(f[key] for f in mine)
        out.append(dict(norm=norm, seeds=len(mine), train_acc=mean("train_acc"), train_loss=mean("train_loss"),
                        test_acc=mean("test_acc"), test_loss=mean("test_loss"),
                        gap=mean("train_acc") - mean("test_acc"),
                        loss_std=statistics.stdev(f["train_loss"] for f in mine) if len(mine) > 1 else float("nan")))
    return out


FROZEN = "batch 128 with BN statistics frozen after warm-up"


def why_bn_leads(fit: list[dict], runs: list[dict], diverged: list[dict] = ()) -> dict:
    """The competing explanations of BN's lead on clean data, each judged by a measurement:
    - fit: does BN fit its clean training images better (better conditioning or a larger effective step
      would show there), and how much of its test lead is already there on the training images?
    - noise: does more noise in BN's statistics (ghost batches) raise test accuracy, and does removing it
      after the warm-up (frozen statistics) lower it? (`diverged`: the sweep's runs whose loss became
      non-finite, experiments.diverged_runs.)
    Returns the numbers, the sentences and `supports`: "noise", "fit", "neither" or None (unsettled)."""
    f = {r["norm"]: r for r in fit}
    pooled = math.sqrt(statistics.mean(r["loss_std"] ** 2 for r in fit)) if all(r["seeds"] > 1 for r in fit) else float("nan")
    loss_bar = noise_bar(pooled, min(r["seeds"] for r in fit))
    fits_better = all(f[n]["train_loss"] - f["bn"]["train_loss"] > loss_bar for n in ("gn", "ln"))
    share = {n: (f["bn"]["train_acc"] - f[n]["train_acc"]) / (f["bn"]["test_acc"] - f[n]["test_acc"])
             if f["bn"]["test_acc"] != f[n]["test_acc"] else float("nan") for n in ("gn", "ln")}
    ghosts = {g: paired(runs, "bn", f"batch 128 with BN statistics of {g}", "batch 128") for g in GHOSTS}
    frozen = paired(runs, "bn", FROZEN, "batch 128")
    frozen_diverged = sorted((r for r in diverged if (r["norm"], r["variant"]) == ("bn", FROZEN)), key=lambda r: r["seed"])
    gains = [g for g, p in ghosts.items() if p["verdict"] == "gain"]
    losses = [g for g, p in ghosts.items() if p["verdict"] == "loss"]
    lead = bn_lead(runs, "batch 128")
    fit_text = (("BN fits its clean training images better" if fits_better else
                 "BN does not fit its clean training images better than both others beyond the seed noise")
                + ": training accuracy " + ", ".join(f"{n.upper()} {f[n]['train_acc']:.2f} %" for n in lib.NORMS)
                + ", training loss " + ", ".join(f"{f[n]['train_loss']:.3f}" for n in lib.NORMS)
                + f" (±{loss_bar:.3f} is noise). Of its test lead, the training images already show "
                + and_join(f"{100 * share[n]:.0f} % against {n.upper()}" for n in ("gn", "ln")))
    if not any(p["n"] for p in ghosts.values()):
        noise_text, noise_helps = "", None
    elif gains and not losses:
        noise_text, noise_helps = ("more noise helps: statistics from " + and_join(gains)
                                   + " images instead of 128 raise BN's accuracy beyond the seed noise"), True
    elif losses and not gains:
        noise_text, noise_helps = ("more noise hurts: statistics from " + and_join(losses)
                                   + " images instead of 128 lower BN's accuracy beyond the seed noise"), False
    else:
        noise_text = ("more noise changes little: statistics from " + and_join(GHOSTS)
                      + " images instead of 128 move BN's accuracy by "
                      + and_join(f"{ghosts[g]['change']:+.2f}" for g in GHOSTS) + " points, "
                      + ("each within" if not gains and not losses else "in both directions beyond") + " the seed noise")
        noise_helps = False if not gains and not losses else None
    import re
    when = lambda r: (re.search(r"in epoch \d+ of \d+", r["diverged"]) or re.search(r".*", r["diverged"])).group(0)
    frozen_text = ("with its statistics frozen after the warm-up BN does not train at this learning rate: its loss "
                   "became non-finite " + and_join(f"{when(r)} (seed {r['seed']})" for r in frozen_diverged)
                   if frozen_diverged else "" if not frozen["n"] else
                   f"without batch statistics after the warm-up BN changes by {frozen['change']:+.2f} points "
                   f"({frozen['verdict']}, ±{frozen['bar']:.2f})")
    supports = None if noise_helps is None else "noise" if noise_helps else "fit" if fits_better else "neither"
    return dict(fit=f, fits_better=fits_better, share=share, ghosts=ghosts, frozen=frozen, lead=lead,
                frozen_diverged=frozen_diverged,
                fit_text=fit_text, noise_text=noise_text, frozen_text=frozen_text, supports=supports)


def group_variant(groups: str) -> str:
    """The group sweep's variant name for a group count: 'groups 8', or '4 channels per group' for 'C/4'."""
    if groups.startswith("C/"):
        return f"{groups[2:]} channel{'s' if groups != 'C/1' else ''} per group"
    return f"groups {groups}"


def group_rows(runs: list[dict]) -> list[dict]:
    """GroupNorm per group count, by channels per group, with the paired change from G = 8."""
    return [dict(groups=g, **point(runs, "gn", group_variant(g)),
                 **{f"change_{k}": v for k, v in paired(runs, "gn", group_variant(g), "groups 8").items()})
            for g in GROUPS]


def robustness_summary(rob: list[dict]) -> dict[str, dict]:
    """Per norm, means over its seeds in runs/robustness/: clean accuracy, mean accuracy over every
    corruption and severity (and for BN with statistics recomputed on them, AdaBN), accuracy at four
    times the contrast, and the share of predictions that change with an image's companion in batches of 2."""
    out = {}
    for norm in lib.NORMS:
        mine = [r for r in rob if r["norm"] == norm]
        mean = lambda get: statistics.mean(get(r) for r in mine) if mine else float("nan")
        out[norm] = dict(seeds=len(mine), clean=mean(lambda r: r["clean_acc"]),
                         corrupted=mean(lambda r: statistics.mean(r["corruptions"].values())),
                         adabn=mean(lambda r: statistics.mean(r["corruptions_recalibrated"].values()))
                         if norm == "bn" else float("nan"),
                         contrast_4=mean(lambda r: r["scale"]["4.0"]), changed_2=mean(lambda r: r["batch"]["2"]["changed"]))
    return out


def group_summary(runs: list[dict]) -> dict:
    """The group counts within noise of the best one (paired by seed, as `paired` judges), and the best and worst."""
    done = [r for r in group_rows(runs) if r["n"]]
    if not done:
        return dict(best=None, near=[], worst=None)
    best = max(done, key=lambda r: r["mean"])
    near = [r["groups"] for r in done if r is best or
            paired(runs, "gn", group_variant(r["groups"]), group_variant(best["groups"]))["verdict"] != "loss"]
    return dict(best=best, near=near, worst=min(done, key=lambda r: r["mean"]))


GROUP_NAMES = {"1": "1 (LayerNorm's statistics)", "C/1": "C/1 (one channel per group: Instance Norm)"}


def and_join(items) -> str:
    """'a', 'a and b', 'a, b and c'."""
    items = [str(i) for i in items]
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def short_name(norm: str) -> str:
    return lib.NORM_NAMES[norm].split(" ")[0]


SPEED_TIE = 0.05     # two timings closer than this (relative) are not ranked: each is the faster of two


def recommendations(rows: list[dict], batch: dict, groups: dict, rob: dict, speed: list[dict]) -> list[dict]:
    """"Which should I use?": one dict per question, with `topic`, a one-line `short` answer for the landing
    page, the fuller `text` and the `link` to its evidence, (page, label or None); every sentence is chosen from the numbers: the
    reported runs' summary rows, batch_summary, group_summary, robustness_summary and bench/results.json."""
    main = {r["norm"]: r for r in rows}
    other = max(("gn", "ln"), key=lambda n: main[n]["test_mean"])
    lead = main["bn"]["test_mean"] - main[other]["test_mean"]
    out = []

    first, done = batch["bn_fine_from"], batch["done"]
    text = (f"At batch 128 BatchNorm is the most accurate: {main['bn']['test_mean']:.2f} % against {short_name(other)}'s "
            f"{main[other]['test_mean']:.2f} % (mean of {main['bn']['seeds']} seeds). " if lead > 0 else
            f"At batch 128 BatchNorm is not ahead: {lead:+.2f} points against {short_name(other)}. ")
    if done and first is not None:
        text += (f"In the batch-size sweep it is never behind the better of the other two beyond the seed noise from "
                 f"batch {first} up" + (f"; at batch {and_join(batch['behind'])} it is behind by "
                 + and_join(f"{-batch['lead'][b]['change']:.1f}" for b in batch["behind"]) + " points." if batch["behind"] else "."))
        short = (f"**BatchNorm** for batches of {first} images or more: never behind beyond the noise, and "
                 f"+{lead:.1f} points at batch 128"
                 if lead > 0 else f"**Any of the three** when each step sees {first} or more images")
        short += (f"; with fewer, **{short_name(batch['lead'][max(batch['behind'])]['other'])}**." if batch["behind"] else ".")
    else:
        text += "In the batch-size sweep it is behind the better of the other two at every batch size."
        short = f"**{short_name(other)}** at every batch size measured."
    out.append(dict(topic="Batch size", short=short, text=text, link=("experiments", "batch-size")))

    r = rob
    gnln_better = min(r["gn"]["corrupted"], r["ln"]["corrupted"]) > r["bn"]["corrupted"]
    text = ((f"When test images may differ from the training images, or predictions must not depend on the rest of the "
             f"batch, prefer GroupNorm or LayerNorm: over six corruptions they keep {r['gn']['corrupted']:.1f} % and "
             f"{r['ln']['corrupted']:.1f} % against BatchNorm's {r['bn']['corrupted']:.1f} %" if gnln_better else
             f"Under shifted inputs the three are close: over six corruptions BatchNorm keeps {r['bn']['corrupted']:.1f} %, "
             f"GroupNorm {r['gn']['corrupted']:.1f} % and LayerNorm {r['ln']['corrupted']:.1f} %")
            + f"; no GroupNorm or LayerNorm prediction depends on a batch companion, while BatchNorm evaluated with batch "
            f"statistics changes {r['bn']['changed_2']:.0f} % of its predictions in batches of 2. If you keep BatchNorm, "
            f"recompute its statistics on the new images (AdaBN): that alone takes it to {r['bn']['adabn']:.1f} %.")
    short = ((f"**GroupNorm or LayerNorm** for shifted inputs or batch-independent predictions: "
              f"{r['gn']['corrupted']:.0f} and {r['ln']['corrupted']:.0f} % under corruptions, BatchNorm "
              f"{r['bn']['corrupted']:.0f} % ({r['bn']['adabn']:.0f} % with AdaBN).")
             if gnln_better else
             "Under shifted inputs **none** of the three clearly ahead.")
    out.append(dict(topic="Shifted inputs, one image at a time", short=short, text=text,
                    link=("why", "shifted-inputs")))

    if groups["best"]:
        g = lambda k: GROUP_NAMES.get(k, k)
        near = [k for k in groups["near"] if k != groups["best"]["groups"]]
        text = (f"With GroupNorm, G = {g(groups['best']['groups'])} is the best of the group sweep, "
                f"{groups['best']['mean']:.2f} %" + (f", and G = {and_join(g(k) for k in near)} "
                f"{'is' if len(near) == 1 else 'are'} within the seed noise of it" if near else
                ", ahead of every other count beyond the seed noise")
                + f"; the worst is G = {g(groups['worst']['groups'])}, {groups['worst']['mean']:.2f} %.")
        plain = lambda k: {"1": "one group", "C/1": "one channel per group"}.get(
            k, f"{k[2:]} channels per group" if k.startswith("C/") else f"{k} groups")
        or_join = lambda items: and_join(items).replace(" and ", " or ")
        counts = sorted((k for k in groups["near"] if not k.startswith("C/")), key=int)
        sizes = [k[2:] for k in groups["near"] if k.startswith("C/") and k != "C/1"]
        near = (([f"{or_join(counts)} group{'s' * (counts != ['1'])}" + (" (one group is LayerNorm)" if "1" in counts else "")]
                 if counts else []) + ([f"{or_join(sizes)} channels per group"] if sizes else [])
                + (["one channel per group"] if "C/1" in groups["near"] else []))
        short = f"**GroupNorm** with {', or '.join(near)} (all within noise); not {plain(groups['worst']['groups'])}."
        out.append(dict(topic="How many groups", short=short, text=text, link=("experiments", "number-of-groups")))

    fast = {p["norm"]: p["lib_images_per_s"] for p in speed}
    slow, top = min(fast, key=fast.get), max(fast, key=fast.get)
    slowest = and_join(short_name(n) for n in lib.NORMS if fast[n] <= fast[slow] * (1 + SPEED_TIE))
    tied = " and " in slowest
    text = ("All three have the same parameters (one γ and β per channel). Training speed at batch 128 "
            f"({speed[0]['device']}, {speed[0]['lib_setting'].split(',')[0]}): "
            + ", ".join(f"{short_name(n)} {fast[n]:,.0f}" for n in lib.NORMS) + f" images per second; "
            f"{slowest} {'are' if tied else 'is'} the slowest there"
            + (f" (within {100 * SPEED_TIE:.0f} % of each other)" if tied else "")
            + "; the arithmetic is about the same for the three, so the difference is one of implementation (kernels, "
            "memory layout, the optimizer's step).")
    short = (f"**Cost**: the same parameters; on this CPU {slowest} take{'' if tied else 's'} about "
             f"{100 * (fast[top] / fast[slow] - 1):.0f} % longer per training image than {short_name(top)}.")
    out.append(dict(topic="Cost", short=short, text=text, link=("performance", None)))
    return out


def limits(rows: list[dict], runs: list[dict]) -> str:
    """What the recommendations rest on, from the runs' own records."""
    r = runs[0] if runs else {}
    sweep = (f"; the sweeps use the first {r['n_train']:,} training images for {r['epochs']} epochs" if r else "")
    return (f"These answers rest on one data set ({data_name(rows[0]['data'])}), one network of "
            f"{rows[0]['params']:,} parameters trained for 20 epochs, and one machine ({rows[0]['device']}){sweep}. "
            "A deeper network, another data set or a GPU may move the margins; the mechanisms behind them "
            "(statistics per batch or per image) do not change.")


# The sentences and tables of the experiments and why chapters and the landing page, from the summaries above.

def data_name(source: str) -> str:
    """A run's data, as a reader names it."""
    return "CIFAR-10, an offline JPEG copy" if "offline JPEG copy of CIFAR-10" in source else source


def muon_rule(runs: list[dict]) -> dict | None:
    """How runs scale Muon's peak learning rate with the batch size, from their records: {"rule": "linear" (like
    SGD's), "square root", or None where every run is at lr_batch (no rule shown); "base": the peak at lr_batch}.
    None where they train no Muon. A batch on neither rule, a mixture, or no run at lr_batch is refused."""
    muon = [(r["batch_size"], lib.recorded_recipe(r)) for r in runs if lib.recorded_recipe(r)["optimizer"] == "Muon"]
    if not muon:
        return None
    bases = {rec["muon_lr"] for b, rec in muon if b == rec["lr_batch"]}
    if len(bases) != 1:
        raise lib.NormbookError(f"Muon's learning rate at the reference batch is not one value: {sorted(bases)}")
    base, rules = bases.pop(), set()
    for r in runs:
        b, lr_batch = r["batch_size"], lib.recorded_recipe(r)["lr_batch"]
        if lib.recorded_recipe(r)["optimizer"] == "Muon" and b != lr_batch:
            peak, k = muon_peak(r), b / lr_batch
            if math.isclose(peak, base * k):
                rules.add("linear")
            elif math.isclose(peak, base * math.sqrt(k)):
                rules.add("square root")
            else:
                raise lib.NormbookError(f"at batch {b} Muon's peak learning rate {peak:g} follows neither the linear "
                                        f"nor the square-root rule from {base:g} at {lr_batch}")
    if len(rules) > 1:
        raise lib.NormbookError(f"the runs scale Muon's learning rate in more than one way: {sorted(rules)}")
    return dict(rule=rules.pop() if rules else None, base=base)


def sweep_budget(sources: dict[str, list[dict]], reported: dict) -> str:
    """The sweeps' budget, recipe (against `reported`, a reported run's record), data, device and precision,
    from the runs' own records; `sources` maps a sweep's name ("the group-count sweep") to its runs, and each
    sweep trained in a recipe of its own is named with it."""
    runs = [x for rs in sources.values() for x in rs]
    r = runs[0]
    points = {}
    for x in runs:
        points.setdefault((x["norm"], x["variant"]), set()).add(x["seed"])
    seeds = sorted(set().union(*points.values()))
    fewer = sorted({v for (n, v), got in points.items() if len(got) < len(seeds)})
    seeds_text = (f"seed{'s' if len(seeds) > 1 else ''} {and_join(seeds)} at every point" if not fewer else
                  f"seeds {and_join(seeds)} at {sum(len(got) == len(seeds) for got in points.values())} of its "
                  f"{len(points)} points, one seed at the others ({and_join(fewer)})")
    words = {name: recipe_words(rs, reported) for name, rs in sources.items() if rs}
    muon = muon_rule(runs)
    recipe = (next(iter(words.values())) if len(set(words.values())) == 1 else
              "; ".join(f"in {name}, {w}" for name, w in words.items()))
    return (f"**Budget of every point:** the first {r['n_train']:,} training images "
            f"({r['n_train'] // 10:,} per class) for {r['epochs']} epochs, evaluated on all {r['n_test']:,} test images "
            f"at the final epoch; {seeds_text}, compared seed by seed. **Recipe:** {recipe}. "
            f"**Learning rate:** peak {r['recipe']['peak_lr']:g} × *B* / {r['recipe']['lr_batch']}"
            + ("" if not muon else {"linear": f" (Muon's: {muon['base']:g} × *B* / {r['recipe']['lr_batch']})",
                                    "square root": f" (Muon's: {muon['base']:g} × √(*B* / {r['recipe']['lr_batch']}))",
                                    None: f" (Muon's: {muon['base']:g} at batch {r['recipe']['lr_batch']})"}[muon["rule"]])
            + ". **Steps:** "
            f"{r['epochs'] * math.ceil(r['n_train'] / 128):,} at batch 128, {r['epochs'] * math.ceil(r['n_train'] / 2):,} "
            f"at batch 2. "
            f"Data: {data_name(r['data'])}; {r['device']}, {r['precision']}.")


def batch_table(batch: dict):
    """Mean test accuracy per batch size and norm, and BN minus the better of GN and LN with its verdict."""
    import pandas as pd
    at = {(r["norm"], r["batch"]): r for r in batch["rows"]}
    return pd.DataFrame([{"batch": b, **{n.upper(): at[n, b]["mean"] for n in lib.NORMS},
                          "BN − best other": batch["lead"][b]["change"], "verdict": batch["lead"][b]["verdict"]}
                         for b in batch["done"]]).set_index("batch")


def steps_text(batch: dict, control: dict) -> str:
    """The norms without batch statistics whose accuracy rises beyond the seed noise as the batch shrinks, by less
    than twice the epochs give them at batch 128: their rise is called one of optimization."""
    rise = {n: batch["worst"][n]["change_change"] for n in lib.NORMS}
    steps = [n for n in lib.NORMS if batch["worst"][n]["change_verdict"] == "gain"
             and rise[n] < control["per_norm"][n]["vs_128"]["change"]]
    if not steps:
        return ""
    many = len(steps) > 1
    return (f" {and_join(n.upper() for n in steps)}, which {'have' if many else 'has'} no batch statistics, gain"
            f"{'' if many else 's'} {and_join(f'{rise[n]:+.2f}' for n in steps)} points from batch 128 to batch "
            f"{batch['done'][0]}: less than twice the epochs give {'them' if many else 'it'} at batch 128, so the gain is "
            "one of optimization (the small batch's many more steps, on a budget short for every norm).")


def batch_text(batch: dict, control: dict, rows: list[dict]) -> str:
    """The batch sweep's findings as bullets (rows: the reported runs' summary rows, for their order)."""
    worst, lead = batch["worst"], batch["lead"]
    c = control["per_norm"]
    order = lambda o: " > ".join(n.upper() for n in o)
    same = control["order_10"] == control["order_20"]
    main = {r["norm"]: r["test_mean"] for r in rows}
    main_order = sorted(lib.NORMS, key=lambda n: -main[n])
    main_lead = main["bn"] - max(main["gn"], main["ln"])
    lines = [
        f"From batch 128 down to batch {batch['done'][0]}, accuracy changes by " + ", ".join(
            f"**{n.upper()} {worst[n]['change_change']:+.2f}**" for n in lib.NORMS) + " points"
        + (" (paired by seed: over the seeds both batch sizes have, so a point with one seed can differ from the "
           "table's means). " if len({r["n"] for r in batch["rows"] if r["n"]}) > 1 else ", paired by seed. ") +
        "Each norm's best batch size: " + ", ".join(f"{n.upper()} {batch['best'][n]['batch']} ({batch['best'][n]['mean']:.2f} %)"
                                                     for n in lib.NORMS) + ".",
        f"BN minus the better of GN and LN: {lead[batch['done'][-1]]['change']:+.2f} points at batch {batch['done'][-1]}, "
        f"{lead[batch['done'][0]]['change']:+.2f} at batch {batch['done'][0]}; "
        + (f"BN is behind beyond the noise at batch {and_join(batch['behind'])}." if batch["behind"] else
           "BN is never behind beyond the noise."),
        f"Seed noise: a run's accuracy typically varies by σ = {batch['sigma']:.2f} points between seeds (the median "
        f"over the sweep's points, so one unstable point does not set it); a mean change over {batch['seeds']} paired "
        f"seed{'s' if batch['seeds'] != 1 else ''} counts when it exceeds ±{noise_bar(batch['sigma'], batch['seeds']):.2f}, "
        "or more where the two points' own seeds scatter more.",
        "**Step-count control.** Batch 128 for twice the epochs (as many steps as batch 64, each image seen twice as often) "
        "changes accuracy from batch 128 by " + ", ".join(f"{n.upper()} {c[n]['vs_128']['change']:+.2f}" for n in lib.NORMS)
        + f" points: the sweep's budget is short for all three. The order of the norms at batch 128 is "
        f"{order(control['order_10'])} with the sweep's budget and {order(control['order_20'])} with twice the steps"
        + (": the budget does not decide it." if same else ": the budget changes it, so read the order with care.")
        + steps_text(batch, control),
        f"**Against the reported runs.** At batch 128 the reported runs (20 epochs, all 50,000 images) rank "
        f"{order(main_order)}" + (" (the last two level within twice the seed spread, so their order is no finding)"
                                  if level(*[r for r in rows if r["norm"] in main_order[1:]], seed_spread(rows)) else "")
        + "; " + (f"the sweep agrees that {main_order[0].upper()} leads"
                                   if main_order[0] == control["order_10"][0] else
                                   f"the sweep puts {control['order_10'][0].upper()} first instead")
        + f", with {'larger' if abs(batch['lead'][128]['change']) > abs(main_lead) else 'smaller'} gaps "
        f"(BN − better other: {batch['lead'][128]['change']:+.2f} points here, "
        f"{main_lead:+.2f} in the reported runs). The gaps between norms depend on the budget and the recipe; what the sweep measures "
        "is how each norm's accuracy changes with the batch size.",
    ]
    return "\n".join(f"- {l}" for l in lines)


def lead_change(runs: list[dict], variant: str, reference: str) -> dict:
    """How BN's lead over the better of GN and LN at `reference` moves at `variant`, paired by seed (four runs
    per seed, so its bar is that of a difference of two runs times √2); the other norm is the one at `reference`."""
    other = bn_lead(runs, reference)["other"]
    def margin(v, s):
        return accs(runs, "bn", v).get(s, math.nan) - accs(runs, other, v).get(s, math.nan)
    changes = [d for s in sorted(accs(runs, "bn", variant)) if not math.isnan(d := margin(variant, s) - margin(reference, s))]
    if not changes:
        return dict(change=math.nan, n=0, bar=math.nan, verdict="not run")
    change, bar = statistics.mean(changes), noise_bar(noise(runs) * math.sqrt(2), len(changes))
    return dict(change=change, n=len(changes), bar=bar, verdict=verdict(change, bar))


def muon_peak(run: dict) -> float:
    """Muon's peak learning rate in a run, as lib.train sets it: muon_lr scaled linearly with the batch size."""
    recipe = lib.recorded_recipe(run)
    return recipe["muon_lr"] * run["batch_size"] / recipe["lr_batch"]


def lr_rule(runs: list[dict]) -> dict:
    """The control for Muon's learning-rate rule at batch 8, from its own runs (one precision, paired by seed):
    per norm, batch 8 against batch 128 with Muon's peak scaled linearly with the batch and by its square root,
    and the root rule against the linear one; BN's lead over the better of GN and LN under each rule, and how it
    moves. `thin`: the points with fewer than two seeds (a diverged run is not read), which leave it unread."""
    per_norm = {n: dict(linear=paired(runs, n, "batch 8", "batch 128"), root=paired(runs, n, ROOT_RULE, "batch 128"),
                        gain=paired(runs, n, ROOT_RULE, "batch 8")) for n in lib.NORMS}
    lead = {v: bn_lead(runs, v) for v in ("batch 8", ROOT_RULE)}
    moved = lead_change(runs, ROOT_RULE, "batch 8")
    seeds = min([c["n"] for p in per_norm.values() for c in p.values()] + [c["n"] for c in lead.values()] + [moved["n"]])
    thin = [f"{n.upper()} at {v}" for v in ("batch 128", "batch 8", ROOT_RULE) for n in lib.NORMS
            if len(accs(runs, n, v)) < 2]
    one = lambda v: next((r for r in runs if r["variant"] == v), None)
    peaks = {v: muon_peak(one(v)) if one(v) else math.nan for v in ("batch 128", "batch 8", ROOT_RULE)}
    if not math.isclose(peaks[ROOT_RULE], peaks["batch 128"] * math.sqrt(8 / 128)):   # what the text will say
        raise lib.NormbookError(f"{ROOT_RULE!r} trains Muon at a peak of {peaks[ROOT_RULE]:g}, not batch 128's "
                                f"{peaks['batch 128']:g} × √(8/128)")
    return dict(per_norm=per_norm, lead=lead, moved=moved, seeds=seeds, thin=thin, peaks=peaks,
                record=one("batch 128") or runs[0])


def lr_rule_control() -> dict | None:
    """The control for Muon's learning-rate rule, once every run of it is done (None before)."""
    return lr_rule(sweep(LR_RULE)) if finished_plan(LR_RULE, earlier="") == LR_RULE else None


def lr_rule_text(rule: dict | None, sweep_runs: list[dict]) -> str:
    """The control's bullet for the batch sweep: Muon's peak learning rate at batch 8 scaled by the square root of
    the batch or linearly, for each norm and between them, told from the rule the sweep itself uses. Nothing unless
    the sweep trains Muon and the control is done (rule None); one sentence if a point of it has fewer than two
    seeds."""
    sweep_rule = muon_rule(sweep_runs)
    if rule is None or sweep_rule is None:
        return ""
    if rule["thin"]:
        return (f"- **Muon's learning rate.** The control for its rule at batch 8 has fewer than two seeds at "
                f"{and_join(rule['thin'])} (a run that diverged is not read), so its comparisons are not made.")
    p, r, peaks = rule["per_norm"], rule["record"], rule["peaks"]
    root = sweep_rule["rule"] == "square root"                     # the sweep's own rule; else linear, like SGD's
    names = lambda norms: and_join(n.upper() for n in norms)
    by = lambda verdicts: [n for n in lib.NORMS if p[n]["gain"]["verdict"] in verdicts]
    back = [n for n in by({"gain"}) if p[n]["linear"]["verdict"] == "loss"]        # a loss the larger rate wins back
    raised = [n for n in by({"gain"}) if n not in back]
    effects = [f"wins back accuracy for {names(back)}" if back else "",
               f"raises accuracy for {names(raised)}" if raised else "",
               f"costs {names(by({'loss'}))} accuracy" if by({"loss"}) else "",
               f"changes nothing beyond the seed noise for {names(by({'within noise'}))}" if by({"within noise"}) else ""]
    if back:
        still = [n for n in back if p[n]["root"]["verdict"] == "loss"]
        meaning = (f"so part of what {'a linear-rule sweep would show' if root else 'the sweep shows'} at batch 8 for "
                   f"{names(back)} is Muon's learning rate scaled down too far, not the norm"
                   + (f"; {names(still)} still lose{'s' if len(still) == 1 else ''} against batch 128 with the "
                      "square-root rule" if still else ""))
    elif raised:
        meaning = ("so the linear rule loses nothing beyond the seed noise against batch 128 at batch 8, and the "
                   "square-root rule does better still")
    else:
        meaning = "so at batch 8 the linear rule does not starve Muon"
    above = [n for n in lib.NORMS if p[n]["root"]["verdict"] == "gain"]
    steps = (f" With the square-root rule {names(above)} end{'s' if len(above) == 1 else ''} above "
             f"{'its' if len(above) == 1 else 'their'} batch-128 accuracy: batch 8 takes {128 // 8} times as many steps, on a "
             "budget short for every norm (see the step-count control)." if above else "")
    lead, moved = rule["lead"], rule["moved"]
    state = {"gain": "BN leads", "loss": "BN trails", "within noise": "BN is level with the better of GN and LN"}
    lin, sq = state[lead["batch 8"]["verdict"]], state[lead[ROOT_RULE]["verdict"]]
    verdicts = f"{lin} under both rules" if lin == sq else f"{lin} with the linear rule, {sq} with the square-root rule"
    if moved["verdict"] == "within noise":          # a verdict crossing its bar is no move unless the margin moves
        between = (f"{verdicts}, and the rule does not measurably move BN's margin ({moved['change']:+.2f} ± "
                   f"{moved['bar']:.2f} points).")
    elif lin == sq:
        between = (f"{verdicts}, and the rule moves BN's margin by {moved['change']:+.2f} points (± {moved['bar']:.2f}): "
                   "the size of the gap between norms at batch 8 depends on Muon's learning rate, its sign does not.")
    else:
        between = (f"{verdicts}: the verdict between norms at batch 8 depends on Muon's learning rate (BN's margin "
                   f"moves by {moved['change']:+.2f} ± {moved['bar']:.2f} points), so the sweep's gaps between norms at "
                   "small batches are those of " + ("the square-root rule it uses; another rule for Muon could move "
                   "them." if root else "the linear rule it uses; read them with that in mind."))
    precision = ("" if r["precision"] == sweep_runs[0]["precision"] else
                 f", unlike the sweep's {sweep_runs[0]['precision']}, so its accuracies are compared with each other, "
                 "not with the figure's")
    rates = (f"Muon's peak learning rate at {peaks[ROOT_RULE]:.4g} (its batch-128 value {peaks['batch 128']:g} "
             f"× √(8/128)) and at the linear rule's {peaks['batch 8']:.4g} (× 8/128); the SGD-Nesterov step of the "
             "other weights follows the linear rule in both")
    return (
        "- **Muon's learning rate.** The linear rule rests on SGD's step being proportional to the gradient: "
        "*k* steps on batches of *B* move the weights about as far as one step on a batch of *kB* with *k* times the "
        "learning rate. Muon's step is orthogonalized, of a set size whatever the gradient's, so the argument does "
        "not carry over; for optimizers that normalize their step, scaling by the square root of the batch is the "
        "usual alternative ([Malladi et al., 2022](https://arxiv.org/abs/2205.10287), for Adam). "
        + ("The sweep scales Muon's peak by √(*B*/128), SGD's linearly. " if root else
           "The sweep scales Muon's peak linearly, like SGD's. ")
        + f"A control trains batch 8 both ways: {rates}. {rule['seeds']} seeds, paired by seed; the first "
        f"{r['n_train']:,} training images, {r['epochs']} epochs, the whole test set; data: {data_name(r['data'])}; "
        f"{r['device']}, "
        f"{r['precision']}{precision}. From batch 128 to batch 8, " + ", ".join(
            f"{n.upper()} changes by {p[n]['linear']['change']:+.2f} points with the linear rule and "
            f"{p[n]['root']['change']:+.2f} with the square-root rule" for n in lib.NORMS)
        + ". Against the linear rule, the square-root rule " + and_join(e for e in effects if e) + " ("
        + ", ".join(f"{n.upper()} {p[n]['gain']['change']:+.2f} ± {p[n]['gain']['bar']:.2f}" for n in lib.NORMS)
        + f"), {meaning}.{steps} BN minus the better of GN and LN at batch 8: {lead['batch 8']['change']:+.2f} points "
        f"with the linear rule, {lead[ROOT_RULE]['change']:+.2f} with the square-root rule; {between}"
    )


def group_table(rows: list[dict]):
    """The group sweep as a table narrow enough for a phone: LN and IN as the figure names them."""
    import pandas as pd
    label = {"1": "1 (LN)", "C/1": "C/1 (IN)"}
    return pd.DataFrame([{"G": label.get(r["groups"], r["groups"]), "mean (%)": r["mean"],
                          "seeds (%)": f"{r['lo']:.2f}–{r['hi']:.2f}", "vs G = 8": r["change_change"],
                          "verdict": "—" if r["groups"] == "8" else r["change_verdict"]} for r in rows if r["n"]]).set_index("G")


def group_text(rows: list[dict], summary: dict) -> str:
    best, worst = summary["best"], summary["worst"]
    at = {r["groups"]: r for r in rows}
    others = [g for g in summary["near"] if g != best["groups"]]
    return "\n".join(f"- {l}" for l in [
        f"Best: G = {GROUP_NAMES.get(best['groups'], best['groups'])}, {best['mean']:.2f} %; worst: "
        f"G = {GROUP_NAMES.get(worst['groups'], worst['groups'])}, {worst['mean']:.2f} %.",
        (f"Within the seed noise of G = {best['groups']}: G = {and_join(others)}." if others else
         f"Every other count is behind G = {best['groups']} beyond the seed noise."),
        f"The two extremes against G = 8: one group (LayerNorm's statistics) {at['1']['change_change']:+.2f} points "
        f"(bar ±{at['1']['change_bar']:.2f}), one group per channel (Instance Norm) {at['C/1']['change_change']:+.2f} "
        f"points (bar ±{at['C/1']['change_bar']:.2f}" + (f", wider because its own seeds lie {at['C/1']['hi'] - at['C/1']['lo']:.2f} "
        "points apart" if at["C/1"]["change_bar"] > at["1"]["change_bar"] + 0.01 else "") + ").",
    ])


def claims_text(batch: dict, groups: list[dict], summary: dict, rows: list[dict]) -> str:
    """The claims the experiments chapter tests, each with its verdict from the numbers."""
    worst, done = batch["worst"], batch["done"]
    most = min(lib.NORMS, key=lambda n: worst[n]["change_change"])
    small = done[0]
    lead = batch["lead"][small]
    at = {r["groups"]: r for r in groups}
    ordered = [r["mean"] for r in groups if r["n"]]
    rising = all(a <= b for a, b in zip(ordered, ordered[1:]))
    before = list(zip(ordered, ordered[1:]))[:[r["groups"] for r in groups if r["n"]].index(summary["best"]["groups"])]
    ups = sum(a < b for a, b in before)
    main = {r["norm"]: r for r in rows}
    acc = {(r["norm"], r["batch"]): r["mean"] for r in batch["rows"]}
    ln_lowest = [b for b in done if acc["ln", b] < min(acc["bn", b], acc["gn", b])]
    return "\n".join(f"- {c}" for c in [
        "**BN degrades as the batch shrinks, GN does not** (Wu & He 2018, on ImageNet). "
        + (f"Here too BN fares worst: from batch 128 to batch {small} it changes by {worst['bn']['change_change']:+.2f} "
           f"points, " if most == "bn" else f"Not here: {most.upper()} loses the most ({worst[most]['change_change']:+.2f} "
           f"points from batch 128 to batch {small}), ")
        + f"GN by {worst['gn']['change_change']:+.2f} and LN by {worst['ln']['change_change']:+.2f}; at batch {small} "
        + (f"{short_name(lead['other'])} leads BN by {-lead['change']:.2f} points, as in the paper." if lead["verdict"] == "loss" else
           f"BN still leads by {lead['change']:.2f} points, unlike in the paper." if lead["verdict"] == "gain" else
           f"BN and {short_name(lead['other'])} are level within the seed noise ({lead['change']:+.2f} points)."),
        "**\"As the number of groups increases, GN provides better results.\"** "
        + ("Supported: accuracy rises at every step." if rising else
           f"{'Not shown' if '1' in summary['near'] else 'Only up to a point'}: from one group to "
           f"G = {summary['best']['groups']} accuracy goes from {at['1']['mean']:.2f} to {summary['best']['mean']:.2f} % "
           f"({ups} of {len(before)} steps up; {'all of it within' if '1' in summary['near'] else 'beyond'} the seed "
           f"noise), and with one "
           f"channel per group (Instance Norm) it falls {-at['C/1']['change_change']:.1f} points below G = 8."),
        f"**\"LN is not suitable for image classifiers.\"** In the reported runs LN reaches {main['ln']['test_mean']:.2f} % "
        f"against BN's {main['bn']['test_mean']:.2f} % and GN's {main['gn']['test_mean']:.2f} % (means over seeds); in the "
        f"batch-size sweep it is the lowest of the three at {len(ln_lowest)} of its {len(done)} batch sizes. Weaker "
        f"here, but not unsuitable: it trains at every batch size and ends {main['bn']['test_mean'] - main['ln']['test_mean']:.1f} "
        "points behind BN in the reported runs.",
    ])


def fit_table(fit: list[dict]):
    import pandas as pd
    return pd.DataFrame([{"norm": short_name(r["norm"]), "train acc. (%)": r["train_acc"], "test acc. (%)": r["test_acc"],
                          "train − test (points)": r["gap"], "train loss": r["train_loss"], "test loss": r["test_loss"]}
                         for r in fit]).set_index("norm")


def why_text(why: dict, longer: str = "") -> str:
    """The BN-lead experiment's findings, what longer training did to the lead (ceiling()["lead"], if any), and
    the explanation they support."""
    g, fz = why["ghosts"], why["frozen"]
    cap = lambda t: t[0].upper() + t[1:]
    lines = [cap(why["fit_text"]) + "."]
    if why["noise_text"]:
        lines.append(cap(why["noise_text"]) + " (" + "; ".join(
            f"{n} images: {g[n]['change']:+.2f} ± {g[n]['bar']:.2f}" for n in GHOSTS if g[n]["n"]) + ", paired by seed).")
    if why["frozen_text"]:
        lines.append(cap(why["frozen_text"]) + ".")
    if longer:
        lines.append("With longer training ({ref}`the ceiling <ceiling>`, one run per norm), " + longer)
    frozen_note = (" Frozen after the warm-up, BN's statistics no longer follow the changing weights and training "
                   "diverges at the same learning rate (so removing the noise could not be tested this way): BN needs "
                   "its live statistics for steps this large." if why["frozen_diverged"] else
                   "" if not fz["n"] else " Frozen after the warm-up, BN's statistics no longer follow the changing "
                   "weights, and that costs accuracy: BN keeps helping while it normalizes with live batches. Freezing "
                   "takes away that tracking together with the noise, so its loss is not evidence for the noise"
                   + (", and the ghost batches, which change the noise alone, do not raise accuracy." if why["supports"]
                      in ("fit", "neither") else ".") if fz["verdict"] == "loss" else
                   " Training on with frozen statistics after the warm-up costs nothing beyond noise, so what BN "
                   "contributes is settled early in training.")
    share = why["share"]
    most = max(share, key=share.get)
    rest = [n for n in share if share[n] < 0.75]
    fit_part = ("BN fits its training images better, which accounts for " + and_join(
        f"{100 * share[n]:.0f} % of its lead over {n.upper()}" for n in ("ln", "gn")) + (
        "; the rest of its lead over " + and_join(n.upper() for n in rest) + " is a smaller gap between training and "
        "test accuracy, and adding noise to BN's statistics does not add to it" if rest else ""))
    verdict = {
        "noise": "**Verdict: the noise of batch statistics acts as a regularizer here.** Adding noise raises BN's test "
                 "accuracy." + frozen_note,
        "fit": f"**Verdict: mostly a better fit, not the noise.** {fit_part}. The regularizer story in its usual form "
               "is not supported here; what else narrows BN's gap is left open by these measurements." + frozen_note,
        "neither": "**Verdict: neither explanation is supported.** BN does not fit better beyond the noise, and more "
                   "noise does not help." + frozen_note,
    }.get(why["supports"], "**Verdict: the measurements do not settle it**: the noise runs point both ways.")
    lines.append(verdict)
    return "\n\n".join(lines)


def answer_text(rows: list[dict], why: dict | None) -> str:
    """The landing page's first paragraph: who leads by how much, and (from why_bn_leads) why."""
    order = sorted(rows, key=lambda r: -r["test_mean"])
    best, second, third = order
    spread = seed_spread(rows)
    is_level = level(second, third, spread)
    text = (f"**With everything else held fixed, {best['model'].split(' ')[0]} is the most accurate, by "
            f"{best['test_mean'] - second['test_mean']:.1f} points**"
            + (f", and {second['model'].split(' ')[0]} and {third['model'].split(' ')[0]} are level" if is_level else "")
            + ": " + ", ".join(f"{r['model'].split(' ')[0]} **{mean_std_text(r)} %**" for r in rows)
            + f" (final test accuracy, mean ± std, {min(r['seeds'] for r in rows)} seeds).")
    if why and best["norm"] == "bn":
        text += {"fit": " It fits the clean training images better, which accounts for most of its lead over "
                        " LayerNorm and about half over GroupNorm; making its batch statistics noisier does not "
                        "raise its accuracy."
                        if why["share"]["ln"] >= 0.75 and 0.3 <= why["share"]["gn"] < 0.75 else
                        " It fits the clean training images better, which accounts for " + and_join(
                            f"{100 * why['share'][n]:.0f} % of its lead over {short_name(n)}" for n in ("ln", "gn"))
                        + "; making its batch statistics noisier does not raise its accuracy.",
                 "noise": " The noise of its batch statistics acts as a regularizer: adding noise raises it further.",
                 "neither": " Neither a better fit nor the noise of its batch statistics explains its lead."}.get(why["supports"], "")
    return text


def experiments_takeaways(batch: dict, groups: dict) -> str:
    """The experiments chapter's key takeaways, as a MyST admonition."""
    worst = batch["worst"]
    most = min(lib.NORMS, key=lambda n: worst[n]["change_change"])
    first = batch["bn_fine_from"]
    others = [g for g in groups["near"] if g != groups["best"]["groups"]]
    lines = [
        f"From batch 128 down to batch {worst[most]['batch']}, {short_name(most)} changes the most: " + ", ".join(
            f"{short_name(n)} {worst[n]['change_change']:+.1f}" for n in lib.NORMS) + " points. "
        + ("BatchNorm's statistics come from the batch, and a few images give noisy ones." if most == "bn" else
           "GroupNorm's and LayerNorm's statistics come from each image, yet the smaller steps cost them more here."),
        (f"BatchNorm is never behind beyond the seed noise down to batch {first}" + (f"; below it, {short_name(batch['lead'][max(batch['behind'])]['other'])} is ahead."
         if batch["behind"] else ".")) if first is not None else "BatchNorm is behind at every batch size measured.",
        "GroupNorm and LayerNorm normalize each image on its own, so a smaller batch changes only their optimization "
        "(more, noisier steps), never their statistics.",
        "More groups is not simply better: " + (f"G = {and_join(others)} {'is' if len(others) == 1 else 'are'} within "
        f"the seed noise of the best, G = {groups['best']['groups']}" if others else
        f"G = {groups['best']['groups']} is ahead of every other count beyond the seed noise") + ", and "
        f"G = {GROUP_NAMES.get(groups['worst']['groups'], groups['worst']['groups'])} is the worst.",
    ]
    return ":::{admonition} Key takeaways\n:class: tip\n" + "\n".join(f"- {l}" for l in lines) + "\n:::"


def recommendation_list(recs: list[dict], key: str = "short") -> str:
    """The recommendations as MyST bullets, each linked to its evidence in the book."""
    ref = lambda page, label: f"{{ref}}`evidence <{label}>`" if label else f"{{doc}}`evidence <{page}>`"
    return "\n".join(f"- {r[key]} ({ref(*r['link'])})" for r in recs)


def why_takeaway(why: dict) -> str:
    """One clause for the why chapter's takeaways: where BN's lead lies, by the measurements."""
    return {"fit": "it fits its training images better (" + and_join(f"{100 * why['share'][n]:.0f} % of its lead over "
                   f"{n.upper()}" for n in ("ln", "gn")) + "), and noisier batch statistics do not raise its accuracy: "
                   "mostly a better fit, not the noise regularizer of the usual story",
            "noise": "noisier batch statistics raise its accuracy: the noise acts as a regularizer",
            "neither": "neither a better fit nor the noise of its statistics explains it"}.get(
        why["supports"], "the measurements do not settle why")


def setup_table(runs: dict[str, dict]):
    """The landing page's setup table: what the three reported runs share, from their own records (a value
    that differs between them is shown for each)."""
    import pandas as pd
    def one(values):
        values = sorted({str(v) for v in values})
        return values[0] if len(values) == 1 else " / ".join(values)
    recipes = {n: lib.recorded_recipe(m) for n, m in runs.items()}
    r0, m0 = recipes["bn"], runs["bn"]
    setup = {
        "network": "C1 C2 c3 P1 C3 C4 C5 c6 P2 C7 C8 C9 GAP c10",
        "each 3x3 conv": one(f"conv → norm → {lib.ACTIVATION_NAMES[r['activation']]}" for r in recipes.values()),
        "identity shortcuts": one(("around " + " and ".join(f"{a}–{b}" for a, b in lib.SHORTCUTS))
                                  if r["shortcuts"] else "none" for r in recipes.values()),
        "parameters": ", ".join(f"{n.upper()} {m['params']:,}" for n, m in runs.items()),
        "epochs, batch size": one(f"{m['epochs']}, {m['batch_size']}" for m in runs.values()),
        **{part: one(recipe_parts(r)[part] for r in recipes.values()) for part in ("optimizer", "schedule", "initialisation")},
        "augmentation": f"random flip, random translation ±{r0['translate']} px",
        "data": one(m["data"] for m in runs.values()),
        "training / test images": one(f"{m['n_train']:,} / {m['n_test']:,}" for m in runs.values()),
        "device, precision": one(f"{m['device']}, {m['precision']}" for m in runs.values()),
    }
    return pd.Series(setup).to_frame("all three runs")


def lead_sentence(rows: list[dict]) -> str:
    """Where BN stands on clean test images at batch 128, against the better of GN and LN."""
    main = {r["norm"]: r for r in rows}
    other = max(("gn", "ln"), key=lambda n: main[n]["test_mean"])
    lead = main["bn"]["test_mean"] - main[other]["test_mean"]
    return (f"At batch 128, on clean test images, BatchNorm ends {abs(lead):.2f} points "
            f"{'ahead of' if lead > 0 else 'behind'} {short_name(other)}, the better of the other two "
            f"({main['bn']['test_mean']:.2f} % against {main[other]['test_mean']:.2f} %, means over seeds). Why?")


def answer() -> dict:
    """Everything the landing page and the README rest on, loaded once: the reported runs, the sweeps' runs
    and the robustness records; and from them the summary rows, the batch-size sweep's summary, the BN-lead
    verdict, the recommendations and the answer's text."""
    rep, rob = reported(), model_records("robustness")
    rows = summary_rows(rep)
    batch_runs, group_runs = sweep(BATCH_SWEEP), sweep(GROUP_SWEEP)
    batch = batch_summary(batch_runs)
    why = why_bn_leads(fit_rows(model_records("fit")), batch_runs, diverged(BATCH_SWEEP))
    groups = group_summary(group_runs)
    bench = lib.read_json(lib.ROOT / "bench" / "results.json")
    recs = recommendations(rows, batch, groups, robustness_summary(rob), bench["pipelines"])
    recipes = evidence_recipes({"the batch-size sweep (with its ghost batches)": batch_runs,
                                "the group-count sweep": group_runs, "the timings": [bench]}, rep.main["bn"])
    return dict(reported=rep, batch_runs=batch_runs, robustness=rob, rows=rows, batch=batch, why=why, recs=recs,
                text=answer_text(rows, why), recipes=recipes)
