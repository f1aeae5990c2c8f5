//! The machine's memory copy bandwidth, STREAM-style: `b = a` over arrays far larger than any
//! cache, counting the bytes read and written (2 × the array). The best of several passes is
//! the figure, as STREAM reports it; with `THREADS` the arrays are split in contiguous
//! chunks, one per thread.
//!
//! ```sh
//! cargo run --release --example membw -- [MIB_PER_ARRAY] [THREADS]    # defaults 512 and all CPUs
//! ```
//!
//! The last line is one JSON object: `{"mib": …, "threads": …, "copy_gb_s": …, "read_gb_s": …}`
//! where `read_gb_s` is the same pass counted as bytes read only (what a decode step does to
//! weights).

use std::time::Instant;

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let mib: usize = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(512);
    let threads: usize = args.get(2).and_then(|s| s.parse().ok()).unwrap_or_else(|| std::thread::available_parallelism().map_or(1, usize::from));
    let n = mib * 1024 * 1024 / 8;
    let a: Vec<f64> = (0..n).map(|i| i as f64).collect();
    let mut b = vec![0.0f64; n];
    let chunk = n.div_ceil(threads);
    let mut best = f64::INFINITY;
    for _ in 0..7 {
        let start = Instant::now();
        std::thread::scope(|s| {
            for (src, dst) in a.chunks(chunk).zip(b.chunks_mut(chunk)) {
                s.spawn(move || dst.copy_from_slice(src));
            }
        });
        best = best.min(start.elapsed().as_secs_f64());
    }
    assert_eq!(b[n - 1], (n - 1) as f64);
    let bytes = (n * 8) as f64;
    let copy = 2.0 * bytes / best / 1e9;
    let read = bytes / best / 1e9;
    println!("copy of {mib} MiB with {threads} thread(s): {copy:.2} GB/s (read + write), best of 7");
    println!("{{\"mib\": {mib}, \"threads\": {threads}, \"copy_gb_s\": {copy:.3}, \"read_gb_s\": {read:.3}}}");
}
