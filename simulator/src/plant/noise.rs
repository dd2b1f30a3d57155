//! Seeded randomness without state: every random number is a hash of (seed, what, when).
//!
//! Nothing here keeps a generator that advances with each draw, so a value at a time never
//! depends on how many values were drawn before it, and adding a device does not shift the
//! random streams of the others (streams are keyed by the device *name*, not its index).

/// SplitMix64 finaliser: a fast, well-mixing 64-bit hash step.
pub(crate) const fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Hash of a seed and a few words.
pub(crate) fn hash(seed: u64, parts: &[u64]) -> u64 {
    parts.iter().fold(mix(seed), |h, &p| mix(h ^ p))
}

/// FNV-1a of a string, for keying streams by device name or metric id.
pub(crate) const fn fnv(s: &str) -> u64 {
    let bytes = s.as_bytes();
    let mut h: u64 = 0xCBF2_9CE4_8422_2325;
    let mut i = 0;
    while i < bytes.len() {
        h ^= bytes[i] as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01B3);
        i += 1;
    }
    h
}

/// The FNV-1a key of a string literal, computed at compile time.
macro_rules! key {
    ($s:literal) => {{
        const K: u64 = $crate::plant::noise::fnv($s);
        K
    }};
}
pub(crate) use key;

/// A uniform number in [0, 1) from a hash.
pub(crate) fn unit(h: u64) -> f64 {
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A uniform number in [0, 1) from a seed and words.
pub(crate) fn uniform(seed: u64, parts: &[u64]) -> f64 {
    unit(hash(seed, parts))
}

/// A roughly normal number (mean 0, standard deviation 1, bounded by ±3) from a seed and words:
/// the Irwin–Hall sum of four uniforms, rescaled.
pub(crate) fn normal(seed: u64, parts: &[u64]) -> f64 {
    let h = hash(seed, parts);
    let a = (h & 0xFFFF) as f64;
    let b = ((h >> 16) & 0xFFFF) as f64;
    let c = ((h >> 32) & 0xFFFF) as f64;
    let d = (h >> 48) as f64;
    // Each is uniform on [0, 65535]; the sum has mean 131070 and variance 4·65536²/12.
    (a + b + c + d - 131_070.0) / (65_536.0 * (4.0f64 / 12.0).sqrt())
}

/// Smooth value noise in [-1, 1]: hashed values on a lattice of `period_ms`, joined by a
/// smoothstep. Continuous in time, varies on the scale of the period, a pure function of
/// (seed, key, t).
pub(crate) fn smooth(seed: u64, key: u64, t_ms: i64, period_ms: i64) -> f64 {
    let period = period_ms.max(1);
    let i = t_ms.div_euclid(period);
    let f = t_ms.rem_euclid(period) as f64 / period as f64;
    let a = 2.0 * uniform(seed, &[key, i as u64]) - 1.0;
    let b = 2.0 * uniform(seed, &[key, i.wrapping_add(1) as u64]) - 1.0;
    let s = f * f * (3.0 - 2.0 * f);
    a + (b - a) * s
}

/// Smoothstep from 0 (at `x <= 0`) to 1 (at `x >= 1`).
pub(crate) fn smoothstep(x: f64) -> f64 {
    let x = x.clamp(0.0, 1.0);
    x * x * (3.0 - 2.0 * x)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normal_has_unit_spread_and_uniform_stays_in_range() {
        let n = 20_000u64;
        let (mut sum, mut sq) = (0.0, 0.0);
        for i in 0..n {
            let x = normal(7, &[i]);
            sum += x;
            sq += x * x;
            let u = uniform(7, &[i]);
            assert!((0.0..1.0).contains(&u));
        }
        let mean = sum / n as f64;
        let sd = (sq / n as f64 - mean * mean).sqrt();
        assert!(
            mean.abs() < 0.05 && (sd - 1.0).abs() < 0.05,
            "mean {mean} sd {sd}"
        );
    }

    #[test]
    fn smooth_noise_is_continuous_and_bounded() {
        let mut prev = smooth(1, 2, 0, 60_000);
        for t in (1000..3_600_000).step_by(1000) {
            let x = smooth(1, 2, t, 60_000);
            assert!((-1.0..=1.0).contains(&x));
            assert!((x - prev).abs() < 0.06);
            prev = x;
        }
    }
}
