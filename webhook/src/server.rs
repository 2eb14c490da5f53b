//! The HTTPS server: axum routes behind rustls.
//!
//! | path | what |
//! |---|---|
//! | `POST /mutate` | Pod CREATE reviews |
//! | `POST /validate` | Deployment CREATE/UPDATE reviews |
//! | `GET /healthz`, `GET /readyz` | 200 `ok` (ready once a certificate is loaded) |
//! | `GET /metrics` | Prometheus text |

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::Context as _;
use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::service::TowerToHyperService;
use kube::core::admission::AdmissionResponse;

use crate::admission::{self, Outcome};
use crate::metrics::Metrics;
use crate::tls::Reloading;

/// What the handlers share.
#[derive(Debug)]
pub struct App {
    /// Metrics.
    pub metrics: Metrics,
    /// The WasmPlugin name the annotation names.
    pub wasmplugin: String,
}

fn review(resp: AdmissionResponse) -> Response {
    // Always 200 with a review: the API server reads the decision from the body.
    match serde_json::to_vec(&resp.into_review()) {
        Ok(b) => ([(header::CONTENT_TYPE, "application/json")], b).into_response(),
        Err(e) => (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}

fn log(kind: &'static str, outcome: Outcome) {
    match outcome {
        Outcome::Error => tracing::warn!(review = kind, "unreadable admission review"),
        Outcome::Denied => tracing::info!(review = kind, "denied"),
        _ => tracing::debug!(review = kind, result = outcome.label()),
    }
}

async fn mutate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let (resp, outcome) = admission::mutate(&body, &app.wasmplugin);
    app.metrics.count("mutate", outcome);
    log("mutate", outcome);
    review(resp)
}

async fn validate(State(app): State<Arc<App>>, body: Bytes) -> Response {
    let (resp, outcome) = admission::validate(&body);
    app.metrics.count("validate", outcome);
    log("validate", outcome);
    review(resp)
}

/// The routes.
pub fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/mutate", post(mutate))
        .route("/validate", post(validate))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(|| async { "ok\n" }))
        .route(
            "/metrics",
            get(|State(app): State<Arc<App>>| async move { app.metrics.encode() }),
        )
        .with_state(app)
}

/// Serves `router` over TLS with the reloading certificate until the process ends.
pub async fn serve(
    listen: SocketAddr,
    certs: Arc<Reloading>,
    router: Router,
) -> anyhow::Result<()> {
    let mut config = rustls::ServerConfig::builder()
        .with_no_client_auth()
        .with_cert_resolver(certs);
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("listening on {listen}"))?;
    tracing::info!(%listen, "serving admission reviews over TLS");
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let (acceptor, svc) = (acceptor.clone(), TowerToHyperService::new(router.clone()));
        tokio::spawn(async move {
            let tls = match acceptor.accept(tcp).await {
                Ok(t) => t,
                Err(e) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
            };
            if let Err(e) = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(tls), svc)
                .await
            {
                tracing::debug!(%peer, error = %e, "connection ended with an error");
            }
        });
    }
}
