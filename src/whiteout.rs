//! The on-disk vocabulary of unions: whiteouts, opaque markers, redirects,
//! the names and xattrs that are private to the union, and the formats a
//! union may write them in (`WhiteoutFormat`).
//!
//! Invariant: this module alone decides what a raw branch name or xattr
//! means; everything else asks it. Pure functions only; takes no locks.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;

/// Prefix of AUFS/OCI whiteouts and of every AUFS-internal name.
pub const WH_PREFIX: &[u8] = b".wh.";
/// The AUFS/OCI opaque-directory marker file.
pub const OPAQUE_MARKER: &str = ".wh..wh..opq";
/// The union's staging area inside the upper when no workdir is given.
pub const STAGING_NAME: &str = ".wh..wh.unionfs";
/// AUFS's whiteout base in a writable branch's root: every whiteout of
/// the branch is a hard link to it, unless the branch is `rw+nolwh`.
pub const WHITEOUT_BASE: &str = ".wh..wh.aufs";
/// unionfs-fuse keeps whiteouts as `<branch>/.unionfs/<path>_HIDDEN~`.
pub const UNIONFS_FUSE_DIRS: [&str; 2] = [".unionfs", ".unionfs-fuse"];
/// Suffix of a unionfs-fuse whiteout.
pub const HIDDEN_SUFFIX: &str = "_HIDDEN~";

/// Xattrs whose value `y` makes a directory opaque (`x`: has xattr whiteouts).
pub const OPAQUE_XATTRS: [&str; 3] = [
    "trusted.overlay.opaque",
    "user.overlay.opaque",
    "user.fuseoverlayfs.opaque",
];
/// Xattrs that turn an empty regular file into a whiteout.
pub const WHITEOUT_XATTRS: [&str; 2] = ["trusted.overlay.whiteout", "user.overlay.whiteout"];
/// Xattrs naming the path a directory takes its lower content from.
pub const REDIRECT_XATTRS: [&str; 4] = [
    "trusted.overlay.redirect",
    "user.overlay.redirect",
    "trusted.unionfs.redirect",
    "user.unionfs.redirect",
];
/// Xattrs marking a regular file whose data is not here but in the same
/// path (or its redirect) further down: a metadata-only copy.
pub const METACOPY_XATTRS: [&str; 4] = [
    "trusted.overlay.metacopy",
    "user.overlay.metacopy",
    "trusted.unionfs.metacopy",
    "user.unionfs.metacopy",
];
/// Xattrs marking an upper directory that holds copied-up objects, whose
/// union inode numbers are recorded in [`INO_XATTRS`].
pub const IMPURE_XATTRS: [&str; 2] = ["trusted.unionfs.impure", "user.unionfs.impure"];
/// Xattrs recording the union inode number of a copied-up object, so
/// st_ino does not change when an object is copied up.
pub const INO_XATTRS: [&str; 2] = ["trusted.unionfs.ino", "user.unionfs.ino"];
/// Xattrs recording the union link count of a hard-linked lower file
/// after copy-up (the upper inode's own count includes the index entry).
pub const NLINK_XATTRS: [&str; 4] = [
    "trusted.overlay.nlink",
    "user.overlay.nlink",
    "trusted.unionfs.nlink",
    "user.unionfs.nlink",
];
/// Xattr (on the upper root) recording the whiteout format of an upper.
pub const FORMAT_XATTRS: [&str; 2] = ["trusted.unionfs.format", "user.unionfs.format"];

/// Xattr prefixes that belong to union implementations, never to users.
const PRIVATE_XATTR_PREFIXES: [&[u8]; 5] = [
    b"trusted.overlay.",
    b"user.overlay.",
    b"user.fuseoverlayfs.",
    b"trusted.unionfs.",
    b"user.unionfs.",
];

/// The extent map of a partially copied-up file (`sparse.rs`).
pub const PARTIAL_XATTRS: [&str; 2] = ["trusted.unionfs.partial", "user.unionfs.partial"];

/// What a raw name found in a branch directory means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NameClass<'a> {
    /// An ordinary name, visible unless something else hides it.
    Plain,
    /// `.wh.<name>`: hides `<name>` in the branches below.
    Whiteout(&'a OsStr),
    /// `.wh..wh..opq`: the directory holding it is opaque.
    OpaqueMarker,
    /// Any other `.wh..wh.*` name: AUFS or union internals, never shown.
    Internal,
}

/// Classifies a raw name from a branch directory.
pub fn classify_name(name: &OsStr) -> NameClass<'_> {
    let b = name.as_bytes();
    let Some(rest) = b.strip_prefix(WH_PREFIX) else {
        return NameClass::Plain;
    };
    if name == OPAQUE_MARKER {
        NameClass::OpaqueMarker
    } else if rest.starts_with(WH_PREFIX) || rest.is_empty() {
        NameClass::Internal
    } else {
        NameClass::Whiteout(OsStr::from_bytes(rest))
    }
}

/// The longest name a Linux branch directory holds (NAME_MAX): longer
/// names cannot exist in any branch, whatever the union's format.
pub const NAME_MAX: usize = 255;

/// The longest name whose AUFS whiteout `.wh.<name>` still fits in a branch
/// directory: what a union writing AUFS whiteouts reports as its NAME_MAX,
/// so that anything it creates can later be deleted.
pub const AUFS_NAME_MAX: usize = NAME_MAX - WH_PREFIX.len();

/// True when the AUFS whiteout of `name` fits in a branch directory. A
/// lower name longer than [`AUFS_NAME_MAX`] cannot be whited out in that
/// format, so an AUFS-format union cannot delete it.
pub fn aufs_whiteout_fits(name: &OsStr) -> bool {
    name.len() <= AUFS_NAME_MAX
}

/// True for names that cannot be created through the mount (OCI rule).
pub fn is_reserved(name: &OsStr) -> bool {
    name.as_bytes().starts_with(WH_PREFIX)
}

/// The AUFS whiteout name for `name`.
pub fn whiteout_name(name: &OsStr) -> std::ffi::OsString {
    let mut v = WH_PREFIX.to_vec();
    v.extend_from_slice(name.as_bytes());
    std::ffi::OsString::from(std::ffi::OsStr::from_bytes(&v))
}

/// True when an xattr belongs to a union implementation and must be
/// hidden from the merged view and never copied up.
pub fn is_private_xattr(name: &OsStr) -> bool {
    let b = name.as_bytes();
    PRIVATE_XATTR_PREFIXES.iter().any(|p| b.starts_with(p))
}

/// Opacity of one directory in one branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Opacity {
    /// Lower branches show through.
    #[default]
    Transparent,
    /// Lower branches are hidden.
    Opaque,
    /// Lower branches show through, and empty files here may be xattr whiteouts.
    HasXattrWhiteouts,
}

/// Interprets the value of one of [`OPAQUE_XATTRS`].
pub fn opacity_from_xattr(value: &[u8]) -> Opacity {
    match value {
        b"y" => Opacity::Opaque,
        b"x" => Opacity::HasXattrWhiteouts,
        _ => Opacity::Transparent,
    }
}

/// True for a character device 0:0, the overlayfs whiteout.
pub fn is_char_whiteout(mode: u32, rdev: u64) -> bool {
    mode & libc::S_IFMT == libc::S_IFCHR && rdev == 0
}

/// A parsed `*.overlay.redirect` value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// Absolute from the union root; components relative to a branch root.
    Absolute(std::path::PathBuf),
    /// A new name in the same parent directory.
    Relative(std::ffi::OsString),
}

/// Parses a redirect xattr value; `None` for values that cannot be honoured
/// safely (empty, longer than PATH_MAX, `..` components, a relative value
/// with a slash).
pub fn parse_redirect(value: &[u8]) -> Option<Redirect> {
    let value = value.strip_suffix(b"\0").unwrap_or(value);
    if value.is_empty() || value.len() >= libc::PATH_MAX as usize {
        return None;
    }
    if let Some(abs) = value.strip_prefix(b"/") {
        let mut p = std::path::PathBuf::new();
        for c in abs.split(|b| *b == b'/').filter(|c| !c.is_empty()) {
            if c == b".." || c == b"." {
                return None;
            }
            p.push(OsStr::from_bytes(c));
        }
        Some(Redirect::Absolute(p))
    } else if value.contains(&b'/') || value == b".." || value == b"." {
        None
    } else {
        Some(Redirect::Relative(OsStr::from_bytes(value).to_os_string()))
    }
}

/// The unionfs-fuse whiteout file name for the last component `name`.
pub fn hidden_name(name: &OsStr) -> std::ffi::OsString {
    let mut s = name.to_os_string();
    s.push(HIDDEN_SUFFIX);
    s
}

/// If `name` is a unionfs-fuse whiteout, the name it hides.
pub fn strip_hidden(name: &OsStr) -> Option<&OsStr> {
    name.as_bytes()
        .strip_suffix(HIDDEN_SUFFIX.as_bytes())
        .filter(|s| !s.is_empty())
        .map(OsStr::from_bytes)
}

/// The format whiteouts and opaque markers are written in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WhiteoutFormat {
    /// `.wh.<name>` files and `.wh..wh..opq` (no privilege needed; an OCI layer as is).
    #[default]
    Aufs,
    /// char 0:0 devices and `*.overlay.opaque=y` (kernel overlayfs can mount it).
    Overlay,
}

impl WhiteoutFormat {
    /// The NAME_MAX of a union writing this format: names longer than it
    /// are neither created nor found. AUFS whiteouts prefix a name with
    /// `.wh.`, so every name the union creates must leave room for it.
    pub fn name_max(self) -> usize {
        match self {
            WhiteoutFormat::Aufs => AUFS_NAME_MAX,
            WhiteoutFormat::Overlay => NAME_MAX,
        }
    }
}

impl std::fmt::Display for WhiteoutFormat {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            WhiteoutFormat::Aufs => "aufs",
            WhiteoutFormat::Overlay => "overlay",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn os(s: &str) -> &OsStr {
        OsStr::new(s)
    }

    #[test]
    fn aufs_whiteouts_fit_names_up_to_251_bytes() {
        assert_eq!(AUFS_NAME_MAX, 251);
        let name = |n: usize| std::ffi::OsString::from("a".repeat(n));
        assert!(aufs_whiteout_fits(&name(1)));
        assert!(aufs_whiteout_fits(&name(251)));
        assert_eq!(whiteout_name(&name(251)).len(), NAME_MAX);
        for n in 252..=NAME_MAX {
            assert!(!aufs_whiteout_fits(&name(n)), "{n}");
        }
    }

    #[test]
    fn classifies_names() {
        assert_eq!(classify_name(os("foo")), NameClass::Plain);
        assert_eq!(classify_name(os(".whx")), NameClass::Plain);
        assert_eq!(classify_name(os(".wh.foo")), NameClass::Whiteout(os("foo")));
        assert_eq!(classify_name(os(".wh..wh..opq")), NameClass::OpaqueMarker);
        assert_eq!(classify_name(os(".wh..wh.aufs")), NameClass::Internal);
        assert_eq!(classify_name(os(".wh..wh.plnk")), NameClass::Internal);
        assert_eq!(classify_name(os(".wh..wh.orph")), NameClass::Internal);
        assert_eq!(classify_name(os(STAGING_NAME)), NameClass::Internal);
        assert_eq!(classify_name(os(".wh.")), NameClass::Internal);
        // `.wh..dr.*` and `.wh.hino` are AUFS internals that look like whiteouts
        // of hidden names; hiding `.dr.x`/`hino` below is harmless, and they
        // never show themselves.
        assert!(matches!(
            classify_name(os(".wh.hino")),
            NameClass::Whiteout(_)
        ));
        assert!(is_reserved(os(".wh.x")));
        assert!(!is_reserved(os("x.wh.")));
        assert_eq!(whiteout_name(os("a b")), os(".wh.a b"));
    }

    #[test]
    fn private_xattrs() {
        for p in [
            "trusted.overlay.opaque",
            "user.overlay.redirect",
            "user.fuseoverlayfs.origin",
            "trusted.unionfs.origin",
            "user.unionfs.x",
        ] {
            assert!(is_private_xattr(os(p)), "{p}");
        }
        for p in [
            "user.mime",
            "security.capability",
            "trusted.foo",
            "user.overlayx",
        ] {
            assert!(!is_private_xattr(os(p)), "{p}");
        }
    }

    #[test]
    fn opacity_values() {
        assert_eq!(opacity_from_xattr(b"y"), Opacity::Opaque);
        assert_eq!(opacity_from_xattr(b"x"), Opacity::HasXattrWhiteouts);
        assert_eq!(opacity_from_xattr(b"n"), Opacity::Transparent);
        assert_eq!(opacity_from_xattr(b""), Opacity::Transparent);
    }

    #[test]
    fn char_whiteouts() {
        assert!(is_char_whiteout(libc::S_IFCHR | 0o600, 0));
        assert!(!is_char_whiteout(libc::S_IFCHR | 0o600, 0x103));
        assert!(!is_char_whiteout(libc::S_IFREG, 0));
    }

    #[test]
    fn redirects() {
        assert_eq!(
            parse_redirect(b"/a/b"),
            Some(Redirect::Absolute("a/b".into()))
        );
        assert_eq!(
            parse_redirect(b"/a//b/\0"),
            Some(Redirect::Absolute("a/b".into()))
        );
        assert_eq!(parse_redirect(b"x"), Some(Redirect::Relative("x".into())));
        assert_eq!(parse_redirect(b"/a/../b"), None);
        assert_eq!(parse_redirect(b"a/b"), None);
        assert_eq!(parse_redirect(b""), None);
        assert_eq!(parse_redirect(b".."), None);
        let long = [b"/".as_slice(), &[b'a'; 4095]].concat();
        assert_eq!(parse_redirect(&long), None);
        assert!(parse_redirect(&long[..4095]).is_some());
    }

    #[test]
    fn hidden_names() {
        assert_eq!(hidden_name(os("f")), os("f_HIDDEN~"));
        assert_eq!(strip_hidden(os("f_HIDDEN~")), Some(os("f")));
        assert_eq!(strip_hidden(os("_HIDDEN~")), None);
        assert_eq!(strip_hidden(os("f")), None);
    }
}
