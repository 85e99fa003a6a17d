//! gRPC server reflection, as tools use it to list and call the services:
//! both the current `grpc.reflection.v1` and the older
//! `grpc.reflection.v1alpha` that many tools still speak.

mod support;

use support::TestTracker;
use tonic_reflection::pb::{v1, v1alpha};

const SERVICES: [&str; 4] = [
    "lts.v1.JobService",
    "lts.v1.AdminService",
    "lts.v1.WorkService",
    "lts.v1.ClusterService",
];

async fn channel(tracker: &TestTracker) -> tonic::transport::Channel {
    tonic::transport::Endpoint::from_shared(tracker.addr.clone())
        .expect("address")
        .connect()
        .await
        .expect("connect")
}

#[tokio::test]
async fn v1alpha_clients_list_the_services_and_fetch_their_descriptors() {
    use v1alpha::server_reflection_client::ServerReflectionClient;
    use v1alpha::server_reflection_request::MessageRequest;
    use v1alpha::server_reflection_response::MessageResponse;
    use v1alpha::ServerReflectionRequest;

    let tracker = TestTracker::start().await;
    let mut client = ServerReflectionClient::new(channel(&tracker).await);
    let requests = [
        MessageRequest::ListServices(String::new()),
        MessageRequest::FileContainingSymbol("lts.v1.JobService".into()),
    ]
    .map(|r| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(r),
    });
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .expect("v1alpha reflection is served")
        .into_inner();
    let listed = answers.message().await.expect("answer").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVICES {
        assert!(names.contains(&service), "{service} not in {names:?}");
    }
    let file = answers.message().await.expect("answer").expect("one");
    let Some(MessageResponse::FileDescriptorResponse(files)) = file.message_response else {
        panic!("not a descriptor: {file:?}");
    };
    // Enough to call the service: its methods are described.
    assert!(
        files
            .file_descriptor_proto
            .iter()
            .any(|f| f.windows(10).any(|w| w == b"SubmitJobs")),
        "no SubmitJobs in the descriptors"
    );
    tracker.stop().await;
}

#[tokio::test]
async fn v1_clients_list_the_services() {
    use v1::server_reflection_client::ServerReflectionClient;
    use v1::server_reflection_request::MessageRequest;
    use v1::server_reflection_response::MessageResponse;
    use v1::ServerReflectionRequest;

    let tracker = TestTracker::start().await;
    let mut client = ServerReflectionClient::new(channel(&tracker).await);
    let request = ServerReflectionRequest {
        host: String::new(),
        message_request: Some(MessageRequest::ListServices(String::new())),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter([request]))
        .await
        .expect("v1 reflection is served")
        .into_inner();
    let listed = answers.message().await.expect("answer").expect("one");
    let Some(MessageResponse::ListServicesResponse(list)) = listed.message_response else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<&str> = list.service.iter().map(|s| s.name.as_str()).collect();
    for service in SERVICES {
        assert!(names.contains(&service), "{service} not in {names:?}");
    }
    tracker.stop().await;
}
