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

/// Creates Service `name` (port 80, named `http`) and a managed Deployment `name` with
/// `replicas`, a 30 s wake timeout and `extra` annotations.
pub async fn create_managed(
    ns: &TempNamespace,
    name: &str,
    replicas: i32,
    extra: &[(&str, &str)],
) -> anyhow::Result<()> {
    let mut d = managed_deployment(name, replicas, "30s");
    let a = d.metadata.annotations.get_or_insert_default();
    for (k, v) in extra {
        a.insert((*k).into(), (*v).into());
    }
    ns.api::<k8s_openapi::api::core::v1::Service>()
        .create(
            &kube::api::PostParams::default(),
            &fixtures::service(name, name, 80, "http"),
        )
        .await?;
    ns.api::<Deployment>()
        .create(&kube::api::PostParams::default(), &d)
        .await?;
    Ok(())
}

/// The annotations of Deployment `name`.
pub async fn annotations(
    ns: &TempNamespace,
    name: &str,
) -> anyhow::Result<std::collections::BTreeMap<String, String>> {
    let d = ns.api::<Deployment>().get(name).await?;
    Ok(d.metadata.annotations.unwrap_or_default())
}

/// `spec.replicas` of Deployment `name`.
pub async fn replicas(ns: &TempNamespace, name: &str) -> anyhow::Result<i32> {
    let d = ns.api::<Deployment>().get(name).await?;
    Ok(d.spec.and_then(|s| s.replicas).unwrap_or(0))
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
/// have polled it (five poll periods: a margin for a loaded machine).
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
    tokio::time::sleep(FILTER_POLL * 5).await;
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

/// Controllers and a mesh simulator (with its Envoy and the filter) of a test's own, so the
/// test can stop them without disturbing the shared test bed. Dropping it stops all.
///
/// Its controllers elect a leader with a Lease of their own (`kzscaler-private-<name>`, 2 s),
/// so they never wait for the shared controller. They manage only the namespace named in the
/// [`Setup`], which is labelled [`PRIVATE_LABEL`]; the shared controller (started by
/// `hack/local-up.sh` with `--namespace-selector '!kzscaler.io/e2e-controller'`) then leaves
/// it alone, so only the private controllers scale its Deployments.
#[derive(Debug)]
pub struct PrivateMesh {
    /// The first controller's filter API.
    pub controller_addr: SocketAddr,
    /// Every controller replica.
    pub controllers: Vec<Controller>,
    /// Envoy's HTTP listener.
    pub envoy: String,
    /// The simulator's folder (Envoy files and logs).
    pub dir: std::path::PathBuf,
    /// The Lease the controllers share.
    pub lease: String,
    /// The inbound listener, when the Envoy plays a pod's sidecar ([`Setup::pod_of`]).
    pub inbound: Option<String>,
    args: Vec<String>,
    kubeconfig: std::path::PathBuf,
    meshsim: Child,
    _dir: tempfile_dir::Dir,
}

/// One controller replica of a [`PrivateMesh`].
#[derive(Debug)]
pub struct Controller {
    /// Its filter API.
    pub addr: SocketAddr,
    /// Its identity (Lease holder, Events' reportingInstance).
    pub identity: String,
    child: Option<Child>,
}

/// Namespace label that hands a namespace to a [`PrivateMesh`]'s controllers.
pub const PRIVATE_LABEL: &str = "kzscaler.io/e2e-controller";

/// How a [`PrivateMesh`] is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The namespace its controllers manage (none: they manage nothing).
    pub namespace: Option<String>,
    /// The filter Envoy runs.
    pub filter: Filter,
    /// Controller replicas.
    pub controllers: usize,
    /// Extra controller flags.
    pub controller_args: Vec<String>,
    /// Make the Envoy also the sidecar of a pod of this Deployment (in `namespace`), with an
    /// inbound listener at [`PrivateMesh::inbound`].
    pub pod_of: Option<String>,
}

impl Setup {
    /// One controller, the kzscaler filter.
    pub fn kzscaler() -> anyhow::Result<Self> {
        Ok(Self {
            namespace: None,
            filter: Filter::kzscaler()?,
            controllers: 1,
            controller_args: Vec::new(),
            pod_of: None,
        })
    }
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
    /// Starts a controller managing namespace `ns` and a mesh simulator running the kzscaler
    /// filter, and waits until they are ready.
    pub async fn start(bed: &TestBed, ns: &str) -> anyhow::Result<Self> {
        let setup = Setup {
            namespace: Some(ns.to_owned()),
            ..Setup::kzscaler()?
        };
        Self::start_setup(bed, ns, setup).await
    }

    /// A mesh with another filter (or none), whose controller manages nothing.
    pub async fn start_with(bed: &TestBed, name: &str, filter: Filter) -> anyhow::Result<Self> {
        let setup = Setup {
            filter,
            ..Setup::kzscaler()?
        };
        Self::start_setup(bed, name, setup).await
    }

    /// Starts `setup.controllers` controllers and a mesh simulator whose Envoy reaches the
    /// leader among them; waits until all are ready and one leads.
    pub async fn start_setup(bed: &TestBed, name: &str, setup: Setup) -> anyhow::Result<Self> {
        let dir = bed.state_dir.join("private").join(name);
        std::fs::create_dir_all(&dir)?;
        let lease = format!("kzscaler-private-{name}");
        let mut args = vec![
            "--lease-name".to_owned(),
            lease.clone(),
            "--lease-namespace".to_owned(),
            "kzscaler-system".to_owned(),
            "--lease-duration-seconds".to_owned(),
            "2".to_owned(),
            "--namespace-selector".to_owned(),
            format!("{PRIVATE_LABEL}={name}"),
            "--no-wasmplugins".to_owned(),
        ];
        if let Some(ns) = &setup.namespace {
            let patch = serde_json::json!({"metadata": {"labels": {PRIVATE_LABEL: name}}});
            kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(bed.client.clone())
                .patch(
                    ns,
                    &kube::api::PatchParams::default(),
                    &kube::api::Patch::Merge(patch),
                )
                .await
                .with_context(|| format!("labelling namespace {ns} for the private controllers"))?;
        }
        args.extend(setup.controller_args.iter().cloned());
        let mut controllers = Vec::new();
        for i in 0..setup.controllers.max(1) {
            controllers.push(Controller {
                addr: free_addr()?,
                identity: format!("{name}-{i}"),
                child: None,
            });
        }
        let (listen, admin) = (free_addr()?, free_addr()?);
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
            .args(["--concurrency", "1"]);
        for c in &controllers {
            cmd.args(["--controller", &c.addr.to_string()]);
        }
        let mut inbound = None;
        if let (Some(ns), Some(deployment)) = (&setup.namespace, &setup.pod_of) {
            let addr = free_addr()?;
            cmd.args(["--pod", &format!("{ns}/{deployment}={addr}")]);
            inbound = Some(addr.to_string());
        }
        if let Filter::Module(module, config) = &setup.filter {
            cmd.arg("--wasm")
                .arg(module)
                .args(["--plugin-config", config]);
        }
        let meshsim = cmd
            .env("KUBECONFIG", &bed.kubeconfig)
            .stdin(Stdio::null())
            .stderr(std::fs::File::create(dir.join("meshsim.log"))?)
            .kill_on_drop(true)
            .spawn()?;
        let mut mesh = Self {
            controller_addr: controllers[0].addr,
            controllers,
            envoy: listen.to_string(),
            dir: dir.clone(),
            lease,
            inbound,
            args,
            kubeconfig: bed.kubeconfig.clone(),
            meshsim,
            _dir: tempfile_dir::Dir(dir.clone()),
        };
        for i in 0..mesh.controllers.len() {
            mesh.spawn_controller(i)?;
        }
        let addrs: Vec<SocketAddr> = mesh.controllers.iter().map(|c| c.addr).collect();
        crate::wait::until(
            "the private controllers (one leading) and Envoy to be ready, Envoy routing \
             the filter's calls to the leader",
            Duration::from_secs(30),
            || async {
                let mut leaders = Vec::new();
                for a in &addrs {
                    let a = a.to_string();
                    let get =
                        |path: &'static str| bed.get_from(&a, "x", path, Duration::from_secs(1));
                    if get("/readyz").await?.status != 200 {
                        return Ok(None);
                    }
                    if get("/leaderz").await?.status == 200 {
                        leaders.push(a);
                    }
                }
                let admin = admin.to_string();
                let e = bed
                    .get_from(&admin, "x", "/ready", Duration::from_secs(1))
                    .await?;
                let [leader] = leaders.as_slice() else {
                    return Ok(None);
                };
                if e.status != 200 {
                    return Ok(None);
                }
                // Envoy's active health check (/leaderz) has marked the leader healthy:
                // until then the filter's polls find no healthy upstream.
                let clusters = bed
                    .get_from(&admin, "x", "/clusters", Duration::from_secs(1))
                    .await?;
                let healthy = format!(
                    "{}::{leader}::health_flags::healthy",
                    crate::meshsim::run::CONTROLLER_CLUSTER
                );
                Ok(clusters.body.lines().any(|l| l == healthy).then_some(()))
            },
        )
        .await
        .with_context(|| format!("logs in {}", dir.display()))?;
        Ok(mesh)
    }

    fn spawn_controller(&mut self, i: usize) -> anyhow::Result<()> {
        let c = &self.controllers[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join(format!("controller-{i}.log")))?;
        let child = Command::new(workspace_binary("kzscaler-controller")?)
            .args(["--listen", &c.addr.to_string(), "--identity", &c.identity])
            .args(&self.args)
            .env("KUBECONFIG", &self.kubeconfig)
            .stdin(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.controllers[i].child = Some(child);
        Ok(())
    }

    /// Kills controller `i` with SIGKILL (no release of the Lease; the mesh keeps running).
    pub async fn kill_controller(&mut self, i: usize) -> anyhow::Result<()> {
        if let Some(mut c) = self.controllers[i].child.take() {
            c.kill().await?;
        }
        Ok(())
    }

    /// Starts controller `i` again (same address and identity, like a restarted container).
    pub fn restart_controller(&mut self, i: usize) -> anyhow::Result<()> {
        self.spawn_controller(i)
    }

    /// Kills the first controller (the mesh keeps running).
    pub async fn stop_controller(&mut self) -> anyhow::Result<()> {
        self.kill_controller(0).await
    }

    /// The index of the controller whose `/leaderz` answers 200, if one does.
    pub async fn leader(&self, bed: &TestBed) -> Option<usize> {
        for (i, c) in self.controllers.iter().enumerate() {
            if c.child.is_none() {
                continue;
            }
            let r = bed
                .get_from(&c.addr.to_string(), "x", "/leaderz", Duration::from_secs(1))
                .await;
            if r.is_ok_and(|r| r.status == 200) {
                return Some(i);
            }
        }
        None
    }

    /// The last lines of every log of this mesh.
    pub fn logs(&self, lines: usize) -> String {
        let mut out = String::new();
        let mut names: Vec<String> = (0..self.controllers.len())
            .map(|i| format!("controller-{i}.log"))
            .collect();
        names.push("meshsim.log".into());
        names.push("envoy.log".into());
        for n in names {
            let text = std::fs::read_to_string(self.dir.join(&n)).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {n} (last {lines} lines)\n"));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
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
