//! Calibration numerics: per-tensor statistics, the three ways to turn them into an INT8
//! range (`amax`), and TensorRT's calibration cache.
//!
//! ## Statistics
//!
//! Every observed tensor keeps a running min, max and element count over all samples
//! ([`Stats`]). The histogram methods also need a histogram of `|x|` over `[0, absmax]` with
//! [`BINS`] bins. Its range must be known before the first value lands in it; rather than
//! grow the range as larger values appear (which re-bins, and makes the result depend on the
//! order of the samples), calibration runs the samples twice: the first pass finds each
//! tensor's absmax, the second fills a histogram of exactly that range ([`Histogram`]). It
//! costs a second forward pass per sample and makes the histogram independent of sample
//! order. A value lands in bin `min(⌊|x| / absmax · BINS⌋, BINS − 1)`, so the largest value
//! is in the last bin and bin `i` covers `[i·w, (i+1)·w)` with `w = absmax / BINS`.
//!
//! ## amax
//!
//! | method       | `amax`                                                                      |
//! |--------------|-----------------------------------------------------------------------------|
//! | `minmax`     | `max(|min|, |max|)`                                                         |
//! | `percentile` | the upper edge of the first bin where the share of `|x|` at or below it reaches `p`% (so at least `p`% of values are within `amax`; `p = 100` is `minmax`) |
//! | `entropy`    | TensorRT's entropy calibration, below                                       |
//!
//! The INT8 scale is `amax / 127`: symmetric, zero point 0, as TensorRT and the static QDQ
//! models use it. An `amax` below [`MIN_AMAX`] (a tensor that was all zeros) is raised to it,
//! so every scale is a positive normal float.
//!
//! ## Entropy calibration
//!
//! TensorRT's algorithm as NVIDIA published it (Szymon Migacz, "8-bit Inference with
//! TensorRT", GTC 2017): for each candidate `i` of [`START_BIN`]`..=`[`BINS`] kept bins,
//!
//! 1. `P` = the first `i` bins, with the counts of every bin beyond added to bin `i − 1`
//!    (values beyond the threshold saturate there);
//! 2. `Q` = the first `i` bins (without the outliers) merged into [`LEVELS`] = 128 levels —
//!    bin `j` goes to level `⌊j · 128 / i⌋` — and expanded back: each level's total is
//!    spread evenly over its bins that were non-zero, empty bins stay empty;
//! 3. both normalised, `KL(P‖Q) = Σ P_j ln(P_j / Q_j)` over `P_j > 0` (infinite where
//!    `Q_j = 0 < P_j`);
//!
//! and `amax = i · w` for the `i` of least divergence; among equal divergences the largest
//! `i` (the least clipping). TensorRT's own implementation is closed; the merging rule here
//! is the one of NVIDIA's open `pytorch-quantization` (`_compute_amax_entropy`), without its
//! tweak of copying bin 1's count into bin 0.
//!
//! ## TensorRT's calibration cache
//!
//! The text file an `IInt8Calibrator` hands back from `writeCalibrationCache` and takes in
//! `readCalibrationCache`, the file `trtexec --calib=<file>` reads, and the one ONNX
//! Runtime's TensorRT execution provider reads as `trt_int8_calibration_table_name` with
//! `trt_int8_use_native_calibration_table = 1` (tr118's backends set both):
//!
//! ```text
//! TRT-8601-EntropyCalibration2
//! /blk.0/attn/input: 3c010a14
//! logits_input: 3d8f5c29
//! ```
//!
//! The first line is `TRT-<version>-<algorithm>`: `<version>` is TensorRT's
//! `NV_TENSORRT_VERSION` (`major·1000 + minor·100 + patch` up to 8.x, so 8.6.1 is `8601`;
//! `major·10000 + minor·100 + patch` from 10.0, as TensorRT 10's `NvInferVersion.h` defines
//! it, so 10.3.0 is `100300`); `<algorithm>` is the `CalibrationAlgoType` of the calibrator
//! (`EntropyCalibration2`, `EntropyCalibration`, `MinMaxCalibration`, `LegacyCalibration`).
//! Each further line is `<tensor name>: <scale>`, the scale (`amax / 127`) written as the
//! eight lowercase hex digits of its IEEE-754 float32 bits, most significant first.
//!
//! TensorRT compares the header with its calibrator before it trusts a cache (a mismatch
//! means "calibrate again"), so the header must name the TensorRT that builds the engine
//! (`trt_version`) and an algorithm its calibrator reports: `trtexec --calib` uses an entropy
//! calibrator (`EntropyCalibration2`). ONNX Runtime's TensorRT provider reads only the lines
//! after the header and sets each tensor's dynamic range to `scale · 127`. tr118 writes
//! `TRT-8601-…` unless told otherwise: the 8.x encoding is the one certain to be right, and
//! a TensorRT 10 build should say its own version anyway. The algorithm is
//! `EntropyCalibration2` for `entropy`, `MinMaxCalibration` for `minmax` and
//! `LegacyCalibration` (TensorRT's quantile calibrator) for `percentile`.
//!
//! The cache holds only the tensors calibration observed (the inputs of every MatMul/Gemm);
//! TensorRT keeps a tensor without a range out of INT8.
//!
//! ONNX Runtime's Python tool (`onnxruntime.quantization`, `write_calibration_table`)
//! writes a different table for the same provider option with
//! `trt_int8_use_native_calibration_table = 0`: a FlatBuffers file of `(tensor, dynamic
//! range)` string pairs (`calibration.flatbuffers`), beside a `calibration.json` of
//! per-tensor min/max and a plain `calibration.cache` of `name value` lines holding the range
//! itself, not the hex scale. tr118 writes only TensorRT's native format.

/// Histogram bins over `[0, absmax]`.
pub const BINS: usize = 2048;
/// Magnitudes an INT8 value can take (0..=127).
pub(crate) const LEVELS: usize = 128;
/// The fewest bins entropy calibration keeps.
pub(crate) const START_BIN: usize = 128;
/// The smallest `amax`: keeps every scale a positive normal float.
pub(crate) const MIN_AMAX: f32 = 1e-6;

/// How an INT8 range is chosen from the statistics.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Method {
    MinMax,
    /// The percentile of `|x|`, in percent (`99.99`).
    Percentile(f64),
    Entropy,
}

impl Method {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Method::MinMax => "minmax",
            Method::Percentile(_) => "percentile",
            Method::Entropy => "entropy",
        }
    }

    pub(crate) fn needs_histogram(self) -> bool {
        !matches!(self, Method::MinMax)
    }

    /// The TensorRT calibrator algorithm the cache header names.
    pub(crate) fn trt_algorithm(self) -> &'static str {
        match self {
            Method::MinMax => "MinMaxCalibration",
            Method::Percentile(_) => "LegacyCalibration",
            Method::Entropy => "EntropyCalibration2",
        }
    }
}

/// Running statistics of one tensor.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Stats {
    pub min: f32,
    pub max: f32,
    pub elements: u64,
    pub samples: usize,
    /// `max |x|` of each channel (the last axis), for tensors that feed a weight.
    pub channels: Vec<f32>,
}

impl Default for Stats {
    fn default() -> Self {
        Stats { min: f32::INFINITY, max: f32::NEG_INFINITY, elements: 0, samples: 0, channels: Vec::new() }
    }
}

impl Stats {
    /// Adds one sample's values. Errors with the first non-finite value's index.
    pub(crate) fn add<'a>(&mut self, values: impl IntoIterator<Item = &'a f32>) -> Result<(), usize> {
        let (mut lo, mut hi, mut n) = (self.min, self.max, 0u64);
        for (i, &v) in values.into_iter().enumerate() {
            if !v.is_finite() {
                return Err(i);
            }
            lo = lo.min(v);
            hi = hi.max(v);
            n += 1;
        }
        (self.min, self.max) = (lo, hi);
        self.elements += n;
        self.samples += 1;
        Ok(())
    }

    /// Folds one sample's `|x|` into the per-channel maxima over its last axis (`width`
    /// channels). Call after [`Stats::add`], which rejects non-finite values.
    pub(crate) fn add_channels<'a>(&mut self, values: impl IntoIterator<Item = &'a f32>, width: usize) {
        if width == 0 {
            return;
        }
        if self.channels.len() != width {
            self.channels = vec![0.0; width];
        }
        for (i, &v) in values.into_iter().enumerate() {
            let c = &mut self.channels[i % width];
            *c = c.max(v.abs());
        }
    }

    pub(crate) fn absmax(&self) -> f32 {
        if self.elements == 0 { 0.0 } else { self.min.abs().max(self.max.abs()) }
    }
}

/// Counts of `|x|` in [`BINS`] equal bins over `[0, range]`.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    pub range: f32,
    pub counts: Vec<u64>,
}

impl Histogram {
    pub(crate) fn new(range: f32) -> Histogram {
        Histogram { range, counts: vec![0; BINS] }
    }

    pub(crate) fn bin_width(&self) -> f64 {
        f64::from(self.range) / BINS as f64
    }

    pub(crate) fn add<'a>(&mut self, values: impl IntoIterator<Item = &'a f32>) {
        let last = BINS - 1;
        if self.range <= 0.0 {
            let n = values.into_iter().count() as u64;
            self.counts[0] += n;
            return;
        }
        let per = BINS as f64 / f64::from(self.range);
        for &v in values {
            let b = (f64::from(v.abs()) * per) as usize;
            self.counts[b.min(last)] += 1;
        }
    }
}

/// KL divergence of every candidate threshold: `(kept bins i, KL(P‖Q))` for `i` in
/// `START_BIN..=counts.len()` (see the module doc).
pub fn entropy_divergences(counts: &[u64]) -> Vec<(usize, f64)> {
    let total_bins = counts.len();
    let mut out = Vec::with_capacity(total_bins.saturating_sub(START_BIN) + 1);
    let mut beyond: u64 = counts.iter().sum::<u64>() - counts[..START_BIN.min(total_bins)].iter().sum::<u64>();
    let mut level_sum = vec![0f64; LEVELS];
    let mut level_nonzero = vec![0usize; LEVELS];
    for i in START_BIN..=total_bins {
        if i > START_BIN {
            beyond -= counts[i - 1];
        }
        level_sum.fill(0.0);
        level_nonzero.fill(0);
        for (j, &c) in counts[..i].iter().enumerate() {
            if c != 0 {
                let l = j * LEVELS / i;
                level_sum[l] += c as f64;
                level_nonzero[l] += 1;
            }
        }
        let p_total: f64 = counts[..i].iter().map(|&c| c as f64).sum::<f64>() + beyond as f64;
        let q_total: f64 = level_sum.iter().sum();
        let mut kl = 0.0f64;
        for (j, &c) in counts[..i].iter().enumerate() {
            let p = if j == i - 1 { (c + beyond) as f64 } else { c as f64 };
            if p == 0.0 {
                continue;
            }
            let q = if c == 0 {
                0.0
            } else {
                let l = j * LEVELS / i;
                level_sum[l] / level_nonzero[l] as f64
            };
            if q == 0.0 {
                kl = f64::INFINITY;
                break;
            }
            let (p, q) = (p / p_total, q / q_total);
            kl += p * (p / q).ln();
        }
        out.push((i, kl));
    }
    out
}

/// The entropy method's `amax` for a histogram: `(amax, kept bins, divergence)`.
pub fn entropy_amax(h: &Histogram) -> (f32, usize, f64) {
    let divergences = entropy_divergences(&h.counts);
    // The last minimum: among equal divergences, clip the least.
    let (bins, kl) = divergences.iter().copied().fold((h.counts.len(), f64::INFINITY), |best, (i, kl)| if kl <= best.1 { (i, kl) } else { best });
    ((bins as f64 * h.bin_width()) as f32, bins, kl)
}

/// The percentile method's `amax`: the upper edge of the first bin where the cumulative
/// share of values reaches `percent`.
pub(crate) fn percentile_amax(h: &Histogram, percent: f64) -> f32 {
    let total: u64 = h.counts.iter().sum();
    if total == 0 {
        return 0.0;
    }
    let want = percent / 100.0 * total as f64;
    let mut seen = 0u64;
    for (i, &c) in h.counts.iter().enumerate() {
        seen += c;
        if seen as f64 >= want {
            return ((i + 1) as f64 * h.bin_width()) as f32;
        }
    }
    h.range
}

/// `amax / 127`, with `amax` raised to [`MIN_AMAX`].
pub(crate) fn scale_of(amax: f32) -> f32 {
    amax.max(MIN_AMAX) / 127.0
}

/// TensorRT's `NV_TENSORRT_VERSION` of `"MAJOR.MINOR.PATCH"` (see the module doc).
pub(crate) fn trt_version_code(version: &str) -> Result<u32, String> {
    let parts: Vec<&str> = version.split('.').collect();
    let nums: Vec<u32> = parts.iter().map(|p| p.parse::<u32>()).collect::<Result<_, _>>().map_err(|_| format!("`{version}` is not `MAJOR.MINOR.PATCH`"))?;
    let [major, minor, patch] = nums[..] else {
        return Err(format!("`{version}` is not `MAJOR.MINOR.PATCH`"));
    };
    if minor > 99 || patch > 99 {
        return Err(format!("`{version}`: minor and patch are at most 99 in TensorRT's version number"));
    }
    match major {
        1..=9 if minor <= 9 => Ok(major * 1000 + minor * 100 + patch),
        1..=9 => Err(format!("`{version}`: a TensorRT {major}.x minor version is one digit")),
        10.. => Ok(major * 10000 + minor * 100 + patch),
        _ => Err(format!("`{version}` is not a TensorRT version")),
    }
}

/// The cache's first line.
pub(crate) fn cache_header(version_code: u32, algorithm: &str) -> String {
    format!("TRT-{version_code}-{algorithm}")
}

/// The hex of a scale as the cache writes it.
pub(crate) fn scale_hex(scale: f32) -> String {
    format!("{:08x}", scale.to_bits())
}

/// The whole cache file: the header, then `name: hex` per tensor, in the given order.
pub(crate) fn cache_text(header: &str, entries: &[(String, f32)]) -> String {
    let mut s = String::with_capacity(32 * (entries.len() + 1));
    s.push_str(header);
    s.push('\n');
    for (name, scale) in entries {
        s.push_str(name);
        s.push_str(": ");
        s.push_str(&scale_hex(*scale));
        s.push('\n');
    }
    s
}

pub use crate::artifact::calibration::{Calibration, Consumer, TensorCalibration};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn version_codes_follow_tensorrt() {
        assert_eq!(trt_version_code("8.6.1"), Ok(8601));
        assert_eq!(trt_version_code("8.6.0"), Ok(8600));
        assert_eq!(trt_version_code("7.0.0"), Ok(7000));
        assert_eq!(trt_version_code("10.3.0"), Ok(100300));
        assert!(trt_version_code("8.6").is_err());
        assert!(trt_version_code("8.10.0").is_err());
    }

    #[test]
    fn one_over_127_is_the_published_hex() {
        // 1/127, the scale of a range of ±1.
        assert_eq!(scale_hex(scale_of(1.0)), "3c010204");
    }

    #[test]
    fn the_largest_value_lands_in_the_last_bin() {
        let mut h = Histogram::new(2.0);
        h.add(&[0.0, -2.0, 1.0, 0.9999]);
        assert_eq!(h.counts[0], 1);
        assert_eq!(h.counts[BINS - 1], 1);
        assert_eq!(h.counts[BINS / 2], 1);
        assert_eq!(h.counts[BINS / 2 - 1], 1);
    }

    #[test]
    fn percentile_100_is_the_range() {
        let mut h = Histogram::new(4.0);
        h.add(&[0.5, 1.0, 4.0]);
        assert_eq!(percentile_amax(&h, 100.0), 4.0);
        // Two of three values are at or below 1.0: the 60th percentile ends in 1.0's bin.
        let w = h.bin_width();
        assert_eq!(percentile_amax(&h, 60.0), ((1.0 / w).floor() + 1.0) as f32 * w as f32);
    }
}
