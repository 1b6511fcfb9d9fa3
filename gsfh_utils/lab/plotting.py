"""Figures: one style, one ``savefig`` (PNG for the README, PDF for papers, atomic and without
run-dependent metadata), and the figure functions of the notebooks, grouped by chapter."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns
import torch

from .io import atomic_write

FORMATS = ("png", "pdf")
#: Metadata that would change from run to run is dropped so regenerated figures are identical.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}


def set_style() -> None:
    """The companion's plotting style (seaborn whitegrid, readable sizes)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "figure.figsize": (6.4, 4.2),
                         # SVG ids from a fixed salt, not a random one: the same figure, the
                         # same bytes (PNG and PDF drop their dated metadata in savefig).
                         "svg.hashsalt": "gsfh"})


def savefig(fig, folder: Path, name: str) -> dict[str, Path]:
    """Write ``fig`` as ``<folder>/<name>.png`` and ``.pdf``, each atomically; returns the paths
    by format."""
    if not name or "/" in name or "." in name:
        raise ValueError(f"name must be a bare file stem like 'frontier', got {name!r}")
    return {fmt: atomic_write(Path(folder) / f"{name}.{fmt}",
                              lambda temporary, fmt=fmt: fig.savefig(
                                  temporary, format=fmt, bbox_inches="tight",
                                  metadata=_METADATA[fmt]))
            for fmt in FORMATS}


def band(ax, x, values, *, label: str, color=None, style: str = "-", dim: int = -1):
    """Median line and interquartile band of ``values`` over dimension ``dim`` (the seeds)."""
    values = torch.as_tensor(values, dtype=torch.float64)
    low, mid, high = torch.quantile(values, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64),
                                    dim=dim)
    line, = ax.plot(x, mid, style, color=color, label=label)
    ax.fill_between(x, low, high, color=line.get_color(), alpha=0.2)
    return line


# --------------------------------------------------------------------------------------------
# 01 · Gibbs optimality. Every function draws from the tidy frame that the notebook also saves.
# --------------------------------------------------------------------------------------------


def mirror_ascent_figure(frame, *, eta: float, alpha: float):
    """Suboptimality of mirror ascent against its bound: columns ``step``, ``gap``, ``bound``,
    ``quadratic_reference``, ``roundoff``."""
    fig, ax = plt.subplots()
    ax.semilogy(frame["step"], frame["gap"].clip(lower=1e-17), "o-", ms=3,
                label=r"measured $J(\pi_r) - J(\pi_k)$")
    ax.semilogy(frame["step"], frame["bound"], "--",
                label=r"bound $\eta(1-\alpha)^k\,\mathbb{E}_x\,\mathrm{osc}(\delta_0)$")
    ax.semilogy(frame["step"], frame["quadratic_reference"], ":",
                label=r"reference $\propto(1-\alpha)^{2k}$")
    ax.axhline(float(frame["roundoff"].iloc[0]), color="grey", lw=0.8, label="float64 round-off")
    ax.set(xlabel="mirror-ascent step $k$", ylabel="suboptimality", ylim=(1e-18, None),
           title=rf"Mirror ascent on $J$ ($\eta={eta:g}$, $\alpha={alpha:g}$)")
    ax.legend()
    return fig


def eta_limits_figure(frame):
    """TV of the Gibbs policy to its two limits against ``eta``, with the bounds: columns
    ``eta``, ``tv_to_reference``, ``large_eta_bound``, ``tv_to_argmax_limit``,
    ``small_eta_bound`` (largest over the test problems)."""
    fig, ax = plt.subplots()
    large, small = frame[frame["eta"] >= 1], frame[frame["eta"] <= 1]
    ax.loglog(frame["eta"], frame["tv_to_reference"], "o-", label=r"TV$(\pi_\eta, \pi_0)$")
    ax.loglog(large["eta"], large["large_eta_bound"], "--",
              label=r"bound $\frac{1}{2}(e^{\mathrm{osc}\,r/\eta}-1)$")
    ax.loglog(frame["eta"], frame["tv_to_argmax_limit"].clip(lower=1e-17), "s-",
              label=r"TV$(\pi_\eta, \pi_0(\cdot\,|\,M))$")
    ax.loglog(small["eta"], small["small_eta_bound"].clip(lower=1e-17), ":",
              label=r"bound $\frac{\pi_0(M^c)}{\pi_0(M)}e^{-\Delta/\eta}$")
    ax.set(xlabel=r"$\eta$", ylabel="total variation (largest over problems)", ylim=(1e-17, 2),
           title=r"The Gibbs policy between $\pi_0(\cdot\,|\,\arg\max r)$ and $\pi_0$")
    ax.legend(fontsize=9)
    return fig


def acceptance_rate_figure(exact, measured, *, limit: float):
    """One-step rejection sampling: the exact acceptance rate against ``eta`` (``exact``:
    columns ``eta``, ``context``, ``rate``), the measured one (``measured``: ``eta``, ``rate``,
    averaged over contexts) and the ``eta -> 0`` limit ``E_x pi0(argmax r)``."""
    fig, ax = plt.subplots()
    for index, (_, curve) in enumerate(exact.groupby("context")):
        if index < 8:
            ax.loglog(curve["eta"], curve["rate"], color="C0", alpha=0.25, lw=0.8)
    mean = exact.groupby("eta", as_index=False)["rate"].mean()
    ax.loglog(mean["eta"], mean["rate"], color="C0", lw=2,
              label=r"exact $Z_r e^{-r_{\max}/\eta}$ (mean; thin: single contexts)")
    ax.loglog(measured["eta"], measured["rate"], "o", color="C3", label="measured")
    ax.axhline(limit, ls=":", color="grey",
               label=r"$\eta\to0$ limit $\mathbb{E}_x\,\pi_0(\arg\max r)$")
    ax.set(xlabel=r"$\eta$", ylabel="acceptance rate",
           title="One-step rejection sampling of the Gibbs policy")
    ax.legend(fontsize=9)
    return fig


def frontier_figure(frame, *, eta: float):
    """Reward against KL: ``frame`` has columns ``kl``, ``reward``, ``kind`` (``random``,
    ``gibbs`` for the curve, ``own`` for ``pi_eta``, ``reference`` for ``pi0``)."""
    fig, ax = plt.subplots()
    kinds = {kind: part for kind, part in frame.groupby("kind")}
    ax.scatter(kinds["random"]["kl"], kinds["random"]["reward"], s=4, alpha=0.35, color="grey",
               label="random policies")
    ax.plot(kinds["gibbs"]["kl"], kinds["gibbs"]["reward"], color="C0", lw=2,
            label=r"Gibbs frontier $\{\pi_\eta\}_{\eta}$")
    ax.plot(kinds["own"]["kl"], kinds["own"]["reward"], "*", ms=14, color="C3",
            label=rf"$\pi_\eta$, $\eta = {eta:g}$")
    ax.plot(kinds["reference"]["kl"], kinds["reference"]["reward"], "D", color="k",
            label=r"$\pi_0$")
    ax.axhline(float(kinds["gibbs"]["reward"].max()), ls=":", color="C0", lw=1,
               label=r"$\max_a r$")
    ax.set(xlabel=r"KL$(\pi\,\|\,\pi_0)$", ylabel=r"$\mathbb{E}_\pi\, r$",
           xlim=(-0.1, float(kinds["random"]["kl"].quantile(0.995)) + 0.2),
           title="Reward against KL: the Gibbs family is the frontier")
    ax.legend(fontsize=9, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


# --------------------------------------------------------------------------------------------
# 02 · Offline learning with pessimism.
# --------------------------------------------------------------------------------------------


def _quantile_curve(ax, frame, x: str, y: str, label: str, style: str = "o-", color=None):
    """Median of ``y`` against ``x`` over the rows of each ``x`` (the seeds), with the IQR."""
    grouped = frame.groupby(x)[y]
    line, = ax.plot(grouped.median().index, grouped.median(), style, ms=4, color=color,
                    label=label)
    ax.fill_between(grouped.median().index, grouped.quantile(0.25), grouped.quantile(0.75),
                    color=line.get_color(), alpha=0.15)
    return line


def confidence_radius_figure(frame, *, theory_radii: dict[str, float], oracle: float):
    """``||theta_hat - theta*||_Sigma`` against ``n`` per coverage (``frame``: columns
    ``coverage``, ``n``, ``seed``, ``error``, ``kind`` = ``error`` or ``bootstrap radius``), with
    the oracle radius and the bootstrap radii (a square at their ``n``: median over data sets,
    error bar the IQR); the theory's radii (``{label: value}``, far above
    the data) are named in the title."""
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    errors, boot = frame[frame["kind"] == "error"], frame[frame["kind"] == "bootstrap radius"]
    for index, (coverage, part) in enumerate(errors.groupby("coverage", sort=False)):
        _quantile_curve(ax, part, "n", "error", f"{coverage} coverage: error (median, IQR)",
                        color=f"C{index}")
        radius = boot[boot["coverage"] == coverage]["error"]
        ax.errorbar(radius.index.size and boot["n"].iloc[0], radius.median(),
                    yerr=[[radius.median() - radius.quantile(0.25)],
                          [radius.quantile(0.75) - radius.median()]], fmt="s", color=f"C{index}",
                    capsize=3, mfc="white",
                    label=f"{coverage} coverage: bootstrap radius (median, IQR)")
    ax.axhline(oracle, color="k", ls="--", label=rf"oracle radius (uses $\theta^*$) = {oracle:.2f}")
    off_chart = "; ".join(f"{label}: {value:.0f}" for label, value in theory_radii.items())
    ax.set(xscale="log", xlabel="n (comparisons)", ylabel=r"$\|\hat\theta-\theta^*\|_{\Sigma_D}$",
           title=f"Confidence radius (off the chart: {off_chart})")
    ax.legend(fontsize=8)
    return fig


def suboptimality_vs_n_figure(frame):
    """Suboptimality against ``n``, one panel per coverage, one curve per ``method`` (``frame``:
    columns ``coverage``, ``n``, ``seed``, ``method``, ``suboptimality``); bounds dashed."""
    coverages = list(dict.fromkeys(frame["coverage"]))
    fig, axes = plt.subplots(1, len(coverages), figsize=(11, 4.2), sharey=True, squeeze=False)
    for ax, coverage in zip(axes[0], coverages, strict=True):
        part = frame[frame["coverage"] == coverage]
        for index, (method, curve) in enumerate(part.groupby("method", sort=False)):
            _quantile_curve(ax, curve, "n", "suboptimality", method, color=f"C{index}",
                            style="--" if method.startswith("bound") else "o-")
        ax.set(xscale="log", yscale="log", xlabel="n (comparisons)",
               title=f"{coverage} coverage")
    axes[0][0].set_ylabel(r"$J(\pi^*) - J(\hat\pi)$ (median, IQR)")
    axes[0][-1].legend(fontsize=7)
    return fig


def rates_figure(frame, *, limits: dict):
    """``n`` times the mean suboptimality (± 2 standard errors over seeds) against ``n`` per
    ``curve`` (``frame``: columns ``curve``, ``n``, ``seed``, ``scaled``); a curve whose name is
    in ``limits`` (``{curve: value}``) gets its predicted limit as a dotted line, bounds are
    dashed. A ``1/n`` rate is flat on this scale, the bound's ``n^-1/2`` rises like ``sqrt(n)``."""
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    for index, (curve, part) in enumerate(frame.groupby("curve", sort=False)):
        grouped = part.groupby("n")["scaled"]
        error = 2 * grouped.std() / grouped.count() ** 0.5
        bound = curve.startswith("bound")
        color = "k" if bound else f"C{index}"
        ax.errorbar(grouped.mean().index, grouped.mean(), yerr=error, fmt="s--" if bound else "o-",
                    ms=4, capsize=2, color=color, label=curve)
        if curve in limits:
            ax.axhline(limits[curve], color=color, ls=":", lw=1.2)
    ax.plot([], [], "k:", lw=1.2, label=r"limit $\mathrm{tr}(C I^+)/(2\eta)$ (same colour)")
    ax.set(xscale="log", yscale="log", xlabel="n (comparisons)",
           ylabel=r"$n \times$ mean $J(\pi^*) - J(\hat\pi)$ (± 2 SE)",
           title="Good coverage: n SubOpt against its limit, and the bound")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


def coverage_dial_figure(frame, *, n: int):
    """Mean suboptimality (+- 2 standard errors over seeds) against the behaviour policy's
    trap mass (``frame``: columns ``trap_mass``, ``seed``, ``method``, ``suboptimality``)."""
    fig, ax = plt.subplots()
    for method, part in frame.groupby("method", sort=False):
        grouped = part.groupby("trap_mass")["suboptimality"]
        error = 2 * grouped.std() / grouped.count() ** 0.5
        ax.errorbar(grouped.mean().index, grouped.mean(), yerr=error, fmt="o-", ms=4, capsize=2,
                    label=method)
    ax.set(xscale="log", yscale="log",
           xlabel="behaviour policy's trap mass (coverage of the trap direction)",
           ylabel=f"mean suboptimality at n = {n} (± 2 SE)", title="The coverage dial")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))
    return fig


# --------------------------------------------------------------------------------------------
# 03 · Online learning with batch exploration.
# --------------------------------------------------------------------------------------------


def enhancer_figure(frame):
    """Left: the enhancer's uncertainty, pi*'s, the KL budget used and the accuracy per batch;
    right: the KL of the second response to the main agent (``frame``: columns ``batch``,
    ``seed``, ``quantity``, ``value``; quantities starting with ``KL`` go right)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for index, (quantity, part) in enumerate(frame.groupby("quantity", sort=False)):
        ax = axes[1] if quantity.startswith("KL") else axes[0]
        _quantile_curve(ax, part, "batch", "value", quantity, color=f"C{index}")
    axes[0].set(yscale="log", xlabel="batch $t$", ylabel="median, IQR over seeds",
                title="Enhancer: uncertainty, KL spent, certificate")
    axes[1].set(xlabel="batch $t$", ylabel="nats",
                title="How far the second response moves from the main agent")
    for ax in axes:
        ax.legend(fontsize=8)
    return fig


def log_det_figure(frame, *, dim: int, reg: float):
    """Growth of ``log det Sigma`` against comparisons per method (``frame``: columns
    ``comparisons``, ``seed``, ``method``, ``log_det_growth``), with the worst-case bound."""
    fig, ax = plt.subplots()
    for method, part in frame.groupby("method", sort=False):
        _quantile_curve(ax, part, "comparisons", "log_det_growth", method)
    comparisons = torch.tensor(sorted(frame["comparisons"].unique()), dtype=torch.float64)
    ax.plot(comparisons, dim * torch.log1p(4 * comparisons / (dim * reg)), "k--",
            label=r"bound $d\log(1 + 4n/(d\lambda))$")
    ax.set(xlabel="comparisons $n$", ylabel=r"$\log\det\Sigma_n - \log\det\Sigma_0$",
           title="Information collected (log det of the design)")
    ax.legend(fontsize=8)
    return fig


def accuracy_figure(frame, *, eta: float, labels: dict[str, str] | None = None):
    """The main agent's error (suboptimality plus eta times the KL from pi*, the quantity that
    notebook 03 calls accuracy; lower is better) against online comparisons per method
    (``frame``: columns ``comparisons``, ``seed``, ``method``, ``accuracy``). ``labels`` maps a
    method's identifier to its words in the legend (default: the identifier)."""
    labels = labels or {}
    fig, ax = plt.subplots()
    for method, part in frame.groupby("method", sort=False):
        _quantile_curve(ax, part, "comparisons", "accuracy", labels.get(method, method))
    ax.set(yscale="log", xlabel="online comparisons",
           ylabel=r"$J(\pi^*) - J(\pi^1) + \eta\,\mathbb{E}\,\mathrm{KL}(\pi^*\|\pi^1)$"
                  "\n(lower is better)",
           title="Main agent: suboptimality plus KL (median, IQR over seeds), "
                 f"$\\eta = {eta:g}$")
    ax.legend(fontsize=8)
    return fig


def eta_sweep_figure(frame):
    """Final accuracy against ``eta`` per method, one panel per instance (``frame``: columns
    ``instance``, ``eta``, ``method``, ``seed``, ``accuracy``)."""
    instances = list(dict.fromkeys(frame["instance"]))
    fig, axes = plt.subplots(1, len(instances), figsize=(11, 4.2), sharey=True, squeeze=False)
    methods = list(dict.fromkeys(frame["method"]))
    for ax, instance in zip(axes[0], instances, strict=True):
        for index, method in enumerate(methods):
            part = frame[(frame["instance"] == instance) & (frame["method"] == method)]
            grouped = part.groupby("eta")["accuracy"]
            mid, low, high = grouped.median(), grouped.quantile(0.25), grouped.quantile(0.75)
            shift = 1 + 0.06 * (index - (len(methods) - 1) / 2)  # side by side
            ax.errorbar(mid.index * shift, mid, yerr=[mid - low, high - mid], fmt="o-",
                        capsize=3, color=f"C{index}", label=method)
        ax.set(xscale="log", yscale="log", xlabel=r"$\eta$", title=f"{instance} instance")
        etas = sorted(frame["eta"].unique())
        ax.set_xticks(etas, [f"{eta:g}" for eta in etas])
        ax.xaxis.set_minor_formatter(plt.NullFormatter())
    axes[0][0].set_ylabel("final accuracy (median, IQR)")
    axes[0][0].legend(fontsize=8)
    return fig


def hybrid_figure(frame, *, catch_up: float):
    """The main agent's accuracy against online batches per offline start (``frame``: columns
    ``batches``, ``seed``, ``start``, ``accuracy``), with the catch-up level."""
    fig, ax = plt.subplots()
    for start, part in frame.groupby("start", sort=False):
        _quantile_curve(ax, part, "batches", "accuracy", start)
    ax.axhline(catch_up, color="grey", ls=":", lw=1,
               label="catch-up level (uniform start, median at 0)")
    ax.set(yscale="log", xlabel="online batches",
           ylabel=r"accuracy of the main agent (median, IQR)", title="The hybrid start")
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# 04 · DPO, RSO and iterative DPO.
# --------------------------------------------------------------------------------------------


def rso_bias_figure(frame, *, n: int, eta: float):
    """RSO's bias against the pool size (``frame``: columns ``pool``, ``tv_to_target``,
    ``mean_deficit``, ``deficit_se``, ``tv_pi0_to_target``): TV of the accepted law to ``pi_r``
    (left) and the reward deficit with 2 standard errors (right)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.loglog(frame["pool"], frame["tv_to_target"], "o-", label=r"TV(RSO's law, $\pi_r$)")
    left.axhline(float(frame["tv_pi0_to_target"].iloc[0]), ls=":", color="grey",
                 label=r"TV$(\pi_0, \pi_r)$: pool $= n$ returns $\pi_0$")
    right.errorbar(frame["pool"], frame["mean_deficit"], yerr=2 * frame["deficit_se"], fmt="o-",
                   capsize=3, label=r"$\mathbb{E}_{\pi_r} r - $ mean reward of RSO's draws")
    right.axhline(0, color="k", lw=0.8)
    right.set_xscale("log")
    for ax, ylabel in ((left, "total variation"), (right, "reward deficit (± 2 SE over runs)")):
        ax.set(xlabel=f"pool size $M$ ({n} accepted per pool)", ylabel=ylabel)
        ax.legend(fontsize=9)
    fig.suptitle(rf"RSO's finite-pool sampler is biased ($\eta = {eta:g}$)")
    return fig


def acceptance_rates_figure(frame):
    """Per-stage acceptance rates of multi-step rejection sampling, one colour per prompt
    (``frame``: columns ``stage`` (its eta), ``prompt``, ``rate``, ``kind`` = ``exact, exact
    proposal``, ``measured, trained proposal`` or ``one step``)."""
    fig, ax = plt.subplots()
    stages = sorted(frame[frame["kind"] != "one step"]["stage"].unique(), reverse=True)
    position = {stage: index + 1 for index, stage in enumerate(stages)}
    styles = {"exact, exact proposal": "-", "measured, trained proposal": "x"}
    for (kind, prompt), part in frame.groupby(["kind", "prompt"], sort=False):
        color = f"C{prompt % 10}"
        if kind == "one step":
            ax.axhline(float(part["rate"].iloc[0]), color=color, ls=":", lw=0.8)
        else:
            ax.semilogy(part["stage"].map(position), part["rate"], styles[kind], color=color)
    for kind, style in [*styles.items(), ("one-step rate at the final eta", ":")]:
        ax.plot([], [], style, color="k", label=kind)
    ax.set_xticks(list(position.values()), [f"{stage:.3g}" for stage in stages])
    ax.set(yscale="log", xlabel=r"stage target $\eta_k$", ylabel="acceptance rate",
           title="Multi-step rejection sampling: per-stage acceptance")
    ax.legend(fontsize=9)
    return fig


def reward_vs_kl_figure(frame, *, n: int):
    """True reward against KL per method (``frame``: columns ``method``, ``kl``, ``reward``; the
    method ``Gibbs frontier of r*`` is drawn as a curve, ``pi*`` as a star, every other as its
    seeds and their mean)."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    markers = iter(["s", "D", "o", "^", "v", "P", "X"])
    index = 0
    for method, part in frame.groupby("method", sort=False):
        if method.startswith("Gibbs frontier"):
            ax.plot(part["kl"], part["reward"], color="k", lw=1.5, label=method)
        elif method == "pi*":
            ax.plot(part["kl"], part["reward"], "*", color="k", ms=14, label=r"$\pi^*$")
        else:
            marker, color = next(markers), f"C{index}"
            index += 1
            ax.scatter(part["kl"], part["reward"], s=10, alpha=0.35, color=color, marker=marker)
            ax.plot(part["kl"].mean(), part["reward"].mean(), marker, color=color, ms=10,
                    mec="k", label=method)
    ax.set(xlabel=r"$\mathbb{E}_x$ KL$(\pi\,\|\,\pi_0)$", ylabel=r"$\mathbb{E}_{x,\pi}\, r^*$",
           title=f"True reward against KL, {n} comparisons (small: seeds, large: mean)")
    ax.legend(fontsize=8, loc="lower right")
    return fig


def reference_drift_figure(frame):
    """KL to pi0 and ``J`` over the iterations, fixed against moving reference (``frame``:
    columns ``iteration``, ``seed``, ``reference``, ``quantity`` (``kl`` or ``J``), ``value``,
    ``kl_star``, ``j_star``)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    labels = {"fixed": r"fixed reference $\pi_0$",
              "previous": "moving reference (previous iterate)"}
    for ax, quantity in zip(axes, ("kl", "J"), strict=True):
        for index, (reference, part) in enumerate(
                frame[frame["quantity"] == quantity].groupby("reference", sort=False)):
            _quantile_curve(ax, part, "iteration", "value", labels[reference], color=f"C{index}")
    axes[0].axhline(float(frame["kl_star"].iloc[0]), ls=":", color="k", label=r"KL$(\pi^*\|\pi_0)$")
    axes[1].axhline(float(frame["j_star"].iloc[0]), ls=":", color="k", label=r"$J(\pi^*)$")
    axes[0].set(xlabel="iteration $t$", ylabel=r"$\mathbb{E}_x$ KL$(\pi_t\|\pi_0)$",
                title="KL to the SFT policy (median, IQR)")
    axes[1].set(xlabel="iteration $t$", ylabel=r"$J(\pi_t)$", title="Regularised value")
    for ax in axes:
        ax.legend(fontsize=9)
    return fig


def kl_estimators_figure(frame, *, kl_small: float):
    """Exact relative bias and spread of the KL estimators against the KL (``frame``: columns
    ``kl``, ``estimator``, ``bias``, ``std``)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for index, (estimator, part) in enumerate(frame.groupby("estimator", sort=False)):
        part = part.sort_values("kl")
        relative = (part["bias"].abs() / part["kl"]).clip(lower=1e-17)
        axes[0].plot(part["kl"], relative, "o", ms=3, color=f"C{index}", label=estimator)
        axes[1].loglog(part["kl"], part["std"], "o", ms=3, color=f"C{index}", label=estimator)
    axes[0].set(xscale="log", yscale="log", xlabel=r"KL$(p\|q)$", ylabel="|bias| / KL (exact)",
                title=r"Bias ($k_1, k_3$: round-off)", ylim=(1e-17, 10))
    axes[1].set(xlabel=r"KL$(p\|q)$", ylabel="standard deviation per sample (exact)",
                title="Spread")
    axes[1].axvline(kl_small, ls=":", color="grey")
    for ax in axes:
        ax.legend()
    return fig


# --------------------------------------------------------------------------------------------
# 05 · The miniature language-model experiment. Both figures draw from the tidy frame of
# ``gsfh_utils.lm.experiment.evaluations_frame`` (one row per seed and evaluated policy).
# --------------------------------------------------------------------------------------------

#: Colours and markers of the methods of notebook 05.
_LM_STYLE = {"offline_dpo_curve": ("C0", "o"), "rso": ("C1", "s"), "multi_step_rs": ("C2", "^"),
             "gshf_path": ("C3", "*"), "sft": ("k", "D"), "gshf_pi0_path": ("C4", "P")}


def _lm_path(frame, method: str = "gshf_path"):
    """pi0 then GSHF's (or ``method``'s) start and iterates, per seed, by ``iteration`` (-1 for
    pi0)."""
    path = frame[frame["method"].isin(["sft", method])]
    path = path.assign(iteration=path["iteration"].where(path["method"] == method, -1))
    return path.sort_values(["seed", "iteration"])


def reward_kl_plane_figure(frame, *, eta: float):
    """Gold reward against the KL to pi0, estimated by ``k1`` (left) and ``k3`` (right): the
    offline-DPO curve (``offline_dpo_curve``, one point per factor of ``eta``), RSO, multi-step RS,
    the GSHF path (pi0, start, iterates) and the path of its variant with pairs from pi0; thin
    lines and small markers for each seed, large ones for the means over seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), sharey=True)
    curve = frame[frame["method"] == "offline_dpo_curve"].sort_values(["seed", "factor"],
                                                                     ascending=[True, False])
    for ax, kl, name in zip(axes, ("kl_k1", "kl_k3"), ("k_1", "k_3"), strict=True):
        for label, part, key, style in (
                (r"offline DPO, $\eta\times$factor", curve, "factor", "offline_dpo_curve"),
                ("GSHF-DPO path", _lm_path(frame), "iteration", "gshf_path"),
                (r"GSHF-DPO, pairs from $\pi_0$", _lm_path(frame, "gshf_pi0_path"), "iteration",
                 "gshf_pi0_path")):
            color, marker = _LM_STYLE[style]
            if part.empty or (style == "gshf_pi0_path" and part["iteration"].max() < 1):
                continue
            for _, seed_part in part.groupby("seed"):
                ax.plot(seed_part[kl], seed_part["gold"], "-", color=color, alpha=0.25, lw=1)
            mean = part.groupby(key, sort=False)[[kl, "gold"]].mean()
            ax.plot(mean[kl], mean["gold"], "-" + marker, color=color, ms=11 if key ==
                    "iteration" else 6, label=label + " (mean)")
            for value, row in mean.iterrows():  # the control's iterates above left, GSHF's below
                text = (f"×{value:g}" if key == "factor" else "start" if value == 0 and
                        style == "gshf_path" else f"it {value:g}" if value > 0 else None)
                offset = ((-30, -4) if text == "start" else (-24, 7)
                          if style == "gshf_pi0_path" else (5, -11))
                if text:
                    ax.annotate(text, (row[kl], row["gold"]), textcoords="offset points",
                                xytext=offset, fontsize=8, color=color)
        for method, label in (("rso", "RSO"), ("multi_step_rs", "multi-step RS"),
                              ("sft", r"SFT ($\pi_0$)")):
            color, marker = _LM_STYLE[method]
            part = frame[frame["method"] == method]
            ax.scatter(part[kl], part["gold"], s=14, alpha=0.4, color=color, marker=marker)
            ax.plot(part[kl].mean(), part["gold"].mean(), marker, color=color, ms=9, mec="k",
                    label=label + " (mean)")
        ax.set(xlabel=rf"KL$(\pi\,\|\,\pi_0)$ per response, ${name}$ estimate (nats)",
               title=f"${name}$: " + ("unbiased, moderate variance" if name == "k_1" else
                                      "heavy-tailed at a few nats: a single estimate\nruns low "
                                      "more often than not"))
    axes[0].set_ylabel("gold reward (mean over responses)")
    axes[0].legend(fontsize=8, loc="lower right")
    fig.suptitle(rf"Gold reward against KL ($\eta = {eta:g}$; thin: each of "
                 rf"{frame['seed'].nunique()} seeds, thick: mean over seeds)")
    fig.tight_layout()
    return fig


def _lm_rounds(frame, method: str):
    """pi0 (round 0) then ``method``'s policies by DPO round, per seed: ``offline_dpo_rounds``
    (offline DPO at eta after each round) or a path (``gshf_path``, ``gshf_pi0_path``: round 1 is
    the shared start)."""
    if method == "offline_dpo_rounds":
        part = frame[frame["method"].isin(["sft", method])]
        part = part.assign(round=part["round"].where(part["method"] == method, 0))
    else:
        part = _lm_path(frame, method)
        part = part.assign(round=part["iteration"] + 1)
    return part.sort_values(["seed", "round"])


def length_iterations_figure(frame):
    """By DPO round (0: pi0; 1: offline DPO after one round, GSHF's start), for offline DPO at
    eta, GSHF-DPO and its variant with pairs from pi0: the mean response length (left; RSO and
    multi-step RS as lines), and the gains over pi0 of the gold and the proxy reward of the
    policy's responses (right, per seed, then averaged). Markers and bars: mean ± std over
    seeds."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    sft = frame[frame["method"] == "sft"].set_index("seed")
    paths = ((r"offline DPO at $\eta$ (gold pairs only)", "offline_dpo_rounds",
              "offline_dpo_curve"),
             (r"GSHF-DPO, pairs from $\pi_0$", "gshf_pi0_path", "gshf_pi0_path"),
             ("GSHF-DPO", "gshf_path", "gshf_path"))
    for label, method, style in paths:
        part = _lm_rounds(frame, method)
        color, marker = _LM_STYLE[style]
        for ax, column, name, line in ((left, "length", "", "-"), (right, "gold", " gold", "-"),
                                       (right, "proxy", " proxy", "--")):
            values = part[column] - (0 if ax is left else part["seed"].map(sft[column]))
            summary = values.groupby(part["round"]).agg(["mean", "std"])
            ax.errorbar(summary.index, summary["mean"], yerr=summary["std"].fillna(0),
                        fmt=line + marker, color=color, capsize=3, label=label + name)
    for method, label, style in (("rso", "RSO", "--"), ("multi_step_rs", "multi-step RS", "-.")):
        left.axhline(frame.loc[frame["method"] == method, "length"].mean(), ls=style,
                     color=_LM_STYLE[method][0], label=label)
    for ax in (left, right):
        ax.set_xlabel(r"DPO round (0: $\pi_0$; 1: offline DPO after one round, GSHF's start)")
        ax.set_xticks(sorted(frame["round"].dropna().unique().tolist() + [0]))
        ax.legend(fontsize=8)
    left.set(ylabel="mean response length (tokens)", title="Length over the rounds")
    right.axhline(0, color="k", lw=0.5)
    right.set(ylabel=r"reward gain over $\pi_0$ (same seed)",
              title="Gains over pi0: proxy (dashed) and gold (solid)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# 05 · Budgets and win rates of the miniature experiment.
# --------------------------------------------------------------------------------------------


def lm_rounds_figure(frame, *, budget, dpo_steps: int, pairs_per_iteration: int):
    """Gold reward of the DPO-trained policies of notebook 05 against their budget: gradient
    steps (left) and preference pairs trained on, gold and proxy-labelled (right). Offline DPO at
    ``eta`` after each round (``offline_dpo_rounds``), the GSHF path and its variant with pairs
    from pi0 (``gshf_path``, ``gshf_pi0_path``: round 1 is the shared start), RSO as a point at
    its budget (``budget`` from ``experiment.budget``); markers and bars: mean ± std over
    seeds."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), sharey=True)
    budget = budget.set_index("method")
    gold_pairs = int(budget.loc["offline_dpo", "gold_labels"])
    rounds = frame[frame["method"] == "offline_dpo_rounds"].assign(pairs=gold_pairs)
    paths = [(rounds, r"offline DPO at $\eta$ (gold pairs only)", "offline_dpo_curve")]
    for method, label in (("gshf_pi0_path", r"GSHF-DPO, pairs from $\pi_0$"),
                          ("gshf_path", "GSHF-DPO (iterative)")):
        part = frame[frame["method"] == method]
        paths.append((part.assign(round=part["iteration"] + 1,
                                  pairs=gold_pairs + part["iteration"] * pairs_per_iteration),
                      label, method))
    rso = frame[frame["method"] == "rso"]["gold"]
    for ax, column in zip(axes, ("steps", "pairs"), strict=True):
        for part, label, style in paths:
            part = part.assign(steps=part["round"] * dpo_steps)
            summary = part.groupby("round")[[column, "gold"]].agg(["mean", "std"])
            color, marker = _LM_STYLE[style]
            ax.errorbar(summary[(column, "mean")], summary[("gold", "mean")],
                        yerr=summary[("gold", "std")].fillna(0), fmt="-" + marker, color=color,
                        capsize=3, label=label)
        color, marker = _LM_STYLE["rso"]
        where = budget.loc["rso", "gradient_steps" if column == "steps" else "training_pairs"]
        ax.errorbar([where], [rso.mean()], yerr=[rso.std()], fmt=marker, color=color, capsize=3,
                    label="RSO (proxy-labelled pairs only)")
    axes[0].set(xlabel="DPO gradient steps", ylabel="gold reward (mean over seeds ± std)",
                title="Against gradient steps")
    axes[1].set(xlabel="preference pairs trained on (gold + proxy-labelled)",
                title=f"Against pairs (every method: {gold_pairs} gold labels)")
    for ax in axes:
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def win_rate_heatmap_figure(frame, *, labels: dict, confidence: float = 0.95):
    """Gold win rate of each final policy (row) against each other (column), the mean over seeds
    annotated with its confidence interval (``frame`` from ``experiment.win_rates_frame`` at
    ``confidence``, which the title states; ``labels``: method -> display name, in the order of
    the rows)."""
    names = [name for name in labels if name in set(frame["method"])]
    table = frame.pivot(index="method", columns="opponent", values="win_rate").reindex(
        index=names, columns=names)
    cells = frame.set_index(["method", "opponent"])
    text = [["" if a == b else "{:.2f}\n[{:.2f}, {:.2f}]".format(
        *cells.loc[(a, b), ["win_rate", "ci_low", "ci_high"]]) for b in names] for a in names]
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    sns.heatmap(table, annot=text, fmt="", cmap="RdBu_r", vmin=0.3, vmax=0.7, center=0.5,
                ax=ax, annot_kws={"fontsize": 8}, cbar_kws={"label": "gold win rate of the row"},
                xticklabels=[labels[n] for n in names], yticklabels=[labels[n] for n in names])
    ax.grid(False)
    ax.set(xlabel="against", ylabel="policy",
           title=f"Gold win rates (mean over seeds, [{confidence:.0%} t interval]; seed as the "
                 "unit)")
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------
# 06 · Policy-optimisation oracles and out-of-preference prompts.
# --------------------------------------------------------------------------------------------


def routes_vs_n_figure(frame, floors):
    """Suboptimality against the number of preference pairs, one panel per ``eta``, one curve per
    ``route`` (``frame``: columns ``eta``, ``n``, ``seed``, ``route``, ``suboptimality``); the
    class's best policy (``floors``: ``{eta: median}``) dotted."""
    etas = list(dict.fromkeys(frame["eta"]))
    fig, axes = plt.subplots(1, len(etas), figsize=(11, 4.2), squeeze=False)
    for ax, eta in zip(axes[0], etas, strict=True):
        part = frame[frame["eta"] == eta]
        for index, (route, curve) in enumerate(part.groupby("route", sort=False)):
            label = route.replace("rm_po+", "RM-PO+ with m = ").replace("rm_po", "RM-PO")
            _quantile_curve(ax, curve, "n", "suboptimality", label.replace("dpo", "DPO"),
                            color=f"C{index}")
        ax.axhline(floors[eta], color="gray", ls=":", label="best policy in the class")
        ax.set(xscale="log", ylim=(0, None), xlabel="n (preference pairs)",
               title=rf"$\eta = {eta:g}$")
    axes[0][0].set_ylabel(r"$\eta\,\mathbb{E}_x KL(\hat\pi \| \pi^*)$ (median, IQR)")
    axes[0][-1].legend(fontsize=7)
    return fig


def extra_prompts_figure(frame, *, n: int, eta: float, dpo_excess: float, margin: float):
    """The change in suboptimality that ``m`` extra preference-free prompts bring to reward-model
    policy optimisation, per seed, relative to RM-PO's mean (``frame``: columns
    ``extra_prompts``, ``seed``, ``relative_change``); the equivalence margin shaded and DPO's
    median relative excess over RM-PO dashed, for scale."""
    fig, ax = plt.subplots()
    _quantile_curve(ax, frame, "extra_prompts", "relative_change", "RM-PO+ with m extra prompts")
    ax.axhline(0.0, color="gray", lw=0.8, label="RM-PO (preference prompts only)")
    ax.axhspan(-margin, margin, color="gray", alpha=0.1, label=f"equivalence margin ±{margin:.0%}")
    ax.axhline(dpo_excess, color="C3", ls="--", label="DPO (median)")
    ax.set(xscale="log", xlabel="extra preference-free prompts m",
           ylabel="change / RM-PO's mean suboptimality (median, IQR)",
           title=rf"$n = {n}$ preference pairs, $\eta = {eta:g}$")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1.0))
    return fig


# --------------------------------------------------------------------------------------------
# 08 · Pessimism as a DPO loss.
# --------------------------------------------------------------------------------------------


def paired_methods_figure(frame, *, x: str, xlabel: str, title: str):
    """Mean suboptimality (± 2 standard errors over seeds) of each ``method`` against ``x``
    (``frame``: columns ``x``, ``seed``, ``method``, ``suboptimality``), log-log."""
    fig, ax = plt.subplots()
    for method, part in frame.groupby("method", sort=False):
        grouped = part.groupby(x)["suboptimality"]
        error = 2 * grouped.std() / grouped.count() ** 0.5
        ax.errorbar(grouped.mean().index, grouped.mean(), yerr=error, fmt="o-", ms=4, capsize=2,
                    label=method)
    ax.set(xscale="log", yscale="log", xlabel=xlabel, ylabel="mean suboptimality (± 2 SE)",
           title=title)
    ax.legend(fontsize=8)
    return fig


# --------------------------------------------------------------------------------------------
# 09 · Exploration in practice.
# --------------------------------------------------------------------------------------------


def hybrid_dial_figure(frame, *, online_only: dict[float, float]):
    """Online comparisons needed to reach each target against the offline data's coverage
    (``frame``: columns ``coverage``, ``target``, ``seed``, ``comparisons``; ``inf`` = not reached,
    drawn at the top), with the online-only median per target (``online_only``) as a dotted line."""
    fig, ax = plt.subplots()
    for index, (target, part) in enumerate(frame.groupby("target", sort=True)):
        grouped = part.groupby("coverage")["comparisons"]
        mid, low, high = grouped.median(), grouped.quantile(0.25), grouped.quantile(0.75)
        color = f"C{index}"
        ax.errorbar(mid.index, mid, yerr=[mid - low, high - mid], fmt="o-", capsize=3,
                    color=color, label=f"target {target:g} of the gap, offline start")
        ax.axhline(online_only[target], color=color, ls=":", lw=1.2,
                   label=f"target {target:g}, no offline data")
    ax.set(xlabel="coverage: rare-action mass of the offline policy",
           ylabel="online comparisons to the target\n(median, IQR over seeds)",
           title="Hybrid start along a coverage dial")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def sampler_reward_kl_figure(frame):
    """Reward against KL to pi0 of the pooled draws of two samplers at equal proposals, per
    ``eta`` (``frame``: columns ``sampler``, ``eta``, ``kl``, ``reward``; the sampler ``Gibbs
    frontier`` is drawn as a curve, ``target`` as the exact Gibbs policies). Every point is
    labelled by its ``eta`` in its colour: the targets above left, multi-step above left and
    RSO below right, every second label of a sampler set further off (neighbours crowd)."""
    fig, ax = plt.subplots(figsize=(7, 4.6))
    styles = {"target": ("k*", 11, [(-6, 8)]), "RSO": ("o", 7, [(6, -13), (14, -6)]),
              "multi-step": ("s", 7, [(-6, 6), (-6, 16)])}
    for sampler, part in frame.groupby("sampler", sort=False):
        if sampler == "Gibbs frontier":
            ax.plot(part["kl"], part["reward"], color="grey", lw=1.2, label=sampler)
            continue
        marker, size, offsets = styles.get(sampler, ("^", 7, [(6, -13)]))
        line, = ax.plot(part["kl"], part["reward"], marker + ("" if sampler == "target" else "-"),
                        ms=size, label=sampler)
        for rank, (_, row) in enumerate(part.iterrows()):
            offset = offsets[rank % len(offsets)]
            ax.annotate(rf"$\eta$={row['eta']:g}" if sampler == "target" else f"{row['eta']:g}",
                        (row["kl"], row["reward"]), xytext=offset, textcoords="offset points",
                        ha="right" if offset[0] < 0 else "left", fontsize=7,
                        color=line.get_color())
    ax.set(xlabel=r"mean over prompts of KL(law of the pooled draws $\|\,\pi_0$)",
           ylabel=r"mean true reward of the pooled draws",
           title="Samplers of the Gibbs policy at equal numbers of proposals\n"
                 "(draws of all runs pooled, one point per $\\eta$, labelled by $\\eta$)")
    ax.legend(fontsize=8, loc="lower right")
    return fig
