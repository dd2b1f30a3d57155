//! The HTML of the pages. Every value from the store or the request is escaped with
//! `html_escape` ([`text`] for element content, [`attr`] inside double-quoted attributes);
//! the SVG charts are made by `plotters` from numbers and fixed names.
//!
//! Machine-readable attributes on the scorecard rows (`data-kpi`, `data-value`,
//! `data-coverage`, `data-quality`, `data-tier-a`, `data-tier-z`) carry the values exactly as
//! the API's JSON does, so tests and scripts can compare the two.

use std::borrow::Cow;
use std::fmt::Write as _;

use axum::http::StatusCode;
use fivezero_model::wire::KpiQuality;
use serde::Serialize;

use super::charts::{self, Line, TimeAxis};
use super::{Bucket, Range, SiteView};
use crate::api::scorecard::RangeKpi;

/// Appends formatted text to a `String` (writing to a `String` cannot fail).
macro_rules! w {
    ($out:expr, $($arg:tt)*) => {
        let _ = write!($out, $($arg)*);
    };
}

fn text(s: &str) -> Cow<'_, str> {
    html_escape::encode_text(s)
}

fn attr(s: &str) -> Cow<'_, str> {
    html_escape::encode_double_quoted_attribute(s)
}

fn enum_text<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn rfc3339(ms: i64) -> String {
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

fn local_time(ms: i64, tz: &str) -> String {
    let zone = jiff::tz::TimeZone::get(tz).unwrap_or(jiff::tz::TimeZone::UTC);
    jiff::Timestamp::from_millisecond(ms)
        .map(|t| t.to_zoned(zone).strftime("%Y-%m-%d %H:%M").to_string())
        .unwrap_or_default()
}

fn ago(now: i64, then: i64) -> String {
    let s = (now - then).max(0) / 1000;
    match s {
        0..60 => format!("{s} s ago"),
        60..3600 => format!("{} min ago", s / 60),
        3600..172_800 => format!("{} h ago", s / 3600),
        _ => format!("{} d ago", s / 86_400),
    }
}

fn head(out: &mut String, title: &str) {
    w!(
        out,
        "<!doctype html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n\
         <title>{}</title>\n<link rel=\"stylesheet\" href=\"/assets/dashboard.css\">\n</head>\n<body>\n",
        text(title)
    );
}

fn tail(out: &mut String) {
    out.push_str("</body>\n</html>\n");
}

/// The login form; `problem` says why the last try failed.
pub(super) fn login(problem: Option<&str>) -> String {
    let mut out = String::new();
    head(&mut out, "fivezero · sign in");
    out.push_str(
        "<main class=\"login\">\n<h1>fivezero</h1>\n<p>This dashboard needs a read token.</p>\n",
    );
    if let Some(p) = problem {
        w!(out, "<p class=\"problem\" role=\"alert\">{}</p>\n", text(p));
    }
    out.push_str(
        "<form method=\"get\" action=\"/login\">\n\
         <label for=\"token\">Token</label>\n\
         <input id=\"token\" name=\"token\" type=\"password\" autocomplete=\"current-password\" required>\n\
         <button type=\"submit\">Sign in</button>\n</form>\n</main>\n",
    );
    tail(&mut out);
    out
}

/// An error page.
pub(super) fn error(status: StatusCode, detail: &str) -> String {
    let mut out = String::new();
    head(&mut out, "fivezero · error");
    w!(
        out,
        "<main class=\"error\">\n<h1>{}</h1>\n<p>{}</p>\n<p><a href=\"/\">Back to the dashboard</a></p>\n</main>\n",
        text(&status.to_string()),
        text(detail)
    );
    tail(&mut out);
    out
}

/// The page when no site has sent anything yet.
pub(super) fn empty(auth: bool) -> String {
    let mut out = String::new();
    head(&mut out, "fivezero");
    header(&mut out, "", &[], None, None, auth);
    out.push_str(
        "<main>\n<section class=\"panel\"><h2>No data yet</h2>\
         <p>No gateway has reported to this sink. Once one does, its site appears here.</p>\
         </section>\n</main>\n",
    );
    tail(&mut out);
    out
}

fn range_link(range: Range, end: Option<&str>) -> String {
    let mut q = format!("?range={}", range.as_str());
    if let Some(e) = end {
        q.push_str("&end=");
        q.push_str(&form_urlencode(e));
    }
    q
}

fn form_urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("", s)])
        .map(|e| e.trim_start_matches('=').to_owned())
        .unwrap_or_default()
}

fn header(
    out: &mut String,
    site: &str,
    sites: &[String],
    range: Option<Range>,
    end: Option<&str>,
    auth: bool,
) {
    out.push_str("<header>\n<div class=\"brand\">fivezero</div>\n");
    if !site.is_empty() {
        w!(out, "<div class=\"site\">{}</div>\n", text(site));
    }
    if sites.len() > 1 {
        out.push_str("<nav class=\"sites\" aria-label=\"Sites\">");
        for s in sites {
            let class = if s == site { " class=\"active\"" } else { "" };
            w!(
                out,
                "<a{class} href=\"/sites/{}\">{}</a>",
                attr(&form_urlencode(s)),
                text(s)
            );
        }
        out.push_str("</nav>\n");
    }
    if let Some(current) = range {
        out.push_str("<nav class=\"ranges\" aria-label=\"Range\">");
        for r in [Range::Day, Range::Week, Range::Month] {
            let class = if r == current {
                " class=\"active\" aria-current=\"page\""
            } else {
                ""
            };
            let name = match r {
                Range::Day => "Day",
                Range::Week => "Week",
                Range::Month => "Month",
            };
            w!(
                out,
                "<a{class} href=\"{}\">{name}</a>",
                attr(&range_link(r, end))
            );
        }
        out.push_str("</nav>\n");
    }
    if auth {
        out.push_str("<a class=\"logout\" href=\"/logout\">Sign out</a>\n");
    }
    out.push_str("</header>\n");
}

/// Plain names of the KPIs the gateway computes; others show their id.
fn kpi_name(id: &str) -> &str {
    match id {
        "zero_waste.total_recovery_rate" => "Total recovery rate",
        "zero_waste.material_recovery_rate" => "Material recovery rate",
        "zero_waste.energy_recovery_share" => "Energy recovery share",
        "zero_waste.landfill_share" => "Landfill share",
        "zero_waste.mass_balance_closure" => "Mass balance closure",
        "zero_wastewater.reuse_rate" => "Water reuse rate",
        "zero_wastewater.discharged_m3" => "Water discharged",
        "zero_wastewater.rain_utilisation" => "Rainwater utilisation",
        "zero_exhaust.steam_cascade_utilisation" => "Steam cascade utilisation",
        "zero_exhaust.vent_fraction" => "Steam vented",
        "zero_waste_heat.recovery_rate" => "Waste-heat recovery rate",
        "zero_waste_heat.exit_within_limit_share" => "Flue exit within limit",
        "zero_waste_heat.flue_exit_temperature" => "Flue exit temperature",
        "zero_energy.net_zero_ratio" => "Net-zero ratio",
        "zero_energy.self_sufficiency" => "Self-sufficiency",
        "zero_energy.self_consumption" => "PV self-consumption",
        "zero_energy.clean_energy_share" => "Clean energy share",
        "zero_energy.fossil_energy_tce" => "Fossil energy",
        "zero_energy.net_grid_import_kwh" => "Net grid import",
        "zero_energy.ev_charging_kwh" => "EV charging",
        "zero_energy.site_consumption_kwh" => "Site consumption",
        "carbon.scope1_t" => "Scope 1 emissions",
        "carbon.scope2_location_t" => "Scope 2 (location-based)",
        "carbon.scope2_market_t" => "Scope 2 (market-based)",
        "carbon.avoided_t" => "Emissions avoided",
        "carbon.intensity_t_per_tce" => "Carbon intensity",
        "compressed_air.specific_power" => "Compressed-air specific power",
        other => other,
    }
}

fn pillar(id: &str) -> &'static str {
    match id.split('.').next().unwrap_or("") {
        "zero_waste" => "Zero waste",
        "zero_wastewater" => "Zero wastewater",
        "zero_exhaust" => "Zero exhaust",
        "zero_waste_heat" => "Zero waste heat",
        "zero_energy" => "Zero energy",
        "carbon" => "Carbon",
        "compressed_air" => "Compressed air",
        _ => "Other",
    }
}

/// A value for people: ratios (unit `1`) as a percentage, others with their unit.
fn show_value(value: Option<f64>, unit: &str) -> String {
    match value {
        None => "—".to_owned(),
        Some(v) if unit == "1" => format!("{:.1} %", v * 100.0),
        Some(v) => {
            let digits = if v.abs() >= 100.0 {
                0
            } else if v.abs() >= 1.0 {
                2
            } else {
                3
            };
            format!("{v:.digits$} {unit}")
        }
    }
}

fn tier_status(k: &RangeKpi, tier: &str) -> String {
    k.tiers
        .iter()
        .find(|t| t.tier == tier)
        .map(|t| enum_text(&t.status))
        .unwrap_or_default()
}

fn tier_cell(status: &str) -> String {
    let (class, label) = match status {
        "" => return "<td class=\"tier none\">—</td>".to_owned(),
        "achieved" => ("achieved", "✓ achieved"),
        "not_achieved" => ("not-achieved", "✗ not achieved"),
        _ => ("insufficient", "? insufficient data"),
    };
    format!("<td class=\"tier {class}\">{}</td>", text(label))
}

fn scorecard(out: &mut String, v: &SiteView) {
    let api = format!(
        "/api/v1/sites/{}/kpis?from={}&to={}",
        form_urlencode(&v.site),
        v.from,
        v.to
    );
    w!(
        out,
        "<section id=\"scorecard\" class=\"panel\" data-site=\"{}\" data-from=\"{}\" data-to=\"{}\">\n\
         <h2>Five-zero scorecard</h2>\n\
         <p class=\"range\">{} – {} ({}) · recomputed from hourly windows · <a href=\"{}\">same in the API</a></p>\n",
        attr(&v.site),
        v.from,
        v.to,
        text(&local_time(v.from, &v.tz)),
        text(&local_time(v.to, &v.tz)),
        text(&v.tz),
        attr(&api)
    );
    if v.scorecard.is_empty() {
        out.push_str("<p class=\"empty\">No KPI windows in this range.</p>\n</section>\n");
        return;
    }
    out.push_str(
        "<table class=\"scorecard\">\n<thead><tr><th>Pillar</th><th>KPI</th><th class=\"num\">Value</th>\
         <th>Tier A</th><th>Tier Z</th><th class=\"num\">Coverage</th><th>Quality</th></tr></thead>\n<tbody>\n",
    );
    for k in &v.scorecard {
        let quality = enum_text(&k.quality);
        let (a, z) = (tier_status(k, "A"), tier_status(k, "Z"));
        let value = k.value.map(|x| x.to_string()).unwrap_or_default();
        let qclass = match k.quality {
            KpiQuality::Ok => "ok",
            KpiQuality::Estimated => "estimated",
            _ => "bad",
        };
        w!(
            out,
            "<tr data-kpi=\"{}\" data-value=\"{}\" data-unit=\"{}\" data-coverage=\"{}\" data-quality=\"{}\" \
             data-tier-a=\"{}\" data-tier-z=\"{}\">\
             <td class=\"pillar\">{}</td><td class=\"kpi\" title=\"{}\">{}</td><td class=\"num value\">{}</td>{}{}\
             <td class=\"num\">{:.0} %</td><td class=\"quality {qclass}\">{}</td></tr>\n",
            attr(&k.kpi),
            attr(&value),
            attr(&k.unit),
            k.coverage,
            attr(&quality),
            attr(&a),
            attr(&z),
            text(pillar(&k.kpi)),
            attr(&k.kpi),
            text(kpi_name(&k.kpi)),
            text(&show_value(k.value, &k.unit)),
            tier_cell(&a),
            tier_cell(&z),
            k.coverage * 100.0,
            text(&quality.replace('_', " ")),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

fn bucket_value(b: &Bucket, kpi: &str) -> Option<f64> {
    b.kpis.get(kpi).and_then(|k| k.value)
}

/// The energy flows of a scorecard, kWh, from the gateway's role-mapped energy sums:
/// generation = Σ denominator of self-consumption, consumption = Σ denominator of
/// self-sufficiency, used on site = Σ its numerator, export = generation − used on site,
/// import = consumption − used on site; EV charging as reported.
fn flows<'a>(get: &dyn Fn(&str) -> Option<&'a RangeKpi>) -> [Option<f64>; 5] {
    let generated = get("zero_energy.self_consumption").and_then(|k| k.denominator);
    let consumption = get("zero_energy.self_sufficiency").and_then(|k| k.denominator);
    let used = get("zero_energy.self_sufficiency").and_then(|k| k.numerator);
    let export = generated.zip(used).map(|(g, u)| (g - u).max(0.0));
    let import = consumption.zip(used).map(|(c, u)| (c - u).max(0.0));
    let ev = get("zero_energy.ev_charging_kwh").and_then(|k| k.value);
    [generated, consumption, import, export, ev]
}

const FLOW_NAMES: [&str; 5] = [
    "PV generation",
    "Consumption",
    "Grid import",
    "Grid export",
    "EV charging",
];
const FLOW_COLORS: [(u8, u8, u8); 5] = [
    (232, 163, 23),
    (60, 72, 88),
    (200, 70, 60),
    (40, 150, 90),
    (70, 110, 200),
];

fn figure(out: &mut String, id: &str, title: &str, chart: Option<Result<String, String>>) {
    w!(
        out,
        "<figure class=\"chart\" id=\"{}\"><figcaption>{}</figcaption>\n",
        attr(id),
        text(title)
    );
    match chart {
        Some(Ok(svg)) => out.push_str(&svg),
        Some(Err(e)) => {
            tracing::warn!(error = %e, chart = id, "A dashboard chart could not be drawn.");
            out.push_str("<p class=\"empty\">The chart could not be drawn.</p>");
        }
        None => out.push_str("<p class=\"empty\">No data in this range.</p>"),
    }
    out.push_str("\n</figure>\n");
}

fn trends(out: &mut String, v: &SiteView) {
    let starts: Vec<i64> = v.buckets.iter().map(|b| b.start).collect();
    let axis = TimeAxis {
        from: v.from,
        to: v.to,
        starts: &starts,
        step: v.range.step_ms(),
        tz: &v.tz,
    };
    let series = |kpi: &str| -> Vec<Option<f64>> {
        v.buckets.iter().map(|b| bucket_value(b, kpi)).collect()
    };
    let step = match v.range {
        Range::Day => "hour",
        Range::Week => "6 hours",
        Range::Month => "day",
    };
    w!(
        out,
        "<section id=\"trends\" class=\"panel\">\n<h2>Trends</h2>\n<p class=\"range\">Per {step}, each point recomputed from its windows' sums.</p>\n"
    );
    let kpi_lines = [
        Line {
            label: "Total recovery (waste)",
            color: (40, 150, 90),
            values: series("zero_waste.total_recovery_rate"),
        },
        Line {
            label: "Water reuse",
            color: (50, 120, 210),
            values: series("zero_wastewater.reuse_rate"),
        },
        Line {
            label: "Waste-heat recovery",
            color: (220, 110, 40),
            values: series("zero_waste_heat.recovery_rate"),
        },
        Line {
            label: "Net-zero ratio",
            color: (120, 80, 180),
            values: series("zero_energy.net_zero_ratio"),
        },
        Line {
            label: "Self-sufficiency",
            color: (232, 163, 23),
            values: series("zero_energy.self_sufficiency"),
        },
    ];
    figure(
        out,
        "trend-kpis",
        "Headline KPIs (%)",
        charts::line_chart(&axis, &kpi_lines, "%", true),
    );
    out.push_str("</section>\n");

    out.push_str("<section id=\"energy\" class=\"panel\">\n<h2>Energy flows</h2>\n");
    let per_bucket: Vec<[Option<f64>; 5]> = v
        .buckets
        .iter()
        .map(|b| flows(&|k: &str| b.kpis.get(k)))
        .collect();
    let energy_lines: Vec<Line> = (0..5)
        .map(|i| Line {
            label: FLOW_NAMES[i],
            color: FLOW_COLORS[i],
            values: per_bucket.iter().map(|f| f[i]).collect(),
        })
        .collect();
    figure(
        out,
        "energy-flows",
        &format!("Energy per {step} (kWh)"),
        charts::line_chart(&axis, &energy_lines, "kWh", false),
    );
    let totals = flows(&|k: &str| v.scorecard.iter().find(|x| x.kpi == k));
    out.push_str("<table class=\"flows\"><thead><tr>");
    for n in FLOW_NAMES {
        w!(out, "<th class=\"num\">{}</th>", text(n));
    }
    out.push_str("</tr></thead><tbody><tr>");
    for (i, t) in totals.iter().enumerate() {
        w!(
            out,
            "<td class=\"num\" data-flow=\"{}\">{}</td>",
            i,
            text(&show_value(*t, "kWh"))
        );
    }
    out.push_str("</tr></tbody></table>\n<p class=\"note\">Totals over the range, from the meters mapped to the energy roles in the gateway's KPI configuration.</p>\n</section>\n");
}

fn gateways(out: &mut String, v: &SiteView) {
    out.push_str("<section id=\"gateways\" class=\"panel\">\n<h2>Gateway health</h2>\n");
    if v.gateways.is_empty() {
        out.push_str(
            "<p class=\"empty\">No gateway of this site has sent a status yet.</p>\n</section>\n",
        );
        return;
    }
    out.push_str(
        "<table class=\"gateways\">\n<thead><tr><th>Gateway</th><th>Status</th><th>Last seen</th>\
         <th>Version</th><th>Epoch</th><th class=\"num\">Backlog</th><th class=\"num\">Watermark</th>\
         <th class=\"num\">Declared gaps</th></tr></thead>\n<tbody>\n",
    );
    for g in &v.gateways {
        let i = &g.info;
        let online = i.state == "online";
        let opt = |x: Option<u64>| x.map_or_else(|| "—".to_owned(), |x| x.to_string());
        let gaps = if g.declared_gap_seqs == 0 {
            "none".to_owned()
        } else {
            format!(
                "{} seqs in {} epoch{}",
                g.declared_gap_seqs,
                g.epochs,
                if g.epochs == 1 { "" } else { "s" }
            )
        };
        w!(
            out,
            "<tr data-gateway=\"{}\" data-status=\"{}\" data-backlog=\"{}\" data-watermark=\"{}\" data-gap-seqs=\"{}\">\
             <td>{}</td><td class=\"status {}\">{}</td><td title=\"{}\">{}</td><td>{}</td><td class=\"mono\">{}</td>\
             <td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>\n",
            attr(&i.gateway),
            attr(&i.state),
            attr(&i.backlog.map(|b| b.to_string()).unwrap_or_default()),
            attr(&i.watermark.map(|b| b.to_string()).unwrap_or_default()),
            g.declared_gap_seqs,
            text(&i.gateway),
            if online { "online" } else { "offline" },
            text(if online { "● online" } else { "○ offline" }),
            attr(&rfc3339(i.last_seen)),
            text(&format!(
                "{} ({})",
                local_time(i.last_seen, &v.tz),
                ago(v.now, i.last_seen)
            )),
            text(&i.version),
            text(i.epoch.as_deref().unwrap_or("—")),
            text(&opt(i.backlog)),
            text(&opt(i.watermark)),
            text(&gaps),
        );
    }
    out.push_str("</tbody>\n</table>\n</section>\n");
}

/// A site's page.
pub(super) fn site(v: &SiteView) -> String {
    let mut out = String::with_capacity(64 * 1024);
    head(&mut out, &format!("fivezero · {}", v.site));
    header(
        &mut out,
        &v.site,
        &v.sites,
        Some(v.range),
        v.end_param.as_deref(),
        v.auth,
    );
    out.push_str("<main>\n");
    scorecard(&mut out, v);
    trends(&mut out, v);
    gateways(&mut out, v);
    w!(
        out,
        "</main>\n<footer>Rendered {} · times in {} · <a href=\"/api/v1/openapi.json\">API</a></footer>\n",
        text(&local_time(v.now, &v.tz)),
        text(&v.tz)
    );
    tail(&mut out);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_from_the_store_are_escaped() {
        assert_eq!(text("<b>&"), "&lt;b&gt;&amp;");
        assert!(!attr("\"><script>").contains(['"', '<']));
        let page = error(StatusCode::NOT_FOUND, "<script>alert(1)</script>");
        assert!(!page.contains("<script>"));
    }

    #[test]
    fn ratios_show_as_percentages_and_missing_values_as_a_dash() {
        assert_eq!(show_value(Some(0.995), "1"), "99.5 %");
        assert_eq!(show_value(Some(1234.4), "kWh"), "1234 kWh");
        assert_eq!(show_value(None, "1"), "—");
    }
}
