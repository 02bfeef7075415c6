//! The command line: subcommands and flags (clap derive), with the help texts users read.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use gpuslice_ledger::TenantName;

use crate::quantity::parse_memory_arg;

/// Exit codes, as `--help` lists them.
const EXIT_CODES: &str = "\
Exit codes:
  0    success (run: the command's own status is passed through)
  1    doctor: at least one check failed; demo: a tenant did not get its quota
  2    usage or configuration error (a bad flag or value, no ledger directory,
       no shim, --memory above the quota of the tenant being joined)
  125  gpuslice itself failed (run: before it could start the command)
  126  the command was found but could not be executed
  127  the command was not found
  N    run: the command's exit status; 128+S when a signal S killed it";

/// Let containers and programs share one NVIDIA GPU under memory quotas.
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
    /// Run a command as a tenant with a GPU memory quota.
    #[command(after_help = RUN_HELP)]
    Run(RunArgs),
    /// Show every tenant's GPU memory: used, limit, refusals, processes.
    Status(StatusArgs),
    /// Watch every tenant's GPU memory live, per GPU (q quits).
    Top(TopArgs),
    /// Serve the ledger as Prometheus metrics (or print them once).
    Metrics(MetricsArgs),
    /// Check the shim, the driver, the ledger and the environment.
    #[command(after_help = DOCTOR_HELP)]
    Doctor(DoctorArgs),
    /// Print a shell completion script.
    Completions(CompletionsArgs),
    /// Watch two tenants share one GPU under memory quotas (real or simulated GPU).
    #[command(after_help = DEMO_HELP)]
    Demo(DemoArgs),
    /// Kubernetes device plugin: advertise GPU slices to the kubelet, one tenant each.
    #[command(name = "device-plugin", after_help = DEVICE_PLUGIN_HELP)]
    DevicePlugin(DevicePluginArgs),
    /// Container Device Interface specs that inject the shim and a tenant.
    #[command(subcommand)]
    Cdi(CdiCommand),
    /// One tenant's program of `demo` (run by `demo` itself, under the shim).
    #[command(name = "__demo-worker", hide = true)]
    DemoWorker(DemoWorkerArgs),
}

/// How `run` treats tenants and the environment, after the flags in `--help`. Flag help
/// stays on one line each (clap wraps nothing without its `wrap_help` feature), so the
/// details are here, wrapped by hand to 80 columns.
const RUN_HELP: &str = "\
Defaults:
  --memory  unlimited (usage is still recorded)
  --tenant  run-PID: a new tenant of its own
  --gpu     every GPU; a UUID (GPU-xxxxxxxx-...) or an index of nvidia-smi -L
  --dir     $GPUSLICE_DIR, else /run/gpuslice if writable, else
            $XDG_RUNTIME_DIR/gpuslice
  --shim    $GPUSLICE_SHIM, else libgpuslice.so next to this program, else
            ../lib/libgpuslice.so relative to it

The command runs with the shim preloaded (before any LD_PRELOAD it had) and with
GPUSLICE_TENANT, GPUSLICE_DIR and, when it lowers the tenant's quota,
GPUSLICE_MEMORY_LIMIT set; inherited values of these are replaced, GPUSLICE_LOG
passes through, and any other GPUSLICE_ variable is refused (as the shim would
refuse it).

A tenant that does not exist is created with --memory as its quota (on every
GPU, or with --gpu on that GPU only) and removed when the last run of it exits
and no process of it still holds a slot in the ledger. A tenant that exists is
joined: its quota is the ceiling, and --memory may only lower it for this
command.

Compute shares, limits and priorities are not supported by this version.

Exit codes:
  0..255  the command's exit status; 128+S when a signal S killed it
  2       usage or configuration error
  125     gpuslice failed before it could run the command
  126     the command was found but could not be executed
  127     the command was not found";

/// `gpuslice run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Memory quota per GPU: 4Gi, 512Mi, 8G, 1.5Gi, bytes
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory_arg)]
    pub memory: Option<u64>,

    /// Tenant to create or join
    #[arg(long, value_name = "NAME", value_parser = parse_tenant)]
    pub tenant: Option<TenantName>,

    /// Apply --memory to this GPU only
    #[arg(long, value_name = "UUID|INDEX", requires = "memory")]
    pub gpu: Option<String>,

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

/// `gpuslice status`.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print JSON (schema: see the README)
    #[arg(long)]
    pub json: bool,

    /// Ledger directory [default: as for run]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
}

/// `gpuslice metrics`.
#[derive(Debug, Args)]
pub struct MetricsArgs {
    /// Address to serve GET /metrics on (port 0: any free port)
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:9400")]
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
Two tenants, demo-a and demo-b, each allocate GPU memory side by side until
refused, then free it and allocate again. Their quotas are 1 GiB and 2 GiB on
the simulated GPU, 4 GiB and 8 GiB on a real one. A table at the end says what
each was promised, what it saw and what it got.

The simulated GPU (libfakecuda.so: 80 GiB, contexts of 64 MiB) is used with
--simulated or when no NVIDIA GPU answers; it is found through
$GPUSLICE_FAKECUDA, else next to this program, in ../lib or in deps/.

Exit codes:
  0  both tenants got what they were promised
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
}

/// `gpuslice __demo-worker`: what one tenant of the demo does.
#[derive(Debug, Args)]
pub struct DemoWorkerArgs {
    /// What to show
    #[arg(long, value_enum, default_value = "memory")]
    pub phase: DemoPhase,

    /// Bytes per allocation
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory_arg)]
    pub chunk: u64,

    /// Stop, unrefused, once this much is allocated
    #[arg(long, value_name = "QUANTITY", value_parser = parse_memory_arg)]
    pub give_up_at: u64,

    /// After printing total=, wait for a line on stdin before allocating
    #[arg(long)]
    pub start_on_stdin: bool,

    /// Milliseconds to wait after each allocation, so that people can watch
    #[arg(long, value_name = "MS", default_value_t = 0)]
    pub pause_ms: u64,
}

/// The phases of the demo; compute shares will be the next one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DemoPhase {
    /// Allocate until refused, free, allocate again.
    Memory,
}

/// `gpuslice completions`.
#[derive(Debug, Args)]
pub struct CompletionsArgs {
    /// The shell to complete for
    #[arg(value_enum)]
    pub shell: clap_complete::Shell,
}

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
docs/kubernetes.md). A config file that cannot be used is reported and read
again every 2 seconds; the plugin never exits over it.

Exit codes:
  0  stopped by SIGTERM or SIGINT
  2  usage error (a bad flag, or no shim)";

/// `gpuslice device-plugin`.
#[derive(Debug, Args)]
pub struct DevicePluginArgs {
    /// Settings file (YAML or JSON); flags override it
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Slices each GPU is cut into [default: 4]
    #[arg(long, value_name = "N")]
    pub slices_per_gpu: Option<u32>,

    /// Ledger directory on the host [default: /run/gpuslice]
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,

    /// The shim on the host [default: as for run]
    #[arg(long, value_name = "PATH")]
    pub shim: Option<PathBuf>,

    /// How containers preload the shim [default: env]
    #[arg(long, value_enum)]
    pub preload: Option<crate::cdi::Preload>,

    /// Where CDI specs of allocations are written [default: /var/run/cdi]
    #[arg(long, value_name = "DIR")]
    pub cdi_dir: Option<PathBuf>,

    /// The kubelet's device plugin directory [default: /var/lib/kubelet/device-plugins]
    #[arg(long, value_name = "DIR")]
    pub kubelet_dir: Option<PathBuf>,

    /// NVIDIA's CDI device per GPU, {uuid} or {index}; "" for none [default: nvidia.com/gpu={uuid}]
    #[arg(long, value_name = "TEMPLATE")]
    pub nvidia_cdi_device: Option<String>,

    /// Milliseconds between GPU health checks [default: 5000]
    #[arg(long, value_name = "MS", value_parser = clap::value_parser!(u64).range(10..=3_600_000))]
    pub health_interval_ms: Option<u64>,

    /// Serve Prometheus metrics of the ledger at this address (e.g. 0.0.0.0:9400)
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// The kubelet's pod resources socket, "" for none [default: /var/lib/kubelet/pod-resources/kubelet.sock]
    #[arg(long, value_name = "PATH")]
    pub pod_resources_socket: Option<PathBuf>,

    /// Log level: error, warn, info, debug, trace
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: tracing::Level,
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
    pub preload: crate::cdi::Preload,

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

/// Flags of a later version that users may try: refused like any unknown flag, with a note.
pub const NOT_YET_SUPPORTED: [&str; 3] = ["--compute-share", "--compute-limit", "--priority"];

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
        assert_eq!(run.memory, Some(1 << 30));
        assert_eq!(run.command, ["sh", "-c", "x"]);
    }

    #[test]
    fn compute_flags_do_not_exist() {
        for flag in NOT_YET_SUPPORTED {
            let err =
                Cli::try_parse_from(["gpuslice", "run", flag, "1", "--", "true"]).unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::UnknownArgument,
                "{flag}"
            );
        }
    }
}
