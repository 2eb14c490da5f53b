//! The built filter module in the real Envoy: it loads with a valid plugin configuration and
//! lets requests through, and a configuration with a bad field makes Envoy refuse it, with a
//! log line naming the field.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use kzscaler_e2e::envoy::Standalone;

fn get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: nowhere.example\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    Some((status, out))
}

#[test]
fn filter_loads_and_passes_requests_through() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut envoy = Standalone::start(dir.path(), r#"{"poll_period_ms": 500}"#, 1, None)?;
    let (listen, admin) = (envoy.listen, envoy.admin);
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Some((200, body)) = get(admin, "/ready") {
            break body.contains("LIVE");
        }
        if Instant::now() > deadline || envoy.try_wait()?.is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let reply = get(listen, "/");
    let log = envoy.log_text();
    drop(envoy);
    assert!(ready, "Envoy with the filter did not become ready:\n{log}");
    assert!(
        log.contains("kzscaler filter configured"),
        "the filter's on_configure ran:\n{log}"
    );
    // No route for this host: Envoy's own 404 shows the request went past the filter.
    assert_eq!(reply.map(|r| r.0), Some(404), "{log}");
    Ok(())
}

#[test]
fn envoy_refuses_a_bad_plugin_configuration_naming_the_field() -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let mut envoy = Standalone::start(dir.path(), r#"{"poll_period_ms": 5}"#, 1, None)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = envoy.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = envoy.log_text();
    drop(envoy);
    assert!(
        status.is_some_and(|s| !s.success()),
        "Envoy must refuse the listener:\n{log}"
    );
    assert!(
        log.contains("plugin configuration field poll_period_ms: 5 is not valid"),
        "the log names the field and value:\n{log}"
    );
    Ok(())
}
