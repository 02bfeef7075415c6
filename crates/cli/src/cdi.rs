//! `gpuslice cdi generate`: a CDI spec for tenants of the ledger (`gpuslice_k8s::cdi` makes
//! and checks it).

use std::io::{self, Write as _};

use anyhow::{Context as _, anyhow};
use gpuslice_k8s::cdi::{self, Layout, Preload};
use gpuslice_k8s::device_plugin::tenants;
use gpuslice_ledger::Ledger;

use crate::cli::{CdiFormat, CdiGenerateArgs};
use crate::exit::{self, Failure, ResultExt};
use crate::locate;

/// Runs `gpuslice cdi generate`.
pub fn generate(args: &CdiGenerateArgs) -> Result<u8, Failure> {
    let ledger_dir = locate::ledger_dir(args.dir.as_deref()).usage()?;
    let shim = locate::shim(args.shim.as_deref()).usage()?;
    // A container given another file as the shim would run without limits.
    crate::shim_check::identify(&shim).usage()?;
    let layout = Layout {
        ledger_container: args
            .container_dir
            .clone()
            .unwrap_or_else(|| ledger_dir.clone()),
        shim_container: args.container_shim.clone().unwrap_or_else(|| shim.clone()),
        ledger_host: ledger_dir,
        shim_host: shim,
        preload: args.preload,
    };
    layout.check_paths().usage()?;
    let ledger = Ledger::open_existing(&layout.ledger_host)
        .context("no ledger to describe (create tenants first)")
        .usage()?;
    let tenants = if args.tenant.is_empty() {
        ledger.tenants().failed()?
    } else {
        args.tenant.clone()
    };
    if tenants.is_empty() {
        return Err(anyhow!(
            "the ledger {} has no tenants, and a CDI spec without devices is refused by \
             container runtimes; create tenants first (gpuslice run --tenant NAME, or the \
             device plugin)",
            layout.ledger_host.display()
        ))
        .usage();
    }
    for t in &tenants {
        if ledger.read_quota(t).failed()?.is_none() {
            return Err(anyhow!(
                "tenant {t} has no quota in {}: a container with it would run without limits",
                layout.ledger_host.display()
            ))
            .usage();
        }
        tenants::prepare_usage(&ledger, t).failed()?;
        cdi::ensure_pin_file(&layout, t).failed()?;
    }
    if layout.preload == Preload::LdSoPreload {
        cdi::ensure_preload_file(&layout).failed()?;
    }
    let spec = layout.spec(&tenants);
    let text = match args.format {
        CdiFormat::Json => cdi::to_json(&spec),
        CdiFormat::Yaml => cdi::to_yaml(&spec),
    }
    .failed()?;
    match &args.output {
        Some(path) => cdi::write_atomically(path, &text).failed()?,
        None => match io::stdout().lock().write_all(text.as_bytes()) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
            Err(e) => return Err(anyhow!("could not write to stdout: {e}")).failed(),
        },
    }
    Ok(exit::OK)
}
