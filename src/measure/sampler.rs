//! The resource sampler: a background thread that reads process RSS, and GPU power, memory,
//! temperature and utilisation through NVML, while a measured repetition runs; and the process
//! CPU time over the repetition.
//!
//! A `sweep` node starts one [`Sampler`] and keeps it for all its repetitions. Each measured
//! repetition is a [`Window`]:
//!
//! ```text
//! let w = sampler.begin();   // sample on the caller's thread, open the window, wake the thread
//! let t = Instant::now();    // the caller's clock
//! ... measured work ...      // the thread samples every `interval` into the window
//! let ms = t.elapsed();
//! let r = sampler.end(w);    // close the window, last sample on the caller's thread
//! ```
//!
//! so even a 1 ms repetition has two samples, and `interval = 0` gives exactly those two, with
//! no thread at all. Between windows the thread waits on a condvar: it costs nothing while no
//! measurement runs.
//!
//! | quantity | source | resolution, cost per read | why |
//! |---|---|---|---|
//! | RSS | `/proc/self/statm` field 2 × page size, one `pread` at offset 0 on a file opened once | a page; 0.4 µs | `/proc/self/status` holds the same number in 1.5 KiB of text: 5–13 µs to open, format and read |
//! | CPU time | `clock_gettime(CLOCK_PROCESS_CPUTIME_ID)`, at each end of the window only | 1 ns, all threads, exited ones included; 0.2 µs | `/proc/self/stat` utime+stime (1.2 µs) count `sysconf(_SC_CLK_TCK)` = 100 Hz ticks: a 3 ms spin reads 0 or 10 ms. Summing `/proc/self/task/*/schedstat` (3.8 µs with one thread, a read per thread) lags a running thread by up to a scheduler tick: 3 ms of CPU read between 0 and 6 ms; and it loses threads that exit |
//! | sampler's own CPU | the thread's CPU clock (`pthread_getcpuclockid`), read from the caller's thread at each end | 1 ns | subtracted from the process CPU time, so `cpu_util` is the work's alone |
//! | GPU | NVML, opened once; `power_usage` (mW), `memory_info().used` (bytes, whole device, all processes), `temperature(Gpu)`, `utilization_rates().gpu` | what the driver updates (power and utilisation are averages over the driver's own period, ~100 ms to 1 s) | the only vendor-supported source; a failing read leaves its field `None`, never 0 |
//!
//! The costs are from `cargo run --release --example sampler_overhead` on a shared 2-core VM
//! (load 2–4), which also times a 5 ms two-thread workload with and without sampling, over
//! five runs: the median moved −1.0 to +1.2 % with window ends only or a 10 ms interval, which
//! is the noise there, and +0.2 to +3.0 % at 1 ms — each wake-up preempts the work when every
//! core is busy — while the thread used 0.05–0.22 % of a core at 10 ms and 0.5–0.6 % at 1 ms. A
//! background sample took 2–5 µs without a GPU. On an H200 (driver 580) the four NVML reads
//! make a sample take about 1 ms of wall time, 60 µs of it CPU (the rest waits on the driver):
//! 1.4 % of a core at a 5 ms interval, and the two end samples add about 2 ms per repetition
//! outside the clock. Prefer ≥ 10 ms; the two end samples already bound a shorter repetition.
//!
//! `cpu_util` = (process CPU time − sampler thread CPU time) / window wall time, where the wall
//! time runs from the end of `begin` to the start of `end`, and the process clock is read last in
//! `begin` and first in `end`, so the sampling done by the two ends is outside both. 1.0 is one
//! core busy.
//!
//! The thread takes each background sample holding the window's lock, so a sample never lands
//! in the wrong window: `end` waits for a sample in flight (after the caller's clock stopped),
//! and every sample taken is counted in exactly one window. A sample allocates nothing: the
//! `/proc` read goes into a stack buffer, and the NVML device handle is looked up by index per
//! sample (one more call into the driver library) rather than kept, because [`Device`] borrows
//! the [`Nvml`] the thread shares.
//!
//! Windows do not nest: beginning one closes any open one, and ending that earlier window then
//! reports only its final sample.
//!
//! [`Device`]: nvml_wrapper::Device

use std::fs::File;
use std::os::unix::fs::FileExt;
use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, PoisonError};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nvml_wrapper::Nvml;
use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
use serde::{Deserialize, Serialize};

use super::Resources;

const MIB: f64 = 1024.0 * 1024.0;

/// How to sample.
#[derive(Debug, Clone, Copy)]
pub struct SamplerConfig {
    /// Time between background samples; zero samples only at each end of a window.
    pub interval: Duration,
    /// The NVML index of the GPU to sample, if any.
    pub gpu: Option<u32>,
    /// The process whose memory and CPU time to read, when the work runs in another one (a
    /// torch worker); `None` is this process. Its CPU clock comes from `clock_getcpuclockid`,
    /// as exact as this process's own; the sampler's thread is not in it, so nothing is
    /// subtracted.
    pub pid: Option<u32>,
}

/// The sampler's own cost, reported beside the measurements it took.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SamplerOverhead {
    pub interval_ms: f64,
    /// Samples taken, background and window ends: the sum of every window's `samples`.
    pub samples: u64,
    /// CPU time the sampling thread used (the two samples at each window end run on the
    /// caller's thread, outside its clock, and are not in here).
    pub cpu_time_ms: f64,
    /// Wall time the sampler ran.
    pub wall_ms: f64,
    /// `cpu_time / wall`: the share of one core the sampler took.
    pub cpu_share: f64,
    /// Mean time to take one sample.
    pub mean_sample_us: f64,
    /// Whether GPU readings were available.
    pub gpu: bool,
    /// What could not be sampled, and why (no NVML, no `/proc`, no thread).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// A running sampler: the background thread and the sources it reads.
pub struct Sampler {
    interval: Duration,
    /// The measured process's CPU clock, and whether it is this process (whose CPU time
    /// includes the sampler's thread).
    process_clock: Option<libc::clockid_t>,
    own_process: bool,
    probe: Arc<Probe>,
    shared: Arc<Shared>,
    thread: Option<Background>,
    started: Instant,
    notes: Vec<String>,
}

/// An open measurement window.
pub struct Window {
    generation: u64,
    started: Instant,
    process_cpu: Option<Duration>,
    sampler_cpu: Option<Duration>,
}

impl Sampler {
    /// Opens the sources and, for a non-zero interval, starts the thread, idle until the first
    /// window. What cannot be opened is left out of every window and said in the overhead's
    /// `notes`.
    pub fn start(cfg: SamplerConfig) -> Sampler {
        let mut notes = Vec::new();
        let probe = Arc::new(Probe::open(cfg.gpu, cfg.pid, &mut notes));
        let process_clock = match cfg.pid {
            None => Some(libc::CLOCK_PROCESS_CPUTIME_ID),
            Some(pid) => {
                let mut clock: libc::clockid_t = 0;
                // SAFETY: `clock` is a valid out pointer; a pid that is gone is an error code.
                match unsafe { libc::clock_getcpuclockid(pid as libc::pid_t, &mut clock) } {
                    0 => Some(clock),
                    rc => {
                        notes.push(format!("cpu: no CPU clock for process {pid}: {}", std::io::Error::from_raw_os_error(rc)));
                        None
                    }
                }
            }
        };
        let shared = Arc::new(Shared::default());
        let thread = if cfg.interval.is_zero() {
            None
        } else {
            match Background::spawn(&probe, &shared, cfg.interval) {
                Ok(thread) => Some(thread),
                Err(e) => {
                    notes.push(format!("background sampling: cannot start the thread: {e}; windows have their two end samples only"));
                    None
                }
            }
        };
        Sampler { interval: cfg.interval, process_clock, own_process: cfg.pid.is_none(), probe, shared, thread, started: Instant::now(), notes }
    }

    /// Opens a window: one sample now, on the caller's thread, before its clock starts.
    pub fn begin(&self) -> Window {
        let first = timed_read(&self.probe, &self.shared);
        let generation = {
            let mut state = self.shared.lock();
            state.generation += 1;
            state.open = true;
            state.acc = Accumulator::default();
            state.acc.add(&first);
            state.generation
        };
        self.shared.wake.notify_one();
        // The process clock last, so that the sampling above is outside the window.
        let process_cpu = self.process_cpu_time();
        let sampler_cpu = self.sampler_cpu_time();
        Window { generation, started: Instant::now(), process_cpu, sampler_cpu }
    }

    /// Closes a window after the caller's clock stopped: one last sample, and what the window saw.
    pub fn end(&self, window: Window) -> Resources {
        let wall = window.started.elapsed();
        let sampler_cpu = self.sampler_cpu_time();
        let process_cpu = self.process_cpu_time();
        let mut acc = {
            let mut state = self.shared.lock();
            if state.open && state.generation == window.generation {
                state.open = false;
                std::mem::take(&mut state.acc)
            } else {
                Accumulator::default()
            }
        };
        // Let the thread go idle now rather than at its next tick.
        self.shared.wake.notify_one();
        acc.add(&timed_read(&self.probe, &self.shared));

        let cpu_util = match (window.process_cpu, process_cpu, window.sampler_cpu, sampler_cpu) {
            (Some(p0), Some(p1), Some(s0), Some(s1)) if !wall.is_zero() => {
                let own = s1.saturating_sub(s0);
                Some(p1.saturating_sub(p0).saturating_sub(own).as_secs_f64() / wall.as_secs_f64())
            }
            _ => None,
        };
        acc.resources(cpu_util)
    }

    /// Stops the thread and reports what sampling cost.
    pub fn stop(mut self) -> SamplerOverhead {
        self.finish()
    }

    fn process_cpu_time(&self) -> Option<Duration> {
        self.process_clock.and_then(clock_time)
    }

    /// CPU time of the sampling thread so far: zero without one, or when another process is
    /// measured; `None` if its clock cannot be read (then the window's CPU share cannot be
    /// separated from the sampler's).
    fn sampler_cpu_time(&self) -> Option<Duration> {
        if !self.own_process {
            return Some(Duration::ZERO);
        }
        match &self.thread {
            None => Some(Duration::ZERO),
            Some(thread) => thread.cpu_clock.and_then(clock_time),
        }
    }

    fn finish(&mut self) -> SamplerOverhead {
        let mut notes = std::mem::take(&mut self.notes);
        let mut cpu_time = Duration::ZERO;
        let background = self.thread.is_some();
        if let Some(thread) = self.thread.take() {
            self.shared.lock().stop = true;
            self.shared.wake.notify_one();
            match thread.handle.join() {
                Ok(Some(cpu)) => cpu_time = cpu,
                Ok(None) => notes.push("background sampling: the thread's CPU clock could not be read".to_string()),
                Err(_) => notes.push("background sampling: the thread panicked".to_string()),
            }
        }
        let wall = self.started.elapsed();
        let samples = self.shared.samples.load(Ordering::Relaxed);
        let sample_ns = self.shared.sample_ns.load(Ordering::Relaxed);
        SamplerOverhead {
            interval_ms: if background { self.interval.as_secs_f64() * 1e3 } else { 0.0 },
            samples,
            cpu_time_ms: cpu_time.as_secs_f64() * 1e3,
            wall_ms: wall.as_secs_f64() * 1e3,
            cpu_share: if wall.is_zero() { 0.0 } else { cpu_time.as_secs_f64() / wall.as_secs_f64() },
            mean_sample_us: if samples == 0 { 0.0 } else { sample_ns as f64 / samples as f64 / 1e3 },
            gpu: self.probe.gpu.is_some(),
            notes,
        }
    }
}

impl Drop for Sampler {
    fn drop(&mut self) {
        if self.thread.is_some() {
            self.finish();
        }
    }
}

/// The background thread and its CPU clock.
struct Background {
    handle: JoinHandle<Option<Duration>>,
    cpu_clock: Option<libc::clockid_t>,
}

impl Background {
    fn spawn(probe: &Arc<Probe>, shared: &Arc<Shared>, interval: Duration) -> std::io::Result<Background> {
        let (probe, shared) = (Arc::clone(probe), Arc::clone(shared));
        let handle = std::thread::Builder::new().name("tr118-sampler".to_string()).spawn(move || run_background(&probe, &shared, interval))?;
        let mut clock: libc::clockid_t = 0;
        // SAFETY: the thread is alive until joined in `finish`, so its pthread id is valid here.
        let rc = unsafe { libc::pthread_getcpuclockid(handle.as_pthread_t(), &mut clock) };
        Ok(Background { handle, cpu_clock: (rc == 0).then_some(clock) })
    }
}

/// The thread's loop: idle until a window opens, then a sample every `interval` until it
/// closes. Returns the thread's own CPU time.
fn run_background(probe: &Probe, shared: &Shared, interval: Duration) -> Option<Duration> {
    let mut state = shared.lock();
    'idle: loop {
        while !state.stop && !state.open {
            state = shared.wake.wait(state).unwrap_or_else(PoisonError::into_inner);
        }
        if state.stop {
            break;
        }
        let generation = state.generation;
        let mut next = Instant::now() + interval;
        loop {
            let now = Instant::now();
            if now < next {
                state = shared.wake.wait_timeout(state, next - now).unwrap_or_else(PoisonError::into_inner).0;
            }
            if state.stop || !state.open || state.generation != generation {
                continue 'idle;
            }
            let now = Instant::now();
            if now < next {
                continue; // woken early
            }
            let reading = timed_read(probe, shared);
            state.acc.add(&reading);
            next += interval;
            if next < now {
                // Fell behind (descheduled): skip the missed ticks instead of sampling in a burst.
                next = now + interval;
            }
        }
    }
    drop(state);
    clock_time(libc::CLOCK_THREAD_CPUTIME_ID)
}

/// State shared by the caller's thread and the sampling thread.
#[derive(Default)]
struct Shared {
    state: Mutex<State>,
    wake: Condvar,
    samples: AtomicU64,
    sample_ns: AtomicU64,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        // The state is plain numbers, valid even if a holder panicked.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[derive(Default)]
struct State {
    /// Incremented by each `begin`, so the thread notices a window replaced while it slept.
    generation: u64,
    open: bool,
    stop: bool,
    acc: Accumulator,
}

/// The sources, opened once.
struct Probe {
    statm: Option<File>,
    page_bytes: f64,
    gpu: Option<Gpu>,
}

struct Gpu {
    nvml: Nvml,
    index: u32,
}

impl Probe {
    fn open(gpu: Option<u32>, pid: Option<u32>, notes: &mut Vec<String>) -> Probe {
        // SAFETY: sysconf has no preconditions.
        let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        let statm_path = pid.map_or_else(|| "/proc/self/statm".to_string(), |p| format!("/proc/{p}/statm"));
        let statm = match File::open(&statm_path) {
            Ok(f) if page > 0 => Some(f),
            Ok(_) => {
                notes.push("rss: the page size is unknown (`sysconf(_SC_PAGESIZE)` failed)".to_string());
                None
            }
            Err(e) => {
                notes.push(format!("rss: cannot open `{statm_path}`: {e}"));
                None
            }
        };
        let gpu = gpu.and_then(|index| match Nvml::init() {
            Ok(nvml) => match nvml.device_by_index(index) {
                Ok(_) => Some(Gpu { nvml, index }),
                Err(e) => {
                    notes.push(format!("gpu {index}: nvml has no such device: {e}"));
                    None
                }
            },
            Err(e) => {
                notes.push(format!("gpu {index}: nvml is not available: {e}"));
                None
            }
        });
        Probe { statm, page_bytes: page as f64, gpu }
    }

    fn read(&self) -> Reading {
        let mut r = Reading { rss_mib: self.rss_mib(), ..Reading::default() };
        if let Some(gpu) = &self.gpu
            && let Ok(dev) = gpu.nvml.device_by_index(gpu.index)
        {
            r.power_w = dev.power_usage().ok().map(|mw| f64::from(mw) / 1e3);
            r.mem_mib = dev.memory_info().ok().map(|m| m.used as f64 / MIB);
            r.temp_c = dev.temperature(TemperatureSensor::Gpu).ok().map(f64::from);
            r.util_pct = dev.utilization_rates().ok().map(|u| f64::from(u.gpu));
        }
        r
    }

    fn rss_mib(&self) -> Option<f64> {
        let mut buf = [0u8; 128];
        let n = self.statm.as_ref()?.read_at(&mut buf, 0).ok()?;
        let pages = nth_number(&buf[..n], 1)?;
        Some(pages as f64 * self.page_bytes / MIB)
    }
}

/// Takes one reading and adds its cost to the sampler's totals.
fn timed_read(probe: &Probe, shared: &Shared) -> Reading {
    let t = Instant::now();
    let reading = probe.read();
    let ns = u64::try_from(t.elapsed().as_nanos()).unwrap_or(u64::MAX);
    shared.samples.fetch_add(1, Ordering::Relaxed);
    shared.sample_ns.fetch_add(ns, Ordering::Relaxed);
    reading
}

/// The `n`th (from 0) space-separated decimal number in `text`, parsed without allocating.
fn nth_number(text: &[u8], n: usize) -> Option<u64> {
    let field = text.split(|b| b.is_ascii_whitespace()).filter(|f| !f.is_empty()).nth(n)?;
    field.iter().try_fold(0u64, |acc, &b| if b.is_ascii_digit() { acc.checked_mul(10)?.checked_add(u64::from(b - b'0')) } else { None })
}

fn clock_time(clock: libc::clockid_t) -> Option<Duration> {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out pointer; an invalid clock id is reported through the return value.
    let rc = unsafe { libc::clock_gettime(clock, &mut ts) };
    (rc == 0).then(|| Duration::new(u64::try_from(ts.tv_sec).unwrap_or(0), u32::try_from(ts.tv_nsec).unwrap_or(0)))
}

/// One sample; `None` where the source could not be read.
#[derive(Debug, Default, Clone, Copy)]
struct Reading {
    rss_mib: Option<f64>,
    power_w: Option<f64>,
    mem_mib: Option<f64>,
    temp_c: Option<f64>,
    util_pct: Option<f64>,
}

/// A window's running peaks and sums.
#[derive(Debug, Default)]
struct Accumulator {
    samples: usize,
    rss: Stat,
    power: Stat,
    mem: Stat,
    temp: Stat,
    util: Stat,
}

impl Accumulator {
    fn add(&mut self, r: &Reading) {
        self.samples += 1;
        self.rss.add(r.rss_mib);
        self.power.add(r.power_w);
        self.mem.add(r.mem_mib);
        self.temp.add(r.temp_c);
        self.util.add(r.util_pct);
    }

    fn resources(&self, cpu_util: Option<f64>) -> Resources {
        Resources {
            samples: self.samples,
            rss_peak_mib: self.rss.peak(),
            rss_mean_mib: self.rss.mean(),
            cpu_util,
            gpu_power_peak_w: self.power.peak(),
            gpu_power_mean_w: self.power.mean(),
            gpu_mem_peak_mib: self.mem.peak(),
            gpu_mem_mean_mib: self.mem.mean(),
            gpu_temp_peak_c: self.temp.peak(),
            gpu_util_mean_pct: self.util.mean(),
        }
    }
}

/// Peak and mean of the readings that succeeded; a field is counted on its own, so a read
/// that fails now and then does not drag the mean towards zero.
#[derive(Debug, Default, Clone, Copy)]
struct Stat {
    count: u32,
    sum: f64,
    peak: f64,
}

impl Stat {
    fn add(&mut self, value: Option<f64>) {
        if let Some(v) = value {
            self.peak = if self.count == 0 { v } else { self.peak.max(v) };
            self.count += 1;
            self.sum += v;
        }
    }

    fn peak(&self) -> Option<f64> {
        (self.count > 0).then_some(self.peak)
    }

    fn mean(&self) -> Option<f64> {
        (self.count > 0).then(|| self.sum / f64::from(self.count))
    }
}

#[cfg(test)]
mod tests {
    use super::{Sampler, Window, nth_number};

    #[test]
    fn sampler_and_window_can_move_to_another_thread() {
        fn send<T: Send>() {}
        send::<Sampler>();
        send::<Window>();
    }

    #[test]
    fn statm_fields_parse_as_numbers() {
        assert_eq!(nth_number(b"12345 678 90 1 0 2 0\n", 1), Some(678));
        assert_eq!(nth_number(b"12345 678\n", 2), None);
        assert_eq!(nth_number(b"1 x2 3", 1), None);
    }
}
