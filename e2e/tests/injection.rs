//! The admission webhook on the test bed: pods in opted-in namespaces are labelled for the
//! filter, nothing else is touched, a stopped webhook blocks nothing, and bad kzscaler
//! annotations are refused with the webhook's message.

use std::process::Stdio;
use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, ListParams, PostParams};
use kzscaler_e2e::fixtures::deployment;
use kzscaler_e2e::kz::{
    create_labelled_for_filter, private_pod_webhook, probe_labelled_for_filter,
};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::{TestBed, testbed_binary, workspace_binary};

const WAIT: Duration = Duration::from_secs(60);
const FILTER_LABEL: &str = "kzscaler.io/filter";
const PLUGIN_ANNOTATION: &str = "kzscaler.io/wasmplugin";

/// (label, annotation) of every pod in the namespace, once `n` exist.
async fn pods_marks(
    ns: &TempNamespace,
    n: usize,
) -> anyhow::Result<Vec<(Option<String>, Option<String>)>> {
    ns.wait_for(&format!("{n} pods"), WAIT, || async {
        let pods = ns.api::<Pod>().list(&ListParams::default()).await?;
        Ok((pods.items.len() >= n).then(|| {
            pods.items
                .iter()
                .map(|p| {
                    (
                        p.metadata
                            .labels
                            .as_ref()
                            .and_then(|l| l.get(FILTER_LABEL).cloned()),
                        p.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get(PLUGIN_ANNOTATION).cloned()),
                    )
                })
                .collect()
        }))
    })
    .await
}

#[tokio::test]
async fn pods_of_a_deployment_in_an_opted_in_namespace_carry_label_and_annotation()
-> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "inject", &[("kzscaler.io/injection", "enabled")]).await?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment("web", 2))
        .await?;
    let marks = pods_marks(&ns, 2).await?;
    let want = (
        Some("true".to_owned()),
        Some(format!("{}/kzscaler", ns.name)),
    );
    assert!(marks.iter().all(|m| *m == want), "{marks:?}");
    ns.cleanup().await
}

#[tokio::test]
async fn unlabelled_namespaces_and_opted_out_pods_carry_nothing() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let plain = TempNamespace::create(&bed, "noinject", &[]).await?;
    plain
        .api::<Deployment>()
        .create(&PostParams::default(), &deployment("web", 1))
        .await?;
    assert_eq!(pods_marks(&plain, 1).await?, vec![(None, None)]);

    let opted =
        TempNamespace::create(&bed, "optout", &[("kzscaler.io/injection", "enabled")]).await?;
    let mut d = deployment("web", 1);
    if let Some(labels) = d
        .spec
        .as_mut()
        .and_then(|s| s.template.metadata.as_mut())
        .and_then(|m| m.labels.as_mut())
    {
        labels.insert("kzscaler.io/inject".into(), "false".into());
    }
    opted
        .api::<Deployment>()
        .create(&PostParams::default(), &d)
        .await?;
    assert_eq!(pods_marks(&opted, 1).await?, vec![(None, None)]);
    plain.cleanup().await?;
    opted.cleanup().await
}

#[tokio::test]
async fn with_the_webhook_stopped_pods_are_still_created_and_carry_nothing() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    // Not labelled for the shared webhook: a private webhook and configuration select it.
    let ns = TempNamespace::create(&bed, "nowebhook", &[]).await?;
    let pki = bed.state_dir.join("pki/webhook");
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let mut webhook = tokio::process::Command::new(workspace_binary("kzscaler-webhook")?)
        .args(["--listen", &format!("127.0.0.1:{port}")])
        .arg("--tls-cert")
        .arg(pki.join("tls.crt"))
        .arg("--tls-key")
        .arg(pki.join("tls.key"))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()?;
    let ca = std::fs::read(pki.join("ca.crt"))?;
    let name = format!("e2e-{}", ns.name);
    let mwc = private_pod_webhook(&name, port, &ca, &ns.name)?;
    let mwcs = Api::<MutatingWebhookConfiguration>::all(bed.client.clone());
    mwcs.create(&PostParams::default(), &mwc).await?;
    let result = async {
        // While it runs, it injects (the API server may need a moment to see the configuration).
        ns.wait_for("the private webhook to inject a pod", WAIT, || async {
            Ok(probe_labelled_for_filter(&ns).await?.then_some(()))
        })
        .await?;
        webhook.kill().await?;
        assert!(
            !create_labelled_for_filter(&ns, "after").await?,
            "created, not injected"
        );
        anyhow::Ok(())
    }
    .await;
    mwcs.delete(&name, &DeleteParams::default()).await?;
    result?;
    ns.cleanup().await
}

#[tokio::test]
async fn kubectl_apply_of_a_bad_annotation_prints_the_webhooks_message() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "validate", &[]).await?;
    let manifest = format!(
        r#"{{"apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {{"name": "web", "namespace": "{}", "annotations": {{"kzscaler.io/scale-to-zero": "true", "kzscaler.io/wake-replicas": "zero"}}}},
        "spec": {{"replicas": 0, "selector": {{"matchLabels": {{"app": "web"}}}},
                 "template": {{"metadata": {{"labels": {{"app": "web"}}}}, "spec": {{"containers": [{{"name": "a", "image": "x"}}]}}}}}}}}"#,
        ns.name
    );
    let kubectl = testbed_binary("kubectl")?;
    let mut child = tokio::process::Command::new(&kubectl)
        .args(["apply", "-f", "-"])
        .env("KUBECONFIG", &bed.kubeconfig)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    if let Some(mut stdin) = child.stdin.take() {
        use tokio::io::AsyncWriteExt as _;
        stdin.write_all(manifest.as_bytes()).await?;
    }
    let out = child.wait_with_output().await?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "kubectl apply must fail");
    assert!(
        stderr.contains("kzscaler: annotation kzscaler.io/wake-replicas: \"zero\" is not valid: expected a whole number of at least 1"),
        "{stderr}"
    );
    assert!(ns.api::<Deployment>().get_opt("web").await?.is_none());
    ns.cleanup().await
}
