//! MQTT topic names.
//!
//! Every message of one gateway goes to `{prefix}/{site}/{gateway}/{kind}`, where the prefix is
//! configurable ([`DEFAULT_PREFIX`] is `fivezero/v1`) and `kind` is one of [`TopicKind`]:
//!
//! | kind | payload ([`crate::wire`]) | retained | written by |
//! |---|---|---|---|
//! | `batches` | [`Batch`](crate::wire::Batch) | no | gateway |
//! | `kpi` | [`KpiBatch`](crate::wire::KpiBatch) | no | gateway |
//! | `gaps` | [`Gap`](crate::wire::Gap) | no | gateway |
//! | `status` | [`Status`](crate::wire::Status) (`online` birth, `offline` last will) | yes | gateway, broker |
//! | `ack` | [`AckWatermark`](crate::wire::AckWatermark) | yes | sink |
//!
//! The topic says which message a payload is; the payload carries no type tag.
//!
//! Invariants, checked by the tests below:
//! - a topic level we build is never empty, never longer than [`MAX_SEGMENT_BYTES`], and never
//!   holds `/`, the wildcards `+` and `#`, or a control character (MQTT 3.1.1 §4.7.3 forbids
//!   U+0000 and advises against the other control characters);
//! - the prefix may have several levels (`fivezero/v1`), each held to the same rule, and must
//!   not start with `$`, which brokers reserve for their own topics (`$SYS`, `$share`);
//! - [`parse`] accepts exactly the topics [`Topics`] builds for that prefix and returns the site,
//!   gateway and kind they were built from; anything else is `None`;
//! - [`filter`] and [`shared_filter`] match exactly those topics of one kind.

use std::fmt;

/// The topic prefix used when the configuration does not set one.
pub const DEFAULT_PREFIX: &str = "fivezero/v1";

/// The longest topic level (site, gateway, prefix level, share group) we accept, in bytes.
///
/// Topics stay short on cellular links and the ids fit any database column the sink uses.
pub const MAX_SEGMENT_BYTES: usize = 64;

/// Which of the five messages of a gateway a topic carries; its last level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum TopicKind {
    /// `batches`: readings, one [`Batch`](crate::wire::Batch) per message.
    Batches,
    /// `kpi`: KPI records of closed windows, one [`KpiBatch`](crate::wire::KpiBatch) per message.
    Kpi,
    /// `gaps`: sequence ranges evicted under the disk budget, one [`Gap`](crate::wire::Gap) per
    /// message.
    Gaps,
    /// `status`: retained [`Status`](crate::wire::Status), `online` birth or `offline` will.
    Status,
    /// `ack`: retained [`AckWatermark`](crate::wire::AckWatermark) written by the sink.
    Ack,
}

impl TopicKind {
    /// Every kind, in topic-table order.
    pub const ALL: [Self; 5] = [
        Self::Batches,
        Self::Kpi,
        Self::Gaps,
        Self::Status,
        Self::Ack,
    ];

    /// The last topic level for this kind.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Batches => "batches",
            Self::Kpi => "kpi",
            Self::Gaps => "gaps",
            Self::Status => "status",
            Self::Ack => "ack",
        }
    }

    /// The kind whose last topic level is `level`, if any (exact, case-sensitive).
    #[must_use]
    pub fn from_level(level: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|kind| kind.as_str() == level)
    }

    /// Whether messages of this kind are published retained.
    #[must_use]
    pub const fn is_retained(self) -> bool {
        matches!(self, Self::Status | Self::Ack)
    }
}

impl fmt::Display for TopicKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a string cannot be one topic level.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentError {
    /// The level is the empty string.
    #[error("is empty")]
    Empty,
    /// The level is longer than [`MAX_SEGMENT_BYTES`].
    #[error("is {len} bytes long, more than the {MAX_SEGMENT_BYTES} allowed")]
    TooLong {
        /// Length in bytes.
        len: usize,
    },
    /// The level holds a character MQTT reserves or forbids.
    #[error("contains {ch:?}, which cannot appear in an MQTT topic level")]
    Forbidden {
        /// The first offending character.
        ch: char,
    },
    /// The first level of the prefix starts with `$`, which brokers reserve.
    #[error("starts with '$', which brokers reserve for their own topics")]
    Reserved,
}

/// Checks that `level` can be one level of a topic: non-empty, at most [`MAX_SEGMENT_BYTES`]
/// bytes, and free of `/`, `+`, `#` and control characters (NUL included).
///
/// The wire validation holds gateway, site, device and metric names to the same rule, so any
/// name that passes it can also be put into a topic later.
///
/// # Errors
///
/// The first rule `level` breaks.
pub fn check_segment(level: &str) -> Result<(), SegmentError> {
    if level.is_empty() {
        return Err(SegmentError::Empty);
    }
    if level.len() > MAX_SEGMENT_BYTES {
        return Err(SegmentError::TooLong { len: level.len() });
    }
    match level
        .chars()
        .find(|&ch| matches!(ch, '/' | '+' | '#') || ch.is_control())
    {
        Some(ch) => Err(SegmentError::Forbidden { ch }),
        None => Ok(()),
    }
}

/// A prefix, site, gateway or share group that cannot be used in a topic.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} {value:?} cannot be used in an MQTT topic: it {problem}")]
pub struct TopicError {
    /// Which input was refused: `"prefix"`, `"site"`, `"gateway"` or `"share group"`.
    pub what: &'static str,
    /// The refused input (for a prefix, the offending level).
    pub value: String,
    /// What is wrong with it.
    pub problem: SegmentError,
}

fn check(what: &'static str, value: &str) -> Result<(), TopicError> {
    check_segment(value).map_err(|problem| TopicError {
        what,
        value: value.to_owned(),
        problem,
    })
}

/// Checks a prefix: one or more levels separated by `/`, each passing [`check_segment`], the
/// first not starting with `$`.
///
/// # Errors
///
/// The first level that breaks a rule, as a [`TopicError`] with `what = "prefix"`.
pub fn check_prefix(prefix: &str) -> Result<(), TopicError> {
    if prefix.starts_with('$') {
        return Err(TopicError {
            what: "prefix",
            value: prefix.to_owned(),
            problem: SegmentError::Reserved,
        });
    }
    prefix
        .split('/')
        .try_for_each(|level| check("prefix", level))
}

/// The five topics of one gateway, built and checked once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topics {
    site: String,
    gateway: String,
    /// Indexed like [`TopicKind::ALL`].
    names: [String; 5],
}

impl Topics {
    /// Builds the topics `{prefix}/{site}/{gateway}/{kind}` of one gateway.
    ///
    /// # Errors
    ///
    /// A prefix refused by [`check_prefix`], or a site or gateway refused by [`check_segment`].
    pub fn new(prefix: &str, site: &str, gateway: &str) -> Result<Self, TopicError> {
        check_prefix(prefix)?;
        check("site", site)?;
        check("gateway", gateway)?;
        let names = TopicKind::ALL.map(|kind| format!("{prefix}/{site}/{gateway}/{kind}"));
        Ok(Self {
            site: site.to_owned(),
            gateway: gateway.to_owned(),
            names,
        })
    }

    /// The site these topics belong to.
    #[must_use]
    pub fn site(&self) -> &str {
        &self.site
    }

    /// The gateway these topics belong to.
    #[must_use]
    pub fn gateway(&self) -> &str {
        &self.gateway
    }

    /// The topic of one kind.
    #[must_use]
    pub fn topic(&self, kind: TopicKind) -> &str {
        &self.names[kind as usize]
    }

    /// `{prefix}/{site}/{gateway}/batches`.
    #[must_use]
    pub fn batches(&self) -> &str {
        self.topic(TopicKind::Batches)
    }

    /// `{prefix}/{site}/{gateway}/kpi`.
    #[must_use]
    pub fn kpi(&self) -> &str {
        self.topic(TopicKind::Kpi)
    }

    /// `{prefix}/{site}/{gateway}/gaps`.
    #[must_use]
    pub fn gaps(&self) -> &str {
        self.topic(TopicKind::Gaps)
    }

    /// `{prefix}/{site}/{gateway}/status` (retained).
    #[must_use]
    pub fn status(&self) -> &str {
        self.topic(TopicKind::Status)
    }

    /// `{prefix}/{site}/{gateway}/ack` (retained, written by the sink).
    #[must_use]
    pub fn ack(&self) -> &str {
        self.topic(TopicKind::Ack)
    }
}

/// Splits a received topic into site, gateway and kind.
///
/// Returns `None` unless `topic` is exactly `{prefix}/{site}/{gateway}/{kind}` with a known kind
/// and a site and gateway that [`Topics::new`] would accept; the sink dead-letters such
/// messages rather than guessing.
#[must_use]
pub fn parse<'t>(prefix: &str, topic: &'t str) -> Option<(&'t str, &'t str, TopicKind)> {
    let rest = topic.strip_prefix(prefix)?.strip_prefix('/')?;
    let mut levels = rest.split('/');
    let (site, gateway, kind) = (levels.next()?, levels.next()?, levels.next()?);
    if levels.next().is_some() || check_segment(site).is_err() || check_segment(gateway).is_err() {
        return None;
    }
    Some((site, gateway, TopicKind::from_level(kind)?))
}

/// The subscription filter `{prefix}/+/+/{kind}`: one kind, every site and gateway.
///
/// # Errors
///
/// A prefix refused by [`check_prefix`].
pub fn filter(prefix: &str, kind: TopicKind) -> Result<String, TopicError> {
    check_prefix(prefix)?;
    Ok(format!("{prefix}/+/+/{kind}"))
}

/// The MQTT 5 shared-subscription filter `$share/{group}/{prefix}/+/+/{kind}`, so several sinks
/// split one kind's messages between them.
///
/// # Errors
///
/// A group refused by [`check_segment`] or a prefix refused by [`check_prefix`].
pub fn shared_filter(group: &str, prefix: &str, kind: TopicKind) -> Result<String, TopicError> {
    check("share group", group)?;
    Ok(format!("$share/{group}/{}", filter(prefix, kind)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    const SITE: &str = "qingdao-greensail";
    const GW: &str = "qd-greensail-gw1";

    #[test]
    fn topics_follow_prefix_site_gateway_kind() {
        let topics = Topics::new(DEFAULT_PREFIX, SITE, GW).unwrap();
        assert_eq!(
            topics.batches(),
            "fivezero/v1/qingdao-greensail/qd-greensail-gw1/batches"
        );
        assert_eq!(
            topics.kpi(),
            "fivezero/v1/qingdao-greensail/qd-greensail-gw1/kpi"
        );
        assert_eq!(
            topics.gaps(),
            "fivezero/v1/qingdao-greensail/qd-greensail-gw1/gaps"
        );
        assert_eq!(
            topics.status(),
            "fivezero/v1/qingdao-greensail/qd-greensail-gw1/status"
        );
        assert_eq!(
            topics.ack(),
            "fivezero/v1/qingdao-greensail/qd-greensail-gw1/ack"
        );
        assert_eq!(topics.site(), SITE);
        assert_eq!(topics.gateway(), GW);
    }

    #[test]
    fn a_single_level_prefix_works_too() {
        let topics = Topics::new("plant", SITE, GW).unwrap();
        assert_eq!(
            topics.status(),
            "plant/qingdao-greensail/qd-greensail-gw1/status"
        );
    }

    #[test]
    fn only_status_and_ack_are_retained() {
        let retained: Vec<_> = TopicKind::ALL
            .into_iter()
            .filter(|k| k.is_retained())
            .collect();
        assert_eq!(retained, [TopicKind::Status, TopicKind::Ack]);
    }

    #[test]
    fn every_kind_round_trips_through_its_level() {
        for (index, kind) in TopicKind::ALL.into_iter().enumerate() {
            assert_eq!(
                kind as usize, index,
                "Topics::topic indexes names by discriminant"
            );
            assert_eq!(TopicKind::from_level(kind.as_str()), Some(kind));
            assert_eq!(kind.to_string(), kind.as_str());
        }
        assert_eq!(TopicKind::from_level("Batches"), None);
        assert_eq!(TopicKind::from_level(""), None);
    }

    #[test]
    fn wildcards_slashes_and_control_characters_are_refused_in_ids() {
        for (bad, ch) in [
            ("gw/1", '/'),
            ("gw+", '+'),
            ("gw#", '#'),
            ("gw\0", '\0'),
            ("g\nw", '\n'),
        ] {
            let err = Topics::new(DEFAULT_PREFIX, SITE, bad).unwrap_err();
            assert_eq!(err.what, "gateway");
            assert_eq!(err.problem, SegmentError::Forbidden { ch });
            let err = Topics::new(DEFAULT_PREFIX, bad, GW).unwrap_err();
            assert_eq!(err.what, "site");
        }
    }

    #[test]
    fn empty_and_overlong_ids_are_refused_with_a_clear_message() {
        let err = Topics::new(DEFAULT_PREFIX, "", GW).unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"site "" cannot be used in an MQTT topic: it is empty"#
        );

        let long = "g".repeat(MAX_SEGMENT_BYTES + 1);
        let err = Topics::new(DEFAULT_PREFIX, SITE, &long).unwrap_err();
        assert_eq!(err.problem, SegmentError::TooLong { len: 65 });
        assert!(
            err.to_string()
                .ends_with("it is 65 bytes long, more than the 64 allowed")
        );

        let exactly = "g".repeat(MAX_SEGMENT_BYTES);
        assert!(Topics::new(DEFAULT_PREFIX, SITE, &exactly).is_ok());
    }

    #[test]
    fn the_length_limit_counts_bytes_not_characters() {
        // 22 three-byte characters are 66 bytes.
        let han = "青".repeat(22);
        assert_eq!(check_segment(&han), Err(SegmentError::TooLong { len: 66 }));
        assert_eq!(check_segment("青岛绿帆"), Ok(()));
    }

    #[test]
    fn a_prefix_with_an_empty_level_or_a_dollar_start_is_refused() {
        for bad in [
            "",
            "/fivezero",
            "fivezero/",
            "fivezero//v1",
            "fivezero/+",
            "fivezero/#",
        ] {
            let err = check_prefix(bad).unwrap_err();
            assert_eq!(err.what, "prefix", "{bad:?}");
        }
        assert_eq!(
            check_prefix("$SYS/fivezero").unwrap_err().problem,
            SegmentError::Reserved
        );
        assert_eq!(
            check_prefix("$share/g/fivezero").unwrap_err().problem,
            SegmentError::Reserved
        );
        assert!(check_prefix("fivezero/v$1").is_ok());
    }

    #[test]
    fn parse_inverts_topics_for_every_kind() {
        let topics = Topics::new(DEFAULT_PREFIX, SITE, GW).unwrap();
        for kind in TopicKind::ALL {
            assert_eq!(
                parse(DEFAULT_PREFIX, topics.topic(kind)),
                Some((SITE, GW, kind))
            );
        }
    }

    #[test]
    fn parse_refuses_anything_topics_would_not_build() {
        for topic in [
            "fivezero/v1/site/gw",
            "fivezero/v1/site/gw/batches/extra",
            "fivezero/v1/site/gw/unknown",
            "fivezero/v1/site/gw/Batches",
            "fivezero/v1//gw/batches",
            "fivezero/v1/site//batches",
            "fivezero/v2/site/gw/batches",
            "fivezero/v1site/gw/batches/x",
            "fivezero/v10/site/gw/batches",
            "other/fivezero/v1/site/gw/batches",
            "fivezero/v1/site/gw/batches/",
            "fivezero/v1",
            "",
        ] {
            assert_eq!(parse(DEFAULT_PREFIX, topic), None, "{topic:?}");
        }
        let long = "g".repeat(MAX_SEGMENT_BYTES + 1);
        assert_eq!(
            parse(DEFAULT_PREFIX, &format!("fivezero/v1/site/{long}/ack")),
            None
        );
    }

    #[test]
    fn filters_match_one_kind_across_sites_and_gateways() {
        assert_eq!(
            filter(DEFAULT_PREFIX, TopicKind::Batches).unwrap(),
            "fivezero/v1/+/+/batches"
        );
        assert_eq!(
            shared_filter("fivezero-sink", DEFAULT_PREFIX, TopicKind::Batches).unwrap(),
            "$share/fivezero-sink/fivezero/v1/+/+/batches"
        );
        assert_eq!(filter("plant", TopicKind::Ack).unwrap(), "plant/+/+/ack");
    }

    #[test]
    fn filters_refuse_a_bad_prefix_or_group() {
        assert_eq!(filter("a/+", TopicKind::Kpi).unwrap_err().what, "prefix");
        let err = shared_filter("sink/1", DEFAULT_PREFIX, TopicKind::Kpi).unwrap_err();
        assert_eq!(err.what, "share group");
        assert_eq!(err.problem, SegmentError::Forbidden { ch: '/' });
    }

    proptest::proptest! {
        #[test]
        fn parse_inverts_topics_for_any_valid_ids(
            site in "[a-z0-9\\-_.青$ ]{1,21}",
            gateway in "[A-Za-z0-9\\-_.]{1,64}",
            kind_index in 0..5usize,
        ) {
            let kind = TopicKind::ALL[kind_index];
            let topics = Topics::new(DEFAULT_PREFIX, &site, &gateway).unwrap();
            proptest::prop_assert_eq!(
                parse(DEFAULT_PREFIX, topics.topic(kind)),
                Some((site.as_str(), gateway.as_str(), kind))
            );
        }
    }
}
