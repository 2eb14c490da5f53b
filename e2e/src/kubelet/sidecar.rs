//! The `istio-proxy` container: pilot-agent (Istio's own agent, in the machine's namespace so it
//! reaches istiod on 127.0.0.1) starting Envoy inside the pod's network namespace.
//!
//! pilot-agent writes Envoy's real bootstrap, proxies xDS to istiod over a unix socket in the
//! pod's folder, downloads WasmPlugin modules (sha256 checked) and rewrites ECDS to the local
//! copy. Two things are arranged around it, as a kubelet and Istio's injector would:
//! - its Wasm cache, the absolute `/var/lib/istio/data`, is a bind mount of the pod's own
//!   folder in a private mount namespace;
//! - Envoy's admin port is reachable on 127.0.0.1 outside the pod too (a `hostPort` bridge), so
//!   pilot-agent's readiness and drain calls reach it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Stdio;

use anyhow::Context as _;
use serde_json::{Value, json};

/// What every sidecar shares.
#[derive(Debug, Clone)]
pub struct Istio {
    /// The pilot-agent binary.
    pub agent: PathBuf,
    /// The Envoy binary.
    pub envoy: PathBuf,
    /// Istio's bootstrap template (`tools/packaging/common/envoy_bootstrap.json`).
    pub bootstrap_template: PathBuf,
    /// istiod's plaintext xDS address.
    pub discovery: String,
    /// The cluster domain.
    pub domain: String,
}

/// One sidecar to start.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Pod name and namespace.
    pub pod: String,
    /// The pod's namespace.
    pub namespace: String,
    /// The pod's address.
    pub ip: String,
    /// Its ServiceAccount.
    pub service_account: String,
    /// Its labels (Istio's `LABELS` metadata).
    pub labels: BTreeMap<String, String>,
    /// Its annotations (the downward API file pilot-agent reads: stats inclusion and such;
    /// `proxy.istio.io/config`, JSON, is merged over our `PROXY_CONFIG`).
    pub annotations: BTreeMap<String, String>,
    /// The workload (Deployment) it belongs to.
    pub workload: String,
    /// The container's own environment (ISTIO_META_* and the like).
    pub env: Vec<(String, String)>,
    /// Envoy's admin port (the same number inside the pod and on 127.0.0.1 outside).
    pub admin_port: u16,
    /// pilot-agent's status port on 127.0.0.1 (`/healthz/ready`).
    pub status_port: u16,
    /// The pod's network namespace.
    pub netns: String,
    /// The pod's folder.
    pub dir: PathBuf,
}

/// A running pilot-agent with its Envoy (one process group): stopped on drop.
#[derive(Debug)]
pub struct Sidecar {
    child: std::process::Child,
    /// The pod's folder, where `pilot-agent.log` is.
    pub dir: PathBuf,
}

impl Drop for Sidecar {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(self.dir.join(PGID_FILE));
        let pgid = nix::unistd::Pid::from_raw(i32::try_from(self.child.id()).unwrap_or(0));
        // The group holds pilot-agent, Envoy and the shell around them: end them all.
        let _ = nix::sys::signal::killpg(pgid, nix::sys::signal::Signal::SIGKILL);
        let _ = self.child.wait();
    }
}

/// The pod annotation with ProxyConfig overrides, as Istio's injector reads it.
pub const PROXY_CONFIG_ANNOTATION: &str = "proxy.istio.io/config";

/// pilot-agent's `PROXY_CONFIG` for this sidecar: ours, then the pod's annotation over it.
pub fn proxy_config(istio: &Istio, spec: &Spec, envoy_wrapper: &Path) -> anyhow::Result<Value> {
    let mut config = json!({
        "binaryPath": envoy_wrapper,
        "discoveryAddress": istio.discovery,
        "controlPlaneAuthPolicy": "NONE",
        "proxyAdminPort": spec.admin_port,
        "statusPort": spec.status_port,
        "configPath": "./etc/istio/proxy",
        "concurrency": 1,
        "drainDuration": "1s",
        "terminationDrainDuration": "1s",
    });
    if let Some(annotation) = spec.annotations.get(PROXY_CONFIG_ANNOTATION) {
        let overrides: Value = serde_json::from_str(annotation).with_context(|| {
            format!("annotation proxy.istio.io/config {annotation:?}: expected a JSON object")
        })?;
        let (Some(base), Some(over)) = (config.as_object_mut(), overrides.as_object()) else {
            anyhow::bail!(
                "annotation proxy.istio.io/config {annotation:?}: expected a JSON object"
            );
        };
        for (k, v) in over {
            base.insert(k.clone(), v.clone());
        }
    }
    Ok(config)
}

/// Starts pilot-agent for `spec`; its log (Envoy's too) goes to `<dir>/pilot-agent.log`.
pub fn start(istio: &Istio, spec: &Spec) -> anyhow::Result<Sidecar> {
    let dir = &spec.dir;
    for sub in [
        "etc/istio/proxy",
        "etc/istio/pod",
        "var/lib/istio/envoy",
        "var/run/secrets",
        "wasm-cache",
    ] {
        std::fs::create_dir_all(dir.join(sub))
            .with_context(|| format!("creating {}", dir.join(sub).display()))?;
    }
    // pilot-agent reads its bootstrap template from this relative path.
    std::fs::copy(
        &istio.bootstrap_template,
        dir.join("var/lib/istio/envoy/envoy_bootstrap_tmpl.json"),
    )
    .with_context(|| format!("copying {}", istio.bootstrap_template.display()))?;
    // The downward API volume Istio's injector mounts: labels and annotations, `key="value"`.
    std::fs::write(dir.join("etc/istio/pod/labels"), downward_api(&spec.labels))?;
    std::fs::write(
        dir.join("etc/istio/pod/annotations"),
        downward_api(&spec.annotations),
    )?;
    let wrapper = dir.join("envoy-in-pod");
    std::fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\n# Envoy in pod {}/{}'s network namespace.\nexec ip netns exec {} {} \"$@\"\n",
            spec.namespace,
            spec.pod,
            spec.netns,
            istio.envoy.display()
        ),
    )?;
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755))?;
    let config = proxy_config(istio, spec, &wrapper)?;
    let labels = serde_json::to_string(&spec.labels)?;
    std::fs::create_dir_all("/var/lib/istio/data").context("creating /var/lib/istio/data")?;
    let log = std::fs::File::create(dir.join("pilot-agent.log"))?;
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg("mount --bind \"$1\" /var/lib/istio/data && shift && exec \"$@\"")
        .arg("sh")
        .arg(dir.join("wasm-cache"))
        .arg(&istio.agent)
        .args(["proxy", "sidecar"])
        .args([
            "--domain",
            &format!("{}.svc.{}", spec.namespace, istio.domain),
        ])
        .args([
            "--proxyLogLevel",
            "warning",
            "--proxyComponentLogLevel",
            "wasm:info,misc:error",
        ])
        .args(["--log_output_level", "default:warn,wasm:info"])
        .current_dir(dir)
        .env_clear()
        .env("PATH", std::env::var("PATH").unwrap_or_default())
        .env("HOME", dir)
        .env("POD_NAME", &spec.pod)
        .env("POD_NAMESPACE", &spec.namespace)
        .env("INSTANCE_IP", &spec.ip)
        .env("SERVICE_ACCOUNT", &spec.service_account)
        .env("ISTIO_META_CLUSTER_ID", "Kubernetes")
        .env("ISTIO_META_INTERCEPTION_MODE", "NONE")
        .env("ISTIO_META_WORKLOAD_NAME", &spec.workload)
        .env("ISTIO_METAJSON_LABELS", labels)
        .env("CA_ADDR", &istio.discovery)
        .env("PROXY_CONFIG", config.to_string());
    for (k, v) in &spec.env {
        cmd.env(k, v);
    }
    use std::os::unix::process::CommandExt as _;
    let child = cmd
        .process_group(0)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", istio.agent.display()))?;
    // So that a kubelet killed without cleaning up can end this group at its next start.
    std::fs::write(dir.join(PGID_FILE), format!("{}\n", child.id()))?;
    Ok(Sidecar {
        child,
        dir: dir.clone(),
    })
}

/// A downward API file: one `key="value"` line per entry, the value quoted as Go's `%q` does
/// for the text Kubernetes allows (JSON string escaping agrees with it there).
pub fn downward_api(map: &BTreeMap<String, String>) -> String {
    map.iter()
        .map(|(k, v)| format!("{k}={}\n", Value::String(v.clone())))
        .collect()
}

/// The file in a pod's folder holding its sidecar's process group.
pub const PGID_FILE: &str = "pilot-agent.pgid";

/// Ends the sidecars an earlier kubelet started and left running (their `PGID_FILE`s under
/// `root`), so their ports are free again.
pub fn stop_leftovers(root: &Path) {
    let Ok(namespaces) = std::fs::read_dir(root) else {
        return;
    };
    for ns in namespaces.flatten() {
        let Ok(pods) = std::fs::read_dir(ns.path()) else {
            continue;
        };
        for pod in pods.flatten() {
            let file = pod.path().join(PGID_FILE);
            let Some(pgid) = std::fs::read_to_string(&file)
                .ok()
                .and_then(|t| t.trim().parse::<i32>().ok())
            else {
                continue;
            };
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(pgid),
                nix::sys::signal::Signal::SIGKILL,
            );
            let _ = std::fs::remove_file(&file);
            tracing::info!(pgid, pod = %pod.path().display(), "stopped a sidecar an earlier kubelet left running");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(proxy_config: Option<&str>) -> Spec {
        let annotations = proxy_config
            .map(|c| (PROXY_CONFIG_ANNOTATION.to_owned(), c.to_owned()))
            .into_iter()
            .collect();
        Spec {
            pod: "caller".into(),
            namespace: "shop".into(),
            ip: "10.244.0.2".into(),
            service_account: "default".into(),
            labels: BTreeMap::new(),
            annotations,
            workload: "caller".into(),
            env: Vec::new(),
            admin_port: 15000,
            status_port: 15020,
            netns: "kzscaler-10-244-0-2".into(),
            dir: PathBuf::from("/tmp/x"),
        }
    }

    fn istio() -> Istio {
        Istio {
            agent: "pilot-agent".into(),
            envoy: "envoy".into(),
            bootstrap_template: "t.json".into(),
            discovery: "127.0.0.1:15010".into(),
            domain: "cluster.local".into(),
        }
    }

    #[test]
    fn the_pods_proxy_config_annotation_overrides_the_defaults() -> anyhow::Result<()> {
        let w = Path::new("/w");
        let base = proxy_config(&istio(), &spec(None), w)?;
        assert_eq!(base["discoveryAddress"], "127.0.0.1:15010");
        assert_eq!(base["concurrency"], 1);
        assert_eq!(base["proxyAdminPort"], 15000);
        let over = proxy_config(
            &istio(),
            &spec(Some(
                r#"{"concurrency": 2, "discoveryAddress": "127.0.0.1:1"}"#,
            )),
            w,
        )?;
        assert_eq!(over["concurrency"], 2);
        assert_eq!(over["discoveryAddress"], "127.0.0.1:1");
        assert_eq!(over["statusPort"], 15020, "the rest stays");
        let err = proxy_config(&istio(), &spec(Some("concurrency: 2")), w).unwrap_err();
        assert!(
            format!("{err:#}").contains("proxy.istio.io/config"),
            "{err:#}"
        );
        Ok(())
    }

    #[test]
    fn downward_api_files_quote_values_as_istio_reads_them() {
        let mut m = BTreeMap::new();
        m.insert("app".to_owned(), "web".to_owned());
        m.insert("note".to_owned(), "a \"b\"\nc".to_owned());
        assert_eq!(downward_api(&m), "app=\"web\"\nnote=\"a \\\"b\\\"\\nc\"\n");
    }
}
