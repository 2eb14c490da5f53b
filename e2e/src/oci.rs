//! The release's images on the test bed: pulled from its registry by digest (oras), unpacked
//! (umoci) and run by a real OCI runtime (runc) the way a kubelet would run the container that
//! `manifests/` describes: its args, env, user, read-only root filesystem, capabilities and
//! volumes, and a projected ServiceAccount token.
//!
//! What differs from a kubelet, and why: the container shares the host's network namespace
//! (like `hostNetwork: true`), because the test bed's API server listens on 127.0.0.1 of the
//! host; and the seccomp profile is not applied (runc has no `RuntimeDefault` profile).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use anyhow::{Context as _, bail};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Container as PodContainer, PodSpec};

use crate::testbed::{repo_root, testbed_binary};

/// The release built by `hack/release.sh`: `dist/`.
pub fn dist_dir() -> anyhow::Result<PathBuf> {
    let dist = repo_root().join("dist");
    if !dist.join("digests.txt").is_file() {
        bail!(
            "{} has no release: run hack/release.sh --push (hack/test.sh does)",
            dist.display()
        );
    }
    Ok(dist)
}

/// `dist/digests.txt`: image name → (tag, digest).
pub fn built_digests() -> anyhow::Result<BTreeMap<String, (String, String)>> {
    let path = dist_dir()?.join("digests.txt");
    let text =
        std::fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = BTreeMap::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        let (reference, digest) = line.split_once(' ').with_context(|| {
            format!("{}: line {line:?} is not 'NAME:TAG DIGEST'", path.display())
        })?;
        let (name, tag) = reference
            .split_once(':')
            .with_context(|| format!("{}: {reference:?} is not NAME:TAG", path.display()))?;
        out.insert(name.to_owned(), (tag.to_owned(), digest.to_owned()));
    }
    Ok(out)
}

/// Runs a command; its stdout, or an error with the command line and its stderr.
pub fn run(cmd: &mut Command) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Copies `registry/kzscaler/<name>@<digest>` into an OCI layout `dir/<name>` tagged `pulled`,
/// and returns the layout's path after checking that its manifest has that digest.
pub fn pull(registry: &str, name: &str, digest: &str, dir: &Path) -> anyhow::Result<PathBuf> {
    let layout = dir.join(name);
    run(Command::new(testbed_binary("oras")?)
        .arg("cp")
        .arg("--from-plain-http")
        .arg(format!("{registry}/kzscaler/{name}@{digest}"))
        .arg("--to-oci-layout")
        .arg(format!("{}:pulled", layout.display())))?;
    let index: serde_json::Value = serde_json::from_slice(
        &std::fs::read(layout.join("index.json"))
            .with_context(|| format!("reading {}/index.json", layout.display()))?,
    )?;
    let got = index["manifests"][0]["digest"].as_str().unwrap_or_default();
    if got != digest {
        bail!("pulled {name}@{digest} but the layout's manifest is {got:?}");
    }
    Ok(layout)
}

/// A blob of an OCI layout, by digest.
pub fn blob(layout: &Path, digest: &str) -> anyhow::Result<Vec<u8>> {
    let hex = digest
        .strip_prefix("sha256:")
        .with_context(|| format!("digest {digest:?} is not sha256:<hex>"))?;
    let path = layout.join("blobs/sha256").join(hex);
    std::fs::read(&path).with_context(|| format!("reading {}", path.display()))
}

/// The Deployment `name` among the documents of a manifest file.
pub fn manifest_deployment(file: &Path, name: &str) -> anyhow::Result<Deployment> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    for doc in serde_yaml_ng::Deserializer::from_str(&text) {
        let value: serde_json::Value = serde::Deserialize::deserialize(doc)
            .with_context(|| format!("{}: not YAML", file.display()))?;
        if value["kind"] == "Deployment" && value["metadata"]["name"] == name {
            return serde_json::from_value(value)
                .with_context(|| format!("{}: Deployment {name}", file.display()));
        }
    }
    bail!("{} has no Deployment {name}", file.display())
}

/// What a kubelet would give the container besides the manifest itself.
#[derive(Debug, Default)]
pub struct PodContext {
    /// metadata.name and metadata.namespace (for fieldRef env).
    pub name: String,
    /// The pod's namespace.
    pub namespace: String,
    /// Host folders for the pod's Secret volumes, by secretName.
    pub secrets: BTreeMap<String, PathBuf>,
    /// A folder holding the projected ServiceAccount token (`token`, `ca.crt`, `namespace`),
    /// mounted at /var/run/secrets/kubernetes.io/serviceaccount unless the pod opts out.
    pub service_account: Option<PathBuf>,
    /// KUBERNETES_SERVICE_HOST and _PORT.
    pub api_server: (String, u16),
}

/// The token mount point in every pod.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

/// Turns umoci's runtime config of the image (`config`) into the config of the Deployment's
/// container `container`, as a kubelet would run it.
pub fn runtime_config(
    mut config: serde_json::Value,
    deployment: &Deployment,
    container: &str,
    pod: &PodContext,
) -> anyhow::Result<serde_json::Value> {
    let what = format!(
        "Deployment {}",
        deployment.metadata.name.as_deref().unwrap_or("?")
    );
    let spec: &PodSpec = deployment
        .spec
        .as_ref()
        .and_then(|s| s.template.spec.as_ref())
        .with_context(|| format!("{what}: no spec.template.spec"))?;
    let c: &PodContainer = spec
        .containers
        .iter()
        .find(|c| c.name == container)
        .with_context(|| format!("{what}: no container {container:?}"))?;
    let process = &mut config["process"];
    // Args: the image's entrypoint (or the container's command), then the container's args.
    let mut args: Vec<String> = match &c.command {
        Some(cmd) => cmd.clone(),
        None => serde_json::from_value(process["args"].clone())
            .context("the image's runtime config has no process.args")?,
    };
    args.extend(c.args.clone().unwrap_or_default());
    process["args"] = serde_json::json!(args);
    process["terminal"] = serde_json::json!(false);
    // Env: the image's, then the kubelet's service variables, then the container's.
    let mut env: Vec<String> = serde_json::from_value(process["env"].clone()).unwrap_or_default();
    env.push(format!("KUBERNETES_SERVICE_HOST={}", pod.api_server.0));
    env.push(format!("KUBERNETES_SERVICE_PORT={}", pod.api_server.1));
    for e in c.env.iter().flatten() {
        let value = match (&e.value, &e.value_from) {
            (Some(v), _) => v.clone(),
            (None, Some(from)) => match from.field_ref.as_ref().map(|f| f.field_path.as_str()) {
                Some("metadata.name") => pod.name.clone(),
                Some("metadata.namespace") => pod.namespace.clone(),
                other => bail!(
                    "{what}: env {}: valueFrom {other:?} is not one the test bed fills in (metadata.name, metadata.namespace)",
                    e.name
                ),
            },
            (None, None) => String::new(),
        };
        // A container's variable replaces the image's of the same name.
        let prefix = format!("{}=", e.name);
        env.retain(|kv| !kv.starts_with(&prefix));
        env.push(format!("{prefix}{value}"));
    }
    process["env"] = serde_json::json!(env);
    // User: the container's securityContext, else the pod's, else the image's.
    let pod_sc = spec.security_context.as_ref();
    let sc = c.security_context.as_ref();
    let uid = sc
        .and_then(|s| s.run_as_user)
        .or_else(|| pod_sc.and_then(|s| s.run_as_user));
    let gid = sc
        .and_then(|s| s.run_as_group)
        .or_else(|| pod_sc.and_then(|s| s.run_as_group));
    if let Some(uid) = uid {
        process["user"]["uid"] = serde_json::json!(uid);
    }
    if let Some(gid) = gid {
        process["user"]["gid"] = serde_json::json!(gid);
    }
    let non_root = sc
        .and_then(|s| s.run_as_non_root)
        .or_else(|| pod_sc.and_then(|s| s.run_as_non_root))
        .unwrap_or(false);
    if non_root && process["user"]["uid"].as_i64().unwrap_or(0) == 0 {
        bail!("{what}: runAsNonRoot, but the container would run as uid 0");
    }
    if sc.and_then(|s| s.allow_privilege_escalation) == Some(false) {
        process["noNewPrivileges"] = serde_json::json!(true);
    }
    let drops_all = sc
        .and_then(|s| s.capabilities.as_ref())
        .and_then(|caps| caps.drop.as_ref())
        .is_some_and(|d| d.iter().any(|c| c == "ALL"));
    if drops_all {
        process["capabilities"] = serde_json::json!({
            "bounding": [], "effective": [], "inheritable": [], "permitted": [], "ambient": []
        });
    }
    config["root"]["readonly"] = serde_json::json!(
        sc.and_then(|s| s.read_only_root_filesystem)
            .unwrap_or(false)
    );
    config["hostname"] = serde_json::json!(pod.name);
    // Host network (see the module's documentation).
    if let Some(ns) = config["linux"]["namespaces"].as_array_mut() {
        ns.retain(|n| n["type"] != "network");
    }
    // Volumes: Secrets from the given folders, read-only; then the token.
    let mounts = config["mounts"]
        .as_array_mut()
        .context("the image's runtime config has no mounts")?;
    for m in c.volume_mounts.iter().flatten() {
        let volume = spec
            .volumes
            .iter()
            .flatten()
            .find(|v| v.name == m.name)
            .with_context(|| format!("{what}: volumeMount {} names no volume", m.name))?;
        let secret = volume
            .secret
            .as_ref()
            .and_then(|s| s.secret_name.as_deref())
            .with_context(|| {
                format!(
                    "{what}: volume {} is not a Secret, the only kind the test bed mounts",
                    m.name
                )
            })?;
        let source = pod
            .secrets
            .get(secret)
            .with_context(|| format!("{what}: no folder given for Secret {secret}"))?;
        mounts.push(bind(source, &m.mount_path));
    }
    if spec.automount_service_account_token != Some(false)
        && let Some(dir) = &pod.service_account
    {
        mounts.push(bind(dir, SERVICE_ACCOUNT_DIR));
    }
    Ok(config)
}

fn bind(source: &Path, destination: &str) -> serde_json::Value {
    serde_json::json!({
        "destination": destination,
        "type": "bind",
        "source": source.display().to_string(),
        "options": ["rbind", "ro", "nosuid", "nodev"]
    })
}

/// A container run by runc in the foreground; killed and deleted on drop.
#[derive(Debug)]
pub struct RuncContainer {
    /// runc's container id.
    pub id: String,
    /// The bundle (rootfs and config.json).
    pub bundle: PathBuf,
    /// Its stdout and stderr.
    pub log: PathBuf,
    child: Child,
}

impl RuncContainer {
    /// Unpacks `layout:tag` into `bundle` (umoci), writes `config` made from umoci's runtime
    /// config by `make_config`, and starts it (runc run).
    pub fn start(
        layout: &Path,
        tag: &str,
        bundle: &Path,
        id: &str,
        make_config: impl FnOnce(serde_json::Value) -> anyhow::Result<serde_json::Value>,
    ) -> anyhow::Result<Self> {
        // A run that was killed leaves its containers (and their ports): remove them.
        let prefix = id.rsplit_once('-').map_or(id, |(p, _)| p);
        let listed = run(Command::new("runc").args(["list", "-q"])).unwrap_or_default();
        for stale in listed.lines().filter(|l| l.starts_with(prefix) && *l != id) {
            let _ = Command::new("runc")
                .args(["delete", "--force", stale])
                .stderr(Stdio::null())
                .status();
        }
        run(Command::new("umoci")
            .arg("unpack")
            .arg("--image")
            .arg(format!("{}:{tag}", layout.display()))
            .arg(bundle))?;
        let path = bundle.join("config.json");
        let base: serde_json::Value = serde_json::from_slice(
            &std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?,
        )?;
        let config = make_config(base)?;
        std::fs::write(&path, serde_json::to_vec_pretty(&config)?)?;
        let log = bundle.join("container.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("runc")
            .arg("run")
            .arg("--bundle")
            .arg(bundle)
            .arg(id)
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting runc (apt-get install runc)")?;
        let mut c = Self {
            id: id.to_owned(),
            bundle: bundle.to_owned(),
            log,
            child,
        };
        // Started once runc reports its init process running.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
        loop {
            if !c.running() {
                bail!("runc run {id} exited:\n{}", c.log_tail(30));
            }
            let state = run(Command::new("runc").arg("state").arg(id)).unwrap_or_default();
            if state.contains("\"running\"") {
                return Ok(c);
            }
            if std::time::Instant::now() > deadline {
                bail!("runc run {id}: not running after 20 s:\n{}", c.log_tail(30));
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }

    /// The container's init process on the host, from `runc state`.
    pub fn pid(&self) -> anyhow::Result<u32> {
        let state: serde_json::Value =
            serde_json::from_str(&run(Command::new("runc").arg("state").arg(&self.id))?)?;
        state["pid"]
            .as_u64()
            .and_then(|p| u32::try_from(p).ok())
            .filter(|p| *p != 0)
            .with_context(|| format!("runc state {}: no pid in {state}", self.id))
    }

    /// Whether runc still runs it.
    pub fn running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The last lines it wrote.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }
}

impl Drop for RuncContainer {
    fn drop(&mut self) {
        let _ = Command::new("runc")
            .args(["kill", &self.id, "KILL"])
            .stderr(Stdio::null())
            .status();
        let _ = self.child.wait();
        let _ = Command::new("runc")
            .args(["delete", "--force", &self.id])
            .stderr(Stdio::null())
            .status();
    }
}
