//! The files a claim's containers mount, made as the device plugin makes them for its
//! tenants ([`device_plugin::tenants`](crate::device_plugin::tenants)): the usage and lock
//! files open to the container's user, the pin file, `ld.so.preload` where the shim is
//! preloaded through it, and the tenant's CDI spec.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use gpuslice_ledger::{Ledger, TenantName};

use super::state::TenantFiles;
use crate::cdi::{self, Layout, Preload};
use crate::device_plugin::tenants;

/// Says why the file at a path is not the shim (`Err`), or that it is or that nothing is
/// there (`Ok`: the container runtime refuses to mount a missing file). The command checks
/// a shim's identity; this crate only asks.
pub type ShimCheck = Box<dyn Fn(&Path) -> Result<(), String> + Send + Sync>;

/// A node's [`TenantFiles`]: in the ledger, and CDI specs in `cdi_dir`.
pub struct ContainerFiles {
    ledger: Ledger,
    layout: Layout,
    cdi_dir: PathBuf,
    shim_check: ShimCheck,
}

impl std::fmt::Debug for ContainerFiles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ContainerFiles")
            .field("ledger", &self.ledger)
            .field("layout", &self.layout)
            .field("cdi_dir", &self.cdi_dir)
            .finish_non_exhaustive()
    }
}

impl ContainerFiles {
    /// Files of `ledger`'s tenants, mounted as `layout` says, with their specs in `cdi_dir`;
    /// `shim_check` is asked before each claim whether `layout`'s shim is the shim.
    pub fn new(
        ledger: Ledger,
        layout: Layout,
        cdi_dir: PathBuf,
        shim_check: ShimCheck,
    ) -> ContainerFiles {
        ContainerFiles {
            ledger,
            layout,
            cdi_dir,
            shim_check,
        }
    }
}

impl TenantFiles for ContainerFiles {
    fn install(&self, t: &TenantName) -> Result<String, String> {
        tenants::prepare_usage(&self.ledger, t).map_err(|e| e.to_string())?;
        if self.layout.preload == Preload::LdSoPreload {
            cdi::ensure_preload_file(&self.layout).map_err(|e| e.to_string())?;
        }
        tenants::ensure_spec(&self.layout, &self.cdi_dir, t).map_err(|e| e.to_string())?;
        Ok(cdi::device_name(t))
    }

    fn ready(&self) -> Result<(), String> {
        // A container that preloads anything else there (another file; a directory, which
        // the dynamic loader ignores) would run without limits.
        (self.shim_check)(&self.layout.shim_host).map_err(|e| {
            format!(
                "{e}; containers that preload it would run without limits, so no claim is \
                 prepared until the shim is in place"
            )
        })
    }

    fn uninstall(&self, t: &TenantName) -> Result<(), String> {
        let path = self.cdi_dir.join(cdi::spec_file_name(t));
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(format!("could not remove {}: {e}", path.display())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn files(root: &std::path::Path) -> ContainerFiles {
        let ledger_dir = root.join("ledger");
        let cdi_dir = root.join("cdi");
        fs::create_dir_all(&cdi_dir).unwrap();
        let layout = Layout {
            ledger_host: ledger_dir.clone(),
            ledger_container: ledger_dir.clone(),
            shim_host: "/opt/gpuslice/libgpuslice.so".into(),
            shim_container: "/opt/gpuslice/libgpuslice.so".into(),
            preload: Preload::Env,
        };
        ContainerFiles::new(
            Ledger::open(&ledger_dir).unwrap(),
            layout,
            cdi_dir,
            Box::new(|_| Ok(())),
        )
    }

    #[test]
    fn install_writes_the_tenants_spec_and_usage_file_and_names_its_device() {
        let root = tempfile::tempdir().unwrap();
        let files = files(root.path());
        let t = TenantName::new("dra-claim").unwrap();
        assert_eq!(files.install(&t).unwrap(), cdi::device_name(&t));
        // Twice: a prepare repeated by the kubelet finds everything in place.
        assert_eq!(files.install(&t).unwrap(), cdi::device_name(&t));
        let spec = root.path().join("cdi").join(cdi::spec_file_name(&t));
        let spec: serde_json::Value =
            serde_json::from_str(&fs::read_to_string(&spec).unwrap()).unwrap();
        assert_eq!(spec["devices"][0]["name"], "dra-claim");
        assert!(files.ledger.usage_path(&t).is_file());
    }

    #[test]
    fn uninstall_removes_the_spec_and_is_idempotent() {
        let root = tempfile::tempdir().unwrap();
        let files = files(root.path());
        let t = TenantName::new("dra-claim").unwrap();
        files.install(&t).unwrap();
        files.uninstall(&t).unwrap();
        files.uninstall(&t).unwrap();
        assert!(
            !root
                .path()
                .join("cdi")
                .join(cdi::spec_file_name(&t))
                .exists()
        );
    }
}
