//! The command line: subcommands and flags (clap derive), with the help texts users read.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gpuslice_ledger::{Priority, TenantName};

use crate::compute::{parse_percent_arg, parse_priority_arg};
use crate::quantity::parse_memory_arg;

/// Exit codes, as `--help` lists them.
const EXIT_CODES: &str = "\
Exit codes:
  0    success (run: the command's own status is passed through)
  1    doctor: at least one check failed; demo: a tenant did not get its quota;
       tenant delete: the tenant is in use and was kept
  2    usage or configuration error (a bad flag or value, no ledger directory,
       no shim, a setting above the quota of the tenant being joined)
  125  gpuslice itself failed (run: before it could start the command)
  126  the command was found but could not be executed
  127  the command was not found
  N    run: the command's exit status; 128+S when a signal S killed it";

/// Let containers and programs share one NVIDIA GPU under memory quotas and compute shares.
#[derive(Debug, Parser)]
#[command(name = "gpuslice", version, after_help = EXIT_CODES)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a command as a tenant with a GPU memory quota and compute share.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Show every tenant's GPU memory and GPU time: used, limits, shares, processes.
    #[command(after_help = STATUS_HELP)]
    Status(StatusArgs),
    /// Watch every tenant's GPU memory and GPU time live, per GPU (q quits).
    #[command(after_help = TOP_HELP)]
    Top(TopArgs),
    /// Serve the ledger as Prometheus metrics (or print them once).
    Metrics(MetricsArgs),
    /// Check the shim, the driver, the ledger and the environment.
    #[command(after_help = DOCTOR_HELP)]
    Doctor(DoctorArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Watch two tenants share one GPU: memory quotas, then compute shares.
    #[command(after_help = DEMO_HELP)]
    Demo(DemoArgs),
    /// Kubernetes device plugin: advertise GPU slices to the kubelet, one tenant each.
    #[command(name = "device-plugin", after_help = DEVICE_PLUGIN_HELP)]
    DevicePlugin(DevicePluginArgs),
    /// Kubernetes DRA driver gpuslice.dev: GPUs with memory and compute capacities.
    #[command(name = "dra-driver", after_help = DRA_DRIVER_HELP)]
    DraDriver(DraDriverArgs),
    /// Container Device Interface specs that inject the shim and a tenant.
    #[command(subcommand)]
    Cdi(CdiCommand),
    /// The device plugin's config file: NVIDIA's format as gpuslice's.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Tenants that outlive a command, for podman and Docker: create, delete, list.
    #[command(subcommand)]
    Tenant(TenantCommand),
    /// One tenant's program of `demo` (run by `demo` itself, under the shim).
    #[command(name = "__demo-worker", hide = true)]
    DemoWorker(DemoWorkerArgs),
    /// Says whether the shim is preloaded (run by `run` itself, with the shim preloaded).
    #[command(name = "__shim-probe", hide = true)]
    ShimProbe,
}

/// How `run` treats tenants and the environment, after the flags in `--help`. Flag help
/// stays on one line each (clap wraps nothing without its `wrap_help` feature), so the
/// details are here, wrapped by hand to 80 columns.
const RUN_HELP: &str = "\
Defaults:
  --memory         unlimited (usage is still recorded)
  --compute-share  none: the tenant splits what shares leave unguaranteed
  --compute-limit  none: the tenant may use an idle GPU whole
  --priority       normal
  --tenant         run-PID: a new tenant of its own
  --gpu            every GPU; a UUID (GPU-xxxxxxxx-...) or an index of
                   nvidia-smi -L, which NVML must list
  --dir            $GPUSLICE_DIR, else /run/gpuslice if writable, else
                   $XDG_RUNTIME_DIR/gpuslice
  --shim           $GPUSLICE_SHIM, else libgpuslice.so next to this program,
                   else ../lib/libgpuslice.so relative to it

Percentages are 0.1 to 100 with at most one decimal (30, 12.5, 30%), as the
shim reads GPUSLICE_COMPUTE_SHARE and GPUSLICE_COMPUTE_LIMIT. The share is the
part of the GPU's time the tenant is guaranteed while others want the GPU too;
the limit caps it even on an idle GPU; a high priority makes other tenants
keep little work queued while this one is active, and none when its work comes
at regular intervals and the next is due (never below their own share). They
apply on every GPU
(--gpu places --memory only). Both are fractions of the GPU's time, the time
its kernels run: what nvidia-smi's utilization and DCGM's GPU_UTIL report, not
of its throughput (a GPU held to 30% of its time clocks higher than a
saturated one, so it may do 36% of the saturated work). A tenant that uses
less than its limit is not slowed.

The shim must be the gpuslice shim of this ledger layout, and one the dynamic
loader preloads: run checks both before the command starts.

The command runs with the shim preloaded (before any LD_PRELOAD it had) and with
GPUSLICE_TENANT, GPUSLICE_DIR and, when it lowers the tenant's quota,
GPUSLICE_MEMORY_LIMIT, GPUSLICE_COMPUTE_SHARE, GPUSLICE_COMPUTE_LIMIT or
GPUSLICE_PRIORITY set; inherited values of these are replaced (the flags say
what the command gets), GPUSLICE_LOG passes through, and any other GPUSLICE_
variable is refused (as the shim would refuse it).

A tenant that does not exist is created with the flags as its quota (--memory
on every GPU, or with --gpu on that GPU only) and removed when the last run of
it exits and no process of it still holds a slot in the ledger. A tenant that
exists is joined: its quota is the ceiling, and each flag may only lower it
for this command (a higher value is refused, naming both).

Exit codes:
  0..255  the command's exit status; 128+S when a signal S killed it
  2       usage or configuration error
  125     gpuslice failed before it could run the command
  126     the command was found but could not be executed
  127     the command was not found";

/// The quota flags `run` and `tenant create` share: one definition, so that both accept
/// and refuse exactly the same values with the same messages; [`QuotaFlags::request`]
/// (`quota_flags.rs`) checks what clap cannot and makes the tenant's quota of them.
#[derive(Debug, Default, Args)]
pub struct QuotaFlags {
    /// Memory quota per GPU: 4Gi, 512Mi, 8G, 1.5Gi, bytes
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory_arg)]
    pub memory: Option<u64>,

    /// Guaranteed share of GPU time under contention, in percent: 30, 12.5
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent_arg)]
    pub compute_share: Option<u32>,

    /// Most GPU time the tenant may use even when the GPU is idle, in percent
    #[arg(long, value_name = "PERCENT", value_parser = parse_percent_arg)]
    pub compute_limit: Option<u32>,

    /// Ordering against other tenants: high, normal or low
    #[arg(long, value_name = "PRIORITY", value_parser = parse_priority_arg)]
    pub priority: Option<Priority>,

    /// Apply --memory to this GPU only (a UUID or an index NVML lists)
    #[arg(long, value_name = "UUID|INDEX", requires = "memory")]
    pub gpu: Option<String>,
}

/// `gpuslice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    pub quota: QuotaFlags,

    /// Tenant to create or join
    #[arg(long, value_name = "NAME", value_parser = parse_tenant)]
    pub tenant: Option<TenantName>,

    /// Ledger directory
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Shim library (libgpuslice.so)
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,

    /// The command and its arguments (after --, or after the flags)
    #[arg(
        value_name = "COMMAND",
        required = true,
        num_args = 1..,
        trailing_var_arg = true
    )]
    pub command: Vec<OsString>,
}

/// How `status` measures the share each tenant gets, after the flags in `--help`.
const STATUS_HELP: &str = "\
GETS is the share of the GPU's time a tenant actually received: the GPU time
its processes were charged (as the shim measures it) over the wall time between
two readings of the ledger, --sample MS apart (default 250; 0 reads once and
shows no GETS). It is what happened in that short window, not an average over
the tenant's life: a tenant that was idle then gets 0%. GPU TIME and THROTTLED
are totals since the tenant first used the GPU. SHARE, LIMIT and PRIORITY are
those the tenant's live processes enforce (the quota, lowered by their
environment), or the quota's when none is running.";

/// `gpuslice status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (schema: see the README)
    #[arg(long)]
    pub json: bool,

    /// Milliseconds between the two readings that measure GETS (0: one reading, no GETS)
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 250,
        value_parser = clap::value_parser!(u64).range(0..=60_000)
    )]
    pub sample: u64,

    /// Ledger directory [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `gpuslice metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Address to serve /metrics, /healthz and /readyz on (port 0: any free port)
    // 10400, not DCGM's 9400, so that both run on a GPU node; outside Prometheus' exporter
    // range 9100-9999, which is all taken, and away from the kubelet's, kube-proxy's and
    // the control plane's 10248-10260. The kustomize base serves on the same port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:10400")]
    pub listen: String,

    /// Print the metrics once to stdout instead of serving them
    #[arg(long, conflicts_with = "listen")]
    pub once: bool,

    /// Ledger directory [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `doctor`'s exit codes.
const DOCTOR_HELP: &str = "\
Each line says OK, WARN or FAIL. A machine without a GPU is a WARN.

Exit codes:
  0  nothing failed (warnings allowed)
  1  at least one check failed
  2  usage error";

/// `gpuslice doctor`.
#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// Ledger directory [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Shim library to check [default: as for run]
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,
}

/// What `demo` does, after the flags in `--help`.
const DEMO_HELP: &str = "\
Two tenants, demo-a and demo-b, share GPU 0 in two phases, each ending with a
table of what each tenant was promised and what it got:

  memory   each allocates GPU memory side by side until refused, then frees it
           and allocates again. Quotas: 1 GiB and 2 GiB on the simulated GPU,
           4 GiB and 8 GiB on a real one.
  compute  both launch spin kernels back to back for a few seconds, with
           compute shares of 30% and 70%. What each got is measured from its
           own kernels: how many finished in the time both ran, times their
           length, over that time.

The simulated GPU (libfakecuda.so: 80 GiB, contexts of 64 MiB) is used with
--simulated or when no NVIDIA GPU answers; it is found through
$GPUSLICE_FAKECUDA, else next to this program, in ../lib or in deps/.

Exit codes:
  0  both tenants got what they were promised (shares within 5 points)
  1  a tenant did not (the reason is printed)
  2  usage or configuration error (no shim, no GPU and no simulated GPU)";

/// `gpuslice demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// Ledger directory [default: a fresh temporary one]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Shim library (libgpuslice.so) [default: as for run]
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,

    /// Use the simulated GPU even when a real one is there
    #[arg(long)]
    pub simulated: bool,

    /// Seconds both tenants run kernels in the compute phase
    #[arg(
        long,
        value_name = "SECONDS",
        default_value_t = 4,
        value_parser = clap::value_parser!(u64).range(2..=600)
    )]
    pub compute_seconds: u64,

    /// Also draw each tenant's share over time into this PNG file
    #[arg(long, value_name = "FILE.png")]
    pub plot: Option<PathBuf>,
}

/// `gpuslice __demo-worker`: what one tenant of the demo does.
#[derive(Debug, Args)]
pub struct DemoWorkerArgs {
    /// What to show
    #[arg(long, value_enum, default_value = "memory")]
    pub phase: DemoPhase,

    /// Bytes per allocation (memory phase)
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory_arg, default_value = "64Mi")]
    pub chunk: u64,

    /// Stop, unrefused, once this much is allocated (memory phase)
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory_arg, default_value = "1Ti")]
    pub give_up_at: u64,

    /// Milliseconds to keep launching kernels (compute phase)
    #[arg(long, value_name = "MS", default_value_t = 3000)]
    pub for_ms: u64,

    /// Rounds of work per kernel (compute phase)
    #[arg(long, value_name = "N", default_value_t = 20_000)]
    pub rounds: u64,

    /// Kernels kept queued at once (compute phase)
    #[arg(long, value_name = "K", default_value_t = 4, value_parser = clap::value_parser!(u64).range(1..=64))]
    pub depth: u64,

    /// After printing total=, wait for a line on stdin before allocating
    #[arg(long)]
    pub start_on_stdin: bool,

    /// Milliseconds to wait after each allocation, so that people can watch
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub pause_ms: u64,
}

/// The phases of the demo.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoPhase {
    /// Allocate until refused, free, allocate again.
    Memory,
    /// Launch spin kernels back to back, reporting each one that finished.
    Compute,
}

/// `gpuslice completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

/// What `top` shows, after the flags in `--help`.
const TOP_HELP: &str = "\
Per GPU and tenant: memory used / limit, OOM refusals, the compute share,
limit and priority the tenant enforces, GETS (the share of the GPU's time it
received since the previous refresh: GPU time charged over wall time), the
time its launches waited for credit (THROTTLED, in total) and its processes.
Narrow terminals drop columns. q, Esc or Ctrl-C quits; arrows and PgUp/PgDn
scroll.";

/// `gpuslice top`.
#[derive(Debug, Args)]
pub struct TopArgs {
    /// Ledger directory [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Milliseconds between refreshes
    #[arg(
        long,
        value_name = "MS",
        default_value_t = 250,
        value_parser = clap::value_parser!(u64).range(10..=3_600_000)
    )]
    pub interval: u64,
}

/// What `device-plugin` does, after the flags in `--help`.
const DEVICE_PLUGIN_HELP: &str = "\
Every GPU NVML lists is cut into N slices (--slices-per-gpu, default 4) and
advertised to the kubelet as gpuslice.dev/gpu. A container that asks for k
slices gets a tenant with k/N of the GPU's memory and a k/N share of its time,
a CDI spec in --cdi-dir, and the CDI devices nvidia.com/gpu=<uuid> and
gpuslice.dev/gpu=<tenant>. Flags override the --config file (YAML, see
docs/kubernetes.md), which may also be NVIDIA's device plugin config (version:
v1, sharing.timeSlicing), read as it is (docs/config.md). A config file that
cannot be used is reported and read again every 2 seconds; the plugin never
exits over it.

Exit codes:
  0  stopped by SIGTERM or SIGINT
  2  usage error (a bad flag, or no shim)";

/// `gpuslice device-plugin`: the plugin's settings, and how it logs.
#[derive(Debug, Args)]
pub struct DevicePluginArgs {
    #[command(flatten)]
    pub plugin: gpuslice_k8s::device_plugin::Args,

    /// Log level: error, warn, info, debug, trace
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: tracing::Level,

    /// Log lines as text (coloured only on a terminal) or as JSON objects
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
}

/// What `dra-driver` does, after the flags in `--help`.
const DRA_DRIVER_HELP: &str = "\
Publishes this node's GPUs as a ResourceSlice of the driver gpuslice.dev (one
device per GPU, capacities memory and compute, shareable by several claims),
registers with the kubelet through --registry-dir, and prepares the claims of
the node's pods: each claim becomes a tenant (dra-<claim uid>) whose quota is
the memory and compute share the scheduler granted it, with a CDI spec in
--cdi-dir. The API server is found as kubectl finds it: in a pod, its service
account; elsewhere $KUBECONFIG or ~/.kube/config. See docs/kubernetes.md.";

/// `gpuslice dra-driver`.
#[derive(Debug, Args)]
pub struct DraDriverArgs {
    /// This node's name [default: $NODE_NAME]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,

    /// Ledger directory on the host [default: /run/gpuslice]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// The ledger directory as containers see it [default: as on the host]
    #[arg(long, value_name = "DIR")]
    pub container_dir: Option<PathBuf>,

    /// The shim on the host [default: as for run]
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,

    /// The shim as containers see it [default: as on the host]
    #[arg(long, value_name = "PATH")]
    pub container_shim: Option<PathBuf>,

    /// How containers preload the shim
    #[arg(long, value_enum, default_value = "env")]
    pub preload: gpuslice_k8s::cdi::Preload,

    /// Where CDI specs of claims are written
    #[arg(long, value_name = "DIR", default_value = "/var/run/cdi")]
    pub cdi_dir: PathBuf,

    /// The kubelet's plugin directory (the socket goes in gpuslice.dev/)
    #[arg(long, value_name = "DIR", default_value = "/var/lib/kubelet/plugins")]
    pub plugins_dir: PathBuf,

    /// The kubelet's plugin registration directory
    #[arg(
        long,
        value_name = "DIR",
        default_value = "/var/lib/kubelet/plugins_registry"
    )]
    pub registry_dir: PathBuf,

    /// NVIDIA's CDI device per GPU, {uuid} or {index}; "" for none
    #[arg(long, value_name = "TEMPLATE", default_value = "nvidia.com/gpu={uuid}")]
    pub nvidia_cdi_device: String,

    /// Milliseconds between looks at the GPUs
    #[arg(long, value_name = "MS", default_value = "5000", value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub health_interval_ms: u64,

    /// Serve Prometheus metrics, /healthz and /readyz at this address (e.g. 0.0.0.0:10400)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// Log level: error, warn, info, debug, trace
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: tracing::Level,

    /// Log lines as text (coloured only on a terminal) or as JSON objects
    #[arg(long, value_enum, default_value = "text")]
    pub log_format: crate::logging::LogFormat,
}

/// `gpuslice tenant`.
#[derive(Debug, Subcommand)]
pub enum TenantCommand {
    /// Create a tenant with a quota, and print the flags that put a container in it.
    #[command(after_help = TENANT_CREATE_HELP)]
    Create(TenantCreateArgs),
    /// Print the flags that put a container in an existing tenant.
    Flags(TenantFlagsArgs),
    /// Delete a tenant (refused while processes of it are alive, unless --force).
    #[command(after_help = TENANT_DELETE_HELP)]
    Delete(TenantDeleteArgs),
    /// List the tenants with their quotas, who made them and their live processes.
    List(TenantListArgs),
}

/// What `tenant create` does, after the flags in `--help`.
const TENANT_CREATE_HELP: &str = "\
The quota flags are run's (see gpuslice run --help): without them the tenant
has no memory limit, no compute share or limit, and normal priority. The
tenant lasts until gpuslice tenant delete. On stdout, one line of flags for
podman run or docker run: the shim mounted read-only and preloaded
(LD_PRELOAD), the ledger's tenants mounted read-only, the tenant's usage and
lock files read-write, and GPUSLICE_TENANT and GPUSLICE_DIR, so that

  podman run $(gpuslice tenant create team-a --memory 4Gi) \\
      --device nvidia.com/gpu=all IMAGE COMMAND

runs COMMAND as team-a (docker: --gpus all instead of --device). The GPU itself
comes from NVIDIA's container toolkit, as without gpuslice. With --cdi-dir DIR,
a CDI spec for the tenant is written there (DIR/gpuslice.dev-gpu_NAME.json)
and the line is --device gpuslice.dev/gpu=NAME instead (podman reads
/etc/cdi and /var/run/cdi). gpuslice tenant flags NAME prints the line again.

Exit codes:
  0  created
  2  usage error (a bad flag, the tenant exists, no shim, no such GPU)";

/// What `tenant delete` does, after the flags in `--help`.
const TENANT_DELETE_HELP: &str = "\
A tenant in use is kept: while a process of it holds a live slot in the ledger
(a container or a program of it is using a GPU), while a gpuslice run is in
it, when the device plugin made it for a container, or when its entry lock
stays taken for 2 seconds (runs hold it for a moment; a process of the tenant
can hold it for good). --force deletes it even
so: its running processes keep the quota they read, but one that starts in its
containers afterwards finds no quota and runs without limits.

Exit codes:
  0  deleted
  1  in use, and kept (the reason is printed)
  2  usage error (no such tenant, no ledger)";

/// `gpuslice tenant create`.
#[derive(Debug, Args)]
pub struct TenantCreateArgs {
    /// The tenant's name
    #[arg(value_name = "NAME", value_parser = parse_tenant)]
    pub name: TenantName,

    #[command(flatten)]
    pub quota: QuotaFlags,

    /// Ledger directory [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Shim library (libgpuslice.so) [default: as for run]
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,

    /// Write a CDI spec for the tenant into this directory, and print --device NAME
    #[arg(long, value_name = "DIR")]
    pub cdi_dir: Option<PathBuf>,
}

/// `gpuslice tenant flags`.
#[derive(Debug, Args)]
pub struct TenantFlagsArgs {
    /// The tenant's name
    #[arg(value_name = "NAME", value_parser = parse_tenant)]
    pub name: TenantName,

    /// Ledger directory [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// Shim library (libgpuslice.so) [default: as for run]
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,
}

/// `gpuslice tenant delete`.
#[derive(Debug, Args)]
pub struct TenantDeleteArgs {
    /// The tenant's name
    #[arg(value_name = "NAME", value_parser = parse_tenant)]
    pub name: TenantName,

    /// Delete it even while it is in use
    #[arg(long)]
    pub force: bool,

    /// Ledger directory [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `gpuslice tenant list`.
#[derive(Debug, Args)]
pub struct TenantListArgs {
    /// Ledger directory [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `gpuslice config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the gpuslice equivalent of NVIDIA's device plugin config (version: v1).
    #[command(after_help = CONFIG_CONVERT_HELP)]
    Convert(ConfigConvertArgs),
}

/// What `config convert` prints, after the arguments in `--help`.
const CONFIG_CONVERT_HELP: &str = "\
FILE is a config file of NVIDIA's k8s-device-plugin (version: v1, flags,
sharing.timeSlicing). The device plugin reads it as it is; this prints the same
settings in gpuslice's format (YAML), with what gpuslice adds in comments: each
slice's memory quota and compute share, the priority, the compute limit, and
their defaults. sharing.mps, which the device plugin refuses, is converted to
the slices that give what MPS's limits gave. A file in gpuslice's format is
printed as it is.

Exit codes:
  0  printed
  2  the file cannot be read, or is not a valid config (the error names the
     field and what was wrong)";

/// `gpuslice config convert`.
#[derive(Debug, Args)]
pub struct ConfigConvertArgs {
    /// NVIDIA's device plugin config file (YAML or JSON)
    #[arg(value_name = "FILE")]
    pub file: PathBuf,
}

/// `gpuslice cdi`.
#[derive(Debug, Subcommand)]
pub enum CdiCommand {
    /// Print gpuslice's CDI spec: one device per tenant (gpuslice.dev/gpu=TENANT).
    #[command(after_help = CDI_GENERATE_HELP)]
    Generate(CdiGenerateArgs),
}

/// What `cdi generate` writes, after the flags in `--help`.
const CDI_GENERATE_HELP: &str = "\
The spec (cdiVersion 0.5.0, kind gpuslice.dev/gpu) mounts the shim read-only
and preloads it (LD_PRELOAD, or with --preload ld-so-preload a file mounted at
/etc/ld.so.preload), mounts the ledger directory read-only with GPUSLICE_DIR
set, and has one device per tenant that sets GPUSLICE_TENANT and mounts the
tenant's usage file read-write (created if missing, since a mount needs it).
Tenants are --tenant, or every tenant of the ledger. Limits are the tenants'
quota files: create tenants with gpuslice run or the device plugin.";

/// `gpuslice cdi generate`.
#[derive(Debug, Args)]
pub struct CdiGenerateArgs {
    /// A tenant to make a device for (repeatable) [default: every tenant]
    #[arg(long, value_name = "NAME", value_parser = parse_tenant)]
    pub tenant: Vec<TenantName>,

    /// Ledger directory on the host [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// The ledger directory as containers see it [default: the same as --dir]
    #[arg(long, value_name = "DIR")]
    pub container_dir: Option<PathBuf>,

    /// The shim on the host [default: as for run]
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,

    /// The shim as containers see it [default: the same as --shim]
    #[arg(long, value_name = "PATH")]
    pub container_shim: Option<PathBuf>,

    /// How containers preload the shim
    #[arg(long, value_enum, default_value = "env")]
    pub preload: gpuslice_k8s::cdi::Preload,

    /// Output format
    #[arg(long, value_enum, default_value = "json")]
    pub format: CdiFormat,

    /// Write the spec to this file (whole, atomically) instead of stdout
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

/// `cdi generate --format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum CdiFormat {
    /// JSON.
    Json,
    /// YAML.
    Yaml,
}

/// `--tenant`'s value parser.
fn parse_tenant(text: &str) -> Result<TenantName, String> {
    TenantName::new(text).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn command_may_follow_flags_without_a_double_dash() {
        let cli =
            Cli::try_parse_from(["gpuslice", "run", "--memory", "1Gi", "sh", "-c", "x"]).unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.quota.memory, Some(1 << 30));
        assert_eq!(run.command, ["sh", "-c", "x"]);
    }

    #[test]
    fn compute_flags_take_percent_and_priority() {
        let cli = Cli::try_parse_from([
            "gpuslice",
            "run",
            "--compute-share",
            "12.5%",
            "--compute-limit",
            "50",
            "--priority",
            "High",
            "--",
            "true",
        ])
        .unwrap();
        let Command::Run(run) = cli.command else {
            panic!("not run")
        };
        assert_eq!(run.quota.compute_share, Some(125));
        assert_eq!(run.quota.compute_limit, Some(500));
        assert_eq!(run.quota.priority, Some(Priority::High));
        for (flag, bad) in [
            ("--compute-share", "0"),
            ("--compute-limit", "30.25"),
            ("--priority", "urgent"),
        ] {
            let err =
                Cli::try_parse_from(["gpuslice", "run", flag, bad, "--", "true"]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{flag}"
            );
        }
    }
}
