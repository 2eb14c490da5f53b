//! The filter's configuration: the plugin configuration JSON (a WasmPlugin's `pluginConfig`).

use serde::Deserialize;
use std::time::Duration;

/// Validated filter configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Envoy cluster that reaches the controller's filter API.
    pub controller_cluster: String,
    /// `:authority` for calls to the controller.
    pub controller_authority: String,
    /// How often the snapshot is polled.
    pub poll_period: Duration,
    /// Timeout of one call to the controller.
    pub call_timeout: Duration,
    /// How long the controller may keep a snapshot poll open waiting for a change (a long
    /// poll); zero: it answers at once. Polls still start at most once per `poll_period`.
    pub long_poll: Duration,
    /// Most requests held at once by one worker; past it, 503 at once.
    pub max_held_requests: u32,
    /// Tick period while requests are held: how soon a held request notices its endpoint.
    pub hold_tick: Duration,
    /// Most resumed requests per destination in flight at once while held ones wait (per
    /// worker): woken destinations get held requests at the pace they answer them, not as
    /// one burst. Keep it below a DestinationRule's `connectionPool` limits divided by the
    /// sidecar's concurrency.
    pub release_window: u32,
}

impl Config {
    /// The hold limits this configuration sets.
    pub fn limits(&self) -> crate::hold::Limits {
        crate::hold::Limits {
            max_held: usize::try_from(self.max_held_requests).unwrap_or(usize::MAX),
            release_window: usize::try_from(self.release_window).unwrap_or(usize::MAX),
        }
    }
}

/// Invalid configuration: names the field, the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Not JSON, or a field has the wrong type.
    #[error("plugin configuration is not valid JSON of the expected shape: {0}")]
    Json(String),
    /// A field has a value outside what is allowed.
    #[error("plugin configuration field {field}: {value} is not valid: expected {expected}")]
    Field {
        /// The field's JSON name.
        field: &'static str,
        /// The value as found.
        value: String,
        /// What it should be.
        expected: &'static str,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    controller_cluster: Option<String>,
    controller_authority: Option<String>,
    poll_period_ms: Option<u64>,
    call_timeout_ms: Option<u64>,
    long_poll_ms: Option<u64>,
    max_held_requests: Option<u32>,
    hold_tick_ms: Option<u64>,
    release_window: Option<u32>,
}

/// The cluster a sidecar uses to reach the controller's Service.
pub const DEFAULT_CONTROLLER_CLUSTER: &str =
    "outbound|8080||kzscaler-controller.kzscaler-system.svc.cluster.local";
/// Resumed requests per destination in flight at once: under the smallest `connectionPool`
/// limit people set (100) with room for the traffic that was never held.
pub const DEFAULT_RELEASE_WINDOW: u32 = 32;
/// How long a snapshot poll may wait for a change. Short enough that a controller replica
/// that froze (and lost the lease meanwhile) keeps a sidecar's poll for seconds, not minutes;
/// long enough that an idle sidecar costs the controller one request per 10 s.
pub const DEFAULT_LONG_POLL_MS: u64 = 10_000;
/// The controller Service's host.
pub const DEFAULT_CONTROLLER_AUTHORITY: &str = "kzscaler-controller.kzscaler-system:8080";

impl Config {
    /// Parses and validates the plugin configuration. Empty configuration means all defaults.
    pub fn parse(bytes: &[u8]) -> Result<Self, ConfigError> {
        let raw: Raw = if bytes.iter().all(u8::is_ascii_whitespace) {
            serde_json::from_str("{}").map_err(|e| ConfigError::Json(e.to_string()))?
        } else {
            serde_json::from_slice(bytes).map_err(|e| ConfigError::Json(e.to_string()))?
        };
        let non_empty = |field, v: Option<String>, default: &str| match v {
            None => Ok(default.to_owned()),
            Some(s) if !s.trim().is_empty() => Ok(s),
            Some(s) => Err(ConfigError::Field {
                field,
                value: format!("{s:?}"),
                expected: "a non-empty string",
            }),
        };
        let ms_in = |field, v: Option<u64>, default: u64, min: u64, max: u64, expected| {
            let v = v.unwrap_or(default);
            if (min..=max).contains(&v) {
                Ok(Duration::from_millis(v))
            } else {
                Err(ConfigError::Field {
                    field,
                    value: v.to_string(),
                    expected,
                })
            }
        };
        let long_poll = match raw.long_poll_ms.unwrap_or(DEFAULT_LONG_POLL_MS) {
            0 => Duration::ZERO,
            v => ms_in(
                "long_poll_ms",
                Some(v),
                DEFAULT_LONG_POLL_MS,
                1_000,
                kzscaler_core::wire::MAX_WAIT_SECS.saturating_mul(1_000),
                "0 (no long poll) or milliseconds from 1000 to 60000",
            )?,
        };
        let max_held_requests = raw.max_held_requests.unwrap_or(10_000);
        if max_held_requests == 0 {
            return Err(ConfigError::Field {
                field: "max_held_requests",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        let release_window = raw.release_window.unwrap_or(DEFAULT_RELEASE_WINDOW);
        if release_window == 0 {
            return Err(ConfigError::Field {
                field: "release_window",
                value: "0".into(),
                expected: "at least 1",
            });
        }
        Ok(Self {
            release_window,
            controller_cluster: non_empty(
                "controller_cluster",
                raw.controller_cluster,
                DEFAULT_CONTROLLER_CLUSTER,
            )?,
            controller_authority: non_empty(
                "controller_authority",
                raw.controller_authority,
                DEFAULT_CONTROLLER_AUTHORITY,
            )?,
            poll_period: ms_in(
                "poll_period_ms",
                raw.poll_period_ms,
                1_000,
                50,
                60_000,
                "milliseconds from 50 to 60000",
            )?,
            call_timeout: ms_in(
                "call_timeout_ms",
                raw.call_timeout_ms,
                2_000,
                10,
                60_000,
                "milliseconds from 10 to 60000",
            )?,
            long_poll,
            max_held_requests,
            hold_tick: ms_in(
                "hold_tick_ms",
                raw.hold_tick_ms,
                2,
                1,
                1_000,
                "milliseconds from 1 to 1000",
            )?,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_gives_defaults() {
        let c = Config::parse(b"").unwrap();
        assert_eq!(c.controller_cluster, DEFAULT_CONTROLLER_CLUSTER);
        assert_eq!(c.poll_period, Duration::from_secs(1));
        assert_eq!(c.max_held_requests, 10_000);
        assert_eq!(c.long_poll, Duration::from_secs(10));
        assert_eq!(Config::parse(b" {} ").unwrap(), c);
    }

    #[test]
    fn reads_every_field() {
        let c = Config::parse(
            br#"{"controller_cluster":"ctl","controller_authority":"ctl:1","poll_period_ms":250,
                "call_timeout_ms":500,"max_held_requests":7,"hold_tick_ms":2,"release_window":5,
                "long_poll_ms":0}"#,
        )
        .unwrap();
        assert_eq!(c.controller_cluster, "ctl");
        assert_eq!(c.controller_authority, "ctl:1");
        assert_eq!(c.poll_period, Duration::from_millis(250));
        assert_eq!(c.call_timeout, Duration::from_millis(500));
        assert_eq!(c.max_held_requests, 7);
        assert_eq!(c.hold_tick, Duration::from_millis(2));
        assert_eq!(c.release_window, 5);
        assert_eq!(c.long_poll, Duration::ZERO, "0 turns the long poll off");
    }

    #[test]
    fn errors_name_the_field_and_value() {
        let cases: [(&[u8], &str); 8] = [
            (br#"{"long_poll_ms": 500}"#, "long_poll_ms: 500"),
            (br#"{"long_poll_ms": 61000}"#, "long_poll_ms: 61000"),
            (br#"{"release_window": 0}"#, "release_window: 0"),
            (br#"{"poll_period_ms": 5}"#, "poll_period_ms: 5"),
            (br#"{"call_timeout_ms": 600000}"#, "call_timeout_ms: 600000"),
            (br#"{"max_held_requests": 0}"#, "max_held_requests: 0"),
            (br#"{"controller_cluster": " "}"#, "controller_cluster"),
            (br#"{"poll_period": 5}"#, "unknown field `poll_period`"),
        ];
        for (json, want) in cases {
            let err = Config::parse(json).unwrap_err().to_string();
            assert!(err.contains(want), "{err}");
        }
        assert!(matches!(Config::parse(b"{"), Err(ConfigError::Json(_))));
    }

    proptest::proptest! {
        // Fuzzing: any bytes as plugin configuration are a configuration or an error naming
        // what is wrong, never a panic.
        #[test]
        fn any_plugin_configuration_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..128)) {
            let _ = Config::parse(&bytes);
        }

        #[test]
        fn any_numbers_in_the_configuration_never_panic(n in proptest::prelude::any::<u64>(), field in 0usize..7) {
            let name = ["poll_period_ms", "call_timeout_ms", "max_held_requests", "hold_tick_ms", "release_window", "long_poll_ms", "x"][field];
            let _ = Config::parse(format!("{{\"{name}\": {n}}}").as_bytes());
        }
    }
}
