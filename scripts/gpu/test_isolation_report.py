#!/usr/bin/env python3
"""Tests of the isolation benchmark's parsing and figures, without a GPU (a few seconds):

  python3 scripts/gpu/test_isolation_report.py

- scripts/isolation_report.py on synthetic logs (scripts/gpu/fake_isolation_logs.py) finds
  the figures planted in them and marks each target met or missed;
- scripts/gpu/nvml_sampler.py, over a stand-in pynvml, writes what the report reads;
- a real scripts/gpu/shapes.py log (on the CPU, where PyTorch is installed) parses.
"""

import importlib.util
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


report = load("isolation_report", os.path.join(ROOT, "scripts", "isolation_report.py"))

FAKE_PYNVML = '''
import time
NVML_CLOCK_SM = 1
NVML_SUCCESS = 0
NVML_ERROR_NOT_FOUND = 6
class NVMLError(Exception):
    def __init__(self, value):
        self.value = value
class _Rates:
    gpu = 42
class _Sample:
    def __init__(self, pid, stamp, util):
        self.pid, self.timeStamp, self.smUtil = pid, stamp, util
_calls = [0]
def nvmlInit(): pass
def nvmlShutdown(): pass
def nvmlDeviceGetHandleByIndex(i): return i
def nvmlDeviceGetName(h): return b"Stand-in GPU"
def nvmlSystemGetDriverVersion(): return "580.00"
def nvmlDeviceGetUtilizationRates(h): return _Rates()
def nvmlDeviceGetClockInfo(h, which): return 1980
def nvmlDeviceGetPowerUsage(h): raise NVMLError(3)
def nvmlDeviceGetProcessUtilization(h, last_seen):
    _calls[0] += 1
    if _calls[0] % 2:
        raise NVMLError(NVML_ERROR_NOT_FOUND)
    return [_Sample(4242, time.time_ns() // 1000, 30), _Sample(4242, last_seen, 99)]
'''


class SyntheticLogs(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.out = cls.tmp.name
        subprocess.run([sys.executable, os.path.join(HERE, "fake_isolation_logs.py"), cls.out], check=True)

    @classmethod
    def tearDownClass(cls):
        cls.tmp.cleanup()

    def section(self, name):
        return os.path.join(self.out, "isolation", name)

    def test_limit_rows_carry_the_planted_utilization_and_verdicts(self):
        part = report.limit_section(self.section("limit"), 30)
        rows = {row["name"]: row for row in part["rows"]}
        self.assertEqual(len(rows), 8)
        self.assertAlmostEqual(rows["torch4096"]["util_limited"], 31, delta=0.01)
        self.assertAlmostEqual(rows["torch4096"]["util_bare"], 99, delta=0.01)
        self.assertEqual(rows["torch4096"]["verdict"], "met")
        self.assertAlmostEqual(rows["jax4096"]["util_limited"], 35, delta=0.01)
        self.assertEqual(rows["jax4096"]["verdict"], "**missed**")
        self.assertAlmostEqual(rows["torch4096"]["of_bare"], 0.4, delta=0.01)
        self.assertAlmostEqual(rows["torch4096"]["clock_limited"], 1980, delta=0.01)
        # The two processes of one tenant count together.
        self.assertAlmostEqual(rows["procs4096"]["proc_limited"], 30, delta=0.01)
        self.assertAlmostEqual(rows["procs4096"]["of_bare"], 0.4, delta=0.01)
        self.assertEqual(rows["light2048"]["verdict"], "met")
        self.assertAlmostEqual(rows["light2048"]["of_bare"], 0.99, delta=0.005)

    def test_shares_are_judged_by_each_tenants_throughput_not_nvml_per_process(self):
        # Time-slicing, NVML gives each process about the device's utilization: the
        # 75% tenant's 97% there does not make it meet its share.
        part = report.shares_section(self.section("shares"))
        rows = {row["tenant"]: row for row in part["rows"]}
        self.assertAlmostEqual(rows["s25"]["of_solo"], 0.26, delta=0.01)
        self.assertEqual(rows["s25"]["verdict"], "met (by throughput)")
        self.assertAlmostEqual(rows["s75"]["proc_util"], 97, delta=0.01)
        self.assertAlmostEqual(rows["s75"]["of_solo"], 0.70, delta=0.01)
        self.assertEqual(rows["s75"]["verdict"], "**missed** (by throughput)")
        self.assertNotIn("verdict", rows["bare_a"])

    def test_priority_compares_with_the_solo_requests_and_the_neighbours_solo(self):
        part = report.priority_section(self.section("priority"))
        cases = {case["name"]: case for case in part["cases"]}
        requests = {row["run"]: row for row in cases["requests"]["rows"]}
        self.assertEqual(requests["alone, no shim"]["p50"], 100_000)
        self.assertEqual(requests["alone, no shim"]["p99"], 400_000)
        high = requests["shim: high beside low"]
        self.assertAlmostEqual(high["x50"], 1.8, delta=0.001)
        self.assertAlmostEqual(high["x99"], 1.75, delta=0.001)
        self.assertAlmostEqual(high["neighbour"], 0.60, delta=0.01)
        self.assertEqual(high["verdict"], "met")
        llama = {row["run"]: row for row in cases["llama"]["rows"]}
        self.assertAlmostEqual(llama["shim: high beside low"]["neighbour"], 0.30, delta=0.01)
        self.assertEqual(llama["shim: high beside low"]["verdict"], "**missed**")
        self.assertNotIn("verdict", llama["beside the 4096² loop, no shim"])

    def test_overhead_pairs_give_a_median_ratio_and_interval(self):
        part = report.overhead_section(os.path.join(self.out, "overhead"))
        rows = {(row["case"], row["metric"]): row for row in part["rows"]}
        launch = rows[("driver-none", "launch_ns")]
        self.assertEqual(launch["pairs"], 10)
        self.assertTrue(1.002 <= launch["low"] <= launch["ratio"] <= launch["high"] <= 1.006)
        self.assertEqual(launch["verdict"], "met")
        alloc = rows[("driver-none", "alloc_free_pair_ns")]
        self.assertAlmostEqual(alloc["ratio"], 1.05, delta=0.001)
        self.assertEqual(alloc["verdict"], "**missed**")
        self.assertNotIn("verdict", rows[("driver-none", "spin10us_per_kernel_ns")])
        # The failed shim run leaves its pair out, and is listed.
        self.assertNotIn(("hf-share50", "request_ns"), rows)
        self.assertEqual(part["failed"], [("hf-share50", "shim", "1")])

    def test_markdown_names_every_section_and_links_what_it_drew(self):
        md = os.path.join(self.out, "report.md")
        img = os.path.join(self.out, "img")
        self.assertEqual(report.main([self.out, "--md", md, "--img-dir", img]), 0)
        with open(md) as f:
            text = f.read()
        for title in ("#### Limit 30%", "#### Shares 25/75", "#### Priority", "#### What the shim costs"):
            self.assertIn(title, text)
        self.assertIn("| PyTorch 4096² bf16 matmuls, sync every 8 | 99.0% → 31.0% |", text)
        for png in os.listdir(img) if os.path.isdir(img) else []:
            self.assertIn(f"](img/{png})", text)


    def test_pids_that_nvml_does_not_share_with_the_logs_are_said(self):
        part = report.shares_section(self.section("shares"))
        self.assertEqual(report.nvml_notes(part["nvml"], part["dir"]), [""])
        with tempfile.TemporaryDirectory() as tmp:
            for name in os.listdir(self.section("shares")):
                with open(os.path.join(self.section("shares"), name)) as f:
                    text = f.read()
                if name == "nvml.log":
                    text = text.replace(" pid=1", " pid=9")
                with open(os.path.join(tmp, name), "w") as f:
                    f.write(text)
            part = report.shares_section(tmp)
            self.assertIsNone(part["rows"][0]["proc_util"])
            self.assertIn("PID namespace", " ".join(report.nvml_notes(part["nvml"], tmp)))


class Sampler(unittest.TestCase):
    def test_sampler_output_is_what_the_report_reads(self):
        with tempfile.TemporaryDirectory() as tmp:
            with open(os.path.join(tmp, "pynvml.py"), "w") as f:
                f.write(FAKE_PYNVML)
            out = os.path.join(tmp, "out")
            ready = os.path.join(tmp, "ready")
            env = dict(os.environ, PYTHONPATH=tmp)
            before = time.monotonic_ns()
            os.mkdir(out)
            sampler = subprocess.Popen(
                [sys.executable, os.path.join(HERE, "nvml_sampler.py"), "--out",
                 os.path.join(out, "nvml.log"), "--period-ms", "10", "--ready", ready], env=env)
            try:
                deadline = time.monotonic() + 20
                while not os.path.exists(ready) and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(0.3)
            finally:
                sampler.send_signal(signal.SIGTERM)
                self.assertEqual(sampler.wait(timeout=20), 0)
            after = time.monotonic_ns()
            nvml = report.Nvml(out)
            self.assertGreater(len(nvml.device), 5)
            self.assertEqual(nvml.util(before, after), 42)
            self.assertEqual(nvml.clock(before, after), 1980)
            self.assertIsNone(nvml.power(before, after))  # NVML refused: left empty
            self.assertGreater(len(nvml.proc), 0)
            # The stamps were moved onto CLOCK_MONOTONIC, and old samples dropped.
            self.assertEqual(nvml.process_util([4242], before, after), 30)
            self.assertEqual(nvml.info["gpu"], "Stand-in_GPU")
            self.assertIn("power", nvml.errors)


def torch_installed():
    return importlib.util.find_spec("torch") is not None


class ShapesLog(unittest.TestCase):
    @unittest.skipUnless(torch_installed(), "PyTorch is not installed")
    def test_a_real_workload_log_parses(self):
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "loop.log")
            with open(path, "w") as f:
                subprocess.run([sys.executable, os.path.join(HERE, "shapes.py"), "torch-loop",
                                "--device", "cpu", "--size", "64", "--seconds", "1.5",
                                "--expect-shim", "0"], stdout=f, check=True)
            log = report.Log(path)
            self.assertTrue(log.complete)
            self.assertEqual(log.pid is not None, True)
            self.assertGreater(len(log.done), 10)
            win = report.window([log])
            self.assertIsNotNone(win)
            self.assertGreater(report.rate(log, *win), 0)


class Figures(unittest.TestCase):
    def test_rate_counts_only_what_finished_inside_the_window(self):
        class FakeLog:
            done = [(1 * 10**9, 8), (2 * 10**9, 16), (3 * 10**9, 24), (4 * 10**9, 32)]

        self.assertEqual(report.rate(FakeLog, 1 * 10**9, 3 * 10**9), 8.0)
        self.assertEqual(report.rate(FakeLog, 5 * 10**9, 6 * 10**9), 0.0)

    def test_percentile_is_nearest_rank(self):
        values = list(range(1, 101))
        self.assertEqual(report.percentile(values, 0.5), 51)
        self.assertEqual(report.percentile(values, 0.99), 100)
        self.assertIsNone(report.percentile([], 0.5))


if __name__ == "__main__":
    unittest.main()
