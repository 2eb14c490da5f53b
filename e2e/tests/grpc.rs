//! gRPC through a caller's sidecar, configured by istiod: a Service port named `grpc-*` gets
//! an HTTP/2 cluster, and the call goes to the sidecar's outbound listener for that port (what
//! an application in the pod connects to) and on to the pod's gRPC server.

use std::time::Duration;

use http::uri::PathAndQuery;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use kube::api::{Patch, PatchParams, PostParams};
use kzscaler_e2e::fixtures::{deployment, service};
use kzscaler_e2e::kz::{create_caller_with, create_egress_sidecar};
use kzscaler_e2e::namespace::TempNamespace;
use kzscaler_e2e::testbed::TestBed;
use serde_json::json;
use tonic::transport::{Channel, Endpoint};
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

const WAIT: Duration = Duration::from_secs(60);

/// A channel that connects on first use: the sidecar's listener comes up with its pod.
fn channel(listener: &str, authority: &str) -> anyhow::Result<Channel> {
    Ok(Endpoint::from_shared(format!("http://{listener}"))?
        .origin(format!("http://{authority}").parse()?)
        .timeout(Duration::from_secs(5))
        .connect_lazy())
}

#[tokio::test]
async fn grpc_health_and_echo_work_through_envoy_and_fail_unavailable_at_zero() -> anyhow::Result<()>
{
    let bed = TestBed::connect().await?;
    let ns = TempNamespace::create(&bed, "grpc", &[]).await?;
    let authority = format!("api.{}:9090", ns.name);
    ns.api::<Service>()
        .create(
            &PostParams::default(),
            &service("api", "api", 9090, "grpc-api"),
        )
        .await?;
    ns.api::<Deployment>()
        .create(&PostParams::default(), &deployment("api", 1))
        .await?;

    create_egress_sidecar(&ns, "caller").await?;
    let caller = create_caller_with(&bed.client, &ns.name, "caller", &[], &[], &[9090]).await?;
    let listener = caller
        .outbound
        .first()
        .map(|(_, a)| a.clone())
        .ok_or_else(|| anyhow::anyhow!("no outbound listener bridged"))?;
    let chan = channel(&listener, &authority)?;
    ns.wait_for(
        "grpc.health.v1 Check to answer SERVING through Envoy",
        WAIT,
        || {
            let mut client = HealthClient::new(chan.clone());
            async move {
                let r = client
                    .check(HealthCheckRequest {
                        service: String::new(),
                    })
                    .await?;
                Ok((r.into_inner().status == ServingStatus::Serving as i32).then_some(()))
            }
        },
    )
    .await?;

    // Echo returns the request message unchanged; any message type will do.
    let mut grpc = tonic::client::Grpc::new(chan.clone());
    grpc.ready().await?;
    let codec = tonic_prost::ProstCodec::<HealthCheckRequest, HealthCheckRequest>::default();
    let sent = HealthCheckRequest {
        service: "echo me".into(),
    };
    let got = grpc
        .unary(
            tonic::Request::new(sent.clone()),
            PathAndQuery::from_static("/kzscaler.e2e.Echo/Echo"),
            codec,
        )
        .await?
        .into_inner();
    assert_eq!(got, sent);

    // With no replica, Envoy answers the call itself: UNAVAILABLE.
    ns.api::<Deployment>()
        .patch_scale(
            "api",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"replicas": 0}})),
        )
        .await?;
    // Calls caught by the scale-down itself may end otherwise (a reset stream); wait for
    // Envoy's own answer once no endpoint is left.
    ns.wait_for("Check to fail UNAVAILABLE at 0 replicas", WAIT, || {
        let mut client = HealthClient::new(chan.clone());
        async move {
            match client.check(HealthCheckRequest::default()).await {
                Err(s) if s.code() == tonic::Code::Unavailable => Ok(Some(())),
                Err(s) => {
                    eprintln!("[e2e] while scaling down: {s:?}");
                    Ok(None)
                }
                Ok(_) => Ok(None),
            }
        }
    })
    .await?;
    ns.cleanup().await
}
