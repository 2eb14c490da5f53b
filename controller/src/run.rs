//! Wiring: watches feed the cache, the API server does the scaling, axum serves filters.
//!
//! ```text
//!  watch Deployments ──┐
//!  watch Services ─────┤ one event: Index::apply/delete ──changed──▶ Cache::publish ──▶ version
//!  watch EndpointSlices┤   (that object only)                │                         │
//!  watch HPAs, VSs ────┘                             Events for problems     activate waiters,
//!                                                                            long polls
//! ```

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::autoscaling::v2::HorizontalPodAutoscaler;
use k8s_openapi::api::core::v1::{Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::watcher;
use kube::{Api, Client, Resource};
use serde_json::json;
use tokio::sync::{Notify, RwLock, watch};

use crate::Error;
use crate::activate::{Activator, Note, Scaler, WakeRecord};
use crate::api::{self, Api as HttpApi};
use crate::cache::{Cache, Index, Key, Problem};
use crate::lease::{Fence, Leadership};
use crate::metrics::Metrics;
use crate::virtualservice::VirtualService;

use kzscaler_core::names;
pub use kzscaler_core::names::LAST_WAKE;

/// Options of the controller process.
#[derive(Debug, Clone)]
pub struct Options {
    /// Where the filter API, health and metrics listen.
    pub listen: SocketAddr,
    /// The cluster domain of Service host names.
    pub domain: String,
    /// The filter module to serve on `/v1/module`.
    pub module: Option<Arc<Vec<u8>>>,
    /// WasmPlugin management, when on.
    pub wasmplugin: Option<(crate::wasmplugin::Settings, Duration)>,
    /// How long a Deployment stays draining before it is scaled to 0 (at least two filter
    /// poll periods).
    pub drain_period: Duration,
    /// This replica's name in the Lease and in Events (`reportingInstance`).
    pub identity: String,
    /// Leader election; `None`: this replica always acts.
    pub election: Option<crate::lease::Settings>,
    /// This replica's own pod (namespace, name): labelled [`names::LEADER_LABEL`] while leading.
    pub pod: Option<(String, String)>,
    /// Manage only Deployments (and WasmPlugins) in namespaces this label selector matches.
    pub namespace_selector: Option<String>,
}

/// Scales and records through the API server. Every write goes through the leadership
/// [`Fence`]: sent only inside this replica's term, abandoned when it ends.
#[derive(Clone)]
pub struct KubeScaler {
    client: Client,
    recorder: Recorder,
    fence: Arc<Fence>,
}

impl std::fmt::Debug for KubeScaler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("KubeScaler")
    }
}

/// A 409 from the API server: the object changed since the version a write was made on.
fn conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

fn reporter(identity: &str) -> Reporter {
    Reporter {
        controller: "kzscaler-controller".into(),
        instance: Some(identity.to_owned()),
    }
}

/// Keeps this replica's pod labelled [`names::LEADER_LABEL`] exactly while it leads, so the
/// controller's Service (which selects the label) sends filters to the leader only.
async fn label_pod(client: Client, pod: (String, String), mut rx: watch::Receiver<Leadership>) {
    let api = Api::<Pod>::namespaced(client, &pod.0);
    let mut applied: Option<bool> = None;
    loop {
        let want = rx.borrow_and_update().leader;
        if applied != Some(want) {
            match patch_leader_label(&api, &pod.1, want).await {
                Ok(()) => {
                    tracing::info!(pod = %format!("{}/{}", pod.0, pod.1), leader = want, "pod label {} set", names::LEADER_LABEL);
                    applied = Some(want);
                }
                Err(e) => {
                    tracing::warn!(pod = %format!("{}/{}", pod.0, pod.1), error = %e, "could not label the pod; retrying in 1s");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            }
        }
        if rx.changed().await.is_err() {
            return;
        }
    }
}

async fn patch_leader_label(api: &Api<Pod>, name: &str, leader: bool) -> Result<(), kube::Error> {
    let value = if leader {
        json!("true")
    } else {
        serde_json::Value::Null
    };
    let patch = json!({"metadata": {"labels": {names::LEADER_LABEL: value}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(patch))
        .await
        .map(|_| ())
}

impl Scaler for KubeScaler {
    async fn scale(&self, key: &Key, replicas: u32) -> crate::Result<()> {
        let api = Api::<Deployment>::namespaced(self.client.clone(), &key.namespace);
        let what = format!("waking {key} to {replicas} replicas");
        self.fence
            .write(&what, async {
                // Compare-and-swap: scaled up only if still at 0 when written.
                for _ in 0..3 {
                    let current = api
                        .get_scale(&key.name)
                        .await
                        .map_err(|e| Error::kube(what.clone(), e))?;
                    if current.spec.and_then(|s| s.replicas).unwrap_or(0) > 0 {
                        return Ok(()); // scaled up already (another wake, a person, an HPA)
                    }
                    let patch = json!({
                        "metadata": {"resourceVersion": current.metadata.resource_version},
                        "spec": {"replicas": replicas},
                    });
                    match api
                        .patch_scale(&key.name, &PatchParams::default(), &Patch::Merge(patch))
                        .await
                    {
                        Ok(_) => return Ok(()),
                        Err(e) if conflict(&e) => continue, // changed in between: look again
                        Err(e) => return Err(Error::kube(what.clone(), e)),
                    }
                }
                Err(Error::Contended { key: key.clone() })
            })
            .await
    }

    async fn record_wake(&self, key: &Key, wake: &WakeRecord) {
        let value = serde_json::to_string(wake).unwrap_or_default();
        let dep = match self
            .patch_annotations(key, json!({LAST_WAKE: value, names::STATE: "awake"}))
            .await
        {
            Ok(d) => d,
            Err(e) => {
                tracing::warn!(deployment = %key, error = %e, "could not record the wake on the Deployment");
                return;
            }
        };
        let fmt = |ms: Option<u64>| ms.map_or("not seen".to_owned(), |ms| format!("{ms}ms"));
        let note = format!(
            "woke to {} replica{}: scale call {}ms, first pod ready {}, endpoint ready {}",
            wake.replicas,
            if wake.replicas == 1 { "" } else { "s" },
            wake.scale_ms,
            fmt(wake.pod_ready_ms),
            fmt(wake.endpoint_ready_ms)
        );
        self.publish(key, &dep, EventType::Normal, "Woke", "Wake", note)
            .await;
    }

    async fn sleep(&self, key: &Key, how: crate::activate::Sleep<'_>) -> crate::Result<()> {
        let crate::activate::Sleep {
            replicas,
            idle_ms,
            last_request,
            resource_version,
        } = how;
        let api = Api::<Deployment>::namespaced(self.client.clone(), &key.namespace);
        let at = k8s_openapi::jiff::Timestamp::now().to_string();
        // Written with the sleep only: never a write of its own, never following traffic.
        let last_request = last_request
            .and_then(|ms| i64::try_from(ms).ok())
            .and_then(|ms| k8s_openapi::jiff::Timestamp::from_millisecond(ms).ok())
            .map(|t| t.to_string());
        let dep = self
            .fence
            .write(&format!("putting {key} to sleep"), async {
                // Both writes carry the resourceVersion they follow: anything written since
                // the Deployment was found idle (a wake by a newer leader, a person's change)
                // refuses the sleep instead of being undone by it.
                let mut annotations = json!({
                    names::STATE: "asleep",
                    names::REPLICAS_BEFORE_SLEEP: replicas.to_string(),
                    names::SLEPT_AT: at,
                });
                // None: no request since this controller started; an older record stays.
                if let Some(at) = &last_request {
                    annotations[names::LAST_REQUEST] = json!(at);
                }
                let record = json!({"metadata": {
                    "resourceVersion": resource_version,
                    "annotations": annotations,
                }});
                let dep = api
                    .patch(&key.name, &PatchParams::default(), &Patch::Merge(record))
                    .await
                    .map_err(|e| stale_sleep(key, e))?;
                let scale = json!({
                    "metadata": {"resourceVersion": dep.metadata.resource_version},
                    "spec": {"replicas": 0},
                });
                api.patch_scale(&key.name, &PatchParams::default(), &Patch::Merge(scale))
                    .await
                    .map_err(|e| stale_sleep(key, e))?;
                Ok(dep)
            })
            .await?;
        let note = if idle_ms == 0 {
            format!(
                "on request ({}: sleep): scaled {replicas} -> 0; a request will wake it to {replicas}",
                names::ACTION
            )
        } else {
            format!(
                "no activity for {:.1}s: scaled {replicas} -> 0; a request will wake it to {replicas}",
                idle_ms as f64 / 1000.0
            )
        };
        self.publish(key, &dep, EventType::Normal, "Slept", "Sleep", note)
            .await;
        Ok(())
    }

    async fn annotate(
        &self,
        key: &Key,
        annotations: serde_json::Value,
        note: Option<Note>,
    ) -> crate::Result<()> {
        let dep = self.patch_annotations(key, annotations).await?;
        if let Some(note) = note {
            let type_ = if note.warning {
                EventType::Warning
            } else {
                EventType::Normal
            };
            self.publish(key, &dep, type_, note.reason, "Reconcile", note.message)
                .await;
        }
        Ok(())
    }
}

/// Why a sleep was not written.
fn stale_sleep(key: &Key, e: kube::Error) -> Error {
    if conflict(&e) {
        Error::StaleSleep { key: key.clone() }
    } else {
        Error::kube(format!("putting {key} to sleep"), e)
    }
}

impl KubeScaler {
    /// Merges `annotations` (`null` removes one) into the Deployment's.
    async fn patch_annotations(
        &self,
        key: &Key,
        annotations: serde_json::Value,
    ) -> crate::Result<Deployment> {
        let api = Api::<Deployment>::namespaced(self.client.clone(), &key.namespace);
        let what = format!("annotating {key}");
        self.fence
            .write(&what, async {
                api.patch(
                    &key.name,
                    &PatchParams::default(),
                    &Patch::Merge(json!({"metadata": {"annotations": annotations}})),
                )
                .await
                .map_err(|e| Error::kube(what.clone(), e))
            })
            .await
    }

    /// Publishes an Event about the Deployment; a failure is only logged.
    async fn publish(
        &self,
        key: &Key,
        dep: &Deployment,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: String,
    ) {
        publish(
            &self.recorder,
            &dep.object_ref(&()),
            key,
            type_,
            reason,
            action,
            note,
        )
        .await;
    }
}

/// Publishes an Event about the object `key` refers to; a failure is only logged.
async fn publish(
    recorder: &Recorder,
    reference: &k8s_openapi::api::core::v1::ObjectReference,
    key: &Key,
    type_: EventType,
    reason: &'static str,
    action: &'static str,
    note: String,
) {
    let ev = Event {
        type_,
        reason: reason.into(),
        note: Some(note),
        action: action.into(),
        secondary: None,
    };
    if let Err(e) = recorder.publish(&ev, reference).await {
        tracing::warn!(object = %key, error = %e, reason, "could not publish an event");
    }
}

/// What the controller's tasks share.
#[derive(Clone)]
struct Context {
    client: Client,
    opts: Arc<Options>,
    metrics: Arc<Metrics>,
    cache: Arc<RwLock<Cache>>,
    /// Bumped after every published batch: activates and the sleeper wait on it.
    changes: watch::Sender<u64>,
    /// Set once the first lists are in and published.
    ready: Arc<AtomicBool>,
    recorder: Recorder,
    leadership: watch::Receiver<Leadership>,
    fence: Arc<Fence>,
}

/// Runs the controller until SIGTERM or SIGINT.
///
/// ```text
///  elect ──leadership──▶ metrics, pod label, Fence
///  watch_objects ──events──▶ Index ──changed──▶ publish_loop ──▶ snapshot version, Events
///  serve: filter API (activate, activity, snapshot), Sleeper, WasmPlugins
/// ```
pub async fn run(client: Client, opts: Options) -> anyhow::Result<()> {
    let (ctx, lead_tx) = Context::new(client, opts);
    let (stop_tx, stop_rx) = watch::channel(false);
    let elector = elect(&ctx, &lead_tx, stop_rx);
    follow_leadership(&ctx);
    let (changed, unlisted) = watch_objects(&ctx).await?;
    let server = serve(&ctx).await?;
    publish_loop(&ctx, &changed, &unlisted).await?;
    tracing::info!("stopping");
    let _ = stop_tx.send(true);
    if let Some(elector) = elector {
        // The elector stops this replica acting, waits for its writes in flight, and only
        // then releases the Lease.
        let _ = tokio::time::timeout(crate::lease::WRITE_TIMEOUT * 2, elector).await;
    } else {
        lead_tx.send_modify(|l| l.leader = false);
        ctx.fence.drained(crate::lease::WRITE_TIMEOUT).await;
    }
    if let Some((ns, name)) = &ctx.opts.pod {
        let api = Api::<Pod>::namespaced(ctx.client.clone(), ns);
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            patch_leader_label(&api, name, false),
        )
        .await;
    }
    drop(lead_tx);
    server.abort();
    Ok(())
}

impl Context {
    fn new(client: Client, opts: Options) -> (Self, watch::Sender<Leadership>) {
        let scope = opts
            .namespace_selector
            .as_ref()
            .map(|_| std::collections::HashSet::new());
        let cache = Arc::new(RwLock::new(Cache::new(
            Index::new(&opts.domain, scope),
            crate::cache::version_base(crate::clock::wall_ms()),
        )));
        let (lead_tx, leadership) = watch::channel(Leadership::default());
        let ctx = Self {
            recorder: Recorder::new(client.clone(), reporter(&opts.identity)),
            fence: Arc::new(Fence::new(leadership.clone())),
            client,
            opts: Arc::new(opts),
            metrics: Arc::new(Metrics::default()),
            cache,
            changes: watch::Sender::new(0),
            ready: Arc::new(AtomicBool::new(false)),
            leadership,
        };
        (ctx, lead_tx)
    }
}

/// Leader election, when on; otherwise this replica leads at once.
fn elect(
    ctx: &Context,
    lead_tx: &watch::Sender<Leadership>,
    stop: watch::Receiver<bool>,
) -> Option<tokio::task::JoinHandle<()>> {
    let identity = &ctx.opts.identity;
    match ctx.opts.election.clone() {
        Some(settings) => {
            tracing::info!(identity = %identity, lease = %format!("{}/{}", settings.namespace, settings.name), "leader election on");
            Some(tokio::spawn(crate::lease::run(
                ctx.client.clone(),
                settings,
                lead_tx.clone(),
                ctx.fence.clone(),
                stop,
            )))
        }
        None => {
            tracing::info!(identity = %identity, "leader election off: this replica always acts");
            lead_tx.send_replace(Leadership {
                leader: true,
                holder: identity.clone(),
                until: None,
            });
            None
        }
    }
}

/// Keeps the leader metric and the pod's leader label in step with the leadership.
fn follow_leadership(ctx: &Context) {
    let (metrics, mut rx) = (ctx.metrics.clone(), ctx.leadership.clone());
    tokio::spawn(async move {
        loop {
            metrics.leader(rx.borrow_and_update().leader);
            if rx.changed().await.is_err() {
                return;
            }
        }
    });
    if let Some(pod) = ctx.opts.pod.clone() {
        tokio::spawn(label_pod(ctx.client.clone(), pod, ctx.leadership.clone()));
    }
}

/// Starts a watch per kind, each applying its events to the index. Returns what is notified
/// after every event, and the count of kinds whose first list is not in yet.
async fn watch_objects(
    ctx: &Context,
) -> anyhow::Result<(Arc<Notify>, Arc<std::sync::atomic::AtomicUsize>)> {
    let client = &ctx.client;
    let changed = Arc::new(Notify::new());
    let unlisted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let indexer = Indexer {
        metrics: ctx.metrics.clone(),
        cache: ctx.cache.clone(),
        changed: changed.clone(),
        unlisted: unlisted.clone(),
    };
    if let Some(sel) = &ctx.opts.namespace_selector {
        // A bad selector is a start-up error, not an endless watch retry.
        Api::<Namespace>::all(client.clone())
            .list(&ListParams::default().labels(sel).limit(1))
            .await
            .with_context(|| {
                format!("--namespace-selector {sel:?}: expected a label selector, e.g. team=shop or !legacy")
            })?;
        indexer.spawn::<Namespace>(
            Api::all(client.clone()),
            watcher::Config::default().labels(sel),
        );
        tracing::info!(selector = %sel, "managing Deployments in the namespaces this selector matches");
    }
    indexer.spawn::<Deployment>(Api::all(client.clone()), watcher::Config::default());
    indexer.spawn::<Service>(Api::all(client.clone()), watcher::Config::default());
    indexer.spawn::<EndpointSlice>(Api::all(client.clone()), watcher::Config::default());
    indexer.spawn::<HorizontalPodAutoscaler>(Api::all(client.clone()), watcher::Config::default());
    // VirtualServices, for their route timeouts (a plain-HTTP caller's deadline), when this
    // cluster serves them: without Istio's CRDs (or the right to list them) holds are bounded
    // by the caller's gRPC deadline and the wake timeout only.
    match Api::<VirtualService>::all(client.clone())
        .list(&ListParams::default().limit(1))
        .await
    {
        Ok(_) => {
            indexer.spawn::<VirtualService>(Api::all(client.clone()), watcher::Config::default())
        }
        Err(e) => {
            tracing::warn!(error = %e, "not reading VirtualServices: held requests are not bounded by route timeouts");
        }
    }
    Ok((changed, unlisted))
}

/// Starts the filter API, the sleeper and the WasmPlugin keeper; returns the server task.
async fn serve(
    ctx: &Context,
) -> anyhow::Result<tokio::task::JoinHandle<Result<(), std::io::Error>>> {
    let opts = &ctx.opts;
    let scaler = Arc::new(KubeScaler {
        client: ctx.client.clone(),
        recorder: ctx.recorder.clone(),
        fence: ctx.fence.clone(),
    });
    let activator = Activator::new(
        ctx.cache.clone(),
        ctx.changes.subscribe(),
        scaler.clone(),
        ctx.metrics.clone(),
    );
    let idle = Arc::new(crate::sleep::Idle::default());
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .with_context(|| format!("listening on {}", opts.listen))?;
    let app = api::router(Arc::new(HttpApi {
        cache: ctx.cache.clone(),
        activator: activator.clone(),
        metrics: ctx.metrics.clone(),
        ready: ctx.ready.clone(),
        module: opts.module.clone(),
        idle: idle.clone(),
        leadership: ctx.leadership.clone(),
    }));
    tokio::spawn(
        crate::sleep::Sleeper {
            cache: ctx.cache.clone(),
            changes: ctx.changes.clone(),
            scaler,
            idle,
            drain_period: opts.drain_period,
            leadership: ctx.leadership.clone(),
            metrics: ctx.metrics.clone(),
            activator,
        }
        .run(),
    );
    if let Some((settings, resync)) = opts.wasmplugin.clone() {
        tokio::spawn(crate::wasmplugin::run(
            ctx.client.clone(),
            Arc::new(settings),
            resync,
            ctx.leadership.clone(),
            opts.namespace_selector.clone(),
        ));
    }
    tracing::info!(listen = %opts.listen, "serving the filter API, /healthz, /readyz and /metrics");
    Ok(tokio::spawn(
        async move { axum::serve(listener, app).await },
    ))
}

/// Until SIGTERM or SIGINT: after each batch of watch events (or a leadership change),
/// publishes one snapshot version, becomes ready once the first lists are in, and (leading)
/// reports new problems as Events.
async fn publish_loop(
    ctx: &Context,
    changed: &Notify,
    unlisted: &std::sync::atomic::AtomicUsize,
) -> anyhow::Result<()> {
    let mut leadership = ctx.leadership.clone();
    let mut reported: BTreeSet<Problem> = BTreeSet::new();
    let mut led = false;
    let mut sigterm = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            () = changed.notified() => {}
            // Gaining or losing the lead, not each Lease renewal.
            _ = async { leadership.wait_for(|l| l.leader != led).await.is_ok() } => {}
            _ = sigterm.recv() => return Ok(()),
            _ = tokio::signal::ctrl_c() => return Ok(()),
        }
        // Let a burst of watch events land before publishing one version for all of them.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let leading = leadership.borrow_and_update().leader;
        if leading && !led {
            ctx.cache
                .write()
                .await
                .new_term(crate::cache::version_base(crate::clock::wall_ms()));
        }
        led = leading;
        // Read before publishing: a snapshot from complete first lists makes this replica ready.
        let listed_before_build = unlisted.load(Ordering::Acquire) == 0;
        let fresh = {
            let mut c = ctx.cache.write().await;
            let started = std::time::Instant::now();
            let published = c.publish();
            ctx.metrics
                .index_update("publish", started.elapsed().as_secs_f64());
            if published {
                tracing::debug!(version = c.version(), "snapshot changed");
            }
            ctx.metrics.destinations(c.counts());
            // Only the leader reports problems; a new leader reports them afresh.
            if leading {
                c.new_problems(&mut reported)
            } else {
                reported.clear();
                Vec::new()
            }
        };
        ctx.changes.send_modify(|v| *v += 1);
        if listed_before_build && !ctx.ready.swap(true, Ordering::Relaxed) {
            tracing::info!("first lists in and the snapshot published from them: ready");
        }
        if !fresh.is_empty() {
            // Published off the loop: a new leader re-publishes every problem, and the
            // publishes that held activates wait for must not queue behind those calls.
            let recorder = ctx.recorder.clone();
            tokio::spawn(async move {
                for (p, reference) in fresh {
                    tracing::warn!(kind = p.kind, object = %p.key, reason = p.reason, message = %p.message, "skipping a misconfigured object");
                    publish(
                        &recorder,
                        &reference,
                        &p.key,
                        EventType::Warning,
                        p.reason,
                        "Reconcile",
                        p.message,
                    )
                    .await;
                }
            });
        }
    }
}

/// What the index does with one kind of object.
trait Indexed:
    Resource<DynamicType = ()>
    + Clone
    + std::fmt::Debug
    + serde::de::DeserializeOwned
    + Send
    + Sync
    + 'static
{
    /// For logs.
    const WHAT: &'static str;
    /// What the index keeps of this kind.
    const KEPT: crate::index::Kept;
    /// Created or changed.
    fn apply(index: &mut Index, obj: &Self);
    /// Deleted.
    fn delete(index: &mut Index, namespace: &str, name: &str);
}

impl Indexed for Deployment {
    const WHAT: &'static str = "deployments";
    const KEPT: crate::index::Kept = crate::index::Kept::Deployments;
    fn apply(index: &mut Index, obj: &Self) {
        index.apply_deployment(obj);
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_deployment(namespace, name);
    }
}

impl Indexed for Service {
    const WHAT: &'static str = "services";
    const KEPT: crate::index::Kept = crate::index::Kept::Services;
    fn apply(index: &mut Index, obj: &Self) {
        index.apply_service(obj);
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_service(namespace, name);
    }
}

impl Indexed for EndpointSlice {
    const WHAT: &'static str = "endpointslices";
    const KEPT: crate::index::Kept = crate::index::Kept::EndpointSlices;
    fn apply(index: &mut Index, obj: &Self) {
        index.apply_slice(obj);
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_slice(namespace, name);
    }
}

impl Indexed for HorizontalPodAutoscaler {
    const WHAT: &'static str = "horizontalpodautoscalers";
    const KEPT: crate::index::Kept = crate::index::Kept::Hpas;
    fn apply(index: &mut Index, obj: &Self) {
        index.apply_hpa(obj);
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_hpa(namespace, name);
    }
}

impl Indexed for VirtualService {
    const WHAT: &'static str = "virtualservices";
    const KEPT: crate::index::Kept = crate::index::Kept::VirtualServices;
    fn apply(index: &mut Index, obj: &Self) {
        index.apply_virtual_service(obj);
    }
    fn delete(index: &mut Index, namespace: &str, name: &str) {
        index.delete_virtual_service(namespace, name);
    }
}

/// Namespaces the namespace selector matches are in scope; a namespace whose labels stop
/// matching leaves the watch as deleted.
impl Indexed for Namespace {
    const WHAT: &'static str = "namespaces";
    const KEPT: crate::index::Kept = crate::index::Kept::Namespaces;
    fn apply(index: &mut Index, obj: &Self) {
        if let Some(name) = &obj.metadata.name {
            index.set_in_scope(name, true);
        }
    }
    fn delete(index: &mut Index, _: &str, name: &str) {
        index.set_in_scope(name, false);
    }
}

/// Feeds watch events into the cache's index, one object at a time. No object is kept
/// beyond what the index strips it to; a re-list deletes what the index kept and the list no
/// longer shows.
#[derive(Clone)]
struct Indexer {
    metrics: Arc<Metrics>,
    cache: Arc<RwLock<Cache>>,
    changed: Arc<Notify>,
    unlisted: Arc<std::sync::atomic::AtomicUsize>,
}

impl Indexer {
    fn spawn<K: Indexed>(&self, api: Api<K>, config: watcher::Config) {
        use futures::StreamExt;
        use kube::runtime::WatchStreamExt;
        use kube::runtime::watcher::Event;
        self.unlisted.fetch_add(1, Ordering::AcqRel);
        let this = self.clone();
        let stream = watcher(api, config).default_backoff();
        tokio::spawn(async move {
            let mut stream = std::pin::pin!(stream);
            let mut relisted: Option<std::collections::HashSet<(String, String)>> = None;
            let mut listed = false;
            let key = |o: &K| {
                (
                    o.meta().namespace.clone().unwrap_or_default(),
                    o.meta().name.clone().unwrap_or_default(),
                )
            };
            while let Some(ev) = stream.next().await {
                let ev = match ev {
                    Ok(ev) => ev,
                    Err(e) => {
                        tracing::warn!(what = K::WHAT, error = %e, "watch error; retrying");
                        continue;
                    }
                };
                {
                    let mut cache = this.cache.write().await;
                    let started = std::time::Instant::now();
                    let index = cache.index_mut();
                    match ev {
                        Event::Init => relisted = Some(Default::default()),
                        Event::InitApply(o) => {
                            relisted.get_or_insert_default().insert(key(&o));
                            K::apply(index, &o);
                        }
                        Event::InitDone => {
                            // What the index kept and the list no longer shows is gone.
                            let seen = relisted.take().unwrap_or_default();
                            for (ns, name) in index.keys(K::KEPT) {
                                if !seen.contains(&(ns.clone(), name.clone())) {
                                    K::delete(index, &ns, &name);
                                }
                            }
                            if !std::mem::replace(&mut listed, true) {
                                this.unlisted.fetch_sub(1, Ordering::AcqRel);
                            }
                        }
                        Event::Apply(o) => K::apply(index, &o),
                        Event::Delete(o) => {
                            let (ns, name) = key(&o);
                            K::delete(index, &ns, &name);
                        }
                    }
                    this.metrics
                        .index_update("apply", started.elapsed().as_secs_f64());
                }
                this.changed.notify_one();
            }
        });
    }
}
