//! How many distinct paths a route saw, in 256 bytes: a HyperLogLog sketch.
//!
//! In: paths, one at a time, or another replica's sketch.
//! Out: an estimate of the distinct count (standard error about 6.5%; nearly exact
//! below a few hundred, where it counts by linear counting), and the registers as hex
//! for `/traffic`. Every replica hashes with the same fixed key, so sketches merge.

use std::hash::{BuildHasher, Hasher};

/// Registers: 2^8, one byte each.
const BITS: u32 = 8;
const REGISTERS: usize = 1 << BITS;

/// A distinct-count sketch.
#[derive(Clone, PartialEq, Eq)]
pub struct Distinct {
    registers: [u8; REGISTERS],
}

impl std::fmt::Debug for Distinct {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Distinct(~{})", self.estimate())
    }
}

impl Default for Distinct {
    fn default() -> Self {
        Distinct {
            registers: [0; REGISTERS],
        }
    }
}

/// A `/traffic` sketch that is not 512 hex digits.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("a legacyPaths sketch must be {} hex digits; this one is not (is the replica a different version?)", REGISTERS * 2)]
pub struct BadSketch;

/// The fixed hash every replica uses, so the same path lands in the same register.
fn hash(path: &str) -> u64 {
    let mut h = foldhash::quality::FixedState::with_seed(0x6661_6c6c_7468_7275).build_hasher();
    h.write(path.as_bytes());
    h.finish()
}

impl Distinct {
    /// Counts `path` once (again, if seen before: that changes nothing).
    pub fn add(&mut self, path: &str) {
        let h = hash(path);
        let index = (h >> (64 - BITS)) as usize;
        // The rank of the first set bit of the rest, 1-based; a sentinel bit bounds it.
        let rest = (h << BITS) | (1 << (BITS - 1));
        let rank = rest.leading_zeros() as u8 + 1;
        let r = &mut self.registers[index];
        if rank > *r {
            *r = rank;
        }
    }

    /// Adds what `other` counted: the sketch of both sets of paths.
    pub fn merge(&mut self, other: &Distinct) {
        for (mine, theirs) in self.registers.iter_mut().zip(other.registers.iter()) {
            *mine = (*mine).max(*theirs);
        }
    }

    /// The estimated number of distinct paths counted.
    pub fn estimate(&self) -> u64 {
        let m = REGISTERS as f64;
        let zeros = self.registers.iter().filter(|r| **r == 0).count();
        let sum: f64 = self
            .registers
            .iter()
            .map(|r| 2f64.powi(-i32::from(*r)))
            .sum();
        let alpha = 0.7213 / (1.0 + 1.079 / m);
        let raw = alpha * m * m / sum;
        let estimate = if raw <= 2.5 * m && zeros > 0 {
            // Few paths: linear counting over the empty registers is far more precise.
            m * (m / zeros as f64).ln()
        } else {
            raw
        };
        estimate.round() as u64
    }

    /// The registers as lower-case hex.
    pub fn to_hex(&self) -> String {
        use std::fmt::Write;
        let mut out = String::with_capacity(REGISTERS * 2);
        for r in &self.registers {
            let _ = write!(out, "{r:02x}");
        }
        out
    }

    /// Reads [`Distinct::to_hex`]'s output.
    pub fn from_hex(hex: &str) -> Result<Distinct, BadSketch> {
        let bytes = hex.as_bytes();
        if bytes.len() != REGISTERS * 2 {
            return Err(BadSketch);
        }
        let mut out = Distinct::default();
        for (r, pair) in out.registers.iter_mut().zip(bytes.chunks_exact(2)) {
            let pair = std::str::from_utf8(pair).map_err(|_| BadSketch)?;
            *r = u8::from_str_radix(pair, 16).map_err(|_| BadSketch)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(paths: impl IntoIterator<Item = String>) -> Distinct {
        let mut d = Distinct::default();
        for p in paths {
            d.add(&p);
        }
        d
    }

    #[test]
    fn counts_distinct_paths_within_its_error() {
        for (n, tolerance) in [
            (0u64, 0.0),
            (1, 0.0),
            (10, 0.0),
            (50, 0.15),
            (300, 0.15),
            (10_000, 0.15),
            (1_000_000, 0.15),
        ] {
            let d = of((0..n).map(|i| format!("/p/{i}")));
            let got = d.estimate() as f64;
            let want = n as f64;
            assert!(
                (got - want).abs() <= want * tolerance,
                "{n} paths estimated as {got}"
            );
        }
    }

    #[test]
    fn repeats_count_once() {
        let d = of((0..1000).map(|i| format!("/p/{}", i % 10)));
        assert_eq!(d.estimate(), 10);
    }

    #[test]
    fn two_replicas_merge_to_the_union() {
        // Replica a saw /p/0../p/199, b saw /p/100../p/299: 300 distinct in all.
        let mut a = of((0..200).map(|i| format!("/p/{i}")));
        let b = of((100..300).map(|i| format!("/p/{i}")));
        a.merge(&b);
        let union = of((0..300).map(|i| format!("/p/{i}")));
        assert_eq!(a, union, "merging is the sketch of the union");
        let est = a.estimate() as f64;
        assert!((est - 300.0).abs() <= 45.0, "{est}");
    }

    #[test]
    fn hex_round_trips_and_refuses_garbage() {
        let d = of((0..77).map(|i| format!("/x/{i}")));
        assert_eq!(Distinct::from_hex(&d.to_hex()), Ok(d));
        assert_eq!(Distinct::from_hex("00"), Err(BadSketch));
        assert_eq!(Distinct::from_hex(&"zz".repeat(REGISTERS)), Err(BadSketch));
    }
}
