//! Pure time bucketing of one series: points in, buckets out.
//!
//! Bucket *i* covers `[from + i·step, from + (i+1)·step)`. Readings of quality `error` and
//! readings without a numeric value are skipped. `delta` is for counters: the increase
//! between consecutive points, attributed to the bucket of the later point; a decrease is a
//! meter reset or rollover and counts the new value as the increase from zero (as
//! Prometheus' `increase` does). Empty buckets are left out.

use crate::store::Point;

/// How the readings of a bucket are combined.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
#[schema(as = AggName)]
pub enum Agg {
    /// Arithmetic mean.
    Avg,
    /// Smallest value.
    Min,
    /// Largest value.
    Max,
    /// Sum of values.
    Sum,
    /// The last value.
    Last,
    /// Counter increase, resets handled.
    Delta,
}

impl Agg {
    /// Parses the query parameter.
    #[must_use]
    pub fn parse(text: &str) -> Option<Self> {
        Some(match text {
            "avg" => Self::Avg,
            "min" => Self::Min,
            "max" => Self::Max,
            "sum" => Self::Sum,
            "last" => Self::Last,
            "delta" => Self::Delta,
            _ => return None,
        })
    }

    /// The parameter's spelling.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Avg => "avg",
            Self::Min => "min",
            Self::Max => "max",
            Self::Sum => "sum",
            Self::Last => "last",
            Self::Delta => "delta",
        }
    }
}

/// One non-empty bucket.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    /// Bucket start, UTC ms.
    pub start: i64,
    /// The aggregate.
    pub value: f64,
    /// Points that went into it.
    pub count: u64,
}

/// Buckets `points` (in time order, all within `[from, from + n·step)`).
#[must_use]
pub fn aggregate(points: &[Point], from: i64, step: i64, agg: Agg) -> Vec<Bucket> {
    let step = step.max(1);
    let mut out: Vec<(Bucket, f64)> = Vec::new(); // (bucket, running sum for avg)
    let mut previous: Option<f64> = None;
    for p in points {
        let Some(v) = p.value.filter(|v| v.is_finite() && !p.error) else {
            continue;
        };
        let start = from + (p.ts - from).div_euclid(step) * step;
        let contribution = match agg {
            Agg::Delta => {
                let inc = match previous {
                    Some(prev) if v >= prev => v - prev,
                    Some(_) => v,
                    None => {
                        previous = Some(v);
                        // The first point only sets the baseline.
                        if out.last().is_none_or(|(b, _)| b.start != start) {
                            out.push((
                                Bucket {
                                    start,
                                    value: 0.0,
                                    count: 1,
                                },
                                0.0,
                            ));
                        }
                        continue;
                    }
                };
                previous = Some(v);
                inc
            }
            _ => v,
        };
        match out.last_mut() {
            Some((b, sum)) if b.start == start => {
                b.count += 1;
                *sum += contribution;
                b.value = match agg {
                    Agg::Avg => *sum / b.count as f64,
                    Agg::Min => b.value.min(contribution),
                    Agg::Max => b.value.max(contribution),
                    Agg::Sum | Agg::Delta => *sum,
                    Agg::Last => contribution,
                };
            }
            _ => out.push((
                Bucket {
                    start,
                    value: contribution,
                    count: 1,
                },
                contribution,
            )),
        }
    }
    out.into_iter().map(|(b, _)| b).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pts(values: &[(i64, f64)]) -> Vec<Point> {
        values
            .iter()
            .map(|&(ts, v)| Point {
                ts,
                value: Some(v),
                error: false,
            })
            .collect()
    }

    #[test]
    fn gauges_are_averaged_per_bucket() {
        let b = aggregate(&pts(&[(0, 1.0), (5, 3.0), (10, 10.0)]), 0, 10, Agg::Avg);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].start, b[0].value, b[0].count), (0, 2.0, 2));
        assert_eq!((b[1].start, b[1].value), (10, 10.0));
        let b = aggregate(&pts(&[(0, 1.0), (5, 3.0)]), 0, 10, Agg::Max);
        assert_eq!(b[0].value, 3.0);
        let b = aggregate(&pts(&[(0, 1.0), (5, 3.0)]), 0, 10, Agg::Last);
        assert_eq!(b[0].value, 3.0);
    }

    #[test]
    fn counter_deltas_survive_a_meter_reset() {
        // 100 → 110 → 125 | reset → 5 → 20
        let p = pts(&[(0, 100.0), (5, 110.0), (12, 125.0), (15, 5.0), (25, 20.0)]);
        let b = aggregate(&p, 0, 10, Agg::Delta);
        assert_eq!(
            b.iter().map(|b| b.value).collect::<Vec<_>>(),
            [10.0, 20.0, 15.0]
        );
        assert!((b.iter().map(|b| b.value).sum::<f64>() - 45.0).abs() < 1e-9);
    }

    #[test]
    fn error_readings_are_skipped() {
        let mut p = pts(&[(0, 1.0), (1, 99.0)]);
        p[1].error = true;
        assert_eq!(aggregate(&p, 0, 10, Agg::Sum)[0].value, 1.0);
    }
}
