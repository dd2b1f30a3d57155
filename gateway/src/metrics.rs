//! Prometheus exposition of the gateway's figures.
//!
//! Nothing here keeps state: every scrape reads the poller's health records, the buffer's
//! statistics and the publisher's counters, builds a registry from them with
//! `prometheus-client`, and encodes it in the text format. Counters are the components' own
//! monotonic counts, so a scrape never resets anything, and two scrapes agree with each other.
//!
//! Names follow the reliability contract (G8): `fivezero_outbox_committed_seq`,
//! `fivezero_outbox_acked_contiguous_seq`, `fivezero_outbox_sink_watermark_seq`,
//! `fivezero_outbox_bytes`, `fivezero_outbox_oldest_age_seconds`, and
//! `fivezero_readings_dropped_total{intentional, reason}`.

use std::fmt::Write as _;
use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

use crate::buffer::Stats;
use crate::kpi::task::Figures;
use crate::poll::HealthSnapshot;
use crate::publish::StatsSnapshot;

/// Counts the daemon keeps itself (readings in and out of the hand-over to the buffer) and
/// the KPI task's figures when it runs.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct DaemonCounts {
    /// Readings received from the poller.
    pub polled_readings: u64,
    /// Readings the buffer refused (counted by reason in the buffer's counters).
    pub refused_readings: u64,
    /// The KPI task's figures, when KPIs are computed.
    pub kpi: Option<Figures>,
}

type Labels = Vec<(&'static str, String)>;

fn counter(registry: &mut Registry, name: &str, help: &str, value: u64) {
    let c: Counter<u64, AtomicU64> = Counter::default();
    c.inc_by(value);
    registry.register(name, help, c);
}

fn gauge(registry: &mut Registry, name: &str, help: &str, value: f64) {
    let g: Gauge<f64, AtomicU64> = Gauge::default();
    g.set(value);
    registry.register(name, help, g);
}

#[allow(clippy::cast_precision_loss)] // Gauges are f64 by the exposition format.
fn as_f64(v: u64) -> f64 {
    v as f64
}

/// Renders every figure in the Prometheus text format.
#[must_use]
pub fn render(
    health: &[HealthSnapshot],
    buffer: &Stats,
    publish: &StatsSnapshot,
    daemon: DaemonCounts,
) -> String {
    let mut r = Registry::with_prefix("fivezero");

    // Poller, per device.
    let cycles = Family::<Labels, Counter>::default();
    let overruns = Family::<Labels, Counter>::default();
    let dropped_cycles = Family::<Labels, Counter>::default();
    let requests = Family::<Labels, Counter>::default();
    let timeouts = Family::<Labels, Counter>::default();
    let reconnects = Family::<Labels, Counter>::default();
    let exceptions = Family::<Labels, Counter>::default();
    let up = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let latency = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let per_cycle = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let misconfigured = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    let last_success = Family::<Labels, Gauge<f64, AtomicU64>>::default();
    for h in health {
        let d: Labels = vec![("device", h.device.to_string())];
        cycles.get_or_create(&d).inc_by(h.cycles);
        overruns.get_or_create(&d).inc_by(h.overruns);
        dropped_cycles.get_or_create(&d).inc_by(h.cycles_dropped);
        requests.get_or_create(&d).inc_by(h.requests);
        timeouts.get_or_create(&d).inc_by(h.timeouts);
        reconnects.get_or_create(&d).inc_by(h.reconnects);
        for (code, n) in &h.exceptions {
            let l: Labels = vec![
                ("device", h.device.to_string()),
                ("code", format!("{code:02X}")),
            ];
            exceptions.get_or_create(&l).inc_by(*n);
        }
        let online = matches!(h.state, crate::poll::DeviceState::Online);
        up.get_or_create(&d).set(if online { 1.0 } else { 0.0 });
        if let Some(l) = h.latency_ewma {
            latency.get_or_create(&d).set(l.as_secs_f64());
        }
        per_cycle
            .get_or_create(&d)
            .set(as_f64(h.requests_per_cycle));
        misconfigured
            .get_or_create(&d)
            .set(as_f64(h.misconfigured_blocks));
        if let Some(ms) = h.last_success_ms {
            #[allow(clippy::cast_precision_loss)]
            last_success.get_or_create(&d).set(ms as f64 / 1000.0);
        }
    }
    r.register("poll_cycles", "Poll cycles completed per device", cycles);
    r.register(
        "poll_overruns",
        "Cycles skipped because the previous one ran late",
        overruns,
    );
    r.register(
        "poll_cycles_dropped",
        "Cycles dropped because the buffer hand-over stayed full",
        dropped_cycles,
    );
    r.register("modbus_requests", "Modbus requests sent", requests);
    r.register(
        "modbus_timeouts",
        "Modbus requests that timed out",
        timeouts,
    );
    r.register(
        "modbus_reconnects",
        "Times a device link was reopened",
        reconnects,
    );
    r.register(
        "modbus_exceptions",
        "Modbus exception replies by code",
        exceptions,
    );
    r.register("device_up", "1 while the device answers", up);
    r.register(
        "modbus_latency_seconds",
        "Moving average of request latency",
        latency,
    );
    r.register(
        "modbus_requests_per_cycle",
        "Requests in the last cycle",
        per_cycle,
    );
    r.register(
        "modbus_misconfigured_blocks",
        "Blocks skipped after an address or function exception",
        misconfigured,
    );
    r.register(
        "device_last_success_timestamp_seconds",
        "Unix time of the last answered request",
        last_success,
    );

    // Readings in and out.
    counter(
        &mut r,
        "readings_polled",
        "Readings handed over by the poller",
        daemon.polled_readings,
    );
    let c = &buffer.counters;
    counter(
        &mut r,
        "readings_committed",
        "Readings committed to the buffer",
        c.appended_readings,
    );
    counter(
        &mut r,
        "kpi_records_committed",
        "KPI records committed to the buffer",
        c.appended_kpis,
    );
    counter(
        &mut r,
        "readings_broker_acked",
        "Sequences acknowledged by the broker",
        c.broker_acked,
    );
    counter(
        &mut r,
        "readings_sink_acked",
        "Sequences the sink's watermark passed",
        c.sink_acked,
    );
    let dropped = Family::<Labels, Counter>::default();
    for (intentional, reason, n) in [
        ("true", "buffer_full", c.evicted_buffer_full),
        ("true", "max_age", c.evicted_max_age),
        ("true", "disk_full_eviction", c.evicted_disk_full),
        ("false", "disk_full", c.dropped_disk_full),
        ("false", "storage", c.dropped_storage),
        ("false", "invalid", c.dropped_invalid),
        ("false", "closed", c.dropped_closed),
    ] {
        let l: Labels = vec![
            ("intentional", intentional.to_owned()),
            ("reason", reason.to_owned()),
        ];
        dropped.get_or_create(&l).inc_by(n);
    }
    r.register(
        "readings_dropped",
        "Readings or records not delivered, by reason",
        dropped,
    );

    // Buffer (G8).
    gauge(
        &mut r,
        "outbox_committed_seq",
        "Highest committed sequence of the current epoch",
        as_f64(buffer.committed_seq),
    );
    gauge(
        &mut r,
        "outbox_acked_contiguous_seq",
        "Sequence below which everything is acknowledged or evicted",
        as_f64(buffer.broker_acked_seq),
    );
    gauge(
        &mut r,
        "outbox_sink_watermark_seq",
        "The sink's watermark for the current epoch",
        as_f64(buffer.sink_acked_seq),
    );
    gauge(
        &mut r,
        "outbox_backlog",
        "Sequences neither acknowledged nor evicted",
        as_f64(buffer.backlog),
    );
    gauge(
        &mut r,
        "outbox_bytes",
        "Bytes charged against the buffer budget",
        as_f64(buffer.charged_bytes),
    );
    gauge(
        &mut r,
        "outbox_file_bytes",
        "Buffer database and WAL size on disk",
        as_f64(buffer.file_bytes),
    );
    gauge(
        &mut r,
        "outbox_max_bytes",
        "The buffer budget",
        as_f64(buffer.max_bytes),
    );
    #[allow(clippy::cast_precision_loss)]
    gauge(
        &mut r,
        "outbox_oldest_age_seconds",
        "Age of the oldest row held",
        buffer
            .oldest_unsent_age_ms
            .map_or(0.0, |ms| ms as f64 / 1000.0),
    );
    if let Some(h) = buffer.headroom_hours {
        gauge(
            &mut r,
            "outbox_headroom_hours",
            "Hours until the budget is full at the current rate",
            h,
        );
    }
    gauge(
        &mut r,
        "outbox_disk_failing",
        "1 while appends fail on a full or failing disk",
        if buffer.disk_failing { 1.0 } else { 0.0 },
    );

    // Publisher.
    gauge(
        &mut r,
        "mqtt_connected",
        "1 while connected to the broker",
        if publish.connected { 1.0 } else { 0.0 },
    );
    counter(
        &mut r,
        "mqtt_connects",
        "Connections made",
        publish.connects,
    );
    counter(
        &mut r,
        "mqtt_connect_failures",
        "Connection attempts that failed",
        publish.connect_failures,
    );
    counter(
        &mut r,
        "mqtt_published_messages",
        "Batch and KPI messages published, republications included",
        publish.published_messages,
    );
    counter(
        &mut r,
        "mqtt_republished_messages",
        "Messages published again after a reconnect or replay",
        publish.republished_messages,
    );
    counter(
        &mut r,
        "mqtt_broker_acks",
        "Messages the broker acknowledged",
        publish.broker_acks,
    );
    counter(
        &mut r,
        "mqtt_rejected",
        "Publishes the broker refused",
        publish.rejected,
    );
    counter(
        &mut r,
        "mqtt_malformed_acks",
        "Undecodable payloads on the ack topic",
        publish.malformed_acks,
    );
    gauge(
        &mut r,
        "mqtt_in_flight",
        "Publishes queued or in flight",
        as_f64(publish.in_flight),
    );

    if let Some(k) = daemon.kpi {
        kpi(&mut r, &k);
    }

    let mut out = String::new();
    if encode(&mut out, &r).is_err() {
        out.clear();
        let _ = writeln!(out, "# encoding failed");
    }
    out
}

/// The KPI task's figures: readings by what the engine did with them, windows, records.
fn kpi(r: &mut Registry, k: &Figures) {
    let readings = Family::<Labels, Counter>::default();
    let e = &k.engine;
    for (outcome, n) in [
        ("accepted", e.accepted),
        ("missing", e.missing),
        ("late", e.late),
        ("out_of_order", e.out_of_order),
        ("too_far_ahead", e.too_far_ahead),
        ("out_of_range", e.out_of_range),
        ("not_configured", e.not_configured),
    ] {
        readings
            .get_or_create(&vec![("outcome", outcome.to_owned())])
            .inc_by(n);
    }
    r.register(
        "kpi_readings",
        "Readings the KPI engine took, by what it did with them (kept across restarts)",
        readings,
    );
    counter(
        r,
        "kpi_windows_closed",
        "KPI windows closed since the start",
        k.windows_closed,
    );
    let records = Family::<Labels, Counter>::default();
    records
        .get_or_create(&vec![("outcome", "committed".to_owned())])
        .inc_by(k.records_committed);
    records
        .get_or_create(&vec![("outcome", "dropped".to_owned())])
        .inc_by(k.records_dropped);
    r.register(
        "kpi_records",
        "KPI records committed to the buffer or refused by it, since the start",
        records,
    );
}
