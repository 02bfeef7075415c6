/*!
The `gpuslice` command: run programs as tenants with a GPU memory quota and a compute share,
and see what every tenant holds and gets.

This binary is glue over the ledger crate ([`gpuslice_ledger`]): it writes quota files the
way a tenant's creator does, and reads usage files the way an observer does. It never links
the shim (`libgpuslice.so`); it preloads it into the commands it runs.

# `gpuslice run [--memory Q] [--compute-share PCT] [--compute-limit PCT] [--priority P] [--tenant NAME] [--gpu UUID|INDEX] [--dir DIR] [--shim PATH] -- CMD...`

Runs `CMD` with the shim preloaded, as a process of a tenant.

- **Tenant**: `--tenant NAME` (1 to 63 characters of `A-Z a-z 0-9 . _ -` that start and
  end with a letter or a digit, as a CDI device name must), or a new tenant `run-<pid>` of
  its own. A generated name never joins an existing tenant.
- **Ledger directory**: `--dir`, else `$GPUSLICE_DIR`, else `/run/gpuslice` if this process
  can write or create it, else `$XDG_RUNTIME_DIR/gpuslice`; otherwise an error asks for
  `--dir`. It is passed to the command as an absolute `GPUSLICE_DIR`.
- **Creating**: a tenant without a quota file is created: its quota is `--memory` (a
  Kubernetes quantity: `4Gi`, `512Mi`, `8G`, `1.5Gi`, bytes) on every GPU, or with `--gpu`
  on that GPU only (other GPUs unlimited); without `--memory`, unlimited. `--compute-share`
  and `--compute-limit` (percent, 0.1 to 100 with at most one decimal, an optional `%`:
  exactly what the shim accepts in `GPUSLICE_COMPUTE_SHARE` / `GPUSLICE_COMPUTE_LIMIT`) and
  `--priority` (`high`, `normal`, `low`) go into the quota's defaults: the shim applies them
  per tenant on every GPU (a `--gpu` entry carries them too). Unset, the tenant has no
  share, no limit and normal priority. `--gpu` takes a UUID (`GPU-...`), or an index in
  NVML's order (`nvidia-smi -L`'s, not necessarily CUDA's); either way NVML must list the
  GPU, or `run` refuses (exit 2): a quota on a GPU that is not there would limit nothing.
  `--gpu` only says where the quota applies; it does not hide the other GPUs from the
  command.
- **Joining**: a tenant that has a quota file is joined (another `gpuslice run --tenant
  same`, or a tenant made by someone else). Its quota is the ceiling: a `--memory` above it
  (its default limit, or its limit on the `--gpu` GPU) is a usage error naming both values;
  one below it is passed to the command as `GPUSLICE_MEMORY_LIMIT`, which the shim applies on
  every GPU (an environment variable has no per-GPU form). Likewise a `--compute-share` or
  `--compute-limit` above the quota's, or a `--priority` above it (low < normal < high), is
  a usage error naming both; a lower one is passed on as `GPUSLICE_COMPUTE_SHARE`,
  `GPUSLICE_COMPUTE_LIMIT` or `GPUSLICE_PRIORITY`, with a note on stderr saying what the
  command gets. A setting the quota leaves unset may be given freely.
- **Shim**: `--shim PATH`, else `$GPUSLICE_SHIM`, else `libgpuslice.so` next to the
  `gpuslice` executable, else `../lib/libgpuslice.so` relative to it. It is put first in
  `LD_PRELOAD`, before anything already there. Before the command starts, `run` proves it
  is the shim: an ELF shared object of this machine exporting `cuMemAlloc_v2`, `dlsym` and
  `gpuslice_ledger_layout_version`, whose value is the ledger layout this `gpuslice` writes,
  and one the dynamic loader preloads (`run` starts itself once, as the hidden
  `__shim-probe`, with the shim preloaded, and looks the marker up). Anything else is a
  usage error (exit 2): a file the loader ignores, or another library, would let the
  command run without limits.
- **Environment**: the command gets `GPUSLICE_TENANT`, `GPUSLICE_DIR` and, when lowered,
  `GPUSLICE_MEMORY_LIMIT`, `GPUSLICE_COMPUTE_SHARE`, `GPUSLICE_COMPUTE_LIMIT`,
  `GPUSLICE_PRIORITY`; inherited values of these are replaced (an inherited limit, share or
  priority with a note on stderr: `run` takes them from its flags), `GPUSLICE_SHIM` is
  removed, `GPUSLICE_LOG` passes through. Any other `GPUSLICE_` variable is refused before
  the command starts, as the shim would refuse it once the command used the GPU.
- **Signals**: SIGINT, SIGTERM and SIGHUP sent to `gpuslice` are forwarded to the command,
  except those the kernel sends to the whole process group (Ctrl-C at a terminal), which the
  command receives itself. `gpuslice` waits for the command either way.
- **Cleanup**: when the command exits, a run-created tenant (marked by a `created-by-run`
  file in its directory) is removed by the last `gpuslice run` of it to leave, if no
  process still holds a live slot in it. A tenant made by someone else is never removed. A
  run-created tenant left behind by a run that was killed with SIGKILL is removed and
  created afresh by the next run that enters it (the `tenancy` module explains the locks).

# `gpuslice status [--json] [--sample MS] [--dir DIR]`

Every tenant in the ledger, sorted by name: per GPU, the memory its live processes hold, its
limit, how many allocations were refused for being over it, its compute share, limit and
priority, the GPU time it was charged and how long its launches were throttled (both in
total), the share of the GPU it **gets**, and the live processes with their slot, PID (as
recorded, in the process's own PID namespace), memory and GPU time. Memory held by slots of
dead processes that nobody reclaimed yet is not counted. The ledger directory is found as
for `run`, but never created: one that exists but holds nothing yet is a ledger without
tenants, one that does not exist is a usage error (exit 2) that says so. A tenant whose
files are damaged is reported with its error and the others are still shown.

What a tenant gets is measured, not computed from its settings: `status` reads the ledger
twice, `--sample` milliseconds apart (default 250), and divides the GPU time each tenant was
charged in between (as the shim measures it) by the wall time in between. It says what
happened in that window only; `--sample 0` reads once and measures nothing. The compute
settings shown per GPU are those the tenant's live processes published, the ones they
enforce (the quota, lowered by their environment; the most restrictive when processes
differ), or the quota's when no process has published any.

The human output is a table of at most 80 columns, with a compute line under each GPU.
`--json` prints one document:

```json
{
  "version": 1,
  "ledger": "/run/gpuslice",
  "gets_window_ms": 250,
  "tenants": [
    {
      "name": "team-a",
      "memory_limit_bytes": 4294967296,
      "compute_share_percent": 30.0,
      "compute_limit_percent": null,
      "priority": "high",
      "live_processes": 2,
      "gpus": [
        {
          "uuid": "GPU-5f8c3a12-9b4e-4d7a-8c21-0e6f1a2b3c4d",
          "memory_used_bytes": 1342177280,
          "memory_limit_bytes": 4294967296,
          "oom_refusals": 0,
          "compute_share_percent": 30.0,
          "compute_limit_percent": null,
          "priority": "high",
          "compute_source": "published",
          "gpu_time_ns": 81234567890,
          "throttled_ns": 1200000000,
          "gets_percent": 29.8,
          "processes": [
            { "slot": 0, "pid": 4242, "memory_bytes": 1073741824, "gpu_time_ns": 61234567890 },
            { "slot": 1, "pid": 4250, "memory_bytes": 268435456, "gpu_time_ns": 20000000000 }
          ]
        }
      ]
    },
    { "name": "team-b", "error": "/run/gpuslice/tenants/team-b/quota is not a valid ..." }
  ]
}
```

| field | meaning |
|---|---|
| `version` | schema version, 1; raised only when a field changes meaning or is removed (fields may be added) |
| `ledger` | the ledger directory read |
| `gets_window_ms` | the wall time `gets_percent` was measured over (`--sample`, as it happened); `null` with `--sample 0` |
| `tenants[].name` | the tenant |
| `tenants[].error` | present only when the tenant's files could not be read; the fields below are then absent |
| `tenants[].memory_limit_bytes` | the quota's limit on GPUs without a limit of their own; `null` = unlimited (also when the tenant has no quota file) |
| `tenants[].compute_share_percent` | the quota's compute share, percent (30.0, 12.5); `null` = none |
| `tenants[].compute_limit_percent` | the quota's compute limit, percent; `null` = none (an idle GPU may be used whole) |
| `tenants[].priority` | the quota's priority, `high`, `normal` or `low`; `null` = not set (normal) |
| `tenants[].live_processes` | processes holding a live slot (they have used a GPU through the shim), with or without memory |
| `tenants[].gpus[]` | the GPUs the tenant's processes have used, in usage-file order, then GPUs its quota names |
| `gpus[].uuid` | `GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx` |
| `gpus[].memory_used_bytes` | the sum of `processes[].memory_bytes` |
| `gpus[].memory_limit_bytes` | the quota's limit on this GPU; `null` = unlimited. A process's own `GPUSLICE_MEMORY_LIMIT` may be lower and is not recorded in the ledger |
| `gpus[].oom_refusals` | allocations refused for being over the limit, since the GPU was first used by the tenant |
| `gpus[].compute_share_percent`, `gpus[].compute_limit_percent`, `gpus[].priority` | the settings the tenant enforces on this GPU (as above; `null` = none / normal) |
| `gpus[].compute_source` | `published`: what its live processes published (what they enforce); `quota`: no live process published any, so the quota's |
| `gpus[].gpu_time_ns` | GPU time charged to the tenant on this GPU since it first used it (departed processes included), as the shim measures it |
| `gpus[].throttled_ns` | wall time the tenant's launches waited for their share on this GPU, in total |
| `gpus[].gets_percent` | the share of this GPU's time the tenant received over `gets_window_ms`, percent with one decimal; `null` when not measured (`--sample 0`, or the GPU was not in the first reading) |
| `gpus[].processes[]` | live processes holding memory on this GPU: `slot` (0 to 63), `pid`, `memory_bytes`, `gpu_time_ns` |

# `gpuslice top [--dir DIR] [--interval MS]`

The figures of `status`, live in the terminal and grouped by GPU: for each tenant on a GPU,
its memory used and limit, a bar and the percentage of the limit, its compute share, limit
and priority, GETS (the share of the GPU's time it received since the previous refresh: GPU
time charged over wall time), THROTTLED (how long its launches waited, in total), its OOM
refusals, and its live processes (their count, and their PIDs on a wide terminal). Tenants that have not used
a GPU yet and damaged tenants (with their error) follow. The ledger is read again every
`--interval` milliseconds (default 250); a read that fails keeps the last figures on screen
and says why. `q`, Esc or Ctrl-C quits; the arrow keys, PgUp/PgDn and Home scroll. Below
100 columns LIMIT, PRIO, THROTTLED and the PIDs go; below 60 the bars and SHARE go too, GETS
is in whole percents and UUIDs are cut (`GPU-5f8c3a12…`). The terminal is given back
however it ends, a panic included. With a stdout that is not a terminal it exits 2 and
points to `gpuslice status`.

# `gpuslice metrics [--listen ADDR] [--once] [--dir DIR]`

Serves the ledger as Prometheus metrics on `GET /metrics` (text format 0.0.4, `Content-Type:
text/plain; version=0.0.4`), at `--listen` (default `127.0.0.1:10400`, not DCGM's exporter's
9400; port 0 picks a free port). It prints `gpuslice metrics: serving http://ADDR/metrics
...` on stdout once listening. `GET /healthz` answers 200 `ok` while the server runs;
`GET /readyz` 200 `ready` when the ledger can be read, else 503 with why, in one line.
Other paths are 404, other methods than `GET`/`HEAD` 405. The ledger is read afresh at
every scrape (an existing, empty ledger directory has no tenants); a scrape of a missing or
unreadable ledger has only `gpuslice_build_info`, `gpuslice_ready 0` and the GPUs; a
tenant whose files are damaged has no series at that scrape and is counted in
`gpuslice_ledger_errors`. At most 16 connections are served at once (more wait), one
request each; a request head must come within 10 seconds and the whole answer within 30.
`--once` prints the exposition to stdout and exits (2 if the ledger cannot be read).

| metric | type | labels | meaning |
|---|---|---|---|
| `gpuslice_memory_used_bytes` | gauge | tenant, GPU | memory held by the tenant's live processes on the GPU (as `status` counts it) |
| `gpuslice_memory_limit_bytes` | gauge | tenant, GPU | the tenant's quota on the GPU; no series when unlimited |
| `gpuslice_oom_refusals_total` | counter | tenant, GPU | allocations refused for being over the limit |
| `gpuslice_gpu_time_seconds_total` | counter | tenant, GPU | GPU time charged to the tenant (`gpus[].gpu_time_ns`); `rate()` of it is the share the tenant gets |
| `gpuslice_throttled_seconds_total` | counter | tenant, GPU | wall time its launches waited for their share (`gpus[].throttled_ns`) |
| `gpuslice_compute_share_ratio` | gauge | tenant, GPU | the compute share it enforces, 0 to 1; no series when none |
| `gpuslice_compute_limit_ratio` | gauge | tenant, GPU | the compute limit it enforces, 0 to 1; no series when none |
| `gpuslice_compute_priority` | gauge | tenant, GPU, `priority` | 1, with `priority` `high`, `normal` or `low` |
| `gpuslice_processes` | gauge | tenant | live processes of the tenant |
| `gpuslice_gpu_memory_total_bytes` | gauge | GPU | the GPU's memory, as NVML reports it (GPUs NVML lists) |
| `gpuslice_gpu_memory_quota_allocated_bytes` | gauge | GPU | the tenants' memory limits on the GPU, added up |
| `gpuslice_gpu_slices`, `gpuslice_gpu_slices_allocated` | gauge | GPU, `resource` | device plugin only: slices advertised, and held by its tenants |
| `gpuslice_gpu_healthy` | gauge | GPU | device plugin only: 1 healthy, 0 lost or a critical XID |
| `gpuslice_tenants` | gauge | `Hostname` | tenants in the ledger, readable or not |
| `gpuslice_ledger_errors` | gauge | `Hostname` | tenants whose files could not be read at this scrape |
| `gpuslice_unenforced_check_up`, `gpuslice_unenforced_processes` | gauge | `Hostname` | whether processes outside gpuslice's limits could be looked for, and how many there are |
| `gpuslice_unenforced_process_memory_bytes` | gauge | tenant, GPU, `pid` | memory of one such process |
| `gpuslice_ready` | gauge | `Hostname` | 1 when `/readyz` answers 200 |
| `gpuslice_pod_resources_up` | gauge | `Hostname` | device plugin only: 0 when the kubelet's pod resources API did not answer |
| `gpuslice_build_info` | gauge | `version`, `commit` | 1 |

The labels are those of DCGM's exporter, so that the series join with its own. "GPU" is
`gpu` (NVML's index), `UUID`, `device` (`nvidia<index>`), `modelName` and `Hostname` (the
node: `NODE_NAME`, else the host name); a GPU NVML does not list has only `UUID`.
"tenant" is `tenant`, `namespace`, `pod`, `container` and `Hostname`: the device plugin
fills `namespace`, `pod` and `container` from the kubelet's pod resources API with the
container its slices were given to; they are empty otherwise. Per-GPU series of a tenant
exist for the GPUs `status --json` lists for it (those its processes used, then those its
quota names).

# `gpuslice doctor [--dir DIR] [--shim PATH]`

Checks, one `OK` / `WARN` / `FAIL` line each: the shim (found as `run` finds it) is what
`run` accepts (the gpuslice shim of this ledger layout, preloaded by the dynamic loader); `libcuda.so.1` and
`libnvidia-ml.so.1` load and NVML lists the GPUs (UUID, total and free memory) — without a
driver or a GPU these are warnings; the ledger directory exists (missing, a failure where
`--dir` or `GPUSLICE_DIR` names it, since the shim refuses a `GPUSLICE_DIR` that does not
exist, and a warning at the default place, which `run` and the device plugin create; an
existing, empty one is a ledger without tenants yet), is writable (else which tenants'
usage files are), and every tenant's files can be read (each damaged tenant is a failure
with the ledger's error); no `GPUSLICE_` variable is set that the
shim would refuse (an unknown one, or a compute setting it cannot read). Exit 0 when nothing failed, 1 when something did.

# `gpuslice demo [--dir DIR] [--shim PATH] [--simulated] [--compute-seconds S] [--plot FILE.png]`

Two tenants, `demo-a` and `demo-b`, share GPU 0 under memory quotas (4 GiB and 8 GiB on a real
GPU, 1 GiB and 2 GiB on the simulated one) and compute shares of 30% and 70%, in two phases.
In each, every tenant runs this binary again as a hidden worker (`__demo-worker`) under the
shim, as `run` would start it.

- **Memory**: the worker creates a context, reads `cuMemGetInfo`, allocates chunks until
  `CUDA_ERROR_OUT_OF_MEMORY`, frees them and allocates once more. Progress is shown as it
  comes (a bar per tenant on a terminal; otherwise a plain line per event: the total the
  tenant sees, each quarter of its quota allocated, the refusal, allocating again), then a
  table: promised, seen as total, allocated before the refusal, the refusal, and whether
  allocating after freeing worked.
- **Compute**: the workers load `examples/ptx/spin.ptx` (compiled into the binary; a real
  driver JIT-compiles it) and launch `gpuslice_work` kernels (a fixed amount of work, which
  progresses only while the GPU runs their process) back to back on a stream of their own,
  four queued, reporting each kernel they see finish. First `demo-a` alone runs for 0.7 s
  (the trial), which sizes the kernels to take 2 ms on the GPU alone; then both run for
  `--compute-seconds` (default 4). The share each got is its finished kernels in the time
  both ran (less the first 300 ms and the last 50 ms), times their time alone, over that
  time: its part of what the GPU does for one alone. Progress shows the shares over the
  last half second (bars on a terminal, a plain line a second otherwise). `--plot FILE.png`
  draws them over time, titled with the simulated GPU when it ran on it (checked before the
  demo starts:
  a `.png` in an existing directory; its text uses the first TrueType font found under
  `~/.local/share/fonts`, `~/.fonts`, `/usr/share/fonts` or `/usr/local/share/fonts`, and
  without one the plot is drawn without text, with a warning).

It ends with a table per tenant: its memory quota, what happened at it, its promised share,
the share it got, and how long its launches were throttled (from the ledger), and a verdict
line, `verdict: PASS: ...` with the shares got, or `verdict: FAIL: ` and why.

- **GPU**: the real one when NVML lists a GPU (as `doctor` asks), unless `--simulated`;
  otherwise the simulated GPU, `libfakecuda.so` from `$GPUSLICE_FAKECUDA`, else next to the
  `gpuslice` executable, in `../lib` or in `deps/` relative to it, loaded by the workers as
  `libcuda.so.1` and `libnvidia-ml.so.1` with their own `FAKECUDA_STATE_DIR`. Neither: exit 2.
- **Ledger**: `--dir`, else a fresh temporary directory; the tenants are created as `run`
  creates them and removed afterwards. A `demo-a` or `demo-b` that already exists there is a
  usage error. **Shim**: as for `run`.
- **Exit**: 0 when each tenant saw its quota as the total, was refused at or below it, could
  allocate again, and got its share within 5 points; 1 with the reason otherwise.

# `gpuslice dra-driver [--node-name NAME] [FLAGS]`

The Kubernetes Dynamic Resource Allocation driver `gpuslice.dev` (library: the
`gpuslice-k8s` crate, module `dra`): publishes the node's ResourceSlice (one device per GPU
with capacities `memory` and `compute`, `allowMultipleAllocations`), registers with the
kubelet in `--registry-dir`, and serves the kubelet's DRA API (v1 and v1beta1) on
`--plugins-dir`/gpuslice.dev/dra.sock. `NodePrepareResources` reads the claim from the API
server (in a pod its service account, else `$KUBECONFIG`), creates the tenant `dra-<claim
uid>` with the memory and compute share the scheduler granted and the opaque
configuration's cap and priority, writes its CDI spec in `--cdi-dir`, and answers with
`nvidia.com/gpu=<uuid>` and `gpuslice.dev/gpu=dra-<uid>`; `NodeUnprepareResources` removes
the tenant once no process of it holds a live slot. Exit codes: 0 after SIGTERM or SIGINT,
2 for bad flags or no API server configuration.

# `gpuslice device-plugin [--config FILE] [--slices-per-gpu N] [FLAGS]`

The Kubernetes device plugin (kubelet device plugin API v1beta1, over the Unix sockets of
`--kubelet-dir`): every GPU NVML lists is cut into N slices, advertised as
`gpuslice.dev/gpu` (or as several resources that split each GPU's slices, from the config
file), with device IDs `GPU-<uuid>-slice-<i>`. `Allocate` of k slices creates the tenant
`GPU-<uuid>-slice-<lowest>` with k/N of each GPU's memory, a k/N compute share and the
resource's priority, writes `gpuslice.dev-gpu_<tenant>.json` (a CDI spec) in `--cdi-dir`,
and answers with the CDI devices `nvidia.com/gpu=<uuid>` and `gpuslice.dev/gpu=<tenant>`.
GPU health (NVML) is followed in `ListAndWatch`; a kubelet restart is followed by a new
registration; tenants are found again in the ledger after a restart of the plugin.
`--metrics-listen ADDR` serves what `gpuslice metrics` serves, with each tenant's pod
container (from the kubelet's pod resources API), the GPUs' slices and health added;
given as a flag, it is served from the start, so that `/healthz` answers and `/readyz`
says why while the config file is invalid (`/readyz` is 200 once the plugin hands out
slices and the ledger can be read). It logs to stderr (text,
coloured only on a terminal and without `NO_COLOR`; `--log-format json`: one JSON object a
line, with `timestamp`, `level` and `message`) and runs until SIGTERM or SIGINT (exit 0); a
bad flag is exit 2, but a config file that cannot be used is reported and read again until
it can. The config file is gpuslice's format or NVIDIA's device plugin's (`version: v1`,
`sharing.timeSlicing`), read as it is: its replicas are slices, its resource name is kept,
`failRequestsGreaterThanOne` refuses more than one slice per container, `sharing.mps` is
refused, and each setting it ignores is logged with why (`docs/config.md`). Settings,
behaviour, deployment: `docs/kubernetes.md`.

# `gpuslice config convert FILE`

Prints gpuslice's equivalent of NVIDIA's device plugin config `FILE` (YAML), with what
gpuslice adds in comments: each slice's memory quota and compute share, the resource's
priority and compute limit and their defaults, and the settings it ignores. `sharing.mps`
is converted to the slices that give what MPS's limits gave. A file in gpuslice's format
is printed as it is (a note on stderr). A file that cannot be read or is invalid is exit 2,
naming the file, the field and what was wrong.

# `gpuslice tenant create NAME [QUOTA FLAGS] [--dir DIR] [--shim PATH] [--cdi-dir DIR]`, `tenant flags NAME`, `tenant delete NAME [--force]`, `tenant list`

Tenants that outlive a command, for containers started with podman or Docker. `create`
makes the tenant with `run`'s quota flags (`--memory`, `--compute-share`,
`--compute-limit`, `--priority`, `--gpu`: one definition, so both take and refuse the same
values with the same messages, and make the same quota of them), under the tenant's entry lock, marked
`created-by-tenant-create`, with its usage, lock and pin files, and prints on stdout one
line of flags for `podman run` / `docker run`: a bind `--mount` per mount and `-e` per
variable of the CDI spec `cdi generate` would write for it (words a shell would split are
single-quoted). With `--cdi-dir DIR` it writes that spec as `DIR/gpuslice.dev-gpu_NAME.json`
and prints `--device gpuslice.dev/gpu=NAME`. A tenant that exists is exit 2. `flags` prints
the line of an existing tenant again. `delete` removes the tenant (and the spec `create`
wrote) unless a process of it holds a live slot, a `gpuslice run` is in it, the device
plugin made it, or its entry lock stays taken for 2 seconds (which runs hold for a moment,
and a process of the tenant could hold for good): then it says which and exits 1; `--force` removes it anyway, warning that
its containers' new processes will find no quota. `list` prints one row per tenant: its
memory limit, share, limit, priority, live processes and who made it (`tenant create`,
`gpuslice run`, `device plugin`), a line per GPU with a limit of its own, and the error of a
damaged one; a ledger directory that does not exist is exit 2.

# `gpuslice cdi generate [--tenant NAME]... [--dir DIR] [--shim PATH] [--format json|yaml] [--output FILE]`

Prints a CDI spec (`cdiVersion` 0.5.0, kind `gpuslice.dev/gpu`) with one device per tenant
(`--tenant`, or every tenant of the ledger): the shim mounted read-only and preloaded
(`--preload env` sets `LD_PRELOAD`; `ld-so-preload` mounts `<ledger>/ld.so.preload` at
`/etc/ld.so.preload`), the ledger mounted read-only with `GPUSLICE_DIR`, and per tenant
`GPUSLICE_TENANT` and its usage file mounted read-write (created if missing).
`--container-dir` and `--container-shim` say where containers see them when the paths
differ from the host's. A tenant without a quota file, a ledger without tenants (a spec
without devices is refused by runtimes) and a `--shim` that is not the gpuslice shim of
this ledger layout are usage errors (exit 2). Every spec is checked against CDI's rules
(kind, device names, no name twice) before it is written.

# `gpuslice completions bash|zsh|fish|elvish|powershell`

Prints the shell's completion script, e.g. `gpuslice completions bash >
/etc/bash_completion.d/gpuslice`.

# Exit codes

| code | meaning |
|---|---|
| 0 | success; for `run`, the command exited 0 |
| 1 | `doctor`: at least one check failed; `demo`: a tenant did not get what was promised; `tenant delete`: the tenant is in use and was kept |
| 2 | usage or configuration error: a bad flag or value, no usable ledger directory, no shim, no GPU for `demo`, an unknown `GPUSLICE_` variable, a `--memory`, `--compute-share`, `--compute-limit` or `--priority` above the quota of the tenant being joined, `top` without a terminal |
| 125 | gpuslice itself failed; for `run`, before it could start the command (a damaged ledger file, a failed system call); for `status`, only if its output cannot be written |
| 126 | `run`: the command was found but could not be executed |
| 127 | `run`: the command was not found |
| other | `run`: the command's exit status; 128 + S when signal S killed it |

A failure to remove the tenant after the command exited is reported on stderr and does not
change the exit code, which stays the command's.
*/
#![deny(missing_docs)]

mod cdi;
mod cli;
mod completions;
mod compute;
mod demo;
mod doctor;
mod dra;
mod exit;
mod gpu;
mod locate;
mod logging;
mod metrics;
mod plugin;
mod quantity;
mod quota_flags;
mod report;
mod run;
mod shim_check;
mod signals;
mod status;
mod tenancy;
mod tenant;
mod top;
mod unenforced;

use std::process::ExitCode;

use clap::Parser;

use crate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            let _ = err.print();
            // 0 for --help and --version, 2 (exit::USAGE) for errors.
            return ExitCode::from(u8::try_from(err.exit_code()).unwrap_or(exit::USAGE));
        }
    };
    let result = match cli.command {
        Command::Run(args) => run::run(args),
        Command::Status(args) => status::status(args),
        Command::Top(args) => top::top(args),
        Command::Metrics(args) => metrics::metrics(args),
        Command::Doctor(args) => doctor::doctor(args),
        Command::Completions(args) => completions::completions(&args),
        Command::Demo(args) => demo::demo(args),
        Command::DemoWorker(args) => demo::worker::worker(&args),
        Command::DevicePlugin(args) => plugin::device_plugin(args),
        Command::DraDriver(args) => dra::dra_driver(args),
        Command::Cdi(cli::CdiCommand::Generate(args)) => cdi::generate(&args),
        Command::Config(cli::ConfigCommand::Convert(args)) => plugin::convert::convert(&args),
        Command::Tenant(command) => tenant::tenant(command),
        Command::ShimProbe => Ok(shim_check::probe()),
    };
    match result {
        Ok(code) => ExitCode::from(code),
        Err(failure) => {
            eprintln!("gpuslice: {}", message(&failure.error));
            ExitCode::from(failure.status)
        }
    }
}

/// The error and its causes on one line, `: `-separated, without a cause whose text the
/// line already holds (the ledger's errors quote their operating-system error themselves).
fn message(error: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in error.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_line_does_not_repeat_a_cause_already_quoted() {
        let io = std::io::Error::from(std::io::ErrorKind::NotFound);
        let quoted = anyhow::Error::new(io).context(format!(
            "could not open /x: {}",
            std::io::Error::from(std::io::ErrorKind::NotFound)
        ));
        let error = quoted.context("no ledger");
        assert_eq!(
            message(&error),
            "no ledger: could not open /x: entity not found"
        );
    }
}
