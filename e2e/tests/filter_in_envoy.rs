//! The built filter module in the real Envoy: it loads with a valid plugin configuration and
//! lets requests through, and a configuration with a bad field makes Envoy refuse it, with a
//! log line naming the field.

use std::net::{SocketAddr, TcpListener};
use std::process::Stdio;
use std::time::{Duration, Instant};

use kzscaler_e2e::testbed::{envoy_binary, filter_module};
use serde_json::json;

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Starts Envoy with only the filter and an empty route table (a component test of the module
/// in Envoy: no control plane, a static bootstrap).
fn start_envoy(
    dir: &std::path::Path,
    config: &str,
) -> anyhow::Result<(std::process::Child, SocketAddr, SocketAddr)> {
    let (listen, admin) = (free_addr()?, free_addr()?);
    let socket = |a: SocketAddr| json!({"socket_address": {"address": a.ip().to_string(), "port_value": a.port()}});
    let bootstrap = json!({
        "node": {"id": "filter-test", "cluster": "filter-test"},
        "admin": {"address": socket(admin)},
        "static_resources": {"listeners": [{
            "name": "http",
            "address": socket(listen),
            "filter_chains": [{"filters": [{
                "name": "envoy.filters.network.http_connection_manager",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                    "stat_prefix": "http",
                    "route_config": {"name": "none", "virtual_hosts": []},
                    "http_filters": [
                        {"name": "kzscaler", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                            "config": {
                                "name": "kzscaler", "root_id": "kzscaler",
                                "vm_config": {"vm_id": "kzscaler", "runtime": "envoy.wasm.runtime.v8",
                                    "code": {"local": {"filename": filter_module()?}}},
                                // As Istio passes a WasmPlugin's pluginConfig.
                                "configuration": {"@type": "type.googleapis.com/google.protobuf.StringValue", "value": config},
                                "failure_policy": "FAIL_OPEN"
                            }}},
                        {"name": "envoy.filters.http.router", "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"}}
                    ]
                }
            }]}]
        }]}
    });
    let path = dir.join("bootstrap.json");
    std::fs::write(&path, serde_json::to_vec(&bootstrap)?)?;
    let log = std::fs::File::create(dir.join("envoy.log"))?;
    let child = std::process::Command::new(envoy_binary()?)
        .arg("-c")
        .arg(&path)
        .args([
            "--concurrency",
            "1",
            "--disable-hot-restart",
            "--log-level",
            "info",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()?;
    Ok((child, listen, admin))
}

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
    let (mut child, listen, admin) = start_envoy(dir.path(), r#"{"poll_period_ms": 500}"#)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let ready = loop {
        if let Some((200, body)) = get(admin, "/ready") {
            break body.contains("LIVE");
        }
        if Instant::now() > deadline || child.try_wait()?.is_some() {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let reply = get(listen, "/");
    let _ = child.kill();
    let _ = child.wait();
    let log = std::fs::read_to_string(dir.path().join("envoy.log"))?;
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
    let (mut child, _, _) = start_envoy(dir.path(), r#"{"poll_period_ms": 5}"#)?;
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(st) = child.try_wait()? {
            break Some(st);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = std::fs::read_to_string(dir.path().join("envoy.log"))?;
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
