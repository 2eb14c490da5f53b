//! How long a request may be held: min(wake timeout, the caller's own deadline), answered a
//! little before that deadline so the caller sees kzscaler's answer, not its own timeout.
//!
//! Header values arrive as bytes: any byte may be in them (obs-text), so the parsers read
//! bytes and never assume UTF-8.

/// The caller's deadline from `x-envoy-expected-rq-timeout-ms` (milliseconds).
pub fn envoy_expected_timeout_ms(value: &[u8]) -> Option<u64> {
    let digits = value.trim_ascii();
    if digits.is_empty() || digits.len() > 12 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    decimal(digits).filter(|ms| *ms > 0)
}

/// The caller's deadline from `grpc-timeout` (`<digits><unit>`, unit H M S m u n), in ms.
pub fn grpc_timeout_ms(value: &[u8]) -> Option<u64> {
    let (unit, digits) = value.trim_ascii().split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = decimal(digits)?;
    let ms = match unit {
        b'H' => n.checked_mul(3_600_000)?,
        b'M' => n.checked_mul(60_000)?,
        b'S' => n.checked_mul(1_000)?,
        b'm' => n,
        b'u' => n / 1_000,
        b'n' => n / 1_000_000,
        _ => return None,
    };
    Some(ms)
}

/// ASCII digits (already checked) as a number, None on overflow.
fn decimal(digits: &[u8]) -> Option<u64> {
    digits.iter().try_fold(0u64, |n, d| {
        n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The hold budget: the smallest of the wake timeout and the caller's deadlines, less a
/// margin so the answer arrives before the caller gives up: a fifth of it, at least 20 ms and
/// at most 100 ms, and never more than half.
pub fn hold_budget_ms(wake_timeout_ms: u64, caller: &[Option<u64>]) -> u64 {
    let limit = caller
        .iter()
        .flatten()
        .copied()
        .fold(wake_timeout_ms, u64::min);
    limit - (limit / 5).clamp(20, 100).min(limit / 2)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn reads_grpc_timeouts() {
        assert_eq!(grpc_timeout_ms(b"100m"), Some(100));
        assert_eq!(grpc_timeout_ms(b"2S"), Some(2000));
        assert_eq!(grpc_timeout_ms(b"1M"), Some(60_000));
        assert_eq!(grpc_timeout_ms(b"1H"), Some(3_600_000));
        assert_eq!(grpc_timeout_ms(b"2500u"), Some(2));
        assert_eq!(grpc_timeout_ms(b"5000000n"), Some(5));
        for bad in ["", "m", "10", "10x", "-5S", "123456789S"] {
            assert_eq!(grpc_timeout_ms(bad.as_bytes()), None, "{bad}");
        }
    }

    #[test]
    fn a_multi_byte_last_character_is_not_a_unit_and_no_panic() {
        // Today's &str parser split at len - 1, inside the two bytes of 'µ', and panicked.
        assert_eq!(grpc_timeout_ms("1µ".as_bytes()), None);
        assert_eq!(grpc_timeout_ms(b"1\xb5"), None, "Latin-1 micro sign");
        assert_eq!(envoy_expected_timeout_ms(b"15\xe900"), None);
    }

    #[test]
    fn reads_envoy_expected_timeout() {
        assert_eq!(envoy_expected_timeout_ms(b"1500"), Some(1500));
        assert_eq!(envoy_expected_timeout_ms(b" 1500 "), Some(1500));
        assert_eq!(envoy_expected_timeout_ms(b"0"), None);
        assert_eq!(envoy_expected_timeout_ms(b"soon"), None);
        assert_eq!(envoy_expected_timeout_ms(b"+15"), None);
        assert_eq!(envoy_expected_timeout_ms(b"99999999999999999999"), None);
    }

    #[test]
    fn budget_is_the_tightest_deadline_less_a_margin() {
        assert_eq!(hold_budget_ms(60_000, &[None, None]), 59_900);
        assert_eq!(hold_budget_ms(60_000, &[Some(1000), None]), 900);
        assert_eq!(hold_budget_ms(60_000, &[Some(1000), Some(200)]), 160);
        assert_eq!(hold_budget_ms(500, &[Some(1000)]), 400);
        assert_eq!(hold_budget_ms(60_000, &[Some(50)]), 30);
        assert_eq!(hold_budget_ms(60_000, &[Some(30)]), 15);
        assert_eq!(hold_budget_ms(0, &[]), 0);
        assert_eq!(hold_budget_ms(u64::MAX, &[]), u64::MAX - 100);
    }

    proptest! {
        // Fuzzing: any bytes in a deadline header give an answer, never a panic, and a
        // well-formed value is read exactly.
        #[test]
        fn any_bytes_in_a_deadline_header_never_panic(value in proptest::collection::vec(any::<u8>(), 0..24)) {
            let _ = grpc_timeout_ms(&value);
            let _ = envoy_expected_timeout_ms(&value);
        }

        #[test]
        fn well_formed_grpc_timeouts_read_exactly(n in 0u64..100_000_000, unit in 0usize..6) {
            let (suffix, ms) = [("H", n * 3_600_000), ("M", n * 60_000), ("S", n * 1_000), ("m", n), ("u", n / 1_000), ("n", n / 1_000_000)][unit];
            prop_assert_eq!(grpc_timeout_ms(format!("{n}{suffix}").as_bytes()), Some(ms));
        }

        #[test]
        fn the_budget_never_exceeds_any_deadline(wake in any::<u64>(), a in proptest::option::of(any::<u64>()), b in proptest::option::of(any::<u64>())) {
            let budget = hold_budget_ms(wake, &[a, b]);
            prop_assert!(budget <= wake);
            prop_assert!(a.is_none_or(|a| budget <= a) && b.is_none_or(|b| budget <= b));
        }
    }
}
