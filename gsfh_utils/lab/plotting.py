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
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "figure.figsize": (6.4, 4.2)})


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
