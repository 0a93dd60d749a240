//! deploy/kubernetes stays valid: every manifest parses, every kustomization names files that
//! exist, each variant's archway.toml passes `archway check-config`, and the probe paths the
//! Deployment uses are served by archway's admin listener.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::support::archway::{Archway, Settings};
use crate::support::http;
use crate::support::registry::Upstream;

fn k8s() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes")
}

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            yaml_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "yaml") {
            out.push(p);
        }
    }
}

fn docs(path: &Path) -> Vec<serde_yaml::Value> {
    let text = std::fs::read_to_string(path).unwrap();
    serde_yaml::Deserializer::from_str(&text)
        .map(|d| {
            serde::Deserialize::deserialize(d).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        })
        .collect()
}

/// The Secret's mount in the pod, as the s3 variant's archway.toml names its file.
const CLUSTER_SECRET: &str = "/run/secrets/archway-cluster/secret";

/// `archway check-config` on a shipped config, as a pod would run it: POD_IP from the
/// downward API, the cluster secret where the Secret is mounted (here a temp file); stdout.
fn check_config(cfg: &Path) -> String {
    let text = std::fs::read_to_string(cfg).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "a-secret-of-at-least-16-bytes\n").unwrap();
    let copy = dir.path().join("archway.toml");
    std::fs::write(
        &copy,
        text.replace(CLUSTER_SECRET, secret.to_str().unwrap()),
    )
    .unwrap();
    let out = Command::new(Archway::bin())
        .arg("check-config")
        .arg(&copy)
        .env("POD_IP", "10.0.0.7")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}: {}",
        cfg.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The s3 kustomization gives the pod what `[cluster]` reads: POD_IP from the downward API,
/// and the Secret mounted where `secret_file` points.
fn assert_cluster_patches(kustomization: &serde_yaml::Value) {
    let patches: String = kustomization["patches"]
        .as_sequence()
        .into_iter()
        .flatten()
        .filter_map(|p| p["patch"].as_str())
        .collect();
    let ops: Vec<serde_yaml::Value> = serde_yaml::from_str(&patches).unwrap();
    let value = |path: &str| {
        ops.iter()
            .find(|o| o["path"].as_str() == Some(path))
            .map(|o| o["value"].clone())
            .unwrap_or_else(|| panic!("no patch of {path}"))
    };
    let env = value("/spec/template/spec/containers/0/env/-");
    assert_eq!(env["name"], "POD_IP");
    assert_eq!(env["valueFrom"]["fieldRef"]["fieldPath"], "status.podIP");
    let mount = value("/spec/template/spec/containers/0/volumeMounts/-");
    let dir = Path::new(CLUSTER_SECRET).parent().unwrap();
    assert_eq!(mount["mountPath"].as_str().map(Path::new), Some(dir));
    let volume = value("/spec/template/spec/volumes/-");
    assert_eq!(volume["name"], mount["name"]);
    assert_eq!(volume["secret"]["secretName"], "archway-cluster");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kubernetes_manifests_are_valid_and_their_probes_exist() {
    let mut files = Vec::new();
    yaml_files(&k8s(), &mut files);
    assert!(files.len() >= 10, "{files:?}");
    let mut probes = Vec::new();
    for f in &files {
        for d in docs(f) {
            let kind = d["kind"]
                .as_str()
                .unwrap_or_else(|| panic!("{}: no kind", f.display()));
            assert!(
                d["apiVersion"].as_str().is_some(),
                "{}: no apiVersion",
                f.display()
            );
            if kind == "Kustomization" {
                let dir = f.parent().unwrap();
                for r in d["resources"].as_sequence().into_iter().flatten() {
                    let r = r.as_str().unwrap();
                    assert!(
                        dir.join(r).exists(),
                        "{}: resource {r} is missing",
                        f.display()
                    );
                }
                for g in d["configMapGenerator"].as_sequence().into_iter().flatten() {
                    for file in g["files"].as_sequence().into_iter().flatten() {
                        let cfg = dir.join(file.as_str().unwrap());
                        let stdout = check_config(&cfg);
                        if dir.ends_with("s3") {
                            assert!(
                                stdout.contains("cluster  advertise 10.0.0.7 (POD_IP)"),
                                "{stdout}"
                            );
                            assert_cluster_patches(&d);
                        }
                    }
                }
            }
            if kind == "Deployment" {
                assert_eq!(d["spec"]["replicas"].as_u64(), Some(2));
                let c = &d["spec"]["template"]["spec"]["containers"][0];
                assert_eq!(
                    c["securityContext"]["readOnlyRootFilesystem"].as_bool(),
                    Some(true)
                );
                assert_eq!(
                    d["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"].as_bool(),
                    Some(true)
                );
                for probe in ["readinessProbe", "livenessProbe"] {
                    let h = &c[probe]["httpGet"];
                    assert_eq!(
                        h["port"].as_str(),
                        Some("admin"),
                        "{probe} on the admin port"
                    );
                    probes.push(h["path"].as_str().unwrap().to_string());
                }
            }
        }
    }
    assert_eq!(probes.len(), 2);

    // The probe paths answer 200 on a running archway's admin listener.
    let up = Upstream::start().await;
    let aw = Archway::start(&Settings {
        admin: true,
        ..Settings::single(&up.url())
    })
    .await;
    let admin = aw.admin();
    for p in probes {
        let r = http()
            .get(format!("http://127.0.0.1:{admin}{p}"))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "{p}");
    }
    // /metrics is on the admin listener, not the registry port.
    let r = http()
        .get(format!("http://127.0.0.1:{admin}/metrics"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = http()
        .get(format!("{}/metrics", aw.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
}
