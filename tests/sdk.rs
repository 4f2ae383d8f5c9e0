//! The real TypeScript SDK (`@restatedev/restate-sdk@0.4.1`, installed in tests/sdk by `.ci/run`)
//! registers: keyed and unkeyed routers, and gRPC-style services generated with ts-proto.

mod common;

use common::{post_json, request_json, SdkEndpoint, Server};
use serde_json::json;

#[test]
fn the_real_sdk_registers_routers_and_grpc_services() {
    let sdk = SdkEndpoint::start();
    let server = Server::start(&[]);
    let (status, body) = post_json(
        server.meta,
        "/endpoints",
        &json!({ "uri": format!("http://127.0.0.1:{}", sdk.port) }),
    );
    assert_eq!(status, 201, "{body}");
    let mut names: Vec<&str> = body["services"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["name"].as_str().unwrap())
        .collect();
    names.sort();
    assert_eq!(
        names,
        vec![
            "awaiter",
            "bank",
            "caller",
            "counter",
            "effects",
            "example.Echo",
            "example.Greeter",
            "greeter",
            "kv",
            "mailbox",
            "resolver",
            "sleeper",
        ]
    );

    let service = |name: &str| {
        let (status, body) = request_json(server.meta, "GET", &format!("/services/{name}"), None);
        assert_eq!(status, 200, "{name}: {body}");
        body
    };
    let counter = service("counter");
    assert_eq!(counter["instance_type"], "Keyed");
    assert_eq!(counter["methods"], json!(["add", "get"]));
    let greeter = service("greeter");
    assert_eq!(greeter["instance_type"], "Unkeyed");
    assert_eq!(greeter["methods"], json!(["greet"]));
    let grpc_greeter = service("example.Greeter");
    assert_eq!(grpc_greeter["instance_type"], "Keyed");
    assert_eq!(grpc_greeter["methods"], json!(["Count", "Greet"]));
    assert_eq!(service("example.Echo")["instance_type"], "Unkeyed");

    let method = |path: &str| request_json(server.meta, "GET", path, None).1;
    let add = method("/services/counter/methods/add");
    assert_eq!(add["input_type"], "RpcRequest");
    assert_eq!(add["key_field"], 1);
    let greet = method("/services/example.Greeter/methods/Greet");
    assert_eq!(greet["input_type"], "example.GreetRequest");
    assert_eq!(greet["key_field"], 1);
    let echo = method("/services/example.Echo/methods/Echo");
    assert!(echo.get("key_field").is_none(), "{echo}");
    let (_, endpoint) = request_json(
        server.meta,
        "GET",
        &format!("/endpoints/{}", body["id"].as_str().unwrap()),
        None,
    );
    assert_eq!(endpoint["protocol_type"], "BidiStream");
}
