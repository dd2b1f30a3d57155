//! `PublisherConfig::from_config`: ids and topics from `[gateway]`, the broker from `[mqtt]`,
//! the password from its file or the environment, and TLS files named in every error.

mod common;

use std::time::Duration;

use common::{config, scratch};
use fivezero_gateway::config::MqttProtocol;
use fivezero_gateway::publish::{
    DEFAULT_REPLAY_RATE, DEFAULT_WINDOW, PublishError, PublisherConfig, RetainUntil, Secret,
};

fn text(mqtt: &str) -> String {
    format!(
        r#"
[gateway]
id = "gw1"
site = "site1"

[mqtt]
{mqtt}

[[device]]
name = "meter"
profile = "eastron-sdm630"
tcp = "127.0.0.1:5020"
unit = 1
"#
    )
}

#[test]
fn topics_client_id_and_broker_come_from_the_gateway_config() {
    let c = config(
        "pubcfg-basic",
        &text(
            "url = \"mqtt://broker.example:1884\"\nprefix = \"plant/v1\"\nkeep_alive = \"45s\"\nprotocol = \"3.1.1\"",
        ),
    );
    let p = PublisherConfig::from_config_with_password(&c, vec!["eastron-sdm630".into()], None)
        .unwrap();
    assert_eq!(p.topics.gateway(), "gw1");
    assert_eq!(p.topics.batches(), "plant/v1/site1/gw1/batches");
    assert_eq!(p.topics.status(), "plant/v1/site1/gw1/status");
    assert_eq!(p.broker(), "mqtt://broker.example:1884");
    assert_eq!(p.protocol, MqttProtocol::V311);
    assert_eq!(p.keep_alive, Duration::from_secs(45));
    assert_eq!(p.profiles, ["eastron-sdm630"]);
    assert_eq!(p.window.get(), DEFAULT_WINDOW);
    assert_eq!(p.replay_rate.get(), DEFAULT_REPLAY_RATE);
    assert_eq!(p.retain_until, RetainUntil::SinkAck);
    assert!(p.password.is_none() && p.tls.is_none());
}

#[test]
fn mqtt5_is_the_default_protocol() {
    let c = config("pubcfg-default", &text("url = \"mqtt://127.0.0.1\""));
    let p = PublisherConfig::from_config_with_password(&c, Vec::new(), None).unwrap();
    assert_eq!(p.protocol, MqttProtocol::V5);
}

#[test]
fn the_password_file_wins_over_the_environment_and_is_never_printed() {
    let dir = scratch("pubcfg-pw");
    std::fs::write(dir.join("mqtt.pass"), "from-file\n").unwrap();
    let c = config(
        "pubcfg-pw",
        &text(&format!(
            "url = \"mqtt://127.0.0.1\"\nusername = \"gw1\"\npassword_file = \"{}\"",
            dir.join("mqtt.pass").display()
        )),
    );
    let p = PublisherConfig::from_config_with_password(
        &c,
        Vec::new(),
        Some(Secret::new("from-env".into())),
    )
    .unwrap();
    assert_eq!(p.password.as_ref().unwrap().expose(), "from-file");
    assert!(!format!("{p:?}").contains("from-file"));

    let c = config(
        "pubcfg-env",
        &text("url = \"mqtt://127.0.0.1\"\nusername = \"gw1\""),
    );
    let p = PublisherConfig::from_config_with_password(
        &c,
        Vec::new(),
        Some(Secret::new("from-env".into())),
    )
    .unwrap();
    assert_eq!(p.password.unwrap().expose(), "from-env");
}

#[test]
fn a_password_without_a_user_name_is_refused() {
    let c = config("pubcfg-nouser", &text("url = \"mqtt://127.0.0.1\""));
    let e =
        PublisherConfig::from_config_with_password(&c, Vec::new(), Some(Secret::new("x".into())))
            .unwrap_err();
    assert!(e.to_string().contains("no `mqtt.username`"), "{e}");
}

#[test]
fn a_missing_password_file_or_ca_file_is_named() {
    let c = config(
        "pubcfg-missing-pw",
        &text("url = \"mqtt://127.0.0.1\"\nusername = \"u\"\npassword_file = \"/nonexistent/pw\""),
    );
    let e = PublisherConfig::from_config_with_password(&c, Vec::new(), None).unwrap_err();
    assert!(
        matches!(
            e,
            PublishError::File {
                what: "password file",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("/nonexistent/pw"), "{e}");

    let c = config(
        "pubcfg-missing-ca",
        &text("url = \"mqtts://broker.example\"\nca_file = \"/nonexistent/ca.pem\""),
    );
    let e = PublisherConfig::from_config_with_password(&c, Vec::new(), None).unwrap_err();
    assert_eq!(
        e.to_string().split(": cannot be read").next(),
        Some("CA file /nonexistent/ca.pem")
    );
}
