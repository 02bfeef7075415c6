#!/usr/bin/env python3
"""Samples NVML without the gpuslice shim until SIGTERM: device utilization and SM clock
every --period-ms, and the per-process utilization samples NVML keeps
(nvmlDeviceGetProcessUtilization), each line stamped with CLOCK_MONOTONIC.

  nvml_sampler.py --out FILE [--period-ms 20] [--device 0]

Lines: `dev at_ns=<t> util=<%> sm_mhz=<MHz>` and `proc at_ns=<t> pid=<pid> ts_us=<NVML's
sample time> sm=<%>`.
"""
import argparse
import signal
import sys
import time

import pynvml


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--period-ms", type=float, default=20.0)
    p.add_argument("--device", type=int, default=0)
    args = p.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    pynvml.nvmlInit()
    dev = pynvml.nvmlDeviceGetHandleByIndex(args.device)
    last_ts = 0
    with open(args.out, "w") as out:
        while not stop:
            now = time.monotonic_ns()
            try:
                util = pynvml.nvmlDeviceGetUtilizationRates(dev).gpu
                mhz = pynvml.nvmlDeviceGetClockInfo(dev, pynvml.NVML_CLOCK_SM)
                out.write(f"dev at_ns={now} util={util} sm_mhz={mhz}\n")
            except pynvml.NVMLError as error:
                out.write(f"error at_ns={now} what=device {error}\n")
            try:
                for s in pynvml.nvmlDeviceGetProcessUtilization(dev, last_ts):
                    out.write(f"proc at_ns={now} pid={s.pid} ts_us={s.timeStamp} sm={s.smUtil}\n")
                    last_ts = max(last_ts, s.timeStamp)
            except pynvml.NVMLError as error:
                if "Not Found" not in str(error):
                    out.write(f"error at_ns={now} what=process {error}\n")
            time.sleep(args.period_ms / 1e3)
    pynvml.nvmlShutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
