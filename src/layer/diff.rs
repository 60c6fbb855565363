//! `unionfs diff`: what an upper changed, as `docker diff` prints it.
//!
//! Invariant: with lowers, the kind of a path is decided by the two views
//! alone — `A`: in the union view, not in the lowers' view; `C`: in both,
//! with an upper object at the path (a copy-up, a replacement, or a
//! directory whose content changed); `D`: in the lowers' view, not in the
//! union view (a whiteout, or a name hidden by an opaque or redirected
//! directory). Without lowers only the upper's markers tell: whiteouts are
//! `D`, objects carrying an origin/ino xattr (copied up) and directories
//! holding whiteouts are `C`, a redirected (renamed) directory and
//! anything else is `A`. Output is sorted by path bytes. Takes no locks.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::path::{Path, PathBuf};

use super::{bytes, child, shown, source_of, Lowers, Obj, Result, UpperDir};

/// The kind of a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// Added.
    Added,
    /// Changed.
    Changed,
    /// Deleted.
    Deleted,
}

impl Kind {
    /// The letter `docker diff` uses.
    pub fn letter(self) -> char {
        match self {
            Kind::Added => 'A',
            Kind::Changed => 'C',
            Kind::Deleted => 'D',
        }
    }
}

/// One changed path (relative to the root).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// What happened.
    pub kind: Kind,
    /// Where, relative to the root.
    pub path: PathBuf,
}

impl std::fmt::Display for Change {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.kind.letter(), shown(&self.path))
    }
}

/// The changes `upper` makes over `lowers` (or, without lowers, what its
/// markers tell), sorted by path.
pub fn diff(upper: &UpperDir, lowers: Option<&Lowers>) -> Result<Vec<Change>> {
    let mut w = Walk {
        upper,
        lowers,
        out: Vec::new(),
    };
    w.dir(Path::new(""), Some(PathBuf::new()))?;
    let mut out = w.out;
    out.sort_by(|a, b| bytes(&a.path).cmp(bytes(&b.path)).then(a.kind.cmp(&b.kind)));
    out.dedup_by(|a, b| a.path == b.path);
    Ok(out)
}

struct Walk<'a> {
    upper: &'a UpperDir,
    lowers: Option<&'a Lowers>,
    out: Vec<Change>,
}

impl Walk<'_> {
    fn push(&mut self, kind: Kind, path: PathBuf) {
        self.out.push(Change { kind, path });
    }

    /// `C` when the lowers hold `p`, else `A`.
    fn by_path(&mut self, lowers: &Lowers, p: PathBuf) -> Result<()> {
        let kind = if lowers.find(&p)?.is_some() {
            Kind::Changed
        } else {
            Kind::Added
        };
        self.push(kind, p);
        Ok(())
    }

    /// Walks the upper directory at `rel`, whose lower content comes from
    /// the lowers' `src`. Returns whether it hides anything (has
    /// whiteouts or is opaque).
    fn dir(&mut self, rel: &Path, src: Option<PathBuf>) -> Result<bool> {
        let l = self.upper.list(rel)?;
        let hides = l.opaque || !l.whiteouts.is_empty();
        let content_src = if l.opaque { None } else { src };
        let Some(lowers) = self.lowers else {
            for n in l.whiteouts.keys() {
                self.push(Kind::Deleted, child(rel, n));
            }
            for (n, e) in &l.entries {
                let p = child(rel, n);
                let kind = match &e.obj {
                    Obj::Dir { redirect } => {
                        let inner = self.dir(&p, None)?;
                        if redirect.is_some() {
                            Kind::Added
                        } else if e.copied_up || inner {
                            Kind::Changed
                        } else {
                            Kind::Added
                        }
                    }
                    _ if e.copied_up => Kind::Changed,
                    _ => Kind::Added,
                };
                self.push(kind, p);
            }
            return Ok(hides);
        };
        let lower_here = lowers.names(rel)?;
        let mut view: BTreeSet<OsString> = l.entries.keys().cloned().collect();
        if let Some(q) = &content_src {
            let moved = q.as_path() != rel;
            for n in lowers.names(q)? {
                if l.whiteouts.contains_key(&n) || l.entries.contains_key(&n) {
                    continue;
                }
                view.insert(n.clone());
                if moved {
                    // Shown at a new path: every object below is new there.
                    self.lower_subtree(lowers, child(rel, &n), child(q, &n))?;
                }
            }
        }
        for (n, e) in &l.entries {
            let p = child(rel, n);
            self.by_path(lowers, p.clone())?;
            if let Obj::Dir { redirect } = &e.obj {
                let s = source_of(content_src.as_deref(), n, redirect.as_ref());
                self.dir(&p, s)?;
            }
        }
        for n in lower_here.difference(&view) {
            self.push(Kind::Deleted, child(rel, n));
        }
        Ok(hides)
    }

    /// Lower object `q` shown at view path `p`, with all its descendants.
    fn lower_subtree(&mut self, lowers: &Lowers, p: PathBuf, q: PathBuf) -> Result<()> {
        self.by_path(lowers, p.clone())?;
        for n in lowers.names(&q)? {
            self.lower_subtree(lowers, child(&p, &n), child(&q, &n))?;
        }
        Ok(())
    }
}

/// A JSON string literal.
fn json_str(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            c if (c as u32) < 0x20 => o.push_str(&format!("\\u{:04x}", c as u32)),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

/// The changes as `docker diff` lines, or as a JSON array of
/// `{"kind":"A|C|D","path":"/..."}`.
pub fn render(changes: &[Change], json: bool) -> String {
    if !json {
        return changes.iter().map(|c| format!("{c}\n")).collect();
    }
    let items: Vec<String> = changes
        .iter()
        .map(|c| {
            format!(
                "{{\"kind\":\"{}\",\"path\":{}}}",
                c.kind.letter(),
                json_str(&shown(&c.path))
            )
        })
        .collect();
    format!("[{}]\n", items.join(","))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_lines_and_json() {
        let c = vec![
            Change {
                kind: Kind::Added,
                path: "a b".into(),
            },
            Change {
                kind: Kind::Deleted,
                path: "d/\"q\"".into(),
            },
        ];
        assert_eq!(render(&c, false), "A /a b\nD /d/\"q\"\n");
        assert_eq!(
            render(&c, true),
            "[{\"kind\":\"A\",\"path\":\"/a b\"},{\"kind\":\"D\",\"path\":\"/d/\\\"q\\\"\"}]\n"
        );
        assert_eq!(render(&[], true), "[]\n");
    }
}
