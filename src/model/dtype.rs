//! Element types of checkpoint tensors and their decoding to f32.
//!
//! The quantised types are GGML's legacy block formats: a tensor is a run of blocks of 32
//! elements, each block an f16 scale (and, for `Q4_1`, an f16 minimum) followed by the quants.
//!
//! | type   | block bytes | layout                          | element `i` of the block          |
//! |--------|-------------|---------------------------------|-----------------------------------|
//! | `Q8_0` | 34          | `d: f16, q: [i8; 32]`           | `d · q[i]`                        |
//! | `Q4_0` | 18          | `d: f16, qs: [u8; 16]`          | `d · (nibble(i) − 8)`             |
//! | `Q4_1` | 20          | `d: f16, m: f16, qs: [u8; 16]`  | `d · nibble(i) + m`               |
//!
//! where `nibble(i)` is the low nibble of `qs[i]` for `i < 16` and the high nibble of
//! `qs[i − 16]` for `i ≥ 16`. All multi-byte values are little-endian.

use half::f16;
use rayon::prelude::*;

/// A stored element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DType {
    F32,
    F16,
    BF16,
    Q8_0,
    Q4_0,
    Q4_1,
}

impl DType {
    pub(crate) fn name(self) -> &'static str {
        match self {
            DType::F32 => "F32",
            DType::F16 => "F16",
            DType::BF16 => "BF16",
            DType::Q8_0 => "Q8_0",
            DType::Q4_0 => "Q4_0",
            DType::Q4_1 => "Q4_1",
        }
    }

    /// Elements per block (1 for the float types).
    pub(crate) fn block_len(self) -> usize {
        match self {
            DType::F32 | DType::F16 | DType::BF16 => 1,
            DType::Q8_0 | DType::Q4_0 | DType::Q4_1 => 32,
        }
    }

    /// Bytes per block.
    pub(crate) fn block_bytes(self) -> usize {
        match self {
            DType::F32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::Q8_0 => 34,
            DType::Q4_0 => 18,
            DType::Q4_1 => 20,
        }
    }

    /// The bytes `n` elements occupy; an error when `n` is not a whole number of blocks or
    /// the size overflows.
    pub(crate) fn nbytes(self, n: usize) -> Result<usize, String> {
        let bl = self.block_len();
        if !n.is_multiple_of(bl) {
            return Err(format!("{n} elements is not a whole number of {} blocks of {bl}", self.name()));
        }
        (n / bl).checked_mul(self.block_bytes()).ok_or_else(|| format!("{n} {} elements overflow the address space", self.name()))
    }

    /// GGML's type id (`enum ggml_type`).
    pub(crate) fn ggml_type(self) -> u32 {
        match self {
            DType::F32 => 0,
            DType::F16 => 1,
            DType::Q4_0 => 2,
            DType::Q4_1 => 3,
            DType::Q8_0 => 8,
            DType::BF16 => 30,
        }
    }

    /// The supported type with GGML id `id`, if any.
    pub(crate) fn from_ggml_type(id: u32) -> Option<DType> {
        Some(match id {
            0 => DType::F32,
            1 => DType::F16,
            2 => DType::Q4_0,
            3 => DType::Q4_1,
            8 => DType::Q8_0,
            30 => DType::BF16,
            _ => return None,
        })
    }
}

/// The name of GGML type `id`, for messages about types this crate does not decode.
pub(crate) fn ggml_type_name(id: u32) -> Option<&'static str> {
    Some(match id {
        0 => "F32",
        1 => "F16",
        2 => "Q4_0",
        3 => "Q4_1",
        6 => "Q5_0",
        7 => "Q5_1",
        8 => "Q8_0",
        9 => "Q8_1",
        10 => "Q2_K",
        11 => "Q3_K",
        12 => "Q4_K",
        13 => "Q5_K",
        14 => "Q6_K",
        15 => "Q8_K",
        16 => "IQ2_XXS",
        17 => "IQ2_XS",
        18 => "IQ3_XXS",
        19 => "IQ1_S",
        20 => "IQ4_NL",
        21 => "IQ3_S",
        22 => "IQ2_S",
        23 => "IQ4_XS",
        24 => "I8",
        25 => "I16",
        26 => "I32",
        27 => "I64",
        28 => "F64",
        29 => "IQ1_M",
        30 => "BF16",
        34 => "TQ1_0",
        35 => "TQ2_0",
        39 => "MXFP4",
        _ => return None,
    })
}

/// Blocks decoded per parallel task: large enough that scheduling is noise, small enough
/// that a 30M-element embedding spreads over every core.
const BLOCKS_PER_TASK: usize = 1 << 14;

/// Decodes `n` elements of `dtype` from `bytes`, which must be exactly their size.
pub fn decode(dtype: DType, bytes: &[u8], n: usize) -> Result<Vec<f32>, String> {
    let expected = dtype.nbytes(n)?;
    if bytes.len() != expected {
        return Err(format!("{} bytes hold {n} {} elements only if there are {expected}", bytes.len(), dtype.name()));
    }
    let mut out = vec![0.0f32; n];
    let (bl, bb) = (dtype.block_len(), dtype.block_bytes());
    out.par_chunks_mut(bl * BLOCKS_PER_TASK).zip(bytes.par_chunks(bb * BLOCKS_PER_TASK)).for_each(|(out, bytes)| decode_blocks(dtype, bytes, out));
    Ok(out)
}

/// Decodes whole blocks; `bytes` and `out` hold the same number of them.
fn decode_blocks(dtype: DType, bytes: &[u8], out: &mut [f32]) {
    match dtype {
        DType::F32 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(4)) {
                *o = f32::from_le_bytes([b[0], b[1], b[2], b[3]]);
            }
        }
        DType::F16 => {
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f16_at(b, 0);
            }
        }
        DType::BF16 => {
            // bf16 is the top half of an f32, so widening is exact.
            for (o, b) in out.iter_mut().zip(bytes.chunks_exact(2)) {
                *o = f32::from_bits((u16::from_le_bytes([b[0], b[1]]) as u32) << 16);
            }
        }
        DType::Q8_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(34)) {
                let d = f16_at(b, 0);
                for (o, &q) in o.iter_mut().zip(&b[2..34]) {
                    *o = d * (q as i8) as f32;
                }
            }
        }
        DType::Q4_0 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(18)) {
                let d = f16_at(b, 0);
                let (lo, hi) = o.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[2..18]) {
                    *l = d * ((q & 0x0f) as i32 - 8) as f32;
                    *h = d * ((q >> 4) as i32 - 8) as f32;
                }
            }
        }
        DType::Q4_1 => {
            for (o, b) in out.chunks_exact_mut(32).zip(bytes.chunks_exact(20)) {
                let (d, m) = (f16_at(b, 0), f16_at(b, 2));
                let (lo, hi) = o.split_at_mut(16);
                for ((l, h), &q) in lo.iter_mut().zip(hi.iter_mut()).zip(&b[4..20]) {
                    *l = d * (q & 0x0f) as f32 + m;
                    *h = d * (q >> 4) as f32 + m;
                }
            }
        }
    }
}

#[inline]
fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_bits(u16::from_le_bytes([b[at], b[at + 1]])).to_f32()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h(x: f32) -> [u8; 2] {
        f16::from_f32(x).to_bits().to_le_bytes()
    }

    #[test]
    fn q8_0_is_scale_times_signed_byte() {
        // Two blocks: d = 0.5 with q = i - 16, then d = -2 with q = 127, -128, 0, ...
        let mut bytes = Vec::new();
        bytes.extend(h(0.5));
        bytes.extend((0..32).map(|i| (i as i8 - 16) as u8));
        bytes.extend(h(-2.0));
        let q2: Vec<i8> = (0..32).map(|i| [127, -128, 0, 1][i % 4]).collect();
        bytes.extend(q2.iter().map(|&q| q as u8));
        let got = decode(DType::Q8_0, &bytes, 64).unwrap();
        for (i, (first, second)) in got[..32].iter().zip(&got[32..]).enumerate() {
            assert_eq!(*first, 0.5 * (i as f32 - 16.0), "element {i}");
            assert_eq!(*second, -2.0 * q2[i] as f32, "element {}", 32 + i);
        }
        assert_eq!(got[32], -254.0);
        assert_eq!(got[33], 256.0);
    }

    #[test]
    fn q4_0_low_nibbles_are_the_first_half() {
        // qs[j] = (j << 4) | (15 - j): element j has nibble 15 - j, element 16 + j has j.
        let mut bytes = h(0.25).to_vec();
        bytes.extend((0..16u8).map(|j| (j << 4) | (15 - j)));
        let got = decode(DType::Q4_0, &bytes, 32).unwrap();
        for j in 0..16 {
            assert_eq!(got[j], 0.25 * ((15 - j) as f32 - 8.0), "element {j}");
            assert_eq!(got[16 + j], 0.25 * (j as f32 - 8.0), "element {}", 16 + j);
        }
        assert_eq!(got[0], 1.75);
        assert_eq!(got[16], -2.0);
    }

    #[test]
    fn q4_1_is_scale_times_nibble_plus_min() {
        let mut bytes = Vec::new();
        for (d, m) in [(0.125f32, -1.0f32), (3.0, 0.5)] {
            bytes.extend(h(d));
            bytes.extend(h(m));
            bytes.extend((0..16u8).map(|j| (((j + 3) % 16) << 4) | j));
        }
        let got = decode(DType::Q4_1, &bytes, 64).unwrap();
        for (b, (d, m)) in [(0.125f32, -1.0f32), (3.0, 0.5)].into_iter().enumerate() {
            for j in 0..16 {
                assert_eq!(got[32 * b + j], d * j as f32 + m);
                assert_eq!(got[32 * b + 16 + j], d * ((j + 3) % 16) as f32 + m);
            }
        }
        assert_eq!(got[15], 0.125 * 15.0 - 1.0);
        assert_eq!(got[32 + 16], 3.0 * 3.0 + 0.5);
    }

    #[test]
    fn float_types_decode_exactly() {
        let xs = [1.5f32, -0.0, 65504.0, 1e-3];
        let f32_bytes: Vec<u8> = xs.iter().flat_map(|x| x.to_le_bytes()).collect();
        assert_eq!(decode(DType::F32, &f32_bytes, 4).unwrap(), xs);
        // 0x3c00 is 1.0 in f16, 0xc000 is -2.0, 0x7bff is 65504.
        let f16_bytes = [0x00, 0x3c, 0x00, 0xc0, 0xff, 0x7b];
        assert_eq!(decode(DType::F16, &f16_bytes, 3).unwrap(), [1.0, -2.0, 65504.0]);
        // bf16 0x3f80 is 1.0, 0xc040 is -3.0, 0x4049 is 3.140625.
        let bf16_bytes = [0x80, 0x3f, 0x40, 0xc0, 0x49, 0x40];
        assert_eq!(decode(DType::BF16, &bf16_bytes, 3).unwrap(), [1.0, -3.0, 3.140625]);
    }

    #[test]
    fn byte_length_must_match() {
        let err = decode(DType::Q8_0, &[0; 33], 32).unwrap_err();
        assert!(err.contains("33 bytes"), "{err}");
        assert!(decode(DType::F32, &[0; 12], 4).is_err());
        assert!(decode(DType::Q4_1, &[0; 20], 16).unwrap_err().contains("whole number"));
    }

    #[test]
    fn many_blocks_decode_the_same_in_parallel() {
        // More than one task's worth of blocks, each block with its own scale.
        let nblocks = BLOCKS_PER_TASK * 2 + 3;
        let mut bytes = Vec::with_capacity(nblocks * 34);
        for b in 0..nblocks {
            bytes.extend(h((b % 7) as f32));
            bytes.extend((0..32).map(|i| i as u8));
        }
        let got = decode(DType::Q8_0, &bytes, nblocks * 32).unwrap();
        for b in [0, BLOCKS_PER_TASK - 1, BLOCKS_PER_TASK, nblocks - 1] {
            for i in 0..32 {
                assert_eq!(got[b * 32 + i], (b % 7) as f32 * i as f32);
            }
        }
    }

    #[test]
    fn ggml_ids_round_trip() {
        for d in [DType::F32, DType::F16, DType::BF16, DType::Q8_0, DType::Q4_0, DType::Q4_1] {
            assert_eq!(DType::from_ggml_type(d.ggml_type()), Some(d));
            assert_eq!(ggml_type_name(d.ggml_type()), Some(d.name()));
        }
        assert_eq!(DType::from_ggml_type(12), None);
        assert_eq!(ggml_type_name(12), Some("Q4_K"));
    }
}
