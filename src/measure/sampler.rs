//! The resource sampler: a background thread that reads process RSS and CPU time from
//! `/proc`, and GPU power, memory, temperature and utilisation through NVML, while a measured
//! repetition runs.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::Resources;

/// How to sample.
#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    /// Time between background samples; zero samples only at each end of a window.
    pub interval: Duration,
    /// The NVML index of the GPU to sample, if any.
    pub gpu: Option<u32>,
}

/// The sampler's own cost, reported beside the measurements it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplerOverhead {
    pub interval_ms: f64,
    pub samples: u64,
    /// CPU time the sampling thread used.
    pub cpu_time_ms: f64,
    /// Wall time the sampler ran.
    pub wall_ms: f64,
    /// `cpu_time / wall`: the share of one core the sampler took.
    pub cpu_share: f64,
    /// Mean time to take one sample.
    pub mean_sample_us: f64,
    /// Whether GPU readings were available.
    pub gpu: bool,
}

/// A running sampler (stub: to be implemented).
pub struct Sampler {
    _cfg: SamplerConfig,
}

/// An open measurement window.
pub struct Window {
    _private: (),
}

impl Sampler {
    pub fn start(cfg: SamplerConfig) -> Sampler {
        Sampler { _cfg: cfg }
    }

    /// Opens a window: one sample now, on the caller's thread, before its clock starts.
    pub fn begin(&self) -> Window {
        Window { _private: () }
    }

    /// Closes a window after the caller's clock stopped: one last sample, and what the window saw.
    pub fn end(&self, _window: Window) -> Resources {
        Resources::default()
    }

    /// Stops the thread and reports what sampling cost.
    pub fn stop(self) -> SamplerOverhead {
        SamplerOverhead::default()
    }
}
