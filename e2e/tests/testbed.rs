//! Tests that prove the local test bed: kwok and the kubelet make pods Ready, the endpointslice controller
//! publishes them, istiod configures the caller's sidecar by them, and the API server calls
//! webhooks registered by URL.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::ValidatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Api;
use kube::api::{DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kzscaler_e2e::fixtures::{deployment, service};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::TestBed;
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);
const REQ: Duration = Duration::from_secs(10);

async fn ready_endpoints(ns: &TempNamespace, svc: &str) -> anyhow::Result<usize> {
    let slices = ns
        .api::<EndpointSlice>()
        .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
        .await?;
    Ok(slices
        .iter()
        .flat_map(|s| s.endpoints.iter().flatten())
        .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) == Some(true))
        .count())
}

async fn scale(ns: &TempNamespace, name: &str, replicas: i32) -> anyhow::Result<()> {
    ns.api::<Deployment>()
        .patch_scale(
            name,
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": replicas}})),
        )
        .await?;
    Ok(())
}

#[tokio::test]
async fn deployment_pods_become_ready_and_endpointslice_turns_ready() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "ready", &[]).await?;
    ns.api::<Service>()
        .create(&PostParams::default(), &service("web", "web", 80, "http"))
        .await?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment("web", 2))
        .await?;

    let pods = ns
        .wait_for("2 pods Running and Ready on a kwok node", WAIT, || async {
            let pods = ns.api::<Pod>().list(&ListParams::default()).await?;
            let ready: Vec<Pod> = pods
                .items
                .into_iter()
                .filter(|p| {
                    let st = p.status.as_ref();
                    st.and_then(|s| s.phase.as_deref()) == Some("Running")
                        && st.and_then(|s| s.conditions.as_ref()).is_some_and(|c| {
                            c.iter().any(|c| c.type_ == "Ready" && c.status == "True")
                        })
                })
                .collect();
            Ok((ready.len() == 2).then_some(ready))
        })
        .await?;
    for p in &pods {
        assert!(
            p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some(),
            "kwok gives pods an IP"
        );
        let node = p
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        assert!(
            node.starts_with("kwok-"),
            "scheduled onto a kwok node, got {node:?}"
        );
    }
    let n = ns
        .wait_for(
            "the EndpointSlice to list 2 ready endpoints",
            WAIT,
            || async {
                let n = ready_endpoints(&ns, "web").await?;
                Ok((n == 2).then_some(n))
            },
        )
        .await?;
    assert_eq!(n, 2);
    ns.cleanup().await
}

#[tokio::test]
async fn scaling_to_zero_removes_the_endpoints() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "zero", &[]).await?;
    ns.api::<Service>()
        .create(&PostParams::default(), &service("web", "web", 80, "http"))
        .await?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment("web", 1))
        .await?;
    ns.wait_for("1 ready endpoint", WAIT, || async {
        Ok((ready_endpoints(&ns, "web").await? == 1).then_some(()))
    })
    .await?;

    scale(&ns, "web", 0).await?;
    ns.wait_for(
        "no endpoints and no pods after scaling to 0",
        WAIT,
        || async {
            let slices = ns
                .api::<EndpointSlice>()
                .list(&ListParams::default().labels("kubernetes.io/service-name=web"))
                .await?;
            let any = slices
                .iter()
                .map(|s| s.endpoints.as_ref().map_or(0, Vec::len))
                .sum::<usize>();
            let pods = ns
                .api::<Pod>()
                .list(&ListParams::default())
                .await?
                .items
                .len();
            Ok((any == 0 && pods == 0).then_some(()))
        },
    )
    .await?;
    ns.cleanup().await
}

#[tokio::test]
async fn envoy_answers_503_then_200_then_503_as_replicas_come_and_go() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "envoy", &[]).await?;
    let host = format!("web.{}", ns.name);
    ns.api::<Service>()
        .create(&PostParams::default(), &service("web", "web", 80, "http"))
        .await?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment("web", 0))
        .await?;

    // At 0 replicas the route exists but has no endpoint: Envoy's own 503.
    let reply = ns
        .wait_for("Envoy to know the route and answer 503", WAIT, || async {
            let r = bed.get(&host, "/", REQ).await?;
            Ok((r.status == 503).then_some(r))
        })
        .await?;
    assert!(
        reply.body.contains("no healthy upstream"),
        "Envoy's local 503, got {:?}",
        reply.body
    );

    scale(&ns, "web", 1).await?;
    let reply = ns
        .wait_for("200 from a backend through Envoy", WAIT, || async {
            let r = bed.get(&host, "/hello", REQ).await?;
            Ok((r.status == 200).then_some(r))
        })
        .await?;
    let identity: serde_json::Value = serde_json::from_str(&reply.body)
        .with_context(|| format!("backend identity is JSON: {:?}", reply.body))?;
    assert_eq!(identity["namespace"], ns.name.as_str());
    assert_eq!(identity["service"], "web");
    assert_eq!(identity["path"], "/hello");
    let pod_name = identity["pod"].as_str().unwrap_or_default().to_owned();
    assert!(
        pod_name.starts_with("web-"),
        "answered by a pod of the Deployment: {pod_name}"
    );
    assert_eq!(reply.headers.get("x-backend-pod"), Some(&pod_name));

    // Every Istio host form reaches the same backend.
    for h in [
        format!("web.{}:80", ns.name),
        format!("web.{}.svc", ns.name),
        format!("web.{}.svc.cluster.local", ns.name),
        format!("web.{}.svc.cluster.local:80", ns.name),
    ] {
        let r = bed.get(&h, "/", REQ).await?;
        assert_eq!(r.status, 200, "Host {h}: {}", r.body);
    }

    // The backend can be told to answer slowly.
    let slow = bed.get(&host, "/?delay_ms=300", REQ).await?;
    assert_eq!(slow.status, 200);

    scale(&ns, "web", 0).await?;
    ns.wait_for("503 again after scaling to 0", WAIT, || async {
        let r = bed.get(&host, "/", REQ).await?;
        Ok((r.status == 503).then_some(()))
    })
    .await?;
    ns.cleanup().await
}

/// A throwaway validating webhook on 127.0.0.1 with a self-signed certificate: it denies
/// ConfigMaps named `deny-me` and counts its calls.
async fn start_test_webhook(calls: Arc<AtomicUsize>) -> anyhow::Result<(u16, String)> {
    use http_body_util::{BodyExt, Full};
    use hyper::service::service_fn;
    use hyper_util::rt::{TokioExecutor, TokioIo};

    let _ = rustls::crypto::ring::default_provider().install_default();
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_owned()])?;
    let ca_pem = cert.cert.pem();
    let key = rustls::pki_types::PrivateKeyDer::try_from(cert.signing_key.serialize_der())
        .map_err(|e| anyhow::anyhow!("test key: {e}"))?;
    let tls = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_single_cert(vec![cert.cert.der().clone()], key)?;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let port = listener.local_addr()?.port();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            let calls = calls.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    let calls = calls.clone();
                    async move {
                        calls.fetch_add(1, Ordering::SeqCst);
                        let body = req
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let review: serde_json::Value =
                            serde_json::from_slice(&body).unwrap_or_default();
                        let uid = review["request"]["uid"].clone();
                        let deny = review["request"]["name"] == "deny-me";
                        let response = json!({
                            "apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview",
                            "response": {"uid": uid, "allowed": !deny,
                                         "status": {"code": 403, "message": "denied by the e2e test webhook"}}
                        });
                        Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(
                            bytes::Bytes::from(response.to_string()),
                        )))
                    }
                });
                let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(tls), svc)
                    .await;
            });
        }
    });
    Ok((port, ca_pem))
}

#[tokio::test]
async fn api_server_calls_a_webhook_registered_by_url() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "webhook", &[("e2e-webhook", "on")]).await?;
    let calls = Arc::new(AtomicUsize::new(0));
    let (port, ca_pem) = start_test_webhook(calls.clone()).await?;
    use base64::Engine as _;
    let config_name = format!("e2e-test-{}", ns.name);
    let vwc: ValidatingWebhookConfiguration = serde_json::from_value(json!({
        "metadata": {"name": config_name},
        "webhooks": [{
            "name": "e2e.kzscaler.io",
            "clientConfig": {"url": format!("https://127.0.0.1:{port}/validate"), "caBundle": base64::engine::general_purpose::STANDARD.encode(ca_pem.as_bytes())},
            "rules": [{"apiGroups": [""], "apiVersions": ["v1"], "operations": ["CREATE"], "resources": ["configmaps"]}],
            "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": ns.name}},
            "failurePolicy": "Fail", "sideEffects": "None", "admissionReviewVersions": ["v1"], "timeoutSeconds": 5
        }]
    }))?;
    let vwcs = Api::<ValidatingWebhookConfiguration>::all(bed.client.clone());
    vwcs.create(&PostParams::default(), &vwc).await?;
    let result = async {
        let cm = |name: &str| -> anyhow::Result<ConfigMap> {
            Ok(serde_json::from_value(json!({"metadata": {"name": name}}))?)
        };
        // The API server picks up a new configuration within a moment: retry until it denies.
        let message = ns
            .wait_for(
                "the webhook to deny ConfigMap deny-me",
                Duration::from_secs(30),
                || async {
                    match ns
                        .api::<ConfigMap>()
                        .create(&PostParams::default(), &cm("deny-me")?)
                        .await
                    {
                        Ok(_) => {
                            ns.api::<ConfigMap>()
                                .delete("deny-me", &DeleteParams::default())
                                .await?;
                            Ok(None)
                        }
                        Err(kube::Error::Api(s)) => Ok(Some(s.message)),
                        Err(e) => Err(e.into()),
                    }
                },
            )
            .await?;
        assert!(
            message.contains("denied by the e2e test webhook"),
            "{message}"
        );
        let before = calls.load(Ordering::SeqCst);
        ns.api::<ConfigMap>()
            .create(&PostParams::default(), &cm("allowed")?)
            .await?;
        assert!(
            calls.load(Ordering::SeqCst) > before,
            "the allowed create went through the webhook too"
        );
        anyhow::Ok(())
    }
    .await;
    vwcs.delete(&config_name, &DeleteParams::default()).await?;
    result?;
    ns.cleanup().await
}
