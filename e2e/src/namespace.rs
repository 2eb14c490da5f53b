//! A temporary namespace per test, and what it holds, for failure reports.

use std::fmt::Write as _;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Event, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{DeleteParams, ListParams, PostParams};
use kube::{Api, Resource};
use serde_json::json;

use crate::testbed::TestBed;

/// Label on every namespace the tests create, so `hack/local-down.sh` or a person can find them.
pub const E2E_LABEL: &str = "kzscaler.io/e2e";

/// A namespace made for one test. `cleanup` deletes it; a failing test leaves it for inspection.
#[derive(Debug, Clone)]
pub struct TempNamespace {
    /// Its name (`e2e-<prefix>-xxxxx`).
    pub name: String,
    /// The test bed it lives in.
    pub bed: TestBed,
}

impl TempNamespace {
    /// Creates `e2e-<prefix>-<random>` with extra labels.
    pub async fn create(
        bed: &TestBed,
        prefix: &str,
        labels: &[(&str, &str)],
    ) -> anyhow::Result<Self> {
        let mut all = serde_json::Map::new();
        all.insert(E2E_LABEL.into(), json!("true"));
        for (k, v) in labels {
            all.insert((*k).into(), json!(v));
        }
        let ns: Namespace = serde_json::from_value(json!({
            "metadata": {"generateName": format!("e2e-{prefix}-"), "labels": all}
        }))?;
        let created = Api::<Namespace>::all(bed.client.clone())
            .create(&PostParams::default(), &ns)
            .await?;
        let name = created.metadata.name.unwrap_or_default();
        eprintln!("[e2e] namespace {name}");
        Ok(Self {
            name,
            bed: bed.clone(),
        })
    }

    /// A namespaced API in this namespace.
    pub fn api<K>(&self) -> Api<K>
    where
        K: Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
    {
        Api::namespaced(self.bed.client.clone(), &self.name)
    }

    /// Deletes the namespace (and so everything in it).
    pub async fn cleanup(self) -> anyhow::Result<()> {
        Api::<Namespace>::all(self.bed.client.clone())
            .delete(&self.name, &DeleteParams::background())
            .await?;
        Ok(())
    }

    /// A readable account of the namespace: Deployments, pods, Services, EndpointSlices, the
    /// last Events, and the tails of the kubelet's and the caller's sidecar's logs.
    pub async fn dump(&self) -> String {
        let mut out = format!("=== namespace {} ===\n", self.name);
        let lp = ListParams::default();
        match self.api::<Deployment>().list(&lp).await {
            Ok(l) => {
                for d in l {
                    let spec = d.spec.as_ref().and_then(|s| s.replicas);
                    let st = d.status.unwrap_or_default();
                    let _ = writeln!(
                        out,
                        "deployment {} spec={:?} ready={:?} available={:?} annotations={:?}",
                        d.metadata.name.unwrap_or_default(),
                        spec,
                        st.ready_replicas,
                        st.available_replicas,
                        d.metadata.annotations.unwrap_or_default()
                    );
                }
            }
            Err(e) => out.push_str(&format!("deployments: {e}\n")),
        }
        match self.api::<Pod>().list(&lp).await {
            Ok(l) => {
                for p in l {
                    let st = p.status.unwrap_or_default();
                    let ready = st
                        .conditions
                        .iter()
                        .flatten()
                        .find(|c| c.type_ == "Ready")
                        .map(|c| c.status.clone());
                    let _ = writeln!(
                        out,
                        "pod {} phase={:?} ready={:?} ip={:?} node={:?} deleting={}",
                        p.metadata.name.unwrap_or_default(),
                        st.phase,
                        ready,
                        st.pod_ip,
                        p.spec.and_then(|s| s.node_name),
                        p.metadata.deletion_timestamp.is_some()
                    );
                }
            }
            Err(e) => out.push_str(&format!("pods: {e}\n")),
        }
        if let Ok(l) = self.api::<Service>().list(&lp).await {
            for s in l {
                let ports = s.spec.and_then(|s| s.ports).unwrap_or_default();
                let ports: Vec<_> = ports.iter().map(|p| (p.name.clone(), p.port)).collect();
                let _ = writeln!(
                    out,
                    "service {} ports={ports:?}",
                    s.metadata.name.unwrap_or_default()
                );
            }
        }
        if let Ok(l) = self.api::<EndpointSlice>().list(&lp).await {
            for s in l {
                let eps: Vec<_> = s
                    .endpoints
                    .iter()
                    .flatten()
                    .map(|e| {
                        (
                            e.addresses.clone(),
                            e.conditions.as_ref().and_then(|c| c.ready),
                        )
                    })
                    .collect();
                let _ = writeln!(
                    out,
                    "endpointslice {} endpoints={eps:?}",
                    s.metadata.name.unwrap_or_default()
                );
            }
        }
        if let Ok(l) = self.api::<Event>().list(&lp).await {
            let mut events: Vec<_> = l.items;
            events.sort_by_key(|e| e.last_timestamp.clone().map(|t| t.0));
            for e in events.iter().rev().take(15).rev() {
                let _ = writeln!(
                    out,
                    "event {} {}: {}",
                    e.involved_object.name.clone().unwrap_or_default(),
                    e.reason.clone().unwrap_or_default(),
                    e.message.clone().unwrap_or_default()
                );
            }
        }
        out.push_str(&self.bed.log_tail("kubelet", 25));
        out.push_str(&self.bed.log_tail("envoy", 15));
        out
    }

    /// Waits until `check` gives `Some`; on timeout fails with what it last saw and a dump.
    pub async fn wait_for<T, F, Fut>(
        &self,
        what: &str,
        timeout: std::time::Duration,
        check: F,
    ) -> anyhow::Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = anyhow::Result<Option<T>>>,
    {
        match crate::wait::until(what, timeout, check).await {
            Ok(v) => Ok(v),
            Err(e) => Err(anyhow::anyhow!("{e}\n{}", self.dump().await)),
        }
    }
}
