//! `gpuslice device-plugin`: the process around the device plugin of `gpuslice_k8s`
//! ([`device_plugin`]): logging, signals, the async runtime, the metrics server and its
//! readiness (`scrape`), the shim check, the loop that reloads the config file, and the sweep
//! that also reports processes outside gpuslice's limits. Also `gpuslice config convert`
//! (`convert`).

pub mod convert;
mod scrape;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use gpuslice_ledger::Ledger;
use tokio::sync::watch;

use gpuslice_k8s::device_plugin::config::{self, Args, Config, ConfigError};
use gpuslice_k8s::device_plugin::health::{self, Inventory, XidHealth};
use gpuslice_k8s::device_plugin::xid::XidPolicy;
use gpuslice_k8s::device_plugin::{allocate, kubelet, podresources, tenants};

use crate::cli::DevicePluginArgs;
use crate::exit::{self, Failure, ResultExt};
use scrape::PluginSource;

/// How often a config file is read again (to apply a change, or to see a fix).
const CONFIG_POLL: Duration = Duration::from_secs(2);

/// Runs `gpuslice device-plugin` until SIGTERM or SIGINT.
pub fn device_plugin(args: DevicePluginArgs) -> Result<u8, Failure> {
    crate::logging::init(args.log_level, args.log_format);
    // Read once, like a flag: the variables NVIDIA's plugin reads, so that a DaemonSet
    // moved over keeps them.
    let xids = Arc::new(XidHealth::new(XidPolicy::from_env().usage()?));
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("could not start the async runtime")
        .failed()?;
    runtime.block_on(async {
        let shutdown = gpuslice_k8s::watch_signals("plugin");
        let mut plugin = args.plugin;
        plugin.find_shim = Some(|| crate::locate::shim(None).ok());
        supervise(plugin, xids, shutdown).await
    })
}

/// Resolves once `shutdown` turns true.
async fn signalled(shutdown: &watch::Receiver<bool>) {
    let mut shutdown = shutdown.clone();
    let _ = shutdown.wait_for(|s| *s).await;
}

/// Why a run of the plugin ended.
enum End {
    /// SIGTERM or SIGINT.
    Signal,
    /// The config file changed to this valid configuration.
    Reload(Box<Config>),
}

/// Loads the configuration, then runs the plugin, again with each new configuration.
///
/// The metrics server starts first where its address is a flag (the DaemonSet passes
/// `--metrics-listen`), so that `/healthz` answers and `/readyz` says why while the settings
/// file is invalid; an address from the file can only be known once the file is valid.
async fn supervise(
    args: Args,
    xids: Arc<XidHealth>,
    shutdown: watch::Receiver<bool>,
) -> Result<u8, Failure> {
    let source = Arc::new(PluginSource::new(crate::metrics::node_name()));
    let flag_address = args.metrics_listen.clone().filter(|a| !a.is_empty());
    if let Some(address) = &flag_address {
        start_metrics(address, &source).await.usage()?;
    }
    let mut config = match Config::load(&args) {
        Ok(config) => config,
        // Flags alone do not change: a bad one is a usage error.
        Err(e) if args.config.is_none() => return Err(e).usage(),
        Err(e) => {
            tracing::error!("{e}; advertising nothing until the file is fixed");
            source.no_settings(e.to_string());
            match wait_for_valid_config(&args, &e.to_string(), &shutdown, &source).await {
                Some(config) => config,
                None => return Ok(exit::OK),
            }
        }
    };
    if flag_address.is_none()
        && let Some(address) = &config.metrics_listen
    {
        start_metrics(address, &source).await.usage()?;
    }
    describe_config(&config, &args);
    loop {
        match run(&config, &args, &xids, &source, &shutdown).await {
            End::Signal => return Ok(exit::OK),
            End::Reload(next) => {
                tracing::info!("the config file changed: restarting with the new settings");
                config = *next;
                describe_config(&config, &args);
            }
        }
    }
}

/// Says what the plugin advertises, and, for a file in NVIDIA's format, which of its
/// settings are ignored and why.
fn describe_config(config: &Config, args: &Args) {
    let resources: Vec<String> = config
        .resources
        .iter()
        .map(|r| {
            format!(
                "{} ({} of {} slices per GPU)",
                r.name, r.slices, config.slices_per_gpu
            )
        })
        .collect();
    if config.format == config::Format::Nvidia {
        let file = args
            .config
            .as_deref()
            .map_or_else(String::new, |p| p.display().to_string());
        tracing::info!(
            "{file} is NVIDIA's device plugin config: advertising {}",
            resources.join(", ")
        );
        for note in &config.ignored {
            tracing::warn!("ignoring {note}");
        }
    } else {
        tracing::info!("advertising {}", resources.join(", "));
    }
}

/// Reads the config file until it is valid; `None` if a signal came first.
async fn wait_for_valid_config(
    args: &Args,
    last: &str,
    shutdown: &watch::Receiver<bool>,
    source: &PluginSource,
) -> Option<Config> {
    let mut last = last.to_string();
    loop {
        tokio::select! {
            () = tokio::time::sleep(CONFIG_POLL) => {}
            () = signalled(shutdown) => return None,
        }
        match Config::load(args) {
            Ok(config) => {
                tracing::info!("the config file is valid now");
                return Some(config);
            }
            Err(e) => {
                report_config_error(&e, &mut last);
                source.no_settings(e.to_string());
            }
        }
    }
}

/// Logs a configuration error once (until it changes). While the plugin runs, it goes on
/// with the settings it has.
fn report_config_error(e: &ConfigError, last: &mut String) {
    let text = e.to_string();
    if text != *last {
        tracing::error!("{text}");
        *last = text;
    }
}

/// Serves the metrics, `/healthz` and `/readyz` at `address`, from `source`.
async fn start_metrics(address: &str, source: &Arc<PluginSource>) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(address)
        .await
        .with_context(|| format!("could not listen on {address} for metrics"))?;
    if let Ok(local) = listener.local_addr() {
        tracing::info!("serving metrics on http://{local}/metrics (and /healthz, /readyz)");
    }
    tokio::spawn(crate::metrics::serve::serve(
        listener,
        Arc::clone(source) as Arc<dyn crate::metrics::serve::Source>,
    ));
    Ok(())
}

/// Runs the plugin with `config` until a signal, or until the config file changes.
async fn run(
    config: &Config,
    args: &Args,
    xids: &Arc<XidHealth>,
    source: &PluginSource,
    shutdown: &watch::Receiver<bool>,
) -> End {
    let (inventory_tx, inventory) = watch::channel(Inventory::default());
    if let Err(e) = health::spawn(config.health_interval, inventory_tx, Arc::clone(xids)) {
        tracing::error!("could not start the health thread: {e}");
    }
    source.preparing(config, &inventory, "starting".into());
    let ledger = loop {
        match prepare(config) {
            Ok(ledger) => break ledger,
            Err(e) => {
                tracing::error!("{e:#}; retrying");
                source.preparing(config, &inventory, format!("{e:#}"));
                tokio::select! {
                    () = tokio::time::sleep(CONFIG_POLL) => {}
                    () = signalled(shutdown) => return End::Signal,
                }
            }
        }
    };
    source.serving(config, &inventory);
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks = Vec::new();
    for resource in &config.resources {
        let allocator = Arc::new(allocate::Allocator::new(
            ledger.clone(),
            config.clone(),
            resource.clone(),
            inventory.clone(),
        ));
        tasks.push(tokio::spawn(kubelet::serve_resource(
            config.kubelet_dir.clone(),
            resource.clone(),
            allocator,
            inventory.clone(),
            stop.clone(),
        )));
    }
    tasks.push(tokio::spawn(sweep_forever(
        ledger,
        config.clone(),
        inventory,
        stop.clone(),
    )));
    let end = tokio::select! {
        () = signalled(shutdown) => End::Signal,
        next = config_changed(config, args) => End::Reload(Box::new(next)),
    };
    let _ = stop_tx.send(true);
    for task in tasks {
        let _ = task.await;
    }
    end
}

/// Opens the ledger, creates the CDI directory, and checks that the shim the specs mount is
/// the gpuslice shim of this ledger layout (where this process can see it).
fn prepare(config: &Config) -> anyhow::Result<Ledger> {
    let ledger = Ledger::open(&config.layout.ledger_host)?;
    std::fs::create_dir_all(&config.cdi_dir).with_context(|| {
        format!(
            "could not create the CDI directory {}",
            config.cdi_dir.display()
        )
    })?;
    match std::fs::metadata(&config.layout.shim_host) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => tracing::warn!(
            "the shim {} does not exist here; containers will fail to start unless it exists \
             on the host",
            config.layout.shim_host.display()
        ),
        // Containers given anything else in its place (another file; a directory, which the
        // dynamic loader ignores) would run without limits: hand out nothing until the file
        // there is the shim.
        _ => {
            crate::shim_check::identify(&config.layout.shim_host)
                .context("advertising nothing until the shim is in place")?;
        }
    }
    Ok(ledger)
}

/// Sweeps the plugin's tenants and CDI specs at start, whenever GPU health changes, and
/// every `sweep_interval`, asking the kubelet first which devices its containers have.
async fn sweep_forever(
    ledger: Ledger,
    config: Config,
    mut inventory: watch::Receiver<Inventory>,
    mut stop: watch::Receiver<bool>,
) {
    let mut last_error = String::new();
    let mut unenforced = crate::unenforced::UnenforcedLog::default();
    loop {
        let in_use = match &config.pod_resources_socket {
            None => None,
            Some(socket) => match podresources::devices_in_use(socket).await {
                Ok(devices) => {
                    if !last_error.is_empty() {
                        tracing::info!("the kubelet's pod resources answer again");
                        last_error.clear();
                    }
                    Some(devices)
                }
                Err(e) => {
                    let text = e.to_string();
                    if text != last_error {
                        tracing::warn!(
                            "cannot list the kubelet's pod resources ({text}); tenants are \
                             removed only when their slices are allocated again"
                        );
                        last_error = text;
                    }
                    None
                }
            },
        };
        let snapshot = inventory.borrow_and_update().clone();
        let (ledger_now, config_now) = (ledger.clone(), config.clone());
        let check = tokio::task::spawn_blocking(move || {
            tenants::sweep(&ledger_now, &config_now, &snapshot, in_use.as_ref());
            crate::unenforced::check(&ledger_now)
        })
        .await;
        if let Ok(check) = check {
            unenforced.log(&check);
        }
        tokio::select! {
            () = tokio::time::sleep(config.sweep_interval) => {}
            changed = inventory.changed() => if changed.is_err() { return },
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// Waits until the config file holds a valid configuration different from `config`. An
/// invalid file is reported and the plugin goes on with `config`. Never returns without a
/// config file.
async fn config_changed(config: &Config, args: &Args) -> Config {
    if args.config.is_none() {
        return std::future::pending().await;
    }
    let mut last = String::new();
    loop {
        tokio::time::sleep(CONFIG_POLL).await;
        match Config::load(args) {
            Ok(next) if next != *config => return next,
            Ok(_) => last.clear(),
            Err(e) => report_config_error(&e, &mut last),
        }
    }
}
