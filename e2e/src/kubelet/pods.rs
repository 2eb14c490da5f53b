//! The kubelet's loop: for every running pod on the fake nodes, a sandbox (its own network
//! namespace) with its containers running in it; the pod is marked Ready once they serve.
//!
//! What runs for a container:
//! - named `istio-proxy`: pilot-agent and Envoy ([`super::sidecar`]);
//! - image `kzscaler.io/testbed/forward`, args `PORT=HOST:PORT`: the pod's PORT forwards to a
//!   process on this machine's 127.0.0.1 (how the test bed's controllers get pod addresses);
//! - any other image: the test backend ([`super::backend`]) on every container port,
//!   gRPC when the port's name starts with `grpc`, on all of the pod's addresses.
//!
//! A `hostPort` (with `hostIP` 127.0.0.1) makes 127.0.0.1:hostPort on this machine reach
//! 127.0.0.1:containerPort inside the pod, as a kubelet's port mapping would.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::{Container, HTTPGetAction, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Patch, PatchParams};
use kube::runtime::{reflector, watcher};
use kube::{Api, Client, ResourceExt as _};
use serde_json::json;
use tokio::sync::Notify;

use kzscaler_controller::watch::spawn_reflector_with;

use super::backend::{self, Backend};
use super::netns::{self, Network};
use super::sidecar::{self, Istio};
use crate::kz::free_port;

/// The image that forwards pod ports to processes on this machine.
pub const FORWARD_IMAGE: &str = "kzscaler.io/testbed/forward";
/// How long a deleted pod's containers keep serving (a short termination grace period).
const GRACE: Duration = Duration::from_secs(1);
/// How long a deleted pod's namespace keeps its address, so that late connections to it are
/// refused at once rather than left to time out.
const LINGER: Duration = Duration::from_secs(30);

/// How the kubelet is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// The pods' network.
    pub network: Network,
    /// Per-pod folders (sidecar files and logs).
    pub dir: PathBuf,
    /// How sidecars are started; without it, `istio-proxy` containers do not run.
    pub istio: Option<Istio>,
}

/// A task stopped on drop.
#[derive(Debug)]
struct Task(tokio::task::JoinHandle<()>);
impl Drop for Task {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// What runs for one pod.
#[derive(Debug)]
struct Sandbox {
    uid: String,
    ip: Ipv4Addr,
    backends: Vec<Backend>,
    tasks: Vec<Task>,
    sidecar: Option<sidecar::Sidecar>,
    /// Readiness checks (HTTP GET, 200 passes): a sidecar's pilot-agent `/healthz/ready`, a
    /// forwarded container's `readinessProbe`. None: ready once started.
    probes: Vec<Probe>,
}

/// An HTTP readiness check on this machine.
#[derive(Debug, Clone)]
struct Probe {
    addr: SocketAddr,
    path: String,
}

/// Runs until SIGTERM/SIGINT; then stops every container and deletes the pods' namespaces.
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
    // What an earlier kubelet left: its sidecars and namespaces. Pods start afresh.
    sidecar::stop_leftovers(&opts.dir);
    opts.network.teardown();
    opts.network.setup()?;
    let pods: Api<Pod> = Api::all(client.clone());
    let (store, writer) = reflector::store();
    let changed = Arc::new(Notify::new());
    spawn_reflector_with(
        writer,
        pods,
        watcher::Config::default().fields("spec.nodeName!="),
        changed.clone(),
        "pods",
    );
    tokio::time::timeout(Duration::from_secs(30), store.wait_until_ready())
        .await
        .context("the first list of pods took over 30s: is the API server up?")?
        .context("the pod watch stopped before its first list")?;
    let mut sandboxes: BTreeMap<String, Sandbox> = BTreeMap::new();
    let mut lingering: BTreeMap<Ipv4Addr, tokio::time::Instant> = BTreeMap::new();
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let mut tick = tokio::time::interval(Duration::from_millis(250));
    tracing::info!(node_netns = %opts.network.node(), "kubelet running");
    loop {
        tokio::select! {
            _ = changed.notified() => {}
            _ = tick.tick() => {}
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        reconcile(&client, &opts, &store, &mut sandboxes, &mut lingering).await;
    }
    tracing::info!("stopping every pod's containers");
    sandboxes.clear();
    opts.network.teardown();
    Ok(())
}

fn wanted(pod: &Pod) -> Option<(String, String, Ipv4Addr)> {
    let status = pod.status.as_ref()?;
    let spec = pod.spec.as_ref()?;
    if pod.metadata.deletion_timestamp.is_some()
        || status.phase.as_deref() != Some("Running")
        || spec.host_network == Some(true)
    {
        return None;
    }
    let ip: Ipv4Addr = status.pod_ip.as_deref()?.parse().ok()?;
    let key = format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any());
    Some((key, pod.uid().unwrap_or_default(), ip))
}

async fn reconcile(
    client: &Client,
    opts: &Options,
    store: &reflector::Store<Pod>,
    sandboxes: &mut BTreeMap<String, Sandbox>,
    lingering: &mut BTreeMap<Ipv4Addr, tokio::time::Instant>,
) {
    let pods = store.state();
    let mut live = BTreeMap::new();
    for pod in &pods {
        if let Some((key, uid, ip)) = wanted(pod) {
            live.insert(key, (uid, ip, pod.clone()));
        }
    }
    // Stop what is gone (or was replaced by a pod of the same name).
    let gone: Vec<String> = sandboxes
        .iter()
        .filter(|(k, s)| {
            live.get(*k)
                .is_none_or(|(uid, ip, _)| *uid != s.uid || *ip != s.ip)
        })
        .map(|(k, _)| k.clone())
        .collect();
    for key in gone {
        if let Some(sb) = sandboxes.remove(&key) {
            tracing::info!(pod = %key, ip = %sb.ip, "pod gone: stopping its containers");
            lingering.insert(sb.ip, tokio::time::Instant::now() + GRACE + LINGER);
            tokio::spawn(async move {
                tokio::time::sleep(GRACE).await;
                drop(sb);
            });
        }
    }
    let now = tokio::time::Instant::now();
    let expired: Vec<Ipv4Addr> = lingering
        .iter()
        .filter(|(ip, until)| **until <= now && !sandboxes.values().any(|s| s.ip == **ip))
        .map(|(ip, _)| *ip)
        .collect();
    for ip in expired {
        lingering.remove(&ip);
        if let Err(e) = opts.network.remove_pod(ip) {
            tracing::warn!(%ip, error = %format!("{e:#}"), "could not delete a pod's network namespace");
        }
    }
    // Start what is new.
    for (key, (uid, ip, pod)) in &live {
        if sandboxes.contains_key(key) {
            continue;
        }
        if let Some((other, _)) = sandboxes.iter().find(|(_, s)| s.ip == *ip) {
            // Two live pods with one address: never take it from the running one.
            tracing::error!(pod = %key, %ip, holder = %other, "the pod's address belongs to another running pod (was kwok restarted with pods left in etcd?); not starting it");
            continue;
        }
        lingering.remove(ip);
        match start(opts, pod, uid, *ip).await {
            Ok(sb) => {
                tracing::info!(pod = %key, %ip, backends = sb.backends.len(), sidecar = sb.sidecar.is_some(), "pod started");
                sandboxes.insert(key.clone(), sb);
            }
            Err(e) => {
                tracing::error!(pod = %key, %ip, error = %format!("{e:#}"), "could not start the pod; retrying");
            }
        }
    }
    // Readiness: containers serve (and a sidecar's agent says ready).
    for (key, sb) in sandboxes.iter() {
        let mut ready = true;
        for p in &sb.probes {
            ready = ready && http_ok(p).await;
        }
        let Some((_, _, pod)) = live.get(key) else {
            continue;
        };
        if ready != pod_ready(pod)
            && let Err(e) = set_ready(client, pod, ready).await
        {
            tracing::warn!(pod = %key, error = %e, "could not write the pod's Ready condition; retrying");
        }
    }
}

fn pod_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .is_some_and(|c| c.status == "True")
}

async fn http_ok(p: &Probe) -> bool {
    let probe = async {
        let mut s = tokio::net::TcpStream::connect(p.addr).await?;
        use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
        let req = format!(
            "GET {} HTTP/1.0\r\nHost: {}\r\nUser-Agent: kube-probe/1.36\r\n\r\n",
            p.path, p.addr
        );
        s.write_all(req.as_bytes()).await?;
        let mut buf = [0u8; 12];
        s.read_exact(&mut buf).await?;
        Ok::<_, std::io::Error>(buf.ends_with(b"200"))
    };
    matches!(
        tokio::time::timeout(Duration::from_millis(500), probe).await,
        Ok(Ok(true))
    )
}

async fn set_ready(client: &Client, pod: &Pod, ready: bool) -> Result<(), kube::Error> {
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    let status = if ready { "True" } else { "False" };
    let now = now_rfc3339();
    let conditions: Vec<_> = ["Ready", "ContainersReady"]
        .iter()
        .map(|t| json!({"type": t, "status": status, "lastTransitionTime": now}))
        .collect();
    api.patch_status(
        &pod.name_any(),
        &PatchParams::default(),
        &Patch::Strategic(json!({"status": {"conditions": conditions}})),
    )
    .await
    .map(|_| ())
}

/// Now in RFC 3339, seconds precision, as Kubernetes writes condition times.
fn now_rfc3339() -> String {
    k8s_openapi::jiff::Timestamp::now()
        .round(k8s_openapi::jiff::Unit::Second)
        .map(|t| t.to_string())
        .unwrap_or_default()
}

async fn start(opts: &Options, pod: &Pod, uid: &str, ip: Ipv4Addr) -> anyhow::Result<Sandbox> {
    let ns_name = opts.network.add_pod(ip)?;
    let spec = pod.spec.clone().unwrap_or_default();
    let mut sb = Sandbox {
        uid: uid.to_owned(),
        ip,
        backends: Vec::new(),
        tasks: Vec::new(),
        sidecar: None,
        probes: Vec::new(),
    };
    for c in &spec.containers {
        for p in c.ports.iter().flatten() {
            let (Some(host_port), Ok(port)) = (p.host_port, u16::try_from(p.container_port)) else {
                continue;
            };
            let host_ip = p.host_ip.as_deref().unwrap_or("127.0.0.1");
            let host: SocketAddr = format!("{host_ip}:{host_port}")
                .parse()
                .with_context(|| format!("container {} hostIP {host_ip:?}", c.name))?;
            if !host.ip().is_loopback() {
                anyhow::bail!(
                    "container {} port {}: hostIP {host_ip} is not a loopback address (the test bed maps hostPorts on 127.0.0.1 only)",
                    c.name,
                    p.container_port
                );
            }
            sb.tasks.push(bridge(host, ns_name.clone(), port).await?);
        }
        if c.name == "istio-proxy" {
            let Some(istio) = &opts.istio else {
                tracing::warn!(pod = %pod.name_any(), "istio-proxy container, but the kubelet runs without --pilot-agent: not started");
                continue;
            };
            let (sc, status) = start_sidecar(opts, istio, pod, c, ip, &ns_name)?;
            sb.sidecar = Some(sc);
            sb.probes.push(Probe {
                addr: SocketAddr::from(([127, 0, 0, 1], status)),
                path: "/healthz/ready".into(),
            });
        } else if c
            .image
            .as_deref()
            .is_some_and(|i| i.starts_with(FORWARD_IMAGE))
        {
            let probe = c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref());
            for arg in c.args.iter().flatten() {
                let (task, port, target) = forward(&ns_name, arg).await?;
                sb.tasks.push(task);
                // The probe reaches the container through its port, as a kubelet's would.
                if let Some(get) = probe.filter(|get| probes_port(c, get, port)) {
                    sb.probes.push(Probe {
                        addr: target,
                        path: get.path.clone().unwrap_or_else(|| "/".into()),
                    });
                }
            }
        } else {
            for p in c.ports.iter().flatten() {
                let Ok(port) = u16::try_from(p.container_port) else {
                    continue;
                };
                let grpc = p.name.as_deref().is_some_and(|n| n.starts_with("grpc"));
                let listener = netns::listen_in(&ns_name, SocketAddr::from(([0, 0, 0, 0], port)))?;
                let id = backend::Identity {
                    pod: pod.name_any(),
                    namespace: pod.namespace().unwrap_or_default(),
                    service: workload_of(pod),
                    address: ip.to_string(),
                    target_port: p.container_port,
                };
                sb.backends.push(backend::serve(listener, id, grpc)?);
            }
        }
    }
    Ok(sb)
}

/// Whether an httpGet probe's port (a number or a port name) is container `c`'s `port`.
fn probes_port(c: &Container, get: &HTTPGetAction, port: u16) -> bool {
    match &get.port {
        IntOrString::Int(n) => u16::try_from(*n) == Ok(port),
        IntOrString::String(name) => c.ports.iter().flatten().any(|p| {
            p.name.as_deref() == Some(name.as_str()) && u16::try_from(p.container_port) == Ok(port)
        }),
    }
}

/// The Deployment a pod belongs to (its ReplicaSet's name less the hash), else its own name.
pub fn workload_of(pod: &Pod) -> String {
    if let Some(w) = pod.labels().get("service.istio.io/canonical-name") {
        return w.clone();
    }
    let rs = pod
        .owner_references()
        .iter()
        .find(|o| o.kind == "ReplicaSet")
        .map(|o| o.name.clone());
    match (rs, pod.labels().get("pod-template-hash")) {
        (Some(rs), Some(hash)) => rs
            .strip_suffix(&format!("-{hash}"))
            .map(str::to_owned)
            .unwrap_or(rs),
        (Some(rs), None) => rs,
        _ => pod.name_any(),
    }
}

fn start_sidecar(
    opts: &Options,
    istio: &Istio,
    pod: &Pod,
    c: &Container,
    ip: Ipv4Addr,
    netns: &str,
) -> anyhow::Result<(sidecar::Sidecar, u16)> {
    // Envoy's admin port: the container port named "admin" if it has one (with hostPort equal,
    // so pilot-agent reaches it on 127.0.0.1), else a free one, bridged the same way.
    let admin = c
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref() == Some("admin"))
        .and_then(|p| u16::try_from(p.container_port).ok());
    let admin_port = match admin {
        Some(p) => p,
        None => free_port()?,
    };
    let status_port = free_port()?;
    let env = c
        .env
        .iter()
        .flatten()
        .filter_map(|e| e.value.clone().map(|v| (e.name.clone(), v)))
        .collect();
    let spec = sidecar::Spec {
        pod: pod.name_any(),
        namespace: pod.namespace().unwrap_or_default(),
        ip: ip.to_string(),
        service_account: pod
            .spec
            .as_ref()
            .and_then(|s| s.service_account_name.clone())
            .unwrap_or_else(|| "default".into()),
        labels: pod.labels().clone(),
        annotations: pod.annotations().clone(),
        workload: workload_of(pod),
        env,
        admin_port,
        status_port,
        netns: netns.to_owned(),
        dir: opts
            .dir
            .join(pod.namespace().unwrap_or_default())
            .join(pod.name_any()),
    };
    let sc = sidecar::start(istio, &spec)?;
    Ok((sc, status_port))
}

/// Accepts on `listener` for ever; each connection is spliced to what `connect` opens (a
/// connection that cannot be opened is closed, as a dead container's would be).
fn relay<F, Fut>(listener: tokio::net::TcpListener, connect: F) -> Task
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: std::future::Future<Output = anyhow::Result<tokio::net::TcpStream>> + Send + 'static,
{
    let connect = Arc::new(connect);
    Task(tokio::spawn(async move {
        loop {
            let Ok((mut inbound, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let connect = connect.clone();
            tokio::spawn(async move {
                let _ = inbound.set_nodelay(true);
                let mut outbound = match connect().await {
                    Ok(o) => o,
                    Err(e) => {
                        tracing::debug!(error = %format!("{e:#}"), "relay: no connection to splice to");
                        return;
                    }
                };
                let _ = outbound.set_nodelay(true);
                let _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound).await;
            });
        }
    }))
}

/// `host` (on this machine) → 127.0.0.1:`port` inside the pod.
async fn bridge(host: SocketAddr, netns: String, port: u16) -> anyhow::Result<Task> {
    let listener = tokio::net::TcpListener::bind(host)
        .await
        .with_context(|| format!("hostPort {host}: cannot listen"))?;
    let netns = Arc::new(netns);
    Ok(relay(listener, move || {
        let netns = netns.clone();
        async move {
            let socket = netns::socket_in(&netns).inspect_err(|e| {
                tracing::warn!(%netns, error = %format!("{e:#}"), "hostPort: no socket in the pod");
            })?;
            Ok(socket
                .connect(SocketAddr::from(([127, 0, 0, 1], port)))
                .await?)
        }
    }))
}

/// `PORT=HOST:PORT`: the pod's port forwards to a process on this machine.
async fn forward(netns: &str, arg: &str) -> anyhow::Result<(Task, u16, SocketAddr)> {
    let expected = "expected PORT=HOST:PORT, e.g. 8080=127.0.0.1:18080";
    let (port, target) = arg
        .split_once('=')
        .with_context(|| format!("{FORWARD_IMAGE} argument {arg:?}: {expected}"))?;
    let port: u16 = port
        .parse()
        .with_context(|| format!("{FORWARD_IMAGE} argument {arg:?}: port {port:?}: {expected}"))?;
    let target: SocketAddr = target.parse().with_context(|| {
        format!("{FORWARD_IMAGE} argument {arg:?}: target {target:?}: {expected}")
    })?;
    let std_listener = netns::listen_in(netns, SocketAddr::from(([0, 0, 0, 0], port)))?;
    let listener = tokio::net::TcpListener::from_std(std_listener)?;
    let task = relay(listener, move || async move {
        Ok(tokio::net::TcpStream::connect(target).await?)
    });
    Ok((task, port, target))
}
