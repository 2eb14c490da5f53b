//! Waiting for a condition, with a timeout and an account of what was last seen.

use std::time::{Duration, Instant};

/// How often conditions are checked.
pub const POLL: Duration = Duration::from_millis(100);

/// Polls `check` until it returns `Ok(Some(v))`. Errors from `check` are remembered and
/// retried (the thing may not exist yet). On timeout: an error naming `what`, the time and the
/// last error.
pub async fn until<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> anyhow::Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
{
    let start = Instant::now();
    let mut last = String::from("condition not met");
    loop {
        match check().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if start.elapsed() >= timeout {
            anyhow::bail!("timed out after {timeout:?} waiting for {what} (last: {last})");
        }
        tokio::time::sleep(POLL).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn returns_the_value_once_the_condition_holds() {
        let mut n = 0;
        let v = until("n to reach 3", Duration::from_secs(5), || {
            n += 1;
            let n = n;
            async move { Ok((n >= 3).then_some(n)) }
        })
        .await
        .unwrap();
        assert_eq!(v, 3);
    }

    #[tokio::test]
    async fn times_out_naming_what_and_the_last_error() {
        let err = until::<(), _, _>("the impossible", Duration::from_millis(250), || async {
            anyhow::bail!("still no pod")
        })
        .await
        .unwrap_err()
        .to_string();
        assert!(err.contains("the impossible"), "{err}");
        assert!(err.contains("still no pod"), "{err}");
    }
}
