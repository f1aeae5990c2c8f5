//! What the resource sampler costs the work it measures, and why it reads what it reads.
//!
//! ```sh
//! cargo run --release --example sampler_overhead [-- ITERATIONS]
//! ```
//!
//! Part 1 times each candidate source of process CPU time and RSS per call, and shows the
//! resolution of each on a spin of 3 ms of CPU time (by the thread's own clock, so that a busy
//! machine does not shorten it). Part 2 times a fixed CPU-bound workload (a matrix
//! product on two threads, ~5–20 ms) with no sampler, with window ends only (interval 0), and
//! with the sampler at 10 ms and 1 ms, interleaved in rotating order so that drift on a shared
//! machine lands on every mode alike; it prints each mode's mean ± CI95, its paired difference
//! from "off", and what each sampler reports about itself.

use std::fs::File;
use std::hint::black_box;
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use tr118::measure::sampler::{Sampler, SamplerConfig};

/// Matrix side: 2·N³ flops per iteration.
const N: usize = 384;
/// Two-sided 95 % Student t for 200 or more degrees of freedom (1.972 at 200, 1.960 at ∞).
const T95: f64 = 1.97;

fn main() -> anyhow::Result<()> {
    let iterations: usize = std::env::args().nth(1).map_or(Ok(200), |s| s.parse())?;
    sources()?;
    overhead(iterations);
    Ok(())
}

fn sources() -> anyhow::Result<()> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    anyhow::ensure!(ticks > 0.0, "`sysconf(_SC_CLK_TCK)` failed");
    let stat = File::open("/proc/self/stat")?;
    let statm = File::open("/proc/self/statm")?;
    let clock = || {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    };
    let stat_ticks = || {
        let mut buf = [0u8; 1024];
        let n = stat.read_at(&mut buf, 0).unwrap_or(0);
        // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
        let close = buf[..n].iter().rposition(|&b| b == b')').unwrap_or(0);
        let rest = std::str::from_utf8(&buf[close + 1..n]).unwrap_or("");
        let mut f = rest.split_whitespace().skip(11).map(|x| x.parse::<f64>().unwrap_or(0.0));
        (f.next().unwrap_or(0.0) + f.next().unwrap_or(0.0)) / ticks
    };
    let schedstat = || {
        let mut ns = 0.0;
        for task in std::fs::read_dir("/proc/self/task").into_iter().flatten().flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("schedstat")) {
                ns += text.split_whitespace().next().and_then(|x| x.parse::<f64>().ok()).unwrap_or(0.0);
            }
        }
        ns * 1e-9
    };
    let statm_read = || {
        let mut buf = [0u8; 128];
        statm.read_at(&mut buf, 0).unwrap_or(0)
    };
    let status_read = || std::fs::read_to_string("/proc/self/status").map_or(0, |s| s.len());

    println!("sources ({} threads in the process, clock tick {} Hz)", std::fs::read_dir("/proc/self/task")?.count(), ticks);
    println!("{:<44} {:>10} {:>18}", "source", "µs/call", "3 ms of CPU reads");
    let cpu_sources: [(&str, &dyn Fn() -> f64); 3] = [
        ("clock_gettime(CLOCK_PROCESS_CPUTIME_ID)", &clock),
        ("/proc/self/stat utime+stime (pread)", &stat_ticks),
        ("Σ /proc/self/task/*/schedstat", &schedstat),
    ];
    for (name, read) in cpu_sources {
        let per_call = per_call_us(|| black_box(read()));
        let before = read();
        spin(Duration::from_millis(3));
        println!("{name:<44} {per_call:>10.2} {:>15.3} ms", (read() - before) * 1e3);
    }
    println!("{:<44} {:>10.2}", "/proc/self/statm (pread)", per_call_us(|| black_box(statm_read())));
    println!("{:<44} {:>10.2}", "/proc/self/status (open + read)", per_call_us(|| black_box(status_read())));
    println!();
    Ok(())
}

fn per_call_us<T>(mut f: impl FnMut() -> T) -> f64 {
    const CALLS: u32 = 2000;
    let t = Instant::now();
    for _ in 0..CALLS {
        black_box(f());
    }
    t.elapsed().as_secs_f64() * 1e6 / f64::from(CALLS)
}

/// Spins until this thread has used `cpu` of CPU time.
fn spin(cpu: Duration) {
    let thread_cpu = || {
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: valid out pointer.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    };
    let start = thread_cpu();
    let mut x = 1u64;
    while thread_cpu() - start < cpu {
        x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
    }
}

/// C = A·B on two threads, each taking half the rows.
fn workload(a: &[f32], b: &[f32], c: &mut [f32]) {
    let (top, bottom) = c.split_at_mut(N * N / 2);
    std::thread::scope(|s| {
        s.spawn(|| rows(a, b, top, 0));
        rows(a, b, bottom, N / 2);
    });
    black_box(c);
}

fn rows(a: &[f32], b: &[f32], c: &mut [f32], first_row: usize) {
    c.fill(0.0);
    for (r, c_row) in c.chunks_mut(N).enumerate() {
        let a_row = &a[(first_row + r) * N..][..N];
        for (k, &a_rk) in a_row.iter().enumerate() {
            for (c_rj, &b_kj) in c_row.iter_mut().zip(&b[k * N..][..N]) {
                *c_rj += a_rk * b_kj;
            }
        }
    }
}

fn overhead(iterations: usize) {
    let a: Vec<f32> = (0..N * N).map(|i| (i % 7) as f32 * 0.1).collect();
    let b: Vec<f32> = (0..N * N).map(|i| (i % 5) as f32 * 0.2).collect();
    let mut c = vec![0.0f32; N * N];
    for _ in 0..10 {
        workload(&a, &b, &mut c);
    }

    let configs = [None, Some(Duration::ZERO), Some(Duration::from_millis(10)), Some(Duration::from_millis(1))];
    let names = ["off", "ends only", "10 ms", "1 ms"];
    let samplers: Vec<Option<Sampler>> =
        configs.iter().map(|c| c.map(|interval| Sampler::start(SamplerConfig { interval, gpu: Some(0), pid: None }))).collect();
    let mut times = vec![Vec::with_capacity(iterations); configs.len()];
    let mut window_samples = vec![0usize; configs.len()];
    for i in 0..iterations {
        for j in 0..configs.len() {
            let m = (i + j) % configs.len();
            let window = samplers[m].as_ref().map(Sampler::begin);
            let t = Instant::now();
            workload(&a, &b, &mut c);
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if let (Some(s), Some(w)) = (&samplers[m], window) {
                window_samples[m] += s.end(w).samples;
            }
            times[m].push(ms);
        }
    }

    println!("workload: {N}×{N} f32 matrix product on 2 threads, {iterations} iterations per mode, interleaved");
    println!(
        "{:<10} {:>16} {:>9} {:>20} {:>10} {:>8} {:>8} {:>10} {:>10}",
        "mode", "ms mean±CI95", "median", "Δ mean vs off", "Δ median", "samples", "per win", "cpu_share", "µs/sample"
    );
    let off_mean = mean_ci(&times[0]).0;
    let off_median = median(&times[0]);
    for (m, sampler) in samplers.into_iter().enumerate() {
        let (mean, ci) = mean_ci(&times[m]);
        let diffs: Vec<f64> = times[m].iter().zip(&times[0]).map(|(x, off)| x - off).collect();
        let (d, dci) = mean_ci(&diffs);
        let med = median(&times[m]);
        let (delta, delta_median) = if m == 0 {
            (String::from("—"), String::from("—"))
        } else {
            (format!("{:+.2}% ± {:.2}%", 100.0 * d / off_mean, 100.0 * dci / off_mean), format!("{:+.2}%", 100.0 * (med / off_median - 1.0)))
        };
        match sampler.map(Sampler::stop) {
            None => println!("{:<10} {mean:>8.3} ± {ci:<5.3} {med:>9.3} {delta:>20} {delta_median:>10}", names[m]),
            Some(o) => println!(
                "{:<10} {mean:>8.3} ± {ci:<5.3} {med:>9.3} {delta:>20} {delta_median:>10} {:>8} {:>8.1} {:>10.5} {:>10.2}",
                names[m],
                o.samples,
                window_samples[m] as f64 / iterations as f64,
                o.cpu_share,
                o.mean_sample_us
            ),
        }
    }
}

fn median(x: &[f64]) -> f64 {
    let mut sorted = x.to_vec();
    sorted.sort_by(f64::total_cmp);
    let n = sorted.len();
    if n % 2 == 1 { sorted[n / 2] } else { (sorted[n / 2 - 1] + sorted[n / 2]) / 2.0 }
}

fn mean_ci(x: &[f64]) -> (f64, f64) {
    let n = x.len() as f64;
    let mean = x.iter().sum::<f64>() / n;
    let var = x.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0).max(1.0);
    (mean, T95 * (var / n).sqrt())
}
