//! Percentiles over latency samples (microseconds).
use serde::Serialize;

#[derive(Debug, Clone, Default, Serialize, serde::Deserialize, PartialEq)]
pub struct Summary {
    pub samples: u64,
    pub p50_us: u64,
    pub p90_us: u64,
    pub p99_us: u64,
    pub p999_us: u64,
    pub max_us: u64,
    pub mean_us: f64,
}

/// Nearest-rank percentile of a sorted slice (q in 0..=1).
fn rank(sorted: &[u32], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let idx = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[idx] as u64
}

pub fn summarize(mut v: Vec<u32>) -> Summary {
    if v.is_empty() {
        return Summary::default();
    }
    v.sort_unstable();
    let sum: u64 = v.iter().map(|&x| x as u64).sum();
    Summary {
        samples: v.len() as u64,
        p50_us: rank(&v, 0.50),
        p90_us: rank(&v, 0.90),
        p99_us: rank(&v, 0.99),
        p999_us: rank(&v, 0.999),
        max_us: *v.last().unwrap() as u64,
        mean_us: sum as f64 / v.len() as f64,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank() {
        let s = summarize((1..=100).rev().collect());
        assert_eq!(
            (s.samples, s.p50_us, s.p90_us, s.p99_us, s.max_us),
            (100, 50, 90, 99, 100)
        );
        assert_eq!(summarize(vec![]).samples, 0);
        assert_eq!(summarize(vec![7]).p99_us, 7);
    }
}
