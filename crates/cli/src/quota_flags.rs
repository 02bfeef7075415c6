//! The quota flags `gpuslice run` and `gpuslice tenant create` share ([`QuotaFlags`]):
//! checked, and turned into the quota of the tenant they create.
//!
//! Both commands flatten the one flag definition, and both go through
//! [`QuotaFlags::request`], so a value one accepts the other accepts, and a value one refuses
//! the other refuses with the same message naming the flag. Clap's value parsers check each
//! value's form; what they cannot know (that `--gpu` names a GPU of this machine) is checked
//! here.

use gpuslice_ledger::{ComputeSettings, GpuUuid, Limits, TenantQuota};

use crate::cli::QuotaFlags;
use crate::gpu::{self, GpuError};

/// What the quota flags ask for: the quota of a tenant being created, or the ceiling a run
/// must stay under in a tenant it joins.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QuotaRequest {
    /// `--memory`.
    pub memory: Option<u64>,
    /// `--compute-share`, `--compute-limit`, `--priority`.
    pub compute: ComputeSettings,
    /// `--gpu`, found among this machine's GPUs: where `--memory` applies (every GPU when
    /// `None`).
    pub gpu: Option<GpuUuid>,
}

impl QuotaFlags {
    /// The request these flags make; an error naming `--gpu` when it names no GPU of this
    /// machine (a quota on a GPU that is not here would limit nothing).
    pub fn request(&self) -> Result<QuotaRequest, GpuError> {
        let gpu = self.gpu.as_deref().map(gpu::resolve).transpose()?;
        Ok(QuotaRequest {
            memory: self.memory,
            compute: ComputeSettings {
                share_permille: self.compute_share,
                limit_permille: self.compute_limit,
                priority: self.priority,
            },
            gpu,
        })
    }
}

impl QuotaRequest {
    /// The quota of a tenant created with this request: the memory limit on every GPU, or on
    /// its GPU only; the compute settings in the defaults, as the shim reads them there for
    /// every GPU.
    pub fn new_tenant_quota(&self) -> TenantQuota {
        let compute = Limits {
            compute_share_permille: self.compute.share_permille,
            compute_limit_permille: self.compute.limit_permille,
            priority: self.compute.priority,
            ..Limits::default()
        };
        let with_memory = Limits {
            memory_bytes: self.memory,
            ..compute
        };
        match self.gpu {
            Some(gpu) => TenantQuota {
                defaults: compute,
                per_gpu: vec![(gpu, with_memory)],
            },
            None => TenantQuota {
                defaults: with_memory,
                per_gpu: Vec::new(),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpuslice_ledger::Priority;

    #[test]
    fn a_request_without_a_gpu_limits_memory_on_every_gpu() {
        let request = QuotaRequest {
            memory: Some(1 << 30),
            ..QuotaRequest::default()
        };
        let q = request.new_tenant_quota();
        assert_eq!(q.defaults.memory_bytes, Some(1 << 30));
        assert!(q.per_gpu.is_empty());
        assert_eq!(q.limits_for(&GpuUuid([8; 16])).memory_bytes, Some(1 << 30));
        assert_eq!(
            QuotaRequest::default().new_tenant_quota(),
            TenantQuota::default()
        );
    }

    #[test]
    fn a_request_with_a_gpu_limits_memory_on_that_gpu_only() {
        let gpu = GpuUuid([7; 16]);
        let q = QuotaRequest {
            memory: Some(1 << 30),
            gpu: Some(gpu),
            ..QuotaRequest::default()
        }
        .new_tenant_quota();
        assert_eq!(q.limits_for(&gpu).memory_bytes, Some(1 << 30));
        assert_eq!(q.limits_for(&GpuUuid([8; 16])).memory_bytes, None);
        assert_eq!(q.defaults.memory_bytes, None);
    }

    #[test]
    fn compute_settings_go_into_the_defaults_even_with_a_gpu() {
        let gpu = GpuUuid([7; 16]);
        let q = QuotaRequest {
            memory: Some(1 << 30),
            compute: ComputeSettings {
                share_permille: Some(300),
                limit_permille: Some(500),
                priority: Some(Priority::High),
            },
            gpu: Some(gpu),
        }
        .new_tenant_quota();
        assert_eq!(q.defaults.compute_share_permille, Some(300));
        assert_eq!(q.defaults.compute_limit_permille, Some(500));
        assert_eq!(q.defaults.priority, Some(Priority::High));
        assert_eq!(q.defaults.memory_bytes, None);
        let on_gpu = q.limits_for(&gpu);
        assert_eq!(on_gpu.memory_bytes, Some(1 << 30));
        assert_eq!(on_gpu.compute_share_permille, Some(300));
        assert_eq!(on_gpu.compute_limit_permille, Some(500));
        assert_eq!(on_gpu.priority, Some(Priority::High));
    }

    #[test]
    fn the_flags_values_become_the_request_unchanged() {
        let flags = QuotaFlags {
            memory: Some(3 << 29),
            compute_share: Some(125),
            compute_limit: Some(500),
            priority: Some(Priority::Low),
            gpu: None,
        };
        assert_eq!(
            flags.request().unwrap(),
            QuotaRequest {
                memory: Some(3 << 29),
                compute: ComputeSettings {
                    share_permille: Some(125),
                    limit_permille: Some(500),
                    priority: Some(Priority::Low),
                },
                gpu: None,
            }
        );
    }

    #[test]
    fn a_gpu_that_is_not_a_uuid_or_an_index_is_refused_naming_the_flag() {
        let flags = QuotaFlags {
            memory: Some(1 << 30),
            gpu: Some("GPU-nope".into()),
            ..QuotaFlags::default()
        };
        let err = flags.request().unwrap_err().to_string();
        assert!(err.contains("--gpu \"GPU-nope\""), "{err}");
        assert!(err.contains("GPU UUID"), "{err}");
    }
}
