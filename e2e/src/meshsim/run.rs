//! The simulator's main loop: watch, derive the mesh, reconcile backends and Envoy's files.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector;
use kube::{Api, Client};
use tokio::sync::Notify;

use kzscaler_controller::watch::spawn_reflector;

use super::backend::{self, Backend};
use super::envoy::{self, Bootstrap, Files};
use super::model::{EndpointKey, Mesh};

/// How long a backend keeps serving after its endpoint left the mesh (a pod's termination
/// grace period, shortened).
const BACKEND_GRACE: Duration = Duration::from_secs(1);

/// The cluster name Istio gives the controller's Service port in a sidecar.
pub const CONTROLLER_CLUSTER: &str =
    "outbound|8080||kzscaler-controller.kzscaler-system.svc.cluster.local";

/// How the simulator is set up.
#[derive(Debug, Clone)]
pub struct Options {
    /// Folder for Envoy's files and log.
    pub dir: PathBuf,
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// Envoy's HTTP listener.
    pub listen: SocketAddr,
    /// Envoy's admin interface.
    pub admin: SocketAddr,
    /// The cluster domain.
    pub domain: String,
    /// The Wasm filter to load, if any.
    pub wasm: Option<envoy::WasmFilter>,
    /// Envoy worker threads.
    pub concurrency: u32,
    /// Where to write Envoy's pid, so that the test bed can stop it even if the simulator dies.
    pub envoy_pid_file: Option<PathBuf>,
    /// The kzscaler controller replicas' filter API on this machine, reached through a cluster
    /// named like the sidecar's cluster for the controller's Service.
    pub controller: Vec<SocketAddr>,
    /// Play the sidecar of a pod of this Deployment (`namespace`, `deployment`): node
    /// metadata, and an inbound listener on this address in front of an application backend.
    pub pod: Option<(String, String, SocketAddr)>,
}

/// Runs until Envoy exits, a watch cannot start, or SIGTERM/SIGINT arrives.
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
    let files = Files {
        dir: opts.dir.clone(),
    };
    std::fs::create_dir_all(files.dir.join("eds"))
        .with_context(|| format!("creating {}", files.dir.display()))?;

    let services: Api<Service> = Api::all(client.clone());
    let slices: Api<EndpointSlice> = Api::all(client);
    let (svc_store, svc_writer) = reflector::store();
    let (eps_store, eps_writer) = reflector::store();
    let changed = Arc::new(Notify::new());
    spawn_reflector(svc_writer, services, changed.clone(), "services");
    spawn_reflector(eps_writer, slices, changed.clone(), "endpointslices");
    tokio::time::timeout(Duration::from_secs(30), async {
        svc_store.wait_until_ready().await?;
        eps_store.wait_until_ready().await
    })
    .await
    .context("the first list of Services and EndpointSlices took over 30s: is the API server up?")?
    .context("the watch of Services or EndpointSlices stopped before its first list")?;

    // Envoy reads its dynamic files at start: write them first.
    let mut state = State::default();
    let mesh = snapshot(&svc_store, &eps_store, &opts.domain);
    state.reconcile(&files, mesh).await?;
    // The pod's own application, behind the inbound listener.
    let app = match &opts.pod {
        Some((namespace, deployment, _)) => Some(
            super::backend::start(&super::model::EndpointKey {
                cluster: "inbound|80||".into(),
                namespace: namespace.clone(),
                service: deployment.clone(),
                pod: format!("{deployment}-meshsim"),
                address: "127.0.0.1".into(),
                target_port: 80,
                grpc: false,
            })
            .await
            .context("starting the pod's application backend")?,
        ),
        None => None,
    };
    let pod = match (&opts.pod, &app) {
        (Some((namespace, workload, inbound)), Some(app)) => Some(envoy::Pod {
            namespace: namespace.clone(),
            workload: workload.clone(),
            inbound: *inbound,
            app: app.addr,
        }),
        _ => None,
    };
    let boot = envoy::bootstrap(
        &files,
        &Bootstrap {
            pod,
            listen: opts.listen,
            admin: opts.admin,
            wasm: opts.wasm.clone(),
            static_clusters: if opts.controller.is_empty() {
                Vec::new()
            } else {
                vec![envoy::controller_cluster(
                    CONTROLLER_CLUSTER,
                    &opts.controller,
                )]
            },
        },
    );
    envoy::write_if_changed(&files.bootstrap(), &boot)?;
    let mut child = spawn_envoy(&opts, &files)?;
    if let (Some(path), Some(pid)) = (&opts.envoy_pid_file, child.id()) {
        std::fs::write(path, format!("{pid}\n"))
            .with_context(|| format!("writing {}", path.display()))?;
    }
    tracing::info!(listen = %opts.listen, admin = %opts.admin, "envoy started");

    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = changed.notified() => {
                // Let a burst of events land before recomputing.
                tokio::time::sleep(Duration::from_millis(5)).await;
                let mesh = snapshot(&svc_store, &eps_store, &opts.domain);
                if let Err(e) = state.reconcile(&files, mesh).await {
                    tracing::error!(error = %format!("{e:#}"), "reconcile failed; retrying on the next change");
                }
            }
            status = child.wait() => {
                anyhow::bail!("envoy exited ({status:?}); see {}", files.dir.join("envoy.log").display());
            }
            _ = sigterm.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("stopping envoy and backends");
    let _ = child.kill().await;
    if let Some(path) = &opts.envoy_pid_file {
        let _ = std::fs::remove_file(path);
    }
    Ok(())
}

fn snapshot(
    svcs: &reflector::Store<Service>,
    eps: &reflector::Store<EndpointSlice>,
    domain: &str,
) -> Mesh {
    let svcs: Vec<Service> = svcs.state().iter().map(|s| (**s).clone()).collect();
    let eps: Vec<EndpointSlice> = eps.state().iter().map(|s| (**s).clone()).collect();
    Mesh::build(&svcs, &eps, domain)
}

fn spawn_envoy(opts: &Options, files: &Files) -> anyhow::Result<tokio::process::Child> {
    let log = std::fs::File::create(files.dir.join("envoy.log"))?;
    tokio::process::Command::new(&opts.envoy)
        .arg("-c")
        .arg(files.bootstrap())
        .args(["--concurrency", &opts.concurrency.to_string()])
        .args([
            "--disable-hot-restart",
            "--log-level",
            "warn",
            "--component-log-level",
            "wasm:info",
        ])
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting envoy {}", opts.envoy.display()))
}

/// What runs now: backends by endpoint.
#[derive(Debug, Default)]
struct State {
    backends: BTreeMap<EndpointKey, Backend>,
    mesh: Option<Mesh>,
}

impl State {
    /// Brings backends and files in line with `mesh`. New backends start before Envoy hears
    /// of them, and old ones stop [`BACKEND_GRACE`] after Envoy has been told they are gone.
    async fn reconcile(&mut self, files: &Files, mesh: Mesh) -> anyhow::Result<()> {
        if self.mesh.as_ref() == Some(&mesh) {
            return Ok(());
        }
        for key in mesh.endpoints() {
            if !self.backends.contains_key(key) {
                let b = backend::start(key).await?;
                tracing::info!(pod = %key.pod, ns = %key.namespace, service = %key.service,
                    address = %key.address, port = key.target_port, local = %b.addr, grpc = key.grpc,
                    "backend started");
                self.backends.insert(key.clone(), b);
            }
        }
        for cluster in mesh.clusters.values() {
            let value = envoy::eds(cluster, |k| self.backends.get(k).map(|b| b.addr.port()));
            envoy::write_if_changed(&files.eds(&cluster.name), &value)?;
        }
        envoy::write_if_changed(&files.cds(), &envoy::cds(files, &mesh))?;
        envoy::write_if_changed(&files.rds(), &envoy::rds(&mesh))?;

        let live: std::collections::BTreeSet<&EndpointKey> = mesh.endpoints().collect();
        let gone: Vec<EndpointKey> = self
            .backends
            .keys()
            .filter(|k| !live.contains(k))
            .cloned()
            .collect();
        if !gone.is_empty() {
            // Envoy reloads a renamed file within about a millisecond when idle, later on a
            // loaded machine. Like a pod's termination grace period, a removed backend keeps
            // serving for a while; the next reconcile does not wait for it.
            let stopping: Vec<(EndpointKey, Backend)> = gone
                .into_iter()
                .filter_map(|k| self.backends.remove(&k).map(|b| (k, b)))
                .collect();
            tokio::spawn(async move {
                tokio::time::sleep(BACKEND_GRACE).await;
                for (key, backend) in stopping {
                    drop(backend);
                    tracing::info!(pod = %key.pod, ns = %key.namespace, service = %key.service, "backend stopped");
                }
            });
        }
        self.mesh = Some(mesh);
        Ok(())
    }
}
