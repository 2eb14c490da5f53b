//! A managed Deployment's settings, read from its `kzscaler.io/*` annotations.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::names;

/// What the annotations of a managed Deployment ask for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManagedSpec {
    /// Idle time before sleeping.
    pub idle_timeout: Duration,
    /// Longest time a request is held while waking.
    pub wake_timeout: Duration,
    /// Replicas on wake, when set.
    pub wake_replicas: Option<u32>,
    /// Comma list of path prefixes that never count as activity.
    pub ignore_paths: Vec<String>,
    /// Never sleep.
    pub paused: bool,
}

/// The replica count a wake scales to: the largest of 1, an HPA's minReplicas, the count
/// before sleep (`kzscaler.io/replicas-before-sleep`) and `kzscaler.io/wake-replicas`.
pub fn wake_replicas(
    hpa_min: Option<u32>,
    before_sleep: Option<u32>,
    annotated: Option<u32>,
) -> u32 {
    [hpa_min, before_sleep, annotated]
        .into_iter()
        .flatten()
        .fold(1, u32::max)
}

/// [`names::REPLICAS_BEFORE_SLEEP`] (written by the controller): `Ok(None)` when absent.
pub fn replicas_before_sleep(
    annotations: &BTreeMap<String, String>,
) -> Result<Option<u32>, SpecError> {
    match annotations.get(names::REPLICAS_BEFORE_SLEEP) {
        None => Ok(None),
        Some(v) => v
            .trim()
            .parse::<u32>()
            .map(Some)
            .map_err(|_| bad(names::REPLICAS_BEFORE_SLEEP, v, "a whole number")),
    }
}

/// A kzscaler annotation with a value that cannot be used. The message names the annotation,
/// the value and what was expected.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("annotation {annotation}: {value:?} is not valid: expected {expected}")]
pub struct SpecError {
    /// The annotation's name.
    pub annotation: &'static str,
    /// Its value as found.
    pub value: String,
    /// What it should look like.
    pub expected: String,
}

impl ManagedSpec {
    /// Reads the spec of a Deployment with these annotations. `Ok(None)`: not managed
    /// (`kzscaler.io/scale-to-zero` is absent or `"false"`).
    pub fn from_annotations(
        annotations: &BTreeMap<String, String>,
    ) -> Result<Option<Self>, SpecError> {
        let get = |k: &str| annotations.get(k).map(|v| v.trim());
        match get(names::SCALE_TO_ZERO) {
            None | Some("false") => return Ok(None),
            Some("true") => {}
            Some(v) => return Err(bad(names::SCALE_TO_ZERO, v, "\"true\" or \"false\"")),
        }
        let duration = |key: &'static str, default_secs: u64| match get(key) {
            None => Ok(Duration::from_secs(default_secs)),
            Some(v) => match crate::parse_duration(v) {
                Ok(d) if !d.is_zero() => Ok(d),
                Ok(_) => Err(bad(key, v, "a duration above zero, e.g. \"10m\"")),
                Err(e) => Err(bad(
                    key,
                    v,
                    &format!("a Go duration, e.g. \"10m\" ({})", e.reason),
                )),
            },
        };
        let idle_timeout = duration(names::IDLE_TIMEOUT, names::DEFAULT_IDLE_TIMEOUT_SECS)?;
        let wake_timeout = duration(names::WAKE_TIMEOUT, names::DEFAULT_WAKE_TIMEOUT_SECS)?;
        let wake_replicas = match get(names::WAKE_REPLICAS) {
            None => None,
            Some(v) => match v.parse::<u32>() {
                Ok(n) if n >= 1 => Some(n),
                _ => return Err(bad(names::WAKE_REPLICAS, v, "a whole number of at least 1")),
            },
        };
        let ignore_paths = match get(names::IGNORE_PATHS) {
            None => Vec::new(),
            Some(v) => {
                let paths: Vec<String> = v
                    .split(',')
                    .map(str::trim)
                    .filter(|p| !p.is_empty())
                    .map(str::to_owned)
                    .collect();
                if let Some(p) = paths.iter().find(|p| !p.starts_with('/')) {
                    return Err(bad(
                        names::IGNORE_PATHS,
                        v,
                        &format!("a comma list of paths starting with '/' ({p:?} does not)"),
                    ));
                }
                paths
            }
        };
        let paused = match get(names::PAUSED) {
            None | Some("false") => false,
            Some("true") => true,
            Some(v) => return Err(bad(names::PAUSED, v, "\"true\" or \"false\"")),
        };
        Ok(Some(Self {
            idle_timeout,
            wake_timeout,
            wake_replicas,
            ignore_paths,
            paused,
        }))
    }
}

fn bad(annotation: &'static str, value: &str, expected: &str) -> SpecError {
    SpecError {
        annotation,
        value: value.to_owned(),
        expected: expected.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wakes_to_at_least_one() {
        assert_eq!(wake_replicas(None, None, None), 1);
        assert_eq!(wake_replicas(Some(0), Some(0), None), 1);
    }

    #[test]
    fn wakes_to_the_largest_of_hpa_min_previous_and_annotation() {
        assert_eq!(wake_replicas(Some(2), Some(5), Some(3)), 5);
        assert_eq!(wake_replicas(Some(4), Some(1), None), 4);
        assert_eq!(wake_replicas(None, Some(1), Some(3)), 3);
    }

    #[test]
    fn replicas_before_sleep_is_a_whole_number_or_absent() {
        let ann =
            |v: &str| BTreeMap::from([(names::REPLICAS_BEFORE_SLEEP.to_owned(), v.to_owned())]);
        assert_eq!(replicas_before_sleep(&BTreeMap::new()), Ok(None));
        assert_eq!(replicas_before_sleep(&ann(" 3 ")), Ok(Some(3)));
        assert_eq!(
            replicas_before_sleep(&ann("lots")).unwrap_err().to_string(),
            "annotation kzscaler.io/replicas-before-sleep: \"lots\" is not valid: expected a whole number"
        );
    }

    fn annotations(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn unannotated_deployment_is_not_managed() {
        assert_eq!(ManagedSpec::from_annotations(&annotations(&[])), Ok(None));
        let off = annotations(&[(names::SCALE_TO_ZERO, "false")]);
        assert_eq!(ManagedSpec::from_annotations(&off), Ok(None));
    }

    #[test]
    fn managed_deployment_gets_the_defaults() {
        let spec = ManagedSpec::from_annotations(&annotations(&[(names::SCALE_TO_ZERO, "true")]))
            .unwrap()
            .unwrap();
        assert_eq!(spec.idle_timeout, Duration::from_secs(600));
        assert_eq!(spec.wake_timeout, Duration::from_secs(60));
        assert_eq!(spec.wake_replicas, None);
        assert!(spec.ignore_paths.is_empty());
        assert!(!spec.paused);
    }

    #[test]
    fn reads_every_annotation() {
        let spec = ManagedSpec::from_annotations(&annotations(&[
            (names::SCALE_TO_ZERO, "true"),
            (names::IDLE_TIMEOUT, "90s"),
            (names::WAKE_TIMEOUT, "2m"),
            (names::WAKE_REPLICAS, "3"),
            (names::IGNORE_PATHS, "/healthz, /metrics,"),
            (names::PAUSED, "true"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(spec.idle_timeout, Duration::from_secs(90));
        assert_eq!(spec.wake_timeout, Duration::from_secs(120));
        assert_eq!(spec.wake_replicas, Some(3));
        assert_eq!(spec.ignore_paths, vec!["/healthz", "/metrics"]);
        assert!(spec.paused);
    }

    #[test]
    fn bad_values_name_annotation_value_and_expectation() {
        let cases = [
            (names::SCALE_TO_ZERO, "yes", "\"true\" or \"false\""),
            (names::IDLE_TIMEOUT, "10", "unit is missing"),
            (names::IDLE_TIMEOUT, "0s", "above zero"),
            (names::WAKE_TIMEOUT, "soon", "Go duration"),
            (names::WAKE_REPLICAS, "0", "at least 1"),
            (names::WAKE_REPLICAS, "-2", "at least 1"),
            (names::IGNORE_PATHS, "healthz", "starting with '/'"),
            (names::PAUSED, "1", "\"true\" or \"false\""),
        ];
        for (key, value, expected) in cases {
            let mut a = annotations(&[(names::SCALE_TO_ZERO, "true")]);
            a.insert(key.to_owned(), value.to_owned());
            let err = ManagedSpec::from_annotations(&a).unwrap_err();
            assert_eq!(err.annotation, key);
            let msg = err.to_string();
            assert!(msg.contains(key) && msg.contains(value), "{msg}");
            assert!(msg.contains(expected), "{key}={value}: {msg}");
        }
    }
}
