//! Helpers for tests of kzscaler itself: managed Deployments, the controller's snapshot, the
//! audit log, and a private controller + Envoy for tests that stop them.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use kzscaler_core::cluster::outbound_cluster;
use kzscaler_core::wire::{Snapshot, State};
use tokio::process::{Child, Command};

use crate::fixtures;
use crate::namespace::TempNamespace;
use crate::testbed::{TestBed, envoy_binary, filter_module, workspace_binary};

/// The filter's poll period on the test bed (`hack/local-up.sh`'s plugin configuration).
pub const FILTER_POLL: Duration = Duration::from_millis(200);

/// A Deployment annotated `kzscaler.io/scale-to-zero: "true"` with this wake timeout.
pub fn managed_deployment(name: &str, replicas: i32, wake_timeout: &str) -> Deployment {
    let mut d = fixtures::deployment(name, replicas);
    let a = d.metadata.annotations.get_or_insert_default();
    a.insert("kzscaler.io/scale-to-zero".into(), "true".into());
    a.insert("kzscaler.io/wake-timeout".into(), wake_timeout.into());
    d
}

/// The outbound cluster name of a Service port.
pub fn cluster(ns: &str, svc: &str, port: u16) -> String {
    outbound_cluster(svc, ns, "cluster.local", port)
}

/// The controller's snapshot, from `addr`.
pub async fn snapshot(bed: &TestBed, addr: &str) -> anyhow::Result<Snapshot> {
    let r = bed
        .get_from(
            addr,
            addr,
            kzscaler_core::wire::SNAPSHOT_PATH,
            Duration::from_secs(5),
        )
        .await?;
    if r.status != 200 {
        bail!("snapshot from {addr}: {} {}", r.status, r.body);
    }
    Ok(serde_json::from_str(&r.body)?)
}

/// Waits until the controller at `addr` lists `cluster` in `state`, then for the filters to
/// have polled it (three poll periods).
pub async fn wait_filter_sees(
    ns: &TempNamespace,
    addr: &str,
    cluster: &str,
    state: State,
) -> anyhow::Result<()> {
    ns.wait_for(
        &format!("the controller to list {cluster} as {state:?}"),
        Duration::from_secs(30),
        || async {
            let snap = snapshot(&ns.bed, addr).await?;
            Ok(snap
                .destinations
                .iter()
                .any(|d| d.cluster == cluster && d.state == state)
                .then_some(()))
        },
    )
    .await?;
    tokio::time::sleep(FILTER_POLL * 3).await;
    Ok(())
}

/// Scale PATCHes (`deployments/scale`) of one Deployment in the API server's audit log.
pub fn scale_patches(audit_log: &Path, namespace: &str, name: &str) -> anyhow::Result<usize> {
    let text = std::fs::read_to_string(audit_log)
        .with_context(|| format!("reading the audit log {}", audit_log.display()))?;
    Ok(text
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|e| {
            let o = &e["objectRef"];
            e["stage"] == "ResponseComplete"
                && e["verb"] == "patch"
                && o["resource"] == "deployments"
                && o["subresource"] == "scale"
                && o["namespace"] == namespace
                && o["name"] == name
        })
        .count())
}

fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// A controller and a mesh simulator (with its Envoy and the filter) of a test's own, so the
/// test can stop them without disturbing the shared test bed. Dropping it stops both.
#[derive(Debug)]
pub struct PrivateMesh {
    /// The controller's filter API.
    pub controller_addr: SocketAddr,
    /// Envoy's HTTP listener.
    pub envoy: String,
    /// The simulator's folder (Envoy files and logs).
    pub dir: std::path::PathBuf,
    controller: Option<Child>,
    meshsim: Child,
    _dir: tempfile_dir::Dir,
}

mod tempfile_dir {
    /// A folder removed on drop.
    #[derive(Debug)]
    pub struct Dir(pub std::path::PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Which filter a private Envoy runs.
#[derive(Debug, Clone)]
pub enum Filter {
    /// No Wasm filter at all.
    None,
    /// A Wasm module with this plugin configuration.
    Module(std::path::PathBuf, String),
}

impl Filter {
    /// The kzscaler filter as the test bed configures it.
    pub fn kzscaler() -> anyhow::Result<Self> {
        Ok(Self::Module(
            filter_module()?,
            r#"{"poll_period_ms": 200}"#.into(),
        ))
    }
}

impl PrivateMesh {
    /// Starts a controller and a mesh simulator running the kzscaler filter, and waits until
    /// they are ready.
    pub async fn start(bed: &TestBed, name: &str) -> anyhow::Result<Self> {
        Self::start_with(bed, name, Filter::kzscaler()?).await
    }

    /// Like [`PrivateMesh::start`], with another filter (or none).
    pub async fn start_with(bed: &TestBed, name: &str, filter: Filter) -> anyhow::Result<Self> {
        let dir = bed.state_dir.join("private").join(name);
        std::fs::create_dir_all(&dir)?;
        let (ctl, listen, admin) = (free_addr()?, free_addr()?, free_addr()?);
        let log = |n: &str| std::fs::File::create(dir.join(n));
        let controller = Command::new(workspace_binary("kzscaler-controller")?)
            .args(["--listen", &ctl.to_string()])
            .env("KUBECONFIG", &bed.kubeconfig)
            .stdin(Stdio::null())
            .stderr(log("controller.log")?)
            .kill_on_drop(true)
            .spawn()?;
        let mut cmd = Command::new(workspace_binary("kzscaler-meshsim")?);
        cmd.arg("--dir")
            .arg(&dir)
            .arg("--envoy")
            .arg(envoy_binary()?)
            .args([
                "--listen",
                &listen.to_string(),
                "--admin",
                &admin.to_string(),
            ])
            .args(["--controller", &ctl.to_string(), "--concurrency", "1"]);
        if let Filter::Module(module, config) = &filter {
            cmd.arg("--wasm")
                .arg(module)
                .args(["--plugin-config", config]);
        }
        let meshsim = cmd
            .env("KUBECONFIG", &bed.kubeconfig)
            .stdin(Stdio::null())
            .stderr(log("meshsim.log")?)
            .kill_on_drop(true)
            .spawn()?;
        let mesh = Self {
            controller_addr: ctl,
            envoy: listen.to_string(),
            dir: dir.clone(),
            controller: Some(controller),
            meshsim,
            _dir: tempfile_dir::Dir(dir.clone()),
        };
        crate::wait::until(
            "the private controller and Envoy to be ready",
            Duration::from_secs(30),
            || async {
                let c = bed
                    .get_from(&ctl.to_string(), "x", "/readyz", Duration::from_secs(1))
                    .await?;
                let e = bed
                    .get_from(&admin.to_string(), "x", "/ready", Duration::from_secs(1))
                    .await?;
                Ok((c.status == 200 && e.status == 200).then_some(()))
            },
        )
        .await
        .with_context(|| format!("logs in {}", dir.display()))?;
        Ok(mesh)
    }

    /// Kills the controller (the mesh keeps running).
    pub async fn stop_controller(&mut self) -> anyhow::Result<()> {
        if let Some(mut c) = self.controller.take() {
            c.kill().await?;
        }
        Ok(())
    }
}

impl Drop for PrivateMesh {
    fn drop(&mut self) {
        // SIGKILL leaves Envoy behind; the simulator stops it on SIGTERM.
        if let Some(pid) = self.meshsim.id() {
            let _ = std::process::Command::new("kill")
                .arg(pid.to_string())
                .status();
            for _ in 0..100 {
                if self.meshsim.try_wait().ok().flatten().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }
}
