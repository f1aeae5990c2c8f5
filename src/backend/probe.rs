//! The capability probe: what really ran, as opposed to what was asked for.
//!
//! A session that opens with the CUDA provider registered can still run every node on the
//! CPU: ONNX Runtime's partitioner gives the CPU whatever the accelerator does not claim, and
//! says so only in its logs. So the probe runs one tiny prefill with ONNX Runtime's profiler on
//! and counts, per execution provider, the distinct nodes with an event there
//! ([`crate::runtime::profile::nodes_per_provider`], where the profile's format is). A
//! requested accelerator that
//! got no node at all is a degradation ([`Capability::degradation`]): the results are real
//! CPU numbers under an accelerator's label.
//!
//! GPU facts come from NVML through `nvml-wrapper`, which loads `libnvidia-ml` at run time:
//! without a driver (or a GPU) there is simply no [`GpuInfo`], never an error.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::{BackendError, Capability};
use crate::runtime::{Decoder, Provider, Session, profile};

/// The tokens of the probe's prefill: id 0 is in every vocabulary.
const PROBE_TOKENS: usize = 4;

/// One GPU as NVML describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuInfo {
    pub name: String,
    /// The kernel driver, e.g. `550.54.15`.
    pub driver_version: String,
    pub memory_total_mb: u64,
    /// The CUDA version the driver supports, `MAJOR.MINOR`.
    pub cuda_driver_version: String,
}

/// The GPU with NVML index `device`, or `None` where there is no NVML library, no driver or
/// no such device.
pub fn gpu_info(device: u32) -> Option<GpuInfo> {
    let nvml = nvml_wrapper::Nvml::init().ok()?;
    let gpu = nvml.device_by_index(device).ok()?;
    let cuda = nvml.sys_cuda_driver_version().ok()?;
    Some(GpuInfo {
        name: gpu.name().ok()?,
        driver_version: nvml.sys_driver_version().ok()?,
        memory_total_mb: gpu.memory_info().ok()?.total / (1024 * 1024),
        cuda_driver_version: format!("{}.{}", nvml_wrapper::cuda_driver_version_major(cuda), nvml_wrapper::cuda_driver_version_minor(cuda)),
    })
}

/// Logical CPUs this process may run on.
pub(crate) fn cpu_logical_threads() -> usize {
    std::thread::available_parallelism().map_or(1, usize::from)
}

/// Runs one prefill of [`PROBE_TOKENS`] tokens on `session`, which must have been opened with
/// [`crate::runtime::Runtime::profiled_session`], ends its profiling and returns provider →
/// nodes run there.
pub(super) fn providers_assigned(session: &mut Session) -> Result<BTreeMap<String, usize>, BackendError> {
    let ids = [0i64; PROBE_TOKENS];
    let mask = [1i64; PROBE_TOKENS];
    let run = session.run_prefill(&ids, &mask, 1, PROBE_TOKENS).map(|_| ());
    end_and_parse(session, run)
}

/// The same for a decoder model: one step of the probe tokens from an empty cache.
pub(super) fn decoder_providers_assigned(decoder: &mut Decoder) -> Result<BTreeMap<String, usize>, BackendError> {
    let run = decoder.empty_cache(1).and_then(|mut cache| decoder.step(&mut cache, &[0i64; PROBE_TOKENS], PROBE_TOKENS)).map(|_| ());
    end_and_parse(decoder.session_mut(), run)
}

fn end_and_parse(session: &mut Session, run: Result<(), crate::runtime::RuntimeError>) -> Result<BTreeMap<String, usize>, BackendError> {
    // End profiling even when the run failed, so the profiler does not keep recording.
    let profile = session.end_profiling();
    run?;
    let profile = profile?;
    let text = std::fs::read_to_string(&profile).map_err(|e| BackendError::Failed(format!("reading the profile `{}`: {e}", profile.display())))?;
    let _ = std::fs::remove_file(&profile);
    profile::nodes_per_provider(&text).map_err(|e| BackendError::Failed(format!("the profile `{}`: {e}", profile.display())))
}

/// A fresh directory for one profile, below the system's temporary directory.
pub(super) fn scratch_dir(what: &str) -> Result<PathBuf, BackendError> {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("tr118-{what}-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| BackendError::Failed(format!("creating `{}`: {e}", dir.display())))?;
    Ok(dir)
}

/// Removes a [`scratch_dir`]; a leftover temporary file is not worth failing for.
pub(super) fn remove_scratch_dir(dir: &Path) {
    let _ = std::fs::remove_dir_all(dir);
}

impl Capability {
    /// Why the results of this backend are not what its label says: the requested
    /// accelerator ran no node. `None` for the CPU, and for an accelerator that ran any.
    pub(crate) fn degradation(&self) -> Option<String> {
        // A torch worker answers for its own device when it loads (an unavailable device is
        // an error there); there is no partitioner to place work elsewhere.
        if self.runtime != "onnxruntime" {
            return None;
        }
        let requested: Provider = self.provider_requested.parse().ok()?;
        if requested == Provider::Cpu || self.providers_assigned.get(requested.ort_name()).is_some_and(|&n| n > 0) {
            return None;
        }
        let ran: Vec<String> = self.providers_assigned.iter().map(|(p, n)| format!("{n} on `{p}`")).collect();
        Some(format!(
            "execution provider `{requested}` was requested but ran no node: ONNX Runtime placed {}",
            if ran.is_empty() { "no node anywhere".to_string() } else { ran.join(", ") }
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn capability(requested: &str, assigned: &[(&str, usize)]) -> Capability {
        Capability {
            runtime: "onnxruntime".into(),
            runtime_version: "1.31.1".into(),
            library_digest: String::new(),
            providers_offered: Vec::new(),
            provider_requested: requested.into(),
            providers_assigned: assigned.iter().map(|(p, n)| (p.to_string(), *n)).collect(),
            cpu_model: String::new(),
            cpu_logical_threads: 1,
            threads: None,
            gpu: None,
            worker: None,
        }
    }

    #[test]
    fn accelerator_that_ran_nothing_is_a_degradation() {
        assert_eq!(capability("cpu", &[("CPUExecutionProvider", 5)]).degradation(), None);
        assert_eq!(capability("cuda", &[("CUDAExecutionProvider", 4), ("CPUExecutionProvider", 1)]).degradation(), None);
        let reason = capability("cuda", &[("CPUExecutionProvider", 5)]).degradation().unwrap();
        assert!(reason.contains("`cuda` was requested but ran no node") && reason.contains("5 on `CPUExecutionProvider`"), "{reason}");
    }

    #[test]
    fn no_gpu_is_none_not_a_panic() {
        // This machine has no NVIDIA driver; on one that has, the name is not empty.
        if let Some(g) = gpu_info(0) {
            assert!(!g.name.is_empty());
        }
        assert!(gpu_info(u32::MAX).is_none());
    }
}
