"""Figures: one style and one ``savefig`` (PNG for the README, PDF for papers), atomic."""

from __future__ import annotations

from pathlib import Path

import matplotlib.pyplot as plt
import seaborn as sns

from .io import atomic_write, output_dir

FORMATS = ("png", "pdf")
#: Metadata that would change from run to run is dropped so regenerated figures are identical.
_METADATA = {"png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}


def set_style() -> None:
    """The companion's plotting style (seaborn whitegrid, readable sizes)."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "figure.figsize": (6.4, 4.2)})


def savefig(fig, name: str, formats: tuple[str, ...] = FORMATS) -> list[Path]:
    """Write ``fig`` as ``<figures>/<name>.<format>`` for each format, each atomically.

    The folder is ``figures/`` at the repository root or ``$GSFH_FIGURES_DIR``.
    """
    if not name or "/" in name or "." in name:
        raise ValueError(f"name must be a bare file stem like '01_frontier', got {name!r}")
    unknown = set(formats) - set(_METADATA)
    if unknown:
        raise ValueError(f"formats must be among {sorted(_METADATA)}, got {sorted(unknown)}")
    folder = output_dir("figures")
    return [
        atomic_write(folder / f"{name}.{fmt}",
                     lambda temporary, fmt=fmt: fig.savefig(temporary, format=fmt,
                                                            bbox_inches="tight",
                                                            metadata=_METADATA[fmt]))
        for fmt in formats
    ]
