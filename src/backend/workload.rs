//! The measured work of each sweep mode, timed with a monotonic clock around exactly that
//! work: inputs are built before the clock starts, and nothing is copied out of ONNX Runtime
//! but the one row per sequence that greedy decoding reads.
//!
//! Greedy decoding takes the argmax of the last position's logits (ties go to the lowest
//! id) and never stops early: every repetition produces exactly `new_tokens` tokens per
//! sequence, end-of-text included, so repetitions and backends do the same work.

use std::time::{Duration, Instant};

use super::{Backend, BackendError, Prepared};
use crate::runtime::last_argmax;

/// One timed greedy generation.
#[derive(Debug, Clone)]
pub struct Generation {
    /// The generated ids, `[batch, new_tokens]` row-major.
    pub ids: Vec<i64>,
    /// From the clock's start to the first new token of every sequence.
    pub ttft: Duration,
    /// From the clock's start to the last new token.
    pub total: Duration,
}

fn wrong_shape(batch: usize, got: usize) -> BackendError {
    BackendError::Failed(format!("the model returned logits for {got} sequence(s), expected {batch} (`[batch, len, vocab]`)"))
}

/// One forward pass over prepared inputs: the latency of a prefill.
pub(crate) fn prefill<B: Backend + ?Sized>(backend: &mut B, inputs: &Prepared) -> Result<Duration, BackendError> {
    let start = Instant::now();
    backend.run_prefill_inputs(inputs, &mut |_| {})?;
    Ok(start.elapsed())
}

/// Greedy generation with the key/value cache (a `decoder` model): the prompt's forward pass
/// fills the cache and gives the first token; each further token is one single-token step.
pub fn generate_cached<B: Backend + ?Sized>(backend: &mut B, prompt: &[i64], batch: usize, new_tokens: usize) -> Result<Generation, BackendError> {
    let prompt_len = prompt.len() / batch.max(1);
    let mut cache = backend.new_cache(batch)?;
    let mut next = Vec::with_capacity(batch);
    let mut ids = vec![0i64; batch * new_tokens];
    let start = Instant::now();
    backend.decode_step_greedy(&mut cache, prompt, prompt_len, &mut next)?;
    let ttft = start.elapsed();
    for i in 0..new_tokens {
        if next.len() != batch {
            return Err(wrong_shape(batch, next.len()));
        }
        for (b, &t) in next.iter().enumerate() {
            ids[b * new_tokens + i] = t;
        }
        if i + 1 < new_tokens {
            let step = std::mem::take(&mut next);
            backend.decode_step_greedy(&mut cache, &step, 1, &mut next)?;
        }
    }
    Ok(Generation { ids, ttft, total: start.elapsed() })
}

/// Greedy generation without a cache (a `prefill` model): every new token is a full forward
/// pass over the prompt and everything generated so far — the original study's method.
pub(crate) fn generate_uncached<B: Backend + ?Sized>(backend: &mut B, prompt: &[i64], batch: usize, new_tokens: usize) -> Result<Generation, BackendError> {
    let prompt_len = prompt.len() / batch.max(1);
    let mut seqs = prompt.to_vec();
    let mut next = Vec::with_capacity(batch);
    let mut ttft = Duration::ZERO;
    let start = Instant::now();
    for i in 0..new_tokens {
        let len = prompt_len + i;
        let mask = vec![1i64; batch * len];
        let inputs = backend.prefill_inputs(&seqs, &mask, batch, len)?;
        backend.run_prefill_inputs(&inputs, &mut |l| last_argmax(l, &mut next))?;
        if next.len() != batch {
            return Err(wrong_shape(batch, next.len()));
        }
        if i == 0 {
            ttft = start.elapsed();
        }
        let mut grown = Vec::with_capacity(batch * (len + 1));
        for (row, &t) in seqs.chunks(len).zip(&next) {
            grown.extend_from_slice(row);
            grown.push(t);
        }
        seqs = grown;
    }
    let total = start.elapsed();
    let ids = seqs.chunks(prompt_len + new_tokens).flat_map(|row| row[prompt_len..].to_vec()).collect();
    Ok(Generation { ids, ttft, total })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::ArrayD;

    #[test]
    fn the_argmax_is_of_the_last_position_and_ties_go_to_the_lowest_id() {
        // [batch 2, len 2, vocab 3]
        let logits = ArrayD::from_shape_vec(vec![2, 2, 3], vec![9.0, 0.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0, 9.0, 3.0, 2.0, 1.0]).unwrap();
        let mut out = Vec::new();
        last_argmax(logits.view(), &mut out);
        assert_eq!(out, vec![1, 0]);
    }
}
