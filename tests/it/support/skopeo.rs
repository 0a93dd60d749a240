//! The real `skopeo` client, and checks on what it wrote.

use std::path::Path;
use std::process::Command;

use super::images::sha256;

pub struct Output {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
}

pub fn run(args: &[&str]) -> Output {
    run_env(args, &[])
}

/// `skopeo copy docker://SRC oci:DIR:latest` over plain HTTP.
pub fn copy_to_oci(src: &str, dir: &Path, extra: &[&str]) -> Output {
    let dest = format!("oci:{}:latest", dir.display());
    let src = format!("docker://{src}");
    let mut args = vec!["copy", "--src-tls-verify=false"];
    args.extend_from_slice(extra);
    args.push(&src);
    args.push(&dest);
    run(&args)
}

/// Checks every blob in an OCI layout against its file name; returns how many were checked.
pub fn verify_oci_layout(dir: &Path) -> usize {
    let blobs = dir.join("blobs").join("sha256");
    let mut n = 0;
    for e in std::fs::read_dir(&blobs).expect("oci layout has blobs") {
        let e = e.expect("entry");
        let data = std::fs::read(e.path()).expect("read blob");
        let name = e.file_name().to_string_lossy().into_owned();
        assert_eq!(
            sha256(&data),
            format!("sha256:{name}"),
            "blob {name} is corrupt"
        );
        n += 1;
    }
    n
}

/// Whether the OCI layout holds a blob with this digest.
pub fn layout_has(dir: &Path, digest: &str) -> bool {
    let hex = digest.trim_start_matches("sha256:");
    dir.join("blobs").join("sha256").join(hex).exists()
}

/// The architecture (and variant) in the config of the image skopeo copied into `dir`.
pub fn copied_arch(dir: &Path) -> String {
    let blob = |d: &str| -> serde_json::Value {
        let hex = d.trim_start_matches("sha256:");
        serde_json::from_slice(&std::fs::read(dir.join("blobs/sha256").join(hex)).unwrap()).unwrap()
    };
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    let manifest = blob(index["manifests"][0]["digest"].as_str().unwrap());
    let config = blob(manifest["config"]["digest"].as_str().unwrap());
    match config["variant"].as_str() {
        Some(v) => format!("{}/{v}", config["architecture"].as_str().unwrap()),
        None => config["architecture"].as_str().unwrap().to_string(),
    }
}

/// Like [`run`], with more environment (a proxy, say).
pub fn run_env(args: &[&str], env: &[(String, String)]) -> Output {
    let out = Command::new("skopeo")
        .args(args)
        .envs(env.iter().cloned())
        .output()
        .expect("skopeo must be installed (make test installs it)");
    Output {
        ok: out.status.success(),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// The digest of the manifest skopeo copied into the OCI layout at `dir`.
pub fn copied_manifest(dir: &Path) -> String {
    let index: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).unwrap()).unwrap();
    index["manifests"][0]["digest"]
        .as_str()
        .expect("a manifest in index.json")
        .to_string()
}
