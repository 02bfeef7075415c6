"""Reads the logs of scripts/bench-shares.sh and prints the compute-share figures of
docs/benchmarks.md; with --plots DIR also draws them (matplotlib).

Every figure is a throughput measured over a window in which all the processes of a run
were running (their first second left out), divided by the solo throughput of the same
workload without the shim (solo_bare.log) measured in the same run.

usage: python3 scripts/shares_report.py LOGDIR [--plots DIR]
"""
import argparse
import os
import re

DONE = re.compile(r"done at_ns=(\d+) iters=(\d+)")
REQUEST = re.compile(r"request at_ns=(\d+) latency_ns=(\d+)")


def done(path):
    with open(path) as f:
        return [(int(m.group(1)), int(m.group(2))) for m in DONE.finditer(f.read())]


def rate(points, start, end):
    """Iterations per second finished in (start, end]."""
    inside = [i for t, i in points if start < t <= end]
    before = [i for t, i in points if t <= start]
    if not inside:
        return 0.0
    base = before[-1] if before else 0
    return (inside[-1] - base) / ((end - start) / 1e9)


def window(runs, settle=1e9, tail=0.2e9):
    start = max(r[0][0] for r in runs) + settle
    end = min(r[-1][0] for r in runs) - tail
    return start, end


def requests(path):
    with open(path) as f:
        return sorted(int(m.group(2)) for m in REQUEST.finditer(f.read()))


def pct(sorted_values, q):
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("logs")
    p.add_argument("--plots")
    args = p.parse_args()
    d = lambda name: os.path.join(args.logs, name)
    have = lambda name: os.path.exists(d(name))

    solo = done(d("solo_bare.log"))
    solo_rate = rate(solo, *window([solo]))
    print(f"solo throughput without the shim: {solo_rate:.1f} matmuls/s (8192x8192 bf16)")
    rows = []

    def report(label, names, wants):
        runs = [done(d(n)) for n in names]
        start, end = window(runs)
        got = [rate(r, start, end) / solo_rate for r in runs]
        for name, g, w in zip(names, got, wants):
            verdict = "" if w is None else ("ok" if abs(g - w) <= 0.03 else "MISSED")
            rows.append((label, name, g, w, verdict))
        return runs, start, end

    if have("solo_share25.log"):
        runs = [done(d("solo_share25.log"))]
        start, end = window(runs)
        g = rate(runs[0], start, end) / solo_rate
        rows.append(("share only, alone", "solo_share25", g, 0.97, "ok" if g >= 0.97 else "MISSED"))
    if have("limit30.log"):
        report("limit 30%, alone", ["limit30.log"], [0.30])
    if have("pair_bare_a.log"):
        report("no shim, two at once", ["pair_bare_a.log", "pair_bare_b.log"], [None, None])
    if have("pair_25.log"):
        report("shares 25/75", ["pair_25.log", "pair_75.log"], [0.25, 0.75])
    if have("trio_10.log"):
        report("shares 10/30/60", ["trio_10.log", "trio_30.log", "trio_60.log"], [0.10, 0.30, 0.60])

    print(f"{'run':22} {'process':16} {'of solo':>8} {'target':>8}")
    for label, name, g, w, verdict in rows:
        target = "" if w is None else (f">= {w:.0%}" if "alone" in label and "share" in label else f"{w:.0%} ± 3")
        print(f"{label:22} {name:16} {g:8.1%} {target:>10} {verdict}")

    sizes = sorted(
        {int(m.group(1)) for f in os.listdir(args.logs) for m in [re.match(r"neighbour(\d+)_solo\.log$", f)] if m},
        reverse=True,
    )
    if have("solo_bare_after.log"):
        after = done(d("solo_bare_after.log"))
        print(f"solo without the shim again, after the shares: {rate(after, *window([after])) / solo_rate:.1%} of the first")
    for name in sorted(f.removesuffix(".csv") for f in os.listdir(args.logs) if f.startswith("clocks_")):
        if have(name + ".csv"):
            busy = []
            for line in open(d(name + ".csv")):
                fields = [f.strip() for f in line.split(",")]
                if len(fields) >= 4 and fields[3].endswith("%") and int(fields[3].rstrip(" %")) > 0:
                    busy.append(int(fields[1].split()[0]))
            if busy:
                busy.sort()
                print(f"{name:28} SM clock while the GPU is busy: median {busy[len(busy) // 2]} MHz over {len(busy)} samples")

    latency_rows = []
    names = ["requests_solo_bare", "requests_solo_shim"]
    for size in sizes + ["light"]:
        names += [f"requests_beside{size}_bare", f"requests_beside{size}_high"]
    for name in names:
        if have(name + ".log"):
            lat = requests(d(name + ".log"))
            latency_rows.append((name, lat))
            print(f"{name:28} n={len(lat):5} p50={pct(lat, 0.5) / 1e3:8.1f} us  p99={pct(lat, 0.99) / 1e3:8.1f} us")
    for size in sizes:
        s, low, bare = (f"neighbour{size}_solo.log", f"neighbour{size}_low.log", f"neighbour{size}_bare.log")
        if have(s) and have(low):
            solo_n = done(d(s))
            r0 = rate(solo_n, *window([solo_n]))
            for label, name in (("beside requests, no shim", bare), ("low priority beside high", low)):
                runs = done(d(name))
                print(f"neighbour {size} {label:26} {rate(runs, *window([runs])) / r0:6.1%} of its solo throughput")

    if args.plots:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        os.makedirs(args.plots, exist_ok=True)
        info = open(d("info.txt")).read().strip().replace("\n", ", ")
        for title, names, out in [
            ("shares 25/75", ["pair_25.log", "pair_75.log"], "shares-25-75.png"),
            ("shares 10/30/60", ["trio_10.log", "trio_30.log", "trio_60.log"], "shares-10-30-60.png"),
            ("no shim: two saturating tenants", ["pair_bare_a.log", "pair_bare_b.log"], "shares-no-shim.png"),
            ("limit 30%, alone", ["limit30.log"], "limit-30.png"),
        ]:
            if not all(have(n) for n in names):
                continue
            runs = [done(d(n)) for n in names]
            t0 = min(r[0][0] for r in runs)
            fig, ax = plt.subplots(figsize=(7, 3.2))
            for n, r in zip(names, runs):
                xs, ys = [], []
                step = int(0.25e9)
                t = r[0][0]
                while t + step <= r[-1][0]:
                    xs.append((t + step / 2 - t0) / 1e9)
                    ys.append(100 * rate(r, t, t + step) / solo_rate)
                    t += step
                ax.plot(xs, ys, label=n.removesuffix(".log"))
            ax.set_xlabel("seconds")
            ax.set_ylabel("% of solo throughput")
            ax.set_ylim(0, 110)
            ax.set_title(f"{title} ({info})", fontsize=7)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(os.path.join(args.plots, out), dpi=110)
            plt.close(fig)
        if latency_rows:
            fig, ax = plt.subplots(figsize=(7, 3.2))
            for name, lat in latency_rows:
                ys = [i / len(lat) for i in range(len(lat))]
                ax.plot([v / 1e3 for v in lat], ys, label=name.removeprefix("requests_"))
            ax.set_xscale("log")
            ax.set_xlabel("request latency, µs (2048² bf16 matmul + sync)")
            ax.set_ylabel("fraction of requests")
            ax.set_title(f"latency CDF ({info})", fontsize=7)
            ax.legend(fontsize=7)
            fig.tight_layout()
            fig.savefig(os.path.join(args.plots, "latency-cdf.png"), dpi=110)
            plt.close(fig)


if __name__ == "__main__":
    main()
