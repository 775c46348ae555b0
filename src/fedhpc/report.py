"""``fedhpc inspect`` (a summary of a checkpoint or run file) and ``fedhpc report`` (plots,
a markdown summary, and one self-contained HTML page)."""

from __future__ import annotations

import base64
import html
import json
from pathlib import Path

import h5py
import numpy as np

from fedhpc.checkpoint import Checkpoint
from fedhpc.config import load_config
from fedhpc.errors import FedHPCError
from fedhpc.record import STATUS


def inspect(path: Path) -> str:
    """Human summary of a checkpoint (``ckpt-*.h5``) or run record (``run.h5``)."""
    try:
        with h5py.File(path, "r") as f:
            is_checkpoint = "schema_version" in f.attrs
    except OSError as exc:
        raise FedHPCError(f"{path} is not a readable HDF5 file ({exc})") from None
    return _inspect_checkpoint(path) if is_checkpoint else _inspect_record(path)


def _inspect_checkpoint(path: Path) -> str:
    with Checkpoint(path) as ck:
        a = ck.file.attrs
        st = ck.server_state()
        cfg = ck.config()
        acc = [json.loads(m)["accuracy"] for m in st.metrics]
        acc = [x for x in acc if x is not None]
        reported = int(st.history.columns["reported"].sum())
        lines = [
            f"checkpoint {path}",
            f"  schema {a['schema_version']}, written by fedhpc {a['fedhpc_version']}",
            f"  round {st.round} of {cfg.rounds}; accuracy so far: "
            + (f"last {acc[-1]:.4f}, best {max(acc):.4f}" if acc else "not evaluated"),
            f"  model {cfg.model.name}: {st.weights.size:,} parameters ({len(ck.file['model']) } tensors)",
            f"  clients: {len(st.profiles)} ({reported} reports so far), "
            f"{sum(s.clients for s in ck.shards())} error-feedback residuals ({ck.residual_dtype}) in "
            f"{len(ck.shards())} shards",
            f"  strategy {cfg.strategy.name} (state: {', '.join(st.strategy) or 'none'}), codec {cfg.codec.name}, "
            f"selection {cfg.selection.name}, clock {cfg.clock}, seed {cfg.seed}",
            "  config:",
            *("    " + line for line in str(a["config_toml"]).splitlines()),
        ]
    return "\n".join(lines)


def _inspect_record(path: Path) -> str:
    with h5py.File(path, "r") as f:
        if "rounds/round" not in f:
            raise FedHPCError(f"{path} is neither a fedhpc checkpoint nor a run record")
        n = len(f["rounds/round"])
        acc = f["rounds/accuracy"][()]
        status = f["clients/status"][()]
        seen = np.isfinite(acc)
        lines = [
            f"run record {path}: {n} rounds, {status.shape[1]} clients",
            "  accuracy: " + (f"last {acc[seen][-1]:.4f}, best {np.nanmax(acc):.4f}" if seen.any() else "none"),
            f"  bytes up {int(f['rounds/bytes_up'][()].sum()):,}, down {int(f['rounds/bytes_down'][()].sum()):,}",
            f"  reports {int((status == STATUS['reported']).sum())}, late {int((status == STATUS['late']).sum())}, "
            f"failed {int((status == STATUS['failed']).sum())}",
            f"  round time: mean {f['rounds/round_seconds'][()].mean():.3f}s",
        ]
    return "\n".join(lines)


def report(out: Path) -> list[Path]:
    """Draw PNG plots of run directory ``out`` into ``out/report/`` and write a markdown summary
    (``README.md``) and one self-contained HTML page (``index.html``: the plots inlined, no network
    needed to view it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    path = out / "run.h5"
    if not path.exists():
        raise FedHPCError(f"{path} does not exist: `fedhpc report` needs a run directory made by `fedhpc run`")
    dest = out / "report"
    dest.mkdir(exist_ok=True)
    with h5py.File(path, "r") as f:
        r = {k: f[f"rounds/{k}"][()] for k in f["rounds"]}
        status = f["clients/status"][()]
    rounds = r["round"]
    files = []

    def save(fig, name):
        fig.tight_layout()
        fig.savefig(dest / name, dpi=100)
        plt.close(fig)
        files.append(dest / name)

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    ax[0].plot(rounds, r["accuracy"], marker=".")
    ax[0].set(xlabel="round", ylabel="test accuracy", title="Accuracy")
    ax[1].plot(rounds, r["loss"], marker=".", color="C1")
    ax[1].set(xlabel="round", ylabel="test loss", title="Loss")
    save(fig, "accuracy_loss.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(rounds, r["bytes_up"] / 1e6, label="up")
    ax.plot(rounds, r["bytes_down"] / 1e6, label="down")
    ax.set(xlabel="round", ylabel="MB per round", title="Traffic")
    ax.legend()
    save(fig, "bytes.png")

    fig, ax = plt.subplots(figsize=(6, 4))
    sim = np.isfinite(r["sim_seconds"]).all() and len(rounds)
    ax.bar(rounds, r["sim_seconds"] if sim else r["round_seconds"], color="C0", label="round time")
    late = r["clients_late"] > 0
    failed = r["clients_failed"] > 0
    top = (r["sim_seconds"] if sim else r["round_seconds"])
    ax.scatter(rounds[late], top[late], marker="v", color="C1", label="stragglers (late)", zorder=3)
    ax.scatter(rounds[failed], top[failed] * 1.05, marker="x", color="C3", label="failures", zorder=3)
    ax.set(xlabel="round", ylabel=("simulated" if sim else "wall") + " seconds", title="Round time")
    ax.legend()
    save(fig, "round_time.png")

    fig, ax = plt.subplots(figsize=(8, 4))
    ax.imshow(status.T, aspect="auto", interpolation="nearest", cmap=matplotlib.colors.ListedColormap(
        ["white", "tab:green", "tab:orange", "tab:red"]), vmin=0, vmax=3)
    ax.set(xlabel="round", ylabel="client", title="Participation: reported (green), late (orange), failed (red)")
    save(fig, "participation.png")

    acc = r["accuracy"]
    seen = np.isfinite(acc)
    summary = [
        f"# fedhpc run report: {out}", "",
        f"- rounds: {len(rounds)}",
        f"- final accuracy: {acc[seen][-1]:.4f}" if seen.any() else "- final accuracy: not evaluated",
        f"- best accuracy: {np.nanmax(acc):.4f}" if seen.any() else "",
        f"- traffic: {r['bytes_up'].sum() / 1e6:.2f} MB up, {r['bytes_down'].sum() / 1e6:.2f} MB down",
        f"- client reports: {int((status == STATUS['reported']).sum())}, late: {int(r['clients_late'].sum())}, "
        f"failed: {int(r['clients_failed'].sum())}",
        _privacy_line(out, r),
        "", *(f"![{p.stem}]({p.name})" for p in files),
    ]
    (dest / "README.md").write_text("\n".join(line for line in summary if line is not None) + "\n")
    plots = list(files)
    files.append(dest / "README.md")
    config = (out / "config.toml").read_text() if (out / "config.toml").is_file() else ""
    facts = [line for line in summary[2:] if line is not None and line.startswith("- ")]
    (dest / "index.html").write_text(_html(out, facts, r, plots, config))
    files.append(dest / "index.html")
    return files


def _privacy_line(out: Path, r: dict) -> str | None:
    """The guarantee of a run with differential privacy (None for a run without)."""
    eps = r.get("epsilon", np.array([np.nan]))
    if not np.isfinite(eps).any():
        return None
    pld = r["epsilon_pld"][np.isfinite(r["epsilon_pld"])]
    cfg = load_config(out / "config.toml") if (out / "config.toml").is_file() else None
    delta = f" at delta {cfg.dp.delta:g}" if cfg is not None else ""
    return (f"- privacy: epsilon {eps[np.isfinite(eps)][-1]:.3f}{delta} (RDP)"
            + (f", {pld[-1]:.3f} (PLD)" if pld.size else "") + ", user-level, DP-FedAvg")


# what the page shows per round, as (metrics field, column title, format)
_COLUMNS = (("round", "round", "{:.0f}"), ("accuracy", "accuracy", "{:.4f}"), ("loss", "loss", "{:.4f}"),
            ("clients_reported", "reported", "{:.0f}"), ("clients_late", "late", "{:.0f}"),
            ("clients_failed", "failed", "{:.0f}"), ("bytes_up", "bytes up", "{:,.0f}"),
            ("bytes_down", "bytes down", "{:,.0f}"), ("round_seconds", "round s", "{:.3f}"),
            ("train_seconds", "training s", "{:.3f}"), ("overhead_seconds", "overhead s", "{:.3f}"),
            ("epsilon", "epsilon", "{:.3f}"), ("dp_clip", "DP clip", "{:.4g}"), ("perplexity", "perplexity", "{:.2f}"),
            ("clients_flagged", "flagged", "{:.0f}"), ("secagg_seconds", "SecAgg s", "{:.3f}"))


def _html(out: Path, facts: list[str], r: dict, plots: list[Path], config: str) -> str:
    """One page with everything inline: the facts, the plots as data URIs, a table per round, the config.

    A few lines of script check, once the page has loaded, that every plot decoded, and say so
    on the page (``data-plots`` on the body: ``ok`` or how many failed).
    """
    esc = html.escape
    images = "\n".join(f'<figure><img alt="{esc(p.stem)}" src="data:image/png;base64,'
                       f'{base64.b64encode(p.read_bytes()).decode()}"><figcaption>{esc(p.stem)}</figcaption></figure>'
                       for p in plots)

    def cell(key: str, fmt: str, i: int) -> str:
        v = r[key][i] if key in r else np.nan
        return "<td>-</td>" if not np.isfinite(v) else f"<td>{fmt.format(v)}</td>"

    head = "".join(f"<th>{esc(title)}</th>" for _, title, _ in _COLUMNS)
    rows = "\n".join("<tr>" + "".join(cell(k, fmt, i) for k, _, fmt in _COLUMNS) + "</tr>"
                     for i in range(len(r["round"])))
    items = "".join(f"<li>{esc(f[2:])}</li>" for f in facts)
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>fedhpc report: {esc(str(out))}</title>
<style>
body {{ font-family: sans-serif; margin: 2em; color: #222; }}
figure {{ display: inline-block; margin: 0.5em; }} img {{ max-width: 100%; }}
table {{ border-collapse: collapse; font-size: 0.9em; }} td, th {{ border: 1px solid #ccc; padding: 2px 6px; }}
td {{ text-align: right; }} pre {{ background: #f6f6f6; padding: 1em; overflow-x: auto; }}
#plots-status {{ color: #b00; }}
</style></head>
<body data-plots="pending">
<h1>fedhpc run report</h1>
<p><code>{esc(str(out))}</code></p>
<ul>{items}</ul>
<p id="plots-status"></p>
{images}
<h2>Rounds</h2>
<table><thead><tr>{head}</tr></thead><tbody>
{rows}
</tbody></table>
<h2>Configuration</h2>
<pre>{esc(config)}</pre>
<script>
window.addEventListener("load", function () {{
  var bad = Array.prototype.filter.call(document.images, function (i) {{ return !i.complete || !i.naturalWidth; }});
  document.body.setAttribute("data-plots", bad.length ? bad.length + " failed" : "ok");
  if (bad.length) document.getElementById("plots-status").textContent = bad.length + " plot(s) did not load";
}});
</script>
</body></html>
"""
