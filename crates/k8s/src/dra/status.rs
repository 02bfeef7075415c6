//! Where the driver stands, as its `/readyz` and `/metrics` tell it: whether the kubelet
//! registered it, whether its ResourceSlice is published (and with which GPUs), the GPUs it
//! watches, and how many prepares and unprepares failed, by reason.
//!
//! The parts of the driver say what happens as it happens (the registration service, the
//! publisher, the kubelet's calls); the command reads a [`Snapshot`] at each request. The
//! driver is ready once the kubelet has registered it **and** its slice is in the API server:
//! before that, no claim of this node can be allocated or prepared.
//!
//! ```text
//! registration   waiting --NotifyRegistrationStatus(ok)--> registered
//!                waiting --NotifyRegistrationStatus(error)--> refused (why)
//!                any --sockets made again (the kubelet restarted)--> waiting
//! slice          not yet --written--> published (GPUs) --write failed--> published, failing (why)
//! ```

use std::sync::{Mutex, OnceLock, PoisonError};

use tokio::sync::watch;

use super::gpus::{Gpu, Inventory};

/// Why a claim could not be prepared, as the metrics count it. Few on purpose: each is
/// something an operator does something different about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PrepareFailure {
    /// The claim could not be read from the API server (gone, refused, no answer).
    ApiServer,
    /// The claim's allocation is not one this driver can prepare on this node (not
    /// allocated, replaced, another node's pool, a device it does not publish, admin access,
    /// a consumed capacity that cannot be, a UID that cannot name a tenant).
    InvalidClaim,
    /// The opaque configuration is not valid (an unknown field, a value out of range, a
    /// priority the claim may not give itself, a limit below the share).
    InvalidConfig,
    /// The claim's GPU is not known yet, gone, or does not answer.
    GpuUnavailable,
    /// The claim does not fit beside the claims prepared on its GPU.
    CapacityExceeded,
    /// A tenant of the claim's name exists and is not the driver's.
    TenantConflict,
    /// The shim containers would preload is not the gpuslice shim.
    Shim,
    /// The ledger refused a change.
    Ledger,
    /// A file (record, usage or lock file, CDI spec) could not be read or written.
    Files,
    /// The driver itself failed (a task that ended without an answer).
    Internal,
}

impl PrepareFailure {
    /// Every reason, in the order the metrics list them.
    pub const ALL: [PrepareFailure; 10] = [
        PrepareFailure::ApiServer,
        PrepareFailure::InvalidClaim,
        PrepareFailure::InvalidConfig,
        PrepareFailure::GpuUnavailable,
        PrepareFailure::CapacityExceeded,
        PrepareFailure::TenantConflict,
        PrepareFailure::Shim,
        PrepareFailure::Ledger,
        PrepareFailure::Files,
        PrepareFailure::Internal,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            PrepareFailure::ApiServer => "api_server",
            PrepareFailure::InvalidClaim => "invalid_claim",
            PrepareFailure::InvalidConfig => "invalid_config",
            PrepareFailure::GpuUnavailable => "gpu_unavailable",
            PrepareFailure::CapacityExceeded => "capacity_exceeded",
            PrepareFailure::TenantConflict => "tenant_conflict",
            PrepareFailure::Shim => "shim",
            PrepareFailure::Ledger => "ledger",
            PrepareFailure::Files => "files",
            PrepareFailure::Internal => "internal",
        }
    }
}

/// Why a claim could not be unprepared, as the metrics count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum UnprepareFailure {
    /// Processes of the claim's tenant still hold live slots (the kubelet retries).
    InUse,
    /// The ledger refused a change.
    Ledger,
    /// A file (the record, the CDI spec) could not be read or removed.
    Files,
    /// The driver itself failed (a task that ended without an answer).
    Internal,
}

impl UnprepareFailure {
    /// Every reason, in the order the metrics list them.
    pub const ALL: [UnprepareFailure; 4] = [
        UnprepareFailure::InUse,
        UnprepareFailure::Ledger,
        UnprepareFailure::Files,
        UnprepareFailure::Internal,
    ];

    /// The `reason` label.
    pub fn as_str(self) -> &'static str {
        match self {
            UnprepareFailure::InUse => "in_use",
            UnprepareFailure::Ledger => "ledger",
            UnprepareFailure::Files => "files",
            UnprepareFailure::Internal => "internal",
        }
    }
}

/// Where the registration with the kubelet stands.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Registration {
    /// The kubelet has not said it registered the driver (since its sockets were made).
    #[default]
    Waiting,
    /// The kubelet registered the driver.
    Registered,
    /// The kubelet refused the registration: why, as it said.
    Refused(String),
}

/// What the driver knows of itself at one moment.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Snapshot {
    /// The registration with the kubelet.
    pub registration: Registration,
    /// The GPUs of the slice last written to the API server (or found there as they should
    /// be); `None` until one was.
    pub published: Option<Vec<Gpu>>,
    /// Why the last write of the slice failed, while it fails.
    pub slice_error: Option<String>,
    /// The GPUs as the driver last looked at them.
    pub inventory: Inventory,
    /// Failed prepares since the driver started, for every reason (zeros included).
    pub prepare_errors: Vec<(PrepareFailure, u64)>,
    /// Failed unprepares since the driver started, for every reason (zeros included).
    pub unprepare_errors: Vec<(UnprepareFailure, u64)>,
}

impl Snapshot {
    /// Whether the kubelet registered the driver.
    pub fn registered(&self) -> bool {
        self.registration == Registration::Registered
    }

    /// Whether the node's slice is in the API server as the driver last wanted it.
    pub fn slice_published(&self) -> bool {
        self.published.is_some() && self.slice_error.is_none()
    }

    /// `Ok` when the driver can be given claims: registered with the kubelet and its slice
    /// published; otherwise what is missing, every part of it, in a line.
    pub fn readiness(&self) -> Result<(), String> {
        let mut missing = Vec::new();
        match &self.registration {
            Registration::Registered => {}
            Registration::Waiting => missing.push("not registered with the kubelet yet".into()),
            Registration::Refused(why) => {
                missing.push(format!("the kubelet refused to register the driver: {why}"));
            }
        }
        match (&self.published, &self.slice_error) {
            (_, Some(error)) => missing.push(format!("ResourceSlice not published: {error}")),
            (None, None) if !self.inventory.discovered => missing.push(
                "ResourceSlice not published yet: the GPUs have not been looked at yet".into(),
            ),
            (None, None) => missing.push("ResourceSlice not published yet".into()),
            (Some(_), None) => {}
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(missing.join("; "))
        }
    }
}

/// The driver's standing, shared by its parts and read by the command.
#[derive(Debug, Default)]
pub struct DriverStatus {
    state: Mutex<State>,
    /// The GPUs, as the watch thread publishes them (set once the driver runs).
    inventory: OnceLock<watch::Receiver<Inventory>>,
}

/// What [`DriverStatus`] keeps behind its lock.
#[derive(Debug, Default)]
struct State {
    registration: Registration,
    published: Option<Vec<Gpu>>,
    slice_error: Option<String>,
    prepare_errors: [u64; PrepareFailure::ALL.len()],
    unprepare_errors: [u64; UnprepareFailure::ALL.len()],
}

impl DriverStatus {
    /// A driver that has done nothing yet.
    pub fn new() -> DriverStatus {
        DriverStatus::default()
    }

    fn with<T>(&self, f: impl FnOnce(&mut State) -> T) -> T {
        f(&mut self.state.lock().unwrap_or_else(PoisonError::into_inner))
    }

    /// Follows the GPUs of `inventory` from now on (the first call only).
    pub fn watch_inventory(&self, inventory: watch::Receiver<Inventory>) {
        let _ = self.inventory.set(inventory);
    }

    /// The kubelet registered the driver.
    pub fn registered(&self) {
        self.with(|s| s.registration = Registration::Registered);
    }

    /// The kubelet refused to register the driver, saying `why`.
    pub fn registration_refused(&self, why: &str) {
        let why = if why.is_empty() {
            "it gave no reason".to_string()
        } else {
            why.to_string()
        };
        self.with(|s| s.registration = Registration::Refused(why));
    }

    /// The driver's sockets were made (again): the kubelet registers it anew.
    pub fn sockets_made(&self) {
        self.with(|s| s.registration = Registration::Waiting);
    }

    /// The API server's slice lists `gpus` now.
    pub fn slice_published(&self, gpus: &[Gpu]) {
        self.with(|s| {
            s.published = Some(gpus.to_vec());
            s.slice_error = None;
        });
    }

    /// Writing the slice failed: `error`.
    pub fn slice_failed(&self, error: String) {
        self.with(|s| s.slice_error = Some(error));
    }

    /// A claim could not be prepared, for `why`.
    pub fn prepare_failed(&self, why: PrepareFailure) {
        if let Some(i) = PrepareFailure::ALL.iter().position(|r| *r == why) {
            self.with(|s| s.prepare_errors[i] = s.prepare_errors[i].saturating_add(1));
        }
    }

    /// A claim could not be unprepared, for `why`.
    pub fn unprepare_failed(&self, why: UnprepareFailure) {
        if let Some(i) = UnprepareFailure::ALL.iter().position(|r| *r == why) {
            self.with(|s| s.unprepare_errors[i] = s.unprepare_errors[i].saturating_add(1));
        }
    }

    /// Where the driver stands now.
    pub fn snapshot(&self) -> Snapshot {
        let inventory = self
            .inventory
            .get()
            .map(|i| i.borrow().clone())
            .unwrap_or_default();
        self.with(|s| Snapshot {
            registration: s.registration.clone(),
            published: s.published.clone(),
            slice_error: s.slice_error.clone(),
            inventory,
            prepare_errors: PrepareFailure::ALL
                .iter()
                .copied()
                .zip(s.prepare_errors)
                .collect(),
            unprepare_errors: UnprepareFailure::ALL
                .iter()
                .copied()
                .zip(s.unprepare_errors)
                .collect(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::super::gpus::tests::gpu;
    use super::*;

    #[test]
    fn a_fresh_driver_is_not_ready_and_says_both_things_it_waits_for() {
        let status = DriverStatus::new();
        let why = status.snapshot().readiness().unwrap_err();
        assert_eq!(
            why,
            "not registered with the kubelet yet; ResourceSlice not published yet: the GPUs \
             have not been looked at yet"
        );
    }

    #[test]
    fn ready_once_registered_and_published_and_not_while_either_is_missing() {
        let status = DriverStatus::new();
        status.slice_published(&[gpu(0, 8 << 30)]);
        assert_eq!(
            status.snapshot().readiness(),
            Err("not registered with the kubelet yet".into())
        );
        status.registered();
        assert_eq!(status.snapshot().readiness(), Ok(()));
        assert!(status.snapshot().registered());
        assert!(status.snapshot().slice_published());

        // The kubelet restarted and removed the sockets: registered anew.
        status.sockets_made();
        assert_eq!(
            status.snapshot().readiness(),
            Err("not registered with the kubelet yet".into())
        );
        status.registered();
        status.slice_failed("resourceslices is forbidden".into());
        assert_eq!(
            status.snapshot().readiness(),
            Err("ResourceSlice not published: resourceslices is forbidden".into())
        );
        assert_eq!(
            status.snapshot().published,
            Some(vec![gpu(0, 8 << 30)]),
            "the last slice written stays what the API server has"
        );
        status.slice_published(&[]);
        assert_eq!(status.snapshot().readiness(), Ok(()), "a slice of no GPUs");
    }

    #[test]
    fn a_refused_registration_says_what_the_kubelet_said() {
        let status = DriverStatus::new();
        status.slice_published(&[]);
        status.registration_refused("unsupported versions");
        assert_eq!(
            status.snapshot().readiness(),
            Err("the kubelet refused to register the driver: unsupported versions".into())
        );
        status.registration_refused("");
        assert_eq!(
            status.snapshot().registration,
            Registration::Refused("it gave no reason".into())
        );
    }

    #[test]
    fn failures_are_counted_by_reason_and_every_reason_is_listed() {
        let status = DriverStatus::new();
        status.prepare_failed(PrepareFailure::CapacityExceeded);
        status.prepare_failed(PrepareFailure::CapacityExceeded);
        status.prepare_failed(PrepareFailure::ApiServer);
        status.unprepare_failed(UnprepareFailure::InUse);
        let snapshot = status.snapshot();
        assert_eq!(snapshot.prepare_errors.len(), PrepareFailure::ALL.len());
        let count = |r| {
            snapshot
                .prepare_errors
                .iter()
                .find(|(why, _)| *why == r)
                .map(|(_, n)| *n)
        };
        assert_eq!(count(PrepareFailure::CapacityExceeded), Some(2));
        assert_eq!(count(PrepareFailure::ApiServer), Some(1));
        assert_eq!(count(PrepareFailure::Files), Some(0));
        assert_eq!(
            snapshot.unprepare_errors,
            [
                (UnprepareFailure::InUse, 1),
                (UnprepareFailure::Ledger, 0),
                (UnprepareFailure::Files, 0),
                (UnprepareFailure::Internal, 0),
            ]
        );
    }

    #[test]
    fn reason_labels_are_distinct_snake_case() {
        let labels: Vec<&str> = PrepareFailure::ALL
            .iter()
            .map(|r| r.as_str())
            .chain(UnprepareFailure::ALL.iter().map(|r| r.as_str()))
            .collect();
        for label in &labels {
            assert!(
                label.chars().all(|c| c.is_ascii_lowercase() || c == '_'),
                "{label}"
            );
        }
        let prepare: std::collections::HashSet<_> =
            PrepareFailure::ALL.iter().map(|r| r.as_str()).collect();
        assert_eq!(prepare.len(), PrepareFailure::ALL.len());
    }

    #[test]
    fn the_inventory_is_read_through_the_watch() {
        let status = DriverStatus::new();
        let (tx, rx) = watch::channel(Inventory::default());
        status.watch_inventory(rx);
        assert!(!status.snapshot().inventory.discovered);
        let _ = tx.send(Inventory::default().after_look(&[Ok(gpu(0, 8 << 30))]));
        let snapshot = status.snapshot();
        assert!(snapshot.inventory.discovered);
        assert_eq!(snapshot.inventory.gpus.len(), 1);
        assert_eq!(
            snapshot.readiness(),
            Err("not registered with the kubelet yet; ResourceSlice not published yet".into())
        );
    }
}
