//! The release as a user gets it (`hack/release.sh --push`, which `hack/test.sh` runs before
//! these tests): the images and the Wasm artifact pulled back from the test bed's registry by
//! digest; the controller and the webhook run from their images by runc with the settings of
//! `manifests/`; the kubectl plugin installed by krew from the release archive; the Helm chart
//! rendering `manifests/` and applying on the API server.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::oci::{
    PodContext, RuncContainer, blob, built_digests, dist_dir, manifest_deployment, pull, run,
    runtime_config,
};
use kzscaler_e2e::testbed::{TestBed, repo_root, testbed_binary};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(60);

fn registry(bed: &TestBed) -> anyhow::Result<&str> {
    bed.registry.as_deref().context(
        "the test bed has no KZSCALER_REGISTRY: restart it (hack/local-down.sh && hack/local-up.sh)",
    )
}

fn json_file(path: &Path) -> anyhow::Result<serde_json::Value> {
    serde_json::from_slice(
        &std::fs::read(path).with_context(|| format!("reading {}", path.display()))?,
    )
    .with_context(|| format!("{}: not JSON", path.display()))
}

/// The image's manifest and config, from a pulled layout.
fn manifest_and_config(
    layout: &Path,
    digest: &str,
) -> anyhow::Result<(serde_json::Value, serde_json::Value)> {
    let manifest: serde_json::Value = serde_json::from_slice(&blob(layout, digest)?)?;
    let config_digest = manifest["config"]["digest"]
        .as_str()
        .context("manifest without config")?;
    let config: serde_json::Value = serde_json::from_slice(&blob(layout, config_digest)?)?;
    Ok((manifest, config))
}

#[tokio::test]
async fn the_registry_gives_back_by_digest_what_was_built_images_from_scratch_and_the_wasm_artifact()
-> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let registry = registry(&bed)?;
    let digests = built_digests()?;
    let tmp = tempfile::tempdir()?;
    let version = env!("CARGO_PKG_VERSION");
    for name in ["kzscaler-controller", "kzscaler-webhook"] {
        let (tag, digest) = digests
            .get(name)
            .with_context(|| format!("{name} not in dist/digests.txt"))?;
        assert_eq!(
            tag, version,
            "{name}: tagged {tag}, the workspace is {version}"
        );
        let layout = pull(registry, name, digest, tmp.path())?;
        let (_, config) = manifest_and_config(&layout, digest)?;
        let c = &config["config"];
        assert_eq!(c["User"], "65532:65532", "{name}: {c}");
        assert_eq!(
            c["Entrypoint"],
            json!([format!("/usr/local/bin/{name}")]),
            "{name}: {c}"
        );
        assert_eq!(
            c["Labels"]["org.opencontainers.image.version"], version,
            "{name}: {c}"
        );
        // From scratch: the binary, CA certificates, passwd/group; no shell, no other program.
        let bundle = tmp.path().join(format!("{name}-bundle"));
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:pulled", layout.display()))
            .arg(&bundle))?;
        let rootfs = bundle.join("rootfs");
        assert!(
            rootfs.join("etc/ssl/certs/ca-certificates.crt").is_file(),
            "{name}: no CA certificates"
        );
        assert!(
            !rootfs.join("bin/sh").exists() && !rootfs.join("bin").exists(),
            "{name}: has /bin"
        );
        let programs: Vec<String> = std::fs::read_dir(rootfs.join("usr/local/bin"))?
            .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
            .collect::<Result<_, _>>()?;
        assert_eq!(programs, vec![name.to_owned()], "{name}: /usr/local/bin");
        let passwd = std::fs::read_to_string(rootfs.join("etc/passwd"))?;
        assert!(
            passwd.contains(":65532:65532:"),
            "{name}: /etc/passwd has no user 65532:\n{passwd}"
        );
        // The binary is the one built (whose --version names this commit).
        let built = std::fs::read(dist_dir()?.join("bin").join(name))?;
        assert!(
            std::fs::read(rootfs.join("usr/local/bin").join(name))? == built,
            "{name}: the image's binary is not dist/bin/{name}"
        );
        let sbom = json_file(&dist_dir()?.join(format!("sbom/{name}.cdx.json")))?;
        assert_eq!(sbom["metadata"]["component"]["name"], name);
        assert!(
            sbom["components"].as_array().is_some_and(|c| c.len() > 50),
            "{name}: the SBOM lists too few components"
        );
    }
    // The Wasm module: the OCI artifact layout Istio's WasmPlugin pulls (the "oci" variant:
    // two layers, the module as application/vnd.module.wasm.content.layer.v1+wasm, byte for
    // byte the built one, and its runtime configuration).
    let (_, digest) = digests
        .get("kzscaler-filter")
        .context("kzscaler-filter not in dist/digests.txt")?;
    let layout = pull(registry, "kzscaler-filter", digest, tmp.path())?;
    let (manifest, _) = manifest_and_config(&layout, digest)?;
    assert_eq!(
        manifest["config"]["mediaType"],
        "application/vnd.module.wasm.config.v1+json"
    );
    let layers = manifest["layers"].as_array().context("no layers")?;
    assert_eq!(layers.len(), 2, "{manifest}");
    assert_eq!(
        layers[1]["mediaType"],
        "application/vnd.module.wasm.config.v1+json"
    );
    assert_eq!(
        layers[0]["mediaType"],
        "application/vnd.module.wasm.content.layer.v1+wasm"
    );
    let module = blob(&layout, layers[0]["digest"].as_str().unwrap_or_default())?;
    let built = std::fs::read(kzscaler_e2e::testbed::filter_module()?)?;
    assert!(
        module == built,
        "the pulled module is not target/wasm32-wasip1/wasm/kzscaler_filter.wasm"
    );
    Ok(())
}

/// Pulls `name` by its built digest and starts it with runc as the manifest's Deployment
/// `deployment` (container `container`) would run.
fn start_from_image(
    bed: &TestBed,
    name: &str,
    manifest: &str,
    container: &str,
    pod: &PodContext,
    dir: &Path,
) -> anyhow::Result<RuncContainer> {
    let (_, digest) = built_digests()?
        .remove(name)
        .with_context(|| format!("{name} not in dist/digests.txt"))?;
    let layout = pull(registry(bed)?, name, &digest, dir)?;
    let file = repo_root().join("manifests").join(manifest);
    let deployment = manifest_deployment(&file, name)?;
    RuncContainer::start(
        &layout,
        "pulled",
        &dir.join("bundle"),
        &format!("kzscaler-e2e-{name}-{}", std::process::id()),
        |base| runtime_config(base, &deployment, container, pod),
    )
}

/// The container's process as the host sees it: (uid line, whether / is mounted read-only).
/// What the host sees of the container's process, from /proc.
#[derive(Debug)]
struct ProcessView {
    /// Real, effective, saved and filesystem uids.
    uids: Vec<String>,
    /// Effective and bounding capability sets (hex).
    caps: (String, String),
    /// no_new_privs.
    no_new_privs: bool,
    /// `/` is mounted read-only.
    root_ro: bool,
}

fn process_view(c: &RuncContainer) -> anyhow::Result<ProcessView> {
    let pid = c.pid()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let field = |name: &str| -> anyhow::Result<String> {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(|v| v.trim().to_owned())
            .with_context(|| format!("/proc/{pid}/status has no {name}"))
    };
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    let root_ro = mountinfo
        .lines()
        .map(|l| l.split(' ').collect::<Vec<_>>())
        .any(|f| {
            f.get(4) == Some(&"/") && f.get(5).is_some_and(|o| o.split(',').any(|o| o == "ro"))
        });
    Ok(ProcessView {
        uids: field("Uid:")?
            .split_whitespace()
            .map(str::to_owned)
            .collect(),
        caps: (field("CapEff:")?, field("CapBnd:")?),
        no_new_privs: field("NoNewPrivs:")? == "1",
        root_ro,
    })
}

/// The securityContext of manifests/: uid 65532, no capabilities, no privilege escalation,
/// read-only root.
fn assert_locked_down(name: &str, v: &ProcessView) {
    assert!(
        v.uids.len() == 4 && v.uids.iter().all(|u| u == "65532"),
        "{name} runs as 65532: {v:?}"
    );
    let none = "0000000000000000";
    assert!(
        v.caps.0 == none && v.caps.1 == none,
        "{name} has no capabilities (drop: [ALL]): {v:?}"
    );
    assert!(
        v.no_new_privs,
        "{name}: allowPrivilegeEscalation: false: {v:?}"
    );
    assert!(v.root_ro, "{name}: readOnlyRootFilesystem: {v:?}");
}

fn api_server_port(bed: &TestBed) -> anyhow::Result<u16> {
    let url = bed
        .apiserver
        .as_deref()
        .context("the test bed has no KZSCALER_APISERVER")?;
    url.rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("KZSCALER_APISERVER {url:?} has no port"))
}

/// The address a manifest's `--listen=` argument names, reached on 127.0.0.1.
fn listen_port(manifest: &str, name: &str, container: &str) -> anyhow::Result<u16> {
    let d = manifest_deployment(&repo_root().join("manifests").join(manifest), name)?;
    let args = d
        .spec
        .and_then(|s| s.template.spec)
        .and_then(|s| s.containers.into_iter().find(|c| c.name == container))
        .and_then(|c| c.args)
        .unwrap_or_default();
    args.iter()
        .find_map(|a| a.strip_prefix("--listen="))
        .and_then(|l| l.rsplit(':').next())
        .and_then(|p| p.parse().ok())
        .with_context(|| format!("manifests/{manifest}: no --listen=HOST:PORT in {args:?}"))
}

/// GET `path` from the container's server on 127.0.0.1:`port`: (status, body).
async fn http_get(bed: &TestBed, port: u16, path: &str) -> anyhow::Result<(u16, String)> {
    let r = bed
        .get_from(
            &format!("127.0.0.1:{port}"),
            "127.0.0.1",
            path,
            Duration::from_secs(5),
        )
        .await?;
    Ok((r.status, r.body))
}

#[tokio::test]
async fn the_controller_runs_from_its_image_with_the_manifests_settings_and_a_projected_token()
-> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let tmp = tempfile::tempdir()?;
    // The projected ServiceAccount token, as a kubelet mounts it.
    let sa = tmp.path().join("serviceaccount");
    std::fs::create_dir_all(&sa)?;
    let token = run(Command::new(testbed_binary("kubectl")?)
        .env("KUBECONFIG", &bed.kubeconfig)
        .args([
            "-n",
            "kzscaler-system",
            "create",
            "token",
            "kzscaler-controller",
            "--duration",
            "1h",
        ]))?;
    std::fs::write(sa.join("token"), token.trim())?;
    std::fs::copy(bed.state_dir.join("pki/ca.crt"), sa.join("ca.crt"))?;
    std::fs::write(sa.join("namespace"), "kzscaler-system")?;
    let pod = PodContext {
        name: "kzscaler-controller-image".into(),
        namespace: "kzscaler-system".into(),
        service_account: Some(sa),
        api_server: ("127.0.0.1".into(), api_server_port(&bed)?),
        ..PodContext::default()
    };
    // Its pod, whose leader label it keeps (--label-pod) through its token: Pending, no node
    // runs it. Labelled leader at first: a follower removes that.
    let pods = Api::<Pod>::namespaced(bed.client.clone(), "kzscaler-system");
    let _ = pods
        .delete(&pod.name, &DeleteParams::default().grace_period(0))
        .await;
    pods.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "metadata": {"name": pod.name, "labels": {kzscaler_core::names::LEADER_LABEL: "true"}},
            "spec": {"nodeSelector": {"type": "none"}, "containers": [{"name": "controller", "image": "kzscaler-controller"}]}
        }))?,
    )
    .await?;
    let port = listen_port("controller.yaml", "kzscaler-controller", "controller")?;
    let c = start_from_image(
        &bed,
        "kzscaler-controller",
        "controller.yaml",
        "controller",
        &pod,
        tmp.path(),
    )?;
    // Ready = its first lists of every watched kind are in, through its token and RBAC. The
    // test bed's own controller leads, so this one follows and names the leader.
    let ready = kzscaler_e2e::wait::until(
        "the controller from its image to be ready",
        WAIT,
        || async {
            anyhow::ensure!(
                c.pid().is_ok(),
                "the container stopped:\n{}",
                c.log_tail(30)
            );
            Ok((http_get(&bed, port, "/readyz").await?.0 == 200).then_some(()))
        },
    )
    .await;
    ready.with_context(|| c.log_tail(30))?;
    let (code, body) = http_get(&bed, port, "/leaderz").await?;
    assert_eq!(code, 503, "a follower: {body}");
    let (code, module) = http_get(&bed, port, "/v1/module").await?;
    assert_eq!(
        code, 200,
        "the image serves the module it carries (--module-file)"
    );
    assert!(!module.is_empty());
    assert_locked_down("the controller", &process_view(&c)?);
    // It wrote with its ServiceAccount's token: a follower's pod loses the leader label.
    let labelled = kzscaler_e2e::wait::until(
        "the controller from its image to remove kzscaler.io/leader from its pod",
        WAIT,
        || async {
            let p = pods.get(&pod.name).await?;
            let leader = p
                .metadata
                .labels
                .and_then(|l| l.get(kzscaler_core::names::LEADER_LABEL).cloned());
            Ok(leader.is_none().then_some(()))
        },
    )
    .await;
    pods.delete(&pod.name, &DeleteParams::default().grace_period(0))
        .await?;
    labelled.with_context(|| c.log_tail(30))?;
    Ok(())
}

#[tokio::test]
async fn the_webhook_runs_from_its_image_and_the_api_server_calls_it() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let tmp = tempfile::tempdir()?;
    // The Secret kzscaler-webhook-tls as the kubelet mounts it: the test bed's serving
    // certificate for 127.0.0.1.
    let pki = bed.state_dir.join("pki/webhook");
    let secret = tmp.path().join("tls");
    std::fs::create_dir_all(&secret)?;
    for f in ["tls.crt", "tls.key"] {
        std::fs::copy(pki.join(f), secret.join(f))?;
        // A Secret volume's files have its defaultMode: 0644 unless the manifest says.
        let mut perms = std::fs::metadata(secret.join(f))?.permissions();
        std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o644);
        std::fs::set_permissions(secret.join(f), perms)?;
    }
    let pod = PodContext {
        name: "kzscaler-webhook-image".into(),
        namespace: "kzscaler-system".into(),
        secrets: [("kzscaler-webhook-tls".to_owned(), secret)].into(),
        // The manifest opts out of the token (automountServiceAccountToken: false): given
        // anyway, it must not be mounted.
        service_account: Some(tmp.path().to_owned()),
        api_server: ("127.0.0.1".into(), api_server_port(&bed)?),
    };
    let port = listen_port("webhook.yaml", "kzscaler-webhook", "webhook")?;
    let c = start_from_image(
        &bed,
        "kzscaler-webhook",
        "webhook.yaml",
        "webhook",
        &pod,
        tmp.path(),
    )?;
    assert_locked_down("the webhook", &process_view(&c)?);
    let mounts = std::fs::read_to_string(format!("/proc/{}/mountinfo", c.pid()?))?;
    assert!(
        !mounts.contains("/var/run/secrets/kubernetes.io/serviceaccount"),
        "no token mounted:\n{mounts}"
    );
    // The API server calls it for pods in a namespace of this test's.
    let ns = TempNamespace::create(&bed, "image-webhook", &[]).await?;
    let name = format!("e2e-{}", ns.name);
    let ca = std::fs::read(pki.join("ca.crt"))?;
    let mwc = kzscaler_e2e::kz::private_pod_webhook(&name, port, &ca, &ns.name)?;
    let mwcs = Api::<MutatingWebhookConfiguration>::all(bed.client.clone());
    mwcs.create(&PostParams::default(), &mwc).await?;
    let result = ns
        .wait_for(
            "the webhook from its image to label a pod for the filter",
            WAIT,
            || async {
                Ok(kzscaler_e2e::kz::probe_labelled_for_filter(&ns)
                    .await?
                    .then_some(()))
            },
        )
        .await;
    mwcs.delete(&name, &DeleteParams::default()).await?;
    result.with_context(|| c.log_tail(30))?;
    ns.cleanup().await
}

#[tokio::test]
async fn krew_installs_the_plugin_from_the_release_archive_and_it_runs() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    let dist = dist_dir()?;
    let root = tempfile::tempdir()?;
    let krew = || -> anyhow::Result<Command> {
        let mut cmd = Command::new(testbed_binary("kubectl-krew")?);
        cmd.env("KREW_ROOT", root.path())
            .env("KUBECONFIG", &bed.kubeconfig);
        Ok(cmd)
    };
    let out = run(krew()?
        .arg("install")
        .arg(format!(
            "--manifest={}",
            dist.join("krew/kzscaler.yaml").display()
        ))
        .arg(format!(
            "--archive={}",
            dist.join("kubectl-kzscaler_linux_amd64.tar.gz").display()
        )))?;
    // krew's record of it (`krew list` needs the plugin index, fetched from GitHub).
    let receipt = std::fs::read_to_string(root.path().join("receipts/kzscaler.yaml"))
        .with_context(|| format!("no krew receipt for kzscaler; krew install said:\n{out}"))?;
    assert!(
        receipt.contains(&format!("version: v{}", env!("CARGO_PKG_VERSION"))),
        "{receipt}"
    );
    // kubectl finds it on PATH, as krew tells users to set it.
    let bin: PathBuf = root.path().join("bin");
    let path = format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let kubectl = || -> anyhow::Result<Command> {
        let mut cmd = Command::new(testbed_binary("kubectl")?);
        cmd.env("PATH", &path).env("KUBECONFIG", &bed.kubeconfig);
        Ok(cmd)
    };
    let version = run(kubectl()?.args(["kzscaler", "--version"]))?;
    assert!(
        version.contains(kzscaler_core::VERSION),
        "kubectl kzscaler --version: {version:?}, expected {}",
        kzscaler_core::VERSION
    );
    // It reads the test bed's API server: a table, or (nothing managed) its one-line notice.
    let out = kubectl()?.args(["kzscaler", "status", "-A"]).output()?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success()
            && (text.contains("NAMESPACE") || text.contains("No Deployments managed by kzscaler")),
        "kubectl kzscaler status -A ({}):\n{text}",
        out.status
    );
    Ok(())
}

#[tokio::test]
async fn the_chart_renders_manifests_and_applies_with_other_values() -> anyhow::Result<()> {
    let bed = TestBed::connect().await?;
    // manifests/ is what the chart renders with its defaults (and helm lint passes).
    run(Command::new("bash")
        .arg(repo_root().join("hack/render-manifests.sh"))
        .arg("--check"))?;
    // Other values: a registry of the user's, an OCI module, a namespace selector, cert-manager
    // off. The server accepts all of it (dry run).
    let chart = repo_root().join("charts/kzscaler");
    let rendered = run(Command::new(testbed_binary("helm")?)
        .args(["template", "kzscaler"])
        .arg(&chart)
        .args([
            "--namespace", "kzscaler-system",
            "--set", "image.registry=registry.example.com/team",
            "--set", "image.tag=9.9.9",
            "--set", "controller.moduleUrl=oci://registry.example.com/team/kzscaler-filter:9.9.9",
            "--set", "controller.moduleSha256=0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "--set", "controller.namespaceSelector=team=shop",
            "--set", "controller.replicas=3",
        ]))?;
    for expected in [
        "image: registry.example.com/team/kzscaler-controller:9.9.9",
        "image: registry.example.com/team/kzscaler-webhook:9.9.9",
        "- --module-url=oci://registry.example.com/team/kzscaler-filter:9.9.9",
        "- --module-sha256=0123456789abcdef",
        "- \"--namespace-selector=team=shop\"",
        "replicas: 3",
    ] {
        assert!(
            rendered.contains(expected),
            "{expected:?} not in:\n{rendered}"
        );
    }
    // The OCI module replaces the one the image carries: with --module-file, the controller
    // would put the file's sha256 in the WasmPlugins, not the manifest's digest.
    assert!(
        !rendered.contains("--module-file"),
        "--module-file with an OCI module:\n{rendered}"
    );
    assert!(
        !rendered.contains("kind: Namespace"),
        "helm install makes the namespace before the chart's resources"
    );
    // An OCI module without its digest is refused, naming the value.
    let out = Command::new(testbed_binary("helm")?)
        .args(["template", "kzscaler"])
        .arg(&chart)
        .args(["--set", "controller.moduleUrl=oci://r/kzscaler-filter:1"])
        .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("controller.moduleSha256"),
        "helm template with moduleUrl and no moduleSha256 ({}): {err}",
        out.status
    );
    let file = tempfile::NamedTempFile::new()?;
    std::fs::write(file.path(), &rendered)?;
    let out = run(Command::new(testbed_binary("kubectl")?)
        .env("KUBECONFIG", &bed.kubeconfig)
        .args(["apply", "--dry-run=server", "-f"])
        .arg(file.path()))?;
    assert!(out.contains("deployment.apps/kzscaler-controller"), "{out}");
    Ok(())
}

#[tokio::test]
async fn pilot_agent_pulls_the_filter_from_the_registry_by_digest_and_it_wakes_a_deployment()
-> anyhow::Result<()> {
    use kzscaler_e2e::kz::{
        PrivateMesh, Setup, cluster, create_managed, replicas, wait_filter_sees,
    };
    let bed = TestBed::connect().await?;
    let (tag, digest) = built_digests()?
        .remove("kzscaler-filter")
        .context("kzscaler-filter not in dist/digests.txt")?;
    let hex = digest
        .strip_prefix("sha256:")
        .context("digest is not sha256:<hex>")?
        .to_owned();
    // By tag, with the manifest's sha256 checked by pilot-agent (the WasmPlugin's sha256).
    let url = format!("oci://{}/kzscaler/kzscaler-filter:{tag}", registry(&bed)?);
    let ns = TempNamespace::create(&bed, "oci", &[]).await?;
    // The mesh waits until the caller's Envoy has the filter: pilot-agent pulled it.
    let mesh = PrivateMesh::start_setup(
        &bed,
        &ns.name,
        Setup {
            namespace: Some(ns.name.clone()),
            module: Some((url.clone(), hex)),
            ..Setup::kzscaler()?
        },
    )
    .await?;
    let wp: Api<kube::api::DynamicObject> = Api::namespaced_with(
        bed.client.clone(),
        &ns.name,
        &kzscaler_controller::wasmplugin::api_resource(),
    );
    let plugins = wp.list(&Default::default()).await?;
    assert!(
        plugins
            .items
            .iter()
            .any(|p| p.data["spec"]["url"] == url.as_str()),
        "the controllers' WasmPlugin names {url}"
    );
    create_managed(&ns, "web", 0, &[]).await?;
    let ctl = mesh.controller_addr.to_string();
    wait_filter_sees(
        &ns,
        &ctl,
        &cluster(&ns.name, "web", 80),
        kzscaler_core::wire::State::Asleep,
    )
    .await?;
    let r = bed
        .get_from(
            &mesh.envoy,
            &format!("web.{}", ns.name),
            "/",
            Duration::from_secs(30),
        )
        .await?;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(replicas(&ns, "web").await?, 1);
    drop(mesh);
    ns.cleanup().await
}

/// The `Containerfile` stage `target`: its USER, ENTRYPOINT, EXPOSE and ENV.
fn containerfile_stage(target: &str) -> anyhow::Result<serde_json::Value> {
    let text = std::fs::read_to_string(repo_root().join("Containerfile"))?;
    let mut in_stage = false;
    let mut out = json!({"Env": []});
    for line in text.lines().map(str::trim) {
        if let Some(from) = line.strip_prefix("FROM ") {
            in_stage = from.ends_with(&format!(" AS {target}"));
            continue;
        }
        if !in_stage {
            continue;
        }
        if let Some(u) = line.strip_prefix("USER ") {
            out["User"] = json!(u);
        } else if let Some(e) = line.strip_prefix("ENTRYPOINT ") {
            out["Entrypoint"] =
                serde_json::from_str(e).with_context(|| format!("ENTRYPOINT {e}"))?;
        } else if let Some(p) = line.strip_prefix("EXPOSE ") {
            out["ExposedPorts"] = json!({p: {}});
        } else if let Some(e) = line.strip_prefix("ENV ")
            && let Some(env) = out["Env"].as_array_mut()
        {
            env.push(json!(e));
        }
    }
    anyhow::ensure!(
        out.get("User").is_some(),
        "Containerfile has no stage {target} with USER"
    );
    Ok(out)
}

#[tokio::test]
async fn the_containerfile_describes_the_images_release_sh_builds() -> anyhow::Result<()> {
    let dist = dist_dir()?;
    for (name, target) in [
        ("kzscaler-controller", "controller"),
        ("kzscaler-webhook", "webhook"),
    ] {
        let (_, digest) = built_digests()?
            .remove(name)
            .with_context(|| format!("{name} not built"))?;
        let layout = dist.join("images").join(name);
        let (_, config) = manifest_and_config(&layout, &digest)?;
        let want = containerfile_stage(target)?;
        let c = &config["config"];
        for key in ["User", "Entrypoint", "ExposedPorts"] {
            assert_eq!(
                c[key], want[key],
                "{name}: {key} (image) vs Containerfile --target {target}"
            );
        }
        let env = c["Env"].as_array().cloned().unwrap_or_default();
        for e in want["Env"].as_array().into_iter().flatten() {
            assert!(
                env.contains(e),
                "{name}: ENV {e} of the Containerfile is not in the image's {env:?}"
            );
        }
    }
    Ok(())
}

#[tokio::test]
async fn pilot_agent_refuses_the_filter_from_the_registry_when_its_sha256_differs()
-> anyhow::Result<()> {
    use kzscaler_core::names::{FILTER_LABEL, INJECTION_ENABLED, INJECTION_LABEL};
    let bed = TestBed::connect().await?;
    let (tag, digest) = built_digests()?
        .remove("kzscaler-filter")
        .context("kzscaler-filter not in dist/digests.txt")?;
    let url = format!("oci://{}/kzscaler/kzscaler-filter:{tag}", registry(&bed)?);
    // Not the manifest's digest: one digit changed.
    let hex = digest
        .strip_prefix("sha256:")
        .context("digest is not sha256:<hex>")?;
    let wrong: String = std::iter::once(if hex.starts_with('0') { '1' } else { '0' })
        .chain(hex.chars().skip(1))
        .collect();
    let ns = TempNamespace::create(&bed, "ocisha", &[(INJECTION_LABEL, INJECTION_ENABLED)]).await?;
    let wp: Api<kube::api::DynamicObject> = Api::namespaced_with(
        bed.client.clone(),
        &ns.name,
        &kzscaler_controller::wasmplugin::api_resource(),
    );
    wp.create(
        &PostParams::default(),
        &serde_json::from_value(json!({
            "apiVersion": "extensions.istio.io/v1alpha1",
            "kind": "WasmPlugin",
            "metadata": {"name": "kzscaler-oci", "namespace": ns.name},
            "spec": {
                "selector": {"matchLabels": {FILTER_LABEL: "true"}},
                "url": url, "sha256": wrong, "failStrategy": "FAIL_OPEN",
                "pluginConfig": {}
            }
        }))?,
    )
    .await?;
    kzscaler_e2e::kz::create_caller(&bed.client, &ns.name, "caller", &[]).await?;
    let log = bed
        .state_dir
        .join("kubelet")
        .join(&ns.name)
        .join("caller/pilot-agent.log");
    let expected = format!("has checksum {}, which does not match: {wrong}", hex);
    ns.wait_for(
        "pilot-agent to refuse the module for its checksum",
        WAIT,
        || async {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            Ok(text.contains(&expected).then_some(()))
        },
    )
    .await
    .with_context(|| {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let wasm: Vec<&str> = text.lines().filter(|l| l.contains("wasm")).collect();
        format!(
            "expected {expected:?}; pilot-agent's wasm lines:\n{}",
            wasm.join("\n")
        )
    })?;
    ns.cleanup().await
}
