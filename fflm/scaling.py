"""A scaling model for `fflm train --ray`: tokens/s on N nodes, predicted from one measured run.

Built from what `fflm bench ray` measures on one machine (fflm/benchray.py): the one-process
step (forward, backward, update of a global batch), and per step on the workers the averaging
(merging the published contributions, and the update), the bytes one worker publishes, and
the rest of the Ray step (the driver's calls, putting and reading contributions in the object
store). Each node runs one worker on all its cores and takes a whole batch of the measured size
a step (the global batch grows with the nodes, as data-parallel training is run), so a step costs

    T(N) = step(cores) + overhead + dispatch x (N - N_measured) + (merge x N / N_measured + network(N)) / K

    step(cores) = the one-process step x (its threads / cores) / efficiency(cores)
    network(N)  = all-gather: (N - 1) x bytes / bandwidth + (N - 1) x latency     (what fflm does)
                  ring all-reduce: 2 (N - 1) / N x bytes / bandwidth + 2 (N - 1) x latency

with K = 1 for gradient averaging and K = --sync-every for local SGD; N = 1 is one node alone
(no Ray: T = step(cores)). Tokens/s = N x batch / T(N); the speed-up is against one node alone.
The assumptions not measured here are parameters with their defaults stated below.
"""

GBPS = 1e9 / 8  # bytes/s in one Gb/s
LATENCY_S = 50e-6  # one message between two machines on Ethernet, one way (an assumption)
DISPATCH_S = 0.5e-3  # the driver's call to one more worker and its reply, a step (an assumption)
EFFICIENCY_16 = 0.8  # a 16-core node's matrix work per core, against the measured node's (an assumption)


def inputs(result):
    """The measured figures of a `fflm bench ray` result: the one-process step and, for every K
    run on Ray, the averaging, the overhead and the bytes a step."""
    runs = {r["run"]: r for r in result["runs"]}
    batch = result["batch_size"]
    alone = runs["one process"]
    out = {}
    for r in result["runs"]:
        s = r.get("per_step")
        if not s:
            continue
        out[s["sync_every"]] = {"merge_s": s["merge_ms"] / 1e3,
                                "overhead_s": max(0.0, (s["step_ms"] - s["compute_ms"] - s["merge_ms"]) / 1e3),
                                "bytes": s["bytes_out_per_step"] * s["sync_every"], "workers": s["workers"]}
    return {"runs": out, "batch": batch, "step_s": batch / alone["tokens_per_s"], "threads": result["threads"]}


def node_step(got, cores, efficiency=EFFICIENCY_16):
    """One node's step on `cores` cores: the measured one, scaled by cores (beyond the measured
    node's, at `efficiency`)."""
    eff = 1.0 if cores <= got["threads"] else efficiency
    return got["step_s"] * got["threads"] / cores / eff


def step_seconds(got, K, nodes, cores, gbps, network="allgather", efficiency=EFFICIENCY_16, latency=LATENCY_S,
                 dispatch=DISPATCH_S):
    """Predicted seconds a step on `nodes` nodes of `cores` cores (the module docstring's T(N)).

    >>> got = {"runs": {1: {"merge_s": 0.01, "overhead_s": 0.01, "bytes": 1.25e8, "workers": 2}},
    ...        "batch": 256, "step_s": 0.1, "threads": 2}
    >>> step_seconds(got, 1, 1, 2, 10)                      # one node alone: its own step
    0.1
    >>> round(step_seconds(got, 1, 2, 2, 10), 3)            # + overhead, merge, 1 s to send 125 MB at 1 Gb/s x 10
    0.22
    """
    t = node_step(got, cores, efficiency)
    if nodes == 1:
        return t
    m = got["runs"][K]
    bw = gbps * GBPS
    if network == "ring":
        net = 2 * (nodes - 1) / nodes * m["bytes"] / bw + 2 * (nodes - 1) * latency
    else:
        net = (nodes - 1) * m["bytes"] / bw + (nodes - 1) * latency
    merge = m["merge_s"] * nodes / m["workers"]
    return t + m["overhead_s"] + dispatch * max(0, nodes - m["workers"]) + (merge + net) / K


def predict(result, nodes=(1, 2, 4, 8, 16, 32, 64), cores=(2, 16), gbps=(10, 100), network="allgather",
            efficiency=EFFICIENCY_16):
    """Tokens/s and speed-up for every measured K, node count, node size and network (JSON-ready rows)."""
    got = inputs(result)
    rows = []
    for K in sorted(got["runs"]):
        for c in cores:
            single = got["batch"] / node_step(got, c, efficiency)
            for g in gbps:
                for n in nodes:
                    tps = n * got["batch"] / step_seconds(got, K, n, c, g, network, efficiency)
                    rows.append({"sync_every": K, "cores": c, "gbps": g, "nodes": n, "network": network,
                                 "tokens_per_s": round(tps), "speedup": round(tps / single, 2)})
    return rows


def stops_paying(rows):
    """For each (K, cores, Gb/s): the most nodes worth having (beyond it, more nodes give fewer
    tokens/s; the largest count if tokens/s still grows there)."""
    out = {}
    for r in rows:
        out.setdefault((r["sync_every"], r["cores"], r["gbps"]), []).append((r["tokens_per_s"], -r["nodes"]))
    return {key: -max(pts)[1] for key, pts in out.items()}


def half_efficiency(rows):
    """For each (K, cores, Gb/s): the fewest nodes at which the speed-up falls below half the
    node count (None: never within the rows): where adding machines stops paying."""
    out = {}
    for r in sorted(rows, key=lambda r: r["nodes"]):
        key = (r["sync_every"], r["cores"], r["gbps"])
        out.setdefault(key, None)
        if out[key] is None and r["nodes"] > 1 and r["speedup"] < 0.5 * r["nodes"]:
            out[key] = r["nodes"]
    return out


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
        from matplotlib.ticker import FuncFormatter

        plain = FuncFormatter(lambda v, _: f"{v:g}")  # 8, not 2^3
        ax.xaxis.set_major_formatter(plain)
        ax.yaxis.set_major_formatter(plain)
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
        lines.append(f"{K:<3} {c:>5}  {g:>4g}  " + "  ".join(f"{r['tokens_per_s']:>9,}" for r in rs))
    return "\n".join(lines) + "\n(tokens/s; each node one worker on all its cores)"
