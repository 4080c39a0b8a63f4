//! The same journey against rootless Podman, as users run it: a service of an
//! unprivileged user (made for the test), with the image loaded into that user's storage.

mod common;

use common::rootless::RootlessPodman;
use common::{Client, ContainerGuard, Node};
use mm_testkit::NatsServer;

#[tokio::test(flavor = "multi_thread")]
async fn rootless_podman_journey() {
    let podman =
        RootlessPodman::start().expect("a rootless Podman service (needs root to set up the test user)");
    let socket = podman.socket().to_owned();
    let _guard = ContainerGuard { socket: Some(&socket), node: "rootless-a".to_owned() };
    let nats = NatsServer::start().expect("nats-server");
    let socket_text = socket.display().to_string();
    let node = Node::start(
        &nats,
        "rootless-a",
        &[("MM_ORCHESTRATOR__DRIVER", "podman"), ("MM_ORCHESTRATOR__PODMAN__SOCKET", socket_text.as_str())],
    );
    let client = Client::connect(&nats).await;
    let entry = client.node("rootless-a").await.expect("node entry");
    assert!(entry.driver_status.contains("rootless"), "{}", entry.driver_status);
    assert!(node.process.log().contains("rootless"), "the driver's mode is logged");

    common::journey(&client, Some(&socket), "rootless-a", "rootless-match").await;
}
