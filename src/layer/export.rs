//! `unionfs export`: an upper as an OCI image layer tar.
//!
//! Invariant: the layer says what the upper says, in the OCI (AUFS) form
//! whatever format the upper was written in: a whiteout of any format is an
//! empty `DIR/.wh.NAME` (mode 0600, the whiteout's owner and mtime, or the
//! directory's when the whiteout is an xattr or lives elsewhere), an opaque
//! directory gets a `DIR/.wh..wh..opq` right after its own entry, private
//! xattrs (`is_private_xattr`) are dropped and the others go in PAX
//! `SCHILY.xattr.*` records, hard links are tar hard links to the first
//! path in sorted order. A directory redirected elsewhere (renamed) cannot
//! be said in a layer: with lowers it is written opaque with its full
//! merged content; without, the export is refused naming it. A metacopy
//! file takes its data from the lowers, or is refused without them.
//!
//! Deterministic: entries in sorted order (directory, its opaque marker,
//! its whiteouts, then its entries by name bytes), GNU headers with mode,
//! uid and gid as on disk, mtime in whole seconds (clamped to `--mtime`
//! when given), empty user/group names, no atime/ctime, fixed gzip header
//! and zstd level: the same upper gives the same bytes. The root directory
//! itself is not an entry (a layer does not change the root's metadata);
//! sockets are skipped (tar cannot hold them). Takes no locks.

use std::collections::HashMap;
use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tar::{EntryType, Header};

use super::{child, io_at, shown, source_of, LayerError, Lowers, Obj, Result, UpperDir};
use crate::whiteout::{self, Redirect};

/// How the layer is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`.tar.gz`, `.tgz`).
    Gzip,
    /// zstd (`.tar.zst`).
    Zstd,
}

impl Compression {
    /// The compression an output name asks for.
    pub fn of_name(name: &Path) -> Compression {
        let n = name.as_os_str().as_bytes();
        if n.ends_with(b".gz") || n.ends_with(b".tgz") {
            Compression::Gzip
        } else if n.ends_with(b".zst") || n.ends_with(b".zstd") {
            Compression::Zstd
        } else {
            Compression::None
        }
    }
}

/// Options of one export.
#[derive(Debug, Clone, Default)]
pub struct ExportOptions {
    /// Clamp every mtime to at most this (seconds since the epoch).
    pub mtime_clamp: Option<u64>,
}

/// The digests of a written layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Digests {
    /// sha256 of the uncompressed tar (the OCI `diff_id`).
    pub diff_id: String,
    /// sha256 of the bytes written (the blob digest; equal to `diff_id`
    /// when uncompressed).
    pub digest: String,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A writer that hashes what passes through it.
struct Hashing<W> {
    inner: W,
    hash: Sha256,
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(buf)?;
        self.hash.update(&buf[..n]);
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

impl<W> Hashing<W> {
    fn new(inner: W) -> Self {
        Hashing {
            inner,
            hash: Sha256::new(),
        }
    }
    fn digest(self) -> (W, String) {
        let d = self.hash.finalize();
        (self.inner, format!("sha256:{}", hex(d.as_slice())))
    }
}

/// The compressor between the tar and the output.
enum Encoder<W: Write> {
    Plain(W),
    Gzip(flate2::write::GzEncoder<W>),
    Zstd(zstd::stream::write::Encoder<'static, W>),
}

impl<W: Write> Write for Encoder<W> {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Encoder::Plain(w) => w.write(buf),
            Encoder::Gzip(w) => w.write(buf),
            Encoder::Zstd(w) => w.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        match self {
            Encoder::Plain(w) => w.flush(),
            Encoder::Gzip(w) => w.flush(),
            Encoder::Zstd(w) => w.flush(),
        }
    }
}

impl<W: Write> Encoder<W> {
    fn new(w: W, c: Compression) -> io::Result<Self> {
        Ok(match c {
            Compression::None => Encoder::Plain(w),
            // No name and mtime 0 in the gzip header: deterministic.
            Compression::Gzip => {
                Encoder::Gzip(flate2::GzBuilder::new().write(w, flate2::Compression::default()))
            }
            Compression::Zstd => Encoder::Zstd(zstd::stream::write::Encoder::new(w, 3)?),
        })
    }
    fn finish(self) -> io::Result<W> {
        match self {
            Encoder::Plain(w) => Ok(w),
            Encoder::Gzip(w) => w.finish(),
            Encoder::Zstd(w) => w.finish(),
        }
    }
}

/// Writes `upper` as a layer to `out`, compressed as asked; returns the
/// digests.
pub fn write_layer<W: Write>(
    upper: &UpperDir,
    lowers: Option<&Lowers>,
    opts: &ExportOptions,
    out: W,
    compression: Compression,
) -> Result<Digests> {
    let wr = |e: io::Error| LayerError::Io {
        path: "layer output".into(),
        err: e,
    };
    let outer = Hashing::new(out);
    let enc = Encoder::new(outer, compression).map_err(wr)?;
    let inner = Hashing::new(enc);
    let mut b = tar::Builder::new(inner);
    b.mode(tar::HeaderMode::Complete);
    let mut ex = Exporter {
        upper,
        lowers,
        opts,
        b: &mut b,
        links: HashMap::new(),
    };
    ex.dir(Path::new(""), &upper.root, Some(PathBuf::new()), false)?;
    let inner = b.into_inner().map_err(wr)?;
    let (enc, diff_id) = inner.digest();
    let outer = enc.finish().map_err(wr)?;
    let (mut out, digest) = outer.digest();
    out.flush().map_err(wr)?;
    Ok(Digests { diff_id, digest })
}

struct Exporter<'a, W: Write> {
    upper: &'a UpperDir,
    lowers: Option<&'a Lowers>,
    opts: &'a ExportOptions,
    b: &'a mut tar::Builder<W>,
    /// (dev, ino) of multiply linked files already written -> their path.
    links: HashMap<(u64, u64), PathBuf>,
}

/// One PAX record: `LEN KEY=VALUE\n`, LEN counting itself.
fn pax_record(key: &[u8], value: &[u8]) -> Vec<u8> {
    let body = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = body + 1;
    while len.to_string().len() + body != len {
        len = len.to_string().len() + body;
    }
    let mut r = len.to_string().into_bytes();
    r.push(b' ');
    r.extend_from_slice(key);
    r.push(b'=');
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

impl<'a, W: Write> Exporter<'a, W> {
    fn mtime(&self, md: &Metadata) -> u64 {
        let t = u64::try_from(md.mtime()).unwrap_or(0);
        match self.opts.mtime_clamp {
            Some(c) => t.min(c),
            None => t,
        }
    }

    fn header(&self, md: &Metadata, ty: EntryType) -> Header {
        let mut h = Header::new_gnu();
        h.set_entry_type(ty);
        h.set_mode(md.mode() & 0o7777);
        h.set_uid(u64::from(md.uid()));
        h.set_gid(u64::from(md.gid()));
        h.set_mtime(self.mtime(md));
        h.set_size(0);
        h
    }

    fn wr(path: &Path) -> impl FnOnce(io::Error) -> LayerError + '_ {
        move |err| LayerError::Io {
            path: format!("layer entry {}", shown(path)),
            err,
        }
    }

    /// The user xattrs of an object as one PAX header, if any.
    fn pax(&mut self, rel: &Path, x: &std::collections::BTreeMap<OsString, Vec<u8>>) -> Result<()> {
        let mut data = Vec::new();
        for (n, v) in x {
            if whiteout::is_private_xattr(n) {
                continue;
            }
            let mut key = b"SCHILY.xattr.".to_vec();
            key.extend_from_slice(n.as_bytes());
            data.extend(pax_record(&key, v));
        }
        if data.is_empty() {
            return Ok(());
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_size(data.len() as u64);
        h.set_path("PaxHeader").map_err(Self::wr(rel))?;
        h.set_cksum();
        self.b.append(&h, data.as_slice()).map_err(Self::wr(rel))
    }

    fn marker(&mut self, path: PathBuf, owner: &Metadata) -> Result<()> {
        let mut h = self.header(owner, EntryType::Regular);
        h.set_mode(0o600);
        self.b
            .append_data(&mut h, &path, io::empty())
            .map_err(Self::wr(&path))
    }

    /// Writes one non-directory object (`md`, data at `data_from`).
    fn object(
        &mut self,
        rel: &Path,
        disk: &Path,
        md: &Metadata,
        x: &std::collections::BTreeMap<OsString, Vec<u8>>,
        data_from: Option<&Path>,
    ) -> Result<()> {
        self.object_from(rel, disk, md, x, data_from, false)
    }

    /// `object`; `partial`: the data is a partial file's (`sparse.rs`),
    /// the upper's bytes merged with those of `data_from` below.
    fn object_from(
        &mut self,
        rel: &Path,
        disk: &Path,
        md: &Metadata,
        x: &std::collections::BTreeMap<OsString, Vec<u8>>,
        data_from: Option<&Path>,
        partial: bool,
    ) -> Result<()> {
        let ft = md.file_type();
        if ft.is_socket() {
            eprintln!("unionfs: export: skipping socket {}", shown(rel));
            return Ok(());
        }
        if md.nlink() > 1 && !ft.is_dir() {
            let key = (md.dev(), md.ino());
            if let Some(first) = self.links.get(&key).cloned() {
                let mut h = self.header(md, EntryType::Link);
                return self
                    .b
                    .append_link(&mut h, rel, &first)
                    .map_err(Self::wr(rel));
            }
            self.links.insert(key, rel.to_path_buf());
        }
        self.pax(rel, x)?;
        if ft.is_symlink() {
            let target = std::fs::read_link(disk).map_err(io_at(disk))?;
            let mut h = self.header(md, EntryType::Symlink);
            return self
                .b
                .append_link(&mut h, rel, &target)
                .map_err(Self::wr(rel));
        }
        if ft.is_file() {
            let ranges = crate::sparse::lower_ranges_of(x, md.len()).filter(|_| partial);
            if let (Some(ranges), Some(below)) = (ranges, data_from) {
                let upper = File::open(disk).map_err(io_at(disk))?;
                let lower = File::open(below).map_err(io_at(below))?;
                let len = md.len();
                let mut h = self.header(md, EntryType::Regular);
                h.set_size(len);
                let data = Exact {
                    inner: crate::sparse::Merged {
                        upper,
                        lower,
                        ranges,
                        pos: 0,
                        len,
                    },
                    left: len,
                };
                return self
                    .b
                    .append_data(&mut h, rel, data)
                    .map_err(|e| io_at(disk)(e));
            }
            let src = data_from.unwrap_or(disk);
            let f = File::open(src).map_err(io_at(src))?;
            let len = f.metadata().map_err(io_at(src))?.len();
            let mut h = self.header(md, EntryType::Regular);
            h.set_size(len);
            let data = Exact {
                inner: f.take(len),
                left: len,
            };
            return self
                .b
                .append_data(&mut h, rel, data)
                .map_err(|e| io_at(src)(e));
        }
        let ty = if ft.is_char_device() {
            EntryType::Char
        } else if ft.is_block_device() {
            EntryType::Block
        } else {
            EntryType::Fifo
        };
        let mut h = self.header(md, ty);
        if ty != EntryType::Fifo {
            let rdev = md.rdev();
            h.set_device_major(nix::sys::stat::major(rdev) as u32)
                .map_err(Self::wr(rel))?;
            h.set_device_minor(nix::sys::stat::minor(rdev) as u32)
                .map_err(Self::wr(rel))?;
        }
        self.b
            .append_data(&mut h, rel, io::empty())
            .map_err(Self::wr(rel))
    }

    fn dir_header(
        &mut self,
        rel: &Path,
        md: &Metadata,
        x: &std::collections::BTreeMap<OsString, Vec<u8>>,
    ) -> Result<()> {
        self.pax(rel, x)?;
        let mut h = self.header(md, EntryType::Directory);
        self.b
            .append_data(&mut h, rel, io::empty())
            .map_err(Self::wr(rel))
    }

    fn need_lowers(&self, rel: &Path, what: &str) -> Result<&'a Lowers> {
        self.lowers.ok_or_else(|| {
            LayerError::Refused(format!(
                "{}: {what}; give --lowers to export it",
                shown(rel)
            ))
        })
    }

    /// Writes the upper directory at view path `rel` (on disk `disk`),
    /// whose lower content comes from `src`. `whole`: the directory is
    /// written with its complete merged content and no markers (it is
    /// inside a directory written opaque).
    fn dir(&mut self, rel: &Path, disk: &Path, src: Option<PathBuf>, whole: bool) -> Result<()> {
        let l = self.upper.list(rel)?;
        let dir_md = std::fs::symlink_metadata(disk).map_err(io_at(disk))?;
        if !whole {
            if l.opaque && !rel.as_os_str().is_empty() {
                self.marker(child(rel, OsStr::new(whiteout::OPAQUE_MARKER)), &dir_md)?;
            }
            for (n, m) in &l.whiteouts {
                let owner = m.as_ref().unwrap_or(&dir_md);
                self.marker(child(rel, &whiteout::whiteout_name(n)), owner)?;
            }
        }
        let content_src = if l.opaque { None } else { src };
        let mut names: Vec<OsString> = l.entries.keys().cloned().collect();
        if whole {
            if let (Some(q), Some(lowers)) = (&content_src, self.lowers) {
                for n in lowers.names(q)? {
                    if !l.whiteouts.contains_key(&n) && !l.entries.contains_key(&n) {
                        names.push(n);
                    }
                }
            }
            names.sort();
        }
        for n in names {
            let p = child(rel, &n);
            let Some(e) = l.entries.get(&n) else {
                // Lower-only, inside a directory written whole.
                if let (Some(q), Some(lowers)) = (&content_src, self.lowers) {
                    self.lower_tree(lowers, &p, &child(q, &n))?;
                }
                continue;
            };
            match &e.obj {
                Obj::Dir { redirect } => {
                    let s = source_of(content_src.as_deref(), &n, redirect.as_ref());
                    self.dir_header(&p, &e.md, &e.xattrs)?;
                    if redirect.is_some() && !whole {
                        self.need_lowers(
                            &p,
                            "a renamed (redirected) directory cannot be said in an OCI layer",
                        )?;
                        self.marker(child(&p, OsStr::new(whiteout::OPAQUE_MARKER)), &e.md)?;
                        self.dir(&p, &e.path, s, true)?;
                    } else {
                        self.dir(&p, &e.path, s, whole)?;
                    }
                }
                Obj::File {
                    metacopy: true,
                    redirect,
                } => {
                    let lowers = self.need_lowers(
                        &p,
                        "a metadata-only (metacopy) file has its data in the lowers",
                    )?;
                    let from = match redirect {
                        Some(Redirect::Absolute(a)) => Some(a.clone()),
                        _ => source_of(content_src.as_deref(), &n, redirect.as_ref()),
                    };
                    let found = match &from {
                        Some(f) => lowers.find(f)?,
                        None => None,
                    };
                    let Some(found) = found.filter(|f| f.md.is_file()) else {
                        return Err(LayerError::Refused(format!(
                            "{}: metacopy file whose data is in no lower file",
                            shown(&p)
                        )));
                    };
                    self.object_from(&p, &e.path, &e.md, &e.xattrs, Some(&found.path), true)?;
                }
                _ => self.object(&p, &e.path, &e.md, &e.xattrs, None)?,
            }
        }
        Ok(())
    }

    /// Writes lower object `q` (merged view) at view path `p`, whole.
    fn lower_tree(&mut self, lowers: &Lowers, p: &Path, q: &Path) -> Result<()> {
        let Some(f) = lowers.find(q)? else {
            return Ok(());
        };
        let x = super::xattrs(&f.path)?;
        if !f.md.is_dir() {
            return self.object(p, &f.path, &f.md, &x, None);
        }
        self.dir_header(p, &f.md, &x)?;
        for n in lowers.names(q)? {
            self.lower_tree(lowers, &child(p, &n), &child(q, &n))?;
        }
        Ok(())
    }
}

/// A reader that fails unless it yields exactly `left` bytes (a file that
/// shrank while being read would corrupt the tar).
struct Exact<R> {
    inner: R,
    left: u64,
}

impl<R: Read> Read for Exact<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        if n == 0 && self.left > 0 && !buf.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shrank while being exported",
            ));
        }
        self.left -= n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record(b"a", b"b"), b"6 a=b\n".to_vec());
        let r = pax_record(b"SCHILY.xattr.user.k", &[b'v'; 80]);
        let len: usize = String::from_utf8_lossy(&r)
            .split(' ')
            .next()
            .and_then(|n| n.parse().ok())
            .unwrap_or(0);
        assert_eq!(len, r.len());
        // Crossing a power of ten: 7 bytes of body + "10" = ... must settle.
        for v in 0..120 {
            let r = pax_record(b"k", &vec![b'x'; v]);
            let len: usize = String::from_utf8_lossy(&r)
                .split(' ')
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            assert_eq!(len, r.len(), "{v}");
        }
    }

    #[test]
    fn compression_by_name() {
        assert_eq!(Compression::of_name(Path::new("l.tar")), Compression::None);
        assert_eq!(
            Compression::of_name(Path::new("l.tar.gz")),
            Compression::Gzip
        );
        assert_eq!(Compression::of_name(Path::new("l.tgz")), Compression::Gzip);
        assert_eq!(
            Compression::of_name(Path::new("l.tar.zst")),
            Compression::Zstd
        );
        assert_eq!(Compression::of_name(Path::new("-")), Compression::None);
    }
}
