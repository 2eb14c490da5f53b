//! `manifests/` against the real API server with Istio's CRDs: it applies (server-side dry
//! run), and the controller's ServiceAccount has exactly the access it needs.

use kzscaler_e2e::testbed::{TestBed, testbed_binary};

async fn kubectl(bed: &TestBed, args: &[&str]) -> anyhow::Result<(bool, String)> {
    let out = tokio::process::Command::new(testbed_binary("kubectl")?)
        .args(args)
        .env("KUBECONFIG", &bed.kubeconfig)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

#[tokio::test]
async fn manifests_apply_with_server_side_dry_run() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    // The namespace exists on the test bed (hack/local-up.sh applies it with the RBAC).
    let (ok, out) = kubectl(&bed, &["apply", "--dry-run=server", "-k", "../manifests/"]).await?;
    assert!(
        ok,
        "kubectl apply --dry-run=server -k manifests/ failed:\n{out}"
    );
    for kind in [
        "deployment.apps/kzscaler-controller",
        "deployment.apps/kzscaler-webhook",
        "mutatingwebhookconfiguration.admissionregistration.k8s.io/kzscaler",
        "validatingwebhookconfiguration.admissionregistration.k8s.io/kzscaler",
        "poddisruptionbudget.policy/kzscaler-controller",
        "authorizationpolicy.security.istio.io/kzscaler-controller",
    ] {
        assert!(out.contains(kind), "{kind} missing from:\n{out}");
    }
    Ok(())
}

#[tokio::test]
async fn controller_service_account_has_least_privilege() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let sa = "--as=system:serviceaccount:kzscaler-system:kzscaler-controller";
    let can = |verb: &'static str, resource: &'static str| {
        let bed = bed.clone();
        async move {
            let (_, out) = kubectl(&bed, &["auth", "can-i", sa, verb, resource, "-A"]).await?;
            anyhow::Ok(out.trim() == "yes")
        }
    };
    for (verb, resource) in [
        ("patch", "deployments.apps/scale"),
        ("watch", "deployments.apps"),
        ("watch", "endpointslices.discovery.k8s.io"),
        ("create", "wasmplugins.extensions.istio.io"),
        ("create", "events.events.k8s.io"),
    ] {
        assert!(
            can(verb, resource).await?,
            "the controller needs {verb} {resource}"
        );
    }
    for (verb, resource) in [
        ("update", "deployments.apps"),
        ("delete", "deployments.apps"),
        ("create", "pods"),
        ("get", "secrets"),
        ("patch", "services"),
    ] {
        assert!(
            !can(verb, resource).await?,
            "the controller must not {verb} {resource}"
        );
    }
    // Leader election: its own Lease, and the leader label on pods of its own namespace only.
    let can_in = |verb: &'static str, resource: &'static str, ns: &'static str| {
        let bed = bed.clone();
        async move {
            let (_, out) = kubectl(&bed, &["auth", "can-i", sa, verb, resource, "-n", ns]).await?;
            anyhow::Ok(out.trim() == "yes")
        }
    };
    let lease = "leases.coordination.k8s.io/kzscaler-controller";
    assert!(can_in("update", lease, "kzscaler-system").await?);
    assert!(can_in("patch", "pods", "kzscaler-system").await?);
    assert!(
        !can_in(
            "update",
            "leases.coordination.k8s.io/someone-else",
            "kzscaler-system"
        )
        .await?,
        "only its own Lease"
    );
    assert!(!can_in("update", lease, "default").await?);
    assert!(
        !can_in("patch", "pods", "default").await?,
        "pods outside kzscaler-system"
    );
    let webhook = "--as=system:serviceaccount:kzscaler-system:kzscaler-webhook";
    let (_, out) = kubectl(&bed, &["auth", "can-i", webhook, "list", "pods", "-A"]).await?;
    assert_eq!(out.trim(), "no", "the webhook reads nothing from the API");
    Ok(())
}
