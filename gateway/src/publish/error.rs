//! What can go wrong in the publisher, and what it does about each.
//!
//! | what happened | disposition | what the publisher does |
//! |---|---|---|
//! | a password, CA, certificate or key file cannot be read or parsed | [`Disposition::Fatal`] | refused when the [`PublisherConfig`](super::PublisherConfig) is built; the message names the file |
//! | the broker cannot be reached, the connection drops, a keep-alive is missed | [`Disposition::Reconnect`] | WARN (no data is lost: it stays in the buffer), reconnect after the backoff |
//! | the broker refuses the credentials or the TLS handshake fails | [`Disposition::Reconnect`] | ERROR (an operator must act), reconnect after the backoff |
//! | the buffer fails a read or a write | [`Disposition::Retry`] | WARN, try again after the backoff; unacknowledged messages are sent again |
//! | the buffer is closed | [`Disposition::Fatal`] | stop: publish `offline`, disconnect, return the error |

use std::path::PathBuf;

use fivezero_model::topic::TopicError;

use crate::outbox::OutboxError;

/// What the publisher does after an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// Try the operation again after a backoff; the connection stays up.
    Retry,
    /// Drop the connection's state and reconnect after a backoff.
    Reconnect,
    /// Give up: the configuration must change, or the gateway is shutting down.
    Fatal,
}

/// Why the publisher failed, or could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// A file the configuration names cannot be read.
    #[error("{what} {}: cannot be read: {source}", .path.display())]
    File {
        /// Which file: `"password file"`, `"CA file"`, `"client certificate"`, `"client key"`.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// A file was read but does not hold what it must.
    #[error("{what} {}: {problem}", .path.display())]
    BadFile {
        /// Which file.
        what: &'static str,
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        problem: String,
    },
    /// The TLS settings cannot be used (for instance a certificate that does not match its key).
    #[error("TLS: {0}")]
    Tls(String),
    /// A configuration value cannot be used.
    #[error("mqtt: {0}")]
    Config(String),
    /// The site, gateway or prefix cannot be used in a topic.
    #[error(transparent)]
    Topic(#[from] TopicError),
    /// The broker connection failed.
    #[error("broker {broker}: {message}")]
    Connection {
        /// The broker's URL.
        broker: String,
        /// What rumqttc said.
        message: String,
        /// True when an operator must act (credentials refused, certificate rejected).
        operator: bool,
    },
    /// The buffer failed.
    #[error(transparent)]
    Outbox(#[from] OutboxError),
}

impl PublishError {
    /// What to do about it.
    #[must_use]
    pub const fn disposition(&self) -> Disposition {
        match self {
            Self::File { .. }
            | Self::BadFile { .. }
            | Self::Tls(_)
            | Self::Config(_)
            | Self::Topic(_)
            | Self::Outbox(OutboxError::Closed) => Disposition::Fatal,
            Self::Connection { .. } => Disposition::Reconnect,
            Self::Outbox(OutboxError::Storage(_)) => Disposition::Retry,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_errors_name_the_file_and_are_fatal() {
        let e = PublishError::File {
            what: "CA file",
            path: PathBuf::from("/etc/fivezero/ca.pem"),
            source: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(
            e.to_string()
                .starts_with("CA file /etc/fivezero/ca.pem: cannot be read")
        );
        assert_eq!(e.disposition(), Disposition::Fatal);
    }

    #[test]
    fn a_lost_connection_reconnects_and_a_storage_error_retries() {
        let e = PublishError::Connection {
            broker: "mqtt://127.0.0.1:1883".into(),
            message: "I/O: connection refused".into(),
            operator: false,
        };
        assert_eq!(e.disposition(), Disposition::Reconnect);
        let e = PublishError::from(OutboxError::Storage("busy".into()));
        assert_eq!(e.disposition(), Disposition::Retry);
        assert_eq!(
            PublishError::from(OutboxError::Closed).disposition(),
            Disposition::Fatal
        );
    }
}
