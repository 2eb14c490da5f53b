//! The controller keeps one WasmPlugin per opted-in namespace; Istio's own CRD schema on the
//! test bed's API server validates it.

use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::Api;
use kube::api::{ApiResource, DynamicObject, GroupVersionKind, Patch, PatchParams};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::{TestBed, filter_module};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(30);

fn wasmplugins(bed: &TestBed, ns: &str) -> Api<DynamicObject> {
    let ar = ApiResource::from_gvk(&GroupVersionKind::gvk(
        "extensions.istio.io",
        "v1alpha1",
        "WasmPlugin",
    ));
    Api::namespaced_with(bed.client.clone(), ns, &ar)
}

fn sha256_hex(path: &std::path::Path) -> anyhow::Result<String> {
    let out = std::process::Command::new("sha256sum").arg(path).output()?;
    Ok(String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned())
}

#[tokio::test]
async fn labelling_a_namespace_creates_its_wasmplugin_drift_is_undone_and_unlabelling_removes_it()
-> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "plugin", &[]).await?;
    let namespaces = Api::<Namespace>::all(bed.client.clone());
    let label = |v: Option<&str>| json!({"metadata": {"labels": {"kzscaler.io/injection": v}}});
    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(label(Some("enabled"))),
        )
        .await?;
    let api = wasmplugins(&bed, &ns.name);
    // Created through the API server, so Istio's CRD schema accepted it.
    let w = ns
        .wait_for("the WasmPlugin to be created", WAIT, || async {
            Ok(api.get_opt("kzscaler").await?)
        })
        .await?;
    let spec = &w.data["spec"];
    assert_eq!(
        spec["selector"]["matchLabels"]["kzscaler.io/filter"],
        "true"
    );
    assert_eq!(spec["failStrategy"], "FAIL_OPEN");
    assert!(spec["pluginConfig"]["poll_period_ms"].is_u64(), "{spec}");
    assert_eq!(
        spec["sha256"],
        sha256_hex(&filter_module()?)?.as_str(),
        "the sha256 of the module the controller serves"
    );
    let owner = &w.metadata.owner_references.clone().unwrap_or_default()[0];
    assert_eq!(
        (owner.kind.as_str(), owner.name.as_str()),
        ("Namespace", ns.name.as_str())
    );

    // The module is served where the WasmPlugin says, with that sha256.
    let url = spec["url"].as_str().unwrap_or_default().to_owned();
    let addr = url
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap_or_default()
        .to_owned();
    let served = bed
        .get_from(&addr, &addr, "/v1/module", Duration::from_secs(5))
        .await?;
    assert_eq!(served.status, 200);

    // Drift is put back.
    api.patch(
        "kzscaler",
        &PatchParams::default(),
        &Patch::Merge(json!({"spec": {"failStrategy": "FAIL_CLOSE"}})),
    )
    .await?;
    ns.wait_for("the controller to restore failStrategy", WAIT, || async {
        let w = api.get("kzscaler").await?;
        Ok((w.data["spec"]["failStrategy"] == "FAIL_OPEN").then_some(()))
    })
    .await?;

    namespaces
        .patch(
            &ns.name,
            &PatchParams::default(),
            &Patch::Merge(label(None)),
        )
        .await?;
    ns.wait_for("the WasmPlugin to be removed", WAIT, || async {
        Ok(api.get_opt("kzscaler").await?.is_none().then_some(()))
    })
    .await?;
    ns.cleanup().await
}
