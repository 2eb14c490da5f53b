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
use crate::testbed::{TestBed, filter_module, workspace_binary};

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

/// Makes the pods of Deployment `name` schedulable again, or not (a node selector no node
/// matches): a wake then scales it up, but no pod starts until the test lets it.
pub async fn set_schedulable(
    deployments: &kube::Api<Deployment>,
    name: &str,
    schedulable: bool,
) -> anyhow::Result<()> {
    let selector = if schedulable {
        serde_json::Value::Null
    } else {
        serde_json::json!({"kzscaler-e2e/nowhere": "true"})
    };
    deployments
        .patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(
                serde_json::json!({"spec": {"template": {"spec": {"nodeSelector": selector}}}}),
            ),
        )
        .await
        .with_context(|| format!("setting {name} schedulable: {schedulable}"))?;
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

/// A free port on 127.0.0.1.
pub fn free_addr() -> anyhow::Result<SocketAddr> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?)
}

/// Controllers and a caller with its own Istio sidecar, of a test's own, so the test can stop
/// them without disturbing the shared test bed. Dropping it stops the controllers.
///
/// Everything lives in one namespace (the test's): the controllers' pods (the kubelet forwards
/// their port 8080 to each controller process on 127.0.0.1) behind a Service
/// `kzscaler-controller` that selects the leader's pod, and a `caller` pod whose sidecar
/// (pilot-agent and Envoy, configured by istiod) is [`PrivateMesh::envoy`]. The controllers
/// write the namespace's WasmPlugin, whose plugin configuration points the filter at their
/// Service, so the filter's calls use the cluster istiod generates for it.
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
    /// The caller's Envoy (its HTTP proxy listener, through a hostPort on 127.0.0.1).
    pub envoy: String,
    /// The caller's Envoy admin interface on 127.0.0.1.
    pub admin: String,
    /// The namespace everything lives in.
    pub namespace: String,
    /// Folder of the controllers' logs.
    pub dir: std::path::PathBuf,
    /// The Lease the controllers share.
    pub lease: String,
    args: Vec<String>,
    kubeconfig: std::path::PathBuf,
    state_dir: std::path::PathBuf,
    _dir: tempfile_dir::Dir,
}

/// One controller replica of a [`PrivateMesh`].
#[derive(Debug)]
pub struct Controller {
    /// Its filter API.
    pub addr: SocketAddr,
    /// Its identity (Lease holder, Events' reportingInstance) and its pod's name.
    pub identity: String,
    child: Option<Child>,
}

/// Namespace label that hands a namespace to a [`PrivateMesh`]'s controllers.
pub const PRIVATE_LABEL: &str = "kzscaler.io/e2e-controller";

/// How a [`PrivateMesh`] is set up.
#[derive(Debug, Clone)]
pub struct Setup {
    /// The namespace its controllers manage and its caller lives in (none: a namespace of
    /// its own, `<name>`, that it creates and the controllers manage).
    pub namespace: Option<String>,
    /// The filter the caller's sidecar runs.
    pub filter: Filter,
    /// Controller replicas.
    pub controllers: usize,
    /// Extra controller flags.
    pub controller_args: Vec<String>,
    /// Where the controllers' WasmPlugin has sidecars fetch the module, with its sha256 (an
    /// `oci://` reference and its manifest digest); none: the first controller's
    /// `/v1/module`, serving the workspace's build.
    pub module: Option<(String, String)>,
}

impl Setup {
    /// One controller, the kzscaler filter.
    pub fn kzscaler() -> anyhow::Result<Self> {
        Ok(Self {
            namespace: None,
            filter: Filter::kzscaler()?,
            controllers: 1,
            controller_args: Vec::new(),
            module: None,
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

/// Which filter a private caller's sidecar runs.
#[derive(Debug, Clone)]
pub enum Filter {
    /// No Wasm filter at all (the namespace is not opted in).
    None,
    /// A Wasm module with this plugin configuration, from a WasmPlugin of the test's own
    /// (`file://` URL) instead of the controllers'.
    Module(std::path::PathBuf, String),
    /// The kzscaler filter from the controllers' own WasmPlugin, with this plugin
    /// configuration (its controller cluster is filled in).
    Kzscaler(String),
}

impl Filter {
    /// The kzscaler filter as the test bed configures it.
    pub fn kzscaler() -> anyhow::Result<Self> {
        filter_module()?;
        Ok(Self::Kzscaler(r#"{"poll_period_ms": 200}"#.into()))
    }
}

/// A container that Istio's injector would add: pilot-agent and Envoy, run by the test bed's
/// kubelet. `proxy_port` (Envoy's HTTP proxy listener, 15080 inside the pod) and `admin`
/// (Envoy's admin port, the same number inside and out) are hostPorts on 127.0.0.1.
pub fn sidecar_container(proxy_port: Option<u16>, admin: u16) -> serde_json::Value {
    let mut ports = vec![
        serde_json::json!({"name": "admin", "containerPort": admin, "hostPort": admin, "hostIP": "127.0.0.1"}),
    ];
    let mut env = Vec::new();
    if let Some(p) = proxy_port {
        ports.push(serde_json::json!({"name": "http-proxy", "containerPort": 15080, "hostPort": p, "hostIP": "127.0.0.1"}));
        env.push(serde_json::json!({"name": "ISTIO_META_HTTP_PROXY_PORT", "value": "15080"}));
    }
    serde_json::json!({"name": "istio-proxy", "image": "docker.io/istio/proxyv2:testbed", "env": env, "ports": ports})
}

/// A free port on 127.0.0.1 (for a hostPort or a process of the test's own).
pub fn free_port() -> anyhow::Result<u16> {
    Ok(free_addr()?.port())
}

/// Creates the caller pod `name` in `ns` with a sidecar whose HTTP proxy listener and admin
/// port are on 127.0.0.1 at the ports returned (proxy, admin).
pub async fn create_caller(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> anyhow::Result<(String, String)> {
    let c = create_caller_with(client, ns, name, labels, &[], &[]).await?;
    Ok((c.proxy, c.admin))
}

/// Where a caller's sidecar is reached from this machine.
#[derive(Debug, Clone)]
pub struct Caller {
    /// Its HTTP proxy listener (routes by `Host`; Envoy strips the port, so only port-80
    /// Services are reached by their port-less names).
    pub proxy: String,
    /// Its admin interface.
    pub admin: String,
    /// For each port asked for, 127.0.0.1:<port> inside the pod, where Istio's outbound
    /// listener for that Service port is (what an application in the pod connects to).
    pub outbound: Vec<(u16, String)>,
}

/// [`create_caller`] with `annotations` (e.g. `proxy.istio.io/config`), also bridging the
/// sidecar's outbound listeners for `outbound` ports.
pub async fn create_caller_with(
    client: &kube::Client,
    ns: &str,
    name: &str,
    labels: &[(&str, &str)],
    annotations: &[(&str, &str)],
    outbound: &[u16],
) -> anyhow::Result<Caller> {
    let (proxy, admin) = (free_port()?, free_port()?);
    let mut all = serde_json::Map::new();
    all.insert("app".into(), serde_json::json!(name));
    for (k, v) in labels {
        all.insert((*k).into(), serde_json::json!(v));
    }
    let notes: serde_json::Map<String, serde_json::Value> = annotations
        .iter()
        .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
        .collect();
    let mut container = sidecar_container(Some(proxy), admin);
    let mut bridged = Vec::new();
    for port in outbound {
        let host = free_port()?;
        if let Some(ports) = container["ports"].as_array_mut() {
            ports.push(serde_json::json!({"name": format!("out-{port}"), "containerPort": port, "hostPort": host, "hostIP": "127.0.0.1"}));
        }
        bridged.push((*port, format!("127.0.0.1:{host}")));
    }
    let pod = fixtures::kwok_pod(
        serde_json::json!({"name": name, "labels": all, "annotations": notes}),
        serde_json::json!([container]),
    )?;
    kube::Api::<k8s_openapi::api::core::v1::Pod>::namespaced(client.clone(), ns)
        .create(&kube::api::PostParams::default(), &pod)
        .await
        .with_context(|| format!("creating the caller pod {ns}/{name}"))?;
    Ok(Caller {
        proxy: format!("127.0.0.1:{proxy}"),
        admin: format!("127.0.0.1:{admin}"),
        outbound: bridged,
    })
}

/// Whether this Envoy's ECDS holds a Wasm filter (pilot-agent puts an RBAC filter in its place
/// when the module cannot be fetched, so the name alone proves nothing).
pub async fn wasm_filter_loaded(bed: &TestBed, admin: &str) -> anyhow::Result<bool> {
    let r = bed
        .get_from(
            admin,
            "x",
            "/config_dump?resource=ecds_filters",
            Duration::from_secs(2),
        )
        .await?;
    Ok(r.status == 200
        && r.body
            .contains("envoy.extensions.filters.http.wasm.v3.Wasm"))
}

/// Hosts of `cluster` that this Envoy's `/clusters` lists as healthy.
pub async fn healthy_hosts(
    bed: &TestBed,
    admin: &str,
    cluster: &str,
) -> anyhow::Result<Vec<String>> {
    let r = bed
        .get_from(admin, "x", "/clusters", Duration::from_secs(2))
        .await?;
    let prefix = format!("{cluster}::");
    Ok(r.body
        .lines()
        .filter_map(|l| l.strip_prefix(&prefix))
        .filter_map(|l| l.strip_suffix("::health_flags::healthy"))
        .map(str::to_owned)
        .collect())
}

impl PrivateMesh {
    /// Starts a controller managing namespace `ns` and a caller there whose sidecar runs the
    /// kzscaler filter, and waits until they are ready.
    pub async fn start(bed: &TestBed, ns: &str) -> anyhow::Result<Self> {
        let setup = Setup {
            namespace: Some(ns.to_owned()),
            ..Setup::kzscaler()?
        };
        Self::start_setup(bed, ns, setup).await
    }

    /// A mesh with another filter (or none) in a namespace `name` of its own.
    pub async fn start_with(bed: &TestBed, name: &str, filter: Filter) -> anyhow::Result<Self> {
        let setup = Setup {
            filter,
            ..Setup::kzscaler()?
        };
        Self::start_setup(bed, name, setup).await
    }

    /// Starts `setup.controllers` controllers and a caller whose sidecar reaches the leader
    /// among them; waits until all are ready, one leads, and the caller's Envoy has the filter
    /// and a healthy route to the leader.
    pub async fn start_setup(bed: &TestBed, name: &str, setup: Setup) -> anyhow::Result<Self> {
        use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
        let dir = bed.state_dir.join("private").join(name);
        std::fs::create_dir_all(&dir)?;
        let ns = match &setup.namespace {
            Some(ns) => ns.clone(),
            None => {
                let created: Namespace = serde_json::from_value(serde_json::json!({
                    "metadata": {"name": name, "labels": {crate::namespace::E2E_LABEL: "true"}}
                }))?;
                kube::Api::<Namespace>::all(bed.client.clone())
                    .create(&kube::api::PostParams::default(), &created)
                    .await
                    .with_context(|| format!("creating namespace {name}"))?;
                name.to_owned()
            }
        };
        let mut labels = serde_json::json!({PRIVATE_LABEL: name});
        if !matches!(setup.filter, Filter::None) {
            labels[kzscaler_core::names::INJECTION_LABEL] =
                serde_json::json!(kzscaler_core::names::INJECTION_ENABLED);
        }
        kube::Api::<Namespace>::all(bed.client.clone())
            .patch(
                &ns,
                &kube::api::PatchParams::default(),
                &kube::api::Patch::Merge(serde_json::json!({"metadata": {"labels": labels}})),
            )
            .await
            .with_context(|| format!("labelling namespace {ns} for the private controllers"))?;
        let lease = format!("kzscaler-private-{name}");
        let mut controllers = Vec::new();
        for i in 0..setup.controllers.max(1) {
            controllers.push(Controller {
                addr: free_addr()?,
                identity: format!("kzscaler-controller-{i}"),
                child: None,
            });
        }
        let cluster = format!("outbound|8080||kzscaler-controller.{ns}.svc.cluster.local");
        let mut args = vec![
            "--lease-name".to_owned(),
            lease.clone(),
            "--lease-namespace".to_owned(),
            "kzscaler-system".to_owned(),
            "--lease-duration-seconds".to_owned(),
            "2".to_owned(),
            "--namespace-selector".to_owned(),
            format!("{PRIVATE_LABEL}={name}"),
            "--label-pod".to_owned(),
            "--wasmplugin-resync-seconds".to_owned(),
            "2".to_owned(),
        ];
        match &setup.module {
            Some((url, sha256)) => args.extend([
                "--module-url".to_owned(),
                url.clone(),
                "--module-sha256".to_owned(),
                sha256.clone(),
            ]),
            None => args.extend([
                "--module-file".to_owned(),
                filter_module()?.display().to_string(),
                "--module-url".to_owned(),
                format!("http://{}/v1/module", controllers[0].addr),
            ]),
        }
        match &setup.filter {
            Filter::Kzscaler(config) => {
                let mut config: serde_json::Value = serde_json::from_str(config)
                    .with_context(|| format!("plugin configuration {config:?}"))?;
                config["controller_cluster"] = serde_json::json!(cluster);
                config["controller_authority"] =
                    serde_json::json!(format!("kzscaler-controller.{ns}:8080"));
                args.extend(["--plugin-config".to_owned(), config.to_string()]);
            }
            Filter::None | Filter::Module(..) => args.push("--no-wasmplugins".to_owned()),
        }
        args.extend(setup.controller_args.iter().cloned());
        // The controllers' pods and Service.
        let service: Service = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "kzscaler-controller"},
            "spec": {
                "selector": {"app.kubernetes.io/name": "kzscaler-controller", kzscaler_core::names::LEADER_LABEL: "true"},
                "ports": [{"name": "http", "port": 8080, "targetPort": "http"}]
            }
        }))?;
        let pods = kube::Api::<Pod>::namespaced(bed.client.clone(), &ns);
        kube::Api::<Service>::namespaced(bed.client.clone(), &ns)
            .create(&kube::api::PostParams::default(), &service)
            .await
            .context("creating the private controllers' Service")?;
        for c in &controllers {
            let pod = fixtures::kwok_pod(
                serde_json::json!({"name": c.identity, "labels": {"app.kubernetes.io/name": "kzscaler-controller", kzscaler_core::names::INJECT_LABEL: "false"}}),
                serde_json::json!([{
                    "name": "controller", "image": crate::kubelet::pods::FORWARD_IMAGE,
                    "args": [format!("8080={}", c.addr)],
                    "ports": [{"name": "http", "containerPort": 8080}],
                    "readinessProbe": {"httpGet": {"path": "/readyz", "port": "http"}, "periodSeconds": 1}
                }]),
            )?;
            pods.create(&kube::api::PostParams::default(), &pod)
                .await
                .with_context(|| format!("creating the controller pod {}", c.identity))?;
        }
        if let Filter::Module(module, config) = &setup.filter {
            create_wasmplugin(bed, &ns, module, config).await?;
        }
        let (envoy, admin) = create_caller(&bed.client, &ns, "caller", &[]).await?;
        let mut mesh = Self {
            controller_addr: controllers[0].addr,
            controllers,
            envoy,
            admin,
            namespace: ns.clone(),
            dir: dir.clone(),
            lease,
            args,
            kubeconfig: bed.kubeconfig.clone(),
            state_dir: bed.state_dir.clone(),
            _dir: tempfile_dir::Dir(dir.clone()),
        };
        for i in 0..mesh.controllers.len() {
            mesh.spawn_controller(i)?;
        }
        let addrs: Vec<SocketAddr> = mesh.controllers.iter().map(|c| c.addr).collect();
        let (admin, filter) = (mesh.admin.clone(), setup.filter.clone());
        crate::wait::until(
            "the private controllers (one leading) and the caller's sidecar to be ready, with \
             its filter loaded and a healthy route to the leader",
            Duration::from_secs(60),
            || async {
                let mut leaders = 0;
                for a in &addrs {
                    let a = a.to_string();
                    let get =
                        |path: &'static str| bed.get_from(&a, "x", path, Duration::from_secs(1));
                    if get("/readyz").await?.status != 200 {
                        return Ok(None);
                    }
                    if get("/leaderz").await?.status == 200 {
                        leaders += 1;
                    }
                }
                if leaders != 1 {
                    return Ok(None);
                }
                let Ok(ready) = bed
                    .get_from(&admin, "x", "/ready", Duration::from_secs(1))
                    .await
                else {
                    return Ok(None);
                };
                if ready.status != 200 {
                    return Ok(None);
                }
                if matches!(filter, Filter::None) {
                    return Ok(Some(()));
                }
                if !wasm_filter_loaded(bed, &admin).await? {
                    return Ok(None);
                }
                if matches!(filter, Filter::Module(..)) {
                    return Ok(Some(()));
                }
                Ok((healthy_hosts(bed, &admin, &cluster).await?.len() == 1).then_some(()))
            },
        )
        .await
        .with_context(|| format!("logs:\n{}", mesh.logs(15)))?;
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
            .env("POD_NAME", &c.identity)
            .env("POD_NAMESPACE", &self.namespace)
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

    /// Pauses controller `i` (SIGSTOP), as a node under pressure or a debugger would: it keeps
    /// its sockets and its belief that it leads.
    pub fn pause_controller(&self, i: usize) -> anyhow::Result<()> {
        self.signal_controller(i, nix::sys::signal::Signal::SIGSTOP)
    }

    /// Resumes controller `i` (SIGCONT).
    pub fn resume_controller(&self, i: usize) -> anyhow::Result<()> {
        self.signal_controller(i, nix::sys::signal::Signal::SIGCONT)
    }

    fn signal_controller(&self, i: usize, sig: nix::sys::signal::Signal) -> anyhow::Result<()> {
        let pid = self.controllers[i]
            .child
            .as_ref()
            .and_then(Child::id)
            .ok_or_else(|| anyhow::anyhow!("controller {i} is not running"))?;
        let pid = i32::try_from(pid)?;
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), sig)
            .with_context(|| format!("sending {sig} to controller {i} (pid {pid})"))
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

    /// The last lines of every log of this mesh: controllers, and the caller's pilot-agent
    /// (with its Envoy's).
    pub fn logs(&self, lines: usize) -> String {
        let mut files: Vec<std::path::PathBuf> = (0..self.controllers.len())
            .map(|i| self.dir.join(format!("controller-{i}.log")))
            .collect();
        files.push(
            self.state_dir
                .join("kubelet")
                .join(&self.namespace)
                .join("caller")
                .join("pilot-agent.log"),
        );
        let mut out = String::new();
        for f in files {
            let text = std::fs::read_to_string(&f).unwrap_or_default();
            let all: Vec<&str> = text.lines().collect();
            out.push_str(&format!("--- {} (last {lines} lines)\n", f.display()));
            for l in &all[all.len().saturating_sub(lines)..] {
                out.push_str(l);
                out.push('\n');
            }
        }
        out
    }
}

/// A WasmPlugin `kzscaler-test` in `ns` loading `module` (a `file://` URL, which pilot-agent
/// passes to Envoy as is) into the pods the webhook labels.
pub async fn create_wasmplugin(
    bed: &TestBed,
    ns: &str,
    module: &Path,
    config: &str,
) -> anyhow::Result<()> {
    let config: serde_json::Value =
        serde_json::from_str(config).with_context(|| format!("plugin configuration {config:?}"))?;
    let wp = serde_json::json!({
        "apiVersion": "extensions.istio.io/v1alpha1",
        "kind": "WasmPlugin",
        "metadata": {"name": "kzscaler-test", "namespace": ns},
        "spec": {
            "selector": {"matchLabels": {kzscaler_core::names::FILTER_LABEL: "true"}},
            "url": format!("file://{}", module.display()),
            "failStrategy": "FAIL_OPEN",
            "pluginConfig": config,
        }
    });
    let api: kube::Api<kube::api::DynamicObject> = kube::Api::namespaced_with(
        bed.client.clone(),
        ns,
        &kzscaler_controller::wasmplugin::api_resource(),
    );
    api.create(
        &kube::api::PostParams::default(),
        &serde_json::from_value(wp)?,
    )
    .await
    .with_context(|| format!("creating WasmPlugin {ns}/kzscaler-test"))?;
    Ok(())
}

/// Gives a Deployment's pods their own sidecar with an inbound side: the app moves to
/// `app_port`, the sidecar's ingress listener (see [`create_ingress_sidecar`]) takes `port`,
/// and `host_port` on 127.0.0.1 reaches that listener from outside the mesh.
pub fn with_inbound_sidecar(
    d: &mut Deployment,
    port: u16,
    app_port: u16,
    host_port: u16,
    admin: u16,
) -> anyhow::Result<()> {
    let pod = d
        .spec
        .as_mut()
        .and_then(|s| s.template.spec.as_mut())
        .context("the Deployment has no pod template")?;
    for c in &mut pod.containers {
        for p in c.ports.iter_mut().flatten() {
            p.container_port = i32::from(app_port);
        }
    }
    let mut sidecar = sidecar_container(None, admin);
    if let Some(ports) = sidecar["ports"].as_array_mut() {
        ports.push(serde_json::json!({"name": "http-inbound", "containerPort": port, "hostPort": host_port, "hostIP": "127.0.0.1"}));
    }
    pod.containers.push(serde_json::from_value(sidecar)?);
    Ok(())
}

/// Creates an Istio `networking.istio.io/v1` object (`Sidecar`, `DestinationRule`, ...) in the
/// test's namespace.
pub async fn create_istio(
    ns: &TempNamespace,
    kind: &str,
    name: &str,
    spec: serde_json::Value,
) -> anyhow::Result<()> {
    let ar = kube::api::ApiResource::from_gvk(&kube::api::GroupVersionKind::gvk(
        "networking.istio.io",
        "v1",
        kind,
    ));
    let object = serde_json::json!({
        "apiVersion": "networking.istio.io/v1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns.name},
        "spec": spec,
    });
    kube::Api::<kube::api::DynamicObject>::namespaced_with(ns.bed.client.clone(), &ns.name, &ar)
        .create(
            &kube::api::PostParams::default(),
            &serde_json::from_value(object)?,
        )
        .await
        .with_context(|| format!("creating {kind} {}/{name}", ns.name))?;
    Ok(())
}

/// A `Sidecar` resource for the pods labelled `app: <app>`: an ingress listener on `port`
/// (all addresses) in front of the app on 127.0.0.1:`app_port`, as Istio sets up a pod's
/// inbound side without traffic capture.
pub async fn create_ingress_sidecar(
    ns: &TempNamespace,
    app: &str,
    port: u16,
    app_port: u16,
) -> anyhow::Result<()> {
    let spec = serde_json::json!({
        "workloadSelector": {"labels": {"app": app}},
        "ingress": [{
            "port": {"number": port, "protocol": "HTTP", "name": "http"},
            "bind": "0.0.0.0",
            "captureMode": "NONE",
            "defaultEndpoint": format!("127.0.0.1:{app_port}"),
        }],
    });
    create_istio(ns, "Sidecar", app, spec).await
}

/// A `Sidecar` resource that scopes the sidecars of pods labelled `app: <app>` to their own
/// namespace and kzscaler's. Without traffic capture every Service port is an outbound
/// listener on 127.0.0.1:<port>, so Services of other namespaces on the same port would
/// take it.
pub async fn create_egress_sidecar(ns: &TempNamespace, app: &str) -> anyhow::Result<()> {
    let spec = serde_json::json!({
        "workloadSelector": {"labels": {"app": app}},
        "egress": [{"hosts": ["./*", "kzscaler-system/*"]}],
    });
    create_istio(ns, "Sidecar", &format!("{app}-egress"), spec).await
}

/// A MutatingWebhookConfiguration `name` sending Pod CREATEs in `namespace` only to a webhook
/// of the test's own at `https://127.0.0.1:<port>/mutate`, whose certificate `ca` signed
/// (failurePolicy Ignore, like kzscaler's).
pub fn private_pod_webhook(
    name: &str,
    port: u16,
    ca: &[u8],
    namespace: &str,
) -> anyhow::Result<k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration> {
    let mut mwc: k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration =
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "webhooks": [{
                "name": "pods.kzscaler.io",
                "clientConfig": {"url": format!("https://127.0.0.1:{port}/mutate")},
                "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["pods"]}],
                "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": namespace}},
                "failurePolicy": "Ignore", "sideEffects": "None", "timeoutSeconds": 5, "admissionReviewVersions": ["v1"]
            }]
        }))?;
    for w in mwc.webhooks.iter_mut().flatten() {
        w.client_config.ca_bundle = Some(k8s_openapi::ByteString(ca.to_vec()));
    }
    Ok(mwc)
}

/// Creates the pod `name` ([`fixtures::bare_pod`]) in `ns` and says whether the admission
/// webhooks labelled it for the filter ([`names::FILTER_LABEL`](kzscaler_core::names::FILTER_LABEL)).
pub async fn create_labelled_for_filter(ns: &TempNamespace, name: &str) -> anyhow::Result<bool> {
    let pod = ns
        .api::<k8s_openapi::api::core::v1::Pod>()
        .create(
            &kube::api::PostParams::default(),
            &fixtures::bare_pod(name)?,
        )
        .await
        .with_context(|| format!("creating pod {}/{name}", ns.name))?;
    Ok(pod
        .metadata
        .labels
        .as_ref()
        .is_some_and(|l| l.contains_key(kzscaler_core::names::FILTER_LABEL)))
}

/// Whether the admission webhooks label a new pod in `ns` for the filter now: a pod `probe`
/// is created, looked at, and deleted (waiting until it is gone, so the next probe can be).
pub async fn probe_labelled_for_filter(ns: &TempNamespace) -> anyhow::Result<bool> {
    let labelled = create_labelled_for_filter(ns, "probe").await?;
    let pods = ns.api::<k8s_openapi::api::core::v1::Pod>();
    pods.delete("probe", &kube::api::DeleteParams::default().grace_period(0))
        .await?;
    ns.wait_for("the probe pod to go", Duration::from_secs(60), || async {
        Ok(pods.get_opt("probe").await?.is_none().then_some(()))
    })
    .await?;
    Ok(labelled)
}
