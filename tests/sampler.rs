//! The resource sampler against independent readings taken by the test itself.
//!
//! | check | against |
//! |---|---|
//! | RSS while 256 MiB is held | `/proc/self/statm` read and parsed here, and a window before it |
//! | a 256 MiB peak freed before the window ends | only the background thread can see it |
//! | CPU of one spinning thread | that thread's own CPU clock over the test's wall clock |
//! | CPU of a sleeping window, with a busy sampler | near zero: the sampler's own time is excluded |
//! | sample counts | two per window at interval 0; `stop` equals the windows' sum; none between windows |
//! | GPU fields | present exactly when `backend::probe::gpu_info` finds the GPU (never here) |
//!
//! CPU shares and memory are process-wide, so the tests run one at a time, and in a binary of
//! their own: in the suite's process, other tests' threads would add to what they measure.

use std::hint::black_box;
use std::sync::{Mutex, MutexGuard};
use std::thread::sleep;
use std::time::{Duration, Instant};

use tr118::measure::Resources;
use tr118::measure::sampler::{Sampler, SamplerConfig};

const BIG: usize = 256 << 20;

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn sampler(interval: Duration) -> Sampler {
    Sampler::start(SamplerConfig { interval, gpu: None, pid: None })
}

/// Resident MiB from `/proc/self/statm` and the page size, read the plain way.
fn statm_rss_mib() -> f64 {
    let text = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: f64 = text.split_whitespace().nth(1).expect("statm has a resident field").parse().expect("resident pages");
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as f64;
    pages * page / (1024.0 * 1024.0)
}

/// `BIG` bytes, every page written so that it is resident.
fn touched_block() -> Vec<u8> {
    let mut block = vec![0u8; BIG];
    for i in (0..BIG).step_by(4096) {
        block[i] = 1;
    }
    black_box(block)
}

fn thread_cpu() -> Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    assert_eq!(unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) }, 0);
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

fn spin(for_: Duration) {
    let t = Instant::now();
    let mut x = 1u64;
    while t.elapsed() < for_ {
        for _ in 0..1000 {
            x = black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
        }
    }
}

#[test]
fn rss_peak_rises_by_the_memory_held_in_the_window() {
    let _serial = serial();
    let s = sampler(Duration::from_millis(10));
    let w = s.begin();
    let before = s.end(w);

    let w = s.begin();
    let block = touched_block();
    let independent = statm_rss_mib();
    let during = s.end(w);
    drop(block);
    s.stop();

    let (before, peak) = (before.rss_peak_mib.expect("rss before"), during.rss_peak_mib.expect("rss during"));
    assert!(peak >= before + 250.0, "peak {peak} MiB, before {before} MiB: the 256 MiB held is missing");
    // The end sample sees the block still held: the peak is at least what the test read.
    assert!((independent - 1.0..independent + 16.0).contains(&peak), "peak {peak} MiB, statm read here {independent} MiB");
    let mean = during.rss_mean_mib.expect("rss mean");
    assert!(mean <= peak && mean >= before - 1.0, "mean {mean} MiB outside [{before}, {peak}]");
}

#[test]
fn background_samples_catch_a_peak_gone_before_the_window_ends() {
    let _serial = serial();
    let s = sampler(Duration::from_millis(2));
    let baseline = statm_rss_mib();
    let w = s.begin();
    let block = touched_block();
    sleep(Duration::from_millis(300));
    drop(block);
    let after_free = statm_rss_mib();
    assert!(after_free < baseline + 64.0, "the allocator kept the block resident ({after_free} MiB), so the test proves nothing");
    let r = s.end(w);
    s.stop();

    assert!(r.samples > 2, "{} samples in 300 ms at 2 ms", r.samples);
    let peak = r.rss_peak_mib.expect("rss");
    assert!(peak >= baseline + 250.0, "peak {peak} MiB, baseline {baseline} MiB: the thread missed the block");
}

#[test]
fn one_spinning_thread_reads_as_one_core() {
    let _serial = serial();
    let s = sampler(Duration::from_millis(10));
    let w = s.begin();
    let (t, cpu) = (Instant::now(), thread_cpu());
    spin(Duration::from_millis(200));
    let reference = (thread_cpu() - cpu).as_secs_f64() / t.elapsed().as_secs_f64();
    let r = s.end(w);
    s.stop();

    let util = r.cpu_util.expect("cpu_util");
    // On a loaded machine the spinning thread gets less than a core; the sampler must agree
    // with what the thread itself got.
    assert!(reference > 0.3, "the spinning thread got {reference:.2} of a core: too loaded to tell");
    assert!((util - reference).abs() <= 0.15, "cpu_util {util:.3}, the spinning thread's own share {reference:.3}");
    assert!((0.6..=1.4).contains(&util) || reference < 0.75, "cpu_util {util:.3} for one busy core");
}

#[test]
fn sleeping_window_reads_near_zero_cpu_even_with_a_busy_sampler() {
    let _serial = serial();
    // A short interval makes the sampler thread itself measurably busy.
    let s = sampler(Duration::from_micros(100));
    let w = s.begin();
    sleep(Duration::from_millis(300));
    let r = s.end(w);
    let overhead = s.stop();

    let util = r.cpu_util.expect("cpu_util");
    assert!(util < 0.02, "cpu_util {util:.4} while sleeping; the sampler alone took {:.4}", overhead.cpu_share);
    assert!(r.samples > 100, "{} samples in 300 ms at 100 µs", r.samples);
}

#[test]
fn interval_zero_takes_exactly_the_two_end_samples() {
    let _serial = serial();
    let s = sampler(Duration::ZERO);
    for _ in 0..3 {
        let w = s.begin();
        sleep(Duration::from_millis(20));
        assert_eq!(s.end(w).samples, 2);
    }
    let o = s.stop();
    assert_eq!(o.samples, 6);
    assert_eq!((o.interval_ms, o.cpu_time_ms, o.cpu_share), (0.0, 0.0, 0.0));
    assert!(o.mean_sample_us > 0.0);
}

#[test]
fn stop_counts_every_window_sample_and_none_between_windows() {
    let _serial = serial();
    let s = sampler(Duration::from_millis(1));
    let mut windows: Vec<Resources> = Vec::new();
    let mut window_wall = Duration::ZERO;
    for _ in 0..5 {
        let t = Instant::now();
        let w = s.begin();
        sleep(Duration::from_millis(20));
        windows.push(s.end(w));
        window_wall += t.elapsed();
        // Idle between windows: nothing may be sampled here.
        sleep(Duration::from_millis(30));
    }
    let o = s.stop();

    let total: usize = windows.iter().map(|r| r.samples).sum();
    assert!(windows.iter().all(|r| r.samples >= 2));
    assert_eq!(o.samples, total as u64, "stop's count against the windows' {:?}", windows.iter().map(|r| r.samples).collect::<Vec<_>>());
    assert!(total > 10, "{total} samples in 100 ms of windows at 1 ms");
    assert_eq!(o.interval_ms, 1.0);
    assert!(o.wall_ms >= window_wall.as_secs_f64() * 1e3);
    assert!(o.cpu_time_ms > 0.0 && o.cpu_share > 0.0 && o.cpu_share < 1.0, "{o:?}");
    assert!(o.mean_sample_us > 0.0);
}

#[test]
fn beginning_a_window_closes_the_open_one() {
    let _serial = serial();
    let s = sampler(Duration::ZERO);
    let first = s.begin();
    let second = s.begin();
    assert_eq!(s.end(first).samples, 1, "the replaced window keeps only its final sample");
    assert_eq!(s.end(second).samples, 2);
}

#[test]
fn gpu_fields_are_read_exactly_when_nvml_finds_the_gpu() {
    let _serial = serial();
    let present = tr118::backend::probe::gpu_info(0).is_some();
    let s = Sampler::start(SamplerConfig { interval: Duration::from_millis(5), gpu: Some(0), pid: None });
    let w = s.begin();
    sleep(Duration::from_millis(20));
    let r = s.end(w);
    let o = s.stop();
    eprintln!("GPU present: {present}\n{r:?}\n{o:?}");

    assert_eq!(o.gpu, present);
    let fields = [r.gpu_power_peak_w, r.gpu_power_mean_w, r.gpu_mem_peak_mib, r.gpu_mem_mean_mib, r.gpu_temp_peak_c, r.gpu_util_mean_pct];
    if present {
        // An idle GPU may have nothing allocated: 0 MiB in use is a reading, not a miss.
        assert!(r.gpu_mem_peak_mib.is_some_and(|m| m >= 0.0), "{r:?}");
        assert!(r.gpu_power_peak_w.is_some_and(|w| w > 0.0), "a powered GPU draws power: {r:?}");
        assert!(r.gpu_temp_peak_c.is_some_and(|t| t > 0.0) && r.gpu_util_mean_pct.is_some(), "{r:?}");
    } else {
        assert!(fields.iter().all(Option::is_none), "no GPU, yet {r:?}");
        assert!(o.notes.iter().any(|n| n.starts_with("gpu 0:")), "no note says why: {:?}", o.notes);
    }
    assert!(r.rss_peak_mib.is_some() && r.cpu_util.is_some());
}
