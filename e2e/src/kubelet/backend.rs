//! The test backend: a real HTTP (or gRPC) server that the kubelet runs for a pod's container
//! ports, at the pod's own address.
//!
//! HTTP: answers every request with a JSON identity. Query parameters make it misbehave:
//! `delay_ms=N` answers after N ms; `stream=N&interval_ms=M` sends N chunks, M ms apart;
//! `status=N` answers with that status.
//!
//! gRPC (ports named `grpc*`, and any request whose content-type is `application/grpc`):
//! `grpc.health.v1.Health/Check` answers SERVING, and
//! `kzscaler.e2e.Echo/Echo` returns the request message as is (a `delay-ms` metadata entry
//! delays it). Other methods get UNIMPLEMENTED. Both are unary gRPC over h2c.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, StreamBody, combinators::BoxBody};
use hyper::body::{Frame, Incoming};
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde_json::json;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

type Body = BoxBody<Bytes, Infallible>;

/// A running backend: dropping it stops the server and its connections.
#[derive(Debug)]
pub struct Backend {
    /// Where it listens.
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves HTTP (or gRPC) on a listening socket made elsewhere (e.g. inside a pod's network
/// namespace). Needs a Tokio runtime.
pub fn serve(
    listener: std::net::TcpListener,
    identity: Identity,
    grpc: bool,
) -> std::io::Result<Backend> {
    let listener = TcpListener::from_std(listener)?;
    let addr = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(s) => s,
                Err(e) => {
                    tracing::warn!(error = %e, "backend accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let id = identity.clone();
            // Connections live in the JoinSet so that aborting the backend ends them too.
            conns.spawn(async move {
                let svc = service_fn(move |req| {
                    let id = id.clone();
                    async move {
                        let is_grpc = grpc
                            || req
                                .headers()
                                .get(http::header::CONTENT_TYPE)
                                .is_some_and(|v| v.as_bytes().starts_with(b"application/grpc"));
                        Ok::<_, Infallible>(if is_grpc {
                            grpc_handle(req).await
                        } else {
                            http_handle(&id, req).await
                        })
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
            while conns.try_join_next().is_some() {}
        }
    });
    Ok(Backend { addr, task })
}

/// Who a backend says it is, in every HTTP answer.
#[derive(Debug, Clone)]
pub struct Identity {
    /// The pod.
    pub pod: String,
    /// Its namespace.
    pub namespace: String,
    /// The Service (or workload) it serves.
    pub service: String,
    /// The pod's address.
    pub address: String,
    /// The port it serves.
    pub target_port: i32,
}

fn query_param(req: &Request<Incoming>, name: &str) -> Option<u64> {
    req.uri().query()?.split('&').find_map(|kv| {
        let (k, v) = kv.split_once('=')?;
        (k == name).then(|| v.parse().ok()).flatten()
    })
}

async fn http_handle(id: &Identity, req: Request<Incoming>) -> Response<Body> {
    let delay = query_param(&req, "delay_ms").unwrap_or(0);
    let chunks = query_param(&req, "stream").unwrap_or(0);
    let interval = query_param(&req, "interval_ms").unwrap_or(100);
    let status = query_param(&req, "status")
        .and_then(|s| u16::try_from(s).ok())
        .and_then(|s| StatusCode::from_u16(s).ok())
        .unwrap_or(StatusCode::OK);
    let identity = json!({
        "pod": id.pod, "namespace": id.namespace, "service": id.service,
        "address": id.address, "port": id.target_port,
        "method": req.method().as_str(), "path": req.uri().path(),
        "version": format!("{:?}", req.version()),
    });
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let builder = Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .header("x-backend-pod", id.pod.as_str());
    let body: Body = if chunks == 0 {
        Full::new(Bytes::from(format!("{identity}\n"))).boxed()
    } else {
        let line = Bytes::from(format!("{identity}\n"));
        let stream = futures::stream::unfold(0u64, move |i| {
            let line = line.clone();
            async move {
                if i >= chunks {
                    return None;
                }
                if i > 0 {
                    tokio::time::sleep(Duration::from_millis(interval)).await;
                }
                Some((Ok::<_, Infallible>(Frame::data(line)), i + 1))
            }
        });
        StreamBody::new(stream).boxed()
    };
    builder
        .body(body)
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

/// `grpc.health.v1.HealthCheckResponse { status: SERVING }` in protobuf: field 1, varint 1.
const HEALTH_SERVING: &[u8] = &[0x08, 0x01];

async fn grpc_handle(req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let delay = req
        .headers()
        .get("delay-ms")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        .unwrap_or(0);
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return grpc_response(Bytes::new(), 13, "could not read the request body"),
    };
    let message = match unframe(body) {
        Some(m) => m,
        None => return grpc_response(Bytes::new(), 13, "request is not one gRPC message"),
    };
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    match path.as_str() {
        "/grpc.health.v1.Health/Check" => grpc_response(frame(HEALTH_SERVING), 0, ""),
        "/kzscaler.e2e.Echo/Echo" => grpc_response(frame(&message), 0, ""),
        _ => grpc_response(Bytes::new(), 12, &format!("unknown method {path}")),
    }
}

/// One length-prefixed gRPC message (uncompressed).
fn frame(message: &[u8]) -> Bytes {
    let mut b = BytesMut::with_capacity(5 + message.len());
    b.put_u8(0);
    b.put_u32(u32::try_from(message.len()).unwrap_or(u32::MAX));
    b.put_slice(message);
    b.freeze()
}

fn unframe(mut body: Bytes) -> Option<Bytes> {
    if body.len() < 5 || body[0] != 0 {
        return None;
    }
    body.advance(1);
    let len = usize::try_from(body.get_u32()).ok()?;
    (body.len() == len).then_some(body)
}

fn grpc_response(message: Bytes, status: u32, text: &str) -> Response<Body> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if let Ok(v) = HeaderValue::from_str(text)
        && !text.is_empty()
    {
        trailers.insert("grpc-message", v);
    }
    let frames = futures::stream::iter([
        Ok::<_, Infallible>(Frame::data(message)),
        Ok(Frame::trailers(trailers)),
    ]);
    Response::builder()
        .header("content-type", "application/grpc")
        .body(StreamBody::new(frames).boxed())
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new()).boxed()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let framed = frame(b"hello");
        assert_eq!(&framed[..5], &[0, 0, 0, 0, 5]);
        assert_eq!(unframe(framed), Some(Bytes::from_static(b"hello")));
        assert_eq!(unframe(Bytes::from_static(&[0, 0, 0, 0, 9, 1])), None);
        assert_eq!(
            unframe(Bytes::from_static(&[1, 0, 0, 0, 0])),
            None,
            "compressed is refused"
        );
    }
}
