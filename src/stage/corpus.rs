//! Evaluation text as the stages that read a corpus see it (`perplexity`, `calibrate`,
//! `quantize`'s sensitivity pass, the sweep's prompts): the text, its tokens and the seeded
//! windows over them, in one place, in the `stage` implementation set that every node's key
//! holds, so an edit here moves the keys of all of them.

use super::StageError;

/// The text without the `<doc …>` and `</doc>` lines of a Wikipedia extract; the other lines
/// are kept as they are, newlines included.
pub(crate) fn strip_doc_markers(text: &str) -> String {
    text.split_inclusive('\n').filter(|l| !(l.starts_with("<doc") || l.starts_with("</doc"))).collect()
}

/// The token ids of the text at `corpus` (its document markers stripped with `strip`), whole:
/// no special tokens added and no truncation, whatever the tokenizer file says (a truncation
/// setting there would silently cut the corpus).
pub(crate) fn corpus_ids(corpus: &std::path::Path, tokenizer: &std::path::Path, strip: bool) -> Result<Vec<u32>, StageError> {
    let text = std::fs::read_to_string(corpus).map_err(StageError::io("reading corpus", corpus))?;
    let text = if strip { strip_doc_markers(&text) } else { text };
    let mut tokenizer = crate::tokenizer::load_tokenizer_json(tokenizer).map_err(|e| e.to_string())?;
    tokenizer.with_truncation(None).map_err(|e| e.to_string())?;
    let encoding = tokenizer.encode(text.as_str(), false).map_err(|e| format!("tokenizing the corpus: {e}"))?;
    Ok(encoding.get_ids().to_vec())
}

/// SplitMix64: a seeded, portable stream for choosing sample windows.
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in `0..=max` (rejection sampling, so no value is favoured).
    fn below_or_equal(&mut self, max: u64) -> u64 {
        if max == u64::MAX {
            return self.next();
        }
        let span = max + 1;
        let zone = u64::MAX - u64::MAX % span;
        loop {
            let v = self.next();
            if v < zone {
                return v % span;
            }
        }
    }
}

/// The first token of each of `samples` windows of `seq_len` over `n` tokens.
pub(crate) fn sample_starts(n: usize, seq_len: usize, samples: usize, seed: u64) -> Vec<usize> {
    let mut rng = SplitMix64(seed);
    (0..samples).map(|_| rng.below_or_equal((n - seq_len) as u64) as usize).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sample_windows_stay_inside_the_corpus_and_follow_the_seed() {
        let a = sample_starts(100, 10, 500, 7);
        assert!(a.iter().all(|&s| s <= 90));
        assert!(a.contains(&0) && a.contains(&90), "both ends are reachable");
        assert_eq!(a, sample_starts(100, 10, 500, 7));
        assert_ne!(a, sample_starts(100, 10, 500, 8));
        assert_eq!(sample_starts(10, 10, 3, 1), vec![0, 0, 0]);
    }

    #[test]
    fn doc_markers_are_stripped() {
        assert_eq!(strip_doc_markers("<doc id=1>\na b\n</doc>\n<doc>\nc\n</doc>"), "a b\nc\n");
        // A line merely mentioning a marker stays; the last line needs no newline.
        assert_eq!(strip_doc_markers("a <doc> b\n<doc x>\nc"), "a <doc> b\nc");
    }
}
