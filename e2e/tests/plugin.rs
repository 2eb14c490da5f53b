//! `kubectl kzscaler` run by the test bed's real kubectl (as a plugin found on PATH) against
//! the test bed, compared with golden output in `tests/golden/` (namespace, ages and durations
//! masked). `KZSCALER_UPDATE_GOLDEN=1` rewrites the golden files.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::Deployment;
use kube::api::PostParams;
use kzscaler_e2e::kz::create_managed;
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::{TestBed, testbed_binary, workspace_binary};

struct Out {
    ok: bool,
    stdout: String,
    stderr: String,
}

async fn plugin(bed: &TestBed, args: &[&str]) -> anyhow::Result<Out> {
    let plugin_dir = workspace_binary("kubectl-kzscaler")?
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    let path = format!(
        "{}:{}",
        plugin_dir.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = tokio::process::Command::new(testbed_binary("kubectl")?)
        .arg("kzscaler")
        .args(args)
        .env("KUBECONFIG", &bed.kubeconfig)
        .env("PATH", path)
        .output()
        .await?;
    Ok(Out {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Is `w` an age or a duration as the plugin prints them (`5s`, `3m12s`, `66ms`, `1.2s`)?
fn is_time(w: &str) -> bool {
    let w = w.trim_end_matches(['.', ',', ')', ';']);
    let w = w.strip_prefix('(').unwrap_or(w);
    !w.is_empty()
        && w.starts_with(|c: char| c.is_ascii_digit())
        && w.chars()
            .all(|c| c.is_ascii_digit() || matches!(c, '.' | 's' | 'm' | 'h' | 'd' | 'y'))
        && w.ends_with(['s', 'm', 'h', 'd', 'y'])
}

/// Masks the namespace and times, and collapses runs of spaces (alignment is unit-tested).
fn mask(text: &str, ns: &str) -> String {
    text.replace(ns, "<ns>")
        .lines()
        .map(|l| {
            l.split_whitespace()
                .map(|w| {
                    if let Some((k, v)) = w.split_once('=')
                        && is_time(v)
                    {
                        format!("{k}=<t>")
                    } else if is_time(w) {
                        "<t>".to_owned()
                    } else {
                        w.to_owned()
                    }
                })
                .collect::<Vec<_>>()
                .join(" ")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

fn golden(name: &str, actual: &str) -> anyhow::Result<()> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("KZSCALER_UPDATE_GOLDEN").is_some() {
        std::fs::create_dir_all(path.parent().unwrap_or(&path))?;
        std::fs::write(&path, format!("{actual}\n"))?;
        return Ok(());
    }
    let expected = std::fs::read_to_string(&path).map_err(|e| {
        anyhow::anyhow!(
            "{}: {e} (KZSCALER_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    })?;
    assert_eq!(
        actual.trim_end(),
        expected.trim_end(),
        "differs from {} (masked output above; KZSCALER_UPDATE_GOLDEN=1 rewrites it)",
        path.display()
    );
    Ok(())
}

#[tokio::test]
async fn status_explain_and_actions_match_golden_output() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "plugin", &[("kzscaler.io/injection", "enabled")]).await?;
    create_managed(&ns, "api", 1, &[("kzscaler.io/idle-timeout", "7m")]).await?;
    create_managed(
        &ns,
        "batch",
        0,
        &[
            ("kzscaler.io/state", "asleep"),
            ("kzscaler.io/slept-at", "2026-01-02T03:04:05Z"),
            ("kzscaler.io/replicas-before-sleep", "2"),
            (
                "kzscaler.io/last-wake",
                r#"{"replicas":2,"scale_ms":6,"pod_ready_ms":60,"endpoint_ready_ms":75}"#,
            ),
        ],
    )
    .await?;
    // A value only the controller writes, so admission lets it through; kzscaler ignores the
    // value (a warning) and still manages the Deployment.
    create_managed(
        &ns,
        "broken",
        1,
        &[("kzscaler.io/replicas-before-sleep", "lots")],
    )
    .await?;
    let mut plain = kzscaler_e2e::fixtures::deployment("plain", 1);
    plain.metadata.annotations = None;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &plain)
        .await?;
    ns.wait_for(
        "api, broken and plain to be ready",
        Duration::from_secs(30),
        || async {
            let mut ready = 0;
            for n in ["api", "broken", "plain"] {
                let d = ns.api::<Deployment>().get(n).await?;
                ready += i32::from(d.status.and_then(|s| s.ready_replicas).unwrap_or(0) >= 1);
            }
            Ok((ready == 3).then_some(()))
        },
    )
    .await?;

    let n = ns.name.as_str();
    let status = plugin(&bed, &["status", "-n", n]).await?;
    assert!(status.ok, "{}", status.stderr);
    eprintln!("{}", status.stdout);
    golden("status.txt", &mask(&status.stdout, n))?;
    let wide = plugin(&bed, &["status", "-n", n, "-o", "wide"]).await?;
    golden("status-wide.txt", &mask(&wide.stdout, n))?;
    let json = plugin(&bed, &["status", "-n", n, "-o", "json"]).await?;
    let rows: serde_json::Value = serde_json::from_str(&json.stdout)?;
    assert_eq!(rows[0]["name"], "api");
    assert_eq!(rows[0]["idleTimeout"], "7m");
    assert_eq!(rows[1]["lastWake"]["endpointReadyMs"], 75);
    let yaml = plugin(&bed, &["status", "-n", n, "-o", "yaml"]).await?;
    // The controller manages `broken` and ignores only the bad count: so does the plugin
    // (they share the index).
    assert!(
        yaml.stdout.contains("state: awake")
            && yaml
                .stdout
                .contains("- 'annotation kzscaler.io/replicas-before-sleep: \"lots\""),
        "{}",
        yaml.stdout
    );
    assert!(!yaml.stdout.contains("state: invalid"), "{}", yaml.stdout);

    let explain = plugin(&bed, &["explain", "batch", "-n", n]).await?;
    assert!(explain.ok, "{}", explain.stderr);
    golden("explain-batch.txt", &mask(&explain.stdout, n))?;

    // Acting through annotations; the controller does the scaling.
    let woke = plugin(&bed, &["wake", "batch", "-n", n, "--timeout", "30"]).await?;
    assert!(woke.ok, "{}{}", woke.stdout, woke.stderr);
    // `wake` returns once one replica serves; how many of the two are ready
    // by then depends on timing, so the count is checked here and masked.
    let ready = woke
        .stdout
        .split_whitespace()
        .find_map(|w| w.strip_suffix("/2"))
        .and_then(|r| r.parse::<u32>().ok());
    assert!(
        matches!(ready, Some(1 | 2)),
        "expected 1/2 or 2/2 ready: {}",
        woke.stdout
    );
    let woke_masked = mask(&woke.stdout, n).replace(" 2/2 ready", " <ready>/2 ready");
    let woke_masked = woke_masked.replace(" 1/2 ready", " <ready>/2 ready");
    golden("wake.txt", &woke_masked)?;
    let paused = plugin(&bed, &["pause", "api", "-n", n]).await?;
    let refused = plugin(&bed, &["sleep", "api", "-n", n]).await?;
    let resumed = plugin(&bed, &["resume", "api", "-n", n]).await?;
    let slept = plugin(&bed, &["sleep", "api", "-n", n, "--timeout", "30"]).await?;
    assert!(slept.ok, "{}{}", slept.stdout, slept.stderr);
    let actions = format!(
        "{}{}{}{}",
        paused.stdout, refused.stderr, resumed.stdout, slept.stdout
    );
    golden("pause-sleep-resume.txt", &mask(&actions, n))?;

    let missing = plugin(&bed, &["wake", "nope", "-n", n]).await?;
    let unmanaged = plugin(&bed, &["explain", "plain", "-n", n]).await?;
    assert!(!missing.ok && !unmanaged.ok);
    golden(
        "errors.txt",
        &mask(&format!("{}{}", missing.stderr, unmanaged.stderr), n),
    )?;
    ns.cleanup().await
}

#[test]
fn masking_hides_times_and_the_namespace_only() {
    assert_eq!(
        mask(
            "web   awake   1/1   7m   3m12s   <none>   66ms   e2e-x",
            "e2e-x"
        ),
        "web awake 1/1 <t> <t> <none> <t> <ns>"
    );
    assert_eq!(
        mask("scale=6ms,pod=1.2s after 0.4s.", "x"),
        "scale=6ms,pod=1.2s after <t>"
    );
}
