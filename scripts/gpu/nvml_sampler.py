#!/usr/bin/env python3
"""Samples NVML without the gpuslice shim until SIGTERM: device utilization and SM clock
every --period-ms, and the per-process utilization samples NVML keeps
(nvmlDeviceGetProcessUtilization), each line stamped with CLOCK_MONOTONIC. Used by
scripts/trace-shapes.sh and scripts/bench-isolation.sh; run it without LD_PRELOAD, so that
it reads what the GPU did, as nvidia-smi and DCGM do, not what the shim says.

  nvml_sampler.py --out FILE [--period-ms 20] [--device 0] [--ready FILE]

Lines:
  dev at_ns=<t> util=<%> sm_mhz=<MHz> [power_w=<W>]
  proc at_ns=<t> pid=<pid> ts_us=<NVML's sample time> sm=<%> sample_ns=<that time on
       CLOCK_MONOTONIC, or t where NVML's stamp is not wall-clock time>
  error at_ns=<t> what=<init|device|power|process> <the error>
The first lines say `info gpu=<name> driver=<version>`. A query that keeps failing is
given up after 20 failures in a row (one line says so), so that a driver without
per-process samples does not fill the file. NOT_FOUND from the per-process query is
"no new samples", not an error. --ready FILE is created once the first sample is written
(or NVML failed: then the file has one `error what=init` line and the exit status is 1).
"""
import argparse
import signal
import sys
import time

FLUSH_NS = 1_000_000_000
GIVE_UP_AFTER = 20
# NVML's per-process stamps are the CPU's wall clock in µs; one further than this from
# now is not, and the query's own time stands in for it.
WALL_CLOCK_SLACK_NS = 600 * 10**9


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True)
    p.add_argument("--period-ms", type=float, default=20.0)
    p.add_argument("--device", type=int, default=0)
    p.add_argument("--ready", help="created once the first sample is written")
    args = p.parse_args()
    if args.period_ms <= 0:
        p.error("--period-ms must be positive")
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))

    with open(args.out, "w") as out:
        try:
            import pynvml

            pynvml.nvmlInit()
            dev = pynvml.nvmlDeviceGetHandleByIndex(args.device)
        except Exception as error:  # pynvml's errors share no base class with ImportError
            out.write(f"error at_ns={time.monotonic_ns()} what=init {error!r}\n")
            out.flush()
            touch(args.ready)
            print(f"nvml_sampler: NVML unavailable: {error!r}", file=sys.stderr)
            return 1
        out.write(f"info gpu={word(safe(pynvml.nvmlDeviceGetName, dev))} "
                  f"driver={word(safe(pynvml.nvmlSystemGetDriverVersion))}\n")
        errors = Errors(out)
        last_ts = 0
        period_ns = int(args.period_ms * 1e6)
        next_ns = time.monotonic_ns()
        next_flush = next_ns + FLUSH_NS
        first = True
        while not stop:
            now = time.monotonic_ns()
            if errors.trying("device"):
                try:
                    util = pynvml.nvmlDeviceGetUtilizationRates(dev).gpu
                    mhz = pynvml.nvmlDeviceGetClockInfo(dev, pynvml.NVML_CLOCK_SM)
                    power = ""
                    if errors.trying("power"):
                        try:
                            power = f" power_w={pynvml.nvmlDeviceGetPowerUsage(dev) / 1000:.1f}"
                            errors.ok("power")
                        except pynvml.NVMLError as error:
                            errors.failed(now, "power", error)
                    out.write(f"dev at_ns={now} util={util} sm_mhz={mhz}{power}\n")
                    errors.ok("device")
                except pynvml.NVMLError as error:
                    errors.failed(now, "device", error)
            if errors.trying("process"):
                try:
                    samples = pynvml.nvmlDeviceGetProcessUtilization(dev, last_ts)
                    errors.ok("process")
                except pynvml.NVMLError as error:
                    # pynvml also raises NVMLError(SUCCESS) for an answer with no samples.
                    if getattr(error, "value", None) in (pynvml.NVML_ERROR_NOT_FOUND, pynvml.NVML_SUCCESS):
                        errors.ok("process")
                    else:
                        errors.failed(now, "process", error)
                    samples = []
                offset = time.time_ns() - time.monotonic_ns()
                newest = last_ts
                for s in samples:
                    if s.timeStamp <= last_ts:
                        continue  # seen at an earlier query
                    newest = max(newest, s.timeStamp)
                    sample_ns = s.timeStamp * 1000 - offset
                    if abs(sample_ns - now) > WALL_CLOCK_SLACK_NS:
                        sample_ns = now
                    out.write(f"proc at_ns={now} pid={s.pid} ts_us={s.timeStamp} sm={s.smUtil} "
                              f"sample_ns={sample_ns}\n")
                last_ts = newest
            if first:
                first = False
                out.flush()
                touch(args.ready)
            if now >= next_flush:
                out.flush()
                next_flush = now + FLUSH_NS
            next_ns += period_ns
            pause = next_ns - time.monotonic_ns()
            if pause > 0:
                time.sleep(pause / 1e9)
            else:
                next_ns = time.monotonic_ns()  # behind: skip, do not burst
    safe(pynvml.nvmlShutdown)
    return 0


class Errors:
    """Writes a failing query's errors, and gives the query up after GIVE_UP_AFTER in a row."""

    def __init__(self, out):
        self.out = out
        self.in_a_row = {}
        self.given_up = set()

    def trying(self, what):
        return what not in self.given_up

    def ok(self, what):
        self.in_a_row[what] = 0

    def failed(self, at_ns, what, error):
        n = self.in_a_row.get(what, 0) + 1
        self.in_a_row[what] = n
        if n <= 3:
            self.out.write(f"error at_ns={at_ns} what={what} {error}\n")
        if n >= GIVE_UP_AFTER:
            self.given_up.add(what)
            self.out.write(f"error at_ns={at_ns} what={what} given up after {n} failures in a row\n")


def safe(fn, *fn_args):
    try:
        return fn(*fn_args)
    except Exception:
        return None


def word(value):
    if isinstance(value, bytes):
        value = value.decode(errors="replace")
    return "unknown" if value is None else str(value).replace(" ", "_")


def touch(path):
    if path:
        with open(path, "w"):
            pass


if __name__ == "__main__":
    sys.exit(main())
