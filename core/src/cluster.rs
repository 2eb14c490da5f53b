//! Istio's outbound cluster names: `outbound|<port>|<subset>|<svc>.<ns>.svc.<domain>`.
//!
//! The filter finds a request's destination from `xds.cluster_name`, which Istio names this way.

use std::fmt;

/// A parsed outbound cluster name. Borrowed from the input: parsing allocates nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClusterName<'a> {
    /// The Service port.
    pub port: u16,
    /// The DestinationRule subset; empty when none.
    pub subset: &'a str,
    /// The Service name.
    pub service: &'a str,
    /// The Service's namespace.
    pub namespace: &'a str,
    /// The cluster domain, usually `cluster.local`.
    pub domain: &'a str,
}

/// Why a string is not an outbound cluster name for a Kubernetes Service.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ClusterNameError {
    /// Not of the form `outbound|port|subset|host` (e.g. `PassthroughCluster`, `inbound|...`).
    #[error("cluster name {0:?} is not of the form outbound|<port>|<subset>|<host>")]
    NotOutbound(String),
    /// The port part is not a number from 1 to 65535.
    #[error("cluster name {name:?}: port {port:?} is not a number from 1 to 65535")]
    BadPort {
        /// The whole cluster name.
        name: String,
        /// The port part as found.
        port: String,
    },
    /// The host is not `<svc>.<ns>.svc.<domain>` (e.g. a ServiceEntry host).
    #[error("cluster name {name:?}: host {host:?} is not <service>.<namespace>.svc.<domain>")]
    NotServiceHost {
        /// The whole cluster name.
        name: String,
        /// The host part as found.
        host: String,
    },
}

/// Why a name did not parse, borrowing the offending part: [`ClusterNameError`] allocates,
/// and the filter asks on the request path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Refused<'a> {
    NotOutbound,
    BadPort(&'a str),
    NotServiceHost(&'a str),
}

impl<'a> ClusterName<'a> {
    /// Parses `outbound|8080||web.shop.svc.cluster.local`.
    pub fn parse(name: &'a str) -> Result<Self, ClusterNameError> {
        Self::split(name).map_err(|why| match why {
            Refused::NotOutbound => ClusterNameError::NotOutbound(name.to_owned()),
            Refused::BadPort(port) => ClusterNameError::BadPort {
                name: name.to_owned(),
                port: port.to_owned(),
            },
            Refused::NotServiceHost(host) => ClusterNameError::NotServiceHost {
                name: name.to_owned(),
                host: host.to_owned(),
            },
        })
    }

    /// [`ClusterName::parse`] without the reason: allocates nothing, for the request path.
    pub fn try_parse(name: &'a str) -> Option<Self> {
        Self::split(name).ok()
    }

    fn split(name: &'a str) -> Result<Self, Refused<'a>> {
        let mut parts = name.split('|');
        let (Some("outbound"), Some(port), Some(subset), Some(host), None) = (
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
            parts.next(),
        ) else {
            return Err(Refused::NotOutbound);
        };
        let port = match port.parse::<u16>() {
            Ok(p) if p > 0 => p,
            _ => return Err(Refused::BadPort(port)),
        };
        let mut labels = host.splitn(4, '.');
        let (Some(service), Some(namespace), Some("svc"), Some(domain)) =
            (labels.next(), labels.next(), labels.next(), labels.next())
        else {
            return Err(Refused::NotServiceHost(host));
        };
        if service.is_empty() || namespace.is_empty() || domain.is_empty() {
            return Err(Refused::NotServiceHost(host));
        }
        Ok(Self {
            port,
            subset,
            service,
            namespace,
            domain,
        })
    }

    /// The Service's fully qualified host name, `<svc>.<ns>.svc.<domain>`.
    pub fn host(&self) -> String {
        format!("{}.{}.svc.{}", self.service, self.namespace, self.domain)
    }
}

impl fmt::Display for ClusterName<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "outbound|{}|{}|{}.{}.svc.{}",
            self.port, self.subset, self.service, self.namespace, self.domain
        )
    }
}

/// The outbound cluster name Istio gives a Service port (no subset).
pub fn outbound_cluster(service: &str, namespace: &str, domain: &str, port: u16) -> String {
    format!("outbound|{port}||{service}.{namespace}.svc.{domain}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_plain_outbound_cluster() {
        let c = ClusterName::parse("outbound|8080||web.shop.svc.cluster.local").unwrap();
        assert_eq!(c.port, 8080);
        assert_eq!(c.subset, "");
        assert_eq!(c.service, "web");
        assert_eq!(c.namespace, "shop");
        assert_eq!(c.domain, "cluster.local");
        assert_eq!(c.host(), "web.shop.svc.cluster.local");
    }

    #[test]
    fn keeps_subset_and_custom_domain() {
        let c = ClusterName::parse("outbound|9090|v2|api.team-a.svc.corp.example").unwrap();
        assert_eq!((c.subset, c.domain), ("v2", "corp.example"));
    }

    #[test]
    fn round_trips_through_display() {
        let name = outbound_cluster("web", "shop", "cluster.local", 80);
        assert_eq!(ClusterName::parse(&name).unwrap().to_string(), name);
    }

    #[test]
    fn rejects_istio_special_clusters() {
        for name in [
            "PassthroughCluster",
            "BlackHoleCluster",
            "InboundPassthroughCluster",
            "inbound|8080||",
            "outbound|80||web.shop.svc.cluster.local|extra",
        ] {
            assert!(
                matches!(
                    ClusterName::parse(name),
                    Err(ClusterNameError::NotOutbound(_))
                ),
                "{name} should not parse"
            );
        }
    }

    #[test]
    fn rejects_bad_ports_naming_the_value() {
        for port in ["0", "65536", "http", ""] {
            let name = format!("outbound|{port}||web.shop.svc.cluster.local");
            let err = ClusterName::parse(&name).unwrap_err();
            assert_eq!(
                err,
                ClusterNameError::BadPort {
                    name: name.clone(),
                    port: port.to_owned()
                }
            );
            assert!(err.to_string().contains("1 to 65535"));
        }
    }

    #[test]
    fn try_parse_agrees_with_parse() {
        for name in [
            "outbound|80|v1|web.shop.svc.cluster.local",
            "outbound|80||web.shop.svc.corp.example",
            "outbound|0||web.shop.svc.cluster.local",
            "outbound|443||example.com",
            "PassthroughCluster",
            "inbound|8080||",
        ] {
            assert_eq!(
                ClusterName::try_parse(name),
                ClusterName::parse(name).ok(),
                "{name}"
            );
        }
    }

    #[test]
    fn rejects_hosts_that_are_not_services() {
        for host in [
            "example.com",
            "web.shop",
            "web.shop.svc",
            ".shop.svc.cluster.local",
        ] {
            let name = format!("outbound|443||{host}");
            assert!(matches!(
                ClusterName::parse(&name),
                Err(ClusterNameError::NotServiceHost { .. })
            ));
        }
    }
}
