//! The Prometheus exposition reports the components' own counts.

use std::sync::Arc;

use fivezero_gateway::buffer::{Buffer, BufferOptions};
use fivezero_gateway::kpi::task::Figures;
use fivezero_gateway::metrics::{DaemonCounts, render};
use fivezero_gateway::poll::DeviceReadings;
use fivezero_gateway::publish::StatsSnapshot;
use fivezero_model::wire::{Quality, Reading, Value};

#[tokio::test]
async fn committed_readings_and_drop_reasons_appear_in_the_exposition() {
    let dir = std::env::temp_dir().join(format!("fivezero-metrics-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let buffer = Buffer::open(&dir, &BufferOptions::new("gw-metrics", "site")).unwrap();
    let now = 1_795_000_000_000;
    let reading = |metric: &str, v: f64| Reading {
        ts: now,
        device: "meter".into(),
        metric: metric.into(),
        value: Some(Value::Number(v)),
        quality: Quality::Good,
        reason: None,
    };
    buffer
        .append_readings(&DeviceReadings {
            device: Arc::from("meter"),
            ts_ms: now,
            cycle: 1,
            readings: vec![
                reading("electricity.frequency", 50.0),
                reading("electricity.voltage_l1", 230.0),
                reading("electricity.active_power", 1.5),
            ],
        })
        .await
        .unwrap();

    let text = render(
        &[],
        &buffer.stats(),
        &StatsSnapshot::default(),
        DaemonCounts {
            polled_readings: 3,
            refused_readings: 0,
            kpi: Some(Figures {
                windows_closed: 3,
                records_committed: 12,
                ..Figures::default()
            }),
        },
    );
    for line in [
        "fivezero_readings_polled_total 3",
        "fivezero_readings_committed_total 3",
        "fivezero_outbox_committed_seq 3.0",
        "fivezero_outbox_backlog 3.0",
        "fivezero_readings_dropped_total{intentional=\"false\",reason=\"disk_full\"} 0",
        "fivezero_readings_dropped_total{intentional=\"true\",reason=\"buffer_full\"} 0",
        "fivezero_mqtt_connected 0.0",
        "fivezero_kpi_windows_closed_total 3",
        "fivezero_kpi_records_total{outcome=\"committed\"} 12",
        "fivezero_kpi_readings_total{outcome=\"late\"} 0",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "no line {line:?} in:\n{text}"
        );
    }
    buffer.close().await;
    std::fs::remove_dir_all(&dir).unwrap();
}
