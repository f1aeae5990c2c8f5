//! Measurements: the run record every timed repetition becomes, and the resource sampler that
//! runs beside it.
//!
//! A `sweep` node writes one [`RunRecord`] per repetition as a line of `runs.jsonl`; a `stats`
//! node reads them back. The record is the contract between the two, and with the report:
//! every latency the study shows is one of these fields, or a statistic of them.
//!
//! | field            | meaning                                                                    |
//! |------------------|----------------------------------------------------------------------------|
//! | `backend`, `provider`, `precision` | the backend as declared                                  |
//! | `mode`           | `prefill`, `generate` (KV cache) or `generate_uncached` (a full forward pass per new token) |
//! | `scenario`, `batch`, `prompt_tokens`, `new_tokens` | the scenario                             |
//! | `rep`            | repetition, from 0, after the warm-up                                      |
//! | `status`, `reason` | `ok`, or `degraded` with why; a degraded record has null timings         |
//! | `latency_ms`     | prefill: one forward pass; generate: the whole greedy loop, first token included |
//! | `ttft_ms`        | generate: time to the first new token (the prompt's forward pass and its argmax) |
//! | `tpot_ms`        | generate: mean time per new token after the first, `(latency − ttft) / (new_tokens − 1)` |
//! | `tokens`         | tokens the measured work produced or consumed: prefill `batch × prompt_tokens`, generate `batch × new_tokens` |
//! | `throughput`     | `tokens / latency`, tokens a second                                        |
//! | `output_digest`  | generate: blake3 of the generated ids, to check that repetitions and backends agree |
//! | `resources`      | [`Resources`]: peaks and means sampled during the measured work             |
//! | `env`            | [`RunEnv`]: the machine and runtime the record was measured on             |

use serde::{Deserialize, Serialize};

pub mod sampler;

/// How a sweep drives the model.
pub(crate) const MODES: &[&str] = &["prefill", "generate", "generate_uncached"];

/// One measured repetition: a line of a sweep's `runs.jsonl`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    pub backend: String,
    pub provider: String,
    pub precision: String,
    pub mode: String,
    pub scenario: String,
    pub batch: usize,
    pub prompt_tokens: usize,
    pub new_tokens: usize,
    pub rep: usize,
    /// `ok` or `degraded`.
    pub status: String,
    pub reason: Option<String>,
    pub latency_ms: Option<f64>,
    pub ttft_ms: Option<f64>,
    pub tpot_ms: Option<f64>,
    pub tokens: usize,
    pub throughput: Option<f64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub output_digest: Option<String>,
    #[serde(default)]
    pub resources: Resources,
    #[serde(default)]
    pub env: RunEnv,
}

impl RunRecord {
    pub(crate) fn is_ok(&self) -> bool {
        self.status == "ok"
    }
}

/// What the sampler saw during one measured repetition. Fields are `None` where nothing could
/// be read (no GPU, no NVML) — never zero.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Resources {
    /// Samples taken during the repetition (at least one at each end).
    pub samples: usize,
    /// Resident set size of this process, MiB.
    pub rss_peak_mib: Option<f64>,
    pub rss_mean_mib: Option<f64>,
    /// CPU time of this process over the repetition's wall time: 1.0 is one core busy.
    pub cpu_util: Option<f64>,
    pub gpu_power_peak_w: Option<f64>,
    pub gpu_power_mean_w: Option<f64>,
    /// GPU memory in use on the device (all processes), MiB.
    pub gpu_mem_peak_mib: Option<f64>,
    pub gpu_mem_mean_mib: Option<f64>,
    pub gpu_temp_peak_c: Option<f64>,
    /// GPU utilisation, percent of the sample period a kernel ran.
    pub gpu_util_mean_pct: Option<f64>,
}

/// The environment a record was measured on.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RunEnv {
    pub cpu: String,
    pub os: String,
    pub host: String,
    pub runtime: String,
    pub runtime_version: String,
    pub gpu: Option<String>,
    pub gpu_driver: Option<String>,
}
