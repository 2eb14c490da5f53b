//! istiod itself: a held request survives an istiod restart and warm traffic ignores an
//! istiod that is down; a NACK (an Istio-only extension upstream Envoy lacks) is found by the
//! check local-up runs, naming the resource and the extension. Each test runs an istiod of its
//! own (other ports) and a caller whose sidecar talks to it, so the shared one is untouched.

use std::process::Stdio;
use std::time::Duration;

use kzscaler_e2e::kz::{create_caller_with, create_managed, free_port, replicas};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::{TestBed, testbed_binary};
use serde_json::json;
use tokio::process::{Child, Command};

const WAIT: Duration = Duration::from_secs(60);

struct Istiod {
    child: Option<Child>,
    xds: u16,
    http: u16,
    args: Vec<String>,
    env: Vec<(String, String)>,
    log: std::path::PathBuf,
}

impl Istiod {
    fn new(bed: &TestBed, name: &str, alpn: bool) -> anyhow::Result<Self> {
        let (xds, http, monitoring) = (free_port()?, free_port()?, free_port()?);
        let repo = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        let args = vec![
            "discovery".into(),
            "--kubeconfig".into(),
            bed.kubeconfig.display().to_string(),
            "--meshConfig".into(),
            repo.join("hack/testbed/mesh.yaml").display().to_string(),
            "--domain".into(),
            "cluster.local".into(),
            "--grpcAddr".into(),
            format!("127.0.0.1:{xds}"),
            "--secureGRPCAddr".into(),
            String::new(),
            "--httpsAddr".into(),
            String::new(),
            "--httpAddr".into(),
            format!("127.0.0.1:{http}"),
            "--monitoringAddr".into(),
            format!("127.0.0.1:{monitoring}"),
            "--ctrlz_port".into(),
            "0".into(),
        ];
        let env = [
            ("POD_NAMESPACE", "istio-system"),
            ("CLUSTER_ID", "Kubernetes"),
            ("INJECT_ENABLED", "false"),
            ("ENABLE_CA_SERVER", "false"),
            ("VALIDATION_WEBHOOK_CONFIG_NAME", ""),
            ("INJECTION_WEBHOOK_CONFIG_NAME", ""),
            (
                "PILOT_ENABLE_ALPN_FILTER",
                if alpn { "true" } else { "false" },
            ),
            ("PILOT_ENABLE_METADATA_EXCHANGE", "false"),
            ("PILOT_DEBOUNCE_AFTER", "10ms"),
            ("PILOT_AUTO_SEND_UNHEALTHY_ENDPOINTS", "false"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        Ok(Self {
            child: None,
            xds,
            http,
            args,
            env,
            log: bed
                .state_dir
                .join("logs")
                .join(format!("istiod-{name}.log")),
        })
    }

    async fn start(&mut self, bed: &TestBed) -> anyhow::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(testbed_binary("pilot-discovery")?)
            .args(&self.args)
            .envs(self.env.iter().cloned())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        let http = format!("127.0.0.1:{}", self.http);
        kzscaler_e2e::wait::until("the private istiod to be ready", WAIT, || async {
            let r = bed
                .get_from(&http, "x", "/ready", Duration::from_secs(1))
                .await;
            Ok(r.is_ok_and(|r| r.status == 200).then_some(()))
        })
        .await
    }

    async fn stop(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.child.take() {
            c.kill().await?;
        }
        Ok(())
    }
}

/// A caller pod in `ns` whose sidecar gets its configuration from `istiod`; (proxy, admin).
async fn caller_of(ns: &TempNamespace, istiod: &Istiod) -> anyhow::Result<(String, String)> {
    let config = json!({"discoveryAddress": format!("127.0.0.1:{}", istiod.xds)}).to_string();
    let c = create_caller_with(
        &ns.bed.client,
        &ns.name,
        "caller",
        &[],
        &[("proxy.istio.io/config", &config)],
        &[],
    )
    .await?;
    Ok((c.proxy, c.admin))
}

#[tokio::test]
async fn a_nack_is_reported_naming_the_listener_and_the_extension() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "nack", &[]).await?;
    // With the ALPN filter on, istiod names istio.alpn, which upstream Envoy does not have.
    let mut istiod = Istiod::new(&bed, &ns.name, true)?;
    istiod.start(&bed).await?;
    caller_of(&ns, &istiod).await?;
    let syncz = format!("127.0.0.1:{}", istiod.http);
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../hack/lib/nacks.py");
    let report = ns
        .wait_for(
            "the private istiod to record Envoy's NACK",
            WAIT,
            || async {
                let body = bed
                    .get_from(&syncz, "x", "/debug/syncz", Duration::from_secs(2))
                    .await?
                    .body;
                let mut check = std::process::Command::new("python3")
                    .arg(&script)
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .spawn()?;
                if let Some(stdin) = check.stdin.as_mut() {
                    use std::io::Write as _;
                    stdin.write_all(body.as_bytes())?;
                }
                let out = check.wait_with_output()?;
                let text = String::from_utf8_lossy(&out.stdout).into_owned();
                Ok(
                    (out.status.code() == Some(1) && text.contains(&format!("caller.{}", ns.name)))
                        .then_some(text),
                )
            },
        )
        .await?;
    assert!(
        report.contains("istio.alpn"),
        "names the extension: {report}"
    );
    assert!(
        report.contains("Listener"),
        "names the resource type: {report}"
    );
    istiod.stop().await?;
    ns.cleanup().await
}

#[tokio::test]
async fn a_request_held_across_an_istiod_restart_gets_200_and_warm_traffic_ignores_it()
-> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(
        &bed,
        "istiod-restart",
        &[("kzscaler.io/injection", "enabled")],
    )
    .await?;
    let mut istiod = Istiod::new(&bed, &ns.name, false)?;
    istiod.start(&bed).await?;
    create_managed(&ns, "warm", 1, &[]).await?;
    create_managed(&ns, "web", 0, &[]).await?;
    let (proxy, admin) = caller_of(&ns, &istiod).await?;
    ns.wait_for(
        "the caller's sidecar with the filter, and warm serving",
        WAIT,
        || async {
            if !kzscaler_e2e::kz::wasm_filter_loaded(&bed, &admin)
                .await
                .unwrap_or(false)
            {
                return Ok(None);
            }
            let r = bed
                .get_from(
                    &proxy,
                    &format!("warm.{}", ns.name),
                    "/",
                    Duration::from_secs(2),
                )
                .await;
            Ok(r.is_ok_and(|r| r.status == 200).then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    // istiod down: warm traffic is served from what Envoy has.
    istiod.stop().await?;
    for i in 0..10 {
        let r = bed
            .get_from(
                &proxy,
                &format!("warm.{}", ns.name),
                &format!("/w{i}"),
                Duration::from_secs(5),
            )
            .await?;
        assert_eq!(
            r.status, 200,
            "warm request {i} with istiod down: {}",
            r.body
        );
    }
    // A request to the sleeping one is held while istiod is down (the endpoint cannot reach
    // this Envoy), and istiod comes back 2 s later.
    let held = {
        let (bed, proxy, host) = (bed.clone(), proxy.clone(), format!("web.{}", ns.name));
        tokio::spawn(async move {
            bed.get_from(&proxy, &host, "/held", Duration::from_secs(40))
                .await
        })
    };
    tokio::time::sleep(Duration::from_secs(2)).await;
    istiod.start(&bed).await?;
    let r = held.await??;
    assert_eq!(
        r.status, 200,
        "the held request after istiod's restart: {}",
        r.body
    );
    assert_eq!(replicas(&ns, "web").await?, 1);
    istiod.stop().await?;
    ns.cleanup().await
}
