#!/usr/bin/env python3
"""Reads the logs of scripts/bench-isolation.sh and scripts/bench-overhead.sh and writes the
tables of docs/benchmarks.md (markdown) with each target marked met or missed, and plots.

usage: python3 scripts/isolation_report.py OUT [--md FILE] [--img-dir DIR] [--only PART...]

OUT is the folder the scripts were given as OUT ($OUT/isolation/{limit,shares,priority}/
and $OUT/overhead/); whatever part is there is reported. The markdown goes to FILE
(default: standard output), the plots (PNG, matplotlib; left out with a note where it is
missing) to DIR (default OUT/img), linked from FILE by relative paths.

How each figure is made:
- A run's steady window starts 1 s after the last of its processes started measuring
  (the `start` line: after imports, warm-up and the common go) and ends when the first
  of them ended.
- Throughput: work items finished in the window, per second, summed over the run's
  processes. NVML figures: the mean of the samples taken in the window (device
  utilization, SM clock, power), or of each process's own samples (per-process
  utilization, matched by pid).
- Latency: the requests that finished in the window; p50 and p99 by nearest rank.
- Overhead: per pair, the shim's figure over the bare one; the median of the pairs with
  a 95% bootstrap interval (scripts/gpu/paired_ci.py). A goal is met when the whole
  interval is under it, missed when the median is over it, and undecided otherwise.
"""

import argparse
import importlib.util
import os
import re
import statistics
import sys

SETTLE_NS = 1_000_000_000
LIMIT_BAND = 3.0  # points of NVML utilization
SHARE_BAND = 3.0
LIGHT_MIN = 0.97  # a load under its limit keeps at least this much of its bare throughput
NEIGHBOUR_MIN = 0.50
PRIORITY_MAX = {"requests": 2.0, "llama": 1.5}
OVERHEAD_GOALS = {  # metric -> highest ratio shim/bare
    "launch_ns": 1.01,
    "launch_enqueue_ns": 1.01,
    "alloc_free_pair_ns": 1.02,
    "request_ns": 1.01,
}

# The limit section's workloads, in the order of the table: (name, what it is, logs of
# each mode).
LIMIT_SHAPES = [
    ("torch4096", "PyTorch 4096² bf16 matmuls, sync every 8"),
    ("jax4096", "JAX jitted chain of 8 4096² matmuls"),
    ("graph4096", "PyTorch CUDA graph replay (16 matmuls a graph)"),
    ("step2048", "PyTorch 2048² matmul + sync every step"),
    ("step1024", "PyTorch 1024² matmul + sync every step (launch-bound)"),
    ("streams4096", "PyTorch on two streams at once, 4096²"),
    ("procs4096", "one tenant of two processes, 4096² loops"),
    ("light2048", "light: 8 2048² matmuls + sync, then 1 ms sleep"),
    ("mix8192", "PyTorch 8192² matmul every 20 of 256², two in flight"),
]
PRIORITY_CASES = [
    ("requests", "2048² request + sync every 2 ms"),
    ("llama", "inference server: Llama-style model, 32-token greedy generate"),
]

START = re.compile(r"^start pid=(\d+) at_ns=(\d+) shim=(-?\d+)", re.M)
DONE = re.compile(r"^done at_ns=(\d+) iters=(\d+)", re.M)
REQUEST = re.compile(r"^request at_ns=(\d+) latency_ns=(\d+)", re.M)
END = re.compile(r"^end at_ns=(\d+)", re.M)


# --- reading ---------------------------------------------------------------------------


class Log:
    """One workload process's log (scripts/gpu/shapes.py)."""

    def __init__(self, path):
        self.path = path
        self.name = os.path.basename(path)
        with open(path, errors="replace") as f:
            text = f.read()
        start = START.search(text)
        self.pid = int(start.group(1)) if start else None
        self.start = int(start.group(2)) if start else None
        self.shim = int(start.group(3)) if start else None
        self.done = [(int(t), int(n)) for t, n in DONE.findall(text)]
        self.requests = [(int(t), int(l)) for t, l in REQUEST.findall(text)]
        end = END.search(text)
        self.complete = end is not None
        events = [t for t, _ in self.done] + [t for t, _ in self.requests]
        self.last = max(events) if events else None

    @property
    def usable(self):
        return self.start is not None and self.last is not None


def read_log(directory, name):
    path = os.path.join(directory, name)
    if not os.path.exists(path):
        return None
    log = Log(path)
    return log if log.usable else None


class Nvml:
    """The NVML sampler's log for one section (scripts/gpu/nvml_sampler.py: `dev`, `proc`,
    `error` and `info` lines)."""

    def __init__(self, directory):
        self.device = []  # (t, util, clock, power), None where NVML gave nothing
        self.proc = []  # (sample_t, pid, sm_util)
        self.errors = {}  # what -> its first error
        self.info = {}
        path = os.path.join(directory, "nvml.log")
        if not os.path.exists(path):
            return
        with open(path, errors="replace") as f:
            for line in f:
                kind, _, rest = line.partition(" ")
                fields = dict(w.split("=", 1) for w in rest.split() if "=" in w)
                try:
                    if kind == "dev":
                        self.device.append((int(fields["at_ns"]), number(fields.get("util")),
                                            number(fields.get("sm_mhz")), number(fields.get("power_w"))))
                    elif kind == "proc":
                        at = int(fields.get("sample_ns", fields["at_ns"]))
                        self.proc.append((at, int(fields["pid"]), float(fields["sm"])))
                    elif kind == "error":
                        what = fields.get("what", "?")
                        self.errors.setdefault(what, rest.split(f"what={what}", 1)[-1].strip())
                    elif kind == "info":
                        self.info.update(fields)
                except (KeyError, ValueError):
                    continue  # a line cut short by a kill

    def device_mean(self, column, start, end):
        values = [s[column] for s in self.device if start <= s[0] <= end and s[column] is not None]
        return statistics.mean(values) if values else None

    def util(self, start, end):
        return self.device_mean(1, start, end)

    def clock(self, start, end):
        return self.device_mean(2, start, end)

    def power(self, start, end):
        return self.device_mean(3, start, end)

    def process_util(self, pids, start, end):
        """The sum over PIDS of each one's mean sampled utilization in the window."""
        total, seen = 0.0, False
        for pid in pids:
            values = [u for t, p, u in self.proc if p == pid and start <= t <= end]
            if values:
                total += statistics.mean(values)
                seen = True
        return total if seen else None

    def process_series(self, pid):
        return [(t, u) for t, p, u in self.proc if p == pid]


def number(text):
    if text is None or text.strip() == "":
        return None
    return float(text)


def read_kv(path):
    values = {}
    if os.path.exists(path):
        with open(path, errors="replace") as f:
            for line in f:
                key, sep, value = line.rstrip("\n").partition("=")
                if sep:
                    values[key.strip()] = value.strip()
    return values


# --- figures ---------------------------------------------------------------------------


def window(logs, settle=SETTLE_NS):
    """(start, end) of the steady window of processes that ran together, or None."""
    if not logs or any(log is None for log in logs):
        return None
    start = max(log.start for log in logs) + settle
    end = min(log.last for log in logs)
    return (start, end) if end > start else None


def rate(log, start, end):
    """Work items per second that LOG finished in (start, end]."""
    inside = [n for t, n in log.done if start < t <= end]
    if not inside:
        return 0.0
    before = [n for t, n in log.done if t <= start]
    base = before[-1] if before else 0
    return (inside[-1] - base) / ((end - start) / 1e9)


def total_rate(logs, win):
    return sum(rate(log, *win) for log in logs)


def latencies(log, win):
    return sorted(l for t, l in log.requests if win[0] <= t <= win[1])


def percentile(sorted_values, q):
    """Nearest rank."""
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


def own_window(log):
    return window([log])


# --- the sections ----------------------------------------------------------------------


class Run:
    """Processes that ran together and what NVML saw of them."""

    def __init__(self, logs, nvml):
        self.logs = logs
        self.win = window(logs)
        self.nvml = nvml

    @property
    def ok(self):
        return self.win is not None

    def throughput(self):
        return total_rate(self.logs, self.win) if self.ok else None

    def util(self):
        return self.nvml.util(*self.win) if self.ok else None

    def clock(self):
        return self.nvml.clock(*self.win) if self.ok else None

    def process_util(self, logs=None):
        if not self.ok:
            return None
        return self.nvml.process_util([log.pid for log in (logs or self.logs)], *self.win)


def limit_section(directory, limit):
    nvml = Nvml(directory)
    rows = []
    for name, what in LIMIT_SHAPES:
        if name == "procs4096":
            bare_names = ["procs4096_bare_a.log", "procs4096_bare_b.log"]
            limit_names = ["procs4096_limit_a.log", "procs4096_limit_b.log"]
        else:
            bare_names, limit_names = [f"{name}_bare.log"], [f"{name}_limit.log"]
        if not any(os.path.exists(os.path.join(directory, n)) for n in bare_names + limit_names):
            continue
        bare = Run([read_log(directory, n) for n in bare_names], nvml)
        limited = Run([read_log(directory, n) for n in limit_names], nvml)
        row = {"name": name, "what": what, "bare": bare, "limited": limited}
        row["util_bare"], row["util_limited"] = bare.util(), limited.util()
        row["clock_bare"], row["clock_limited"] = bare.clock(), limited.clock()
        row["proc_limited"] = limited.process_util()
        tb, tl = bare.throughput(), limited.throughput()
        row["of_bare"] = tl / tb if tb and tl is not None else None
        if not (bare.ok and limited.ok):
            row["verdict"] = "no data: " + missing_note([bare, limited], bare_names + limit_names)
        elif name == "light2048":
            row["target"] = f"not throttled: ≥ {LIGHT_MIN:.0%} of bare"
            row["verdict"] = verdict(row["of_bare"] is not None and row["of_bare"] >= LIGHT_MIN)
        else:
            row["target"] = f"{limit} ± {LIMIT_BAND:g}"
            u = row["util_limited"]
            row["verdict"] = "no NVML data" if u is None else verdict(abs(u - limit) <= LIMIT_BAND)
        rows.append(row)
    return {"rows": rows, "nvml": nvml, "limit": limit, "dir": directory}


def shares_section(directory):
    nvml = Nvml(directory)
    solo = Run([read_log(directory, "solo.log")], nvml)
    solo_rate = solo.throughput()
    rows = []
    for label, names, shares in [
        ("shares 25/75", ["s25.log", "s75.log"], [25, 75]),
        ("no shim, two loops", ["bare_a.log", "bare_b.log"], [None, None]),
    ]:
        if not any(os.path.exists(os.path.join(directory, n)) for n in names):
            continue
        logs = [read_log(directory, n) for n in names]
        run = Run(logs, nvml)
        for name, log, share in zip(names, logs, shares):
            row = {"run": label, "tenant": name.removesuffix(".log"), "share": share,
                   "group": run, "log": log}
            if not run.ok:
                row["verdict"] = "no data: " + missing_note([run], names)
                rows.append(row)
                continue
            row["proc_util"] = nvml.process_util([log.pid], *run.win)
            row["device_util"] = run.util()
            r = rate(log, *run.win)
            row["of_solo"] = r / solo_rate if solo_rate else None
            if share is not None:
                row["target"] = f"{share} ± {SHARE_BAND:g}"
                # By throughput against the same loop alone: two saturating loops run at the
                # solo loop's clock, so that is their part of the GPU's time. NVML's
                # per-process utilization cannot judge it: on an H100 time-slicing two
                # processes it gives each about the device's utilization (97% each here).
                if row["of_solo"] is not None:
                    row["verdict"] = verdict(abs(100 * row["of_solo"] - share) <= SHARE_BAND) + " (by throughput)"
                else:
                    row["verdict"] = "no data"
            rows.append(row)
    return {"rows": rows, "nvml": nvml, "solo": solo, "dir": directory}


def priority_section(directory):
    nvml = Nvml(directory)
    neighbour_solo = Run([read_log(directory, "neighbour_solo.log")], nvml)
    n_solo = neighbour_solo.throughput()
    cases = []
    for name, what in PRIORITY_CASES:
        if not os.path.exists(os.path.join(directory, f"{name}_solo.log")):
            continue
        limit = PRIORITY_MAX[name]
        solo_log = read_log(directory, f"{name}_solo.log")
        solo_win = own_window(solo_log) if solo_log else None
        solo_lat = latencies(solo_log, solo_win) if solo_win else []
        s50, s99 = percentile(solo_lat, 0.5), percentile(solo_lat, 0.99)
        case = {"name": name, "what": what, "limit": limit, "rows": [],
                "cdf": {"alone, no shim": solo_lat}, "series": {}}
        case["rows"].append({"run": "alone, no shim", "n": len(solo_lat), "p50": s50, "p99": s99})
        for label, high_name, low_name, judged in [
            ("beside the least neighbour (256² matmul + sync), no shim", f"{name}_floor.log",
             f"{name}_floor_neighbour.log", False),
            ("beside the 4096² loop, no shim", f"{name}_bare.log", f"{name}_bare_neighbour.log", False),
            ("shim: high beside low", f"{name}_high.log", f"{name}_low_neighbour.log", True),
        ]:
            if judged is False and "_floor" in high_name and not os.path.exists(
                    os.path.join(directory, high_name)):
                continue
            high, low = read_log(directory, high_name), read_log(directory, low_name)
            run = Run([high, low], nvml)
            row = {"run": label}
            if not run.ok:
                row["verdict"] = "no data: " + missing_note([run], [high_name, low_name])
                case["rows"].append(row)
                continue
            lat = latencies(high, run.win)
            case["cdf"][label] = lat
            row.update(n=len(lat), p50=percentile(lat, 0.5), p99=percentile(lat, 0.99))
            row["x50"] = row["p50"] / s50 if s50 and row["p50"] else None
            row["x99"] = row["p99"] / s99 if s99 and row["p99"] else None
            row["neighbour"] = rate(low, *run.win) / n_solo if n_solo else None
            row["high_util"] = nvml.process_util([high.pid], *run.win)
            row["low_util"] = nvml.process_util([low.pid], *run.win)
            if judged:
                case["series"] = {"run": run, "high": high, "low": low}
                row["target"] = f"≤ {limit:g}x / ≤ {limit:g}x, ≥ {NEIGHBOUR_MIN:.0%}"
                if None in (row["x50"], row["x99"], row["neighbour"]):
                    row["verdict"] = "no data"
                else:
                    row["verdict"] = verdict(row["x50"] <= limit and row["x99"] <= limit
                                             and row["neighbour"] >= NEIGHBOUR_MIN)
            case["rows"].append(row)
        cases.append(case)
    return {"cases": cases, "nvml": nvml, "neighbour_solo": n_solo, "dir": directory}


def overhead_section(directory):
    paired_ci = load_paired_ci()
    by_case = {}  # case -> metric -> pair -> {mode: value}
    failed = []
    path = os.path.join(directory, "raw.txt")
    if not os.path.exists(path):
        return {"rows": [], "failed": [], "note": f"no {path}"}
    with open(path) as f:
        for line in f:
            fields = dict(w.split("=", 1) for w in line.split() if "=" in w)
            case, mode, pair = fields.get("case"), fields.get("mode"), fields.get("pair")
            if not case or mode not in ("bare", "shim") or not pair:
                continue
            if fields.get("rc") != "0":
                failed.append((case, mode, pair))
                continue
            for metric, value in fields.items():
                if metric in ("case", "mode", "pair", "rc", "count", "loop_ns"):
                    continue
                try:
                    v = float(value)
                except ValueError:
                    continue
                by_case.setdefault(case, {}).setdefault(metric, {}).setdefault(pair, {})[mode] = v
    rows = []
    for case in sorted(by_case):
        for metric in sorted(by_case[case], key=metric_order):
            pairs = [p for p in by_case[case][metric].values() if "bare" in p and "shim" in p and p["bare"] > 0]
            if not pairs:
                continue
            ratios = [p["shim"] / p["bare"] for p in pairs]
            median, low, high = paired_ci.median_interval(ratios)
            goal = OVERHEAD_GOALS.get(metric)
            if case.startswith("hf-") and metric != "request_ns":
                goal = None
            row = {
                "case": case, "metric": metric, "pairs": len(pairs),
                "bare": statistics.median(p["bare"] for p in pairs),
                "shim": statistics.median(p["shim"] for p in pairs),
                "ratio": median, "low": low, "high": high, "goal": goal,
                "ratios": ratios,
            }
            if goal is not None:
                if high < goal:
                    row["verdict"] = "met"
                elif median > goal:
                    row["verdict"] = "**missed**"
                else:
                    row["verdict"] = "undecided"
            rows.append(row)
    return {"rows": rows, "failed": failed}


def metric_order(metric):
    order = ["launch_ns", "launch_enqueue_ns", "alloc_free_pair_ns", "spin10us_per_kernel_ns",
             "request_ns", "p50_ns"]
    return order.index(metric) if metric in order else len(order)


def load_paired_ci():
    here = os.path.dirname(os.path.abspath(__file__))
    spec = importlib.util.spec_from_file_location("paired_ci", os.path.join(here, "gpu", "paired_ci.py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def verdict(met):
    return "met" if met else "**missed**"


def missing_note(runs, names):
    bad, present = [], 0
    for run in runs:
        for log in run.logs:
            if log is None:
                continue
            present += 1
            if not log.complete:
                bad.append(f"{log.name} incomplete")
    if bad:
        return "; ".join(bad)
    if present == len(names):
        return "no steady window (the runs were shorter than the 1 s left out at the start)"
    return f"a log of {', '.join(names)} is missing or has no measurement (see its .err)"


# --- markdown --------------------------------------------------------------------------


def pct(value, digits=1):
    return "–" if value is None else f"{value:.{digits}f}%"


def ratio_pct(value):
    return "–" if value is None else f"{100 * value:.1f}%"


def mhz(value):
    return "–" if value is None else f"{value:.0f}"


def us(ns):
    return "–" if ns is None else f"{ns / 1e3:.0f} µs" if ns < 10e6 else f"{ns / 1e6:.1f} ms"


def times(value):
    return "–" if value is None else f"{value:.2f}x"


def header(info, title):
    lines = [f"### {title}", ""]
    facts = []
    if info.get("date"):
        facts.append(f"run {info['date']}")
    if info.get("gpu"):
        facts.append(info["gpu"])
    if info.get("dist_commit"):
        facts.append(f"shim at {info['dist_commit'][:7]}")
    if info.get("versions"):
        facts.append(info["versions"])
    if facts:
        lines += ["; ".join(facts) + ".", ""]
    if info.get("device") == "cpu":
        lines += ["**A dry run on the CPU (SHAPES_DEVICE=cpu): no figure here is a measurement.**", ""]
    return lines


def limit_markdown(part, images):
    lines = [f"#### Limit {part['limit']}%, each workload alone", "",
             "NVML utilization sampled without the shim every 50 ms, mean over the steady "
             "window (the first second left out); throughput against the same workload "
             "without the shim in the same run, just before.", "",
             "| workload | NVML utilization, bare → limited | per-process (NVML), limited | target | | throughput vs bare | SM clock MHz, bare → limited |",
             "|---|---|---|---|---|---|---|"]
    for row in part["rows"]:
        lines.append(
            f"| {row['what']} | {pct(row['util_bare'])} → {pct(row['util_limited'])} | "
            f"{pct(row['proc_limited'])} | {row.get('target', '')} | {row['verdict']} | "
            f"{ratio_pct(row['of_bare'])} | {mhz(row['clock_bare'])} → {mhz(row['clock_limited'])} |")
    lines += nvml_notes(part["nvml"], part["dir"])
    lines += image_lines(images, "limit")
    return lines


def shares_markdown(part, images):
    solo = part["solo"].throughput()
    lines = ["#### Shares 25/75 (4096² loops)", "",
             f"Throughput against the same loop alone without the shim in the same run "
             f"({'–' if solo is None else f'{solo:.0f} matmuls/s'}); NVML's per-process "
             "utilization, mean over the window in which both ran.", "",
             "| run | tenant | NVML per-process | target | | device utilization | throughput vs solo |",
             "|---|---|---|---|---|---|---|"]
    for row in part["rows"]:
        lines.append(
            f"| {row['run']} | {row['tenant']} | {pct(row.get('proc_util'))} | "
            f"{row.get('target', '')} | {row.get('verdict', '')} | {pct(row.get('device_util'))} | "
            f"{ratio_pct(row.get('of_solo'))} |")
    lines += nvml_notes(part["nvml"], part["dir"])
    lines += image_lines(images, "shares")
    return lines


def priority_markdown(part, images):
    lines = ["#### Priority: a high tenant beside a low 4096² loop", "",
             "Latency of the high tenant's requests (those finished in the steady window) "
             "against the same requests alone without the shim; the neighbour's throughput "
             "against its own loop alone without the shim, same run.", ""]
    for case in part["cases"]:
        lines += [f"{case['what']}:", "",
                  "| run | requests | p50 | p99 | vs alone (p50 / p99) | neighbour vs its solo | NVML per-process, high / low | target | |",
                  "|---|---|---|---|---|---|---|---|---|"]
        for row in case["rows"]:
            lines.append(
                f"| {row['run']} | {row.get('n', '–')} | {us(row.get('p50'))} | {us(row.get('p99'))} | "
                f"{times(row.get('x50'))} / {times(row.get('x99'))} | {ratio_pct(row.get('neighbour'))} | "
                f"{pct(row.get('high_util'))} / {pct(row.get('low_util'))} | {row.get('target', '')} | "
                f"{row.get('verdict', '')} |")
        lines.append("")
    lines += nvml_notes(part["nvml"], part["dir"])
    lines += image_lines(images, "priority")
    return lines


def overhead_markdown(part):
    lines = ["#### What the shim costs, whole processes", "",
             "Each pair: one process without the shim and one under it, back to back, the "
             "order flipping every pair; each process times its own loops. Ratio: shim / "
             "bare per pair, the median of the pairs with a 95% bootstrap interval. A goal "
             "is met when the whole interval is under it, missed when the median is over it, "
             "undecided otherwise.", "",
             "| case | metric | pairs | bare (median) | shim (median) | shim / bare | 95% interval | goal | |",
             "|---|---|---|---|---|---|---|---|---|"]
    if part.get("note"):
        lines += ["", part["note"]]
    for row in part["rows"]:
        goal = "" if row["goal"] is None else f"< {100 * (row['goal'] - 1):g}%"
        lines.append(
            f"| {row['case']} | {row['metric']} | {row['pairs']} | {fmt_ns(row['bare'])} | "
            f"{fmt_ns(row['shim'])} | {row['ratio']:.4f} | {row['low']:.4f} to {row['high']:.4f} | "
            f"{goal} | {row.get('verdict', '')} |")
    if part["failed"]:
        counts = {}
        for case, mode, _ in part["failed"]:
            counts[(case, mode)] = counts.get((case, mode), 0) + 1
        lines += ["", "Runs that failed (their pairs left out; their output is in overhead/runs/): "
                  + ", ".join(f"{case} {mode} ×{n}" for (case, mode), n in sorted(counts.items())) + "."]
    lines.append("")
    return lines


def fmt_ns(ns):
    if ns >= 1e6:
        return f"{ns / 1e6:.2f} ms"
    if ns >= 1e3:
        return f"{ns / 1e3:.2f} µs"
    return f"{ns:.0f} ns"


def nvml_notes(nvml, directory):
    notes = []
    if not nvml.device:
        why = nvml.errors.get("init") or nvml.errors.get("device") or "the sampler wrote nothing"
        notes.append(f"No NVML samples ({why}).")
    elif not nvml.proc:
        why = nvml.errors.get("process")
        notes.append("No per-process samples from NVML" + (f" ({why})" if why else "") + ".")
    if nvml.proc:
        logged = set()
        for name in os.listdir(directory):
            if name.endswith(".log") and name != "nvml.log":
                log = Log(os.path.join(directory, name))
                if log.pid is not None:
                    logged.add(log.pid)
        if logged and not logged & {pid for _, pid, _ in nvml.proc}:
            notes.append("NVML's per-process samples name none of the workloads' pids "
                         "(a PID namespace between them?): per-process figures are left out.")
    return ([""] + notes + [""]) if notes else [""]


def image_lines(images, key):
    out = []
    for alt, path in images.get(key, []):
        out.append(f"![{alt}]({path})")
    return out + [""] if out else []


# --- plots -----------------------------------------------------------------------------


def plots(parts, img_dir, md_dir):
    """Draws what it can; returns {section: [(alt, relative path)]}."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("isolation_report: no matplotlib; tables only", file=sys.stderr)
        return {}
    os.makedirs(img_dir, exist_ok=True)
    images = {}

    def save(fig, key, alt, filename):
        path = os.path.join(img_dir, filename)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)
        images.setdefault(key, []).append((alt, os.path.relpath(path, md_dir)))

    def device_series(nvml, t0, start, end):
        xs, ys = [], []
        for t, util, _, _ in nvml.device:
            if start <= t <= end and util is not None:
                xs.append((t - t0) / 1e9)
                ys.append(util)
        return xs, ys

    def process_series(nvml, pid, t0, start, end):
        pts = [((t - t0) / 1e9, u) for t, u in nvml.process_series(pid) if start <= t <= end]
        return [p[0] for p in pts], [p[1] for p in pts]

    def run_span(run):
        logs = [log for log in run.logs if log is not None]
        if not logs:
            return None
        t0 = min(log.start for log in logs)
        return t0, t0 - int(0.5e9), max(log.last for log in logs)

    if "limit" in parts and parts["limit"]["rows"]:
        part = parts["limit"]
        rows = part["rows"]
        cols = 2
        fig, axes = plt.subplots((len(rows) + cols - 1) // cols, cols,
                                 figsize=(10, 2.3 * ((len(rows) + cols - 1) // cols)), squeeze=False)
        for ax, row in zip(axes.flat, rows):
            for run, label, style in [(row["bare"], "no shim", "0.6"), (row["limited"], f"limit {part['limit']}%", "C0")]:
                span = run_span(run)
                if span:
                    xs, ys = device_series(part["nvml"], *span)
                    ax.plot(xs, ys, color=style, label=label, linewidth=1)
            ax.axhline(part["limit"], color="C3", linestyle=":", linewidth=1)
            ax.set_ylim(0, 105)
            ax.set_title(row["what"], fontsize=8)
            ax.tick_params(labelsize=7)
        for ax in list(axes.flat)[len(rows):]:
            ax.axis("off")
        axes.flat[0].legend(fontsize=7)
        fig.supxlabel("seconds since the run started measuring", fontsize=8)
        fig.supylabel("NVML GPU utilization, %", fontsize=8)
        save(fig, "limit", "NVML utilization over time, bare and limited, per workload", "isolation-limit.png")

    if "shares" in parts and parts["shares"]["rows"]:
        part = parts["shares"]
        groups = []
        for row in part["rows"]:
            if not groups or groups[-1][0] != row["run"]:
                groups.append((row["run"], row["group"], []))
            groups[-1][2].append(row)
        fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3), squeeze=False)
        for ax, (label, run, rows) in zip(axes.flat, groups):
            span = run_span(run)
            if span:
                xs, ys = device_series(part["nvml"], *span)
                ax.plot(xs, ys, color="0.6", label="device", linewidth=1)
                for i, row in enumerate(rows):
                    if row["log"] is None:
                        continue
                    px, py = process_series(part["nvml"], row["log"].pid, *span)
                    ax.plot(px, py, color=f"C{i}", label=row["tenant"], linewidth=1)
                    if row["share"] is not None:
                        ax.axhline(row["share"], color=f"C{i}", linestyle=":", linewidth=1)
            ax.set_ylim(0, 105)
            ax.set_title(label, fontsize=9)
            ax.set_xlabel("seconds", fontsize=8)
            ax.set_ylabel("NVML utilization, %", fontsize=8)
            ax.legend(fontsize=7)
        save(fig, "shares", "NVML per-process utilization over time, shares 25/75", "isolation-shares.png")

    if "priority" in parts and parts["priority"]["cases"]:
        part = parts["priority"]
        cases = part["cases"]
        fig, axes = plt.subplots(2, len(cases), figsize=(5 * len(cases), 6), squeeze=False)
        for col, case in enumerate(cases):
            ax = axes[0][col]
            longest = max((max(lat) for lat in case["cdf"].values() if lat), default=0)
            scale, unit = (1e6, "ms") if longest > 20e6 else (1e3, "µs")
            for label, lat in case["cdf"].items():
                if lat:
                    ax.plot([v / scale for v in lat], [(i + 1) / len(lat) for i in range(len(lat))], label=label)
            ax.set_xscale("log")
            ax.set_xlabel(f"request latency, {unit}", fontsize=8)
            ax.set_ylabel("fraction of requests", fontsize=8)
            ax.set_title(case["what"], fontsize=8)
            ax.legend(fontsize=7)
            ax = axes[1][col]
            series = case["series"]
            if series:
                span = run_span(series["run"])
                if span:
                    xs, ys = device_series(part["nvml"], *span)
                    ax.plot(xs, ys, color="0.6", label="device", linewidth=1)
                    for i, who in enumerate(("high", "low")):
                        px, py = process_series(part["nvml"], series[who].pid, *span)
                        ax.plot(px, py, color=f"C{i}", label=who, linewidth=1)
            ax.set_ylim(0, 105)
            ax.set_xlabel("seconds (shim: high beside low)", fontsize=8)
            ax.set_ylabel("NVML utilization, %", fontsize=8)
            ax.legend(fontsize=7)
        save(fig, "priority", "latency CDFs and per-tenant NVML utilization, priority", "isolation-priority.png")
    return images


# --- main ------------------------------------------------------------------------------


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("out", help="the OUT folder given to bench-isolation.sh / bench-overhead.sh")
    p.add_argument("--md", help="write the markdown here (default: standard output)")
    p.add_argument("--img-dir", help="write the plots here (default: OUT/img)")
    p.add_argument("--only", nargs="+", choices=["limit", "shares", "priority", "overhead"])
    args = p.parse_args(argv)
    wanted = set(args.only or ["limit", "shares", "priority", "overhead"])

    iso = os.path.join(args.out, "isolation")
    parts = {}
    limit = 30
    info = read_kv(os.path.join(iso, "info.txt"))
    try:
        limit = int(info.get("limit", 30))
    except ValueError:
        pass
    builders = {
        "limit": lambda d: limit_section(d, limit),
        "shares": shares_section,
        "priority": priority_section,
    }
    for key, build in builders.items():
        directory = os.path.join(iso, key)
        if key in wanted and os.path.isdir(directory):
            parts[key] = build(directory)
    overhead_dir = os.path.join(args.out, "overhead")
    if "overhead" in wanted and os.path.isdir(overhead_dir):
        parts["overhead"] = overhead_section(overhead_dir)
    if not parts:
        print(f"isolation_report: nothing to report under {args.out} "
              "(expected isolation/limit, isolation/shares, isolation/priority or overhead/)",
              file=sys.stderr)
        return 1

    md_dir = os.path.dirname(os.path.abspath(args.md)) if args.md else os.getcwd()
    images = plots(parts, args.img_dir or os.path.join(args.out, "img"), md_dir)

    lines = []
    if any(k in parts for k in ("limit", "shares", "priority")):
        lines += header(info, "bench-isolation.sh")
        if "limit" in parts:
            lines += limit_markdown(parts["limit"], images)
        if "shares" in parts:
            lines += shares_markdown(parts["shares"], images)
        if "priority" in parts:
            lines += priority_markdown(parts["priority"], images)
    if "overhead" in parts:
        overhead_info = read_kv(os.path.join(overhead_dir, "info.txt"))
        lines += header(overhead_info, "bench-overhead.sh")
        if overhead_info.get("baseline"):
            lines += [f"**Against the shim at {overhead_info['baseline'][:7]}, not bare**: "
                      "each pair's \"bare\" process ran under that build (BASELINE_DIST) with "
                      "the same settings, so a ratio is this build's cost against that one's.", ""]
        lines += overhead_markdown(parts["overhead"])
    text = "\n".join(collapse_blank(lines)).rstrip() + "\n"
    if args.md:
        with open(args.md, "w") as f:
            f.write(text)
        print(f"isolation_report: wrote {args.md}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0


def collapse_blank(lines):
    out = []
    for line in lines:
        if line == "" and out and out[-1] == "":
            continue
        out.append(line)
    return out


if __name__ == "__main__":
    sys.exit(main())
