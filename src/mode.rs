//! Branch modes as AUFS spells them (aufs.5, "Branch Syntax"):
//! `rw`, `ro`, `rr`, with the attributes `+wh` and `+nolwh`.
//!
//! Invariant: a `Mode` is a value; parsing and printing are inverse on the
//! canonical spelling (`ro+wh`, `rw+nolwh`, ...), and every mode the union
//! accepts is one of: writable (`rw`, whiteouts always honoured), read-only
//! with or without whiteouts honoured (`ro+wh` / `ro`), really read-only
//! (`rr`, `rr+wh`: the branch never changes, so caches may trust it).
//! Takes no locks.

use std::fmt;

/// What the union may do to a branch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Perm {
    /// Readable and writable.
    Rw,
    /// Read-only: the union never writes it, but someone else may.
    Ro,
    /// Really read-only: nobody changes it while mounted (iso9660,
    /// squashfs, erofs, an image layer); its lookups may be cached forever.
    Rr,
}

/// A branch mode: permission plus attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mode {
    /// The permission.
    pub perm: Perm,
    /// Whiteouts and opaque markers in a read-only branch are honoured
    /// (`+wh`). Always true for `rw`: a writable branch holds the union's
    /// own whiteouts.
    pub wh: bool,
    /// `rw+nolwh`: whiteouts are separate empty files, never hard links to
    /// the branch's whiteout base.
    pub nolwh: bool,
}

impl Mode {
    /// `rw`.
    pub const RW: Mode = Mode {
        perm: Perm::Rw,
        wh: true,
        nolwh: false,
    };
    /// `ro+wh`: the default of a lower branch (image layers carry whiteouts).
    pub const RO_WH: Mode = Mode {
        perm: Perm::Ro,
        wh: true,
        nolwh: false,
    };

    /// Whether the union writes this branch.
    pub fn writable(self) -> bool {
        self.perm == Perm::Rw
    }

    /// Parses a mode word (`rw`, `ro+wh`, `rr`, `rw+nolwh`, `nfsro`; any
    /// case). `unpin` is accepted and has no effect (branch roots are held
    /// open, never pinned against rename). `None` for anything else.
    pub fn parse(word: &str) -> Option<Mode> {
        let mut parts = word.split('+');
        let base = parts.next()?.to_ascii_lowercase();
        let mut m = match base.as_str() {
            "rw" => Mode::RW,
            "ro" | "nfsro" => Mode {
                perm: Perm::Ro,
                wh: false,
                nolwh: false,
            },
            "rr" => Mode {
                perm: Perm::Rr,
                wh: false,
                nolwh: false,
            },
            _ => return None,
        };
        for attr in parts {
            match attr.to_ascii_lowercase().as_str() {
                "wh" if !m.writable() => m.wh = true,
                "nolwh" if m.writable() => m.nolwh = true,
                "unpin" => {}
                _ => return None,
            }
        }
        Some(m)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let base = match self.perm {
            Perm::Rw => "rw",
            Perm::Ro => "ro",
            Perm::Rr => "rr",
        };
        f.write_str(base)?;
        if self.perm != Perm::Rw && self.wh {
            f.write_str("+wh")?;
        }
        if self.nolwh {
            f.write_str("+nolwh")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    #[test]
    fn words_round_trip_in_their_canonical_spelling() {
        for w in ["rw", "rw+nolwh", "ro", "ro+wh", "rr", "rr+wh"] {
            let m = Mode::parse(w).unwrap_or_else(|| panic!("{w}"));
            assert_eq!(m.to_string(), w);
        }
        assert_eq!(Mode::parse("RO+WH"), Some(Mode::RO_WH));
        assert_eq!(
            Mode::parse("nfsro").map(|m| m.to_string()),
            Some("ro".into())
        );
        assert_eq!(
            Mode::parse("ro+unpin").map(|m| m.to_string()),
            Some("ro".into())
        );
    }

    #[test]
    fn attributes_only_where_aufs_defines_them() {
        for bad in ["rw+wh", "ro+nolwh", "rx", "ro+", "", "ro+whiteout", "+wh"] {
            assert_eq!(Mode::parse(bad), None, "{bad}");
        }
    }
}
