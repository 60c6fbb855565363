//! The image store: images imported from OCI layouts and docker archives,
//! each layer unpacked once into a directory named by its diff_id, used as
//! a union branch as it is (its `.wh.` files are AUFS whiteouts).
//!
//! Layout (root: `$UNIONFS_RUN_STORE`, else `/var/lib/unionfs-run` as root,
//! else `$XDG_DATA_HOME/unionfs-run` or `~/.local/share/unionfs-run`):
//!
//! ```text
//! lock                       flock: held exclusively while importing or removing
//! layers/sha256/<diff_id>/   one unpacked layer (a branch)
//! images/<config digest>.json  one image: names, layers (bottom first), config
//! images/<config digest>.lock  flock: shared by each container running the image
//! tmp/                       staging: layers being unpacked, records being written
//! ```
//!
//! Invariants: a directory under `layers/` is complete and verified — it
//! is unpacked in `tmp/`, its blob digest and diff_id are checked, it is
//! synced, and only then renamed into place; an error or a crash leaves
//! only junk in `tmp/`, which the next import (holding the lock) removes.
//! A layer is stored once however many images use it, and is removed only
//! with the last image record naming it. Records are written to `tmp/` and
//! renamed. Locks: the one `lock` file, exclusive, for the whole of an
//! import or a removal; reading the records takes none (a record is
//! always whole, thanks to the rename). A run takes its image's `.lock`
//! shared while still holding `lock`, and keeps it until the container has
//! ended; `rmi` takes it exclusive without waiting (under `lock`), so an
//! image in use is refused, never pulled from under a container. Order:
//! `lock`, then an image's `.lock`.

pub mod config;
pub mod digest;
pub mod source;
pub mod unpack;

use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::os::fd::AsFd;
use std::os::unix::fs::DirBuilderExt;
use std::path::{Path, PathBuf};

use nix::fcntl::{Flock, FlockArg, OFlag};
use nix::sys::stat::Mode;
use serde::{Deserialize, Serialize};

use self::digest::{Digest, Hashing};
use self::source::{Compression, ImageRef, LayerBlob};

/// A store failure: one line for the user.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("{0}")]
pub struct StoreError(pub String);

type Result<T> = std::result::Result<T, StoreError>;

fn err(s: impl Into<String>) -> StoreError {
    StoreError(s.into())
}

/// One layer of a stored image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct LayerRecord {
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
    /// Bytes of the uncompressed tar.
    pub size: u64,
}

/// One stored image.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Image {
    /// The config digest, `sha256:<hex>` (the image id).
    pub id: String,
    /// Names (tags); empty once another image took them.
    pub names: Vec<String>,
    /// Layers, bottom first.
    pub layers: Vec<LayerRecord>,
    /// The image config, as stored in the image.
    pub config: serde_json::Value,
}

impl Image {
    /// Total unpacked size in bytes.
    pub fn size(&self) -> u64 {
        self.layers.iter().map(|l| l.size).sum()
    }
}

/// The store's root directory (see the module doc).
pub fn default_root() -> PathBuf {
    if let Some(p) = std::env::var_os("UNIONFS_RUN_STORE") {
        return PathBuf::from(p);
    }
    if nix::unistd::geteuid().is_root() {
        return PathBuf::from("/var/lib/unionfs-run");
    }
    std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"))
        .join("unionfs-run")
}

/// Removes a staging directory on drop unless it was renamed into place.
struct Staging(Option<PathBuf>);

impl Drop for Staging {
    fn drop(&mut self) {
        if let Some(p) = self.0.take() {
            let _ = remove_tree(&p);
        }
    }
}

/// Removes a tree that may hold read-only directories.
fn remove_tree(p: &Path) -> io::Result<()> {
    match std::fs::remove_dir_all(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(_) if !nix::unistd::geteuid().is_root() => {
            // Without root, a 0555 directory cannot be emptied: open it up first.
            let mut stack = vec![p.to_path_buf()];
            while let Some(d) = stack.pop() {
                use std::os::unix::fs::PermissionsExt;
                let _ = std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700));
                if let Ok(rd) = std::fs::read_dir(&d) {
                    for e in rd.flatten() {
                        if e.file_type().is_ok_and(|t| t.is_dir()) {
                            stack.push(e.path());
                        }
                    }
                }
            }
            std::fs::remove_dir_all(p)
        }
        Err(e) => Err(e),
    }
}

/// An open store.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
}

impl Store {
    /// Opens (creating) the store at `root`.
    pub fn open(root: &Path) -> Result<Store> {
        let mk = |p: &Path| {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(p)
                .map_err(|e| {
                    err(format!(
                        "cannot create the image store {}: {e}",
                        p.display()
                    ))
                })
        };
        mk(root)?;
        // The store holds set-uid files and device nodes of images: only its owner enters.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700));
        }
        for d in ["layers/sha256", "images", "tmp"] {
            mk(&root.join(d))?;
        }
        Ok(Store {
            root: root.to_path_buf(),
        })
    }

    /// The store's root.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The directory of a stored layer.
    pub fn layer_dir(&self, diff_id: &Digest) -> PathBuf {
        self.root.join("layers/sha256").join(diff_id.hex())
    }

    fn lock(&self) -> Result<Flock<File>> {
        let f = File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("lock"))
            .map_err(|e| err(format!("cannot open the store lock: {e}")))?;
        Flock::lock(f, FlockArg::LockExclusive)
            .map_err(|(_, e)| err(format!("cannot lock the image store: {e}")))
    }

    /// Staged work left by a crashed import: only ever junk (the lock is held).
    fn clean_tmp(&self) {
        if let Ok(rd) = std::fs::read_dir(self.root.join("tmp")) {
            for e in rd.flatten() {
                let _ = remove_tree(&e.path());
            }
        }
    }

    /// All stored images, sorted by first name.
    pub fn list(&self) -> Result<Vec<Image>> {
        let mut out = Vec::new();
        let rd = std::fs::read_dir(self.root.join("images"))
            .map_err(|e| err(format!("cannot read the image store: {e}")))?;
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let bytes = std::fs::read(&p).map_err(|e| err(format!("{}: {e}", p.display())))?;
            let img: Image =
                serde_json::from_slice(&bytes).map_err(|e| err(format!("{}: {e}", p.display())))?;
            out.push(img);
        }
        out.sort_by(|a, b| (a.names.first(), &a.id).cmp(&(b.names.first(), &b.id)));
        Ok(out)
    }

    fn record_path(&self, id: &Digest) -> PathBuf {
        self.root.join("images").join(format!("{}.json", id.hex()))
    }

    fn write_record(&self, img: &Image) -> Result<()> {
        let id = Digest::parse(&img.id).map_err(err)?;
        let tmp = self.root.join("tmp").join(format!("{}.json", id.hex()));
        let bytes = serde_json::to_vec_pretty(img).map_err(|e| err(e.to_string()))?;
        std::fs::write(&tmp, bytes)
            .and_then(|()| File::open(&tmp)?.sync_all())
            .and_then(|()| std::fs::rename(&tmp, self.record_path(&id)))
            .map_err(|e| err(format!("cannot write the image record: {e}")))
    }

    /// Imports the image `r` (unpacking only the layers not stored yet) and
    /// returns its record. `progress`: show a progress bar while unpacking.
    pub fn import(&self, r: &ImageRef, progress: bool) -> Result<Image> {
        let lock = self.lock()?;
        self.import_locked(r, progress, &lock)
    }

    /// Imports `r` and marks it in use until the returned guard is dropped
    /// (taken before the store lock is released, so `rmi` cannot slip in
    /// between).
    pub fn import_in_use(&self, r: &ImageRef, progress: bool) -> Result<(Image, InUse)> {
        let lock = self.lock()?;
        let img = self.import_locked(r, progress, &lock)?;
        let id = Digest::parse(&img.id).map_err(err)?;
        let f = self.in_use_file(&id)?;
        let guard = Flock::lock(f, FlockArg::LockShared)
            .map_err(|(_, e)| err(format!("cannot mark the image in use: {e}")))?;
        Ok((img, InUse(guard)))
    }

    fn in_use_file(&self, id: &Digest) -> Result<File> {
        File::options()
            .create(true)
            .truncate(false)
            .write(true)
            .open(self.root.join("images").join(format!("{}.lock", id.hex())))
            .map_err(|e| err(format!("cannot open the image's lock: {e}")))
    }

    fn import_locked(&self, r: &ImageRef, progress: bool, _lock: &Flock<File>) -> Result<Image> {
        let src = match r {
            ImageRef::Oci { dir, tag } => source::oci(dir, tag.as_deref()),
            ImageRef::DockerArchive { file, name } => source::docker_archive(file, name.as_deref()),
        }
        .map_err(|e| err(format!("{r}: {e}")))?;
        self.clean_tmp();
        let n = src.layers.len();
        let mut layers = Vec::new();
        for (i, l) in src.layers.iter().enumerate() {
            let dir = self.layer_dir(&l.diff_id);
            let size = if dir.is_dir() {
                self.stored_size(&l.diff_id).unwrap_or(0)
            } else {
                self.unpack_layer(l, i + 1, n, progress)
                    .map_err(|e| err(format!("{r}: layer {}: {e}", i + 1)))?
            };
            layers.push(LayerRecord {
                diff_id: l.diff_id.to_string(),
                size,
            });
        }
        let config: serde_json::Value = serde_json::from_slice(&src.config_json)
            .map_err(|e| err(format!("{r}: config: {e}")))?;
        let mut img = match self.get_by_id(&src.id) {
            Some(mut old) => {
                old.layers = layers;
                old.config = config;
                old
            }
            None => Image {
                id: src.id.to_string(),
                names: Vec::new(),
                layers,
                config,
            },
        };
        // A name moves to the newest image that has it, as with docker tags.
        for name in &src.names {
            for mut other in self.list()? {
                if other.id != img.id && other.names.contains(name) {
                    other.names.retain(|n| n != name);
                    self.write_record(&other)?;
                }
            }
            if !img.names.contains(name) {
                img.names.push(name.clone());
            }
        }
        self.write_record(&img)?;
        Ok(img)
    }

    /// The size recorded for a stored layer by any image using it.
    fn stored_size(&self, diff_id: &Digest) -> Option<u64> {
        let want = diff_id.to_string();
        self.list()
            .ok()?
            .iter()
            .flat_map(|i| i.layers.iter())
            .find(|l| l.diff_id == want)
            .map(|l| l.size)
    }

    fn get_by_id(&self, id: &Digest) -> Option<Image> {
        let bytes = std::fs::read(self.record_path(id)).ok()?;
        serde_json::from_slice(&bytes).ok()
    }

    /// Unpacks one layer into staging, verifies it, renames it into place;
    /// returns the uncompressed size.
    fn unpack_layer(
        &self,
        l: &LayerBlob,
        i: usize,
        n: usize,
        progress: bool,
    ) -> std::result::Result<u64, String> {
        let staging_path =
            self.root
                .join("tmp")
                .join(format!("{}-{}", l.diff_id.hex(), std::process::id()));
        std::fs::DirBuilder::new()
            .mode(0o755)
            .create(&staging_path)
            .map_err(|e| format!("cannot create {}: {e}", staging_path.display()))?;
        let staging = Staging(Some(staging_path.clone()));
        let fd = nix::fcntl::open(
            &staging_path,
            OFlag::O_DIRECTORY | OFlag::O_RDONLY | OFlag::O_CLOEXEC | OFlag::O_NOFOLLOW,
            Mode::empty(),
        )
        .map_err(|e| format!("cannot open {}: {e}", staging_path.display()))?;
        let raw = l.location.open().map_err(|e| {
            format!(
                "blob {} is missing or unreadable: {e}",
                l.blob
                    .as_ref()
                    .map_or_else(|| l.diff_id.to_string(), |b| b.to_string())
            )
        })?;
        let bar = progress_bar(
            progress,
            l.size,
            &format!("layer {i}/{n} {}", l.diff_id.short()),
        );
        let mut br = BufReader::new(Progress {
            inner: raw,
            bar: bar.clone(),
        });
        let compression = match l.compression {
            Compression::Detect => {
                let head = br
                    .fill_buf()
                    .map_err(|e| format!("cannot read the blob: {e}"))?;
                if head.starts_with(&[0x1f, 0x8b]) {
                    Compression::Gzip
                } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
                    Compression::Zstd
                } else {
                    Compression::None
                }
            }
            c => c,
        };
        let as_root = nix::unistd::geteuid().is_root();
        let mut blob = Hashing::new(br);
        let run = |r: &mut dyn Read| -> std::result::Result<(Digest, u64), String> {
            let mut h = Hashing::new(r);
            unpack::unpack(&mut h, &fd, as_root)?;
            let (d, size, _) = h
                .finish()
                .map_err(|e| format!("cannot read the layer: {e}"))?;
            Ok((d, size))
        };
        let unpacked = match compression {
            Compression::Gzip => run(&mut flate2::read::MultiGzDecoder::new(&mut blob)),
            Compression::Zstd => match zstd::Decoder::new(&mut blob) {
                Ok(mut d) => run(&mut d),
                Err(e) => Err(format!("zstd: {e}")),
            },
            Compression::None | Compression::Detect => run(&mut blob),
        };
        let blob_digest = blob.finish().map(|(d, _, _)| d);
        if let Some(b) = bar {
            b.finish_and_clear();
        }
        // A blob that is not the one the manifest names is reported as
        // such, even when it also fails to decompress or unpack.
        if let (Some(want), Ok(got)) = (&l.blob, &blob_digest) {
            if want != got {
                return Err(format!("blob digest mismatch: expected {want}, got {got}"));
            }
        }
        let (diff, size) = unpacked?;
        blob_digest.map_err(|e| format!("cannot read the blob: {e}"))?;
        if diff != l.diff_id {
            return Err(format!(
                "diff_id mismatch: the config says {}, the layer is {diff}",
                l.diff_id
            ));
        }
        // Data first, then the name: after a crash the layer is whole or absent.
        nix::unistd::syncfs(fd.as_fd()).map_err(|e| format!("syncfs: {e}"))?;
        drop(fd);
        let dest = self.layer_dir(&l.diff_id);
        nix::fcntl::renameat2(
            nix::fcntl::AT_FDCWD,
            &staging_path,
            nix::fcntl::AT_FDCWD,
            &dest,
            nix::fcntl::RenameFlags::RENAME_NOREPLACE,
        )
        .map_err(|e| format!("cannot move the layer into {}: {e}", dest.display()))?;
        let mut staging = staging;
        staging.0 = None;
        Ok(size)
    }

    /// Finds the image `what` names: a name (`NAME:TAG`, or `NAME` for
    /// `NAME:latest`), a digest `sha256:<hex>`, or a hex prefix of one.
    pub fn find(&self, what: &str) -> Result<Image> {
        let all = self.list()?;
        let by_name: Vec<_> = all
            .iter()
            .filter(|i| {
                i.names.iter().any(|n| {
                    n == what
                        || *n == format!("{what}:latest")
                        || n.strip_prefix("localhost/") == Some(what)
                })
            })
            .collect();
        if let [one] = by_name.as_slice() {
            return Ok((*one).clone());
        }
        let hex = what.strip_prefix("sha256:").unwrap_or(what);
        if hex.len() >= 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            let hits: Vec<_> = all
                .iter()
                .filter(|i| {
                    i.id.strip_prefix("sha256:")
                        .is_some_and(|h| h.starts_with(hex))
                })
                .collect();
            match hits.as_slice() {
                [one] => return Ok((*one).clone()),
                [] => {}
                _ => return Err(err(format!("'{what}' names several images"))),
            }
        }
        Err(err(format!(
            "no image '{what}' in the store ({})",
            self.root.display()
        )))
    }

    /// Removes an image (a name only untags it while it has others) and
    /// every layer no remaining image uses. Returns what was done, one
    /// line each.
    pub fn remove(&self, what: &str) -> Result<Vec<String>> {
        let _lock = self.lock()?;
        let mut img = self.find(what)?;
        let mut out = Vec::new();
        let by_name = img.names.iter().any(|n| {
            n == what
                || *n == format!("{what}:latest")
                || n.strip_prefix("localhost/") == Some(what)
        });
        if by_name && img.names.len() > 1 {
            img.names.retain(|n| {
                !(n == what
                    || *n == format!("{what}:latest")
                    || n.strip_prefix("localhost/") == Some(what))
            });
            self.write_record(&img)?;
            out.push(format!("Untagged: {what}"));
            return Ok(out);
        }
        let id = Digest::parse(&img.id).map_err(err)?;
        // Containers hold a shared lock on the image while they run.
        let _busy = Flock::lock(self.in_use_file(&id)?, FlockArg::LockExclusiveNonblock)
            .map_err(|_| err(format!("image {what} is in use by a running container")))?;
        for n in &img.names {
            out.push(format!("Untagged: {n}"));
        }
        std::fs::remove_file(self.record_path(&id))
            .map_err(|e| err(format!("cannot remove the image record: {e}")))?;
        let _ = std::fs::remove_file(self.root.join("images").join(format!("{}.lock", id.hex())));
        out.push(format!("Deleted: {}", img.id));
        let still: std::collections::BTreeSet<String> = self
            .list()?
            .iter()
            .flat_map(|i| i.layers.iter().map(|l| l.diff_id.clone()))
            .collect();
        for l in &img.layers {
            if still.contains(&l.diff_id) {
                continue;
            }
            let Ok(d) = Digest::parse(&l.diff_id) else {
                continue;
            };
            let dir = self.layer_dir(&d);
            if !dir.exists() {
                continue;
            }
            // Out of the store's namespace first, so a half-removed layer is never seen.
            let tmp = self.root.join("tmp").join(format!("rm-{}", d.hex()));
            std::fs::rename(&dir, &tmp)
                .and_then(|()| remove_tree(&tmp))
                .map_err(|e| err(format!("cannot remove layer {}: {e}", l.diff_id)))?;
            out.push(format!("Deleted: {} (layer)", l.diff_id));
        }
        Ok(out)
    }
}

/// Keeps an image marked in use (a shared flock on `images/<id>.lock`):
/// `rmi` refuses it while any guard lives (in init and the launcher).
#[derive(Debug)]
pub struct InUse(#[allow(dead_code)] Flock<File>);

/// A reader that advances a progress bar.
struct Progress<R> {
    inner: R,
    bar: Option<indicatif::ProgressBar>,
}

impl<R: Read> Read for Progress<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if let Some(b) = &self.bar {
            b.inc(n as u64);
        }
        Ok(n)
    }
}

fn progress_bar(on: bool, size: u64, msg: &str) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal;
    if !on || !io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(size);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec}",
    ) {
        bar.set_style(style.progress_chars("=> "));
    }
    bar.set_message(msg.to_string());
    Some(bar)
}

/// What an image reference resolves to for a run.
#[derive(Debug)]
pub struct Resolved {
    /// Layer directories, topmost first (union branch order).
    pub branches: Vec<PathBuf>,
    /// The image's settings.
    pub settings: config::Settings,
    /// Held for the container's lifetime, so `rmi` cannot remove its layers.
    pub in_use: InUse,
    /// The image's id (config digest).
    pub id: String,
    /// The store it is in.
    pub store: PathBuf,
}

/// Imports `r` into the default store (once) and returns its branches and settings.
pub fn resolve(r: &ImageRef) -> Result<Resolved> {
    let store = Store::open(&default_root())?;
    let (img, in_use) = store.import_in_use(r, true)?;
    let mut branches = Vec::new();
    for l in img.layers.iter().rev() {
        let d = Digest::parse(&l.diff_id).map_err(err)?;
        branches.push(store.layer_dir(&d));
    }
    let settings =
        config::Settings::from_json(&img.config).map_err(|e| err(format!("{r}: {e}")))?;
    Ok(Resolved {
        branches,
        settings,
        in_use,
        id: img.id.clone(),
        store: store.root().to_path_buf(),
    })
}
