//! The pods' network: one network namespace per pod, each with a veth on one bridge that lives
//! in the test bed's own "node" namespace. Nothing here touches the machine's own namespace:
//! pod addresses exist only inside these namespaces.
//!
//! ```text
//!  netns <prefix>-node: bridge br0 ──┬── veth ── netns <prefix>-10-244-0-5: eth0 10.244.0.5/16
//!                                    └── veth ── netns <prefix>-10-244-0-6: eth0 10.244.0.6/16
//! ```
//!
//! A socket belongs to the namespace of the thread that created it, and keeps working from any
//! thread. So [`in_netns`] creates sockets on a fresh thread that has entered a pod's namespace,
//! and the async runtime drives them from anywhere.

use std::fs::File;
use std::net::Ipv4Addr;

use anyhow::{Context as _, bail};
use nix::sched::CloneFlags;

/// The node namespace and bridge every pod namespace is attached to.
#[derive(Debug, Clone)]
pub struct Network {
    /// Prefix of every namespace name (e.g. `kzscaler`).
    pub prefix: String,
    /// The pod CIDR's prefix length (16 for 10.244.0.0/16).
    pub prefix_len: u8,
}

/// Runs `ip ARGS...`; fails with its stderr.
fn ip(args: &[&str]) -> anyhow::Result<()> {
    let out = std::process::Command::new("ip")
        .args(args)
        .output()
        .context("running ip (iproute2): is it installed?")?;
    if !out.status.success() {
        bail!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

/// The node-side end of a pod's veth: "v" and the address in hex (names have at most 15 bytes).
fn veth_name(ip: Ipv4Addr) -> String {
    format!("v{:08x}", u32::from(ip))
}

/// A locally administered MAC derived from the pod's address.
fn mac_of(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:42:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

fn netns_exists(name: &str) -> bool {
    std::path::Path::new("/run/netns").join(name).exists()
}

impl Network {
    /// The node namespace's name.
    pub fn node(&self) -> String {
        format!("{}-node", self.prefix)
    }

    /// A pod namespace's name: the prefix and the address, e.g. `kzscaler-10-244-0-5`.
    pub fn pod_netns(&self, ip: Ipv4Addr) -> String {
        let [a, b, c, d] = ip.octets();
        format!("{}-{a}-{b}-{c}-{d}", self.prefix)
    }

    /// Creates the node namespace and its bridge unless they exist.
    pub fn setup(&self) -> anyhow::Result<()> {
        let node = self.node();
        if !netns_exists(&node) {
            ip(&["netns", "add", &node])?;
            ip(&["-n", &node, "link", "set", "lo", "up"])?;
            ip(&["-n", &node, "link", "add", "br0", "type", "bridge"])?;
            ip(&["-n", &node, "link", "set", "br0", "up"])?;
        }
        Ok(())
    }

    /// A namespace for the pod with this address, attached to the bridge (an old one for the
    /// same address is replaced).
    pub fn add_pod(&self, ip_addr: Ipv4Addr) -> anyhow::Result<String> {
        let name = self.pod_netns(ip_addr);
        self.remove_pod(ip_addr)?;
        let node = self.node();
        let veth = veth_name(ip_addr);
        let cidr = format!("{ip_addr}/{}", self.prefix_len);
        ip(&["netns", "add", &name])?;
        let attach = || -> anyhow::Result<()> {
            ip(&["-n", &name, "link", "set", "lo", "up"])?;
            ip(&[
                "-n", &node, "link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns",
                &name,
            ])?;
            ip(&["-n", &node, "link", "set", &veth, "master", "br0", "up"])?;
            // The MAC follows the address: kwok hands a freed address to the next pod, and
            // neighbours' ARP caches (reachable for up to 30 s) must still find it.
            ip(&[
                "-n",
                &name,
                "link",
                "set",
                "eth0",
                "address",
                &mac_of(ip_addr),
            ])?;
            ip(&["-n", &name, "addr", "add", &cidr, "dev", "eth0"])?;
            ip(&["-n", &name, "link", "set", "eth0", "up"])
        };
        if let Err(e) = attach() {
            let _ = ip(&["netns", "del", &name]);
            return Err(e.context(format!("attaching pod namespace {name} to the bridge")));
        }
        Ok(name)
    }

    /// Deletes the pod's veth pair, then its namespace. The veth goes first: a namespace that
    /// an open socket still holds outlives `ip netns del`, and with its veth it would keep the
    /// address on the bridge (a new pod given the same address would share it).
    pub fn remove_pod(&self, ip_addr: Ipv4Addr) -> anyhow::Result<()> {
        let name = self.pod_netns(ip_addr);
        if netns_exists(&self.node()) {
            // Absent (the usual case) is fine: only a veth that is still there matters.
            if let Err(e) = ip(&["-n", &self.node(), "link", "del", &veth_name(ip_addr)])
                && !e.to_string().contains("Cannot find device")
            {
                return Err(e);
            }
        }
        if netns_exists(&name) {
            ip(&["netns", "del", &name])?;
        }
        Ok(())
    }

    /// Deletes every namespace of this network (pods and node).
    pub fn teardown(&self) {
        let Ok(dir) = std::fs::read_dir("/run/netns") else {
            return;
        };
        let prefix = format!("{}-", self.prefix);
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(&prefix) {
                let _ = ip(&["netns", "del", &name]);
            }
        }
    }
}

/// Runs `f` on a new thread inside network namespace `netns` and returns what it made
/// (sockets made there stay in that namespace). A fresh thread each time: a thread that has
/// entered a namespace is never reused for anything else.
pub fn in_netns<T, F>(netns: &str, f: F) -> anyhow::Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
{
    let path = std::path::Path::new("/run/netns").join(netns);
    let file = File::open(&path).with_context(|| format!("opening {}", path.display()))?;
    let joined = std::thread::spawn(move || -> anyhow::Result<T> {
        nix::sched::setns(&file, CloneFlags::CLONE_NEWNET).context("setns")?;
        Ok(f()?)
    })
    .join();
    match joined {
        Ok(r) => r.with_context(|| format!("in network namespace {netns}")),
        Err(_) => bail!("the thread in network namespace {netns} panicked"),
    }
}

/// A listening socket inside `netns`, non-blocking, ready for `tokio::net::TcpListener::from_std`.
pub fn listen_in(netns: &str, addr: std::net::SocketAddr) -> anyhow::Result<std::net::TcpListener> {
    in_netns(netns, move || {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        Ok(l)
    })
}

/// An unconnected TCP socket inside `netns`; connect it from the runtime.
pub fn socket_in(netns: &str) -> anyhow::Result<tokio::net::TcpSocket> {
    in_netns(netns, tokio::net::TcpSocket::new_v4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_mac_follow_the_address() {
        let ip = Ipv4Addr::new(10, 244, 0, 15);
        let net = Network {
            prefix: "kzscaler".into(),
            prefix_len: 16,
        };
        assert_eq!(net.pod_netns(ip), "kzscaler-10-244-0-15");
        assert_eq!(veth_name(ip), "v0af4000f");
        assert!(veth_name(Ipv4Addr::new(255, 255, 255, 255)).len() <= 15);
        assert_eq!(mac_of(ip), "02:42:0a:f4:00:0f");
    }
}
