#!/usr/bin/env python3
"""GPU workloads of different shapes, for scripts/bench-isolation.sh and bench-overhead.sh.

One process runs one workload. After its warm-up it creates READY_FILE (if given), waits
for GO_FILE (if given: the script starts the processes of one measurement together), then
prints

  start pid=<pid> at_ns=<t> shim=<0|1> mode=<mode>

and, while it runs, one line per synchronization or request:

  done at_ns=<t> iters=<n>               (loops: n work items finished so far)
  request at_ns=<t> latency_ns=<l>       (request modes: one per request)

then `end at_ns=<t>` and a `summary ...` line. Every t is CLOCK_MONOTONIC (shared by all
processes and by scripts/gpu/nvml_sampler.py), so logs of processes that ran together can
be compared over one window. The time before `start` (imports, CUDA initialization,
warm-up) is never measured.

Modes:
  torch-loop     bf16 SIZE² matmuls, synchronizing every SYNC_EVERY (1: every step)
  torch-streams  the same, spread round-robin over STREAMS created streams
  torch-graph    a CUDA graph of PER_GRAPH matmuls, replayed, synchronizing after each
  torch-mix      one SIZE² matmul every MIX_EVERY, SMALL² ones between, at most DEPTH in
                 flight (each waits for the one DEPTH before it): kernels of widely mixed
                 lengths in a shallow queue
  jax-chain      a jitted chain of CHAIN SIZE² bf16 matmuls, blocking on each call
  light          BURST matmuls + synchronize, then SLEEP_MS of sleep (a light user)
  requests       one SIZE² matmul + synchronize per request, INTERVAL_MS apart
  llama          a small Llama-style model (transformers, random weights, no download):
                 a NEW_TOKENS-token greedy generate per request, INTERVAL_MS apart

A run ends after SECONDS, after COUNT requests or iterations (--count), or once STOP_FILE
exists, whichever comes first. --device cpu runs the torch and JAX modes on the CPU (not
the graph and stream modes), with sizes capped (matrices 256, the model 2 layers of 128):
a dry run of the benchmark scripts on a machine without a GPU, never a measurement.
"""

import argparse
import collections
import math
import os
import signal
import sys
import time

# How often the stop file is looked at: a stat per step would add to launch-bound loops.
STOP_CHECK_NS = 50_000_000
GO_WAIT_S = 180


def now():
    return time.monotonic_ns()


def shim_loaded():
    """Whether libgpuslice.so is mapped into this process (1, 0, or -1: unknown)."""
    try:
        with open("/proc/self/maps") as maps:
            return int(any("libgpuslice" in line for line in maps))
    except OSError:
        return -1


class Run:
    """What every mode shares: the barrier, the end condition and the output lines."""

    def __init__(self, args):
        self.args = args
        self.out = sys.stdout
        self.deadline = None
        self.next_stop_check = 0
        self.count = 0
        self.latencies = []
        self.first_request_ns = None
        self.last_request_ns = None

    def begin(self):
        """Signals readiness, waits for the go, and starts the clock."""
        args = self.args
        shim = shim_loaded()
        if args.expect_shim is not None and shim != args.expect_shim:
            sys.exit(f"shapes: expected shim={args.expect_shim}, but /proc/self/maps says {shim}")
        if args.ready_file:
            with open(args.ready_file, "w"):
                pass
        if args.go_file:
            waited = time.monotonic() + GO_WAIT_S
            while not os.path.exists(args.go_file):
                if time.monotonic() > waited:
                    sys.exit(f"shapes: {args.go_file} did not appear within {GO_WAIT_S} s")
                time.sleep(0.002)
        start = now()
        self.deadline = start + int(args.seconds * 1e9)
        self.next_stop_check = start + STOP_CHECK_NS
        self.out.write(f"start pid={os.getpid()} at_ns={start} shim={shim} mode={args.mode}\n")
        self.out.flush()

    def going(self):
        t = now()
        if t >= self.deadline:
            return False
        if self.args.count and self.count >= self.args.count:
            return False
        if self.args.stop_file and t >= self.next_stop_check:
            self.next_stop_check = t + STOP_CHECK_NS
            if os.path.exists(self.args.stop_file):
                return False
        return True

    def done(self, iters):
        """`iters` more work items finished (at a synchronization)."""
        self.count += iters
        self.out.write(f"done at_ns={now()} iters={self.count}\n")

    def request(self, started_ns, finished_ns):
        latency = finished_ns - started_ns
        self.count += 1
        self.latencies.append(latency)
        if self.first_request_ns is None:
            self.first_request_ns = started_ns
        self.last_request_ns = finished_ns
        self.out.write(f"request at_ns={finished_ns} latency_ns={latency}\n")

    def pause(self):
        if self.args.interval_ms > 0:
            time.sleep(self.args.interval_ms / 1e3)

    def finish(self, **extra):
        self.out.write(f"end at_ns={now()}\n")
        words = [f"mode={self.args.mode}", f"count={self.count}"]
        if self.latencies:
            lat = sorted(self.latencies)
            n = len(lat)
            loop_ns = self.last_request_ns - self.first_request_ns
            words += [
                f"p50_ns={lat[n // 2]}",
                f"p99_ns={lat[min(n - 1, n * 99 // 100)]}",
                f"loop_ns={loop_ns}",
                f"request_ns={sum(lat) // n}",
            ]
        words += [f"{k}={v}" for k, v in extra.items()]
        self.out.write("summary " + " ".join(words) + "\n")
        self.out.flush()


# --- PyTorch ---------------------------------------------------------------------------


def torch_setup(args):
    import torch

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("shapes: torch sees no CUDA device")
    device = torch.device(args.device)
    # bf16 matmuls are slow on most CPUs; the CPU dry run uses float32.
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    torch.manual_seed(0)
    a = torch.randn(args.size, args.size, device=device, dtype=dtype)
    b = torch.randn(args.size, args.size, device=device, dtype=dtype) / math.sqrt(args.size)
    out = torch.empty_like(a)

    def sync():
        if args.device == "cuda":
            torch.cuda.synchronize()

    return torch, a, b, out, sync


def torch_loop(run, args):
    torch, a, b, out, sync = torch_setup(args)
    for _ in range(5):
        torch.matmul(a, b, out=out)
    sync()
    run.begin()
    while run.going():
        for _ in range(args.sync_every):
            torch.matmul(a, b, out=out)
        sync()
        run.done(args.sync_every)
    run.finish(size=args.size, sync_every=args.sync_every)


def torch_mix(run, args):
    torch, a, b, out, sync = torch_setup(args)
    small = min(args.small, args.size)
    sa = torch.randn(small, small, device=a.device, dtype=a.dtype)
    sb = torch.randn(small, small, device=a.device, dtype=a.dtype) / math.sqrt(small)
    sout = torch.empty_like(sa)
    cuda = args.device == "cuda"
    for i in range(2 * args.mix_every):
        if i % args.mix_every == 0:
            torch.matmul(a, b, out=out)
        else:
            torch.matmul(sa, sb, out=sout)
    sync()
    in_flight = collections.deque()
    launched = 0
    run.begin()
    while run.going():
        if launched % args.mix_every == 0:
            torch.matmul(a, b, out=out)
        else:
            torch.matmul(sa, sb, out=sout)
        launched += 1
        if cuda:
            event = torch.cuda.Event()
            event.record()
            in_flight.append(event)
            if len(in_flight) >= args.depth:
                in_flight.popleft().synchronize()
                run.done(1)
        else:
            run.done(1)
    sync()
    run.finish(size=args.size, small=small, mix_every=args.mix_every, depth=args.depth)


def torch_streams(run, args):
    if args.device != "cuda":
        sys.exit("shapes: torch-streams needs CUDA")
    torch, a, b, _, sync = torch_setup(args)
    streams = [torch.cuda.Stream() for _ in range(args.streams)]
    outs = [torch.empty_like(a) for _ in streams]
    sync()  # a and b were made on the default stream; the others must see them
    for stream, out in zip(streams, outs):
        with torch.cuda.stream(stream):
            torch.matmul(a, b, out=out)
    sync()
    run.begin()
    while run.going():
        for i in range(args.sync_every):
            with torch.cuda.stream(streams[i % len(streams)]):
                torch.matmul(a, b, out=outs[i % len(streams)])
        sync()
        run.done(args.sync_every)
    run.finish(size=args.size, streams=args.streams, sync_every=args.sync_every)


def torch_graph(run, args):
    if args.device != "cuda":
        sys.exit("shapes: torch-graph needs CUDA")
    torch, a, b, out, sync = torch_setup(args)
    # PyTorch's recipe: warm up on a side stream (cuBLAS sets up its workspace there),
    # then capture.
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        for _ in range(3):
            torch.matmul(a, b, out=out)
    torch.cuda.current_stream().wait_stream(side)
    sync()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(args.per_graph):
            torch.matmul(a, b, out=out)
    graph.replay()
    sync()
    run.begin()
    while run.going():
        graph.replay()
        sync()
        run.done(args.per_graph)
    run.finish(size=args.size, per_graph=args.per_graph)


def light(run, args):
    torch, a, b, out, sync = torch_setup(args)
    for _ in range(5):
        torch.matmul(a, b, out=out)
    sync()
    run.begin()
    while run.going():
        for _ in range(args.burst):
            torch.matmul(a, b, out=out)
        sync()
        run.done(args.burst)
        time.sleep(args.sleep_ms / 1e3)
    run.finish(size=args.size, burst=args.burst, sleep_ms=args.sleep_ms)


def requests(run, args):
    torch, a, b, out, sync = torch_setup(args)
    for _ in range(5):
        torch.matmul(a, b, out=out)
    sync()
    run.begin()
    while run.going():
        t0 = now()
        torch.matmul(a, b, out=out)
        sync()
        run.request(t0, now())
        run.pause()
    run.finish(size=args.size, interval_ms=args.interval_ms)


def llama_model(args):
    """A Llama-style model from a config, random weights: nothing is downloaded."""
    # The GPU machine has no network: never let the hub be tried (and time out).
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    if args.device == "cuda" and not torch.cuda.is_available():
        sys.exit("shapes: torch sees no CUDA device")
    config = LlamaConfig(
        vocab_size=args.vocab,
        hidden_size=args.hidden,
        intermediate_size=args.hidden * 11 // 4,
        num_hidden_layers=args.layers,
        num_attention_heads=max(1, args.hidden // 64),
        num_key_value_heads=max(1, args.hidden // 64),
        max_position_embeddings=2048,
    )
    torch.manual_seed(0)
    dtype = torch.bfloat16 if args.device == "cuda" else torch.float32
    # Built on the device directly: random initialization of ~170M parameters on the CPU
    # takes seconds.
    with torch.device(args.device):
        model = LlamaForCausalLM(config)
    model = model.to(dtype=dtype).eval()
    prompt = torch.randint(0, args.vocab, (1, args.prompt_tokens), device=args.device)
    mask = torch.ones_like(prompt)

    def generate():
        with torch.inference_mode():
            tokens = model.generate(
                input_ids=prompt,
                attention_mask=mask,
                max_new_tokens=args.new_tokens,
                min_new_tokens=args.new_tokens,
                do_sample=False,
                pad_token_id=0,
            )
        if args.device == "cuda":
            torch.cuda.synchronize()
        return tokens

    return generate


def llama(run, args):
    generate = llama_model(args)
    for _ in range(2):
        tokens = generate()
    got = tokens.shape[-1] - args.prompt_tokens
    if got != args.new_tokens:
        sys.exit(f"shapes: generate gave {got} new tokens, not {args.new_tokens}")
    run.begin()
    while run.going():
        t0 = now()
        generate()
        run.request(t0, now())
        run.pause()
    run.finish(hidden=args.hidden, layers=args.layers, new_tokens=args.new_tokens,
               interval_ms=args.interval_ms)


# --- JAX -------------------------------------------------------------------------------


def jax_chain(run, args):
    # Set before JAX starts: allocate on demand and keep to a small part of the GPU, so
    # that XLA does not take 75% of it up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", "0.1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # A GPU that fails to initialize must be an error, not a silent fallback to the CPU.
    os.environ.setdefault("JAX_PLATFORMS", "cuda" if args.device == "cuda" else "cpu")
    import jax
    import jax.numpy as jnp

    dtype = jnp.bfloat16 if args.device == "cuda" else jnp.float32
    ka, kb = jax.random.split(jax.random.PRNGKey(0))
    a = jax.random.normal(ka, (args.size, args.size), dtype=dtype)
    b = jax.random.normal(kb, (args.size, args.size), dtype=dtype) / math.sqrt(args.size)
    chain_length = args.chain

    @jax.jit
    def chain(x, w):
        for _ in range(chain_length):
            x = x @ w
        return x

    for _ in range(3):
        chain(a, b).block_until_ready()
    run.begin()
    while run.going():
        chain(a, b).block_until_ready()
        run.done(chain_length)
    run.finish(size=args.size, chain=chain_length, platform=jax.devices()[0].platform)


MODES = {
    "torch-loop": torch_loop,
    "torch-streams": torch_streams,
    "torch-mix": torch_mix,
    "torch-graph": torch_graph,
    "jax-chain": jax_chain,
    "light": light,
    "requests": requests,
    "llama": llama,
}


def parse(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=sorted(MODES))
    p.add_argument("--seconds", type=float, default=4.0)
    p.add_argument("--count", type=int, default=0, help="stop after this many iterations or requests")
    p.add_argument("--size", type=int, default=4096)
    p.add_argument("--sync-every", type=int, default=8)
    p.add_argument("--streams", type=int, default=2)
    p.add_argument("--per-graph", type=int, default=16)
    p.add_argument("--small", type=int, default=256)
    p.add_argument("--mix-every", type=int, default=20)
    p.add_argument("--depth", type=int, default=2)
    p.add_argument("--chain", type=int, default=8)
    p.add_argument("--burst", type=int, default=8)
    p.add_argument("--sleep-ms", type=float, default=1.0)
    p.add_argument("--interval-ms", type=float, default=2.0)
    p.add_argument("--hidden", type=int, default=1024)
    p.add_argument("--layers", type=int, default=8)
    p.add_argument("--vocab", type=int, default=32000)
    p.add_argument("--prompt-tokens", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--ready-file")
    p.add_argument("--go-file")
    p.add_argument("--stop-file")
    p.add_argument("--expect-shim", type=int, choices=[0, 1],
                   help="exit unless libgpuslice.so is (1) or is not (0) in this process")
    args = p.parse_args(argv)
    for name in ("seconds", "size", "sync_every", "streams", "per_graph", "small", "mix_every",
                 "depth", "chain", "burst",
                 "hidden", "layers", "vocab", "prompt_tokens", "new_tokens"):
        if getattr(args, name) <= 0:
            p.error(f"--{name.replace('_', '-')} must be positive")
    if args.count < 0 or args.sleep_ms < 0 or args.interval_ms < 0:
        p.error("--count, --sleep-ms and --interval-ms must not be negative")
    if args.device == "cpu":
        args.size = min(args.size, 256)
        args.hidden = min(args.hidden, 128)
        args.layers = min(args.layers, 2)
        args.vocab = min(args.vocab, 1000)
    return args


def main(argv=None):
    args = parse(sys.argv[1:] if argv is None else argv)
    # SIGTERM (the script's timeout) ends the run like the deadline: what was measured is
    # still written out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    run = Run(args)
    try:
        MODES[args.mode](run, args)
    finally:
        sys.stdout.flush()


if __name__ == "__main__":
    main()
