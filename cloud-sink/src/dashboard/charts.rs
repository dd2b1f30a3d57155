//! Line charts drawn on the server as SVG with `plotters` (its SVG backend only).
//!
//! The x axis is time: points are at bucket midpoints, labelled in the site's time zone.
//! A missing value (`None`) breaks its line, so a gap in the data shows as a gap, never as
//! a zero. Every text drawn is made here from numbers, times and fixed names.

use plotters::prelude::*;

/// One line of a chart.
#[derive(Debug, Clone)]
pub(super) struct Line {
    /// Legend text (fixed names only).
    pub(super) label: &'static str,
    /// Colour, `#rrggbb` parts.
    pub(super) color: (u8, u8, u8),
    /// One value per bucket, `None` where missing.
    pub(super) values: Vec<Option<f64>>,
}

/// The time axis: bucket starts (UTC ms), bucket length and the zone for labels.
#[derive(Debug, Clone)]
pub(super) struct TimeAxis<'a> {
    /// Range start, UTC ms.
    pub(super) from: i64,
    /// Range end, UTC ms.
    pub(super) to: i64,
    /// Bucket start of each value, UTC ms.
    pub(super) starts: &'a [i64],
    /// Bucket length, ms.
    pub(super) step: i64,
    /// IANA zone for labels.
    pub(super) tz: &'a str,
}

const WIDTH: u32 = 1100;
const HEIGHT: u32 = 300;

fn label_time(ms: i64, tz: &str, span: i64) -> String {
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    let Ok(t) = jiff::Timestamp::from_millisecond(ms) else {
        return String::new();
    };
    let z = t.to_zoned(zone);
    if span <= 2 * 86_400_000 {
        z.strftime("%H:%M").to_string()
    } else {
        z.strftime("%m-%d").to_string()
    }
}

/// Draws `lines` over `axis` as an SVG document; `y_unit` labels the y axis, `percent`
/// shows values ×100 with a `%`. `None` when no line has a value.
pub(super) fn line_chart(
    axis: &TimeAxis<'_>,
    lines: &[Line],
    y_unit: &str,
    percent: bool,
) -> Option<Result<String, String>> {
    let scale = if percent { 100.0 } else { 1.0 };
    let values: Vec<f64> = lines
        .iter()
        .flat_map(|l| l.values.iter().flatten())
        .map(|v| v * scale)
        .filter(|v| v.is_finite())
        .collect();
    if values.is_empty() {
        return None;
    }
    let lo = values
        .iter()
        .copied()
        .fold(f64::INFINITY, f64::min)
        .min(0.0);
    let mut hi = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    hi = if percent { hi.max(100.0) } else { hi };
    let pad = ((hi - lo).abs() * 0.08).max(1e-9);
    let (y0, y1) = (if lo < 0.0 { lo - pad } else { 0.0 }, hi + pad);
    let hours = |ms: i64| (ms - axis.from) as f64 / 3_600_000.0;
    let x_max = hours(axis.to).max(1e-9);
    let mut svg = String::new();
    let drawn = draw(
        &mut svg,
        axis,
        lines,
        (x_max, y0, y1),
        y_unit,
        scale,
        &hours,
    );
    Some(drawn.map(|()| svg))
}

fn draw(
    svg: &mut String,
    axis: &TimeAxis<'_>,
    lines: &[Line],
    (x_max, y0, y1): (f64, f64, f64),
    y_unit: &str,
    scale: f64,
    hours: &dyn Fn(i64) -> f64,
) -> Result<(), String> {
    let err = |e: &dyn std::fmt::Display| e.to_string();
    let root = SVGBackend::with_string(svg, (WIDTH, HEIGHT)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let span = axis.to - axis.from;
    let x_fmt = |x: &f64| {
        // x is hours from `from`; round to the minute.
        let ms = axis.from + (x * 60.0).round() as i64 * 60_000;
        label_time(ms, axis.tz, span)
    };
    let y_fmt = |y: &f64| {
        if (y1 - y0).abs() >= 10.0 {
            format!("{y:.0}")
        } else {
            format!("{y:.2}")
        }
    };
    let mut chart = ChartBuilder::on(&root)
        .margin(12)
        .x_label_area_size(28)
        .y_label_area_size(56)
        .build_cartesian_2d(0f64..x_max, y0..y1)
        .map_err(|e| err(&e))?;
    chart
        .configure_mesh()
        .x_labels(8)
        .y_labels(6)
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt)
        .y_desc(y_unit)
        .light_line_style(RGBColor(236, 239, 243))
        .bold_line_style(RGBColor(214, 219, 226))
        .axis_style(RGBColor(140, 150, 160))
        .label_style(("sans-serif", 12).into_font().color(&RGBColor(70, 80, 90)))
        .draw()
        .map_err(|e| err(&e))?;
    let half = axis.step as f64 / 2.0 / 3_600_000.0;
    for line in lines {
        let color = RGBColor(line.color.0, line.color.1, line.color.2);
        let points: Vec<Option<(f64, f64)>> = axis
            .starts
            .iter()
            .zip(&line.values)
            .map(|(s, v)| {
                v.map(|v| v * scale)
                    .filter(|v| v.is_finite())
                    .map(|v| (hours(*s) + half, v))
            })
            .collect();
        // Contiguous runs become polylines; a missing bucket breaks the line.
        let mut labelled = false;
        for run in points.split(Option::is_none) {
            let run: Vec<(f64, f64)> = run.iter().flatten().copied().collect();
            if run.is_empty() {
                continue;
            }
            let series = chart
                .draw_series(LineSeries::new(run.clone(), color.stroke_width(2)))
                .map_err(|e| err(&e))?;
            if !labelled {
                labelled = true;
                series.label(line.label).legend(move |(x, y)| {
                    PathElement::new(vec![(x, y), (x + 18, y)], color.stroke_width(3))
                });
            }
            chart
                .draw_series(run.iter().map(|p| Circle::new(*p, 2, color.filled())))
                .map_err(|e| err(&e))?;
        }
    }
    chart
        .configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(RGBColor(214, 219, 226))
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_chart_is_an_svg_document_with_its_lines() {
        let starts = [0, 3_600_000, 7_200_000, 10_800_000];
        let axis = TimeAxis {
            from: 0,
            to: 4 * 3_600_000,
            starts: &starts,
            step: 3_600_000,
            tz: "Asia/Shanghai",
        };
        let lines = [Line {
            label: "Recovery",
            color: (10, 120, 80),
            values: vec![Some(0.5), Some(0.9), None, Some(0.7)],
        }];
        let svg = line_chart(&axis, &lines, "%", true).unwrap().unwrap();
        assert!(svg.trim_start().starts_with("<svg"), "{svg}");
        assert!(svg.trim_end().ends_with("</svg>"));
        // Two runs around the missing bucket: two polylines (plus the legend's path).
        assert!(svg.matches("<polyline").count() >= 2, "{svg}");
        assert!(svg.contains("Recovery"));
    }

    #[test]
    fn no_values_draw_no_chart() {
        let axis = TimeAxis {
            from: 0,
            to: 3_600_000,
            starts: &[0],
            step: 3_600_000,
            tz: "UTC",
        };
        let lines = [Line {
            label: "x",
            color: (0, 0, 0),
            values: vec![None],
        }];
        assert!(line_chart(&axis, &lines, "kWh", false).is_none());
    }
}
