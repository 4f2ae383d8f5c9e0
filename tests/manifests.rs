//! manifests/: every file passes `kubernetes-validate --strict` (PyPI; `.ci/test` installs it), the
//! Envoy sidecar listens where HTTP_PROXY points, and the pods keep the image's layout and outlive the
//! server's shutdown grace period.

use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// The validator: $KUBERNETES_VALIDATE, the virtualenv `.ci/install` creates, or the PATH. Missing is a
/// failure with instructions, never a skip.
fn validator() -> PathBuf {
    if let Some(path) = std::env::var_os("KUBERNETES_VALIDATE") {
        return PathBuf::from(path);
    }
    let venv = Path::new(ROOT).join("target/ci-tools/venv/bin/kubernetes-validate");
    if venv.exists() {
        return venv;
    }
    let on_path = std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|dir| dir.join("kubernetes-validate"))
            .find(|p| p.exists())
    });
    on_path.unwrap_or_else(|| {
        panic!(
            "kubernetes-validate is not installed: run .ci/test (it installs it into \
             target/ci-tools/venv), or `pip install kubernetes-validate`, or set KUBERNETES_VALIDATE"
        )
    })
}

fn manifests() -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(Path::new(ROOT).join("manifests"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .collect();
    files.sort();
    assert!(files.len() >= 2, "{files:?}");
    files
}

/// YAML documents as JSON, through the validator's own Python (which has PyYAML).
fn yaml_documents(yaml: &str) -> Vec<Value> {
    let validator = validator();
    let python = validator
        .parent()
        .map(|dir| dir.join("python3"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"));
    let mut child = Command::new(&python)
        .args([
            "-c",
            "import json, sys, yaml; print(json.dumps(list(yaml.safe_load_all(sys.stdin))))",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(yaml.as_bytes())
        .unwrap();
    let output = child.wait_with_output().unwrap();
    assert!(
        output.status.success(),
        "not valid YAML (or no PyYAML in {}): {}",
        python.display(),
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).unwrap()
}

fn documents(file: &str) -> Vec<Value> {
    let text = std::fs::read_to_string(Path::new(ROOT).join("manifests").join(file)).unwrap();
    yaml_documents(&text)
}

fn find<'a>(documents: &'a [Value], kind: &str, name: &str) -> &'a Value {
    documents
        .iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}"))
}

fn container<'a>(pod: &'a Value, name: &str) -> &'a Value {
    ["containers", "initContainers"]
        .iter()
        .filter_map(|list| pod[list].as_array())
        .flatten()
        .find(|c| c["name"] == name)
        .unwrap_or_else(|| panic!("no container {name}"))
}

fn env<'a>(container: &'a Value, name: &str) -> &'a str {
    container["env"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .and_then(|e| e["value"].as_str())
        .unwrap_or_else(|| panic!("no {name} in {container}"))
}

#[test]
fn every_manifest_passes_kubernetes_validate_strict() {
    let validator = validator();
    for file in manifests() {
        let output = Command::new(&validator)
            .arg("--strict")
            .arg(&file)
            .output()
            .unwrap_or_else(|e| panic!("cannot run {}: {e}", validator.display()));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        assert!(
            output.status.success() && !text.contains("ERROR"),
            "{}: {text}",
            file.display()
        );
        assert!(text.contains("passed"), "{}: {text}", file.display());
    }
}

#[test]
fn the_envoy_listener_is_where_http_proxy_points() {
    let l7 = documents("restate-l7.yaml");
    let config = find(&l7, "ConfigMap", "restate-envoy")["data"]["envoy.yaml"]
        .as_str()
        .expect("envoy.yaml in the ConfigMap");
    let envoy = &yaml_documents(config)[0];
    let listeners = envoy["static_resources"]["listeners"].as_array().unwrap();
    assert_eq!(listeners.len(), 1, "{envoy}");
    let socket = &listeners[0]["address"]["socket_address"];
    let pod = &find(&l7, "StatefulSet", "restate")["spec"]["template"]["spec"];
    let proxy = env(container(pod, "restate"), "HTTP_PROXY");
    assert_eq!(
        proxy,
        format!(
            "http://{}:{}",
            socket["address"].as_str().unwrap(),
            socket["port_value"]
        ),
        "HTTP_PROXY does not point at the Envoy listener"
    );
    // The sidecar mounts that ConfigMap where its args read it.
    let sidecar = container(pod, "envoy");
    assert_eq!(sidecar["restartPolicy"], "Always", "a native sidecar");
    assert!(sidecar["args"]
        .to_string()
        .contains("/etc/envoy/envoy.yaml"));
    assert!(pod["volumes"].to_string().contains("restate-envoy"));
}

#[test]
fn the_restate_pods_keep_the_image_layout_and_outlive_the_grace_period() {
    for file in ["restate.yaml", "restate-l7.yaml"] {
        let documents = documents(file);
        let set = find(&documents, "StatefulSet", "restate");
        let pod = &set["spec"]["template"]["spec"];
        let restate = container(pod, "restate");
        let image = restate["image"].as_str().unwrap();
        assert!(
            !image.ends_with(":latest") && image.contains(':'),
            "{file}: {image}"
        );
        assert_eq!(restate["imagePullPolicy"], "IfNotPresent", "{file}");
        assert_eq!(restate["workingDir"], "/", "{file}");
        assert!(restate["volumeMounts"].to_string().contains("\"/target\""));
        assert_eq!(env(restate, "RESTATE_TRACING__LOG_FORMAT"), "Json");
        let grace =
            humantime::parse_duration(env(restate, "RESTATE_SHUTDOWN_GRACE_PERIOD")).unwrap();
        let termination = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        assert!(termination > grace.as_secs(), "{file}: {termination} s");
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "Unconfined"
        );
        for probe in ["readinessProbe", "livenessProbe"] {
            assert_eq!(
                restate[probe]["httpGet"]["path"], "/health",
                "{file} {probe}"
            );
            assert_eq!(restate[probe]["httpGet"]["port"], "meta", "{file} {probe}");
        }
        let ports: Vec<&str> = restate["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["name"].as_str().unwrap())
            .collect();
        assert_eq!(ports, ["ingress", "meta", "storage"], "{file}");
        assert_eq!(set["metadata"]["namespace"], "restate", "{file}");
    }
    let base = documents("restate.yaml");
    find(&base, "Namespace", "restate");
    assert_eq!(
        find(&base, "Service", "restate-headless")["spec"]["clusterIP"],
        "None"
    );
    assert_eq!(
        find(&base, "Service", "restate")["spec"]["type"],
        "ClusterIP"
    );
}
