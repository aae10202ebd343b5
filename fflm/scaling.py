"""A scaling model for `fflm train --ray`: tokens/s on N nodes, predicted from one measured run.

Built from what `fflm bench ray` measures per step on one machine (fflm/benchray.py): each
worker's compute (forward, backward, and with local SGD its own update), the averaging (merging
the published contributions and the update), the bytes one worker publishes, and the driver's
round trip. Each node runs one worker on all its cores, with its share of the batch fixed (the
global batch grows with the nodes, as data-parallel training is run), so a step costs

    T(N) = compute(cores) + rpc * N / N_measured + (merge(N) + network(N)) / K

    compute(cores) = compute measured x (threads measured / cores) / efficiency   (1 at the measured size)
    merge(N)       = merge measured x N / N_measured    (summing N contributions: memory-bound)
    network(N)     = all-gather: (N - 1) x bytes / bandwidth + (N - 1) x latency    (what fflm does)
                     ring all-reduce: 2 (N - 1) / N x bytes / bandwidth + 2 (N - 1) x latency

with K = 1 for gradient averaging and K = --sync-every for local SGD (whose compute includes the
local update). Tokens/s = N x share / T(N); the speed-up is against one node of the same cores
training alone (compute and its update, no Ray). Every assumption is a parameter with its default
stated; the measured inputs come from the JSON of `fflm bench ray`.
"""

import math

GBPS = 1e9 / 8  # bytes/s in one Gb/s
LATENCY_S = 50e-6  # one message between two machines on Ethernet, one way (an assumption)
EFFICIENCY_16 = 0.8  # a 16-core node's matrix work per core, against 2 cores' (an assumption)


def inputs(result):
    """The measured per-step figures of a `fflm bench ray` result: {K: {...}} and the one-process step."""
    runs = {r["run"]: r for r in result["runs"]}
    alone = runs["one process"]
    share = None
    out = {}
    for r in result["runs"]:
        s = r.get("per_step")
        if not s:
            continue
        out[s["sync_every"]] = {"compute_s": s["compute_ms"] / 1e3, "merge_s": s["merge_ms"] / 1e3,
                                "step_s": s["step_ms"] / 1e3, "bytes": s["bytes_out_per_step"] * s["sync_every"],
                                "workers": s["workers"]}
    batch = alone.get("batch_size") or result.get("batch_size")
    workers = result["workers"]
    share = batch / workers if batch else None
    alone_step = batch / alone["tokens_per_s"] if batch else None
    return {"runs": out, "share": share, "threads": result["threads"] // workers, "alone_step_s": alone_step,
            "alone_threads": result["threads"]}


def step_seconds(m, nodes, cores, gbps, K=1, network="allgather", efficiency=None, latency=LATENCY_S):
    """Predicted seconds a step with `nodes` nodes of `cores` cores (see the module docstring).
    m: one measured K's figures (inputs()["runs"][K]) plus "threads" (each worker's, measured)."""
    eff = efficiency if efficiency is not None else (1.0 if cores <= m["threads"] else EFFICIENCY_16)
    compute = m["compute_s"] * m["threads"] / cores / eff
    n_meas = m["workers"]
    rpc = max(0.0, m["step_s"] - m["compute_s"] - m["merge_s"]) * nodes / n_meas
    merge = m["merge_s"] * nodes / n_meas if nodes > 1 else 0.0
    bw = gbps * GBPS
    if nodes == 1:
        net = 0.0
    elif network == "ring":
        net = 2 * (nodes - 1) / nodes * m["bytes"] / bw + 2 * (nodes - 1) * latency
    else:
        net = (nodes - 1) * m["bytes"] / bw + (nodes - 1) * latency
    return compute + rpc + (merge + net) / K


def predict(result, nodes=(1, 2, 4, 8, 16, 32, 64), cores=(2, 16), gbps=(10, 100), network="allgather",
            efficiency=None):
    """Tokens/s and speed-up for every measured K, node count, node size and network (JSON-ready rows)."""
    got = inputs(result)
    rows = []
    for K, m in sorted(got["runs"].items()):
        m = {**m, "threads": got["threads"]}
        for c in cores:
            # one node alone: the one-process step at this node's cores (its compute and update)
            alone = got["alone_step_s"] * got["alone_threads"] / c / (1.0 if c <= got["alone_threads"] else
                                                                       (efficiency or EFFICIENCY_16))
            single = got["share"] * m["workers"] / alone  # tokens/s of one node on the measured global batch
            for g in gbps:
                for n in nodes:
                    t = step_seconds(m, n, c, g, K, network, efficiency)
                    tps = n * got["share"] / t
                    rows.append({"sync_every": K, "cores": c, "gbps": g, "nodes": n, "network": network,
                                 "tokens_per_s": round(tps), "speedup": round(tps / single, 2)})
    return rows


def stops_paying(rows):
    """For each (K, cores, Gb/s): the node count after which more nodes give fewer tokens/s (None: never
    within the rows)."""
    out = {}
    for r in rows:
        out.setdefault((r["sync_every"], r["cores"], r["gbps"]), []).append((r["nodes"], r["tokens_per_s"]))
    result = {}
    for key, pts in out.items():
        pts.sort()
        best = max(pts, key=lambda p: p[1])
        result[key] = best[0] if best[0] != pts[-1][0] else None
    return result


def plot_scaling(rows, path, title=None):
    """Predicted speed-up against nodes: one panel per node size, a line per K and network speed."""
    from .plot import _pyplot, _save

    plt = _pyplot()
    cores = sorted({r["cores"] for r in rows})
    fig, axes = plt.subplots(1, len(cores), figsize=(6 * len(cores), 4.5), squeeze=False)
    for ax, c in zip(axes[0], cores):
        keys = sorted({(r["sync_every"], r["gbps"]) for r in rows if r["cores"] == c})
        for K, g in keys:
            pts = sorted((r["nodes"], r["speedup"]) for r in rows
                         if r["cores"] == c and r["sync_every"] == K and r["gbps"] == g)
            label = ("gradients every step" if K == 1 else f"models every {K} steps") + f", {g:g} Gb/s"
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-" if g >= 100 else "s--", label=label)
        n = sorted({r["nodes"] for r in rows})
        ax.plot(n, n, "k:", alpha=0.4, label="linear")
        ax.set_xscale("log", base=2)
        ax.set_yscale("log", base=2)
        ax.set_xlabel("nodes")
        ax.set_ylabel("speed-up over one node")
        ax.set_title(f"nodes of {c} cores")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)
    if title:
        fig.suptitle(title)
    _save(fig, path)


def format_scaling(rows):
    lines = ["K   cores  Gb/s  " + "  ".join(f"{n:>9}" for n in sorted({r['nodes'] for r in rows}))]
    groups = {}
    for r in rows:
        groups.setdefault((r["sync_every"], r["cores"], r["gbps"]), []).append(r)
    for (K, c, g), rs in sorted(groups.items()):
        rs.sort(key=lambda r: r["nodes"])
        lines.append(f"{K:<3} {c:>5}  {g:>4}  " + "  ".join(f"{r['tokens_per_s']:>9,}" for r in rs))
    return "\n".join(lines) + "\n(tokens/s; each node one worker on all its cores)"


def _isfinite(x):
    return x is not None and math.isfinite(x)
