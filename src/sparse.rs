//! Sparse copy-up: a big lower file opened for writing is copied up with
//! no data; the upper file holds only the ranges written since, and an
//! extent map (`<ns>.unionfs.partial` on the upper file, next to the
//! metacopy marker `<ns>.unionfs.metacopy`) says which ranges are still
//! read from the file below. Format: docs/FORMATS.md "Partial files".
//!
//! Invariant (crash safety): a range is read from the upper only once the
//! map says so, and the map says so only after the bytes are in the upper
//! file. The map holds two lists: `lower`, exact as of the last write
//! (written with `setxattr`, no sync, after the data's `pwrite`), and
//! `durable`, as of the last sync (written after an `fdatasync` of the
//! upper file, so every byte it leaves to the upper is on disk). The map
//! also records the boot it was written in: a later mount in the same boot
//! (the daemon was killed, the page cache survived) reads by `lower`, one
//! after a reboot (a crash of the machine may have lost unsynced data) by
//! `durable` — so a written range shows its new content, or its old one
//! from below, never the zeros of a lost write.
//!
//! Locks: per file, `fill` (RwLock: shared by writers around their
//! `pwrite` and map update, exclusive while the remaining lower ranges are
//! copied in, so a fill never overwrites newer data), then `map` (Mutex,
//! short). The table's RwLock is taken alone, never while holding a
//! file's locks.

use std::collections::HashMap;
use std::ffi::OsString;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock};

use crate::error::Result;
use crate::sys;

/// Files smaller than this are copied whole on open for writing: their
/// copy costs less than the bookkeeping, and a complete file can be
/// served by passthrough.
pub const SPARSE_MIN: u64 = 1 << 20;

/// Beyond this many ranges in either list the file is filled and becomes
/// an ordinary upper file (the map must fit one xattr block: 16 bytes a
/// range, 4 KiB on ext4).
pub const MAX_RANGES: usize = 96;

const MAGIC: &[u8; 4] = b"ufp1";
const BOOT_LEN: usize = 36;

/// Sorted, disjoint, non-empty half-open byte ranges.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ranges(pub Vec<(u64, u64)>);

impl Ranges {
    /// Removes `[a, b)`; true when anything changed.
    pub fn subtract(&mut self, a: u64, b: u64) -> bool {
        if a >= b {
            return false;
        }
        let mut out = Vec::with_capacity(self.0.len() + 1);
        let mut changed = false;
        for &(s, e) in &self.0 {
            if e <= a || s >= b {
                out.push((s, e));
                continue;
            }
            changed = true;
            if s < a {
                out.push((s, a));
            }
            if e > b {
                out.push((b, e));
            }
        }
        self.0 = out;
        changed
    }

    /// Whether no range is left.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// `[off, end)` cut at range borders: (start, end, in a range).
    pub fn segments(&self, off: u64, end: u64) -> Vec<(u64, u64, bool)> {
        let mut out = Vec::new();
        let mut pos = off;
        for &(s, e) in &self.0 {
            if e <= pos {
                continue;
            }
            if s >= end {
                break;
            }
            if s > pos {
                out.push((pos, s, false));
                pos = s;
            }
            let stop = e.min(end);
            out.push((pos, stop, true));
            pos = stop;
        }
        if pos < end {
            out.push((pos, end, false));
        }
        out
    }
}

/// The stored extent map.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Map {
    /// `/proc/sys/kernel/random/boot_id` when written.
    pub boot: Vec<u8>,
    /// Ranges read from below, exact as of the last write.
    pub lower: Ranges,
    /// Ranges read from below, as of the last sync (a superset of `lower`).
    pub durable: Ranges,
}

impl Map {
    /// The xattr value (docs/FORMATS.md).
    pub fn encode(&self) -> Vec<u8> {
        let mut v =
            Vec::with_capacity(4 + BOOT_LEN + 8 + 16 * (self.lower.0.len() + self.durable.0.len()));
        v.extend_from_slice(MAGIC);
        let mut boot = self.boot.clone();
        boot.resize(BOOT_LEN, 0);
        v.extend_from_slice(&boot);
        for list in [&self.lower, &self.durable] {
            v.extend_from_slice(
                &u32::try_from(list.0.len())
                    .unwrap_or(u32::MAX)
                    .to_le_bytes(),
            );
            for &(s, e) in &list.0 {
                v.extend_from_slice(&s.to_le_bytes());
                v.extend_from_slice(&e.to_le_bytes());
            }
        }
        v
    }

    /// Parses an xattr value; `None` if malformed (the file is then read
    /// as wholly metadata-only: all data from below, the old content).
    pub fn decode(v: &[u8]) -> Option<Map> {
        let rest = v.strip_prefix(MAGIC.as_slice())?;
        let (boot, mut rest) = rest.split_at_checked(BOOT_LEN)?;
        let mut lists = Vec::new();
        for _ in 0..2 {
            let (n, r) = rest.split_at_checked(4)?;
            let n = u32::from_le_bytes(n.try_into().ok()?) as usize;
            let (body, r) = r.split_at_checked(n.checked_mul(16)?)?;
            let mut list = Vec::with_capacity(n);
            let mut last = 0u64;
            for c in body.chunks_exact(16) {
                let s = u64::from_le_bytes(c[..8].try_into().ok()?);
                let e = u64::from_le_bytes(c[8..].try_into().ok()?);
                if s >= e || s < last {
                    return None;
                }
                last = e;
                list.push((s, e));
            }
            lists.push(Ranges(list));
            rest = r;
        }
        let durable = lists.pop()?;
        let lower = lists.pop()?;
        Some(Map {
            boot: boot.to_vec(),
            lower,
            durable,
        })
    }

    /// The ranges to read from below now, booted as `boot`.
    pub fn effective(&self, boot: &[u8]) -> Ranges {
        let mut b = boot.to_vec();
        b.resize(BOOT_LEN, 0);
        if b == self.boot {
            self.lower.clone()
        } else {
            self.durable.clone()
        }
    }
}

/// The current boot's id (empty where the kernel does not say: then every
/// mount reads by the durable list).
pub fn boot_id() -> Vec<u8> {
    std::fs::read("/proc/sys/kernel/random/boot_id")
        .map(|mut v| {
            v.truncate(BOOT_LEN);
            v
        })
        .unwrap_or_default()
}

#[derive(Debug)]
struct MapState {
    lower: Ranges,
    durable: Ranges,
    /// Filled: an ordinary upper file now.
    done: bool,
}

/// One partially copied-up file.
#[derive(Debug)]
pub struct Partial {
    /// The upper file, read-write.
    pub upper: OwnedFd,
    /// Its (st_dev, st_ino): union inode numbers of deleted files come
    /// back (the upper filesystem reuses its own), so an entry is checked
    /// against the object before it is used for a new open.
    id: (u64, u64),
    lower: OwnedFd,
    name: OsString,
    boot: Vec<u8>,
    durable: bool,
    /// Overlay format: filled when the mount ends, so a kernel mount of
    /// the upper reads it whole.
    fill_at_end: bool,
    fill: RwLock<()>,
    map: Mutex<MapState>,
}

/// What a write asks of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum After {
    /// Nothing: it is done.
    Nothing,
    /// Not done: fill the file first (`UnionFs::complete_data`), then
    /// write it as an ordinary one.
    FillFirst,
}

/// Whether the upper file could look whole to lookup once `[off, end)` is
/// written: lookup reads the markers only of files that occupy less than
/// their size or at most a block (`lookup::may_be_metacopy`), so a partial
/// file must never occupy its size. Bounded from above: every range not
/// below counted as written, rounded out to blocks, plus room for the
/// xattr and extent-tree blocks.
fn would_look_whole(lower: &Ranges, off: u64, end: u64, size: u64, blk: u64) -> bool {
    let size = size.max(end);
    let mut after = lower.clone();
    after.subtract(off, end);
    let mut used = 4 * blk;
    let mut pos = 0u64;
    for &(s, e) in after.0.iter().chain(std::iter::once(&(size, size))) {
        if s > pos {
            used = used.saturating_add((s.div_ceil(blk) - pos / blk) * blk);
        }
        pos = e.max(pos);
    }
    used >= size
}

impl Partial {
    /// The partial file whose upper is `upper` (any fd) and whose data
    /// below is `lower` (any fd), with map xattr `name`; `None` when the
    /// upper carries no map.
    pub fn load(
        upper: BorrowedFd<'_>,
        lower: BorrowedFd<'_>,
        name: OsString,
        boot: &[u8],
        durable: bool,
        fill_at_end: bool,
    ) -> Result<Option<Partial>> {
        let Some(v) = sys::xattr::get(upper, &name)? else {
            return Ok(None);
        };
        let st = sys::fs::fstat(upper)?;
        let size = u64::try_from(st.st_size).unwrap_or(0);
        let mut lower_ranges = match Map::decode(&v) {
            Some(m) => m.effective(boot),
            None => Ranges(vec![(0, size)]),
        };
        // A truncation that reached the disk before its map did.
        lower_ranges.subtract(size, u64::MAX);
        let upper = sys::fs::reopen(upper, nix::fcntl::OFlag::O_RDWR)?;
        let lower = sys::fs::reopen(
            lower,
            nix::fcntl::OFlag::O_RDONLY | nix::fcntl::OFlag::O_NOATIME,
        )
        .or_else(|_| sys::fs::reopen(lower, nix::fcntl::OFlag::O_RDONLY))?;
        Ok(Some(Partial {
            upper,
            id: id_of(&st),
            lower,
            name,
            boot: boot.to_vec(),
            durable,
            fill_at_end,
            fill: RwLock::new(()),
            map: Mutex::new(MapState {
                durable: lower_ranges.clone(),
                lower: lower_ranges,
                done: false,
            }),
        }))
    }

    /// Whether the file was filled (and is an ordinary one now).
    pub fn is_done(&self) -> bool {
        self.map.lock().done
    }

    /// Written since the last sync.
    fn is_dirty(&self) -> bool {
        let m = self.map.lock();
        !m.done && m.lower != m.durable
    }

    /// Fills the file and drops its markers (the end of an overlay-format
    /// mount), else makes what was written durable.
    fn finish(&self) -> Result<()> {
        if self.is_done() {
            return Ok(());
        }
        if !self.fill_at_end {
            return self.sync();
        }
        self.fill()?;
        for n in crate::whiteout::METACOPY_XATTRS
            .iter()
            .chain(crate::whiteout::PARTIAL_XATTRS.iter())
        {
            match sys::xattr::remove(self.upper.as_fd(), std::ffi::OsStr::new(n)) {
                Ok(()) => {}
                Err(e) if e.errno() == nix::errno::Errno::ENODATA => {}
                Err(e) => return Err(e),
            }
        }
        sys::fs::fsync(self.upper.as_fd(), false)
    }

    fn store(&self, m: &MapState) -> Result<()> {
        let v = Map {
            boot: self.boot.clone(),
            lower: m.lower.clone(),
            durable: m.durable.clone(),
        }
        .encode();
        sys::xattr::set(self.upper.as_fd(), &self.name, &v, 0)
    }

    /// Writes `data` at `off` into the upper file and takes the range off
    /// the lower list (after the bytes are there: see the invariant).
    pub fn write(&self, data: &[u8], off: u64) -> Result<(usize, After)> {
        let _f = self.fill.read();
        // The map lock is held across the write: the check below must
        // hold for every write that lands (concurrent writers queue here).
        let mut m = self.map.lock();
        if m.done {
            drop(m);
            return Ok((
                sys::fs::pwrite(self.upper.as_fd(), data, off)?,
                After::Nothing,
            ));
        }
        {
            let st = sys::fs::fstat(self.upper.as_fd())?;
            let size = u64::try_from(st.st_size).unwrap_or(0);
            let blk = u64::try_from(st.st_blksize).unwrap_or(4096).max(4096);
            let end = off.saturating_add(data.len() as u64);
            let lists = m.lower.0.len().max(m.durable.0.len());
            if lists >= MAX_RANGES || would_look_whole(&m.lower, off, end, size, blk) {
                return Ok((0, After::FillFirst));
            }
        }
        let n = sys::fs::pwrite(self.upper.as_fd(), data, off)?;
        if !m.lower.subtract(off, off + n as u64) {
            return Ok((n, After::Nothing));
        }
        self.store(&m)?;
        Ok((n, After::Nothing))
    }

    /// Reads up to `size` bytes at `off`: the upper file's bytes, except
    /// where the map sends the read below. Short only at end of file.
    pub fn read(&self, off: u64, size: u32) -> Result<Vec<u8>> {
        let fsize = u64::try_from(sys::fs::fstat(self.upper.as_fd())?.st_size).unwrap_or(0);
        let end = off.saturating_add(u64::from(size)).min(fsize);
        if end <= off {
            return Ok(Vec::new());
        }
        let segs = self.map.lock().lower.segments(off, end);
        let mut buf = vec![0u8; (end - off) as usize];
        for (s, e, below) in segs {
            let fd = if below {
                self.lower.as_fd()
            } else {
                self.upper.as_fd()
            };
            let mut done = s;
            while done < e {
                let at = (done - off) as usize..(e - off) as usize;
                let n = sys::fs::pread(fd, &mut buf[at], done)?;
                if n == 0 {
                    // Below the lower file's end (it cannot change: a
                    // lower branch) or a hole past the upper's: zeros.
                    break;
                }
                done += n as u64;
            }
        }
        Ok(buf)
    }

    /// Makes everything written so far durable: data first, then the map
    /// that points at it, then the map itself (fsync).
    pub fn sync(&self) -> Result<()> {
        let snapshot = {
            let m = self.map.lock();
            if m.done {
                return sys::fs::fsync(self.upper.as_fd(), false);
            }
            m.lower.clone()
        };
        sys::fs::fsync(self.upper.as_fd(), true)?;
        {
            let mut m = self.map.lock();
            if !m.done {
                m.durable = snapshot;
                self.store(&m)?;
            }
        }
        sys::fs::fsync(self.upper.as_fd(), false)
    }

    /// Copies every range still below into the upper file and syncs it
    /// (unless the mount is volatile). The caller then drops the markers;
    /// until it does, the map still sends those ranges below, where the
    /// same bytes are. Writers wait meanwhile. Filling is not a change of
    /// the file: its times and file capabilities (which a write drops)
    /// are put back.
    pub fn fill(&self) -> Result<()> {
        let _f = self.fill.write();
        let todo = {
            let m = self.map.lock();
            if m.done {
                return Ok(());
            }
            m.lower.clone()
        };
        let st = sys::fs::fstat(self.upper.as_fd())?;
        let caps = std::ffi::OsStr::new("security.capability");
        let cap = sys::xattr::get(self.upper.as_fd(), caps)?;
        for &(s, e) in &todo.0 {
            if let Err(err) = copy_range(self.lower.as_fd(), self.upper.as_fd(), s, e) {
                // A full upper: give the space back. The map still sends
                // these ranges below, so the holes are never read.
                for &(s, e) in &todo.0 {
                    let _ = sys::fs::fallocate(
                        self.upper.as_fd(),
                        libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                        s,
                        e - s,
                    );
                }
                return Err(err);
            }
        }
        if let Some(v) = cap {
            sys::xattr::set(self.upper.as_fd(), caps, &v, 0)?;
        }
        sys::fs::utimes_fd(
            self.upper.as_fd(),
            sys::fs::SetTime::At(st.st_atime, st.st_atime_nsec),
            sys::fs::SetTime::At(st.st_mtime, st.st_mtime_nsec),
        )?;
        if self.durable {
            sys::fs::fsync(self.upper.as_fd(), true)?;
        }
        let mut m = self.map.lock();
        m.lower = Ranges::default();
        m.durable = Ranges::default();
        m.done = true;
        Ok(())
    }

    /// truncate(2): the bytes past `size` are no longer below, even if the
    /// file grows again. The new size reaches the disk before the map
    /// says so (a map read at load is clipped to the size anyway).
    pub fn set_size(&self, size: u64) -> Result<()> {
        let _f = self.fill.write();
        sys::fs::ftruncate(self.upper.as_fd(), size)?;
        let mut m = self.map.lock();
        if m.done {
            return Ok(());
        }
        if self.durable {
            sys::fs::fsync(self.upper.as_fd(), false)?;
        }
        let a = m.lower.subtract(size, u64::MAX);
        let b = m.durable.subtract(size, u64::MAX);
        if a || b {
            self.store(&m)?;
        }
        Ok(())
    }

    /// Gives up the ranges below (the file is being truncated to zero).
    pub fn abandon(&self) {
        let _f = self.fill.write();
        let mut m = self.map.lock();
        m.lower = Ranges::default();
        m.durable = Ranges::default();
        m.done = true;
    }

    /// The fill lock, held exclusively by the caller that drops the
    /// markers after `fill` (so no writer runs between).
    pub fn exclusive(&self) -> parking_lot::RwLockWriteGuard<'_, ()> {
        self.fill.write()
    }
}

fn id_of(st: &nix::sys::stat::FileStat) -> (u64, u64) {
    (st.st_dev, st.st_ino)
}

/// Copies `[s, e)` of `src` to the same offsets of `dst`, skipping the
/// holes of `src` (the upper's unwritten ranges are holes already).
fn copy_range(src: BorrowedFd<'_>, dst: BorrowedFd<'_>, s: u64, e: u64) -> Result<()> {
    let size = u64::try_from(sys::fs::fstat(src)?.st_size).unwrap_or(0);
    let e = e.min(size);
    for (ds, de) in sys::fs::data_extents(src, size)? {
        let (a, b) = (ds.max(s), de.min(e));
        let mut off = a;
        while off < b {
            let want = usize::try_from(b - off).unwrap_or(usize::MAX).min(1 << 30);
            match sys::fs::copy_file_range(src, off, dst, off, want) {
                Ok(0) => break,
                Ok(n) => off += n as u64,
                Err(_) => break,
            }
        }
        if off < b {
            let mut buf = vec![0u8; 1 << 20];
            while off < b {
                let want = usize::try_from(b - off)
                    .unwrap_or(usize::MAX)
                    .min(buf.len());
                let n = sys::fs::pread(src, &mut buf[..want], off)?;
                if n == 0 {
                    break;
                }
                let mut w = 0;
                while w < n {
                    w += sys::fs::pwrite(dst, &buf[w..n], off + w as u64)?;
                }
                off += n as u64;
            }
        }
    }
    Ok(())
}

/// The ranges a partial file with xattrs `x` reads from below (in this
/// boot), if it is one — for readers of an upper outside the mount
/// (`unionfs export`). A malformed map means all of it.
pub fn lower_ranges_of(
    x: &std::collections::BTreeMap<OsString, Vec<u8>>,
    size: u64,
) -> Option<Ranges> {
    let v = crate::whiteout::PARTIAL_XATTRS
        .iter()
        .find_map(|n| x.get(std::ffi::OsStr::new(n)))?;
    let mut r = Map::decode(v).map_or(Ranges(vec![(0, size)]), |m| m.effective(&boot_id()));
    r.subtract(size, u64::MAX);
    Some(r)
}

/// A partial file's merged bytes as a reader: the upper's, except in
/// `lower` ranges (zeros past the lower file's end).
#[derive(Debug)]
pub struct Merged {
    /// The upper file.
    pub upper: std::fs::File,
    /// The file below.
    pub lower: std::fs::File,
    /// Ranges read from below.
    pub ranges: Ranges,
    /// Next offset.
    pub pos: u64,
    /// The upper file's size.
    pub len: u64,
}

impl std::io::Read for Merged {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        use std::os::unix::fs::FileExt;
        if self.pos >= self.len || buf.is_empty() {
            return Ok(0);
        }
        let end = self.pos.saturating_add(buf.len() as u64).min(self.len);
        let Some(&(s, e, below)) = self.ranges.segments(self.pos, end).first() else {
            return Ok(0);
        };
        let want = (e - s) as usize;
        let f = if below { &self.lower } else { &self.upper };
        let mut n = f.read_at(&mut buf[..want], s)?;
        if n == 0 {
            buf[..want].fill(0);
            n = want;
        }
        self.pos += n as u64;
        Ok(n)
    }
}

/// A new map: everything below (`size` bytes), written in boot `boot`.
pub fn initial(size: u64, boot: &[u8]) -> Vec<u8> {
    let all = if size > 0 {
        vec![(0, size)]
    } else {
        Vec::new()
    };
    Map {
        boot: boot.to_vec(),
        lower: Ranges(all.clone()),
        durable: Ranges(all),
    }
    .encode()
}

type Table = RwLock<HashMap<u64, Arc<Partial>>>;

/// How often the flusher makes what was written to partial files durable
/// (so a killed daemon followed by a reboot loses at most this much).
const FLUSH_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// The union's partial files, by union inode number.
#[derive(Debug)]
pub struct Partials {
    map: Arc<Table>,
    /// This boot's id.
    pub boot: Vec<u8>,
    flusher: std::sync::Once,
}

impl Default for Partials {
    fn default() -> Self {
        Partials {
            map: Arc::new(RwLock::new(HashMap::new())),
            boot: boot_id(),
            flusher: std::sync::Once::new(),
        }
    }
}

/// Syncs dirty partial files every `FLUSH_EVERY` until the table is gone.
fn flush_loop(table: std::sync::Weak<Table>) {
    loop {
        std::thread::sleep(FLUSH_EVERY);
        let Some(t) = table.upgrade() else {
            return;
        };
        let dirty: Vec<Arc<Partial>> = t
            .read()
            .values()
            .filter(|p| p.is_dirty())
            .cloned()
            .collect();
        drop(t);
        for p in dirty {
            if let Err(e) = p.sync() {
                tracing::warn!("cannot sync a partially copied-up file: {e}");
            }
        }
    }
}

impl Partials {
    /// The partial file of node `ino`, if it is one and is loaded.
    pub fn get(&self, ino: u64) -> Option<Arc<Partial>> {
        let m = self.map.read();
        if m.is_empty() {
            return None;
        }
        m.get(&ino).filter(|p| !p.is_done()).cloned()
    }

    /// Loads (once) node `ino`'s partial file from its upper `upper` and
    /// data below `lower`.
    pub fn load(
        &self,
        ino: u64,
        upper: BorrowedFd<'_>,
        lower: BorrowedFd<'_>,
        name: OsString,
        durable: bool,
        fill_at_end: bool,
    ) -> Result<Option<Arc<Partial>>> {
        let id = id_of(&sys::fs::fstat(upper)?);
        if let Some(p) = self
            .map
            .read()
            .get(&ino)
            .filter(|p| !p.is_done() && p.id == id)
        {
            return Ok(Some(p.clone()));
        }
        let Some(p) = Partial::load(upper, lower, name, &self.boot, durable, fill_at_end)? else {
            return Ok(None);
        };
        // Started here, in the daemon (after its fork), on first need.
        self.flusher.call_once(|| {
            let weak = Arc::downgrade(&self.map);
            let _ = std::thread::Builder::new()
                .name("unionfs-sparse".into())
                .spawn(move || flush_loop(weak));
        });
        let mut m = self.map.write();
        // Another thread may have loaded it meanwhile: one per file.
        match m.get(&ino) {
            Some(e) if !e.is_done() && e.id == id => Ok(Some(e.clone())),
            _ => {
                let a = Arc::new(p);
                m.insert(ino, Arc::clone(&a));
                Ok(Some(a))
            }
        }
    }

    /// Forgets a partial file of an earlier object with union inode number
    /// `ino` whose upper is not `upper` and is deleted (its number came
    /// back with a new object).
    pub fn evict_stale(&self, ino: u64, upper: BorrowedFd<'_>) {
        if self.map.read().is_empty() {
            return;
        }
        let Ok(st) = sys::fs::fstat(upper) else {
            return;
        };
        let mut m = self.map.write();
        let gone = |p: &Partial| {
            p.id != id_of(&st) && sys::fs::fstat(p.upper.as_fd()).is_ok_and(|s| s.st_nlink == 0)
        };
        if m.get(&ino).is_some_and(|p| gone(p)) {
            m.remove(&ino);
        }
    }

    /// Forgets node `ino`'s partial file (filled, or truncated away).
    pub fn remove(&self, ino: u64) -> Option<Arc<Partial>> {
        self.map.write().remove(&ino)
    }

    /// The mount ends: every partial file is synced, or (overlay format)
    /// filled and made an ordinary file.
    pub fn finish(&self) {
        let all: Vec<Arc<Partial>> = self.map.read().values().cloned().collect();
        for p in all {
            if let Err(e) = p.finish() {
                tracing::warn!("cannot complete a partially copied-up file: {e}");
            }
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn subtract_and_segments() {
        let mut r = Ranges(vec![(0, 100)]);
        assert!(r.subtract(10, 20));
        assert!(!r.subtract(10, 20));
        assert!(r.subtract(90, 200));
        assert_eq!(r.0, vec![(0, 10), (20, 90)]);
        assert_eq!(
            r.segments(5, 95),
            vec![
                (5, 10, true),
                (10, 20, false),
                (20, 90, true),
                (90, 95, false)
            ]
        );
        assert!(r.subtract(0, 1000));
        assert!(r.is_empty());
    }

    #[test]
    fn look_whole_bound() {
        let all = Ranges(vec![(0, 1 << 20)]);
        assert!(!would_look_whole(&all, 10, 11, 1 << 20, 4096));
        // Everything but a few bytes of every block written: whole.
        let mut most = all.clone();
        for b in 0..256u64 {
            most.subtract(b * 4096, b * 4096 + 4000);
        }
        assert!(would_look_whole(&most, 0, 1, 1 << 20, 4096));
        // Small files are whole at once.
        assert!(would_look_whole(&Ranges(vec![(0, 7)]), 5000, 5002, 7, 4096));
    }

    #[test]
    fn map_roundtrip_and_boot() {
        let m = Map {
            boot: b"a".to_vec(),
            lower: Ranges(vec![(0, 5), (9, 12)]),
            durable: Ranges(vec![(0, 12)]),
        };
        let d = Map::decode(&m.encode()).unwrap();
        assert_eq!(d.lower, m.lower);
        assert_eq!(d.durable, m.durable);
        // Same boot: the exact list; another boot: the durable one.
        assert_eq!(d.effective(b"a"), m.lower);
        assert_eq!(d.effective(b"b"), m.durable);
        assert!(Map::decode(b"ufp1").is_none());
        let mut bad = m.encode();
        bad.truncate(bad.len() - 3);
        assert!(Map::decode(&bad).is_none());
    }
}
