//! `unionfs-run commit NAME oci:DIR[:TAG]`: a stopped container as an OCI
//! image — its image's layers, then its upper as one more layer — written
//! as an OCI image layout that `--image oci:DIR:TAG`, podman and skopeo read.
//!
//! Invariant: every layer blob is written by `unionfs export` (the store
//! keeps unpacked directories, not blobs), so the image is self-consistent:
//! `rootfs.diff_ids` are the digests of the tars written here, in the
//! order of the branches, bottom first. Layers are plain tars (for a plain
//! tar the blob digest is the diff_id). Blobs go to a temporary name and are
//! renamed to their digest; `index.json` is replaced last, by rename, so an
//! interrupted commit leaves the layout as it was plus unreferenced blobs.
//! Takes no locks: the container must be stopped (its upper still), and
//! an image removed with `rmi` meanwhile makes the commit fail, not lie.

use std::io::Read;
use std::path::Path;
use std::process::Command;

use serde_json::{json, Value};

use crate::container::{Record, Status};
use crate::store::digest::{Digest, Hashing};
use crate::store::source::ImageRef;

const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const LAYER: &str = "application/vnd.oci.image.layer.v1.tar";
const REF_NAME: &str = "org.opencontainers.image.ref.name";

/// A blob written into the layout.
struct Blob {
    digest: Digest,
    size: u64,
}

/// RFC 3339 UTC time of `secs` since the epoch (days to civil date after
/// Howard Hinnant's algorithm).
fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60
    )
}

fn put_bytes(blobs: &Path, bytes: &[u8]) -> Result<Blob, String> {
    let digest = Digest::of(bytes);
    let path = blobs.join(digest.hex());
    let tmp = blobs.join(format!(".tmp-{}-{}", std::process::id(), digest.hex()));
    std::fs::write(&tmp, bytes)
        .and_then(|()| std::fs::rename(&tmp, &path))
        .map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok(Blob {
        digest,
        size: bytes.len() as u64,
    })
}

/// `unionfs export DIR` into the layout as a plain tar blob.
fn export_layer(blobs: &Path, dir: &Path, lowers: Option<&str>) -> Result<Blob, String> {
    let tmp = blobs.join(format!(".tmp-{}-layer.tar", std::process::id()));
    let mut cmd = Command::new(crate::unionfs_binary());
    cmd.arg("export").arg(dir).arg(&tmp);
    if let Some(l) = lowers {
        cmd.arg("--lowers").arg(l);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", crate::unionfs_binary().display()))?;
    if !out.status.success() {
        let _ = std::fs::remove_file(&tmp);
        let msg = String::from_utf8_lossy(&out.stderr);
        let line = msg.lines().last().unwrap_or("failed");
        return Err(format!(
            "cannot export {}: {}",
            dir.display(),
            line.trim_start_matches("unionfs: ")
        ));
    }
    let f = std::fs::File::open(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let (digest, size, _) = Hashing::new(f)
        .finish()
        .map_err(|e| format!("{}: {e}", tmp.display()))?;
    let path = blobs.join(digest.hex());
    std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(Blob { digest, size })
}

/// The layout's index, or a new one; refuses a directory that is
/// something else.
fn open_layout(dir: &Path) -> Result<Value, String> {
    let index = dir.join("index.json");
    if index.exists() {
        let mut text = Vec::new();
        std::fs::File::open(&index)
            .and_then(|mut f| f.read_to_end(&mut text))
            .map_err(|e| format!("{}: {e}", index.display()))?;
        let v: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("{}: not an OCI index: {e}", index.display()))?;
        if !dir.join("oci-layout").exists() || !v["manifests"].is_array() {
            return Err(format!("{}: not an OCI image layout", dir.display()));
        }
        return Ok(v);
    }
    let busy = std::fs::read_dir(dir).is_ok_and(|mut rd| rd.next().is_some());
    if busy {
        return Err(format!(
            "{} exists and is not an OCI image layout",
            dir.display()
        ));
    }
    Ok(
        json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": []}),
    )
}

/// Commits the stopped container `name` (under the state root `root`) to
/// `target` (`oci:DIR[:TAG]`, TAG default `latest`). Returns the lines to
/// print: the manifest digest and where it went.
pub fn commit(root: &Path, name: &str, target: &str) -> Result<Vec<String>, String> {
    let Some(ImageRef::Oci { dir, tag }) = ImageRef::parse(target) else {
        return Err(format!("{target}: the target must be oci:DIR[:TAG]"));
    };
    let tag = tag.unwrap_or_else(|| "latest".into());
    let cdir = Record::dir(root, name);
    let Some(r) = Record::load(&cdir) else {
        return Err(format!("no container named {name}"));
    };
    match r.status() {
        Status::Exited(_) => {}
        Status::Running => return Err(format!("{name} is running: stop it first")),
        Status::Dead => {
            return Err(format!(
                "{name} was left by a killed launcher: run unionfs-run --cleanup first"
            ))
        }
    }
    if r.remove {
        return Err(format!("{name} was started with --rm: nothing is kept"));
    }
    if r.branches.is_empty() {
        return Err(format!(
            "{name} runs on this machine's own /, which is no image to commit onto (use --image)"
        ));
    }
    // The image's config, when it came from the store; else a bare one.
    let mut config = match (&r.image_id, &r.store) {
        (Some(id), Some(store)) => {
            let s = crate::store::Store::open(store).map_err(|e| e.to_string())?;
            s.find(id)
                .map_err(|e| format!("{name}: its image: {e}"))?
                .config
        }
        _ => json!({"architecture": host_arch(), "os": "linux", "config": {}}),
    };
    if !config.is_object() {
        return Err(format!("{name}: its image config is not an object"));
    }
    for b in &r.branches {
        if !b.is_dir() {
            return Err(format!(
                "{name}: its layer {} is gone (image removed?)",
                b.display()
            ));
        }
    }

    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    let mut index = open_layout(&dir)?;
    std::fs::create_dir_all(&blobs)
        .map_err(|e| format!("cannot create {}: {e}", blobs.display()))?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)
        .map_err(|e| format!("cannot write {}: {e}", dir.display()))?;

    // Bottom first: the branches are recorded topmost first.
    let mut layers: Vec<Blob> = Vec::new();
    for b in r.branches.iter().rev() {
        layers.push(export_layer(&blobs, b, None)?);
    }
    let lowers = crate::join_branches(&r.branches);
    layers.push(export_layer(&blobs, &r.upper, Some(&lowers))?);

    let now = std::env::var("SOURCE_DATE_EPOCH")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs())
        });
    let created = rfc3339(now);
    let diff_ids: Vec<String> = layers.iter().map(|l| l.digest.to_string()).collect();
    // History: the image's own, when it matches its layers, plus this commit.
    let base_layers = layers.len() - 1;
    let mut history: Vec<Value> = config["history"].as_array().cloned().unwrap_or_default();
    let non_empty = history
        .iter()
        .filter(|h| !h["empty_layer"].as_bool().unwrap_or(false))
        .count();
    if non_empty != base_layers {
        history = (0..base_layers)
            .map(|i| json!({"created": created, "created_by": format!("unionfs-run commit: layer {i} of {}", r.image)}))
            .collect();
    }
    history.push(json!({
        "created": created,
        "created_by": format!("unionfs-run commit {name}: {}", r.command.join(" ")),
        "comment": "the container's upper",
    }));
    config["rootfs"] = json!({"type": "layers", "diff_ids": diff_ids});
    config["history"] = Value::Array(history);
    config["created"] = Value::String(created);
    let cbytes = serde_json::to_vec(&config).map_err(|e| e.to_string())?;
    let cblob = put_bytes(&blobs, &cbytes)?;
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": {"mediaType": CONFIG, "digest": cblob.digest.to_string(), "size": cblob.size},
        "layers": layers.iter().map(|l| json!({"mediaType": LAYER, "digest": l.digest.to_string(), "size": l.size})).collect::<Vec<_>>(),
    });
    let mbytes = serde_json::to_vec(&manifest).map_err(|e| e.to_string())?;
    let mblob = put_bytes(&blobs, &mbytes)?;

    // The tag moves to the new manifest, as skopeo does.
    let mut entries: Vec<Value> = index["manifests"].as_array().cloned().unwrap_or_default();
    entries.retain(|m| m["annotations"][REF_NAME].as_str() != Some(tag.as_str()));
    entries.push(json!({
        "mediaType": MANIFEST,
        "digest": mblob.digest.to_string(),
        "size": mblob.size,
        "annotations": {REF_NAME: tag},
    }));
    index["manifests"] = Value::Array(entries);
    let ibytes = serde_json::to_vec_pretty(&index).map_err(|e| e.to_string())?;
    let tmp = dir.join(format!(".index.json.tmp-{}", std::process::id()));
    std::fs::write(&tmp, ibytes)
        .and_then(|()| std::fs::rename(&tmp, dir.join("index.json")))
        .map_err(|e| format!("cannot write {}: {e}", dir.join("index.json").display()))?;
    Ok(vec![
        format!("manifest {}", mblob.digest),
        format!("oci:{}:{tag}", dir.display()),
    ])
}

/// The OCI architecture name of this host.
fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        other => other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(1_700_000_000), "2023-11-14T22:13:20Z");
    }

    #[test]
    fn a_directory_that_is_no_layout_is_refused() {
        let t = tempfile::tempdir().unwrap_or_else(|e| unreachable!("{e}"));
        assert!(open_layout(t.path()).is_ok(), "empty is fine");
        std::fs::write(t.path().join("x"), "").unwrap_or_default();
        assert!(open_layout(t.path()).is_err());
    }
}
