//! How long a request may be held: min(wake timeout, the caller's own deadline), answered a
//! little before that deadline so the caller sees kzscaler's answer, not its own timeout.

/// The caller's deadline from `x-envoy-expected-rq-timeout-ms` (milliseconds).
pub fn envoy_expected_timeout_ms(value: &str) -> Option<u64> {
    value.trim().parse().ok().filter(|ms| *ms > 0)
}

/// The caller's deadline from `grpc-timeout` (`<digits><unit>`, unit H M S m u n), in ms.
pub fn grpc_timeout_ms(value: &str) -> Option<u64> {
    let value = value.trim();
    let (digits, unit) = value.split_at(value.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let n: u64 = digits.parse().ok()?;
    let ms = match unit {
        "H" => n.checked_mul(3_600_000)?,
        "M" => n.checked_mul(60_000)?,
        "S" => n.checked_mul(1_000)?,
        "m" => n,
        "u" => n / 1_000,
        "n" => n / 1_000_000,
        _ => return None,
    };
    Some(ms)
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

    #[test]
    fn reads_grpc_timeouts() {
        assert_eq!(grpc_timeout_ms("100m"), Some(100));
        assert_eq!(grpc_timeout_ms("2S"), Some(2000));
        assert_eq!(grpc_timeout_ms("1M"), Some(60_000));
        assert_eq!(grpc_timeout_ms("1H"), Some(3_600_000));
        assert_eq!(grpc_timeout_ms("2500u"), Some(2));
        assert_eq!(grpc_timeout_ms("5000000n"), Some(5));
        for bad in ["", "m", "10", "10x", "-5S", "123456789S"] {
            assert_eq!(grpc_timeout_ms(bad), None, "{bad}");
        }
    }

    #[test]
    fn reads_envoy_expected_timeout() {
        assert_eq!(envoy_expected_timeout_ms("1500"), Some(1500));
        assert_eq!(envoy_expected_timeout_ms("0"), None);
        assert_eq!(envoy_expected_timeout_ms("soon"), None);
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
    }
}
