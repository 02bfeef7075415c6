/*!
gpuslice in Kubernetes: the device plugin ([`device_plugin`]), the CDI specs that put the
shim, the ledger and a tenant into a container ([`cdi`]), the node's GPUs through NVML
([`nvml`]), and the Dynamic Resource Allocation driver ([`dra`]).

Kubernetes asks for devices in two ways. The device plugin API (`gpuslice device-plugin`)
advertises N equal slices of each GPU. Dynamic Resource Allocation (`resource.k8s.io/v1`,
Kubernetes 1.34+) lets a pod ask for part of a device by its capacities: "4Gi of memory and
30% of the time". The driver publishes each GPU with those capacities, the scheduler
bin-packs claims against them, and the kubelet asks the driver to prepare each claim on the
node: that is where gpuslice makes the tenant whose quota enforces what the scheduler
granted.

Everything either one knows between calls is in the ledger ([`gpuslice_ledger`]): a
tenant, its quota and a record of what was granted. A restarted plugin or driver, or a
restarted kubelet, finds it there. The command (`crates/cli`) adds the process around
them: flags, logging, the async runtime, metrics.
*/

#![deny(missing_docs)]

pub mod cdi;
pub mod device_plugin;
pub mod dra;
pub mod nvml;

use tokio::sync::watch;

/// A flag that turns true at SIGTERM or SIGINT (never, if the handlers cannot be installed:
/// then they kill `what`, which is logged). Call it inside the async runtime.
pub fn watch_signals(what: &str) -> watch::Receiver<bool> {
    use tokio::signal::unix::{SignalKind, signal};
    let (tx, rx) = watch::channel(false);
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::spawn(async move {
                tokio::select! {
                    _ = term.recv() => tracing::info!("SIGTERM: stopping"),
                    _ = int.recv() => tracing::info!("SIGINT: stopping"),
                }
                let _ = tx.send(true);
            });
        }
        _ => tracing::warn!("cannot catch SIGTERM and SIGINT; they will kill the {what}"),
    }
    rx
}

/// Cuts back tenant `t`'s usage and lock files where its containers made them grow (they
/// can write both) before the ledger's filesystem fills, and logs each; for whichever made
/// the tenant, the device plugin or the DRA driver.
pub fn cut_back_grown_files(ledger: &gpuslice_ledger::Ledger, t: &gpuslice_ledger::TenantName) {
    match ledger.cut_back_grown_files(t) {
        Ok(cut) => {
            for (path, grown) in cut {
                tracing::warn!(
                    "tenant {t}: {} had grown to {grown} bytes, filling the ledger's \
                     filesystem (its containers can write it); cut back to its size",
                    path.display()
                );
            }
        }
        Err(e) => tracing::warn!("tenant {t}: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn sigterm_turns_the_flag_true() {
        let mut rx = watch_signals("test");
        assert!(!*rx.borrow());
        // SAFETY: raise(2) only sends a signal to this process, whose SIGTERM tokio now
        // catches (the handler is installed by `watch_signals` before it returns).
        let sent = unsafe { libc::raise(libc::SIGTERM) };
        assert_eq!(sent, 0);
        rx.wait_for(|stop| *stop).await.unwrap();
    }
}
