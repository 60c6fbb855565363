//! Where an image comes from: an OCI image layout directory or a
//! docker-archive tar. Both are read into one `Source`: the verified
//! config, and for each layer where its blob is, how it is compressed and
//! which digests it must have.
//!
//! Invariant: a `Source` is only built from a manifest and config whose
//! digests were checked (where the format names one), whose layer media
//! types are known, and whose layer count matches the config's
//! `rootfs.diff_ids`; every blob it names exists. Layer blobs themselves
//! are verified while they are unpacked (`Store::import`). Takes no locks.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::path::{Component, Path, PathBuf};

use oci_spec::image::{ImageConfiguration, ImageIndex, ImageManifest, MediaType};

use super::digest::Digest;

/// `--image` values that name an image rather than branch directories.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageRef {
    /// `oci:DIR[:TAG]`.
    Oci {
        /// The layout directory.
        dir: PathBuf,
        /// The `org.opencontainers.image.ref.name` to pick.
        tag: Option<String>,
    },
    /// `docker-archive:FILE[:NAME:TAG]`.
    DockerArchive {
        /// The tar file.
        file: PathBuf,
        /// The RepoTags entry to pick.
        name: Option<String>,
    },
}

impl ImageRef {
    /// `None` when `s` is a list of branch directories.
    pub fn parse(s: &str) -> Option<ImageRef> {
        let split = |rest: &str| -> (PathBuf, Option<String>) {
            // A path that exists as given wins over a ":TAG" split.
            if Path::new(rest).exists() || !rest.contains(':') {
                return (PathBuf::from(rest), None);
            }
            match rest.split_once(':') {
                Some((p, t)) if !t.is_empty() => (PathBuf::from(p), Some(t.to_string())),
                _ => (PathBuf::from(rest.trim_end_matches(':')), None),
            }
        };
        if let Some(rest) = s.strip_prefix("oci:") {
            let (dir, tag) = split(rest);
            Some(ImageRef::Oci { dir, tag })
        } else if let Some(rest) = s.strip_prefix("docker-archive:") {
            let (file, name) = split(rest);
            Some(ImageRef::DockerArchive { file, name })
        } else {
            None
        }
    }
}

impl std::fmt::Display for ImageRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ImageRef::Oci { dir, tag: None } => write!(f, "oci:{}", dir.display()),
            ImageRef::Oci { dir, tag: Some(t) } => write!(f, "oci:{}:{t}", dir.display()),
            ImageRef::DockerArchive { file, name: None } => {
                write!(f, "docker-archive:{}", file.display())
            }
            ImageRef::DockerArchive {
                file,
                name: Some(n),
            } => write!(f, "docker-archive:{}:{n}", file.display()),
        }
    }
}

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip.
    Gzip,
    /// zstd.
    Zstd,
    /// Unknown from the format (docker-archive): look at the first bytes.
    Detect,
}

/// The compression a layer media type names; `None` for an unknown type.
pub fn layer_compression(media: &MediaType) -> Option<Compression> {
    match media {
        MediaType::ImageLayer | MediaType::ImageLayerNonDistributable => Some(Compression::None),
        MediaType::ImageLayerGzip | MediaType::ImageLayerNonDistributableGzip => {
            Some(Compression::Gzip)
        }
        MediaType::ImageLayerZstd | MediaType::ImageLayerNonDistributableZstd => {
            Some(Compression::Zstd)
        }
        MediaType::Other(m) => match m.as_str() {
            "application/vnd.docker.image.rootfs.diff.tar.gzip"
            | "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip" => {
                Some(Compression::Gzip)
            }
            "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            _ => None,
        },
        _ => None,
    }
}

/// Where a blob's bytes are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    /// A whole file.
    File(PathBuf),
    /// A member of a tar file.
    InTar {
        /// The tar.
        file: PathBuf,
        /// Offset of the member's data.
        offset: u64,
        /// Its size.
        size: u64,
    },
}

impl Location {
    /// Opens the blob for reading.
    pub fn open(&self) -> io::Result<Box<dyn Read>> {
        match self {
            Location::File(p) => Ok(Box::new(File::open(p)?)),
            Location::InTar { file, offset, size } => {
                let mut f = File::open(file)?;
                f.seek(SeekFrom::Start(*offset))?;
                Ok(Box::new(f.take(*size)))
            }
        }
    }
}

/// One layer to unpack.
#[derive(Debug, Clone)]
pub struct LayerBlob {
    /// The digest of the uncompressed tar (`rootfs.diff_ids`).
    pub diff_id: Digest,
    /// The digest of the blob as stored, when the format names one.
    pub blob: Option<Digest>,
    /// Its compression.
    pub compression: Compression,
    /// Its size in bytes (for progress).
    pub size: u64,
    /// Where it is.
    pub location: Location,
}

/// An image read from a layout or archive, ready to import.
#[derive(Debug, Clone)]
pub struct Source {
    /// Names (tags) the image is known by.
    pub names: Vec<String>,
    /// The config's digest: the image id.
    pub id: Digest,
    /// The config as stored (JSON).
    pub config_json: Vec<u8>,
    /// The parsed config.
    pub config: ImageConfiguration,
    /// The layers, bottom first.
    pub layers: Vec<LayerBlob>,
}

const REF_NAME: &str = "org.opencontainers.image.ref.name";
const MAX_JSON: u64 = 16 << 20;

/// Reads a small blob whole and checks its digest (and size, when known).
fn read_verified(
    what: &str,
    loc: &Location,
    digest: &Digest,
    size: Option<u64>,
) -> Result<Vec<u8>, String> {
    let mut r = loc
        .open()
        .map_err(|e| format!("{what} blob {digest} is missing or unreadable: {e}"))?
        .take(MAX_JSON);
    let mut buf = Vec::new();
    r.read_to_end(&mut buf)
        .map_err(|e| format!("{what} blob {digest}: {e}"))?;
    let got = Digest::of(&buf);
    if &got != digest {
        return Err(format!(
            "{what} blob digest mismatch: expected {digest}, got {got}"
        ));
    }
    if size.is_some_and(|s| s != buf.len() as u64) {
        return Err(format!(
            "{what} blob {digest}: size differs from its descriptor"
        ));
    }
    Ok(buf)
}

fn parse_digest(what: &str, d: &oci_spec::image::Digest) -> Result<Digest, String> {
    Digest::parse(d.as_ref()).map_err(|e| format!("{what}: {e}"))
}

fn diff_ids(config: &ImageConfiguration, n_layers: usize) -> Result<Vec<Digest>, String> {
    let ids = config
        .rootfs()
        .diff_ids()
        .iter()
        .map(|d| Digest::parse(d).map_err(|e| format!("config rootfs.diff_ids: {e}")))
        .collect::<Result<Vec<_>, _>>()?;
    if ids.len() != n_layers {
        return Err(format!(
            "the manifest has {n_layers} layers but the config's rootfs.diff_ids has {}",
            ids.len()
        ));
    }
    Ok(ids)
}

fn host_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "x86" => "386",
        "powerpc64" => "ppc64le",
        a => a,
    }
}

/// Reads an OCI image layout.
pub fn oci(dir: &Path, tag: Option<&str>) -> Result<Source, String> {
    if !dir.join("oci-layout").is_file() {
        return Err(format!(
            "{}: not an OCI image layout (no oci-layout file)",
            dir.display()
        ));
    }
    let blob = |d: &Digest| Location::File(dir.join("blobs/sha256").join(d.hex()));
    let index_json = std::fs::read(dir.join("index.json"))
        .map_err(|e| format!("{}/index.json: {e}", dir.display()))?;
    let index = ImageIndex::from_reader(&index_json[..])
        .map_err(|e| format!("{}/index.json: {e}", dir.display()))?;
    // Flatten nested indexes, keeping the outermost ref name.
    let mut found = Vec::new();
    let mut todo: Vec<(oci_spec::image::Descriptor, Option<String>, u32)> = index
        .manifests()
        .iter()
        .map(|d| (d.clone(), None, 0))
        .collect();
    while let Some((d, outer, depth)) = todo.pop() {
        let name = d
            .annotations()
            .as_ref()
            .and_then(|a| a.get(REF_NAME).cloned())
            .or(outer);
        match d.media_type() {
            MediaType::ImageManifest => found.push((d, name)),
            MediaType::ImageIndex if depth < 4 => {
                let digest = parse_digest("index", d.digest())?;
                let bytes = read_verified("index", &blob(&digest), &digest, Some(d.size()))?;
                let nested = ImageIndex::from_reader(&bytes[..])
                    .map_err(|e| format!("index {digest}: {e}"))?;
                for m in nested.manifests() {
                    todo.push((m.clone(), name.clone(), depth + 1));
                }
            }
            MediaType::Other(m) if m == "application/vnd.docker.distribution.manifest.v2+json" => {
                found.push((d, name))
            }
            other => {
                return Err(format!(
                    "{}: unknown media type {other} in index.json",
                    dir.display()
                ))
            }
        }
    }
    found.reverse();
    let tag_matches = |name: &Option<String>, t: &str| {
        name.as_deref().is_some_and(|n| {
            n == t
                || n.rsplit_once(':')
                    .is_some_and(|(_, nt)| nt == t && !nt.contains('/'))
        })
    };
    let mut candidates: Vec<_> = match tag {
        Some(t) => found
            .into_iter()
            .filter(|(_, n)| tag_matches(n, t))
            .collect(),
        None => found,
    };
    if candidates.len() > 1 {
        // Several platforms of one image: take this host's.
        let here: Vec<_> = candidates
            .iter()
            .filter(|(d, _)| {
                d.platform().as_ref().is_some_and(|p| {
                    p.architecture().to_string() == host_arch() && p.os().to_string() == "linux"
                })
            })
            .cloned()
            .collect();
        if !here.is_empty() {
            candidates = here;
        }
    }
    let (desc, name) = match candidates.len() {
        1 => candidates.swap_remove(0),
        0 => {
            return Err(match tag {
                Some(t) => format!("{}: no image tagged '{t}'", dir.display()),
                None => format!("{}: the layout holds no image", dir.display()),
            })
        }
        _ => {
            let names: Vec<_> = candidates
                .iter()
                .map(|(_, n)| n.clone().unwrap_or_else(|| "<untagged>".into()))
                .collect();
            return Err(format!(
                "{}: holds several images ({}): name one as oci:DIR:TAG",
                dir.display(),
                names.join(", ")
            ));
        }
    };
    let mdigest = parse_digest("manifest", desc.digest())?;
    let mbytes = read_verified("manifest", &blob(&mdigest), &mdigest, Some(desc.size()))?;
    let manifest =
        ImageManifest::from_reader(&mbytes[..]).map_err(|e| format!("manifest {mdigest}: {e}"))?;
    let cdesc = manifest.config();
    let id = parse_digest("config", cdesc.digest())?;
    let config_json = read_verified("config", &blob(&id), &id, Some(cdesc.size()))?;
    let config = ImageConfiguration::from_reader(&config_json[..])
        .map_err(|e| format!("config {id}: {e}"))?;
    let ids = diff_ids(&config, manifest.layers().len())?;
    let mut layers = Vec::new();
    for (i, (l, diff_id)) in manifest.layers().iter().zip(ids).enumerate() {
        let compression = layer_compression(l.media_type())
            .ok_or_else(|| format!("layer {}: unknown media type {}", i + 1, l.media_type()))?;
        let digest = parse_digest(&format!("layer {}", i + 1), l.digest())?;
        let location = blob(&digest);
        if let Location::File(p) = &location {
            if !p.is_file() {
                return Err(format!(
                    "layer {} blob {digest} is missing ({})",
                    i + 1,
                    p.display()
                ));
            }
        }
        layers.push(LayerBlob {
            diff_id,
            blob: Some(digest),
            compression,
            size: l.size(),
            location,
        });
    }
    Ok(Source {
        names: name.into_iter().collect(),
        id,
        config_json,
        config,
        layers,
    })
}

/// A digest a docker-archive member's name carries: `blobs/sha256/<hex>`
/// (docker 25+) or `<hex>.tar` / `<hex>.json` (podman, older docker).
fn digest_in_name(name: &str) -> Option<Digest> {
    if let Some(h) = name.strip_prefix("blobs/sha256/") {
        return Digest::from_hex(h);
    }
    let stem = name
        .strip_suffix(".tar")
        .or_else(|| name.strip_suffix(".json"))?;
    Digest::from_hex(stem)
}

fn normalize(p: &Path) -> Option<String> {
    let mut out: Vec<String> = Vec::new();
    for c in p.components() {
        match c {
            Component::Normal(n) => out.push(n.to_string_lossy().into_owned()),
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop()?;
            }
            Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(out.join("/"))
}

/// The members of a (docker-archive) tar: name -> data offset and size,
/// with symlinked members resolved.
fn tar_members(file: &Path) -> Result<BTreeMap<String, (u64, u64)>, String> {
    let f = File::open(file).map_err(|e| format!("{}: {e}", file.display()))?;
    let mut ar = tar::Archive::new(f);
    let mut files = BTreeMap::new();
    let mut links = BTreeMap::new();
    let entries = ar
        .entries_with_seek()
        .map_err(|e| format!("{}: not a tar archive: {e}", file.display()))?;
    for e in entries {
        let e = e.map_err(|e| format!("{}: bad tar archive: {e}", file.display()))?;
        let Some(name) = e.path().ok().and_then(|p| normalize(&p)) else {
            continue;
        };
        match e.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                files.insert(name, (e.raw_file_position(), e.size()));
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                if let Ok(Some(t)) = e.link_name() {
                    let base = if e.header().entry_type() == tar::EntryType::Symlink {
                        Path::new(&name).parent().unwrap_or(Path::new("")).join(&t)
                    } else {
                        t.into_owned()
                    };
                    if let Some(t) = normalize(&base) {
                        links.insert(name, t);
                    }
                }
            }
            _ => {}
        }
    }
    for (name, target) in &links {
        let mut t = target.clone();
        for _ in 0..8 {
            if let Some(&v) = files.get(&t) {
                files.insert(name.clone(), v);
                break;
            }
            match links.get(&t) {
                Some(next) => t = next.clone(),
                None => break,
            }
        }
    }
    Ok(files)
}

/// Reads a docker-archive (`docker save` / `podman save --format docker-archive`).
pub fn docker_archive(file: &Path, want: Option<&str>) -> Result<Source, String> {
    let members = tar_members(file)?;
    let at = |name: &str| -> Result<Location, String> {
        let n = normalize(Path::new(name)).unwrap_or_default();
        members
            .get(&n)
            .map(|&(offset, size)| Location::InTar {
                file: file.to_path_buf(),
                offset,
                size,
            })
            .ok_or_else(|| format!("{}: member {name} is missing", file.display()))
    };
    let mut manifest_json = Vec::new();
    at("manifest.json")
        .map_err(|_| {
            format!(
                "{}: not a docker archive (no manifest.json)",
                file.display()
            )
        })?
        .open()
        .map_err(|e| format!("{}: {e}", file.display()))?
        .take(MAX_JSON)
        .read_to_end(&mut manifest_json)
        .map_err(|e| format!("{}: {e}", file.display()))?;
    let manifest: serde_json::Value = serde_json::from_slice(&manifest_json)
        .map_err(|e| format!("{}: manifest.json: {e}", file.display()))?;
    let list = manifest.as_array().cloned().unwrap_or_default();
    let tags = |m: &serde_json::Value| -> Vec<String> {
        m.get("RepoTags")
            .and_then(|t| t.as_array())
            .map(|a| {
                a.iter()
                    .filter_map(|s| s.as_str().map(String::from))
                    .collect()
            })
            .unwrap_or_default()
    };
    let chosen: Vec<&serde_json::Value> = match want {
        Some(w) => list
            .iter()
            .filter(|m| {
                tags(m)
                    .iter()
                    .any(|t| t == w || t.rsplit_once(':').is_some_and(|(_, tag)| tag == w))
            })
            .collect(),
        None => list.iter().collect(),
    };
    let m = match chosen.as_slice() {
        [m] => *m,
        [] => {
            return Err(match want {
                Some(w) => format!("{}: no image named '{w}'", file.display()),
                None => format!("{}: manifest.json lists no image", file.display()),
            })
        }
        _ => {
            return Err(format!(
                "{}: holds several images: name one as docker-archive:FILE:NAME",
                file.display()
            ))
        }
    };
    let config_name = m
        .get("Config")
        .and_then(|c| c.as_str())
        .ok_or_else(|| format!("{}: manifest.json has no Config", file.display()))?;
    let loc = at(config_name)?;
    let config_json = match digest_in_name(config_name) {
        Some(d) => read_verified("config", &loc, &d, None)?,
        None => {
            let mut b = Vec::new();
            loc.open()
                .map_err(|e| format!("{}: {e}", file.display()))?
                .take(MAX_JSON)
                .read_to_end(&mut b)
                .map_err(|e| format!("{}: {e}", file.display()))?;
            b
        }
    };
    let id = Digest::of(&config_json);
    let config = ImageConfiguration::from_reader(&config_json[..])
        .map_err(|e| format!("config {config_name}: {e}"))?;
    let layer_names: Vec<&str> = m
        .get("Layers")
        .and_then(|l| l.as_array())
        .map(|a| a.iter().filter_map(|s| s.as_str()).collect())
        .unwrap_or_default();
    let ids = diff_ids(&config, layer_names.len())?;
    let mut layers = Vec::new();
    for (i, (name, diff_id)) in layer_names.iter().zip(ids).enumerate() {
        let location = at(name).map_err(|e| format!("layer {}: {e}", i + 1))?;
        let size = match &location {
            Location::InTar { size, .. } => *size,
            Location::File(_) => 0,
        };
        layers.push(LayerBlob {
            diff_id,
            blob: digest_in_name(name),
            compression: Compression::Detect,
            size,
            location,
        });
    }
    Ok(Source {
        names: tags(m),
        id,
        config_json,
        config,
        layers,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_refs() {
        assert_eq!(ImageRef::parse("/a:/b"), None);
        assert_eq!(
            ImageRef::parse("oci:/nonexistent/x:v1"),
            Some(ImageRef::Oci {
                dir: "/nonexistent/x".into(),
                tag: Some("v1".into())
            })
        );
        assert_eq!(
            ImageRef::parse("oci:/nonexistent/x"),
            Some(ImageRef::Oci {
                dir: "/nonexistent/x".into(),
                tag: None
            })
        );
        assert_eq!(
            ImageRef::parse("docker-archive:/tmp/nonexistent.tar:localhost/a:b"),
            Some(ImageRef::DockerArchive {
                file: "/tmp/nonexistent.tar".into(),
                name: Some("localhost/a:b".into())
            })
        );
    }

    #[test]
    fn media_types() {
        assert_eq!(
            layer_compression(&MediaType::ImageLayerGzip),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression(&MediaType::from(
                "application/vnd.docker.image.rootfs.diff.tar.gzip"
            )),
            Some(Compression::Gzip)
        );
        assert_eq!(
            layer_compression(&MediaType::ImageLayerZstd),
            Some(Compression::Zstd)
        );
        assert_eq!(
            layer_compression(&MediaType::from("application/x-foo")),
            None
        );
        assert_eq!(layer_compression(&MediaType::ImageConfig), None);
    }

    #[test]
    fn archive_member_digests() {
        let h = "a".repeat(64);
        assert_eq!(
            digest_in_name(&format!("{h}.tar")).map(|d| d.hex().to_string()),
            Some(h.clone())
        );
        assert!(digest_in_name(&format!("blobs/sha256/{h}")).is_some());
        assert_eq!(digest_in_name("abc/layer.tar"), None);
        assert_eq!(normalize(Path::new("x/../y.tar")), Some("y.tar".into()));
        assert_eq!(normalize(Path::new("../y.tar")), None);
    }
}
